//! One function per endpoint of HTTP API v1.
//!
//! Each handler checks who is calling, reads and parses its input, and
//! makes one call to the store ([`crate::store::Store`]: the engine and
//! journal, or Redis), which returns once a change is durable. Refusals
//! return at once through `?`; [`crate::error::Error::http`] spells them.
//!
//! The pages (`GET /`, `GET /merchant`) are answered by [`crate::pages`]
//! and the feed's stream by [`crate::feed`]; [`feed_stream`] only hands
//! out a subscription.
//!
//! [`buy`] is the product: one HMAC check, one rate-limit check, a
//! borrowed idempotency key, a body of a few bytes parsed in place, one
//! store call (a sold-out deal answers from one atomic load, in Redis mode
//! too), and on success one small JSON body. It logs nothing.

use std::borrow::Cow;

use flashsale_engine::{
    Allocation, Answer, DealChange, DealId, DealStatus, DrawSeed, Entity, HoldId, MerchantId,
    NewDeal, OrderCursor, OrderId, Rating, ShopperId,
};
use hyper::StatusCode;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use serde::Serialize;

use crate::app::{App, HttpResponse, single_header};
use crate::auth::Caller;
use crate::error::Error;
use crate::feed::FeedBody;
use crate::wire::{
    AccountJson, AllocationName, BulkShoppersBody, CardJson, CreditBody, DealChangeBody, DealJson,
    DrawJson, DrawMeJson, HoldJson, MerchantJson, NameBody, NewDealBody, OrderJson, QuantityBody,
    RatingJson, ReviewBody, ReviewJson, Text, WalletJson, json, parse_id, parse_json, parse_money,
    parse_no_fields, parse_time, text,
};
use flashsale_redis::DurabilityMode;

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Longest `Idempotency-Key` accepted, in bytes.
pub(crate) const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// Feed cards per page: default and largest.
const FEED_LIMIT_DEFAULT: usize = 20;
const FEED_LIMIT_MAX: usize = 100;
/// Deals the feed scans for one page at most, so a page past many ended
/// deals stays cheap; the cursor continues the scan.
const FEED_SCAN_MAX: usize = 1_000;
/// Orders per page: default and largest.
const ORDERS_LIMIT_DEFAULT: usize = 100;
const ORDERS_LIMIT_MAX: usize = 1_000;
/// Deals whose numbers `/metrics` lists, newest first.
const METRICS_DEALS_MAX: usize = 1_000;

// ----- buying ------------------------------------------------------------------

/// The `Idempotency-Key` header, borrowed: required, once, 1 to 255
/// visible ASCII characters (0x21 to 0x7e: no space, tab or other
/// control), DESIGN.md "Input rules". Anything else is `400 bad_request`.
fn idempotency_key(parts: &Parts) -> Result<&str, Error> {
    let value = single_header(&parts.headers, &IDEMPOTENCY_KEY, "Idempotency-Key")?.ok_or(
        Error::BadRequest(Cow::Borrowed("the Idempotency-Key header is required")),
    )?;
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > IDEMPOTENCY_KEY_BYTES_MAX
        || !bytes.iter().all(|byte| (0x21..=0x7e).contains(byte))
    {
        return Err(Error::BadRequest(Cow::Borrowed(
            "the Idempotency-Key must be 1 to 255 visible ASCII characters (0x21 to 0x7e)",
        )));
    }
    value
        .to_str()
        .map_err(|_| Error::BadRequest(Cow::Borrowed("the Idempotency-Key must be visible ASCII")))
}

/// `POST /v1/deals/{id}/orders`: one-tap buy. Returns the answer and
/// whether this request settled the order or replayed a retry's (for
/// `flashsale_buys_total`).
pub(crate) async fn buy(
    app: &App,
    parts: &Parts,
    deal: &str,
    body: &[u8],
) -> Result<(HttpResponse, Answer), Error> {
    let shopper = app.shopper(parts)?;
    let key = idempotency_key(parts)?;
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    let QuantityBody { quantity } = parse_json(body)?;
    let (order, answer) = app.store.buy(shopper, deal, quantity, key).await?;
    Ok((json(StatusCode::CREATED, &OrderJson::from(&order)), answer))
}

