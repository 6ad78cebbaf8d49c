//! Token revocation in Redis mode: the deployment's not-before times live
//! in Redis (`ns:{g}:not-before`, a hash of account to ms, and
//! `ns:{g}:revocations`, a stream of every revocation); each node keeps a
//! copy in memory ([`TokenRevocations`]) that the gateway checks on every
//! request after a token's signature, with no call to Redis.
//!
//! A node reads what is new in the stream since its last read (`XRANGE`
//! from the last id it read) every [`crate::POLL_INTERVAL`], on a ticker
//! apart from the deals' poll, and at once when the `revoke` step
//! publishes the stream's key on the
//! deployment's channel; at start, after a failed read and after a new
//! epoch, it reads the whole hash instead. Its copy counts as fresh for
//! [`REVOCATION_PROPAGATION`] after the start of its last successful read;
//! past that the node refuses signed tokens (`503`) rather than take one
//! that may be revoked. A revocation answers only after
//! [`REVOCATION_PROPAGATION`] and [`REVOCATION_MARGIN`] have passed since
//! Redis applied it, so every node that still takes tokens when the
//! answer arrives began a read after it: a client that got the answer can
//! rely on every node refusing the old tokens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashsale_engine::TokenRevocations;
use flashsale_engine::rules::revocation_not_before;
use flashsale_engine::{Account, EngineError, Entity, TOKEN_REVOCATIONS_MAX, Timestamp};

use crate::RedisStore;
use crate::error::Error;
use crate::replies::{garbled, text};
use crate::steps::Revoke;

/// How long a node's copy of the not-before times counts as fresh after
/// the start of its last successful read; also how long a revocation waits
/// before it answers. Four polls' worth, so one slow or failed poll does
/// not make the node refuse tokens.
pub const REVOCATION_PROPAGATION: Duration = Duration::from_secs(1);
/// Added to a revocation's wait: the difference between "Redis applied it"
/// and "the revoking node got the reply", and timer slack.
pub const REVOCATION_MARGIN: Duration = Duration::from_millis(50);
/// Stream entries read per call when catching up.
const REVOCATIONS_READ_MAX: usize = 1_000;

/// One node's copy of the deployment's not-before times.
pub(crate) struct Revocations {
    pub(crate) times: TokenRevocations,
    /// The id of the last stream entry read; `None`: read the whole hash
    /// next time. Held across the reads, so one read runs at a time.
    cursor: tokio::sync::Mutex<Option<String>>,
    /// When the last successful read began, in ms since `origin`, plus one
    /// (0: never).
    synced: AtomicU64,
    origin: Instant,
}

