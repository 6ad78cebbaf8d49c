//! The `flashsale serve` binary: its one stdout line, SIGTERM, the admin
//! token it keeps, start-up errors that name what the user gave, and the
//! refusal to start in multi-node mode, which is not built yet.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};

fn flashsale() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    // CI sets these for other suites; each test says what it wants.
    for variable in [
        "REDIS_URL",
        "REDIS_CLUSTER_URLS",
        "DATABASE_URL",
        "FLASHSALE_ADDR",
        "FLASHSALE_DATA_DIR",
        "FLASHSALE_ADMIN_TOKEN",
        "FLASHSALE_SECRET",
    ] {
        command.env_remove(variable);
    }
    command
}

/// `flashsale serve --addr addr` with `data_dir` and `extra` arguments,
/// and its stdout lines.
fn spawn_serve(
    addr: &str,
    data_dir: &std::path::Path,
    extra: &[&str],
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = flashsale()
        .args(["serve", "--addr", addr, "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// Sends SIGTERM to `child` and asserts that it stops with success.
fn terminate(mut child: Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_its_address_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (child, mut lines) = spawn_serve("127.0.0.1:0", dir.path(), &[]);
    let first = lines.next().unwrap().unwrap();
    let url = first
        .strip_prefix("flashsale listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    let second = lines.next().unwrap().unwrap();
    let kept_in = dir.path().join("admin-token");
    let token = second
        .strip_prefix(&format!(
            "flashsale admin token (generated, shown once, kept in {}): ",
            kept_in.display()
        ))
        .unwrap_or_else(|| panic!("unexpected second line {second:?}"))
        .to_owned();
    assert_eq!(std::fs::read_to_string(&kept_in).unwrap(), token);
    let health = crate::helpers::client()
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The secret and the admin token were generated into the data dir,
    // private.
    #[cfg(unix)]
    for kept in ["secret", "admin-token"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(kept))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{kept}");
    }
    tokio::task::spawn_blocking(move || terminate(child))
        .await
        .unwrap();
    // No further stdout lines.
    assert!(lines.next().is_none());
}

#[test]
fn serve_in_redis_mode_refuses_to_start_without_a_shared_secret_and_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let output = flashsale()
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("REDIS_URL", "redis://127.0.0.1:6379")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "it must not claim to listen");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("needs --secret and --admin-token"),
        "{stderr}"
    );
}

#[test]
fn serve_in_redis_mode_names_the_redis_it_cannot_reach() {
    // FLASHSALE_ALLOW_VOLATILE_REDIS=1, as README writes it, is a yes (not
    // an invalid value): the node gets as far as reaching Redis.
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let output = flashsale()
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--redis-url", &url, "--secret", "0123456789abcdef0123"])
        .args([
            "--admin-token",
            "an-admin-token-123",
            "--redis-connect-timeout-ms",
            "300",
        ])
        .env("FLASHSALE_ALLOW_VOLATILE_REDIS", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "it must not claim to listen");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot reach Redis at {url}")),
        "{stderr}"
    );
}

#[test]
fn serve_help_documents_the_signup_credit_and_the_subscriber_bound() {
    let output = flashsale().args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for documented in [
        "--signup-credit <AMOUNT>",
        "FLASHSALE_SIGNUP_CREDIT",
        "--feed-subscribers-max",
        "FLASHSALE_FEED_SUBSCRIBERS_MAX",
    ] {
        assert!(help.contains(documented), "{documented} in {help}");
    }
}

/// The help of `flag` in a `--help` text: its line and the lines under it,
/// up to the next flag.
fn flag_help<'a>(help: &'a str, flag: &str) -> &'a str {
    let start = help
        .find(&format!("  {flag} "))
        .or_else(|| help.find(&format!("  {flag}\n")))
        .unwrap_or_else(|| panic!("{flag} is not in {help}"));
    let rest = &help[start..];
    let end = rest[2..].find("\n  -").map_or(rest.len(), |next| next + 2);
    &rest[..end]
}

