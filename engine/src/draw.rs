//! Raffle deals: the ranking rule, a raffle's registrant list
//! and draw state, and the engine steps that run the draw and walk the
//! ranking, offering holds.
//!
//! ## The rule (README "Fair draws" says it for people)
//! - **Seed**: 32 bytes the gateway takes from the OS RNG when the deal is
//!   created ([`DrawSeed`]); the engine draws no randomness. Until the draw
//!   only its commitment, `SHA-256(seed)`, is public; the draw reveals it.
//! - **Rank** of a registrant: `HMAC-SHA256(key = seed, message = the UTF-8
//!   bytes of the shopper's public id, e.g. "s_9")`, compared as 32 bytes
//!   big-endian; the lowest rank is offered first ([`Ranker`]).
//! - **Registrant set**: `SHA-256` of the registrants' public ids sorted
//!   ascending (bytewise), each followed by `"\n"` ([`registrants_hash`]).
//! - **Offers**: the draw runs once `starts_at` has passed; the ranking is
//!   walked from the top and each rank is offered a hold of
//!   `min(per_user_limit, units left)` on stock and funds for
//!   `hold_seconds`, or passed over when its wallet cannot cover it. A raffle
//!   hold that is released or expires gives its units to the next ranks in
//!   the same engine call. The offers are always a prefix of the ranking,
//!   which is what `flashsale verify-draw` checks.
//!
//! ## Locks
//! A raffle has two locks. `enrolment` is a leaf taken under a shopper's
//! shard lock by a registration (it takes only the event sink's lock), so
//! every `Registered` event of the deal is journalled before the `DrawRun`
//! that closes the list. `draw` is the deal's draw lock: taken with no other
//! lock held, and while held it takes one shard lock at a time to place a
//! hold. No code takes a draw lock while holding a shard lock, so the order
//! draw → shard → enrolment → event sink has no cycle. A step makes at most
//! [`DRAW_OFFERS_PER_STEP`] offers, then lets the draw lock go.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::clock::Timestamp;
use crate::deal::DealState;
use crate::engine::{Engine, place_hold};
use crate::error::{EngineError, Entity};
use crate::event::Event;
use crate::ids::{DealId, HoldId, ShopperId};
use crate::records::{DealStatus, Hold, HoldStatus};
use crate::rules::{self, OfferEffects, OfferView};

/// A SHA-256 or HMAC-SHA256 output: 32 bytes, compared big-endian.
pub type Digest = [u8; 32];

/// Offers (holds or pass-overs) one draw step makes on one deal before it
/// lets the deal's draw lock go, so a draw of 100,000 winners never keeps a
/// release or the housekeeping task waiting for long.
pub const DRAW_OFFERS_PER_STEP: usize = 1_024;

/// Registrants one raffle deal takes (each costs 40 bytes in the ranking
/// and 8 in the list); past it a registration is `CapacityReached`.
pub const RAFFLE_REGISTRANTS_MAX: usize = 4_000_000;

/// A raffle's secret seed: 32 bytes from the OS RNG (the gateway's), the
/// HMAC key of every rank. `Debug` does not print it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrawSeed(pub [u8; 32]);

impl fmt::Debug for DrawSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DrawSeed(..)")
    }
}

impl DrawSeed {
    /// The public commitment: `SHA-256(seed)`, 32 bytes.
    pub fn commitment(&self) -> Digest {
        Sha256::digest(self.0).into()
    }
}

/// A shopper's public id as the API prints it (`"s_" + lowercase hex`, no
/// leading zero), on the stack. Orders as the text does, bytewise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IdText {
    /// The text, then zeros: a zero sorts before every character of an id,
    /// so comparing the arrays compares the texts.
    bytes: [u8; 18],
    len: u8,
}

