//! What happened during a run, recorded as it happens.
//!
//! Workers call [`Recorder::record`] once per answer (or transport failure).
//! The progress bar reads the atomic [`Counters`]; everything else (latency
//! histograms, counts by status and code, the timeline, the acknowledged
//! orders) sits behind one short-held lock. With a few runtime threads the
//! lock is rarely contended, and it costs far less than the request.
//!
//! Latency is per *operation* (a tap, with its retries), from the instant
//! the plan scheduled it to its final answer, in microseconds. The
//! answered rate is per *answer*: every attempt the server answered, from
//! the first request sent to the last answer. Requests and answers are
//! also counted per target ([`TargetCounters`]), the node each went to.
//!
//! The timeline keeps one [`TimelinePoint`] per interval: the interval's
//! histogram is summarised and reset when the first sample of a later
//! interval arrives, so memory does not grow with the run's length.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::StatusCode;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use crate::error::TransportError;

/// Largest latency tracked, in microseconds (one hour); longer ones are
/// recorded as this.
pub const LATENCY_MICROS_MAX: u64 = 3_600_000_000;

/// Precision of the whole-run histogram (0.1 %).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// Precision of the per-interval histograms (1 %), which are smaller.
pub const TIMELINE_SIGNIFICANT_DIGITS: u8 = 2;

/// Most timeline points kept; later intervals are still counted in the
/// totals but not drawn.
pub const TIMELINE_POINTS_MAX: usize = 10_000;

/// Refusals a shopper can legitimately get; anything else non-2xx is an
/// error.
pub const REFUSAL_CODES: &[&str] = &[
    "purchase_limit_reached",
    "insufficient_funds",
    "not_started",
    "deal_ended",
    "not_registered",
    "hold_expired",
    "hold_settled",
    "rate_limited",
];

/// The final fate of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: bought, held, paid, released, read.
    Ok,
    /// `409 sold_out`.
    SoldOut,
    /// A refusal the contract expects (limit, funds, timing, ...).
    Refused,
    /// Server errors, unexpected 4xx, and attempts that got no answer.
    Error,
}

/// Sorts an answer into an [`Outcome`].
pub fn classify(status: StatusCode, code: Option<&str>) -> Outcome {
    if status.is_success() {
        return Outcome::Ok;
    }
    match code {
        Some("sold_out") => Outcome::SoldOut,
        Some(code) if status.is_client_error() && REFUSAL_CODES.contains(&code) => Outcome::Refused,
        _ => Outcome::Error,
    }
}

/// One attempt's result as the recorder counts it.
#[derive(Debug, Clone, Copy)]
pub enum Response<'a> {
    Http {
        status: StatusCode,
        code: Option<&'a str>,
    },
    Transport(&'a TransportError),
}

/// The operation an attempt belonged to, when that attempt was its last.
#[derive(Debug, Clone)]
pub struct Final {
    pub scheduled: Instant,
    pub outcome: Outcome,
    /// Set for a `201` that created (or replayed) an order.
    pub order: Option<Acknowledged>,
}

/// An order the server acknowledged with `201`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    pub order_id: String,
    /// Index of the shopper in the scenario's list.
    pub shopper: usize,
}

/// Counters the progress bar reads without taking the lock.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub answered: AtomicU64,
    pub ok: AtomicU64,
    pub sold_out: AtomicU64,
    pub refused: AtomicU64,
    pub errors: AtomicU64,
    pub retries: AtomicU64,
    pub transport_errors: AtomicU64,
    pub timeouts: AtomicU64,
}

