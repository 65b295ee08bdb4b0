//! The dashboard's one window on the cluster: a [`Watcher`] on `/rift/v1/` feeding the
//! scheduler's typed [`ClusterView`] (status composed per event, each key decoded once) plus
//! the events and the leader record, copied into [`Cluster`] snapshots that are published to
//! every page and live stream through a `tokio::sync::watch` channel.
//!
//! This is the only place the dashboard reads etcd. Guarantees and caveats:
//!
//! - **Coalesced.** A burst of changes becomes one snapshot: the first change waits
//!   [`COALESCE`], and snapshots are at least `max(MIN_GAP, 4 × the last build time)` apart,
//!   so building them takes at most about a quarter of a core however fast etcd changes.
//! - **Latest wins.** Readers see the newest snapshot only; a slow reader skips snapshots
//!   rather than queueing them, so memory does not grow with the number of changes.
//! - **Says when it is blind.** A watch error turns the link to [`Link::Unreachable`] (the
//!   snapshot stays the last one seen, marked so on every page); the link turns
//!   [`Link::Live`] again once a watch event arrives or etcd answers a probe.
//! - **History.** Every [`history::SAMPLE_EVERY`] a sample is added to [`History`] while the
//!   link is live; training runs are remembered from every snapshot.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::cluster::Cluster;
use super::history::{self, History};
use crate::api::{Event, EventSpec, Spec};
use crate::controllers::cluster_view::ClusterView;
use crate::store::cache::{self, direct_child, Keyed};
use crate::store::leader::LeaderRecord;
use crate::store::watcher::{WatchConfig, Watcher};
use crate::store::{keys, Store, WatchEvent};

/// How long the first change of a burst waits for the rest.
pub const COALESCE: Duration = Duration::from_millis(50);
/// The least time between two snapshots.
pub const MIN_GAP: Duration = Duration::from_millis(250);
/// How often etcd is probed while the link is not live.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the dashboard currently sees etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// No listing yet.
    Connecting { since: DateTime<Utc> },
    /// Watching; the snapshot follows etcd.
    Live { since: DateTime<Utc> },
    /// etcd did not answer; the snapshot is the last one seen.
    Unreachable { since: DateTime<Utc>, error: String },
}

impl Link {
    pub fn is_live(&self) -> bool {
        matches!(self, Link::Live { .. })
    }
}

/// What every page renders from.
#[derive(Debug)]
pub struct View {
    pub cluster: Arc<Cluster>,
    pub link: Link,
    /// The etcd endpoints read, for messages.
    pub endpoints: String,
    /// Goes up by one with every published view.
    pub seq: u64,
}

/// A handle on the published views and the history; cheap to clone.
#[derive(Clone)]
pub struct Source {
    views: watch::Receiver<Arc<View>>,
    history: Arc<RwLock<History>>,
    /// The sender of a fixed view (render tests), kept so its streams stay open.
    _fixed: Option<Arc<watch::Sender<Arc<View>>>>,
}

impl Source {
    /// Starts watching; the task ends when `shutdown` is cancelled or every handle is dropped.
    pub fn start(store: Store, shutdown: CancellationToken) -> Source {
        let endpoints = store.current_endpoints().join(",");
        let first = Arc::new(View {
            cluster: Arc::new(Cluster::default()),
            link: Link::Connecting { since: Utc::now() },
            endpoints,
            seq: 0,
        });
        let (tx, views) = watch::channel(first);
        let history = Arc::new(RwLock::new(History::default()));
        tokio::spawn(run(store, tx, history.clone(), shutdown));
        Source {
            views,
            history,
            _fixed: None,
        }
    }

    /// A source that never changes, showing `cluster` (for render tests).
    #[cfg(test)]
    pub fn fixed(cluster: Cluster, link: Link, history: History) -> Source {
        let (tx, views) = watch::channel(Arc::new(View {
            cluster: Arc::new(cluster),
            link,
            endpoints: "http://127.0.0.1:2379".into(),
            seq: 1,
        }));
        Source {
            views,
            history: Arc::new(RwLock::new(history)),
            _fixed: Some(Arc::new(tx)),
        }
    }

