//! The API's bodies on the wire and the conversions at the edge.
//!
//! - Money travels as a decimal string with at most two places
//!   (`"999.00"`): parsed with `rust_decimal` into the engine's [`Money`],
//!   printed from it with two places. No float touches money.
//! - Times travel as RFC 3339 UTC (`2025-06-18T12:00:00.000Z`): any RFC
//!   3339 offset is accepted and converted to the engine's [`Timestamp`]
//!   (ms since the epoch); answers are printed in UTC with milliseconds.
//! - Ids travel as the engine prints them (`d_2a`).
//!
//! Request bodies are read through `http_body_util::Limited`, so a body
//! over the configured bound costs at most that many bytes before `413`.

use std::fmt::{self, Display};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use flashsale_engine::{
    DealView, EngineError, Hold, HoldStatus, MONEY_ACCEPTS, Money, Order, ShopperId, Timestamp,
    Wallet,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::Error;

// ----- reading ---------------------------------------------------------------

/// The bounds on reading one request body (`--body-bytes-max`,
/// `--body-read-timeout-ms`, `--body-rate-min-bytes-per-second`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    pub bytes_max: usize,
    pub read_timeout: Duration,
    /// At least 1.
    pub rate_min_bytes_per_second: u64,
}

impl BodyLimits {
    /// How long a body may take once `received` bytes have arrived: the
    /// read timeout plus `received / rate_min` seconds. A stalled body
    /// gets the timeout; one that drips slower than the minimum rate runs
    /// out of time; one at or above the rate never does.
    fn allowance(&self, received: usize) -> Duration {
        let earned_millis = (received as u64)
            .saturating_mul(1_000)
            .checked_div(self.rate_min_bytes_per_second)
            .unwrap_or(0);
        self.read_timeout
            .saturating_add(Duration::from_millis(earned_millis))
    }
}

/// Reads a whole body within `limits`: more than `bytes_max` bytes
/// (declared or sent) is `413 payload_too_large`; a body that stops
/// arriving, or arrives slower than the minimum rate, is `408
/// request_timeout` ([`BodyLimits::allowance`]); both close the connection.
/// A body of one frame (the usual small JSON) is returned without a copy.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limits: &BodyLimits,
) -> Result<Bytes, Error> {
    let limit = limits.bytes_max;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Error::PayloadTooLarge { limit });
    }
    let started = tokio::time::Instant::now();
    let mut body = Limited::new(body, limit);
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut received = 0usize;
    loop {
        let deadline = started + limits.allowance(received);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_elapsed) => return Err(Error::RequestTimeout),
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(error))) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(Error::PayloadTooLarge { limit });
            }
            Ok(Some(Err(_))) => {
                return Err(Error::BadRequest(
                    "the request body could not be read".into(),
                ));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        received = received.saturating_add(data.len());
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            earlier => {
                if let Some(earlier) = earlier {
                    joined.extend_from_slice(&earlier);
                }
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(joined)))
}

/// One field a request body takes, and what it accepts: the reason of the
/// `422 invalid` that names it when its value is missing, of the wrong
/// type or out of range.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub accepts: &'static str,
}

/// A request body: a JSON object with exactly these fields
/// (`#[serde(deny_unknown_fields)]` on every implementor), decoded by
/// [`parse_json`].
pub(crate) trait RequestBody<'a>: Deserialize<'a> {
    /// Every field the body takes; a test checks the list against the
    /// struct.
    const FIELDS: &'static [Field];
}

/// Decodes a request body, the one way every endpoint does (DESIGN.md,
/// "Input rules" and the error table):
///
/// - not JSON, or JSON that is not an object (`[1]`, `5`, `"x"`) →
///   `400 malformed_json`;
/// - a field the body does not take → `422 invalid` naming it
///   ([`Error::UnknownField`]);
/// - a field missing, given twice, of the wrong type (`"price": 999.00`,
///   `"quantity": null`) or out of its type's range (`-1`,
///   `4294967297`) → `422 invalid` naming it and saying what it accepts
///   ([`Field::accepts`]);
/// - a string holding a lone surrogate escape (`"\ud800"`), which no
///   Rust string (and no Postgres text) can hold → `422 invalid` naming
///   the field.
///
/// A body that decodes costs one `serde_json` pass and no allocation of
/// its own; only a failing one is decoded a second time, with
/// `serde_path_to_error`, to find the field to name.
pub(crate) fn parse_json<'a, T: RequestBody<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    let first = bytes.iter().find(|byte| !byte.is_ascii_whitespace());
    if first.is_some_and(|&byte| byte != b'{') {
        // Not an object: JSON or not, it is not a body. (An empty body is
        // serde_json's EOF error below.)
        return Err(Error::MalformedJson(serde::de::Error::custom(
            "the body must be a JSON object",
        )));
    }
    match serde_json::from_slice(bytes) {
        Ok(body) => Ok(body),
        Err(error) => Err(explain::<T>(bytes, error)),
    }
}

