//! Raffle deals: the draw, the waitlist and replay, through the
//! engine's public API; and a property test against a small reference model
//! that ranks with the `hmac` crate directly.

mod support;

use std::sync::Arc;

use flashsale_engine::{
    Allocation, Clock, DealId, DrawSeed, DrawStanding, Engine, EngineConfig, EngineError, Entity,
    Event, HoldStatus, Money, RecordEvents, ShopperId, registrants_hash,
};
use hmac::{Hmac, KeyInit, Mac};
use proptest::prelude::*;
use sha2::Sha256;
use support::{World, money};

const SEED: DrawSeed = DrawSeed([42; 32]);

/// The rule, written out independently of the engine: HMAC-SHA256 keyed by
/// the seed over the id's text.
fn reference_rank(seed: &DrawSeed, shopper: ShopperId) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(&seed.0).expect("any key length");
    mac.update(shopper.to_string().as_bytes());
    mac.finalize().into_bytes().into()
}

fn reference_ranking(seed: &DrawSeed, registrants: &[ShopperId]) -> Vec<ShopperId> {
    let mut ranked: Vec<([u8; 32], ShopperId)> = registrants
        .iter()
        .map(|&shopper| (reference_rank(seed, shopper), shopper))
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, shopper)| shopper).collect()
}

/// A raffle starting in a minute, open for an hour after.
fn raffle(world: &World, stock: u64, limit: u32, price: &str, seed: DrawSeed) -> DealId {
    let mut new = world.new_deal(stock, limit, price);
    new.starts_at = world.clock.now().plus_seconds(60);
    new.ends_at = new.starts_at.plus_seconds(3600);
    new.requires_registration = true;
    new.allocation = Allocation::Raffle(seed);
    world.engine.create_deal(world.merchant, new).unwrap().id
}

fn registrants(world: &World, deal: DealId, count: usize, credit: &str) -> Vec<ShopperId> {
    (0..count)
        .map(|_| {
            let shopper = world.shopper(credit);
            assert!(world.engine.register(shopper, deal).unwrap());
            shopper
        })
        .collect()
}

/// Runs the draw to the end, as the gateway's task does.
fn draw(world: &World) {
    while world.engine.run_draws() > 0 {}
}

fn hold_of(world: &World, deal: DealId, shopper: ShopperId) -> Option<flashsale_engine::Hold> {
    match world.engine.draw_standing(shopper, deal).unwrap() {
        DrawStanding::Won { hold, .. } => Some(hold),
        _ => None,
    }
}

#[test]
fn a_raffle_needs_registration_and_refuses_buys_and_holds() {
    let world = World::new();
    let mut new = world.new_deal(5, 1, "10.00");
    new.allocation = Allocation::Raffle(SEED);
    new.requires_registration = false;
    assert_eq!(
        world.engine.create_deal(world.merchant, new).unwrap_err(),
        EngineError::Invalid {
            field: "requires_registration",
            reason: "must be true for a raffle (allocation: raffle)"
        }
    );
    let deal = raffle(&world, 5, 1, "10.00", SEED);
    let ann = world.shopper("100.00");
    world.engine.register(ann, deal).unwrap();
    world.clock.advance_seconds(61);
    for refusal in [
        world.engine.buy(ann, deal, 1, "k").unwrap_err(),
        world.engine.hold(ann, deal, 1, "k").unwrap_err(),
    ] {
        assert!(
            matches!(
                refusal,
                EngineError::Invalid {
                    field: "allocation",
                    ..
                }
            ),
            "{refusal:?}"
        );
    }
    assert_eq!(world.engine.stock(deal).unwrap().remaining, 5);
    let first_come = world.deal(5, 1, "10.00");
    assert_eq!(
        world.engine.draw_standing(ann, first_come).unwrap_err(),
        EngineError::NotFound(Entity::Draw)
    );
}

