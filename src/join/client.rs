//! The node's side: fetch and pin the CA, make keys and requests, send them, keep the answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::token::Token;
use super::{
    CertificateRequests, Certificates, JoinError, JoinRequest, JoinResponse, MAX_BODY_BYTES,
};
use crate::pki::dir::LeafFile;
use crate::pki::names::CONTROLLER_NAME;
use crate::pki::{ca, tls, Identity, PkiDir};

/// How long each request to the controller may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A controller's agent URL: `https://host:port` (a bare `host:port` gets `https://`).
#[derive(Clone, Debug)]
pub struct ControllerUrl {
    pub url: String,
    host_port: String,
}

impl ControllerUrl {
    pub fn parse(text: &str) -> Result<ControllerUrl, JoinError> {
        let text = text.trim().trim_end_matches('/');
        let rest = match text.split_once("://") {
            Some(("https", rest)) => rest,
            Some((scheme, _)) => {
                return Err(JoinError::Usage(format!(
                    "--join {text}: a join goes to a controller's agent over https://, not \
                     {scheme}:// (the old form, etcd endpoints without a token, needs \
                     --insecure)"
                )))
            }
            None => text,
        };
        if rest.is_empty() || rest.contains('/') {
            return Err(JoinError::Usage(format!(
                "--join {text}: expected https://HOST:PORT of a controller's agent (port 8770 \
                 by default)"
            )));
        }
        let host_port = if rest.rsplit_once(':').is_some_and(|(h, p)| {
            p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']'))
        }) {
            rest.to_string()
        } else {
            format!("{rest}:{}", crate::api::node::DEFAULT_AGENT_PORT)
        };
        Ok(ControllerUrl {
            url: format!("https://{host_port}"),
            host_port,
        })
    }

    async fn address(&self) -> Result<SocketAddr, JoinError> {
        tokio::net::lookup_host(&self.host_port)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| JoinError::Unreachable {
                url: self.url.clone(),
                why: "the host name does not resolve".into(),
            })
    }

    /// A client that reaches this controller and verifies it as `controller.rift` by `tls`.
    async fn client(
        &self,
        tls: rustls::ClientConfig,
    ) -> Result<(reqwest::Client, String), JoinError> {
        let addr = self.address().await?;
        let port = addr.port();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve(CONTROLLER_NAME, addr)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| JoinError::Usage(format!("cannot make an HTTPS client: {e}")))?;
        Ok((client, format!("https://{CONTROLLER_NAME}:{port}")))
    }

    fn unreachable(&self, e: reqwest::Error) -> JoinError {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why = format!("{why}: {s}");
            source = s.source();
        }
        JoinError::Unreachable {
            url: self.url.clone(),
            why,
        }
    }
}

