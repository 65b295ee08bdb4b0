//! The agent's identity and how it reaches etcd.
//!
//! At start the agent uses, in this order:
//! 1. `--insecure`: a plaintext cluster, no identity (the old way; for clusters not yet moved
//!    to TLS and their tests);
//! 2. its certificates in `<state>/pki/` (a node that joined, or bootstrapped, before);
//! 3. `--bootstrap` (what `rift up` does): it creates the cluster CA, its own controller
//!    identity, its etcd member's certificates and the operator's `<state>/admin.conf`;
//! 4. `--join URL --token T`: it joins through a controller's agent ([`crate::join`]).
//!
//! Otherwise it stops and says how to join. The certificate must name this node: an agent
//! started as `n2` with `n1`'s certificate stops with a clear error instead of acting as `n1`.

use std::path::{Path, PathBuf};

use super::config::AgentConfig;
use super::AgentError;
use crate::join::client::{ControllerUrl, JoinAs};
use crate::join::token::Token;
use crate::pki::credentials::Credentials;
use crate::pki::dir::LeafFile;
use crate::pki::names::Principal;
use crate::pki::{Ca, Identity, Leaf, NodeRole, PkiDir, LEAF_VALIDITY};
use crate::store::Access;

/// Who this agent is and how it reaches etcd.
#[derive(Clone, Debug)]
pub struct AgentIdentity {
    /// The configured endpoints (normalized) with this identity.
    pub access: Access,
    /// `None` on a plaintext cluster.
    pub role: Option<NodeRole>,
    /// The CA with its key, on the machine that created the cluster.
    pub local_ca: Option<Ca>,
}

impl AgentIdentity {
    pub fn identity(&self) -> Option<&Identity> {
        self.access.identity()
    }

    /// Whether this agent may write outside its own prefix (create its Node, lead): a
    /// controller, or any agent of a plaintext cluster.
    pub fn may_write_cluster_objects(&self) -> bool {
        self.role != Some(NodeRole::Worker)
    }
}

fn failed(e: impl std::fmt::Display) -> AgentError {
    AgentError::Identity(e.to_string())
}

/// `<state>/join.json`: the endpoints a join answered with.
fn joined_file(state_dir: &Path) -> PathBuf {
    state_dir.join("join.json")
}

/// The operator's credentials written by a bootstrapping agent.
pub fn admin_conf(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.conf")
}

/// Establishes the agent's identity (see the module docs).
pub async fn establish(config: &AgentConfig) -> Result<AgentIdentity, AgentError> {
    if config.insecure {
        return Ok(AgentIdentity {
            access: Access::insecure(&config.endpoints),
            role: None,
            local_ca: None,
        });
    }
    let pki = PkiDir::new(&config.state_dir);
    if !pki.has_identity() {
        if config.etcd.bootstrap {
            bootstrap(config, &pki)?;
        } else if let Some(join) = &config.join {
            join_now(config, &join.url, &join.token, &pki).await?;
        } else {
            return Err(failed(format!(
                "this node has no identity ({} is missing): join it with `rift agent --join \
                 https://CONTROLLER:8770 --token TOKEN` (a token from `rift token create` on \
                 the operator's machine), or run a plaintext cluster with --insecure",
                pki.cert(LeafFile::Node).display()
            )));
        }
    }
    let identity = pki
        .identity(LeafFile::Node)
        .map_err(failed)?
        .ok_or_else(|| failed("the node certificate disappeared"))?;
    let cn = identity.common_name().map_err(failed)?;
    let role = match Principal::from_common_name(&cn) {
        Principal::Node { name, role } if name == config.name => role,
        _ => {
            return Err(failed(format!(
                "{} is the certificate of `{cn}`, not of node {}: this state directory belongs \
                 to another node; use that node's name or its own --state-dir",
                pki.cert(LeafFile::Node).display(),
                config.name
            )))
        }
    };
    if config.controllers && role == NodeRole::Worker {
        return Err(failed(format!(
            "--controllers needs a controller identity, and node {} joined as a worker: run it \
             without --controllers, or join it again with a token from `rift token create \
             --role controller`",
            config.name
        )));
    }
    let mut endpoints = config.endpoints.clone();
    if !config.endpoints_given {
        if let Ok(Some(saved)) =
            crate::agent::jobs::layout::read_json::<Vec<String>>(&joined_file(&config.state_dir))
        {
            endpoints = saved;
        }
    }
    Ok(AgentIdentity {
        access: Access::tls(&endpoints, identity),
        role: Some(role),
        local_ca: pki.ca().map_err(failed)?,
    })
}

