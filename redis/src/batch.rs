//! The per-shard batcher: a node's buys and holds of one deal on one
//! shard that arrive while its previous `reserve` call for them is in
//! flight go together in the next call, each with its own outcome (a
//! group commit, as a database's log writer gathers the commits that
//! arrive during a flush).
//!
//! A request finding its lane (deal, shard) idle is sent at once, alone,
//! from its own task, so batching adds no wait and no hop between tasks;
//! while a call is in flight the lane gathers what arrives and a task of
//! its own sends it, up to [`RESERVE_BATCH_MAX`] requests a call, as soon
//! as that call answers. So the busier Redis is, the more requests share
//! each call and the less Redis spends per buy (the call's fixed part, the
//! shard's numbers read and written once: `redis/flashsale.lua`,
//! `reserve`). Every request keeps its own idempotency record, wallet and
//! outcome; the step decides them in order as it would separate calls.
//! One lane has at most one call in flight, and a node at most
//! `--redis-reserve-calls-in-flight` calls of all its lanes: a lane whose
//! request finds none free gathers what arrives until one frees and sends
//! it all in one call. Redis runs a primary's calls one after another, so
//! more calls in flight only wait there, one request a call; fewer carry
//! more each and cost Redis and the node less per buy. A call holds its
//! place for [`RESERVE_CALL_PLACE_HOLD_MAX`] at most, so a frozen primary
//! keeps no other lane waiting longer than that; so the bound is soft:
//! when calls take longer than that to answer (a primary or the node
//! overloaded), more of them are in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flashsale_engine::{DealId, ShopperId};
use parking_lot::Mutex;
use redis::Value;
use tokio::sync::{Semaphore, SemaphorePermit, oneshot};

use crate::RedisStore;
use crate::cache::DealEntry;
use crate::error::Error;
use crate::replies::{Reply, garbled, reply_of, text};
use crate::steps::{self, RESERVE_OUTCOMES};

/// Requests in one `reserve` call at most: bounds one call's time in
/// Redis (a few hundred µs), which holds up every other client of that
/// primary while it runs.
pub const RESERVE_BATCH_MAX: usize = 64;
/// Requests of one lane (deal, shard) waiting on this node at most,
/// beyond the call in flight; past it a request is refused at once
/// ([`Error::RequestsWaiting`], `503`). It is far above what one lane
/// gathers while its call is in flight under the gateway's own bound on
/// requests in progress.
pub const REQUESTS_WAITING_MAX: usize = 4_096;
/// `--redis-reserve-calls-in-flight` by default: on the two-node
/// comparison (`scripts/compare.sh`) four made calls of about ten buys,
/// where a place per lane made calls of about four
/// (docs/performance.md, "Fewer calls in flight").
pub const RESERVE_CALLS_IN_FLIGHT_DEFAULT: usize = 4;
/// `--redis-reserve-calls-in-flight` at most: far past where fuller calls
/// stop paying (one primary runs one call at a time).
pub const RESERVE_CALLS_IN_FLIGHT_MAX: usize = 4_096;
/// How long a call holds its place among the node's calls in flight at
/// most: past it the place goes to the next lane while the call goes on
/// waiting for its answer (bounded by the response timeout), so a frozen
/// or lost primary's calls give their places up and the other
/// primaries' lanes keep going. A call answered later than this no
/// longer counts against the bound.
pub const RESERVE_CALL_PLACE_HOLD_MAX: Duration = Duration::from_millis(2);

/// The `reserve` calls a node sent and the requests they held, since it
/// connected: `requests / calls` is the mean batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReserveCalls {
    pub calls: u64,
    pub requests: u64,
}

/// One buy or hold, as the step takes it.
#[derive(Clone)]
pub(crate) struct Request {
    pub(crate) shopper: ShopperId,
    /// `order` or `hold`.
    pub(crate) kind: &'static str,
    pub(crate) quantity: u32,
    pub(crate) key: String,
    /// The caller's token's epoch.
    pub(crate) epoch: u64,
}

