//! The feed's live stream, `GET /v1/feed/stream`: coalescing under a
//! burst, a stalled subscriber, a thousand subscribers, reconnecting, the
//! subscriber bound and shutdown.
//!
//! [`Sse`] is a small client over a raw socket (HTTP/1.1, chunked body,
//! Server-Sent Events), so a test can also open a subscriber with a tiny
//! receive buffer that it never reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use crate::helpers::{Account, TestServer, start, start_with};

/// The stream's path.
const STREAM: &str = "/v1/feed/stream";
/// How long any one expected event may take to arrive.
const EVENT_WAIT: Duration = Duration::from_secs(10);
/// The stream samples every 200 ms: at most five events per deal per second.
const EVENTS_PER_DEAL_PER_SECOND_MAX: f64 = 5.0;

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Event {
    event: String,
    id: Option<String>,
    data: Value,
}

/// A stream subscriber over a raw socket.
struct Sse {
    stream: TcpStream,
    /// Bytes read and not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked SSE text not yet parsed into events.
    text: Vec<u8>,
    ended: bool,
}

/// The head of an answer that is not a stream.
#[derive(Debug)]
struct Refused(String);

impl Sse {
    async fn connect(addr: std::net::SocketAddr, last_event_id: Option<&str>) -> Sse {
        Sse::open(addr, STREAM, last_event_id, None)
            .await
            .unwrap_or_else(|Refused(head)| panic!("the stream was refused: {head}"))
    }

    /// Subscribes at `path` (the stream's, with a query if any);
    /// `recv_buffer_bytes` shrinks the socket's receive buffer.
    async fn open(
        addr: std::net::SocketAddr,
        path: &str,
        last_event_id: Option<&str>,
        recv_buffer_bytes: Option<u32>,
    ) -> Result<Sse, Refused> {
        let socket = TcpSocket::new_v4().expect("a socket");
        if let Some(bytes) = recv_buffer_bytes {
            socket
                .set_recv_buffer_size(bytes)
                .expect("a receive buffer");
        }
        let mut stream = socket.connect(addr).await.expect("the server accepts");
        let last = last_event_id.map_or(String::new(), |id| format!("last-event-id: {id}\r\n"));
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n{last}\r\n");
        stream.write_all(request.as_bytes()).await.expect("sent");
        let mut raw = Vec::new();
        let head_end = loop {
            if let Some(end) = find(&raw, b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(EVENT_WAIT, stream.read(&mut chunk))
                .await
                .expect("the head arrives")
                .expect("read");
            assert!(read > 0, "the server closed before answering");
            raw.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        raw.drain(..head_end + 4);
        if !head.starts_with("HTTP/1.1 200") {
            return Err(Refused(head));
        }
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("content-type: text/event-stream"), "{head}");
        assert!(lower.contains("cache-control: no-cache"), "{head}");
        assert!(lower.contains("transfer-encoding: chunked"), "{head}");
        Ok(Sse {
            stream,
            raw,
            text: Vec::new(),
            ended: false,
        })
    }

    /// The next event (comments and `retry:` skipped); `None` when the
    /// stream ends. Fails after `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // The head's read may have brought chunks along.
            self.dechunk();
            while let Some(end) = find(&self.text, b"\n\n") {
                let block: Vec<u8> = self.text.drain(..end + 2).collect();
                if let Some(event) = parse_event(&block) {
                    return Some(event);
                }
            }
            if self.ended {
                return None;
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no event within {wait:?}"))
                .expect("read");
            if read == 0 {
                self.ended = true;
                assert!(self.raw.is_empty(), "the stream ended mid-chunk");
                continue;
            }
            self.raw.extend_from_slice(&chunk[..read]);
        }
    }

