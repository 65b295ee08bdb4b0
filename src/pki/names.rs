//! The names certificates carry and clients check, and the etcd users they map to.
//!
//! etcd (3.4, `--client-cert-auth` with auth enabled) takes the client certificate's common
//! name as the user name. rift's users:
//!
//! | common name        | who                             | etcd role                                   |
//! |--------------------|---------------------------------|---------------------------------------------|
//! | `root`             | operators (`RIFT_CONFIG`)       | `root`                                      |
//! | `controller-<n>`   | node `<n>`, controller-eligible | `root` (member changes need it in 3.4)      |
//! | `node-<n>`         | node `<n>`, a worker            | `node-<n>`: readwrite `/rift/v1/agents/<n>/`, read `/rift/v1/` |
//!
//! `etcd-server` and `etcd-peer` name etcd's own certificates; no etcd user has those names, so
//! they open nothing as clients. Node names are DNS-1123 labels, so `node-` and `controller-`
//! never collide with each other or with `root`.

use serde::{Deserialize, Serialize};

/// The name every etcd server certificate carries and every client verifies.
pub const ETCD_SERVER_NAME: &str = "etcd.rift";
/// The name only controller nodes' certificates carry: what a joining node verifies before it
/// sends its token's secret.
pub const CONTROLLER_NAME: &str = "controller.rift";
/// The etcd superuser, and the operator's common name.
pub const ROOT_USER: &str = "root";
/// The common name of etcd server certificates.
pub const ETCD_SERVER_CN: &str = "etcd-server";
/// The common name of etcd peer certificates (members accept only it: `--peer-cert-allowed-cn`).
pub const ETCD_PEER_CN: &str = "etcd-peer";
/// The common name of the CA.
pub const CA_CN: &str = "rift-ca";

/// The name node `node`'s agent serves HTTPS under, whatever address it is reached at.
pub fn agent_server_name(node: &str) -> String {
    format!("{node}.node.rift")
}

/// What a node may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Runs jobs; writes only under its own `/rift/v1/agents/<node>/`.
    Worker,
    /// May lead (runs the controllers), host etcd members and serve joins: etcd root.
    Controller,
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeRole::Worker => "worker",
            NodeRole::Controller => "controller",
        })
    }
}

/// The etcd user (and certificate common name) of node `node` with `role`.
pub fn node_user(role: NodeRole, node: &str) -> String {
    match role {
        NodeRole::Worker => format!("node-{node}"),
        NodeRole::Controller => format!("controller-{node}"),
    }
}

/// Who a certificate's common name says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An operator.
    Root,
    /// A node's agent.
    Node { name: String, role: NodeRole },
    /// Anything else (etcd's own certificates, foreign names).
    Other(String),
}

impl Principal {
    /// Reads a common name.
    pub fn from_common_name(cn: &str) -> Principal {
        if cn == ROOT_USER {
            return Principal::Root;
        }
        let node = |prefix: &str, role| {
            cn.strip_prefix(prefix)
                .filter(|n| crate::api::validation::dns1123_problem(n).is_none())
                .map(|n| Principal::Node {
                    name: n.to_string(),
                    role,
                })
        };
        node("node-", NodeRole::Worker)
            .or_else(|| node("controller-", NodeRole::Controller))
            .unwrap_or_else(|| Principal::Other(cn.to_string()))
    }

    /// Operators and nodes: the principals allowed to read an agent's status, metrics and logs.
    pub fn is_cluster_member(&self) -> bool {
        !matches!(self, Principal::Other(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_round_trip_to_principals() {
        for role in [NodeRole::Worker, NodeRole::Controller] {
            assert_eq!(
                Principal::from_common_name(&node_user(role, "gh200-a")),
                Principal::Node {
                    name: "gh200-a".into(),
                    role
                }
            );
        }
        assert_eq!(Principal::from_common_name("root"), Principal::Root);
        assert_eq!(
            Principal::from_common_name(ETCD_PEER_CN),
            Principal::Other("etcd-peer".into())
        );
        // A name that is no node name is nobody.
        assert!(!Principal::from_common_name("node-Bad_Name").is_cluster_member());
        assert!(!Principal::from_common_name("node-").is_cluster_member());
    }
}
