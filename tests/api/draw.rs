//! Raffle deals over HTTP: a few hundred registrants, the draw
//! at `starts_at`, winners who pay and winners who let go, the waitlist
//! refilling, and the public record recomputed from the seed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use flashsale_engine::{DrawSeed, Ranker, registrants_hash};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Account, TestServer, at, start};
use crate::holds::pay;

const REGISTRANTS: usize = 300;
const BROKE: usize = 20;
const STOCK: u64 = 40;

fn unhex(text: &Value) -> [u8; 32] {
    let bytes = hex::decode(text.as_str().expect("a hex string")).expect("hex");
    bytes.try_into().expect("32 bytes")
}

async fn draw_me(t: &TestServer, deal: &str, shopper: &Account) -> Value {
    t.get(&format!("/v1/deals/{deal}/draw/me"), Some(&shopper.token))
        .await
        .ok(200)
}

/// Every page of a draw listing (`offers` or `registrants`).
async fn all_pages(t: &TestServer, path: &str, field: &str) -> (Value, Vec<Value>) {
    let mut items = Vec::new();
    let mut query = "limit=97".to_owned();
    loop {
        let page = t.get(&format!("{path}?{query}"), None).await.ok(200);
        items.extend(page[field].as_array().expect("a list").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => query = format!("limit=97&cursor={next}"),
            None => return (page, items),
        }
    }
}

/// Registers every one of `shoppers` for `deal`, concurrently; each 201.
async fn register_all(t: &TestServer, deal: &str, shoppers: &[Account]) {
    let registration = format!("/v1/deals/{deal}/registrations");
    let registered = join_all(shoppers.iter().map(|shopper| {
        t.call(
            Method::POST,
            &registration,
            Some(&shopper.token),
            None,
            None,
        )
    }))
    .await;
    for reply in registered {
        reply.ok(201);
    }
}

