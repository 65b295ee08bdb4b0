//! The files of a node's trust, under `<state>/pki/`:
//!
//! | file | what |
//! |---|---|
//! | `ca.crt` | the cluster CA (public) |
//! | `ca.key` | the CA's key: only on the machine that created the cluster |
//! | `node.crt`, `node.key` | this node's identity (etcd user, agent HTTPS) |
//! | `etcd-server.crt`, `etcd-server.key` | the local etcd member's client-facing certificate |
//! | `etcd-peer.crt`, `etcd-peer.key` | the local etcd member's peer certificate |
//!
//! The directory is 0700 and every file in it 0600; every file is written to a temporary name and
//! renamed, so a reader never sees half a file and a crash never leaves one.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Ca, Identity, PkiError};

/// One leaf's pair of files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafFile {
    Node,
    EtcdServer,
    EtcdPeer,
}

impl LeafFile {
    pub const ALL: [LeafFile; 3] = [LeafFile::Node, LeafFile::EtcdServer, LeafFile::EtcdPeer];

    fn stem(self) -> &'static str {
        match self {
            LeafFile::Node => "node",
            LeafFile::EtcdServer => "etcd-server",
            LeafFile::EtcdPeer => "etcd-peer",
        }
    }
}

/// `<state>/pki/`.
#[derive(Clone, Debug)]
pub struct PkiDir {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a file that may be absent.
fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, 0600 (certificates are
/// no secret, but a node's state directory holds only private files).
pub fn write_atomic(path: &Path, contents: &str) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mode = 0o600;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    // An existing temporary file keeps its old mode: set it.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl PkiDir {
    pub fn new(state_dir: &Path) -> PkiDir {
        PkiDir {
            root: state_dir.join("pki"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    pub fn cert(&self, leaf: LeafFile) -> PathBuf {
        self.root.join(format!("{}.crt", leaf.stem()))
    }

    pub fn key(&self, leaf: LeafFile) -> PathBuf {
        self.root.join(format!("{}.key", leaf.stem()))
    }

    /// Whether this node has an identity (`node.crt`).
    pub fn has_identity(&self) -> bool {
        self.cert(LeafFile::Node).exists()
    }

    /// Whether the local etcd member's certificates are here.
    pub fn has_etcd_certs(&self) -> bool {
        [LeafFile::EtcdServer, LeafFile::EtcdPeer]
            .iter()
            .all(|l| self.cert(*l).exists() && self.key(*l).exists())
    }

    fn ensure(&self) -> Result<(), PkiError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(io(&self.root))?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&self.root))
    }

    /// Writes the CA certificate (and its key, when given: only the creating machine keeps it).
    pub fn write_ca(&self, ca_pem: &str, key_pem: Option<&str>) -> Result<(), PkiError> {
        self.ensure()?;
        if let Some(key) = key_pem {
            write_atomic(&self.ca_key(), key)?;
        }
        write_atomic(&self.ca_cert(), ca_pem)
    }

    /// Writes one leaf's certificate and key (the key first: a certificate is never there
    /// without its key).
    pub fn write_leaf(
        &self,
        leaf: LeafFile,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(), PkiError> {
        self.ensure()?;
        write_atomic(&self.key(leaf), key_pem)?;
        write_atomic(&self.cert(leaf), cert_pem)
    }

    /// The CA, when this machine holds its key.
    pub fn ca(&self) -> Result<Option<Ca>, PkiError> {
        let (Some(cert), Some(key)) = (
            read_optional(&self.ca_cert())?,
            read_optional(&self.ca_key())?,
        ) else {
            return Ok(None);
        };
        Ca::from_pem(&cert, &key).map(Some)
    }

    /// The CA certificate, when present.
    pub fn ca_pem(&self) -> Result<Option<String>, PkiError> {
        read_optional(&self.ca_cert())
    }

    /// One leaf's identity (with the CA), `None` when its certificate is absent. A certificate
    /// without its key, or not made for it, is an error naming both files.
    pub fn identity(&self, leaf: LeafFile) -> Result<Option<Identity>, PkiError> {
        let Some(cert_pem) = read_optional(&self.cert(leaf))? else {
            return Ok(None);
        };
        let missing = |path: PathBuf| PkiError::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "missing (the certificate beside it is there): join again or restore it",
            ),
        };
        let key_pem = read_optional(&self.key(leaf))?.ok_or_else(|| missing(self.key(leaf)))?;
        let ca_pem = read_optional(&self.ca_cert())?.ok_or_else(|| missing(self.ca_cert()))?;
        let identity = Identity {
            ca_pem,
            cert_pem,
            key_pem,
        };
        check_pair(&identity, &self.cert(leaf), &self.key(leaf))?;
        Ok(Some(identity))
    }
}

/// Checks that an identity's key belongs to its certificate.
pub fn check_pair(identity: &Identity, cert: &Path, key: &Path) -> Result<(), PkiError> {
    let info = super::inspect::inspect(&identity.cert_pem).map_err(|e| match e {
        PkiError::BadCertificate { why, .. } => PkiError::BadCertificate {
            what: cert.display().to_string(),
            why,
        },
        other => other,
    })?;
    let pair = rcgen::KeyPair::from_pem(&identity.key_pem).map_err(|e| PkiError::BadKey {
        what: key.display().to_string(),
        why: e.to_string(),
    })?;
    if pair.public_key_raw() != info.public_key {
        return Err(PkiError::KeyMismatch {
            what: "the certificate".into(),
            cert: cert.display().to_string(),
            key: key.display().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Leaf, NodeRole};

    #[test]
    fn keys_are_private_and_a_certificate_needs_its_own_key() {
        let state = tempfile::tempdir().unwrap();
        let dir = PkiDir::new(state.path());
        assert!(dir.identity(LeafFile::Node).unwrap().is_none());
        let ca = Ca::create().unwrap();
        dir.write_ca(ca.cert_pem(), Some(ca.key_pem())).unwrap();
        let leaf = Leaf::Node {
            name: "n1".into(),
            role: NodeRole::Worker,
        };
        let (cert, key) = ca.issue(&leaf, crate::pki::LEAF_VALIDITY).unwrap();
        dir.write_leaf(LeafFile::Node, &cert, &key).unwrap();
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.key(LeafFile::Node)), 0o600);
        assert_eq!(mode(dir.ca_key()), 0o600);
        assert_eq!(mode(dir.root().to_path_buf()), 0o700);
        let id = dir.identity(LeafFile::Node).unwrap().unwrap();
        assert_eq!(id.common_name().unwrap(), "node-n1");
        assert!(dir.ca().unwrap().is_some());

        // Another key under the certificate: refused, naming both files.
        let (_, other_key) = ca.issue(&leaf, crate::pki::LEAF_VALIDITY).unwrap();
        write_atomic(&dir.key(LeafFile::Node), &other_key).unwrap();
        let err = dir.identity(LeafFile::Node).unwrap_err().to_string();
        assert!(
            err.contains("node.crt") && err.contains("node.key"),
            "{err}"
        );
        std::fs::remove_file(dir.key(LeafFile::Node)).unwrap();
        let err = dir.identity(LeafFile::Node).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
