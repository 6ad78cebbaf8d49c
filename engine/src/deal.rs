//! Deals in memory: the lock-free deal table, each deal's stock counters and
//! sold-out flag, and the filter that lets a sold-out rejection skip every
//! lock.
//!
//! A deal never moves or disappears once created, so the table is a fixed
//! array of write-once slots (`deals_max` of them): finding a deal is an index
//! and one atomic load, with no lock and no reference count to bounce
//! between cores.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::clock::Timestamp;
use crate::draw::{Raffle, RaffleSnapshot};
use crate::ids::{DealId, MerchantId, ShopperId};
use crate::money::Money;
use crate::records::Merchant;
use crate::records::{Allocation, DealSpec, DealStatus, DealView, RaffleView, StockCounts};
use crate::rules::DealWindow;

/// Every deal's stock: `total = remaining + held + sold`.
///
/// `remaining` is taken with a compare-and-swap loop so it never goes below
/// zero. `sold_out` is a separate, rarely written cache line: the rejected
/// majority of a burst reads only it.
#[derive(Debug)]
pub(crate) struct Stock {
    sold_out: CachePadded<AtomicBool>,
    counts: CachePadded<StockCells>,
}

#[derive(Debug)]
struct StockCells {
    total: AtomicU64,
    remaining: AtomicU64,
    held: AtomicU64,
    sold: AtomicU64,
    buyers: AtomicU64,
}

impl Stock {
    fn new(counts: StockCounts, buyers: u64) -> Stock {
        Stock {
            sold_out: CachePadded::new(AtomicBool::new(counts.remaining == 0)),
            counts: CachePadded::new(StockCells {
                total: AtomicU64::new(counts.total),
                remaining: AtomicU64::new(counts.remaining),
                held: AtomicU64::new(counts.held),
                sold: AtomicU64::new(counts.sold),
                buyers: AtomicU64::new(buyers),
            }),
        }
    }

    /// The one load the rejected majority pays. May briefly say "not sold
    /// out" when it is (the slow path then finds out), never the reverse for
    /// long: see [`Stock::mark_sold_out`].
    #[inline]
    pub(crate) fn is_sold_out(&self) -> bool {
        self.sold_out.load(Ordering::Acquire)
    }

