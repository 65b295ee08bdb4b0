//! What a certificate says: its common name, names, validity and public key.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use super::PkiError;

/// The parts of a certificate rift looks at.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub is_ca: bool,
    /// The subject public key's bits (for ECDSA, the uncompressed point).
    pub public_key: Vec<u8>,
}

impl CertInfo {
    /// Time left until it expires (negative when it has).
    pub fn remaining(&self, now: DateTime<Utc>) -> chrono::Duration {
        self.not_after - now
    }

    /// Whether it is time to renew it: within `before` of its expiry, or expired.
    pub fn renewal_due(&self, now: DateTime<Utc>, before: std::time::Duration) -> bool {
        let before = chrono::Duration::from_std(before).unwrap_or(chrono::Duration::MAX);
        self.remaining(now) < before
    }
}

/// The DER of the first certificate in `pem`; `what` names it in errors.
pub fn der_of(pem: &str, what: &str) -> Result<Vec<u8>, PkiError> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::BadCertificate {
            what: what.into(),
            why: "no `BEGIN CERTIFICATE` block".into(),
        })?
        .map_err(|e| PkiError::BadCertificate {
            what: what.into(),
            why: format!("{e:?}"),
        })?;
    Ok(der.to_vec())
}

/// Reads the first certificate in `pem`.
pub fn inspect(pem: &str) -> Result<CertInfo, PkiError> {
    inspect_der(&der_of(pem, "the certificate")?)
}

/// Reads a DER certificate.
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let bad = |why: String| PkiError::BadCertificate {
        what: "the certificate".into(),
        why,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(b) = <[u8; 4]>::try_from(*bytes) {
                        ips.push(IpAddr::from(b));
                    } else if let Ok(b) = <[u8; 16]>::try_from(*bytes) {
                        ips.push(IpAddr::from(b));
                    }
                }
                _ => {}
            }
        }
    }
    let time = |t: x509_parser::time::ASN1Time| {
        DateTime::<Utc>::from_timestamp(t.timestamp(), 0).ok_or_else(|| bad("bad date".into()))
    };
    Ok(CertInfo {
        common_name,
        dns_names,
        ips,
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
        is_ca: cert.is_ca(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Leaf, NodeRole};

    #[test]
    fn issued_certificates_read_back_with_their_names_and_expiry() {
        let ca = Ca::create().unwrap();
        let ca_info = inspect(ca.cert_pem()).unwrap();
        assert!(ca_info.is_ca);
        assert_eq!(ca_info.common_name, "rift-ca");
        let days = ca_info.remaining(Utc::now()).num_days();
        assert!((3649..=3650).contains(&days), "{days}");

        let (cert, _) = ca
            .issue(
                &Leaf::Node {
                    name: "c1".into(),
                    role: NodeRole::Controller,
                },
                std::time::Duration::from_secs(30 * 86_400),
            )
            .unwrap();
        let info = inspect(&cert).unwrap();
        assert_eq!(info.common_name, "controller-c1");
        assert_eq!(info.dns_names, ["c1.node.rift", "controller.rift"]);
        assert!(!info.is_ca);
        assert!(info.renewal_due(Utc::now(), crate::pki::RENEW_BEFORE));

        let (cert, _) = ca
            .issue(
                &Leaf::EtcdServer {
                    hosts: vec!["10.1.2.3".into()],
                },
                crate::pki::LEAF_VALIDITY,
            )
            .unwrap();
        let info = inspect(&cert).unwrap();
        assert!(!info.renewal_due(Utc::now(), crate::pki::RENEW_BEFORE));
        assert_eq!(
            info.ips,
            ["10.1.2.3".parse::<IpAddr>().unwrap(), [127, 0, 0, 1].into()]
        );
    }

    #[test]
    fn text_that_is_no_certificate_says_so() {
        let err = inspect("hello").unwrap_err().to_string();
        assert!(err.contains("BEGIN CERTIFICATE"), "{err}");
        let truncated = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert!(inspect(truncated).is_err());
    }
}
