//! Pacing of a sender, pure (time and randomness are arguments):
//! reconnection backoff and the bandwidth limit's token bucket.

use std::time::{Duration, Instant};

/// Reconnection backoff settings.
#[derive(Clone, Copy, Debug)]
pub struct BackoffConfig {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(10),
        }
    }
}

/// Exponential backoff with jitter: the n-th delay is drawn uniformly
/// from [d/2, d] where d = min(max, initial · 2ⁿ).
#[derive(Clone, Debug)]
pub struct Backoff {
    cfg: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(cfg: BackoffConfig) -> Backoff {
        Backoff { cfg, attempt: 0 }
    }

    /// The next delay; `unit` is a random number in [0, 1).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        let d = self.cfg.initial.saturating_mul(factor).min(self.cfg.max);
        self.attempt = self.attempt.saturating_add(1);
        d.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A token bucket for the bandwidth limit.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// `rate` bytes per second with a burst of `burst` bytes.
    pub fn new(rate: u64, burst: u64, now: Instant) -> RateLimiter {
        RateLimiter {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Takes `n` bytes; returns how long to wait before sending them.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        });
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(100));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(400));
        for _ in 0..50 {
            let d = b.next_delay(0.5);
            assert!(d <= Duration::from_secs(1) && d >= Duration::from_millis(500));
        }
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
    }

    #[test]
    fn rate_limiter_spaces_sends() {
        let t = Instant::now();
        let mut r = RateLimiter::new(1000, 1000, t);
        assert_eq!(r.take(1000, t), Duration::ZERO);
        assert_eq!(r.take(500, t), Duration::from_millis(500));
        assert_eq!(r.take(0, t + Duration::from_millis(500)), Duration::ZERO);
    }
}
