//! A page's live fragment as server-sent events: rendered again whenever the source publishes
//! a new view, sent only when it differs from what the browser has (by hash).
//!
//! Bounded: a stream holds no queue, only the newest view (a browser that stops reading costs
//! one pending write, never a backlog), and one permit of the dashboard's live-stream limit; it
//! ends when the browser goes away, when the source stops, or on shutdown.

use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::pages::{self, Page, Query};
use super::source::{Source, View};

/// The SSE event name whose data replaces the live fragment (`sse-swap="main"`).
pub const EVENT: &str = "main";
/// How often an idle stream sends a comment, so a dead connection is noticed.
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// A short hash of a fragment, carried in the page's live address so the stream sends nothing
/// until the fragment differs from the one the page was rendered with.
pub fn fragment_hash(html: &str) -> String {
    let mut h = std::hash::DefaultHasher::new();
    html.hash(&mut h);
    format!("{:016x}", h.finish())
}

struct State {
    source: Source,
    views: watch::Receiver<Arc<View>>,
    page: Page,
    query: Query,
    last: Option<String>,
    first: bool,
    _permit: OwnedSemaphorePermit,
}

/// The live stream of `page` for `query`; `seen` is the hash of the fragment the browser has.
pub fn stream(
    source: Source,
    page: Page,
    query: Query,
    seen: Option<String>,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let state = State {
        views: source.subscribe(),
        source,
        page,
        query,
        last: seen,
        first: true,
        _permit: permit,
    };
    let events = futures::stream::unfold(state, |mut s| async move {
        loop {
            if !s.first && s.views.changed().await.is_err() {
                return None;
            }
            s.first = false;
            s.views.borrow_and_update();
            let html = pages::render(&s.page, &s.source, &s.query)
                .fragment
                .into_string();
            let hash = fragment_hash(&html);
            if s.last.as_deref() == Some(hash.as_str()) {
                continue;
            }
            s.last = Some(hash);
            return Some((Ok(Event::default().event(EVENT).data(html)), s));
        }
    });
    Sse::new(events.take_until(shutdown.cancelled_owned()))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}