/// Turns a failed decoding of `bytes` into the contract's error.
fn explain<'a, T: RequestBody<'a>>(bytes: &'a [u8], error: serde_json::Error) -> Error {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let tracked = match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(_) => return Error::MalformedJson(error), // trailing characters
        Err(tracked) => tracked,
    };
    let path = tracked
        .path()
        .iter()
        .next()
        .and_then(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => Some(key.as_str()),
            _ => None,
        });
    let inner = tracked.inner();
    let message = inner.to_string();
    // serde names the field of a root-level error in backticks:
    // "missing field `price`", "unknown field `pause`, expected one of …",
    // "duplicate field `quantity`".
    let quoted = message.split('`').nth(1);
    let known = |name: &str| T::FIELDS.iter().find(|field| field.name == name);
    match inner.classify() {
        serde_json::error::Category::Data => {}
        // Inside a string: a lone surrogate escape is well-formed JSON
        // that no string can hold (serde_json says "lone leading
        // surrogate in hex escape", or "unexpected end of hex escape" for
        // a high surrogate with nothing after it); anything else is
        // malformed.
        _ if message.contains("surrogate") || message.contains("end of hex escape") => {
            if let Some(field) = path.and_then(known) {
                return Error::Invalid {
                    field: field.name,
                    reason: "must be text without lone surrogate escapes (\\ud800 to \\udfff)",
                };
            }
            return Error::MalformedJson(error);
        }
        _ => return Error::MalformedJson(error),
    }
    if message.starts_with("unknown field") {
        return Error::UnknownField {
            field: quoted.unwrap_or_default().to_owned(),
            takes: T::FIELDS,
        };
    }
    let duplicate = message.starts_with("duplicate field");
    match path.or(quoted).and_then(known) {
        Some(field) if duplicate => Error::Invalid {
            field: field.name,
            reason: "must appear once",
        },
        Some(field) => Error::Invalid {
            field: field.name,
            reason: field.accepts,
        },
        // Not a field's error (cannot happen for a flat object of known
        // fields, but say what serde said rather than guess).
        None => Error::MalformedJson(error),
    }
}

/// Parses a money field: see [`Money::parse`] for the one grammar every
/// money field (price, amount, credit, `--signup-credit`) follows.
pub(crate) fn parse_money(text: &str, field: &'static str) -> Result<Money, Error> {
    Ok(Money::parse(text, field)?)
}

/// What a time field accepts.
const TIME_ACCEPTS: &str =
    "must be an RFC 3339 time with at most millisecond precision, like \"2025-06-18T12:00:00Z\"";

/// Parses an RFC 3339 time with any offset to the engine's milliseconds.
/// More than millisecond precision (`…00.9999Z`) is refused rather than
/// truncated, so a sale never opens or ends before the instant the
/// merchant gave; trailing zeros (`…00.500000Z`) are not precision.
pub(crate) fn parse_time(text: &str, field: &'static str) -> Result<Timestamp, Error> {
    let invalid = |reason| Error::Invalid { field, reason };
    let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| invalid(TIME_ACCEPTS))?;
    let nanos = time.unix_timestamp_nanos();
    if nanos % 1_000_000 != 0 {
        return Err(invalid(TIME_ACCEPTS));
    }
    i64::try_from(nanos / 1_000_000)
        .map(Timestamp::from_millis)
        .map_err(|_| invalid("is out of range"))
}

/// Parses a path id; one that cannot parse names nothing: `404`.
pub(crate) fn parse_id<T: FromStr>(
    text: &str,
    entity: flashsale_engine::Entity,
) -> Result<T, Error> {
    text.parse().map_err(|_| crate::error::unknown(entity))
}

// ----- request bodies --------------------------------------------------------

/// What a one-line text field accepts (the engine checks it).
const NAME_ACCEPTS: &str = "must be a string of 1 to 100 characters without control characters";
/// What a whole-number count accepts at the wire; the engine narrows it.
const COUNT_ACCEPTS: &str = "must be a whole number from 1 to 4294967295";

/// `{name}`: a merchant or a shopper.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameBody {
    pub name: String,
}

impl RequestBody<'_> for NameBody {
    const FIELDS: &'static [Field] = &[Field {
        name: "name",
        accepts: NAME_ACCEPTS,
    }];
}

/// `{count, credit}`: bulk shoppers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkShoppersBody {
    pub count: u32,
    pub credit: String,
}

impl RequestBody<'_> for BulkShoppersBody {
    const FIELDS: &'static [Field] = &[
        Field {
            name: "count",
            accepts: "must be a whole number from 1 to 10000",
        },
        Field {
            name: "credit",
            accepts: MONEY_ACCEPTS,
        },
    ];
}

