//! The notifier controller, run by the leader: delivers events to the webhooks of `Notifier`
//! objects (JSON, Slack or Discord), optionally signed with HMAC-SHA256.
//!
//! It watches controllers' events (`/rift/v1/events/`), every agent's events
//! (`/rift/v1/agents/<node>/events/`) and the Notifier objects. An event counts as a new
//! occurrence when its key is new, its `count` grew, or its `firstSeen` changed (it expired and
//! came back). Events already stored when the controller starts are taken as delivered by the
//! previous leader, except those last seen within [`NotifierConfig::replay_window`] of the
//! start, so that what happened around a failover (`leader_changed`) still goes out; a
//! notification may therefore be sent twice across a failover, never lost to one.
//!
//! Each occurrence whose reason is in a Notifier's `events` (all when empty) is throttled —
//! the same object and reason within `throttleSeconds` goes out once — and queued for that
//! Notifier's own delivery task. The queue is bounded ([`NotifierConfig::queue`]); when it is
//! full the notification is dropped and counted as a failure. So a dead or slow endpoint holds
//! up only its own Notifier, never the watch loop, other Notifiers or event recording.
//!
//! A delivery is one POST with short timeouts, retried with exponential backoff and jitter on
//! transport errors, 408, 429 and 5xx. The signing secret is read at delivery time from the
//! environment variable or file named in `spec.secret`; it is never stored, logged, or put in
//! a status. Webhook URLs carry credentials too (Slack, Discord), so errors and logs name only
//! the host. Status (`delivered`, `failures`, `lastDelivery`, `lastError`, cleared by a
//! success) is written when it changed, at most once per [`NotifierConfig::status_interval`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::event::Event;
use crate::api::notifier::{Notifier, NotifierSpec, NotifierStatus};
use crate::api::Spec;
use crate::store::cache::{self, Cached, Keyed};
use crate::store::compose::{direct_child, parse_agent_key, AgentKey};
use crate::store::objects::object_from_kv;
use crate::store::watcher::{WatchConfig, WatchEvent, Watcher};
use crate::store::{keys, KeyValue, Store, StoreError};
use crate::store::{Guard, Op};
use crate::tasks::CancellationToken;

mod delivery;

pub use delivery::{
    body, deliver, http_client, read_secret, signature, text, wants, DeliveryError, EVENT_HEADER,
    SIGNATURE_HEADER,
};

/// Tuning of the controller and its deliveries.
#[derive(Clone, Debug)]
pub struct NotifierConfig {
    /// Attempts per notification, the first included.
    pub attempts: usize,
    pub connect_timeout: Duration,
    /// The whole request, connect to last byte of the response.
    pub request_timeout: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Notifications waiting per Notifier; beyond this they are dropped.
    pub queue: usize,
    /// The least time between two status writes of one Notifier.
    pub status_interval: Duration,
    /// At start, stored events last seen this recently are still delivered.
    pub replay_window: Duration,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            attempts: 4,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
            queue: 64,
            status_interval: Duration::from_secs(1),
            replay_window: Duration::from_secs(30),
        }
    }
}

/// Which events are new occurrences, by key: the count and first-seen time last seen.
#[derive(Default)]
struct Seen(HashMap<String, (u32, DateTime<Utc>)>);

impl Seen {
    /// Notes `event` at `key`; true when it is a new occurrence.
    fn note(&mut self, key: &str, event: &Event) -> bool {
        let now = (event.spec.count, event.spec.first_seen);
        match self.0.insert(key.to_string(), now) {
            None => true,
            Some((count, first)) => first != now.1 || now.0 > count,
        }
    }
}

/// Same object and reason within the window: once. Per Notifier.
#[derive(Default)]
struct Throttle(HashMap<String, Instant>);

impl Throttle {
    fn admit(&mut self, key: String, now: Instant, window: Duration) -> bool {
        if window.is_zero() {
            return true;
        }
        if self.0.len() > 4096 {
            self.0.retain(|_, at| now.duration_since(*at) < window);
        }
        match self.0.get(&key) {
            Some(at) if now.duration_since(*at) < window => false,
            _ => {
                self.0.insert(key, now);
                true
            }
        }
    }
}

/// One Notifier's delivery task and what the watch loop keeps for it.
struct Worker {
    spec: NotifierSpec,
    spec_tx: watch::Sender<NotifierSpec>,
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
    throttle: Throttle,
    task: JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The notifier controller. `store` must be the leader's fenced store.
pub struct NotifierController {
    store: Store,
    config: NotifierConfig,
    client: reqwest::Client,
    workers: HashMap<String, Worker>,
    seen: Seen,
}

impl NotifierController {
    pub fn new(store: Store) -> Self {
        Self::with_config(store, NotifierConfig::default())
    }

