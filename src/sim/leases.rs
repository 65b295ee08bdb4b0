//! One lease keep-alive stream for every hollow node of a process.
//!
//! A real agent keeps its node lease alive over its own `LeaseKeepAlive` gRPC stream. Five
//! thousand hollow nodes doing the same would open five thousand streams on one connection
//! (each a server-side goroutine pair and a client-side channel and task). etcd's stream takes
//! requests for any lease, so [`SharedLeases`] sends every hollow node's renewals over one
//! stream, each lease renewed every TTL/3 as the real agent does, and publishes each lease's
//! [`LeaseStatus`] as a [`LeaseKeeper`](crate::store::lease::LeaseKeeper) does: every confirmed
//! renewal, and the loss (etcd answered TTL 0, or [`lost_at`], the one loss rule) so the node
//! can register again.
//!
//! The stream is opened with an anchor lease of its own (etcd's client API opens a keep-alive
//! stream for a lease that exists); when the stream fails it is opened again on the next tick.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::clock::BootTime;
use crate::store::lease::{lost_at, Grant, LeaseStatus, LossReason, SharedKeepAlive};
use crate::store::Store;

/// How often due renewals are sent.
const TICK: Duration = Duration::from_millis(100);
/// TTL of the stream's own anchor lease.
const ANCHOR_TTL: Duration = Duration::from_secs(30);

enum Cmd {
    Keep {
        grant: Grant,
        status: watch::Sender<LeaseStatus>,
    },
    Forget {
        id: i64,
    },
}

/// A handle on the shared keep-alive task; cheap to clone. The task ends when every handle
/// is dropped.
#[derive(Clone)]
pub struct SharedLeases {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl SharedLeases {
    /// Starts the shared keep-alive task on `store`.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        Self { tx }
    }

    /// Keeps the lease of `grant` alive; the receiver follows its status (renewals, loss).
    pub fn keep(&self, grant: Grant) -> watch::Receiver<LeaseStatus> {
        let (status, rx) = watch::channel(LeaseStatus::fresh(grant));
        let _ = self.tx.send(Cmd::Keep { grant, status });
        rx
    }

    /// Stops renewing lease `id` (it expires in etcd after its TTL, as for a crashed agent).
    pub fn forget(&self, id: i64) {
        let _ = self.tx.send(Cmd::Forget { id });
    }
}

struct Entry {
    ttl: Duration,
    /// When the last renewal etcd confirmed was sent (or the lease was granted).
    renewed: BootTime,
    /// When the request now in flight was sent.
    sent: Option<BootTime>,
    next: BootTime,
    /// `None` for the stream's own anchor lease.
    status: Option<watch::Sender<LeaseStatus>>,
}

fn lose(entries: &mut HashMap<i64, Entry>, id: i64, why: LossReason) {
    if let Some(e) = entries.remove(&id) {
        if let Some(tx) = e.status {
            tx.send_modify(|s| s.lost = Some(why));
        }
    }
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut entries: HashMap<i64, Entry> = HashMap::new();
    let mut stream: Option<SharedKeepAlive> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Keep { grant, status }) => {
                    let renewed = grant.granted_at;
                    entries.insert(grant.id, Entry { ttl: grant.ttl, renewed, sent: None, next: renewed.saturating_add(grant.ttl / 3), status: Some(status) });
                }
                Some(Cmd::Forget { id }) => {
                    entries.remove(&id);
                }
                None => break,
            },
            answer = async { stream.as_mut()?.answer().await }, if stream.is_some() => match answer {
                Some((id, ttl)) => {
                    if ttl <= 0 {
                        lose(&mut entries, id, LossReason::Expired);
                    } else if let Some(e) = entries.get_mut(&id) {
                        if let Some(sent) = e.sent.take() {
                            e.renewed = sent;
                            if let Some(tx) = &e.status {
                                let round_trip = sent.elapsed();
                                tx.send_modify(|s| {
                                    s.renewed = sent;
                                    s.round_trip = round_trip;
                                    s.renewals += 1;
                                });
                            }
                        }
                    }
                }
                None => {
                    tracing::debug!("shared lease stream ended; opening it again");
                    if let Some(s) = stream.take() {
                        entries.remove(&s.anchor());
                    }
                }
            },
            _ = tick.tick() => {
                let now = BootTime::now();
                let expired: Vec<i64> = entries
                    .iter()
                    .filter(|(_, e)| lost_at(e.renewed, e.ttl, now))
                    .map(|(id, _)| *id)
                    .collect();
                for id in expired {
                    lose(&mut entries, id, LossReason::Unrenewed);
                }
                if stream.is_none() {
                    stream = SharedKeepAlive::open(&store, ANCHOR_TTL).await;
                    if let Some(s) = &stream {
                        entries.insert(s.anchor(), Entry { ttl: ANCHOR_TTL, renewed: now, sent: None, next: now.saturating_add(ANCHOR_TTL / 3), status: None });
                    }
                }
                let Some(s) = stream.as_mut() else { continue };
                let mut failed = false;
                for (id, e) in entries.iter_mut().filter(|(_, e)| now >= e.next) {
                    if !s.renew(*id).await {
                        failed = true;
                        break;
                    }
                    // An answer is credited to the oldest request still unanswered: never
                    // to a later send than the one it may answer.
                    e.sent = Some(e.sent.unwrap_or(now));
                    e.next = now.saturating_add((e.ttl / 3).max(TICK));
                }
                if failed {
                    if let Some(s) = stream.take() {
                        entries.remove(&s.anchor());
                    }
                }
            }
        }
    }
    if let Some(s) = stream {
        s.close(&store).await;
    }
}