    /// Takes `quantity` units from `remaining`, all or nothing.
    pub(crate) fn try_take(&self, quantity: u64) -> bool {
        let remaining = &self.counts.remaining;
        let mut current = remaining.load(Ordering::Acquire);
        loop {
            if current < quantity {
                if current == 0 {
                    self.mark_sold_out();
                }
                return false;
            }
            match remaining.compare_exchange_weak(
                current,
                current - quantity,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if current == quantity {
                        self.mark_sold_out();
                    }
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Sets the flag, then looks again: if stock came back meanwhile (a
    /// release that cleared the flag before we set it), clears it, so the
    /// flag is never left set over remaining stock.
    fn mark_sold_out(&self) {
        self.sold_out.store(true, Ordering::SeqCst);
        if self.counts.remaining.load(Ordering::SeqCst) > 0 {
            self.sold_out.store(false, Ordering::SeqCst);
        }
    }

    /// Gives units back to `remaining` (release, expiry, restock).
    pub(crate) fn put_back(&self, quantity: u64) {
        self.counts.remaining.fetch_add(quantity, Ordering::SeqCst);
        self.sold_out.store(false, Ordering::SeqCst);
    }

    pub(crate) fn add_total(&self, quantity: u64) {
        self.counts.total.fetch_add(quantity, Ordering::SeqCst);
    }

    pub(crate) fn add_held(&self, quantity: u64) {
        self.counts.held.fetch_add(quantity, Ordering::AcqRel);
    }

    pub(crate) fn remove_held(&self, quantity: u64) {
        let before = self.counts.held.fetch_sub(quantity, Ordering::AcqRel);
        assert!(before >= quantity, "held stock went below zero");
    }

    pub(crate) fn add_sold(&self, quantity: u64) {
        self.counts.sold.fetch_add(quantity, Ordering::AcqRel);
    }

    pub(crate) fn add_buyer(&self) {
        self.counts.buyers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn buyers(&self) -> u64 {
        self.counts.buyers.load(Ordering::Relaxed)
    }

    /// The counters, each read once. Exact when no request is running on
    /// the deal; during a burst each term is a recent value.
    pub(crate) fn counts(&self) -> StockCounts {
        let cells = &self.counts;
        StockCounts {
            total: cells.total.load(Ordering::Acquire),
            remaining: cells.remaining.load(Ordering::Acquire),
            held: cells.held.load(Ordering::Acquire),
            sold: cells.sold.load(Ordering::Acquire),
        }
    }
}

/// A lock-free "may this shopper have an idempotency record on this deal?"
/// bitset. A bit is set (never cleared) when a shopper's buy or hold on the
/// deal succeeds. A clear bit proves the shopper has no record, so a
/// sold-out or ended deal can refuse at once; a set bit (the shopper's own,
/// or a collision) sends the request to the locked path, which looks the
/// record up. Sized from the stock: about 8 bits per unit.
#[derive(Debug)]
pub(crate) struct RecordFilter {
    words: Box<[AtomicU64]>,
    mask: u64,
}

/// Bounds of a deal's record filter, in bits.
const RECORD_FILTER_BITS_MIN: u64 = 1 << 10;
const RECORD_FILTER_BITS_MAX: u64 = 1 << 23;

impl RecordFilter {
    fn new(stock: u64) -> RecordFilter {
        let bits = stock
            .saturating_mul(8)
            .clamp(RECORD_FILTER_BITS_MIN, RECORD_FILTER_BITS_MAX)
            .next_power_of_two();
        let words = (0..bits / 64).map(|_| AtomicU64::new(0)).collect();
        RecordFilter {
            words,
            mask: bits - 1,
        }
    }

    fn position(&self, shopper: ShopperId) -> (usize, u64) {
        let bit = shopper
            .0
            .wrapping_mul(0xD6E8_FEB8_6659_FD93)
            .rotate_left(29)
            & self.mask;
        ((bit / 64) as usize, 1 << (bit % 64))
    }

    pub(crate) fn insert(&self, shopper: ShopperId) {
        let (word, bit) = self.position(shopper);
        self.words[word].fetch_or(bit, Ordering::Release);
    }

    #[inline]
    pub(crate) fn may_contain(&self, shopper: ShopperId) -> bool {
        let (word, bit) = self.position(shopper);
        self.words[word].load(Ordering::Acquire) & bit != 0
    }
}

/// One deal in memory. The terms that never change are plain fields; what
/// a merchant may change (`ends_at`, `paused`) and the live numbers are
/// atomics, so reading a deal takes no lock.
#[derive(Debug)]
pub(crate) struct DealState {
    pub(crate) id: DealId,
    pub(crate) merchant: MerchantId,
    pub(crate) title: String,
    pub(crate) price: Money,
    pub(crate) per_user_limit: u32,
    pub(crate) starts_at: Timestamp,
    pub(crate) requires_registration: bool,
    pub(crate) hold_seconds: u32,
    pub(crate) created_at: Timestamp,
    ends_at: AtomicI64,
    paused: AtomicBool,
    registrations: AtomicU64,
    shares: AtomicU64,
    pub(crate) stock: Stock,
    pub(crate) records: RecordFilter,
    /// `Some` for a raffle deal: its seed, registrants and draw.
    pub(crate) raffle: Option<Box<Raffle>>,
    /// Serialises a merchant's changes with their events (never held with a
    /// shard lock).
    pub(crate) changes: Mutex<()>,
}

/// A deal's numbers for [`DealState::restore`].
#[derive(Debug, Clone)]
pub(crate) struct DealCounters {
    pub(crate) counts: StockCounts,
    pub(crate) registrations: u64,
    pub(crate) buyers: u64,
    pub(crate) shares: u64,
    pub(crate) paused: bool,
    /// A raffle's registrants and draw, from a snapshot (`None`: new).
    pub(crate) raffle: Option<RaffleSnapshot>,
}

impl DealState {
    pub(crate) fn new(
        id: DealId,
        merchant: MerchantId,
        spec: DealSpec,
        created_at: Timestamp,
    ) -> DealState {
        let counts = StockCounts {
            total: spec.stock,
            remaining: spec.stock,
            held: 0,
            sold: 0,
        };
        let counters = DealCounters {
            counts,
            registrations: 0,
            buyers: 0,
            shares: 0,
            paused: false,
            raffle: None,
        };
        DealState::restore(id, merchant, spec, created_at, counters)
    }

    pub(crate) fn restore(
        id: DealId,
        merchant: MerchantId,
        spec: DealSpec,
        created_at: Timestamp,
        counters: DealCounters,
    ) -> DealState {
        let raffle = match spec.allocation {
            Allocation::FirstCome => None,
            Allocation::Raffle(seed) => Some(Box::new(match counters.raffle {
                Some(snapshot) => Raffle::restore(seed, snapshot),
                None => Raffle::new(seed),
            })),
        };
        DealState {
            id,
            merchant,
            raffle,
            records: RecordFilter::new(spec.stock),
            title: spec.title,
            price: spec.price,
            per_user_limit: spec.per_user_limit,
            starts_at: spec.starts_at,
            requires_registration: spec.requires_registration,
            hold_seconds: spec.hold_seconds,
            created_at,
            ends_at: AtomicI64::new(spec.ends_at.0),
            paused: AtomicBool::new(counters.paused),
            registrations: AtomicU64::new(counters.registrations),
            shares: AtomicU64::new(counters.shares),
            stock: Stock::new(counters.counts, counters.buyers),
            changes: Mutex::new(()),
        }
    }

    pub(crate) fn ends_at(&self) -> Timestamp {
        Timestamp(self.ends_at.load(Ordering::Acquire))
    }

    pub(crate) fn set_ends_at(&self, ends_at: Timestamp) {
        self.ends_at.store(ends_at.0, Ordering::Release);
    }

    pub(crate) fn paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }

    pub(crate) fn add_share(&self) {
        self.shares.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_registration(&self) {
        self.registrations.fetch_add(1, Ordering::Relaxed);
    }

    /// The deal's sale window at `now`, for [`crate::rules::decide_open`]:
    /// the sold-out flag, `starts_at`, `ends_at` and the pause, each read
    /// once, no lock.
    #[inline]
    pub(crate) fn window(&self, now: Timestamp) -> DealWindow {
        DealWindow {
            sold_out: self.stock.is_sold_out(),
            now,
            starts_at: self.starts_at,
            ends_at: self.ends_at(),
            paused: self.paused(),
        }
    }

    pub(crate) fn status(&self, now: Timestamp, counts: &StockCounts) -> DealStatus {
        DealStatus::at(now, self.paused(), self.starts_at, self.ends_at(), counts)
    }

    pub(crate) fn view(&self, now: Timestamp) -> DealView {
        let counts = self.stock.counts();
        DealView {
            id: self.id,
            merchant: self.merchant,
            title: self.title.clone(),
            price: self.price,
            per_user_limit: self.per_user_limit,
            starts_at: self.starts_at,
            ends_at: self.ends_at(),
            requires_registration: self.requires_registration,
            hold_seconds: self.hold_seconds,
            raffle: self.raffle.as_deref().map(|raffle| RaffleView {
                commitment: raffle.commitment,
                seed: raffle.revealed_seed(),
            }),
            created_at: self.created_at,
            paused: self.paused(),
            registrations: self.registrations.load(Ordering::Relaxed),
            buyers: self.stock.buyers(),
            shares: self.shares.load(Ordering::Relaxed),
            status: self.status(now, &counts),
            counts,
        }
    }

    /// The terms as posted, with the current `ends_at` and total stock.
    pub(crate) fn spec(&self) -> DealSpec {
        DealSpec {
            title: self.title.clone(),
            price: self.price,
            stock: self.stock.counts().total,
            per_user_limit: self.per_user_limit,
            starts_at: self.starts_at,
            ends_at: self.ends_at(),
            requires_registration: self.requires_registration,
            hold_seconds: self.hold_seconds,
            allocation: self
                .raffle
                .as_deref()
                .map_or(Allocation::FirstCome, |raffle| {
                    Allocation::Raffle(raffle.seed)
                }),
        }
    }

    pub(crate) fn counters(&self) -> DealCounters {
        DealCounters {
            counts: self.stock.counts(),
            registrations: self.registrations.load(Ordering::Relaxed),
            buyers: self.stock.buyers(),
            shares: self.shares.load(Ordering::Relaxed),
            paused: self.paused(),
            raffle: self.raffle.as_deref().map(Raffle::snapshot),
        }
    }
}

/// Write-once slots for up to a fixed number of records (deals, merchants);
/// the record with id number `n` lives in slot `n - 1`. Lookups are an index
/// and one atomic load: no lock, no reference count.
#[derive(Debug)]
pub(crate) struct SlotTable<T> {
    slots: Box<[OnceLock<Box<T>>]>,
    next: AtomicU64,
}

impl<T> SlotTable<T> {
    pub(crate) fn new(capacity: usize) -> SlotTable<T> {
        SlotTable {
            slots: (0..capacity).map(|_| OnceLock::new()).collect(),
            next: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn get(&self, id: u64) -> Option<&T> {
        let slot = usize::try_from(id.checked_sub(1)?).ok()?;
        self.slots.get(slot)?.get().map(|record| &**record)
    }

    /// Reserves the next id number, or `None` when every slot is taken.
    pub(crate) fn reserve(&self) -> Option<u64> {
        let slot = self.next.fetch_add(1, Ordering::AcqRel);
        if slot < self.slots.len() as u64 {
            Some(slot + 1)
        } else {
            self.next.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }

    /// Publishes a record under `id`; `false` if that slot is taken or out
    /// of range (replay of a journal that does not fit this table).
    pub(crate) fn publish(&self, id: u64, record: T) -> bool {
        let Some(cell) = id
            .checked_sub(1)
            .and_then(|slot| usize::try_from(slot).ok())
            .and_then(|slot| self.slots.get(slot))
        else {
            return false;
        };
        let published = cell.set(Box::new(record)).is_ok();
        self.next.fetch_max(id, Ordering::AcqRel);
        published
    }

    /// Every published record, newest first.
    pub(crate) fn newest_first(&self) -> impl Iterator<Item = &T> {
        let count = (self.next.load(Ordering::Acquire) as usize).min(self.slots.len());
        self.slots[..count]
            .iter()
            .rev()
            .filter_map(|slot| slot.get().map(|record| &**record))
    }
}

/// A merchant and its running rating (sums of review scores), read without
/// a lock by every feed card.
#[derive(Debug)]
pub(crate) struct MerchantState {
    pub(crate) merchant: Merchant,
    reviews: AtomicU64,
    score_sum: AtomicU64,
}

impl MerchantState {
    pub(crate) fn new(merchant: Merchant, rating: crate::records::Rating) -> MerchantState {
        MerchantState {
            merchant,
            reviews: AtomicU64::new(rating.reviews),
            score_sum: AtomicU64::new(rating.score_sum),
        }
    }

    pub(crate) fn add_review(&self, score_sum: u64) {
        self.score_sum.fetch_add(score_sum, Ordering::Relaxed);
        self.reviews.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rating(&self) -> crate::records::Rating {
        crate::records::Rating {
            reviews: self.reviews.load(Ordering::Relaxed),
            score_sum: self.score_sum.load(Ordering::Relaxed),
        }
    }
}