#[test]
fn the_draw_offers_holds_in_rank_order_and_reveals_the_seed() {
    let world = World::new();
    let deal = raffle(&world, 3, 1, "10.00", SEED);
    let shoppers = registrants(&world, deal, 10, "100.00");
    let view = world.engine.deal(deal).unwrap();
    let shown = view.raffle.unwrap();
    assert_eq!((shown.commitment, shown.seed), (SEED.commitment(), None));
    assert_eq!(
        world.engine.draw_standing(shoppers[0], deal).unwrap(),
        DrawStanding::Pending
    );
    assert_eq!(
        world.engine.draw_registrants(deal, 0, 100).unwrap_err(),
        EngineError::NotStarted
    );
    assert_eq!(
        world.engine.run_draws(),
        0,
        "nothing is due before starts_at"
    );

    world.clock.advance_seconds(60);
    draw(&world);
    assert_eq!(
        world.engine.deal(deal).unwrap().raffle.unwrap().seed,
        Some(SEED)
    );
    let ranking = reference_ranking(&SEED, &shoppers);
    for (place, &shopper) in ranking.iter().enumerate() {
        let standing = world.engine.draw_standing(shopper, deal).unwrap();
        match place {
            0..3 => {
                let DrawStanding::Won { hold, place: p, .. } = standing else {
                    panic!("place {place}: {standing:?}");
                };
                assert_eq!(
                    (hold.quantity, hold.status, p),
                    (1, HoldStatus::Active, place as u64)
                );
            }
            _ => assert_eq!(
                standing,
                DrawStanding::Waitlisted {
                    rank: reference_rank(&SEED, shopper),
                    place: place as u64,
                    position: place as u64 - 2,
                }
            ),
        }
    }
    let counts = world.engine.stock(deal).unwrap();
    assert_eq!((counts.remaining, counts.held), (0, 3));
    assert_eq!(
        world
            .engine
            .register(world.shopper("1.00"), deal)
            .unwrap_err(),
        EngineError::RegistrationClosed
    );
    world.engine.check_invariants().unwrap();
}

#[test]
fn an_unpaid_win_passes_to_the_next_rank_and_a_short_wallet_is_passed_over() {
    let world = World::new();
    let deal = raffle(&world, 2, 2, "10.00", SEED);
    let shoppers = registrants(&world, deal, 6, "100.00");
    let ranking = reference_ranking(&SEED, &shoppers);
    // The second rank cannot cover a hold of 2 × 10.00 once drained.
    let poor = ranking[1];
    let spend = world.deal(1, 1, "85.00");
    world.engine.buy(poor, spend, 1, "drain").unwrap();
    world.clock.advance_seconds(60);
    draw(&world);
    let first = hold_of(&world, deal, ranking[0]).expect("the first rank won");
    assert_eq!(first.quantity, 2, "min(per_user_limit, units left)");
    assert!(hold_of(&world, deal, ranking[1]).is_none());

    // The first rank lets its hold go: the units go to the next ranks at
    // once; the poor one is not offered again (it was already reached).
    world.engine.release_hold(ranking[0], first.id).unwrap();
    assert!(matches!(
        world.engine.draw_standing(ranking[1], deal).unwrap(),
        DrawStanding::PassedOver { place: 1, .. }
    ));
    let third = hold_of(&world, deal, ranking[2]).expect("the third rank got the units");
    assert_eq!(third.quantity, 2);

    // Expiry passes them on too, in the same call.
    world.clock.advance_seconds(61);
    assert_eq!(world.engine.expire_holds(), 1);
    let fourth = hold_of(&world, deal, ranking[3]).expect("the fourth rank got the units");
    world.engine.pay_hold(ranking[3], fourth.id).unwrap();
    let counts = world.engine.stock(deal).unwrap();
    assert_eq!((counts.remaining, counts.held, counts.sold), (0, 0, 2));
    for &late in &ranking[4..] {
        assert!(matches!(
            world.engine.draw_standing(late, deal).unwrap(),
            DrawStanding::NotDrawn { .. }
        ));
    }
    // Paying someone else's win is the hold-ownership rule.
    assert_eq!(
        world.engine.pay_hold(ranking[4], fourth.id).unwrap_err(),
        EngineError::Forbidden(Entity::Hold)
    );
    world.engine.check_invariants().unwrap();
}

