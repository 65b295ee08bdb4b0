//! A webhook receiver for the demo's Notifier: `rift up` listens on `--webhook-port` and
//! appends every POST it receives to `<state>/notifications.log`, one line each (time and the
//! notification's text; the raw body for anything that is not a rift notification), so
//! the demo's notifications land somewhere real and can be watched with `tail -f`.
//!
//! It is a convenience of the development cluster, not part of rift's delivery guarantees:
//! if the port is taken, `rift up` says so and runs without it (the Notifier then counts
//! failures, as it would for any dead endpoint).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

/// Largest body kept; a larger one is cut (a notification is a few hundred bytes).
const MAX_LINE_BYTES: usize = 16 << 10;

/// The file deliveries are appended to.
pub fn log_path(state_dir: &Path) -> PathBuf {
    state_dir.join("notifications.log")
}

/// Binds `addr` and serves until `tasks` stop. Errors only when it cannot bind.
pub async fn serve(
    addr: &str,
    state_dir: &Path,
    tasks: &crate::tasks::Tasks,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(state_dir))?;
    let app = Router::new()
        .route("/{*path}", post(receive))
        .route("/", post(receive))
        .with_state(Arc::new(Mutex::new(file)));
    let stopped = tasks.token().clone().cancelled_owned();
    tasks.spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await;
    });
    Ok(())
}

/// The text of a notification in any of the Notifier formats; the raw body otherwise.
fn describe(body: &[u8]) -> String {
    let body = &body[..body.len().min(MAX_LINE_BYTES)];
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let said = parsed.as_ref().and_then(|v| {
        ["text", "content"]
            .iter()
            .find_map(|k| v.get(*k).and_then(serde_json::Value::as_str))
            .map(str::to_string)
    });
    said.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
        .replace(['\n', '\r'], " ")
}

async fn receive(State(file): State<Arc<Mutex<std::fs::File>>>, body: Bytes) -> StatusCode {
    let line = format!(
        "{} {}\n",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        describe(&body)
    );
    // One small append; the lock keeps concurrent deliveries' lines whole.
    let written = file
        .lock()
        .map(|mut f| f.write_all(line.as_bytes()))
        .is_ok_and(|r| r.is_ok());
    if written {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_is_one_line_of_its_text() {
        let json = br#"{"kind":"Event","text":"Normal training_started hex8-2p:\nstarted"}"#;
        assert_eq!(describe(json), "Normal training_started hex8-2p: started");
        assert_eq!(describe(br#"{"content":"hi"}"#), "hi");
        assert_eq!(describe(b"not json\n"), "not json ");
    }
}
