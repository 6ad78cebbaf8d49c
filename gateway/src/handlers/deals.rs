//! Deals and the feed: creating, reading and changing a deal, the feed's
//! pages and live stream, a merchant's own view.

use std::borrow::Cow;

use flashsale_engine::{
    Allocation, DealChange, DealId, DealStatus, DrawSeed, Entity, MerchantId, NewDeal, Rating,
};
use hyper::StatusCode;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use serde::Serialize;

use crate::app::{App, HttpResponse};
use crate::error::Error;
use crate::feed::FeedBody;
use crate::wire::{
    AllocationName, CardJson, DealChangeBody, DealJson, MerchantJson, NewDealBody, RatingJson,
    Text, json, parse_id, parse_json, parse_money, parse_time,
};

use super::{
    FEED_LIMIT_DEFAULT, FEED_LIMIT_MAX, FEED_SCAN_MAX, parse_limit, query, unknown_parameter,
};

/// `POST /v1/deals` (merchant).
pub(crate) async fn create_deal(
    app: &App,
    parts: &Parts,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    let merchant = app.merchant(parts)?;
    let deal: NewDealBody = parse_json(body)?;
    let allocation = deal.allocation.as_deref().map(AllocationName::parse);
    let raffle = allocation.transpose()? == Some(AllocationName::Raffle);
    let allocation = if raffle {
        // Issue #14: the seed is the gateway's, from the OS RNG; the engine
        // draws no randomness. Only its commitment is public until the draw.
        let mut seed = [0; 32];
        getrandom::fill(&mut seed).map_err(Error::Random)?;
        Allocation::Raffle(DrawSeed(seed))
    } else {
        Allocation::FirstCome
    };
    let new = NewDeal {
        allocation,
        price: parse_money(&deal.price, "price")?,
        stock: deal.stock,
        per_user_limit: deal.per_user_limit,
        starts_at: parse_time(&deal.starts_at, "starts_at")?,
        ends_at: parse_time(&deal.ends_at, "ends_at")?,
        requires_registration: deal.requires_registration.unwrap_or(raffle),
        hold_seconds: deal.hold_seconds,
        title: deal.title,
    };
    let view = app.store.create_deal(merchant, new).await?;
    Ok(json(StatusCode::CREATED, &DealJson::from(&view)))
}

/// `GET /v1/deals/{id}` (anyone).
pub(crate) async fn get_deal(app: &App, deal: &str) -> Result<HttpResponse, Error> {
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    let view = app.store.deal(deal).await?;
    Ok(json(StatusCode::OK, &DealJson::from(&view)))
}

/// `PATCH /v1/deals/{id}` (the deal's merchant).
pub(crate) async fn patch_deal(
    app: &App,
    parts: &Parts,
    deal: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    let merchant = app.merchant(parts)?;
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    let change: DealChangeBody = parse_json(body)?;
    if let Some(asked) = change.allocation.as_deref() {
        let asked = AllocationName::parse(asked)?;
        // Issue #14: registrations open when a deal is posted, and a draw
        // ranks exactly those registrants, so the allocation never changes.
        let current = app.store.deal(deal).await?;
        if current.merchant != merchant {
            return Err(Error::Forbidden("only the deal's merchant may change it"));
        }
        let is_raffle = current.raffle.is_some();
        if (asked == AllocationName::Raffle) != is_raffle {
            return Err(Error::Invalid {
                field: "allocation",
                reason: "cannot change once the deal is posted: its registrations are open",
            });
        }
    }
    change.check_not_empty()?;
    let change = DealChange {
        add_stock: change.add_stock,
        ends_at: change
            .ends_at
            .map(|ends_at| parse_time(&ends_at, "ends_at"))
            .transpose()?,
        paused: change.paused,
    };
    let view = app.store.update_deal(merchant, deal, change).await?;
    Ok(json(StatusCode::OK, &DealJson::from(&view)))
}

