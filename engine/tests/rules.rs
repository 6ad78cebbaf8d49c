//! One test per rule and per refusal of the engine, through its public API.

mod support;

use std::sync::Arc;

use flashsale_engine::{
    Answer, Clock, DealChange, DealStatus, EngineConfig, EngineError, Entity, Event, HoldStatus,
    Money, OrderCursor, RecordEvents, ShopperId,
};
use support::{World, money};

fn assert_unchanged(
    world: &World,
    shopper: ShopperId,
    deal: flashsale_engine::DealId,
    f: impl FnOnce() -> EngineError,
    expected: EngineError,
) {
    let wallet = world.engine.wallet(shopper).unwrap();
    let counts = world.engine.stock(deal).unwrap();
    assert_eq!(f(), expected);
    assert_eq!(
        world.engine.wallet(shopper).unwrap(),
        wallet,
        "wallet changed by a refusal"
    );
    assert_eq!(
        world.engine.stock(deal).unwrap(),
        counts,
        "stock changed by a refusal"
    );
    world.engine.check_invariants().unwrap();
}

#[test]
fn a_buy_takes_stock_debits_the_wallet_and_settles_an_order() {
    let world = World::new();
    let deal = world.deal(10, 2, "999.00");
    let ann = world.shopper("2000.00");
    let order = world.engine.buy(ann, deal, 2, "k1").unwrap();
    assert_eq!(
        (order.quantity, order.amount, order.unit_price),
        (2, money("1998.00"), money("999.00"))
    );
    assert!(!order.late);
    let wallet = world.engine.wallet(ann).unwrap();
    assert_eq!(
        (wallet.available, wallet.held, wallet.spent),
        (money("2.00"), Money::ZERO, money("1998.00"))
    );
    let view = world.engine.deal(deal).unwrap();
    assert_eq!(
        (view.counts.remaining, view.counts.sold, view.buyers),
        (8, 2, 1)
    );
    assert_eq!(world.engine.order(order.id).unwrap(), order);
    world.engine.check_invariants().unwrap();
}

#[test]
fn the_same_key_and_request_returns_the_same_order() {
    let world = World::new();
    let deal = world.deal(10, 1, "5.00");
    let ann = world.shopper("100.00");
    let first = world.engine.buy(ann, deal, 1, "k").unwrap();
    let again = world.engine.buy(ann, deal, 1, "k").unwrap();
    assert_eq!(first, again);
    assert_eq!(world.engine.stock(deal).unwrap().sold, 1);
    assert_eq!(world.engine.wallet(ann).unwrap().spent, money("5.00"));
}

#[test]
fn a_buy_says_whether_it_settled_the_order_or_replayed_it() {
    let world = World::new();
    let deal = world.deal(2, 1, "5.00");
    let ann = world.shopper("100.00");
    let (first, answer) = world.engine.buy_answer(ann, deal, 1, "k").unwrap();
    assert_eq!(answer, Answer::Settled);
    let (again, answer) = world.engine.buy_answer(ann, deal, 1, "k").unwrap();
    assert_eq!((again, answer), (first, Answer::Replayed));
    // After the sell-out a retry is still a replay; a new buyer is refused.
    world
        .engine
        .buy(world.shopper("100.00"), deal, 1, "k")
        .unwrap();
    assert_eq!(
        world.engine.buy_answer(ann, deal, 1, "k").unwrap().1,
        Answer::Replayed
    );
    assert_eq!(
        world
            .engine
            .buy_answer(world.shopper("100.00"), deal, 1, "k"),
        Err(EngineError::SoldOut)
    );
    assert_eq!(world.engine.stock(deal).unwrap().sold, 2);
}

#[test]
fn the_same_key_with_another_request_is_refused() {
    let world = World::new();
    let deal = world.deal(10, 3, "5.00");
    let ann = world.shopper("100.00");
    world.engine.buy(ann, deal, 1, "k").unwrap();
    assert_unchanged(
        &world,
        ann,
        deal,
        || world.engine.buy(ann, deal, 2, "k").unwrap_err(),
        EngineError::IdempotencyKeyReused,
    );
    assert_unchanged(
        &world,
        ann,
        deal,
        || world.engine.hold(ann, deal, 1, "k").unwrap_err(),
        EngineError::IdempotencyKeyReused,
    );
}

