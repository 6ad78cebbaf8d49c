//! The `flashsale serve` binary: its one stdout line, SIGTERM, and the
//! refusal to start in multi-node mode, which is not built yet.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn flashsale() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    // CI sets these for other suites; each test says what it wants.
    for variable in [
        "REDIS_URL",
        "REDIS_CLUSTER_URLS",
        "DATABASE_URL",
        "FLASHSALE_ADDR",
        "FLASHSALE_DATA_DIR",
    ] {
        command.env_remove(variable);
    }
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_its_address_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = flashsale()
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .strip_prefix("flashsale listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    let second = lines.next().unwrap().unwrap();
    assert!(second.contains("admin token"), "{second:?}");
    let health = crate::helpers::client()
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The secret was generated into the data dir, private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
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
