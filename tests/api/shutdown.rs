//! Graceful shutdown: requests in flight are answered, then the journal is
//! closed and what was acknowledged is there after a restart.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{start, start_on, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_shutdown_are_answered_and_kept() {
    let mut t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "5.00", 10, 1).await;
    let shopper = t.shopper("Li", "100").await;

    // A buy whose head is in and whose body is not: in flight.
    let body = br#"{"quantity": 1}"#;
    let mut stream = TcpStream::connect(t.addr()).await.unwrap();
    let head = format!(
        "POST /v1/deals/{deal}/orders HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         idempotency-key: at-shutdown\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        shopper.token,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..3]).await.unwrap();
    // Let the server read the head (the request is then in flight).
    tokio::time::sleep(Duration::from_millis(100)).await;

    t.begin_shutdown();
    // Shutdown has begun once new connections are refused.
    let addr = t.addr();
    let mut refused = false;
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener still accepts after shutdown began");

    stream.write_all(&body[3..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answered before the deadline")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let order_id = answer
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();

    // Stops cleanly; a restart on the same data dir has the order.
    let (stopped, dir) = t.shutdown().await;
    stopped.expect("a clean stop");
    let config = test_config(&dir);
    let again = start_on(dir, config, |_| {}).await;
    let order = again
        .get(&format!("/v1/orders/{order_id}"), Some(&shopper.token))
        .await
        .ok(200);
    assert_eq!(order["shopper_id"], serde_json::json!(shopper.id));
    assert_eq!(again.get_deal(&deal).await["sold"], 1);
    again.check_invariants();
}
