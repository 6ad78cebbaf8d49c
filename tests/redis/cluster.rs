//! A private Redis Cluster of a test's own: 3 primaries and 3 replicas,
//! real `redis-server` processes on free loopback ports, each with a data
//! directory of its own; stopped by pid, and able to lose a server with
//! its disk and bring a fresh empty one (on a new port) back as a replica.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The private Cluster's node timeout (ms): how long a primary may be
/// silent before the others mark it failed and its replica is promoted.
pub const NODE_TIMEOUT_MS: u64 = 1_000;
/// How long a cluster operation (create, a failover, a replica's first
/// copy) may take to settle.
pub const SETTLE_MAX: Duration = Duration::from_secs(20);

/// What each server keeps on disk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing (`appendonly no`): nodes need `--allow-volatile-redis`.
    Volatile,
    /// An append-only file fsynced before every reply
    /// (`appendonly yes`, `appendfsync always`).
    AofAlways,
}

/// Ports reserved past the first six for fresh servers that replace lost
/// ones, so that a node's seed list ([`PrivateCluster::seeds`]) names
/// them from the start.
pub const SPARE_PORTS: u16 = 20;

/// Six `redis-server --cluster-enabled yes` processes of the test's own on
/// free loopback ports (each also binds port + 10000), stopped by pid.
pub struct PrivateCluster {
    servers: Vec<(u16, Child)>,
    /// The first six ports and the spares.
    ports: std::ops::Range<u16>,
    persistence: Persistence,
    dir: tempfile::TempDir,
}

fn free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `redis-cli` on the server at `port`: its standard output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).replace('\r', "")
}

/// Waits until `done`, for at most [`SETTLE_MAX`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < SETTLE_MAX,
            "{what} within {SETTLE_MAX:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `master` or `slave`: a server's replication role (`ROLE`).
pub fn role(port: u16) -> String {
    cli(port, &["ROLE"]).lines().next().unwrap_or("").to_owned()
}

