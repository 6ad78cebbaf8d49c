//! Reading one request body within its bounds: `http_body_util::Limited`
//! for the size (`413` after at most that many bytes), a deadline and a
//! minimum rate for the time (`408`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderMap};

use crate::error::Error;

/// The bounds on reading one request body (`--body-bytes-max`,
/// `--body-read-timeout-ms`, `--body-rate-min-bytes-per-second`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    pub bytes_max: usize,
    pub read_timeout: Duration,
    /// At least 1.
    pub rate_min_bytes_per_second: u64,
}

impl BodyLimits {
    /// How long a body may take once `received` bytes have arrived: the
    /// read timeout plus `received / rate_min` seconds. A stalled body
    /// gets the timeout; one that drips slower than the minimum rate runs
    /// out of time; one at or above the rate never does.
    pub(crate) fn allowance(&self, received: usize) -> Duration {
        let earned_millis = (received as u64)
            .saturating_mul(1_000)
            .checked_div(self.rate_min_bytes_per_second)
            .unwrap_or(0);
        self.read_timeout
            .saturating_add(Duration::from_millis(earned_millis))
    }
}

/// Reads a whole body within `limits`: more than `bytes_max` bytes
/// (declared or sent) is `413 payload_too_large`; a body that stops
/// arriving, or arrives slower than the minimum rate, is `408
/// request_timeout` ([`BodyLimits::allowance`]); both close the connection.
/// A body of one frame (the usual small JSON) is returned without a copy.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limits: &BodyLimits,
) -> Result<Bytes, Error> {
    let limit = limits.bytes_max;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Error::PayloadTooLarge { limit });
    }
    let started = tokio::time::Instant::now();
    let mut body = Limited::new(body, limit);
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut received = 0usize;
    loop {
        let deadline = started + limits.allowance(received);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_elapsed) => return Err(Error::RequestTimeout),
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(error))) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(Error::PayloadTooLarge { limit });
            }
            Ok(Some(Err(_))) => {
                return Err(Error::BadRequest(
                    "the request body could not be read".into(),
                ));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        received = received.saturating_add(data.len());
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            earlier => {
                if let Some(earlier) = earlier {
                    joined.extend_from_slice(&earlier);
                }
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(joined)))
}