#[test]
fn replay_rebuilds_a_draw_halfway_and_finishes_it_the_same() {
    let events = Arc::new(RecordEvents::default());
    let world = World::with_sink(events.clone());
    let deal = raffle(&world, 1_500, 1, "1.00", SEED);
    let shoppers = registrants(&world, deal, 2_100, "5.00");
    world.clock.advance_seconds(60);
    // One step: the ranking and the first batch of holds only.
    assert!(world.engine.run_draws() > 0);
    let halfway = events.take();

    let replica = Engine::new(
        EngineConfig::default(),
        world.clock.clone() as Arc<dyn Clock>,
        Arc::new(flashsale_engine::DiscardEvents),
    );
    for event in &halfway {
        replica.apply(event).unwrap();
    }
    // A snapshot of the replica restores the same draw.
    let restored = Engine::new(
        EngineConfig::default(),
        world.clock.clone() as Arc<dyn Clock>,
        Arc::new(flashsale_engine::DiscardEvents),
    );
    restored.restore(replica.snapshot()).unwrap();
    for engine in [&world.engine, &replica, &restored] {
        while engine.run_draws() > 0 {}
        engine.check_invariants().unwrap();
    }
    let record = |engine: &Engine| engine.draw_record(deal, 0, 10_000).unwrap();
    assert_eq!(record(&world.engine).result.unwrap().offers.len(), 1_500);
    assert_eq!(record(&world.engine), record(&replica));
    assert_eq!(record(&world.engine), record(&restored));
    for &shopper in shoppers.iter().step_by(97) {
        assert_eq!(
            world.engine.draw_standing(shopper, deal).unwrap(),
            restored.draw_standing(shopper, deal).unwrap()
        );
    }
}

/// `DrawRun` carries what the draw revealed (the order sink writes it to
/// Postgres from that event alone); replay refuses one that reveals
/// something else, and a format-2 `DrawRunFormat2` without it replays the
/// same draw.
#[test]
fn draw_run_carries_the_reveal_and_replay_checks_it() {
    let events = Arc::new(RecordEvents::default());
    let world = World::with_sink(events.clone());
    let deal = raffle(&world, 3, 1, "1.00", SEED);
    let shoppers = registrants(&world, deal, 7, "5.00");
    world.clock.advance_seconds(60);
    draw(&world);
    let recorded = events.take();
    let result = world
        .engine
        .draw_record(deal, 0, 100)
        .unwrap()
        .result
        .unwrap();
    let runs: Vec<&Event> = recorded
        .iter()
        .filter(|event| matches!(event, Event::DrawRun { .. }))
        .collect();
    assert_eq!(runs.len(), 1);
    let Event::DrawRun {
        deal: drawn,
        seed,
        registrants,
        registrants_hash,
        ..
    } = runs[0].clone()
    else {
        unreachable!("filtered above")
    };
    assert_eq!(drawn, deal);
    assert_eq!(seed, SEED);
    assert_eq!(registrants, shoppers.len() as u64);
    assert_eq!(registrants_hash, result.registrants_hash);

    let replay = |events: &[Event]| {
        let replica = Engine::new(
            EngineConfig::default(),
            world.clock.clone() as Arc<dyn Clock>,
            Arc::new(flashsale_engine::DiscardEvents),
        );
        for event in events {
            replica.apply(event)?;
        }
        Ok::<_, EngineError>(replica)
    };
    let with = |change: &dyn Fn(Event) -> Event| -> Vec<Event> {
        recorded.iter().cloned().map(change).collect()
    };
    // As journalled: the same record.
    let replica = replay(&recorded).unwrap();
    assert_eq!(
        replica.draw_record(deal, 0, 100).unwrap(),
        world.engine.draw_record(deal, 0, 100).unwrap()
    );
    // A format-2 journal: the same record.
    let format2 = with(&|event| match event {
        Event::DrawRun { deal, at, .. } => Event::DrawRunFormat2 { deal, at },
        other => other,
    });
    let replica = replay(&format2).unwrap();
    assert_eq!(
        replica.draw_record(deal, 0, 100).unwrap(),
        world.engine.draw_record(deal, 0, 100).unwrap()
    );
    // Another count, seed or hash than the ranking's: refused.
    type Tamper = fn(&mut DrawSeed, &mut u64, &mut [u8; 32]);
    let tampers: [Tamper; 3] = [
        |_, count, _| *count += 1,
        |seed, _, _| *seed = DrawSeed([43; 32]),
        |_, _, hash| *hash = [0; 32],
    ];
    for tamper in tampers {
        let tampered = with(&|event| match event {
            Event::DrawRun {
                deal,
                at,
                mut seed,
                mut registrants,
                mut registrants_hash,
            } => {
                tamper(&mut seed, &mut registrants, &mut registrants_hash);
                Event::DrawRun {
                    deal,
                    at,
                    seed,
                    registrants,
                    registrants_hash,
                }
            }
            other => other,
        });
        assert!(matches!(
            replay(&tampered),
            Err(EngineError::Inconsistent { .. })
        ));
    }
}

