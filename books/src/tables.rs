//! The tables and the mapping of events to their rows ([`Batch`]).

use std::collections::HashMap;

use flashsale_engine::{
    Allocation, DealId, Digest, DrawSeed, Event, HoldId, ReleaseReason, ShopperId, Timestamp,
};

use crate::copy::{CopyRows, CopyStream};
use crate::error::OrderSinkError;

/// A table the sink inserts into, and the columns its rows carry, in order
/// (the key, `deployment_id, id`, first).
pub(crate) struct Table {
    pub(crate) name: &'static str,
    pub(crate) columns: &'static str,
    pub(crate) fields: i16,
    /// The columns that never change once written: a row already there
    /// that differs in one of them is a conflict. (A deal's stock and end
    /// change by restock and `PATCH`.)
    pub(crate) fixed: &'static [&'static str],
}

pub(crate) const DEALS: Table = Table {
    name: "deals",
    columns: "deployment_id, id, merchant_id, title, price, stock_total, per_user_limit, \
              starts_at, ends_at, requires_registration, hold_seconds, created_at, \
              allocation, seed_commitment",
    fields: 14,
    fixed: &[
        "merchant_id",
        "title",
        "price",
        "per_user_limit",
        "starts_at",
        "requires_registration",
        "hold_seconds",
        "created_at",
        "allocation",
        "seed_commitment",
    ],
};
/// `hold_id` is not fixed: orders written before migration 0004 have none.
pub(crate) const ORDERS: Table = Table {
    name: "orders",
    columns: "deployment_id, id, deal_id, shopper_id, quantity, unit_price, amount, late, \
              created_at, hold_id",
    fields: 10,
    fixed: &[
        "deal_id",
        "shopper_id",
        "quantity",
        "unit_price",
        "amount",
        "late",
        "created_at",
    ],
};
pub(crate) const MOVEMENTS: Table = Table {
    name: "wallet_movements",
    columns: "deployment_id, id, shopper_id, kind, amount, order_id, created_at",
    fields: 7,
    fixed: &["shopper_id", "kind", "amount", "order_id", "created_at"],
};
pub(crate) const REGISTRATIONS: Table = Table {
    name: "registrations",
    columns: "deployment_id, id, deal_id, shopper_id, registered_at",
    fields: 5,
    fixed: &["deal_id", "shopper_id", "registered_at"],
};
pub(crate) const DRAWS: Table = Table {
    name: "draws",
    columns: "deployment_id, id, drawn_at, seed, seed_commitment, registrants, registrants_hash",
    fields: 7,
    fixed: &[
        "drawn_at",
        "seed",
        "seed_commitment",
        "registrants",
        "registrants_hash",
    ],
};
/// `ended` and `ended_at` are not copied: a release or expiry sets them
/// later ([`Batch::endings`]).
pub(crate) const PLACES: Table = Table {
    name: "draw_places",
    columns: "deployment_id, id, deal_id, shopper_id, journal_position, outcome, reached_at, \
              hold_id, quantity, amount, expires_at",
    fields: 11,
    fixed: &[
        "deal_id",
        "shopper_id",
        "journal_position",
        "outcome",
        "reached_at",
        "hold_id",
        "quantity",
        "amount",
        "expires_at",
    ],
};

/// One batch, ready for Postgres: the new rows of each table as binary
/// `COPY` streams, and the updates to rows already written.
pub(crate) struct Batch {
    pub(crate) deals: CopyStream,
    pub(crate) orders: CopyStream,
    pub(crate) movements: CopyStream,
    pub(crate) registrations: CopyStream,
    pub(crate) draws: CopyStream,
    pub(crate) places: CopyStream,
    /// `(deal, position in the batch, units)` of each restock, in order.
    pub(crate) restocks: Vec<(DealId, u64, u64)>,
    /// Deal id → (position, ends_at, paused) of the last change in this
    /// batch (positions ascend within a batch, and in Redis mode all of a
    /// deal's changes come from its own stream, in order).
    pub(crate) changes: HashMap<DealId, (u64, Timestamp, bool)>,
    /// Holds given back in this batch, in order: `(hold, released or
    /// expired, when)`. Only a raffle hold has a `draw_places` row to
    /// update; a first-come hold's ending updates nothing. At most one per
    /// event of the batch.
    pub(crate) endings: Vec<(HoldId, ReleaseReason, Timestamp)>,
}

