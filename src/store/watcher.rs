//! A watcher over one key prefix, in the manner of kube-runtime's: list at a revision, watch
//! from the revision after it, resume from the last seen revision when a stream ends, relist
//! when etcd has compacted past it, back off with jitter between attempts, and treat a stream
//! that answers nothing (not even a progress request) as dead.
//!
//! Guarantees: every change under the prefix after the initial list is delivered once, in
//! revision order, unless a compaction made that impossible, in which case a fresh
//! [`WatchEvent::Restarted`] snapshot replaces everything seen before.

use std::collections::VecDeque;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchStream};
use tokio::time::Instant;

use super::backoff::ResettingBackoff;
use super::client::{KeyValue, Store};
use super::error::{Result, StoreError};

/// Tuning for a [`Watcher`].
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// With no message for this long, ask etcd for a progress report; with none for twice this
    /// long, the stream is dead and is opened again.
    pub idle_timeout: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Backoff starts over after this long without a failure.
    pub reset_after: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            reset_after: Duration::from_secs(30),
        }
    }
}

/// One change under the watched prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A complete snapshot at `revision`: forget everything seen before.
    Restarted { items: Vec<KeyValue>, revision: i64 },
    /// A key was created or changed.
    Put(KeyValue),
    /// A key was deleted (or its lease expired); `prev` is its last value when etcd kept it.
    Delete {
        key: String,
        mod_revision: i64,
        prev: Option<KeyValue>,
    },
}

/// Watches one prefix; call [`Watcher::next`] in a loop. Errors are reported and retried
/// (after a backoff) on the next call, so a consumer can log them and go on.
pub struct Watcher {
    store: Store,
    prefix: String,
    config: WatchConfig,
    revision: i64,
    needs_list: bool,
    stream: Option<WatchStream>,
    progress_requested: bool,
    /// Events received but not yet handed out, with their revisions.
    pending: VecDeque<(i64, WatchEvent)>,
    /// The highest revision received from etcd (ahead of `revision` while events are pending).
    received: i64,
    backoff: ResettingBackoff,
    retry_at: Option<Instant>,
}

impl Watcher {
    /// A watcher that starts with a full list of the prefix.
    pub fn new(store: Store, prefix: impl Into<String>, config: WatchConfig) -> Self {
        let backoff =
            ResettingBackoff::new(config.min_backoff, config.max_backoff, config.reset_after);
        Self {
            store,
            prefix: prefix.into(),
            config,
            revision: 0,
            needs_list: true,
            stream: None,
            progress_requested: false,
            pending: VecDeque::new(),
            received: 0,
            backoff,
            retry_at: None,
        }
    }

    /// A watcher that skips the initial list and reports changes after `revision` (for a
    /// caller that has just listed at that revision itself).
    pub fn from_revision(
        store: Store,
        prefix: impl Into<String>,
        revision: i64,
        config: WatchConfig,
    ) -> Self {
        let mut w = Self::new(store, prefix, config);
        w.revision = revision;
        w.received = revision;
        w.needs_list = false;
        w
    }

    /// The revision up to which every change has been handed out by [`Watcher::next`]: a new
    /// watcher started from it misses nothing.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    fn fail(&mut self, err: StoreError) -> StoreError {
        self.stream = None;
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        err
    }

    /// Opens the watch stream from the revision after the last one received.
    async fn open(&mut self) -> Result<()> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.received + 1)
            .with_prev_key()
            .with_progress_notify();
        let mut client = self
            .store
            .client()
            .watch_client()
            .max_decoding_message_size(super::client::MAX_RESPONSE_BYTES);
        let stream = self
            .store
            .call(client.watch(self.prefix.as_str(), Some(opts)))
            .await?;
        self.stream = Some(stream);
        self.progress_requested = false;
        Ok(())
    }

    /// The next change. Cancel-safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some((rev, ev)) = self.pending.pop_front() {
                // Only once the last event of a revision is out is that revision complete.
                if self.pending.front().is_none_or(|(next, _)| *next > rev) {
                    self.revision = self.revision.max(rev);
                }
                return Ok(ev);
            }
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            if self.needs_list {
                match self.store.list_raw(&self.prefix, None).await {
                    Ok((items, revision)) => {
                        self.revision = revision;
                        self.received = revision;
                        self.needs_list = false;
                        self.stream = None;
                        // Queued first, so a caller that drops this future loses nothing.
                        self.pending
                            .push_back((revision, WatchEvent::Restarted { items, revision }));
                        // Open the watch right away, before the caller works on the listing:
                        // a watch that starts behind etcd's head is "unsynced" and caught up
                        // only on etcd's 100 ms timer, which delays every change after it.
                        if let Err(e) = self.open().await {
                            tracing::debug!(prefix = %self.prefix, %e, "opening the watch after a list failed; retrying");
                            let _ = self.fail(e);
                        }
                        continue;
                    }
                    Err(e) => return Err(self.fail(e)),
                }
            }
            if self.stream.is_none() {
                if let Err(e) = self.open().await {
                    return Err(self.fail(e));
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            let message = tokio::time::timeout(self.config.idle_timeout, stream.message()).await;
            match message {
                Err(_idle) if !self.progress_requested => {
                    self.progress_requested = true;
                    if let Err(e) = stream.request_progress().await {
                        let err = StoreError::from_etcd(e, self.store.endpoints());
                        return Err(self.fail(err));
                    }
                }
                Err(_idle) => {
                    let err = StoreError::Timeout {
                        endpoints: self.store.endpoints().to_string(),
                        seconds: 2 * self.config.idle_timeout.as_secs(),
                    };
                    return Err(self.fail(err));
                }
                Ok(Ok(Some(resp))) => {
                    self.progress_requested = false;
                    if resp.compact_revision() > 0 {
                        tracing::info!(
                            prefix = %self.prefix,
                            compacted = resp.compact_revision(),
                            "watch revision was compacted; listing again"
                        );
                        self.needs_list = true;
                        self.stream = None;
                        continue;
                    }
                    if resp.canceled() {
                        let err = StoreError::Etcd(format!(
                            "watch canceled by etcd: {}",
                            resp.cancel_reason()
                        ));
                        return Err(self.fail(err));
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let kv = KeyValue::from_etcd(kv);
                        let rev = kv.mod_revision;
                        self.received = self.received.max(rev);
                        self.pending.push_back((
                            rev,
                            match ev.event_type() {
                                EventType::Put => WatchEvent::Put(kv),
                                EventType::Delete => WatchEvent::Delete {
                                    key: kv.key,
                                    mod_revision: rev,
                                    prev: ev.prev_kv().map(KeyValue::from_etcd),
                                },
                            },
                        ));
                    }
                    if resp.events().is_empty() && !resp.created() && self.pending.is_empty() {
                        // A progress notification: everything up to its revision was sent.
                        if let Some(h) = resp.header() {
                            self.received = self.received.max(h.revision());
                            self.revision = self.received;
                        }
                    }
                }
                Ok(Ok(None)) => {
                    let err = StoreError::Unreachable {
                        endpoints: self.store.endpoints().to_string(),
                        reason: "the watch stream was closed".into(),
                    };
                    return Err(self.fail(err));
                }
                Ok(Err(e)) => {
                    let err = StoreError::from_etcd(e, self.store.endpoints());
                    return Err(self.fail(err));
                }
            }
        }
    }
}

/// Waits `d`, for callers pacing their own retries.
pub async fn pause(d: Duration) {
    tokio::time::sleep(d).await;
}
