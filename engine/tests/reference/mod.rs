//! The reference model of the sale's rules: plain, single-threaded and
//! written straight from docs/api.md and ARCHITECTURE.md, with no sharding,
//! no atomics and no I/O. Every backend is held to it: the engine's own
//! model test (`engine/tests/model.rs`) and the store's
//! (`store/tests/model.rs`, which includes this file by `#[path]`, so that
//! both use one copy and the engine's types stay the engine's).
//!
//! Everything is numbered by the model: shopper, deal, hold and order
//! indices in creation order, idempotency keys and credit references as
//! small integers; the callers map them to real ids.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

use flashsale_engine::{EngineError, Entity};

/// A first-come deal's terms and numbers.
#[derive(Debug, Clone)]
pub struct MDeal {
    pub merchant: usize,
    pub price: i64,
    pub total: u64,
    pub remaining: u64,
    pub held: u64,
    pub sold: u64,
    pub limit: u32,
    pub starts_at: i64,
    pub ends_at: i64,
    pub paused: bool,
    pub requires_registration: bool,
    pub hold_millis: i64,
    pub registrations: u64,
    pub shares: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MStatus {
    Active,
    Settled(usize),
    Released,
    Expired,
}

#[derive(Debug, Clone)]
pub struct MHold {
    pub shopper: usize,
    pub deal: usize,
    pub quantity: u32,
    pub amount: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub status: MStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MOrder {
    pub shopper: usize,
    pub deal: usize,
    pub quantity: u32,
    pub amount: i64,
    pub late: bool,
    /// The hold it paid, if any.
    pub hold: Option<usize>,
    pub created_at: i64,
}

/// What an idempotency key was used for: the deal and quantity of a buy or
/// of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Buy(usize, u32),
    Hold(usize, u32),
}

impl Request {
    pub fn deal(self) -> usize {
        match self {
            Request::Buy(deal, _) | Request::Hold(deal, _) => deal,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    Order(usize),
    Hold(usize),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MWallet {
    pub credited: i64,
    pub available: i64,
    pub held: i64,
    pub spent: i64,
}

/// One shopper's standing on one deal.
#[derive(Debug, Default, Clone, Copy)]
pub struct MUnits {
    pub held: u32,
    pub bought: u32,
    pub registered: bool,
}

/// What a step produced, in the model's terms.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new order (its index is the last of `orders`).
    NewOrder(MOrder),
    /// A remembered order, replayed.
    OldOrder(usize),
    /// A new hold (its index).
    NewHold(usize),
    /// A remembered hold, replayed.
    OldHold(usize),
    /// A hold as it is now (release).
    HoldNow(usize),
    Refused(Refusal),
    Wallet(MWallet),
}

/// A refusal with hold and order ids still in model numbering.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Refusal {
    Plain(EngineError),
    HoldExpired(usize),
    HoldReleased(usize),
    HoldSettled(usize, usize),
}

fn invalid(field: &'static str, reason: &'static str) -> EngineError {
    EngineError::Invalid { field, reason }
}

/// The whole sale, one field per fact.
#[derive(Debug, Default)]
pub struct Model {
    /// The clock, ms since the epoch.
    pub now: i64,
    pub merchants: usize,
    pub deals: Vec<MDeal>,
    pub wallets: Vec<MWallet>,
    /// (shopper, reference) → the amount credited under it.
    pub credits: HashMap<(usize, usize), i64>,
    /// (shopper, deal) → the shopper's standing there.
    pub units: HashMap<(usize, usize), MUnits>,
    pub holds: Vec<MHold>,
    pub orders: Vec<MOrder>,
    /// (shopper, key) → what the key asked and what it made.
    pub records: HashMap<(usize, usize), (Request, Made)>,
    pub reviewed: HashSet<usize>,
    pub shared: HashSet<usize>,
    /// Per merchant: (reviews, sum of the three scores).
    pub ratings: HashMap<usize, (u64, u64)>,
}

impl Model {
    pub fn new(now: i64) -> Model {
        Model {
            now,
            ..Model::default()
        }
    }

    pub fn advance(&mut self, millis: i64) {
        self.now += millis;
    }

    pub fn add_merchant(&mut self) -> usize {
        self.merchants += 1;
        self.merchants - 1
    }

    pub fn add_shopper(&mut self) -> usize {
        self.wallets.push(MWallet::default());
        self.wallets.len() - 1
    }