/// `POST /v1/deals/{id}/holds`: reserve stock and funds.
pub(crate) async fn create_hold(
    app: &App,
    parts: &Parts,
    deal: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    let shopper = app.shopper(parts)?;
    let key = idempotency_key(parts)?;
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    let QuantityBody { quantity } = parse_json(body)?;
    let hold = app.store.hold(shopper, deal, quantity, key).await?;
    Ok(json(StatusCode::CREATED, &HoldJson::from(&hold)))
}

/// `POST /v1/holds/{id}/payment`: no body, or `{}` ([`parse_no_fields`]).
pub(crate) async fn pay_hold(
    app: &App,
    parts: &Parts,
    hold: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    let shopper = app.shopper(parts)?;
    let hold: HoldId = parse_id(hold, Entity::Hold)?;
    parse_no_fields(body)?;
    let order = app.store.pay_hold(shopper, hold).await?;
    Ok(json(StatusCode::CREATED, &OrderJson::from(&order)))
}

/// `DELETE /v1/holds/{id}`: the stock goes back at once. No body, or `{}`.
pub(crate) async fn release_hold(
    app: &App,
    parts: &Parts,
    hold: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    let shopper = app.shopper(parts)?;
    let hold: HoldId = parse_id(hold, Entity::Hold)?;
    parse_no_fields(body)?;
    let hold = app.store.release_hold(shopper, hold).await?;
    Ok(json(StatusCode::OK, &HoldJson::from(&hold)))
}

/// Offered ranks or registrants per page of the draw's record: default
/// and largest.
const DRAW_PAGE_DEFAULT: usize = 1_000;
const DRAW_PAGE_MAX: usize = 10_000;

/// `cursor` and `limit` of a draw page (`cursor` is a position).
fn draw_page(parts: &Parts) -> Result<(u64, usize), Error> {
    let mut from = 0;
    let mut limit = DRAW_PAGE_DEFAULT;
    for (name, value) in query(parts) {
        match &*name {
            "cursor" => {
                from = value
                    .parse()
                    .map_err(|_| Error::BadRequest(Cow::Borrowed("cursor is not a draw cursor")))?
            }
            "limit" => limit = parse_limit(&value, DRAW_PAGE_MAX)?,
            other => return Err(unknown_parameter(other, "cursor, limit")),
        }
    }
    Ok((from, limit))
}

/// `GET /v1/deals/{id}/draw` (anyone): a raffle's public record (issue
/// #14): the seed commitment; once drawn the seed, the registrant count
/// and hash, and a page of the offered ranks in offer order.
pub(crate) async fn get_draw(app: &App, parts: &Parts, deal: &str) -> Result<HttpResponse, Error> {
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    let (from, limit) = draw_page(parts)?;
    let record = app.store.draw_record(deal, from, limit).await?;
    Ok(json(StatusCode::OK, &DrawJson::new(deal, record)))
}

/// `GET /v1/deals/{id}/draw/registrants` (anyone, after the draw): a page
/// of the registrants' public ids in text order, so anyone can recompute
/// the ranking; `425 not_started` before the draw.
pub(crate) async fn get_draw_registrants(
    app: &App,
    parts: &Parts,
    deal: &str,
) -> Result<HttpResponse, Error> {
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    let (from, limit) = draw_page(parts)?;
    let (shoppers, next) = app.store.draw_registrants(deal, from, limit).await?;
    #[derive(Serialize)]
    struct Registrants {
        deal_id: Text<DealId>,
        registrants: Vec<Text<ShopperId>>,
        next_cursor: Option<String>,
    }
    Ok(json(
        StatusCode::OK,
        &Registrants {
            deal_id: Text(deal),
            registrants: shoppers.into_iter().map(Text).collect(),
            next_cursor: next.map(|next| next.to_string()),
        },
    ))
}

