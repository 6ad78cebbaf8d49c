//! The rules in a real Prometheus (Debian's binary), scraping a real node
//! on loopback every second: a sale goes on while the node's Postgres is
//! stopped (`pg_ctl stop -m immediate`, a Postgres of the test's own in a
//! temporary directory, never the shared one), and Prometheus' own HTTP
//! API shows `FlashsaleBooksLagAge` pending or firing; once Postgres is
//! started again the books catch up and the alert resolves. The rules
//! file is the repository's, unchanged: its threshold (30 s) is what bounds
//! the wait. Every query of the Grafana dashboard is then evaluated by
//! the same Prometheus, which proves it valid PromQL.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashsale_testkit::client::Api;
use serde_json::Value;

use super::dashboard::queries;
use super::{ADMIN_TOKEN, RULES, Server, repo, tool};

const ALERT: &str = "FlashsaleBooksLagAge";
/// What the skip line says is skipped.
const WHAT: &str = "the real-Prometheus alerting test";
/// How long Prometheus may take to start and to first scrape the node.
const PROMETHEUS_READY_MAX: Duration = Duration::from_secs(60);
/// From Postgres stopped to the alert pending: the rule's 30 s, a scrape
/// and an evaluation (1 s each), with room for a loaded machine.
const ALERT_PENDING_MAX: Duration = Duration::from_secs(75);
/// From Postgres started to the alert gone: the sink's retry backoff (at
/// most 5 s), its catch-up, a scrape and an evaluation.
const ALERT_RESOLVED_MAX: Duration = Duration::from_secs(60);
/// `pg_ctl start`'s own wait.
const PG_CTL_WAIT_SECONDS: &str = "60";

/// A free port on loopback (bound, then released for the program to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Runs `command`, panicking with its output unless it succeeds.
#[track_caller]
fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Postgres' program `name`: the file `variable` names, else on `$PATH`,
/// else in Debian's `/usr/lib/postgresql/<newest>/bin`; or `None` after
/// the skip line.
fn postgres_program(variable: &str, name: &str) -> Option<PathBuf> {
    if std::env::var_os(variable).is_none()
        && flashsale_testkit::program(variable, &[name]).is_none()
    {
        let newest = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                let program = entry.path().join("bin").join(name);
                program.is_file().then_some((version, program))
            })
            .max();
        if let Some((_, program)) = newest {
            return Some(program);
        }
    }
    tool(variable, name, WHAT)
}

