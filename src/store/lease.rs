//! One lease keep-alive for everything in rift that holds an etcd lease: leader election, node
//! registration, and (over a shared stream, [`crate::sim::leases`]) hollow nodes.
//!
//! A [`LeaseKeeper`] renews its lease every TTL/3 over a `LeaseKeepAlive` stream and publishes a
//! [`LeaseStatus`]: when the last renewal etcd confirmed was *sent*, on the machine-wide
//! monotonic clock ([`BootTime`]), and whether the lease is lost.
//!
//! Guarantees:
//! - **Never later than etcd.** etcd counts a lease's TTL from when a renewal *arrives*, which
//!   is never before it was sent; a keeper counts from the send. So once [`lost_at`] says a
//!   lease is lost, etcd may already have expired it, and never the other way round: a holder
//!   that stops acting when its keeper says lost never acts on a lease etcd has expired (for
//!   longer than the scheduling of one task).
//! - **Every wait is capped at the lease's expiry**, so the keeper notices a lapse on time even
//!   while etcd does not answer at all.
//! - **One request in flight, one answer per request.** Opening a stream sends its first
//!   request; an answer is taken only for the request just sent, so a late answer to an older
//!   request can never be mistaken for a fresh renewal.
//! - **A broken stream is reopened, never fatal.** An h2 protocol error, a reset connection, a
//!   stream that ends or an answer that does not come within TTL/3 drops the stream; it is
//!   opened again after [`REOPEN_DELAY`]. Only etcd saying the lease is gone (TTL ≤ 0), or a
//!   whole TTL without a confirmed renewal, ends the lease.
//!
//! Caveat: a keeper only keeps; it does not re-grant. Holders that must stay registered (the
//! node agent) grant a new lease when theirs is lost.

use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper as EtcdKeeper};
use tokio::sync::watch;

use super::client::Store;
use super::error::Result;
use crate::clock::BootTime;

/// Pause before a broken keep-alive stream is opened again.
pub const REOPEN_DELAY: Duration = Duration::from_millis(200);
/// The shortest time an answer is waited for (TTL/3 when that is longer).
pub const MIN_ANSWER_WAIT: Duration = Duration::from_millis(200);

/// Why a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// etcd answered a renewal with TTL 0: the lease no longer exists there.
    Expired,
    /// No renewal was confirmed for a whole TTL.
    Unrenewed,
    /// This process revoked or abandoned it.
    Released,
}

/// What a keeper knows about its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    pub id: i64,
    /// The TTL the keeper counts with (never longer than etcd granted).
    pub ttl: Duration,
    /// When the last renewal etcd confirmed was sent (for a fresh lease: when the grant was).
    pub renewed: BootTime,
    /// How long the last confirmed renewal took, request to answer.
    pub round_trip: Duration,
    /// Confirmed renewals so far.
    pub renewals: u64,
    pub lost: Option<LossReason>,
}

impl LeaseStatus {
    /// A just-granted lease's status: renewed at the grant, nothing lost.
    pub(crate) fn fresh(grant: Grant) -> Self {
        Self {
            id: grant.id,
            ttl: grant.ttl,
            renewed: grant.granted_at,
            round_trip: Duration::ZERO,
            renewals: 0,
            lost: None,
        }
    }

    /// True once the lease is lost: reported lost, or [`lost_at`] `now`.
    pub fn is_lost(&self, now: BootTime) -> bool {
        self.lost.is_some() || lost_at(self.renewed, self.ttl, now)
    }

    /// How much longer the lease is surely valid in etcd (zero once lost).
    pub fn valid_for(&self, now: BootTime) -> Duration {
        if self.lost.is_some() {
            return Duration::ZERO;
        }
        self.ttl.saturating_sub(now.since(self.renewed))
    }
}

/// The loss rule every lease holder applies: a lease whose last confirmed renewal was sent at
/// `renewed` is lost once `ttl` has passed since, on the machine's monotonic clock.
pub fn lost_at(renewed: BootTime, ttl: Duration, now: BootTime) -> bool {
    now.since(renewed) >= ttl
}

