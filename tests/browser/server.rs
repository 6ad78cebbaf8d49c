//! The server under test: the real `flashsale serve` as a child process, and
//! a small client of HTTP API v1 to set up what a test needs.
//!
//! The server binds `127.0.0.1:0` in a fresh data directory with in-process
//! state (no `REDIS_URL`, no `DATABASE_URL`), rate limits off (every request
//! of a test comes from one address), and a signup credit so a wallet linked
//! from the page can buy at once. It is killed when the [`Server`] drops.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flashsale_testkit::process::{ServeProcess, ServerLog, serve_command};
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// How long the server may take to say where it listens.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one API call of the test's own may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const ADMIN_TOKEN: &str = "browser-tests-admin-token-0123456789abcdef";
/// What every wallet linked from the page starts with, in yuan.
pub const SIGNUP_CREDIT: &str = "5000";

/// A directory of the test's own under `$CARGO_TARGET_TMPDIR`, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(kind: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let name = format!(
            "browser-{kind}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::create_dir_all(&path).expect("the target tmp dir is writable");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory under target/ harms nothing.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A merchant or shopper: its id and bearer token.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub token: String,
}

/// A status and a JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The body, after checking the status; a failure shows the whole answer.
    #[track_caller]
    pub fn expect(self, status: StatusCode, what: &str) -> Value {
        assert_eq!(self.status, status, "{what}: unexpected answer {self:?}");
        self.body
    }
}

/// A running `flashsale serve`.
pub struct Server {
    /// Killed when the server drops.
    _process: ServeProcess,
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
    client: Client<HttpConnector, Full<Bytes>>,
    _data_dir: TempDir,
}

impl Server {
    /// Starts the binary, rate limits off, and waits until it says where it
    /// listens.
    pub fn start() -> Server {
        Server::start_with_env(&[])
    }

    /// [`Server::start`] with environment variables `env` set last (so they
    /// can turn a rate limit back on).
    pub fn start_with_env(env: &[(&str, &str)]) -> Server {
        let data_dir = TempDir::new("data");
        let mut command = serve_command(
            env!("CARGO_BIN_EXE_flashsale"),
            data_dir.path(),
            ADMIN_TOKEN,
        );
        command
            .args(["--signup-credit", SIGNUP_CREDIT])
            .env("FLASHSALE_RATE_LIMIT_SHOPPER", "0")
            .env("FLASHSALE_RATE_LIMIT_ADDRESS", "0")
            .envs(env.iter().copied());
        // The server's output goes to the test's output, shown on failure.
        let process =
            ServeProcess::start(command, "server", ServerLog::Forward, true, STARTUP_TIMEOUT);
        let client = Client::builder(TokioExecutor::new()).build_http();
        Server {
            url: process.url.clone(),
            _process: process,
            client,
            _data_dir: data_dir,
        }
    }

    /// `GET path` as bytes (an image): its status and body.
    pub async fn get_bytes(&self, path: &str) -> (StatusCode, Bytes) {
        let request = Request::builder()
            .uri(format!("{}{path}", self.url))
            .body(Full::new(Bytes::new()))
            .expect("a well-formed request");
        self.send(request, &format!("GET {path}")).await
    }

    /// Sends `request` (`what` names it in a failure): status and body,
    /// within [`REQUEST_TIMEOUT`].
    async fn send(&self, request: Request<Full<Bytes>>, what: &str) -> (StatusCode, Bytes) {
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{what} took over {REQUEST_TIMEOUT:?}"))
            .unwrap_or_else(|error| panic!("{what} failed: {error}"))
    }

    /// One API call. `token` is sent as `Authorization: Bearer`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).expect("a well-formed request");
        let (status, bytes) = self.send(request, &format!("{method} {path}")).await;
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// `POST /v1/merchants` as the admin.
    pub async fn create_merchant(&self, name: &str) -> Account {
        let body = self
            .call(
                Method::POST,
                "/v1/merchants",
                Some(ADMIN_TOKEN),
                Some(json!({ "name": name })),
                &[],
            )
            .await
            .expect(StatusCode::CREATED, "create a merchant");
        account(&body)
    }