/// `GET /v1/deals/{id}/draw/me` (shopper): the caller's own result.
pub(crate) async fn get_draw_me(
    app: &App,
    parts: &Parts,
    deal: &str,
) -> Result<HttpResponse, Error> {
    let shopper = app.shopper(parts)?;
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    let standing = app.store.draw_standing(shopper, deal).await?;
    Ok(json(
        StatusCode::OK,
        &DrawMeJson::new(deal, shopper, standing),
    ))
}

/// `POST /v1/deals/{id}/registrations`: 201 when new, 200 when already.
/// No body, or `{}`.
pub(crate) async fn register(
    app: &App,
    parts: &Parts,
    deal: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    let shopper = app.shopper(parts)?;
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    parse_no_fields(body)?;
    let created = app.store.register(shopper, deal).await?;
    #[derive(Serialize)]
    struct Registration {
        deal_id: Text<DealId>,
        shopper_id: Text<ShopperId>,
        registered: bool,
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(
        status,
        &Registration {
            deal_id: Text(deal),
            shopper_id: Text(shopper),
            registered: true,
        },
    ))
}

// ----- accounts and wallets --------------------------------------------------------

/// `POST /v1/merchants` (admin).
pub(crate) async fn create_merchant(
    app: &App,
    parts: &Parts,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    app.admin(parts)?;
    let NameBody { name } = parse_json(body)?;
    let merchant = app.store.create_merchant(&name).await?;
    let token = app.issue(Caller::Merchant(merchant.id));
    Ok(json(
        StatusCode::CREATED,
        &AccountJson {
            id: Text(merchant.id),
            name: &merchant.name,
            token: &token,
        },
    ))
}

/// The reference of the `--signup-credit` credit in every new wallet.
const SIGNUP_CREDIT_REFERENCE: &str = "signup";

/// `POST /v1/shoppers` (anyone, rate limited per address). With
/// `--signup-credit`, the new wallet is credited that amount (reference
/// `signup`) before the answer.
pub(crate) async fn create_shopper(
    app: &App,
    body: &[u8],
    peer: std::net::IpAddr,
) -> Result<HttpResponse, Error> {
    app.admission.check_address(peer)?;
    let NameBody { name } = parse_json(body)?;
    let shopper = app
        .store
        .create_shopper(&name, app.signup_credit, SIGNUP_CREDIT_REFERENCE)
        .await?;
    let token = app.issue(Caller::Shopper(shopper.id));
    Ok(json(
        StatusCode::CREATED,
        &AccountJson {
            id: Text(shopper.id),
            name: &shopper.name,
            token: &token,
        },
    ))
}

/// `POST /v1/admin/shoppers` (admin): bulk accounts for load tests.
pub(crate) async fn create_shoppers_bulk(
    app: &App,
    parts: &Parts,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    app.admin(parts)?;
    let BulkShoppersBody { count, credit } = parse_json(body)?;
    let credit = parse_money(&credit, "credit")?;
    let ids = app.store.create_shoppers(count, credit).await?;
    #[derive(Serialize)]
    struct Created {
        id: Text<ShopperId>,
        token: String,
    }
    #[derive(Serialize)]
    struct Bulk {
        shoppers: Vec<Created>,
    }
    let shoppers = ids
        .into_iter()
        .map(|id| Created {
            id: Text(id),
            token: app.issue(Caller::Shopper(id)),
        })
        .collect();
    Ok(json(StatusCode::CREATED, &Bulk { shoppers }))
}

