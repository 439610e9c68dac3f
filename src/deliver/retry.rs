//! The retry policy of deliveries: exponential backoff with full jitter, capped. Every failure of
//! a delivery is worth a retry (a subscriber answering 4xx may be fixed by its owner), without
//! limit; the subscription's status says what failed and when the next attempt is due.

use std::time::Duration;

/// Exponential backoff with full jitter: attempt `n` waits a random time up to
/// `min(max, first * 2^(n-1))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// How long to wait after failed attempt `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(fastrand::f64())
    }

    /// The longest wait after failed attempt `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doubling = 1_u32 << attempt.saturating_sub(1).min(20);
        self.first.saturating_mul(doubling).min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { first: Duration::from_millis(100), max: Duration::from_secs(60) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_full_jitter() {
        let backoff = Backoff::default();
        assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(2), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(10), Duration::from_millis(51_200));
        assert_eq!(backoff.ceiling(11), Duration::from_secs(60));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(60));
        let delays: Vec<Duration> = (0..1000).map(|_| backoff.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(100)), "jitter spreads the whole range");
        assert!(delays.iter().any(|d| *d > Duration::from_millis(300)));
    }
}
