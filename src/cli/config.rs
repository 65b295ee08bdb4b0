//! The operator's credentials: `RIFT_CONFIG` (default `~/.config/rift/config`), a file like a
//! kubeconfig (see [`crate::pki::credentials`]) that `rift up` writes as `<state>/admin.conf`.
//! `--endpoints` (or `RIFT_ENDPOINTS`) replaces its endpoints and keeps its credentials.
//! `--insecure` (or `RIFT_INSECURE=1`) talks plain `http://` to a plaintext cluster and reads
//! no credentials: only for clusters not yet moved to TLS.

use std::path::PathBuf;

use super::CliError;
use crate::pki::credentials::Credentials;
use crate::store::client::DEFAULT_ENDPOINT;
use crate::store::Access;

/// Where the credentials are read from when `RIFT_CONFIG` is not set.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/rift/config"))
}

/// How this command reaches etcd.
pub fn access(endpoints: &[String], insecure: bool) -> Result<Access, CliError> {
    if insecure {
        let endpoints = if endpoints.is_empty() {
            vec![DEFAULT_ENDPOINT.to_string()]
        } else {
            endpoints.to_vec()
        };
        return Ok(Access::insecure(&endpoints));
    }
    let path =
        match std::env::var_os("RIFT_CONFIG").filter(|p| !p.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => match default_path().filter(|p| p.exists()) {
                Some(p) => p,
                None => return Err(CliError::Usage(
                    "no credentials: set RIFT_CONFIG to the file `rift up` wrote (e.g. `export \
                     RIFT_CONFIG=$PWD/.rift/admin.conf`) or copy it to ~/.config/rift/config; \
                     for a plaintext cluster pass --insecure"
                        .into(),
                )),
            },
        };
    let creds = Credentials::load(&path).map_err(|e| {
        CliError::Usage(format!(
            "{e}{}",
            if std::env::var_os("RIFT_CONFIG").is_some() {
                " (from RIFT_CONFIG)"
            } else {
                ""
            }
        ))
    })?;
    let endpoints = if endpoints.is_empty() {
        creds.endpoints.clone()
    } else {
        endpoints.to_vec()
    };
    Ok(Access::tls(&endpoints, creds.identity()))
}
