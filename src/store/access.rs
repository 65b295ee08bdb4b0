//! How to reach etcd: its endpoints and the identity to present.
//!
//! A TLS cluster (the default) is reached over `https://` with a client certificate whose
//! common name is the etcd user (see [`crate::pki::names`]); the server is verified as
//! `etcd.rift` by the cluster CA, whatever address it answers at. A plaintext cluster is
//! reached over `http://` only when asked for explicitly ([`Access::insecure`], the CLI's
//! `--insecure`). Mixing is refused with a message saying what to change.

use std::sync::Arc;

use crate::pki::names::ETCD_SERVER_NAME;
use crate::pki::tls::ETCD_HANDSHAKE_TIMEOUT;
use crate::pki::Identity;

use super::error::StoreError;

/// Endpoints and, for a TLS cluster, the identity to present. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Access {
    endpoints: Vec<String>,
    identity: Option<Arc<Identity>>,
}

/// Splits `a,b`, trims, drops empty entries and adds `scheme://` where no scheme is given.
pub fn normalize_with<S: AsRef<str>>(endpoints: &[S], scheme: &str) -> Vec<String> {
    endpoints
        .iter()
        .flat_map(|e| e.as_ref().split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e.contains("://") {
                e.to_string()
            } else {
                format!("{scheme}://{e}")
            }
        })
        .collect()
}

impl Access {
    /// A TLS cluster: `endpoints` without a scheme get `https://`.
    pub fn tls<S: AsRef<str>>(endpoints: &[S], identity: Identity) -> Access {
        Access {
            endpoints: normalize_with(endpoints, "https"),
            identity: Some(Arc::new(identity)),
        }
    }

    /// A plaintext cluster (the old way; tests of it and upgrades): `endpoints` without a
    /// scheme get `http://`.
    pub fn insecure<S: AsRef<str>>(endpoints: &[S]) -> Access {
        Access {
            endpoints: normalize_with(endpoints, "http"),
            identity: None,
        }
    }

    /// The same identity with other endpoints.
    pub fn with_endpoints<S: AsRef<str>>(&self, endpoints: &[S]) -> Access {
        let scheme = if self.identity.is_some() {
            "https"
        } else {
            "http"
        };
        Access {
            endpoints: normalize_with(endpoints, scheme),
            identity: self.identity.clone(),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }

    pub fn is_tls(&self) -> bool {
        self.identity.is_some()
    }

    /// Refuses endpoints whose scheme does not match the identity (or its absence).
    pub fn check(&self) -> Result<(), StoreError> {
        let shown = self.endpoints.join(",");
        if self.endpoints.is_empty() {
            return Err(StoreError::Unreachable {
                endpoints: "(none)".into(),
                reason: "no endpoints given".into(),
            });
        }
        let wrong = |scheme: &str| self.endpoints.iter().find(|e| !e.starts_with(scheme));
        match (&self.identity, wrong("https://"), wrong("http://")) {
            (Some(_), Some(e), _) => Err(StoreError::Credentials(format!(
                "{e} is not an https:// endpoint, but credentials are configured: etcd speaks \
                 TLS in a rift cluster; use https://, or --insecure for a plaintext cluster \
                 (endpoints: {shown})"
            ))),
            (None, _, Some(e)) => Err(StoreError::Credentials(format!(
                "{e} needs credentials: set RIFT_CONFIG to the file `rift up` wrote \
                 (<state>/admin.conf), or pass --config"
            ))),
            _ => Ok(()),
        }
    }

    /// What is wrong with this identity on its own, if anything (an expired certificate, or
    /// one not valid yet): etcd refuses such a certificate in the handshake, and the client
    /// only sees the connection fail, so this says why.
    pub fn identity_problem(&self) -> Option<String> {
        let id = self.identity.as_deref()?;
        let info = match crate::pki::inspect::inspect(&id.cert_pem) {
            Ok(i) => i,
            Err(e) => return Some(e.to_string()),
        };
        let now = chrono::Utc::now();
        if info.not_after <= now {
            Some(format!(
                "the client certificate `{}` expired at {}: `rift certs check` shows it; a node \
                 renews its own before that while it runs, an expired one joins again; `rift up` \
                 makes a new admin.conf",
                info.common_name,
                info.not_after.to_rfc3339()
            ))
        } else if info.not_before > now {
            Some(format!(
                "the client certificate `{}` is not valid before {}: check this machine's clock",
                info.common_name,
                info.not_before.to_rfc3339()
            ))
        } else {
            None
        }
    }

    /// Client options: `base` plus TLS when the cluster uses it.
    pub(crate) fn options(&self, base: etcd_client::ConnectOptions) -> etcd_client::ConnectOptions {
        match &self.identity {
            Some(id) => base.with_tls(etcd_tls(id)),
            None => base,
        }
    }
}

/// TLS for etcd's gRPC from rift's identity: the cluster CA, this identity, and the server
/// verified as `etcd.rift` whatever address it was reached at; a handshake gives up after
/// [`ETCD_HANDSHAKE_TIMEOUT`].
pub fn etcd_tls(id: &Identity) -> etcd_client::TlsOptions {
    etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(&id.ca_pem))
        .identity(etcd_client::Identity::from_pem(&id.cert_pem, &id.key_pem))
        .domain_name(ETCD_SERVER_NAME)
        .timeout(ETCD_HANDSHAKE_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_split_and_given_the_clusters_scheme() {
        assert_eq!(
            normalize_with(&["127.0.0.1:2379, https://a:1", ""], "http"),
            vec!["http://127.0.0.1:2379", "https://a:1"]
        );
        let a = Access::insecure(&["10.0.0.1:2379"]);
        assert_eq!(a.endpoints(), ["http://10.0.0.1:2379"]);
        assert!(a.check().is_ok());
    }

    #[test]
    fn plaintext_endpoints_with_credentials_and_tls_endpoints_without_are_refused() {
        let err = Access::insecure(&["https://10.0.0.1:2379"])
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("RIFT_CONFIG"), "{err}");
        let ca = crate::pki::Ca::create().unwrap();
        let (cert, key) = ca
            .issue(&crate::pki::Leaf::Admin, crate::pki::LEAF_VALIDITY)
            .unwrap();
        let id = Identity {
            ca_pem: ca.cert_pem().into(),
            cert_pem: cert,
            key_pem: key,
        };
        let tls = Access::tls(&["10.0.0.1:2379", "http://10.0.0.2:2379"], id);
        assert_eq!(tls.endpoints()[0], "https://10.0.0.1:2379");
        let err = tls.check().unwrap_err().to_string();
        assert!(err.contains("--insecure"), "{err}");
    }
}