// ----- property: the engine against a reference model ------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Release the active hold of the `n`-th offered place (mod count).
    Release(usize),
    /// Pay the active hold of the `n`-th offered place (mod count).
    Pay(usize),
    /// Move time on by `seconds` and run the expiry sweep.
    Wait(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..64).prop_map(Op::Release),
        (0usize..64).prop_map(Op::Pay),
        (1u32..40).prop_map(Op::Wait),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    Active { units: u32, expires: i64 },
    Paid,
    Gone,
    PassedOver,
}

/// The rule as plainly as it can be said: walk the ranking while units are
/// left; each place gets min(limit, left) if its wallet covers it.
struct Model {
    ranking: Vec<ShopperId>,
    available: Vec<i64>,
    price: i64,
    limit: u32,
    left: u64,
    places: Vec<Place>,
    hold_millis: i64,
}

impl Model {
    fn walk(&mut self, now: i64) {
        while self.left > 0 && self.places.len() < self.ranking.len() {
            let place = self.places.len();
            let units = (self.limit as u64).min(self.left) as u32;
            let amount = self.price * i64::from(units);
            if self.available[place] < amount {
                self.places.push(Place::PassedOver);
            } else {
                self.available[place] -= amount;
                self.left -= u64::from(units);
                self.places.push(Place::Active {
                    units,
                    expires: now + self.hold_millis,
                });
            }
        }
    }

    fn give_back(&mut self, place: usize) {
        if let Place::Active { units, .. } = self.places[place] {
            self.left += u64::from(units);
            self.available[place] += self.price * i64::from(units);
            self.places[place] = Place::Gone;
        }
    }
}