#[test]
fn keys_are_per_shopper() {
    let world = World::new();
    let deal = world.deal(10, 1, "5.00");
    let (ann, bob) = (world.shopper("10.00"), world.shopper("10.00"));
    let a = world.engine.buy(ann, deal, 1, "same").unwrap();
    let b = world.engine.buy(bob, deal, 1, "same").unwrap();
    assert_ne!(a.id, b.id);
}

#[test]
fn a_retry_after_sell_out_still_gets_its_order() {
    let world = World::new();
    let deal = world.deal(1, 1, "5.00");
    let (ann, bob) = (world.shopper("10.00"), world.shopper("10.00"));
    let order = world.engine.buy(ann, deal, 1, "k").unwrap();
    assert_eq!(
        world.engine.buy(bob, deal, 1, "k").unwrap_err(),
        EngineError::SoldOut
    );
    assert_eq!(world.engine.buy(ann, deal, 1, "k").unwrap(), order);
    world.clock.advance_seconds(7200);
    assert_eq!(
        world.engine.buy(ann, deal, 1, "k").unwrap(),
        order,
        "and after the deal ended"
    );
}

#[test]
fn refusals_are_not_remembered() {
    let world = World::new();
    let deal = world.deal(5, 1, "5.00");
    let ann = world.shopper("0");
    assert_eq!(
        world.engine.buy(ann, deal, 1, "k").unwrap_err(),
        EngineError::InsufficientFunds
    );
    world
        .engine
        .credit_wallet(ann, money("5.00"), "top-up")
        .unwrap();
    assert!(
        world.engine.buy(ann, deal, 1, "k").is_ok(),
        "the retry is judged afresh"
    );
}

#[test]
fn sold_out_is_refused_and_changes_nothing() {
    let world = World::new();
    let deal = world.deal(1, 1, "5.00");
    let (ann, bob) = (world.shopper("10.00"), world.shopper("10.00"));
    world.engine.buy(ann, deal, 1, "a").unwrap();
    assert_unchanged(
        &world,
        bob,
        deal,
        || world.engine.buy(bob, deal, 1, "b").unwrap_err(),
        EngineError::SoldOut,
    );
    assert_eq!(world.engine.deal(deal).unwrap().status, DealStatus::SoldOut);
}

#[test]
fn a_quantity_larger_than_the_remaining_stock_is_sold_out() {
    let world = World::new();
    let deal = world.deal(2, 5, "1.00");
    let ann = world.shopper("10.00");
    assert_unchanged(
        &world,
        ann,
        deal,
        || world.engine.buy(ann, deal, 3, "a").unwrap_err(),
        EngineError::SoldOut,
    );
    assert!(
        world.engine.buy(ann, deal, 2, "b").is_ok(),
        "the smaller quantity still fits"
    );
}

#[test]
fn the_per_user_limit_counts_holds_and_orders() {
    let world = World::new();
    let deal = world.deal(10, 2, "1.00");
    let ann = world.shopper("10.00");
    world.engine.hold(ann, deal, 1, "h").unwrap();
    world.engine.buy(ann, deal, 1, "b").unwrap();
    assert_unchanged(
        &world,
        ann,
        deal,
        || world.engine.buy(ann, deal, 1, "c").unwrap_err(),
        EngineError::PurchaseLimitReached { limit: 2 },
    );
    assert_unchanged(
        &world,
        ann,
        deal,
        || world.engine.hold(ann, deal, 1, "d").unwrap_err(),
        EngineError::PurchaseLimitReached { limit: 2 },
    );
}

#[test]
fn insufficient_funds_changes_nothing() {
    let world = World::new();
    let deal = world.deal(10, 1, "999.00");
    let ann = world.shopper("998.99");
    assert_unchanged(
        &world,
        ann,
        deal,
        || world.engine.buy(ann, deal, 1, "k").unwrap_err(),
        EngineError::InsufficientFunds,
    );
    assert_unchanged(
        &world,
        ann,
        deal,
        || world.engine.hold(ann, deal, 1, "k").unwrap_err(),
        EngineError::InsufficientFunds,
    );
}

