//! TLS configurations built from an [`Identity`]: for etcd (tonic, verifying `etcd.rift`),
//! for the agent's HTTPS server (client certificates of the cluster CA accepted, not
//! required: `/healthz` and `/readyz` stay open), and for reaching agents.
//!
//! Everything uses rustls with the ring provider: no OpenSSL.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use super::{Identity, PkiError};

/// The one crypto provider rift uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Tls(e.to_string())
}

/// Every certificate in `pem`.
pub fn certificates(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::BadCertificate {
            what: what.into(),
            why: format!("{e:?}"),
        })?;
    if certs.is_empty() {
        return Err(PkiError::BadCertificate {
            what: what.into(),
            why: "no `BEGIN CERTIFICATE` block".into(),
        });
    }
    Ok(certs)
}

/// The private key in `pem`.
pub fn private_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadKey {
        what: what.into(),
        why: format!("{e:?}"),
    })
}

/// A trust store holding only the cluster CA.
pub fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem, "the CA certificate")? {
        roots.add(cert).map_err(tls_err)?;
    }
    Ok(roots)
}

/// How long a TLS handshake with etcd may take. The connect timeout covers only TCP: a
/// handshake whose server reply was lost (a link that drops packets one way) waited forever,
/// as neither side speaks again, and the connection never came back after the link healed.
pub const ETCD_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The agent's HTTPS server: its node certificate; client certificates of the cluster CA are
/// verified when presented and not required (handlers decide; see `agent::http`).
pub fn server_config(id: &Identity) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&id.ca_pem)?),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(tls_err)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certificates(&id.cert_pem, "the node certificate")?,
            private_key(&id.key_pem, "the node key")?,
        )
        .map_err(tls_err)?;
    // The agent's server speaks HTTP/1.1 only (see `agent::http_server`).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client of agents that trusts the cluster CA and presents `id`'s certificate.
pub fn client_config(id: &Identity) -> Result<Arc<ClientConfig>, PkiError> {
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_root_certificates(roots(&id.ca_pem)?)
            .with_client_auth_cert(
                certificates(&id.cert_pem, "the client certificate")?,
                private_key(&id.key_pem, "the client key")?,
            )
            .map_err(tls_err)?,
    ))
}

/// A client that trusts `ca_pem` and presents no certificate (a node that is joining).
pub fn anonymous_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, PkiError> {
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_root_certificates(roots(ca_pem)?)
            .with_no_client_auth(),
    ))
}

/// A client that accepts any server certificate. Only for fetching a CA certificate whose
/// hash is checked against a join token before anything secret is sent.
pub fn unverified_client_config() -> Result<Arc<ClientConfig>, PkiError> {
    let provider = provider();
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_no_client_auth(),
    ))
}

/// Accepts any certificate but still checks the handshake's signatures.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