impl Counters {
    /// A relaxed read of one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What went to one target, counted without the lock.
#[derive(Debug, Default)]
pub struct TargetCounters {
    /// Requests sent to it (attempts, retries included).
    pub sent: AtomicU64,
    /// Of those, answered over HTTP.
    pub answered: AtomicU64,
    /// Of those, not answered: connection failures and timeouts.
    pub no_answer: AtomicU64,
}

/// One interval of the timeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimelinePoint {
    /// End of the interval, seconds after the run's origin.
    pub t_seconds: f64,
    /// Length of the interval: the timeline's interval, or less for the
    /// last one, cut short by the end of the run.
    pub interval_seconds: f64,
    /// Answers received in the interval, per second.
    pub answers_per_second: f64,
    /// Operations that finished in the interval, and their latencies; the
    /// percentiles are absent when none did.
    pub completed: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// Everything behind the lock.
#[derive(Debug)]
pub struct Tally {
    pub latency: Histogram<u64>,
    pub by_status: BTreeMap<u16, u64>,
    pub by_code: BTreeMap<String, u64>,
    /// First `sold_out` answer, after the origin.
    pub first_sold_out: Option<Duration>,
    /// Last acknowledged order, after the origin.
    pub last_sale: Option<Duration>,
    /// Last answer of any kind, after the origin.
    pub last_answer: Option<Duration>,
    pub acknowledged: Vec<Acknowledged>,
    pub timeline: Vec<TimelinePoint>,
    interval_histogram: Histogram<u64>,
    interval_index: u64,
    interval_answers: u64,
}

/// Shared by every worker of a run.
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    interval: Duration,
    pub counters: Counters,
    /// One per target, in the run's order of `--target`.
    pub by_target: Vec<TargetCounters>,
    /// When the first request went out.
    first_sent: OnceLock<Instant>,
    tally: Mutex<Tally>,
}

fn histogram(significant_digits: u8) -> Histogram<u64> {
    // invariant: only called with 1 to 3 significant digits, and the
    // bounds are constants with low >= 1 and high >= 2 * low.
    Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, significant_digits)
        .expect("invariant: constant histogram bounds and 1-3 significant digits are valid")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Milliseconds from a histogram value in microseconds.
pub fn millis(value_micros: u64) -> f64 {
    value_micros as f64 / 1_000.0
}

impl Recorder {
    /// A recorder whose times count from `origin` (the run's T0), with one
    /// timeline point per `interval`, counting requests to each of
    /// `targets` targets apart (at least one).
    pub fn new(origin: Instant, interval: Duration, targets: usize) -> Recorder {
        Recorder {
            origin,
            interval: interval.max(Duration::from_millis(1)),
            counters: Counters::default(),
            by_target: std::iter::repeat_with(TargetCounters::default)
                .take(targets.max(1))
                .collect(),
            first_sent: OnceLock::new(),
            tally: Mutex::new(Tally {
                latency: histogram(LATENCY_SIGNIFICANT_DIGITS),
                by_status: BTreeMap::new(),
                by_code: BTreeMap::new(),
                first_sold_out: None,
                last_sale: None,
                last_answer: None,
                acknowledged: Vec::new(),
                timeline: Vec::new(),
                interval_histogram: histogram(TIMELINE_SIGNIFICANT_DIGITS),
                interval_index: 0,
                interval_answers: 0,
            }),
        }
    }

    /// The run's T0.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// When the first request went out, if one did.
    pub fn first_sent(&self) -> Option<Instant> {
        self.first_sent.get().copied()
    }

    /// The counters of target `index` (wrapping past the last one).
    fn target(&self, index: usize) -> &TargetCounters {
        &self.by_target[index % self.by_target.len()]
    }

