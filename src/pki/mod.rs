//! The cluster's trust: one CA and the certificates made from it (DESIGN.md, "Trust").
//!
//! - [`ca`]: the CA (ECDSA P-256, ten years) and the leaf certificates it signs (one year):
//!   a node's identity, the operator's, etcd's server and peer certificates. What a leaf may be
//!   used for and which names it carries is decided here from a [`ca::Leaf`], never taken from
//!   a signing request: a request only contributes its public key.
//! - [`names`]: the fixed names clients verify (`etcd.rift`, `<node>.node.rift`,
//!   `controller.rift`) and the etcd users certificates are named after.
//! - [`dir`]: the files under `<state>/pki/` (keys 0600 in a 0700 directory, written
//!   atomically).
//! - [`inspect`]: what a certificate says (names, expiry), for `rift certs check` and renewal.
//! - [`tls`]: rustls and tonic configurations built from an [`Identity`].
//!
//! Clients verify etcd by the fixed name `etcd.rift` and agents by `<node>.node.rift`, never
//! by address, so relays and address fallback keep working with one certificate per server.

pub mod ca;
pub mod credentials;
pub mod dir;
pub mod inspect;
pub mod local;
pub mod names;
pub mod tls;

pub use ca::{Ca, Leaf};
pub use dir::PkiDir;
pub use names::NodeRole;

/// How long the CA is valid.
pub const CA_VALIDITY: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);
/// How long a leaf certificate is valid.
pub const LEAF_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);
/// A leaf closer than this to its expiry is renewed by its agent.
pub const RENEW_BEFORE: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);

/// A certificate, its private key and the CA that vouches for it, as PEM: what a client
/// presents and what it trusts.
#[derive(Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cn = inspect::inspect(&self.cert_pem)
            .map(|i| i.common_name)
            .unwrap_or_else(|_| "?".into());
        f.debug_struct("Identity").field("cn", &cn).finish()
    }
}

impl Identity {
    /// The etcd user this identity acts as (its certificate's common name).
    pub fn common_name(&self) -> Result<String, PkiError> {
        Ok(inspect::inspect(&self.cert_pem)?.common_name)
    }
}

/// Problems with certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} is not a usable PEM certificate: {why}")]
    BadCertificate { what: String, why: String },
    #[error("{what} is not a usable PEM private key: {why}")]
    BadKey { what: String, why: String },
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("the certificate request is not acceptable: {0}")]
    BadRequest(String),
    #[error("{what} does not match its key ({cert} and {key}); replace both")]
    KeyMismatch {
        what: String,
        cert: String,
        key: String,
    },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Generate(e.to_string())
    }
}