/// POSTs `request` as JSON to `endpoint` of `url`'s agent and reads a JSON answer; anything but
/// 200, or an answer that does not decode, is a refusal naming the agent.
async fn post_json<T: serde::de::DeserializeOwned>(
    url: &ControllerUrl,
    client: &reqwest::Client,
    endpoint: &str,
    request: &impl serde::Serialize,
) -> Result<T, JoinError> {
    let resp = client
        .post(endpoint)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(request).expect("a request serializes"))
        .send()
        .await
        .map_err(|e| url.unreachable(e))?;
    let (status, bytes) = body(url, resp).await?;
    if status != 200 {
        return Err(JoinError::Refused {
            url: url.url.clone(),
            message: String::from_utf8_lossy(&bytes).trim().to_string(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| JoinError::Refused {
        url: url.url.clone(),
        message: format!("unreadable answer: {e}"),
    })
}

/// Reads a bounded body.
async fn body(url: &ControllerUrl, resp: reqwest::Response) -> Result<(u16, Vec<u8>), JoinError> {
    let status = resp.status().as_u16();
    if resp.content_length().unwrap_or(0) > MAX_BODY_BYTES as u64 {
        return Err(JoinError::Refused {
            url: url.url.clone(),
            message: "the answer is too large".into(),
        });
    }
    let bytes = resp.bytes().await.map_err(|e| url.unreachable(e))?;
    if bytes.len() > MAX_BODY_BYTES {
        return Err(JoinError::Refused {
            url: url.url.clone(),
            message: "the answer is too large".into(),
        });
    }
    Ok((status, bytes.to_vec()))
}

/// The CA a controller serves, checked against the token's hash. Nothing secret is sent
/// before this returns `Ok`.
pub async fn fetch_pinned_ca(url: &ControllerUrl, token: &Token) -> Result<String, JoinError> {
    let unverified = (*tls::unverified_client_config()?).clone();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(unverified)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| JoinError::Usage(format!("cannot make an HTTPS client: {e}")))?;
    let resp = client
        .get(format!("{}/v1/join/ca", url.url))
        .send()
        .await
        .map_err(|e| url.unreachable(e))?;
    let (status, bytes) = body(url, resp).await?;
    let pem = String::from_utf8_lossy(&bytes).into_owned();
    if status != 200 {
        return Err(JoinError::Refused {
            url: url.url.clone(),
            message: format!("GET /v1/join/ca answered {status}: {}", pem.trim()),
        });
    }
    let served = ca::fingerprint(&pem).map_err(|_| JoinError::Refused {
        url: url.url.clone(),
        message: "GET /v1/join/ca did not answer with a certificate: is this a rift agent?".into(),
    })?;
    if served != token.ca_hash {
        return Err(JoinError::WrongCa {
            url: url.url.clone(),
            served,
            expected: token.ca_hash.clone(),
        });
    }
    Ok(pem)
}

/// Keys made here for a set of requests; written only for the certificates that come back.
struct Keys {
    node: String,
    etcd_server: String,
    etcd_peer: String,
}

fn make_requests(etcd_hosts: &[String]) -> Result<(Keys, CertificateRequests), JoinError> {
    let (node_key, node_req) = ca::new_key_and_request()?;
    let (server_key, server_req) = ca::new_key_and_request()?;
    let (peer_key, peer_req) = ca::new_key_and_request()?;
    Ok((
        Keys {
            node: node_key,
            etcd_server: server_key,
            etcd_peer: peer_key,
        },
        CertificateRequests {
            node: node_req,
            etcd_server: Some(server_req),
            etcd_peer: Some(peer_req),
            etcd_hosts: etcd_hosts.to_vec(),
        },
    ))
}

/// Writes the certificates that came back (the CA last: a node with `ca.crt` has the rest).
fn keep(pki: &PkiDir, keys: &Keys, certs: &Certificates) -> Result<(), JoinError> {
    pki.write_leaf(LeafFile::Node, &certs.node, &keys.node)?;
    if let Some(c) = &certs.etcd_server {
        pki.write_leaf(LeafFile::EtcdServer, c, &keys.etcd_server)?;
    }
    if let Some(c) = &certs.etcd_peer {
        pki.write_leaf(LeafFile::EtcdPeer, c, &keys.etcd_peer)?;
    }
    pki.write_ca(&certs.ca, None)?;
    Ok(())
}

/// What a node says about itself when it joins.
pub struct JoinAs {
    pub node: String,
    pub spec: crate::api::NodeSpec,
    pub labels: std::collections::BTreeMap<String, String>,
    pub etcd_hosts: Vec<String>,
}

/// Joins through `url` with `token` and writes this node's certificates under `pki`.
pub async fn join(
    url: &ControllerUrl,
    token: &Token,
    me: JoinAs,
    pki: &PkiDir,
) -> Result<JoinResponse, JoinError> {
    let ca_pem = fetch_pinned_ca(url, token).await?;
    let (keys, requests) = make_requests(&me.etcd_hosts)?;
    let request = JoinRequest {
        token: token.credential(),
        node: me.node,
        requests,
        spec: me.spec,
        labels: me.labels,
    };
    let (client, base) = url
        .client((*tls::anonymous_client_config(&ca_pem)?).clone())
        .await?;
    let answer: JoinResponse =
        post_json(url, &client, &format!("{base}/v1/join"), &request).await?;
    if answer.certificates.ca.trim() != ca_pem.trim() {
        return Err(JoinError::Refused {
            url: url.url.clone(),
            message: "answered with another CA than it serves".into(),
        });
    }
    keep(pki, &keys, &answer.certificates)?;
    Ok(answer)
}

/// Renews this node's certificates through the controller at `url`, over `identity`: new keys,
/// the same name and role. Writes them under `pki` (etcd's certificates only when this node
/// has them already).
pub async fn renew(
    url: &ControllerUrl,
    identity: &Identity,
    etcd_hosts: &[String],
    pki: &PkiDir,
) -> Result<(), JoinError> {
    let (keys, mut requests) = make_requests(etcd_hosts)?;
    if !pki.has_etcd_certs() {
        requests.etcd_server = None;
        requests.etcd_peer = None;
    }
    let config: Arc<rustls::ClientConfig> = tls::client_config(identity)?;
    let (client, base) = url.client((*config).clone()).await?;
    let certs: Certificates =
        post_json(url, &client, &format!("{base}/v1/renew"), &requests).await?;
    if certs.ca.trim() != identity.ca_pem.trim() {
        return Err(JoinError::Refused {
            url: url.url.clone(),
            message: "answered with another CA".into(),
        });
    }
    keep(pki, &keys, &certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_urls_default_to_https_and_the_agent_port() {
        assert_eq!(
            ControllerUrl::parse("10.0.0.1").unwrap().url,
            "https://10.0.0.1:8770"
        );
        assert_eq!(
            ControllerUrl::parse("https://ctl.example:9000/")
                .unwrap()
                .url,
            "https://ctl.example:9000"
        );
        assert_eq!(
            ControllerUrl::parse("[::1]:8770").unwrap().url,
            "https://[::1]:8770"
        );
        let err = ControllerUrl::parse("http://10.0.0.1:2379").unwrap_err();
        assert!(err.to_string().contains("--insecure"), "{err}");
        assert!(ControllerUrl::parse("https://a/b").is_err());
    }
}
