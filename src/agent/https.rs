//! TLS for the agent's HTTP: the [`Tls`] transport for [`super::http_server`] (the node
//! certificate; a client certificate of the cluster CA is verified when presented, and handlers
//! decide what needs one, see [`super::http`]), and the [`Caller`] every request carries.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::http_server::Transport;
use crate::pki::names::Principal;

/// What a request's connection proved about its caller (an extension on every request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A plaintext agent (`--insecure`): nobody is identified; everything is open, as before
    /// TLS.
    Insecure,
    /// TLS without a client certificate.
    Anonymous,
    /// TLS with a client certificate of the cluster CA.
    Certified(Principal),
}

/// TLS over the accepted connection, with the agent's server configuration.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
}

impl Tls {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Tls {
        Tls {
            acceptor: TlsAcceptor::from(config),
        }
    }
}

impl Transport for Tls {
    type Io = TlsStream<TcpStream>;

    async fn wrap(&self, tcp: TcpStream) -> std::io::Result<Self::Io> {
        self.acceptor.accept(tcp).await
    }

    /// From the verified client certificate, if one was presented.
    fn caller(&self, io: &Self::Io) -> Caller {
        match io.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            None => Caller::Anonymous,
            Some(der) => match crate::pki::inspect::inspect_der(der) {
                Ok(info) => Caller::Certified(Principal::from_common_name(&info.common_name)),
                Err(_) => Caller::Anonymous,
            },
        }
    }
}