/// `{amount, reference}`: a wallet credit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreditBody {
    pub amount: String,
    pub reference: String,
}

impl RequestBody<'_> for CreditBody {
    const FIELDS: &'static [Field] = &[
        Field {
            name: "amount",
            accepts: MONEY_ACCEPTS,
        },
        Field {
            name: "reference",
            accepts: "must be a string of 1 to 255 bytes without control characters",
        },
    ];
}

/// `POST /v1/deals`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewDealBody {
    pub title: String,
    pub price: String,
    pub stock: u64,
    #[serde(default, deserialize_with = "present")]
    pub per_user_limit: Option<u32>,
    pub starts_at: String,
    pub ends_at: String,
    /// Absent: `true` for a raffle, `false` otherwise.
    #[serde(default, deserialize_with = "present")]
    pub requires_registration: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub hold_seconds: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub allocation: Option<String>,
}

/// An optional field: absent is `None`, and `null` is refused like any
/// other value of the wrong type (`422 invalid` naming the field, DESIGN.md
/// "Input rules"), never taken for absent.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// `allocation` as the API spells it (issue #14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AllocationName {
    FirstCome,
    Raffle,
}

impl AllocationName {
    /// `"first_come"` or `"raffle"`; anything else is `422 invalid`
    /// naming `allocation`.
    pub(crate) fn parse(text: &str) -> Result<AllocationName, Error> {
        match text {
            "first_come" => Ok(AllocationName::FirstCome),
            "raffle" => Ok(AllocationName::Raffle),
            _ => Err(Error::Invalid {
                field: "allocation",
                reason: ALLOCATION_ACCEPTS,
            }),
        }
    }
}

const ALLOCATION_ACCEPTS: &str = "must be \"first_come\" or \"raffle\", or absent";

impl RequestBody<'_> for NewDealBody {
    const FIELDS: &'static [Field] = &[
        Field {
            name: "title",
            accepts: "must be a string of 1 to 200 characters without control characters",
        },
        Field {
            name: "price",
            accepts: MONEY_ACCEPTS,
        },
        Field {
            name: "stock",
            accepts: "must be a whole number from 1 to 1000000000",
        },
        Field {
            name: "per_user_limit",
            accepts: "must be a whole number from 1 to 1000, or absent",
        },
        Field {
            name: "starts_at",
            accepts: TIME_ACCEPTS,
        },
        Field {
            name: "ends_at",
            accepts: TIME_ACCEPTS,
        },
        Field {
            name: "requires_registration",
            accepts: "must be true or false, or absent",
        },
        Field {
            name: "hold_seconds",
            accepts: "must be a whole number from 1 to 86400, or absent",
        },
        Field {
            name: "allocation",
            accepts: ALLOCATION_ACCEPTS,
        },
    ];
}

/// `PATCH /v1/deals/{id}`: at least one field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DealChangeBody {
    #[serde(default, deserialize_with = "present")]
    pub add_stock: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    pub ends_at: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub paused: Option<bool>,
    /// Accepted only as the deal's own allocation: registrations open
    /// when a deal is posted, so it never changes after.
    #[serde(default, deserialize_with = "present")]
    pub allocation: Option<String>,
}

impl RequestBody<'_> for DealChangeBody {
    const FIELDS: &'static [Field] = &[
        Field {
            name: "add_stock",
            accepts: "must be a whole number from 1 to 1000000000",
        },
        Field {
            name: "ends_at",
            accepts: TIME_ACCEPTS,
        },
        Field {
            name: "paused",
            accepts: "must be true or false",
        },
        Field {
            name: "allocation",
            accepts: ALLOCATION_ACCEPTS,
        },
    ];
}

impl DealChangeBody {
    /// A change that sets none of `add_stock`, `ends_at`, `paused` changes
    /// nothing (`allocation` may only repeat the deal's own): it is refused
    /// rather than answered 200 as if it had.
    pub(crate) fn check_not_empty(&self) -> Result<(), Error> {
        if self.add_stock.is_none() && self.ends_at.is_none() && self.paused.is_none() {
            return Err(Error::Invalid {
                field: "body",
                reason: "must set at least one of add_stock, ends_at, paused",
            });
        }
        Ok(())
    }
}

/// The body of an endpoint named by its path alone (register, pay or
/// release a hold, share): it takes no field, so the only object it
/// accepts is `{}`; `#[serde(deny_unknown_fields)]` names any other field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoFieldsBody {}

impl RequestBody<'_> for NoFieldsBody {
    const FIELDS: &'static [Field] = &[];
}

