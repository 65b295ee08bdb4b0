//! A minimal HTTP/1.1 GET, for probing agents without an HTTP client dependency: over TLS with
//! the cluster's operator certificate for an agent of a TLS test cluster (its name checked as
//! `<node>.node.rift`), plain for an agent of a plaintext one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// `(status code, body)` of `GET path` on `addr`, or `None` when nothing answers within
/// `timeout`. Presents the operator's certificate to a TLS agent.
pub fn get(addr: &str, path: &str, timeout: Duration) -> Option<(u16, String)> {
    get_as(addr, path, timeout, true)
}

/// As [`get`], sent to `addr` for the agent listening at `agent` (e.g. through a relay's
/// forwarded port): the TLS connection checks that agent's name.
pub fn get_through(
    addr: &str,
    agent: &str,
    path: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let raw = exchange_with(
        addr,
        super::trust::lookup_agent(agent),
        &request,
        timeout,
        true,
    )?;
    parse(&raw)
}

/// As [`get`], presenting no client certificate to a TLS agent.
pub fn get_anonymous(addr: &str, path: &str, timeout: Duration) -> Option<(u16, String)> {
    get_as(addr, path, timeout, false)
}

fn get_as(addr: &str, path: &str, timeout: Duration, with_cert: bool) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let raw = exchange_as(addr, &request, timeout, with_cert)?;
    parse(&raw)
}

fn parse(raw: &str) -> Option<(u16, String)> {
    let code = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Sends `request` as it is and reads the answer until the agent closes the connection
/// (over TLS, with the operator's certificate, to an agent of a TLS test cluster).
pub fn exchange(addr: &str, request: &str, timeout: Duration) -> Option<String> {
    exchange_as(addr, request, timeout, true)
}

/// As [`exchange`], presenting no client certificate.
pub fn exchange_anonymous(addr: &str, request: &str, timeout: Duration) -> Option<String> {
    exchange_as(addr, request, timeout, false)
}

fn exchange_as(addr: &str, request: &str, timeout: Duration, with_cert: bool) -> Option<String> {
    exchange_with(
        addr,
        super::trust::lookup_agent(addr),
        request,
        timeout,
        with_cert,
    )
}

fn exchange_with(
    addr: &str,
    agent: Option<(String, Arc<super::trust::Trust>)>,
    request: &str,
    timeout: Duration,
    with_cert: bool,
) -> Option<String> {
    let s = TcpStream::connect_timeout(&addr.parse().ok()?, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    let mut raw = Vec::new();
    match agent {
        Some((node, trust)) => {
            let admin = trust.admin()?;
            let config = if with_cert {
                rift::pki::tls::client_config(&admin).ok()?
            } else {
                rift::pki::tls::anonymous_client_config(&admin.ca_pem).ok()?
            };
            let name = rustls_name(&node)?;
            let conn = rustls::ClientConnection::new(Arc::clone(&config), name).ok()?;
            let mut tls = rustls::StreamOwned::new(conn, s);
            tls.write_all(request.as_bytes()).ok()?;
            // An agent that closes without close_notify still sent a whole answer.
            let _ = tls.read_to_end(&mut raw);
        }
        None => {
            let mut s = s;
            s.write_all(request.as_bytes()).ok()?;
            s.read_to_end(&mut raw).ok()?;
        }
    }
    Some(String::from_utf8_lossy(&raw).into_owned())
}

fn rustls_name(node: &str) -> Option<rustls::pki_types::ServerName<'static>> {
    rustls::pki_types::ServerName::try_from(rift::pki::names::agent_server_name(node)).ok()
}

/// The JSON body of `GET path`, when it answers 200 with JSON.
pub fn get_json(addr: &str, path: &str, timeout: Duration) -> Option<serde_json::Value> {
    let (code, body) = get(addr, path, timeout)?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}