/// The etcd client URLs this node's member offers (https).
fn own_client_urls(config: &AgentConfig) -> Vec<String> {
    super::etcd_member::hosts(config)
        .iter()
        .map(|h| {
            let h = if h.contains(':') {
                format!("[{h}]")
            } else {
                h.clone()
            };
            format!("https://{h}:{}", config.etcd.client_port)
        })
        .collect()
}

/// Creates (or, with `<state>/pki/ca.key` already there, reuses) the CA, and issues this
/// node's controller identity, its etcd certificates and the operator's credentials.
pub fn bootstrap(config: &AgentConfig, pki: &PkiDir) -> Result<Ca, AgentError> {
    let ca = match pki.ca().map_err(failed)? {
        Some(ca) => ca,
        None => {
            let ca = Ca::create().map_err(failed)?;
            pki.write_ca(ca.cert_pem(), Some(ca.key_pem()))
                .map_err(failed)?;
            ca
        }
    };
    let hosts = super::etcd_member::hosts(config);
    let leaves = [
        (
            LeafFile::EtcdServer,
            Leaf::EtcdServer {
                hosts: hosts.clone(),
            },
        ),
        (LeafFile::EtcdPeer, Leaf::EtcdPeer { hosts }),
        (
            LeafFile::Node,
            Leaf::Node {
                name: config.name.clone(),
                role: NodeRole::Controller,
            },
        ),
    ];
    for (file, leaf) in leaves {
        let (cert, key) = ca.issue(&leaf, LEAF_VALIDITY).map_err(failed)?;
        pki.write_leaf(file, &cert, &key).map_err(failed)?;
    }
    write_admin_conf(config, &ca)?;
    tracing::info!(dir = %pki.root().display(), "created the cluster CA and this node's certificates");
    Ok(ca)
}

/// Writes `<state>/admin.conf`: root's credentials for this cluster's endpoints.
pub fn write_admin_conf(config: &AgentConfig, ca: &Ca) -> Result<PathBuf, AgentError> {
    let (cert, key) = ca.issue(&Leaf::Admin, LEAF_VALIDITY).map_err(failed)?;
    let mut endpoints = own_client_urls(config);
    if endpoints.is_empty() {
        endpoints = crate::store::access::normalize_with(&config.endpoints, "https");
    }
    let creds = Credentials {
        endpoints,
        ca: ca.cert_pem().into(),
        cert,
        key,
    };
    let path = admin_conf(&config.state_dir);
    creds.save(&path).map_err(failed)?;
    Ok(path)
}

async fn join_now(
    config: &AgentConfig,
    url: &str,
    token: &str,
    pki: &PkiDir,
) -> Result<(), AgentError> {
    let url = ControllerUrl::parse(url).map_err(failed)?;
    let token = Token::parse(token).map_err(failed)?;
    tracing::info!(url = %url.url, "joining");
    let me = JoinAs {
        node: config.name.clone(),
        spec: config.node_spec(),
        labels: config.labels.clone(),
        etcd_hosts: super::etcd_member::hosts(config),
    };
    let answer = crate::join::client::join(&url, &token, me, pki)
        .await
        .map_err(|e| failed(format!("joining through {} failed: {e}", url.url)))?;
    crate::agent::jobs::layout::write_json(&joined_file(&config.state_dir), &answer.endpoints)
        .map_err(|e| failed(format!("cannot save the cluster's endpoints: {e}")))?;
    tracing::info!(role = %answer.role, endpoints = %answer.endpoints.join(","), "joined");
    Ok(())
}