/// JSON's whitespace (RFC 8259 section 2): space, tab, line feed, return.
fn is_json_whitespace(byte: &u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Checks the body of an endpoint that takes no field (DESIGN.md, "Input
/// rules", which bind every endpoint): no body, an empty one or JSON
/// whitespace only is accepted (`curl -X POST` sends none), and so is `{}`;
/// anything else is [`parse_json`]'s refusal of a [`NoFieldsBody`]: not an
/// object is `400 malformed_json`, an object with a field is `422 invalid`
/// naming it.
pub(crate) fn parse_no_fields(bytes: &[u8]) -> Result<(), Error> {
    if bytes.iter().all(is_json_whitespace) {
        return Ok(());
    }
    let NoFieldsBody {} = parse_json(bytes)?;
    Ok(())
}

/// `{quantity}`: a buy or a hold.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuantityBody {
    pub quantity: u32,
}

impl RequestBody<'_> for QuantityBody {
    const FIELDS: &'static [Field] = &[Field {
        name: "quantity",
        accepts: COUNT_ACCEPTS,
    }];
}

/// `{description, delivery, service, text?}`. Scores are read as any
/// integer so that one out of range is `invalid` naming its field rather
/// than a shape error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviewBody {
    pub description: i64,
    pub delivery: i64,
    pub service: i64,
    #[serde(default)]
    pub text: String,
}

const SCORE_ACCEPTS: &str = "must be a whole number from 1 to 5";

impl RequestBody<'_> for ReviewBody {
    const FIELDS: &'static [Field] = &[
        Field {
            name: "description",
            accepts: SCORE_ACCEPTS,
        },
        Field {
            name: "delivery",
            accepts: SCORE_ACCEPTS,
        },
        Field {
            name: "service",
            accepts: SCORE_ACCEPTS,
        },
        Field {
            name: "text",
            accepts: "must be a string of at most 500 characters without control characters \
                      other than tab and line breaks",
        },
    ];
}

impl ReviewBody {
    /// The three scores, each 1 to 5.
    pub(crate) fn scores(&self) -> Result<[u8; 3], Error> {
        let score = |value: i64, field: &'static str| {
            u8::try_from(value)
                .ok()
                .filter(|score| (1..=5).contains(score))
                .ok_or(Error::Invalid {
                    field,
                    reason: SCORE_ACCEPTS,
                })
        };
        Ok([
            score(self.description, "description")?,
            score(self.delivery, "delivery")?,
            score(self.service, "service")?,
        ])
    }
}

// ----- response bodies -------------------------------------------------------

/// Serializes anything `Display` as a JSON string without an intermediate
/// `String`: ids, money.
pub(crate) struct Text<T>(pub T);

impl<T: Display> Serialize for Text<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// A [`Timestamp`] as RFC 3339 UTC with milliseconds.
#[derive(Clone, Copy)]
pub(crate) struct Rfc3339Utc(pub Timestamp);

impl Display for Rfc3339Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = i128::from(self.0.millis()) * 1_000_000;
        // Engine times come from parsed RFC 3339 input or the clock, so they
        // are inside `time`'s range; clamp rather than fail if not.
        let time = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(if nanos < 0 {
            OffsetDateTime::UNIX_EPOCH
        } else {
            time::PrimitiveDateTime::MAX.assume_utc()
        });
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            time.year(),
            u8::from(time.month()),
            time.day(),
            time.hour(),
            time.minute(),
            time.second(),
            time.millisecond()
        )
    }
}

impl Serialize for Rfc3339Utc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Serialize)]
pub(crate) struct OrderJson {
    id: Text<flashsale_engine::OrderId>,
    deal_id: Text<flashsale_engine::DealId>,
    shopper_id: Text<ShopperId>,
    quantity: u32,
    unit_price: Text<Money>,
    amount: Text<Money>,
    status: &'static str,
    late: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold_id: Option<Text<flashsale_engine::HoldId>>,
    created_at: Rfc3339Utc,
    /// `GET /v1/orders/{id}` with Postgres configured: whether the order is
    /// in the books ("confirmed", DESIGN.md); absent elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) in_books: Option<bool>,
}

