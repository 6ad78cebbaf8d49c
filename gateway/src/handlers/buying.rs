//! Buying: a buy, a hold and its payment or release, registrations and
//! raffle draws. The buy handler is the hot path.

use std::borrow::Cow;

use flashsale_engine::{Answer, DealId, Entity, HoldId, ShopperId};
use hyper::StatusCode;
use hyper::http::request::Parts;
use serde::Serialize;

use crate::app::{App, HttpResponse};
use crate::error::Error;
use crate::wire::{
    DrawJson, DrawMeJson, HoldJson, OrderJson, QuantityBody, Text, json, parse_id, parse_json,
    parse_no_fields,
};

use super::{idempotency_key, parse_limit, query, unknown_parameter};

/// `POST /v1/deals/{id}/orders`: one-tap buy. Returns the answer and
/// whether this request settled the order or replayed a retry's (for
/// `flashsale_buys_total`).
pub(crate) async fn buy(
    app: &App,
    parts: &Parts,
    deal: &str,
    body: &[u8],
) -> Result<(HttpResponse, Answer), Error> {
    let (shopper, epoch) = app.shopper_in_epoch(parts).await?;
    let key = idempotency_key(parts)?;
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    let QuantityBody { quantity } = parse_json(body)?;
    let (order, answer) = app.store.buy(shopper, deal, quantity, key, epoch).await?;
    Ok((json(StatusCode::CREATED, &OrderJson::from(&order)), answer))
}

/// `POST /v1/deals/{id}/holds`: reserve stock and funds.
pub(crate) async fn create_hold(
    app: &App,
    parts: &Parts,
    deal: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    let (shopper, epoch) = app.shopper_in_epoch(parts).await?;
    let key = idempotency_key(parts)?;
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    let QuantityBody { quantity } = parse_json(body)?;
    let hold = app.store.hold(shopper, deal, quantity, key, epoch).await?;
    Ok(json(StatusCode::CREATED, &HoldJson::from(&hold)))
}

/// `POST /v1/holds/{id}/payment`: no body, or `{}` ([`parse_no_fields`]).
pub(crate) async fn pay_hold(
    app: &App,
    parts: &Parts,
    hold: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    let (shopper, epoch) = app.shopper_in_epoch(parts).await?;
    let hold: HoldId = parse_id(hold, Entity::Hold)?;
    parse_no_fields(body)?;
    let order = app.store.pay_hold(shopper, hold, epoch).await?;
    Ok(json(StatusCode::CREATED, &OrderJson::from(&order)))
}

/// `DELETE /v1/holds/{id}`: the stock goes back at once. No body, or `{}`.
pub(crate) async fn release_hold(
    app: &App,
    parts: &Parts,
    hold: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    let (shopper, epoch) = app.shopper_in_epoch(parts).await?;
    let hold: HoldId = parse_id(hold, Entity::Hold)?;
    parse_no_fields(body)?;
    let hold = app.store.release_hold(shopper, hold, epoch).await?;
    Ok(json(StatusCode::OK, &HoldJson::from(&hold)))
}

/// Offered ranks or registrants per page of the draw's record: default
/// and largest.
pub(crate) const DRAW_PAGE_DEFAULT: usize = 1_000;
pub(crate) const DRAW_PAGE_MAX: usize = 10_000;

/// `cursor` and `limit` of a draw page (`cursor` is a position).
pub(crate) fn draw_page(parts: &Parts) -> Result<(u64, usize), Error> {
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
    let shopper = app.shopper(parts).await?;
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
    let (shopper, epoch) = app.shopper_in_epoch(parts).await?;
    let deal: DealId = parse_id(deal, Entity::Deal)?;
    parse_no_fields(body)?;
    let created = app.store.register(shopper, deal, epoch).await?;
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
