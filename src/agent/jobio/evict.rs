//! Which node-cache entries to delete when the disk is too full: a pure decision.
//!
//! Rules:
//! 1. Nothing is evicted while the disk's usage is below the high watermark.
//! 2. Above it, unpinned entries go, least recently used first, until usage would be at or
//!    below the low watermark (or nothing unpinned is left).
//! 3. A pinned entry (an input of a job staging or running on the node) is never evicted,
//!    however full the disk. Pending uploads are not cache entries (they are spooled apart,
//!    [`super::outputs`]), so they are never candidates.

use std::collections::BTreeSet;

use super::cache::Entry;
use crate::api::artifact::Digest;
use crate::api::artifact_store::CacheWatermarks;

/// Bytes used and the size of the filesystem holding the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    pub total: u64,
}

impl Usage {
    fn at_or_above(&self, used: u64, percent: u8) -> bool {
        u128::from(used) * 100 >= u128::from(self.total) * u128::from(percent)
    }
}

fn at_or_below(used: u64, total: u64, percent: u8) -> bool {
    u128::from(used) * 100 <= u128::from(total) * u128::from(percent)
}

/// The entries to delete, in order (see the module rules).
pub fn evict(
    entries: &[Entry],
    pinned: &BTreeSet<Digest>,
    usage: Usage,
    marks: &CacheWatermarks,
) -> Vec<Digest> {
    if usage.total == 0 || !usage.at_or_above(usage.used, marks.high_percent) {
        return Vec::new();
    }
    let mut candidates: Vec<&Entry> = entries
        .iter()
        .filter(|e| !pinned.contains(&e.digest))
        .collect();
    candidates.sort_by_key(|e| (e.last_used, e.digest));
    let mut used = usage.used;
    let mut out = Vec::new();
    for e in candidates {
        if at_or_below(used, usage.total, marks.low_percent) {
            break;
        }
        used = used.saturating_sub(e.size);
        out.push(e.digest);
    }
    out
}

/// The usage of the filesystem holding `path` (blocking).
pub fn usage_of(path: &std::path::Path) -> std::io::Result<Usage> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frag = s.fragment_size();
    let total = s.blocks() * frag;
    let free = s.blocks_available() * frag;
    Ok(Usage {
        used: total.saturating_sub(free),
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn entry(n: u8, size: u64, age_secs: u64) -> Entry {
        Entry {
            digest: Digest::from_bytes([n; 32]),
            size,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_secs),
        }
    }

    fn marks(high: u8, low: u8) -> CacheWatermarks {
        CacheWatermarks {
            high_percent: high,
            low_percent: low,
        }
    }

    #[test]
    fn below_the_high_watermark_nothing_is_evicted() {
        let e = [entry(1, 10, 100)];
        let u = Usage {
            used: 84,
            total: 100,
        };
        assert!(evict(&e, &BTreeSet::new(), u, &marks(85, 75)).is_empty());
    }

    #[test]
    fn above_it_the_least_recently_used_go_until_the_low_watermark() {
        // 90 used of 100: must free 15 to reach 75.
        let e = [entry(1, 10, 10), entry(2, 10, 300), entry(3, 10, 200)];
        let u = Usage {
            used: 90,
            total: 100,
        };
        let out = evict(&e, &BTreeSet::new(), u, &marks(85, 75));
        assert_eq!(
            out,
            vec![Digest::from_bytes([2; 32]), Digest::from_bytes([3; 32])]
        );
    }

    #[test]
    fn pinned_entries_are_never_evicted_however_full() {
        let e = [entry(1, 50, 1000), entry(2, 5, 1)];
        let pinned = [Digest::from_bytes([1; 32])].into();
        let u = Usage {
            used: 99,
            total: 100,
        };
        let out = evict(&e, &pinned, u, &marks(85, 75));
        assert_eq!(out, vec![Digest::from_bytes([2; 32])]);
    }

    #[test]
    fn no_panic_from_any_number() {
        let e = [entry(1, u64::MAX, 0), entry(2, 0, 5)];
        for (used, total) in [(u64::MAX, u64::MAX), (u64::MAX, 1), (0, 0), (5, 0)] {
            let _ = evict(&e, &BTreeSet::new(), Usage { used, total }, &marks(0, 0));
            let _ = evict(
                &e,
                &BTreeSet::new(),
                Usage { used, total },
                &marks(255, 255),
            );
        }
    }
}
