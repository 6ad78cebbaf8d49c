//! Rows in Postgres's binary `COPY … FROM STDIN (FORMAT binary)` format,
//! written straight from the engine's values (no per-field allocation).
//!
//! The stream is an 11-byte signature, an int32 flags word and an int32
//! header-extension length (both 0); then per row an int16 field count and
//! per field an int32 byte length (-1 for NULL) and the value's binary
//! form; then the int16 trailer -1. All integers are big-endian. Values:
//! `text` is its UTF-8 bytes (a digest as its 64 lowercase hex digits); `int8`/`int4` big-endian; `bool` one byte;
//! `timestamptz` int8 microseconds since 2000-01-01 UTC; `numeric` is
//! ndigits, weight, sign, dscale (int16 each), then ndigits base-10000
//! digits (int16 each), most significant first.

use std::fmt::Display;
use std::io::Write;

use flashsale_engine::{Digest, Money, Timestamp};

use crate::error::OrderSinkError;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Milliseconds from the Unix epoch to Postgres's (2000-01-01 UTC).
const POSTGRES_EPOCH_MILLIS: i64 = 946_684_800_000;
/// `numeric` sign words.
const NUMERIC_POSITIVE: u16 = 0x0000;
const NUMERIC_NEGATIVE: u16 = 0x4000;
/// Decimal places of every amount (fen): `numeric(18,2)`.
const MONEY_SCALE: i16 = 2;
/// Base-10000 digits of the largest `|fen|` (`u64::MAX` fen is < 10^18
/// yuan: 5 integer digits) plus the one fractional digit.
const MONEY_DIGITS_MAX: usize = 6;

/// One table's rows for one batch. The buffer holds one batch: at most
/// `batch_events_max` events' rows (an order is about 120 bytes).
pub(super) struct CopyRows {
    buf: Vec<u8>,
    rows: usize,
}

impl CopyRows {
    pub(super) fn new() -> CopyRows {
        let mut buf = Vec::new();
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension
        CopyRows { buf, rows: 0 }
    }

    /// Starts a row of `fields` fields.
    pub(super) fn row(&mut self, fields: i16) {
        self.rows += 1;
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        // Every fixed-size value is at most 8 bytes.
        self.buf
            .extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(bytes);
    }

    /// A `text` field: `value` as `Display` writes it.
    pub(super) fn text(
        &mut self,
        column: &'static str,
        value: impl Display,
    ) -> Result<(), OrderSinkError> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0i32.to_be_bytes());
        write!(self.buf, "{value}").map_err(|_| OrderSinkError::OutOfRange(column))?;
        let written = self.buf.len() - at - 4;
        let length = i32::try_from(written).map_err(|_| OrderSinkError::OutOfRange(column))?;
        self.buf[at..at + 4].copy_from_slice(&length.to_be_bytes());
        Ok(())
    }

    /// A `text` field holding `digest` as 64 lowercase hex digits, as the
    /// API prints seeds, commitments and hashes.
    pub(super) fn hex(&mut self, digest: &Digest) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.buf
            .extend_from_slice(&(2 * digest.len() as i32).to_be_bytes());
        for byte in digest {
            self.buf.push(DIGITS[usize::from(byte >> 4)]);
            self.buf.push(DIGITS[usize::from(byte & 0xf)]);
        }
    }

    pub(super) fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    pub(super) fn int8(&mut self, value: i64) {
        self.field(&value.to_be_bytes());
    }

    pub(super) fn int4(&mut self, value: i32) {
        self.field(&value.to_be_bytes());
    }

    pub(super) fn bool(&mut self, value: bool) {
        self.field(&[u8::from(value)]);
    }

    pub(super) fn timestamptz(
        &mut self,
        column: &'static str,
        at: Timestamp,
    ) -> Result<(), OrderSinkError> {
        let micros = postgres_micros(at).ok_or(OrderSinkError::OutOfRange(column))?;
        self.int8(micros);
        Ok(())
    }

    /// A `numeric` field of scale 2 holding `amount`.
    pub(super) fn money(&mut self, amount: Money) {
        let (header, digits) = numeric(amount.fen());
        let digits = &digits[..usize::from(header[0])];
        self.buf
            .extend_from_slice(&((8 + 2 * digits.len()) as i32).to_be_bytes());
        for word in header.iter().chain(digits) {
            self.buf.extend_from_slice(&word.to_be_bytes());
        }
    }

    /// The complete stream, trailer included.
    pub(super) fn finish(mut self) -> CopyStream {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        CopyStream {
            bytes: self.buf,
            rows: self.rows,
        }
    }
}