    pub fn with_config(store: Store, config: NotifierConfig) -> Self {
        Self {
            client: http_client(&config),
            store,
            config,
            workers: HashMap::new(),
            seen: Seen::default(),
        }
    }

    /// Runs until `stop` resolves (`Ok`) or a status write is refused by the leader fence
    /// (`Err(Fenced)`). Pending deliveries are abandoned when it returns.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), StoreError> {
        let started = Utc::now();
        let watch = WatchConfig::default();
        let notifiers_prefix = keys::objects_prefix(NotifierSpec::PLURAL);
        let events_prefix = keys::objects_prefix("events");
        let mut notifiers = Watcher::new(self.store.clone(), &notifiers_prefix, watch.clone());
        let mut cached: Keyed<Notifier> =
            Keyed::new(notifiers_prefix, cache::direct_child, cache::json);
        // Know the Notifiers before the first events arrive.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                ev = notifiers.next() => match ev {
                    Ok(ev @ WatchEvent::Restarted { .. }) => {
                        self.on_notifier(&mut cached, &ev);
                        break;
                    }
                    Ok(ev) => self.on_notifier(&mut cached, &ev),
                    Err(e) => tracing::warn!(%e, "listing notifiers failed; retrying"),
                },
            }
        }
        let mut events = Watcher::new(self.store.clone(), &events_prefix, watch.clone());
        let mut agents = Watcher::new(self.store.clone(), keys::AGENTS_PREFIX, watch);
        let replay_since =
            started - chrono::Duration::from_std(self.config.replay_window).unwrap_or_default();
        let (mut events_listed, mut agents_listed) = (false, false);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = self.store.deposed() => return Err(StoreError::Fenced),
                ev = notifiers.next() => match ev {
                    Ok(ev) => self.on_notifier(&mut cached, &ev),
                    Err(e) => tracing::warn!(%e, "watching notifiers failed; retrying"),
                },
                ev = events.next() => match ev {
                    Ok(ev) => {
                        let first = !std::mem::replace(&mut events_listed, true);
                        self.on_event(&events_prefix, ev, first.then_some(replay_since));
                    }
                    Err(e) => tracing::warn!(%e, "watching events failed; retrying"),
                },
                ev = agents.next() => match ev {
                    Ok(ev) => {
                        let first = !std::mem::replace(&mut agents_listed, true);
                        self.on_event(keys::AGENTS_PREFIX, ev, first.then_some(replay_since));
                    }
                    Err(e) => tracing::warn!(%e, "watching agent events failed; retrying"),
                },
            }
        }
    }

    /// Follows a change to the Notifiers: a worker per Notifier, updated when its spec
    /// changes, stopped when it is deleted. One that does not decode keeps its worker as it
    /// was (what cannot be read is never taken for deleted).
    fn on_notifier(&mut self, cached: &mut Keyed<Notifier>, ev: &WatchEvent) {
        for name in cached.apply(ev) {
            match cached.get(&name) {
                None => {
                    self.workers.remove(&name);
                }
                Some(Cached::Undecodable(_)) => {}
                Some(Cached::Ready(n)) => self.upsert(name, n.spec.clone()),
            }
        }
    }

    /// Starts or updates the worker of Notifier `name`.
    fn upsert(&mut self, name: String, spec: NotifierSpec) {
        if let Some(w) = self.workers.get_mut(&name) {
            if w.spec != spec {
                w.spec = spec.clone();
                w.spec_tx.send_replace(spec);
            }
            return;
        }
        let (spec_tx, spec_rx) = watch::channel(spec.clone());
        let (tx, rx) = mpsc::channel(self.config.queue.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(
            Delivery {
                name: name.clone(),
                store: self.store.clone(),
                client: self.client.clone(),
                config: self.config.clone(),
                spec: spec_rx,
                dropped: dropped.clone(),
            }
            .run(rx),
        );
        let worker = Worker {
            spec,
            spec_tx,
            tx,
            dropped,
            throttle: Throttle::default(),
            task,
        };
        self.workers.insert(name, worker);
    }

    /// Handles a change under an events prefix; `replay_since` is set for the first listing.
    fn on_event(&mut self, prefix: &str, ev: WatchEvent, replay_since: Option<DateTime<Utc>>) {
        match ev {
            WatchEvent::Restarted { items, .. } => {
                let old = std::mem::take(&mut self.seen.0);
                let (mine, others): (HashMap<_, _>, HashMap<_, _>) =
                    old.into_iter().partition(|(k, _)| k.starts_with(prefix));
                self.seen.0 = others;
                let mut previous = Seen(mine);
                for kv in items.iter().filter(|kv| is_event_key(prefix, &kv.key)) {
                    let Some(event) = decode(kv) else { continue };
                    let fresh = previous.note(&kv.key, &event);
                    self.seen.note(&kv.key, &event);
                    let deliver = match replay_since {
                        Some(since) => event.spec.last_seen >= since,
                        None => fresh,
                    };
                    if deliver {
                        self.dispatch(&event);
                    }
                }
            }
            WatchEvent::Put(kv) => {
                if !is_event_key(prefix, &kv.key) {
                    return;
                }
                let Some(event) = decode(&kv) else { return };
                if self.seen.note(&kv.key, &event) {
                    self.dispatch(&event);
                }
            }
            WatchEvent::Delete { key, .. } => {
                self.seen.0.remove(&key);
            }
        }
    }

    /// Queues `event` for every Notifier that wants it and is not throttling it.
    fn dispatch(&mut self, event: &Event) {
        let now = Instant::now();
        let s = &event.spec;
        let throttle_key = format!(
            "{}/{}/{}",
            s.involved_object.kind, s.involved_object.name, s.reason
        );
        for (name, w) in &mut self.workers {
            if !wants(&w.spec, &s.reason) {
                continue;
            }
            let window = Duration::from_secs(w.spec.throttle_seconds);
            if !w.throttle.admit(throttle_key.clone(), now, window) {
                tracing::debug!(notifier = %name, event = %throttle_key, "throttled");
                continue;
            }
            if w.tx.try_send(event.clone()).is_err() {
                w.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(notifier = %name, event = %throttle_key,
                    "notification dropped: the delivery queue is full");
            }
        }
    }
}

