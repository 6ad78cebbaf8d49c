//! A Redis Cluster of 3 primaries and 3 replicas under a burst: a manual
//! `CLUSTER FAILOVER` of the busiest primary, then a primary frozen with
//! `SIGSTOP` past the node timeout (so its replica is promoted) and resumed.
//! The test reports exactly which acknowledged orders were kept or lost in
//! each phase, and asserts what README promises: a manual failover loses
//! nothing; after an automatic one, whatever survived is consistent (no unit
//! sold twice, every wallet adds up, one order per idempotency key).
//! Redis replication is asynchronous (Redis Cluster specification, "Write
//! safety"), so an automatic failover may drop writes the frozen primary
//! acknowledged but had not yet sent to its replica.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::burst::{Attempt, burst, fen, resolve_unknowns};
use crate::node::{Deployment, Node, Target};

/// The private Cluster's node timeout (ms): how long a primary may be
/// silent before the others mark it failed.
const NODE_TIMEOUT_MS: u64 = 1_000;
/// How long a cluster operation (create, a failover) may take to settle.
const SETTLE_MAX: Duration = Duration::from_secs(20);
/// Times a manual failover is asked for, and how long each may take.
const MANUAL_FAILOVER_TRIES: usize = 3;
const MANUAL_FAILOVER_WAIT: Duration = Duration::from_secs(7);

/// Six `redis-server --cluster-enabled yes` processes of the test's own on
/// free loopback ports (each also binds port + 10000), stopped by pid.
struct PrivateCluster {
    servers: Vec<(u16, Child)>,
    dir: tempfile::TempDir,
}

