//! Dropped replies: a TCP proxy between a node and Redis forwards every
//! command but, when told to, throws away the reply to one and closes the
//! connection, so the write happened and the node never heard (the fault a
//! lost packet or a crashed load balancer makes). The node must answer
//! `503 unavailable` (an unknown outcome), and the client's retry with the
//! same Idempotency-Key must get the original order, never a second one
//! (docs/api.md "Idempotency"; a fault suite by Jepsen's method:
//! record ok / fail / unknown, then check).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::burst::{burst, check_books, resolve, resolve_unknowns};
use crate::node::{Deployment, Target};

/// How long the retries of a payment whose reply was lost may take.
const RESOLVE_PAYMENT_MAX: Duration = Duration::from_secs(60);
/// Bytes one read of the proxy takes.
const PROXY_READ_BYTES: usize = 16 * 1024;

/// Which commands get their reply dropped.
#[derive(Default)]
struct DropRule {
    /// Drop the reply to the next command whose bytes contain this.
    once: std::sync::Mutex<Option<Vec<u8>>>,
    /// Drop the reply to every n-th step call (`FCALL`, `FCALL_RO`); 0 is never.
    every_nth_script: AtomicUsize,
    scripts_seen: AtomicUsize,
    /// Replies thrown away so far.
    dropped: AtomicUsize,
}

impl DropRule {
    /// Whether the reply to the command(s) in `chunk` must be dropped.
    fn matches(&self, chunk: &[u8]) -> bool {
        let mut once = self
            .once
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if once.as_ref().is_some_and(|needle| contains(chunk, needle)) {
            *once = None;
            return true;
        }
        let every = self.every_nth_script.load(Ordering::Relaxed);
        // The command's own word, in its RESP framing (the library's text,
        // sent by FUNCTION LOAD, has no CRLF).
        let scripts = count(chunk, b"\r\nFCALL\r\n") + count(chunk, b"\r\nFCALL_RO\r\n");
        if every == 0 || scripts == 0 {
            return false;
        }
        let before = self.scripts_seen.fetch_add(scripts, Ordering::Relaxed);
        (before + scripts) / every > before / every
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    count(haystack, needle) > 0
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|window| *window == needle)
        .count()
}

/// The proxy: listens on a free loopback port, forwards to `upstream`.
struct DroppingProxy {
    url: String,
    rule: Arc<DropRule>,
}

impl DroppingProxy {
    async fn start(upstream: &str) -> DroppingProxy {
        let upstream = upstream
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("redis://{}", listener.local_addr().expect("an address"));
        let rule = Arc::new(DropRule::default());
        let shared = rule.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, shared.clone()));
            }
        });
        DroppingProxy { url, rule }
    }
}

