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

use bytes::Bytes;
use flashsale_engine::{
    DealView, EngineError, Hold, HoldStatus, Money, Order, ShopperId, Timestamp, Wallet,
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

/// Reads a whole body of at most `limit` bytes.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, Error> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Error::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(Error::PayloadTooLarge { limit })
        }
        Err(_) => Err(Error::BadRequest(
            "the request body could not be read".into(),
        )),
    }
}

/// Parses a JSON body: not JSON is `malformed_json`; JSON of the wrong
/// shape (types, missing fields) is `bad_request` naming the field.
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => Error::BadRequest(error.to_string().into()),
        _ => Error::MalformedJson(error),
    })
}

pub(crate) fn parse_money(text: &str, field: &'static str) -> Result<Money, Error> {
    let decimal = Decimal::from_str(text).map_err(|_| Error::Invalid {
        field,
        reason: "must be a decimal string like \"999.00\"",
    })?;
    Ok(Money::from_decimal(decimal, field)?)
}

pub(crate) fn parse_time(text: &str, field: &'static str) -> Result<Timestamp, Error> {
    let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| Error::Invalid {
        field,
        reason: "must be an RFC 3339 time like \"2025-06-18T12:00:00Z\"",
    })?;
    let millis = time.unix_timestamp_nanos() / 1_000_000;
    i64::try_from(millis)
        .map(Timestamp::from_millis)
        .map_err(|_| Error::Invalid {
            field,
            reason: "is out of range",
        })
}

/// Parses a path id; one that cannot parse names nothing: `404`.
pub(crate) fn parse_id<T: FromStr>(
    text: &str,
    entity: flashsale_engine::Entity,
) -> Result<T, Error> {
    text.parse().map_err(|_| crate::error::unknown(entity))
}

// ----- request bodies --------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct NameBody {
    pub name: String,
}

#[derive(Deserialize)]
pub(crate) struct BulkShoppersBody {
    pub count: u32,
    pub credit: String,
}

#[derive(Deserialize)]
pub(crate) struct CreditBody {
    pub amount: String,
    pub reference: String,
}

#[derive(Deserialize)]
pub(crate) struct NewDealBody {
    pub title: String,
    pub price: String,
    pub stock: u64,
    pub per_user_limit: Option<u32>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(default)]
    pub requires_registration: bool,
    pub hold_seconds: Option<u32>,
}

#[derive(Deserialize)]
pub(crate) struct DealChangeBody {
    pub add_stock: Option<u64>,
    pub ends_at: Option<String>,
    pub paused: Option<bool>,
}

#[derive(Deserialize)]
pub(crate) struct QuantityBody {
    pub quantity: u32,
}

/// `{description, delivery, service, text?}`. Scores are read as any
/// integer so that one out of range is `invalid` naming its field rather
/// than a shape error.
#[derive(Deserialize)]
pub(crate) struct ReviewBody {
    pub description: i64,
    pub delivery: i64,
    pub service: i64,
    #[serde(default)]
    pub text: String,
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
                    reason: "must be a whole number from 1 to 5",
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
    fn money_is_a_decimal_string_with_two_places() {
        assert_eq!(parse_money("999", "price").unwrap().to_string(), "999.00");
        assert!(matches!(
            parse_money("9.999", "price"),
            Err(Error::Engine(EngineError::Invalid { field: "price", .. }))
        ));
        assert!(matches!(
            parse_money("abc", "price"),
            Err(Error::Invalid { field: "price", .. })
        ));
    }

    #[test]
    fn wrong_shapes_are_bad_requests_and_garbage_is_malformed() {
        assert!(matches!(
            parse_json::<QuantityBody>(b"{\"quantity\": \"one\"}"),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<QuantityBody>(b"{}"),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<QuantityBody>(b"{\"quantity\": 1"),
            Err(Error::MalformedJson(_))
        ));
        assert!(matches!(
            parse_json::<QuantityBody>(b""),
            Err(Error::MalformedJson(_))
        ));
    }
}
