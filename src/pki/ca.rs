//! The cluster CA and the leaf certificates it signs.
//!
//! Guarantees:
//! - Keys are ECDSA P-256. A signing request with any other key type is refused.
//! - What a leaf may do and which names it carries come from the [`Leaf`] the signer chose
//!   (from the token's role, the node's name and its Node's addresses), never from the request:
//!   a request contributes only its public key, after its signature is checked. So a node
//!   cannot ask for `root`, another node's name or `controller.rift`.
//! - Validity starts five minutes in the past (clocks differ a little) and ends
//!   [`super::LEAF_VALIDITY`] later, or when the caller says (tests and renewal checks).
//! - Serial numbers are 16 random bytes.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

use super::names::{self, NodeRole};
use super::PkiError;

/// The largest signing request accepted (a P-256 request is under 1 KiB).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// What a leaf certificate is for. The signer decides; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leaf {
    /// A node's identity: the etcd user [`names::node_user`], its agent's HTTPS server
    /// (`<node>.node.rift`; a controller also `controller.rift`), and a client of other agents.
    Node { name: String, role: NodeRole },
    /// An operator: the etcd user `root`; a client only.
    Admin,
    /// etcd's client-facing certificate: `etcd.rift` (what rift verifies), and the node's
    /// addresses, `localhost` and `127.0.0.1` (so `etcdctl` works by address).
    EtcdServer { hosts: Vec<String> },
    /// etcd's peer certificate (server and client between members). etcd 3.4 checks that a
    /// connecting member's address is among its certificate's names, so it carries the node's
    /// addresses, and `127.0.0.1` when one of them is a loopback address (the kernel sends from
    /// `127.0.0.1` to any `127.x` address).
    EtcdPeer { hosts: Vec<String> },
}

impl Leaf {
    /// The common name (the etcd user, for client certificates).
    pub fn common_name(&self) -> String {
        match self {
            Leaf::Node { name, role } => names::node_user(*role, name),
            Leaf::Admin => names::ROOT_USER.into(),
            Leaf::EtcdServer { .. } => names::ETCD_SERVER_CN.into(),
            Leaf::EtcdPeer { .. } => names::ETCD_PEER_CN.into(),
        }
    }

    /// The subject alternative names, as text (DNS names and IP addresses).
    pub fn alt_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |s: String| {
            if !s.is_empty() && !out.contains(&s) {
                out.push(s);
            }
        };
        match self {
            Leaf::Node { name, role } => {
                push(names::agent_server_name(name));
                if *role == NodeRole::Controller {
                    push(names::CONTROLLER_NAME.into());
                }
            }
            Leaf::Admin => {}
            Leaf::EtcdServer { hosts } => {
                push(names::ETCD_SERVER_NAME.into());
                for h in hosts {
                    push(bare_host(h));
                }
                push("localhost".into());
                push("127.0.0.1".into());
            }
            Leaf::EtcdPeer { hosts } => {
                for h in hosts {
                    push(bare_host(h));
                }
                let loopback = hosts
                    .iter()
                    .filter_map(|h| bare_host(h).parse::<IpAddr>().ok())
                    .any(|ip| ip.is_loopback());
                if loopback {
                    push("127.0.0.1".into());
                }
            }
        }
        out
    }

    fn usages(&self) -> Vec<ExtendedKeyUsagePurpose> {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        match self {
            Leaf::Admin => vec![ClientAuth],
            Leaf::EtcdServer { .. } => vec![ServerAuth],
            Leaf::Node { .. } | Leaf::EtcdPeer { .. } => vec![ServerAuth, ClientAuth],
        }
    }

    fn params(&self, validity: Duration) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&self.common_name());
        params.subject_alt_names = self
            .alt_names()
            .into_iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => s
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| PkiError::Generate(format!("`{s}` is no DNS name"))),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = self.usages();
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity)?;
        Ok(params)
    }
}

/// `host` without brackets or a port (`[::1]:2379` → `::1`, `10.0.0.1:2380` → `10.0.0.1`).
fn bare_host(h: &str) -> String {
    let h = h.trim();
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    if h.parse::<IpAddr>().is_ok() {
        return h.to_string();
    }
    h.rsplit_once(':')
        .filter(|(_, p)| p.parse::<u16>().is_ok())
        .map(|(host, _)| host.to_string())
        .unwrap_or_else(|| h.to_string())
}

fn distinguished_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) -> Result<(), PkiError> {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now
        + time::Duration::try_from(validity)
            .map_err(|_| PkiError::Generate("validity too long".into()))?;
    params.serial_number = Some(random_serial()?);
    Ok(())
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| PkiError::Generate("no randomness from the system".into()))?;
    bytes[0] &= 0x7f; // a positive integer
    Ok(SerialNumber::from_slice(&bytes))
}

/// A new ECDSA P-256 key pair.
pub fn new_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// A new key (PEM) and a signing request for it (PEM), for a node that asks a controller for
/// a certificate: the key never leaves the node. The request names nothing; the signer decides.
pub fn new_key_and_request() -> Result<(String, String), PkiError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name("rift-request");
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The SHA-256 of a certificate's DER, as lowercase hex: what join tokens pin.
pub fn fingerprint(cert_pem: &str) -> Result<String, PkiError> {
    let der = super::inspect::der_of(cert_pem, "the CA certificate")?;
    Ok(hex::encode(Sha256::digest(&der)))
}

