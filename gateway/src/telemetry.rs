//! Metrics in Prometheus text.
//!
//! One recorder per process (`metrics` has one global recorder), built on
//! first use and kept in a `OnceLock`; every server of the process renders
//! from its handle, so a test process that starts many servers sees their
//! requests summed. Per-server figures that must be exact (live deals'
//! remaining stock) are rendered by the server itself and appended; the
//! buy counters live in a recorder of the server's own (never installed
//! globally), so they count this server's orders exactly.
//!
//! The hot path touches pre-registered handles only: a counter per
//! (endpoint, status) and a latency histogram per endpoint, resolved once
//! at start into arrays, so recording a request is two atomic operations
//! and no map lookup or allocation.
//!
//! Series:
//! - `flashsale_http_requests_total{route, status}`
//! - `flashsale_http_request_duration_seconds{route}` (histogram)
//! - `flashsale_buys_total{checkout, outcome}`: one per buy request, by
//!   checkout (`one_tap`: `POST /v1/deals/{id}/orders`; `hold_payment`:
//!   `POST /v1/holds/{id}/payment`) and outcome: `ordered` (an order was
//!   settled by this request), `replayed` (an idempotent retry got an
//!   earlier order again: no new order), or the refusal's contract code.
//!   Orders settled = the sum of `outcome="ordered"` over both checkouts.
//! - `flashsale_requests_in_flight`
//! - `flashsale_deal_remaining{deal}`, `flashsale_deal_sold{deal}`: live
//!   and upcoming deals of this server
//! - `flashsale_feed_subscribers`, `flashsale_feed_buffers_full_total`:
//!   clients of this server's live feed stream, and how often one was too
//!   slow to take an event at once (rendered by the server, like the deals)
//! - `flashsale_order_sink_set_aside_total`,
//!   `flashsale_order_sink_conflicts_total`: registered at 0 by an order
//!   sink when it starts (`crate::order_sink`), so they exist before the
//!   first event is set aside

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use flashsale_engine::Answer;

use crate::error::Error;
use crate::router::Endpoint;

const REQUESTS: &str = "flashsale_http_requests_total";
const DURATION: &str = "flashsale_http_request_duration_seconds";
const BUYS: &str = "flashsale_buys_total";
const IN_FLIGHT: &str = "flashsale_requests_in_flight";

/// Latency buckets in seconds: 100 µs to 5 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Statuses the gateway answers with; anything else counts as `other`.
const STATUSES: [u16; 19] = [
    200, 201, 400, 401, 402, 403, 404, 405, 408, 409, 410, 413, 422, 425, 429, 500, 501, 503, 0,
];

/// The two ways to an order, as the `checkout` label spells them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Checkout {
    /// `POST /v1/deals/{id}/orders`.
    OneTap = 0,
    /// `POST /v1/holds/{id}/payment`.
    HoldPayment = 1,
}

/// `checkout` label values, indexed by [`Checkout`].
const CHECKOUTS: [&str; 2] = ["one_tap", "hold_payment"];

/// Outcomes of a buy: `ordered`, `replayed`, or the code of the refusal.
const BUY_OUTCOMES: [&str; 22] = [
    "ordered",
    "replayed",
    "deal_paused",
    "sold_out",
    "purchase_limit_reached",
    "insufficient_funds",
    "not_registered",
    "not_started",
    "deal_ended",
    "unavailable",
    "idempotency_key_reused",
    "not_found",
    "invalid",
    "rate_limited",
    "overloaded",
    "hold_expired",
    "hold_settled",
    "forbidden",
    "unauthorized",
    "bad_request",
    "malformed_json",
    "other",
];

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first call: by the first server's
/// [`Telemetry`], or before it by an order sink registering its counters.
pub(crate) fn recorder() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.to_owned()), &DURATION_BUCKETS)
            // invariant: the bucket list above is not empty.
            .expect("latency buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "another metrics recorder is installed; /metrics shows only per-server series"
            );
        }
        metrics::describe_counter!(REQUESTS, "HTTP requests by route and status");
        metrics::describe_histogram!(
            DURATION,
            metrics::Unit::Seconds,
            "Time from a request's headers to its response, by route"
        );
        metrics::describe_gauge!(IN_FLIGHT, "Requests being served now");
        handle
    })
}

/// A server's handles into the process's recorder.
pub(crate) struct Telemetry {
    handle: &'static PrometheusHandle,
    /// `[endpoint][status]`.
    requests: Vec<[Counter; STATUSES.len()]>,
    durations: Vec<Histogram>,
    /// `[checkout][outcome]`.
    buys: [[Counter; BUY_OUTCOMES.len()]; CHECKOUTS.len()],
    /// Renders `buys`: this server's recorder, not the process's.
    buys_handle: PrometheusHandle,
    in_flight: Gauge,
}

impl Telemetry {
    pub(crate) fn new() -> Telemetry {
        let handle = recorder();
        let requests = Endpoint::ALL
            .iter()
            .map(|endpoint| {
                STATUSES.map(|status| {
                    let status = if status == 0 {
                        "other".to_owned()
                    } else {
                        status.to_string()
                    };
                    metrics::counter!(REQUESTS, "route" => endpoint.name(), "status" => status)
                })
            })
            .collect();
        let durations = Endpoint::ALL
            .iter()
            .map(|endpoint| metrics::histogram!(DURATION, "route" => endpoint.name()))
            .collect();
        let buys_recorder = PrometheusBuilder::new().build_recorder();
        let buys = metrics::with_local_recorder(&buys_recorder, || {
            metrics::describe_counter!(
                BUYS,
                "Buy requests (one-tap and hold payments) by checkout and outcome"
            );
            CHECKOUTS.map(|checkout| {
                BUY_OUTCOMES.map(
                    |outcome| metrics::counter!(BUYS, "checkout" => checkout, "outcome" => outcome),
                )
            })
        });
        Telemetry {
            handle,
            requests,
            durations,
            buys,
            buys_handle: buys_recorder.handle(),
            in_flight: metrics::gauge!(IN_FLIGHT),
        }
    }

    /// Records one answered request.
    pub(crate) fn request(&self, endpoint: Endpoint, status: u16, elapsed: Duration) {
        let column = STATUSES
            .iter()
            .position(|&known| known == status)
            .unwrap_or(STATUSES.len() - 1);
        self.requests[endpoint.index()][column].increment(1);
        self.durations[endpoint.index()].record(elapsed.as_secs_f64());
    }

    /// Records one buy request: an order it settled (`ordered`), one it
    /// replayed (`replayed`), or its refusal by contract code.
    pub(crate) fn buy<T>(&self, checkout: Checkout, result: &Result<(T, Answer), Error>) {
        let outcome = match result {
            Ok((_, Answer::Settled)) => "ordered",
            Ok((_, Answer::Replayed)) => "replayed",
            Err(error) => error.http().code,
        };
        let index = BUY_OUTCOMES
            .iter()
            .position(|&known| known == outcome)
            .unwrap_or(BUY_OUTCOMES.len() - 1);
        self.buys[checkout as usize][index].increment(1);
    }

    pub(crate) fn set_in_flight(&self, in_flight: usize) {
        self.in_flight.set(in_flight as f64);
    }

    /// The process's series, then this server's buys, in Prometheus text.
    pub(crate) fn render(&self) -> String {
        let mut text = self.handle.render();
        text.push_str(&self.buys_handle.render());
        text
    }

    /// Drains histogram buffers; run periodically.
    pub(crate) fn upkeep(&self) {
        self.handle.run_upkeep();
        self.buys_handle.run_upkeep();
    }
}
