//! What an acknowledged change is worth in Redis mode: what a `201`
//! promises depends on Redis' persistence (`docs/durability.md`).
//!
//! Owns the reading of a Redis' persistence settings (`CONFIG GET
//! appendonly appendfsync`, and `COMMAND INFO WAITAOF` for whether the
//! server can wait for its own fsync on request) and their classification
//! into a [`DurabilityMode`]. The store reads them on every primary at
//! start and again on the poller; a Cluster is as durable as its weakest
//! primary.

use std::collections::HashMap;

use redis::Value;

use std::sync::atomic::Ordering;

use crate::RedisStore;
use crate::error::Error;
use crate::replies::text;

/// What a `201` is worth, weakest first, so that the weakest primary of a
/// Cluster is the `min` of its primaries' modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DurabilityMode {
    /// No append-only file, `appendfsync no`, or settings Redis will not
    /// tell (`CONFIG` renamed or denied): a restart of Redis may lose every
    /// acknowledged order since its last snapshot, or all of them.
    Volatile,
    /// `appendonly yes` with `appendfsync everysec`: Redis writes the AOF
    /// before it replies and fsyncs it once a second, so a `kill -9` of
    /// Redis loses nothing and a power loss about the last second.
    Everysec,
    /// `appendonly yes` with `appendfsync always`: Redis fsyncs the AOF
    /// before it replies, so an acknowledged order survives a `kill -9` of
    /// Redis and a power loss of its machine.
    Always,
}

impl DurabilityMode {
    /// Every mode, for `/metrics` (one series per mode, 1 for the current).
    pub const ALL: [DurabilityMode; 3] = [
        DurabilityMode::Always,
        DurabilityMode::Everysec,
        DurabilityMode::Volatile,
    ];

    /// The mode's name in `/readyz` and `/metrics`: `always`, `everysec`
    /// or `volatile`.
    pub fn name(self) -> &'static str {
        match self {
            DurabilityMode::Volatile => "volatile",
            DurabilityMode::Everysec => "everysec",
            DurabilityMode::Always => "always",
        }
    }
}

/// The persistence of the Redis (or of every primary of a Cluster) as last
/// read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    /// The weakest server's mode.
    pub mode: DurabilityMode,
    /// What the weakest server said, for people: `appendonly yes,
    /// appendfsync always`, or why its settings are unknown; on a Cluster
    /// prefixed with the server's address.
    pub found: String,
    /// Every server offers `WAITAOF` (Redis 7.2 or later, Valkey): an
    /// acknowledgement could also wait for a replica's fsync. This node
    /// does not use it; it is reported so an operator knows it is there.
    pub waitaof: bool,
}

/// One server's reply to a command, or its refusal (the error text).
pub(super) type ServerReply = Result<Value, String>;

impl Durability {
    /// Classifies each server's replies `(address, CONFIG GET appendonly
    /// appendfsync, COMMAND INFO WAITAOF)` and keeps the weakest; an
    /// empty list (no server answered) is `Volatile`.
    pub(super) fn of_servers(servers: &[(String, ServerReply, ServerReply)]) -> Durability {
        let several = servers.len() > 1;
        let mut weakest: Option<(DurabilityMode, String)> = None;
        let mut waitaof = !servers.is_empty();
        for (address, config, command_info) in servers {
            let (mode, found) = classify(config);
            let found = if several {
                format!("{address}: {found}")
            } else {
                found
            };
            if weakest.as_ref().is_none_or(|(least, _)| mode < *least) {
                weakest = Some((mode, found));
            }
            waitaof &= has_command(command_info);
        }
        let (mode, found) = weakest.unwrap_or((
            DurabilityMode::Volatile,
            "no server answered CONFIG GET".to_owned(),
        ));
        Durability {
            mode,
            found,
            waitaof,
        }
    }
}

/// One server's mode and what it said, from its `CONFIG GET appendonly
/// appendfsync` reply (pairs, as an array or a map). A refusal or a reply
/// without the settings is unknown, and unknown counts as volatile.
fn classify(reply: &ServerReply) -> (DurabilityMode, String) {
    let value = match reply {
        Ok(value) => value,
        Err(refusal) => {
            return (
                DurabilityMode::Volatile,
                format!("CONFIG GET was refused ({refusal}), so its persistence is unknown"),
            );
        }
    };
    let settings = pairs(value);
    let appendonly = settings.get("appendonly").map(String::as_str);
    let appendfsync = settings.get("appendfsync").map(String::as_str);
    match (appendonly, appendfsync) {
        (Some("yes"), Some("always")) => (
            DurabilityMode::Always,
            "appendonly yes, appendfsync always".to_owned(),
        ),
        (Some("yes"), Some("everysec")) => (
            DurabilityMode::Everysec,
            "appendonly yes, appendfsync everysec".to_owned(),
        ),
        (Some("yes"), Some(other)) => (
            DurabilityMode::Volatile,
            format!(
                "appendonly yes, appendfsync {other} (the OS decides when the AOF reaches the disk)"
            ),
        ),
        (Some("no"), _) => (DurabilityMode::Volatile, "appendonly no".to_owned()),
        _ => (
            DurabilityMode::Volatile,
            "CONFIG GET did not say appendonly and appendfsync, so its persistence is unknown"
                .to_owned(),
        ),
    }
}