/// A request's outcome, with this node's refills of the shard's bucket of
/// the deal ([`DealEntry::refills_of`]) when its call was sent: a request
/// answered `REFILL` moves no stock if the node refilled the shard since
/// ([`RedisStore::refill`]).
pub(crate) type Sent = (Reply, u64);

/// A request waiting in its lane, with where its outcome goes.
struct Waiting {
    request: Request,
    answer: oneshot::Sender<Result<Sent, Error>>,
}

/// One deal's requests on one shard waiting for a call. A lane exists
/// while its calls go on: from a request that finds none until no request
/// waits after a call.
struct Lane {
    waiting: VecDeque<Waiting>,
}

/// A lane's deal: its id, and which cached entry of it (the entry's
/// address, alive while its lane is): a deal read afresh after a new
/// epoch, whose id may name another deal, never shares a lane with the
/// old entry's requests.
type LaneKey = (DealId, usize);

fn lane_key(entry: &Arc<DealEntry>) -> LaneKey {
    (entry.id, Arc::as_ptr(entry) as usize)
}

/// Every lane of the node: per shard, by deal; the places of its calls in
/// flight; and its counts.
pub(crate) struct Lanes {
    shards: Vec<Mutex<HashMap<LaneKey, Lane>>>,
    /// One permit per call in flight (`--redis-reserve-calls-in-flight`);
    /// handed out in the order asked (tokio's semaphore is fair).
    places: Semaphore,
    calls: AtomicU64,
    requests: AtomicU64,
}

impl Lanes {
    /// Lanes for `shards` shards with `calls_in_flight` places (at least
    /// one, at most [`RESERVE_CALLS_IN_FLIGHT_MAX`]: the settings check).
    pub(crate) fn new(shards: usize, calls_in_flight: usize) -> Lanes {
        Lanes {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            places: Semaphore::new(calls_in_flight.clamp(1, RESERVE_CALLS_IN_FLIGHT_MAX)),
            calls: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }
}

/// How a request joined its lane: behind a call in flight (or, first in
/// an idle lane, behind the node's calls in flight: `queued`, its lane's
/// task to start), or first with a place free.
enum Joined<'a> {
    Waiting {
        outcome: oneshot::Receiver<Result<Sent, Error>>,
        queued: bool,
    },
    First(Request, SemaphorePermit<'a>),
}

/// Ends an idle lane's first call: drops the lane when nothing waits, or
/// hands the waiting requests to a [`RedisStore::drain`] task. On drop, so
/// a caller that stops waiting mid-call never leaves its lane stuck.
struct Handoff<'a> {
    store: &'a RedisStore,
    entry: &'a Arc<DealEntry>,
    shard: usize,
}

impl Drop for Handoff<'_> {
    fn drop(&mut self) {
        let Some(lanes) = self.store.inner.lanes.shards.get(self.shard) else {
            return;
        };
        let mut lanes = lanes.lock();
        let key = lane_key(self.entry);
        if lanes.get(&key).is_none_or(|lane| lane.waiting.is_empty()) {
            lanes.remove(&key);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                drop(lanes);
                runtime.spawn(self.store.clone().drain(self.entry.clone(), self.shard));
            }
            // No runtime (the node is stopping): the waiting requests'
            // callers get `Abandoned`.
            Err(_) => {
                lanes.remove(&key);
            }
        }
    }
}

impl RedisStore {
    /// The `reserve` calls this node sent and the requests they held.
    pub fn reserve_calls(&self) -> ReserveCalls {
        let lanes = &self.inner.lanes;
        ReserveCalls {
            calls: lanes.calls.load(Ordering::Relaxed),
            requests: lanes.requests.load(Ordering::Relaxed),
        }
    }

