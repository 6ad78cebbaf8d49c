//! The crate's one error type: what can go wrong talking to Redis, beside
//! the engine's own refusals that the steps answer with.

use flashsale_engine::EngineError;

/// What a Redis-mode call can fail with. The gateway maps each variant to
/// the contract's status and code in one place. `Clone`: one failure of
/// a batched call is each of its requests' answer (`batch`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A refusal of a step, in the engine's terms (sold out, limit, funds…).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Redis did not answer in time, or the connection is down. The
    /// outcome of a change is unknown; the client's retry with the same
    /// `Idempotency-Key` resolves it.
    #[error(
        "the sale's store (Redis) did not answer; retry shortly (a change retried with the same Idempotency-Key gets its first outcome)"
    )]
    Redis(#[source] redis::RedisError),
    /// Connecting to Redis took longer than the connect timeout.
    #[error("Redis did not accept a connection in time")]
    RedisTimeout,
    /// A buy kept meeting moving stock (refills) past its bounded attempts.
    #[error("the deal's stock is being moved; retry with the same Idempotency-Key")]
    RedisBusy,
    /// [`crate::REQUESTS_WAITING_MAX`] requests for the same deal on the
    /// same shard already wait for their call to Redis on this node:
    /// refused before it was sent, nothing changed.
    #[error("too many requests for this deal wait for Redis on this node; retry shortly")]
    RequestsWaiting,
    /// The node stopped (its runtime shut down) before the call holding
    /// this request answered: its outcome is unknown until the client
    /// retries with the same `Idempotency-Key`.
    #[error("the node stopped before Redis answered; retry with the same Idempotency-Key")]
    Abandoned,
    /// The shard's books stream holds `--books-backlog-max`'s share of
    /// entries not yet in Postgres (Postgres down or behind), so no order
    /// is settled until the backlog drains; nothing changed.
    #[error("the books are behind (Postgres); retry shortly")]
    BooksBacklog,
    /// A change ran, but fewer replicas than `--redis-replica-acks`
    /// acknowledged it in time (`WAIT`): its outcome is unknown until the
    /// client retries with the same `Idempotency-Key`.
    #[error(
        "{acknowledged} of the {required} Redis replicas required acknowledged the change in time; retry with the same Idempotency-Key"
    )]
    ReplicasBehind { acknowledged: u32, required: u32 },
    /// This node has not read the deployment's token revocations within
    /// `REVOCATION_PROPAGATION`, so it cannot tell whether a token is
    /// revoked: signed tokens are refused until it reads them again.
    #[error("this node cannot read the token revocations from Redis; retry shortly")]
    RevocationsStale,
    /// The primary holding the change's slot had fewer replicas online
    /// than `--redis-replica-acks` asks at the last read (every second),
    /// so the change was refused before it ran: nothing changed.
    #[error(
        "the Redis primary {primary} holding this change has {online} of the {required} replicas required online, so no change there could be acknowledged; retry shortly"
    )]
    ReplicasShort {
        primary: String,
        online: u32,
        required: u32,
    },
    /// The shopper's account was made in another epoch than the caller's
    /// token (the `EPOCH` reply of a step acting for a shopper): Redis
    /// lost its data and the token's id names an account made since, by a
    /// node that saw the new epoch before this one did. Nothing changed;
    /// the gateway refuses the token as it refuses one of an earlier epoch.
    #[error("the token is of an earlier epoch of this deployment")]
    EarlierEpoch,
    /// A setting that cannot work, naming the flag.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The operating system gave no random bytes (a new epoch).
    #[error("cannot generate random bytes for a secret")]
    Random(#[source] getrandom::Error),
}