    /// A first-come deal (the caller's terms are valid: stock ≥ 1,
    /// `starts_at` < `ends_at`, `ends_at` after now).
    #[allow(clippy::too_many_arguments)]
    pub fn add_deal(
        &mut self,
        merchant: usize,
        price: i64,
        stock: u64,
        limit: u32,
        starts_at: i64,
        ends_at: i64,
        requires_registration: bool,
        hold_seconds: u32,
    ) -> usize {
        self.deals.push(MDeal {
            merchant,
            price,
            total: stock,
            remaining: stock,
            held: 0,
            sold: 0,
            limit,
            starts_at,
            ends_at,
            paused: false,
            requires_registration,
            hold_millis: i64::from(hold_seconds) * 1000,
            registrations: 0,
            shares: 0,
        });
        self.deals.len() - 1
    }

    /// Why a deal sells nothing now, in the engine's order: sold out, not
    /// started, ended, paused.
    pub fn deal_refusal(&self, deal: usize) -> Option<EngineError> {
        let d = &self.deals[deal];
        if d.remaining == 0 {
            Some(EngineError::SoldOut)
        } else if self.now < d.starts_at {
            Some(EngineError::NotStarted)
        } else if self.now >= d.ends_at {
            Some(EngineError::DealEnded)
        } else if d.paused {
            Some(EngineError::DealPaused)
        } else {
            None
        }
    }

    /// The payment provider credits a wallet; the same reference with the
    /// same amount again changes nothing, with another amount is refused.
    pub fn credit(&mut self, shopper: usize, cents: i64, reference: usize) -> Outcome {
        if cents <= 0 {
            return Outcome::Refused(Refusal::Plain(invalid("amount", "must be positive")));
        }
        match self.credits.get(&(shopper, reference)) {
            Some(&amount) if amount == cents => Outcome::Wallet(self.wallets[shopper]),
            Some(_) => Outcome::Refused(Refusal::Plain(EngineError::IdempotencyKeyReused)),
            None => {
                self.credits.insert((shopper, reference), cents);
                let wallet = &mut self.wallets[shopper];
                wallet.credited += cents;
                wallet.available += cents;
                Outcome::Wallet(*wallet)
            }
        }
    }

    /// A buy (`hold` false) or a hold, under the shopper's key `key`.
    pub fn reserve(
        &mut self,
        shopper: usize,
        deal: usize,
        quantity: u32,
        key: usize,
        hold: bool,
    ) -> Outcome {
        if quantity == 0 {
            return Outcome::Refused(Refusal::Plain(invalid("quantity", "must be at least 1")));
        }
        let request = if hold {
            Request::Hold(deal, quantity)
        } else {
            Request::Buy(deal, quantity)
        };
        let record = self.records.get(&(shopper, key)).copied();
        // The same key on the same deal: the same request replays, another
        // is refused, whatever the deal's state now.
        if let Some((asked, made)) = record.filter(|(asked, _)| asked.deal() == deal) {
            if asked != request {
                return Outcome::Refused(Refusal::Plain(EngineError::IdempotencyKeyReused));
            }
            return match made {
                Made::Order(order) => Outcome::OldOrder(order),
                Made::Hold(hold) => Outcome::OldHold(hold),
            };
        }
        if let Some(refusal) = self.deal_refusal(deal) {
            return Outcome::Refused(Refusal::Plain(refusal));
        }
        if record.is_some() {
            return Outcome::Refused(Refusal::Plain(EngineError::IdempotencyKeyReused));
        }
        let d = self.deals[deal].clone();
        let units = self
            .units
            .get(&(shopper, deal))
            .copied()
            .unwrap_or_default();
        if d.requires_registration && !units.registered {
            return Outcome::Refused(Refusal::Plain(EngineError::NotRegistered));
        }
        if units.held + units.bought + quantity > d.limit {
            return Outcome::Refused(Refusal::Plain(EngineError::PurchaseLimitReached {
                limit: d.limit,
            }));
        }
        let amount = d.price * i64::from(quantity);
        if self.wallets[shopper].available < amount {
            return Outcome::Refused(Refusal::Plain(EngineError::InsufficientFunds));
        }
        if d.remaining < u64::from(quantity) {
            return Outcome::Refused(Refusal::Plain(EngineError::SoldOut));
        }
        self.deals[deal].remaining -= u64::from(quantity);
        self.wallets[shopper].available -= amount;
        let units = self.units.entry((shopper, deal)).or_default();
        if hold {
            units.held += quantity;
            self.wallets[shopper].held += amount;
            self.deals[deal].held += u64::from(quantity);
            self.holds.push(MHold {
                shopper,
                deal,
                quantity,
                amount,
                created_at: self.now,
                expires_at: self.now + d.hold_millis,
                status: MStatus::Active,
            });
            self.records
                .insert((shopper, key), (request, Made::Hold(self.holds.len() - 1)));
            Outcome::NewHold(self.holds.len() - 1)
        } else {
            units.bought += quantity;
            self.wallets[shopper].spent += amount;
            self.deals[deal].sold += u64::from(quantity);
            let order = MOrder {
                shopper,
                deal,
                quantity,
                amount,
                late: false,
                hold: None,
                created_at: self.now,
            };
            self.orders.push(order);
            self.records.insert(
                (shopper, key),
                (request, Made::Order(self.orders.len() - 1)),
            );
            Outcome::NewOrder(order)
        }
    }