#[test]
fn time_decides_not_started_and_ended() {
    let world = World::new();
    let mut new = world.new_deal(10, 1, "1.00");
    new.starts_at = world.clock.now().plus_seconds(60);
    let deal = world.engine.create_deal(world.merchant, new).unwrap().id;
    let ann = world.shopper("10.00");
    assert_eq!(
        world.engine.deal(deal).unwrap().status,
        DealStatus::Scheduled
    );
    assert_unchanged(
        &world,
        ann,
        deal,
        || world.engine.buy(ann, deal, 1, "k").unwrap_err(),
        EngineError::NotStarted,
    );
    world.clock.advance_seconds(60);
    assert_eq!(world.engine.deal(deal).unwrap().status, DealStatus::Live);
    world.clock.advance_seconds(3600);
    assert_eq!(world.engine.deal(deal).unwrap().status, DealStatus::Ended);
    assert_unchanged(
        &world,
        ann,
        deal,
        || world.engine.buy(ann, deal, 1, "k").unwrap_err(),
        EngineError::DealEnded,
    );
}

#[test]
fn registration_is_required_when_the_deal_says_so_and_closes_at_start() {
    let world = World::new();
    let mut new = world.new_deal(10, 1, "1.00");
    new.starts_at = world.clock.now().plus_seconds(60);
    new.requires_registration = true;
    let deal = world.engine.create_deal(world.merchant, new).unwrap().id;
    let (ann, bob) = (world.shopper("10.00"), world.shopper("10.00"));
    assert_eq!(world.engine.register(ann, deal), Ok(true));
    assert_eq!(
        world.engine.register(ann, deal),
        Ok(false),
        "registering twice is idempotent"
    );
    assert_eq!(world.engine.deal(deal).unwrap().registrations, 1);
    world.clock.advance_seconds(60);
    assert_eq!(
        world.engine.register(bob, deal),
        Err(EngineError::RegistrationClosed)
    );
    assert_unchanged(
        &world,
        bob,
        deal,
        || world.engine.buy(bob, deal, 1, "k").unwrap_err(),
        EngineError::NotRegistered,
    );
    assert!(world.engine.buy(ann, deal, 1, "k").is_ok());
}

#[test]
fn a_paused_deal_refuses_and_resumes() {
    let world = World::new();
    let deal = world.deal(10, 1, "1.00");
    let ann = world.shopper("10.00");
    let paused = world
        .engine
        .update_deal(
            world.merchant,
            deal,
            DealChange {
                paused: Some(true),
                ..DealChange::default()
            },
        )
        .unwrap();
    assert_eq!(paused.status, DealStatus::Paused);
    assert_unchanged(
        &world,
        ann,
        deal,
        || world.engine.buy(ann, deal, 1, "k").unwrap_err(),
        EngineError::DealPaused,
    );
    world
        .engine
        .update_deal(
            world.merchant,
            deal,
            DealChange {
                paused: Some(false),
                ..DealChange::default()
            },
        )
        .unwrap();
    assert!(world.engine.buy(ann, deal, 1, "k").is_ok());
}

#[test]
fn restock_reopens_a_sold_out_deal() {
    let world = World::new();
    let deal = world.deal(1, 1, "1.00");
    let (ann, bob) = (world.shopper("10.00"), world.shopper("10.00"));
    world.engine.buy(ann, deal, 1, "k").unwrap();
    assert_eq!(
        world.engine.buy(bob, deal, 1, "k").unwrap_err(),
        EngineError::SoldOut
    );
    let view = world
        .engine
        .update_deal(
            world.merchant,
            deal,
            DealChange {
                add_stock: Some(5),
                ..DealChange::default()
            },
        )
        .unwrap();
    assert_eq!((view.counts.total, view.counts.remaining), (6, 5));
    assert!(world.engine.buy(bob, deal, 1, "k").is_ok());
}

#[test]
fn only_the_deals_merchant_may_change_it_and_bad_changes_are_refused() {
    let world = World::new();
    let deal = world.deal(1, 1, "1.00");
    let other = world.engine.create_merchant("rival").unwrap().id;
    let change = DealChange {
        add_stock: Some(5),
        ..DealChange::default()
    };
    assert_eq!(
        world.engine.update_deal(other, deal, change),
        Err(EngineError::Forbidden(Entity::Deal))
    );
    let bad = [
        DealChange {
            add_stock: Some(0),
            ..DealChange::default()
        },
        DealChange {
            add_stock: Some(u64::MAX),
            ..DealChange::default()
        },
        DealChange {
            ends_at: Some(world.clock.now()),
            ..DealChange::default()
        },
    ];
    for change in bad {
        assert!(
            matches!(
                world.engine.update_deal(world.merchant, deal, change),
                Err(EngineError::Invalid { .. })
            ),
            "{change:?}"
        );
    }
    assert_eq!(
        world.engine.stock(deal).unwrap().total,
        1,
        "nothing changed"
    );
}

