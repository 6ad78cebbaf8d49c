//! Model-based property test: random operations by several shoppers on a
//! few deals, with clock advances and expiry sweeps, run against the engine
//! and against a plain single-threaded reference model written straight from
//! docs/api.md and ARCHITECTURE.md. Both must give the same outcome for
//! every step, the conservation invariants must hold after every step, and
//! replaying the engine's events (or restoring its snapshot) must rebuild
//! the same state.

mod reference;
mod support;

use std::sync::Arc;

use flashsale_engine::{
    Clock, DealChange, DealId, DiscardEvents, Engine, EngineConfig, EngineError, HoldId,
    HoldStatus, Money, NewDeal, OrderCursor, OrderId, RecordEvents, ShopperId, Wallet,
};
use proptest::prelude::*;
use reference::{MStatus, MWallet, Made, Model, Outcome, Refusal, Request};
use support::{NOON, World};

const SHOPPERS: usize = 4;
const KEYS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Buy {
        shopper: usize,
        deal: usize,
        quantity: u32,
        key: usize,
    },
    Hold {
        shopper: usize,
        deal: usize,
        quantity: u32,
        key: usize,
    },
    Pay {
        shopper: usize,
        hold: usize,
    },
    Release {
        shopper: usize,
        hold: usize,
    },
    Credit {
        shopper: usize,
        cents: i64,
        reference: usize,
    },
    Register {
        shopper: usize,
        deal: usize,
    },
    AddStock {
        deal: usize,
        quantity: u64,
    },
    Pause {
        deal: usize,
        paused: bool,
    },
    Advance {
        seconds: u32,
    },
    Sweep,
    Review {
        shopper: usize,
        order: usize,
        score: u8,
    },
    Share {
        shopper: usize,
        order: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let shopper = 0..SHOPPERS;
    let deal = 0..3usize;
    prop_oneof![
        6 => (shopper.clone(), deal.clone(), 0..4u32, 0..KEYS).prop_map(|(shopper, deal, quantity, key)| Op::Buy { shopper, deal, quantity, key }),
        4 => (shopper.clone(), deal.clone(), 0..4u32, 0..KEYS).prop_map(|(shopper, deal, quantity, key)| Op::Hold { shopper, deal, quantity, key }),
        3 => (shopper.clone(), 0..8usize).prop_map(|(shopper, hold)| Op::Pay { shopper, hold }),
        2 => (shopper.clone(), 0..8usize).prop_map(|(shopper, hold)| Op::Release { shopper, hold }),
        2 => (shopper.clone(), 0..3000i64, 0..3usize).prop_map(|(shopper, cents, reference)| Op::Credit { shopper, cents, reference }),
        1 => (shopper, deal.clone()).prop_map(|(shopper, deal)| Op::Register { shopper, deal }),
        1 => (deal.clone(), 1..3u64).prop_map(|(deal, quantity)| Op::AddStock { deal, quantity }),
        1 => (deal, any::<bool>()).prop_map(|(deal, paused)| Op::Pause { deal, paused }),
        2 => (1..40u32).prop_map(|seconds| Op::Advance { seconds }),
        1 => Just(Op::Sweep),
        1 => (0..SHOPPERS, 0..8usize, 0..7u8).prop_map(|(shopper, order, score)| Op::Review { shopper, order, score }),
        1 => (0..SHOPPERS, 0..8usize).prop_map(|(shopper, order)| Op::Share { shopper, order }),
    ]
}

// ----- running both -------------------------------------------------------------

struct Run {
    world: World,
    sink: Arc<RecordEvents>,
    events: Vec<flashsale_engine::Event>,
    model: Model,
    deals: Vec<DealId>,
    shoppers: Vec<ShopperId>,
    holds: Vec<HoldId>,
    orders: Vec<OrderId>,
}

fn setup() -> Run {
    let sink = Arc::new(RecordEvents::default());
    let world = World::with(
        EngineConfig {
            shards: 4,
            ..EngineConfig::default()
        },
        sink.clone(),
    );
    let now = NOON.millis();
    let specs = [
        // price, stock, limit, starts in, ends in, registration, hold
        (1000, 5, 2, 0, 3_600_000, false, 30),
        (250, 3, 1, 30_000, 3_600_000, true, 60),
        (1, 20, 3, 0, 120_000, false, 10),
    ];
    let mut deals = Vec::new();
    let mut model = Model::new(now);
    let merchant = model.add_merchant();
    for (price, stock, limit, starts_in, ends_in, registration, hold_seconds) in specs {
        let new = NewDeal {
            title: "deal".into(),
            price: Money::from_fen(price).unwrap(),
            stock,
            per_user_limit: Some(limit),
            starts_at: NOON.plus_millis(starts_in),
            ends_at: NOON.plus_millis(ends_in),
            requires_registration: registration,
            hold_seconds: Some(hold_seconds),
            allocation: flashsale_engine::Allocation::FirstCome,
        };
        deals.push(world.engine.create_deal(world.merchant, new).unwrap().id);
        model.add_deal(
            merchant,
            price,
            stock,
            limit,
            now + starts_in,
            now + ends_in,
            registration,
            hold_seconds,
        );
    }
    let shoppers = (0..SHOPPERS)
        .map(|_| {
            model.add_shopper();
            world.engine.create_shopper("s").unwrap().id
        })
        .collect();
    Run {
        world,
        sink,
        events: Vec::new(),
        model,
        deals,
        shoppers,
        holds: Vec::new(),
        orders: Vec::new(),
    }
}

