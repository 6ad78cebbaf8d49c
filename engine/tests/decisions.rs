//! Properties of the pure decisions (`flashsale_engine::rules`) over random
//! views, edge values included: applied to the numbers their view read,
//! the effects never take a count or balance below zero, never take a
//! shopper past the deal's limit, debit exactly `quantity × unit price`
//! (computed here in `i128`, so a wrap could not hide), and an overflow is
//! a refusal, never a wrap or a panic.

use flashsale_engine::engine::STOCK_MAX;
use flashsale_engine::rules::{
    self, CreditAccount, CreditEffects, CreditView, DealChangeView, DealWindow, HoldView,
    LatePayShopper, LatePayView, OfferEffects, OfferView, RecordView, ReleaseEffects,
    ReserveEffects, ReserveKind, ReserveView, ShopperView,
};
use flashsale_engine::{
    DealChange, EngineError, HoldId, HoldStatus, MONEY_MAX, Money, OrderId, ReleaseReason,
    Timestamp,
};
use proptest::prelude::*;

/// Mostly small amounts, where acceptances happen, and the edges.
fn money() -> impl Strategy<Value = Money> {
    prop_oneof![
        6 => 0..=10_000i64,
        1 => prop_oneof![Just(0), Just(1), Just(MONEY_MAX.fen() - 1), Just(MONEY_MAX.fen())],
        1 => 0..=MONEY_MAX.fen(),
    ]
    .prop_map(|fen| Money::from_fen(fen).expect("in range"))
}

/// Mostly small counts, and the edges.
fn count() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => 0..=6u32,
        1 => prop_oneof![Just(u32::MAX), Just(u32::MAX - 1), 0..=2_000u32],
        1 => any::<u32>(),
    ]
}

/// Around one instant, so that every order of `now`, starts and ends comes
/// up, and the clock's end.
fn instant() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        9 => (990i64..=1_010).prop_map(Timestamp),
        1 => Just(Timestamp(i64::MAX)),
    ]
}

/// Mostly open windows.
fn window() -> impl Strategy<Value = DealWindow> {
    (
        proptest::bool::weighted(0.2),
        990i64..=1_010,
        prop_oneof![3 => 900i64..=1_000, 1 => 990i64..=1_100],
        prop_oneof![3 => 1_000i64..=1_100, 1 => 900i64..=1_010, 1 => Just(i64::MAX)],
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(sold_out, now, starts_at, ends_at, paused)| DealWindow {
            sold_out,
            now: Timestamp(now),
            starts_at: Timestamp(starts_at),
            ends_at: Timestamp(ends_at),
            paused,
        })
}

fn record() -> impl Strategy<Value = RecordView> {
    prop_oneof![
        8 => Just(RecordView::None),
        1 => Just(RecordView::SameRequest),
        1 => Just(RecordView::OtherRequest),
        1 => Just(RecordView::OtherDeal),
    ]
}

fn shopper() -> impl Strategy<Value = Option<ShopperView>> {
    proptest::option::weighted(
        0.9,
        (
            proptest::bool::weighted(0.8),
            count(),
            count(),
            proptest::bool::weighted(0.9),
            money(),
        )
            .prop_map(
                |(registered, held, bought, may_touch, available)| ShopperView {
                    registered,
                    held,
                    bought,
                    may_touch,
                    available,
                },
            ),
    )
}

fn reserve_view() -> impl Strategy<Value = ReserveView> {
    (
        any::<bool>(),
        count(),
        proptest::bool::weighted(0.1),
        window(),
        record(),
        any::<bool>(),
        count(),
        money(),
        count(),
        shopper(),
    )
        .prop_map(
            |(
                hold,
                quantity,
                raffle,
                window,
                record,
                requires_registration,
                per_user_limit,
                price,
                hold_seconds,
                shopper,
            )| ReserveView {
                kind: if hold {
                    ReserveKind::Hold
                } else {
                    ReserveKind::Buy
                },
                quantity,
                raffle,
                window,
                record,
                requires_registration,
                per_user_limit,
                price,
                hold_seconds,
                shopper,
            },
        )
}

fn product(price: Money, units: u32) -> i128 {
    i128::from(price.fen()) * i128::from(units)
}