/// Regression: `audit --help` described the Redis flags as `serve` does
/// (a node keeping no state, "unset: one node"), a text shared with
/// `serve`. Each flag now says what it does for the audit.
#[test]
fn audit_help_says_what_each_flag_does_for_the_audit() {
    let output = flashsale().args(["audit", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for (flag, says) in [
        ("--redis-url", "deployment to audit"),
        ("--redis-cluster", "to audit instead of --redis-url"),
        ("--redis-namespace", "not a clean audit of nothing"),
        ("--redis-shards", "another count is an error"),
        ("--database-url", "every order there is in Redis"),
        ("--in-flight", "Sales may be under way"),
    ] {
        let text = flag_help(&help, flag);
        assert!(text.contains(says), "{flag}: {text}");
    }
    for serve_only in [
        "this node keeps none",
        "state in this process",
        "must agree",
    ] {
        assert!(!help.contains(serve_only), "{serve_only:?} in {help}");
    }
    // `serve` keeps its own text for the same flags.
    let output = flashsale().args(["serve", "--help"]).output().unwrap();
    let serve = String::from_utf8_lossy(&output.stdout);
    assert!(
        flag_help(&serve, "--redis-url").contains("state in this process"),
        "{serve}"
    );
}

/// Regression: `flashsale demo` printed its report twice (once in the
/// library, once in the binary).
#[test]
fn demo_prints_its_report_once() {
    let output = flashsale().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(
        stdout.matches("flashsale loadtest burst against").count(),
        1,
        "{stdout}"
    );
    assert_eq!(stdout.matches("result: PASSED").count(), 1, "{stdout}");
}

/// Starts `flashsale serve` on a free port, reads its listening line, stops
/// it with SIGTERM; returns every line it printed on stdout.
fn serve_once(data_dir: &std::path::Path) -> Vec<String> {
    let (child, mut lines) = spawn_serve("127.0.0.1:0", data_dir, &[]);
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("flashsale listening on "), "{first:?}");
    terminate(child);
    std::iter::once(first)
        .chain(lines.map(Result::unwrap))
        .collect()
}

/// Regression: the generated admin token changed at every start, so the
/// one printed before stopped working. It is made once, kept beside the
/// secret, printed only then, and accepted after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_admin_token_is_kept_and_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let first = serve_once(dir.path());
    assert_eq!(first.len(), 2, "{first:?}");
    let token = std::fs::read_to_string(dir.path().join("admin-token")).unwrap();
    assert!(first[1].ends_with(&format!(": {token}")), "{first:?}");
    let again = serve_once(dir.path());
    assert_eq!(again.len(), 1, "printed only when made: {again:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("admin-token")).unwrap(),
        token
    );

    // The kept token is the admin's after the restart.
    let (mut child, mut lines) = spawn_serve("127.0.0.1:0", dir.path(), &[]);
    let listening = lines.next().unwrap().unwrap();
    let url = listening.strip_prefix("flashsale listening on ").unwrap();
    let created = crate::helpers::client()
        .post(format!("{url}/v1/merchants"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "name": "Xiaomi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A refused start: not 0, nothing on stdout; returns stderr.
#[track_caller]
fn refused(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    assert!(output.stdout.is_empty(), "it must not claim to listen");
    stderr
}

#[test]
fn a_short_admin_token_is_refused_like_a_short_secret() {
    let dir = tempfile::tempdir().unwrap();
    let output = flashsale()
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--admin-token", "admin-secret"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // A refused setting is a refused command line: exit 2, like clap's.
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--admin-token (FLASHSALE_ADMIN_TOKEN) must be at least 16 bytes"),
        "{stderr}"
    );
    // From the environment, the message names the variable.
    let stderr = refused(
        flashsale()
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("FLASHSALE_SECRET", "short"),
    );
    assert!(stderr.contains("FLASHSALE_SECRET"), "{stderr}");
}

/// Start-up errors name what the user gave and why it cannot be used.
#[test]
fn start_up_errors_name_what_was_given() {
    let dir = tempfile::tempdir().unwrap();
    // A data directory that is a file.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let stderr = refused(
        flashsale()
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(&file),
    );
    assert!(
        stderr.contains(&format!("cannot use the data directory {}", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("not a directory"), "{stderr}");

    // A taken port fails before anything is written to the data directory.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let fresh = dir.path().join("fresh");
    let stderr = refused(
        flashsale()
            .args(["serve", "--addr", &addr, "--data-dir"])
            .arg(&fresh),
    );
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(
        !fresh.exists(),
        "the data directory was made before the bind"
    );

    // Addresses that are not HOST:PORT get the hint; from the environment,
    // the variable is named.
    for bad in ["8080", ":8090"] {
        let stderr = refused(
            flashsale()
                .args(["serve", "--addr", bad, "--data-dir"])
                .arg(&fresh),
        );
        assert!(
            stderr.contains("expected HOST:PORT, e.g. 127.0.0.1:8080"),
            "{stderr}"
        );
        assert!(!stderr.contains("environment variable"), "{stderr}");
    }
    let stderr = refused(
        flashsale()
            .args(["serve", "--data-dir"])
            .arg(&fresh)
            .env("FLASHSALE_ADDR", "8080"),
    );
    assert!(stderr.contains("expected HOST:PORT"), "{stderr}");
    assert!(
        stderr.contains("the environment variable FLASHSALE_ADDR"),
        "{stderr}"
    );
    assert!(!fresh.exists());

    // A public URL that is not an absolute http(s) URL, by flag or variable.
    let stderr = refused(
        flashsale()
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--public-url",
                "shop.example",
            ])
            .arg("--data-dir")
            .arg(&fresh),
    );
    assert!(
        stderr
            .contains("--public-url (FLASHSALE_PUBLIC_URL) must be an absolute http or https URL"),
        "{stderr}"
    );
    let stderr = refused(
        flashsale()
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(&fresh)
            .env("FLASHSALE_PUBLIC_URL", "ftp://shop.example/"),
    );
    assert!(
        stderr.contains("--public-url (FLASHSALE_PUBLIC_URL)"),
        "{stderr}"
    );
    assert!(!fresh.exists(), "a refused configuration writes nothing");
}

#[test]
fn serve_accepts_a_host_name_in_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut lines) = spawn_serve("localhost:0", dir.path(), &[]);
    let first = lines.next().unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        first.starts_with("flashsale listening on http://127.0.0.1:"),
        "{first:?}"
    );
}

