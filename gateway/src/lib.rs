//! # flashsale-gateway
//!
//! The HTTP face of the flash-sale engine: HTTP API v1 (`gateway/openapi.yaml`, `docs/api.md`) on
//! hyper 1.x (HTTP/1.1 keep-alive, tokio multi-thread runtime). It owns
//! routing, authentication, JSON in and out, admission control, the feed,
//! `/metrics`, health, graceful shutdown and configuration. Business rules
//! live in `flashsale-engine`; durability lives in `flashsale-journal`. The
//! gateway only decides *who* may ask, *whether* the server has room to
//! ask now, and *how* the answer is spelled on the wire.
//!
//! ## Layout
//! - [`config`]: `flashsale serve` flags (clap, each with an environment
//!   fallback) parsed raw into [`ServeArgs`], validated into one [`Config`].
//! - [`server`]: [`run`], [`Gateway`] and [`spawn`]: the accept loop, the
//!   connection bound, the hold-expiry and housekeeping task, graceful
//!   shutdown and closing the journal.
//! - `router` (private): path and method to an `Endpoint`, with
//!   `matchit`.
//! - `app` (private): the shared state of one server and the path of a
//!   request through it: route, check framing headers, read the body
//!   (bounded in size and time), shed, authenticate, handle, record.
//! - `handlers` (private): one function per endpoint, a file per resource
//!   (`buying`, `accounts`, `deals`, `orders`, `ops`); the buy handler is
//!   the hot path.
//! - `feed` (private): the feed's live stream (`GET /v1/feed/stream`): the
//!   sampler that coalesces changes into at most five events per deal per
//!   second, the subscriber bound, and each subscriber's bounded channel
//!   body.
//! - `pages` (private): the storefront (`/`) and merchant dashboard
//!   (`/merchant`), embedded from `gateway/assets/`, with a
//!   `Content-Security-Policy` that allows their own inline script and
//!   style by hash and nothing else; the currency symbol of the
//!   configuration goes into a meta tag of each.
//! - `qr` (private): a deal's QR code (`GET /v1/deals/{id}/qr.svg`,
//!   `qr.png`): the storefront's link to the deal under `--public-url`.
//! - `openapi` (private): the contract as an OpenAPI 3.1 document
//!   (`gateway/openapi.yaml`), embedded and served as JSON at
//!   `GET /v1/openapi.json`; a test holds it to the router's routes.
//! - [`auth`]: HMAC-signed bearer tokens and the admin token.
//! - `admission` (private): bodies arriving, requests in flight,
//!   per-token and per-address rate limits.
//! - `wire` (private): reading a body within its size and time bounds
//!   (`read`), the one strict decoding path (`decode`), the request and
//!   response bodies (`requests`, `responses`).
//! - [`error`]: [`Error`], the crate's one error type, and the single
//!   function that maps every error (engine refusals, store and books
//!   failures included) to an HTTP status and a contract code.
//! - `telemetry` (private): the process-wide Prometheus recorder and the
//!   per-route counters and histograms.
//!
//! What it calls: the store interface (`flashsale-store`: the embedded
//! engine and journal, or Redis through `flashsale-redis`), and the books
//! (`flashsale-books`: the Postgres order sink, started by
//! [`Gateway::open`] when `--database-url` is set, re-exported here as
//! [`order_sink`], and [`audit`]).
//!
//! ## Architecture invariants
//! - A state-changing request is answered `2xx` only after the store says
//!   it is durable: the journal's `durable(written())` in one-node mode,
//!   Redis' reply in multi-node mode; a refusal waits for nothing.
//! - Every bound is named and configurable ([`Config`]) and is answered
//!   with `408`, `413`, `429` or `503` + `Retry-After`, never with an
//!   unbounded queue.
//! - Nothing here holds an engine lock across an `.await`: the engine's
//!   calls are synchronous and return before the gateway awaits.
//! - Handlers do not know which store they have (`flashsale_store::Store`).
//! - The feed's stream costs the engine one sample per 200 ms, whatever the
//!   number of subscribers; no subscriber can block the sampler, the
//!   engine or another subscriber.

mod admission;
mod app;
pub mod auth;
pub mod config;
mod cors;
pub mod error;
mod feed;
mod handlers;
pub mod idp;
mod openapi;
mod pages;
mod proxies;
mod qr;
mod router;
pub mod server;
mod telemetry;
mod wire;

pub use auth::{Caller, NO_EPOCH, Signer, Verified};
pub use config::{Config, ServeArgs};
pub use error::Error;
/// The books (`flashsale-books`): the order sink, as the gateway starts it.
pub use flashsale_books as order_sink;
/// `flashsale audit` (`flashsale-books`).
pub use flashsale_books::audit;
/// The engine's time (Unix ms), as [`Signer::issue`] takes a token's issue time.
pub use flashsale_engine::Timestamp;
pub use server::{Gateway, RunningServer, run, spawn};
