//! Recording Events: what happened to an object, deduplicated by object and reason, stored
//! under an etcd lease so that it expires on its own (docs/architecture.md, "Keys in etcd").
//!
//! An [`EventRecorder`] belongs to one writer: a controller (events under
//! `/rift/v1/events/<id>`, source `controller/<name>`) or a node's agent (events under
//! `/rift/v1/agents/<node>/events/<id>`, source `agent/<node>`). The id is a function of the
//! involved object and the reason ([`event_id`]), so recording the same thing again is a
//! compare-and-swap that bumps `count`, sets `lastSeen`, `message` and `type`, and keeps
//! `firstSeen` — unless the occurrence names the object's uid and the stored event is about
//! another uid (an earlier object of the same name): then the event starts over.
//!
//! **Expiry.** Every put attaches the key to the recorder's current lease, granted with a TTL
//! of [`EVENT_TTL`] (1 h) and never kept alive. A lease is used for new puts only while more
//! than `EVENT_TTL - LEASE_REUSE` (50 min) of it is left, i.e. for the first [`LEASE_REUSE`]
//! (10 min) after it was granted; after that, or when etcd no longer knows it, the next put
//! grants a fresh one. So an event disappears between 50 and 60 minutes after its *last*
//! occurrence, and one recorder holds at most seven live leases.
//!
//! **Never blocking.** [`EventRecorder::record`] is a plain function: it queues into a bounded
//! channel ([`QUEUE_CAPACITY`]) drained by a background task, and drops the event with a
//! warning when the queue is full (etcd slow or away). [`EventRecorder::record_now`] writes
//! immediately and reports the outcome.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::Instant;

use super::client::{KeyValue, Store};
use super::error::{Result, StoreError};
use super::keys;
use super::txn::{Guard, Op};
use crate::api::event::{Event, EventSpec, EventType, ObjectRef, Reason};
use crate::api::object::Object;

/// The TTL of the lease every event is stored under.
pub const EVENT_TTL: Duration = Duration::from_secs(3600);
/// How long after its grant a lease is still used for new puts.
pub const LEASE_REUSE: Duration = Duration::from_secs(600);
/// Events waiting for the background writer; beyond this, [`EventRecorder::record`] drops.
pub const QUEUE_CAPACITY: usize = 1024;
/// Ids longer than this are shortened and made unique with a hash.
pub const MAX_ID_LEN: usize = 100;
/// Messages are cut to this many characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;
/// Compare-and-swap attempts before a record gives up with a conflict.
const CAS_ATTEMPTS: usize = 16;

/// Where a recorder's events are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventScope {
    /// `/rift/v1/events/<id>`: controllers.
    Cluster,
    /// `/rift/v1/agents/<node>/events/<id>`: the agent of this node.
    Agent(String),
}

impl EventScope {
    /// The key of event `id` in this scope.
    pub fn key(&self, id: &str) -> String {
        match self {
            EventScope::Cluster => keys::event(id),
            EventScope::Agent(node) => keys::agent_event(node, id),
        }
    }

    /// The prefix every event of this scope lives under.
    pub fn prefix(&self) -> String {
        match self {
            EventScope::Cluster => keys::objects_prefix("events"),
            EventScope::Agent(node) => format!("{}events/", keys::agent_prefix(node)),
        }
    }
}

/// The id of the event about `kind/name` with `reason`: `<kind-lower>.<name>.<reason>` when
/// that is already a clean key segment (lowercase ASCII letters, digits, `-`, `_`, `.`) of at
/// most [`MAX_ID_LEN`] bytes; otherwise a cleaned, shortened form followed by `-` and 16 hex
/// digits of the SHA-256 of the exact input, so distinct inputs never share an id.
pub fn event_id(kind: &str, name: &str, reason: &str) -> String {
    let raw = format!("{}.{name}.{reason}", kind.to_lowercase());
    let clean: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    if clean == raw && raw.len() <= MAX_ID_LEN && !raw.is_empty() {
        return raw;
    }
    let digest = Sha256::digest(format!("{kind}\0{name}\0{reason}").as_bytes());
    let hash = hex::encode(&digest[..8]);
    let keep = MAX_ID_LEN - hash.len() - 1;
    let head: String = clean.chars().take(keep).collect();
    format!("{head}-{hash}")
}