impl IdText {
    /// The text of `shopper` (the same as its `Display`).
    pub fn of(shopper: ShopperId) -> IdText {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0; 18];
        bytes[..2].copy_from_slice(b"s_");
        let digits = (64 - shopper.0.leading_zeros()).div_ceil(4).max(1) as usize;
        for place in 0..digits {
            let nibble = (shopper.0 >> (4 * (digits - 1 - place))) & 0xf;
            bytes[2 + place] = DIGITS[nibble as usize];
        }
        IdText {
            bytes,
            len: (2 + digits) as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Computes ranks under one seed: `HMAC-SHA256(seed, id text)`. The keyed
/// state is made once; each rank clones it (two SHA-256 blocks per id).
#[derive(Clone)]
pub struct Ranker {
    keyed: Hmac<Sha256>,
}

impl Ranker {
    pub fn new(seed: &DrawSeed) -> Ranker {
        Ranker {
            keyed: Hmac::new_from_slice(&seed.0).expect("HMAC takes a key of any length"),
        }
    }

    /// The rank of the shopper whose public id is `id_text` (its UTF-8 bytes).
    pub fn rank(&self, id_text: &[u8]) -> Digest {
        let mut mac = self.keyed.clone();
        mac.update(id_text);
        mac.finalize().into_bytes().into()
    }
}

/// `SHA-256` of the ids in the order given, each followed by `"\n"`; give
/// them sorted ascending (bytewise) to get the published registrant hash.
pub fn registrants_hash<'a>(sorted_ids: impl IntoIterator<Item = &'a [u8]>) -> Digest {
    let mut hasher = Sha256::new();
    for id in sorted_ids {
        hasher.update(id);
        hasher.update(b"\n");
    }
    hasher.finalize().into()
}

/// One registrant in the ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ranked {
    rank: Digest,
    shopper: ShopperId,
}

/// A drawn raffle's ranking, lowest rank first, and its public registrant
/// list (ids in text order) with that list's hash.
#[derive(Debug)]
pub struct Ranking {
    ranked: Vec<Ranked>,
    by_text: Vec<ShopperId>,
    registrants_hash: Digest,
}

impl Ranking {
    /// Ranks `registrants` (any order, each once) under `seed`: one HMAC per
    /// registrant, the rank sort and the text sort (the whole draw of
    /// 1,000,000 registrants and 100,000 holds measured 627 ms:
    /// `benches/engine.rs`, README "Fair draws").
    pub fn new(seed: &DrawSeed, registrants: &[ShopperId]) -> Ranking {
        let ranker = Ranker::new(seed);
        let mut texts: Vec<(IdText, ShopperId)> = registrants
            .iter()
            .map(|&shopper| (IdText::of(shopper), shopper))
            .collect();
        let mut ranked: Vec<Ranked> = texts
            .iter()
            .map(|(text, shopper)| Ranked {
                rank: ranker.rank(text.as_bytes()),
                shopper: *shopper,
            })
            .collect();
        ranked.sort_unstable();
        texts.sort_unstable();
        let registrants_hash = registrants_hash(texts.iter().map(|(text, _)| text.as_bytes()));
        Ranking {
            ranked,
            by_text: texts.into_iter().map(|(_, shopper)| shopper).collect(),
            registrants_hash,
        }
    }

    /// How many registrants were ranked.
    pub fn len(&self) -> usize {
        self.ranked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranked.is_empty()
    }

    /// The shoppers in rank order, best first.
    pub fn shoppers(&self) -> impl Iterator<Item = ShopperId> + '_ {
        self.ranked.iter().map(|ranked| ranked.shopper)
    }

    /// `(place, rank)` of `shopper` (place 0 is the best), if registered.
    fn place_of(&self, ranker: &Ranker, shopper: ShopperId) -> Option<(usize, Digest)> {
        let rank = ranker.rank(IdText::of(shopper).as_bytes());
        self.ranked
            .binary_search(&Ranked { rank, shopper })
            .ok()
            .map(|place| (place, rank))
    }
}

/// What one place of the ranking was offered, in walk order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Offer {
    /// A hold of `min(per_user_limit, units left)`.
    Held(HoldId),
    /// The wallet could not cover the hold: the units went on down.
    PassedOver,
}

/// A raffle deal's own state, inside its [`DealState`].
#[derive(Debug)]
pub(crate) struct Raffle {
    pub(crate) seed: DrawSeed,
    pub(crate) commitment: Digest,
    /// Set once the ranking exists: the seed is public from then on.
    drawn: AtomicBool,
    /// The leaf lock a registration takes under its shard lock.
    enrolment: Mutex<Enrolment>,
    /// The deal's draw lock.
    draw: Mutex<Draw>,
}

