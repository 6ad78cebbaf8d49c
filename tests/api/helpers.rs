//! The harness of these tests is `flashsale-testkit`'s: a server per test
//! on `127.0.0.1:0` with its own data directory
//! ([`flashsale_testkit::server`]) and a client whose calls return status
//! and JSON ([`flashsale_testkit::client`]). Here only what is this
//! binary's own: times from now, and running a command-line tool.
//!
//! Servers are configured explicitly (`Config::new`): nothing here reads
//! `DATABASE_URL` or `REDIS_URL` from the environment.

use std::process::{Output, Stdio};
use std::time::Duration;

pub use flashsale_testkit::client::{Account, Reply, client, reply};
pub use flashsale_testkit::rfc3339;
pub use flashsale_testkit::server::{
    ADMIN, TestServer, expired_token, now_seconds, signer, start, start_on, start_with, test_config,
};

/// RFC 3339 UTC, `offset_seconds` from now.
pub fn at(offset_seconds: i64) -> String {
    rfc3339(now_seconds() + offset_seconds)
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