impl From<&Order> for OrderJson {
    fn from(order: &Order) -> OrderJson {
        OrderJson {
            id: Text(order.id),
            deal_id: Text(order.deal),
            shopper_id: Text(order.shopper),
            quantity: order.quantity,
            unit_price: Text(order.unit_price),
            amount: Text(order.amount),
            status: "paid",
            late: order.late,
            hold_id: order.hold.map(Text),
            created_at: Rfc3339Utc(order.created_at),
            in_books: None,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct HoldJson {
    id: Text<flashsale_engine::HoldId>,
    deal_id: Text<flashsale_engine::DealId>,
    shopper_id: Text<ShopperId>,
    quantity: u32,
    amount: Text<Money>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<Text<flashsale_engine::OrderId>>,
    created_at: Rfc3339Utc,
    expires_at: Rfc3339Utc,
}

impl From<&Hold> for HoldJson {
    fn from(hold: &Hold) -> HoldJson {
        let (status, order_id) = match hold.status {
            HoldStatus::Active => ("active", None),
            HoldStatus::Settled(order) => ("settled", Some(Text(order))),
            HoldStatus::Released => ("released", None),
            HoldStatus::Expired => ("expired", None),
        };
        HoldJson {
            id: Text(hold.id),
            deal_id: Text(hold.deal),
            shopper_id: Text(hold.shopper),
            quantity: hold.quantity,
            amount: Text(hold.amount),
            status,
            order_id,
            created_at: Rfc3339Utc(hold.created_at),
            expires_at: Rfc3339Utc(hold.expires_at),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct DealJson<'a> {
    id: Text<flashsale_engine::DealId>,
    merchant_id: Text<flashsale_engine::MerchantId>,
    title: &'a str,
    price: Text<Money>,
    stock: u64,
    remaining: u64,
    held: u64,
    sold: u64,
    per_user_limit: u32,
    starts_at: Rfc3339Utc,
    ends_at: Rfc3339Utc,
    requires_registration: bool,
    hold_seconds: u32,
    #[serde(flatten)]
    raffle: RaffleJson,
    paused: bool,
    registrations: u64,
    buyers: u64,
    shares: u64,
    popularity: u64,
    status: &'static str,
    created_at: Rfc3339Utc,
}

impl<'a> From<&'a DealView> for DealJson<'a> {
    fn from(deal: &'a DealView) -> DealJson<'a> {
        DealJson {
            id: Text(deal.id),
            merchant_id: Text(deal.merchant),
            title: &deal.title,
            price: Text(deal.price),
            stock: deal.counts.total,
            remaining: deal.counts.remaining,
            held: deal.counts.held,
            sold: deal.counts.sold,
            per_user_limit: deal.per_user_limit,
            starts_at: Rfc3339Utc(deal.starts_at),
            ends_at: Rfc3339Utc(deal.ends_at),
            requires_registration: deal.requires_registration,
            hold_seconds: deal.hold_seconds,
            raffle: RaffleJson::of(deal),
            paused: deal.paused,
            registrations: deal.registrations,
            buyers: deal.buyers,
            shares: deal.shares,
            popularity: deal.popularity(),
            status: deal.status.name(),
            created_at: Rfc3339Utc(deal.created_at),
        }
    }
}

/// A digest as 64 lowercase hex digits.
pub(crate) struct Hex(pub flashsale_engine::Digest);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.0))
    }
}

/// A deal's allocation on its JSON and card: `allocation`, and for a raffle
/// `seed_commitment` (hex SHA-256 of the seed) and, once drawn, `seed`.
#[derive(Serialize)]
pub(crate) struct RaffleJson {
    allocation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed_commitment: Option<Hex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<Hex>,
}

impl RaffleJson {
    fn of(deal: &DealView) -> RaffleJson {
        RaffleJson {
            allocation: if deal.raffle.is_some() {
                "raffle"
            } else {
                "first_come"
            },
            seed_commitment: deal.raffle.map(|raffle| Hex(raffle.commitment)),
            seed: deal
                .raffle
                .and_then(|raffle| raffle.seed)
                .map(|seed| Hex(seed.0)),
        }
    }
}

/// `GET /v1/deals/{id}/draw`: the public record, one page of offers.
#[derive(Serialize)]
pub(crate) struct DrawJson {
    deal_id: Text<flashsale_engine::DealId>,
    seed_commitment: Hex,
    drawn: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<Hex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registrants: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registrants_hash: Option<Hex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offers_total: Option<u64>,
    /// Offered ranks in offer order, from `cursor`.
    offers: Vec<OfferJson>,
    next_cursor: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct OfferJson {
    rank: Hex,
    /// `hold` (a hold was offered) or `passed_over` (the wallet was short).
    outcome: &'static str,
}

impl DrawJson {
    pub(crate) fn new(
        deal: flashsale_engine::DealId,
        record: flashsale_engine::DrawRecord,
    ) -> DrawJson {
        let result = record.result;
        DrawJson {
            deal_id: Text(deal),
            seed_commitment: Hex(record.commitment),
            drawn: result.is_some(),
            seed: result.as_ref().map(|result| Hex(result.seed.0)),
            registrants: result.as_ref().map(|result| result.registrants),
            registrants_hash: result.as_ref().map(|result| Hex(result.registrants_hash)),
            offers_total: result.as_ref().map(|result| result.offers_total),
            next_cursor: result
                .as_ref()
                .and_then(|result| result.next)
                .map(|next| next.to_string()),
            offers: result
                .map(|result| result.offers)
                .unwrap_or_default()
                .into_iter()
                .map(|offer| OfferJson {
                    rank: Hex(offer.rank),
                    outcome: if offer.passed_over {
                        "passed_over"
                    } else {
                        "hold"
                    },
                })
                .collect(),
        }
    }
}

/// `GET /v1/deals/{id}/draw/me`: the caller's own result. `outcome` is
/// `not_registered`, `pending` (before the draw), `won` (with `hold`),
/// `passed_over`, `waitlisted` (with `waitlist_position`, 1 = next) or
/// `not_drawn` (the deal ended or sold out before reaching this rank).
#[derive(Serialize)]
pub(crate) struct DrawMeJson {
    deal_id: Text<flashsale_engine::DealId>,
    shopper_id: Text<ShopperId>,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rank: Option<Hex>,
    /// 1-based place in the ranking.
    #[serde(skip_serializing_if = "Option::is_none")]
    place: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waitlist_position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<HoldJson>,
}

impl DrawMeJson {
    pub(crate) fn new(
        deal: flashsale_engine::DealId,
        shopper: ShopperId,
        standing: flashsale_engine::DrawStanding,
    ) -> DrawMeJson {
        use flashsale_engine::DrawStanding as S;
        let (outcome, rank, place, waitlist_position, hold) = match standing {
            S::NotRegistered => ("not_registered", None, None, None, None),
            S::Pending => ("pending", None, None, None, None),
            S::Won { rank, place, hold } => ("won", Some(rank), Some(place), None, Some(hold)),
            S::PassedOver { rank, place } => ("passed_over", Some(rank), Some(place), None, None),
            S::Waitlisted {
                rank,
                place,
                position,
            } => ("waitlisted", Some(rank), Some(place), Some(position), None),
            S::NotDrawn { rank, place } => ("not_drawn", Some(rank), Some(place), None, None),
        };
        DrawMeJson {
            deal_id: Text(deal),
            shopper_id: Text(shopper),
            outcome,
            rank: rank.map(Hex),
            place: place.map(|place| place + 1),
            waitlist_position,
            hold: hold.as_ref().map(HoldJson::from),
        }
    }
}

/// A feed card: what a shopper scrolling the feed needs to decide.
#[derive(Serialize)]
pub(crate) struct CardJson<'a> {
    id: Text<flashsale_engine::DealId>,
    title: &'a str,
    price: Text<Money>,
    stock: u64,
    remaining: u64,
    held: u64,
    sold: u64,
    per_user_limit: u32,
    starts_at: Rfc3339Utc,
    ends_at: Rfc3339Utc,
    requires_registration: bool,
    #[serde(flatten)]
    raffle: RaffleJson,
    status: &'static str,
    /// Buyers + registrations + shares.
    popularity: u64,
    buyers: u64,
    registrations: u64,
    shares: u64,
    merchant: MerchantCardJson<'a>,
}

#[derive(Serialize)]
pub(crate) struct MerchantCardJson<'a> {
    id: Text<flashsale_engine::MerchantId>,
    name: &'a str,
    rating: RatingJson,
}