    /// Waits for a `deal` event of `deal` that satisfies `accept`.
    async fn until(&mut self, deal: &str, accept: impl Fn(&Value) -> bool) -> Event {
        let deadline = Instant::now() + EVENT_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.next(left).await.expect("the stream is open");
            if event.event == "deal" && event.data["id"] == deal && accept(&event.data) {
                return event;
            }
        }
    }

    /// Moves whole chunks from `raw` to `text`; the zero chunk ends it.
    fn dechunk(&mut self) {
        loop {
            let Some(line_end) = find(&self.raw, b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.raw[..line_end])
                .ok()
                .and_then(|size| usize::from_str_radix(size.trim(), 16).ok())
                .expect("a chunk size");
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            self.text.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// One event block; `None` for a comment or a `retry:` alone.
fn parse_event(block: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(block).expect("SSE is UTF-8");
    let mut event = None;
    let mut id = None;
    let mut data = None;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("event: ") {
            event = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("id: ") {
            id = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("data: ") {
            assert!(data.is_none(), "one data line per event: {text}");
            data = Some(serde_json::from_str(value).expect("data is JSON"));
        }
    }
    Some(Event {
        event: event?,
        id,
        data: data?,
    })
}

/// Buys one unit per (shopper, key), `concurrency` at a time; the slowest
/// answer. Every buy must be answered 201.
async fn burst(
    t: &Arc<TestServer>,
    deal: &str,
    shoppers: &[Account],
    keys: std::ops::Range<usize>,
    concurrency: usize,
) -> Duration {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for key in keys {
        for shopper in shoppers {
            let (t, gate, deal, shopper) =
                (t.clone(), gate.clone(), deal.to_owned(), shopper.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await.expect("open");
                let started = Instant::now();
                let answer = t.buy(&shopper, &deal, 1, &format!("burst-{key}")).await;
                assert_eq!(answer.status, 201, "{}", answer.text);
                started.elapsed()
            }));
        }
    }
    let mut slowest = Duration::ZERO;
    for task in tasks {
        slowest = slowest.max(task.await.expect("a buy task"));
    }
    slowest
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn subscribers(t: &TestServer) -> f64 {
    let metrics = t.get("/metrics", None).await;
    metric(&metrics.text, "flashsale_feed_subscribers").expect("the gauge is rendered")
}

/// Waits until the subscriber gauge reads `expected`.
async fn wait_subscribers(t: &TestServer, expected: f64) {
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        let now = subscribers(t).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "flashsale_feed_subscribers is {now}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_coalesced_into_a_few_events_and_the_last_carries_the_final_numbers() {
    const SHOPPERS: usize = 100;
    /// Keys per shopper in one wave of the burst: 500 buys a wave.
    const KEYS_PER_WAVE: usize = 5;
    const WAVES_MAX: usize = 60;
    /// A pause after each wave, so the burst spans `BURST_MIN` within
    /// `WAVES_MAX` waves however fast the machine answers.
    const WAVE_GAP: Duration = Duration::from_millis(40);
    /// The burst lasts at least this long and buys at least this much, so
    /// that it spans several samples.
    const BURST_MIN: Duration = Duration::from_millis(1_500);
    const BUYS_MIN: u64 = 1_000;
    let t = Arc::new(start().await);
    let merchant = t.merchant("Xiaomi").await;
    let per_shopper = KEYS_PER_WAVE * WAVES_MAX;
    let stock = (SHOPPERS * per_shopper) as u64;
    let deal = t.deal(&merchant, "0.01", stock, per_shopper as u32).await;
    let buyers = t.bulk_shoppers(SHOPPERS, "10.00").await;

    let mut sse = Sse::connect(t.addr(), None).await;
    let first = sse.until(&deal, |card| card["sold"] == 0).await;
    assert_eq!(first.data["merchant"]["name"], "Xiaomi");
    assert_eq!(
        first.data["merchant"]["rating"],
        json!({"average": null, "reviews": 0})
    );
    assert!(first.id.is_some(), "events carry an id");

    // A reader task timestamps every event of the deal while the burst runs.
    let (events, mut received) = mpsc::unbounded_channel();
    let watched = deal.clone();
    let reader = tokio::spawn(async move {
        while let Some(event) = sse.next(Duration::from_secs(60)).await {
            if event.event == "deal"
                && event.data["id"] == watched
                && events.send((Instant::now(), event)).is_err()
            {
                return;
            }
        }
    });

    let started = Instant::now();
    let mut buys = 0;
    let mut wave = 0;
    while buys < BUYS_MIN || started.elapsed() < BURST_MIN {
        assert!(wave < WAVES_MAX, "the burst outran its stock");
        let keys = wave * KEYS_PER_WAVE..(wave + 1) * KEYS_PER_WAVE;
        burst(&t, &deal, &buyers, keys, 64).await;
        buys += (SHOPPERS * KEYS_PER_WAVE) as u64;
        wave += 1;
        tokio::time::sleep(WAVE_GAP).await;
    }
    let burst_took = started.elapsed();

    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(EVENT_WAIT, received.recv())
            .await
            .expect("the final numbers arrive")
            .expect("the reader runs");
        let done = event.1.data["sold"] == buys;
        seen.push(event);
        if done {
            break;
        }
    }
    // Nothing follows the final numbers: they do not change any more.
    let after = tokio::time::timeout(Duration::from_millis(600), received.recv()).await;
    assert!(after.is_err(), "an event after the final one: {after:?}");
    reader.abort();

    let (last_at, last) = seen.last().expect("events during the burst");
    assert_eq!(
        (
            &last.data["sold"],
            &last.data["remaining"],
            &last.data["held"]
        ),
        (&json!(buys), &json!(stock - buys), &json!(0)),
        "the last event carries the final numbers: {last:?}"
    );
    assert_eq!(last.data["buyers"], SHOPPERS);
    assert_eq!(last.data["popularity"], SHOPPERS);
    assert_eq!(last.data["status"], "live");

    // A few events per second, not one per buy.
    let span = last_at.duration_since(started).as_secs_f64();
    let allowed = (span * EVENTS_PER_DEAL_PER_SECOND_MAX).ceil() as usize + 2;
    assert!(
        (2..=allowed).contains(&seen.len()),
        "{} events for {buys} buys in {:.2} s (burst {:.2} s; at most {allowed})",
        seen.len(),
        span,
        burst_took.as_secs_f64()
    );
    // Ids (`<run>.<sample>.<deal>`) grow with the numbers.
    let ids: Vec<u64> = seen
        .iter()
        .map(|(_, event)| {
            let id = event.id.as_deref().expect("an id");
            let sample = id.split('.').nth(1).expect("<run>.<sample>.<deal>");
            sample.parse().expect("a number")
        })
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    t.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_blocks_neither_buyers_nor_other_subscribers() {
    /// Enough cards that the stalled subscriber's socket, buffer and
    /// channel are full long before the burst ends.
    const DEALS: usize = 400;
    const SHOPPERS: usize = 50;
    const KEYS: usize = 4;
    let t = Arc::new(start().await);
    let merchant = t.merchant("Xiaomi").await;
    let gate = Arc::new(Semaphore::new(16));
    let mut created = Vec::new();
    for _ in 0..DEALS {
        let (t, gate, merchant) = (t.clone(), gate.clone(), merchant.clone());
        created.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("open");
            t.deal(&merchant, "1.00", 1_000, 100).await
        }));
    }
    let mut deals = Vec::new();
    for deal in created {
        deals.push(deal.await.expect("a deal"));
    }
    let target = deals.last().expect("deals").clone();
    let buyers = t.bulk_shoppers(SHOPPERS, "100.00").await;

    // Subscribes with a tiny receive window and never reads.
    let stalled = Sse::open(t.addr(), STREAM, None, Some(2_048))
        .await
        .expect("subscribed");
    let mut healthy = Sse::connect(t.addr(), None).await;
    healthy.until(&target, |card| card["sold"] == 0).await;
    wait_subscribers(&t, 2.0).await;

    // Buys on every deal keep cards changing; then a burst on one.
    let mut spread = Vec::new();
    for (n, deal) in deals.iter().enumerate() {
        let (t, gate, deal, shopper) = (
            t.clone(),
            gate.clone(),
            deal.clone(),
            buyers[n % SHOPPERS].clone(),
        );
        spread.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("open");
            let started = Instant::now();
            t.buy(&shopper, &deal, 1, &format!("spread-{n}"))
                .await
                .ok(201);
            started.elapsed()
        }));
    }
    let mut slowest = Duration::ZERO;
    for buy in spread {
        slowest = slowest.max(buy.await.expect("a buy"));
    }
    slowest = slowest.max(burst(&t, &target, &buyers, 0..KEYS, 32).await);
    assert!(
        slowest < Duration::from_secs(2),
        "a buy took {slowest:?} with a stalled subscriber"
    );
    let sold = (SHOPPERS * KEYS + 1) as u64;
    healthy.until(&target, |card| card["sold"] == sold).await;
    // The stalled subscriber did fall behind: its buffer filled up.
    let metrics = t.get("/metrics", None).await.text;
    let full = metric(&metrics, "flashsale_feed_buffers_full_total").expect("the counter");
    assert!(full > 0.0, "the stalled subscriber never filled its buffer");

    // When the stalled one reads again, it catches up to the latest numbers.
    let mut stalled = stalled;
    let caught_up = stalled.until(&target, |card| card["sold"] == sold).await;
    assert_eq!(caught_up.data["remaining"], 1_000 - sold);
    t.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_all_receive_the_update() {
    const SUBSCRIBERS: usize = 1_000;
    let t = Arc::new(start().await);
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "1.00", 10, 1).await;
    let shopper = t.shopper("Li", "10").await;

    let (ready, mut all_ready) = mpsc::channel::<()>(SUBSCRIBERS);
    let (go, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let (addr, deal, ready, mut go) = (t.addr(), deal.clone(), ready.clone(), go.subscribe());
        tasks.push(tokio::spawn(async move {
            let mut sse = Sse::connect(addr, None).await;
            sse.until(&deal, |card| card["sold"] == 0).await;
            ready.send(()).await.expect("the test waits");
            go.recv().await.expect("the test says go");
            sse.until(&deal, |card| card["sold"] == 1).await.data
        }));
    }
    drop(ready);
    for _ in 0..SUBSCRIBERS {
        tokio::time::timeout(Duration::from_secs(60), all_ready.recv())
            .await
            .expect("every subscriber connects")
            .expect("a subscriber");
    }
    assert_eq!(subscribers(&t).await, SUBSCRIBERS as f64);
    go.send(()).expect("subscribers listen");
    t.buy(&shopper, &deal, 1, "one").await.ok(201);
    for task in tasks {
        let card = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("every subscriber gets the update")
            .expect("a subscriber task");
        assert_eq!(
            (&card["remaining"], &card["buyers"]),
            (&json!(9), &json!(1))
        );
    }
    // Gone clients are gone from the gauge.
    wait_subscribers(&t, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_gets_the_current_numbers_first() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "1.00", 10, 1).await;
    let older = t.deal(&merchant, "2.00", 5, 1).await;
    let shopper = t.shopper("Li", "10").await;

    let mut first = Sse::connect(t.addr(), None).await;
    let seen = first.until(&deal, |card| card["sold"] == 0).await;
    let last_id = seen.id.expect("an id");
    drop(first);

    let mut observer = Sse::connect(t.addr(), None).await;
    t.buy(&shopper, &deal, 1, "while-away").await.ok(201);
    observer.until(&deal, |card| card["sold"] == 1).await;

    for last_event_id in [Some(last_id.as_str()), Some("not-a-number"), None] {
        let mut again = Sse::connect(t.addr(), last_event_id).await;
        let mut replay = Vec::new();
        while replay.len() < 2 {
            let event = again.next(EVENT_WAIT).await.expect("the replay");
            assert_eq!(event.event, "deal");
            replay.push(event.data);
        }
        let card = |id: &str| {
            replay
                .iter()
                .find(|card| card["id"] == id)
                .unwrap_or_else(|| panic!("{id} in the replay {replay:?}"))
        };
        assert_eq!(card(&deal)["sold"], 1, "Last-Event-ID {last_event_id:?}");
        assert_eq!(card(&deal)["remaining"], 9);
        assert_eq!(card(&older)["sold"], 0);
    }
}