/// A lease just granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: i64,
    /// The TTL to count with: the one asked for in whole seconds, or less if etcd granted less.
    pub ttl: Duration,
    /// When the grant request was sent (etcd's TTL starts no earlier).
    pub granted_at: BootTime,
}

/// Grants a lease of `ttl` (whole seconds, at least 1).
pub async fn grant(store: &Store, ttl: Duration) -> Result<Grant> {
    let secs = ttl.as_secs().max(1);
    let granted_at = BootTime::now();
    let mut client = store.client();
    let resp = store.call(client.lease_grant(secs as i64, None)).await?;
    let granted = u64::try_from(resp.ttl()).unwrap_or(0).max(1);
    Ok(Grant {
        id: resp.id(),
        ttl: Duration::from_secs(secs.min(granted)),
        granted_at,
    })
}

/// Keeps one lease alive in a task of its own; see the module documentation. Dropping it stops
/// the renewals (the lease then expires in etcd after its TTL).
pub struct LeaseKeeper {
    store: Store,
    status: watch::Receiver<LeaseStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Grants a lease of `ttl` and keeps it.
    pub async fn grant(store: &Store, ttl: Duration) -> Result<LeaseKeeper> {
        Ok(Self::keep(store.clone(), grant(store, ttl).await?))
    }

    /// Keeps a lease already granted.
    pub fn keep(store: Store, grant: Grant) -> LeaseKeeper {
        let (tx, status) = watch::channel(LeaseStatus::fresh(grant));
        let task = tokio::spawn(keep(store.clone(), tx));
        LeaseKeeper {
            store,
            status,
            task,
        }
    }

    pub fn id(&self) -> i64 {
        self.status.borrow().id
    }

    /// The status now, with the loss rule applied at this moment (so it is right even if the
    /// keeper's task has not run since the lease lapsed).
    pub fn status(&self) -> LeaseStatus {
        let mut s = *self.status.borrow();
        if s.lost.is_none() && lost_at(s.renewed, s.ttl, BootTime::now()) {
            s.lost = Some(LossReason::Unrenewed);
        }
        s
    }

