//! The state changes themselves, shared by the live operations (after
//! their decision, `crate::rules`) and by replay (which passes
//! `DiscardEvents`), so no rule is repeated here: each function applies a
//! change already decided. Each one emits its event while the shard lock is
//! held, and before any stock it gives back becomes visible
//! (ARCHITECTURE.md "Why replay never runs a counter below zero").

use crate::clock::Timestamp;
use crate::deal::DealState;
use crate::event::{Event, EventSink, Fingerprint, ReleaseReason};
use crate::records::{Hold, HoldStatus, Order};
use crate::rules::counts_new_buyer;
use crate::shard::{IdempotencyRecord, Outcome, Request, Shard};

/// Records a one-tap buy whose stock is already taken.
pub(crate) fn commit_order(
    shard: &mut Shard,
    deal: &DealState,
    order: Order,
    key: Fingerprint,
    sink: &dyn EventSink,
) {
    let account = shard
        .accounts
        .get_mut(&order.shopper)
        .expect("the buyer exists");
    account.wallet.available = account
        .wallet
        .available
        .checked_sub(order.amount)
        .expect("funds checked before");
    account.wallet.spent = account
        .wallet
        .spent
        .checked_add(order.amount)
        .expect("spent ≤ credited ≤ MONEY_MAX");
    let units = account.units_mut(order.deal);
    if counts_new_buyer(units.bought) {
        deal.stock.add_buyer();
    }
    units.bought += order.quantity;
    deal.stock.add_sold(u64::from(order.quantity));
    let record = IdempotencyRecord {
        request: Request::Buy {
            deal: order.deal,
            quantity: order.quantity,
        },
        outcome: Outcome::Order(order.id),
        created_at: order.created_at,
    };
    let shopper = order.shopper;
    sink.emit(Event::OrderSettled {
        order: order.clone(),
        key: Some(key),
    });
    shard.push_order(order);
    shard.remember(shopper, key, record);
    deal.records.insert(shopper);
    shard.assert_account(shopper);
}

/// Records a hold whose stock is already taken.
pub(crate) fn commit_hold(
    shard: &mut Shard,
    deal: &DealState,
    hold: Hold,
    key: Fingerprint,
    sink: &dyn EventSink,
) {
    place_hold(shard, deal, &hold);
    let record = IdempotencyRecord {
        request: Request::Hold {
            deal: hold.deal,
            quantity: hold.quantity,
        },
        outcome: Outcome::Hold(hold.id),
        created_at: hold.created_at,
    };
    let shopper = hold.shopper;
    sink.emit(Event::HoldCreated { hold, key });
    shard.remember(shopper, key, record);
    deal.records.insert(shopper);
    shard.assert_account(shopper);
}

/// Places a hold whose stock is already taken: its funds and units
/// reserved, the hold stored and its expiry scheduled. Shared by a shopper's
/// hold ([`commit_hold`]) and a raffle's offer (`crate::draw`).
pub(crate) fn place_hold(shard: &mut Shard, deal: &DealState, hold: &Hold) {
    assert_eq!(
        hold.id,
        shard.next_hold_id(),
        "holds are appended in id order"
    );
    reserve_for(shard, deal, hold);
    shard.expiries.insert((hold.expires_at, hold.id));
    shard.holds.push(hold.clone());
}

/// Moves a hold's amount from available to held funds and its units to
/// held stock: the reservation half of a hold, its stock already taken.
fn reserve_for(shard: &mut Shard, deal: &DealState, hold: &Hold) {
    let account = shard
        .accounts
        .get_mut(&hold.shopper)
        .expect("the shopper exists");
    account.wallet.available = account
        .wallet
        .available
        .checked_sub(hold.amount)
        .expect("funds checked before");
    account.wallet.held = account
        .wallet
        .held
        .checked_add(hold.amount)
        .expect("held ≤ credited ≤ MONEY_MAX");
    account.units_mut(hold.deal).held += hold.quantity;
    deal.stock.add_held(u64::from(hold.quantity));
}

/// Pays an expired hold late whose stock is already taken again: reserves
/// the funds anew, then settles.
pub(crate) fn settle_late(
    shard: &mut Shard,
    deal: &DealState,
    hold: &Hold,
    now: Timestamp,
    sink: &dyn EventSink,
) -> Order {
    reserve_for(shard, deal, hold);
    settle(shard, deal, hold, true, now, sink)
}

/// Turns a hold's reserved stock and funds into a settled order.
pub(crate) fn settle(
    shard: &mut Shard,
    deal: &DealState,
    hold: &Hold,
    late: bool,
    now: Timestamp,
    sink: &dyn EventSink,
) -> Order {
    let account = shard
        .accounts
        .get_mut(&hold.shopper)
        .expect("a hold's shopper exists");
    account.wallet.held = account
        .wallet
        .held
        .checked_sub(hold.amount)
        .expect("the hold's funds are held");
    account.wallet.spent = account
        .wallet
        .spent
        .checked_add(hold.amount)
        .expect("spent ≤ credited");
    let units = account.units_mut(hold.deal);
    let first_purchase = counts_new_buyer(units.bought);
    units.held -= hold.quantity;
    units.bought += hold.quantity;
    let order = Order {
        id: shard.next_order_id(),
        deal: hold.deal,
        shopper: hold.shopper,
        quantity: hold.quantity,
        unit_price: deal.price,
        amount: hold.amount,
        late,
        hold: Some(hold.id),
        created_at: now,
    };
    deal.stock.remove_held(u64::from(hold.quantity));
    deal.stock.add_sold(u64::from(hold.quantity));
    if first_purchase {
        deal.stock.add_buyer();
    }
    sink.emit(Event::OrderSettled {
        order: order.clone(),
        key: None,
    });
    let position = shard.hold_position(hold.id).expect("the hold exists");
    shard.holds[position].status = HoldStatus::Settled(order.id);
    shard.expiries.remove(&(hold.expires_at, hold.id));
    shard.push_order(order.clone());
    shard.assert_account(hold.shopper);
    order
}

/// Gives an active hold's stock and funds back.
pub(crate) fn release(
    shard: &mut Shard,
    deal: &DealState,
    position: usize,
    reason: ReleaseReason,
    now: Timestamp,
    sink: &dyn EventSink,
) {
    let hold = &mut shard.holds[position];
    assert_eq!(
        hold.status,
        HoldStatus::Active,
        "only an active hold is released"
    );
    hold.status = match reason {
        ReleaseReason::Released => HoldStatus::Released,
        ReleaseReason::Expired => HoldStatus::Expired,
    };
    let hold = hold.clone();
    shard.expiries.remove(&(hold.expires_at, hold.id));
    let account = shard
        .accounts
        .get_mut(&hold.shopper)
        .expect("a hold's shopper exists");
    account.wallet.held = account
        .wallet
        .held
        .checked_sub(hold.amount)
        .expect("the hold's funds are held");
    account.wallet.available = account
        .wallet
        .available
        .checked_add(hold.amount)
        .expect("available ≤ credited");
    account.units_mut(hold.deal).held -= hold.quantity;
    // Event first, then the stock: see the `event` module.
    sink.emit(Event::HoldReleased {
        hold: hold.id,
        shopper: hold.shopper,
        reason,
        at: now,
    });
    deal.stock.remove_held(u64::from(hold.quantity));
    deal.stock.put_back(u64::from(hold.quantity));
    shard.assert_account(hold.shopper);
}
