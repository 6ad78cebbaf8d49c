//! When and how long a client waits before trying again.
//!
//! A real phone app retries a Buy that got `503` (overloaded), `429` (rate
//! limited) or no answer at all, with the *same* Idempotency-Key so that a
//! retry can never buy twice, after a jittered backoff so that a million
//! clients do not come back in lockstep. A refusal (`409 sold_out`,
//! `402`, ...) is final: retrying it cannot change the answer.

use std::time::Duration;

use hyper::StatusCode;

/// Most attempts any policy allows, first one included.
pub const ATTEMPTS_MAX: u32 = 100;

/// First backoff step before jitter.
pub const BACKOFF_BASE: Duration = Duration::from_millis(50);

/// Largest backoff step before jitter.
pub const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// How a client retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per operation, the first included (1 = never retry).
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// A policy of `max_attempts` with the default backoff.
    pub fn new(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: max_attempts.clamp(1, ATTEMPTS_MAX),
            base: BACKOFF_BASE,
            cap: BACKOFF_CAP,
        }
    }

    /// Whether another attempt is allowed after `attempts_made` attempts.
    pub fn allows_another(&self, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts
    }

    /// How long to wait after the `attempts_made`-th failed attempt.
    ///
    /// Without a hint: "equal jitter" exponential backoff, a uniform pick in
    /// `[step/2, step]` where `step = base * 2^(attempts_made-1)`, capped.
    /// With the server's `Retry-After`: at least that long, plus up to half
    /// of it again, so that the turned-away crowd spreads out.
    pub fn delay(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        match retry_after {
            Some(hint) if !hint.is_zero() => hint + jitter(hint / 2, rng),
            _ => {
                let doublings = attempts_made.saturating_sub(1).min(16);
                let step = self.base.saturating_mul(1 << doublings).min(self.cap);
                step / 2 + jitter(step / 2, rng)
            }
        }
    }
}

/// Whether an answer with this status is worth retrying with the same key.
pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS
}

/// A uniform pick in `[0, up_to]`.
fn jitter(up_to: Duration, rng: &mut fastrand::Rng) -> Duration {
    let micros = u64::try_from(up_to.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rng.u64(0..=micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let policy = RetryPolicy::new(10);
        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 1..=10 {
            let step = (BACKOFF_BASE * (1 << (attempt - 1))).min(BACKOFF_CAP);
            for _ in 0..100 {
                let delay = policy.delay(attempt, None, &mut rng);
                assert!(delay >= step / 2 && delay <= step, "{attempt}: {delay:?}");
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let policy = RetryPolicy::new(3);
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..100 {
            let delay = policy.delay(1, Some(Duration::from_secs(1)), &mut rng);
            assert!(delay >= Duration::from_secs(1));
            assert!(delay <= Duration::from_millis(1500));
        }
    }

    #[test]
    fn attempts_are_bounded() {
        let policy = RetryPolicy::new(3);
        assert!(policy.allows_another(2));
        assert!(!policy.allows_another(3));
        assert_eq!(RetryPolicy::new(0).max_attempts, 1);
        assert_eq!(RetryPolicy::new(u32::MAX).max_attempts, ATTEMPTS_MAX);
    }

    #[test]
    fn only_overload_and_rate_limit_are_retryable() {
        assert!(is_retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_retryable(StatusCode::CONFLICT));
        assert!(!is_retryable(StatusCode::INTERNAL_SERVER_ERROR));
    }
}