/// Regression: `serve --help` (and the load scenarios' help) showed
/// `[env: FLASHSALE_ADDR=]` for an unset or empty variable; values of
/// variables are never shown.
#[test]
fn help_names_variables_without_their_values() {
    for (command, variable) in [
        (&["serve", "--help"][..], "FLASHSALE_MAX_CONNECTIONS"),
        (
            &["loadtest", "burst", "--help"][..],
            "FLASHSALE_LOADTEST_CONNECTIONS",
        ),
        (
            &["loadtest", "steady", "--help"][..],
            "FLASHSALE_LOADTEST_RATE",
        ),
        (
            &["loadtest", "hello", "--help"][..],
            "FLASHSALE_LOADTEST_HELLO_ADDR",
        ),
    ] {
        let output = flashsale()
            .args(command)
            .env("FLASHSALE_ADDR", "")
            .env(variable, "7")
            .output()
            .unwrap();
        assert!(output.status.success());
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains(&format!("[env: {variable}]")), "{help}");
        assert!(!help.contains("=]"), "an empty env value shown: {help}");
        assert!(!help.contains("=7]"), "an env value shown: {help}");
    }
}

/// `loadtest hello` is a server: the load scenarios' options are refused,
/// not ignored; a scenario's refused value from the environment names it.
#[test]
fn loadtest_refuses_what_it_would_ignore() {
    let output = flashsale()
        .args(["loadtest", "hello", "--connections", "8"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unexpected argument '--connections'"),
        "{stderr}"
    );
    // The platform's flags mean nothing without its key.
    for flag in [
        "--platform-auth=jwt",
        "--platform-kid=k",
        "--platform-issuer=https://id.test",
        "--platform-audience=a",
    ] {
        let output = flashsale()
            .args(["loadtest", "burst", flag])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{flag}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--platform-key"), "{flag}: {stderr}");
    }
    let output = flashsale()
        .args(["loadtest", "burst"])
        .env("FLASHSALE_LOADTEST_CONNECTIONS", "many")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the environment variable FLASHSALE_LOADTEST_CONNECTIONS"),
        "{stderr}"
    );
}

/// The admin-token and secret files in `dir` (None when absent).
fn kept_files(dir: &std::path::Path) -> Vec<(String, Option<Vec<u8>>)> {
    ["admin-token", "secret", "node-id"]
        .into_iter()
        .map(|name| (name.to_owned(), std::fs::read(dir.join(name)).ok()))
        .collect()
}

/// Regression: a second `serve` on a data directory in use wrote an
/// admin-token file (and a secret) into the live server's directory before
/// it found the journal's lock. It takes the lock first and writes nothing.
#[test]
fn a_second_serve_on_a_data_dir_in_use_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (first, mut lines) = spawn_serve(
        "127.0.0.1:0",
        dir.path(),
        &["--admin-token", "admin-secret-0123456789"],
    );
    let listening = lines.next().unwrap().unwrap();
    assert!(
        listening.starts_with("flashsale listening on "),
        "{listening}"
    );
    let before = kept_files(dir.path());
    for extra in [&[][..], &["--admin-token", "another-admin-0123456789"][..]] {
        let stderr = refused(
            flashsale()
                .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
                .arg(dir.path())
                .args(extra),
        );
        assert_eq!(kept_files(dir.path()), before, "{extra:?}: {stderr}");
        assert!(stderr.contains("journal.lock"), "{stderr}");
    }
    terminate(first);
}

