//! Reading Redis' replies: the steps' reply tags, refusal codes mapped to
//! the engine's refusals, and the JSON and hash fields of records.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;

use flashsale_engine::{
    DealId, EngineError, Entity, Hold, HoldId, HoldStatus, MerchantId, Money, Order, OrderId,
    ShopperId, Timestamp, Wallet,
};
use parking_lot::{Mutex, RwLock};
use redis::{ErrorKind, ServerErrorKind, Value};
use serde::Deserialize;

use crate::cache::{DealEntry, DealLive};
use crate::error::Error;

/// A step's reply (the script header's reply shapes).
pub(crate) enum Reply {
    Done(Vec<Value>),
    Refused(EngineError),
    /// The bucket lacks `need` of the `total` units the request needs.
    Refill {
        need: u32,
        total: u32,
    },
    Terms,
    /// The deployment's epoch in Redis is not the one the node knows.
    Epoch,
    /// The shard's books stream is at its bound (Postgres is behind).
    Backlog,
}

/// An order as the script writes it (`encode_order`).
#[derive(Deserialize)]
pub(crate) struct OrderRecord {
    pub(crate) id: u64,
    pub(crate) deal: u64,
    pub(crate) shopper: u64,
    pub(crate) quantity: u32,
    pub(crate) unit_price: i64,
    pub(crate) amount: i64,
    pub(crate) late: bool,
    pub(crate) created_at: i64,
    pub(crate) hold: Option<u64>,
}

/// A hold as the script writes it (`encode_hold`).
#[derive(Deserialize)]
pub(crate) struct HoldRecord {
    pub(crate) id: u64,
    pub(crate) deal: u64,
    pub(crate) shopper: u64,
    pub(crate) quantity: u32,
    pub(crate) amount: i64,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) status: String,
    pub(crate) order: Option<u64>,
}

pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(number) => Some(number.to_string()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

pub(crate) fn number(value: Option<&Value>) -> i64 {
    value
        .and_then(text)
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

/// Whether Redis refused a command (unknown, renamed, denied by an ACL)
/// rather than failed to answer.
pub(crate) fn is_refusal(error: &redis::RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::NoPerm)
            | ErrorKind::Extension
    )
}

/// A reply Redis should never give: the script and this file disagree.
pub(crate) fn garbled(what: &'static str) -> Error {
    tracing::error!(what, "an unexpected reply from the Redis script");
    Error::Engine(EngineError::Inconsistent { reason: what })
}

pub(crate) fn money(fen: i64) -> Result<Money, Error> {
    Money::from_fen(fen).ok_or_else(|| garbled("money out of range"))
}

pub(crate) fn order_of(json: &str) -> Result<Order, Error> {
    let record: OrderRecord = serde_json::from_str(json).map_err(|_| garbled("an order record"))?;
    Ok(Order {
        id: OrderId(record.id),
        deal: DealId(record.deal),
        shopper: ShopperId(record.shopper),
        quantity: record.quantity,
        unit_price: money(record.unit_price)?,
        amount: money(record.amount)?,
        late: record.late,
        hold: record.hold.map(HoldId),
        created_at: Timestamp(record.created_at),
    })
}

pub(crate) fn hold_of(json: &str) -> Result<Hold, Error> {
    let record: HoldRecord = serde_json::from_str(json).map_err(|_| garbled("a hold record"))?;
    let status = match (record.status.as_str(), record.order) {
        ("active", _) => HoldStatus::Active,
        ("released", _) => HoldStatus::Released,
        ("expired", _) => HoldStatus::Expired,
        ("settled", Some(order)) => HoldStatus::Settled(OrderId(order)),
        _ => return Err(garbled("a hold status")),
    };
    Ok(Hold {
        id: HoldId(record.id),
        deal: DealId(record.deal),
        shopper: ShopperId(record.shopper),
        quantity: record.quantity,
        amount: money(record.amount)?,
        created_at: Timestamp(record.created_at),
        expires_at: Timestamp(record.expires_at),
        status,
    })
}

pub(crate) fn entity(name: &str) -> Entity {
    match name {
        "shopper" => Entity::Shopper,
        "hold" => Entity::Hold,
        "order" => Entity::Order,
        "merchant" => Entity::Merchant,
        _ => Entity::Deal,
    }
}