fn model_wallet(wallet: Wallet) -> MWallet {
    MWallet {
        credited: wallet.credited.fen(),
        available: wallet.available.fen(),
        held: wallet.held.fen(),
        spent: wallet.spent.fen(),
    }
}

impl Run {
    fn refusal(&self, refusal: Refusal) -> EngineError {
        match refusal {
            Refusal::Plain(error) => error,
            Refusal::HoldExpired(hold) => EngineError::HoldExpired {
                hold: self.holds[hold],
            },
            Refusal::HoldReleased(hold) => EngineError::HoldReleased {
                hold: self.holds[hold],
            },
            Refusal::HoldSettled(hold, order) => EngineError::HoldSettled {
                hold: self.holds[hold],
                order: self.orders[order],
            },
        }
    }

    fn check_order(
        &mut self,
        got: Result<flashsale_engine::Order, EngineError>,
        expected: Outcome,
    ) {
        match expected {
            Outcome::NewOrder(order) => {
                let got = got.expect("the model settled an order");
                assert_eq!(
                    (
                        got.shopper,
                        got.deal,
                        got.quantity,
                        got.amount.fen(),
                        got.late
                    ),
                    (
                        self.shoppers[order.shopper],
                        self.deals[order.deal],
                        order.quantity,
                        order.amount,
                        order.late
                    )
                );
                self.orders.push(got.id);
            }
            Outcome::OldOrder(order) => assert_eq!(got.map(|o| o.id), Ok(self.orders[order])),
            Outcome::Refused(refusal) => assert_eq!(got.map(|o| o.id), Err(self.refusal(refusal))),
            other => panic!("model said {other:?}"),
        }
    }

    fn check_hold(&mut self, got: Result<flashsale_engine::Hold, EngineError>, expected: Outcome) {
        match expected {
            Outcome::NewHold(hold) => {
                let got = got.expect("the model created a hold");
                let h = &self.model.holds[hold];
                assert_eq!(
                    (
                        got.quantity,
                        got.amount.fen(),
                        got.expires_at.millis(),
                        got.status
                    ),
                    (h.quantity, h.amount, h.expires_at, HoldStatus::Active)
                );
                self.holds.push(got.id);
            }
            Outcome::OldHold(hold) | Outcome::HoldNow(hold) => {
                let got = got.expect("the model returned a hold");
                assert_eq!(got.id, self.holds[hold]);
                let status = match self.model.holds[hold].status {
                    MStatus::Active => HoldStatus::Active,
                    MStatus::Settled(order) => HoldStatus::Settled(self.orders[order]),
                    MStatus::Released => HoldStatus::Released,
                    MStatus::Expired => HoldStatus::Expired,
                };
                assert_eq!(got.status, status);
            }
            Outcome::Refused(refusal) => assert_eq!(got.map(|h| h.id), Err(self.refusal(refusal))),
            other => panic!("model said {other:?}"),
        }
    }

    fn step(&mut self, op: &Op) {
        self.run_op(op);
        self.model.check();
        self.events.extend(self.sink.take());
        self.compare(&self.world.engine);
    }