    /// One run of the `reserve` step for `request` on `shard`, in a call
    /// shared with the lane's other requests: its own outcome, as
    /// [`RedisStore::run`] would give it alone (a done or replayed
    /// request answered once its replicas have it). Errors: a full lane
    /// ([`Error::RequestsWaiting`]), and the call's own, for each request
    /// it held.
    pub(crate) async fn reserve_step(
        &self,
        entry: &Arc<DealEntry>,
        shard: usize,
        request: Request,
    ) -> Result<Sent, Error> {
        let Some(lanes) = self.inner.lanes.shards.get(shard) else {
            return Err(garbled("a shard past the shard count"));
        };
        let joined = {
            let mut lanes = lanes.lock();
            match lanes.get_mut(&lane_key(entry)) {
                Some(lane) if lane.waiting.len() >= REQUESTS_WAITING_MAX => {
                    return Err(Error::RequestsWaiting);
                }
                Some(lane) => {
                    let (answer, outcome) = oneshot::channel();
                    lane.waiting.push_back(Waiting { request, answer });
                    Joined::Waiting {
                        outcome,
                        queued: false,
                    }
                }
                None => match self.inner.lanes.places.try_acquire() {
                    Ok(place) => {
                        lanes.insert(
                            lane_key(entry),
                            Lane {
                                waiting: VecDeque::new(),
                            },
                        );
                        Joined::First(request, place)
                    }
                    // No place free: the request waits in its lane, whose
                    // task sends it with what arrives meanwhile.
                    Err(_) => {
                        let (answer, outcome) = oneshot::channel();
                        lanes.insert(
                            lane_key(entry),
                            Lane {
                                waiting: VecDeque::from([Waiting { request, answer }]),
                            },
                        );
                        Joined::Waiting {
                            outcome,
                            queued: true,
                        }
                    }
                },
            }
        };
        let (request, place) = match joined {
            Joined::Waiting { outcome, queued } => {
                if queued {
                    tokio::spawn(self.clone().drain(entry.clone(), shard));
                }
                return outcome.await.unwrap_or(Err(Error::Abandoned));
            }
            Joined::First(request, place) => (request, place),
        };
        // The lane was idle and a place free: this request's call goes
        // alone, from its own task. The guard hands what arrives meanwhile
        // to a task of the lane's own when the call answers, or when the
        // caller stops waiting (its client hung up) and drops this future.
        let _handoff = Handoff {
            store: self,
            entry,
            shard,
        };
        let (refills, mut outcomes) = self
            .reserve_call(entry, shard, std::slice::from_ref(&request), Some(place))
            .await;
        outcomes
            .pop()
            .map(|outcome| outcome.map(|reply| (reply, refills)))
            .unwrap_or_else(|| Err(garbled("no outcome for a request")))
    }