/// The cluster CA: its certificate and private key.
#[derive(Clone)]
pub struct Ca {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA valid for [`super::CA_VALIDITY`].
    pub fn create() -> Result<Ca, PkiError> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(names::CA_CN);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, super::CA_VALIDITY)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CA from its PEM files; the key must belong to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let ca = Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        };
        let key = ca.key()?;
        let info = super::inspect::inspect(cert_pem)?;
        if !info.is_ca || info.public_key != key.public_key_raw() {
            return Err(PkiError::KeyMismatch {
                what: "the CA certificate".into(),
                cert: "ca.crt".into(),
                key: "ca.key".into(),
            });
        }
        Ok(ca)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The SHA-256 of the CA certificate (what a join token pins).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_pem).expect("a loaded CA certificate parses")
    }

    fn key(&self) -> Result<KeyPair, PkiError> {
        KeyPair::from_pem(&self.key_pem).map_err(|e| PkiError::BadKey {
            what: "the CA key".into(),
            why: e.to_string(),
        })
    }

    fn sign(
        &self,
        leaf: &Leaf,
        public_key: &impl rcgen::PublicKeyData,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, self.key()?)?;
        Ok(leaf.params(validity)?.signed_by(public_key, &issuer)?.pem())
    }

    /// A new key and a certificate for `leaf`: (certificate PEM, key PEM). For keys made where
    /// they are used (the bootstrapping node, `rift up`, test and benchmark clusters).
    pub fn issue(&self, leaf: &Leaf, validity: Duration) -> Result<(String, String), PkiError> {
        let key = new_key()?;
        let cert = self.sign(leaf, &key, validity)?;
        Ok((cert, key.serialize_pem()))
    }

    /// A certificate for `leaf` over the public key of `request_pem` (a PKCS#10 request whose
    /// signature is checked; ECDSA P-256 only). Everything else in the request is ignored.
    pub fn sign_request(
        &self,
        leaf: &Leaf,
        request_pem: &str,
        validity: Duration,
    ) -> Result<String, PkiError> {
        if request_pem.len() > MAX_REQUEST_BYTES {
            return Err(PkiError::BadRequest(format!(
                "{} bytes; a request is at most {MAX_REQUEST_BYTES}",
                request_pem.len()
            )));
        }
        let request = CertificateSigningRequestParams::from_pem(request_pem)
            .map_err(|e| PkiError::BadRequest(e.to_string()))?;
        if request.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::BadRequest(
                "the key is not ECDSA P-256 (make it with rift)".into(),
            ));
        }
        self.sign(leaf, &request.public_key, validity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::inspect::inspect;

    #[test]
    fn a_signed_request_gets_the_signers_names_not_its_own() {
        let ca = Ca::create().unwrap();
        // A request asking for root and controller.rift.
        let key = new_key().unwrap();
        let mut params = CertificateParams::new(vec!["controller.rift".to_string()]).unwrap();
        params.distinguished_name = distinguished_name("root");
        let request = params.serialize_request(&key).unwrap().pem().unwrap();
        let leaf = Leaf::Node {
            name: "n1".into(),
            role: NodeRole::Worker,
        };
        let cert = ca
            .sign_request(&leaf, &request, crate::pki::LEAF_VALIDITY)
            .unwrap();
        let info = inspect(&cert).unwrap();
        assert_eq!(info.common_name, "node-n1");
        assert_eq!(info.dns_names, ["n1.node.rift"]);
        assert_eq!(info.public_key, key.public_key_raw());
    }

    #[test]
    fn garbage_oversized_and_non_p256_requests_are_refused() {
        let ca = Ca::create().unwrap();
        let leaf = Leaf::Admin;
        let v = crate::pki::LEAF_VALIDITY;
        assert!(ca.sign_request(&leaf, "not a request", v).is_err());
        let huge = "A".repeat(MAX_REQUEST_BYTES + 1);
        assert!(matches!(
            ca.sign_request(&leaf, &huge, v),
            Err(PkiError::BadRequest(m)) if m.contains("at most")
        ));
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let request = CertificateParams::default()
            .serialize_request(&ed)
            .unwrap()
            .pem()
            .unwrap();
        assert!(matches!(
            ca.sign_request(&leaf, &request, v),
            Err(PkiError::BadRequest(m)) if m.contains("P-256")
        ));
    }

    #[test]
    fn peer_certificates_name_loopback_when_the_node_lives_on_loopback() {
        let leaf = Leaf::EtcdPeer {
            hosts: vec!["127.0.0.3".into()],
        };
        assert_eq!(leaf.alt_names(), ["127.0.0.3", "127.0.0.1"]);
        let leaf = Leaf::EtcdPeer {
            hosts: vec!["100.64.0.2".into(), "[2001:db8::1]".into()],
        };
        assert_eq!(leaf.alt_names(), ["100.64.0.2", "2001:db8::1"]);
        let server = Leaf::EtcdServer {
            hosts: vec!["gh200-a.example".into()],
        };
        assert_eq!(
            server.alt_names(),
            ["etcd.rift", "gh200-a.example", "localhost", "127.0.0.1"]
        );
    }

    #[test]
    fn a_ca_loads_only_with_its_own_key() {
        let a = Ca::create().unwrap();
        let b = Ca::create().unwrap();
        assert!(Ca::from_pem(a.cert_pem(), a.key_pem()).is_ok());
        assert!(matches!(
            Ca::from_pem(a.cert_pem(), b.key_pem()),
            Err(PkiError::KeyMismatch { .. })
        ));
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
    }
}
