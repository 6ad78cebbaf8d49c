//! Real threads hammering one hot deal: buys, holds, payments and releases
//! from many shoppers at once, plus racing retries of one idempotency key.
//! Afterwards the counters equal what the threads were told, and every
//! conservation rule holds.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use flashsale_engine::{EngineError, OrderCursor};
use support::{World, money};

const THREADS: usize = 8;
const SHOPPERS_PER_THREAD: usize = 250;

#[test]
fn threads_on_one_hot_deal_never_oversell_and_account_for_every_unit() {
    let world = Arc::new(World::new());
    let stock = 600;
    let deal = world.deal(stock, 2, "10.00");
    let shoppers: Vec<_> = (0..THREADS)
        .map(|_| {
            world
                .engine
                .create_shoppers(SHOPPERS_PER_THREAD as u32, money("30.00"))
                .unwrap()
        })
        .collect();
    let barrier = Arc::new(Barrier::new(THREADS));
    let sold_seen = Arc::new(AtomicU64::new(0));
    let held_seen = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = shoppers
        .into_iter()
        .enumerate()
        .map(|(thread, mine)| {
            let (world, barrier, sold_seen, held_seen) = (
                world.clone(),
                barrier.clone(),
                sold_seen.clone(),
                held_seen.clone(),
            );
            thread::spawn(move || {
                barrier.wait();
                for (n, shopper) in mine.into_iter().enumerate() {
                    match (thread + n) % 4 {
                        // One-tap buy, retried once with the same key.
                        0 | 1 => {
                            let first = world.engine.buy(shopper, deal, 1, "tap");
                            if let Ok(order) = &first {
                                sold_seen.fetch_add(1, Ordering::Relaxed);
                                assert_eq!(
                                    world.engine.buy(shopper, deal, 1, "tap").as_ref(),
                                    Ok(order)
                                );
                            }
                        }
                        // Hold then pay.
                        2 => {
                            if let Ok(hold) = world.engine.hold(shopper, deal, 1, "hold") {
                                let order = world.engine.pay_hold(shopper, hold.id).unwrap();
                                assert_eq!(order.hold, Some(hold.id));
                                sold_seen.fetch_add(1, Ordering::Relaxed);
                                assert!(matches!(
                                    world.engine.pay_hold(shopper, hold.id),
                                    Err(EngineError::HoldSettled { .. })
                                ));
                            }
                        }
                        // Hold, release, then buy what was released, or keep a hold.
                        _ => {
                            if let Ok(hold) = world.engine.hold(shopper, deal, 1, "hold") {
                                if n % 8 < 4 {
                                    world.engine.release_hold(shopper, hold.id).unwrap();
                                    if world.engine.buy(shopper, deal, 2, "after").is_ok() {
                                        sold_seen.fetch_add(2, Ordering::Relaxed);
                                    }
                                } else {
                                    held_seen.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a hammering thread panicked");
    }
    let counts = world.engine.stock(deal).unwrap();
    assert_eq!(
        counts.sold,
        sold_seen.load(Ordering::Relaxed),
        "sold equals the successes the threads saw"
    );
    assert_eq!(
        counts.held,
        held_seen.load(Ordering::Relaxed),
        "held equals the holds kept"
    );
    assert_eq!(counts.remaining + counts.held + counts.sold, stock);
    assert_eq!(
        counts.remaining, 0,
        "2,000 shoppers asking for 600 units leave none"
    );
    world.engine.check_invariants().unwrap();

    let mut listed = 0;
    let mut amount = 0;
    let mut cursor = OrderCursor::default();
    loop {
        let page = world.engine.orders_of_deal(deal, cursor, 500);
        listed += page
            .orders
            .iter()
            .map(|o| u64::from(o.quantity))
            .sum::<u64>();
        amount += page.orders.iter().map(|o| o.amount.fen()).sum::<i64>();
        match page.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(listed, counts.sold);
    assert_eq!(
        amount,
        counts.sold as i64 * 1000,
        "every unit was paid at the deal's price"
    );
}

#[test]
fn racing_retries_of_one_key_make_one_order() {
    let world = Arc::new(World::new());
    let deal = world.deal(1_000, 5, "1.00");
    let shoppers = world.engine.create_shoppers(64, money("100.00")).unwrap();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (world, barrier, shoppers) = (world.clone(), barrier.clone(), shoppers.clone());
            thread::spawn(move || {
                barrier.wait();
                shoppers
                    .iter()
                    .map(|s| world.engine.buy(*s, deal, 1, "same-key").unwrap().id)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<_>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for other in &results[1..] {
        assert_eq!(
            other, &results[0],
            "every thread got the same order per shopper"
        );
    }
    assert_eq!(world.engine.stock(deal).unwrap().sold, 64);
    for shopper in shoppers {
        assert_eq!(world.engine.wallet(shopper).unwrap().spent, money("1.00"));
    }
    world.engine.check_invariants().unwrap();
}

#[test]
fn expiry_sweeps_racing_payments_settle_or_release_each_hold_once() {
    let world = Arc::new(World::new());
    let deal = world.deal(400, 1, "5.00");
    let shoppers = world.engine.create_shoppers(400, money("5.00")).unwrap();
    let holds: Vec<_> = shoppers
        .iter()
        .map(|s| world.engine.hold(*s, deal, 1, "h").unwrap())
        .collect();
    world.clock.advance_seconds(60);
    let sweeper = {
        let world = world.clone();
        thread::spawn(move || while world.engine.expire_holds() > 0 {})
    };
    let payers: Vec<_> = holds
        .chunks(100)
        .map(|chunk| {
            let (world, chunk) = (world.clone(), chunk.to_vec());
            thread::spawn(move || {
                chunk
                    .iter()
                    .filter(|h| world.engine.pay_hold(h.shopper, h.id).is_ok())
                    .count() as u64
            })
        })
        .collect();
    sweeper.join().unwrap();
    let paid: u64 = payers.into_iter().map(|p| p.join().unwrap()).sum();
    let counts = world.engine.stock(deal).unwrap();
    assert_eq!(
        paid, 400,
        "late payments with stock and funds are all honoured"
    );
    assert_eq!(
        (counts.sold, counts.held, counts.remaining),
        (paid, 0, 400 - paid)
    );
    world.engine.check_invariants().unwrap();
}