    /// An active hold gives its units and funds back (`status`: released
    /// or expired).
    pub fn release(&mut self, hold: usize, status: MStatus) {
        let h = self.holds[hold].clone();
        assert_eq!(h.status, MStatus::Active);
        self.holds[hold].status = status;
        self.wallets[h.shopper].held -= h.amount;
        self.wallets[h.shopper].available += h.amount;
        self.units.get_mut(&(h.shopper, h.deal)).unwrap().held -= h.quantity;
        self.deals[h.deal].held -= u64::from(h.quantity);
        self.deals[h.deal].remaining += u64::from(h.quantity);
    }

    fn settle(&mut self, hold: usize, late: bool) -> Outcome {
        let h = self.holds[hold].clone();
        if late {
            self.deals[h.deal].remaining -= u64::from(h.quantity);
            self.wallets[h.shopper].available -= h.amount;
        } else {
            self.deals[h.deal].held -= u64::from(h.quantity);
            self.wallets[h.shopper].held -= h.amount;
            self.units.get_mut(&(h.shopper, h.deal)).unwrap().held -= h.quantity;
        }
        self.wallets[h.shopper].spent += h.amount;
        self.deals[h.deal].sold += u64::from(h.quantity);
        self.units.get_mut(&(h.shopper, h.deal)).unwrap().bought += h.quantity;
        let order = MOrder {
            shopper: h.shopper,
            deal: h.deal,
            quantity: h.quantity,
            amount: h.amount,
            late,
            hold: Some(hold),
            created_at: self.now,
        };
        self.orders.push(order);
        self.holds[hold].status = MStatus::Settled(self.orders.len() - 1);
        Outcome::NewOrder(order)
    }

    /// The hold's shopper pays it: in its time always (paused or not);
    /// after expiry late, if the deal is on and limit, funds and stock
    /// allow, else `hold_expired` and nothing is charged.
    pub fn pay(&mut self, shopper: usize, hold: usize) -> Outcome {
        let h = self.holds[hold].clone();
        if h.shopper != shopper {
            return Outcome::Refused(Refusal::Plain(EngineError::Forbidden(Entity::Hold)));
        }
        match h.status {
            MStatus::Settled(order) => return Outcome::Refused(Refusal::HoldSettled(hold, order)),
            MStatus::Released => return Outcome::Refused(Refusal::HoldReleased(hold)),
            MStatus::Active if self.now < h.expires_at => return self.settle(hold, false),
            MStatus::Active => self.release(hold, MStatus::Expired),
            MStatus::Expired => {}
        }
        let d = &self.deals[h.deal];
        let units = self.units[&(shopper, h.deal)];
        let fits = !d.paused
            && self.now < d.ends_at
            && units.held + units.bought + h.quantity <= d.limit
            && self.wallets[shopper].available >= h.amount
            && d.remaining >= u64::from(h.quantity);
        if fits {
            self.settle(hold, true)
        } else {
            Outcome::Refused(Refusal::HoldExpired(hold))
        }
    }

    /// The hold's shopper releases it; releasing one released or expired
    /// changes nothing and answers it.
    pub fn release_by(&mut self, shopper: usize, hold: usize) -> Outcome {
        let h = self.holds[hold].clone();
        if h.shopper != shopper {
            return Outcome::Refused(Refusal::Plain(EngineError::Forbidden(Entity::Hold)));
        }
        match h.status {
            MStatus::Settled(order) => Outcome::Refused(Refusal::HoldSettled(hold, order)),
            MStatus::Released | MStatus::Expired => Outcome::HoldNow(hold),
            MStatus::Active => {
                self.release(hold, MStatus::Released);
                Outcome::HoldNow(hold)
            }
        }
    }

