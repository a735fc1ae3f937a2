//! Reconnection backoff as gRPC's connection-backoff spec: 1 s initial, ×1.6 per failure,
//! ±20 % jitter, at most 120 s. Jitter keeps a fleet of agents from reconnecting in lockstep
//! when the controller comes back.

use rand::Rng;
use std::time::Duration;

/// Delays between attempts; [`Default`] is gRPC's 1 s to 120 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: f64,
    initial: f64,
    max: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(120))
    }
}

impl Backoff {
    /// Starts at `initial` and grows to at most `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            next: initial.as_secs_f64(),
            initial: initial.as_secs_f64(),
            max: max.as_secs_f64(),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 1.6).min(self.max);
        let jitter = rand::rng().random_range(-0.2..=0.2);
        Duration::from_secs_f64((base * (1.0 + jitter)).min(self.max))
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_and_caps() {
        let mut b = Backoff::default();
        let first = b.next_delay().as_secs_f64();
        assert!((0.8..=1.2).contains(&first), "{first}");
        let second = b.next_delay().as_secs_f64();
        assert!((1.28..=1.92).contains(&second), "{second}");
        for _ in 0..50 {
            assert!(b.next_delay() <= Duration::from_secs(120));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }
}