    /// `POST /v1/admin/shoppers`: `count` shoppers, each with 5000.00.
    pub async fn create_shoppers(&self, count: usize) -> Vec<Account> {
        let body = self
            .call(
                Method::POST,
                "/v1/admin/shoppers",
                Some(ADMIN_TOKEN),
                Some(json!({ "count": count, "credit": "5000.00" })),
                &[],
            )
            .await
            .expect(StatusCode::CREATED, "create shoppers");
        let shoppers: Vec<Account> = body["shoppers"]
            .as_array()
            .expect("`shoppers` is an array")
            .iter()
            .map(account)
            .collect();
        assert_eq!(shoppers.len(), count, "bulk shoppers: {body}");
        shoppers
    }

    /// `POST /v1/deals`: a deal live since a minute ago for an hour; its id.
    pub async fn create_deal(
        &self,
        merchant: &Account,
        title: &str,
        price: &str,
        stock: u64,
    ) -> String {
        self.create_deal_starting(merchant, title, price, stock, -60)
            .await
    }

    /// `POST /v1/deals`: a deal that starts `starts_in_seconds` from now
    /// (negative: already live) and ends an hour after; its id.
    pub async fn create_deal_starting(
        &self,
        merchant: &Account,
        title: &str,
        price: &str,
        stock: u64,
        starts_in_seconds: i64,
    ) -> String {
        self.create_deal_starting_with(merchant, title, price, stock, starts_in_seconds, json!({}))
            .await
    }

    /// [`Server::create_deal_starting`] with `extra` fields on top (e.g.
    /// `{"allocation": "raffle"}`).
    pub async fn create_deal_starting_with(
        &self,
        merchant: &Account,
        title: &str,
        price: &str,
        stock: u64,
        starts_in_seconds: i64,
        extra: Value,
    ) -> String {
        let mut deal = json!({
            "title": title,
            "price": price,
            "stock": stock,
            "per_user_limit": 1,
            "starts_at": rfc3339_from_now(starts_in_seconds),
            "ends_at": rfc3339_from_now(starts_in_seconds.max(0) + 3600),
        });
        if let (Some(deal), Some(extra)) = (deal.as_object_mut(), extra.as_object()) {
            deal.extend(extra.clone());
        }
        let body = self
            .call(
                Method::POST,
                "/v1/deals",
                Some(&merchant.token),
                Some(deal),
                &[],
            )
            .await
            .expect(StatusCode::CREATED, "create a deal");
        string(&body, "id")
    }

    /// A one-tap buy of one unit with a fresh `Idempotency-Key`.
    pub async fn buy(&self, shopper: &Account, deal_id: &str, key: &str) -> Answer {
        self.call(
            Method::POST,
            &format!("/v1/deals/{deal_id}/orders"),
            Some(&shopper.token),
            Some(json!({ "quantity": 1 })),
            &[("Idempotency-Key", key)],
        )
        .await
    }

    /// The first page of a deal's orders, as its merchant sees them.
    pub async fn orders(&self, merchant: &Account, deal_id: &str) -> Vec<Value> {
        let body = self
            .call(
                Method::GET,
                &format!("/v1/orders?deal_id={deal_id}&limit=100"),
                Some(&merchant.token),
                None,
                &[],
            )
            .await
            .expect(StatusCode::OK, "list a deal's orders");
        body["orders"]
            .as_array()
            .expect("`orders` is an array")
            .clone()
    }
}

fn account(body: &Value) -> Account {
    Account {
        id: string(body, "id"),
        token: string(body, "token"),
    }
}

#[track_caller]
fn string(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is a string in {body}"))
        .to_owned()
}

pub use flashsale_testkit::rfc3339_from_now;