#[derive(Debug, Default)]
struct Enrolment {
    closed: bool,
    shoppers: Vec<ShopperId>,
}

#[derive(Debug, Default)]
struct Draw {
    ranking: Option<Ranking>,
    /// `offers[i]` is what place `i` of the ranking got; its length is how
    /// far the walk has come.
    offers: Vec<Offer>,
}

/// A raffle's state in a snapshot: the ranking is not kept, it is
/// recomputed from the seed and the registrants on restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RaffleSnapshot {
    registrants: Vec<ShopperId>,
    drawn: bool,
    offers: Vec<Offer>,
}

impl Raffle {
    pub(crate) fn new(seed: DrawSeed) -> Raffle {
        Raffle {
            seed,
            commitment: seed.commitment(),
            drawn: AtomicBool::new(false),
            enrolment: Mutex::new(Enrolment::default()),
            draw: Mutex::new(Draw::default()),
        }
    }

    pub(crate) fn restore(seed: DrawSeed, snapshot: RaffleSnapshot) -> Raffle {
        let raffle = Raffle::new(seed);
        if snapshot.drawn {
            let mut draw = raffle.draw.lock();
            draw.ranking = Some(Ranking::new(&seed, &snapshot.registrants));
            draw.offers = snapshot.offers;
            raffle.enrolment.lock().closed = true;
            raffle.drawn.store(true, Ordering::Release);
            drop(draw);
        } else {
            raffle.enrolment.lock().shoppers = snapshot.registrants;
        }
        raffle
    }

    pub(crate) fn snapshot(&self) -> RaffleSnapshot {
        let draw = self.draw.lock();
        match &draw.ranking {
            Some(ranking) => RaffleSnapshot {
                registrants: ranking.by_text.clone(),
                drawn: true,
                offers: draw.offers.clone(),
            },
            None => RaffleSnapshot {
                registrants: self.enrolment.lock().shoppers.clone(),
                drawn: false,
                offers: Vec::new(),
            },
        }
    }

    /// The seed, once the draw has revealed it.
    pub(crate) fn revealed_seed(&self) -> Option<DrawSeed> {
        self.drawn.load(Ordering::Acquire).then_some(self.seed)
    }

    /// Adds a registrant (called under its shard lock, once per shopper)
    /// and, under the enrolment lock, emits its event through `emit`.
    /// Errors: `RegistrationClosed` once the draw has run,
    /// `CapacityReached` past [`RAFFLE_REGISTRANTS_MAX`].
    pub(crate) fn enrol(&self, shopper: ShopperId, emit: impl FnOnce()) -> Result<(), EngineError> {
        let mut enrolment = self.enrolment.lock();
        if enrolment.closed {
            return Err(EngineError::RegistrationClosed);
        }
        if enrolment.shoppers.len() >= RAFFLE_REGISTRANTS_MAX {
            return Err(EngineError::CapacityReached {
                bound: "raffle_registrants_max",
            });
        }
        emit();
        enrolment.shoppers.push(shopper);
        Ok(())
    }

    /// Closes the list, ranks it, and hands the ranking to `emit` (which
    /// journals `DrawRun` with what it reveals) before the seed turns
    /// public. The list is closed under the enrolment lock, and a
    /// registration emits its event under that lock only while the list is
    /// open, so `DrawRun` comes after every registration's event although
    /// the ranking (600 ms for 1,000,000 registrants) is made after the
    /// enrolment lock is let go: a registration waiting for it never holds
    /// its shard lock that long. Called with the draw lock held.
    fn run(&self, draw: &mut Draw, emit: impl FnOnce(&Ranking)) {
        let registrants = {
            let mut enrolment = self.enrolment.lock();
            enrolment.closed = true;
            std::mem::take(&mut enrolment.shoppers)
        };
        let ranking = Ranking::new(&self.seed, &registrants);
        emit(&ranking);
        draw.ranking = Some(ranking);
        self.drawn.store(true, Ordering::Release);
    }
}

/// One offered place as the public record shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferedRank {
    pub rank: Digest,
    pub passed_over: bool,
}