    /// The newest view.
    pub fn view(&self) -> Arc<View> {
        self.views.borrow().clone()
    }

    /// A receiver that wakes on every new view (for live streams).
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.views.clone()
    }

    pub fn history(&self) -> RwLockReadGuard<'_, History> {
        self.history.read().expect("history lock")
    }
}

struct Publisher {
    tx: watch::Sender<Arc<View>>,
    endpoints: String,
    seq: u64,
    cluster: Arc<Cluster>,
    link: Link,
}

impl Publisher {
    fn publish(&mut self) {
        self.seq += 1;
        self.tx.send_replace(Arc::new(View {
            cluster: self.cluster.clone(),
            link: self.link.clone(),
            endpoints: self.endpoints.clone(),
            seq: self.seq,
        }));
    }

    /// Sets the link; true when its kind changed (worth a publish).
    fn set_link(&mut self, link: Link) -> bool {
        let changed = std::mem::discriminant(&self.link) != std::mem::discriminant(&link);
        if changed {
            self.link = link;
        } else if let (Link::Unreachable { error, .. }, Link::Unreachable { error: new, .. }) =
            (&mut self.link, link)
        {
            *error = new;
        }
        changed
    }
}

/// What the dashboard follows: everything a page shows, typed, updated one event at a time.
struct Followed {
    view: ClusterView,
    /// Controllers' events, `/rift/v1/events/<id>`.
    events: Keyed<Event>,
    /// Agents' events, `/rift/v1/agents/<node>/events/<id>`, named `<node>/events/<id>`.
    agent_events: Keyed<Event>,
    leader: Keyed<LeaderRecord>,
}

/// `<node>/events/<id>` below the agents' prefix.
fn agent_event(rest: &str) -> Option<&str> {
    let (node, tail) = rest.split_once('/')?;
    let id = tail.strip_prefix("events/")?;
    (!node.is_empty() && direct_child(id).is_some()).then_some(rest)
}

/// The leader record is the key `/rift/v1/leader` itself.
fn the_key(rest: &str) -> Option<&str> {
    rest.is_empty().then_some("leader")
}

impl Followed {
    fn new() -> Self {
        Self {
            view: ClusterView::new(),
            events: Keyed::new(
                keys::objects_prefix(EventSpec::PLURAL),
                direct_child,
                cache::object::<EventSpec>,
            ),
            agent_events: Keyed::new(keys::AGENTS_PREFIX, agent_event, cache::object::<EventSpec>),
            leader: Keyed::new(keys::LEADER, the_key, cache::json),
        }
    }

    fn apply(&mut self, event: &WatchEvent) {
        self.view.apply(event);
        self.events.apply(event);
        self.agent_events.apply(event);
        self.leader.apply(event);
    }

    fn synced(&self) -> bool {
        self.view.synced()
    }

    fn snapshot(&self, revision: i64) -> Cluster {
        let leader = self.leader.ready("leader").cloned();
        let events = self.events.values().chain(self.agent_events.values());
        Cluster::from_view(&self.view, events, leader, revision, Utc::now())
    }
}

