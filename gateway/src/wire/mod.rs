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

mod decode;
mod read;
mod requests;
mod responses;

pub(crate) use self::decode::*;
pub(crate) use self::read::*;
pub(crate) use self::requests::*;
pub(crate) use self::responses::*;

#[cfg(test)]
mod tests;
