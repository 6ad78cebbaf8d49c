//! A merchant's change to its deal: restock, a new end, pause and resume
//! (docs/api.md "Changing a deal").

use crate::clock::Timestamp;
use crate::engine::{DealChange, STOCK_MAX};
use crate::error::{EngineError, Entity};

/// Everything [`decide_deal_change`] reads, under the deal's change lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DealChangeView {
    /// The caller is the deal's merchant.
    pub own: bool,
    pub change: DealChange,
    /// The deal's total stock now (initial stock plus every restock).
    pub total: u64,
    pub starts_at: Timestamp,
    /// The deal's current end and pause.
    pub ends_at: Timestamp,
    pub paused: bool,
    /// The engine's clock, ms since the epoch.
    pub now: Timestamp,
}

/// A deal's end and pause after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DealTerms {
    pub ends_at: Timestamp,
    pub paused: bool,
}

/// What a change does: `restock` units added to both `total` and
/// `remaining` (first, so no buy takes a unit before its restock is
/// journalled), then the terms, when `ends_at` or `paused` was given
/// (each one not given keeps its current value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DealChangeEffects {
    pub restock: Option<u64>,
    pub terms: Option<DealTerms>,
}

/// Decides a merchant's change (docs/api.md "Changing a deal": `add_stock`
/// units added, `stock = remaining + held + sold` always; `ends_at` after
/// now and after `starts_at`; `paused` stops buys, holds and late
/// payments). Refusals, in order: not the caller's deal: `Forbidden(Deal)`;
/// `add_stock` of 0: `Invalid` ("must be at least 1"); `total + add_stock`
/// past [`STOCK_MAX`] or overflowing: `Invalid`; `ends_at` at or before
/// `starts_at` or `now`: `Invalid`. An empty change changes nothing.
pub fn decide_deal_change(view: &DealChangeView) -> Result<DealChangeEffects, EngineError> {
    if !view.own {
        return Err(EngineError::Forbidden(Entity::Deal));
    }
    let change = view.change;
    if let Some(quantity) = change.add_stock {
        if quantity == 0 {
            return Err(invalid("add_stock", "must be at least 1"));
        }
        let total = view
            .total
            .checked_add(quantity)
            .filter(|&total| total <= STOCK_MAX);
        if total.is_none() {
            return Err(invalid("add_stock", "would take stock past 1000000000"));
        }
    }
    if let Some(ends_at) = change.ends_at
        && (ends_at <= view.starts_at || ends_at <= view.now)
    {
        return Err(invalid("ends_at", "must be after starts_at and after now"));
    }
    let terms = (change.ends_at.is_some() || change.paused.is_some()).then(|| DealTerms {
        ends_at: change.ends_at.unwrap_or(view.ends_at),
        paused: change.paused.unwrap_or(view.paused),
    });
    Ok(DealChangeEffects {
        restock: change.add_stock,
        terms,
    })
}

fn invalid(field: &'static str, reason: &'static str) -> EngineError {
    EngineError::Invalid { field, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(change: DealChange) -> DealChangeView {
        DealChangeView {
            own: true,
            change,
            total: 10,
            starts_at: Timestamp(100),
            ends_at: Timestamp(500),
            paused: false,
            now: Timestamp(200),
        }
    }

    #[test]
    fn restock_extend_and_pause() {
        let change = DealChange {
            add_stock: Some(5),
            ends_at: Some(Timestamp(900)),
            paused: None,
        };
        assert_eq!(
            decide_deal_change(&view(change)),
            Ok(DealChangeEffects {
                restock: Some(5),
                terms: Some(DealTerms {
                    ends_at: Timestamp(900),
                    paused: false
                }),
            })
        );
        let pause = DealChange {
            paused: Some(true),
            ..DealChange::default()
        };
        assert_eq!(
            decide_deal_change(&view(pause)),
            Ok(DealChangeEffects {
                restock: None,
                terms: Some(DealTerms {
                    ends_at: Timestamp(500),
                    paused: true
                }),
            })
        );
        assert_eq!(
            decide_deal_change(&view(DealChange::default())),
            Ok(DealChangeEffects {
                restock: None,
                terms: None
            })
        );
        let to_the_bound = DealChange {
            add_stock: Some(STOCK_MAX - 10),
            ..DealChange::default()
        };
        assert!(decide_deal_change(&view(to_the_bound)).is_ok());
    }

    #[test]
    fn refusals_in_order() {
        let everything_wrong = DealChange {
            add_stock: Some(0),
            ends_at: Some(Timestamp(100)),
            paused: Some(true),
        };
        let foreign = DealChangeView {
            own: false,
            ..view(everything_wrong)
        };
        assert_eq!(
            decide_deal_change(&foreign),
            Err(EngineError::Forbidden(Entity::Deal))
        );
        assert_eq!(
            decide_deal_change(&view(everything_wrong)),
            Err(invalid("add_stock", "must be at least 1"))
        );
        for add_stock in [STOCK_MAX - 9, u64::MAX] {
            let change = DealChange {
                add_stock: Some(add_stock),
                ..everything_wrong
            };
            assert_eq!(
                decide_deal_change(&view(change)),
                Err(invalid("add_stock", "would take stock past 1000000000"))
            );
        }
        for ends_at in [100, 200] {
            let change = DealChange {
                add_stock: None,
                ends_at: Some(Timestamp(ends_at)),
                paused: None,
            };
            assert_eq!(
                decide_deal_change(&view(change)),
                Err(invalid("ends_at", "must be after starts_at and after now"))
            );
        }
    }
}