async fn run(
    store: Store,
    tx: watch::Sender<Arc<View>>,
    history: Arc<RwLock<History>>,
    shutdown: CancellationToken,
) {
    let mut watcher = Watcher::new(store.clone(), keys::ROOT, WatchConfig::default());
    let mut followed = Followed::new();
    let first = tx.borrow().clone();
    let mut out = Publisher {
        endpoints: first.endpoints.clone(),
        link: first.link.clone(),
        cluster: first.cluster.clone(),
        seq: 0,
        tx,
    };
    let mut publish_at: Option<Instant> = None;
    let mut last_publish = Instant::now();
    let mut gap = MIN_GAP;
    let mut sample = tokio::time::interval(history::SAMPLE_EVERY);
    sample.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let mut dirty = false;
        tokio::select! {
            // Cancel-safe: `next` loses no event when another branch wins.
            ev = watcher.next() => match ev {
                Ok(ev) => {
                    followed.apply(&ev);
                    dirty = true;
                    if out.set_link(Link::Live { since: Utc::now() }) {
                        tracing::info!("dashboard: watching etcd");
                    }
                }
                Err(e) => {
                    let link = Link::Unreachable { since: Utc::now(), error: e.to_string() };
                    if out.set_link(link) {
                        tracing::warn!(%e, "dashboard: etcd unreachable");
                        out.publish();
                    }
                }
            },
            _ = sleep_until(publish_at) => {
                publish_at = None;
                let started = Instant::now();
                let cluster = followed.snapshot(watcher.revision());
                history.write().expect("history lock").remember_runs(&cluster);
                out.cluster = Arc::new(cluster);
                out.publish();
                let took = started.elapsed();
                tracing::debug!(took_ms = took.as_millis() as u64, jobs = out.cluster.jobs.len(), "dashboard snapshot built");
                gap = MIN_GAP.max(took * 4);
                last_publish = Instant::now();
            }
            _ = sample.tick() => {
                if out.link.is_live() && followed.synced() {
                    history.write().expect("history lock").sample(&out.cluster, Utc::now());
                    out.publish();
                }
            }
            _ = probe.tick(), if !out.link.is_live() && followed.synced() => {
                if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, store.revision()).await {
                    if out.set_link(Link::Live { since: Utc::now() }) {
                        tracing::info!("dashboard: etcd answers again");
                        out.publish();
                    }
                }
            }
            _ = shutdown.cancelled() => return,
            _ = out.tx.closed() => return,
        }
        if dirty && publish_at.is_none() {
            let now = Instant::now();
            publish_at = Some((now + COALESCE).max(last_publish + gap));
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::store::KeyValue;

    fn kv(key: &str, value: Value, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: serde_json::to_vec(&value).unwrap(),
            create_revision: rev,
            mod_revision: rev,
            lease: 0,
        }
    }

    fn event(name: &str, reason: &str, at: &str) -> Value {
        json!({"apiVersion": "rift/v1", "kind": "Event", "metadata": {"name": name},
               "spec": {"involvedObject": {"kind": "Job", "name": "a"}, "reason": reason,
                        "message": "m", "firstSeen": at, "lastSeen": at}})
    }

    #[test]
    fn a_snapshot_holds_controller_and_agent_events_and_the_leader() {
        let mut followed = Followed::new();
        followed.apply(&WatchEvent::Restarted {
            revision: 9,
            items: vec![
                kv(
                    "/rift/v1/events/e1",
                    event("e1", "scheduled", "2026-11-30T10:00:00Z"),
                    2,
                ),
                kv(
                    "/rift/v1/agents/n1/events/e2",
                    event("e2", "job_started", "2026-11-30T11:00:00Z"),
                    3,
                ),
                kv(
                    "/rift/v1/agents/n1/status",
                    json!({"capacity": {"cpus": 4}}),
                    4,
                ),
                kv(
                    "/rift/v1/leader",
                    json!({"node": "n1", "since": "2026-11-30T09:00:00Z", "lease": 7}),
                    5,
                ),
            ],
        });
        let c = followed.snapshot(9);
        let reasons: Vec<&str> = c.events.iter().map(|e| e.spec.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["job_started", "scheduled"],
            "newest first, both scopes"
        );
        assert_eq!(c.leader.as_ref().map(|l| l.node.as_str()), Some("n1"));
        followed.apply(&WatchEvent::Delete {
            key: "/rift/v1/agents/n1/events/e2".into(),
            mod_revision: 10,
            prev: None,
        });
        assert_eq!(followed.snapshot(10).events.len(), 1);
    }
}
