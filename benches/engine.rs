//! Engine benchmarks: the operations a burst is made of, on one core and on
//! one hot deal from two threads. Run with `cargo bench --bench engine`.
//!
//! Each measurement builds a fresh engine outside the timed section, sized
//! for the iterations criterion asks for, so no run buys from a shopper at
//! its limit or fills a bound.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flashsale_engine::{
    Clock, DealId, DiscardEvents, Engine, EngineConfig, ManualClock, Money, NewDeal, ShopperId,
    Timestamp,
};

/// Units each shopper may buy: the engine's per-user maximum.
const UNITS_PER_SHOPPER: u32 = 1_000;
const START: Timestamp = Timestamp(1_795_262_400_000);

struct Sale {
    engine: Engine,
    deal: DealId,
    shoppers: Vec<ShopperId>,
    keys: Vec<String>,
}

/// A live deal with `stock` units and enough funded shoppers for `buys`.
fn sale(stock: u64, buys: u64) -> Sale {
    let config = EngineConfig {
        orders_max: usize::MAX / 2,
        holds_max: usize::MAX / 2,
        idempotency_records_max: usize::MAX / 2,
        ..EngineConfig::default()
    };
    let clock = Arc::new(ManualClock::new(START));
    let engine = Engine::new(config, clock as Arc<dyn Clock>, Arc::new(DiscardEvents));
    let merchant = engine.create_merchant("bench").expect("merchant").id;
    let new = NewDeal {
        title: "phone".into(),
        price: Money::from_fen(99_900).expect("price"),
        stock,
        per_user_limit: Some(UNITS_PER_SHOPPER),
        starts_at: START,
        ends_at: START.plus_seconds(3600),
        requires_registration: false,
        hold_seconds: Some(600),
        allocation: flashsale_engine::Allocation::FirstCome,
    };
    let deal = engine.create_deal(merchant, new).expect("deal").id;
    let shopper_count = buys.div_ceil(u64::from(UNITS_PER_SHOPPER)).max(1);
    let credit = Money::from_fen(99_900 * i64::from(UNITS_PER_SHOPPER)).expect("credit");
    let mut shoppers = Vec::new();
    let mut left = shopper_count;
    while left > 0 {
        let count = left.min(10_000) as u32;
        shoppers.extend(engine.create_shoppers(count, credit).expect("shoppers"));
        left -= u64::from(count);
    }
    let keys = (0..UNITS_PER_SHOPPER).map(|n| format!("tap-{n}")).collect();
    Sale {
        engine,
        deal,
        shoppers,
        keys,
    }
}

impl Sale {
    /// The `n`th buy: shopper `n / 1000`, its key `n % 1000`.
    fn buy(&self, n: u64) -> bool {
        let shopper = self.shoppers[(n / u64::from(UNITS_PER_SHOPPER)) as usize];
        let key = &self.keys[(n % u64::from(UNITS_PER_SHOPPER)) as usize];
        self.engine.buy(shopper, self.deal, 1, key).is_ok()
    }
}

fn settled_buy(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("buy_settles_1_thread", |b| {
        b.iter_custom(|iterations| {
            let sale = sale(iterations, iterations);
            let start = Instant::now();
            for n in 0..iterations {
                assert!(sale.buy(n));
            }
            start.elapsed()
        })
    });
    group.bench_function("sold_out_rejection_1_thread", |b| {
        let sale = sale(1, 1);
        assert!(sale.buy(0));
        let mut n = 1u64;
        b.iter(|| {
            n += 1;
            black_box(sale.engine.buy(ShopperId(n & 0xFFFF), sale.deal, 1, "tap")).is_err()
        })
    });
    group.bench_function("hold_then_pay_1_thread", |b| {
        b.iter_custom(|iterations| {
            let sale = sale(iterations, iterations);
            let start = Instant::now();
            for n in 0..iterations {
                let shopper = sale.shoppers[(n / u64::from(UNITS_PER_SHOPPER)) as usize];
                let key = &sale.keys[(n % u64::from(UNITS_PER_SHOPPER)) as usize];
                let hold = sale.engine.hold(shopper, sale.deal, 1, key).expect("hold");
                sale.engine.pay_hold(shopper, hold.id).expect("pay");
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// One hot deal, its buys split over `threads` threads of disjoint shoppers.
fn hot_deal(threads: u64, iterations: u64) -> Duration {
    let sale = Arc::new(sale(iterations, iterations));
    let barrier = Arc::new(Barrier::new(threads as usize + 1));
    let per_thread = iterations.div_ceil(threads);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (sale, barrier) = (sale.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                for n in t * per_thread..((t + 1) * per_thread).min(iterations) {
                    assert!(sale.buy(n));
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for worker in workers {
        worker.join().expect("worker");
    }
    start.elapsed()
}

fn hot_deal_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_deal");
    group.throughput(Throughput::Elements(1));
    for threads in [1, 2] {
        group.bench_function(format!("buy_settles_{threads}_threads"), |b| {
            b.iter_custom(|iterations| hot_deal(threads, iterations))
        });
    }
    group.finish();
}

/// The raffle figure to hold: a raffle of 1,000,000 registrants for 100,000
/// units must draw in under 2 s. Timed: `run_draws` until it has nothing
/// left to do: closing the list, one HMAC per registrant, the sort, and
/// 100,000 winners' holds (in steps of `DRAW_OFFERS_PER_STEP`).
const RAFFLE_REGISTRANTS: u64 = 1_000_000;
const RAFFLE_UNITS: u64 = 100_000;

/// An engine with a raffle of `units` and `registrants` funded
/// registrants, its `starts_at` just passed; the draw not run.
fn raffle(registrants: u64, units: u64) -> Engine {
    let clock = Arc::new(ManualClock::new(START));
    let engine = Engine::new(
        EngineConfig::default(),
        clock.clone() as Arc<dyn Clock>,
        Arc::new(DiscardEvents),
    );
    let merchant = engine.create_merchant("bench").expect("merchant").id;
    let new = NewDeal {
        title: "phone".into(),
        price: Money::from_fen(99_900).expect("price"),
        stock: units,
        per_user_limit: Some(1),
        starts_at: START.plus_seconds(60),
        ends_at: START.plus_seconds(3600),
        requires_registration: true,
        hold_seconds: Some(600),
        allocation: flashsale_engine::Allocation::Raffle(flashsale_engine::DrawSeed([7; 32])),
    };
    let deal = engine.create_deal(merchant, new).expect("deal").id;
    let credit = Money::from_fen(99_900).expect("credit");
    let mut left = registrants;
    while left > 0 {
        let count = left.min(10_000) as u32;
        for shopper in engine.create_shoppers(count, credit).expect("shoppers") {
            engine.register(shopper, deal).expect("register");
        }
        left -= u64::from(count);
    }
    clock.advance_seconds(60);
    engine
}

fn draw(c: &mut Criterion) {
    let mut group = c.benchmark_group("raffle");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("draw_1m_registrants_100k_units", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let engine = raffle(RAFFLE_REGISTRANTS, RAFFLE_UNITS);
                let start = Instant::now();
                while engine.run_draws() > 0 {}
                total += start.elapsed();
                let counts = engine.stock(DealId(1)).expect("the raffle");
                assert_eq!(counts.held, RAFFLE_UNITS, "every unit offered");
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, settled_buy, hot_deal_threads, draw);
criterion_main!(benches);