    fn run_op(&mut self, op: &Op) {
        let engine = &self.world.engine;
        match *op {
            Op::Buy {
                shopper,
                deal,
                quantity,
                key,
            } => {
                let got = engine.buy(
                    self.shoppers[shopper],
                    self.deals[deal],
                    quantity,
                    &format!("key-{key}"),
                );
                let expected = self.model.reserve(shopper, deal, quantity, key, false);
                self.check_order(got, expected);
            }
            Op::Hold {
                shopper,
                deal,
                quantity,
                key,
            } => {
                let got = engine.hold(
                    self.shoppers[shopper],
                    self.deals[deal],
                    quantity,
                    &format!("key-{key}"),
                );
                let expected = self.model.reserve(shopper, deal, quantity, key, true);
                self.check_hold(got, expected);
            }
            Op::Pay { shopper, hold } => {
                if hold >= self.holds.len() {
                    return;
                }
                let got = engine.pay_hold(self.shoppers[shopper], self.holds[hold]);
                let expected = self.model.pay(shopper, hold);
                self.check_order(got, expected);
            }
            Op::Release { shopper, hold } => {
                if hold >= self.holds.len() {
                    return;
                }
                let got = engine.release_hold(self.shoppers[shopper], self.holds[hold]);
                let expected = self.model.release_by(shopper, hold);
                self.check_hold(got, expected);
            }
            Op::Credit {
                shopper,
                cents,
                reference,
            } => {
                let got = engine.credit_wallet(
                    self.shoppers[shopper],
                    Money::from_fen(cents).unwrap(),
                    &format!("ref-{reference}"),
                );
                let expected = self.model.credit(shopper, cents, reference);
                let got = got
                    .map(model_wallet)
                    .map(Outcome::Wallet)
                    .unwrap_or_else(|e| Outcome::Refused(Refusal::Plain(e)));
                assert_eq!(got, expected);
            }
            Op::Register { shopper, deal } => {
                let got = engine.register(self.shoppers[shopper], self.deals[deal]);
                let expected = self.model.register(shopper, deal);
                assert_eq!(got, expected);
            }
            Op::AddStock { deal, quantity } => {
                let change = DealChange {
                    add_stock: Some(quantity),
                    ..DealChange::default()
                };
                engine
                    .update_deal(self.world.merchant, self.deals[deal], change)
                    .unwrap();
                self.model
                    .update_deal(0, deal, Some(quantity), None, None)
                    .unwrap();
            }
            Op::Pause { deal, paused } => {
                let change = DealChange {
                    paused: Some(paused),
                    ..DealChange::default()
                };
                engine
                    .update_deal(self.world.merchant, self.deals[deal], change)
                    .unwrap();
                self.model
                    .update_deal(0, deal, None, None, Some(paused))
                    .unwrap();
            }
            Op::Advance { seconds } => {
                self.world.clock.advance_seconds(i64::from(seconds));
                self.model.advance(i64::from(seconds) * 1000);
            }
            Op::Review {
                shopper,
                order,
                score,
            } => {
                if order >= self.orders.len() {
                    return;
                }
                let got = engine
                    .review(
                        self.shoppers[shopper],
                        self.orders[order],
                        [score, 3, 3],
                        "ok",
                    )
                    .map(|r| r.order);
                let expected = self
                    .model
                    .review(shopper, order, [score, 3, 3])
                    .map(|order| self.orders[order]);
                assert_eq!(got, expected);
                let rating = engine.rating(self.world.merchant).unwrap();
                assert_eq!(
                    (rating.reviews, rating.score_sum),
                    self.model.ratings.get(&0).copied().unwrap_or_default()
                );
            }
            Op::Share { shopper, order } => {
                if order >= self.orders.len() {
                    return;
                }
                let got = engine.share(self.shoppers[shopper], self.orders[order]);
                let expected = self.model.share(shopper, order);
                assert_eq!(got, expected);
            }
            Op::Sweep => {
                let expired = engine.expire_holds();
                let due = self.model.expire_due();
                assert_eq!(expired, due);
            }
        }
    }

    /// The engine's numbers equal the model's, and the invariants hold.
    fn compare(&self, engine: &Engine) {
        engine.check_invariants().unwrap();
        for (index, deal) in self.deals.iter().enumerate() {
            let counts = engine.stock(*deal).unwrap();
            let m = &self.model.deals[index];
            assert_eq!(
                (counts.total, counts.remaining, counts.held, counts.sold),
                (m.total, m.remaining, m.held, m.sold),
                "deal {index}"
            );
        }
        for (index, shopper) in self.shoppers.iter().enumerate() {
            assert_eq!(
                model_wallet(engine.wallet(*shopper).unwrap()),
                self.model.wallets[index],
                "wallet {index}"
            );
        }
    }

    /// Full state equality between the live engine and a rebuilt one.
    fn assert_same_state(&self, rebuilt: &Engine) {
        self.compare(rebuilt);
        let live = &self.world.engine;
        for deal in &self.deals {
            assert_eq!(live.deal(*deal).unwrap(), rebuilt.deal(*deal).unwrap());
            assert_eq!(
                live.orders_of_deal(*deal, OrderCursor::default(), 1000),
                rebuilt.orders_of_deal(*deal, OrderCursor::default(), 1000)
            );
        }
        for hold in &self.holds {
            assert_eq!(
                live.hold_by_id(*hold).unwrap(),
                rebuilt.hold_by_id(*hold).unwrap()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_reference_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut run = setup();
        for op in &ops {
            run.step(op);
        }

        // Replaying the journal of events rebuilds the same state.
        let events = &run.events;
        let clock = Arc::new(flashsale_engine::ManualClock::new(NOON));
        clock.advance_millis(run.model.now - NOON.millis());
        let replica = Engine::new(EngineConfig { shards: 4, ..EngineConfig::default() }, clock.clone() as Arc<dyn Clock>, Arc::new(DiscardEvents));
        for event in events {
            replica.apply(event).unwrap();
        }
        run.assert_same_state(&replica);

        // So does restoring a snapshot.
        let restored = Engine::new(EngineConfig { shards: 4, ..EngineConfig::default() }, clock as Arc<dyn Clock>, Arc::new(DiscardEvents));
        restored.restore(run.world.engine.snapshot()).unwrap();
        run.assert_same_state(&restored);

        // And idempotency survives both: every remembered buy returns its order.
        for ((shopper, key), (request, made)) in &run.model.records {
            if let (Request::Buy(deal, quantity), Made::Order(order)) = (request, made) {
                let again = restored.buy(run.shoppers[*shopper], run.deals[*deal], *quantity, &format!("key-{key}"));
                prop_assert_eq!(again.map(|o| o.id), Ok(run.orders[*order]));
            }
        }
    }
}
