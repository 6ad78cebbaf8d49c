//! Bad input gets the contract's code, changes nothing, and the server
//! keeps serving.

use flashsale_engine::{MerchantId, ShopperId};
use flashsale_gateway::{Caller, NO_EPOCH, Signer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ADMIN, Reply, TestServer, expired_token, now_seconds, reply, start};

async fn send(
    t: &TestServer,
    path: &str,
    token: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Reply {
    let mut request = t
        .client
        .post(format!("{}{path}", t.url))
        .header("content-type", "application/json")
        .header("idempotency-key", "k")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    reply(request.send().await.expect("an answer")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_wrongly_typed_incomplete_and_oversized_bodies() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "10.00", 10, 5).await;
    let shopper = t.shopper("Li", "100").await;
    let buy = format!("/v1/deals/{deal}/orders");
    let token = Some(shopper.token.as_str());

    for garbage in [
        "{\"quantity\": 1",
        "quantity=1",
        "",
        "[1,",
        "[]",
        "[1]",
        "1",
        "\"quantity\"",
    ] {
        send(&t, &buy, token, garbage)
            .await
            .refused(400, "malformed_json");
    }
    for wrong in [
        "{\"quantity\": \"one\"}",
        "{\"quantity\": -1}",
        "{\"quantity\": 1.5}",
        "{}",
        "{\"quantity\": null}",
        "{\"quantity\": 99999999999}",
        "{\"quantity\": 4294967297}",
    ] {
        let answer = send(&t, &buy, token, wrong).await;
        answer.refused(422, "invalid");
        assert!(answer.text.contains("quantity"), "{}", answer.text);
    }
    let missing = send(&t, "/v1/deals", Some(&merchant.token), "{\"title\": \"x\"}").await;
    missing.refused(422, "invalid");
    assert!(missing.text.contains("price"), "{}", missing.text);

    // Over the 16 KiB limit, declared with Content-Length.
    let big = format!("{{\"quantity\": 1, \"pad\": \"{}\"}}", "x".repeat(20_000));
    send(&t, &buy, token, big.clone())
        .await
        .refused(413, "payload_too_large");
    // Over the limit, chunked: found while reading.
    let mut stream = TcpStream::connect(t.addr()).await.unwrap();
    let head = format!(
        "POST {buy} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nidempotency-key: c\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        shopper.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..5 {
        let chunk = "y".repeat(4096);
        let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
        if stream.write_all(framed.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    // Nothing changed; the server still serves.
    assert_eq!(t.get_deal(&deal).await["sold"], 0);
    assert_eq!(t.wallet(&shopper).await["available"], "100.00");
    t.buy(&shopper, &deal, 1, "fine").await.ok(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_forged_expired_and_wrong_role_tokens() {
    let t = start().await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "10.00", 10, 5).await;
    let shopper = t.shopper("Li", "100").await;
    let id: ShopperId = shopper.id.parse().unwrap();

    let forger = Signer::new(b"not the server's secret at all!!", ADMIN);
    let issued = flashsale_gateway::Timestamp(now_seconds() * 1000);
    let forged = forger.issue(Caller::Shopper(id), issued, now_seconds() + 3600, NO_EPOCH);
    let tampered = {
        // A valid token for another shopper with this shopper's MAC.
        let other = crate::helpers::signer().issue(
            Caller::Shopper(ShopperId(id.0 + 1)),
            issued,
            now_seconds() + 3600,
            NO_EPOCH,
        );
        let mac = shopper.token.rsplit_once('.').unwrap().1;
        format!("{}.{mac}", other.rsplit_once('.').unwrap().0)
    };
    let expired = expired_token(Caller::Shopper(id));
    for bad in [
        forged.as_str(),
        tampered.as_str(),
        expired.as_str(),
        "nonsense",
        "Bearer",
    ] {
        t.buy(
            &crate::helpers::Account {
                id: shopper.id.clone(),
                token: bad.into(),
            },
            &deal,
            1,
            "k",
        )
        .await
        .refused(401, "unauthorized");
    }
    t.get("/v1/wallet", None).await.refused(401, "unauthorized");
    let basic = t
        .client
        .get(format!("{}/v1/wallet", t.url))
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .await
        .unwrap();
    reply(basic).await.refused(401, "unauthorized");
    // An expired merchant token cannot create deals; a wrong admin token
    // cannot create merchants.
    let expired_merchant =
        expired_token(Caller::Merchant(merchant.id.parse::<MerchantId>().unwrap()));
    t.post(
        "/v1/merchants",
        Some("api-tests-admin-tokeN"),
        &serde_json::json!({ "name": "x" }),
    )
    .await
    .refused(401, "unauthorized");
    t.patch(
        &format!("/v1/deals/{deal}"),
        &expired_merchant,
        &serde_json::json!({ "paused": true }),
    )
    .await
    .refused(401, "unauthorized");

    assert_eq!(t.get_deal(&deal).await["sold"], 0);
    assert_eq!(t.get_deal(&deal).await["status"], "live");
    assert_eq!(t.wallet(&shopper).await["available"], "100.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods() {
    let t = start().await;
    t.get("/v1/nothing", None).await.refused(404, "not_found");
    t.get("/v2/deals/d_1", None).await.refused(404, "not_found");
    let wrong = t
        .client
        .put(format!("{}/v1/deals/d_1", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.headers()["allow"], "GET, PATCH");
    reply(wrong).await.refused(405, "method_not_allowed");
    t.get("/healthz", None).await.ok(200);
}
