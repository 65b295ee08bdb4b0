//! Bandwidth limits on artifact transfers: a token bucket per direction, shared by every
//! transfer of one process (an agent: one node), and the pure choice of which of an
//! `ArtifactStore`'s `bandwidth` entries applies to a node.
//!
//! Guarantees:
//! - **Never faster than the rate.** A bucket starts empty and a taker waits until the bytes it
//!   took are covered by `rate × elapsed`, so `n` bytes through a bucket of rate `r` take at
//!   least `n / r` seconds from the bucket's first use after being idle — up to one
//!   [`BURST`] of saved-up credit when it was idle before.
//! - **Flat memory, fair.** Takers borrow (the balance may go negative) and sleep off their own
//!   debt, so no queue is kept; concurrent takers share the rate in the order they took.
//! - **Changed at run time.** [`Bucket::set_rate`] takes effect for the next take; `None`
//!   lifts the limit.
//!
//! Cancel-safe: dropping [`Bucket::take`] mid-sleep leaves its bytes counted (they were about
//! to be sent), which only makes later takers wait longer, never shorter.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::artifact_store::BandwidthLimit;

/// The most credit an idle bucket saves up, in seconds of its rate.
pub const BURST: Duration = Duration::from_millis(50);

/// A shared token bucket; clones share the same balance.
#[derive(Clone, Debug, Default)]
pub struct Bucket(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    /// Bytes per second; `None`: unlimited.
    rate: Option<u64>,
    /// Bytes that may be sent now without waiting (negative: owed).
    balance: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// A bucket limited to `rate` bytes per second (`None`: unlimited).
    pub fn new(rate: Option<u64>) -> Self {
        let b = Bucket::default();
        b.set_rate(rate);
        b
    }

    /// Changes the rate; the balance is kept (clamped to the new burst).
    pub fn set_rate(&self, rate: Option<u64>) {
        let mut s = self.0.lock().expect("bucket lock");
        if s.rate != rate {
            s.refill(Instant::now());
            s.rate = rate.filter(|r| *r > 0);
            s.balance = s.balance.min(s.burst());
        }
    }

    pub fn rate(&self) -> Option<u64> {
        self.0.lock().expect("bucket lock").rate
    }

    /// Waits until `bytes` may be sent under the rate, counting them as sent.
    pub async fn take(&self, bytes: u64) {
        let wait = self
            .0
            .lock()
            .expect("bucket lock")
            .charge(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl State {
    fn burst(&self) -> f64 {
        self.rate.map_or(0.0, |r| r as f64 * BURST.as_secs_f64())
    }

    fn refill(&mut self, now: Instant) {
        if let (Some(rate), Some(last)) = (self.rate, self.last) {
            let earned = now.saturating_duration_since(last).as_secs_f64() * rate as f64;
            self.balance = (self.balance + earned).min(self.burst());
        }
        self.last = Some(now);
    }

    /// Takes `bytes` at `now`; returns how long the taker must wait for them.
    fn charge(&mut self, bytes: u64, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        self.refill(now);
        self.balance -= bytes as f64;
        if self.balance >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.balance / rate as f64)
        }
    }
}

/// One process's buckets: uploads and downloads limited separately.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    pub upload: Bucket,
    pub download: Bucket,
}

impl Limits {
    /// Sets both rates from the entry of `limits` that applies to a node labelled `labels`.
    pub fn apply(&self, limits: &[BandwidthLimit], labels: &BTreeMap<String, String>) {
        let chosen = applicable(limits, labels);
        self.upload
            .set_rate(chosen.and_then(|l| l.upload_bytes_per_second));
        self.download
            .set_rate(chosen.and_then(|l| l.download_bytes_per_second));
    }
}

/// The entry that applies to a node labelled `labels`: the first whose `nodeSelector` labels
/// all match (an empty selector matches every node). It decides both directions; a direction
/// it leaves out is unlimited. `None`: no entry matches, nothing is limited.
pub fn applicable<'a>(
    limits: &'a [BandwidthLimit],
    labels: &BTreeMap<String, String>,
) -> Option<&'a BandwidthLimit> {
    limits.iter().find(|l| {
        l.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(sel: &[(&str, &str)], up: Option<u64>, down: Option<u64>) -> BandwidthLimit {
        BandwidthLimit {
            node_selector: sel
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            upload_bytes_per_second: up,
            download_bytes_per_second: down,
        }
    }

    #[test]
    fn the_first_entry_whose_selector_matches_decides_both_directions() {
        let limits = vec![
            limit(&[("provider", "vast"), ("tier", "spot")], Some(1), Some(2)),
            limit(&[("provider", "vast")], Some(3), None),
            limit(&[], Some(5), Some(6)),
        ];
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let spot = labels(&[("provider", "vast"), ("tier", "spot")]);
        assert_eq!(applicable(&limits, &spot), Some(&limits[0]));
        let vast = labels(&[("provider", "vast")]);
        assert_eq!(applicable(&limits, &vast), Some(&limits[1]));
        assert_eq!(
            applicable(&limits, &labels(&[("provider", "aws")])),
            Some(&limits[2])
        );
        assert_eq!(applicable(&limits[..2], &labels(&[])), None);

        let l = Limits::default();
        l.apply(&limits, &vast);
        // The second entry sets no download limit: downloads are not limited.
        assert_eq!((l.upload.rate(), l.download.rate()), (Some(3), None));
        l.apply(&[], &vast);
        assert_eq!((l.upload.rate(), l.download.rate()), (None, None));
    }

    #[test]
    fn a_bucket_charges_every_byte_at_its_rate_and_saves_at_most_a_burst() {
        let mut s = State {
            rate: Some(1000),
            ..State::default()
        };
        let t0 = Instant::now();
        // Starts empty: 500 bytes at once cost half a second.
        assert_eq!(s.charge(500, t0), Duration::from_millis(500));
        // The next 500 queue behind them: due at one second.
        assert_eq!(s.charge(500, t0), Duration::from_secs(1));
        // Idle for 10 s: only a burst (50 bytes) was saved up.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(s.charge(50, later), Duration::ZERO);
        assert_eq!(s.charge(100, later), Duration::from_millis(100));
        // Unlimited: never waits.
        let mut free = State::default();
        assert_eq!(free.charge(u64::MAX, t0), Duration::ZERO);
    }

    #[tokio::test]
    async fn bytes_through_a_bucket_take_at_least_size_over_rate() {
        let b = Bucket::new(Some(4 * 1024 * 1024));
        let started = Instant::now();
        for _ in 0..8 {
            b.take(256 * 1024).await; // 2 MiB at 4 MiB/s
        }
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
}
