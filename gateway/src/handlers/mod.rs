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

use flashsale_engine::OrderCursor;
use hyper::header::HeaderName;
use hyper::http::request::Parts;

use crate::app::single_header;
use crate::error::Error;

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

mod accounts;
mod buying;
mod deals;
mod ops;
mod orders;
mod tokens;

pub(crate) use self::accounts::*;
pub(crate) use self::buying::*;
pub(crate) use self::deals::*;
pub(crate) use self::ops::*;
pub(crate) use self::orders::*;
pub(crate) use self::tokens::*;

/// Longest `Idempotency-Key` accepted, in bytes.
pub(crate) const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// Feed cards per page: default and largest.
pub(crate) const FEED_LIMIT_DEFAULT: usize = 20;
pub(crate) const FEED_LIMIT_MAX: usize = 100;
/// Deals the feed scans for one page at most, so a page past many ended
/// deals stays cheap; the cursor continues the scan.
pub(crate) const FEED_SCAN_MAX: usize = 1_000;
/// Orders per page: default and largest.
pub(crate) const ORDERS_LIMIT_DEFAULT: usize = 100;
pub(crate) const ORDERS_LIMIT_MAX: usize = 1_000;
/// Deals whose numbers `/metrics` lists, newest first.
pub(crate) const METRICS_DEALS_MAX: usize = 1_000;

/// The `Idempotency-Key` header, borrowed: required, once, 1 to 255
/// visible ASCII characters (0x21 to 0x7e: no space, tab or other
/// control), `docs/api.md` "Idempotency". Anything else is `400 bad_request`.
pub(crate) fn idempotency_key(parts: &Parts) -> Result<&str, Error> {
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

pub(crate) fn parse_order_cursor(text: &str) -> Result<OrderCursor, Error> {
    let bad = || Error::BadRequest(Cow::Borrowed("cursor is not an order cursor"));
    let (shard, position) = text.split_once('-').ok_or_else(bad)?;
    Ok(OrderCursor {
        shard: shard.parse().map_err(|_| bad())?,
        position: position.parse().map_err(|_| bad())?,
    })
}

pub(crate) fn parse_limit(text: &str, max: usize) -> Result<usize, Error> {
    text.parse::<usize>()
        .ok()
        .filter(|limit| (1..=max).contains(limit))
        .ok_or_else(|| Error::BadRequest(format!("limit must be from 1 to {max}").into()))
}

/// A query parameter the endpoint does not take: `400 bad_request` naming
/// it, like an unknown body field is `422` (a typo must not pass silently).
pub(crate) fn unknown_parameter(name: &str, takes: &str) -> Error {
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

pub(crate) fn query(parts: &Parts) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
}
