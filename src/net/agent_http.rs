//! One GET to a node's agent, HTTP/1.0 over TLS (the agent verified as `<node>.node.rift`, this
//! side presenting its own certificate; plain TCP in an insecure cluster), read as a stream: what
//! `rift logs` and the dashboard's live log tail use to fetch a job's output from its node.
//!
//! HTTP/1.0 makes the agent answer with an unchunked body that ends when it closes the
//! connection, so a followed log is simply read until EOF. Bounded: headers over 64 KiB are
//! refused, an agent that connects but sends no status line within [`RESPONSE_TIMEOUT`] is
//! given up on, and an error body is read to at most [`MAX_ERROR_BODY`] bytes.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::dial::connect_one;
use super::{AgentStream, AgentTls};

/// How long a connected agent may take to answer with its status line and headers.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an error body read.
pub const MAX_ERROR_BODY: usize = 4096;
/// The most header bytes accepted.
const MAX_HEAD: usize = 64 * 1024;

/// A response whose status line and headers were read; the body follows on the connection.
pub struct Response {
    pub status: u16,
    /// Body bytes that came in with the headers, handed out first by [`Response::read`].
    pending: Vec<u8>,
    stream: AgentStream,
}

/// Connects to node `node`'s agent at `addr` within `connect_timeout` and sends `GET path`; an
/// error says why in a few words (for a list of addresses tried).
pub async fn get(
    tls: &AgentTls,
    node: &str,
    addr: &str,
    path: &str,
    connect_timeout: Duration,
) -> Result<Response, String> {
    let tcp = connect_one(addr, connect_timeout).await?;
    get_on(tls, node, tcp, addr, path).await
}

/// Sends `GET path` to node `node`'s agent on a connection already open to `addr` (TLS is
/// opened on it first) and reads the status and headers.
pub async fn get_on(
    tls: &AgentTls,
    node: &str,
    tcp: TcpStream,
    addr: &str,
    path: &str,
) -> Result<Response, String> {
    let mut stream = tls.open(node, tcp).await?;
    let head = async {
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: rift/{}\r\nAccept: text/plain\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let status = parse_status(&buf[..end])
                    .ok_or_else(|| "answered, but not with HTTP".to_string())?;
                return Ok((status, buf.split_off(end + 4)));
            }
            if buf.len() > MAX_HEAD {
                return Err("answered with oversized headers".to_string());
            }
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed the connection without answering".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let (status, pending) = tokio::time::timeout(RESPONSE_TIMEOUT, head)
        .await
        .map_err(|_| {
            format!(
                "connected, but no answer within {}s",
                RESPONSE_TIMEOUT.as_secs()
            )
        })??;
    Ok(Response {
        status,
        pending,
        stream,
    })
}

impl Response {
    /// The next piece of the body into `buf`; 0 at its end (the agent closed the connection).
    /// Cancel-safe: a read raced and dropped loses nothing.
    pub async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            return Ok(n);
        }
        self.stream.read(buf).await
    }

    /// The first non-empty line of an error answer's body (bounded, and briefly waited for).
    pub async fn error_body(&mut self) -> String {
        let mut body = std::mem::take(&mut self.pending);
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while body.len() < MAX_ERROR_BODY {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&body);
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if line.is_empty() {
            "(no message)".into()
        } else {
            line.trim().to_string()
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The status code of `HTTP/1.x CODE REASON`.
fn parse_status(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head).ok()?;
    let mut parts = text.lines().next()?.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.0 404 Not Found\r\nx: y"), Some(404));
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
    }
}
