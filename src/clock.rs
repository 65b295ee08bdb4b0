//! The machine's monotonic clock, shared by every process on the host.
//!
//! Lease bookkeeping crosses processes: the agent renews the node lease, and each job's shim
//! (a separate process that outlives the agent) must know how long ago that last happened. A
//! process-local `Instant` cannot be handed to another process, so renewals are stamped with
//! [`BootTime`]: `CLOCK_BOOTTIME`, one clock for the whole machine that never jumps with wall
//! time and, unlike `CLOCK_MONOTONIC`, keeps counting while the machine is suspended (a node
//! that slept through its lease's expiry must count that time as lost).
//!
//! Caveats: the clock restarts at every boot, so a stamp written before a reboot means nothing
//! after it; pair stored stamps with [`boot_id`] and treat a stamp from another boot as
//! unknown. No clock agreement between machines is needed or assumed.

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// A point on the machine-wide monotonic clock (time since boot, suspend included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootTime(Duration);

impl BootTime {
    /// Now. Falls back to `CLOCK_MONOTONIC` on a kernel without `CLOCK_BOOTTIME` (older
    /// than 2.6.39), which still agrees across processes.
    pub fn now() -> BootTime {
        let ts = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
            .expect("the monotonic clock is readable");
        BootTime(Duration::new(
            ts.tv_sec().max(0) as u64,
            ts.tv_nsec().clamp(0, 999_999_999) as u32,
        ))
    }

    /// A stamp read back from nanoseconds since boot.
    pub fn from_nanos(nanos: u64) -> BootTime {
        BootTime(Duration::from_nanos(nanos))
    }

    /// Nanoseconds since boot (saturating at `u64::MAX`, about 584 years).
    pub fn as_nanos(self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }

    /// How long after `earlier` this is; zero when `earlier` is later.
    pub fn since(self, earlier: BootTime) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// How long ago this was.
    pub fn elapsed(self) -> Duration {
        BootTime::now().since(self)
    }

    /// This point plus `d`, saturating instead of overflowing (so a user's huge duration
    /// means "never", not a panic).
    pub fn saturating_add(self, d: Duration) -> BootTime {
        BootTime(self.0.saturating_add(d))
    }
}

/// This boot's identity (`/proc/sys/kernel/random/boot_id`), to tell stamps of this boot from
/// those of an earlier one; `None` where the kernel does not provide it.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_clock_moves_forward_and_round_trips_through_nanos() {
        let a = BootTime::now();
        std::thread::sleep(Duration::from_millis(5));
        let b = BootTime::now();
        assert!(b.since(a) >= Duration::from_millis(5));
        assert_eq!(a.since(b), Duration::ZERO, "never negative");
        assert_eq!(BootTime::from_nanos(a.as_nanos()), a);
        assert!(boot_id().is_some(), "Linux provides a boot id");
    }

    #[test]
    fn adding_a_huge_duration_saturates() {
        let far = BootTime::now().saturating_add(Duration::MAX);
        assert!(far > BootTime::now());
    }
}