fn nth_active(model: &Model, n: usize) -> Option<usize> {
    let active: Vec<usize> = (0..model.places.len())
        .filter(|&place| matches!(model.places[place], Place::Active { .. }))
        .collect();
    (!active.is_empty()).then(|| active[n % active.len()])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The published offers are the ranking recomputed from the revealed
    /// seed and the published registrants, in order; every promotion
    /// follows it; holds, pass-overs and stock match the model after every
    /// step; nobody outside the registrants gets anything.
    #[test]
    fn draws_and_promotions_follow_the_published_ranking(
        seed in any::<[u8; 32]>(),
        registrant_count in 1usize..24,
        stock in 1u64..12,
        limit in 1u32..4,
        credits in proptest::collection::vec(0i64..4, 24),
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        let seed = DrawSeed(seed);
        let world = World::new();
        let deal = raffle(&world, stock, limit, "10.00", seed);
        let shoppers: Vec<ShopperId> = (0..registrant_count)
            .map(|index| {
                let credit = format!("{}.00", credits[index] * 10);
                let shopper = world.shopper(&credit);
                world.engine.register(shopper, deal).unwrap();
                shopper
            })
            .collect();
        let outsider = world.shopper("100.00");
        let ranking = reference_ranking(&seed, &shoppers);
        let available = ranking
            .iter()
            .map(|&shopper| world.engine.wallet(shopper).unwrap().available.fen())
            .collect();
        world.clock.advance_seconds(60);
        draw(&world);

        let mut model = Model {
            available,
            ranking: ranking.clone(),
            price: 1_000,
            limit,
            left: stock,
            places: Vec::new(),
            hold_millis: 60_000,
        };
        model.walk(world.clock.now().millis());

        // Reproducible from the public record alone.
        let record = world.engine.draw_record(deal, 0, 1_000).unwrap();
        let result = record.result.clone().unwrap();
        prop_assert_eq!(record.commitment, seed.commitment());
        prop_assert_eq!(result.seed, seed);
        let (listed, next) = world.engine.draw_registrants(deal, 0, 1_000).unwrap();
        prop_assert!(next.is_none());
        let mut texts: Vec<String> = shoppers.iter().map(ToString::to_string).collect();
        texts.sort();
        prop_assert_eq!(listed.iter().map(ToString::to_string).collect::<Vec<_>>(), texts.clone());
        prop_assert_eq!(result.registrants_hash, registrants_hash(texts.iter().map(|t| t.as_bytes())));

        for step in 0..=ops.len() {
            let now = world.clock.now().millis();
            // Compare every place with the model.
            let record = world.engine.draw_record(deal, 0, 1_000).unwrap().result.unwrap();
            prop_assert_eq!(record.offers.len(), model.places.len(), "step {}", step);
            for (place, offered) in record.offers.iter().enumerate() {
                prop_assert_eq!(offered.rank, reference_rank(&seed, ranking[place]));
                prop_assert_eq!(offered.passed_over, model.places[place] == Place::PassedOver);
                let standing = world.engine.draw_standing(ranking[place], deal).unwrap();
                match (model.places[place], standing) {
                    (Place::PassedOver, DrawStanding::PassedOver { .. }) => {}
                    (Place::Active { units, .. }, DrawStanding::Won { hold, .. }) => {
                        prop_assert_eq!((hold.quantity, hold.status), (units, HoldStatus::Active));
                    }
                    (Place::Paid, DrawStanding::Won { hold, .. }) => {
                        prop_assert!(matches!(hold.status, HoldStatus::Settled(_)));
                    }
                    (Place::Gone, DrawStanding::Won { hold, .. }) => {
                        prop_assert!(matches!(hold.status, HoldStatus::Released | HoldStatus::Expired));
                    }
                    (expected, got) => prop_assert!(false, "place {}: {:?} vs {:?}", place, expected, got),
                }
            }
            for (place, &waiting) in ranking.iter().enumerate().skip(model.places.len()) {
                let standing = world.engine.draw_standing(waiting, deal).unwrap();
                let waiting = matches!(standing, DrawStanding::Waitlisted { position, .. }
                    if position == (place - model.places.len() + 1) as u64);
                prop_assert!(waiting || matches!(standing, DrawStanding::NotDrawn { .. }), "{:?}", standing);
            }
            prop_assert_eq!(
                world.engine.draw_standing(outsider, deal).unwrap(),
                DrawStanding::NotRegistered
            );
            prop_assert_eq!(world.engine.wallet(outsider).unwrap().available, money("100.00"));
            let counts = world.engine.stock(deal).unwrap();
            prop_assert_eq!(counts.remaining, model.left);
            world.engine.check_invariants().unwrap();

            let Some(op) = ops.get(step) else { break };
            match op.clone() {
                Op::Release(n) => {
                    if let Some(place) = nth_active(&model, n) {
                        let hold = hold_of(&world, deal, ranking[place]).unwrap();
                        world.engine.release_hold(ranking[place], hold.id).unwrap();
                        model.give_back(place);
                        model.walk(now);
                    }
                }
                Op::Pay(n) => {
                    if let Some(place) = nth_active(&model, n) {
                        let hold = hold_of(&world, deal, ranking[place]).unwrap();
                        world.engine.pay_hold(ranking[place], hold.id).unwrap();
                        model.places[place] = Place::Paid;
                    }
                }
                Op::Wait(seconds) => {
                    world.clock.advance_seconds(i64::from(seconds));
                    world.engine.expire_holds();
                    let now = world.clock.now().millis();
                    for place in 0..model.places.len() {
                        if matches!(model.places[place], Place::Active { expires, .. } if expires <= now) {
                            model.give_back(place);
                        }
                    }
                    model.walk(now);
                }
            }
        }
        prop_assert_eq!(world.engine.wallet(outsider).unwrap().spent, Money::ZERO);
    }
}