    /// Sends the lane's waiting requests, [`RESERVE_BATCH_MAX`] a call,
    /// one call at a time, each once a place among the node's calls in
    /// flight is free, until none waits; then the lane ends. Its own task:
    /// the calls go on whether or not their callers still wait.
    async fn drain(self, entry: Arc<DealEntry>, shard: usize) {
        let Some(lanes) = self.inner.lanes.shards.get(shard) else {
            return;
        };
        loop {
            // A lane nothing waits in ends without waiting for a place
            // (only this task takes from it, so what waits now still
            // waits once a place is free).
            {
                let mut lanes = lanes.lock();
                if lanes
                    .get(&lane_key(&entry))
                    .is_none_or(|lane| lane.waiting.is_empty())
                {
                    lanes.remove(&lane_key(&entry));
                    return;
                }
            }
            // Never closed; a closed semaphore would only mean no bound.
            let place = self.inner.lanes.places.acquire().await.ok();
            let batch: Vec<Waiting> = {
                let mut lanes = lanes.lock();
                let Some(lane) = lanes.get_mut(&lane_key(&entry)) else {
                    return;
                };
                let count = lane.waiting.len().min(RESERVE_BATCH_MAX);
                lane.waiting.drain(..count).collect()
            };
            if batch.is_empty() {
                continue;
            }
            let (requests, answers): (Vec<Request>, Vec<_>) = batch
                .into_iter()
                .map(|waiting| (waiting.request, waiting.answer))
                .unzip();
            let (refills, outcomes) = self.reserve_call(&entry, shard, &requests, place).await;
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                // A caller gone (its client hung up) needs no answer.
                let _ = answer.send(outcome.map(|reply| (reply, refills)));
            }
        }
    }

    /// One `reserve` call for `requests` (at least one): this node's
    /// refills of the shard when it was sent, and an outcome per request,
    /// in order. `place`: the call's place among the node's calls in
    /// flight, given up when it answers or after
    /// [`RESERVE_CALL_PLACE_HOLD_MAX`], whichever comes first (before
    /// the replicas' acknowledgment is awaited).
    async fn reserve_call(
        &self,
        entry: &DealEntry,
        shard: usize,
        requests: &[Request],
        place: Option<SemaphorePermit<'_>>,
    ) -> (u64, Vec<Result<Reply, Error>>) {
        let keys = self.keys();
        let mut call = steps::Reserve {
            stock: keys.shard(shard, "stock"),
            orders: keys.shard(shard, "orders"),
            holds: keys.shard(shard, "holds"),
            expiries: keys.shard(shard, "exp"),
            sequences: keys.shard(shard, "seq"),
            deal_orders: keys.shard_id(shard, "do", entry.id.0),
            records: keys.shard_id(shard, "rec", entry.id.0),
            books: keys.shard(shard, "books"),
            accounts: Vec::with_capacity(requests.len()),
            deal: entry.id.0.to_string(),
            shard: shard.to_string(),
            sold_out: if entry.sold_out.load(Ordering::Acquire) {
                "1"
            } else {
                "0"
            }
            .to_owned(),
            backlog: self.inner.books_backlog.clone(),
            terms: entry.terms_arg(),
            each: Vec::with_capacity(requests.len() * 5),
        };
        for request in requests {
            call.accounts
                .push(keys.shard_id(shard, "acct", request.shopper.0));
            call.each.extend([
                request.shopper.0.to_string(),
                request.kind.to_owned(),
                request.quantity.to_string(),
                request.epoch.to_string(),
                request.key.clone(),
            ]);
        }
        let lanes = &self.inner.lanes;
        lanes.calls.fetch_add(1, Ordering::Relaxed);
        lanes
            .requests
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        let every = |error: Error| requests.iter().map(|_| Err(error.clone())).collect();
        let refills = entry.refills_of(shard);
        let sent = {
            // Moved in: the place is given up when this block ends at the
            // latest, so never held through the replicas' acknowledgment.
            let place = place;
            let send = self.send(&call);
            tokio::pin!(send);
            tokio::select! {
                sent = &mut send => sent,
                () = tokio::time::sleep(RESERVE_CALL_PLACE_HOLD_MAX) => {
                    drop(place);
                    send.await
                }
            }
        };
        let values = match sent {
            Ok(values) => values,
            Err(error) => return (refills, every(error)),
        };
        if values.first().and_then(text).as_deref() == Some("TERMS") {
            return (refills, requests.iter().map(|_| Ok(Reply::Terms)).collect());
        }
        let mut outcomes = outcomes_of(values, requests.len());
        // Done or replayed requests are answered once replicas have them.
        if outcomes
            .iter()
            .any(|outcome| matches!(outcome, Ok(Reply::Done(_))))
            && let Err(error) = self.acknowledge(&call).await
        {
            for outcome in &mut outcomes {
                if matches!(outcome, Ok(Reply::Done(_))) {
                    *outcome = Err(error.clone());
                }
            }
        }
        (refills, outcomes)
    }
}

