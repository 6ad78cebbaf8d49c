//! A request body that stops arriving (or drips) cannot hold the server:
//! it is answered `408 request_timeout` and closed within its bound, its
//! body-read slot comes back, and other requests are served meanwhile.
//! Raw TCP, so the body can stop half-way.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admission::metric;
use crate::helpers::{TestServer, start_with};

/// A body's read timeout short enough for a test, long enough for a loaded
/// machine to send a head.
const BODY_READ_TIMEOUT: Duration = Duration::from_millis(400);
/// Bound on any one wait for an answer.
const ANSWER_WAIT: Duration = Duration::from_secs(15);

async fn server() -> TestServer {
    start_with(|config| config.body_read_timeout = BODY_READ_TIMEOUT).await
}

/// Sends `head` and `body_start` of a signup, then nothing more.
async fn stalled_signup(t: &TestServer, framing: &str, body_start: &str) -> TcpStream {
    let mut stream = TcpStream::connect(t.addr()).await.unwrap();
    let head = format!(
        "POST /v1/shoppers HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{framing}\r\n\r\n{body_start}"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Everything the server sends until it closes the connection (bounded).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(ANSWER_WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes within its bound")
        .expect("a readable socket");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn assert_stalled_body_is_timed_out(t: &TestServer, mut stalled: TcpStream) {
    let started = Instant::now();
    // Meanwhile the server serves others, bodies included.
    t.get("/healthz", None).await.ok(200);
    t.post("/v1/shoppers", None, &json!({ "name": "Han" }))
        .await
        .ok(201);
    let answer = read_until_closed(&mut stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(started.elapsed() < ANSWER_WAIT);
    // The slot came back and nothing was created by the stalled request.
    assert_eq!(metric(t, "flashsale_body_reads").await, 0.0);
    t.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_answered_408_and_closed() {
    let t = server().await;
    let stalled = stalled_signup(&t, "content-length: 100", r#"{"name":"#).await;
    assert_stalled_body_is_timed_out(&t, stalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_that_stops_arriving_is_answered_408_and_closed() {
    let t = server().await;
    let stalled = stalled_signup(&t, "transfer-encoding: chunked", "64\r\n{\"name\":").await;
    assert_stalled_body_is_timed_out(&t, stalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_dripping_slower_than_the_minimum_rate_runs_out_of_time() {
    let t = start_with(|config| {
        config.body_read_timeout = BODY_READ_TIMEOUT;
        config.body_rate_min_bytes_per_second = 1_000;
    })
    .await;
    // 200 bytes at 10 bytes a second would take 20 s; the body may take
    // 0.4 s plus 1 ms per byte received.
    let body = format!(r#"{{"name": "{}"}}"#, "x".repeat(186));
    let mut stream = stalled_signup(&t, &format!("content-length: {}", body.len()), "").await;
    let started = Instant::now();
    let mut sent = 0;
    for byte in body.as_bytes() {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        let mut peek = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(100), stream.peek(&mut peek))
            .await
            .is_ok()
        {
            break; // answered
        }
    }
    assert!(sent < body.len(), "the whole drip was accepted");
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < ANSWER_WAIT);
    assert_eq!(metric(&t, "flashsale_body_reads").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_at_the_minimum_rate_is_read() {
    let t = start_with(|config| {
        config.body_read_timeout = Duration::from_millis(500);
        config.body_rate_min_bytes_per_second = 20;
    })
    .await;
    // 40 bytes in four pieces 250 ms apart: 750 ms in all, longer than the
    // read timeout alone, but each piece earns 500 ms (50 ms a byte).
    let body = r#"{"name": "a patient client with 1 body"}"#;
    let mut stream = stalled_signup(&t, &format!("content-length: {}", body.len()), "").await;
    let started = Instant::now();
    for (index, piece) in body.as_bytes().chunks(body.len().div_ceil(4)).enumerate() {
        if index > 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        stream.write_all(piece).await.unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(ANSWER_WAIT, stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_as_a_whole_is_bounded_too() {
    let t = start_with(|config| {
        config.body_read_timeout = Duration::from_secs(60);
        config.request_timeout = Duration::from_millis(400);
    })
    .await;
    let mut stalled = stalled_signup(&t, "content-length: 100", r#"{"name":"#).await;
    let started = Instant::now();
    let answer = read_until_closed(&mut stalled).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("overloaded"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(metric(&t, "flashsale_body_reads").await, 0.0);
}
