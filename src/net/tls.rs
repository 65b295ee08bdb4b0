//! Talking to agents over TLS: the agent is verified as `<node>.node.rift` by the cluster CA
//! (whatever address or relay it was reached through) and this side presents its own
//! certificate. A plaintext cluster (`--insecure`) talks plain HTTP as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::pki::names::agent_server_name;
use crate::pki::{Identity, PkiError};

/// How long a TLS handshake with an agent may take.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How this process reaches agents. Cheap to clone.
#[derive(Clone)]
pub struct AgentTls {
    connector: Option<TlsConnector>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls")
            .field("tls", &self.connector.is_some())
            .finish()
    }
}

impl AgentTls {
    /// TLS with `identity` (its CA verifies agents; its certificate is presented).
    pub fn new(identity: &Identity) -> Result<AgentTls, PkiError> {
        Ok(AgentTls {
            connector: Some(TlsConnector::from(crate::pki::tls::client_config(
                identity,
            )?)),
        })
    }

    /// Plain HTTP, for a plaintext cluster.
    pub fn insecure() -> AgentTls {
        AgentTls { connector: None }
    }

    /// TLS when `identity` is given, else plain.
    pub fn for_identity(identity: Option<&Identity>) -> Result<AgentTls, PkiError> {
        match identity {
            Some(id) => AgentTls::new(id),
            None => Ok(AgentTls::insecure()),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.connector.is_some()
    }

    /// Wraps a connection to node `node`'s agent; the error says why in a few words.
    pub async fn open(&self, node: &str, tcp: TcpStream) -> Result<AgentStream, String> {
        let Some(connector) = &self.connector else {
            return Ok(AgentStream::Plain(tcp));
        };
        let name = ServerName::try_from(agent_server_name(node))
            .map_err(|e| format!("node name {node:?} is no server name: {e}"))?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(AgentStream::Tls(Box::new(s))),
            Ok(Err(e)) => Err(format!("TLS: {e}")),
            Err(_) => Err("TLS: no handshake within 5 s".into()),
        }
    }
}

/// A connection to an agent: plain or TLS.
pub enum AgentStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for AgentStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            AgentStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            AgentStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_flush(cx),
            AgentStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            AgentStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
