//! Small helpers shared by the engine's test binaries.
#![allow(dead_code)]

use std::str::FromStr;
use std::sync::Arc;

use flashsale_engine::{
    Clock, DealId, DiscardEvents, Engine, EngineConfig, EventSink, ManualClock, MerchantId, Money,
    NewDeal, ShopperId, Timestamp,
};
use rust_decimal::Decimal;

/// 2026-11-21T12:00:00Z, the start of every test's world.
pub const NOON: Timestamp = Timestamp(1_795_262_400_000);

pub fn money(text: &str) -> Money {
    Money::from_decimal(
        Decimal::from_str(text).expect("a test amount parses"),
        "amount",
    )
    .expect("a test amount is valid")
}

pub struct World {
    pub clock: Arc<ManualClock>,
    pub engine: Engine,
    pub merchant: MerchantId,
}

impl World {
    pub fn new() -> World {
        World::with_sink(Arc::new(DiscardEvents))
    }

    pub fn with_sink(sink: Arc<dyn EventSink>) -> World {
        World::with(EngineConfig::default(), sink)
    }

    pub fn with(config: EngineConfig, sink: Arc<dyn EventSink>) -> World {
        let clock = Arc::new(ManualClock::new(NOON));
        let engine = Engine::new(config, clock.clone() as Arc<dyn Clock>, sink);
        let merchant = engine.create_merchant("acme").expect("merchant").id;
        World {
            clock,
            engine,
            merchant,
        }
    }

    /// A deal live now, open for an hour, at `price`.
    pub fn deal(&self, stock: u64, per_user_limit: u32, price: &str) -> DealId {
        self.engine
            .create_deal(self.merchant, self.new_deal(stock, per_user_limit, price))
            .expect("deal")
            .id
    }

    pub fn new_deal(&self, stock: u64, per_user_limit: u32, price: &str) -> NewDeal {
        let now = self.clock.now();
        NewDeal {
            title: "phone".into(),
            price: money(price),
            stock,
            per_user_limit: Some(per_user_limit),
            starts_at: now,
            ends_at: now.plus_seconds(3600),
            requires_registration: false,
            hold_seconds: Some(60),
            allocation: flashsale_engine::Allocation::FirstCome,
        }
    }

    /// A shopper whose wallet holds `credit`.
    pub fn shopper(&self, credit: &str) -> ShopperId {
        let shopper = self.engine.create_shopper("ann").expect("shopper").id;
        if money(credit) > Money::ZERO {
            self.engine
                .credit_wallet(shopper, money(credit), "initial")
                .expect("credit");
        }
        shopper
    }
}
