//! Strict input (ARCHITECTURE.md, "Input is refused before it changes
//! anything"; docs/api.md, "Errors"): every body is a JSON object of
//! known fields, money is digits with at most two decimals, text holds
//! nothing Postgres cannot store, framing headers follow RFC 9112, and a
//! paused deal is the merchant's 409, not an outage. Each refusal has the
//! contract's code and changes nothing.

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ADMIN, Account, Reply, TestServer, at, start};

/// A merchant with a live deal at 10.00 and a shopper with 100.00.
struct Shop {
    t: TestServer,
    merchant: Account,
    deal: String,
    shopper: Account,
}

async fn shop() -> Shop {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "10.00", 10, 5).await;
    let shopper = t.shopper("Li", "100").await;
    Shop {
        t,
        merchant,
        deal,
        shopper,
    }
}

impl Shop {
    /// POSTs (or PATCHes) `body` as given, with the right token and a key.
    async fn send(&self, method: Method, path: &str, token: &str, body: &str) -> Reply {
        let response = self
            .t
            .client
            .request(method, format!("{}{path}", self.t.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("idempotency-key", "strict-1")
            .body(body.to_owned())
            .send()
            .await
            .expect("an answer");
        crate::helpers::reply(response).await
    }

    /// Every body-taking endpoint: method, path, token, a valid body.
    fn endpoints(&self, order: &str) -> Vec<(Method, String, String, Value)> {
        let deal_body = deal_body("Phone Y", "5.00");
        vec![
            (
                Method::POST,
                "/v1/merchants".into(),
                ADMIN.into(),
                json!({ "name": "m" }),
            ),
            (
                Method::POST,
                "/v1/shoppers".into(),
                ADMIN.into(),
                json!({ "name": "s" }),
            ),
            (
                Method::POST,
                "/v1/admin/shoppers".into(),
                ADMIN.into(),
                json!({ "count": 1, "credit": "1.00" }),
            ),
            (
                Method::POST,
                format!("/v1/wallets/{}/credits", self.shopper.id),
                ADMIN.into(),
                json!({ "amount": "1.00", "reference": "r" }),
            ),
            (
                Method::POST,
                "/v1/deals".into(),
                self.merchant.token.clone(),
                deal_body,
            ),
            (
                Method::PATCH,
                format!("/v1/deals/{}", self.deal),
                self.merchant.token.clone(),
                json!({ "add_stock": 1 }),
            ),
            (
                Method::POST,
                format!("/v1/deals/{}/orders", self.deal),
                self.shopper.token.clone(),
                json!({ "quantity": 1 }),
            ),
            (
                Method::POST,
                format!("/v1/deals/{}/holds", self.deal),
                self.shopper.token.clone(),
                json!({ "quantity": 1 }),
            ),
            (
                Method::POST,
                format!("/v1/orders/{order}/review"),
                self.shopper.token.clone(),
                json!({ "description": 5, "delivery": 5, "service": 5 }),
            ),
        ]
    }

    /// What a refusal must not change: the deal's numbers, the wallet, the
    /// number of deals in the feed.
    async fn state(&self) -> (Value, Value, usize) {
        let deal = self.t.get_deal(&self.deal).await;
        let wallet = self.t.wallet(&self.shopper).await;
        let feed = self.t.get("/v1/feed?limit=100", None).await.ok(200);
        (
            json!([deal["stock"], deal["sold"], deal["held"], deal["paused"]]),
            wallet,
            feed["cards"].as_array().map_or(0, Vec::len),
        )
    }
}

/// A valid `POST /v1/deals` body: 3 units, live now for an hour.
fn deal_body(title: &str, price: &str) -> Value {
    json!({
        "title": title, "price": price, "stock": 3,
        "starts_at": at(-60), "ends_at": at(3600),
    })
}

/// An order of the shop's shopper, for the review endpoint.
async fn an_order(shop: &Shop) -> String {
    let order = shop
        .t
        .buy(&shop.shopper, &shop.deal, 1, "first")
        .await
        .ok(201);
    order["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_is_refused_naming_it_on_every_body() {
    let shop = shop().await;
    let order = an_order(&shop).await;
    let before = shop.state().await;
    for (method, path, token, mut body) in shop.endpoints(&order) {
        body["per_user_limt"] = json!(5);
        let answer = shop.send(method, &path, &token, &body.to_string()).await;
        answer.refused(422, "invalid");
        assert!(
            answer.text.contains("per_user_limt"),
            "{path}: {}",
            answer.text
        );
    }
    // The issue's cases: a typo'd pause, a price PATCH cannot change, and a
    // PATCH that sets nothing.
    let path = format!("/v1/deals/{}", shop.deal);
    for body in [
        json!({ "pause": true }),
        json!({ "price": "0.01" }),
        json!({}),
    ] {
        let answer = shop.t.patch(&path, &shop.merchant.token, &body).await;
        answer.refused(422, "invalid");
    }
    assert_eq!(shop.state().await, before, "a refusal changed something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_query_parameter_is_refused_naming_it() {
    let shop = shop().await;
    for path in [
        "/v1/feed?limt=5".to_owned(),
        format!("/v1/orders?deal_id={}&curser=x", shop.deal),
    ] {
        let answer = shop.t.get(&path, Some(&shop.merchant.token)).await;
        answer.refused(400, "bad_request");
        assert!(
            answer.text.contains("limt") || answer.text.contains("curser"),
            "{}",
            answer.text
        );
    }
    shop.t.get("/v1/feed?limit=5", None).await.ok(200);
}

/// An endpoint that takes no query parameter refuses any, naming it, and
/// changes nothing: `?quantity=5` on a buy must not pass for a quantity,
/// nor `?paused=true` on a PATCH for a pause. The pages ignore theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_parameter_on_an_endpoint_that_takes_none_is_refused_naming_it() {
    let shop = shop().await;
    let before = shop.state().await;
    let deal = format!("/v1/deals/{}", shop.deal);
    let buy = format!("{deal}/orders?quantity=5");
    let answers = [
        shop.t
            .call(
                Method::POST,
                &buy,
                Some(&shop.shopper.token),
                Some(&json!({ "quantity": 1 })),
                Some("q1"),
            )
            .await,
        shop.t
            .call(
                Method::PATCH,
                &format!("{deal}?paused=true"),
                Some(&shop.merchant.token),
                Some(&json!({ "ends_at": at(7200) })),
                None,
            )
            .await,
        shop.t.get(&format!("{deal}?paused=1"), None).await,
        shop.t
            .get("/v1/wallet?paused=1", Some(&shop.shopper.token))
            .await,
    ];
    for answer in answers {
        answer.refused(400, "bad_request");
        assert!(
            answer.text.contains("paused") || answer.text.contains("quantity"),
            "{}",
            answer.text
        );
    }
    assert_eq!(shop.state().await, before, "a refusal changed something");
    shop.t.get("/?utm_source=feed", None).await.ok(200);
    shop.t.get(&format!("{deal}?"), None).await.ok(200);
}

/// A load balancer's or monitor's probe may add a query: the operational
/// endpoints ignore it rather than answer `400` and mark the node down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints_ignore_a_query() {
    let shop = shop().await;
    for path in [
        "/healthz?probe=1",
        "/readyz?probe=1&from=lb",
        "/metrics?name[]=x",
        "/v1/openapi.json?v=2",
    ] {
        shop.t.get(path, None).await.ok(200);
    }
}

/// `allocation` may only repeat the deal's own, which changes nothing: a
/// PATCH with nothing else is refused like an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_of_its_own_allocation_alone_is_refused_as_empty() {
    let shop = shop().await;
    let path = format!("/v1/deals/{}", shop.deal);
    let answer = shop
        .t
        .patch(
            &path,
            &shop.merchant.token,
            &json!({ "allocation": "first_come" }),
        )
        .await;
    answer.refused(422, "invalid");
    assert!(answer.text.contains("add_stock"), "{}", answer.text);
    shop.t
        .patch(
            &path,
            &shop.merchant.token,
            &json!({ "allocation": "first_come", "paused": false }),
        )
        .await
        .ok(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_an_object_is_malformed_json_on_every_endpoint() {
    let shop = shop().await;
    let order = an_order(&shop).await;
    let before = shop.state().await;
    for (method, path, token, _) in shop.endpoints(&order) {
        for body in [
            "[1]",
            r#"["arr","10.00",5,1,"2020-01-01T00:00:00Z","2030-01-01T00:00:00Z",false,120]"#,
            r#"["1.00","ref"]"#,
            "[5,5,5]",
            "5",
            r#""x""#,
            "null",
        ] {
            let answer = shop.send(method.clone(), &path, &token, body).await;
            answer.refused(400, "malformed_json");
        }
    }
    assert_eq!(shop.state().await, before, "a refusal changed something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_missing_mistyped_or_out_of_range_is_invalid_naming_it() {
    let shop = shop().await;
    let before = shop.state().await;
    let buy = format!("/v1/deals/{}/orders", shop.deal);
    for quantity in [
        "0",
        "-1",
        "4294967297",
        "2147483648",
        "1.5",
        "\"1\"",
        "null",
        "true",
    ] {
        let answer = shop
            .send(
                Method::POST,
                &buy,
                &shop.shopper.token,
                &format!(r#"{{"quantity": {quantity}}}"#),
            )
            .await;
        answer.refused(422, "invalid");
        assert!(
            answer.text.contains("quantity"),
            "{quantity}: {}",
            answer.text
        );
    }
    let base = deal_body("Phone Y", "5.00");
    for (field, value) in [
        ("price", json!(999.00)),
        ("price", Value::Null),
        ("stock", json!(-1)),
        ("stock", json!("3")),
        ("per_user_limit", json!(-1)),
        ("hold_seconds", json!(4294967296u64)),
        ("requires_registration", json!("yes")),
        ("title", json!(5)),
        ("starts_at", json!(0)),
    ] {
        let mut body = base.clone();
        body[field] = value;
        let answer = shop.t.deal_with(&shop.merchant, body).await;
        answer.refused(422, "invalid");
        assert!(answer.text.contains(field), "{field}: {}", answer.text);
    }
    let mut missing = base.clone();
    missing.as_object_mut().unwrap().remove("ends_at");
    let answer = shop.t.deal_with(&shop.merchant, missing).await;
    answer.refused(422, "invalid");
    assert!(answer.text.contains("ends_at"), "{}", answer.text);
    assert_eq!(shop.state().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_is_digits_with_at_most_two_decimals_in_every_money_field() {
    let shop = shop().await;
    let before = shop.state().await;
    let credits = format!("/v1/wallets/{}/credits", shop.shopper.id);
    let bad = [
        "1e2",
        "1E1",
        "1e-2",
        "1_000",
        "9_9.9_9",
        "1_000_000",
        ".5",
        "5.",
        "+1.00",
        "-1",
        " 1",
        "1.001",
        "0x10",
        "",
    ];
    for amount in bad {
        let mut deal = deal_body("Phone Y", amount);
        let answer = shop.t.deal_with(&shop.merchant, deal.take()).await;
        answer.refused(422, "invalid");
        assert!(answer.text.contains("price"), "{amount:?}: {}", answer.text);
        let answer = shop
            .t
            .post(
                &credits,
                Some(ADMIN),
                &json!({ "amount": amount, "reference": amount }),
            )
            .await;
        answer.refused(422, "invalid");
        assert!(
            answer.text.contains("amount"),
            "{amount:?}: {}",
            answer.text
        );
        let answer = shop
            .t
            .post(
                "/v1/admin/shoppers",
                Some(ADMIN),
                &json!({ "count": 1, "credit": amount }),
            )
            .await;
        answer.refused(422, "invalid");
        assert!(
            answer.text.contains("credit"),
            "{amount:?}: {}",
            answer.text
        );
    }
    assert_eq!(shop.state().await, before);
    // Leading zeros are digits: "01.00" is 1.00.
    let wallet = shop
        .t
        .post(
            &credits,
            Some(ADMIN),
            &json!({ "amount": "01.50", "reference": "lead" }),
        )
        .await
        .ok(201);
    assert_eq!(wallet["available"], "101.50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_postgres_cannot_store_is_invalid_naming_the_field() {
    let shop = shop().await;
    let order = an_order(&shop).await;
    let before = shop.state().await;
    let deal = |title: &str| deal_body(title, "5.00");
    for title in ["nul\u{0}title", "bell\u{7}", "two\nlines"] {
        let answer = shop.t.deal_with(&shop.merchant, deal(title)).await;
        answer.refused(422, "invalid");
        assert!(answer.text.contains("title"), "{}", answer.text);
        for (path, token) in [("/v1/merchants", Some(ADMIN)), ("/v1/shoppers", None)] {
            let answer = shop.t.post(path, token, &json!({ "name": title })).await;
            answer.refused(422, "invalid");
            assert!(answer.text.contains("name"), "{}", answer.text);
        }
        let answer = shop
            .t
            .post(
                &format!("/v1/wallets/{}/credits", shop.shopper.id),
                Some(ADMIN),
                &json!({ "amount": "1.00", "reference": title }),
            )
            .await;
        answer.refused(422, "invalid");
        assert!(answer.text.contains("reference"), "{}", answer.text);
    }
    // A lone surrogate escape is JSON no string can hold.
    let answer = shop
        .send(
            Method::POST,
            "/v1/deals",
            &shop.merchant.token,
            &deal("x").to_string().replace("\"x\"", r#""\ud800""#),
        )
        .await;
    answer.refused(422, "invalid");
    assert!(answer.text.contains("title"), "{}", answer.text);
    let review = format!("/v1/orders/{order}/review");
    let answer = shop
        .t
        .post(
            &review,
            Some(&shop.shopper.token),
            &json!({ "description": 5, "delivery": 5, "service": 5, "text": "nul\u{0}" }),
        )
        .await;
    answer.refused(422, "invalid");
    assert!(answer.text.contains("text"), "{}", answer.text);
    assert_eq!(shop.state().await, before);
    // A review may span lines.
    shop.t
        .post(
            &review,
            Some(&shop.shopper.token),
            &json!({ "description": 5, "delivery": 5, "service": 5, "text": "good\r\n\tphone" }),
        )
        .await
        .ok(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_visible_ascii_and_single_headers_appear_once() {
    let shop = shop().await;
    let before = shop.state().await;
    let raw_key = |key: &[u8]| reqwest::header::HeaderValue::from_bytes(key).unwrap();
    // A buy with exactly these headers (a token added unless given).
    let buy_with = async |headers: reqwest::header::HeaderMap| {
        let mut request = shop
            .t
            .client
            .post(format!("{}/v1/deals/{}/orders", shop.t.url, shop.deal));
        if !headers.contains_key("authorization") {
            request = request.bearer_auth(&shop.shopper.token);
        }
        let answer = request
            .headers(headers)
            .json(&json!({ "quantity": 1 }))
            .send()
            .await
            .unwrap();
        crate::helpers::reply(answer).await
    };
    for key in [
        raw_key(b"key-\t-1"),
        raw_key(b"key with space"),
        raw_key(&[b'k', 0x80]),
        raw_key("k".repeat(256).as_bytes()),
    ] {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("idempotency-key", key);
        buy_with(headers).await.refused(400, "bad_request");
    }
    let mut two_keys = reqwest::header::HeaderMap::new();
    two_keys.append("idempotency-key", raw_key(b"a"));
    two_keys.append("idempotency-key", raw_key(b"b"));
    buy_with(two_keys).await.refused(400, "bad_request");
    let mut two_tokens = reqwest::header::HeaderMap::new();
    let bearer = raw_key(format!("Bearer {}", shop.shopper.token).as_bytes());
    two_tokens.append("authorization", bearer.clone());
    two_tokens.append("authorization", bearer);
    two_tokens.append("idempotency-key", raw_key(b"c"));
    buy_with(two_tokens).await.refused(400, "bad_request");
    assert_eq!(shop.state().await, before);
    // Every visible character, 255 of them, is a key.
    let visible: String = (0x21u8..=0x7e).map(char::from).cycle().take(255).collect();
    shop.t
        .buy(&shop.shopper, &shop.deal, 1, &visible)
        .await
        .ok(201);
}

/// Sends `request` on a fresh connection; the whole answer.
async fn raw(t: &TestServer, request: &str) -> String {
    let mut stream = TcpStream::connect(t.addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 8192];
    let read = tokio::time::timeout(std::time::Duration::from_secs(15), stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_headers_follow_rfc_9112() {
    let shop = shop().await;
    let before = shop.state().await;
    let head = |framing: &str| {
        format!(
            "POST /v1/deals/{}/orders HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             idempotency-key: te-1\r\ncontent-type: application/json\r\n{framing}\r\n\r\n",
            shop.deal, shop.shopper.token
        )
    };
    let chunked_body = "f\r\n{\"quantity\": 1}\r\n0\r\n\r\n";
    for coding in ["gzip, chunked", "deflate, chunked", "identity, chunked"] {
        let answer = raw(
            &shop.t,
            &format!(
                "{}{chunked_body}",
                head(&format!("transfer-encoding: {coding}"))
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 501"), "{coding}: {answer}");
        assert!(answer.contains("not_implemented"), "{answer}");
    }
    // Two Transfer-Encoding headers that add up to "gzip, chunked".
    let answer = raw(
        &shop.t,
        &format!(
            "{}{chunked_body}",
            head("transfer-encoding: gzip\r\ntransfer-encoding: chunked")
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 501"), "{answer}");
    assert_eq!(shop.state().await, before, "nothing changed");
    // Plain chunked is read.
    let answer = raw(
        &shop.t,
        &format!("{}{chunked_body}", head("transfer-encoding: chunked")),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");

    // HTTP/1.1 without Host, or with two: 400. HTTP/1.0 needs none.
    let answer = raw(&shop.t, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("bad_request") && answer.contains("Host"),
        "{answer}"
    );
    let answer = raw(
        &shop.t,
        "GET /healthz HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw(&shop.t, "GET /healthz HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_deal_is_409_deal_paused_for_buy_and_hold_without_retry_after_and_pays_a_hold_in_time()
 {
    let shop = shop().await;
    let hold = shop
        .t
        .hold(&shop.shopper, &shop.deal, 1, "h1")
        .await
        .ok(201);
    let path = format!("/v1/deals/{}", shop.deal);
    shop.t
        .patch(&path, &shop.merchant.token, &json!({ "paused": true }))
        .await
        .ok(200);
    let before = shop.state().await;
    let answers = [
        shop.t.buy(&shop.shopper, &shop.deal, 1, "b1").await,
        shop.t.hold(&shop.shopper, &shop.deal, 1, "h2").await,
    ];
    for answer in answers {
        answer.refused(409, "deal_paused");
        assert!(
            !answer.headers.contains_key("retry-after"),
            "{:?}",
            answer.headers
        );
    }
    assert_eq!(shop.state().await, before);
    // A pause stops new sales, not a hold already given (README).
    let order = shop
        .t
        .call(
            Method::POST,
            &format!("/v1/holds/{}/payment", hold["id"].as_str().unwrap()),
            Some(&shop.shopper.token),
            None,
            None,
        )
        .await
        .ok(201);
    assert_eq!(order["late"], false);
}

/// Generated clients send micro- or nanoseconds: kept to the millisecond,
/// truncated toward the past, on create and on change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_finer_than_a_millisecond_are_truncated_to_it() {
    let shop = shop().await;
    let now = at(3600);
    let fine = now.replace('Z', ".123456789Z");
    let kept = now.replace('Z', ".123Z");
    let mut body = deal_body("Phone Y", "5.00");
    body["starts_at"] = json!(fine);
    body["ends_at"] = json!(at(7200).replace('Z', ".9999+00:00"));
    let deal = shop.t.deal_with(&shop.merchant, body).await.ok(201);
    assert_eq!(deal["starts_at"], kept);
    assert_eq!(deal["ends_at"], at(7200).replace('Z', ".999Z"));
    let path = format!("/v1/deals/{}", shop.deal);
    let changed = shop
        .t
        .patch(&path, &shop.merchant.token, &json!({ "ends_at": fine }))
        .await
        .ok(200);
    assert_eq!(changed["ends_at"], kept);
    // A time that is not RFC 3339 is still refused, naming the field.
    let answer = shop
        .t
        .patch(
            &path,
            &shop.merchant.token,
            &json!({ "ends_at": "2025-06-18 12:00" }),
        )
        .await;
    answer.refused(422, "invalid");
    assert!(answer.text.contains("ends_at"), "{}", answer.text);
}

/// How a test sends an endpoint that takes no field its body.
#[derive(Debug, Clone, Copy)]
enum Sent {
    /// No body and no `Content-Length` (what `curl -X POST` sends).
    Nothing,
    /// These bytes, with `Content-Length`.
    Bytes(&'static str),
}

/// Every way an endpoint named by its path alone may be sent its body.
const ACCEPTED: [Sent; 5] = [
    Sent::Nothing,
    Sent::Bytes(""),
    Sent::Bytes(" \r\n\t"),
    Sent::Bytes("{}"),
    Sent::Bytes(" { }\n"),
];

impl Shop {
    /// `method path` as the shop's shopper, its body sent as `sent`; the
    /// answer's status.
    async fn send_bodyless(&self, method: &Method, path: &str, sent: Sent) -> u16 {
        match sent {
            Sent::Bytes(body) => {
                self.send(method.clone(), path, &self.shopper.token, body)
                    .await
                    .status
            }
            Sent::Nothing => {
                let answer = raw(
                    &self.t,
                    &format!(
                        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
                        self.shopper.token
                    ),
                )
                .await;
                answer
                    .split(' ')
                    .nth(1)
                    .and_then(|status| status.parse().ok())
                    .unwrap_or_else(|| panic!("{method} {path}: no status in {answer}"))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_named_by_its_path_takes_no_body_or_an_empty_object_and_nothing_else() {
    let shop = shop().await;
    let upcoming = shop
        .t
        .deal_with(
            &shop.merchant,
            json!({
                "title": "Phone Z", "price": "1.00", "stock": 5,
                "starts_at": at(3600), "ends_at": at(7200), "requires_registration": true,
            }),
        )
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cheap = shop
        .t
        .deal_with(
            &shop.merchant,
            json!({
                "title": "Cable", "price": "1.00", "stock": 20, "per_user_limit": 20,
                "starts_at": at(-60), "ends_at": at(3600),
            }),
        )
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let order = an_order(&shop).await;
    let hold = |key: String| {
        let shop = &shop;
        let cheap = &cheap;
        async move {
            let hold = shop.t.hold(&shop.shopper, cheap, 1, &key).await.ok(201);
            hold["id"].as_str().unwrap().to_owned()
        }
    };
    let refused_hold = hold("refused".to_owned()).await;
    let registration = format!("/v1/deals/{upcoming}/registrations");
    let share = format!("/v1/orders/{order}/share");
    let endpoints = [
        (Method::POST, registration.clone()),
        (Method::POST, format!("/v1/holds/{refused_hold}/payment")),
        (Method::DELETE, format!("/v1/holds/{refused_hold}")),
        (Method::POST, share.clone()),
    ];
    // What a refusal must not change: registrations, shares, the held and
    // sold units of the hold's deal, the wallet.
    let state = || async {
        let upcoming = shop.t.get_deal(&upcoming).await;
        let cheap = shop.t.get_deal(&cheap).await;
        let sold = shop.t.get_deal(&shop.deal).await;
        json!([
            upcoming["registrations"],
            cheap["held"],
            cheap["sold"],
            sold["shares"],
            shop.t.wallet(&shop.shopper).await,
        ])
    };
    let before = state().await;
    assert_eq!(before[1], 1, "the hold is held: {before}");
    let too_large = format!(r#"{{"pad": "{}"}}"#, "x".repeat(20_000));
    for (method, path) in &endpoints {
        for body in [
            "[1]",
            "[]",
            "5",
            r#""x""#,
            "null",
            "{",
            "{} x",
            "quantity=1",
        ] {
            let answer = shop
                .send(method.clone(), path, &shop.shopper.token, body)
                .await;
            answer.refused(400, "malformed_json");
        }
        for (body, field) in [
            (r#"{"quantity": 1}"#, "quantity"),
            (r#"{"reason": null}"#, "reason"),
            (r#"{"x-unknown": {}}"#, "x-unknown"),
        ] {
            let answer = shop
                .send(method.clone(), path, &shop.shopper.token, body)
                .await;
            answer.refused(422, "invalid");
            assert!(
                answer.text.contains(field),
                "{method} {path}: {}",
                answer.text
            );
        }
        shop.send(method.clone(), path, &shop.shopper.token, &too_large)
            .await
            .refused(413, "payload_too_large");
    }
    assert_eq!(state().await, before, "a refusal changed something");

    // Every accepted form works: registering and sharing once, then again
    // (idempotent), paying and releasing a fresh hold each time.
    for (index, sent) in ACCEPTED.into_iter().enumerate() {
        let again = if index == 0 { 201 } else { 200 };
        for path in [&registration, &share] {
            let status = shop.send_bodyless(&Method::POST, path, sent).await;
            assert_eq!(status, again, "POST {path} with {sent:?}");
        }
        let paid = hold(format!("pay-{index}")).await;
        let path = format!("/v1/holds/{paid}/payment");
        let status = shop.send_bodyless(&Method::POST, &path, sent).await;
        assert_eq!(status, 201, "POST {path} with {sent:?}");
        let released = hold(format!("release-{index}")).await;
        let path = format!("/v1/holds/{released}");
        let status = shop.send_bodyless(&Method::DELETE, &path, sent).await;
        assert_eq!(status, 200, "DELETE {path} with {sent:?}");
    }
    let after = state().await;
    assert_eq!(after[0], 1, "one registration: {after}");
    assert_eq!(after[1], 1, "only the refused hold is held: {after}");
    assert_eq!(
        after[2],
        ACCEPTED.len(),
        "one unit sold per payment: {after}"
    );
    assert_eq!(after[3], 1, "one share: {after}");
    shop.t.check_invariants();
}

/// `null` is a value of the wrong type, not an absent field: an optional
/// field sent as `null` is `422 invalid` naming it, and nothing changes
/// (a PATCH's other fields are not applied either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_in_an_optional_field_is_refused_naming_it() {
    let shop = shop().await;
    let before = shop.state().await;
    for field in [
        "per_user_limit",
        "requires_registration",
        "hold_seconds",
        "allocation",
    ] {
        let mut body = deal_body("Phone N", "5.00");
        body[field] = Value::Null;
        let answer = shop.t.deal_with(&shop.merchant, body).await;
        answer.refused(422, "invalid");
        assert!(answer.text.contains(field), "{field}: {}", answer.text);
    }
    let path = format!("/v1/deals/{}", shop.deal);
    for field in ["add_stock", "ends_at", "paused", "allocation"] {
        let mut body = json!({ "add_stock": 1, "paused": true });
        body[field] = Value::Null;
        let answer = shop.t.patch(&path, &shop.merchant.token, &body).await;
        answer.refused(422, "invalid");
        assert!(answer.text.contains(field), "{field}: {}", answer.text);
    }
    assert_eq!(shop.state().await, before);
}