/// `CONFIG GET`'s name/value pairs: a flat array (RESP2) or a map (RESP3).
fn pairs(value: &Value) -> HashMap<String, String> {
    let mut settings = HashMap::new();
    match value {
        Value::Array(items) => {
            for pair in items.chunks_exact(2) {
                if let (Some(name), Some(value)) = (text(&pair[0]), text(&pair[1])) {
                    settings.insert(name, value);
                }
            }
        }
        Value::Map(items) => {
            for (name, value) in items {
                if let (Some(name), Some(value)) = (text(name), text(value)) {
                    settings.insert(name, value);
                }
            }
        }
        _ => {}
    }
    settings
}

/// Whether a `COMMAND INFO <name>` reply describes the command: Redis
/// answers `[nil]` for a command it does not have.
fn has_command(reply: &ServerReply) -> bool {
    match reply {
        Ok(Value::Array(items)) => items.first().is_some_and(|item| *item != Value::Nil),
        Ok(Value::Map(items)) => !items.is_empty(),
        _ => false,
    }
}

impl RedisStore {
    /// Redis' persistence as last read: what a `201` is worth now.
    pub fn durability(&self) -> Durability {
        self.inner.durability.read().clone()
    }

    /// Reads Redis' persistence on every primary, keeps it, and says when
    /// it changed. Errors: Redis did not answer.
    pub(crate) async fn check_durability(&self) -> Result<(), Error> {
        let configs = self
            .on_every_primary(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("appendonly")
                    .arg("appendfsync"),
            )
            .await?;
        let infos = self
            .on_every_primary(redis::cmd("COMMAND").arg("INFO").arg("WAITAOF"))
            .await?;
        let servers: Vec<(String, ServerReply, ServerReply)> = configs
            .into_iter()
            .map(|(address, config)| {
                let info = infos
                    .iter()
                    .find(|(other, _)| *other == address)
                    .map_or_else(|| Err("no reply".to_owned()), |(_, info)| info.clone());
                (address, config, info)
            })
            .collect();
        let now = Durability::of_servers(&servers);
        let refused = now.mode == DurabilityMode::Volatile && !self.inner.allow_volatile;
        self.inner
            .volatile_refused
            .store(refused, Ordering::Relaxed);
        if let Some(acks) = &self.inner.replica_acks {
            acks.prefer_waitaof(now.waitaof);
            self.check_replicas_online(acks).await?;
        }
        let before = std::mem::replace(&mut *self.inner.durability.write(), now.clone());
        if before.mode != now.mode {
            if now.mode < before.mode {
                tracing::warn!(mode = now.mode.name(), found = %now.found, "Redis' persistence is weaker than before");
            } else {
                tracing::info!(mode = now.mode.name(), found = %now.found, "Redis' persistence");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn config(appendonly: &str, appendfsync: &str) -> ServerReply {
        Ok(Value::Array(vec![
            bulk("appendonly"),
            bulk(appendonly),
            bulk("appendfsync"),
            bulk(appendfsync),
        ]))
    }

    fn without_waitaof() -> ServerReply {
        Ok(Value::Array(vec![Value::Nil]))
    }

    fn one(config: ServerReply) -> Durability {
        Durability::of_servers(&[("the Redis".to_owned(), config, without_waitaof())])
    }

    #[test]
    fn each_setting_is_classified_and_unknown_is_volatile() {
        assert_eq!(one(config("yes", "always")).mode, DurabilityMode::Always);
        assert_eq!(
            one(config("yes", "everysec")).mode,
            DurabilityMode::Everysec
        );
        for weak in [config("yes", "no"), config("no", "always")] {
            assert_eq!(one(weak).mode, DurabilityMode::Volatile);
        }
        let refused = one(Err("ERR unknown command 'CONFIG'".to_owned()));
        assert_eq!(refused.mode, DurabilityMode::Volatile);
        assert!(refused.found.contains("refused"), "{}", refused.found);
        let silent = one(Ok(Value::Array(Vec::new())));
        assert_eq!(silent.mode, DurabilityMode::Volatile);
        let map = one(Ok(Value::Map(vec![
            (bulk("appendonly"), bulk("yes")),
            (bulk("appendfsync"), bulk("always")),
        ])));
        assert_eq!(map.mode, DurabilityMode::Always, "a RESP3 map");
        assert_eq!(map.found, "appendonly yes, appendfsync always");
    }

    #[test]
    fn a_cluster_is_as_durable_as_its_weakest_primary() {
        let with_waitaof = || Ok(Value::Array(vec![Value::Array(vec![bulk("waitaof")])]));
        let cluster = Durability::of_servers(&[
            ("a:1".to_owned(), config("yes", "always"), with_waitaof()),
            ("b:2".to_owned(), config("yes", "everysec"), with_waitaof()),
            ("c:3".to_owned(), config("yes", "always"), with_waitaof()),
        ]);
        assert_eq!(cluster.mode, DurabilityMode::Everysec);
        assert_eq!(cluster.found, "b:2: appendonly yes, appendfsync everysec");
        assert!(cluster.waitaof);
        let mixed = Durability::of_servers(&[
            ("a:1".to_owned(), config("yes", "always"), with_waitaof()),
            ("b:2".to_owned(), config("yes", "always"), without_waitaof()),
        ]);
        assert!(!mixed.waitaof, "WAITAOF only when every primary has it");
        assert_eq!(
            Durability::of_servers(&[]).mode,
            DurabilityMode::Volatile,
            "no answer is no promise"
        );
    }
}
