//! Real `flashsale serve` processes in multi-node mode, and the Redis they
//! share: start, call over HTTP, kill.
//!
//! Each test gets its own key namespace (`--redis-namespace`), so tests run
//! side by side on one Redis and never see each other's deals. A namespace's
//! keys are deleted when its [`Deployment`] is dropped.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use flashsale_testkit::process::{ServeProcess, ServerLog, serve_command};
use serde_json::{Value, json};

/// The admin token and token secret every node of a test deployment shares.
pub const ADMIN_TOKEN: &str = "redis-test-admin-token";
const SECRET: &str = "redis-test-secret-0123456789";
/// How long a node may take to start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of one HTTP call in a test.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The flags that point a node at `redis`: `--redis-url` or
/// `--redis-cluster`.
#[derive(Clone)]
pub enum Target {
    Single(String),
    Cluster(String),
}

impl Target {
    pub fn flags(&self) -> [&str; 2] {
        match self {
            Target::Single(url) => ["--redis-url", url],
            Target::Cluster(urls) => ["--redis-cluster", urls],
        }
    }

    /// `redis-cli` with `args` against the target (see [`Target::cli`]):
    /// its standard output, empty when it could not run.
    pub fn run_cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(self.cli())
            .args(args)
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default()
    }

    /// A `redis-cli` argument list reaching one server of the target (the
    /// first seed of a Cluster, with `-c`).
    pub fn cli(&self) -> Vec<String> {
        let (url, cluster) = match self {
            Target::Single(url) => (url.as_str(), false),
            Target::Cluster(urls) => (urls.split(',').next().unwrap_or(""), true),
        };
        let mut args = vec!["-u".to_owned(), url.to_owned()];
        if cluster {
            args.push("-c".to_owned());
        }
        args
    }
}

/// A namespace of one test on a Redis, and the nodes serving it.
pub struct Deployment {
    pub target: Target,
    pub namespace: String,
    pub shards: u32,
    /// The token secret its nodes are given (`--secret`).
    pub secret: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Deployment {
    pub fn new(target: Target, shards: u32) -> Deployment {
        let namespace = format!(
            "t{}x{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_millis() % 1_000_000)
        );
        Deployment {
            target,
            namespace,
            shards,
            secret: SECRET.to_owned(),
        }
    }

    /// Starts one more node of this deployment (see [`Deployment::node_with`]).
    pub fn node(&self) -> Node {
        self.node_with(&[])
    }

    /// Starts one more node with extra flags. It serves even a Redis that
    /// persists nothing (`--allow-volatile-redis`): the Redis of `.ci/run`
    /// and the test Cluster keep nothing on disk.
    pub fn node_with(&self, extra: &[&str]) -> Node {
        let mut args = vec!["--allow-volatile-redis"];
        args.extend(extra);
        self.node_strict(&args)
    }

    /// Starts one more node with extra flags and nothing else: without
    /// `--allow-volatile-redis` it refuses a Redis that persists nothing.
    pub fn node_strict(&self, extra: &[&str]) -> Node {
        spawn(&self.args(extra))
    }

    /// Runs a node that must refuse to start: its stderr, once it exited
    /// with a failure within [`STARTUP_TIMEOUT`].
    pub fn refused_start(&self, extra: &[&str]) -> String {
        let data_dir = tempfile::tempdir().expect("a temporary data dir");
        let mut child = serve(data_dir.path(), &self.args(extra))
            .stdout(Stdio::null())
            .spawn()
            .expect("the flashsale binary starts");
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("the node can be waited for") {
                break status;
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the node did not refuse to start within {STARTUP_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        assert!(!status.success(), "the node exited successfully: {stderr}");
        stderr
    }

    /// The flags of a node of this deployment, then `extra`.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = self.target.flags().map(str::to_owned).to_vec();
        args.extend(
            [
                "--redis-namespace",
                &self.namespace,
                "--redis-shards",
                &self.shards.to_string(),
                "--secret",
                &self.secret,
            ]
            .map(str::to_owned),
        );
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    }
}

/// A redis-server of the test's own, on a free port with its files in a
/// temporary directory, killed by pid when dropped.
pub struct PrivateRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    settings: Vec<String>,
    pub url: String,
}

/// How long a private redis-server may take to answer `PING`, replaying
/// its append-only file included.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(20);

impl PrivateRedis {
    /// One that persists nothing (`appendonly no`, no snapshots).
    pub fn volatile() -> PrivateRedis {
        PrivateRedis::start(&["--appendonly", "no"])
    }