fn hold_view() -> impl Strategy<Value = HoldView> {
    let status = prop_oneof![
        Just(HoldStatus::Active),
        Just(HoldStatus::Released),
        Just(HoldStatus::Expired),
        Just(HoldStatus::Settled(OrderId(3))),
    ];
    (
        any::<bool>(),
        status,
        count(),
        money(),
        instant(),
        instant(),
    )
        .prop_map(
            |(own, status, quantity, amount, expires_at, now)| HoldView {
                id: HoldId(1),
                own,
                status,
                quantity,
                amount,
                expires_at,
                now,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn a_reservation_stays_within_the_limit_the_funds_and_the_price(view in reserve_view()) {
        match rules::decide_reserve(&view) {
            Ok(ReserveEffects::Reserve(effects)) => {
                let shopper = view.shopper.expect("a reservation has its shopper");
                prop_assert!(!view.raffle);
                prop_assert_eq!(view.record, RecordView::None);
                prop_assert_eq!(rules::decide_open(&view.window), Ok(()));
                prop_assert!(!view.requires_registration || shopper.registered);
                prop_assert!(shopper.may_touch);
                prop_assert_eq!(effects.kind, view.kind);
                prop_assert_eq!(effects.units, view.quantity);
                let owned = u64::from(shopper.held) + u64::from(shopper.bought)
                    + u64::from(effects.units);
                prop_assert!(owned <= u64::from(view.per_user_limit));
                prop_assert_eq!(i128::from(effects.debit.fen()), product(view.price, effects.units));
                prop_assert_eq!(effects.unit_price, view.price);
                prop_assert!(shopper.available.checked_sub(effects.debit).is_some());
                prop_assert_eq!(effects.created_at, view.window.now);
                match view.kind {
                    ReserveKind::Buy => {
                        prop_assert_eq!(effects.expires_at, None);
                        prop_assert_eq!(effects.new_buyer, shopper.bought == 0);
                    }
                    ReserveKind::Hold => {
                        let expires_at = effects.expires_at.expect("a hold expires");
                        prop_assert!(expires_at >= view.window.now);
                        prop_assert!(!effects.new_buyer);
                    }
                }
            }
            Ok(ReserveEffects::Replay) => {
                prop_assert!(!view.raffle);
                prop_assert_eq!(view.record, RecordView::SameRequest);
            }
            Err(refusal) => {
                // An amount past MONEY_MAX is refused by name (or by an
                // earlier check), never wrapped into a low balance.
                if product(view.price, view.quantity) > i128::from(MONEY_MAX.fen()) {
                    prop_assert_ne!(refusal, EngineError::InsufficientFunds);
                }
            }
        }
    }

    #[test]
    fn an_offer_is_at_most_what_remains_and_the_limit_allows(
        per_user_limit in count(),
        owned in count(),
        remaining in prop_oneof![Just(0u64), 1..=10u64, any::<u64>()],
        price in money(),
        available in money(),
        hold_seconds in count(),
    ) {
        let view = OfferView {
            per_user_limit,
            owned,
            remaining,
            price,
            available,
            now: Timestamp(1_000),
            hold_seconds,
        };
        match rules::decide_offer(&view) {
            OfferEffects::Hold { units, debit, expires_at } => {
                prop_assert!(units >= 1);
                prop_assert!(u64::from(units) <= remaining);
                prop_assert!(u64::from(owned) + u64::from(units) <= u64::from(per_user_limit));
                prop_assert_eq!(i128::from(debit.fen()), product(price, units));
                prop_assert!(debit <= available);
                prop_assert!(expires_at >= view.now);
            }
            OfferEffects::PassOver => {
                let room = per_user_limit.saturating_sub(owned);
                let units = u32::try_from(remaining).map_or(room, |left| left.min(room));
                prop_assert!(
                    units == 0
                        || product(price, units) > i128::from(MONEY_MAX.fen())
                        || i128::from(available.fen()) < product(price, units)
                );
            }
        }
    }

    #[test]
    fn a_late_payment_stays_within_the_limit_and_the_funds(
        quantity in count(),
        amount in money(),
        paused in any::<bool>(),
        now in instant(),
        ends_at in instant(),
        per_user_limit in count(),
        shopper in proptest::option::weighted(0.9, (count(), count(), money())),
    ) {
        let view = LatePayView {
            hold: HoldId(1),
            quantity,
            amount,
            paused,
            now,
            ends_at,
            per_user_limit,
            shopper: shopper.map(|(held, bought, available)| LatePayShopper { held, bought, available }),
        };
        if let Ok(payment) = rules::decide_late_pay(&view) {
            let shopper = view.shopper.expect("a payment has its shopper");
            prop_assert!(!paused && now < ends_at);
            prop_assert_eq!(payment.units, quantity);
            prop_assert_eq!(payment.debit, amount);
            let owned = u64::from(shopper.held) + u64::from(shopper.bought) + u64::from(quantity);
            prop_assert!(owned <= u64::from(per_user_limit));
            prop_assert!(shopper.available.checked_sub(payment.debit).is_some());
            prop_assert_eq!(payment.new_buyer, shopper.bought == 0);
        }
    }

    #[test]
    fn a_release_gives_back_exactly_what_an_active_hold_reserved(view in hold_view()) {
        let check = |effects: ReleaseEffects, reason: ReleaseReason| -> Result<(), TestCaseError> {
            if let ReleaseEffects::Release(release) = effects {
                prop_assert_eq!(view.status, HoldStatus::Active);
                prop_assert_eq!(release.units, view.quantity);
                prop_assert_eq!(release.funds, view.amount);
                prop_assert_eq!(release.reason, reason);
            }
            Ok(())
        };
        if let Ok(effects) = rules::decide_release(&view) {
            prop_assert!(view.own);
            check(effects, ReleaseReason::Released)?;
        }
        let expiry = rules::decide_expire(&view);
        if matches!(expiry, ReleaseEffects::Release(_)) {
            prop_assert!(view.now >= view.expires_at);
        }
        check(expiry, ReleaseReason::Expired)?;
    }

    #[test]
    fn a_credit_adds_exactly_and_refuses_past_money_max(
        amount in money(),
        previous in proptest::option::weighted(0.2, money()),
        references in 0usize..4,
        credited in money(),
        available in money(),
    ) {
        let view = CreditView {
            amount,
            references_max: 3,
            account: Some(CreditAccount { previous, references, credited, available }),
        };
        let exact = |balance: Money| i128::from(balance.fen()) + i128::from(amount.fen());
        match rules::decide_credit(&view) {
            Ok(CreditEffects::Credit { amount: credit, credited: after, available: left }) => {
                prop_assert_eq!(credit, amount);
                prop_assert_eq!(i128::from(after.fen()), exact(credited));
                prop_assert_eq!(i128::from(left.fen()), exact(available));
                prop_assert!(after <= MONEY_MAX && left <= MONEY_MAX);
            }
            Ok(CreditEffects::Replay) => prop_assert_eq!(previous, Some(amount)),
            Err(_) => prop_assert!(
                previous.is_some_and(|previous| previous != amount)
                    || (previous.is_none()
                        && (references >= 3
                            || exact(credited) > i128::from(MONEY_MAX.fen())
                            || exact(available) > i128::from(MONEY_MAX.fen())))
            ),
        }
    }

    #[test]
    fn a_restock_keeps_stock_within_its_bound(
        own in any::<bool>(),
        add_stock in proptest::option::of(prop_oneof![Just(0u64), 1..=10u64, any::<u64>()]),
        ends_at in proptest::option::of(instant()),
        paused in proptest::option::of(any::<bool>()),
        total in prop_oneof![1..=STOCK_MAX, Just(STOCK_MAX)],
        starts_at in instant(),
        current_ends_at in instant(),
        current_paused in any::<bool>(),
        now in instant(),
    ) {
        let view = DealChangeView {
            own,
            change: DealChange { add_stock, ends_at, paused },
            total,
            starts_at,
            ends_at: current_ends_at,
            paused: current_paused,
            now,
        };
        if let Ok(effects) = rules::decide_deal_change(&view) {
            prop_assert!(own);
            prop_assert_eq!(effects.restock, add_stock);
            if let Some(quantity) = effects.restock {
                prop_assert!(quantity >= 1);
                prop_assert!(u128::from(total) + u128::from(quantity) <= u128::from(STOCK_MAX));
            }
            match effects.terms {
                Some(terms) => {
                    prop_assert!(ends_at.is_some() || paused.is_some());
                    prop_assert_eq!(terms.ends_at, ends_at.unwrap_or(current_ends_at));
                    prop_assert_eq!(terms.paused, paused.unwrap_or(current_paused));
                    if ends_at.is_some() {
                        prop_assert!(terms.ends_at > starts_at && terms.ends_at > now);
                    }
                }
                None => prop_assert!(ends_at.is_none() && paused.is_none()),
            }
        }
    }
}

/// The random views reach every outcome of a reservation, so the properties
/// above are not vacuous.
#[test]
fn the_views_reach_acceptance_replay_and_refusal() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = reserve_view();
    let (mut reserved, mut replayed, mut overflowed, mut refused) = (0, 0, 0, 0);
    for _ in 0..4_000 {
        let view = strategy.new_tree(&mut runner).expect("a view").current();
        match rules::decide_reserve(&view) {
            Ok(ReserveEffects::Reserve(_)) => reserved += 1,
            Ok(ReserveEffects::Replay) => replayed += 1,
            Err(EngineError::Invalid {
                field: "quantity", ..
            }) => overflowed += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!(
        "reserved {reserved}, replayed {replayed}, overflowed {overflowed}, refused {refused}"
    );
    assert!(
        reserved >= 40 && replayed >= 40 && overflowed >= 4 && refused >= 40,
        "reserved {reserved}, replayed {replayed}, overflowed {overflowed}, refused {refused}"
    );
}
