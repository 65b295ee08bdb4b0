//! A minimal HTTP/1.1 GET over a plain TCP stream, for probing agents without an HTTP client
//! dependency.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `(status code, body)` of `GET path` on `addr`, or `None` when nothing answers within
/// `timeout`.
pub fn get(addr: &str, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let code = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// The JSON body of `GET path`, when it answers 200 with JSON.
pub fn get_json(addr: &str, path: &str, timeout: Duration) -> Option<serde_json::Value> {
    let (code, body) = get(addr, path, timeout)?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}
