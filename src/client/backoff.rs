//! Reconnection delays: capped exponential backoff with full jitter, as a
//! plain value so its behaviour is tested without clocks or sockets.

use std::time::Duration;

use rand::Rng;

/// The delay before each reconnection attempt.
///
/// Attempt `n` waits a random time in `[base * 2^n / 2, base * 2^n]`,
/// capped at `max`: the jitter keeps many clients that lost the same router
/// from reconnecting in lock step, the cap keeps a long outage from making
/// the wait absurd. A success resets it.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base` and never waits longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// How many failures in a row have been counted since the last reset.
    pub fn failures(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay to wait before the next attempt, counting one more failure.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let floor = ceiling / 2;
        let spread = ceiling.saturating_sub(floor).as_millis() as u64;
        floor + Duration::from_millis(rng.gen_range(0..=spread))
    }

    /// Forgets the failures after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    /// Half a second at first, at most thirty seconds.
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn grows_exponentially_within_jitter_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for n in 0..6 {
            let ceiling = Duration::from_millis(100 * (1 << n));
            let d = b.next_delay(&mut rng);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {n}: {d:?}");
        }
    }

    #[test]
    fn never_exceeds_the_cap_even_after_many_failures() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..200 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(30));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }

    #[test]
    fn reset_starts_over() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.failures(), 5);
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(500));
    }

    #[test]
    fn jitter_spreads_clients_apart() {
        let mut rng = StdRng::seed_from_u64(9);
        let delays: std::collections::HashSet<_> = (0..20)
            .map(|_| {
                let mut b = Backoff::default();
                b.next_delay(&mut rng); // first
                b.next_delay(&mut rng)
            })
            .collect();
        assert!(
            delays.len() > 10,
            "jitter produced {} distinct delays",
            delays.len()
        );
    }
}
