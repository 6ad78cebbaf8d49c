//! A client of HTTP API v1 for the end-to-end tests: one call that returns
//! status, headers and JSON ([`Api::call`] → [`Reply`]), and the few calls
//! every test makes to set a sale up: a merchant, a deal, shoppers, a
//! credit, a buy (and a hold).
//!
//! It assumes nothing of the server but its URL and admin token, so it
//! serves an in-process server ([`crate::server::TestServer`]) and a
//! `flashsale serve` child ([`crate::process`]) alike.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// How long one call of a test may take, unless its client says otherwise.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A reqwest client for loopback: no proxy, calls bounded by [`CALL_TIMEOUT`].
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(CALL_TIMEOUT)
        .build()
        .expect("a client")
}

/// A status, headers and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The answer's headers.
    pub headers: HeaderMap,
    /// The body as JSON, `Null` when it is not JSON.
    pub body: Value,
    /// The body as text.
    pub text: String,
}

impl Reply {
    /// The contract's error code, or "" for a success.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn ok(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text);
        self.body
    }

    /// Asserts the status and error code of a refusal, and that a 401
    /// names its scheme (`WWW-Authenticate: Bearer`, RFC 6750 §3).
    #[track_caller]
    pub fn refused(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "unexpected answer: {}",
            self.text
        );
        assert!(
            self.body["error"]["message"].is_string(),
            "no message: {}",
            self.text
        );
        if status == 401 {
            assert_eq!(
                self.headers
                    .get("www-authenticate")
                    .and_then(|value| value.to_str().ok()),
                Some("Bearer"),
                "a 401 without WWW-Authenticate: Bearer"
            );
        }
    }
}

/// Reads a response into a [`Reply`].
pub async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// A merchant or shopper and its token.
#[derive(Debug, Clone)]
pub struct Account {
    /// Its id (`m_1`, `s_2a`).
    pub id: String,
    /// Its bearer token.
    pub token: String,
}

impl Account {
    /// The account an answer describes (its `id` and `token`).
    #[track_caller]
    pub fn from_json(body: &Value) -> Account {
        Account {
            id: body["id"].as_str().expect("an id").to_owned(),
            token: body["token"].as_str().expect("a token").to_owned(),
        }
    }
}

/// A server's API as a test uses it: its URL, its admin token and a client.
#[derive(Debug, Clone)]
pub struct Api {
    /// The client every call goes through.
    pub client: reqwest::Client,
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
    /// The server's admin token.
    pub admin: String,
}

impl Api {
    /// The API at `url` (no trailing slash) with admin token `admin`, through
    /// [`client`].
    pub fn new(url: impl Into<String>, admin: impl Into<String>) -> Api {
        Api {
            client: client(),
            url: url.into(),
            admin: admin.into(),
        }
    }

