//! Credentials files, like a kubeconfig: the etcd endpoints, the CA, a client certificate and
//! its key, in one YAML file (PEM inline, so the file can be copied to a laptop whole).
//!
//! ```yaml
//! # rift credentials for `root` (keep this file private)
//! endpoints: [https://127.0.0.1:2379]
//! ca: |
//!   -----BEGIN CERTIFICATE-----
//!   ...
//! cert: |
//!   -----BEGIN CERTIFICATE-----
//!   ...
//! key: |
//!   -----BEGIN PRIVATE KEY-----
//!   ...
//! ```
//!
//! `rift up` writes `<state>/admin.conf` (0600); operators point `RIFT_CONFIG` at it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Identity, PkiError};

/// A credentials file's content.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub endpoints: Vec<String>,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// Why a credentials file cannot be used; every message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path} does not exist: point RIFT_CONFIG at the file `rift up` wrote (<state>/admin.conf, e.g. `export RIFT_CONFIG=$PWD/.rift/admin.conf`), or pass --insecure for a plaintext cluster")]
    Missing { path: String },
    #[error("{path} cannot be read ({source}): it holds a private key and is readable only by its owner; run as that user, or copy it and `chmod 600` the copy")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}; it should hold `endpoints`, `ca`, `cert` and `key` (as `rift up` writes it)")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

impl Credentials {
    /// The identity the file holds.
    pub fn identity(&self) -> Identity {
        Identity {
            ca_pem: self.ca.clone(),
            cert_pem: self.cert.clone(),
            key_pem: self.key.clone(),
        }
    }

    /// Reads and checks a credentials file (the key must belong to the certificate).
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CredentialsError::Missing { path: shown })
            }
            Err(source) => {
                return Err(CredentialsError::Unreadable {
                    path: shown,
                    source,
                })
            }
        };
        if text.len() > 1 << 20 {
            return Err(CredentialsError::Invalid {
                path: shown,
                message: "larger than 1 MiB".into(),
            });
        }
        let creds: Credentials =
            serde_norway::from_str(&text).map_err(|e| CredentialsError::Invalid {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        if creds.endpoints.is_empty() {
            return Err(CredentialsError::Invalid {
                path: shown,
                message: "`endpoints` is empty".into(),
            });
        }
        let invalid = |e: PkiError| CredentialsError::Invalid {
            path: shown.clone(),
            message: e.to_string(),
        };
        super::inspect::inspect(&creds.ca).map_err(invalid)?;
        super::dir::check_pair(
            &creds.identity(),
            Path::new("its `cert`"),
            Path::new("its `key`"),
        )
        .map_err(invalid)?;
        Ok(creds)
    }

    /// Writes the file (0600, atomically).
    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        let cn = self.identity().common_name().unwrap_or_else(|_| "?".into());
        let body = serde_norway::to_string(self).expect("credentials serialize");
        let text = format!("# rift credentials for `{cn}` (keep this file private)\n{body}");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        super::dir::write_atomic(path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Leaf, LEAF_VALIDITY};

    #[test]
    fn a_saved_file_loads_back_and_broken_ones_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.conf");
        let err = Credentials::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("does not exist") && err.contains("RIFT_CONFIG"),
            "{err}"
        );

        let ca = Ca::create().unwrap();
        let (cert, key) = ca.issue(&Leaf::Admin, LEAF_VALIDITY).unwrap();
        let creds = Credentials {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            ca: ca.cert_pem().into(),
            cert,
            key,
        };
        creds.save(&path).unwrap();
        let back = Credentials::load(&path).unwrap();
        assert_eq!(back.endpoints, creds.endpoints);
        assert_eq!(back.identity().common_name().unwrap(), "root");

        std::fs::write(&path, "endpoints: [x]\nca: nope\n").unwrap();
        let err = Credentials::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("admin.conf") && err.contains("`cert`"),
            "{err}"
        );
    }
}
