//! Admission control: whether the server takes a request now.
//!
//! Four bounds, each named in [`crate::Config`] and answered at once
//! rather than queued:
//! - bodies still arriving (`body_reads_max`): one atomic counter; a
//!   request with a body holds one of these, not an in-flight slot, while
//!   its body arrives (itself bounded in time, [`crate::wire::read_body`]),
//!   so slow or stalled clients can fill only this smaller bound; past it
//!   `503 overloaded` + `Retry-After`;
//! - requests in flight (`in_flight_max`): one atomic counter, taken once
//!   the body (if any) has arrived; past it the request is shed with
//!   `503 overloaded` + `Retry-After`;
//! - requests per second per token (`rate_limit_shopper`) and signups per
//!   minute per client address (`rate_limit_address`): GCRA limiters from
//!   `governor`, keyed, answered `429 rate_limited` + `Retry-After`.
//!
//! The keyed limiters' maps grow with the number of distinct keys; the
//! housekeeping task calls [`Admission::retain_recent`] so keys whose
//! limit has fully recovered are dropped and the maps stay bounded by the
//! callers of the last few seconds.
//!
//! The connection bound (`max_connections`) is a `Semaphore` in the accept
//! loop ([`crate::server`]); the body and header bounds are on the request
//! and the HTTP/1 builder.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::Caller;
use crate::error::Error;

/// Limiter key of a token holder: the account id, with the top bit telling
/// merchants from shoppers.
fn caller_key(caller: Caller) -> Option<u64> {
    const MERCHANT_BIT: u64 = 1 << 63;
    match caller {
        Caller::Admin => None,
        Caller::Merchant(id) => Some(id.0 | MERCHANT_BIT),
        Caller::Shopper(id) => Some(id.0 & !MERCHANT_BIT),
    }
}

/// How long after the last shed request `/readyz` still says the server
/// is shedding, in milliseconds.
pub(crate) const SHEDDING_WINDOW_MILLIS: u64 = 1_000;

/// A bound that sheds: in-flight requests or bodies still arriving.
struct Slots {
    taken: AtomicUsize,
    max: usize,
    /// Requests shed at this bound since start.
    shed: AtomicU64,
}

pub(crate) struct Admission {
    in_flight: Slots,
    body_reads: Slots,
    /// When a request was last shed (ms since `started`), +1; 0: never.
    last_shed_millis: AtomicU64,
    started: std::time::Instant,
    per_token: Option<DefaultKeyedRateLimiter<u64>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

/// A slot of one bound (a request in flight, or a body arriving), given
/// back when dropped, whatever way the request ends.
pub(crate) struct Slot<'a> {
    slots: &'a Slots,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.taken.fetch_sub(1, Ordering::Release);
    }
}

impl Slots {
    fn new(max: usize) -> Slots {
        Slots {
            taken: AtomicUsize::new(0),
            max,
            shed: AtomicU64::new(0),
        }
    }
}

impl Admission {
    /// `per_token_per_second` and `per_address_per_minute` of 0 turn that
    /// limit off.
    pub(crate) fn new(
        in_flight_max: usize,
        body_reads_max: usize,
        per_token_per_second: u32,
        per_address_per_minute: u32,
    ) -> Admission {
        Admission {
            in_flight: Slots::new(in_flight_max),
            body_reads: Slots::new(body_reads_max),
            last_shed_millis: AtomicU64::new(0),
            started: std::time::Instant::now(),
            per_token: NonZeroU32::new(per_token_per_second)
                .map(|rate| RateLimiter::keyed(Quota::per_second(rate))),
            per_address: NonZeroU32::new(per_address_per_minute)
                .map(|rate| RateLimiter::keyed(Quota::per_minute(rate))),
            clock: DefaultClock::default(),
        }
    }

