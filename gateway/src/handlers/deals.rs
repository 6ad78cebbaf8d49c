//! Deals and the feed: creating, reading and changing a deal, its QR
//! code, the feed's pages (newest first, or ranked: [`top_score`]) and
//! live stream, a merchant's own view.

use std::borrow::Cow;

use bytes::Bytes;
use flashsale_engine::{
    Allocation, DealChange, DealId, DealStatus, DealView, DrawSeed, Entity, MerchantId, NewDeal,
    Rating,
};
use http_body_util::Full;
use hyper::StatusCode;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use hyper::http::request::Parts;
use serde::Serialize;

use crate::app::{App, HttpResponse};
use crate::error::Error;
use crate::feed::{FEED_DEALS_MAX, FeedBody};
use crate::qr;
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
    let merchant = app.merchant(parts).await?;
    let deal: NewDealBody = parse_json(body)?;
    let allocation = deal.allocation.as_deref().map(AllocationName::parse);
    let raffle = allocation.transpose()? == Some(AllocationName::Raffle);
    let allocation = if raffle {
        // The seed is the gateway's, from the OS RNG; the engine
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
    let merchant = app.merchant(parts).await?;
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    let change: DealChangeBody = parse_json(body)?;
    if let Some(asked) = change.allocation.as_deref() {
        let asked = AllocationName::parse(asked)?;
        // Registrations open when a deal is posted, and a draw
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

/// Which image of a deal's QR code `GET /v1/deals/{id}/qr.*` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QrFormat {
    Svg,
    Png,
}

/// How long a browser or proxy may keep a deal's QR image, in seconds: the
/// link changes only with `--public-url`.
pub(crate) const QR_CACHE_SECONDS: u32 = 3_600;

/// `GET /v1/deals/{id}/qr.svg` and `qr.png` (anyone: the code is printed
/// for shoppers): the storefront's link to the deal as a QR code
/// ([`crate::qr`]); `404 not_found` for an unknown deal.
pub(crate) async fn deal_qr(
    app: &App,
    deal: &str,
    format: QrFormat,
) -> Result<HttpResponse, Error> {
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    let view = app.store.deal(deal).await?;
    let public_url = app.public_url.get().ok_or(Error::NotReady(Cow::Borrowed(
        "the server is not listening yet",
    )))?;
    let link = qr::deal_link(public_url, view.id);
    let (body, content_type) = match format {
        QrFormat::Svg => (Bytes::from(qr::svg(&link)?), "image/svg+xml"),
        QrFormat::Png => (Bytes::from(qr::png(&link)?), "image/png"),
    };
    let mut response = hyper::Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={QR_CACHE_SECONDS}"))
            .unwrap_or(HeaderValue::from_static("no-cache")),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // An SVG opened on its own runs nothing: it has no script, and may not.
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static("default-src 'none'"),
    );
    Ok(response)
}

/// The feed's order: `newest` first (the default, pages by `cursor`) or
/// `top`, ranked by [`top_score`] (one page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedOrder {
    Newest,
    Top,
}

/// What a merchant's rating counts for before its first review: 3.00 of 5,
/// in hundredths, the middle of the scale.
pub(crate) const UNREVIEWED_RATING_HUNDREDTHS: u64 = 300;

/// A deal's place in `GET /v1/feed?order=top`: its merchant's average
/// review score in hundredths ([`Rating::average_hundredths`], 100 to 500,
/// [`UNREVIEWED_RATING_HUNDREDTHS`] before the first review) times the
/// deal's popularity plus one (buyers + registrations + shares, plus one so
/// that a new deal of a well-rated merchant is not last). Higher first.
/// Saturating: the product of two `u64` counts cannot overflow an answer.
pub(crate) fn top_score(deal: &DealView, rating: Option<Rating>) -> u64 {
    let rating = rating
        .and_then(|rating| rating.average_hundredths())
        .unwrap_or(UNREVIEWED_RATING_HUNDREDTHS);
    rating.saturating_mul(deal.popularity().saturating_add(1))
}

/// The feed's deals ranked by [`top_score`], at most `limit`: of the newest
/// [`FEED_DEALS_MAX`] deals, those not ended, read where the feed's stream
/// reads them (`FeedSource`: the engine's atomics, or in Redis mode the
/// numbers and ratings the node's poller last gathered); equal scores keep
/// the newest first.
fn top_deals(app: &App, limit: usize) -> Vec<DealView> {
    let source = app.store.feed_source();
    let mut ranked: Vec<(u64, DealView)> = source
        .deals(FEED_DEALS_MAX)
        .into_iter()
        .filter(|deal| deal.status != DealStatus::Ended)
        .map(|deal| (top_score(&deal, source.rating(deal.merchant)), deal))
        .collect();
    // A stable sort: ties stay newest first.
    ranked.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    ranked.truncate(limit);
    ranked.into_iter().map(|(_, deal)| deal).collect()
}

/// `GET /v1/feed?limit=&cursor=&order=` (anyone): live and upcoming deals,
/// newest first (`cursor` is the last deal id of the previous page), or
/// with `order=top` the first `limit` ranked by [`top_score`] (no cursor:
/// `400 bad_request`; `next_cursor` is null).
pub(crate) async fn feed(app: &App, parts: &Parts) -> Result<HttpResponse, Error> {
    let mut limit = FEED_LIMIT_DEFAULT;
    let mut cursor: Option<DealId> = None;
    let mut order = FeedOrder::Newest;
    for (name, value) in query(parts) {
        match &*name {
            "limit" => limit = parse_limit(&value, FEED_LIMIT_MAX)?,
            "cursor" => {
                cursor =
                    Some(value.parse().map_err(|_| {
                        Error::BadRequest(Cow::Borrowed("cursor is not a feed cursor"))
                    })?)
            }
            "order" => {
                order = match &*value {
                    "newest" => FeedOrder::Newest,
                    "top" => FeedOrder::Top,
                    _ => {
                        return Err(Error::BadRequest(Cow::Borrowed(
                            "order must be newest or top",
                        )));
                    }
                }
            }
            other => return Err(unknown_parameter(other, "limit, cursor, order")),
        }
    }
    let (deals, next_cursor) = match order {
        FeedOrder::Newest => newest_page(app, cursor, limit).await?,
        FeedOrder::Top if cursor.is_some() => {
            return Err(Error::BadRequest(Cow::Borrowed(
                "cursor pages the newest-first feed; order=top is one page",
            )));
        }
        FeedOrder::Top => (top_deals(app, limit), None),
    };
    feed_answer(app, &deals, next_cursor).await
}

/// One page of the newest-first feed from `cursor`: the deals not ended,
/// and where the next page starts.
async fn newest_page(
    app: &App,
    mut cursor: Option<DealId>,
    limit: usize,
) -> Result<(Vec<DealView>, Option<DealId>), Error> {
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
    Ok((deals, next_cursor))
}

/// `{cards, next_cursor}` for `deals`, each with its merchant's name and
/// rating.
async fn feed_answer(
    app: &App,
    deals: &[DealView],
    next_cursor: Option<DealId>,
) -> Result<HttpResponse, Error> {
    let mut merchants: Vec<(MerchantId, String, Option<Rating>)> = Vec::new();
    for deal in deals {
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
    let id = app.merchant(parts).await?;
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
            external_id: merchant.external_id.as_deref(),
            rating: RatingJson::new(app.store.rating(id).await?),
        },
    ))
}