/// The engine's refusal for a script's refusal code.
pub(crate) fn refusal(code: &str, arg: &str, hold: Option<HoldId>) -> Result<EngineError, Error> {
    let hold = || hold.ok_or_else(|| garbled("a hold refusal without a hold"));
    Ok(match code {
        "sold_out" => EngineError::SoldOut,
        "purchase_limit_reached" => EngineError::PurchaseLimitReached {
            limit: arg.parse().map_err(|_| garbled("a limit"))?,
        },
        "insufficient_funds" => EngineError::InsufficientFunds,
        "not_registered" => EngineError::NotRegistered,
        "not_started" => EngineError::NotStarted,
        "deal_ended" => EngineError::DealEnded,
        "deal_paused" => EngineError::DealPaused,
        "registration_closed" => EngineError::RegistrationClosed,
        "idempotency_key_reused" => EngineError::IdempotencyKeyReused,
        "already_reviewed" => EngineError::AlreadyReviewed,
        "hold_expired" => EngineError::HoldExpired { hold: hold()? },
        "hold_released" => EngineError::HoldReleased { hold: hold()? },
        "hold_settled" => EngineError::HoldSettled {
            hold: hold()?,
            order: OrderId(arg.parse().map_err(|_| garbled("an order id"))?),
        },
        "not_found" => EngineError::NotFound(entity(arg)),
        "capacity_reached" => EngineError::CapacityReached {
            bound: "token_revocations_max",
        },
        "forbidden" => EngineError::Forbidden(entity(arg)),
        "invalid" => match arg {
            "amount" => EngineError::Invalid {
                field: "amount",
                reason: "would overflow the wallet",
            },
            "add_stock" => EngineError::Invalid {
                field: "add_stock",
                reason: "would take stock past 1000000000",
            },
            _ => EngineError::Invalid {
                field: "ends_at",
                reason: "must be after starts_at and after now",
            },
        },
        _ => return Err(garbled("a refusal code")),
    })
}

pub(crate) fn reply_of(values: Vec<Value>, hold: Option<HoldId>) -> Result<Reply, Error> {
    let tag = values.first().and_then(text).unwrap_or_default();
    match tag.as_str() {
        "OK" => Ok(Reply::Done(values)),
        "ERR" => {
            let code = values.get(1).and_then(text).unwrap_or_default();
            let arg = values.get(2).and_then(text).unwrap_or_default();
            Ok(Reply::Refused(refusal(&code, &arg, hold)?))
        }
        "REFILL" => {
            let units = |index: usize| {
                u32::try_from(number(values.get(index))).map_err(|_| garbled("a refill need"))
            };
            Ok(Reply::Refill {
                need: units(1)?,
                total: units(2)?,
            })
        }
        "TERMS" => Ok(Reply::Terms),
        "EPOCH" => Ok(Reply::Epoch),
        "BACKLOG" => Ok(Reply::Backlog),
        _ => Err(garbled("a reply tag")),
    }
}

pub(crate) fn field<T: std::str::FromStr>(
    fields: &HashMap<String, String>,
    name: &str,
) -> Option<T> {
    fields.get(name).and_then(|value| value.parse().ok())
}

pub(crate) fn live_of(fields: &HashMap<String, String>) -> DealLive {
    DealLive {
        changes: field(fields, "c").unwrap_or(0),
        version: field(fields, "version").unwrap_or(0),
        ends_at: Timestamp(field(fields, "ends").unwrap_or(0)),
        paused: fields.get("paused").is_some_and(|paused| paused == "1"),
        total: field(fields, "total").unwrap_or(0),
        pool: field(fields, "pool").unwrap_or(0),
        marked_sold_out: fields.get("sold_out").is_some_and(|marked| marked == "1"),
        ..DealLive::default()
    }
}

pub(crate) fn entry_of(id: DealId, fields: &HashMap<String, String>) -> Result<DealEntry, Error> {
    let merchant =
        field(fields, "merchant").ok_or(Error::Engine(EngineError::NotFound(Entity::Deal)))?;
    Ok(DealEntry {
        id,
        merchant: MerchantId(merchant),
        title: fields.get("title").cloned().unwrap_or_default(),
        price: money(field(fields, "price").unwrap_or(0))?,
        per_user_limit: field(fields, "limit").unwrap_or(1),
        starts_at: Timestamp(field(fields, "starts").unwrap_or(0)),
        requires_registration: fields.get("registration").is_some_and(|flag| flag == "1"),
        hold_seconds: field(fields, "hold_seconds").unwrap_or(0),
        created_at: Timestamp(field(fields, "created_at").unwrap_or(0)),
        live: Mutex::new(live_of(fields)),
        sold_out: AtomicBool::new(false),
        records: RwLock::new(HashSet::new()),
        refill: tokio::sync::Mutex::new(()),
        refills: Mutex::new(HashMap::new()),
    })
}

pub(crate) fn wallet_of(values: &[Value]) -> Result<Wallet, Error> {
    let part = |index: usize| money(number(values.get(index)));
    Ok(Wallet {
        credited: part(0)?,
        available: part(1)?,
        held: part(2)?,
        spent: part(3)?,
    })
}
