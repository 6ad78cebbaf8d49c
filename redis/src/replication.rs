//! Replica-acknowledged changes (`--redis-replica-acks N`): a change is
//! answered only once its write reached at least N replicas of the primary
//! that ran it, by group commit over Redis' `WAIT`.
//!
//! `WAIT numreplicas timeout` blocks the connection that sends it until the
//! replicas acknowledged the replication offset of *that connection's* last
//! write (the Redis documentation: "all the previous write commands sent in
//! the context of the current connection"; in the source, `waitCommand`
//! waits for `c->woff`, which `call()` sets to the primary's
//! `master_repl_offset` after each write the client makes). The primary has
//! one replication stream and one offset, so a write on one connection
//! moves the offset past every write the primary applied before it, from
//! every connection of every node. Hence the group commit: per Cluster slot
//! (one group on a single Redis), one task writes a **marker** key in that
//! slot and sends `WAIT` right behind it on a connection of its own (a
//! `WAIT` blocks its connection, so never the shared one); that round
//! covers every step whose reply arrived before the marker was sent,
//! whichever node ran it. A step waits for the first round that starts
//! after its reply: requests arriving while a round is out wait together
//! for the next one, so under load one `WAIT` serves many changes.
//!
//! A round that gets fewer acknowledgments than required within
//! `--redis-replica-ack-timeout-ms`, or whose connection fails, fails its
//! waiters with [`Error::ReplicasBehind`]: `503 unavailable`, an unknown
//! outcome that the client's retry with the same key resolves (the order if
//! it survived, a fresh attempt if not). A later round that succeeds covers
//! earlier writes too, so a waiter is satisfied by any successful round
//! that started after its reply.
//!
//! On a Cluster the groups are spread over [`REPLICA_ACK_CONNECTIONS`]
//! connections: a `WAIT` holds its connection, so slots sharing one take
//! turns, and with one connection a primary's slots would wait one
//! `WAIT` at a time.
//!
//! Bounds: one group per Cluster slot (16,384 at most), one round in
//! flight per group, each round bounded by the timeout. Each round's time
//! (its marker and `WAIT`) goes into the histogram [`REPLICA_ACK_SECONDS`].
//!
//! **Per primary.** The store reads each primary's replicas online every
//! second ([`RedisStore::check_replicas_online`], with the durability). A
//! primary with fewer than N makes the changes on *its* slots answer
//! `503` at once ([`Error::ReplicasShort`], before the step runs, so
//! nothing changed), while changes on the other primaries' slots go on:
//! one failed replica stops a third of a 3-primary Cluster's sales, not
//! all of them. The node stays ready while some primary can acknowledge
//! (`/readyz` says `degraded` and names the short primaries); it is not
//! ready when none can (a single Redis whose replica is gone).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use metrics::Histogram;
use parking_lot::Mutex;
use redis::Value;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, Slot, SlotAddr};
use tokio::sync::watch;

use crate::RedisStore;
use crate::connection::Connection;
use crate::error::Error;
use crate::replies::text;

/// The histogram of a replica acknowledgment round's seconds: its marker
/// and `WAIT`, from sending to the reply (or the timeout).
pub const REPLICA_ACK_SECONDS: &str = "flashsale_redis_replica_ack_seconds";
/// Connections a node keeps for the rounds on a Cluster. A `WAIT` blocks
/// the connection it is sent on, so the rounds of slots that share one
/// run one after another; groups are spread over these lanes as they are
/// made, so this many rounds (of different slots) can be out at once.
pub(crate) const REPLICA_ACK_CONNECTIONS: usize = 8;
/// Slots of a Redis Cluster (the specification: CRC16 of the key modulo
/// 16,384); bounds the set of slots refused at once.
const CLUSTER_SLOTS: u16 = 16_384;

/// One primary's replicas online, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryReplicas {
    /// The primary's address (`host:port`; `the Redis` for a single Redis).
    pub primary: String,
    /// Its replicas online (`INFO replication`, `state=online`).
    pub online: u32,
}

/// What the last read of every primary's replicas found, for
/// `--redis-replica-acks`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replicas {
    /// Replicas each change needs (`--redis-replica-acks`).
    pub required: u32,
    /// Every primary, in the order read.
    pub primaries: Vec<PrimaryReplicas>,
}