    /// Counts a request about to go out to target `target`.
    pub fn sent(&self, target: usize) {
        self.first_sent.get_or_init(Instant::now);
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        self.target(target).sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an attempt that will be retried.
    pub fn retry(&self) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the result at `at` of one attempt sent to target `target`,
    /// and, if it was the operation's last attempt, the operation's
    /// outcome and latency.
    pub fn record(&self, at: Instant, target: usize, response: Response<'_>, last: Option<Final>) {
        let counters = &self.counters;
        let to = self.target(target);
        match response {
            Response::Http { .. } => {
                to.answered.fetch_add(1, Ordering::Relaxed);
                counters.answered.fetch_add(1, Ordering::Relaxed)
            }
            Response::Transport(error) => {
                to.no_answer.fetch_add(1, Ordering::Relaxed);
                if error.is_timeout() {
                    counters.timeouts.fetch_add(1, Ordering::Relaxed)
                } else {
                    counters.transport_errors.fetch_add(1, Ordering::Relaxed)
                }
            }
        };
        if let Some(last) = &last {
            let counter = match last.outcome {
                Outcome::Ok => &counters.ok,
                Outcome::SoldOut => &counters.sold_out,
                Outcome::Refused => &counters.refused,
                Outcome::Error => &counters.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let since_origin = at.saturating_duration_since(self.origin);
        let mut tally = self.tally.lock();
        self.advance(&mut tally, since_origin);
        if let Response::Http { status, code } = response {
            tally.interval_answers += 1;
            tally.last_answer = Some(since_origin);
            *tally.by_status.entry(status.as_u16()).or_insert(0) += 1;
            if let Some(code) = code {
                match tally.by_code.get_mut(code) {
                    Some(count) => *count += 1,
                    None => {
                        tally.by_code.insert(code.to_owned(), 1);
                    }
                }
                if code == "sold_out" && tally.first_sold_out.is_none() && at >= self.origin {
                    tally.first_sold_out = Some(since_origin);
                }
            }
        }
        if let Some(last) = last {
            let latency = micros(at.saturating_duration_since(last.scheduled));
            tally.latency.saturating_record(latency);
            tally.interval_histogram.saturating_record(latency);
            if let Some(order) = last.order {
                tally.last_sale = Some(since_origin);
                tally.acknowledged.push(order);
            }
        }
    }

    /// Closes the timeline at `end` and hands over everything recorded.
    pub fn finish(&self, end: Instant) -> Tally {
        let since_origin = end.saturating_duration_since(self.origin);
        let mut tally = self.tally.lock();
        self.advance(&mut tally, since_origin);
        // The last interval is cut short by the end of the run: its rate is
        // over the part that elapsed, and an empty stub is left out.
        let interval_start = self
            .interval
            .saturating_mul(u32::try_from(tally.interval_index).unwrap_or(u32::MAX));
        let elapsed = since_origin.saturating_sub(interval_start);
        if tally.interval_answers > 0 || !tally.interval_histogram.is_empty() {
            self.flush_partial_interval(&mut tally, elapsed.max(Duration::from_millis(1)));
        }
        Tally {
            latency: std::mem::replace(&mut tally.latency, histogram(1)),
            by_status: std::mem::take(&mut tally.by_status),
            by_code: std::mem::take(&mut tally.by_code),
            first_sold_out: tally.first_sold_out,
            last_sale: tally.last_sale,
            last_answer: tally.last_answer,
            acknowledged: std::mem::take(&mut tally.acknowledged),
            timeline: std::mem::take(&mut tally.timeline),
            interval_histogram: histogram(1),
            interval_index: tally.interval_index,
            interval_answers: 0,
        }
    }

    /// Summarises every interval that ended before `since_origin`.
    fn advance(&self, tally: &mut Tally, since_origin: Duration) {
        let index =
            u64::try_from(since_origin.as_nanos() / self.interval.as_nanos()).unwrap_or(u64::MAX);
        while tally.interval_index < index {
            self.flush_interval(tally);
            if tally.timeline.len() >= TIMELINE_POINTS_MAX {
                tally.interval_index = index;
            }
        }
    }

    fn flush_interval(&self, tally: &mut Tally) {
        self.flush_partial_interval(tally, self.interval);
    }

    /// Summarises the current interval, of which `elapsed` has passed.
    fn flush_partial_interval(&self, tally: &mut Tally, elapsed: Duration) {
        let start = tally.interval_index as f64 * self.interval.as_secs_f64();
        tally.interval_index += 1;
        if tally.timeline.len() >= TIMELINE_POINTS_MAX {
            return;
        }
        let seconds = elapsed.as_secs_f64();
        let histogram = &tally.interval_histogram;
        let completed = histogram.len();
        let quantile = |q: f64| (completed > 0).then(|| millis(histogram.value_at_quantile(q)));
        let point = TimelinePoint {
            t_seconds: start + seconds,
            interval_seconds: seconds,
            answers_per_second: tally.interval_answers as f64 / seconds,
            completed,
            p50_ms: quantile(0.50),
            p90_ms: quantile(0.90),
            p99_ms: quantile(0.99),
            p999_ms: quantile(0.999),
            max_ms: (completed > 0).then(|| millis(histogram.max())),
        };
        tally.timeline.push(point);
        tally.interval_histogram.reset();
        tally.interval_answers = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, code: Option<&str>) -> Response<'_> {
        Response::Http {
            status: StatusCode::from_u16(status).expect("valid status"),
            code,
        }
    }

    #[test]
    fn outcomes_follow_the_contract() {
        assert_eq!(classify(StatusCode::CREATED, None), Outcome::Ok);
        assert_eq!(
            classify(StatusCode::CONFLICT, Some("sold_out")),
            Outcome::SoldOut
        );
        assert_eq!(
            classify(StatusCode::CONFLICT, Some("purchase_limit_reached")),
            Outcome::Refused
        );
        assert_eq!(
            classify(StatusCode::PAYMENT_REQUIRED, Some("insufficient_funds")),
            Outcome::Refused
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, Some("overloaded")),
            Outcome::Error
        );
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, Some("unauthorized")),
            Outcome::Error
        );
        assert_eq!(classify(StatusCode::BAD_REQUEST, None), Outcome::Error);
    }

    #[tokio::test(start_paused = true)]
    async fn counts_latency_from_scheduled_time_and_builds_the_timeline() {
        let origin = Instant::now();
        let recorder = Recorder::new(origin, Duration::from_secs(1), 2);
        // Second 0: two buys scheduled at 0, answered at 100 ms and 300 ms.
        // The first goes to target 0, the second to target 1.
        for (target, (answered_ms, status, code)) in
            [(100, 201, None), (300, 409, Some("sold_out"))]
                .into_iter()
                .enumerate()
        {
            recorder.sent(target);
            recorder.record(
                origin + Duration::from_millis(answered_ms),
                target,
                http(status, code),
                Some(Final {
                    scheduled: origin,
                    outcome: classify(StatusCode::from_u16(status).expect("valid"), code),
                    order: (status == 201).then(|| Acknowledged {
                        order_id: "o1".into(),
                        shopper: 0,
                    }),
                }),
            );
        }
        // Second 2 (second 1 is empty): one 503 that will be retried.
        recorder.record(
            origin + Duration::from_millis(2_500),
            1,
            http(503, Some("overloaded")),
            None,
        );
        let tally = recorder.finish(origin + Duration::from_millis(2_600));

        assert_eq!(tally.latency.len(), 2);
        assert_eq!(
            tally.latency.max(),
            tally.latency.highest_equivalent(300_000)
        );
        assert_eq!(tally.by_status.get(&201), Some(&1));
        assert_eq!(tally.by_status.get(&409), Some(&1));
        assert_eq!(tally.by_status.get(&503), Some(&1));
        assert_eq!(tally.by_code.get("sold_out"), Some(&1));
        assert_eq!(tally.first_sold_out, Some(Duration::from_millis(300)));
        assert_eq!(tally.last_sale, Some(Duration::from_millis(100)));
        assert_eq!(tally.acknowledged.len(), 1);

        let timeline = &tally.timeline;
        assert_eq!(timeline.len(), 3);
        assert_eq!(timeline[0].t_seconds, 1.0);
        assert_eq!(timeline[0].answers_per_second, 2.0);
        assert_eq!(timeline[0].completed, 2);
        assert!((timeline[0].max_ms.expect("two samples") - 300.0).abs() < 3.0);
        assert_eq!(timeline[1].answers_per_second, 0.0);
        assert_eq!(timeline[1].p50_ms, None);
        // The last interval ran 0.6 s of its second.
        assert!((timeline[2].t_seconds - 2.6).abs() < 1e-9);
        assert!((timeline[2].interval_seconds - 0.6).abs() < 1e-9);
        assert_eq!(timeline[0].interval_seconds, 1.0);
        assert!((timeline[2].answers_per_second - 1.0 / 0.6).abs() < 1e-9);
        assert_eq!(timeline[2].completed, 0);

        let counters = &recorder.counters;
        assert_eq!(Counters::get(&counters.sent), 2);
        assert_eq!(Counters::get(&counters.answered), 3);
        assert_eq!(Counters::get(&counters.ok), 1);
        assert_eq!(Counters::get(&counters.sold_out), 1);
        assert_eq!(Counters::get(&counters.errors), 0);
        let per_target: Vec<(u64, u64)> = recorder
            .by_target
            .iter()
            .map(|to| (Counters::get(&to.sent), Counters::get(&to.answered)))
            .collect();
        assert_eq!(per_target, [(1, 1), (1, 2)]);
        assert!(recorder.first_sent().is_some());
    }

    #[test]
    fn the_timeline_is_bounded() {
        let origin = Instant::now();
        let recorder = Recorder::new(origin, Duration::from_millis(1), 1);
        let far = origin + Duration::from_millis(TIMELINE_POINTS_MAX as u64 * 3);
        recorder.record(far, 0, http(200, None), None);
        let tally = recorder.finish(far);
        assert_eq!(tally.timeline.len(), TIMELINE_POINTS_MAX);
    }
}