    /// One call: `token` as `Authorization: Bearer`, `body` as JSON,
    /// `idempotency_key` as `Idempotency-Key`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("the server answers");
        reply(response).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(Method::GET, path, token, None, None).await
    }

    /// `POST path` with `body`.
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.call(Method::POST, path, token, Some(body), None).await
    }

    /// `PATCH path` with `body`.
    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.call(Method::PATCH, path, Some(token), Some(body), None)
            .await
    }

    /// A new merchant, made by the admin.
    pub async fn merchant(&self, name: &str) -> Account {
        let body = self
            .post("/v1/merchants", Some(&self.admin), &json!({ "name": name }))
            .await
            .ok(201);
        Account::from_json(&body)
    }

    /// A shopper whose wallet holds `credit` (none when "0").
    pub async fn shopper(&self, name: &str, credit: &str) -> Account {
        let body = self
            .post("/v1/shoppers", None, &json!({ "name": name }))
            .await
            .ok(201);
        let shopper = Account::from_json(&body);
        if credit != "0" {
            self.credit(&shopper, credit, &format!("initial-{}", shopper.id))
                .await
                .ok(201);
        }
        shopper
    }

    /// `count` shoppers with `credit` each, through the admin's bulk call.
    pub async fn bulk_shoppers(&self, count: usize, credit: &str) -> Vec<Account> {
        let bulk = self
            .post(
                "/v1/admin/shoppers",
                Some(&self.admin),
                &json!({ "count": count, "credit": credit }),
            )
            .await
            .ok(201);
        bulk["shoppers"]
            .as_array()
            .expect("shoppers")
            .iter()
            .map(Account::from_json)
            .collect()
    }

    /// The admin credits `amount` to `shopper`'s wallet under `reference`.
    pub async fn credit(&self, shopper: &Account, amount: &str, reference: &str) -> Reply {
        self.post(
            &format!("/v1/wallets/{}/credits", shopper.id),
            Some(&self.admin),
            &json!({ "amount": amount, "reference": reference }),
        )
        .await
    }

    /// A live deal (since a minute ago, for an hour) of `stock` units at
    /// `price`, `per_user_limit` each: its id.
    pub async fn deal(
        &self,
        merchant: &Account,
        price: &str,
        stock: u64,
        per_user_limit: u32,
    ) -> String {
        let body = self
            .deal_with(
                merchant,
                json!({
                    "title": "Phone X",
                    "price": price,
                    "stock": stock,
                    "per_user_limit": per_user_limit,
                    "starts_at": crate::rfc3339_from_now(-60),
                    "ends_at": crate::rfc3339_from_now(3600),
                }),
            )
            .await
            .ok(201);
        body["id"].as_str().expect("a deal id").to_owned()
    }

    /// `POST /v1/deals` with `body` as `merchant`.
    pub async fn deal_with(&self, merchant: &Account, body: Value) -> Reply {
        self.post("/v1/deals", Some(&merchant.token), &body).await
    }

    /// `POST /v1/deals/{deal}/orders` for `quantity` under `key`.
    pub async fn buy(&self, shopper: &Account, deal: &str, quantity: u32, key: &str) -> Reply {
        self.call(
            Method::POST,
            &format!("/v1/deals/{deal}/orders"),
            Some(&shopper.token),
            Some(&json!({ "quantity": quantity })),
            Some(key),
        )
        .await
    }

    /// `POST /v1/deals/{deal}/holds` for `quantity` under `key`.
    pub async fn hold(&self, shopper: &Account, deal: &str, quantity: u32, key: &str) -> Reply {
        self.call(
            Method::POST,
            &format!("/v1/deals/{deal}/holds"),
            Some(&shopper.token),
            Some(&json!({ "quantity": quantity })),
            Some(key),
        )
        .await
    }

    /// `POST /v1/{merchants|shoppers}/{id}/tokens` as the admin (the
    /// collection from the id's prefix), with `body` if given.
    pub async fn issue_token(&self, id: &str, body: Option<&Value>) -> Reply {
        let path = format!("{}/tokens", account_path(id));
        self.call(Method::POST, &path, Some(&self.admin), body, None)
            .await
    }

    /// `DELETE /v1/{merchants|shoppers}/{id}/tokens` as the admin.
    pub async fn revoke_tokens(&self, id: &str) -> Reply {
        let path = format!("{}/tokens", account_path(id));
        self.call(Method::DELETE, &path, Some(&self.admin), None, None)
            .await
    }

    /// `shopper`'s wallet.
    pub async fn wallet(&self, shopper: &Account) -> Value {
        self.get("/v1/wallet", Some(&shopper.token)).await.ok(200)
    }

    /// A deal as anyone sees it.
    pub async fn get_deal(&self, deal: &str) -> Value {
        self.get(&format!("/v1/deals/{deal}"), None).await.ok(200)
    }
}

/// `/v1/merchants/{id}` for a merchant's id (`m_…`), else `/v1/shoppers/{id}`.
fn account_path(id: &str) -> String {
    if id.starts_with("m_") {
        format!("/v1/merchants/{id}")
    } else {
        format!("/v1/shoppers/{id}")
    }
}
