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
//! Which series exist: a request counter is listed from the start for
//! each status the contract lists for its route (`gateway/openapi.yaml`,
//! [`OpenApi::statuses`]) and, on every route that calls the store, for
//! `500` (so an alert on the first `500` has a series to see it rise); a
//! buy counter for each outcome its checkout can have. Any other
//! combination (a `400` for a query on `/healthz`, a timed-out `/metrics`)
//! is listed from its first occurrence. A combination that cannot occur,
//! such as `GET /readyz` answering `201`, is never listed.
//!
//! The hot path touches handles resolved into arrays: a counter cell per
//! (endpoint, status) and a latency histogram per endpoint, so recording a
//! request is a few atomic operations and no map lookup or allocation
//! (registering a combination on its first occurrence is one lookup, once).
//!
//! Every series is listed, with its type and labels, in
//! `docs/metrics.md`; `tests/prometheus/exported.rs` holds
//! that table equal to what a server exports.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_process::Collector;

use flashsale_engine::Answer;
use flashsale_journal::FDATASYNC_SECONDS;
use flashsale_redis::REPLICA_ACK_SECONDS;

use crate::error::Error;
use crate::openapi::OpenApi;
use crate::router::Endpoint;

const REQUESTS: &str = "flashsale_http_requests_total";
const DURATION: &str = "flashsale_http_request_duration_seconds";
const BUYS: &str = "flashsale_buys_total";
const IN_FLIGHT: &str = "flashsale_requests_in_flight";
const BUILD_INFO: &str = "flashsale_build_info";

/// Latency buckets in seconds: 100 µs to 5 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// `fdatasync` buckets in seconds: 50 µs (a fast NVMe) to 1 s (a stalled disk).
const FDATASYNC_BUCKETS: [f64; 13] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Statuses the gateway answers with, and their `status` label; anything
/// else counts as `other` (the last).
const STATUSES: [(u16, &str); 19] = [
    (200, "200"),
    (201, "201"),
    (400, "400"),
    (401, "401"),
    (402, "402"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (410, "410"),
    (413, "413"),
    (422, "422"),
    (425, "425"),
    (429, "429"),
    (500, "500"),
    (501, "501"),
    (503, "503"),
    (0, "other"),
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

/// Outcomes of a buy: `ordered`, `replayed`, or the code of the refusal
/// (any other code counts as `other`, the last), each with whether it is
/// listed from the start for `[one_tap, hold_payment]`: a one-tap buy has
/// the engine's `decide_reserve` refusals and a replay, a hold payment the
/// hold's refusals (`decide_pay`), never a replay nor the deal's refusals
/// (the hold took the stock); both have what every authenticated request
/// with a body can meet. `overloaded` never: a shed request is refused
/// before its handler counts it.
const BUY_OUTCOMES: [(&str, [bool; 2]); 22] = [
    ("ordered", [true, true]),
    ("replayed", [true, false]),
    ("deal_paused", [true, false]),
    ("sold_out", [true, false]),
    ("purchase_limit_reached", [true, false]),
    ("insufficient_funds", [true, false]),
    ("not_registered", [true, false]),
    ("not_started", [true, false]),
    ("deal_ended", [true, false]),
    ("unavailable", [true, true]),
    ("idempotency_key_reused", [true, false]),
    ("not_found", [true, true]),
    ("invalid", [true, true]),
    ("rate_limited", [true, true]),
    ("overloaded", [false, false]),
    ("hold_expired", [false, true]),
    ("hold_settled", [false, true]),
    ("forbidden", [true, true]),
    ("unauthorized", [true, true]),
    ("bad_request", [true, true]),
    ("malformed_json", [true, true]),
    ("other", [false, false]),
];

/// The process's recorder and its process-metrics collector.
struct Process {
    handle: PrometheusHandle,
    collector: Collector,
}

static PROCESS: OnceLock<Process> = OnceLock::new();

/// The process's recorder, installed on first call: by [`crate::Gateway::open`]
/// before the journal or an order sink registers its series.
pub(crate) fn recorder() -> &'static PrometheusHandle {
    &process().handle
}

fn process() -> &'static Process {
    PROCESS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.to_owned()), &DURATION_BUCKETS)
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(FDATASYNC_SECONDS.to_owned()),
                    &FDATASYNC_BUCKETS,
                )
            })
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(REPLICA_ACK_SECONDS.to_owned()),
                    &DURATION_BUCKETS,
                )
            })
            // invariant: the bucket lists above are not empty.
            .expect("bucket lists are not empty");
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
        metrics::describe_gauge!(
            BUILD_INFO,
            "1, labelled with the build: version (Cargo), profile (release or debug)"
        );
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "profile" => profile)
            .set(1.0);
        let collector = Collector::default();
        collector.describe();
        collector.collect();
        Process { handle, collector }
    })
}

/// A counter cell: registered at start, or on its first occurrence.
type Cell = OnceLock<Counter>;

/// A server's handles into the process's recorder.
pub(crate) struct Telemetry {
    handle: &'static PrometheusHandle,
    /// `[endpoint][status]`.
    requests: Vec<[Cell; STATUSES.len()]>,
    durations: Vec<Histogram>,
    /// `[checkout][outcome]`.
    buys: [[Cell; BUY_OUTCOMES.len()]; CHECKOUTS.len()],
    /// The buys' recorder: this server's, not the process's.
    buys_recorder: PrometheusRecorder,
    buys_handle: PrometheusHandle,
    in_flight: Gauge,
}