/// A Postgres of the test's own: `initdb` into a temporary directory,
/// `pg_ctl` on a free loopback port, trust authentication. As root (which
/// `initdb` refuses) it runs as the `postgres` user through `runuser`.
/// Stopped when dropped; its files go with the directory.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    pg_ctl: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl PrivatePostgres {
    /// Starts one, or `None` after the skip line when `initdb` or `pg_ctl`
    /// is missing.
    fn start() -> Option<PrivatePostgres> {
        let initdb = postgres_program("INITDB", "initdb")?;
        let pg_ctl = postgres_program("PG_CTL", "pg_ctl")?;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let as_postgres_user = fs::metadata("/proc/self").is_ok_and(|proc| proc.uid() == 0);
        if as_postgres_user {
            run(
                Command::new("chown").arg("postgres:").arg(dir.path()),
                "chown of the Postgres directory to the postgres user",
            );
        }
        let postgres = PrivatePostgres {
            dir,
            pg_ctl,
            port: free_port(),
            as_postgres_user,
        };
        let data = postgres.data();
        run(
            postgres.command(&initdb).arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ]),
            "initdb",
        );
        postgres.start_again();
        Some(postgres)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `program`, as the postgres user when the test runs as root.
    fn command(&self, program: &Path) -> Command {
        let mut command = if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.stdin(Stdio::null());
        command
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(
            self.command(&self.pg_ctl)
                .arg("-D")
                .arg(self.data())
                .args(["-o", &options, "-l"])
                .arg(self.dir.path().join("log"))
                .args(["-w", "-t", PG_CTL_WAIT_SECONDS, "start"]),
            "pg_ctl start",
        );
    }

    /// `pg_ctl stop -m immediate`: what a crash of Postgres does.
    fn stop(&self) {
        run(
            self.command(&self.pg_ctl).arg("-D").arg(self.data()).args([
                "-m",
                "immediate",
                "-w",
                "stop",
            ]),
            "pg_ctl stop",
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command(&self.pg_ctl)
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// `prometheus` on a free loopback port, scraping `target` as job
/// `flashsale` every second and evaluating the repository's rules every
/// second; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("prometheus.yml");
        let rules = repo().join(RULES);
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - '{}'\n\
                 scrape_configs:\n  - job_name: flashsale\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .expect("the Prometheus configuration is written");
        let port = free_port();
        let log = fs::File::create(dir.path().join("log")).expect("a log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// Prometheus' log so far, for a failure's message.
    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The `data` of an API answer at `path` (`None` while it does not answer).
    async fn api(
        &self,
        client: &reqwest::Client,
        path: &str,
        query: &[(&str, &str)],
    ) -> Option<Value> {
        let mut url = reqwest::Url::parse(&format!("{}{path}", self.url)).expect("a URL");
        url.query_pairs_mut().extend_pairs(query);
        let response = client.get(url).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        Some(body["data"].clone())
    }

    /// The state (`pending` or `firing`) of the active [`ALERT`], if any.
    async fn alert_state(&self, client: &reqwest::Client) -> Option<String> {
        let data = self.api(client, "/api/v1/alerts", &[]).await?;
        data["alerts"]
            .as_array()?
            .iter()
            .find(|alert| alert["labels"]["alertname"] == ALERT)
            .and_then(|alert| alert["state"].as_str())
            .map(str::to_owned)
    }

    /// Waits up to `bound` for `check` to hold, polling every 500 ms;
    /// panics with Prometheus' log when it does not.
    async fn wait_for<F>(
        &self,
        client: &reqwest::Client,
        bound: Duration,
        what: &str,
        check: F,
    ) -> Duration
    where
        F: AsyncFn(&Prometheus, &reqwest::Client) -> bool,
    {
        let started = Instant::now();
        while !check(self, client).await {
            assert!(
                started.elapsed() < bound,
                "{what} within {bound:?}: it did not. Prometheus' log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        started.elapsed()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_books_lag_alert_goes_pending_while_postgres_is_stopped_and_resolves_after() {
    let Some(binary) = tool("PROMETHEUS", "prometheus", WHAT) else {
        return;
    };
    let Some(postgres) = PrivatePostgres::start() else {
        return;
    };
    let node = Server::start(&["--database-url", &postgres.url()]);
    let prometheus = Prometheus::start(&binary, &node.address);
    let client = flashsale_testkit::client::client();

    // Prometheus scrapes the node, and the books are caught up: no alert.
    prometheus
        .wait_for(
            &client,
            PROMETHEUS_READY_MAX,
            "the node is scraped",
            async |p, c| {
                let query = [(
                    "query",
                    "flashsale_order_sink_lag_records{job=\"flashsale\"} == 0",
                )];
                p.api(c, "/api/v1/query", &query)
                    .await
                    .is_some_and(|data| data["result"].as_array().is_some_and(|r| r.len() == 1))
            },
        )
        .await;
    assert_eq!(prometheus.alert_state(&client).await, None);

    // A sale with the books stopped: every buy is answered from the journal.
    let api = Api::new(format!("http://{}", node.address), ADMIN_TOKEN);
    let merchant = api.merchant("Xiaomi").await;
    let deal = api.deal(&merchant, "10.00", 100, 10).await;
    let shopper = api.shopper("Ann", "100.00").await;
    postgres.stop();
    for n in 0..5 {
        api.buy(&shopper, &deal, 1, &format!("buy-{n}"))
            .await
            .ok(201);
    }
    let pending = prometheus
        .wait_for(
            &client,
            ALERT_PENDING_MAX,
            "the books-lag alert goes pending",
            async |p, c| {
                p.alert_state(c)
                    .await
                    .is_some_and(|state| state == "pending" || state == "firing")
            },
        )
        .await;
    eprintln!("{ALERT} pending {pending:?} after the sale began with Postgres stopped");

    // Postgres back: the sink catches up and the alert resolves.
    postgres.start_again();
    let resolved = prometheus
        .wait_for(
            &client,
            ALERT_RESOLVED_MAX,
            "the books-lag alert resolves",
            async |p, c| p.alert_state(c).await.is_none(),
        )
        .await;
    eprintln!("{ALERT} resolved {resolved:?} after Postgres started again");
    let caught_up = [(
        "query",
        "flashsale_order_sink_lag_records{job=\"flashsale\"} == 0",
    )];
    let data = prometheus
        .api(&client, "/api/v1/query", &caught_up)
        .await
        .expect("Prometheus answers");
    assert_eq!(data["result"].as_array().map(Vec::len), Some(1), "{data}");

    // Every dashboard query is valid PromQL to this Prometheus.
    for query in queries() {
        let query = query.replace("$instance", ".*");
        prometheus
            .api(&client, "/api/v1/query", &[("query", &query)])
            .await
            .unwrap_or_else(|| panic!("Prometheus does not answer {query}"));
    }
}