/// `{average: "4.33" | null, reviews}`: the mean review score out of 5
/// with two places, `null` before the first review.
#[derive(Serialize)]
pub(crate) struct RatingJson {
    average: Option<Text<Decimal>>,
    reviews: u64,
}

impl RatingJson {
    pub(crate) fn new(rating: Option<flashsale_engine::Rating>) -> RatingJson {
        RatingJson {
            average: rating
                .and_then(|rating| rating.average_hundredths())
                .and_then(|hundredths| i64::try_from(hundredths).ok())
                .map(|hundredths| Text(Decimal::new(hundredths, 2))),
            reviews: rating.map_or(0, |rating| rating.reviews),
        }
    }
}

/// `GET /v1/merchants/me`: who the token names, and its rating.
#[derive(Serialize)]
pub(crate) struct MerchantJson<'a> {
    pub id: Text<flashsale_engine::MerchantId>,
    pub name: &'a str,
    pub rating: RatingJson,
}

/// A review as stored; `text` exactly as given (JSON escapes it here).
#[derive(Serialize)]
pub(crate) struct ReviewJson<'a> {
    order_id: Text<flashsale_engine::OrderId>,
    deal_id: Text<flashsale_engine::DealId>,
    merchant_id: Text<flashsale_engine::MerchantId>,
    shopper_id: Text<ShopperId>,
    description: u8,
    delivery: u8,
    service: u8,
    text: &'a str,
    created_at: Rfc3339Utc,
    /// The merchant's rating with this review counted.
    merchant_rating: RatingJson,
}

impl<'a> ReviewJson<'a> {
    pub(crate) fn new(
        review: &'a flashsale_engine::Review,
        rating: Option<flashsale_engine::Rating>,
    ) -> ReviewJson<'a> {
        ReviewJson {
            order_id: Text(review.order),
            deal_id: Text(review.deal),
            merchant_id: Text(review.merchant),
            shopper_id: Text(review.shopper),
            description: review.description,
            delivery: review.delivery,
            service: review.service,
            text: &review.text,
            created_at: Rfc3339Utc(review.created_at),
            merchant_rating: RatingJson::new(rating),
        }
    }
}

