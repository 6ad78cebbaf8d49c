//! Orders: reading one, listing a deal's or a shopper's, reviews and
//! shares.

use std::borrow::Cow;

use flashsale_engine::{DealId, Entity, OrderCursor, OrderId};
use hyper::StatusCode;
use hyper::http::request::Parts;
use serde::Serialize;

use crate::app::{App, HttpResponse};
use crate::auth::Caller;
use crate::error::Error;
use crate::wire::{
    OrderJson, ReviewBody, ReviewJson, Text, json, parse_id, parse_json, parse_no_fields,
};

use super::{
    ORDERS_LIMIT_DEFAULT, ORDERS_LIMIT_MAX, parse_limit, parse_order_cursor, query,
    unknown_parameter,
};

/// `POST /v1/orders/{id}/review` (the order's shopper, once): three scores
/// from 1 to 5 and an optional text, stored as given.
pub(crate) async fn review(
    app: &App,
    parts: &Parts,
    order: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    let (shopper, epoch) = app.shopper_in_epoch(parts).await?;
    let order: OrderId = parse_id(order, Entity::Order)?;
    let review: ReviewBody = parse_json(body)?;
    let review = app
        .store
        .review(shopper, order, review.scores()?, &review.text, epoch)
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
    let (shopper, epoch) = app.shopper_in_epoch(parts).await?;
    let order: OrderId = parse_id(order, Entity::Order)?;
    parse_no_fields(body)?;
    let first = app.store.share(shopper, order, epoch).await?;
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
    let caller = app.caller(parts).await?;
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
    let caller = app.caller(parts).await?;
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
