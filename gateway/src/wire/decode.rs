//! The one strict decoding path of request bodies ([`RequestBody`],
//! [`parse_json`]): unknown fields, `null`s and bad values are `422`
//! naming the field; money, times and ids at the edge.

use std::str::FromStr;

use flashsale_engine::{Money, Timestamp};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::Error;

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

/// Decodes a request body, the one way every endpoint does
/// (`docs/walkthrough.md` "Input rules", `docs/api.md` "Errors"):
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
pub(crate) fn explain<'a, T: RequestBody<'a>>(bytes: &'a [u8], error: serde_json::Error) -> Error {
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
pub(crate) const TIME_ACCEPTS: &str = "must be an RFC 3339 time, like \"2025-06-18T12:00:00Z\" (any fraction of a second, truncated to milliseconds)";

/// Parses an RFC 3339 time (RFC 3339 section 5.6: any number of fraction
/// digits, any offset) to the engine's milliseconds since the Unix epoch.
/// Finer precision is truncated toward the past (`…00.9999Z` is
/// `…00.999Z`): generated clients send micro- or nanoseconds
/// (`datetime.isoformat()`, `time.Time`, `Instant.toString()`), and the
/// engine keeps milliseconds (docs/api.md, "Times").
pub(crate) fn parse_time(text: &str, field: &'static str) -> Result<Timestamp, Error> {
    let invalid = |reason| Error::Invalid { field, reason };
    let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| invalid(TIME_ACCEPTS))?;
    i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000))
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
