//! Delivering one notification: the body in each format, the HMAC-SHA256 signature, the
//! secret read at delivery time, and the POST with retries, backoff and jitter.

use backon::{ExponentialBuilder, Retryable};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::NotifierConfig;
use crate::api::event::Event;
use crate::api::notifier::{NotifierFormat, NotifierSpec, SecretRef};

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Rift-Signature";
/// The header carrying the event's id.
pub const EVENT_HEADER: &str = "X-Rift-Event";
/// Discord refuses `content` longer than this.
pub(super) const DISCORD_MAX_CHARS: usize = 2000;
/// Slack's limit for `text` is 40 000; stay well below.
const TEXT_MAX_CHARS: usize = 4000;

/// Why one notification was not delivered. Never contains the secret or the full URL.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("signing secret unavailable: {0}")]
    Secret(String),
    #[error("{host} answered HTTP {status}{detail}")]
    Status {
        host: String,
        status: u16,
        detail: String,
    },
    #[error("POST to {host} failed: {reason}")]
    Transport { host: String, reason: String },
}

impl DeliveryError {
    /// Worth another attempt: the network, a timeout, 408, 429 or a server error.
    pub fn is_retryable(&self) -> bool {
        match self {
            DeliveryError::Secret(_) => false,
            DeliveryError::Status { status, .. } => {
                *status == 408 || *status == 429 || *status >= 500
            }
            DeliveryError::Transport { .. } => true,
        }
    }
}

/// Whether `spec` subscribes to events with `reason`.
pub fn wants(spec: &NotifierSpec, reason: &str) -> bool {
    spec.events.is_empty() || spec.events.iter().any(|e| e == reason)
}

/// `s`, or its first `max - 1` characters and `…` when it is longer than `max`.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The one-line text of a notification, e.g.
/// `Warning job_failed job/train-1: exit code 1 (3 times, agent/n1)`.
pub fn text(event: &Event) -> String {
    let s = &event.spec;
    let mut extra = Vec::new();
    if s.count > 1 {
        extra.push(format!("{} times", s.count));
    }
    if !s.source.is_empty() {
        extra.push(s.source.clone());
    }
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" ({})", extra.join(", "))
    };
    format!(
        "{:?} {} {}/{}: {}{extra}",
        s.event_type,
        s.reason,
        s.involved_object.kind.to_lowercase(),
        s.involved_object.name,
        s.message
    )
}

/// The exact body POSTed for `event` in `format`.
pub fn body(format: NotifierFormat, event: &Event) -> Vec<u8> {
    let text = text(event);
    let value = match format {
        NotifierFormat::Json => {
            let mut v = serde_json::to_value(event).expect("events serialize");
            if let Some(map) = v.as_object_mut() {
                map.insert("text".into(), Value::String(text));
            }
            v
        }
        NotifierFormat::Slack => serde_json::json!({ "text": cut(&text, TEXT_MAX_CHARS) }),
        NotifierFormat::Discord => {
            serde_json::json!({ "content": cut(&text, DISCORD_MAX_CHARS) })
        }
    };
    serde_json::to_vec(&value).expect("JSON values serialize")
}

/// `sha256=<hex>`: HMAC-SHA256 of `body` keyed with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Reads the signing secret named by `secret` (trailing newlines of a file are dropped).
pub async fn read_secret(secret: &SecretRef) -> Result<Vec<u8>, DeliveryError> {
    let value = match (&secret.env, &secret.file) {
        (Some(var), _) => std::env::var(var).map_err(|_| {
            DeliveryError::Secret(format!("environment variable `{var}` is not set"))
        })?,
        (None, Some(path)) => read_secret_file(path).await?,
        (None, None) => {
            return Err(DeliveryError::Secret(
                "spec.secret names neither `env` nor `file`".into(),
            ))
        }
    };
    let value = value.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(DeliveryError::Secret("the secret is empty".into()));
    }
    Ok(value.as_bytes().to_vec())
}

/// The largest secret file read.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A secret file's text, refused past [`MAX_SECRET_BYTES`] (a path such as `/dev/zero` must
/// not fill memory).
async fn read_secret_file(path: &str) -> Result<String, DeliveryError> {
    use tokio::io::AsyncReadExt;
    let cannot = |e: &dyn std::fmt::Display| {
        DeliveryError::Secret(format!("cannot read file `{path}`: {e}"))
    };
    let file = tokio::fs::File::open(path).await.map_err(|e| cannot(&e))?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| cannot(&e))?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(cannot(&format!(
            "larger than {MAX_SECRET_BYTES} bytes; a signing secret is a short string"
        )));
    }
    String::from_utf8(bytes).map_err(|_| cannot(&"not UTF-8 text"))
}

/// The host (and port) of `url`, for messages: the rest of a webhook URL may be a credential.
pub(super) fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_string();
            Some(match u.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            })
        })
        .unwrap_or_else(|| "(invalid URL)".into())
}

/// A reqwest error without its URL, with its innermost cause.
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut cause: &dyn std::error::Error = &e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    format!("{kind}: {cause}")
}

/// The HTTP client for deliveries: short timeouts, no redirects (a redirected POST is a
/// misconfigured URL), rustls with the webpki roots.
pub fn http_client(config: &NotifierConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("rift/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds")
}

async fn post_once(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    signature: Option<&str>,
    event_id: &str,
) -> Result<(), DeliveryError> {
    let host = host_of(url);
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_HEADER, event_id)
        .body(body.to_vec());
    if let Some(sig) = signature {
        req = req.header(SIGNATURE_HEADER, sig);
    }
    let resp = req.send().await.map_err(|e| DeliveryError::Transport {
        host: host.clone(),
        reason: describe(e),
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let detail = resp.text().await.unwrap_or_default();
    let detail = cut(detail.trim(), 200);
    Err(DeliveryError::Status {
        host,
        status: status.as_u16(),
        detail: if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        },
    })
}

/// Delivers `event` as `spec` asks, with retries; `Ok` once the endpoint answered 2xx.
pub async fn deliver(
    client: &reqwest::Client,
    config: &NotifierConfig,
    spec: &NotifierSpec,
    event: &Event,
) -> Result<(), DeliveryError> {
    let body = body(spec.format, event);
    let signature = match &spec.secret {
        Some(s) => Some(signature(&read_secret(s).await?, &body)),
        None => None,
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(config.min_backoff)
        .with_max_delay(config.max_backoff)
        .with_jitter()
        .with_max_times(config.attempts.saturating_sub(1));
    let id = event.metadata.name.as_str();
    (|| post_once(client, &spec.url, &body, signature.as_deref(), id))
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(DeliveryError::is_retryable)
        .await
}