/// Starts a `draw_places` row: the columns a place has whether it was
/// offered or passed over (see migration 0004); the hold's four follow.
pub(crate) fn place_row(
    p: &mut CopyRows,
    deployment: &str,
    (deal, shopper): (DealId, ShopperId),
    position: u64,
    outcome: &str,
    reached_at: Timestamp,
) -> Result<(), OrderSinkError> {
    p.row(PLACES.fields);
    p.text("draw_places.deployment_id", deployment)?;
    p.text(
        "draw_places.id",
        format_args!("p_{:x}_{:x}", deal.0, shopper.0),
    )?;
    p.text("draw_places.deal_id", deal)?;
    p.text("draw_places.shopper_id", shopper)?;
    p.int8(i64::try_from(position).map_err(out_of_range("draw_places.journal_position"))?);
    p.text("draw_places.outcome", outcome)?;
    p.timestamptz("draw_places.reached_at", reached_at)
}

/// A `draws` row: what the draw revealed, or four NULLs for a format-2
/// `DrawRunFormat2` that did not carry it.
pub(crate) fn draw_row(
    d: &mut CopyRows,
    deployment: &str,
    deal: DealId,
    at: Timestamp,
    revealed: Option<(&DrawSeed, u64, &Digest)>,
) -> Result<(), OrderSinkError> {
    d.row(DRAWS.fields);
    d.text("draws.deployment_id", deployment)?;
    d.text("draws.id", deal)?;
    d.timestamptz("draws.drawn_at", at)?;
    match revealed {
        Some((seed, registrants, registrants_hash)) => {
            d.hex(&seed.0);
            d.hex(&seed.commitment());
            d.int8(i64::try_from(registrants).map_err(out_of_range("draws.registrants"))?);
            d.hex(registrants_hash);
        }
        None => {
            for _ in 0..4 {
                d.null();
            }
        }
    }
    Ok(())
}

pub(crate) fn out_of_range<T>(column: &'static str) -> impl FnOnce(T) -> OrderSinkError {
    move |_| OrderSinkError::OutOfRange(column)
}