/// A reconnect naming the last event it saw, by the `Last-Event-ID` header
/// or a `lastEventId` query parameter, resumes after it: what changed since,
/// not the whole feed again. An id of another run (a restart) or a
/// malformed one gets the whole replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_naming_its_last_event_resumes_after_it() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "1.00", 10, 1).await;
    let quiet = t.deal(&merchant, "2.00", 5, 1).await;
    let shopper = t.shopper("Li", "10").await;

    let mut first = Sse::connect(t.addr(), None).await;
    let mut seen = std::collections::HashSet::new();
    let mut last_id = String::new();
    while seen.len() < 2 {
        let event = first.next(EVENT_WAIT).await.expect("the replay");
        seen.insert(event.data["id"].as_str().unwrap_or_default().to_owned());
        last_id = event.id.expect("an id");
    }
    drop(first);
    let mut observer = Sse::connect(t.addr(), None).await;
    t.buy(&shopper, &deal, 1, "while-away").await.ok(201);
    observer.until(&deal, |card| card["sold"] == 1).await;

    let by_header = Sse::connect(t.addr(), Some(&last_id)).await;
    let by_query = Sse::open(
        t.addr(),
        &format!("{STREAM}?lastEventId={last_id}&utm_source=app"),
        None,
        None,
    )
    .await
    .unwrap_or_else(|Refused(head)| panic!("the stream was refused: {head}"));
    for mut resumed in [by_header, by_query] {
        let event = resumed.next(EVENT_WAIT).await.expect("what changed");
        assert_eq!(event.data["id"], deal.as_str(), "{event:?}");
        assert_eq!(event.data["sold"], 1);
        // The other card did not change: it is not sent again.
        let more = tokio::time::timeout(Duration::from_secs(1), resumed.next(EVENT_WAIT)).await;
        assert!(more.is_err(), "sent again: {more:?}");
    }

    let run = last_id.split('.').next().expect("a run tag");
    let run = u64::from_str_radix(run, 16).expect("hex");
    let restarted = format!("{:x}.1.1", run ^ 1);
    for id in [restarted.as_str(), "not-an-id"] {
        let mut again = Sse::connect(t.addr(), Some(id)).await;
        let mut replay = std::collections::HashSet::new();
        while replay.len() < 2 {
            let event = again.next(EVENT_WAIT).await.expect("the replay");
            replay.insert(event.data["id"].as_str().unwrap_or_default().to_owned());
        }
        assert!(
            replay.contains(&deal) && replay.contains(&quiet),
            "{id}: {replay:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_subscriber_bound_the_stream_is_overloaded() {
    let t = start_with(|config| config.feed_subscribers_max = 2).await;
    let one = Sse::connect(t.addr(), None).await;
    let _two = Sse::connect(t.addr(), None).await;
    let refused = t.get("/v1/feed/stream", None).await;
    refused.refused(503, "overloaded");
    assert!(refused.headers.contains_key("retry-after"));
    drop(one);
    wait_subscribers(&t, 1.0).await;
    let _three = Sse::connect(t.addr(), None).await;
    assert_eq!(subscribers(&t).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let t = start_with(|config| config.shutdown_grace = Duration::from_secs(30)).await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "1.00", 10, 1).await;
    let mut sse = Sse::connect(t.addr(), None).await;
    sse.until(&deal, |card| card["sold"] == 0).await;
    let started = Instant::now();
    let (stopped, _dir) = tokio::time::timeout(Duration::from_secs(10), t.shutdown())
        .await
        .expect("shutdown does not wait for the stream");
    stopped.expect("a clean stop");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(sse.next(EVENT_WAIT).await.is_none(), "the stream ended");
}
