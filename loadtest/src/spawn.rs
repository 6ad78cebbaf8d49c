//! `--spawn`: start a local `flashsale serve` for the run and stop it after.
//!
//! The server gets a fresh temporary data directory, a random admin token,
//! an ephemeral loopback port and its rate limits switched off (every
//! shopper comes from this one host). It prints exactly one stdout line,
//! `flashsale listening on http://IP:PORT`, once bound; the run starts when
//! that line arrives. Its stderr goes to `server.log` beside the data
//! directory, whose tail is shown if it never becomes ready. The directory
//! is a `tempfile::TempDir`: removed when the server is stopped or dropped,
//! whether the run passed, failed or never started.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::args::Durability;
use crate::error::LoadtestError;

/// How long the server may take to print its `listening on` line.
pub const SPAWN_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes of the server's log shown when it fails to start.
pub const SERVER_LOG_TAIL_BYTES: usize = 2_048;

/// What the ready line contains before the URL.
pub const LISTENING_MARKER: &str = "listening on ";

/// A server started for this run.
#[derive(Debug)]
pub struct SpawnedServer {
    child: Child,
    pub url: String,
    pub admin_token: String,
    /// The data directory and the log, kept for its `Drop`: removed with
    /// the server.
    _dir: TempDir,
}

impl SpawnedServer {
    /// Starts `program serve ...` and waits until it is listening. The
    /// server is a single embedded node: it never inherits `REDIS_URL`, and
    /// it writes to Postgres only when `database_url` says so (not because
    /// `DATABASE_URL` happens to be set).
    pub async fn start(
        program: &Path,
        durability: Durability,
        database_url: Option<&str>,
        platform: Option<&crate::platform::Platform>,
    ) -> Result<SpawnedServer, LoadtestError> {
        let dir = tempfile::Builder::new()
            .prefix("flashsale-loadtest-")
            .tempdir()
            .map_err(|source| LoadtestError::File {
                action: "create",
                path: std::env::temp_dir(),
                source,
            })?;
        let data_dir = dir.path().join("data");
        let file_error = |action, path: &Path| {
            let path = path.to_owned();
            move |source| LoadtestError::File {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&data_dir).map_err(file_error("create", &data_dir))?;
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).map_err(file_error("create", &log_path))?;
        let admin_token = random_hex(32);
        let mut command = Command::new(program);
        command.arg("serve");
        if let Some(url) = database_url {
            command.arg("--database-url").arg(url);
        }
        if let Some(platform) = platform {
            let jwks = dir.path().join("jwks.json");
            std::fs::write(&jwks, platform.jwks()).map_err(file_error("write", &jwks))?;
            command
                .arg("--idp-jwks")
                .arg(&jwks)
                .arg("--idp-issuer")
                .arg(&platform.issuer)
                .arg("--idp-audience")
                .arg(&platform.audience);
        }
        let child = command
            .env_remove("REDIS_URL")
            .env_remove("REDIS_CLUSTER_URLS")
            .env_remove("DATABASE_URL")
            .arg("--addr")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--admin-token")
            .arg(&admin_token)
            .arg("--durability")
            .arg(durability.as_flag())
            .env("FLASHSALE_RATE_LIMIT_SHOPPER", "0")
            .env("FLASHSALE_RATE_LIMIT_ADDRESS", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(source) => {
                return Err(LoadtestError::Spawn {
                    program: program.to_owned(),
                    source,
                });
            }
        };
        let ready = match child.stdout.take() {
            Some(stdout) => tokio::time::timeout(SPAWN_READY_TIMEOUT, wait_for_url(stdout)).await,
            None => Ok(None),
        };
        let url = match ready {
            Ok(Some(url)) => url,
            Ok(None) => {
                let _ = child.kill().await;
                return Err(not_ready(dir.path(), "it exited or closed stdout first"));
            }
            Err(_) => {
                let _ = child.kill().await;
                return Err(not_ready(
                    dir.path(),
                    &format!("no `{LISTENING_MARKER}` line within {SPAWN_READY_TIMEOUT:?}"),
                ));
            }
        };
        Ok(SpawnedServer {
            child,
            url,
            admin_token,
            _dir: dir,
        })
    }

    /// Kills the server and waits for it; dropping `self` then removes
    /// its temporary directory.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Reads stdout until the ready line, then keeps draining it in the
/// background so that the server never blocks on a full pipe.
async fn wait_for_url(stdout: tokio::process::ChildStdout) -> Option<String> {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(url) = listening_url(&line) {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Some(url);
        }
    }
    None
}

/// The URL in a `... listening on http://IP:PORT` line.
pub fn listening_url(line: &str) -> Option<String> {
    let at = line.find(LISTENING_MARKER)?;
    let url = line[at + LISTENING_MARKER.len()..].trim();
    url.starts_with("http://").then(|| url.to_owned())
}

fn not_ready(dir: &Path, reason: &str) -> LoadtestError {
    let log = std::fs::read(dir.join("server.log")).unwrap_or_default();
    let tail = &log[log.len().saturating_sub(SERVER_LOG_TAIL_BYTES)..];
    let detail = format!(
        "{reason}; the end of its log:\n{}",
        String::from_utf8_lossy(tail)
    );
    LoadtestError::SpawnNotReady { detail }
}

/// `bytes` random bytes as hex, from the OS's generator when it can be read.
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buffer = vec![0u8; bytes];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut buffer))
        .is_ok();
    if !from_os {
        // Only for a throwaway token of a server bound to loopback and
        // killed at the end of the run.
        fastrand::fill(&mut buffer);
    }
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn finds_the_url_in_the_ready_line() {
        assert_eq!(
            listening_url("flashsale listening on http://127.0.0.1:40123").as_deref(),
            Some("http://127.0.0.1:40123")
        );
        assert_eq!(listening_url("starting journal"), None);
        assert_eq!(listening_url("listening on tcp://x"), None);
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (random_hex(16), random_hex(16));
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn a_server_that_never_says_it_listens_is_reported() {
        // `true` exits at once without printing anything.
        let Ok(program) = which("true") else { return };
        let error = SpawnedServer::start(&program, Durability::Sync, None, None)
            .await
            .expect_err("`true` never listens");
        assert!(
            matches!(error, LoadtestError::SpawnNotReady { .. }),
            "{error}"
        );
    }

    fn which(name: &str) -> Result<PathBuf, ()> {
        ["/bin", "/usr/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|path| path.exists())
            .ok_or(())
    }
}
