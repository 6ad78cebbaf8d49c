//! Admission control: rate limits, shedding, the header timeout and the
//! connection bound, each answered at once.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestServer, start_with};

/// Writes a request's head and part of its body, so its body is arriving
/// until the rest is written.
pub async fn half_sent_buy(t: &TestServer, token: &str, deal: &str, key: &str) -> TcpStream {
    let body = r#"{"quantity": 1}"#;
    let mut stream = TcpStream::connect(t.addr()).await.unwrap();
    let head = format!(
        "POST /v1/deals/{deal}/orders HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         idempotency-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        body.len(),
        &body[..5]
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Writes the rest of [`half_sent_buy`]'s body and reads the status line.
async fn finish_buy(mut stream: TcpStream) -> String {
    stream.write_all(&br#"{"quantity": 1}"#[5..]).await.unwrap();
    read_status(&mut stream).await
}

async fn read_status(stream: &mut TcpStream) -> String {
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("a readable socket");
    String::from_utf8_lossy(&answer[..read])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_rate_is_told_to_retry_after() {
    let t = start_with(|config| config.rate_limit_shopper = 3).await;
    let shopper = t.shopper("Li", "0").await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let answer = t.get("/v1/wallet", Some(&shopper.token)).await;
        if answer.status == 429 {
            answer.refused(429, "rate_limited");
            let retry: u64 = answer.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1);
        }
        statuses.push(answer.status);
    }
    assert_eq!(&statuses[..3], [200, 200, 200]);
    assert!(statuses.contains(&429), "{statuses:?}");
    // Another shopper has its own allowance.
    let other = t.shopper("Han", "0").await;
    t.get("/v1/wallet", Some(&other.token)).await.ok(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signups_are_limited_per_address() {
    let t = start_with(|config| config.rate_limit_address = 2).await;
    let name = json!({ "name": "bot" });
    t.post("/v1/shoppers", None, &name).await.ok(201);
    t.post("/v1/shoppers", None, &name).await.ok(201);
    let limited = t.post("/v1/shoppers", None, &name).await;
    limited.refused(429, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
}

/// This server's `name` series from `/metrics` (the first sample).
pub async fn metric(t: &TestServer, name: &str) -> f64 {
    let text = t.get("/metrics", None).await.text;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_holds_a_body_read_slot_not_an_in_flight_one_and_past_its_bound_requests_are_shed()
 {
    let t = start_with(|config| {
        config.in_flight_max = 1;
        config.body_reads_max = 1;
    })
    .await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "1.00", 10, 5).await;
    let shopper = t.shopper("Li", "100").await;
    let slow = half_sent_buy(&t, &shopper.token, &deal, "slow").await;
    // Wait (bounded) until the slow buy's body is being read.
    let mut reading = false;
    for _ in 0..500 {
        if metric(&t, "flashsale_body_reads").await == 1.0 {
            reading = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reading, "the slow buy never started reading its body");
    // With the one in-flight slot free, requests without a body are served.
    for _ in 0..3 {
        t.get(&format!("/v1/deals/{deal}"), None).await.ok(200);
    }
    // A second body to read is past its bound: shed at once, not queued.
    let shed = t
        .post("/v1/shoppers", None, &json!({ "name": "Han" }))
        .await;
    shed.refused(503, "overloaded");
    assert!(shed.headers.contains_key("retry-after"));
    // Liveness stays 200; readiness and metrics say the server is shedding.
    t.get("/healthz", None).await.ok(200);
    let ready = t.get("/readyz", None).await;
    ready.refused(503, "unavailable");
    assert!(ready.text.contains("shedding"), "{}", ready.text);
    assert_eq!(
        metric(
            &t,
            "flashsale_requests_shed_total{bound=\"body_reads_max\"}"
        )
        .await,
        1.0
    );
    assert_eq!(metric(&t, "flashsale_shedding").await, 1.0);
    assert_eq!(finish_buy(slow).await, "HTTP/1.1 201 Created");
    assert_eq!(metric(&t, "flashsale_body_reads").await, 0.0);
    t.post("/v1/shoppers", None, &json!({ "name": "Han" }))
        .await
        .ok(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_with_its_headers_is_disconnected() {
    let t = start_with(|config| config.header_read_timeout = Duration::from_millis(200)).await;
    let mut stream = TcpStream::connect(t.addr()).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow connection was not closed");
    t.get("/healthz", None).await.ok(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_bound_clients_wait_for_a_free_slot() {
    let t = start_with(|config| config.max_connections = 1).await;
    let mut first = TcpStream::connect(t.addr()).await.unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_status(&mut first).await, "HTTP/1.1 200 OK");
    // The first connection stays open (keep-alive): the second waits.
    let mut second = TcpStream::connect(t.addr()).await.unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 64];
    let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buffer)).await;
    assert!(
        waited.is_err(),
        "the second connection was served past the bound"
    );
    drop(first);
    assert_eq!(read_status(&mut second).await, "HTTP/1.1 200 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed() {
    let t = start_with(|config| config.header_read_timeout = Duration::from_millis(200)).await;
    let mut stream = TcpStream::connect(t.addr()).await.unwrap();
    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an idle connection was kept: {closed:?}"
    );
}