#[test]
fn a_hold_reserves_and_payment_settles() {
    let world = World::new();
    let deal = world.deal(10, 1, "50.00");
    let ann = world.shopper("100.00");
    let hold = world.engine.hold(ann, deal, 1, "h").unwrap();
    assert_eq!(hold.expires_at, world.clock.now().plus_seconds(60));
    let wallet = world.engine.wallet(ann).unwrap();
    assert_eq!(
        (wallet.available, wallet.held),
        (money("50.00"), money("50.00"))
    );
    assert_eq!(world.engine.stock(deal).unwrap().held, 1);
    let order = world.engine.pay_hold(ann, hold.id).unwrap();
    assert_eq!(
        (order.hold, order.late, order.amount),
        (Some(hold.id), false, money("50.00"))
    );
    let wallet = world.engine.wallet(ann).unwrap();
    assert_eq!(
        (wallet.available, wallet.held, wallet.spent),
        (money("50.00"), Money::ZERO, money("50.00"))
    );
    let counts = world.engine.stock(deal).unwrap();
    assert_eq!((counts.held, counts.sold, counts.remaining), (0, 1, 9));
    assert_eq!(
        world.engine.pay_hold(ann, hold.id),
        Err(EngineError::HoldSettled {
            hold: hold.id,
            order: order.id
        })
    );
    assert_eq!(
        world.engine.release_hold(ann, hold.id),
        Err(EngineError::HoldSettled {
            hold: hold.id,
            order: order.id
        })
    );
    world.engine.check_invariants().unwrap();
}

#[test]
fn release_gives_everything_back_once() {
    let world = World::new();
    let deal = world.deal(1, 1, "50.00");
    let ann = world.shopper("100.00");
    let hold = world.engine.hold(ann, deal, 1, "h").unwrap();
    assert_eq!(world.engine.deal(deal).unwrap().status, DealStatus::SoldOut);
    let released = world.engine.release_hold(ann, hold.id).unwrap();
    assert_eq!(released.status, HoldStatus::Released);
    assert_eq!(
        world.engine.release_hold(ann, hold.id).unwrap(),
        released,
        "a second release changes nothing"
    );
    assert_eq!(world.engine.wallet(ann).unwrap().available, money("100.00"));
    assert_eq!(world.engine.stock(deal).unwrap().remaining, 1);
    assert_eq!(
        world.engine.pay_hold(ann, hold.id),
        Err(EngineError::HoldReleased { hold: hold.id })
    );
    let bob = world.shopper("100.00");
    assert!(
        world.engine.buy(bob, deal, 1, "b").is_ok(),
        "released stock sells again"
    );
}

#[test]
fn the_sweep_expires_holds_by_the_clock() {
    let world = World::new();
    let deal = world.deal(3, 1, "10.00");
    let shoppers: Vec<_> = (0..3).map(|_| world.shopper("10.00")).collect();
    for shopper in &shoppers {
        world.engine.hold(*shopper, deal, 1, "h").unwrap();
    }
    world.clock.advance_seconds(59);
    assert_eq!(world.engine.expire_holds(), 0);
    world.clock.advance_seconds(1);
    assert_eq!(world.engine.expire_holds(), 3);
    assert_eq!(world.engine.stock(deal).unwrap().remaining, 3);
    for shopper in &shoppers {
        assert_eq!(
            world.engine.wallet(*shopper).unwrap().available,
            money("10.00")
        );
    }
    world.engine.check_invariants().unwrap();
}

#[test]
fn a_late_payment_is_honoured_when_stock_and_funds_allow() {
    let world = World::new();
    let deal = world.deal(5, 1, "10.00");
    let ann = world.shopper("10.00");
    let hold = world.engine.hold(ann, deal, 1, "h").unwrap();
    world.clock.advance_seconds(61);
    world.engine.expire_holds();
    let order = world.engine.pay_hold(ann, hold.id).unwrap();
    assert!(order.late);
    assert_eq!(
        world.engine.hold_by_id(hold.id).unwrap().status,
        HoldStatus::Settled(order.id)
    );
    assert_eq!(world.engine.wallet(ann).unwrap().spent, money("10.00"));
    world.engine.check_invariants().unwrap();
}