impl Replicas {
    /// The primaries with fewer than `required` replicas online.
    pub fn short(&self) -> impl Iterator<Item = &PrimaryReplicas> {
        self.primaries
            .iter()
            .filter(|primary| primary.online < self.required)
    }

    /// No primary can acknowledge a change: there is at least one, and
    /// every one is short.
    pub fn none_can_acknowledge(&self) -> bool {
        !self.primaries.is_empty() && self.short().count() == self.primaries.len()
    }
}

/// The slots of the short primaries, for the check before each change.
#[derive(Debug, Default)]
pub(crate) struct ShortSlots {
    /// Slot to the index of its primary in [`Replicas::primaries`]; at
    /// most [`CLUSTER_SLOTS`] entries. On a single Redis, empty: `all`.
    slots: HashMap<Slot, usize>,
    /// A single Redis whose one primary is short: every change refused.
    all: Option<usize>,
}

/// What a node asks of the replicas of the primary that ran a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAckSettings {
    /// Replicas that must acknowledge a change before it is answered.
    pub required: u32,
    /// How long a round's `WAIT` may block, and so a change its answer.
    pub timeout: Duration,
}

/// The group commit of one node: its own connection for the `WAIT`s and a
/// group per slot.
pub(crate) struct ReplicaAcks {
    settings: ReplicaAckSettings,
    /// Carry only markers and `WAIT`s (a `WAIT` blocks its connection):
    /// one on a single Redis, [`REPLICA_ACK_CONNECTIONS`] on a Cluster.
    /// Replaced with the store's when a Cluster client stays broken.
    connections: parking_lot::RwLock<Vec<Connection>>,
    groups: Mutex<HashMap<Slot, Arc<Group>>>,
    /// [`REPLICA_ACK_SECONDS`].
    seconds: Histogram,
    /// The primaries' replicas as last read, and the slots of the short
    /// ones (`RedisStore::replicas_short` says whether any is).
    replicas: Mutex<(Replicas, ShortSlots)>,
    /// Every primary offers `WAITAOF` (read with the durability, every
    /// second): rounds then ask for the replicas' fsync ([`AckCommand`]).
    waitaof: std::sync::atomic::AtomicBool,
}

/// The command a round waits with: `WAIT numreplicas timeout` counts
/// replicas that have the write in memory; `WAITAOF numlocal numreplicas
/// timeout` (Redis 7.2 and later, Valkey) counts replicas that fsynced it
/// to their append-only file, which a replica's machine loss cannot undo.
/// `numlocal` is 0: the primary's own fsync is what its `appendfsync`
/// promises already (the durability check). A replica without an
/// append-only file never acknowledges `WAITAOF`, so with it the node
/// needs replicas that persist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckCommand {
    Wait,
    WaitAof,
}

impl AckCommand {
    /// Appends the command asking for `required` replicas within
    /// `timeout_ms` to `pipeline`.
    fn append(self, pipeline: &mut redis::Pipeline, required: u32, timeout_ms: u64) {
        match self {
            AckCommand::Wait => pipeline.cmd("WAIT").arg(required).arg(timeout_ms),
            AckCommand::WaitAof => pipeline.cmd("WAITAOF").arg(0).arg(required).arg(timeout_ms),
        };
    }

    /// The replicas that acknowledged, from the command's reply: `WAIT`
    /// answers their count, `WAITAOF` the pair (local fsyncs, replicas).
    fn replicas(self, reply: &Value) -> Option<u32> {
        let count = match (self, reply) {
            (AckCommand::Wait, Value::Int(count)) => *count,
            (AckCommand::WaitAof, Value::Array(pair)) => match pair.get(1) {
                Some(Value::Int(count)) => *count,
                _ => return None,
            },
            _ => return None,
        };
        u32::try_from(count).ok()
    }
}

/// The rounds of one slot.
struct Group {
    /// A key in the slot, written before each `WAIT`.
    marker: String,
    /// Which of the rounds' connections carries this group's rounds.
    lane: usize,
    route: SingleNodeRoutingInfo,
    state: Mutex<Rounds>,
    done: watch::Sender<Done>,
}

/// Which rounds are asked for and started.
#[derive(Debug, Default)]
struct Rounds {
    /// The number the next round to start gets (the first is 1).
    next: u64,
    /// The highest round a waiter waits for.
    wanted: u64,
    /// Whether a task is running rounds.
    running: bool,
}