/// Whether a lease granted with `ttl` and `left` remaining may take another put.
pub fn lease_reusable(left: Duration, ttl: Duration) -> bool {
    left + LEASE_REUSE > ttl
}

/// One occurrence waiting to be written.
#[derive(Clone)]
struct Occurrence {
    kind: String,
    name: String,
    /// The object's uid; empty when the recorder does not know it.
    uid: String,
    reason: String,
    message: String,
    event_type: EventType,
}

enum Queued {
    Record(Occurrence),
    /// Answered once everything queued before it is written (or failed).
    Flush(oneshot::Sender<()>),
}

/// What every clone of a recorder shares with its background writer.
struct Core {
    store: Store,
    source: String,
    scope: EventScope,
    /// The lease in use and the local (monotonic) time it runs out.
    lease: Mutex<Option<(i64, Instant)>>,
}

/// Records events for one writer. Cheap to clone; clones share the queue, the background
/// writer and the lease. Must be created inside a Tokio runtime.
#[derive(Clone)]
pub struct EventRecorder {
    core: Arc<Core>,
    tx: mpsc::Sender<Queued>,
    dropped: Arc<AtomicU64>,
}

impl EventRecorder {
    /// A recorder writing under `scope` as `source`, with `store` (the leader's fenced store
    /// for controllers).
    pub fn new(store: Store, source: impl Into<String>, scope: EventScope) -> Self {
        let core = Arc::new(Core {
            store,
            source: source.into(),
            scope,
            lease: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(drain(core.clone(), rx));
        Self {
            core,
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Controller `name`'s recorder: `/rift/v1/events/`, source `controller/<name>`.
    pub fn controller(store: Store, name: &str) -> Self {
        Self::new(store, format!("controller/{name}"), EventScope::Cluster)
    }

    /// Node `node`'s agent recorder: `/rift/v1/agents/<node>/events/`, source `agent/<node>`.
    pub fn agent(store: Store, node: &str) -> Self {
        Self::new(
            store,
            format!("agent/{node}"),
            EventScope::Agent(node.to_string()),
        )
    }

    pub fn source(&self) -> &str {
        &self.core.source
    }

    pub fn scope(&self) -> &EventScope {
        &self.core.scope
    }

    /// The key the event about `kind/name` with `reason` is stored at.
    pub fn key_for(&self, kind: &str, name: &str, reason: Reason) -> String {
        self.core.scope.key(&event_id(kind, name, reason.as_str()))
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues an occurrence of `reason` on `kind/name` (`kind` as in the API, e.g. `Job`) and
    /// returns at once; it is written in the background, with the reason's type. Dropped with
    /// a warning when the queue is full.
    pub fn record(&self, kind: &str, name: &str, reason: Reason, message: impl Into<String>) {
        self.record_about(
            &ObjectRef {
                kind: kind.to_string(),
                name: name.to_string(),
                uid: String::new(),
            },
            reason,
            message,
        );
    }

    /// [`Self::record`] about an object named with its uid: an event stored about another uid
    /// (an earlier object of the same name) is replaced, not counted on.
    pub fn record_about(&self, object: &ObjectRef, reason: Reason, message: impl Into<String>) {
        let (kind, name) = (object.kind.as_str(), object.name.as_str());
        let occurrence = Occurrence {
            kind: kind.to_string(),
            name: name.to_string(),
            uid: object.uid.clone(),
            reason: reason.as_str().to_string(),
            message: message.into(),
            event_type: reason.event_type(),
        };
        if let Err(e) = self.tx.try_send(Queued::Record(occurrence)) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 || n % 100 == 0 {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "the event queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the event writer has stopped",
                };
                let reason = reason.as_str();
                tracing::warn!(kind, name, reason, dropped = n, "event dropped: {why}");
            }
        }
    }

    /// Waits until everything queued before this call has been written (or has failed).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Queued::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Records an occurrence now and returns the event as stored.
    pub async fn record_now(
        &self,
        kind: &str,
        name: &str,
        reason: Reason,
        message: impl Into<String>,
    ) -> Result<Event> {
        self.core
            .write(Occurrence {
                kind: kind.to_string(),
                name: name.to_string(),
                uid: String::new(),
                reason: reason.as_str().to_string(),
                message: message.into(),
                event_type: reason.event_type(),
            })
            .await
    }
}

/// Extra attempts for an event whose write failed transiently, and the pause between them.
const WRITE_RETRIES: usize = 3;
const RETRY_DELAY: Duration = Duration::from_millis(300);

/// The background writer: one occurrence at a time, until every recorder clone is gone.
async fn drain(core: Arc<Core>, mut rx: mpsc::Receiver<Queued>) {
    while let Some(item) = rx.recv().await {
        match item {
            Queued::Flush(done) => {
                let _ = done.send(());
            }
            Queued::Record(o) => {
                let what = format!("{}/{} {}", o.kind, o.name, o.reason);
                // A transient failure (one endpoint of several just went away) is retried a
                // few times before the event is given up.
                let mut result = core.write(o.clone()).await;
                for _ in 0..WRITE_RETRIES {
                    match &result {
                        Err(e) if e.is_transient() => {
                            tokio::time::sleep(RETRY_DELAY).await;
                            result = core.write(o.clone()).await;
                        }
                        _ => break,
                    }
                }
                match result {
                    Ok(_) => {}
                    Err(StoreError::Fenced) => {
                        tracing::debug!(event = %what, "event not recorded: no longer the leader")
                    }
                    Err(e) => tracing::warn!(event = %what, %e, "could not record event"),
                }
            }
        }
    }
}

fn cut(mut message: String) -> String {
    if let Some((i, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(i);
    }
    message
}

fn decode_event(kv: &KeyValue) -> Option<Event> {
    serde_json::from_slice(&kv.value)
        .inspect_err(|e| tracing::warn!(key = %kv.key, %e, "replacing undecodable event"))
        .ok()
}

fn is_lease_gone(e: &StoreError) -> bool {
    matches!(e, StoreError::LeaseNotFound(_))
}

impl Core {
    /// The lease for the next put: the current one while reusable, else a fresh grant.
    async fn lease(&self) -> Result<i64> {
        let mut current = self.lease.lock().await;
        let now = Instant::now();
        if let Some((id, until)) = *current {
            if lease_reusable(until.saturating_duration_since(now), EVENT_TTL) {
                return Ok(id);
            }
        }
        let mut client = self.store.client();
        let granted = self
            .store
            .call(client.lease_grant(EVENT_TTL.as_secs() as i64, None))
            .await?;
        let ttl = Duration::from_secs(granted.ttl().max(0) as u64);
        *current = Some((granted.id(), now + ttl));
        Ok(granted.id())
    }

    async fn forget_lease(&self, id: i64) {
        let mut current = self.lease.lock().await;
        if current.is_some_and(|(held, _)| held == id) {
            *current = None;
        }
    }

    /// Creates the event or bumps its count, compare-and-swap, under the current lease.
    async fn write(&self, o: Occurrence) -> Result<Event> {
        let id = event_id(&o.kind, &o.name, &o.reason);
        let key = self.scope.key(&id);
        let message = cut(o.message);
        for _ in 0..CAS_ATTEMPTS {
            let now = Utc::now();
            let current = self.store.get_raw(&key).await?;
            // An event about an earlier object of the same name starts over.
            let previous = current
                .as_ref()
                .and_then(decode_event)
                .filter(|e| o.uid.is_empty() || e.spec.involved_object.uid == o.uid);
            let mut event = match previous {
                Some(mut e) => {
                    e.spec.count = e.spec.count.saturating_add(1);
                    e.spec.last_seen = now.max(e.spec.first_seen);
                    e.spec.message = message.clone();
                    e.spec.event_type = o.event_type;
                    e.spec.source = self.source.clone();
                    e.metadata.resource_version = None;
                    e.status = None;
                    e
                }
                None => {
                    let spec = EventSpec {
                        involved_object: ObjectRef {
                            kind: o.kind.clone(),
                            name: o.name.clone(),
                            uid: o.uid.clone(),
                        },
                        reason: o.reason.clone(),
                        message: message.clone(),
                        event_type: o.event_type,
                        count: 1,
                        first_seen: now,
                        last_seen: now,
                        source: self.source.clone(),
                    };
                    let mut e = Object::new(&id, spec);
                    e.metadata.creation_timestamp = Some(now);
                    e
                }
            };
            let guard = match &current {
                Some(kv) => Guard::unchanged(key.as_str(), kv.mod_revision),
                None => Guard::absent(key.as_str()),
            };
            let lease = self.lease().await?;
            let body = serde_json::to_vec(&event).expect("events serialize");
            let put = Op::put_on_lease(key.as_str(), body, lease);
            match self.store.txn(vec![guard], vec![put], vec![]).await {
                Ok(outcome) if outcome.succeeded => {
                    event.metadata.resource_version = Some(outcome.revision.to_string());
                    return Ok(event);
                }
                // Someone recorded the same event in between: read it again, after a short
                // random pause so two recorders of one event do not retry in lockstep.
                Ok(_) => {
                    let nanos = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.subsec_nanos())
                        .unwrap_or_default();
                    tokio::time::sleep(Duration::from_micros(u64::from(nanos % 5_000))).await;
                    continue;
                }
                Err(e) if is_lease_gone(&e) => {
                    tracing::debug!(lease, "event lease is gone; granting a new one");
                    self.forget_lease(lease).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict { key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_readable_when_clean() {
        assert_eq!(
            event_id("Job", "train-1", "job_failed"),
            "job.train-1.job_failed"
        );
        assert_eq!(
            event_id("TrainingTarget", "hex8-2p", "training_started"),
            "trainingtarget.hex8-2p.training_started"
        );
    }

    #[test]
    fn unclean_or_long_ids_are_hashed_and_distinct() {
        let a = event_id("Job", "a/b", "x");
        let b = event_id("Job", "a-b", "x");
        assert_ne!(a, b);
        assert!(a.starts_with("job.a-b.x-") && !a.contains('/'), "{a}");
        let long = event_id("Job", &"n".repeat(300), "job_failed");
        assert!(long.len() <= MAX_ID_LEN, "{long}");
        assert_ne!(long, event_id("Job", &"n".repeat(301), "job_failed"));
        assert_eq!(event_id("Job", "Upper", "r"), event_id("Job", "Upper", "r"));
        assert_ne!(event_id("Job", "Upper", "r"), "job.upper.r");
    }

    #[test]
    fn a_lease_takes_puts_for_its_first_ten_minutes() {
        assert!(lease_reusable(EVENT_TTL, EVENT_TTL));
        assert!(lease_reusable(Duration::from_secs(3001), EVENT_TTL));
        assert!(!lease_reusable(Duration::from_secs(3000), EVENT_TTL));
        assert!(!lease_reusable(Duration::ZERO, EVENT_TTL));
    }

    #[test]
    fn scopes_key_events_by_writer() {
        assert_eq!(EventScope::Cluster.key("e"), "/rift/v1/events/e");
        assert_eq!(EventScope::Cluster.prefix(), "/rift/v1/events/");
        let agent = EventScope::Agent("n1".into());
        assert_eq!(agent.key("e"), "/rift/v1/agents/n1/events/e");
        assert_eq!(agent.prefix(), "/rift/v1/agents/n1/events/");
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let m = cut("é".repeat(MAX_MESSAGE_CHARS + 5));
        assert_eq!(m.chars().count(), MAX_MESSAGE_CHARS);
    }
}
