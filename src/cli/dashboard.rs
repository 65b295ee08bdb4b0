//! `rift dashboard [--listen ADDR] [--open]`: the live web view of the cluster, read-only,
//! reading etcd with this operator's credentials (see [`crate::dashboard`]).

use std::net::SocketAddr;

use crate::dashboard::{self, Limits};
use crate::store::{Access, Store};

use super::CliError;

/// Where the dashboard listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8780";

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Address to serve on. Anyone who can reach it sees the cluster (read-only, no login):
    /// keep it on loopback, or behind something that authenticates.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Open it in the default browser.
    #[arg(long)]
    pub open: bool,
}

pub async fn run(args: DashboardArgs, access: &Access) -> Result<(), CliError> {
    // A lazy connection: the dashboard starts (and says so on the page) while etcd is away.
    let store = Store::connect_lazy(access).await?;
    let listener = dashboard::bind(args.listen)
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    let url = url_of(addr);
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: the dashboard has no login and listens on {addr}: anyone who can reach it \
             sees the cluster"
        );
    }
    println!(
        "rift dashboard: {url} (etcd at {}; Ctrl-C stops it)",
        access.endpoints().join(",")
    );
    if args.open {
        open_browser(&url);
    }
    let shutdown = crate::tasks::shutdown_on_signals();
    dashboard::serve(listener, store, Limits::default(), shutdown).await;
    Ok(())
}

/// The address people type for `addr` (an unspecified address is reached on loopback).
pub fn url_of(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}/", addr.port())
}

/// Starts the desktop's browser on `url`; says so when there is none.
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let started = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = started {
        eprintln!("cannot start a browser ({opener}: {e}); open {url} yourself");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_reachable_address() {
        assert_eq!(
            url_of("127.0.0.1:8780".parse().unwrap()),
            "http://127.0.0.1:8780/"
        );
        assert_eq!(
            url_of("0.0.0.0:80".parse().unwrap()),
            "http://127.0.0.1:80/"
        );
        assert_eq!(url_of("[::1]:8780".parse().unwrap()), "http://[::1]:8780/");
        assert_eq!(url_of("[::]:8780".parse().unwrap()), "http://[::1]:8780/");
    }
}