impl Batch {
    /// Encodes the book rows of `events`, each keyed by `deployment`.
    pub(crate) fn from_events(
        events: &[(u64, Event)],
        deployment: &str,
    ) -> Result<Batch, OrderSinkError> {
        let mut deals = CopyRows::new();
        let mut orders = CopyRows::new();
        let mut movements = CopyRows::new();
        let mut registrations = CopyRows::new();
        let mut draws = CopyRows::new();
        let mut places = CopyRows::new();
        let mut restocks = Vec::new();
        let mut changes = HashMap::new();
        let mut endings = Vec::new();
        for (position, event) in events {
            match event {
                Event::DealCreated {
                    deal,
                    merchant,
                    spec,
                    at,
                } => {
                    let d = &mut deals;
                    d.row(DEALS.fields);
                    d.text("deals.deployment_id", deployment)?;
                    d.text("deals.id", deal)?;
                    d.text("deals.merchant_id", merchant)?;
                    d.text("deals.title", &spec.title)?;
                    d.money(spec.price);
                    d.int8(i64::try_from(spec.stock).map_err(out_of_range("deals.stock_total"))?);
                    d.int4(
                        i32::try_from(spec.per_user_limit)
                            .map_err(out_of_range("deals.per_user_limit"))?,
                    );
                    d.timestamptz("deals.starts_at", spec.starts_at)?;
                    d.timestamptz("deals.ends_at", spec.ends_at)?;
                    d.bool(spec.requires_registration);
                    d.int4(
                        i32::try_from(spec.hold_seconds)
                            .map_err(out_of_range("deals.hold_seconds"))?,
                    );
                    d.timestamptz("deals.created_at", *at)?;
                    // The commitment only: the seed is secret until the
                    // draw, and reaches Postgres with `DrawRun`.
                    d.text("deals.allocation", spec.allocation.name())?;
                    match spec.allocation {
                        Allocation::FirstCome => d.null(),
                        Allocation::Raffle(seed) => d.hex(&seed.commitment()),
                    }
                }
                Event::StockAdded { deal, quantity, .. } => {
                    restocks.push((*deal, *position, *quantity));
                }
                Event::DealChanged {
                    deal,
                    ends_at,
                    paused,
                    ..
                } => {
                    changes.insert(*deal, (*position, *ends_at, *paused));
                }
                Event::WalletCredited {
                    shopper,
                    amount,
                    reference,
                    at,
                } => {
                    let m = &mut movements;
                    m.row(MOVEMENTS.fields);
                    m.text("wallet_movements.deployment_id", deployment)?;
                    m.text(
                        "wallet_movements.id",
                        format_args!("c_{:x}_{reference:032x}", shopper.0),
                    )?;
                    m.text("wallet_movements.shopper_id", shopper)?;
                    m.text("wallet_movements.kind", "credit")?;
                    m.money(*amount);
                    m.null();
                    m.timestamptz("wallet_movements.created_at", *at)?;
                }
                Event::OrderSettled { order, .. } => {
                    let o = &mut orders;
                    o.row(ORDERS.fields);
                    o.text("orders.deployment_id", deployment)?;
                    o.text("orders.id", order.id)?;
                    o.text("orders.deal_id", order.deal)?;
                    o.text("orders.shopper_id", order.shopper)?;
                    o.int8(i64::from(order.quantity));
                    o.money(order.unit_price);
                    o.money(order.amount);
                    o.bool(order.late);
                    o.timestamptz("orders.created_at", order.created_at)?;
                    match order.hold {
                        Some(hold) => o.text("orders.hold_id", hold)?,
                        None => o.null(),
                    }
                    let m = &mut movements;
                    m.row(MOVEMENTS.fields);
                    m.text("wallet_movements.deployment_id", deployment)?;
                    m.text("wallet_movements.id", order.id)?;
                    m.text("wallet_movements.shopper_id", order.shopper)?;
                    m.text("wallet_movements.kind", "debit")?;
                    m.money(order.amount);
                    m.text("wallet_movements.order_id", order.id)?;
                    m.timestamptz("wallet_movements.created_at", order.created_at)?;
                }
                Event::Registered { deal, shopper, at } => {
                    let r = &mut registrations;
                    r.row(REGISTRATIONS.fields);
                    r.text("registrations.deployment_id", deployment)?;
                    r.text(
                        "registrations.id",
                        format_args!("r_{:x}_{:x}", deal.0, shopper.0),
                    )?;
                    r.text("registrations.deal_id", deal)?;
                    r.text("registrations.shopper_id", shopper)?;
                    r.timestamptz("registrations.registered_at", *at)?;
                }
                Event::DrawRun {
                    deal,
                    at,
                    seed,
                    registrants,
                    registrants_hash,
                } => {
                    let revealed = (seed, *registrants, registrants_hash);
                    draw_row(&mut draws, deployment, *deal, *at, Some(revealed))?;
                }
                Event::DrawRunFormat2 { deal, at } => {
                    draw_row(&mut draws, deployment, *deal, *at, None)?;
                }
                Event::DrawOffered { hold } => {
                    let p = &mut places;
                    let place = (hold.deal, hold.shopper);
                    place_row(p, deployment, place, *position, "offered", hold.created_at)?;
                    p.text("draw_places.hold_id", hold.id)?;
                    p.int8(i64::from(hold.quantity));
                    p.money(hold.amount);
                    p.timestamptz("draw_places.expires_at", hold.expires_at)?;
                }
                Event::DrawPassedOver { deal, shopper, at } => {
                    let p = &mut places;
                    let place = (*deal, *shopper);
                    place_row(p, deployment, place, *position, "passed_over", *at)?;
                    for _ in 0..4 {
                        p.null();
                    }
                }
                Event::HoldReleased {
                    hold, reason, at, ..
                } => endings.push((*hold, *reason, *at)),
                // Accounts, first-come holds, reviews, shares: not the books.
                _ => {}
            }
        }
        Ok(Batch {
            deals: deals.finish(),
            orders: orders.finish(),
            movements: movements.finish(),
            registrations: registrations.finish(),
            draws: draws.finish(),
            places: places.finish(),
            restocks,
            changes,
            endings,
        })
    }