/// A raffle's public record (`GET /v1/deals/{id}/draw`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawRecord {
    /// `SHA-256(seed)`, public from the deal's creation.
    pub commitment: Digest,
    /// `None` until the draw has run.
    pub result: Option<DrawResult>,
}

/// What the draw made public: enough for anyone to recompute it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawResult {
    pub seed: DrawSeed,
    pub registrants: u64,
    pub registrants_hash: Digest,
    /// Places offered so far (holds and pass-overs).
    pub offers_total: u64,
    /// One page of the offered ranks, in offer order, from the page's start.
    pub offers: Vec<OfferedRank>,
    /// Where the next page starts, if there is one.
    pub next: Option<u64>,
}

/// A shopper's own result (`GET /v1/deals/{id}/draw/me`). `place` is the
/// 0-based place in the ranking, `rank` the shopper's HMAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrawStanding {
    /// Not a registrant of this raffle.
    NotRegistered,
    /// Registered; the draw has not run yet.
    Pending,
    /// Offered a hold (which may since be paid, released or expired).
    Won {
        rank: Digest,
        place: u64,
        hold: Hold,
    },
    /// Reached, but the wallet could not cover the hold.
    PassedOver { rank: Digest, place: u64 },
    /// Not reached yet; `position` 1 is the next to be offered.
    Waitlisted {
        rank: Digest,
        place: u64,
        position: u64,
    },
    /// Not reached, and no unit will come: the deal ended or all is sold.
    NotDrawn { rank: Digest, place: u64 },
}

fn no_draw() -> EngineError {
    EngineError::NotFound(Entity::Draw)
}

impl Engine {
    /// Runs every raffle whose `starts_at` has passed and that is not drawn
    /// yet, then offers units left on every drawn raffle to its next ranks
    /// (live, not paused, not ended): at most [`DRAW_OFFERS_PER_STEP`]
    /// offers per deal per call, one deal's draw lock at a time. Returns
    /// the draws and offers made; call again while it is above zero.
    pub fn run_draws(&self) -> usize {
        self.step_raffles(true)
    }

    /// Offers units left on drawn raffles (never draws: ranking a large
    /// list is `run_draws`' work, on a thread that may take it); called by
    /// the expiry sweep after it released raffle holds.
    pub(crate) fn refill_raffles(&self) -> usize {
        self.step_raffles(false)
    }

    fn step_raffles(&self, draw_due: bool) -> usize {
        let now = self.now();
        let mut done = 0;
        for deal in self.deal_table().newest_first() {
            let Some(raffle) = deal.raffle.as_deref() else {
                continue;
            };
            if now < deal.starts_at {
                continue;
            }
            let mut draw = raffle.draw.lock();
            if draw.ranking.is_none() && draw_due {
                raffle.run(&mut draw, |ranking| {
                    self.sink().emit(Event::DrawRun {
                        deal: deal.id,
                        at: now,
                        seed: raffle.seed,
                        registrants: ranking.len() as u64,
                        registrants_hash: ranking.registrants_hash,
                    })
                });
                done += 1;
            }
            done += self.offer(deal, &mut draw, now);
        }
        done
    }

    /// Gives a raffle deal's units left to its next ranks at once (after a
    /// hold was released); no-op on a first-come deal.
    pub(crate) fn refill_raffle(&self, deal: &DealState) {
        if let Some(raffle) = deal.raffle.as_deref() {
            let now = self.now();
            self.offer(deal, &mut raffle.draw.lock(), now);
        }
    }

