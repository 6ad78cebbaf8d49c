//! The wire formats' unit tests.

use std::time::Duration;

use flashsale_engine::{EngineError, Timestamp};

use super::*;
use crate::error::Error;

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
fn a_body_earns_time_at_the_minimum_rate() {
    let limits = BodyLimits {
        bytes_max: 16_384,
        read_timeout: Duration::from_secs(5),
        rate_min_bytes_per_second: 4_096,
    };
    assert_eq!(limits.allowance(0), Duration::from_secs(5));
    assert_eq!(limits.allowance(4_096), Duration::from_secs(6));
    assert_eq!(limits.allowance(16_384), Duration::from_secs(9));
    assert!(limits.allowance(usize::MAX) > Duration::from_secs(5));
}

#[test]
fn times_finer_than_a_millisecond_are_truncated_toward_the_past() {
    for (fine, kept) in [
        ("2025-06-18T12:00:00.9999Z", "2025-06-18T12:00:00.999Z"),
        ("2025-06-18T12:00:00.0001Z", "2025-06-18T12:00:00.000Z"),
        (
            "2025-06-18T12:00:00.123456789+08:00",
            "2025-06-18T04:00:00.123Z",
        ),
        ("2025-06-18T12:00:00.999000Z", "2025-06-18T12:00:00.999Z"),
        (
            "2025-06-18T12:00:00.1234567-05:30",
            "2025-06-18T17:30:00.123Z",
        ),
        ("1969-12-31T23:59:59.9999Z", "1969-12-31T23:59:59.999Z"),
    ] {
        let at = parse_time(fine, "starts_at").unwrap();
        assert_eq!(Rfc3339Utc(at).to_string(), kept, "{fine}");
    }
}

#[test]
fn money_fields_use_the_one_grammar() {
    assert_eq!(parse_money("999", "price").unwrap().to_string(), "999.00");
    for bad in ["9.999", "abc", "1e2", "1_000", ".5", "5.", "+1", "-1"] {
        assert!(
            matches!(
                parse_money(bad, "amount"),
                Err(Error::Engine(EngineError::Invalid {
                    field: "amount",
                    ..
                }))
            ),
            "{bad}"
        );
    }
}

fn invalid_field<'a, T: RequestBody<'a>>(body: &'a str) -> &'static str {
    match parse_json::<T>(body.as_bytes()) {
        Err(Error::Invalid { field, .. }) => field,
        Err(other) => panic!("{body}: expected invalid, got {other:?}"),
        Ok(_) => panic!("{body}: accepted"),
    }
}

#[test]
fn field_errors_are_invalid_naming_the_field() {
    for body in [
        r#"{"quantity": "one"}"#,
        r#"{"quantity": -1}"#,
        r#"{"quantity": 4294967297}"#,
        r#"{"quantity": 1.5}"#,
        r#"{"quantity": null}"#,
        r#"{}"#,
        r#"{"quantity": 1, "quantity": 2}"#,
    ] {
        assert_eq!(invalid_field::<QuantityBody>(body), "quantity", "{body}");
    }
    assert_eq!(
        invalid_field::<NewDealBody>(r#"{"title": "x", "price": 999.00}"#),
        "price"
    );
    assert_eq!(invalid_field::<NewDealBody>(r#"{"title": "x"}"#), "price");
    for lone in [r"\ud800", r"\udc00", r"\ud800\u0041", r"x\ud800y"] {
        let body = format!(r#"{{"title": "{lone}"}}"#);
        assert_eq!(invalid_field::<NewDealBody>(&body), "title", "{body}");
    }
    assert_eq!(
        invalid_field::<ReviewBody>(r#"{"description": 5, "delivery": true, "service": 5}"#),
        "delivery"
    );
}

#[test]
fn unknown_fields_are_named() {
    match parse_json::<NewDealBody>(br#"{"per_user_limt": 5}"#) {
        Err(Error::UnknownField { field, takes }) => {
            assert_eq!(field, "per_user_limt");
            assert_eq!(takes.len(), 9);
        }
        other => panic!("{:?}", other.err()),
    }
    let Err(error) = parse_json::<DealChangeBody>(br#"{"pause": true}"#) else {
        panic!("an unknown field was accepted");
    };
    assert_eq!(error.http().code, "invalid");
    assert!(error.to_string().contains("\"pause\""), "{error}");
    let empty: DealChangeBody = parse_json(b"{}").unwrap();
    assert!(empty.check_not_empty().is_err());
}

#[test]
fn what_is_not_a_json_object_is_malformed() {
    for body in [
        "[1]",
        "5",
        "\"x\"",
        "null",
        "{\"quantity\": 1",
        "",
        "  ",
        "{\"quantity\": 1} x",
        "quantity=1",
    ] {
        assert!(
            matches!(
                parse_json::<QuantityBody>(body.as_bytes()),
                Err(Error::MalformedJson(_))
            ),
            "{body}"
        );
    }
    let QuantityBody { quantity } = parse_json(b" \n{\"quantity\": 3} ").unwrap();
    assert_eq!(quantity, 3);
}

#[test]
fn a_body_of_no_fields_is_absent_blank_or_an_empty_object() {
    for accepted in ["", " ", " \r\n\t", "{}", " { } \n"] {
        assert!(parse_no_fields(accepted.as_bytes()).is_ok(), "{accepted:?}");
    }
    for malformed in ["[1]", "[]", "5", "\"x\"", "null", "{", "{} x", "\u{c}", "x"] {
        assert!(
            matches!(
                parse_no_fields(malformed.as_bytes()),
                Err(Error::MalformedJson(_))
            ),
            "{malformed:?}"
        );
    }
    for (body, named) in [
        (r#"{"quantity": 1}"#, "quantity"),
        (r#"{"reason": null}"#, "reason"),
    ] {
        let Err(error) = parse_no_fields(body.as_bytes()) else {
            panic!("{body} was accepted");
        };
        assert!(
            matches!(&error, Error::UnknownField { field, takes: [] } if field == named),
            "{body}: {error:?}"
        );
        assert_eq!(error.http().code, "invalid");
        assert!(error.to_string().contains("takes no field"), "{error}");
    }
}

/// Every field a body's table lists is one the struct takes (an error
/// on it names it rather than calling it unknown), and every field the
/// struct takes is listed (the required ones are named when missing).
#[test]
fn field_tables_match_their_bodies() {
    fn check<T: for<'a> RequestBody<'a>>() {
        for field in T::FIELDS {
            let body = format!(r#"{{"{}": [[]]}}"#, field.name);
            assert_eq!(invalid_field::<T>(&body), field.name);
        }
        let unknown = parse_json::<T>(br#"{"surely_not_a_field": 1}"#);
        assert!(matches!(unknown, Err(Error::UnknownField { .. })));
    }
    check::<NameBody>();
    check::<BulkShoppersBody>();
    check::<CreditBody>();
    check::<NewDealBody>();
    check::<DealChangeBody>();
    check::<QuantityBody>();
    check::<ReviewBody>();
    check::<NoFieldsBody>();
    check::<TokenBody>();
}