/// A server, a merchant, and its raffle of `stock` at 10.00 drawn in
/// `starts_in` seconds, with `extra` fields: the created deal.
async fn raffle(stock: u64, starts_in: i64, extra: Value) -> (TestServer, Account, Value) {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let mut body = json!({
        "title": "Phone raffle", "price": "10.00", "stock": stock,
        "starts_at": at(starts_in), "ends_at": at(3600), "allocation": "raffle",
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let created = t.deal_with(&merchant, body).await.ok(201);
    (t, merchant, created)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raffle_draws_fairly_and_its_waitlist_refills_unpaid_wins() {
    let (t, merchant, created) = raffle(STOCK, 6, json!({ "hold_seconds": 2 })).await;
    let deal = created["id"].as_str().expect("a deal id").to_owned();
    assert_eq!(created["allocation"], "raffle");
    assert_eq!(created["requires_registration"], true);
    assert!(
        created.get("seed").is_none(),
        "the seed is secret until the draw"
    );
    let commitment = unhex(&created["seed_commitment"]);

    // A raffle without registration, and changing the allocation: refused.
    t.deal_with(
        &merchant,
        json!({
            "title": "x", "price": "1.00", "stock": 1, "starts_at": at(6),
            "ends_at": at(60), "allocation": "raffle", "requires_registration": false,
        }),
    )
    .await
    .refused(422, "invalid");
    // A raffle that starts now or earlier could have no registrant.
    let late = t
        .deal_with(
            &merchant,
            json!({
                "title": "x", "price": "1.00", "stock": 1, "starts_at": at(-60),
                "ends_at": at(60), "allocation": "raffle",
            }),
        )
        .await;
    late.refused(422, "invalid");
    assert!(late.body.to_string().contains("starts_at"), "{}", late.body);
    let patched = t
        .patch(
            &format!("/v1/deals/{deal}"),
            &merchant.token,
            &json!({ "allocation": "first_come" }),
        )
        .await;
    patched.refused(422, "invalid");
    assert!(patched.body.to_string().contains("allocation"));

    let mut registrants = t.bulk_shoppers(REGISTRANTS, "50.00").await;
    registrants.extend(t.bulk_shoppers(BROKE, "1.00").await);
    let outsider = t.bulk_shoppers(1, "50.00").await.remove(0);
    register_all(&t, &deal, &registrants).await;
    assert_eq!(
        draw_me(&t, &deal, &registrants[0]).await["outcome"],
        "pending"
    );
    t.get(&format!("/v1/deals/{deal}/draw/registrants"), None)
        .await
        .refused(425, "not_started");
    // Buying or holding a raffle: 422 naming `allocation`, nothing taken.
    let refused = t.buy(&registrants[0], &deal, 1, "k1").await;
    refused.refused(422, "invalid");
    assert!(refused.body.to_string().contains("allocation"));
    t.hold(&registrants[0], &deal, 1, "k2")
        .await
        .refused(422, "invalid");

    // The draw runs at starts_at (the housekeeping task).
    let mut record = Value::Null;
    for _ in 0..400 {
        record = t.get(&format!("/v1/deals/{deal}/draw"), None).await.ok(200);
        if record["drawn"] == true && record["offers_total"].as_u64() >= Some(STOCK) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(record["drawn"], true, "the draw never ran: {record}");
    assert_eq!(record["registrants"], (REGISTRANTS + BROKE) as u64);
    let seed = DrawSeed(unhex(&record["seed"]));
    assert_eq!(
        seed.commitment(),
        commitment,
        "the seed matches its commitment"
    );
    assert_eq!(t.get_deal(&deal).await["seed"], record["seed"]);
    t.call(
        Method::POST,
        &format!("/v1/deals/{deal}/registrations"),
        Some(&outsider.token),
        None,
        None,
    )
    .await
    .refused(422, "invalid");

    // Winners: two in three pay, the rest release (units pass on at once)
    // or let the hold expire (2 s). Until everything is sold.
    let by_id: HashMap<&str, &Account> = registrants
        .iter()
        .map(|shopper| (shopper.id.as_str(), shopper))
        .collect();
    let mut handled: HashSet<String> = HashSet::new();
    let mut winners = Vec::new();
    for _round in 0..100 {
        let view = t.get_deal(&deal).await;
        if view["sold"] == STOCK {
            break;
        }
        for (index, shopper) in registrants.iter().enumerate() {
            if handled.contains(&shopper.id) {
                continue;
            }
            let me = draw_me(&t, &deal, shopper).await;
            if me["outcome"] != "won" || me["hold"]["status"] != "active" {
                continue;
            }
            handled.insert(shopper.id.clone());
            winners.push(shopper.id.clone());
            let hold = me["hold"]["id"].as_str().expect("a hold id");
            match index % 6 {
                0 => {
                    t.call(
                        Method::DELETE,
                        &format!("/v1/holds/{hold}"),
                        Some(&shopper.token),
                        None,
                        None,
                    )
                    .await
                    .ok(200);
                }
                3 => {} // lets it expire
                _ => {
                    // Paying someone else's win is refused.
                    pay(&t, &outsider.token, hold)
                        .await
                        .refused(403, "forbidden");
                    pay(&t, &shopper.token, hold).await.ok(201);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = t.get_deal(&deal).await;
    assert_eq!(view["sold"], STOCK, "all stock sold: {view}");
    assert_eq!(
        (view["remaining"].as_u64(), view["held"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(winners.len() > STOCK as usize, "some wins were passed on");
    assert!(winners.iter().all(|id| by_id.contains_key(id.as_str())));
    assert_eq!(
        draw_me(&t, &deal, &outsider).await["outcome"],
        "not_registered"
    );
    assert_eq!(t.wallet(&outsider).await["spent"], "0.00");

    // Anyone can recompute the record from the seed and the registrants.
    let (_, listed) = all_pages(
        &t,
        &format!("/v1/deals/{deal}/draw/registrants"),
        "registrants",
    )
    .await;
    let mut texts: Vec<String> = registrants.iter().map(|s| s.id.clone()).collect();
    texts.sort();
    let listed: Vec<String> = listed
        .iter()
        .map(|id| id.as_str().expect("an id").to_owned())
        .collect();
    assert_eq!(listed, texts);
    let (record, offers) = all_pages(&t, &format!("/v1/deals/{deal}/draw"), "offers").await;
    assert_eq!(
        unhex(&record["registrants_hash"]),
        registrants_hash(texts.iter().map(|text| text.as_bytes()))
    );
    let ranker = Ranker::new(&seed);
    let mut ranked: Vec<([u8; 32], &str)> = texts
        .iter()
        .map(|id| (ranker.rank(id.as_bytes()), id.as_str()))
        .collect();
    ranked.sort();
    assert_eq!(
        offers.len() as u64,
        record["offers_total"].as_u64().unwrap()
    );
    // The last BROKE registrants cannot cover a hold: each one the walk
    // reaches is passed over, and every other place is a win (which of
    // them the walk reaches depends on the seed).
    let broke: std::collections::HashSet<&str> = registrants[REGISTRANTS..]
        .iter()
        .map(|shopper| shopper.id.as_str())
        .collect();
    for (place, offer) in offers.iter().enumerate() {
        assert_eq!(unhex(&offer["rank"]), ranked[place].0, "place {place}");
        let shopper = by_id[ranked[place].1];
        let me = draw_me(&t, &deal, shopper).await;
        if broke.contains(shopper.id.as_str()) {
            assert_eq!(offer["outcome"], "passed_over", "place {place}");
            assert_eq!(me["outcome"], "passed_over");
            assert_eq!(t.wallet(shopper).await["available"], "1.00");
        } else {
            assert_ne!(offer["outcome"], "passed_over", "place {place}");
            assert_eq!(me["outcome"], "won", "{me}");
            assert!(winners.contains(&shopper.id));
        }
    }
    let waiting = by_id[ranked[offers.len()].1];
    let me = draw_me(&t, &deal, waiting).await;
    assert_eq!(me["outcome"], "not_drawn", "sold out: {me}");
    t.check_invariants();
}

/// `flashsale verify-draw`'s exit codes (docs/fair-draws.md): the draw
/// matches, it does not, it could not be checked.
const MATCHES: Option<i32> = Some(0);
const MISMATCH: Option<i32> = Some(1);
const CANNOT_CHECK: Option<i32> = Some(2);

/// Runs `flashsale verify-draw --deal URL`: (exit code, stdout).
async fn verify_draw(url: &str) -> (Option<i32>, String) {
    let (code, stdout, _) = verify_draw_with(url, &[]).await;
    (code, stdout)
}

/// Runs `flashsale verify-draw --deal URL` with `extra` arguments:
/// (exit code, stdout, stderr).
async fn verify_draw_with(url: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["verify-draw", "--deal", url])
        .args(extra)
        .output()
        .await
        .expect("flashsale runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A raffle of 6 among 40 registrants on a fresh server, drawn: the
/// server, the deal's id and its draw record.
async fn drawn_raffle() -> (TestServer, String, Value) {
    let (t, _, created) = raffle(6, 3, json!({})).await;
    let deal = created["id"].as_str().expect("an id").to_owned();
    let registrants = t.bulk_shoppers(40, "50.00").await;
    register_all(&t, &deal, &registrants).await;
    let draw = drawn(&t, &deal).await;
    (t, deal, draw)
}

/// The deal's draw record once its 6 offers are out, within 10 s.
async fn drawn(t: &TestServer, deal: &str) -> Value {
    let path = format!("/v1/deals/{deal}/draw");
    let mut draw = Value::Null;
    for _ in 0..200 {
        draw = t.get(&path, None).await.ok(200);
        if draw["offers_total"] == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(draw["offers_total"], 6, "the draw never ran: {draw}");
    draw
}

/// A stand-in for a dishonest server: answers `GET {prefix}/draw…` with
/// `draw` and `GET {prefix}/draw/registrants…` with `registrants`, over
/// HTTP/1.1 keep-alive, until the test ends.
async fn serve_record(draw: Value, registrants: Value) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (draw, registrants) = (draw.to_string(), registrants.to_string());
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0; 4096];
                loop {
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                    buffer.drain(..end + 4);
                    let body = if head.contains("/draw/registrants") {
                        &registrants
                    } else {
                        &draw
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/v1/deals/d_1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_draw_matches_a_real_draw_and_catches_a_tampered_one() {
    let (t, _, created) = raffle(6, 3, json!({})).await;
    let deal = created["id"].as_str().expect("an id").to_owned();
    let registrants = t.bulk_shoppers(40, "50.00").await;
    register_all(&t, &deal, &registrants).await;
    // Before the draw: nothing to verify, said as such (exit 2), no
    // talk of a mismatch.
    let url = format!("http://{}/v1/deals/{deal}", t.addr());
    let (code, stdout) = verify_draw(&url).await;
    assert_eq!(code, CANNOT_CHECK, "{stdout}");
    assert!(stdout.starts_with("not drawn yet"), "{stdout}");
    let path = format!("/v1/deals/{deal}/draw");
    let draw = drawn(&t, &deal).await;
    let (code, stdout) = verify_draw(&url).await;
    assert_eq!(code, MATCHES, "{stdout}");
    assert!(
        stdout.starts_with("match: 40 registrants, 6 offers"),
        "{stdout}"
    );

    // The same record with the first two winners swapped: caught.
    let listed = t.get(&format!("{path}/registrants"), None).await.ok(200);
    let mut swapped = draw.clone();
    let offers = swapped["offers"].as_array_mut().expect("offers");
    offers.swap(0, 1);
    let (code, stdout) = verify_draw(&serve_record(swapped, listed.clone()).await).await;
    assert_eq!(code, MISMATCH, "{stdout}");
    assert!(stdout.contains("mismatch: offer 1"), "{stdout}");

    // A registrant dropped from the published list: caught.
    let mut fewer = listed.clone();
    fewer["registrants"].as_array_mut().expect("ids").remove(7);
    let (code, stdout) = verify_draw(&serve_record(draw.clone(), fewer).await).await;
    assert_eq!(code, MISMATCH, "{stdout}");
    assert!(stdout.contains("registrants_hash"), "{stdout}");
    // And the untouched record served by the stand-in still matches.
    let (code, stdout) = verify_draw(&serve_record(draw, listed).await).await;
    assert_eq!(code, MATCHES, "{stdout}");
}

/// What verify-draw cannot check exits 2 with the reason on stderr, never
/// 1 (which says the draw does not match): a deal the server does not
/// know (404), a server that refuses the connection, a URL that is not one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_draw_exits_2_when_it_cannot_check() {
    let t = start().await;
    let unknown = format!("http://{}/v1/deals/d_ffff", t.addr());
    let (code, stdout, stderr) = verify_draw_with(&unknown, &[]).await;
    assert_eq!(code, CANNOT_CHECK, "{stdout}{stderr}");
    assert!(stderr.contains("404"), "{stderr}");
    assert!(!stdout.contains("mismatch"), "{stdout}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused = format!(
        "http://{}/v1/deals/d_1",
        closed.local_addr().expect("an address")
    );
    drop(closed);
    let (code, stdout, stderr) = verify_draw_with(&refused, &[]).await;
    assert_eq!(code, CANNOT_CHECK, "{stdout}{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");

    let (code, _, stderr) = verify_draw_with("ftp://127.0.0.1/v1/deals/d_1", &[]).await;
    assert_eq!(code, CANNOT_CHECK, "{stderr}");
    assert!(stderr.contains("--deal"), "{stderr}");
    assert!(
        stderr.contains("the scheme \"ftp\" is not http or https"),
        "{stderr}"
    );
}

/// An https front for `backend`, with a certificate for 127.0.0.1 and
/// localhost signed by itself (rcgen), until the test ends: its base URL
/// and the certificate's PEM file, to trust with `--ca-cert`.
async fn https_front(backend: std::net::SocketAddr) -> (String, tempfile::NamedTempFile) {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("a self-signed certificate");
    let pem = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(pem.path(), certified.cert.pem()).expect("the PEM is written");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    // The provider verify-draw uses (loadtest/src/target.rs says why ring).
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("a server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that does not trust the certificate hangs up here.
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (format!("https://{addr}"), pem)
}

/// verify-draw checks a real draw over https: it matches with the
/// server's certificate trusted through `--ca-cert`, and cannot check
/// (exit 2, naming TLS) without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_draw_checks_a_draw_over_https() {
    let (t, deal, _) = drawn_raffle().await;
    let (base, ca) = https_front(t.addr()).await;
    let url = format!("{base}/v1/deals/{deal}");
    let ca_path = ca.path().to_str().expect("a UTF-8 path");
    let (code, stdout, stderr) = verify_draw_with(&url, &["--ca-cert", ca_path]).await;
    assert_eq!(code, MATCHES, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("match: 40 registrants, 6 offers"),
        "{stdout}"
    );
    let (code, stdout, stderr) = verify_draw_with(&url, &[]).await;
    assert_eq!(code, CANNOT_CHECK, "{stdout}{stderr}");
    assert!(stderr.contains("TLS handshake failed"), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
}