impl Revocations {
    pub(crate) fn new() -> Revocations {
        Revocations {
            times: TokenRevocations::new(),
            cursor: tokio::sync::Mutex::new(None),
            synced: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    fn millis_since_origin(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    fn is_fresh(&self) -> bool {
        let synced = self.synced.load(Ordering::Acquire);
        synced != 0
            && self
                .millis_since_origin(Instant::now())
                .saturating_sub(synced - 1)
                <= REVOCATION_PROPAGATION.as_millis() as u64
    }
}

impl RedisStore {
    /// The account's not-before time as this node knows it, without a
    /// call to Redis. Errors: [`Error::RevocationsStale`] when the node's
    /// copy is older than [`REVOCATION_PROPAGATION`].
    pub fn tokens_not_before(&self, account: Account) -> Result<Option<Timestamp>, Error> {
        let revocations = &self.inner.revocations;
        if !revocations.is_fresh() {
            return Err(Error::RevocationsStale);
        }
        Ok(revocations.times.not_before(account))
    }

    /// Revokes every token of `account` issued up to now (the `revoke`
    /// step, with this node's clock + 1 ms) and answers once every node
    /// refuses them (the module doc). Returns the time in force. Errors:
    /// `NotFound` for an unknown account, `CapacityReached` past
    /// [`TOKEN_REVOCATIONS_MAX`], Redis' failures.
    pub async fn revoke_tokens(&self, account: Account) -> Result<Timestamp, Error> {
        let exists = match account {
            Account::Merchant(id) => self.merchant(id).await?.is_some(),
            Account::Shopper(id) => match self.wallet(id).await {
                Ok(_) => true,
                Err(Error::Engine(EngineError::NotFound(_))) => false,
                Err(error) => return Err(error),
            },
        };
        if !exists {
            return Err(Error::Engine(EngineError::NotFound(match account {
                Account::Merchant(_) => Entity::Merchant,
                Account::Shopper(_) => Entity::Shopper,
            })));
        }
        let values = self
            .run_done(&Revoke {
                times: self.keys().global("not-before"),
                revocations: self.keys().global("revocations"),
                account: account.to_string(),
                not_before: revocation_not_before(self.now()).millis().to_string(),
                bound: TOKEN_REVOCATIONS_MAX.to_string(),
                channel: self.keys().channel(),
            })
            .await?;
        let in_force = values
            .get(1)
            .and_then(text)
            .and_then(|text| text.parse().ok())
            .map(Timestamp)
            .ok_or_else(|| garbled("a revocation's time"))?;
        // This node's own copy knows at once; the others within the bound.
        let _ = self.inner.revocations.times.revoke(account, in_force);
        tokio::time::sleep(REVOCATION_PROPAGATION + REVOCATION_MARGIN).await;
        Ok(in_force)
    }

    /// Reads the revocations made since the last read (or, the first time,
    /// after a failure or a new epoch, all of them) into the node's copy,
    /// and marks it fresh from when the read began. Errors: Redis did not
    /// answer, or a reply is garbled; the next read then reads all.
    pub(crate) async fn sync_revocations(&self) -> Result<(), Error> {
        let started = Instant::now();
        let revocations = &self.inner.revocations;
        let mut cursor = revocations.cursor.lock().await;
        let result = match cursor.take() {
            None => self.read_all_revocations().await,
            Some(from) => self.read_revocations_after(from).await,
        };
        let last = result?;
        *cursor = Some(last);
        // Never backwards: a read that began earlier says less.
        revocations.synced.fetch_max(
            revocations.millis_since_origin(started).saturating_add(1),
            Ordering::AcqRel,
        );
        Ok(())
    }

    /// After a new epoch: the old deployment's times are gone with its
    /// Redis, and its tokens are refused anyway.
    pub(crate) async fn forget_revocations(&self) {
        let mut cursor = self.inner.revocations.cursor.lock().await;
        *cursor = None;
        self.inner.revocations.times.clear();
    }

    /// The whole hash; returns the stream's last id, read first so that
    /// nothing between the two reads is missed (it is read again later).
    async fn read_all_revocations(&self) -> Result<String, Error> {
        let newest: Vec<(String, Vec<String>)> = self
            .query(
                redis::cmd("XREVRANGE")
                    .arg(self.keys().global("revocations"))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        let last = newest
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |(id, _)| id);
        let times: Vec<(String, i64)> = self
            .query(redis::cmd("HGETALL").arg(self.keys().global("not-before")))
            .await?;
        for (account, millis) in times {
            self.learn_revocation(&account, millis)?;
        }
        Ok(last)
    }

    /// Stream entries after `from`; returns the last id read.
    async fn read_revocations_after(&self, mut from: String) -> Result<String, Error> {
        loop {
            let entries: Vec<(String, Vec<String>)> = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(self.keys().global("revocations"))
                        .arg(format!("({from}"))
                        .arg("+")
                        .arg("COUNT")
                        .arg(REVOCATIONS_READ_MAX),
                )
                .await?;
            let full = entries.len() == REVOCATIONS_READ_MAX;
            for (id, fields) in entries {
                let (account, millis) = match fields.as_slice() {
                    [a, account, n, millis] if a == "a" && n == "n" => (account, millis),
                    _ => return Err(garbled("a revocation entry")),
                };
                let millis = millis.parse().map_err(|_| garbled("a revocation's time"))?;
                self.learn_revocation(account, millis)?;
                from = id;
            }
            if !full {
                return Ok(from);
            }
        }
    }

    fn learn_revocation(&self, account: &str, millis: i64) -> Result<(), Error> {
        let account: Account = account.parse().map_err(|()| garbled("a revoked account"))?;
        self.inner
            .revocations
            .times
            .revoke(account, Timestamp(millis))?;
        Ok(())
    }
}
