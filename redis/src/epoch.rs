//! The deployment in Redis: its layout (shards and secret fingerprint),
//! its epoch, its id for the books, and id sequences handed out under the
//! epoch.

use std::sync::atomic::Ordering;

use crate::error::Error;
use crate::replies::{Reply, garbled, number};
use crate::steps;
use crate::{KEY_LAYOUT_VERSION, NO_EPOCH, RedisStore, STEP_ATTEMPTS_MAX};

impl RedisStore {
    /// The layout a node with `shards` shards and the secret fingerprint
    /// `fingerprint` keeps: `shards=N fingerprint=F keys=V`, `V` being
    /// [`KEY_LAYOUT_VERSION`].
    pub fn layout_for(shards: usize, fingerprint: &str) -> String {
        format!("shards={shards} fingerprint={fingerprint} keys={KEY_LAYOUT_VERSION}")
    }

    /// Checks that this node belongs to the deployment already in this
    /// namespace: the first node keeps [`RedisStore::layout_for`] in
    /// `ns:{g}:layout` (`SET NX GET`, one call), every later one must
    /// match it. `fingerprint` is the gateway's `Signer::fingerprint`.
    /// Returns `Err((kept, ours))`, both layouts, when they differ;
    /// errors: Redis did not answer.
    pub async fn agree_layout(
        &self,
        fingerprint: &str,
    ) -> Result<Result<(), (String, String)>, Error> {
        let ours = Self::layout_for(self.inner.shards, fingerprint);
        let found: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.keys().global("layout"))
                    .arg(&ours)
                    .arg("NX")
                    .arg("GET"),
            )
            .await?;
        Ok(match found {
            Some(found) if found != ours => Err((found, ours)),
            _ => Ok(()),
        })
    }

    /// The key [`RedisStore::agree_layout`] keeps the layout in
    /// (`<ns>:{g}:layout`).
    pub fn layout_key(&self) -> String {
        self.keys().global("layout")
    }

    /// The layout kept by [`RedisStore::agree_layout`] (`shards=N
    /// fingerprint=F`), or `None` when no node has served this namespace.
    pub async fn layout(&self) -> Result<Option<String>, Error> {
        self.query(redis::cmd("GET").arg(self.keys().global("layout")))
            .await
    }

    /// The deployment's epoch as last read (see the module doc, "Epochs").
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Reads the deployment's epoch, setting a new random one when Redis
    /// has none (the first start, or Redis lost its data): `SET NX GET`,
    /// one call, so nodes racing on an empty Redis agree on one. A new
    /// epoch drops every deal, sold-out flag and merchant this node
    /// cached: none of them is Redis' any more. Errors: Redis did not
    /// answer; [`Error::Random`].
    pub(crate) async fn follow_epoch(&self) -> Result<u64, Error> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(Error::Random)?;
        let proposed = u64::from_le_bytes(bytes).max(1);
        let found: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.keys().global("epoch"))
                    .arg(proposed)
                    .arg("NX")
                    .arg("GET"),
            )
            .await?;
        let epoch = match found {
            None => proposed,
            Some(text) => text
                .parse()
                .map_err(|_| garbled("the deployment's epoch"))?,
        };
        let before = self.inner.epoch.swap(epoch, Ordering::AcqRel);
        if before != epoch && before != NO_EPOCH {
            tracing::warn!(
                before = format_args!("{before:016x}"),
                now = format_args!("{epoch:016x}"),
                "the deployment's epoch changed (Redis lost its data): cached deals dropped, \
                 tokens of the old epoch refused"
            );
            self.inner.deals.write().clear();
            self.inner.merchants.write().clear();
            self.inner.newest.write().clear();
            self.forget_revocations().await;
        }
        Ok(epoch)
    }

    /// The last of `count` new ids of `kind` (`merchant`, `shopper`,
    /// `deal`), handed out only under the epoch this node knows (the `ids`
    /// step), so a node that missed Redis losing its data never numbers
    /// an account from the old count or signs it with the old epoch. A
    /// new deal's id goes into the deployment's deal index in the same
    /// step (`index`). Errors: Redis did not answer, or the epoch kept
    /// moving ([`Error::RedisBusy`]).
    pub(crate) async fn next_ids(&self, kind: &str, count: u32, index: bool) -> Result<u64, Error> {
        let mut call = steps::Ids {
            sequences: self.keys().global("seq"),
            epoch: self.keys().global("epoch"),
            index: if index {
                vec![self.keys().global("deals")]
            } else {
                Vec::new()
            },
            kind: kind.to_owned(),
            count: count.to_string(),
            node_epoch: String::new(),
        };
        for _ in 0..STEP_ATTEMPTS_MAX {
            call.node_epoch = self.epoch().to_string();
            match self.run(&call, None).await? {
                Reply::Done(values) => {
                    return u64::try_from(number(values.get(1))).map_err(|_| garbled("an id"));
                }
                Reply::Epoch => {
                    self.follow_epoch().await?;
                }
                Reply::Refused(_) | Reply::Refill { .. } | Reply::Terms | Reply::Backlog => {
                    return Err(garbled("an id step"));
                }
            }
        }
        Err(Error::RedisBusy)
    }
}

impl RedisStore {
    /// The deployment's id for Postgres' keys, shared by its nodes: kept in
    /// `ns:{g}:deployment`, set to `candidate` by the first node that asks.
    pub async fn deployment_id(&self, candidate: &str) -> Result<String, Error> {
        let key = self.keys().global("deployment");
        self.query::<()>(redis::cmd("SET").arg(&key).arg(candidate).arg("NX"))
            .await?;
        self.query(redis::cmd("GET").arg(&key)).await
    }

    /// The deployment's id for Postgres' keys, if a node has set it.
    pub async fn known_deployment_id(&self) -> Result<Option<String>, Error> {
        self.query(redis::cmd("GET").arg(self.keys().global("deployment")))
            .await
    }

    /// Virtual shards of the deployment (`--redis-shards`).
    pub fn shards(&self) -> usize {
        self.inner.shards
    }
}
