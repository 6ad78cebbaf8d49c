//! Health, readiness and metrics.

use crate::helpers::start;
use crate::holds::pay;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() {
    let t = start().await;
    assert_eq!(t.get("/healthz", None).await.ok(200)["status"], "ok");
    assert_eq!(t.get("/readyz", None).await.ok(200)["status"], "ready");
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "1.00", 7, 1).await;
    let shopper = t.shopper("Li", "10").await;
    t.buy(&shopper, &deal, 1, "k").await.ok(201);
    let metrics = t.get("/metrics", None).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text;
    assert!(
        text.contains(
            r#"flashsale_http_requests_total{route="POST /v1/deals/{id}/orders",status="201"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains("flashsale_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert_eq!(buys(&text, "one_tap", "ordered"), 1, "{text}");
    assert!(
        text.contains(&format!("flashsale_deal_remaining{{deal=\"{deal}\"}} 6")),
        "{text}"
    );
}

/// `/metrics` lists what can occur and nothing else: `/readyz` answers
/// 200 or 503, never 201; and it has the build, the process and the
/// journal's `fdatasync`s (the buy above synced at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_list_possible_series_the_build_the_process_and_fdatasync() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "1.00", 7, 1).await;
    let shopper = t.shopper("Li", "10").await;
    t.buy(&shopper, &deal, 1, "k").await.ok(201);
    let text = t.get("/metrics", None).await.text;
    let readyz = |status: &str| format!(r#"{{route="GET /readyz",status="{status}"}}"#);
    assert!(text.contains(&readyz("503")), "{text}");
    assert!(!text.contains(&readyz("201")), "{text}");
    assert!(
        !text.contains(r#"route="GET /healthz",status="500""#),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"flashsale_build_info{{version="{}""#,
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert!(sample("process_resident_memory_bytes") > 0.0);
    assert!(sample("process_open_fds") > 0.0);
    assert!(sample("flashsale_journal_fdatasync_seconds_count") >= 1.0);
}

/// The value of `flashsale_buys_total{checkout, outcome}` in `/metrics`.
#[track_caller]
fn buys(metrics: &str, checkout: &str, outcome: &str) -> u64 {
    let series = format!(r#"flashsale_buys_total{{checkout="{checkout}",outcome="{outcome}"}} "#);
    let line = metrics
        .lines()
        .find(|line| line.starts_with(&series))
        .unwrap_or_else(|| panic!("no {series} in {metrics}"));
    line[series.len()..].parse().expect("a count")
}

/// Regression: replays were counted as new orders and hold payments not
/// at all. The buy counters count orders settled, replays and refusals,
/// per checkout, for this server alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buy_metrics_count_orders_not_requests() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "1.00", 3, 3).await;
    let shopper = t.shopper("Li", "10").await;
    t.buy(&shopper, &deal, 1, "tap").await.ok(201);
    t.buy(&shopper, &deal, 1, "tap").await.ok(201);
    t.buy(&shopper, &deal, 1, "tap").await.ok(201);
    let hold = t.hold(&shopper, &deal, 2, "two").await.ok(201);
    let hold = hold["id"].as_str().unwrap();
    pay(&t, &shopper.token, hold).await.ok(201);
    pay(&t, &shopper.token, hold)
        .await
        .refused(409, "hold_settled");
    let late = t.shopper("Han", "10").await;
    t.buy(&late, &deal, 1, "tap").await.refused(409, "sold_out");

    let text = t.get("/metrics", None).await.text;
    for (checkout, outcome, count) in [
        ("one_tap", "ordered", 1),
        ("one_tap", "replayed", 2),
        ("one_tap", "sold_out", 1),
        ("hold_payment", "ordered", 1),
        ("hold_payment", "hold_settled", 1),
    ] {
        assert_eq!(
            buys(&text, checkout, outcome),
            count,
            "{checkout} {outcome}"
        );
    }
    // A payment is never a replay: no such series.
    assert!(
        !text.contains(r#"checkout="hold_payment",outcome="replayed""#),
        "{text}"
    );
    let orders = t
        .get(&format!("/v1/orders?deal_id={deal}"), Some(&merchant.token))
        .await
        .ok(200);
    let ordered = buys(&text, "one_tap", "ordered") + buys(&text, "hold_payment", "ordered");
    assert_eq!(orders["orders"].as_array().unwrap().len() as u64, ordered);
}