/// `GET /v1/feed?limit=&cursor=` (anyone): live and upcoming deals, newest
/// first; `cursor` is the last deal id of the previous page.
pub(crate) async fn feed(app: &App, parts: &Parts) -> Result<HttpResponse, Error> {
    let mut limit = FEED_LIMIT_DEFAULT;
    let mut cursor: Option<DealId> = None;
    for (name, value) in query(parts) {
        match &*name {
            "limit" => limit = parse_limit(&value, FEED_LIMIT_MAX)?,
            "cursor" => {
                cursor =
                    Some(value.parse().map_err(|_| {
                        Error::BadRequest(Cow::Borrowed("cursor is not a feed cursor"))
                    })?)
            }
            other => return Err(unknown_parameter(other, "limit, cursor")),
        }
    }
    let mut deals = Vec::with_capacity(limit);
    let mut scanned = 0;
    let mut next_cursor = None;
    loop {
        let page = app.store.deals_newest_first(cursor, limit).await?;
        let full = page.len() == limit;
        scanned += page.len();
        cursor = page.last().map(|deal| deal.id);
        deals.extend(
            page.into_iter()
                .filter(|deal| deal.status != DealStatus::Ended),
        );
        if deals.len() >= limit {
            deals.truncate(limit);
            next_cursor = deals.last().map(|deal| deal.id);
            break;
        }
        if !full {
            break;
        }
        if scanned >= FEED_SCAN_MAX {
            next_cursor = cursor;
            break;
        }
    }
    let mut merchants: Vec<(MerchantId, String, Option<Rating>)> = Vec::new();
    for deal in &deals {
        if !merchants.iter().any(|(id, _, _)| *id == deal.merchant) {
            let name = app
                .store
                .merchant(deal.merchant)
                .await?
                .map_or_else(String::new, |merchant| merchant.name);
            merchants.push((deal.merchant, name, app.store.rating(deal.merchant).await?));
        }
    }
    let cards: Vec<CardJson<'_>> = deals
        .iter()
        .map(|deal| {
            let (name, rating) = merchants
                .iter()
                .find(|(id, _, _)| *id == deal.merchant)
                .map_or(("", None), |(_, name, rating)| (name.as_str(), *rating));
            CardJson::new(deal, name, rating)
        })
        .collect();
    #[derive(Serialize)]
    struct Feed<'a> {
        cards: Vec<CardJson<'a>>,
        next_cursor: Option<Text<DealId>>,
    }
    Ok(json(
        StatusCode::OK,
        &Feed {
            cards,
            next_cursor: next_cursor.map(Text),
        },
    ))
}

/// `GET /v1/feed/stream` (anyone): Server-Sent Events, see [`crate::feed`].
/// Resumes after the `Last-Event-ID` header's id, else after a
/// `lastEventId` query parameter's; any other parameter is ignored.
pub(crate) fn feed_stream(app: &App, parts: &Parts) -> Result<hyper::Response<FeedBody>, Error> {
    let header = parts
        .headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let last_event_id = header.or_else(|| {
        super::query(parts)
            .find(|(name, _)| name == "lastEventId")
            .map(|(_, value)| value.into_owned())
    });
    let body = app.feed.subscribe(last_event_id.as_deref())?;
    let mut response = hyper::Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies (nginx) must pass events on at once rather than buffer them.
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    Ok(response)
}

/// `GET /v1/merchants/me` (merchant): who the token names, and its rating.
pub(crate) async fn merchant_me(app: &App, parts: &Parts) -> Result<HttpResponse, Error> {
    let id = app.merchant(parts)?;
    let merchant = app
        .store
        .merchant(id)
        .await?
        .ok_or(crate::error::unknown(Entity::Merchant))?;
    Ok(json(
        StatusCode::OK,
        &MerchantJson {
            id: Text(merchant.id),
            name: &merchant.name,
            rating: RatingJson::new(app.store.rating(id).await?),
        },
    ))
}