impl Telemetry {
    /// Registers the request counters `openapi` lists for each route (and
    /// `500` where a route calls the store), each route's latency
    /// histogram, and the buy outcomes each checkout can have.
    pub(crate) fn new(openapi: &OpenApi) -> Telemetry {
        let handle = recorder();
        let requests = Endpoint::ALL
            .iter()
            .map(|&endpoint| {
                let cells: [Cell; STATUSES.len()] = std::array::from_fn(|_| OnceLock::new());
                let internal = (!endpoint.answers_from_process()).then_some(500);
                // A 405 is the router's answer before any endpoint is
                // known, so it never counts under a route.
                let listed = openapi
                    .statuses(endpoint)
                    .iter()
                    .filter(|&&status| status != 405);
                for &status in listed.chain(&internal) {
                    let column = status_column(status);
                    cells[column].get_or_init(|| request_counter(endpoint, column));
                }
                cells
            })
            .collect();
        let durations = Endpoint::ALL
            .iter()
            .map(|endpoint| metrics::histogram!(DURATION, "route" => endpoint.name()))
            .collect();
        let buys_recorder = PrometheusBuilder::new().build_recorder();
        let buys: [[Cell; BUY_OUTCOMES.len()]; CHECKOUTS.len()] =
            std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new()));
        metrics::with_local_recorder(&buys_recorder, || {
            metrics::describe_counter!(
                BUYS,
                "Buy requests (one-tap and hold payments) by checkout and outcome"
            );
        });
        for checkout in [Checkout::OneTap, Checkout::HoldPayment] {
            for (column, (_, listed)) in BUY_OUTCOMES.iter().enumerate() {
                if listed[checkout as usize] {
                    buys[checkout as usize][column]
                        .get_or_init(|| buy_counter(&buys_recorder, checkout, column));
                }
            }
        }
        Telemetry {
            handle,
            requests,
            durations,
            buys,
            buys_handle: buys_recorder.handle(),
            buys_recorder,
            in_flight: metrics::gauge!(IN_FLIGHT),
        }
    }

    /// Records one answered request.
    pub(crate) fn request(&self, endpoint: Endpoint, status: u16, elapsed: Duration) {
        let column = status_column(status);
        self.requests[endpoint.index()][column]
            .get_or_init(|| request_counter(endpoint, column))
            .increment(1);
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
        let column = outcome_column(outcome);
        self.buys[checkout as usize][column]
            .get_or_init(|| buy_counter(&self.buys_recorder, checkout, column))
            .increment(1);
    }

    pub(crate) fn set_in_flight(&self, in_flight: usize) {
        self.in_flight.set(in_flight as f64);
    }

    /// The process's series (its CPU, memory and files read now), then
    /// this server's buys, in Prometheus text.
    pub(crate) fn render(&self) -> String {
        process().collector.collect();
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

/// `status`'s index in [`STATUSES`] (`other` for any status not there).
fn status_column(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&(known, _)| known == status)
        .unwrap_or(STATUSES.len() - 1)
}

/// `outcome`'s index in [`BUY_OUTCOMES`] (`other` for any code not there).
fn outcome_column(outcome: &str) -> usize {
    BUY_OUTCOMES
        .iter()
        .position(|&(known, _)| known == outcome)
        .unwrap_or(BUY_OUTCOMES.len() - 1)
}

/// Registers `endpoint`'s counter of the status in `STATUSES[column]`.
fn request_counter(endpoint: Endpoint, column: usize) -> Counter {
    let status = STATUSES[column].1;
    metrics::counter!(REQUESTS, "route" => endpoint.name(), "status" => status)
}

/// Registers `checkout`'s counter of the outcome in `BUY_OUTCOMES[column]`
/// in the server's `recorder`.
fn buy_counter(recorder: &PrometheusRecorder, checkout: Checkout, column: usize) -> Counter {
    let checkout = CHECKOUTS[checkout as usize];
    let outcome = BUY_OUTCOMES[column].0;
    metrics::with_local_recorder(
        recorder,
        || metrics::counter!(BUYS, "checkout" => checkout, "outcome" => outcome),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(text: &str, series: &str) -> bool {
        text.lines().any(|line| line.starts_with(series))
    }

    #[test]
    fn lists_possible_combinations_only_until_another_occurs() {
        let openapi = OpenApi::new().expect("the embedded document parses");
        let telemetry = Telemetry::new(&openapi);
        let text = telemetry.render();
        let series = |route: &str, status: &str| {
            format!("{REQUESTS}{{route=\"{route}\",status=\"{status}\"}}")
        };
        assert!(has(&text, &series("GET /readyz", "503")));
        assert!(has(&text, &series("POST /v1/deals/{id}/orders", "409")));
        assert!(has(&text, &series("POST /v1/deals/{id}/orders", "500")));
        assert!(!has(&text, &series("GET /readyz", "201")));
        assert!(!has(&text, &series("GET /healthz", "500")));
        assert!(has(
            &text,
            "flashsale_buys_total{checkout=\"one_tap\",outcome=\"sold_out\"}"
        ));
        let replayed_payment =
            "flashsale_buys_total{checkout=\"hold_payment\",outcome=\"replayed\"}";
        assert!(!has(&text, replayed_payment));

        // Another combination is listed once it occurs, and counted.
        telemetry.request(Endpoint::Healthz, 400, Duration::from_millis(1));
        let answered: Result<((), Answer), Error> = Ok(((), Answer::Replayed));
        telemetry.buy(Checkout::HoldPayment, &answered);
        let text = telemetry.render();
        assert!(has(&text, &series("GET /healthz", "400")));
        assert!(has(&text, &format!("{replayed_payment} 1")));
        assert!(has(&text, "flashsale_build_info{"));
        assert!(has(&text, "process_resident_memory_bytes "));
    }
}
