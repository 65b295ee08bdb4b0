//! The node's `DiskPressure` condition: the disk holding the agent's state directory (where the
//! artifact cache and job directories live) is above the ArtifactStore's high watermark. The
//! scheduler places nothing new on such a node.
//!
//! Hysteresis: the condition turns on strictly above `highPercent` and off strictly below
//! `lowPercent`; in between it keeps its last state, so a disk hovering at the watermark does
//! not flap (and the node cache's eviction, which runs above high until below low, gets the
//! node out of it). The watermarks follow the cluster's ArtifactStore through a watch; a change
//! is applied at once. A cluster without an ArtifactStore has no data plane and no watermarks:
//! the agent reports no `DiskPressure` condition at all (the `overloaded` disk threshold still
//! applies).

use chrono::Utc;

use crate::api::artifact_store::{ArtifactStoreSpec, CacheWatermarks, DEFAULT_STORE};
use crate::api::meta::{Condition, ConditionStatus};
use crate::api::node::DISK_PRESSURE;
use crate::api::{ArtifactStore, Spec};
use crate::store::{keys, WatchEvent};

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
pub fn condition(pressure: bool, w: &CacheWatermarks, previous: Option<&Condition>) -> Condition {
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

/// The agent's side: the watermarks as last seen and the last condition.
#[derive(Default)]
pub struct DiskPressure {
    /// `None` while the cluster has no ArtifactStore.
    watermarks: Option<CacheWatermarks>,
    last: Option<Condition>,
}

impl DiskPressure {
    /// Takes in an event of a watch on the ArtifactStore `default` ([`watermarks_key`]): its
    /// watermarks, or none when it is gone. A value that does not decode keeps the
    /// watermarks as they were. True when they changed.
    pub fn apply(&mut self, event: &WatchEvent) -> bool {
        let found = match event {
            WatchEvent::Restarted { items, .. } => {
                items.iter().find(|kv| kv.key == watermarks_key())
            }
            WatchEvent::Put(kv) if kv.key == watermarks_key() => Some(kv),
            WatchEvent::Put(_) => return false,
            WatchEvent::Delete { key, .. } if *key != watermarks_key() => return false,
            WatchEvent::Delete { .. } => None,
        };
        let watermarks = match found {
            None => None,
            Some(kv) => match serde_json::from_slice::<ArtifactStore>(&kv.value) {
                Ok(store) => Some(store.spec.cache),
                Err(e) => {
                    tracing::warn!(%e, "the ArtifactStore does not decode; keeping the disk watermarks as they were");
                    return false;
                }
            },
        };
        let changed = watermarks != self.watermarks;
        self.watermarks = watermarks;
        changed
    }

    /// The condition for `disk_percent` under the current watermarks; `None` without an
    /// ArtifactStore.
    pub fn observe(&mut self, disk_percent: f64) -> Option<Condition> {
        let Some(watermarks) = self.watermarks.clone() else {
            self.last = None;
            return None;
        };
        let was = self
            .last
            .as_ref()
            .is_some_and(|c| c.status == ConditionStatus::True);
        let pressure = under_pressure(was, disk_percent, &watermarks);
        if pressure != was {
            tracing::info!(disk_percent, pressure, "disk pressure changed");
        }
        let c = condition(pressure, &watermarks, self.last.as_ref());
        self.last = Some(c.clone());
        Some(c)
    }
}

/// The key of the ArtifactStore whose watermarks apply.
pub fn watermarks_key() -> String {
    keys::object(ArtifactStoreSpec::PLURAL, DEFAULT_STORE)
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
    fn watermarks_follow_the_artifact_store_and_without_one_there_is_no_condition() {
        let kv = |value: serde_json::Value| crate::store::KeyValue {
            key: watermarks_key(),
            value: serde_json::to_vec(&value).unwrap(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        };
        let store = serde_json::json!({
            "apiVersion": "rift/v1", "kind": "ArtifactStore", "metadata": {"name": "default"},
            "spec": {"url": "file:///x", "cache": {"highPercent": 1, "lowPercent": 0}},
        });
        let mut p = DiskPressure::default();
        assert_eq!(p.observe(99.0), None, "no ArtifactStore, no condition");
        assert!(p.apply(&WatchEvent::Put(kv(store))));
        assert_eq!(p.observe(2.0).unwrap().status, ConditionStatus::True);
        assert!(!p.apply(&WatchEvent::Put(kv(serde_json::json!({"newer": true})))));
        assert_eq!(
            p.observe(0.5).unwrap().status,
            ConditionStatus::True,
            "undecodable: kept"
        );
        let gone = WatchEvent::Delete {
            key: watermarks_key(),
            mod_revision: 2,
            prev: None,
        };
        assert!(p.apply(&gone));
        assert_eq!(p.observe(2.0), None);
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
        std::thread::sleep(std::time::Duration::from_millis(2));
        let off = condition(false, &w, Some(&still));
        assert_eq!(off.status, ConditionStatus::False);
        assert_ne!(off.last_transition_time, t0);
    }
}