    /// A receiver of every status the keeper publishes (each confirmed renewal, and the loss).
    pub fn watch(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    pub fn is_lost(&self) -> bool {
        self.status().lost.is_some()
    }

    /// Resolves once the lease is lost.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits on a watch channel.
    pub async fn lost(&self) {
        let mut rx = self.status.clone();
        let _ = rx.wait_for(|s| s.lost.is_some()).await;
    }

    /// Stops renewing and revokes the lease (its keys are deleted at once).
    pub async fn revoke(self) -> Result<()> {
        self.task.abort();
        revoke(&self.store, self.id()).await
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Revokes lease `id`: every key attached to it is deleted at once.
pub async fn revoke(store: &Store, id: i64) -> Result<()> {
    let mut client = store.client();
    store.call(client.lease_revoke(id)).await.map(|_| ())
}

/// One `LeaseKeepAlive` stream that renews any lease asked of it (etcd's stream takes requests
/// for any lease), for a process that keeps many leases (hollow nodes): opened with an anchor
/// lease of its own, which the caller renews like the others. Answers are read off the stream
/// by a task of its own, so sending never waits on reading.
pub struct SharedKeepAlive {
    keeper: EtcdKeeper,
    anchor: i64,
    /// (lease, ttl) answers; closed when the stream ends.
    answers: tokio::sync::mpsc::UnboundedReceiver<(i64, i64)>,
}

impl SharedKeepAlive {
    /// Grants an anchor lease of `anchor_ttl` and opens the stream with it; `None` when etcd
    /// refuses either.
    pub async fn open(store: &Store, anchor_ttl: Duration) -> Option<SharedKeepAlive> {
        let mut c = store.client();
        let anchor = store
            .call(c.lease_grant(anchor_ttl.as_secs() as i64, None))
            .await
            .ok()?
            .id();
        let (keeper, stream) = store.call(c.lease_keep_alive(anchor)).await.ok()?;
        let (tx, answers) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(read_answers(stream, tx));
        Some(SharedKeepAlive {
            keeper,
            anchor,
            answers,
        })
    }

    /// The stream's own lease.
    pub fn anchor(&self) -> i64 {
        self.anchor
    }

    /// Sends one renewal of lease `id`; false when the stream is broken (open another).
    pub async fn renew(&mut self, id: i64) -> bool {
        self.keeper.id = id;
        self.keeper.keep_alive().await.is_ok()
    }

    /// The next answer, `(lease, ttl in seconds)` (a TTL of 0 or less: the lease is gone);
    /// `None` once the stream has ended.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only receives from a channel.
    pub async fn answer(&mut self) -> Option<(i64, i64)> {
        self.answers.recv().await
    }

    /// Revokes the anchor lease, which ends the stream.
    pub async fn close(self, store: &Store) {
        let _ = revoke(store, self.anchor).await;
    }
}

async fn read_answers(
    mut stream: LeaseKeepAliveStream,
    tx: tokio::sync::mpsc::UnboundedSender<(i64, i64)>,
) {
    while let Ok(Some(resp)) = stream.message().await {
        if tx.send((resp.id(), resp.ttl())).is_err() {
            return;
        }
    }
}

/// The renewal loop of one lease.
async fn keep(store: Store, tx: watch::Sender<LeaseStatus>) {
    let LeaseStatus { id, ttl, .. } = *tx.borrow();
    let interval = ttl / 3;
    let mut stream: Option<(EtcdKeeper, LeaseKeepAliveStream)> = None;
    let mut failing = false;
    loop {
        let renewed = tx.borrow().renewed;
        let now = BootTime::now();
        if lost_at(renewed, ttl, now) {
            tracing::warn!(lease = id, ttl = ?ttl, "the lease could not be renewed for a whole TTL");
            tx.send_modify(|s| s.lost = Some(LossReason::Unrenewed));
            return;
        }
        let left = ttl.saturating_sub(now.since(renewed));
        let sent = BootTime::now();
        // One request, one answer: the answer's (lease, TTL left).
        let attempt = async {
            match stream.as_mut() {
                // Opening the stream sends the first request and takes its answer (an error
                // if etcd no longer knows the lease).
                None => {
                    stream = Some(store.client().lease_keep_alive(id).await?);
                    Ok(Some((id, 1)))
                }
                Some((keeper, answers)) => {
                    keeper.keep_alive().await?;
                    Ok(answers.message().await?.map(|a| (a.id(), a.ttl())))
                }
            }
        };
        let wait = left.min(interval.max(MIN_ANSWER_WAIT));
        let outcome: Result<Result<Option<(i64, i64)>, etcd_client::Error>, _> =
            tokio::time::timeout(wait, attempt).await;
        match outcome {
            Ok(Ok(Some((answered, ttl)))) if answered == id && ttl > 0 => {
                if failing {
                    tracing::info!(lease = id, "lease renewals succeed again");
                    failing = false;
                }
                let round_trip = sent.elapsed();
                tx.send_modify(|s| {
                    s.renewed = sent;
                    s.round_trip = round_trip;
                    s.renewals += 1;
                });
            }
            Ok(Ok(Some((answered, _)))) if answered == id => return expired(&tx, id),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => {
                return expired(&tx, id)
            }
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(None)) => "the stream ended".into(),
                    Ok(Ok(Some((a, _)))) => format!("an answer for lease {a}"),
                    Err(_) => format!("no answer within {wait:?}"),
                };
                if !failing {
                    tracing::debug!(lease = id, %why, "lease renewal failed; reopening the stream");
                    failing = true;
                }
                stream = None;
            }
        }
        let now = BootTime::now();
        let expires_in = ttl.saturating_sub(now.since(tx.borrow().renewed));
        let next = if stream.is_some() {
            interval.saturating_sub(now.since(sent))
        } else {
            REOPEN_DELAY
        };
        tokio::time::sleep(next.min(expires_in)).await;
    }
}

