//! A work queue of object keys (names), in the manner of client-go's rate-limited delaying
//! queue and kube-runtime's scheduler.
//!
//! Guarantees:
//!
//! * **Deduplicated.** A key queued several times before it is handed out is handed out once;
//!   when two times are asked for, the earliest wins.
//! * **Never the same key twice at once.** A key handed out by [`WorkQueue::next`] is not handed
//!   out again until its [`Claim`] is dropped. A key queued meanwhile is held back and becomes
//!   due (at the earliest time asked for) once the claim is dropped, so a change that arrives
//!   during a run is never lost and causes exactly one more run.
//! * **Per-key failure backoff.** [`WorkQueue::enqueue_backoff`] schedules a key after an
//!   exponentially growing delay (backon, optional jitter) kept per key;
//!   [`WorkQueue::reset_backoff`] starts that key over from the minimum.
//! * **Fair among due keys**: keys due at the same instant come out in the order they were
//!   queued.
//!
//! Caveats: the earliest time always wins, so queuing a key with no delay while it waits out a
//! backoff runs it at once (a real change is new information; kube-runtime does the same).
//! Time is `tokio::time`, so tests with paused time are deterministic.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Tuning for a [`WorkQueue`].
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// The delay after a key's first failure.
    pub min_backoff: Duration,
    /// The delay stops growing here (jitter may add up to as much again).
    pub max_backoff: Duration,
    /// Add a random part (up to the delay itself) so failing keys spread out.
    pub jitter: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            jitter: true,
        }
    }
}

/// A shared handle on a queue of keys; clones share the queue.
#[derive(Clone)]
pub struct WorkQueue {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    notify: Notify,
    backoff: ExponentialBuilder,
}

#[derive(Default)]
struct State {
    /// Keys waiting to be handed out: when they are due, and a sequence number for fairness.
    queued: HashMap<String, (Instant, u64)>,
    /// The same entries, ordered by when they are due.
    order: BTreeSet<(Instant, u64, String)>,
    /// Keys handed out whose claim is still held.
    processing: HashSet<String>,
    /// Keys queued while they were being processed, and when they are due.
    held_back: HashMap<String, Instant>,
    /// Failures in a row per key, and that key's delays.
    failures: HashMap<String, (u32, ExponentialBackoff)>,
    seq: u64,
    shut_down: bool,
}

impl State {
    fn schedule(&mut self, key: String, at: Instant) -> bool {
        if let Some(&(t, seq)) = self.queued.get(&key) {
            if t <= at {
                return false;
            }
            self.order.remove(&(t, seq, key.clone()));
        }
        self.seq += 1;
        self.queued.insert(key.clone(), (at, self.seq));
        self.order.insert((at, self.seq, key));
        true
    }
}

/// `now + delay`, or a time so far ahead it never comes when that would overflow.
fn deadline(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30))
}

impl WorkQueue {
    pub fn new(config: QueueConfig) -> Self {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(config.min_backoff)
            .with_max_delay(config.max_backoff)
            .with_factor(2.0)
            .without_max_times();
        if config.jitter {
            backoff = backoff.with_jitter();
        }
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                backoff,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, but stay usable if something did.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `key` to be handed out now.
    pub fn enqueue(&self, key: impl Into<String>) {
        self.enqueue_after(key, Duration::ZERO);
    }

    /// Queues `key` to be handed out no earlier than `delay` from now; if it is already queued
    /// (or held back while it runs), the earlier of the two times wins. Ignored after
    /// [`WorkQueue::shut_down`].
    pub fn enqueue_after(&self, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        let at = deadline(delay);
        let mut st = self.state();
        if st.shut_down {
            return;
        }
        if st.processing.contains(&key) {
            st.held_back
                .entry(key)
                .and_modify(|t| *t = (*t).min(at))
                .or_insert(at);
            return;
        }
        if st.schedule(key, at) {
            drop(st);
            self.inner.notify.notify_waiters();
        }
    }

    /// Records a failure of `key` and queues it after that key's next backoff delay, which
    /// grows with each failure in a row; returns the delay.
    pub fn enqueue_backoff(&self, key: &str) -> Duration {
        let delay = {
            let mut st = self.state();
            let builder = self.inner.backoff;
            let (count, delays) = st
                .failures
                .entry(key.to_string())
                .or_insert_with(|| (0, builder.build()));
            *count += 1;
            delays
                .next()
                .expect("an unbounded backoff always has a delay")
        };
        self.enqueue_after(key, delay);
        delay
    }

    /// Forgets the failures of `key` (after a success, or once the object is gone): its next
    /// backoff starts from the minimum again.
    pub fn reset_backoff(&self, key: &str) {
        self.state().failures.remove(key);
    }

    /// How many times in a row `key` has failed (since its last reset).
    pub fn failures(&self, key: &str) -> u32 {
        self.state().failures.get(key).map_or(0, |(n, _)| *n)
    }

    /// The next due key that is not being processed, waiting until there is one; `None` once
    /// the queue is shut down (even if keys remain). Cancel-safe: a key is taken only when the
    /// future completes.
    pub async fn next(&self) -> Option<Claim> {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = {
                let mut st = self.state();
                if st.shut_down {
                    return None;
                }
                match st.order.first() {
                    Some((at, _, _)) if *at <= Instant::now() => {
                        let (_, _, key) = st.order.pop_first().expect("checked above");
                        st.queued.remove(&key);
                        st.processing.insert(key.clone());
                        return Some(Claim {
                            queue: self.clone(),
                            key,
                        });
                    }
                    Some((at, _, _)) => Some(*at),
                    None => None,
                }
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn done(&self, key: &str) {
        let mut st = self.state();
        st.processing.remove(key);
        if let Some(at) = st.held_back.remove(key) {
            if !st.shut_down && st.schedule(key.to_string(), at) {
                drop(st);
                self.inner.notify.notify_waiters();
            }
        }
    }

    /// Stops handing out keys: pending and future calls of [`WorkQueue::next`] return `None`
    /// and new keys are ignored. Claims already handed out stay valid.
    pub fn shut_down(&self) {
        self.state().shut_down = true;
        self.inner.notify.notify_waiters();
    }

    /// Keys waiting (due or not), including those held back while they run.
    pub fn len(&self) -> usize {
        let st = self.state();
        st.queued.len() + st.held_back.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` has been handed out and its claim is still held.
    pub fn is_processing(&self, key: &str) -> bool {
        self.state().processing.contains(key)
    }
}

/// A key handed out by [`WorkQueue::next`]. While it lives, the key is not handed out again;
/// dropping it (also on panic) releases the key and makes a held-back re-queue due.
pub struct Claim {
    queue: WorkQueue,
    key: String,
}

impl Claim {
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Claim").field(&self.key).finish()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.queue.done(&self.key);
    }
}

#[cfg(test)]
mod tests;