/// Script calls a server has run (`INFO commandstats`).
pub fn script_calls(port: u16) -> u64 {
    cli(port, &["INFO", "commandstats"])
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// Which of the virtual shards `0..shards` (hash tags `{s:K}`) the server
/// at `port` serves: it answers a read of any other with a redirection.
pub fn shards_on(port: u16, shards: u32) -> std::collections::HashSet<usize> {
    (0..shards as usize)
        .filter(|shard| !cli(port, &["EXISTS", &format!("{{s:{shard}}}")]).contains("MOVED"))
        .collect()
}

impl PrivateCluster {
    /// Starts six servers, joins them as 3 primaries with a replica each,
    /// and waits until every replica holds its primary's copy (and, when
    /// persistent, has written it to its own append-only file).
    pub fn start(persistence: Persistence) -> PrivateCluster {
        let dir = tempfile::tempdir().expect("a temporary dir");
        // Consecutive ports whose bus ports are free too, all below
        // Linux's ephemeral range (from 32768), where an outgoing
        // connection could take a bus port before a spare server binds it.
        let reserved = 6 + SPARE_PORTS;
        let seed = (std::process::id() % 2_000) as u16;
        let base = (0..200)
            .map(|step| seed.wrapping_add(step * 61) % (2_768 - reserved) + 20_000)
            .find(|base| (0..reserved).all(|i| free(base + i) && free(base + i + 10_000)))
            .expect("free ports");
        let mut cluster = PrivateCluster {
            servers: Vec::new(),
            ports: base..base + reserved,
            persistence,
            dir,
        };
        for port in base..base + 6 {
            let child = cluster.spawn(port);
            cluster.servers.push((port, child));
        }
        for (port, _) in &cluster.servers {
            wait_until("a cluster node answers", || {
                cli(*port, &["PING"]).contains("PONG")
            });
        }
        let addresses: Vec<String> = cluster
            .servers
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
        wait_until("the cluster is ok with 3 replicas in sync", || {
            cluster
                .servers
                .iter()
                .all(|(port, _)| cli(*port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                && cluster.replica_pairs().len() == 3
        });
        for (_, replica) in cluster.replica_pairs() {
            cluster.wait_for_copy(replica);
        }
        cluster
    }

    /// A server's data directory: its append-only file, `nodes.conf` and log.
    fn data_dir(&self, port: u16) -> PathBuf {
        self.dir.path().join(port.to_string())
    }

    /// Starts a server on `port` with what its data directory holds.
    fn spawn(&self, port: u16) -> Child {
        let dir = self.data_dir(port);
        std::fs::create_dir_all(&dir).expect("a server's data dir");
        let persistence: &[&str] = match self.persistence {
            Persistence::Volatile => &["--appendonly", "no"],
            Persistence::AofAlways => &["--appendonly", "yes", "--appendfsync", "always"],
        };
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(dir.join("nodes.conf"))
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--save", "", "--repl-diskless-sync-delay", "0"])
            .args(persistence)
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed where REDIS_CLUSTER_URLS is set")
    }

    /// Waits until the replica at `port` holds its primary's copy and,
    /// when persistent, has its append-only file rewritten from it (after
    /// a full sync a replica rewrites its AOF in the background).
    pub fn wait_for_copy(&self, port: u16) {
        let persistent = self.persistence == Persistence::AofAlways;
        wait_until("a replica holds its primary's copy", || {
            let replication = cli(port, &["INFO", "replication"]);
            let persistence = cli(port, &["INFO", "persistence"]);
            replication.contains("master_link_status:up")
                && replication.contains("master_sync_in_progress:0")
                && (!persistent
                    || (!persistence.contains("aof_rewrites:0")
                        && persistence.contains("aof_rewrite_in_progress:0")
                        && persistence.contains("aof_rewrite_scheduled:0")))
        });
    }

    /// The URLs of every port the cluster may use, the spares included,
    /// comma-separated, for `--redis-cluster`: a node that loses its view
    /// of the Cluster reconnects from these seeds, and after enough rounds
    /// every first server may be gone (a deployment names its servers by
    /// addresses that outlive them, such as DNS names).
    pub fn seeds(&self) -> String {
        self.ports
            .clone()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every live server's URL, comma-separated, for `--redis-cluster`.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A server that answers, for reading the cluster's view.
    fn live(&self) -> u16 {
        self.servers
            .iter()
            .map(|(port, _)| *port)
            .find(|port| cli(*port, &["PING"]).contains("PONG"))
            .expect("a live server")
    }

    /// (primary port, replica port) for each primary that has a replica
    /// connected, as `CLUSTER NODES` on a live server says.
    pub fn replica_pairs(&self) -> Vec<(u16, u16)> {
        let nodes = cli(self.live(), &["CLUSTER", "NODES"]);
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

    fn child(&mut self, port: u16) -> &mut Child {
        self.servers
            .iter_mut()
            .find(|(server, _)| *server == port)
            .map(|(_, child)| child)
            .expect("one of ours")
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the server at `port`.
    pub fn signal(&mut self, port: u16, signal: &str) {
        let pid = self.child(port).id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// `kill -9` of the server at `port`, and its data directory deleted:
    /// the machine and its disk are gone.
    pub fn lose_with_disk(&mut self, port: u16) {
        let child = self.child(port);
        let _ = child.kill();
        let _ = child.wait();
        std::fs::remove_dir_all(self.data_dir(port)).expect("the data dir is deleted");
    }

    /// Starts a fresh, empty server on a new port (a replacement machine:
    /// the lost one at `lost` keeps its address unanswered), joins it to
    /// the cluster (`CLUSTER MEET`), makes every other server forget the
    /// lost one's id (`CLUSTER FORGET`), makes it a replica of the server
    /// at `primary` (`CLUSTER REPLICATE`) and waits for its first copy.
    /// Returns its port.
    pub fn rejoin_as_replica(&mut self, lost: u16, lost_id: &str, primary: u16) -> u16 {
        let highest = self
            .servers
            .iter()
            .map(|(port, _)| *port)
            .max()
            .unwrap_or(lost);
        let port = (highest + 1..self.ports.end)
            .find(|port| free(*port) && free(port + 10_000))
            .unwrap_or_else(|| panic!("no spare port left of {SPARE_PORTS}"));
        let child = self.spawn(port);
        let slot = self
            .servers
            .iter_mut()
            .find(|(server, _)| *server == lost)
            .expect("one of ours");
        *slot = (port, child);
        wait_until("the fresh server answers", || {
            cli(port, &["PING"]).contains("PONG")
        });
        for (other, _) in &self.servers {
            if *other != port {
                cli(*other, &["CLUSTER", "FORGET", lost_id]);
            }
        }
        let primary_id = cli(primary, &["CLUSTER", "MYID"]).trim().to_owned();
        cli(
            port,
            &["CLUSTER", "MEET", "127.0.0.1", &primary.to_string()],
        );
        wait_until("the fresh server knows its primary", || {
            cli(port, &["CLUSTER", "NODES"])
                .lines()
                .any(|line| line.starts_with(&primary_id) && line.contains(" master "))
        });
        wait_until("the fresh server becomes a replica", || {
            cli(port, &["CLUSTER", "REPLICATE", &primary_id]).starts_with("OK")
        });
        self.wait_for_copy(port);
        port
    }
}

impl Drop for PrivateCluster {
    /// Stops the servers; after a failed assertion, prints each one's log
    /// tail first.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (port, _) in &self.servers {
                let log = self.data_dir(*port).join("redis.log");
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