    /// The tables with rows in this batch, deals first (restocks and
    /// changes may name a deal created in the same batch; endings name
    /// places offered in it).
    pub(crate) fn inserts(&self) -> impl Iterator<Item = (&'static Table, &CopyStream)> {
        [
            (&DEALS, &self.deals),
            (&ORDERS, &self.orders),
            (&MOVEMENTS, &self.movements),
            (&REGISTRATIONS, &self.registrations),
            (&DRAWS, &self.draws),
            (&PLACES, &self.places),
        ]
        .into_iter()
        .filter(|(_, rows)| rows.rows > 0)
    }
}

#[cfg(test)]
mod tests {
    use flashsale_engine::{DealSpec, MerchantId, Money};

    use super::*;

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    /// A raffle's seed is secret until its draw: its deal's row, and the
    /// text `order_sink_set_aside` would keep of its event, carry the
    /// commitment and never the seed, in hex or raw; the draw's row does.
    #[test]
    fn a_raffle_seed_reaches_the_rows_only_with_its_draw() {
        let seed = DrawSeed([0xab; 32]);
        let deal = DealId(2);
        let at = Timestamp(1_795_262_400_000);
        let created = Event::DealCreated {
            deal,
            merchant: MerchantId(1),
            spec: DealSpec {
                title: "Phone raffle".into(),
                price: Money::from_fen(1_000).unwrap(),
                stock: 8,
                per_user_limit: 1,
                starts_at: at,
                ends_at: at.plus_seconds(3600),
                requires_registration: true,
                hold_seconds: 60,
                allocation: Allocation::Raffle(seed),
            },
            at,
        };
        let seed_hex = hex::encode(seed.0);
        let commitment_hex = hex::encode(seed.commitment());
        let batch = Batch::from_events(&[(1, created.clone())], "dep").unwrap();
        assert!(contains(&batch.deals.bytes, commitment_hex.as_bytes()));
        for rows in [&batch.deals, &batch.draws, &batch.places] {
            assert!(!contains(&rows.bytes, seed_hex.as_bytes()));
            assert!(!contains(&rows.bytes, &seed.0));
        }
        let text = format!("{created:?}");
        assert!(
            !text.contains(&seed_hex) && !text.contains("171, 171"),
            "{text}"
        );

        let drawn = Event::DrawRun {
            deal,
            at,
            seed,
            registrants: 3,
            registrants_hash: [0; 32],
        };
        let batch = Batch::from_events(&[(1, created), (2, drawn)], "dep").unwrap();
        assert_eq!(batch.draws.rows, 1);
        assert!(contains(&batch.draws.bytes, seed_hex.as_bytes()));
        assert!(contains(&batch.draws.bytes, commitment_hex.as_bytes()));
        assert!(!contains(&batch.deals.bytes, seed_hex.as_bytes()));
    }
}