/// Forwards one connection both ways. Once a command matches the rule, the
/// next bytes Redis sends back are thrown away and both sides are closed.
async fn relay(client: TcpStream, server: TcpStream, rule: Arc<DropRule>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let armed = Arc::new(AtomicBool::new(false));
    let armed_up = armed.clone();
    let rule_up = rule.clone();
    let upward = tokio::spawn(async move {
        let mut buffer = vec![0; PROXY_READ_BYTES];
        loop {
            let Ok(read) = client_read.read(&mut buffer).await else {
                return;
            };
            if read == 0 {
                return;
            }
            // Armed before the command goes on, so its reply comes after.
            if rule_up.matches(&buffer[..read]) {
                armed_up.store(true, Ordering::SeqCst);
            }
            if server_write.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    });
    let mut buffer = vec![0; PROXY_READ_BYTES];
    while let Ok(read) = server_read.read(&mut buffer).await
        && read > 0
    {
        if armed.load(Ordering::SeqCst) {
            rule.dropped.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if client_write.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    upward.abort();
    let _ = client_write.shutdown().await;
}

/// One buy whose reply is lost: 503, and the retry gets that same order;
/// one hold payment whose reply is lost: 503, and the retry finds the hold
/// paid by the one order. The wallet is charged once for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_resolved_by_the_retry_never_a_second_order() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let proxy = DroppingProxy::start(&url).await;
    let deployment = Deployment::new(Target::Single(proxy.url.clone()), 16);
    let node = deployment.node_with(&["--redis-response-timeout-ms", "500"]);
    let merchant = node.merchant("Lost").await;
    let deal = node.deal(&merchant, 10, 3).await;
    let shoppers = node.shoppers(1, "100.00").await;
    let token = &shoppers[0].1;

    *proxy.rule.once.lock().expect("the rule") = Some(b"lost-buy".to_vec());
    let first = node
        .buy(token, &deal, 1, "lost-buy")
        .await
        .expect("an answer");
    assert_eq!(proxy.rule.dropped.load(Ordering::Relaxed), 1);
    assert_eq!((first.status, first.code()), (503, "unavailable"));
    let order = resolve(&node, token, &deal, "lost-buy").await.ok(201);
    let again = resolve(&node, token, &deal, "lost-buy").await.ok(201);
    assert_eq!(order, again, "a replay is the same order");

    let hold = node
        .call(
            reqwest::Method::POST,
            &format!("/v1/deals/{deal}/holds"),
            Some(token),
            Some(json!({ "quantity": 1 })),
            Some("a-hold"),
        )
        .await
        .ok(201);
    let payment = format!("/v1/holds/{}/payment", hold["id"].as_str().expect("an id"));
    *proxy.rule.once.lock().expect("the rule") = Some(b"_pay\r\n".to_vec());
    let pay = || node.call(reqwest::Method::POST, &payment, Some(token), None, None);
    let first = pay().await;
    assert_eq!(proxy.rule.dropped.load(Ordering::Relaxed), 2);
    assert_eq!((first.status, first.code()), (503, "unavailable"));
    // The retry finds the hold paid: 409 `hold_settled` naming the order
    // the lost reply carried (engine: paying a settled hold is refused and
    // changes nothing).
    let started = Instant::now();
    let retried = loop {
        let answer = pay().await;
        if answer.status != 503 {
            break answer;
        }
        assert!(
            started.elapsed() < RESOLVE_PAYMENT_MAX,
            "the payment never resolved"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (retried.status, retried.code()),
        (409, "hold_settled"),
        "{:?}",
        retried.body
    );
    let paid_by = retried.body["error"]["order_id"]
        .as_str()
        .expect("the refusal names the order in `order_id`");
    let paid = node
        .get(&format!("/v1/orders/{paid_by}"), Some(token))
        .await
        .ok(200);
    assert_eq!(paid["quantity"], 1, "{paid}");
    assert_ne!(paid["id"], order["id"]);

    let view = node.get(&format!("/v1/deals/{deal}"), None).await.ok(200);
    assert_eq!(
        (view["sold"].as_u64(), view["held"].as_u64()),
        (Some(2), Some(0)),
        "{view}"
    );
    let wallet = node.get("/v1/wallet", Some(token)).await.ok(200);
    assert_eq!(wallet["spent"], "20.00", "charged once per order: {wallet}");
    assert_eq!(wallet["held"], "0.00", "{wallet}");
}

/// A burst through two nodes whose proxy drops the reply to every 25th
/// script call (and with it every call in flight on that connection).
/// Every unknown outcome is retried with its key until it resolves; then
/// exactly the stock is sold, one order per key, every order in Redis is
/// one some key was answered with, and money is conserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_lost_replies_resolves_every_unknown_outcome() {
    const STOCK: u64 = 100;
    const SHOPPERS: u32 = 300;
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let proxy = DroppingProxy::start(&url).await;
    let deployment = Deployment::new(Target::Single(proxy.url.clone()), 64);
    let timeout = ["--redis-response-timeout-ms", "500"];
    let nodes = [
        deployment.node_with(&timeout),
        deployment.node_with(&timeout),
    ];
    let merchant = nodes[0].merchant("Jepsen").await;
    let deal = nodes[0].deal(&merchant, STOCK, 1).await;
    let shoppers = nodes[1].shoppers(SHOPPERS, "100.00").await;
    proxy.rule.every_nth_script.store(25, Ordering::Relaxed);
    let plan: Vec<(usize, String)> = (0..SHOPPERS as usize)
        .map(|shopper| (shopper, format!("tap-{shopper}")))
        .collect();
    let mut attempts = burst(&nodes, &shoppers, &deal, &plan).await;
    proxy.rule.every_nth_script.store(0, Ordering::Relaxed);
    let dropped = proxy.rule.dropped.load(Ordering::Relaxed);
    let answered = attempts.len();
    let unknown = resolve_unknowns(&nodes, &shoppers, &deal, &mut attempts).await;
    eprintln!(
        "lost replies: {dropped} connection(s) cut, {unknown} unknown outcome(s) of {answered}, each resolved by its key"
    );
    assert!(dropped >= 1 && unknown > 0, "the fault happened");
    check_books(
        &nodes[0], &merchant, &deal, STOCK, &shoppers, &attempts, 10_000,
    )
    .await;
}