    /// Walks the ranking from where it stopped while units remain: one
    /// hold of `min(per_user_limit − owned, units left)` per rank, or a
    /// pass-over when the wallet cannot cover it ([`rules::decide_offer`]). Stops after
    /// [`DRAW_OFFERS_PER_STEP`], at the end of the ranking, or when the deal
    /// is paused, ended or out of stock. Called with the draw lock held.
    fn offer(&self, deal: &DealState, draw: &mut Draw, now: Timestamp) -> usize {
        let Draw { ranking, offers } = draw;
        let Some(ranking) = ranking else {
            return 0;
        };
        let mut made = 0;
        while made < DRAW_OFFERS_PER_STEP && now < deal.ends_at() && !deal.paused() {
            let Some(next) = ranking.ranked.get(offers.len()) else {
                break;
            };
            let remaining = deal.stock.counts().remaining;
            if remaining == 0 {
                break;
            }
            let shopper = next.shopper;
            let mut shard = self.lock_shopper(shopper);
            let Some(account) = shard.accounts.get(&shopper) else {
                break;
            };
            let units = account.units(deal.id);
            let offer = rules::decide_offer(&OfferView {
                per_user_limit: deal.per_user_limit,
                owned: units.held.saturating_add(units.bought),
                remaining,
                price: deal.price,
                available: account.wallet.available,
                now,
                hold_seconds: deal.hold_seconds,
            });
            let OfferEffects::Hold {
                units: quantity,
                debit: amount,
                expires_at,
            } = offer
            else {
                self.sink().emit(Event::DrawPassedOver {
                    deal: deal.id,
                    shopper,
                    at: now,
                });
                offers.push(Offer::PassedOver);
                made += 1;
                continue;
            };
            if shard
                .check_room(self.bounds(), now, false, true, false)
                .is_err()
            {
                break;
            }
            if !deal.stock.try_take(u64::from(quantity)) {
                // A late payment took units meanwhile: look again.
                continue;
            }
            let hold = Hold {
                id: shard.next_hold_id(),
                deal: deal.id,
                shopper,
                quantity,
                amount,
                created_at: now,
                expires_at,
                status: HoldStatus::Active,
            };
            offers.push(Offer::Held(hold.id));
            place_hold(&mut shard, deal, &hold);
            self.sink().emit(Event::DrawOffered { hold });
            made += 1;
        }
        made
    }

    /// A raffle's public record with one page of its offered ranks
    /// (`from`, at most `limit`). Errors: `NotFound(Deal)`, `NotFound(Draw)`
    /// for a first-come deal.
    pub fn draw_record(
        &self,
        deal: DealId,
        from: u64,
        limit: usize,
    ) -> Result<DrawRecord, EngineError> {
        let state = self.deal_state(deal)?;
        let raffle = state.raffle.as_deref().ok_or_else(no_draw)?;
        let draw = raffle.draw.lock();
        let result = draw.ranking.as_ref().map(|ranking| {
            let start = usize::try_from(from)
                .unwrap_or(usize::MAX)
                .min(draw.offers.len());
            let end = start.saturating_add(limit).min(draw.offers.len());
            let offers = draw.offers[start..end]
                .iter()
                .zip(&ranking.ranked[start..end])
                .map(|(offer, ranked)| OfferedRank {
                    rank: ranked.rank,
                    passed_over: *offer == Offer::PassedOver,
                })
                .collect();
            DrawResult {
                seed: raffle.seed,
                registrants: ranking.len() as u64,
                registrants_hash: ranking.registrants_hash,
                offers_total: draw.offers.len() as u64,
                offers,
                next: (end < draw.offers.len()).then_some(end as u64),
            }
        });
        Ok(DrawRecord {
            commitment: raffle.commitment,
            result,
        })
    }

    /// One page of a drawn raffle's registrants, in the order of their id
    /// texts (the order [`registrants_hash`] takes), from `from`, at most
    /// `limit`, and where the next page starts. Errors: `NotFound(Deal)`,
    /// `NotFound(Draw)` for a first-come deal, `NotStarted` before the draw
    /// (the list is public only once it is closed).
    pub fn draw_registrants(
        &self,
        deal: DealId,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<ShopperId>, Option<u64>), EngineError> {
        let state = self.deal_state(deal)?;
        let raffle = state.raffle.as_deref().ok_or_else(no_draw)?;
        let draw = raffle.draw.lock();
        let ranking = draw.ranking.as_ref().ok_or(EngineError::NotStarted)?;
        let start = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(ranking.by_text.len());
        let end = start.saturating_add(limit).min(ranking.by_text.len());
        let next = (end < ranking.by_text.len()).then_some(end as u64);
        Ok((ranking.by_text[start..end].to_vec(), next))
    }

