//! `flashsale serve` as a child process, on `127.0.0.1:0`: the command
//! line every test starts it with ([`serve_command`]), and the start that
//! waits for the line saying where it listens ([`ServeProcess::start`]).
//! The test crate names the binary (`env!("CARGO_BIN_EXE_flashsale")`,
//! which only an integration test of the root package knows).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// The line `flashsale serve` prints on stdout once it is bound.
pub const LISTENING: &str = "flashsale listening on ";

/// `binary serve --addr 127.0.0.1:0 --data-dir <data_dir> --admin-token
/// <admin_token>`, no stdin, and none of the environment's stores (nor its
/// `FLASHSALE_ALLOW_VOLATILE_REDIS`) reaching it. The caller adds its own
/// flags and environment (rate limits, Redis, signup credit…).
pub fn serve_command(binary: impl AsRef<OsStr>, data_dir: &Path, admin_token: &str) -> Command {
    let mut command = Command::new(binary);
    command
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(["--admin-token", admin_token])
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER_URLS")
        .env_remove("DATABASE_URL")
        .env_remove("FLASHSALE_ALLOW_VOLATILE_REDIS")
        .stdin(Stdio::null());
    command
}

/// Where a started server's standard error goes.
#[derive(Debug)]
pub enum ServerLog {
    /// To the test's output, each line prefixed with the label (shown
    /// when the test fails).
    Forward,
    /// Into this file.
    File(File),
}

/// A running `flashsale serve`, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
}

impl ServeProcess {
    /// Starts `command` (see [`serve_command`]) and waits up to `timeout`
    /// for it to print [`LISTENING`]. Its stdout is drained for good (so
    /// it never blocks on a full pipe), and also echoed with `label` when
    /// `echo_stdout`; its stderr goes where `log` says.
    ///
    /// # Panics
    /// When it does not start or does not say where it listens in time;
    /// it is killed then.
    pub fn start(
        mut command: Command,
        label: &str,
        log: ServerLog,
        echo_stdout: bool,
        timeout: Duration,
    ) -> ServeProcess {
        command.stdout(Stdio::piped());
        match log {
            ServerLog::Forward => command.stderr(Stdio::piped()),
            ServerLog::File(file) => command.stderr(file),
        };
        let mut child = command.spawn().expect("the flashsale binary starts");
        if let Some(stderr) = child.stderr.take() {
            let label = label.to_owned();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[{label}] {line}");
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        let (bound, bound_rx) = mpsc::channel();
        let echo = echo_stdout.then(|| label.to_owned());
        thread::spawn(move || {
            let mut bound = Some(bound);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(label) = &echo {
                    eprintln!("[{label}] {line}");
                }
                if let Some(url) = line.strip_prefix(LISTENING)
                    && let Some(bound) = bound.take()
                {
                    let _ = bound.send(url.trim().trim_end_matches('/').to_owned());
                }
            }
        });
        let Ok(url) = bound_rx.recv_timeout(timeout) else {
            let exit = child.try_wait();
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`flashsale serve` ({label}) did not print `{LISTENING}http://…` within \
                 {timeout:?} (exit status: {exit:?}); see its [{label}] lines"
            );
        };
        ServeProcess { child, url }
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reaped, asserting it was still running: no flush, no
    /// snapshot, no goodbye.
    ///
    /// # Panics
    /// When it had already exited.
    pub fn kill_running(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }

    /// SIGKILL, then reaped, whether or not it still ran. Idempotent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