#[test]
fn a_late_payment_without_the_sweep_expires_then_pays() {
    let world = World::new();
    let deal = world.deal(5, 1, "10.00");
    let ann = world.shopper("10.00");
    let hold = world.engine.hold(ann, deal, 1, "h").unwrap();
    world.clock.advance_seconds(61);
    let order = world.engine.pay_hold(ann, hold.id).unwrap();
    assert!(order.late);
    world.engine.check_invariants().unwrap();
}

#[test]
fn a_late_payment_without_stock_or_funds_is_hold_expired_and_charges_nothing() {
    let world = World::new();
    let deal = world.deal(1, 1, "10.00");
    let (ann, bob) = (world.shopper("10.00"), world.shopper("10.00"));
    let hold = world.engine.hold(ann, deal, 1, "h").unwrap();
    world.clock.advance_seconds(61);
    world.engine.expire_holds();
    world.engine.buy(bob, deal, 1, "b").unwrap();
    assert_unchanged(
        &world,
        ann,
        deal,
        || world.engine.pay_hold(ann, hold.id).unwrap_err(),
        EngineError::HoldExpired { hold: hold.id },
    );

    let deal = world.deal(5, 1, "10.00");
    let carl = world.shopper("10.00");
    let hold = world.engine.hold(carl, deal, 1, "h").unwrap();
    world.clock.advance_seconds(61);
    world.engine.expire_holds();
    world
        .engine
        .buy(carl, world.deal(5, 1, "10.00"), 1, "spend")
        .unwrap();
    assert_unchanged(
        &world,
        carl,
        deal,
        || world.engine.pay_hold(carl, hold.id).unwrap_err(),
        EngineError::HoldExpired { hold: hold.id },
    );
}

#[test]
fn another_shoppers_hold_is_forbidden() {
    let world = World::new();
    let deal = world.deal(5, 1, "10.00");
    let (ann, bob) = (world.shopper("10.00"), world.shopper("10.00"));
    let hold = world.engine.hold(ann, deal, 1, "h").unwrap();
    assert_unchanged(
        &world,
        bob,
        deal,
        || world.engine.pay_hold(bob, hold.id).unwrap_err(),
        EngineError::Forbidden(Entity::Hold),
    );
    assert_unchanged(
        &world,
        bob,
        deal,
        || world.engine.release_hold(bob, hold.id).unwrap_err(),
        EngineError::Forbidden(Entity::Hold),
    );
    assert_eq!(
        world.engine.hold_by_id(hold.id).unwrap().status,
        HoldStatus::Active
    );
}

#[test]
fn unknown_ids_are_not_found() {
    let world = World::new();
    let ann = world.shopper("10.00");
    let nowhere = flashsale_engine::DealId(999);
    assert_eq!(
        world.engine.buy(ann, nowhere, 1, "k"),
        Err(EngineError::NotFound(Entity::Deal))
    );
    assert_eq!(
        world
            .engine
            .pay_hold(ann, flashsale_engine::HoldId(u64::MAX)),
        Err(EngineError::NotFound(Entity::Hold))
    );
    assert_eq!(
        world.engine.order(flashsale_engine::OrderId(12345)),
        Err(EngineError::NotFound(Entity::Order))
    );
    assert_eq!(
        world.engine.wallet(ShopperId(777)),
        Err(EngineError::NotFound(Entity::Shopper))
    );
}

#[test]
fn bad_quantities_are_invalid_and_change_nothing() {
    let world = World::new();
    let deal = world.deal(10, 1, "1.00");
    let ann = world.shopper("10.00");
    for quantity in [0, 1001, u32::MAX] {
        let refusal = world.engine.buy(ann, deal, quantity, "k").unwrap_err();
        assert!(
            matches!(
                refusal,
                EngineError::Invalid {
                    field: "quantity",
                    ..
                }
            ),
            "{quantity}: {refusal:?}"
        );
    }
    assert!(matches!(
        world.engine.buy(ann, deal, 1, ""),
        Err(EngineError::Invalid { .. })
    ));
    assert!(matches!(
        world.engine.buy(ann, deal, 1, &"k".repeat(256)),
        Err(EngineError::Invalid { .. })
    ));
    assert_eq!(world.engine.stock(deal).unwrap().remaining, 10);
}