    /// A shopper's own result in a raffle. Errors: `NotFound(Deal)`,
    /// `NotFound(Draw)` for a first-come deal.
    pub fn draw_standing(
        &self,
        shopper: ShopperId,
        deal: DealId,
    ) -> Result<DrawStanding, EngineError> {
        let state = self.deal_state(deal)?;
        let raffle = state.raffle.as_deref().ok_or_else(no_draw)?;
        let (rank, place, offer, waiting) = {
            let draw = raffle.draw.lock();
            let Some(ranking) = &draw.ranking else {
                drop(draw);
                let registered = self
                    .lock_shopper(shopper)
                    .accounts
                    .get(&shopper)
                    .is_some_and(|account| account.units(deal).registered);
                return Ok(if registered {
                    DrawStanding::Pending
                } else {
                    DrawStanding::NotRegistered
                });
            };
            let Some((place, rank)) = ranking.place_of(&Ranker::new(&raffle.seed), shopper) else {
                return Ok(DrawStanding::NotRegistered);
            };
            let waiting = place.saturating_sub(draw.offers.len()) as u64 + 1;
            (rank, place as u64, draw.offers.get(place).copied(), waiting)
        };
        Ok(match offer {
            Some(Offer::Held(hold)) => DrawStanding::Won {
                rank,
                place,
                hold: self.hold_by_id(hold)?,
            },
            Some(Offer::PassedOver) => DrawStanding::PassedOver { rank, place },
            None => {
                let view = state.view(self.now());
                let over = matches!(view.status, DealStatus::Ended)
                    || view.counts.sold == view.counts.total;
                if over {
                    DrawStanding::NotDrawn { rank, place }
                } else {
                    DrawStanding::Waitlisted {
                        rank,
                        place,
                        position: waiting,
                    }
                }
            }
        })
    }

    // ----- replay ---------------------------------------------------------------

    /// Replays `DrawRun`: closes the list and ranks it, as the live draw
    /// did. What the event says the draw revealed must be what this
    /// ranking reveals (`None`: a format-2 `DrawRunFormat2`, which says
    /// nothing).
    pub(crate) fn replay_draw_run(
        &self,
        deal: &DealState,
        revealed: Option<Revealed<'_>>,
    ) -> Result<(), EngineError> {
        let raffle = replay_raffle(deal)?;
        let mut draw = raffle.draw.lock();
        if draw.ranking.is_some() {
            return Err(EngineError::Inconsistent {
                reason: "a raffle is drawn twice",
            });
        }
        let mut matches = true;
        raffle.run(&mut draw, |ranking| {
            if let Some(revealed) = revealed {
                matches = *revealed.seed == raffle.seed
                    && revealed.registrants == ranking.len() as u64
                    && *revealed.registrants_hash == ranking.registrants_hash;
            }
        });
        if !matches {
            return Err(EngineError::Inconsistent {
                reason: "a draw reveals another seed or registrant list than the deal's",
            });
        }
        Ok(())
    }

    /// Replays a registration on a raffle deal.
    pub(crate) fn replay_enrol(
        &self,
        deal: &DealState,
        shopper: ShopperId,
    ) -> Result<(), EngineError> {
        if let Some(raffle) = deal.raffle.as_deref() {
            raffle
                .enrol(shopper, || ())
                .map_err(|_| EngineError::Inconsistent {
                    reason: "a registration after the draw",
                })?;
        }
        Ok(())
    }

    /// Replays `DrawOffered` or `DrawPassedOver`: the next place of the
    /// ranking must be `shopper`; a hold is placed again as it was.
    pub(crate) fn replay_offer(
        &self,
        deal: &DealState,
        shopper: ShopperId,
        hold: Option<&Hold>,
    ) -> Result<(), EngineError> {
        let inconsistent = |reason| EngineError::Inconsistent { reason };
        let raffle = replay_raffle(deal)?;
        let mut draw = raffle.draw.lock();
        let Draw { ranking, offers } = &mut *draw;
        let next = ranking
            .as_ref()
            .ok_or(inconsistent("an offer before the draw"))?
            .ranked
            .get(offers.len())
            .ok_or(inconsistent("an offer past the ranking"))?;
        if next.shopper != shopper {
            return Err(inconsistent("an offer out of rank order"));
        }
        let Some(hold) = hold else {
            offers.push(Offer::PassedOver);
            return Ok(());
        };
        let mut shard = self.lock_shopper(shopper);
        if hold.id != shard.next_hold_id() {
            return Err(inconsistent("hold ids out of order"));
        }
        let available = shard
            .accounts
            .get(&shopper)
            .ok_or(inconsistent("an offer to an unknown shopper"))?
            .wallet
            .available;
        if available < hold.amount || !deal.stock.try_take(u64::from(hold.quantity)) {
            return Err(inconsistent("an offer takes more than there is"));
        }
        place_hold(&mut shard, deal, hold);
        offers.push(Offer::Held(hold.id));
        Ok(())
    }
}