/// `POST /v1/wallets/{shopper_id}/credits` (admin, the payment provider).
pub(crate) async fn credit_wallet(
    app: &App,
    parts: &Parts,
    shopper: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    app.admin(parts)?;
    let shopper: ShopperId = parse_id(shopper, Entity::Shopper)?;
    let CreditBody { amount, reference } = parse_json(body)?;
    let amount = parse_money(&amount, "amount")?;
    let wallet = app.store.credit_wallet(shopper, amount, &reference).await?;
    Ok(json(
        StatusCode::CREATED,
        &WalletJson::new(shopper, &wallet),
    ))
}

/// `GET /v1/wallet` (shopper).
pub(crate) async fn get_wallet(app: &App, parts: &Parts) -> Result<HttpResponse, Error> {
    let shopper = app.shopper(parts)?;
    let wallet = app.store.wallet(shopper).await?;
    Ok(json(StatusCode::OK, &WalletJson::new(shopper, &wallet)))
}

// ----- deals and the feed ------------------------------------------------------------

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
pub(crate) fn feed_stream(app: &App) -> Result<hyper::Response<FeedBody>, Error> {
    let body = app.feed.subscribe()?;
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

// ----- orders ---------------------------------------------------------------------

/// `POST /v1/orders/{id}/review` (the order's shopper, once): three scores
/// from 1 to 5 and an optional text, stored as given.
pub(crate) async fn review(
    app: &App,
    parts: &Parts,
    order: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    let shopper = app.shopper(parts)?;
    let order: OrderId = parse_id(order, Entity::Order)?;
    let review: ReviewBody = parse_json(body)?;
    let review = app
        .store
        .review(shopper, order, review.scores()?, &review.text)
        .await?;
    let rating = app.store.rating(review.merchant).await?;
    Ok(json(StatusCode::CREATED, &ReviewJson::new(&review, rating)))
}

/// `POST /v1/orders/{id}/share` (the order's shopper): 201 the first time,
/// 200 after; counts once per order toward the deal's popularity. No
/// body, or `{}`.
pub(crate) async fn share(
    app: &App,
    parts: &Parts,
    order: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    let shopper = app.shopper(parts)?;
    let order: OrderId = parse_id(order, Entity::Order)?;
    parse_no_fields(body)?;
    let first = app.store.share(shopper, order).await?;
    #[derive(Serialize)]
    struct Shared {
        order_id: Text<OrderId>,
        shared: bool,
    }
    let status = if first {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(
        status,
        &Shared {
            order_id: Text(order),
            shared: true,
        },
    ))
}

/// `GET /v1/orders/{id}` (its shopper or the deal's merchant).
pub(crate) async fn get_order(
    app: &App,
    parts: &Parts,
    order: &str,
) -> Result<HttpResponse, Error> {
    let caller = app.caller(parts)?;
    let order: OrderId = parse_id(order, Entity::Order)?;
    let order = app.store.order(order).await?;
    let allowed = match caller {
        Caller::Shopper(shopper) => order.shopper == shopper,
        Caller::Merchant(merchant) => app.store.deal(order.deal).await?.merchant == merchant,
        Caller::Admin => false,
    };
    if !allowed {
        return Err(Error::Forbidden(
            "only the order's shopper or the deal's merchant may read it",
        ));
    }
    let mut body = OrderJson::from(&order);
    if let Some(books) = &app.books {
        body.in_books = Some(books.contains(&order).await);
    }
    Ok(json(StatusCode::OK, &body))
}

/// `GET /v1/orders?deal_id=&cursor=&limit=`: a merchant lists one of its
/// deals' orders (`deal_id` required); a shopper lists its own.
pub(crate) async fn list_orders(app: &App, parts: &Parts) -> Result<HttpResponse, Error> {
    let caller = app.caller(parts)?;
    let mut deal: Option<DealId> = None;
    let mut cursor = OrderCursor::default();
    let mut limit = ORDERS_LIMIT_DEFAULT;
    for (name, value) in query(parts) {
        match &*name {
            "deal_id" => deal = Some(parse_id(&value, Entity::Deal)?),
            "cursor" => cursor = parse_order_cursor(&value)?,
            "limit" => limit = parse_limit(&value, ORDERS_LIMIT_MAX)?,
            other => return Err(unknown_parameter(other, "deal_id, cursor, limit")),
        }
    }
    let page = match caller {
        Caller::Merchant(merchant) => {
            let deal = deal.ok_or(Error::BadRequest(Cow::Borrowed(
                "a merchant lists orders of one deal: deal_id is required",
            )))?;
            if app.store.deal(deal).await?.merchant != merchant {
                return Err(Error::Forbidden(
                    "only the deal's merchant may list its orders",
                ));
            }
            app.store.orders_of_deal(deal, cursor, limit).await?
        }
        Caller::Shopper(shopper) => {
            app.store
                .orders_of_shopper(shopper, deal, cursor, limit)
                .await?
        }
        Caller::Admin => {
            return Err(Error::Forbidden(
                "orders are listed by the deal's merchant or their shopper",
            ));
        }
    };
    #[derive(Serialize)]
    struct Orders {
        orders: Vec<OrderJson>,
        next_cursor: Option<String>,
    }
    Ok(json(
        StatusCode::OK,
        &Orders {
            orders: page.orders.iter().map(OrderJson::from).collect(),
            next_cursor: page
                .next
                .map(|next| format!("{}-{}", next.shard, next.position)),
        },
    ))
}

fn parse_order_cursor(text: &str) -> Result<OrderCursor, Error> {
    let bad = || Error::BadRequest(Cow::Borrowed("cursor is not an order cursor"));
    let (shard, position) = text.split_once('-').ok_or_else(bad)?;
    Ok(OrderCursor {
        shard: shard.parse().map_err(|_| bad())?,
        position: position.parse().map_err(|_| bad())?,
    })
}

fn parse_limit(text: &str, max: usize) -> Result<usize, Error> {
    text.parse::<usize>()
        .ok()
        .filter(|limit| (1..=max).contains(limit))
        .ok_or_else(|| Error::BadRequest(format!("limit must be from 1 to {max}").into()))
}

/// A query parameter the endpoint does not take: `400 bad_request` naming
/// it, like an unknown body field is `422` (a typo must not pass silently).
fn unknown_parameter(name: &str, takes: &str) -> Error {
    Error::BadRequest(Cow::Owned(format!(
        "unknown query parameter {name:?}; this path takes {takes}"
    )))
}

/// An endpoint that takes no query parameter
/// ([`crate::router::Endpoint::takes_query`]): the first one given is
/// `400 bad_request` naming it (`?quantity=5` on a buy must not pass for a
/// quantity).
pub(crate) fn no_query(parts: &Parts) -> Result<(), Error> {
    match query(parts).next() {
        Some((name, _)) => Err(unknown_parameter(&name, "no query parameter")),
        None => Ok(()),
    }
}

fn query(parts: &Parts) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
}

