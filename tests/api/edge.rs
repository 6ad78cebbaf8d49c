//! Behind a load balancer and across origins: `--trusted-proxies` (whose
//! forwarding headers name the client the signup limit counts) and
//! `--cors-origins` (which storefront origins may call from a browser;
//! the browser's own enforcement is tested in tests/browser/).

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestServer, start_with};
use flashsale_testkit::client::{Reply, client, reply};

/// A signup sent with `headers`.
async fn signup(t: &TestServer, headers: &[(&str, &str)]) -> Reply {
    let mut request = client()
        .post(format!("http://{}/v1/shoppers", t.addr()))
        .json(&json!({ "name": "Li" }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    reply(request.send().await.expect("an answer")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_signup_limit_counts_each_client() {
    let t = start_with(|config| {
        config.rate_limit_address = 2;
        config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let first = [("x-forwarded-for", "203.0.113.1")];
    signup(&t, &first).await.ok(201);
    signup(&t, &first).await.ok(201);
    signup(&t, &first).await.refused(429, "rate_limited");
    // Another client behind the same proxy has its own allowance, whether
    // named by X-Forwarded-For or by Forwarded (which wins over it).
    signup(&t, &[("x-forwarded-for", "203.0.113.2")])
        .await
        .ok(201);
    let forwarded = [
        ("forwarded", "for=\"203.0.113.3:5000\";proto=https"),
        ("x-forwarded-for", "203.0.113.1"),
    ];
    signup(&t, &forwarded).await.ok(201);
    signup(&t, &forwarded).await.ok(201);
    signup(&t, &forwarded).await.refused(429, "rate_limited");
    // The client is the rightmost address that is not a trusted proxy: an
    // address the client itself prepended changes nothing.
    let prepended = [("x-forwarded-for", "198.51.100.9, 203.0.113.1, 127.0.0.5")];
    signup(&t, &prepended).await.refused(429, "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_an_untrusted_peer_forwarding_headers_change_nothing() {
    let t = start_with(|config| {
        config.rate_limit_address = 2;
        config.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    signup(&t, &[("x-forwarded-for", "203.0.113.1")])
        .await
        .ok(201);
    signup(&t, &[("forwarded", "for=203.0.113.2")])
        .await
        .ok(201);
    // Both counted against the connection's own address.
    signup(&t, &[("x-forwarded-for", "203.0.113.3")])
        .await
        .refused(429, "rate_limited");
}

/// A request of `method` to `path` from a page of `origin`.
async fn from_origin(t: &TestServer, method: Method, path: &str, origin: &str) -> Reply {
    let request = client()
        .request(method.clone(), format!("http://{}{path}", t.addr()))
        .header("origin", origin);
    let request = if method == Method::OPTIONS {
        request
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
    } else {
        request
    };
    reply(request.send().await.expect("an answer")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_origins_get_cors_answers_and_others_none() {
    const SHOP: &str = "https://shop.example.com";
    let t = start_with(|config| {
        config.cors_origins = vec![SHOP.parse().unwrap()];
    })
    .await;
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "1.00", 10, 1).await;
    let buy = format!("/v1/deals/{deal}/orders");

    let preflight = from_origin(&t, Method::OPTIONS, &buy, SHOP).await;
    assert_eq!(preflight.status, 204, "{}", preflight.text);
    let header = |reply: &Reply, name: &str| {
        reply
            .headers
            .get(name)
            .map(|value| value.to_str().unwrap_or_default().to_ascii_lowercase())
    };
    assert_eq!(
        header(&preflight, "access-control-allow-origin").as_deref(),
        Some(SHOP)
    );
    let methods = header(&preflight, "access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("post") && methods.contains("patch"),
        "{methods}"
    );
    let allowed = header(&preflight, "access-control-allow-headers").unwrap_or_default();
    for name in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert_eq!(
        header(&preflight, "access-control-max-age").as_deref(),
        Some("600")
    );
    assert_eq!(header(&preflight, "access-control-allow-credentials"), None);

    let card = from_origin(&t, Method::GET, &format!("/v1/deals/{deal}"), SHOP).await;
    assert_eq!(card.status, 200);
    assert_eq!(
        header(&card, "access-control-allow-origin").as_deref(),
        Some(SHOP)
    );
    assert!(header(&card, "vary").unwrap_or_default().contains("origin"));
    let exposed = header(&card, "access-control-expose-headers").unwrap_or_default();
    assert!(exposed.contains("retry-after"), "{exposed}");

    for other in ["https://evil.example.com", "http://shop.example.com"] {
        let preflight = from_origin(&t, Method::OPTIONS, &buy, other).await;
        assert_eq!(
            header(&preflight, "access-control-allow-origin"),
            None,
            "{other}"
        );
        let card = from_origin(&t, Method::GET, &format!("/v1/deals/{deal}"), other).await;
        assert_eq!(card.status, 200);
        assert_eq!(
            header(&card, "access-control-allow-origin"),
            None,
            "{other}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cors_origins_options_is_not_allowed() {
    let t = start_with(|_| {}).await;
    let answer = from_origin(&t, Method::OPTIONS, "/v1/feed", "https://shop.example.com").await;
    answer.refused(405, "method_not_allowed");
    assert!(answer.headers.get("access-control-allow-origin").is_none());
}
