//! Small helpers: a server per test on `127.0.0.1:0` with its own data
//! directory, a client, and one-line calls that return status and JSON.
//!
//! Servers are configured explicitly ([`Config::new`]): nothing here reads
//! `DATABASE_URL` or `REDIS_URL` from the environment.

use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashsale_gateway::{Caller, Config, NO_EPOCH, RunningServer, Signer};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The token secret every test server uses, so tests can forge and expire
/// tokens with [`signer`].
pub const SECRET: &str = "api-tests-secret-0123456789abcdef";
pub const ADMIN: &str = "api-tests-admin-token";

/// A server and its data directory. Dropping it stops the server and
/// waits for its journal to close before the directory is removed: the
/// final snapshot written while closing would otherwise race the removal
/// and leave the directory behind in the system temporary directory.
pub struct TestServer {
    /// `None` once [`TestServer::shutdown`] took it.
    server: Option<RunningServer>,
    pub client: reqwest::Client,
    pub url: String,
    /// `None` once [`TestServer::shutdown`] handed it back.
    dir: Option<TempDir>,
}

/// How long dropping a [`TestServer`] waits for it to stop.
const DROP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // Every API test runs on the multi-thread runtime, where a
            // blocking wait inside a worker is allowed.
            tokio::task::block_in_place(|| {
                runtime.block_on(async {
                    let _ = tokio::time::timeout(DROP_SHUTDOWN_TIMEOUT, server.shutdown()).await;
                });
            });
        }
    }
}

/// A server with rate limits off.
pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// A server with rate limits off, then `adjust` applied to its config.
pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = test_config(&dir);
    start_on(dir, config, adjust).await
}

pub fn test_config(dir: &TempDir) -> Config {
    let mut config = Config::new(dir.path().to_path_buf());
    config.admin_token = Some(ADMIN.into());
    config.secret = Some(SECRET.as_bytes().to_vec());
    config.rate_limit_shopper = 0;
    config.rate_limit_address = 0;
    config.shutdown_grace = Duration::from_secs(5);
    config
}

pub async fn start_on(
    dir: TempDir,
    mut config: Config,
    adjust: impl FnOnce(&mut Config),
) -> TestServer {
    adjust(&mut config);
    let server = flashsale_gateway::spawn(config)
        .await
        .expect("the server starts");
    let url = server.url();
    TestServer {
        server: Some(server),
        client: client(),
        url,
        dir: Some(dir),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client")
}

/// A signer with the test secret, to mint forged or expired tokens.
pub fn signer() -> Signer {
    Signer::new(SECRET.as_bytes(), ADMIN)
}

pub fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// RFC 3339 UTC, `offset_seconds` from now.
pub fn at(offset_seconds: i64) -> String {
    rfc3339(now_seconds() + offset_seconds)
}

pub use flashsale_testkit::rfc3339;

/// A status, headers and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
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

/// A merchant or shopper and its token.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub token: String,
}

impl TestServer {
    fn running(&self) -> &RunningServer {
        // invariant: only `shutdown`, which consumes `self`, takes it.
        self.server.as_ref().expect("the server is running")
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.running().addr
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.begin_shutdown();
        }
    }

    /// Shuts the server down and waits until its journal is closed;
    /// returns how that went and the data directory, to start again on.
    pub async fn shutdown(mut self) -> (Result<(), flashsale_gateway::Error>, TempDir) {
        let stopped = match self.server.take() {
            Some(server) => server.shutdown().await,
            None => Ok(()),
        };
        let dir = self
            .dir
            .take()
            .expect("the data directory is kept until now");
        (stopped, dir)
    }

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

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(Method::GET, path, token, None, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.call(Method::POST, path, token, Some(body), None).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.call(Method::PATCH, path, Some(token), Some(body), None)
            .await
    }

    pub async fn merchant(&self, name: &str) -> Account {
        let body = self
            .post("/v1/merchants", Some(ADMIN), &json!({ "name": name }))
            .await
            .ok(201);
        account(&body)
    }

    /// A shopper whose wallet holds `credit` (none when "0").
    pub async fn shopper(&self, name: &str, credit: &str) -> Account {
        let body = self
            .post("/v1/shoppers", None, &json!({ "name": name }))
            .await
            .ok(201);
        let shopper = account(&body);
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
                Some(ADMIN),
                &json!({ "count": count, "credit": credit }),
            )
            .await
            .ok(201);
        bulk["shoppers"]
            .as_array()
            .expect("shoppers")
            .iter()
            .map(|shopper| Account {
                id: shopper["id"].as_str().expect("an id").to_owned(),
                token: shopper["token"].as_str().expect("a token").to_owned(),
            })
            .collect()
    }

    pub async fn credit(&self, shopper: &Account, amount: &str, reference: &str) -> Reply {
        self.post(
            &format!("/v1/wallets/{}/credits", shopper.id),
            Some(ADMIN),
            &json!({ "amount": amount, "reference": reference }),
        )
        .await
    }

    /// A live deal of `stock` units at `price`, `per_user_limit` each.
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
                    "starts_at": at(-60),
                    "ends_at": at(3600),
                }),
            )
            .await
            .ok(201);
        body["id"].as_str().expect("a deal id").to_owned()
    }

    pub async fn deal_with(&self, merchant: &Account, body: Value) -> Reply {
        self.post("/v1/deals", Some(&merchant.token), &body).await
    }

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

    pub async fn wallet(&self, shopper: &Account) -> Value {
        self.get("/v1/wallet", Some(&shopper.token)).await.ok(200)
    }

    pub async fn get_deal(&self, deal: &str) -> Value {
        self.get(&format!("/v1/deals/{deal}"), None).await.ok(200)
    }

    /// Asserts the engine's conservation rules hold now.
    #[track_caller]
    pub fn check_invariants(&self) {
        let engine = self.running().engine.as_ref().expect("a one-node server");
        if let Err(broken) = engine.check_invariants() {
            panic!("invariant broken: {broken}");
        }
    }
}

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

fn account(body: &Value) -> Account {
    Account {
        id: body["id"].as_str().expect("an id").to_owned(),
        token: body["token"].as_str().expect("a token").to_owned(),
    }
}

/// A token for `caller` that expired a minute ago.
pub fn expired_token(caller: Caller) -> String {
    signer().issue(caller, now_seconds() - 60, NO_EPOCH)
}

/// Runs `command` (a tool the test drives: bash, schemathesis) to its end
/// with its output captured, no stdin and no proxy for loopback; killed and
/// failing the test when it runs longer than `timeout`.
pub async fn output_within(
    mut command: tokio::process::Command,
    timeout: Duration,
    what: &str,
) -> Output {
    let run = command
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {timeout:?}"))
        .unwrap_or_else(|error| panic!("{what} did not start: {error}"))
}