/// A complete binary `COPY` stream.
pub(super) struct CopyStream {
    pub(super) bytes: Vec<u8>,
    pub(super) rows: usize,
}

/// Microseconds since 2000-01-01 UTC; `None` past `i64`.
fn postgres_micros(at: Timestamp) -> Option<i64> {
    at.millis()
        .checked_sub(POSTGRES_EPOCH_MILLIS)?
        .checked_mul(1000)
}

/// `fen / 100` as a binary `numeric` of scale 2: the header words
/// (ndigits, weight, sign, dscale, as their 16-bit patterns) and the
/// base-10000 digits (the first ndigits of the array), normalised as
/// Postgres stores them (no leading or trailing zero digits; zero has none).
fn numeric(fen: i64) -> ([u16; 4], [u16; MONEY_DIGITS_MAX]) {
    let sign = if fen < 0 {
        NUMERIC_NEGATIVE
    } else {
        NUMERIC_POSITIVE
    };
    let magnitude = fen.unsigned_abs();
    let mut whole = magnitude / 100;
    // The two decimal places are the first fractional base-10000 digit's
    // two high decimal digits: 0.07 is 0700 × 10000^-1.
    let fraction = (magnitude % 100) as u16 * 100;
    // At most MONEY_DIGITS_MAX - 1 whole digits (see there), least
    // significant first, then turned around.
    let mut digits = [0_u16; MONEY_DIGITS_MAX];
    let mut whole_digits = 0;
    while whole > 0 {
        digits[whole_digits] = (whole % 10_000) as u16;
        whole /= 10_000;
        whole_digits += 1;
    }
    digits[..whole_digits].reverse();
    // Weight: the power of 10000 of the first digit.
    let mut weight = whole_digits as i16 - 1;
    digits[whole_digits] = fraction;
    let mut length = whole_digits + 1;
    while length > 0 && digits[length - 1] == 0 {
        length -= 1;
    }
    // The first whole digit is never 0; without whole digits, neither is
    // a kept fraction digit.
    if length == 0 {
        weight = 0;
    }
    let header = [length as u16, weight as u16, sign, MONEY_SCALE as u16];
    (header, digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(fen: i64) -> (i16, i16, u16, i16, Vec<u16>) {
        let ([ndigits, weight, sign, dscale], digits) = numeric(fen);
        let digits = digits[..usize::from(ndigits)].to_vec();
        (ndigits as i16, weight as i16, sign, dscale as i16, digits)
    }

    #[test]
    fn numeric_matches_postgres_binary_form() {
        assert_eq!(words(0), (0, 0, 0, 2, vec![]));
        assert_eq!(words(1), (1, -1, 0, 2, vec![100])); // 0.01
        assert_eq!(words(50), (1, -1, 0, 2, vec![5000])); // 0.50
        assert_eq!(words(99_900), (1, 0, 0, 2, vec![999])); // 999.00
        assert_eq!(words(99_907), (2, 0, 0, 2, vec![999, 700])); // 999.07
        assert_eq!(words(1_000_000), (1, 1, 0, 2, vec![1])); // 10000.00
        assert_eq!(words(1_000_001), (3, 1, 0, 2, vec![1, 0, 100])); // 10000.01
        assert_eq!(
            words(123_456_789_012_345_678), // 1234567890123456.78
            (5, 3, 0, 2, vec![1234, 5678, 9012, 3456, 7800])
        );
        assert_eq!(words(-150), (2, 0, 0x4000, 2, vec![1, 5000])); // -1.50
        assert_eq!(words(i64::MIN).4.len(), MONEY_DIGITS_MAX);
    }

    #[test]
    fn timestamps_count_from_2000_in_microseconds() {
        assert_eq!(postgres_micros(Timestamp(POSTGRES_EPOCH_MILLIS)), Some(0));
        assert_eq!(postgres_micros(Timestamp(0)), Some(-946_684_800_000_000));
        assert_eq!(
            postgres_micros(Timestamp(1_795_262_400_123)),
            Some(848_577_600_123_000)
        );
        assert_eq!(postgres_micros(Timestamp(i64::MAX)), None);
        assert_eq!(postgres_micros(Timestamp(i64::MIN)), None);
    }

    #[test]
    fn rows_are_framed_as_postgres_reads_them() {
        let mut rows = CopyRows::new();
        rows.row(3);
        rows.text("id", format_args!("o_{:x}", 31)).unwrap();
        rows.null();
        rows.bool(true);
        let stream = rows.finish();
        assert_eq!(stream.rows, 1);
        let bytes = stream.bytes;
        let mut expected = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        expected.extend_from_slice(&[0, 3, 0, 0, 0, 4, b'o', b'_', b'1', b'f']);
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0xff, 0xff]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn a_digest_is_framed_as_its_lowercase_hex_text() {
        let mut digest = [0_u8; 32];
        digest[0] = 0xab;
        digest[31] = 0x0f;
        let mut rows = CopyRows::new();
        rows.row(1);
        rows.hex(&digest);
        let bytes = rows.finish().bytes;
        let field = &bytes[19 + 2..bytes.len() - 2];
        let mut expected = 64_i32.to_be_bytes().to_vec();
        expected.extend_from_slice(format!("ab{}0f", "00".repeat(30)).as_bytes());
        assert_eq!(field, expected);
    }

    /// Round trip through Postgres (only with `DATABASE_URL`): the amounts
    /// and times read back as their exact text.
    #[tokio::test]
    async fn postgres_reads_back_the_exact_values() {
        use sqlx::Connection;
        let Some(url) = flashsale_testkit::postgres_url() else {
            return;
        };
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TEMP TABLE copy_check (n int4, amount numeric(18,2), at timestamptz); \
             SET TIME ZONE 'UTC'",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let cases = [
            (0, "0.00", 0, "1970-01-01 00:00:00+00"),
            (1, "0.01", 1, "1970-01-01 00:00:00.001+00"),
            (50, "0.50", 946_684_800_000, "2000-01-01 00:00:00+00"),
            (
                99_900,
                "999.00",
                946_684_799_999,
                "1999-12-31 23:59:59.999+00",
            ),
            (
                99_907,
                "999.07",
                1_795_262_400_123,
                "2026-11-21 12:00:00.123+00",
            ),
            (1_000_000, "10000.00", -1, "1969-12-31 23:59:59.999+00"),
            (1_000_001, "10000.01", 0, "1970-01-01 00:00:00+00"),
            (
                999_999_999_999_999,
                "9999999999999.99",
                0,
                "1970-01-01 00:00:00+00",
            ),
            (
                1_000_000_000_000_000, // MONEY_MAX
                "10000000000000.00",
                0,
                "1970-01-01 00:00:00+00",
            ),
        ];
        let mut rows = CopyRows::new();
        for (n, &(fen, _, millis, _)) in cases.iter().enumerate() {
            rows.row(3);
            rows.int4(n as i32);
            rows.money(Money::from_fen(fen).unwrap());
            rows.timestamptz("at", Timestamp(millis)).unwrap();
        }
        let mut copy = conn
            .copy_in_raw("COPY copy_check (n, amount, at) FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        copy.send(rows.finish().bytes).await.unwrap();
        assert_eq!(copy.finish().await.unwrap(), cases.len() as u64);
        let found: Vec<(String, String)> =
            sqlx::query_as("SELECT amount::text, at::text FROM copy_check ORDER BY n")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let expected: Vec<(String, String)> = cases
            .iter()
            .map(|&(_, amount, _, at)| (amount.to_owned(), at.to_owned()))
            .collect();
        assert_eq!(found, expected);
    }
}
