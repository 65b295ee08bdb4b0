//! Exponential backoff with jitter (backon) that starts over after a healthy period.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

/// Delays between retries that grow exponentially with jitter up to `max`, and go back to
/// `min` once no failure has happened for `reset_after` (the thing has been healthy).
#[derive(Debug)]
pub struct ResettingBackoff {
    builder: ExponentialBuilder,
    current: ExponentialBackoff,
    reset_after: Duration,
    last_failure: Option<Instant>,
}

impl ResettingBackoff {
    pub fn new(min: Duration, max: Duration, reset_after: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            current: builder.build(),
            builder,
            reset_after,
            last_failure: None,
        }
    }

    /// The delay before the next attempt after a failure now.
    pub fn next_delay(&mut self) -> Duration {
        let now = Instant::now();
        if self
            .last_failure
            .is_some_and(|t| now.duration_since(t) >= self.reset_after)
        {
            self.reset();
        }
        self.last_failure = Some(now);
        self.current
            .next()
            .expect("an unbounded backoff always has a next delay")
    }

    /// Starts over from the minimum delay.
    pub fn reset(&mut self) {
        self.current = self.builder.build();
        self.last_failure = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn grows_then_resets_after_a_healthy_period() {
        let mut b = ResettingBackoff::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            Duration::from_secs(30),
        );
        let first = b.next_delay();
        let mut last = first;
        for _ in 0..5 {
            last = b.next_delay();
        }
        assert!(last > first * 4, "{first:?} -> {last:?}");
        assert!(
            last <= Duration::from_secs(20),
            "capped (plus jitter): {last:?}"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        let after_reset = b.next_delay();
        assert!(after_reset < Duration::from_millis(250), "{after_reset:?}");
    }
}