impl<'a> CardJson<'a> {
    pub(crate) fn new(
        deal: &'a DealView,
        merchant_name: &'a str,
        rating: Option<flashsale_engine::Rating>,
    ) -> CardJson<'a> {
        CardJson {
            id: Text(deal.id),
            title: &deal.title,
            price: Text(deal.price),
            stock: deal.counts.total,
            remaining: deal.counts.remaining,
            held: deal.counts.held,
            sold: deal.counts.sold,
            per_user_limit: deal.per_user_limit,
            starts_at: Rfc3339Utc(deal.starts_at),
            ends_at: Rfc3339Utc(deal.ends_at),
            requires_registration: deal.requires_registration,
            raffle: RaffleJson::of(deal),
            status: deal.status.name(),
            popularity: deal.popularity(),
            buyers: deal.buyers,
            registrations: deal.registrations,
            shares: deal.shares,
            merchant: MerchantCardJson {
                id: Text(deal.merchant),
                name: merchant_name,
                rating: RatingJson::new(rating),
            },
        }
    }
}

#[derive(Serialize)]
pub(crate) struct WalletJson {
    shopper_id: Text<ShopperId>,
    available: Text<Money>,
    held: Text<Money>,
    spent: Text<Money>,
    credited: Text<Money>,
}

impl WalletJson {
    pub(crate) fn new(shopper: ShopperId, wallet: &Wallet) -> WalletJson {
        WalletJson {
            shopper_id: Text(shopper),
            available: Text(wallet.available),
            held: Text(wallet.held),
            spent: Text(wallet.spent),
            credited: Text(wallet.credited),
        }
    }
}

/// `201 {id, name, token}` for a new merchant or shopper.
#[derive(Serialize)]
pub(crate) struct AccountJson<'a, Id: Display> {
    pub id: Text<Id>,
    pub name: &'a str,
    pub token: &'a str,
}

// ----- writing ---------------------------------------------------------------