    /// Counts a request in flight, or sheds it (`Error::Overloaded`).
    pub(crate) fn enter(&self) -> Result<Slot<'_>, Error> {
        self.take(&self.in_flight)
    }

    /// Counts a body as arriving, or sheds its request.
    pub(crate) fn enter_body_read(&self) -> Result<Slot<'_>, Error> {
        self.take(&self.body_reads)
    }

    fn take<'a>(&'a self, slots: &'a Slots) -> Result<Slot<'a>, Error> {
        let before = slots.taken.fetch_add(1, Ordering::Acquire);
        let slot = Slot { slots };
        if before >= slots.max {
            slots.shed.fetch_add(1, Ordering::Relaxed);
            let now = self.started.elapsed().as_millis() as u64;
            self.last_shed_millis.store(now + 1, Ordering::Relaxed);
            return Err(Error::Overloaded);
        }
        Ok(slot)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.taken.load(Ordering::Relaxed)
    }

    /// Bodies arriving now.
    pub(crate) fn body_reads(&self) -> usize {
        self.body_reads.taken.load(Ordering::Relaxed)
    }

    /// Requests shed since start: at the in-flight bound, and at the
    /// bound on bodies arriving.
    pub(crate) fn shed(&self) -> (u64, u64) {
        (
            self.in_flight.shed.load(Ordering::Relaxed),
            self.body_reads.shed.load(Ordering::Relaxed),
        )
    }

    /// Whether a request was shed in the last [`SHEDDING_WINDOW_MILLIS`].
    pub(crate) fn shedding(&self) -> bool {
        let last = self.last_shed_millis.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        last != 0 && now.saturating_sub(last - 1) < SHEDDING_WINDOW_MILLIS
    }

    /// The per-token rate limit; the admin is not limited.
    pub(crate) fn check_caller(&self, caller: Caller) -> Result<(), Error> {
        let (Some(limiter), Some(key)) = (&self.per_token, caller_key(caller)) else {
            return Ok(());
        };
        limiter
            .check_key(&key)
            .map_err(|not_until| self.rate_limited(not_until.wait_time_from(self.clock.now())))
    }

    /// The per-address rate limit on unauthenticated signups.
    pub(crate) fn check_address(&self, address: IpAddr) -> Result<(), Error> {
        let Some(limiter) = &self.per_address else {
            return Ok(());
        };
        limiter
            .check_key(&address)
            .map_err(|not_until| self.rate_limited(not_until.wait_time_from(self.clock.now())))
    }

    fn rate_limited(&self, wait: std::time::Duration) -> Error {
        Error::RateLimited {
            retry_after_seconds: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    /// Drops limiter keys whose allowance has fully recovered.
    pub(crate) fn retain_recent(&self) {
        if let Some(limiter) = &self.per_token {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_address {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys the limiters hold now (for tests and metrics).
    pub(crate) fn limiter_keys(&self) -> usize {
        self.per_token.as_ref().map_or(0, |limiter| limiter.len())
            + self.per_address.as_ref().map_or(0, |limiter| limiter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_engine::ShopperId;

    #[test]
    fn sheds_past_the_in_flight_bound_and_recovers() {
        let admission = Admission::new(2, 1, 0, 0);
        assert!(!admission.shedding());
        let first = admission.enter().unwrap();
        let _second = admission.enter().unwrap();
        assert!(matches!(admission.enter(), Err(Error::Overloaded)));
        assert!(admission.shedding());
        assert_eq!(admission.shed(), (1, 0));
        drop(first);
        assert!(admission.enter().is_ok());
        assert_eq!(admission.in_flight(), 1);
    }

    #[test]
    fn bodies_arriving_have_their_own_smaller_bound() {
        let admission = Admission::new(4, 1, 0, 0);
        let reading = admission.enter_body_read().unwrap();
        assert!(matches!(
            admission.enter_body_read(),
            Err(Error::Overloaded)
        ));
        // A body arriving does not take an in-flight slot.
        let in_flight: Vec<_> = (0..4).map(|_| admission.enter().unwrap()).collect();
        assert_eq!((admission.in_flight(), admission.body_reads()), (4, 1));
        assert_eq!(admission.shed(), (0, 1));
        drop(reading);
        drop(in_flight);
        assert_eq!((admission.in_flight(), admission.body_reads()), (0, 0));
        assert!(admission.enter_body_read().is_ok());
    }

    #[test]
    fn a_token_over_its_rate_is_told_when_to_retry() {
        let admission = Admission::new(10, 10, 2, 0);
        let shopper = Caller::Shopper(ShopperId(1));
        assert!(admission.check_caller(shopper).is_ok());
        assert!(admission.check_caller(shopper).is_ok());
        match admission.check_caller(shopper) {
            Err(Error::RateLimited {
                retry_after_seconds,
            }) => assert!(retry_after_seconds >= 1),
            other => panic!("expected rate_limited, got {other:?}"),
        }
        // Another shopper and the admin are not affected.
        assert!(
            admission
                .check_caller(Caller::Shopper(ShopperId(2)))
                .is_ok()
        );
        for _ in 0..10 {
            assert!(admission.check_caller(Caller::Admin).is_ok());
        }
    }

    #[test]
    fn zero_turns_limits_off() {
        let admission = Admission::new(10, 10, 0, 0);
        for _ in 0..1000 {
            assert!(
                admission
                    .check_caller(Caller::Shopper(ShopperId(1)))
                    .is_ok()
            );
            assert!(admission.check_address([127, 0, 0, 1].into()).is_ok());
        }
        assert_eq!(admission.limiter_keys(), 0);
    }
}
