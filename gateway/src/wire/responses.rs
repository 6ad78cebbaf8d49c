//! The response bodies, and writing a JSON or text answer.

use std::fmt::{self, Display};

use bytes::Bytes;
use flashsale_engine::{
    DealView, EngineError, Hold, HoldStatus, Money, Order, ShopperId, Timestamp, Wallet,
};
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};
use time::OffsetDateTime;

use crate::error::Error;

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
    pub(crate) id: Text<flashsale_engine::OrderId>,
    pub(crate) deal_id: Text<flashsale_engine::DealId>,
    pub(crate) shopper_id: Text<ShopperId>,
    pub(crate) quantity: u32,
    pub(crate) unit_price: Text<Money>,
    pub(crate) amount: Text<Money>,
    pub(crate) status: &'static str,
    pub(crate) late: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hold_id: Option<Text<flashsale_engine::HoldId>>,
    pub(crate) created_at: Rfc3339Utc,
    /// `GET /v1/orders/{id}` with Postgres configured: whether the order is
    /// in the books ("confirmed", `docs/durability.md`); absent elsewhere.
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
    pub(crate) id: Text<flashsale_engine::HoldId>,
    pub(crate) deal_id: Text<flashsale_engine::DealId>,
    pub(crate) shopper_id: Text<ShopperId>,
    pub(crate) quantity: u32,
    pub(crate) amount: Text<Money>,
    pub(crate) status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) order_id: Option<Text<flashsale_engine::OrderId>>,
    pub(crate) created_at: Rfc3339Utc,
    pub(crate) expires_at: Rfc3339Utc,
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
    pub(crate) id: Text<flashsale_engine::DealId>,
    pub(crate) merchant_id: Text<flashsale_engine::MerchantId>,
    pub(crate) title: &'a str,
    pub(crate) price: Text<Money>,
    pub(crate) stock: u64,
    pub(crate) remaining: u64,
    pub(crate) held: u64,
    pub(crate) sold: u64,
    pub(crate) per_user_limit: u32,
    pub(crate) starts_at: Rfc3339Utc,
    pub(crate) ends_at: Rfc3339Utc,
    pub(crate) requires_registration: bool,
    pub(crate) hold_seconds: u32,
    #[serde(flatten)]
    pub(crate) raffle: RaffleJson,
    pub(crate) paused: bool,
    pub(crate) registrations: u64,
    pub(crate) buyers: u64,
    pub(crate) shares: u64,
    pub(crate) popularity: u64,
    pub(crate) status: &'static str,
    pub(crate) created_at: Rfc3339Utc,
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
    pub(crate) allocation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seed_commitment: Option<Hex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seed: Option<Hex>,
}

impl RaffleJson {
    pub(crate) fn of(deal: &DealView) -> RaffleJson {
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
    pub(crate) deal_id: Text<flashsale_engine::DealId>,
    pub(crate) seed_commitment: Hex,
    pub(crate) drawn: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seed: Option<Hex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) registrants: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) registrants_hash: Option<Hex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) offers_total: Option<u64>,
    /// Offered ranks in offer order, from `cursor`.
    pub(crate) offers: Vec<OfferJson>,
    pub(crate) next_cursor: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct OfferJson {
    pub(crate) rank: Hex,
    /// `hold` (a hold was offered) or `passed_over` (the wallet was short).
    pub(crate) outcome: &'static str,
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
    pub(crate) deal_id: Text<flashsale_engine::DealId>,
    pub(crate) shopper_id: Text<ShopperId>,
    pub(crate) outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rank: Option<Hex>,
    /// 1-based place in the ranking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) place: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) waitlist_position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hold: Option<HoldJson>,
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
    pub(crate) id: Text<flashsale_engine::DealId>,
    pub(crate) title: &'a str,
    pub(crate) price: Text<Money>,
    pub(crate) stock: u64,
    pub(crate) remaining: u64,
    pub(crate) held: u64,
    pub(crate) sold: u64,
    pub(crate) per_user_limit: u32,
    pub(crate) starts_at: Rfc3339Utc,
    pub(crate) ends_at: Rfc3339Utc,
    pub(crate) requires_registration: bool,
    #[serde(flatten)]
    pub(crate) raffle: RaffleJson,
    pub(crate) status: &'static str,
    /// Buyers + registrations + shares.
    pub(crate) popularity: u64,
    pub(crate) buyers: u64,
    pub(crate) registrations: u64,
    pub(crate) shares: u64,
    pub(crate) merchant: MerchantCardJson<'a>,
}

#[derive(Serialize)]
pub(crate) struct MerchantCardJson<'a> {
    pub(crate) id: Text<flashsale_engine::MerchantId>,
    pub(crate) name: &'a str,
    pub(crate) rating: RatingJson,
}

/// `{average: "4.33" | null, reviews}`: the mean review score out of 5
/// with two places, `null` before the first review.
#[derive(Serialize)]
pub(crate) struct RatingJson {
    pub(crate) average: Option<Text<Decimal>>,
    pub(crate) reviews: u64,
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
    /// The platform's user id of the merchant; left out when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<&'a str>,
    pub rating: RatingJson,
}

/// A review as stored; `text` exactly as given (JSON escapes it here).
#[derive(Serialize)]
pub(crate) struct ReviewJson<'a> {
    pub(crate) order_id: Text<flashsale_engine::OrderId>,
    pub(crate) deal_id: Text<flashsale_engine::DealId>,
    pub(crate) merchant_id: Text<flashsale_engine::MerchantId>,
    pub(crate) shopper_id: Text<ShopperId>,
    pub(crate) description: u8,
    pub(crate) delivery: u8,
    pub(crate) service: u8,
    pub(crate) text: &'a str,
    pub(crate) created_at: Rfc3339Utc,
    /// The merchant's rating with this review counted.
    pub(crate) merchant_rating: RatingJson,
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
pub(crate) struct WalletJson<'a> {
    pub(crate) shopper_id: Text<ShopperId>,
    /// The platform's user id of the shopper; left out when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) external_id: Option<&'a str>,
    pub(crate) available: Text<Money>,
    pub(crate) held: Text<Money>,
    pub(crate) spent: Text<Money>,
    pub(crate) credited: Text<Money>,
}

impl<'a> WalletJson<'a> {
    /// The wallet of `shopper`, whose external id is `external_id`.
    pub(crate) fn new(
        shopper: ShopperId,
        external_id: Option<&'a str>,
        wallet: &Wallet,
    ) -> WalletJson<'a> {
        WalletJson {
            shopper_id: Text(shopper),
            external_id,
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

/// `201 {id, token, expires_at}`: a token issued for an existing account.
#[derive(Serialize)]
pub(crate) struct TokenJson<'a> {
    pub id: Text<flashsale_engine::Account>,
    pub token: &'a str,
    pub expires_at: Rfc3339Utc,
}

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