/// The outcomes of a `reserve` reply (`OK`, then each request's outcome
/// laid out flat: its tag and that tag's fields, [`RESERVE_OUTCOMES`]),
/// `requests` of them: a reply of its own each, and an error for each
/// one the reply lacks or garbles (with every one after it).
fn outcomes_of(values: Vec<Value>, requests: usize) -> Vec<Result<Reply, Error>> {
    let mut outcomes = Vec::with_capacity(requests);
    let mut words = values.into_iter().skip(1);
    while outcomes.len() < requests {
        let Some(first) = words.next() else {
            break;
        };
        let tag = text(&first).unwrap_or_default();
        let Some(&(_, count)) = RESERVE_OUTCOMES.iter().find(|(known, _)| *known == tag) else {
            outcomes.push(Err(garbled("a reserve outcome's tag")));
            break;
        };
        let mut outcome = Vec::with_capacity(count);
        outcome.push(first);
        outcome.extend(words.by_ref().take(count - 1));
        if outcome.len() < count {
            outcomes.push(Err(garbled("a reserve outcome")));
            break;
        }
        outcomes.push(reply_of(outcome, None));
    }
    while outcomes.len() < requests {
        outcomes.push(Err(garbled("fewer outcomes than requests")));
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use flashsale_engine::EngineError;
    use redis::Value;

    use super::outcomes_of;
    use crate::error::Error;
    use crate::replies::Reply;
    use crate::steps::{LIBRARY_SOURCE, RESERVE_OUTCOMES};

    fn word(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn reply(words: &[Value]) -> Vec<Value> {
        let mut values = vec![word("OK")];
        values.extend_from_slice(words);
        values
    }

    fn is_garbled(outcome: &Result<Reply, Error>) -> bool {
        matches!(
            outcome,
            Err(Error::Engine(EngineError::Inconsistent { .. }))
        )
    }

    /// The script's `RESERVE_OUTCOME_WORDS` and [`RESERVE_OUTCOMES`] say
    /// the same: a tag the two count apart would shift every outcome
    /// after it.
    #[test]
    fn the_script_and_the_node_count_an_outcome_s_words_alike() {
        let line = LIBRARY_SOURCE
            .lines()
            .find_map(|line| line.strip_prefix("local RESERVE_OUTCOME_WORDS = {"))
            .expect("the script's RESERVE_OUTCOME_WORDS");
        let mut stated: Vec<(String, usize)> = line
            .trim_end_matches('}')
            .split(',')
            .map(|pair| {
                let (tag, words) = pair.split_once('=').expect("tag = words");
                (
                    tag.trim().to_owned(),
                    words.trim().parse().expect("a count"),
                )
            })
            .collect();
        let mut known: Vec<(String, usize)> = RESERVE_OUTCOMES
            .iter()
            .map(|(tag, words)| ((*tag).to_owned(), *words))
            .collect();
        stated.sort();
        known.sort();
        assert_eq!(stated, known);
    }

    /// Each outcome is read by its tag's count of words, whatever its
    /// words hold (an empty argument, integers).
    #[test]
    fn outcomes_are_read_by_their_tags_count_of_words() {
        let values = reply(&[
            word("OK"),
            word("order"),
            word("{}"),
            word("0"),
            word("ERR"),
            word("insufficient_funds"),
            word(""),
            word("REFILL"),
            Value::Int(2),
            Value::Int(3),
            word("EPOCH"),
            word("BACKLOG"),
        ]);
        let outcomes = outcomes_of(values, 5);
        assert!(matches!(&outcomes[0], Ok(Reply::Done(words)) if words.len() == 4));
        assert!(matches!(
            outcomes[1],
            Ok(Reply::Refused(EngineError::InsufficientFunds))
        ));
        assert!(matches!(
            outcomes[2],
            Ok(Reply::Refill { need: 2, total: 3 })
        ));
        assert!(matches!(outcomes[3], Ok(Reply::Epoch)));
        assert!(matches!(outcomes[4], Ok(Reply::Backlog)));
    }

    /// A short, unknown or missing outcome fails its request and every
    /// one after it (their words can no longer be told apart), never
    /// another request's answer.
    #[test]
    fn a_garbled_outcome_fails_it_and_those_after_it() {
        let short = reply(&[word("EPOCH"), word("OK"), word("order")]);
        let outcomes = outcomes_of(short, 3);
        assert!(matches!(outcomes[0], Ok(Reply::Epoch)));
        assert!(is_garbled(&outcomes[1]) && is_garbled(&outcomes[2]));

        let unknown = reply(&[word("MAYBE"), word("EPOCH")]);
        let outcomes = outcomes_of(unknown, 2);
        assert!(outcomes.iter().all(is_garbled));

        let missing = outcomes_of(reply(&[word("BACKLOG")]), 2);
        assert!(matches!(missing[0], Ok(Reply::Backlog)));
        assert!(is_garbled(&missing[1]));
    }
}