fn is_event_key(prefix: &str, key: &str) -> bool {
    if prefix == keys::AGENTS_PREFIX {
        matches!(parse_agent_key(key), Some(AgentKey::Event { .. }))
    } else {
        direct_child(prefix, key).is_some()
    }
}

fn decode(kv: &KeyValue) -> Option<Event> {
    object_from_kv(kv)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .or_else(|| {
            tracing::warn!(key = %kv.key, "ignoring undecodable event");
            None
        })
}

/// One Notifier's delivery task: takes queued events one at a time, keeps the status.
struct Delivery {
    name: String,
    store: Store,
    client: reqwest::Client,
    config: NotifierConfig,
    spec: watch::Receiver<NotifierSpec>,
    dropped: Arc<AtomicU64>,
}

impl Delivery {
    async fn run(self, mut rx: mpsc::Receiver<Event>) {
        let mut status = self.load_status().await;
        let mut written = status.clone();
        let mut last_write: Option<Instant> = None;
        loop {
            self.fold_dropped(&mut status);
            let flush_at = (status != written)
                .then(|| last_write.map_or_else(Instant::now, |t| t + self.config.status_interval));
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { return };
                    let spec = self.spec.borrow().clone();
                    match deliver(&self.client, &self.config, &spec, &ev).await {
                        Ok(()) => {
                            status.delivered += 1;
                            status.last_delivery = Some(Utc::now());
                            status.last_error.clear();
                        }
                        Err(e) => {
                            tracing::warn!(notifier = %self.name, event = %ev.metadata.name,
                                error = %e, "notification not delivered");
                            status.failures += 1;
                            status.last_error = e.to_string();
                        }
                    }
                }
                _ = sleep_until_some(flush_at) => {
                    match self.write_status(&status).await {
                        Ok(()) => written = status.clone(),
                        // The fence noticed it (`Store::deposed`): the controller ends.
                        Err(StoreError::Fenced) => return,
                        Err(e) => tracing::warn!(notifier = %self.name, %e,
                            "could not write notifier status"),
                    }
                    last_write = Some(Instant::now());
                }
            }
        }
    }

    fn fold_dropped(&self, status: &mut NotifierStatus) {
        let n = self.dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            status.failures += n;
            status.last_error = format!("{n} notification(s) dropped: the delivery queue was full");
        }
    }

    /// The status a previous leader left, so the counters go on.
    async fn load_status(&self) -> NotifierStatus {
        let key = keys::status(NotifierSpec::PLURAL, &self.name);
        match self.store.get_raw(&key).await {
            Ok(Some(kv)) => serde_json::from_slice(&kv.value).unwrap_or_default(),
            _ => NotifierStatus::default(),
        }
    }

    /// Writes the status, only while the Notifier still exists (no orphaned status keys).
    async fn write_status(&self, status: &NotifierStatus) -> Result<(), StoreError> {
        let object = keys::object(NotifierSpec::PLURAL, &self.name);
        let key = keys::status(NotifierSpec::PLURAL, &self.name);
        let body = serde_json::to_vec(status).expect("statuses serialize");
        self.store
            .txn(
                vec![Guard::exists(object.as_str())],
                vec![Op::put(key.as_str(), body)],
                vec![],
            )
            .await
            .map(|_| ())
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
