//! The node's `DiskPressure` condition: the disk holding the agent's state directory (where the
//! artifact cache and job directories live) is above the ArtifactStore's high watermark. The
//! scheduler places nothing new on such a node.
//!
//! Hysteresis: the condition turns on strictly above `highPercent` and off strictly below
//! `lowPercent`; in between it keeps its last state, so a disk hovering at the watermark does
//! not flap (and the node cache's eviction, which runs above high until below low, gets the
//! node out of it). The watermarks are read from the cluster's ArtifactStore (defaults 85/75
//! when there is none) at most every [`WATERMARK_REFRESH`].

use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use crate::api::artifact_store::{ArtifactStoreSpec, CacheWatermarks, DEFAULT_STORE};
use crate::api::meta::{Condition, ConditionStatus};
use crate::api::node::DISK_PRESSURE;
use crate::store::Store;

/// How often the agent reads the watermarks again.
pub const WATERMARK_REFRESH: Duration = Duration::from_secs(30);

/// Whether the node is under disk pressure now, given whether it was (see the module docs).
/// NaN usage keeps the last state.
pub fn under_pressure(was: bool, disk_percent: f64, w: &CacheWatermarks) -> bool {
    if disk_percent > f64::from(w.high_percent) {
        true
    } else if disk_percent < f64::from(w.low_percent) {
        false
    } else {
        was
    }
}

/// The condition for `pressure`, keeping `previous`'s transition time when the state is the
/// same. Its message names the watermarks, not the usage (which is in `usage.diskPercent`), so
/// the condition changes only when the state or the watermarks do.
pub fn condition(
    pressure: bool,
    w: &CacheWatermarks,
    previous: Option<&Condition>,
) -> Condition {
    let status = if pressure {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    let (reason, message) = if pressure {
        (
            "DiskAboveHighWatermark",
            format!(
                "the state directory's disk went above the ArtifactStore's high watermark {}% \
                 (clears below {}%): no new jobs are placed here; free space \
                 or raise spec.cache.highPercent",
                w.high_percent, w.low_percent
            ),
        )
    } else {
        ("DiskBelowWatermark", String::new())
    };
    let since = previous
        .filter(|p| p.status == status)
        .and_then(|p| p.last_transition_time)
        .unwrap_or_else(Utc::now);
    Condition {
        type_: DISK_PRESSURE.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time: Some(since),
    }
}

/// The agent's side: the last condition and the watermarks as last read.
pub struct DiskPressure {
    store: Store,
    watermarks: CacheWatermarks,
    read_at: Option<Instant>,
    last: Option<Condition>,
}

impl DiskPressure {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            watermarks: CacheWatermarks::default(),
            read_at: None,
            last: None,
        }
    }

    /// The condition for `disk_percent`, reading the watermarks again when they are older than
    /// [`WATERMARK_REFRESH`] (a failed read keeps the last ones).
    pub async fn observe(&mut self, disk_percent: f64) -> Condition {
        if self.read_at.is_none_or(|t| t.elapsed() >= WATERMARK_REFRESH) {
            match self.store.get::<ArtifactStoreSpec>(DEFAULT_STORE).await {
                Ok(found) => {
                    self.watermarks = found.map(|s| s.spec.cache).unwrap_or_default();
                    self.read_at = Some(Instant::now());
                }
                Err(e) => tracing::debug!(%e, "cannot read the ArtifactStore's watermarks yet"),
            }
        }
        let was = self
            .last
            .as_ref()
            .is_some_and(|c| c.status == ConditionStatus::True);
        let pressure = under_pressure(was, disk_percent, &self.watermarks);
        let c = condition(pressure, &self.watermarks, self.last.as_ref());
        if pressure != was {
            tracing::info!(disk_percent, pressure, "disk pressure changed");
        }
        self.last = Some(c.clone());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(high: u8, low: u8) -> CacheWatermarks {
        CacheWatermarks {
            high_percent: high,
            low_percent: low,
        }
    }

    #[test]
    fn pressure_starts_strictly_above_high_and_ends_strictly_below_low() {
        let w = w(85, 75);
        assert!(!under_pressure(false, 85.0, &w), "at high is not above it");
        assert!(under_pressure(false, 85.1, &w));
        assert!(under_pressure(true, 75.0, &w), "at low is not below it");
        assert!(!under_pressure(true, 74.9, &w));
    }

    #[test]
    fn between_the_watermarks_the_last_state_holds() {
        let w = w(85, 75);
        for p in [75.0, 80.0, 85.0] {
            assert!(under_pressure(true, p, &w));
            assert!(!under_pressure(false, p, &w));
        }
        assert!(under_pressure(true, f64::NAN, &w), "NaN keeps the state");
        assert!(!under_pressure(false, f64::NAN, &w));
    }

    #[test]
    fn the_condition_keeps_its_transition_time_until_the_state_flips() {
        let w = w(85, 75);
        let on = condition(true, &w, None);
        assert_eq!(on.type_, DISK_PRESSURE);
        assert!(on.message.contains("85%"), "{}", on.message);
        let t0 = on.last_transition_time;
        let still = condition(true, &w, Some(&on));
        assert_eq!(still.last_transition_time, t0);
        std::thread::sleep(Duration::from_millis(2));
        let off = condition(false, &w, Some(&still));
        assert_eq!(off.status, ConditionStatus::False);
        assert_ne!(off.last_transition_time, t0);
    }
}
