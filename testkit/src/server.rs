//! One flashsale server in the test's own process, on `127.0.0.1:0` with a
//! data directory of its own ([`start`], [`start_with`], [`start_on`]),
//! reached through [`Api`] (a [`TestServer`] derefs to it).
//!
//! Servers are configured explicitly ([`test_config`]): nothing here reads
//! `DATABASE_URL` or `REDIS_URL` from the environment.

use std::ops::Deref;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashsale_gateway::{Caller, Config, NO_EPOCH, RunningServer, Signer};
use tempfile::TempDir;

use crate::client::Api;

/// The token secret every test server uses, so tests can forge and expire
/// tokens with [`signer`].
pub const SECRET: &str = "api-tests-secret-0123456789abcdef";
/// The admin token every test server uses.
pub const ADMIN: &str = "api-tests-admin-token";

/// How long dropping a [`TestServer`] waits for it to stop.
const DROP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// A server and its data directory. Dropping it stops the server and
/// waits for its journal to close before the directory is removed: the
/// final snapshot written while closing would otherwise race the removal
/// and leave the directory behind in the system temporary directory.
pub struct TestServer {
    /// `None` once [`TestServer::shutdown`] took it.
    server: Option<RunningServer>,
    api: Api,
    /// `None` once [`TestServer::shutdown`] handed it back.
    dir: Option<TempDir>,
}

impl Deref for TestServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // Every test that starts one runs on the multi-thread runtime,
            // where a blocking wait inside a worker is allowed.
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

/// The configuration of a test server on `dir`: the test admin token and
/// secret ([`ADMIN`], [`SECRET`]), rate limits off, 5 s shutdown grace.
pub fn test_config(dir: &TempDir) -> Config {
    let mut config = Config::new(dir.path().to_path_buf());
    config.admin_token = Some(ADMIN.into());
    config.secret = Some(SECRET.as_bytes().to_vec());
    config.rate_limit_shopper = 0;
    config.rate_limit_address = 0;
    config.shutdown_grace = Duration::from_secs(5);
    config
}

/// A server on `dir` with `config`, then `adjust` applied to it.
pub async fn start_on(
    dir: TempDir,
    mut config: Config,
    adjust: impl FnOnce(&mut Config),
) -> TestServer {
    adjust(&mut config);
    let server = flashsale_gateway::spawn(config)
        .await
        .expect("the server starts");
    let api = Api::new(server.url(), server.admin_token.clone());
    TestServer {
        server: Some(server),
        api,
        dir: Some(dir),
    }
}

/// A signer with the test secret, to mint forged or expired tokens.
pub fn signer() -> Signer {
    Signer::new(SECRET.as_bytes(), ADMIN)
}

/// Seconds since 1970, now.
pub fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// A token for `caller` that expired a minute ago.
pub fn expired_token(caller: Caller) -> String {
    let issued = flashsale_gateway::Timestamp((now_seconds() - 120) * 1000);
    signer().issue(caller, issued, now_seconds() - 60, NO_EPOCH)
}

impl TestServer {
    fn running(&self) -> &RunningServer {
        // invariant: only `shutdown`, which consumes `self`, takes it.
        self.server.as_ref().expect("the server is running")
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.running().addr
    }

    /// Its API (also reached through `Deref`).
    pub fn api(&self) -> &Api {
        &self.api
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

    /// Asserts the engine's conservation rules hold now.
    #[track_caller]
    pub fn check_invariants(&self) {
        let engine = self.running().engine.as_ref().expect("a one-node server");
        if let Err(broken) = engine.check_invariants() {
            panic!("invariant broken: {broken}");
        }
    }
}
