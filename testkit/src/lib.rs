//! # flashsale-testkit
//!
//! Test-only. Owns one decision every service-dependent test makes the
//! same way: a test that needs something from outside the process (a
//! Postgres server, a browser, a command-line tool) and does not find it either
//! **skips** or **fails**.
//!
//! - On a developer's machine with only Rust installed, `cargo test` must
//!   pass: the test returns early and the process prints one line per
//!   missing service, `skipped: <what> (<how to run it>)`.
//! - Under CI (`CI` set, as `.ci/run` runs) or with
//!   `FLASHSALE_REQUIRE_SERVICES=1`, a missing service is a failure: the
//!   test panics with the same explanation, so a broken CI machine cannot
//!   pass by skipping.
//!
//! It is also the one harness of the end-to-end tests:
//! - [`server`]: a server in the test's process on `127.0.0.1:0` with its
//!   own data directory ([`server::start`], [`server::TestServer`]);
//! - [`process`]: `flashsale serve` as a child process, one server or
//!   several Redis-mode nodes ([`process::serve_command`],
//!   [`process::ServeProcess`]);
//! - [`client`]: HTTP API v1 as a test uses it ([`client::Api`]: merchant,
//!   deal, shoppers, credit, buy; [`client::Reply`], [`client::Account`]);
//! - [`platform`]: a made-up platform's identity provider: test keys, its
//!   JWKS and the JWTs it signs;
//! - [`qr`]: QR codes read back from a PNG (the deals' codes, a browser's
//!   screenshot) with a decoder independent of the server's encoder.
//!
//! It also keeps the one RFC 3339 spelling the end-to-end tests post times
//! in ([`rfc3339`], [`rfc3339_from_now`]): the API takes RFC 3339 and the
//! tests need no date crate for it.
//!
//! A service that is configured but does not answer (a `DATABASE_URL`
//! nobody listens on) is never a skip: the test itself fails when it cannot
//! connect.
//!
//! The skip line is written straight to the process's stderr, not with
//! `eprintln!`: libtest captures the print macros of a passing test and
//! shows them only with `--nocapture`, while a direct write to
//! `std::io::stderr()` always reaches the terminal. Each service's line is
//! printed once per test binary, however many of its tests skip.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

pub mod client;
pub mod platform;
pub mod process;
pub mod qr;
pub mod server;

/// Something a test needs from outside the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// A Postgres server named by `DATABASE_URL`.
    Postgres,
    /// `chromedriver` and `chromium`, for the browser tests.
    Browser,
    /// The `schemathesis` command-line fuzzer (PyPI), for the API fuzz test.
    Schemathesis,
    /// `curl`, for the README walkthrough test.
    Curl,
    /// A Redis server named by `REDIS_URL`, for multi-node mode's tests.
    Redis,
    /// A Redis Cluster whose seeds `REDIS_CLUSTER_URLS` names.
    RedisCluster,
    /// `openapi-python-client` (PyPI), which generates a client from the
    /// served OpenAPI document.
    GeneratedClient,
}

/// How many [`Service`] variants there are: the bound of [`PRINTED`].
const SERVICES: usize = 7;

/// Whether a service's skip line was already printed by this process.
static PRINTED: [AtomicBool; SERVICES] = [const { AtomicBool::new(false) }; SERVICES];

impl Service {
    fn index(self) -> usize {
        self as usize
    }

    /// What is missing, for the skip line.
    fn what(self) -> &'static str {
        match self {
            Service::Postgres => "Postgres tests",
            Service::Browser => "browser tests",
            Service::Schemathesis => "schemathesis API fuzz test",
            Service::Curl => "README walkthrough test",
            Service::Redis => "multi-node (Redis) tests",
            Service::RedisCluster => "multi-node tests on a Redis Cluster",
            Service::GeneratedClient => "generated-client test",
        }
    }

    /// What a developer does to run them.
    fn how(self) -> &'static str {
        match self {
            Service::Postgres => {
                "set DATABASE_URL=postgres://postgres@127.0.0.1:5432/<db> to run; \
                 `bash scripts/postgres.sh --trust-local` starts one"
            }
            Service::Browser => {
                "install chromium and chromium-driver to run: \
                 `apt-get install -y chromium chromium-driver`"
            }
            Service::Schemathesis => {
                "install schemathesis to run: `pip install schemathesis` (.ci/run pins the version)"
            }
            Service::Curl => "install curl to run: `apt-get install -y curl`",
            Service::Redis => {
                "set REDIS_URL=redis://127.0.0.1:6379 to run; `bash scripts/redis.sh` starts one"
            }
            Service::RedisCluster => {
                "set REDIS_CLUSTER_URLS=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003 \
                 to run; `bash scripts/redis-cluster.sh` starts one"
            }
            Service::GeneratedClient => {
                "install openapi-python-client to run: `pip install openapi-python-client` \
                 (.ci/run pins the version)"
            }
        }
    }
}

/// True when a missing service must fail the test: `CI` is set to
/// anything but `""`, `0` or `false` (GitHub Actions and most CI systems
/// set `CI=true`; `.ci/run` runs under one), or `FLASHSALE_REQUIRE_SERVICES=1`.
pub fn services_required() -> bool {
    let variable = |name: &str| std::env::var(name).ok();
    is_set(variable("CI").as_deref()) || is_set(variable("FLASHSALE_REQUIRE_SERVICES").as_deref())
}