#[test]
fn bad_deals_are_invalid() {
    let world = World::new();
    let good = world.new_deal(10, 1, "1.00");
    let now = world.clock.now();
    let cases: Vec<(&str, flashsale_engine::NewDeal)> = vec![
        (
            "price",
            flashsale_engine::NewDeal {
                price: Money::ZERO,
                ..good.clone()
            },
        ),
        (
            "stock",
            flashsale_engine::NewDeal {
                stock: 0,
                ..good.clone()
            },
        ),
        (
            "stock",
            flashsale_engine::NewDeal {
                stock: u64::MAX,
                ..good.clone()
            },
        ),
        (
            "per_user_limit",
            flashsale_engine::NewDeal {
                per_user_limit: Some(0),
                ..good.clone()
            },
        ),
        (
            "ends_at",
            flashsale_engine::NewDeal {
                ends_at: good.starts_at,
                ..good.clone()
            },
        ),
        (
            "ends_at",
            flashsale_engine::NewDeal {
                starts_at: now.plus_seconds(0).plus_millis(-7_200_000),
                ends_at: now.plus_millis(-1),
                ..good.clone()
            },
        ),
        (
            "title",
            flashsale_engine::NewDeal {
                title: " ".into(),
                ..good.clone()
            },
        ),
        (
            "hold_seconds",
            flashsale_engine::NewDeal {
                hold_seconds: Some(0),
                ..good.clone()
            },
        ),
        (
            "price",
            flashsale_engine::NewDeal {
                price: flashsale_engine::MONEY_MAX,
                per_user_limit: Some(2),
                ..good.clone()
            },
        ),
    ];
    for (field, new) in cases {
        match world.engine.create_deal(world.merchant, new) {
            Err(EngineError::Invalid { field: named, .. }) => assert_eq!(named, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(
        world.engine.deals_newest_first(None, 10).is_empty(),
        "no deal was created"
    );
}

#[test]
fn credits_are_idempotent_by_reference_and_checked() {
    let world = World::new();
    let ann = world.shopper("0");
    let once = world
        .engine
        .credit_wallet(ann, money("10.00"), "pay-1")
        .unwrap();
    assert_eq!(
        world
            .engine
            .credit_wallet(ann, money("10.00"), "pay-1")
            .unwrap(),
        once
    );
    assert_eq!(
        world.engine.credit_wallet(ann, money("11.00"), "pay-1"),
        Err(EngineError::IdempotencyKeyReused)
    );
    assert!(matches!(
        world.engine.credit_wallet(ann, Money::ZERO, "pay-2"),
        Err(EngineError::Invalid { .. })
    ));
    world
        .engine
        .credit_wallet(
            ann,
            flashsale_engine::MONEY_MAX
                .checked_sub(money("10.00"))
                .unwrap(),
            "big",
        )
        .unwrap();
    assert!(matches!(
        world.engine.credit_wallet(ann, money("0.01"), "over"),
        Err(EngineError::Invalid {
            field: "amount",
            ..
        })
    ));
    assert_eq!(
        world.engine.wallet(ann).unwrap().credited,
        flashsale_engine::MONEY_MAX
    );
}

#[test]
fn bulk_shoppers_are_created_and_credited() {
    let world = World::new();
    let shoppers = world.engine.create_shoppers(100, money("5.00")).unwrap();
    assert_eq!(shoppers.len(), 100);
    assert!(
        shoppers
            .iter()
            .all(|s| world.engine.wallet(*s).unwrap().available == money("5.00"))
    );
    assert!(world.engine.create_shoppers(0, Money::ZERO).is_err());
    assert!(world.engine.create_shoppers(10_001, Money::ZERO).is_err());
}

#[test]
fn orders_are_listed_per_deal_across_shards_and_per_shopper() {
    let world = World::new();
    let deal = world.deal(100, 1, "1.00");
    let other = world.deal(100, 1, "1.00");
    let shoppers = world.engine.create_shoppers(50, money("10.00")).unwrap();
    for shopper in &shoppers {
        world.engine.buy(*shopper, deal, 1, "a").unwrap();
        world.engine.buy(*shopper, other, 1, "b").unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = OrderCursor::default();
    loop {
        let page = world.engine.orders_of_deal(deal, cursor, 7);
        assert!(page.orders.len() <= 7);
        seen.extend(page.orders.iter().map(|o| (o.id, o.deal)));
        match page.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(seen.len(), 50);
    assert!(seen.iter().all(|(_, d)| *d == deal));
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 50, "no order twice");
    let own = world
        .engine
        .orders_of_shopper(shoppers[0], None, OrderCursor::default(), 10);
    assert_eq!(own.orders.len(), 2);
    let own_of_deal =
        world
            .engine
            .orders_of_shopper(shoppers[0], Some(other), OrderCursor::default(), 10);
    assert_eq!(own_of_deal.orders.len(), 1);
}

#[test]
fn idempotency_records_are_bounded_and_kept_a_day() {
    let config = EngineConfig {
        shards: 1,
        idempotency_records_max: 2,
        ..EngineConfig::default()
    };
    let world = World::with(config, Arc::new(flashsale_engine::DiscardEvents));
    let deal = world.deal(10, 10, "1.00");
    let ann = world.shopper("10.00");
    let first = world.engine.buy(ann, deal, 1, "a").unwrap();
    world.engine.buy(ann, deal, 1, "b").unwrap();
    assert_eq!(
        world.engine.buy(ann, deal, 1, "c"),
        Err(EngineError::CapacityReached {
            bound: "idempotency_records_max"
        })
    );
    world
        .clock
        .advance_millis(flashsale_engine::IDEMPOTENCY_RETENTION_MILLIS - 1);
    assert_eq!(
        world.engine.buy(ann, deal, 1, "a").unwrap(),
        first,
        "kept for 24 hours"
    );
    // The deal is over by now; extend it so the next buy is judged on capacity alone.
    let change = DealChange {
        ends_at: Some(world.clock.now().plus_seconds(3600)),
        ..DealChange::default()
    };
    world
        .engine
        .update_deal(world.merchant, deal, change)
        .unwrap();
    world.clock.advance_millis(2);
    assert!(
        world.engine.buy(ann, deal, 1, "c").is_ok(),
        "records older than retention make room"
    );
}

#[test]
fn every_change_emits_an_event_and_refusals_emit_none() {
    let sink = Arc::new(RecordEvents::default());
    let world = World::with_sink(sink.clone());
    let deal = world.deal(1, 1, "1.00");
    let (ann, bob) = (world.shopper("10.00"), world.shopper("10.00"));
    sink.take();
    world.engine.buy(ann, deal, 1, "k").unwrap();
    assert!(matches!(&sink.take()[..], [Event::OrderSettled { .. }]));
    world.engine.buy(bob, deal, 1, "k").unwrap_err();
    world.engine.buy(ann, deal, 1, "k").unwrap();
    assert!(sink.take().is_empty(), "refusals and replays emit nothing");
}

#[test]
fn a_review_is_once_by_the_orders_shopper_and_feeds_the_rating() {
    let world = World::new();
    let deal = world.deal(10, 1, "1.00");
    let (ann, bob) = (world.shopper("10.00"), world.shopper("10.00"));
    let order = world.engine.buy(ann, deal, 1, "k").unwrap();
    assert_eq!(
        world.engine.review(bob, order.id, [5, 5, 5], ""),
        Err(EngineError::Forbidden(Entity::Order))
    );
    for scores in [[0, 3, 3], [3, 6, 3], [3, 3, 0]] {
        assert!(matches!(
            world.engine.review(ann, order.id, scores, ""),
            Err(EngineError::Invalid { .. })
        ));
    }
    assert!(matches!(
        world
            .engine
            .review(ann, order.id, [3, 3, 3], &"x".repeat(501)),
        Err(EngineError::Invalid { field: "text", .. })
    ));
    assert_eq!(
        world
            .engine
            .rating(world.merchant)
            .unwrap()
            .average_hundredths(),
        None
    );
    let text = "<script>alert(1)</script>";
    let review = world.engine.review(ann, order.id, [5, 4, 4], text).unwrap();
    assert_eq!(review.text, text, "stored as given");
    assert_eq!(
        world.engine.review(ann, order.id, [1, 1, 1], ""),
        Err(EngineError::AlreadyReviewed)
    );
    let rating = world.engine.rating(world.merchant).unwrap();
    assert_eq!(
        (rating.reviews, rating.average_hundredths()),
        (1, Some(433))
    );
}

#[test]
fn a_share_counts_once_toward_popularity() {
    let world = World::new();
    let deal = world.deal(10, 1, "1.00");
    let (ann, bob) = (world.shopper("10.00"), world.shopper("10.00"));
    let order = world.engine.buy(ann, deal, 1, "k").unwrap();
    assert_eq!(
        world.engine.share(bob, order.id),
        Err(EngineError::Forbidden(Entity::Order))
    );
    assert_eq!(world.engine.share(ann, order.id), Ok(true));
    assert_eq!(world.engine.share(ann, order.id), Ok(false));
    let view = world.engine.deal(deal).unwrap();
    assert_eq!((view.shares, view.buyers, view.popularity()), (1, 1, 2));
}

#[test]
fn text_postgres_cannot_store_is_refused_in_every_text_field() {
    let sink = Arc::new(RecordEvents::default());
    let world = World::with_sink(sink.clone());
    let deal = world.deal(10, 1, "1.00");
    let ann = world.shopper("10.00");
    let order = world.engine.buy(ann, deal, 1, "k").unwrap();
    sink.take();
    let invalid = |field: &'static str| {
        move |result: Result<(), EngineError>| {
            assert!(
                matches!(result, Err(EngineError::Invalid { field: named, .. }) if named == field),
                "{field}: {result:?}"
            );
        }
    };
    for bad in [
        "nul\0title",
        "bell\u{7}",
        "tab\tin a name",
        "line\nbreak",
        "del\u{7f}",
        "c1\u{85}",
    ] {
        invalid("name")(world.engine.create_merchant(bad).map(drop));
        invalid("name")(world.engine.create_shopper(bad).map(drop));
        invalid("title")(
            world
                .engine
                .create_deal(
                    world.merchant,
                    flashsale_engine::NewDeal {
                        title: bad.into(),
                        ..world.new_deal(1, 1, "1.00")
                    },
                )
                .map(drop),
        );
        invalid("reference")(
            world
                .engine
                .credit_wallet(ann, money("1.00"), bad)
                .map(drop),
        );
    }
    for bad in ["nul\0", "bell\u{7}", "esc\u{1b}[31m", "del\u{7f}"] {
        invalid("text")(world.engine.review(ann, order.id, [5, 5, 5], bad).map(drop));
    }
    assert!(sink.take().is_empty(), "a refusal emits nothing");
    // A review may span lines; names may hold any printable text.
    let text = "good phone\r\n\tfast delivery 价";
    let review = world.engine.review(ann, order.id, [5, 5, 5], text).unwrap();
    assert_eq!(review.text, text);
    world.engine.create_shopper("李 «Ann» 🙂").unwrap();
}

#[test]
fn a_hold_is_paid_in_time_while_its_deal_is_paused_and_a_late_payment_is_refused() {
    let world = World::new();
    let deal = world.deal(10, 1, "1.00");
    let (ann, bob) = (world.shopper("10.00"), world.shopper("10.00"));
    let on_time = world.engine.hold(ann, deal, 1, "k").unwrap();
    let late = world.engine.hold(bob, deal, 1, "k").unwrap();
    let pause = |paused| DealChange {
        paused: Some(paused),
        ..DealChange::default()
    };
    world
        .engine
        .update_deal(world.merchant, deal, pause(true))
        .unwrap();
    // New sales are refused while paused...
    assert_unchanged(
        &world,
        ann,
        deal,
        || world.engine.buy(ann, deal, 1, "b").unwrap_err(),
        EngineError::DealPaused,
    );
    // ...a hold given before is paid in its time...
    let order = world.engine.pay_hold(ann, on_time.id).unwrap();
    assert!(!order.late);
    assert_eq!(world.engine.deal(deal).unwrap().counts.sold, 1);
    // ...and one whose time ran out during the pause is not paid late.
    world.clock.advance_seconds(61);
    assert_eq!(world.engine.expire_holds(), 1);
    assert_unchanged(
        &world,
        bob,
        deal,
        || world.engine.pay_hold(bob, late.id).unwrap_err(),
        EngineError::HoldExpired { hold: late.id },
    );
    world
        .engine
        .update_deal(world.merchant, deal, pause(false))
        .unwrap();
    assert!(world.engine.pay_hold(bob, late.id).unwrap().late);
}
