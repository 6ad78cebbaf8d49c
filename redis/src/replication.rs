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
//! Bounds: one group per Cluster slot (16,384 at most), one round in
//! flight per group, each round bounded by the timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::Value;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, Slot, SlotAddr};
use tokio::sync::watch;

use crate::connection::Connection;
use crate::error::Error;

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
    /// Carries only markers and `WAIT`s: a `WAIT` blocks it.
    connection: Connection,
    groups: Mutex<HashMap<Slot, Arc<Group>>>,
}

/// The rounds of one slot.
struct Group {
    /// A key in the slot, written before each `WAIT`.
    marker: String,
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
    pub(crate) fn new(settings: ReplicaAckSettings, connection: Connection) -> ReplicaAcks {
        ReplicaAcks {
            settings,
            connection,
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// Replicas each change needs.
    pub(crate) fn required(&self) -> u32 {
        self.settings.required
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
        let slot = match self.connection {
            Connection::Single(_) => Slot::for_key(""),
            Connection::Cluster(_) => Slot::for_key(key),
        };
        let mut groups = self.groups.lock();
        groups
            .entry(slot)
            .or_insert_with(|| {
                Arc::new(Group {
                    marker: format!("{}:ack", hash_tagged(key)),
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
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("INCR")
            .arg(&group.marker)
            .cmd("WAIT")
            .arg(self.settings.required)
            .arg(u64::try_from(self.settings.timeout.as_millis()).unwrap_or(u64::MAX));
        let replies: Result<Vec<Value>, redis::RedisError> = match &self.connection {
            Connection::Single(connection) => pipeline.query_async(&mut connection.clone()).await,
            Connection::Cluster(connection) => {
                connection
                    .clone()
                    .route_pipeline(pipeline, 0, 2, group.route.clone())
                    .await
            }
        };
        match replies {
            Ok(values) => match values.get(1) {
                Some(Value::Int(count)) => u32::try_from(*count).ok(),
                _ => None,
            },
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