/// What the finished rounds say.
#[derive(Debug, Default, Clone, Copy)]
struct Done {
    /// The last round finished.
    round: u64,
    /// The last round that got its acknowledgments.
    acknowledged: u64,
    /// Replicas the last finished round counted.
    replicas: u32,
}

impl ReplicaAcks {
    /// `connections`: at least one (see [`REPLICA_ACK_CONNECTIONS`]).
    pub(crate) fn new(settings: ReplicaAckSettings, connections: Vec<Connection>) -> ReplicaAcks {
        metrics::describe_histogram!(
            REPLICA_ACK_SECONDS,
            metrics::Unit::Seconds,
            "Time of a replica acknowledgment round (a marker and WAIT on one slot's primary)"
        );
        ReplicaAcks {
            settings,
            connections: parking_lot::RwLock::new(connections),
            groups: Mutex::new(HashMap::new()),
            seconds: metrics::histogram!(REPLICA_ACK_SECONDS),
            replicas: Mutex::new((
                Replicas {
                    required: settings.required,
                    primaries: Vec::new(),
                },
                ShortSlots::default(),
            )),
            waitaof: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The primaries' replicas as last read.
    pub(crate) fn replicas(&self) -> Replicas {
        self.replicas.lock().0.clone()
    }

    /// No primary could acknowledge a change at the last read.
    pub(crate) fn none_can_acknowledge(&self) -> bool {
        self.replicas.lock().0.none_can_acknowledge()
    }

    /// Refuses a change on `key`'s slot when its primary was short at the
    /// last read. Errors: [`Error::ReplicasShort`] naming the primary.
    pub(crate) fn check_primary(&self, key: &str) -> Result<(), Error> {
        let replicas = self.replicas.lock();
        let (read, short) = &*replicas;
        let index = match short.all {
            Some(index) => Some(index),
            None => short.slots.get(&Slot::for_key(key)).copied(),
        };
        match index.and_then(|index| read.primaries.get(index)) {
            Some(primary) => Err(Error::ReplicasShort {
                primary: primary.primary.clone(),
                online: primary.online,
                required: read.required,
            }),
            None => Ok(()),
        }
    }

    /// Replicas each change needs.
    pub(crate) fn required(&self) -> u32 {
        self.settings.required
    }

    /// How long a round's `WAIT` may block.
    pub(crate) fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// Whether rounds use `WAITAOF` from now on: `true` when every primary
    /// offers it ([`AckCommand`]).
    pub(crate) fn prefer_waitaof(&self, offered: bool) {
        self.waitaof.store(offered, Ordering::Relaxed);
    }

    /// The command rounds wait with now.
    fn ack_command(&self) -> AckCommand {
        if self.waitaof.load(Ordering::Relaxed) {
            AckCommand::WaitAof
        } else {
            AckCommand::Wait
        }
    }

    /// Puts `connections` in place of the rounds' connections (a round
    /// under way finishes on its old one).
    pub(crate) fn replace_connections(&self, connections: Vec<Connection>) {
        *self.connections.write() = connections;
    }

    /// Returns once a round of `key`'s slot that started after this call
    /// got the required acknowledgments. `key`: any key of the step just
    /// run (all its keys share one slot). Errors:
    /// [`Error::ReplicasBehind`] when that round did not.
    pub(crate) async fn acknowledged(self: &Arc<Self>, key: &str) -> Result<(), Error> {
        let group = self.group(key);
        let mut done = group.done.subscribe();
        let mine = {
            let mut rounds = group.state.lock();
            let mine = rounds.next.max(1);
            rounds.wanted = rounds.wanted.max(mine);
            if !rounds.running {
                rounds.running = true;
                tokio::spawn(self.clone().run_rounds(group.clone()));
            }
            mine
        };
        let finished = *done
            .wait_for(|done| done.round >= mine)
            .await
            .map_err(|_| Error::ReplicasBehind {
                acknowledged: 0,
                required: self.settings.required,
            })?;
        if finished.acknowledged >= mine {
            Ok(())
        } else {
            Err(Error::ReplicasBehind {
                acknowledged: finished.replicas,
                required: self.settings.required,
            })
        }
    }

    /// The group of `key`'s slot, made on first use.
    fn group(&self, key: &str) -> Arc<Group> {
        // The Redis Cluster specification: CRC16 of the key's hash tag.
        let single = matches!(self.connections.read().first(), Some(Connection::Single(_)));
        let slot = if single {
            Slot::for_key("")
        } else {
            Slot::for_key(key)
        };
        let mut groups = self.groups.lock();
        let lane = groups.len();
        groups
            .entry(slot)
            .or_insert_with(|| {
                Arc::new(Group {
                    marker: format!("{}:ack", hash_tagged(key)),
                    lane,
                    route: SingleNodeRoutingInfo::SpecificNode(Route::with_slot(
                        slot,
                        SlotAddr::Master,
                    )),
                    state: Mutex::new(Rounds {
                        next: 1,
                        ..Rounds::default()
                    }),
                    done: watch::Sender::new(Done::default()),
                })
            })
            .clone()
    }

    /// Runs rounds while waiters want one, then stops.
    async fn run_rounds(self: Arc<Self>, group: Arc<Group>) {
        loop {
            let round = {
                let mut rounds = group.state.lock();
                if rounds.wanted < rounds.next {
                    rounds.running = false;
                    return;
                }
                let round = rounds.next;
                rounds.next += 1;
                round
            };
            let replicas = self.round(&group).await;
            let acknowledged = replicas.is_some_and(|count| count >= self.settings.required);
            group.done.send_modify(|done| {
                done.round = round;
                done.replicas = replicas.unwrap_or(0);
                if acknowledged {
                    done.acknowledged = round;
                }
            });
        }
    }

    /// One marker and one `WAIT`: the replicas that acknowledged, or
    /// `None` when the connection failed.
    async fn round(&self, group: &Group) -> Option<u32> {
        let command = self.ack_command();
        let mut pipeline = redis::pipe();
        pipeline.cmd("INCR").arg(&group.marker);
        command.append(
            &mut pipeline,
            self.settings.required,
            u64::try_from(self.settings.timeout.as_millis()).unwrap_or(u64::MAX),
        );
        let started = Instant::now();
        let connection = {
            let connections = self.connections.read();
            connections
                .get(group.lane % connections.len().max(1))
                .cloned()
        }?;
        let replies: Result<Vec<Value>, redis::RedisError> = match connection {
            Connection::Single(mut connection) => pipeline.query_async(&mut connection).await,
            Connection::Cluster(mut connection) => {
                connection
                    .route_pipeline(pipeline, 0, 2, group.route.clone())
                    .await
            }
        };
        self.seconds.record(started.elapsed().as_secs_f64());
        match replies {
            Ok(values) => values.get(1).and_then(|reply| command.replicas(reply)),
            Err(error) => {
                tracing::warn!(%error, "a replica acknowledgment round failed");
                None
            }
        }
    }
}

/// `ns:{tag}` of a key `ns:{tag}:…`: the marker shares the key's slot.
fn hash_tagged(key: &str) -> &str {
    match key.find('}') {
        Some(end) => &key[..=end],
        None => key,
    }
}

impl RedisStore {
    /// Reads each primary's replicas online and, when some primary is
    /// short, the slots it serves (`CLUSTER NODES` on that primary, its
    /// `myself` line); keeps both for [`ReplicaAcks::check_primary`] and
    /// sets `replicas_short`. Errors: a primary did not answer.
    pub(crate) async fn check_replicas_online(&self, acks: &ReplicaAcks) -> Result<(), Error> {
        let required = acks.required();
        let primaries: Vec<PrimaryReplicas> = self
            .connected_replicas()
            .await?
            .into_iter()
            .map(|(primary, online)| PrimaryReplicas { primary, online })
            .collect();
        let read = Replicas {
            required,
            primaries,
        };
        let mut short = ShortSlots::default();
        if read.short().next().is_some() {
            match self.connection() {
                Connection::Single(_) => short.all = Some(0),
                Connection::Cluster(_) => {
                    let nodes = self
                        .on_every_primary(redis::cmd("CLUSTER").arg("NODES"))
                        .await?;
                    for (index, primary) in read.primaries.iter().enumerate() {
                        if primary.online >= required {
                            continue;
                        }
                        let listing = nodes
                            .iter()
                            .find(|(address, _)| *address == primary.primary)
                            .and_then(|(_, reply)| reply.as_ref().ok())
                            .and_then(text)
                            .unwrap_or_default();
                        for slot in own_slots(&listing) {
                            short.slots.insert(slot, index);
                        }
                    }
                }
            }
        }
        let now_short: Vec<PrimaryReplicas> = read.short().cloned().collect();
        let was_short = self
            .inner
            .replicas_short
            .swap(!now_short.is_empty(), Ordering::Relaxed);
        if !now_short.is_empty() && !was_short {
            tracing::warn!(
                short = ?now_short,
                required,
                "a Redis primary lacks replicas; changes on its slots answer 503"
            );
        }
        *acks.replicas.lock() = (read, short);
        Ok(())
    }
}

/// The slots a `CLUSTER NODES` listing's `myself` line says the node
/// serves (`0-5460`, `5461`; slots being imported or migrated, `[…]`, are
/// left out). At most [`CLUSTER_SLOTS`].
fn own_slots(listing: &str) -> Vec<Slot> {
    let Some(line) = listing.lines().find(|line| {
        line.split(' ')
            .nth(2)
            .is_some_and(|flags| flags.split(',').any(|flag| flag == "myself"))
    }) else {
        return Vec::new();
    };
    let mut slots = Vec::new();
    for range in line
        .split(' ')
        .skip(8)
        .filter(|range| !range.starts_with('['))
    {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (Ok(first), Ok(last)) = (first.trim().parse::<u16>(), last.trim().parse::<u16>())
        else {
            continue;
        };
        slots.extend((first..=last.min(CLUSTER_SLOTS - 1)).filter_map(Slot::new));
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `WAIT` counts replicas with the write; `WAITAOF 0 N t` answers
    /// (local fsyncs, replica fsyncs) and the replicas are the second.
    #[test]
    fn a_round_asks_with_wait_or_waitaof_and_reads_the_replicas_of_its_reply() {
        let packed = |command: AckCommand| {
            let mut pipeline = redis::pipe();
            command.append(&mut pipeline, 2, 750);
            String::from_utf8_lossy(&pipeline.get_packed_pipeline()).into_owned()
        };
        assert!(packed(AckCommand::Wait).contains("WAIT\r\n$1\r\n2\r\n$3\r\n750"));
        assert!(packed(AckCommand::WaitAof).contains("WAITAOF\r\n$1\r\n0\r\n$1\r\n2\r\n$3\r\n750"));
        assert_eq!(AckCommand::Wait.replicas(&Value::Int(2)), Some(2));
        let pair = Value::Array(vec![Value::Int(1), Value::Int(1)]);
        assert_eq!(AckCommand::WaitAof.replicas(&pair), Some(1));
        assert_eq!(AckCommand::Wait.replicas(&pair), None);
        assert_eq!(AckCommand::WaitAof.replicas(&Value::Int(2)), None);
        assert_eq!(AckCommand::Wait.replicas(&Value::Int(-1)), None);
    }

    #[test]
    fn own_slots_are_the_myself_lines_ranges_and_single_slots() {
        let listing = "a1 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922\n\
                       b2 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-2 7 \
                       [9->-a1] 16383\n";
        let slots = own_slots(listing);
        let expected: Vec<Slot> = [0, 1, 2, 7, 16_383]
            .into_iter()
            .filter_map(Slot::new)
            .collect();
        assert_eq!(slots, expected);
        assert!(own_slots("a1 127.0.0.1:7002@17002 master - 0 0 2 connected 1-5").is_empty());
    }

    #[test]
    fn short_primaries_and_whether_any_can_acknowledge() {
        let primary = |online| PrimaryReplicas {
            primary: format!("p{online}"),
            online,
        };
        let replicas = Replicas {
            required: 1,
            primaries: vec![primary(1), primary(0)],
        };
        assert_eq!(replicas.short().collect::<Vec<_>>(), [&primary(0)]);
        assert!(!replicas.none_can_acknowledge());
        let alone = Replicas {
            required: 1,
            primaries: vec![primary(0)],
        };
        assert!(alone.none_can_acknowledge());
        assert!(
            !Replicas::default().none_can_acknowledge(),
            "nothing read yet"
        );
    }
}
