//! The controller's side of joins and renewals: checks, etcd users, Nodes, signatures.
//! Served by controller agents (`agent::http`); every refusal carries a status and a message
//! for the node's operator.

use chrono::Utc;

use super::records::{self, TokenRecord};
use super::token::split_credential;
use super::{sign, CertificateRequests, Certificates, JoinError, JoinRequest, JoinResponse};
use crate::api::validation::dns1123_problem;
use crate::pki::NodeRole;
use crate::store::auth::{self, TrustRecord};
use crate::store::{Store, StoreError};

/// A refusal: an HTTP status and what to tell the caller.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

impl From<JoinError> for Refusal {
    fn from(e: JoinError) -> Refusal {
        let status = match &e {
            JoinError::TokenRefused(_) => 403,
            JoinError::Pki(_) | JoinError::Usage(_) => 400,
            JoinError::Store(StoreError::AlreadyExists { .. }) => 409,
            _ => 503,
        };
        Refusal::new(status, e.to_string())
    }
}

/// The most etcd hosts a node may name (its addresses).
const MAX_HOSTS: usize = 16;

/// Joins and renewals, over a store with a controller's (root) identity.
#[derive(Clone)]
pub struct JoinService {
    store: Store,
}

impl JoinService {
    pub fn new(store: Store) -> JoinService {
        JoinService { store }
    }

    async fn trust(&self) -> Result<TrustRecord, Refusal> {
        match auth::read_trust(&self.store).await {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(Refusal::new(
                503,
                "this cluster's CA is not in etcd yet; try again in a moment",
            )),
            Err(e) => Err(Refusal::new(
                503,
                format!("cannot read the cluster CA: {e}"),
            )),
        }
    }

    fn check_requests(requests: &CertificateRequests) -> Result<(), Refusal> {
        if requests.etcd_hosts.len() > MAX_HOSTS
            || requests
                .etcd_hosts
                .iter()
                .any(|h| h.is_empty() || h.len() > 253)
        {
            return Err(Refusal::new(
                400,
                format!("etcdHosts: at most {MAX_HOSTS} non-empty host names or addresses"),
            ));
        }
        Ok(())
    }

    /// Admits a node: see the module docs of [`super`].
    pub async fn join(&self, request: JoinRequest) -> Result<JoinResponse, Refusal> {
        tracing::info!(node = %request.node, "join request");
        let (id, secret) = split_credential(&request.token)
            .ok_or_else(|| Refusal::new(400, "the token credential is not <id>.<secret>"))?;
        let trust = self.trust().await?;
        let record: Option<TokenRecord> = records::get(&self.store, id).await?;
        let role = records::check(record.as_ref(), &trust, id, secret, Utc::now())
            .inspect_err(|e| tracing::warn!(node = %request.node, %e, "join refused"))?;
        if let Some(problem) = dns1123_problem(&request.node) {
            return Err(Refusal::new(
                400,
                format!("node name {:?}: {problem}", request.node),
            ));
        }
        Self::check_requests(&request.requests)?;
        let ca = trust.ca().map_err(JoinError::from)?;
        // Sign first: a bad request changes nothing in etcd.
        let certificates = sign(&ca, &request.node, role, &request.requests)
            .map_err(|e| Refusal::new(400, e.to_string()))?;
        match auth::admit(&self.store, &request.node, role).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(Refusal::new(
                    409,
                    format!(
                        "node {} already has an identity in this cluster; a node that lost its \
                         state joins again after an operator ran `rift certs revoke {}`",
                        request.node, request.node
                    ),
                ))
            }
            Err(e) => return Err(JoinError::from(e).into()),
        }
        crate::agent::registration::ensure_node(
            &self.store,
            &request.node,
            &request.spec,
            &request.labels,
        )
        .await
        .map_err(JoinError::from)?;
        tracing::info!(node = %request.node, %role, token = %id, "node joined");
        Ok(JoinResponse {
            role,
            certificates,
            endpoints: self.store.current_endpoints(),
        })
    }

    /// New certificates for the node whose current certificate was presented, while its etcd
    /// user still exists.
    pub async fn renew(
        &self,
        node: &str,
        role: NodeRole,
        requests: CertificateRequests,
    ) -> Result<Certificates, Refusal> {
        Self::check_requests(&requests)?;
        match auth::admitted(&self.store, node).await {
            Ok(Some(r)) if r == role => {}
            Ok(_) => {
                return Err(Refusal::new(
                    403,
                    format!("node {node}'s identity was removed from this cluster; join it again"),
                ))
            }
            Err(e) => return Err(JoinError::from(e).into()),
        }
        let trust = self.trust().await?;
        let ca = trust.ca().map_err(JoinError::from)?;
        let certificates =
            sign(&ca, node, role, &requests).map_err(|e| Refusal::new(400, e.to_string()))?;
        tracing::info!(node, %role, "certificates renewed");
        Ok(certificates)
    }
}
