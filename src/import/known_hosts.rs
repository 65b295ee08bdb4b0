//! Host keys for relays from `ssh-keyscan` output (the `known_hosts` format), so imported
//! Tunnels pin real keys.
//!
//! Accepts `host[,host...] keytype base64 [comment]` lines and `[host]:port` host names;
//! skips blank lines, comments, hashed names (`|1|...`) and `@cert-authority`/`@revoked`
//! markers. When a host has several keys, `ssh-ed25519` wins, then the first one listed.

use std::collections::BTreeMap;

use super::ImportError;

/// Host name or address → `keytype base64`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownHosts(BTreeMap<String, String>);

impl KnownHosts {
    /// Parses `text`; `source` names it in errors.
    pub fn parse(source: &str, text: &str) -> Result<Self, ImportError> {
        let mut keys = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(hosts), Some(kind), Some(body)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(ImportError::KnownHosts {
                    path: source.to_string(),
                    line: i + 1,
                    message: "expected `host keytype key` (the output of `ssh-keyscan HOST`)"
                        .into(),
                });
            };
            if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-")) {
                return Err(ImportError::KnownHosts {
                    path: source.to_string(),
                    line: i + 1,
                    message: format!(
                        "`{kind}` is not an SSH key type (ssh-ed25519, ecdsa-..., ssh-rsa)"
                    ),
                });
            }
            for host in hosts.split(',').filter(|h| !h.starts_with('|')) {
                let host = bare_host(host).to_string();
                let key = format!("{kind} {body}");
                let better = kind == "ssh-ed25519"
                    && !keys
                        .get(&host)
                        .is_some_and(|k: &String| k.starts_with("ssh-ed25519 "));
                if better || !keys.contains_key(&host) {
                    keys.insert(host, key);
                }
            }
        }
        Ok(KnownHosts(keys))
    }

    /// The key of the first of `names` that has one.
    pub fn find<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Option<&str> {
        names
            .into_iter()
            .find_map(|n| self.0.get(bare_host(n)).map(String::as_str))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `[host]:2222` → `host`; `host` as is.
fn bare_host(h: &str) -> &str {
    h.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .map_or(h, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_keyscan_output_is_read_and_ed25519_preferred() {
        let text = "# relay-1:22 SSH-2.0-OpenSSH_9.6\n\
            relay-1 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ\n\
            relay-1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne\n\
            [10.0.0.2]:2222,relay-2 ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY\n\
            |1|hashed= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHashed\n";
        let k = KnownHosts::parse("keys", text).unwrap();
        assert_eq!(
            k.find(["relay-1"]),
            Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne")
        );
        assert_eq!(k.find(["nope", "10.0.0.2"]).map(|s| &s[..5]), Some("ecdsa"));
        assert_eq!(k.find(["relay-2"]), k.find(["10.0.0.2"]));
        assert_eq!(k.find(["hashed="]), None);
    }

    #[test]
    fn a_line_that_is_not_a_key_names_the_file_and_line() {
        let e = KnownHosts::parse("keys.txt", "relay-1 ssh-ed25519 AAAA\nrelay-2 banana\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("keys.txt: line 2:"), "{e}");
    }
}
