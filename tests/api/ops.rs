//! Health, readiness and metrics.

use crate::helpers::start;

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
    assert!(
        text.contains(r#"flashsale_buys_total{outcome="ordered"}"#),
        "{text}"
    );
    assert!(
        text.contains(&format!("flashsale_deal_remaining{{deal=\"{deal}\"}} 6")),
        "{text}"
    );
}