// ----- operations ---------------------------------------------------------------------

pub(crate) fn healthz() -> HttpResponse {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// Ready when the journal is, the server is not shedding and the
/// configured stores are reachable and agree; `order_sink_set_aside` names
/// events the sink had to set aside, if any.
/// In multi-node mode `redis_durability` says what a `201` is worth now:
/// `{mode: always|everysec|volatile, found, waitaof}` (README, "What a
/// `201` promises").
pub(crate) fn readyz(app: &App) -> HttpResponse {
    match app.not_ready() {
        None => {
            let mut body =
                serde_json::json!({ "status": "ready", "order_sink_set_aside": app.set_aside() });
            if let Some(durability) = app.store.redis_durability() {
                body["redis_durability"] = serde_json::json!({
                    "mode": durability.mode.name(),
                    "found": durability.found,
                    "waitaof": durability.waitaof,
                });
            }
            json(StatusCode::OK, &body)
        }
        Some(reason) => Error::NotReady(reason).into_response(),
    }
}

/// `GET /metrics`: the process's series, then this server's deals.
pub(crate) fn metrics(app: &App) -> HttpResponse {
    use std::fmt::Write as _;
    app.telemetry.set_in_flight(app.admission.in_flight());
    let mut body = app.telemetry.render();
    let deals = app.store.feed_source().deals(METRICS_DEALS_MAX);
    body.push_str(
        "# HELP flashsale_deal_remaining Units of a live or upcoming deal left to sell\n",
    );
    body.push_str("# TYPE flashsale_deal_remaining gauge\n");
    for deal in deals.iter().filter(|deal| deal.status != DealStatus::Ended) {
        let _ = writeln!(
            body,
            "flashsale_deal_remaining{{deal=\"{}\"}} {}",
            deal.id, deal.counts.remaining
        );
    }
    body.push_str("# HELP flashsale_deal_sold Units of a live or upcoming deal sold\n");
    body.push_str("# TYPE flashsale_deal_sold gauge\n");
    for deal in deals.iter().filter(|deal| deal.status != DealStatus::Ended) {
        let _ = writeln!(
            body,
            "flashsale_deal_sold{{deal=\"{}\"}} {}",
            deal.id, deal.counts.sold
        );
    }
    body.push_str("# HELP flashsale_feed_subscribers Clients of the feed's live stream now\n");
    body.push_str("# TYPE flashsale_feed_subscribers gauge\n");
    let _ = writeln!(
        body,
        "flashsale_feed_subscribers {}",
        app.feed.subscribers()
    );
    body.push_str(
        "# HELP flashsale_feed_buffers_full_total Times a feed subscriber was too slow to take an event at once\n",
    );
    body.push_str("# TYPE flashsale_feed_buffers_full_total counter\n");
    let _ = writeln!(
        body,
        "flashsale_feed_buffers_full_total {}",
        app.feed.buffers_full()
    );
    let (shed_in_flight, shed_body_reads) = app.admission.shed();
    body.push_str(
        "# HELP flashsale_requests_shed_total Requests answered 503 overloaded, by the bound they met\n",
    );
    body.push_str("# TYPE flashsale_requests_shed_total counter\n");
    let _ = writeln!(
        body,
        "flashsale_requests_shed_total{{bound=\"in_flight_max\"}} {shed_in_flight}\n\
         flashsale_requests_shed_total{{bound=\"body_reads_max\"}} {shed_body_reads}"
    );
    body.push_str("# HELP flashsale_body_reads Request bodies arriving now\n");
    body.push_str("# TYPE flashsale_body_reads gauge\n");
    let _ = writeln!(body, "flashsale_body_reads {}", app.admission.body_reads());
    body.push_str(
        "# HELP flashsale_shedding 1 while requests were shed in the last second, else 0\n",
    );
    body.push_str("# TYPE flashsale_shedding gauge\n");
    let _ = writeln!(
        body,
        "flashsale_shedding {}",
        u8::from(app.admission.shedding())
    );
    body.push_str("# HELP flashsale_rate_limiter_keys Keys held by this server's rate limiters\n");
    body.push_str("# TYPE flashsale_rate_limiter_keys gauge\n");
    let _ = writeln!(
        body,
        "flashsale_rate_limiter_keys {}",
        app.admission.limiter_keys()
    );
    if let Some(durability) = app.store.redis_durability() {
        body.push_str(
            "# HELP flashsale_redis_durability 1 for what Redis' persistence promises for an acknowledged change now (always, everysec, volatile), 0 for the others\n",
        );
        body.push_str("# TYPE flashsale_redis_durability gauge\n");
        for mode in DurabilityMode::ALL {
            let _ = writeln!(
                body,
                "flashsale_redis_durability{{mode=\"{}\"}} {}",
                mode.name(),
                u8::from(mode == durability.mode)
            );
        }
    }
    text(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        body,
    )
}
