//! The crate's one error type and the one place where errors become HTTP.
//!
//! [`Error`] covers what can go wrong with a request (engine refusals,
//! bad input, authentication, admission) and with starting or stopping a
//! server. [`Error::http`] is the single mapping from an error to the
//! contract's status and `code`; [`Error::into_response`] spells it as the
//! contract's body `{"error": {"code": …, "message": …}}`. The refusals of
//! a burst (sold out, limit reached, funds, not started, ended, paused,
//! rate limited, overloaded) have pre-serialized bodies, so turning the
//! rejected majority away costs no formatting and no allocation.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use flashsale_engine::{EngineError, Entity};
use flashsale_journal::JournalError;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

/// What a client or an operator is told went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ----- request outcomes --------------------------------------------------
    /// A refusal or failure of the engine; mapped variant by variant.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The body is not JSON at all.
    #[error("malformed JSON: {0}")]
    MalformedJson(#[source] serde_json::Error),
    /// The request is well-formed HTTP and JSON but not what the endpoint
    /// takes (wrong types, missing fields, a missing header, a bad query).
    #[error("{0}")]
    BadRequest(Cow<'static, str>),
    /// A field that is missing, of the wrong type or out of range, or that
    /// parses but fails validation (a money or time string).
    #[error("{field} {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// A body field the endpoint does not take (a typo must not succeed
    /// silently); `takes` lists the fields it does (none for an endpoint
    /// named by its path alone).
    #[error("unknown field {field:?}; {}", what_it_takes(takes))]
    UnknownField {
        field: String,
        takes: &'static [crate::wire::Field],
    },
    /// The request body stopped arriving, or arrived slower than the
    /// configured minimum rate (`--body-read-timeout-ms`,
    /// `--body-rate-min-bytes-per-second`).
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// A `Transfer-Encoding` other than plain `chunked` (RFC 9112 §6.1).
    #[error("Transfer-Encoding {0:?} is not supported; send chunked or Content-Length")]
    NotImplemented(String),
    /// No token, or a bad, forged or expired one.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A valid token of the wrong role, or not the owner.
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such path, or an id that cannot name anything.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this path does not take that method (allowed: {allow})")]
    MethodNotAllowed { allow: &'static str },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("too many requests; retry after {retry_after_seconds} s")]
    RateLimited { retry_after_seconds: u64 },
    /// Shed: too many requests in flight, or the journal is not ready.
    #[error("the server is overloaded; retry shortly")]
    Overloaded,
    /// Not ready to serve (readiness probe): the journal is recovering or
    /// a configured store is unreachable.
    #[error("not ready: {0}")]
    NotReady(Cow<'static, str>),
    /// The journal could not make an accepted change durable.
    #[error("the change could not be made durable")]
    Journal(#[source] JournalError),
    /// Redis mode: Redis did not answer in time or the connection is
    /// down (the outcome of a change is unknown; the client's retry with
    /// the same `Idempotency-Key` resolves it), a buy kept meeting moving
    /// stock, or the books are behind: [`flashsale_redis::Error`], whose
    /// refusals arrive as [`Error::Engine`].
    #[error(transparent)]
    Redis(flashsale_redis::Error),

    // ----- starting and stopping -----------------------------------------------
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot reach Redis at {target}")]
    RedisConnect {
        target: String,
        #[source]
        source: Box<Error>,
    },
    /// Redis mode: the Redis persists nothing (or will not say how it
    /// persists) and `--allow-volatile-redis` was not given.
    #[error(
        "the Redis at {target} would lose acknowledged orders when it restarts ({found}); \
         use appendonly yes with appendfsync always (scripts/redis.sh does), or start with \
         --allow-volatile-redis (FLASHSALE_ALLOW_VOLATILE_REDIS) to accept that"
    )]
    RedisVolatile { target: String, found: String },
    /// Redis mode: the namespace is already served by nodes of another
    /// layout (`--redis-shards`), another `--secret` / `--admin-token`, or
    /// a build with another key layout (`keys=`).
    #[error(
        "the Redis namespace at {target} is served by nodes with {found}, this node has {ours}: \
         every node of a deployment needs the same --redis-shards, --secret and --admin-token, \
         and a build of the same key layout (keys=); \
         to start a new deployment instead, give another --redis-namespace, or delete the key \
         {key} (and the namespace's other keys) when no node serves it"
    )]
    RedisLayout {
        target: String,
        key: String,
        found: String,
        ours: String,
    },
    /// The data directory cannot be created, is not a directory, or cannot
    /// be written to.
    #[error("cannot use the data directory {dir}")]
    DataDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file kept in the data directory (the secret, the admin token).
    #[error("cannot use {path}")]
    DataFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate random bytes for a secret")]
    Random(#[source] getrandom::Error),
    #[error("cannot open the journal in {dir}")]
    JournalOpen {
        dir: PathBuf,
        #[source]
        source: JournalError,
    },
    #[error("cannot start the Postgres order sink")]
    OrderSink(#[source] crate::order_sink::OrderSinkError),
    #[error("cannot close the journal")]
    JournalClose(#[source] JournalError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("a server task failed")]
    Task(#[source] tokio::task::JoinError),
    /// A deal's QR code could not be drawn (`crate::qr`).
    #[error("cannot draw a QR code: {0}")]
    QrCode(String),
}

impl From<flashsale_store::StoreError> for Error {
    /// A store's failure in the gateway's terms, variant by variant.
    fn from(error: flashsale_store::StoreError) -> Error {
        use flashsale_store::StoreError as Store;
        match error {
            Store::Engine(refusal) => Error::Engine(refusal),
            Store::Journal(error) => Error::Journal(error),
            Store::Redis(error) => Error::from(error),
            Store::Task(error) => Error::Task(error),
        }
    }
}

impl From<flashsale_redis::Error> for Error {
    /// A Redis-mode failure in the gateway's terms: the engine's refusals
    /// stay refusals, the rest keep their Redis meaning.
    fn from(error: flashsale_redis::Error) -> Error {
        use flashsale_redis::Error as Redis;
        match error {
            Redis::Engine(refusal) => Error::Engine(refusal),
            Redis::Config(message) => Error::Config(message),
            Redis::Random(error) => Error::Random(error),
            Redis::EarlierEpoch => Error::Unauthorized(crate::auth::EARLIER_EPOCH),
            other => Error::Redis(other),
        }
    }
}

/// Seconds a client is asked to wait in `Retry-After` when shed or at
/// capacity.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// How an [`Error`] is spelled in HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub retry_after_seconds: Option<u64>,
}

const fn http(status: StatusCode, code: &'static str) -> HttpError {
    HttpError {
        status,
        code,
        retry_after_seconds: None,
    }
}

const fn http_retry(status: StatusCode, code: &'static str, seconds: u64) -> HttpError {
    HttpError {
        status,
        code,
        retry_after_seconds: Some(seconds),
    }
}

/// `{"error":{"code":…,"message":…}}` built at compile time.
macro_rules! error_body {
    ($code:literal, $message:literal) => {
        concat!(
            r#"{"error":{"code":""#,
            $code,
            r#"","message":""#,
            $message,
            r#""}}"#
        )
        .as_bytes()
    };
}

impl Error {
    /// The one mapping from an error to the contract's status and code.
    pub fn http(&self) -> HttpError {
        use StatusCode as S;
        match self {
            Error::Engine(engine) => match engine {
                EngineError::SoldOut => http(S::CONFLICT, "sold_out"),
                EngineError::PurchaseLimitReached { .. } => {
                    http(S::CONFLICT, "purchase_limit_reached")
                }
                EngineError::InsufficientFunds => http(S::PAYMENT_REQUIRED, "insufficient_funds"),
                EngineError::NotRegistered => http(S::FORBIDDEN, "not_registered"),
                EngineError::NotStarted => http(S::TOO_EARLY, "not_started"),
                EngineError::DealEnded => http(S::GONE, "deal_ended"),
                // The merchant's decision, not an outage: nothing to retry.
                EngineError::DealPaused => http(S::CONFLICT, "deal_paused"),
                EngineError::RegistrationClosed => http(S::UNPROCESSABLE_ENTITY, "invalid"),
                EngineError::HoldExpired { .. } | EngineError::HoldReleased { .. } => {
                    http(S::CONFLICT, "hold_expired")
                }
                EngineError::HoldSettled { .. } => http(S::CONFLICT, "hold_settled"),
                EngineError::AlreadyReviewed => http(S::CONFLICT, "already_reviewed"),
                EngineError::IdempotencyKeyReused => {
                    http(S::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
                }
                EngineError::NotFound(_) => http(S::NOT_FOUND, "not_found"),
                EngineError::Forbidden(_) => http(S::FORBIDDEN, "forbidden"),
                EngineError::Invalid { .. } => http(S::UNPROCESSABLE_ENTITY, "invalid"),
                EngineError::CapacityReached { .. } => {
                    http_retry(S::SERVICE_UNAVAILABLE, "unavailable", RETRY_AFTER_SECONDS)
                }
                // Only replay can meet this; a request never should.
                EngineError::Inconsistent { .. } => http(S::INTERNAL_SERVER_ERROR, "internal"),
            },
            Error::MalformedJson(_) => http(S::BAD_REQUEST, "malformed_json"),
            Error::BadRequest(_) => http(S::BAD_REQUEST, "bad_request"),
            Error::Invalid { .. } | Error::UnknownField { .. } => {
                http(S::UNPROCESSABLE_ENTITY, "invalid")
            }
            Error::RequestTimeout => http(S::REQUEST_TIMEOUT, "request_timeout"),
            Error::NotImplemented(_) => http(S::NOT_IMPLEMENTED, "not_implemented"),
            Error::Unauthorized(_) => http(S::UNAUTHORIZED, "unauthorized"),
            Error::Forbidden(_) => http(S::FORBIDDEN, "forbidden"),
            Error::NotFound(_) => http(S::NOT_FOUND, "not_found"),
            Error::MethodNotAllowed { .. } => http(S::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Error::PayloadTooLarge { .. } => http(S::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::RateLimited {
                retry_after_seconds,
            } => http_retry(S::TOO_MANY_REQUESTS, "rate_limited", *retry_after_seconds),
            Error::Overloaded => {
                http_retry(S::SERVICE_UNAVAILABLE, "overloaded", RETRY_AFTER_SECONDS)
            }
            Error::Journal(_) | Error::NotReady(_) | Error::Redis(_) => {
                http_retry(S::SERVICE_UNAVAILABLE, "unavailable", RETRY_AFTER_SECONDS)
            }
            Error::Config(_)
            | Error::RedisConnect { .. }
            | Error::RedisVolatile { .. }
            | Error::RedisLayout { .. }
            | Error::DataDir { .. }
            | Error::DataFile { .. }
            | Error::Random(_)
            | Error::JournalOpen { .. }
            | Error::OrderSink(_)
            | Error::JournalClose(_)
            | Error::Bind { .. }
            | Error::Task(_)
            | Error::QrCode(_) => http(S::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The body of the refusals a burst produces by the thousand, spelled
    /// once at compile time.
    fn constant_body(&self) -> Option<&'static [u8]> {
        Some(match self {
            Error::Engine(EngineError::SoldOut) => {
                error_body!("sold_out", "the deal is sold out")
            }
            Error::Engine(EngineError::PurchaseLimitReached { .. }) => error_body!(
                "purchase_limit_reached",
                "the purchase limit per shopper is reached"
            ),
            Error::Engine(EngineError::InsufficientFunds) => error_body!(
                "insufficient_funds",
                "the wallet's available balance is too low"
            ),
            Error::Engine(EngineError::NotStarted) => {
                error_body!("not_started", "the deal has not started yet")
            }
            Error::Engine(EngineError::DealEnded) => {
                error_body!("deal_ended", "the deal has ended")
            }
            Error::Engine(EngineError::DealPaused) => {
                error_body!("deal_paused", "the deal is paused by its merchant")
            }
            Error::Overloaded => {
                error_body!("overloaded", "the server is overloaded; retry shortly")
            }
            Error::RateLimited { .. } => {
                error_body!("rate_limited", "too many requests; see Retry-After")
            }
            _ => return None,
        })
    }

    /// The contract's error response for this error.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let HttpError {
            status,
            code,
            retry_after_seconds,
        } = self.http();
        let body = match self.constant_body() {
            Some(body) => Bytes::from_static(body),
            None => {
                let message = match &self {
                    // Internal details stay in the log, not on the wire.
                    Error::Journal(_) => Cow::Borrowed("the change could not be made durable"),
                    Error::Redis(flashsale_redis::Error::Redis(error)) => {
                        tracing::warn!(%error, "a Redis call failed");
                        Cow::Owned(self.to_string())
                    }
                    _ => Cow::Owned(self.to_string()),
                };
                let mut body = serde_json::json!({ "error": { "code": code, "message": message } });
                // A retried payment whose first reply was lost learns its
                // order here (docs/api.md, "Holds").
                if let Error::Engine(EngineError::HoldSettled { order, .. }) = &self {
                    body["error"]["order_id"] = serde_json::Value::String(order.to_string());
                }
                Bytes::from(body.to_string())
            }
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(seconds) = retry_after_seconds {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        match self {
            Error::MethodNotAllowed { allow } => {
                headers.insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
            }
            // RFC 6750 §3: a 401 names the scheme the client must use.
            Error::Unauthorized(_) => {
                headers.insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            // The rest of the body is not read, so the connection cannot be
            // reused: say so, or a client would send its next request into
            // a closing socket.
            Error::PayloadTooLarge { .. } | Error::RequestTimeout | Error::NotImplemented(_) => {
                headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// `this body takes a, b, c`: the names of a body's fields, for
/// [`Error::UnknownField`]; a body of no field says what it accepts.
fn what_it_takes(fields: &[crate::wire::Field]) -> String {
    if fields.is_empty() {
        return "this endpoint takes no field: send no body, or {}".to_owned();
    }
    let names: Vec<&str> = fields.iter().map(|field| field.name).collect();
    format!("this body takes {}", names.join(", "))
}

/// `NotFound` for an id that does not parse: it cannot name anything.
pub(crate) fn unknown(entity: Entity) -> Error {
    Error::Engine(EngineError::NotFound(entity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_bodies_are_valid_json_of_the_contract_shape() {
        let errors = [
            Error::Engine(EngineError::SoldOut),
            Error::Engine(EngineError::PurchaseLimitReached { limit: 1 }),
            Error::Engine(EngineError::InsufficientFunds),
            Error::Engine(EngineError::NotStarted),
            Error::Engine(EngineError::DealEnded),
            Error::Engine(EngineError::DealPaused),
            Error::Overloaded,
            Error::RateLimited {
                retry_after_seconds: 3,
            },
        ];
        for error in errors {
            let code = error.http().code;
            let body = error.constant_body().expect("a constant body");
            let value: serde_json::Value = serde_json::from_slice(body).expect("valid JSON");
            assert_eq!(value["error"]["code"], code);
            assert!(value["error"]["message"].is_string());
        }
    }

    #[test]
    fn engine_refusals_map_to_the_contract() {
        let cases = [
            (EngineError::DealPaused, 409, "deal_paused"),
            (EngineError::RegistrationClosed, 422, "invalid"),
            (
                EngineError::HoldReleased {
                    hold: flashsale_engine::HoldId(1),
                },
                409,
                "hold_expired",
            ),
            (
                EngineError::CapacityReached { bound: "holds_max" },
                503,
                "unavailable",
            ),
            (EngineError::NotStarted, 425, "not_started"),
            (EngineError::NotRegistered, 403, "not_registered"),
        ];
        for (engine, status, code) in cases {
            let http = Error::Engine(engine).http();
            assert_eq!((http.status.as_u16(), http.code), (status, code));
        }
    }

    /// A step that finds the shopper's account made in another epoch
    /// than the token refuses the token as `auth` refuses a token of an
    /// earlier epoch: the same status, code and message.
    #[test]
    fn an_account_of_another_epoch_is_the_tokens_epoch_refusal() {
        let error = Error::from(flashsale_store::StoreError::from(
            flashsale_redis::Error::EarlierEpoch,
        ));
        let http = error.http();
        assert_eq!((http.status.as_u16(), http.code), (401, "unauthorized"));
        assert_eq!(error.to_string(), crate::auth::EARLIER_EPOCH);
    }

    #[test]
    fn unauthorized_answers_name_the_bearer_scheme() {
        let response = Error::Unauthorized("the token is not valid").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[hyper::header::WWW_AUTHENTICATE],
            "Bearer"
        );
        let forbidden = Error::Forbidden("wrong role").into_response();
        assert!(
            !forbidden
                .headers()
                .contains_key(hyper::header::WWW_AUTHENTICATE)
        );
    }

    #[test]
    fn shed_answers_carry_retry_after_and_a_pause_does_not() {
        assert!(
            Error::Overloaded
                .into_response()
                .headers()
                .contains_key(RETRY_AFTER)
        );
        let paused = Error::Engine(EngineError::DealPaused).into_response();
        assert_eq!(paused.status(), StatusCode::CONFLICT);
        assert!(!paused.headers().contains_key(RETRY_AFTER));
    }
}