    /// The expiry sweep: every active hold whose time is up expires; how
    /// many.
    pub fn expire_due(&mut self) -> usize {
        let due: Vec<usize> = (0..self.holds.len())
            .filter(|&h| {
                self.holds[h].status == MStatus::Active && self.holds[h].expires_at <= self.now
            })
            .collect();
        for &hold in &due {
            self.release(hold, MStatus::Expired);
        }
        due.len()
    }

    /// Registration before the deal starts: `true` new, `false` again
    /// (also after the start); after the start a new one is refused.
    pub fn register(&mut self, shopper: usize, deal: usize) -> Result<bool, EngineError> {
        let starts_at = self.deals[deal].starts_at;
        let units = self.units.entry((shopper, deal)).or_default();
        if units.registered {
            Ok(false)
        } else if self.now >= starts_at {
            Err(EngineError::RegistrationClosed)
        } else {
            units.registered = true;
            self.deals[deal].registrations += 1;
            Ok(true)
        }
    }

    /// A merchant changes a deal (docs/api.md "Changing a deal"): only its
    /// own; `add_stock` ≥ 1; `ends_at` after `starts_at` and after now.
    pub fn update_deal(
        &mut self,
        merchant: usize,
        deal: usize,
        add_stock: Option<u64>,
        ends_at: Option<i64>,
        paused: Option<bool>,
    ) -> Result<(), EngineError> {
        let d = &self.deals[deal];
        if d.merchant != merchant {
            return Err(EngineError::Forbidden(Entity::Deal));
        }
        if add_stock == Some(0) {
            return Err(invalid("add_stock", "must be at least 1"));
        }
        if let Some(ends_at) = ends_at
            && (ends_at <= d.starts_at || ends_at <= self.now)
        {
            return Err(invalid("ends_at", "must be after starts_at and after now"));
        }
        let d = &mut self.deals[deal];
        if let Some(units) = add_stock {
            d.total += units;
            d.remaining += units;
        }
        if let Some(ends_at) = ends_at {
            d.ends_at = ends_at;
        }
        if let Some(paused) = paused {
            d.paused = paused;
        }
        Ok(())
    }

    /// The order's shopper reviews it once; scores from 1 to 5.
    pub fn review(
        &mut self,
        shopper: usize,
        order: usize,
        scores: [u8; 3],
    ) -> Result<usize, EngineError> {
        let fields = ["description", "delivery", "service"];
        if let Some(at) = scores.iter().position(|&s| s == 0 || s > 5) {
            return Err(invalid(fields[at], "must be from 1 to 5"));
        }
        if self.orders[order].shopper != shopper {
            return Err(EngineError::Forbidden(Entity::Order));
        }
        if !self.reviewed.insert(order) {
            return Err(EngineError::AlreadyReviewed);
        }
        let merchant = self.deals[self.orders[order].deal].merchant;
        let rating = self.ratings.entry(merchant).or_default();
        rating.0 += 1;
        rating.1 += scores.iter().map(|&s| u64::from(s)).sum::<u64>();
        Ok(order)
    }

    /// The order's shopper shares it: `true` the first time.
    pub fn share(&mut self, shopper: usize, order: usize) -> Result<bool, EngineError> {
        if self.orders[order].shopper != shopper {
            return Err(EngineError::Forbidden(Entity::Order));
        }
        let first = self.shared.insert(order);
        if first {
            self.deals[self.orders[order].deal].shares += 1;
        }
        Ok(first)
    }

    /// The shopper's orders, in model numbering.
    pub fn orders_of(&self, shopper: usize) -> impl Iterator<Item = (usize, &MOrder)> {
        self.orders
            .iter()
            .enumerate()
            .filter(move |(_, order)| order.shopper == shopper)
    }

    /// The model's own invariants (conservation, limits), so a bug in the
    /// model cannot make both sides agree on something impossible.
    pub fn check(&self) {
        for (index, d) in self.deals.iter().enumerate() {
            assert_eq!(d.total, d.remaining + d.held + d.sold, "model deal {index}");
        }
        for (index, w) in self.wallets.iter().enumerate() {
            assert!(w.available >= 0 && w.held >= 0 && w.spent >= 0);
            assert_eq!(
                w.credited,
                w.available + w.held + w.spent,
                "model wallet {index}"
            );
            let spent: i64 = self.orders_of(index).map(|(_, o)| o.amount).sum();
            assert_eq!(w.spent, spent, "model wallet {index}");
        }
        for ((_, deal), units) in &self.units {
            assert!(units.held + units.bought <= self.deals[*deal].limit);
        }
    }
}