fn free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).replace('\r', "")
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < SETTLE_MAX,
            "{what} within {SETTLE_MAX:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl PrivateCluster {
    fn start() -> PrivateCluster {
        let dir = tempfile::tempdir().expect("a temporary dir");
        // Six consecutive ports below 55535 whose bus ports are free too.
        let seed = 20_000 + (std::process::id() % 2_000) as u16 * 6;
        let base = (0..200)
            .map(|step| seed.wrapping_add(step * 61) % 25_000 + 20_000)
            .find(|base| (0..6).all(|i| free(base + i) && free(base + i + 10_000)))
            .expect("six free ports");
        let servers: Vec<(u16, Child)> = (0..6)
            .map(|i| {
                let port = base + i;
                let config = dir.path().join(format!("nodes-{port}.conf"));
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                    .arg(&config)
                    .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                    .args([
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--repl-diskless-sync-delay",
                        "0",
                    ])
                    .arg("--dir")
                    .arg(dir.path())
                    .arg("--logfile")
                    .arg(dir.path().join(format!("redis-{port}.log")))
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server is installed where REDIS_CLUSTER_URLS is set");
                (port, child)
            })
            .collect();
        for (port, _) in &servers {
            wait_until("a cluster node answers", || {
                cli(*port, &["PING"]).contains("PONG")
            });
        }
        let addresses: Vec<String> = servers
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(created.status.success(), "{created:?}");
        let cluster = PrivateCluster { servers, dir };
        wait_until("the cluster is ok with 3 replicas in sync", || {
            cluster
                .servers
                .iter()
                .all(|(port, _)| cli(*port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                && cluster.replica_pairs().len() == 3
        });
        // A replica's first full copy comes after the cluster is ok: until
        // it has it, a failover would promote an empty replica.
        wait_until("every replica holds its primary's copy", || {
            cluster.replica_pairs().iter().all(|(_, replica)| {
                let replication = cli(*replica, &["INFO", "replication"]);
                replication.contains("master_link_status:up")
                    && replication.contains("master_sync_in_progress:0")
            })
        });
        cluster
    }

    fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// (primary port, replica port) for each primary that has a replica
    /// connected, as `CLUSTER NODES` on the first live server says.
    fn replica_pairs(&self) -> Vec<(u16, u16)> {
        let nodes = cli(self.servers[0].0, &["CLUSTER", "NODES"]);
        let mut port_of = HashMap::new();
        let mut replicas = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 8 || fields[7] != "connected" || fields[2].contains("fail") {
                continue;
            }
            let port = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|port| port.parse::<u16>().ok())
                .unwrap_or(0);
            port_of.insert(fields[0].to_owned(), port);
            if fields[2].contains("slave") {
                replicas.push((fields[3].to_owned(), port));
            }
        }
        replicas
            .into_iter()
            .filter_map(|(primary, replica)| Some((*port_of.get(&primary)?, replica)))
            .collect()
    }

    fn signal(&self, port: u16, signal: &str) {
        let (_, child) = self
            .servers
            .iter()
            .find(|(server, _)| *server == port)
            .expect("one of ours");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for PrivateCluster {
    /// Stops the servers; after a failed assertion, prints each one's log
    /// tail first.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (port, _) in &self.servers {
                let log = self.dir.path().join(format!("redis-{port}.log"));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- redis {port}:\n{}",
                    lines[lines.len().saturating_sub(25)..].join("\n")
                );
            }
        }
        for (_, child) in &mut self.servers {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `master` or `slave`: a server's replication role (`ROLE`).
fn role(port: u16) -> String {
    cli(port, &["ROLE"]).lines().next().unwrap_or("").to_owned()
}

/// Script calls a server has run (`INFO commandstats`).
fn script_calls(port: u16) -> u64 {
    cli(port, &["INFO", "commandstats"])
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// The 201'd orders of `attempts` (one per key), and how many of them are
/// still readable.
async fn kept(node: &Node, shoppers: &[(String, String)], attempts: &[Attempt]) -> (usize, usize) {
    let mut orders: HashMap<&str, (&str, usize)> = HashMap::new();
    for attempt in attempts {
        if let Some(answer) = &attempt.answer
            && answer.status == 201
        {
            let id = answer.body["id"].as_str().expect("an id");
            let previous = orders.insert(&attempt.key, (id, attempt.shopper));
            assert!(
                previous.is_none_or(|(previous, _)| previous == id),
                "key {} gave two orders",
                attempt.key
            );
        }
    }
    let mut readable = 0;
    for (id, shopper) in orders.values() {
        let answer = node
            .get_through_unavailable(&format!("/v1/orders/{id}"), Some(&shoppers[*shopper].1))
            .await;
        match answer.status {
            200 => readable += 1,
            404 => {}
            other => panic!("order {id}: {other} {:?}", answer.body),
        }
    }
    (orders.len(), readable)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_keeps_acknowledged_orders_and_the_books_consistent() {
    // Phases 1 and 2 sell 400 at most; the freeze falls on the last 100.
    const STOCK: u64 = 500;
    const SHOPPERS: usize = 600;
    if flashsale_testkit::redis_cluster_urls().is_none() {
        return;
    }
    let _serial = crate::node::serial().await;
    let cluster = PrivateCluster::start();
    let deployment = Deployment::new(Target::Cluster(cluster.urls()), 64);
    let timeout = ["--redis-response-timeout-ms", "500"];
    let nodes = [
        deployment.node_with(&timeout),
        deployment.node_with(&timeout),
    ];
    let merchant = nodes[0].merchant("Failover").await;
    let deal = nodes[0].deal(&merchant, STOCK, 1).await;
    let shoppers = nodes[1].shoppers(SHOPPERS as u32, "100.00").await;
    let plan: Vec<(usize, String)> = (0..SHOPPERS).map(|s| (s, format!("tap-{s}"))).collect();

    // Phase 1: a third of the burst, then a manual failover of the busiest
    // primary while the second third runs.
    let mut attempts = burst(&nodes, &shoppers, &deal, &plan[..200]).await;
    let pairs = cluster.replica_pairs();
    let &(busiest, its_replica) = pairs
        .iter()
        .max_by_key(|(primary, _)| script_calls(*primary))
        .expect("three primaries");
    let failover = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(200));
        // A manual failover gives up if the replica cannot catch up within
        // Redis' own bound (5 s); under load it is asked again.
        (0..MANUAL_FAILOVER_TRIES).any(|_| {
            cli(its_replica, &["CLUSTER", "FAILOVER"]);
            let started = Instant::now();
            while started.elapsed() < MANUAL_FAILOVER_WAIT {
                if role(its_replica) == "master" {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        })
    });
    attempts.extend(burst(&nodes, &shoppers, &deal, &plan[200..400]).await);
    assert!(failover.await.expect("joined"), "the replica took over");
    let (acknowledged, readable) = kept(&nodes[0], &shoppers, &attempts).await;
    eprintln!(
        "manual failover {busiest}->{its_replica}: {readable} of {acknowledged} acknowledged orders kept"
    );
    assert_eq!(
        readable, acknowledged,
        "a manual failover loses no acknowledged order"
    );

    // Phase 2: another primary frozen past the node timeout mid-burst; its
    // replica is promoted; then it resumes (and rejoins as a replica).
    let &(frozen, promoted) = cluster
        .replica_pairs()
        .iter()
        .find(|(primary, _)| *primary != its_replica)
        .expect("another primary with a replica");
    cluster.signal(frozen, "-STOP");
    let phase2 = burst(&nodes, &shoppers, &deal, &plan[400..]);
    let promotion = tokio::task::spawn_blocking({
        move || {
            let started = Instant::now();
            while role(promoted) != "master" && started.elapsed() < SETTLE_MAX {
                std::thread::sleep(Duration::from_millis(100));
            }
            started.elapsed()
        }
    });
    let phase2 = phase2.await;
    let promoted_after = promotion.await.expect("joined");
    cluster.signal(frozen, "-CONT");
    attempts.extend(phase2);
    assert_eq!(role(promoted), "master", "the replica was promoted");
    wait_until("the cluster is ok again", || {
        cli(promoted, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
    });

    // Every unknown outcome is retried with its key until it resolves.
    let unknown = resolve_unknowns(&nodes, &shoppers, &deal, &mut attempts).await;
    let (acknowledged, readable) = kept(&nodes[0], &shoppers, &attempts).await;
    eprintln!(
        "frozen primary {frozen}, replica {promoted} promoted after {promoted_after:?}: \
         {readable} of {acknowledged} acknowledged orders kept; {unknown} unknown outcomes resolved"
    );

    // Whatever survived is consistent.
    let view = nodes[1]
        .get(&format!("/v1/deals/{deal}"), None)
        .await
        .ok(200);
    let sold = view["sold"].as_u64().expect("sold");
    assert!(sold <= STOCK, "never oversold: {view}");
    assert_eq!(
        sold, readable as u64,
        "sold counts the orders that exist: {view}"
    );
    let mut spent = 0;
    for (_, token) in &shoppers {
        let wallet = nodes[0].get("/v1/wallet", Some(token)).await.ok(200);
        assert_eq!(
            fen(&wallet["available"]) + fen(&wallet["held"]) + fen(&wallet["spent"]),
            fen(&wallet["credited"]),
            "{wallet}"
        );
        spent += fen(&wallet["spent"]);
    }
    assert_eq!(
        spent,
        sold as i64 * 1_000,
        "money moved only for orders that exist"
    );
}