/// A URL refused when the command line is read: exit 2 (clap's usage
/// error), nothing on stdout; returns stderr, which names `flag` and says
/// `what` is wrong.
#[track_caller]
fn refused_url(command: &mut Command, flag: &str, what: &str) -> String {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty(), "{stderr}");
    assert!(stderr.contains(&format!("'{flag} <")), "{flag}: {stderr}");
    assert!(stderr.contains(what), "{what}: {stderr}");
    stderr
}

/// Every URL flag of every subcommand is checked at start by the client
/// that will use it, before anything is written: a refusal names the flag,
/// the environment variable when the value came from it, and what is
/// wrong (the scheme, a missing `//`), instead of runtime advice or a sink
/// that retries forever.
#[test]
fn urls_that_do_not_parse_are_refused_at_start_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = || {
        let mut command = flashsale();
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(["--secret", "a-shared-secret-0123456789"])
            .args(["--admin-token", "admin-secret-0123456789"]);
        command
    };
    refused_url(
        serve().args(["--redis-url", "redis:/127.0.0.1:6391"]),
        "--redis-url",
        "no // after the scheme; expected redis://HOST:PORT",
    );
    let stderr = refused_url(
        serve().args(["--redis-url", "http://127.0.0.1:6391"]),
        "--redis-url",
        "the scheme \"http\" is not a Redis one",
    );
    assert!(!stderr.contains("Idempotency-Key"), "{stderr}");
    assert!(!stderr.contains("environment variable"), "{stderr}");
    let stderr = refused_url(
        serve().env("REDIS_URL", "http://127.0.0.1:6391"),
        "--redis-url",
        "the scheme \"http\"",
    );
    assert!(
        stderr.contains("the environment variable REDIS_URL"),
        "{stderr}"
    );
    refused_url(
        serve().args([
            "--redis-cluster",
            "redis://127.0.0.1:7001,redis:127.0.0.1:7002",
        ]),
        "--redis-cluster",
        "no // after the scheme",
    );
    refused_url(
        serve().args(["--database-url", "postgress:/127.0.0.1/test"]),
        "--database-url",
        "the scheme \"postgress\" is not postgres or postgresql",
    );
    assert!(!data.exists(), "a refused start made its data directory");

    let audit = || {
        let mut command = flashsale();
        command.args(["audit", "--redis-url", "redis://127.0.0.1:1"]);
        command
    };
    refused_url(
        audit().args(["--database-url", "postgres:/127.0.0.1/test"]),
        "--database-url",
        "no // after the scheme",
    );
    let stderr = refused_url(
        audit().env("DATABASE_URL", "postgress://127.0.0.1/test"),
        "--database-url",
        "the scheme \"postgress\"",
    );
    assert!(
        stderr.contains("the environment variable DATABASE_URL"),
        "{stderr}"
    );
    refused_url(
        flashsale().args(["loadtest", "burst", "--database-url", "postgress:/h/db"]),
        "--database-url",
        "the scheme \"postgress\"",
    );
    refused_url(
        flashsale().args(["loadtest", "steady", "--target", "127.0.0.1:8080"]),
        "--target",
        "not a URL",
    );
}

/// An environment variable set to the empty string counts as unset, for
/// every flag: `serve` starts as one node with a generated admin token and
/// the default bounds, and `audit` audits without Postgres (here it cannot
/// reach its Redis: exit 2, saying so, not refusing an empty URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_environment_variable_counts_as_unset() {
    let empty = [
        "REDIS_URL",
        "REDIS_CLUSTER_URLS",
        "DATABASE_URL",
        "FLASHSALE_ADMIN_TOKEN",
        "FLASHSALE_SECRET",
        "FLASHSALE_MAX_CONNECTIONS",
        "FLASHSALE_ALLOW_VOLATILE_REDIS",
        "FLASHSALE_DURABILITY",
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut serve = flashsale();
    serve
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for variable in empty {
        serve.env(variable, "");
    }
    let mut child = serve.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let Some(Ok(first)) = lines.next() else {
        let output = child.wait_with_output().unwrap();
        panic!(
            "serve did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    assert!(first.starts_with("flashsale listening on "), "{first}");
    let second = lines.next().unwrap().unwrap();
    assert!(
        second.starts_with("flashsale admin token (generated"),
        "{second}"
    );
    tokio::task::spawn_blocking(move || terminate(child))
        .await
        .unwrap();

    let output = flashsale()
        .args(["audit", "--redis-url", "redis://127.0.0.1:1"])
        .env("DATABASE_URL", "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("database-url"), "{stderr}");
    assert!(!stderr.contains("relative URL"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
}