    /// One that fsyncs its append-only file before every reply.
    pub fn aof_always() -> PrivateRedis {
        PrivateRedis::start(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// One started with `settings` (never RDB snapshots), answering `PING`.
    pub fn start(settings: &[&str]) -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let settings: Vec<String> = settings.iter().map(|arg| (*arg).to_owned()).collect();
        let child = launch(port, dir.path(), &settings);
        let redis = PrivateRedis {
            child,
            port,
            dir,
            settings,
            url: format!("redis://127.0.0.1:{port}"),
        };
        redis.wait_until_it_answers();
        redis
    }

    fn wait_until_it_answers(&self) {
        let started = std::time::Instant::now();
        while !self.cli(&["PING"]).contains("PONG") {
            assert!(
                started.elapsed() < REDIS_START_TIMEOUT,
                "redis-server on port {} did not answer within {REDIS_START_TIMEOUT:?}",
                self.port
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis-cli` against this server: its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        Target::Single(self.url.clone()).run_cli(args)
    }

    /// Sends `signal` (`-STOP`, `-CONT`, …) to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// `kill -9`, then a new server on the same port and directory, which
    /// replays whatever its append-only file holds; returns once it answers.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = launch(self.port, self.dir.path(), &self.settings);
        self.wait_until_it_answers();
    }
}

/// `redis-server` on loopback `port`, files in `dir`, with `settings`.
fn launch(port: u16, dir: &std::path::Path, settings: &[String]) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .args(settings)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed where REDIS_URL is set")
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flashsale serve` on a free port with `data_dir`, the test admin token,
/// no rate limits and `args` (`flashsale_testkit::process::serve_command`:
/// none of the environment's stores, nor its
/// `FLASHSALE_ALLOW_VOLATILE_REDIS`, reach it). Its stderr is piped.
fn serve<S: AsRef<std::ffi::OsStr>>(data_dir: &std::path::Path, args: &[S]) -> Command {
    let mut command = serve_command(env!("CARGO_BIN_EXE_flashsale"), data_dir, ADMIN_TOKEN);
    command
        .args(["--rate-limit-shopper", "0", "--rate-limit-address", "0"])
        .args(args)
        .stderr(Stdio::piped());
    command
}

/// Starts `flashsale serve` on a free port with `args`, and waits until it
/// says where it listens; its stderr goes to the test's output as `[node]`.
fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Node {
    let data_dir = tempfile::tempdir().expect("a temporary data dir");
    let process = ServeProcess::start(
        serve(data_dir.path(), args),
        "node",
        ServerLog::Forward,
        false,
        STARTUP_TIMEOUT,
    );
    Node {
        url: process.url.clone(),
        process,
        client: reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .pool_max_idle_per_host(64)
            .build()
            .expect("an HTTP client"),
        _data_dir: data_dir,
    }
}

/// A one-node server (engine and journal, no Redis): the reference the
/// Redis side is compared with.
pub fn one_node() -> Node {
    spawn::<&str>(&[])
}

impl Drop for Deployment {
    /// Deletes the namespace's keys on a single Redis. A Cluster's are left:
    /// the test Cluster is disposable (`scripts/redis-cluster.sh`), and a
    /// script there may not touch keys of many slots.
    fn drop(&mut self) {
        if let Target::Single(url) = &self.target {
            let script =
                "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end";
            let pattern = format!("{}:*", self.namespace);
            let _ = Command::new("redis-cli")
                .args(["-u", url, "EVAL", script, "0", &pattern])
                .output();
        }
    }
}

/// One running node.
pub struct Node {
    process: ServeProcess,
    pub url: String,
    client: reqwest::Client,
    _data_dir: tempfile::TempDir,
}

/// How long a read may keep answering 503 `unavailable` (Redis
/// restarting or failing over, the node reconnecting) before a check of
/// what survived fails: the tests check what is kept, not latency.
pub const READ_THROUGH_UNAVAILABLE_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// A status and a JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The body, after checking the status.
    #[track_caller]
    pub fn ok(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        self.body
    }

    /// The error code of a refusal.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Node {
    /// One call; `None` when the call failed at the HTTP level (the node is
    /// gone, or the call timed out).
    pub async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Option<Answer> {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let text = response.text().await.ok()?;
        Some(Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        })
    }

    #[track_caller]
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        key: Option<&str>,
    ) -> impl Future<Output = Answer> + '_ {
        let location = std::panic::Location::caller();
        let path = path.to_owned();
        let token = token.map(str::to_owned);
        let key = key.map(str::to_owned);
        async move {
            self.try_call(method, &path, token.as_deref(), body, key.as_deref())
                .await
                .unwrap_or_else(|| panic!("{path} failed at the HTTP level ({location})"))
        }
    }

    pub async fn merchant(&self, name: &str) -> String {
        let merchant = self
            .call(
                reqwest::Method::POST,
                "/v1/merchants",
                Some(ADMIN_TOKEN),
                Some(json!({ "name": name })),
                None,
            )
            .await
            .ok(201);
        merchant["token"].as_str().expect("a token").to_owned()
    }

    /// A live deal of `stock` units, `limit` per shopper, at 10.00.
    pub async fn deal(&self, merchant: &str, stock: u64, limit: u32) -> String {
        self.deal_with(merchant, json!({ "stock": stock, "per_user_limit": limit }))
            .await
    }

    /// A live deal at 10.00 with `fields` set on top.
    pub async fn deal_with(&self, merchant: &str, fields: Value) -> String {
        let mut deal = json!({
            "title": "Phone",
            "price": "10.00",
            "stock": 10,
            "starts_at": "2020-01-01T00:00:00Z",
            "ends_at": "2099-01-01T00:00:00Z",
        });
        if let (Some(deal), Some(fields)) = (deal.as_object_mut(), fields.as_object()) {
            deal.extend(fields.clone());
        }
        let deal = self
            .call(
                reqwest::Method::POST,
                "/v1/deals",
                Some(merchant),
                Some(deal),
                None,
            )
            .await
            .ok(201);
        deal["id"].as_str().expect("an id").to_owned()
    }

    /// `count` shoppers, each wallet credited `credit`: (id, token).
    pub async fn shoppers(&self, count: u32, credit: &str) -> Vec<(String, String)> {
        let created = self
            .call(
                reqwest::Method::POST,
                "/v1/admin/shoppers",
                Some(ADMIN_TOKEN),
                Some(json!({ "count": count, "credit": credit })),
                None,
            )
            .await
            .ok(201);
        created["shoppers"]
            .as_array()
            .expect("shoppers")
            .iter()
            .map(|shopper| {
                (
                    shopper["id"].as_str().unwrap_or_default().to_owned(),
                    shopper["token"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// `POST /v1/deals/{deal}/orders` for `quantity` under `key`.
    pub async fn buy(&self, token: &str, deal: &str, quantity: u32, key: &str) -> Option<Answer> {
        self.try_call(
            reqwest::Method::POST,
            &format!("/v1/deals/{deal}/orders"),
            Some(token),
            Some(json!({ "quantity": quantity })),
            Some(key),
        )
        .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call(reqwest::Method::GET, path, token, None, None)
            .await
    }

    /// A read asked again while it answers 503 `unavailable` (Redis did
    /// not answer this call: restarting, failing over, the node
    /// reconnecting), for at most [`READ_THROUGH_UNAVAILABLE_MAX`]; the
    /// last answer otherwise.
    pub async fn get_through_unavailable(&self, path: &str, token: Option<&str>) -> Answer {
        let asked = std::time::Instant::now();
        loop {
            let answer = self.get(path, token).await;
            if answer.status != 503 || asked.elapsed() > READ_THROUGH_UNAVAILABLE_MAX {
                return answer;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Serialises the tests of this binary that measure Redis or compare
/// timing-sensitive answers: held for the test's whole body.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}
