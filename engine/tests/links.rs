//! Accounts of a platform's user ids (`Engine::link_shopper`,
//! `Engine::link_merchant`): made once however many threads race, found
//! again afterwards, kept by replay and by a snapshot, and refused
//! without a change for a bad external id.

mod support;

use std::sync::{Arc, Barrier};
use std::thread;

use flashsale_engine::{
    Clock, Engine, EngineConfig, EngineError, Event, MerchantId, RecordEvents, ShopperId,
};
use support::{World, money};

const RACERS: usize = 50;

fn fresh(world: &World) -> Engine {
    Engine::new(
        EngineConfig::default(),
        world.clock.clone() as Arc<dyn Clock>,
        Arc::new(flashsale_engine::DiscardEvents),
    )
}

#[test]
fn racing_first_requests_of_one_external_id_make_one_shopper_and_one_merchant() {
    let events = Arc::new(RecordEvents::default());
    let world = Arc::new(World::with_sink(events.clone()));
    let barrier = Arc::new(Barrier::new(RACERS));
    let handles: Vec<_> = (0..RACERS)
        .map(|racer| {
            let (world, barrier) = (world.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let name = format!("racer {racer}");
                let (shopper, shopper_made) = world
                    .engine
                    .link_shopper_credited("auth0|race", &name, money("10.00"), "signup")
                    .unwrap();
                let (merchant, merchant_made) =
                    world.engine.link_merchant("auth0|race", &name).unwrap();
                (shopper, shopper_made, merchant, merchant_made)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let (shopper, _, merchant, _) = results
        .iter()
        .find(|result| result.1)
        .cloned()
        .expect("one racer made the shopper");
    assert_eq!(results.iter().filter(|result| result.1).count(), 1);
    assert_eq!(results.iter().filter(|result| result.3).count(), 1);
    for (other_shopper, _, other_merchant, _) in &results {
        assert_eq!(other_shopper, &shopper, "every racer got the same shopper");
        assert_eq!(
            other_merchant, &merchant,
            "every racer got the same merchant"
        );
    }
    assert_eq!(shopper.external_id.as_deref(), Some("auth0|race"));
    assert_eq!(merchant.external_id.as_deref(), Some("auth0|race"));
    assert_eq!(world.engine.shopper(shopper.id), Some(shopper.clone()));
    let wallet = world.engine.wallet(shopper.id).unwrap();
    assert_eq!(
        wallet.credited,
        money("10.00"),
        "the signup credit landed once"
    );
    assert_eq!(world.engine.merchant(merchant.id), Some(merchant.clone()));
    let events = events.take();
    let linked = |event: &&Event| {
        matches!(
            event,
            Event::ShopperLinked { .. } | Event::ShopperCreated { .. }
        )
    };
    assert_eq!(events.iter().filter(linked).count(), 1, "one shopper event");
    let credits = events
        .iter()
        .filter(|event| matches!(event, Event::WalletCredited { .. }))
        .count();
    assert_eq!(credits, 1, "one credit event");
    assert_eq!(
        events
            .iter()
            .filter(|event| matches!(event, Event::MerchantLinked { .. }))
            .count(),
        1,
        "one merchant event"
    );
}

#[test]
fn a_linked_account_is_found_again_and_other_ids_get_their_own() {
    let world = World::new();
    let (first, made) = world.engine.link_shopper("google-oauth2|1", "Ann").unwrap();
    assert!(made);
    let (again, made) = world
        .engine
        .link_shopper("google-oauth2|1", "Other")
        .unwrap();
    assert!(!made);
    assert_eq!(again, first, "the name of a later request changes nothing");
    assert_eq!(again.name, "Ann");
    let (other, made) = world.engine.link_shopper("google-oauth2|2", "Bob").unwrap();
    assert!(made);
    assert_ne!(other.id, first.id);
    assert_eq!(
        world.engine.shopper_of_external("google-oauth2|1"),
        Some(first.id)
    );
    assert_eq!(world.engine.shopper_of_external("google-oauth2|3"), None);
    // A shopper of the signup has no external id, and a merchant of the
    // same external id is a different account kind.
    let plain = world.engine.create_shopper("Cy").unwrap();
    assert_eq!(plain.external_id, None);
    let (merchant, made) = world
        .engine
        .link_merchant("google-oauth2|1", "Shop")
        .unwrap();
    assert!(made);
    assert_eq!(
        world.engine.merchant_of_external("google-oauth2|1"),
        Some(merchant.id)
    );
    assert_eq!(
        world.engine.merchant(world.merchant).unwrap().external_id,
        None
    );
}

#[test]
fn a_bad_external_id_or_name_is_refused_and_changes_nothing() {
    let events = Arc::new(RecordEvents::default());
    let world = World::with_sink(events.clone());
    events.take();
    let long = "x".repeat(256);
    for bad in ["", long.as_str(), "a\0b", "line\nbreak", "del\u{7f}"] {
        let refusals = [
            world.engine.link_shopper(bad, "Ann").map(|_| ()),
            world.engine.link_merchant(bad, "Ann").map(|_| ()),
        ];
        for refusal in refusals {
            assert!(
                matches!(
                    refusal,
                    Err(EngineError::Invalid {
                        field: "external_id",
                        ..
                    })
                ),
                "{bad:?}: {refusal:?}"
            );
        }
    }
    assert!(matches!(
        world.engine.link_shopper("auth0|ok", " "),
        Err(EngineError::Invalid { field: "name", .. })
    ));
    // A refused signup credit makes no shopper either.
    assert!(matches!(
        world
            .engine
            .link_shopper_credited("auth0|ok", "Ann", money("1.00"), ""),
        Err(EngineError::Invalid {
            field: "reference",
            ..
        })
    ));
    assert!(events.take().is_empty(), "a refusal emits nothing");
    assert_eq!(world.engine.shopper_of_external("auth0|ok"), None);
    // No id was used up by the refusals.
    let (shopper, _) = world.engine.link_shopper("auth0|ok", "Ann").unwrap();
    assert_eq!(shopper.id, ShopperId(1));
}

#[test]
fn shoppers_max_bounds_linked_shoppers() {
    let config = EngineConfig {
        shoppers_max: 2,
        merchants_max: 2,
        ..EngineConfig::default()
    };
    let world = World::with(config, Arc::new(flashsale_engine::DiscardEvents));
    world.engine.link_shopper("a", "A").unwrap();
    world.engine.link_shopper("b", "B").unwrap();
    assert_eq!(
        world.engine.link_shopper("c", "C"),
        Err(EngineError::CapacityReached {
            bound: "shoppers_max"
        })
    );
    // Known ids are still found at the bound.
    assert!(!world.engine.link_shopper("a", "A").unwrap().1);
    world.engine.link_merchant("a", "A").unwrap();
    assert_eq!(
        world.engine.link_merchant("b", "B"),
        Err(EngineError::CapacityReached {
            bound: "merchants_max"
        })
    );
}

#[test]
fn replay_and_snapshot_keep_the_links() {
    let events = Arc::new(RecordEvents::default());
    let world = World::with_sink(events.clone());
    let (shopper, _) = world.engine.link_shopper("auth0|42", "Ann").unwrap();
    let plain = world.engine.create_shopper("Bob").unwrap();
    let (merchant, _) = world.engine.link_merchant("auth0|42", "Shop").unwrap();
    let replica = fresh(&world);
    for event in events.take() {
        replica.apply(&event).unwrap();
    }
    let restored = fresh(&world);
    restored.restore(replica.snapshot()).unwrap();
    for engine in [&replica, &restored] {
        assert_eq!(engine.shopper(shopper.id), Some(shopper.clone()));
        assert_eq!(engine.shopper(plain.id), Some(plain.clone()));
        assert_eq!(engine.merchant(merchant.id), Some(merchant.clone()));
        assert_eq!(
            engine.link_shopper("auth0|42", "x").unwrap(),
            (shopper.clone(), false)
        );
        assert_eq!(
            engine.link_merchant("auth0|42", "x").unwrap(),
            (merchant.clone(), false)
        );
        let (next, made) = engine.link_shopper("auth0|43", "Cy").unwrap();
        assert!(made);
        assert_eq!(next.id, ShopperId(3), "ids go on after the replayed ones");
    }
    assert_eq!(
        restored.merchant_of_external("auth0|42"),
        Some(MerchantId(2))
    );
}

#[test]
fn replay_refuses_an_external_id_linked_twice() {
    let world = World::new();
    let event = |shopper| Event::ShopperLinked {
        shopper: ShopperId(shopper),
        external_id: "auth0|1".into(),
        name: "Ann".into(),
        at: world.clock.now(),
    };
    let replica = fresh(&world);
    replica.apply(&event(1)).unwrap();
    assert!(matches!(
        replica.apply(&event(2)),
        Err(EngineError::Inconsistent { .. })
    ));
}
