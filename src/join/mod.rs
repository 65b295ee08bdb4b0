//! Joining a node and renewing its certificates (DESIGN.md, "Trust").
//!
//! A node joins with `rift agent --join https://CONTROLLER:8770 --token TOKEN`:
//!
//! 1. it fetches the CA from the controller's agent (`GET /v1/join/ca`, TLS not yet verified)
//!    and checks its SHA-256 against the token **before anything secret is sent**;
//! 2. it makes its keys and signing requests locally (keys never leave the node);
//! 3. it sends the token's secret and the requests (`POST /v1/join`) over TLS verified by that
//!    CA, to a server that must prove it is a controller (`controller.rift`);
//! 4. the controller checks the token (an HMAC in etcd, not expired, not revoked), creates the
//!    node's etcd user and role and its Node, signs the requests (names and rights decided by
//!    the controller from the token's role and the node's name) and answers with the
//!    certificates and the etcd endpoints.
//!
//! A node renews over its current identity (`POST /v1/renew`, client certificate required):
//! the new certificates carry the name and role of the presented certificate, and only while
//! its etcd user exists.
//!
//! [`token`] is the token format (pure), [`records`] the tokens in etcd, [`server`] the
//! controller's side, [`client`] the node's.

pub mod client;
pub mod records;
pub mod server;
pub mod token;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::NodeSpec;
use crate::pki::{Ca, Leaf, NodeRole, PkiError};
use crate::store::StoreError;

/// Everything that can stop a join or a renewal.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the token was refused: {0}")]
    TokenRefused(String),
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error("the CA served at {url} is not the one the token names (its sha256 is {served}, the token says {expected}): a token of another cluster, or someone in between. Nothing secret was sent.")]
    WrongCa {
        url: String,
        served: String,
        expected: String,
    },
    #[error("{url} refused: {message}")]
    Refused { url: String, message: String },
    #[error("cannot reach {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Usage(String),
}

/// Signing requests a node sends (PEM), with the hosts its etcd member would be reached at.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequests {
    pub node: String,
    #[serde(default)]
    pub etcd_server: Option<String>,
    #[serde(default)]
    pub etcd_peer: Option<String>,
    /// The node's etcd hosts (its addresses); names on its etcd certificates.
    #[serde(default)]
    pub etcd_hosts: Vec<String>,
}

/// Certificates a controller answers with (PEM).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificates {
    pub ca: String,
    pub node: String,
    /// Only controllers host etcd members.
    #[serde(default)]
    pub etcd_server: Option<String>,
    #[serde(default)]
    pub etcd_peer: Option<String>,
}

/// `POST /v1/join`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    /// `<id>.<secret>`.
    pub token: String,
    pub node: String,
    pub requests: CertificateRequests,
    /// The Node created for it when none exists (an operator's Node wins).
    pub spec: NodeSpec,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The answer to a join.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub role: NodeRole,
    pub certificates: Certificates,
    /// etcd client URLs to use.
    pub endpoints: Vec<String>,
}

/// The most a join or renewal body may hold.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Signs `requests` for node `node` with `role`: its node certificate always, etcd's only for
/// controllers (workers never host members).
pub fn sign(
    ca: &Ca,
    node: &str,
    role: NodeRole,
    requests: &CertificateRequests,
) -> Result<Certificates, PkiError> {
    let validity = crate::pki::LEAF_VALIDITY;
    let node_leaf = Leaf::Node {
        name: node.into(),
        role,
    };
    let mut out = Certificates {
        ca: ca.cert_pem().into(),
        node: ca.sign_request(&node_leaf, &requests.node, validity)?,
        ..Certificates::default()
    };
    if role == NodeRole::Controller {
        let hosts = requests.etcd_hosts.clone();
        if let Some(r) = &requests.etcd_server {
            let leaf = Leaf::EtcdServer {
                hosts: hosts.clone(),
            };
            out.etcd_server = Some(ca.sign_request(&leaf, r, validity)?);
        }
        if let Some(r) = &requests.etcd_peer {
            let leaf = Leaf::EtcdPeer { hosts };
            out.etcd_peer = Some(ca.sign_request(&leaf, r, validity)?);
        }
    }
    Ok(out)
}
