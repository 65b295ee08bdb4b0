//! The dashboard's HTTP surface: pages (with `?live=1`, their event stream), a job's log
//! stream, embedded assets and `/healthz`; everything else is the 404 page. Read-only: only
//! GET and HEAD are answered.
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles and connections from
//! this origin only; no inline script or style, no frames, no forms elsewhere) and
//! `nosniff`. A dashboard listening on loopback answers only requests addressed to a loopback
//! name or address (`Host`), so a web page elsewhere cannot read it through DNS rebinding.
//! Live streams and log streams each have a cap ([`Limits`]); beyond it a request is answered
//! `503` with what to do.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query as QueryParams, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::pages::{self, Page, Query};
use super::source::Source;
use super::{assets, live, logs};
use crate::api::validation::dns1123_problem;
use crate::net::{AgentTls, Dialer};

/// The policy every answer carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Caps on the endless answers.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Pages open with live updates.
    pub live_streams: usize,
    /// Job log tails open (each holds a connection to an agent).
    pub log_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            live_streams: 256,
            log_streams: 32,
        }
    }
}

struct App {
    source: Source,
    dialer: Arc<Dialer>,
    agent_tls: Arc<AgentTls>,
    live: Arc<Semaphore>,
    logs: Arc<Semaphore>,
    limits: Limits,
    /// Set when listening on loopback: only loopback names may be asked for.
    loopback_only: bool,
    shutdown: CancellationToken,
}

/// The router for a dashboard listening on `listen`.
pub fn router(
    source: Source,
    agent_tls: AgentTls,
    listen: SocketAddr,
    limits: Limits,
    shutdown: CancellationToken,
) -> Router {
    let app = Arc::new(App {
        source,
        dialer: Arc::new(Dialer::default()),
        agent_tls: Arc::new(agent_tls),
        live: Arc::new(Semaphore::new(limits.live_streams)),
        logs: Arc::new(Semaphore::new(limits.log_streams)),
        limits,
        loopback_only: listen.ip().is_loopback(),
        shutdown,
    });
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/assets/{name}", get(asset))
        .route("/jobs/{name}/log", get(job_log))
        .fallback(page)
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// True when `host` (a `Host` header: name or address, with or without port) names this
/// machine's loopback: `localhost`, `*.localhost`, `127.x.y.z` or `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if app.loopback_only {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !is_loopback_host(host) {
            return plain(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this dashboard listens on loopback and answers only to localhost or a \
                     loopback address, not {host:?}\n"
                ),
            );
        }
    }
    let mut resp = if req.method() == Method::GET || req.method() == Method::HEAD {
        next.run(req).await
    } else {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard is read-only: only GET and HEAD\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// `?live=1` asks for the event stream; `h` is the hash of the fragment the browser has.
#[derive(Deserialize)]
struct LiveParams {
    live: Option<String>,
    h: Option<String>,
}

async fn page(
    State(app): State<Arc<App>>,
    uri: Uri,
    QueryParams(query): QueryParams<Query>,
    QueryParams(params): QueryParams<LiveParams>,
) -> Response {
    let view = app.source.view();
    let Some(page) = Page::from_path(uri.path()) else {
        let html = pages::document(
            None,
            "Not found",
            &view,
            None,
            pages::not_found(uri.path()),
            None,
            None,
        );
        return html_response(StatusCode::NOT_FOUND, html.into_string());
    };
    if params.live.is_some() {
        let Ok(permit) = app.live.clone().try_acquire_owned() else {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} pages are open with live updates, the limit; close some tabs\n",
                    app.limits.live_streams
                ),
            );
        };
        return live::stream(
            app.source.clone(),
            page,
            query,
            params.h,
            permit,
            app.shutdown.clone(),
        )
        .into_response();
    }
    let rendered = pages::render(&page, &app.source, &query);
    let fragment = rendered.fragment.into_string();
    let q = query.encoded();
    let sep = if q.is_empty() { "?" } else { "&" };
    let live_url = format!(
        "{}{q}{sep}live=1&h={}",
        page.path(),
        live::fragment_hash(&fragment)
    );
    let html = pages::document(
        Some(&page),
        &page.title(),
        &view,
        pages::controls(&page, &query),
        maud::PreEscaped(fragment),
        Some(&live_url),
        pages::extras(&page),
    );
    html_response(rendered.status, html.into_string())
}

fn html_response(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

async fn job_log(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    if dns1123_problem(&name).is_some() {
        return plain(StatusCode::NOT_FOUND, format!("no job named {name:?}\n"));
    }
    let Ok(permit) = app.logs.clone().try_acquire_owned() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} job logs are open, the limit; close some and reload\n",
                app.limits.log_streams
            ),
        );
    };
    logs::stream(
        app.source.clone(),
        app.dialer.clone(),
        app.agent_tls.clone(),
        name,
        permit,
        app.shutdown.clone(),
    )
    .into_response()
}

#[derive(Deserialize)]
struct AssetParams {
    v: Option<String>,
}

async fn asset(Path(name): Path<String>, QueryParams(p): QueryParams<AssetParams>) -> Response {
    let Some(a) = assets::get(&name) else {
        return plain(StatusCode::NOT_FOUND, format!("no asset {name:?}\n"));
    };
    let current = p.v.is_some() && p.v.as_deref() == assets::hash(a.name);
    let cache = if current {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    Response::builder()
        .header(header::CONTENT_TYPE, a.content_type)
        .header(header::CACHE_CONTROL, cache)
        .body(Body::from(a.bytes))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_pass_on_loopback() {
        for ok in [
            "localhost",
            "localhost:8780",
            "LOCALHOST.:8780",
            "dash.localhost:1",
            "127.0.0.1:8780",
            "127.1.2.3",
            "[::1]:8780",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8780",
            "localhost.evil.example",
            "10.0.0.1:8780",
            "[::2]:8780",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