/// What a journalled `DrawRun` says its draw revealed, checked on replay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Revealed<'a> {
    pub(crate) seed: &'a DrawSeed,
    pub(crate) registrants: u64,
    pub(crate) registrants_hash: &'a Digest,
}

fn replay_raffle(deal: &DealState) -> Result<&Raffle, EngineError> {
    deal.raffle.as_deref().ok_or(EngineError::Inconsistent {
        reason: "a draw event names a first-come deal",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_text_is_the_display_text_and_sorts_as_text() {
        for raw in [0, 1, 9, 10, 0xff, 0x100, 0xdead_beef, u64::MAX] {
            let id = ShopperId(raw);
            assert_eq!(IdText::of(id).as_bytes(), id.to_string().as_bytes());
        }
        // "s_10" < "s_9" as text although 0x10 > 0x9.
        assert!(IdText::of(ShopperId(0x10)) < IdText::of(ShopperId(0x9)));
        assert!(IdText::of(ShopperId(0x1)) < IdText::of(ShopperId(0x10)));
    }

    #[test]
    fn rank_is_hmac_sha256_of_the_id_text() {
        // RFC 4231 test case 2: key "Jefe" is not 32 bytes, so check the
        // rule against the hmac crate keyed directly with the seed instead.
        let seed = DrawSeed([7; 32]);
        let mut mac = Hmac::<Sha256>::new_from_slice(&[7; 32]).expect("any key length");
        mac.update(b"s_2a");
        let expected: Digest = mac.finalize().into_bytes().into();
        assert_eq!(Ranker::new(&seed).rank(b"s_2a"), expected);
        assert_ne!(Ranker::new(&DrawSeed([8; 32])).rank(b"s_2a"), expected);
    }

    #[test]
    fn commitment_is_sha256_of_the_seed() {
        // SHA-256 of 32 zero bytes.
        let expected = "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925";
        let mut hex = String::new();
        for byte in DrawSeed([0; 32]).commitment() {
            hex.push_str(&format!("{byte:02x}"));
        }
        assert_eq!(hex, expected);
    }

    #[test]
    fn registrants_hash_is_sha256_of_lines() {
        // SHA-256("s_1\ns_2\n") computed independently of the function.
        let expected: Digest = Sha256::digest(b"s_1\ns_2\n").into();
        assert_eq!(registrants_hash([&b"s_1"[..], b"s_2"]), expected);
    }

    #[test]
    fn ranking_orders_by_rank_and_lists_ids_as_text() {
        let seed = DrawSeed([3; 32]);
        let registrants: Vec<ShopperId> = (1..=40).map(ShopperId).collect();
        let ranking = Ranking::new(&seed, &registrants);
        let ranker = Ranker::new(&seed);
        let mut expected: Vec<(Digest, ShopperId)> = registrants
            .iter()
            .map(|&id| (ranker.rank(id.to_string().as_bytes()), id))
            .collect();
        expected.sort();
        assert_eq!(
            ranking.shoppers().collect::<Vec<_>>(),
            expected.iter().map(|&(_, id)| id).collect::<Vec<_>>()
        );
        let mut texts: Vec<String> = registrants.iter().map(ToString::to_string).collect();
        texts.sort();
        let listed: Vec<String> = ranking.by_text.iter().map(ToString::to_string).collect();
        assert_eq!(listed, texts);
        assert_eq!(
            ranking.registrants_hash,
            registrants_hash(texts.iter().map(|text| text.as_bytes()))
        );
        // The same registrants in another order rank the same.
        let mut reversed = registrants.clone();
        reversed.reverse();
        assert_eq!(
            Ranking::new(&seed, &reversed)
                .shoppers()
                .collect::<Vec<_>>(),
            ranking.shoppers().collect::<Vec<_>>()
        );
    }
}