fn expired(tx: &watch::Sender<LeaseStatus>, id: i64) {
    tracing::warn!(lease = id, "etcd says the lease expired");
    tx.send_modify(|s| s.lost = Some(LossReason::Expired));
}

/// The last renewal of a holder's lease, across re-grants: what the job runner and the
/// heartbeat file follow. `None` until a first lease was granted.
#[derive(Clone, Debug)]
pub struct LastRenewal {
    rx: watch::Receiver<Option<Renewal>>,
}

/// One confirmed renewal (or grant): when it was sent, and of which lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub at: BootTime,
    pub lease: i64,
}

/// The writing side of [`LastRenewal`].
#[derive(Debug)]
pub struct RenewalSender {
    tx: watch::Sender<Option<Renewal>>,
}

impl LastRenewal {
    pub fn channel() -> (RenewalSender, LastRenewal) {
        let (tx, rx) = watch::channel(None);
        (RenewalSender { tx }, LastRenewal { rx })
    }

    /// When the lease was last renewed (or granted).
    pub fn last(&self) -> Option<BootTime> {
        self.rx.borrow().map(|r| r.at)
    }

    /// The lease of the last renewal: a new id means the holder lost its lease and was granted
    /// another (whatever it held under the old one may have been taken over meanwhile).
    pub fn lease(&self) -> Option<i64> {
        self.rx.borrow().map(|r| r.lease)
    }

    /// True when the lease was renewed less than `d` ago.
    pub fn renewed_within(&self, d: Duration) -> bool {
        self.last().is_some_and(|r| !lost_at(r, d, BootTime::now()))
    }

    /// Resolves at the next renewal; `false` once the sender is gone.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits on a watch channel.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

impl RenewalSender {
    /// Records a renewal (or grant) of `lease` sent at `at`; an older stamp than the last one
    /// is ignored.
    pub fn renewed(&self, at: BootTime, lease: i64) {
        self.tx.send_if_modified(|last| {
            if last.is_some_and(|l| l.at >= at) {
                return false;
            }
            *last = Some(Renewal { at, lease });
            true
        });
    }

    pub fn subscribe(&self) -> LastRenewal {
        LastRenewal {
            rx: self.tx.subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_lost_exactly_one_ttl_after_its_last_confirmed_renewal_was_sent() {
        let sent = BootTime::from_nanos(10_000_000_000);
        let ttl = Duration::from_secs(3);
        let at = |ms: u64| BootTime::from_nanos(sent.as_nanos() + ms * 1_000_000);
        assert!(!lost_at(sent, ttl, at(2_999)));
        assert!(lost_at(sent, ttl, at(3_000)));
        assert!(
            !lost_at(sent, ttl, BootTime::from_nanos(1)),
            "a clock reading before the renewal is not a loss"
        );
        let s = LeaseStatus::fresh(Grant {
            id: 7,
            ttl,
            granted_at: sent,
        });
        assert_eq!(s.valid_for(at(1_000)), Duration::from_secs(2));
        assert_eq!(s.valid_for(at(5_000)), Duration::ZERO);
        assert!(s.is_lost(at(3_000)) && !s.is_lost(at(100)));
    }

    #[test]
    fn the_last_renewal_only_moves_forward() {
        let (tx, rx) = LastRenewal::channel();
        assert!(
            !rx.renewed_within(Duration::from_secs(3600)),
            "never renewed"
        );
        let now = BootTime::now();
        tx.renewed(now, 7);
        tx.renewed(BootTime::from_nanos(1), 8);
        assert_eq!(rx.last(), Some(now));
        assert!(rx.renewed_within(Duration::from_secs(60)));
        assert!(!rx.renewed_within(Duration::ZERO));
    }
}