/// A JSON response; serialization of these plain values cannot fail.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let mut body = Vec::with_capacity(256);
    if let Err(error) = serde_json::to_writer(&mut body, value) {
        // invariant: the bodies above hold strings, numbers and bools only.
        tracing::error!(%error, "a response body failed to serialize");
        return Error::Engine(EngineError::Inconsistent {
            reason: "a response failed to serialize",
        })
        .into_response();
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A plain-text response (`/metrics`, health).
pub(crate) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_in_utc_with_milliseconds() {
        let at = parse_time("2025-06-18T12:00:00.5+02:00", "starts_at").unwrap();
        assert_eq!(Rfc3339Utc(at).to_string(), "2025-06-18T10:00:00.500Z");
        assert_eq!(
            Rfc3339Utc(Timestamp::from_millis(0)).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        assert!(parse_time("2025-06-18 12:00", "starts_at").is_err());
    }

    #[test]
    fn a_body_earns_time_at_the_minimum_rate() {
        let limits = BodyLimits {
            bytes_max: 16_384,
            read_timeout: Duration::from_secs(5),
            rate_min_bytes_per_second: 4_096,
        };
        assert_eq!(limits.allowance(0), Duration::from_secs(5));
        assert_eq!(limits.allowance(4_096), Duration::from_secs(6));
        assert_eq!(limits.allowance(16_384), Duration::from_secs(9));
        assert!(limits.allowance(usize::MAX) > Duration::from_secs(5));
    }

    #[test]
    fn times_finer_than_a_millisecond_are_refused_not_truncated() {
        for fine in [
            "2025-06-18T12:00:00.9999Z",
            "2025-06-18T12:00:00.0001Z",
            "2025-06-18T12:00:00.123456789+08:00",
        ] {
            assert!(
                matches!(
                    parse_time(fine, "starts_at"),
                    Err(Error::Invalid {
                        field: "starts_at",
                        ..
                    })
                ),
                "{fine}"
            );
        }
        // Trailing zeros are not precision.
        let at = parse_time("2025-06-18T12:00:00.999000Z", "ends_at").unwrap();
        assert_eq!(Rfc3339Utc(at).to_string(), "2025-06-18T12:00:00.999Z");
    }

    #[test]
    fn money_fields_use_the_one_grammar() {
        assert_eq!(parse_money("999", "price").unwrap().to_string(), "999.00");
        for bad in ["9.999", "abc", "1e2", "1_000", ".5", "5.", "+1", "-1"] {
            assert!(
                matches!(
                    parse_money(bad, "amount"),
                    Err(Error::Engine(EngineError::Invalid {
                        field: "amount",
                        ..
                    }))
                ),
                "{bad}"
            );
        }
    }

    fn invalid_field<'a, T: RequestBody<'a>>(body: &'a str) -> &'static str {
        match parse_json::<T>(body.as_bytes()) {
            Err(Error::Invalid { field, .. }) => field,
            Err(other) => panic!("{body}: expected invalid, got {other:?}"),
            Ok(_) => panic!("{body}: accepted"),
        }
    }

    #[test]
    fn field_errors_are_invalid_naming_the_field() {
        for body in [
            r#"{"quantity": "one"}"#,
            r#"{"quantity": -1}"#,
            r#"{"quantity": 4294967297}"#,
            r#"{"quantity": 1.5}"#,
            r#"{"quantity": null}"#,
            r#"{}"#,
            r#"{"quantity": 1, "quantity": 2}"#,
        ] {
            assert_eq!(invalid_field::<QuantityBody>(body), "quantity", "{body}");
        }
        assert_eq!(
            invalid_field::<NewDealBody>(r#"{"title": "x", "price": 999.00}"#),
            "price"
        );
        assert_eq!(invalid_field::<NewDealBody>(r#"{"title": "x"}"#), "price");
        for lone in [r"\ud800", r"\udc00", r"\ud800\u0041", r"x\ud800y"] {
            let body = format!(r#"{{"title": "{lone}"}}"#);
            assert_eq!(invalid_field::<NewDealBody>(&body), "title", "{body}");
        }
        assert_eq!(
            invalid_field::<ReviewBody>(r#"{"description": 5, "delivery": true, "service": 5}"#),
            "delivery"
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        match parse_json::<NewDealBody>(br#"{"per_user_limt": 5}"#) {
            Err(Error::UnknownField { field, takes }) => {
                assert_eq!(field, "per_user_limt");
                assert_eq!(takes.len(), 9);
            }
            other => panic!("{:?}", other.err()),
        }
        let Err(error) = parse_json::<DealChangeBody>(br#"{"pause": true}"#) else {
            panic!("an unknown field was accepted");
        };
        assert_eq!(error.http().code, "invalid");
        assert!(error.to_string().contains("\"pause\""), "{error}");
        let empty: DealChangeBody = parse_json(b"{}").unwrap();
        assert!(empty.check_not_empty().is_err());
    }

    #[test]
    fn what_is_not_a_json_object_is_malformed() {
        for body in [
            "[1]",
            "5",
            "\"x\"",
            "null",
            "{\"quantity\": 1",
            "",
            "  ",
            "{\"quantity\": 1} x",
            "quantity=1",
        ] {
            assert!(
                matches!(
                    parse_json::<QuantityBody>(body.as_bytes()),
                    Err(Error::MalformedJson(_))
                ),
                "{body}"
            );
        }
        let QuantityBody { quantity } = parse_json(b" \n{\"quantity\": 3} ").unwrap();
        assert_eq!(quantity, 3);
    }

    #[test]
    fn a_body_of_no_fields_is_absent_blank_or_an_empty_object() {
        for accepted in ["", " ", " \r\n\t", "{}", " { } \n"] {
            assert!(parse_no_fields(accepted.as_bytes()).is_ok(), "{accepted:?}");
        }
        for malformed in ["[1]", "[]", "5", "\"x\"", "null", "{", "{} x", "\u{c}", "x"] {
            assert!(
                matches!(
                    parse_no_fields(malformed.as_bytes()),
                    Err(Error::MalformedJson(_))
                ),
                "{malformed:?}"
            );
        }
        for (body, named) in [
            (r#"{"quantity": 1}"#, "quantity"),
            (r#"{"reason": null}"#, "reason"),
        ] {
            let Err(error) = parse_no_fields(body.as_bytes()) else {
                panic!("{body} was accepted");
            };
            assert!(
                matches!(&error, Error::UnknownField { field, takes: [] } if field == named),
                "{body}: {error:?}"
            );
            assert_eq!(error.http().code, "invalid");
            assert!(error.to_string().contains("takes no field"), "{error}");
        }
    }

    /// Every field a body's table lists is one the struct takes (an error
    /// on it names it rather than calling it unknown), and every field the
    /// struct takes is listed (the required ones are named when missing).
    #[test]
    fn field_tables_match_their_bodies() {
        fn check<T: for<'a> RequestBody<'a>>() {
            for field in T::FIELDS {
                let body = format!(r#"{{"{}": [[]]}}"#, field.name);
                assert_eq!(invalid_field::<T>(&body), field.name);
            }
            let unknown = parse_json::<T>(br#"{"surely_not_a_field": 1}"#);
            assert!(matches!(unknown, Err(Error::UnknownField { .. })));
        }
        check::<NameBody>();
        check::<BulkShoppersBody>();
        check::<CreditBody>();
        check::<NewDealBody>();
        check::<DealChangeBody>();
        check::<QuantityBody>();
        check::<ReviewBody>();
        check::<NoFieldsBody>();
    }
}
