//! The trust of a cluster made on one machine in one go: benchmark and test clusters. The CA
//! lives in a directory; etcd members' certificates, the operator's identity and nodes'
//! identities are issued here with keys made here (a real node makes its own key and joins).

use std::path::{Path, PathBuf};

use super::dir::{write_atomic, LeafFile};
use super::{Ca, Identity, Leaf, NodeRole, PkiDir, PkiError, LEAF_VALIDITY};
use crate::agent::etcd_member::process::MemberTls;

/// A CA in a directory, and what it issues.
#[derive(Clone, Debug)]
pub struct LocalTrust {
    ca: Ca,
    dir: PathBuf,
}

impl LocalTrust {
    /// A new CA written to `dir` (`ca.crt`, `ca.key`).
    pub fn create(dir: &Path) -> Result<LocalTrust, PkiError> {
        let ca = Ca::create()?;
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        write_atomic(&dir.join("ca.crt"), ca.cert_pem())?;
        write_atomic(&dir.join("ca.key"), ca.key_pem())?;
        Ok(LocalTrust {
            ca,
            dir: dir.to_path_buf(),
        })
    }

    /// The CA already in `dir` (`ca.crt`, `ca.key`: a `LocalTrust` directory, or a node's
    /// `pki/` that holds the CA's key).
    pub fn open(dir: &Path) -> Result<LocalTrust, PkiError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(LocalTrust {
            ca: Ca::from_pem(&read("ca.crt")?, &read("ca.key")?)?,
            dir: dir.to_path_buf(),
        })
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The CA certificate's path.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The certificates of etcd member `name` reached at `hosts`, written under
    /// `<dir>/<name>/`.
    pub fn member(&self, name: &str, hosts: &[String]) -> Result<MemberTls, PkiError> {
        let dir = self.dir.join(name);
        let pki = PkiDir::new(&dir);
        pki.write_ca(self.ca.cert_pem(), None)?;
        for (file, leaf) in [
            (
                LeafFile::EtcdServer,
                Leaf::EtcdServer {
                    hosts: hosts.to_vec(),
                },
            ),
            (
                LeafFile::EtcdPeer,
                Leaf::EtcdPeer {
                    hosts: hosts.to_vec(),
                },
            ),
        ] {
            let (cert, key) = self.ca.issue(&leaf, LEAF_VALIDITY)?;
            pki.write_leaf(file, &cert, &key)?;
        }
        Ok(MemberTls::in_dir(&pki))
    }

    /// A fresh identity for `leaf`.
    pub fn identity(&self, leaf: &Leaf) -> Result<Identity, PkiError> {
        let (cert_pem, key_pem) = self.ca.issue(leaf, LEAF_VALIDITY)?;
        Ok(Identity {
            ca_pem: self.ca.cert_pem().into(),
            cert_pem,
            key_pem,
        })
    }

    /// The operator's identity (etcd `root`).
    pub fn admin(&self) -> Result<Identity, PkiError> {
        self.identity(&Leaf::Admin)
    }

    /// Writes node `node`'s identity into `<state_dir>/pki/` (and, for a controller, its etcd
    /// member's certificates for `etcd_hosts`), valid for `validity`.
    pub fn provision_node(
        &self,
        state_dir: &Path,
        node: &str,
        role: NodeRole,
        etcd_hosts: &[String],
        validity: std::time::Duration,
    ) -> Result<(), PkiError> {
        let pki = PkiDir::new(state_dir);
        let leaf = Leaf::Node {
            name: node.into(),
            role,
        };
        let (cert, key) = self.ca.issue(&leaf, validity)?;
        pki.write_leaf(LeafFile::Node, &cert, &key)?;
        if role == NodeRole::Controller {
            for (file, leaf) in [
                (
                    LeafFile::EtcdServer,
                    Leaf::EtcdServer {
                        hosts: etcd_hosts.to_vec(),
                    },
                ),
                (
                    LeafFile::EtcdPeer,
                    Leaf::EtcdPeer {
                        hosts: etcd_hosts.to_vec(),
                    },
                ),
            ] {
                let (cert, key) = self.ca.issue(&leaf, validity)?;
                pki.write_leaf(file, &cert, &key)?;
            }
        }
        pki.write_ca(self.ca.cert_pem(), None)
    }
}
