use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// Regression: the sink's counters appeared in `/metrics` only after
/// their first increment, so a dashboard or an alert on them had no
/// series until something had already gone wrong. A `flashsale serve` of
/// its own (no other test's set-aside events in its process) lists both at
/// 0 with their help before any request, then counts a refused deal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_lists_its_counters_at_zero_from_the_start_then_counts() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    with_content_rule(
        &db,
        "ALTER TABLE deals ADD CONSTRAINT refuse_poison CHECK (title <> 'Poison')",
    )
    .await;
    let server = flashsale_loadtest::SpawnedServer::start(
        Path::new(env!("CARGO_BIN_EXE_flashsale")),
        flashsale_loadtest::Durability::Sync,
        Some(&db.url),
        None,
    )
    .await
    .expect("flashsale serve starts");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let counters = [
        "flashsale_order_sink_set_aside_total",
        "flashsale_order_sink_conflicts_total",
        "flashsale_order_sink_foreign_positions_total",
    ];
    let metrics = scrape_metrics(&client, &server.url).await;
    for name in counters {
        assert_eq!(sample(&metrics, name), Some(0.0), "{name}:\n{metrics}");
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} has no help:\n{metrics}"
        );
    }

    let post = async |path: &str, token: &str, body: serde_json::Value, key: &str| {
        post_ok(&client, &format!("{}{path}", server.url), token, body, key).await
    };
    let merchant = post(
        "/v1/merchants",
        &server.admin_token,
        serde_json::json!({ "name": "m" }),
        "a",
    )
    .await;
    post(
        "/v1/deals",
        merchant["token"].as_str().unwrap(),
        serde_json::json!({
            "title": "Poison", "price": "5.00", "stock": 10,
            "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2100-01-01T00:00:00Z",
        }),
        "b",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = scrape_metrics(&client, &server.url).await;
        if sample(&metrics, counters[0]) == Some(1.0) {
            assert_eq!(sample(&metrics, counters[1]), Some(0.0), "{metrics}");
            break;
        }
        assert!(Instant::now() < deadline, "never set aside:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
    db.drop_db().await;
}
