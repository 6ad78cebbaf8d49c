//! Operations: `/healthz`, `/readyz` and `/metrics`.

use flashsale_engine::DealStatus;
use hyper::StatusCode;

use crate::app::{App, HttpResponse};
use crate::error::Error;
use crate::wire::{json, text};
use flashsale_redis::DurabilityMode;

use super::METRICS_DEALS_MAX;

pub(crate) fn healthz() -> HttpResponse {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// Ready when the journal is, the server is not shedding and the
/// configured stores are reachable and agree; `order_sink_set_aside` names
/// events the sink had to set aside, if any.
/// In multi-node mode `redis_durability` says what a `201` is worth now:
/// `{mode: always|everysec|volatile, found, waitaof}` (README, "What a
/// `201` promises"). With `--redis-replica-acks`, `redis_replicas` is
/// `{required, short: [{primary, online}]}`, and the status is `degraded`
/// (still `200`) while some primaries are short: changes on their slots
/// answer `503`, the others' sell on, so a load balancer keeps the node
/// (`docs/multi-node.md`). With every primary short the node is not ready.
/// With `--idp-jwks`, `identity_provider` says how many keys were last
/// read and when, and why the newest read failed if it did (the keys last
/// read stay in use).
pub(crate) fn readyz(app: &App) -> HttpResponse {
    match app.not_ready() {
        None => {
            let mut body =
                serde_json::json!({ "status": "ready", "order_sink_set_aside": app.set_aside() });
            if let Some(idp) = &app.idp {
                body["identity_provider"] = idp.status();
            }
            if let Some(durability) = app.store.redis_durability() {
                body["redis_durability"] = serde_json::json!({
                    "mode": durability.mode.name(),
                    "found": durability.found,
                    "waitaof": durability.waitaof,
                });
            }
            if let Some(replicas) = app.store.redis_replicas() {
                let short: Vec<serde_json::Value> = replicas
                    .short()
                    .map(|primary| {
                        serde_json::json!({ "primary": primary.primary, "online": primary.online })
                    })
                    .collect();
                if !short.is_empty() {
                    body["status"] = serde_json::json!("degraded");
                }
                body["redis_replicas"] =
                    serde_json::json!({ "required": replicas.required, "short": short });
            }
            json(StatusCode::OK, &body)
        }
        Some(reason) => Error::NotReady(reason).into_response(),
    }
}

/// `GET /metrics`: the process's series, then this server's deals. The
/// order sink's lag gauges are brought up to date first, so a scrape sees
/// the lag of now even while the sink waits to retry Postgres.
pub(crate) fn metrics(app: &App) -> HttpResponse {
    use std::fmt::Write as _;
    app.telemetry.set_in_flight(app.admission.in_flight());
    if let Ok(sink) = app.order_sink.lock()
        && let Some(sink) = sink.as_ref()
    {
        sink.lag();
    }
    let mut body = app.telemetry.render();
    let deals = app.store.feed_source().deals(METRICS_DEALS_MAX);
    body.push_str(
        "# HELP flashsale_deal_remaining Units of a live or upcoming deal left to sell\n",
    );
    body.push_str("# TYPE flashsale_deal_remaining gauge\n");
    for deal in deals.iter().filter(|deal| deal.status != DealStatus::Ended) {
        let _ = writeln!(
            body,
            "flashsale_deal_remaining{{deal=\"{}\"}} {}",
            deal.id, deal.counts.remaining
        );
    }
    body.push_str("# HELP flashsale_deal_sold Units of a live or upcoming deal sold\n");
    body.push_str("# TYPE flashsale_deal_sold gauge\n");
    for deal in deals.iter().filter(|deal| deal.status != DealStatus::Ended) {
        let _ = writeln!(
            body,
            "flashsale_deal_sold{{deal=\"{}\"}} {}",
            deal.id, deal.counts.sold
        );
    }
    body.push_str("# HELP flashsale_feed_subscribers Clients of the feed's live stream now\n");
    body.push_str("# TYPE flashsale_feed_subscribers gauge\n");
    let _ = writeln!(
        body,
        "flashsale_feed_subscribers {}",
        app.feed.subscribers()
    );
    body.push_str(
        "# HELP flashsale_feed_buffers_full_total Times a feed subscriber was too slow to take an event at once\n",
    );
    body.push_str("# TYPE flashsale_feed_buffers_full_total counter\n");
    let _ = writeln!(
        body,
        "flashsale_feed_buffers_full_total {}",
        app.feed.buffers_full()
    );
    let (shed_in_flight, shed_body_reads) = app.admission.shed();
    body.push_str(
        "# HELP flashsale_requests_shed_total Requests answered 503 overloaded, by the bound they met\n",
    );
    body.push_str("# TYPE flashsale_requests_shed_total counter\n");
    let _ = writeln!(
        body,
        "flashsale_requests_shed_total{{bound=\"in_flight_max\"}} {shed_in_flight}\n\
         flashsale_requests_shed_total{{bound=\"body_reads_max\"}} {shed_body_reads}"
    );
    body.push_str("# HELP flashsale_body_reads Request bodies arriving now\n");
    body.push_str("# TYPE flashsale_body_reads gauge\n");
    let _ = writeln!(body, "flashsale_body_reads {}", app.admission.body_reads());
    body.push_str(
        "# HELP flashsale_shedding 1 while requests were shed in the last second, else 0\n",
    );
    body.push_str("# TYPE flashsale_shedding gauge\n");
    let _ = writeln!(
        body,
        "flashsale_shedding {}",
        u8::from(app.admission.shedding())
    );
    body.push_str("# HELP flashsale_rate_limiter_keys Keys held by this server's rate limiters\n");
    body.push_str("# TYPE flashsale_rate_limiter_keys gauge\n");
    let _ = writeln!(
        body,
        "flashsale_rate_limiter_keys {}",
        app.admission.limiter_keys()
    );
    if let Some(durability) = app.store.redis_durability() {
        body.push_str(
            "# HELP flashsale_redis_durability 1 for what Redis' persistence promises for an acknowledged change now (always, everysec, volatile), 0 for the others\n",
        );
        body.push_str("# TYPE flashsale_redis_durability gauge\n");
        for mode in DurabilityMode::ALL {
            let _ = writeln!(
                body,
                "flashsale_redis_durability{{mode=\"{}\"}} {}",
                mode.name(),
                u8::from(mode == durability.mode)
            );
        }
    }
    if let Some(calls) = app.store.redis_reserve_calls() {
        body.push_str(
            "# HELP flashsale_redis_reserve_calls_total Calls of the reserve step this node sent to Redis (the buys and holds of one deal on one shard that arrived together)\n",
        );
        body.push_str("# TYPE flashsale_redis_reserve_calls_total counter\n");
        let _ = writeln!(body, "flashsale_redis_reserve_calls_total {}", calls.calls);
        body.push_str(
            "# HELP flashsale_redis_reserve_requests_total Buys and holds the reserve calls held\n",
        );
        body.push_str("# TYPE flashsale_redis_reserve_requests_total counter\n");
        let _ = writeln!(
            body,
            "flashsale_redis_reserve_requests_total {}",
            calls.requests
        );
    }
    if let Some((read, taken)) = app.store.redis_sums_read() {
        body.push_str(
            "# HELP flashsale_redis_sums_total Times this node read the deals' shared numbers from the shards for every node (source=read, holding the turn) or took the ones another node read (source=taken)\n",
        );
        body.push_str("# TYPE flashsale_redis_sums_total counter\n");
        let _ = writeln!(body, "flashsale_redis_sums_total{{source=\"read\"}} {read}");
        let _ = writeln!(
            body,
            "flashsale_redis_sums_total{{source=\"taken\"}} {taken}"
        );
    }
    if let Some(replicas) = app.store.redis_replicas() {
        body.push_str(
            "# HELP flashsale_redis_replicas_online Replicas online of each Redis primary as last read (every second), with --redis-replica-acks\n",
        );
        body.push_str("# TYPE flashsale_redis_replicas_online gauge\n");
        for primary in &replicas.primaries {
            let _ = writeln!(
                body,
                "flashsale_redis_replicas_online{{primary=\"{}\"}} {}",
                label_value(&primary.primary),
                primary.online
            );
        }
    }
    text(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        body,
    )
}

/// `value` escaped as a Prometheus label value (`\\`, `\"` and `\n`).
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