/// A flag variable's value means "on": set, and not `""`, `0` or `false`.
fn is_set(value: Option<&str>) -> bool {
    value.is_some_and(|value| {
        let value = value.trim();
        !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
    })
}

/// Reports that `service` is missing (`detail` says what is missing, as
/// "chromedriver is not on $PATH"):
/// panics when services are required ([`services_required`]), else prints
/// the skip line once per process and returns, so the caller returns early.
///
/// # Panics
/// Under CI or `FLASHSALE_REQUIRE_SERVICES=1`, always.
#[track_caller]
pub fn missing(service: Service, detail: &str) {
    let line = format!("{}, {detail} ({})", service.what(), service.how());
    if services_required() {
        panic!("{line}; required because CI or FLASHSALE_REQUIRE_SERVICES=1 is set");
    }
    if !PRINTED[service.index()].swap(true, Ordering::Relaxed) {
        // Straight to fd 2, past libtest's capture (see the crate doc), in
        // one write so that it does not interleave with libtest's lines.
        let line = format!("skipped: {line}\n");
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// The Postgres URL from `DATABASE_URL`, or `None` after [`missing`] said
/// the Postgres tests are skipped.
///
/// # Panics
/// Without `DATABASE_URL` under CI or `FLASHSALE_REQUIRE_SERVICES=1`.
#[track_caller]
pub fn postgres_url() -> Option<String> {
    variable_or_missing("DATABASE_URL", Service::Postgres)
}

/// The Redis URL from `REDIS_URL`, or `None` after [`missing`] said the
/// multi-node tests are skipped.
///
/// # Panics
/// Without `REDIS_URL` under CI or `FLASHSALE_REQUIRE_SERVICES=1`.
#[track_caller]
pub fn redis_url() -> Option<String> {
    variable_or_missing("REDIS_URL", Service::Redis)
}

/// A Redis Cluster's seeds from `REDIS_CLUSTER_URLS` (comma-separated), or
/// `None` after [`missing`] said the Cluster tests are skipped.
///
/// # Panics
/// Without `REDIS_CLUSTER_URLS` under CI or `FLASHSALE_REQUIRE_SERVICES=1`.
#[track_caller]
pub fn redis_cluster_urls() -> Option<String> {
    variable_or_missing("REDIS_CLUSTER_URLS", Service::RedisCluster)
}

/// [`redis_cluster_urls`], split into its seeds (blanks dropped).
///
/// # Panics
/// As [`redis_cluster_urls`].
#[track_caller]
pub fn redis_cluster_seeds() -> Option<Vec<String>> {
    let urls = redis_cluster_urls()?;
    Some(
        urls.split(',')
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty())
            .collect(),
    )
}

#[track_caller]
fn variable_or_missing(variable: &str, service: Service) -> Option<String> {
    match std::env::var(variable) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ => {
            missing(service, &format!("{variable} is not set"));
            None
        }
    }
}

/// The first of `names` found as a file: the path in the environment
/// variable `override_variable` when it is set, else on `$PATH`. `None`
/// when there is none (the caller then calls [`missing`]).
pub fn program(override_variable: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(override_variable) {
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_its_own_printed_flag() {
        let all = [
            Service::Postgres,
            Service::Browser,
            Service::Schemathesis,
            Service::Curl,
            Service::Redis,
            Service::RedisCluster,
            Service::GeneratedClient,
        ];
        assert_eq!(all.len(), SERVICES);
        for (index, service) in all.into_iter().enumerate() {
            assert_eq!(service.index(), index);
            assert!(service.how().contains("to run"), "{service:?}");
        }
    }

    #[test]
    fn ci_and_require_flags_are_on_unless_empty_zero_or_false() {
        for on in ["true", "1", "yes", "TRUE"] {
            assert!(is_set(Some(on)), "{on}");
        }
        for off in [
            None,
            Some(""),
            Some("0"),
            Some("false"),
            Some("False"),
            Some(" "),
        ] {
            assert!(!is_set(off), "{off:?}");
        }
    }

    #[test]
    fn a_program_is_found_on_the_path_and_an_absent_one_is_not() {
        assert!(program("FLASHSALE_TESTKIT_NO_SUCH_VARIABLE", &["sh"]).is_some());
        assert!(
            program(
                "FLASHSALE_TESTKIT_NO_SUCH_VARIABLE",
                &["no-such-program-x9"]
            )
            .is_none()
        );
    }
}

/// Now plus `offset_seconds`, as RFC 3339 UTC (`2026-11-21T12:00:00Z`).
pub fn rfc3339_from_now(offset_seconds: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    rfc3339(i64::try_from(now).unwrap_or(i64::MAX / 2) + offset_seconds)
}

/// Seconds since 1970 as RFC 3339 UTC, by Howard Hinnant's `civil_from_days`.
pub fn rfc3339(unix_seconds: i64) -> String {
    let (days, seconds) = (
        unix_seconds.div_euclid(86_400),
        unix_seconds.rem_euclid(86_400),
    );
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3_600,
        seconds % 3_600 / 60,
        seconds % 60
    )
}

#[cfg(test)]
mod time_tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_spells_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
