//! One server's shared state and the path of every request through it.
//!
//! [`App::handle`] is the hyper service: route, check the request's
//! framing headers (RFC 9112: `Host`, `Transfer-Encoding`), read the body
//! if the endpoint takes one (holding a body-read slot, within its time
//! bound), count the request in flight (or shed it), refuse state changes
//! while the store (journal or Redis) is not ready, run the endpoint's
//! handler, turn an error into the contract's body, and record the route's status and
//! latency. The whole request is bounded by `request_timeout`. Every
//! answer but the feed's stream is one `Full` buffer; the stream is a
//! [`FeedBody`]; the two travel as one `Either`, so a buy's answer is not
//! boxed. The helpers here are what handlers share: who is calling
//! ([`App::shopper`] and friends, which also apply the per-token rate
//! limit; [`single_header`]).

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flashsale_engine::{Answer, MerchantId, ShopperId};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, TRANSFER_ENCODING,
};
use hyper::http::request::Parts;
use hyper::{Request, Response};

use crate::admission::Admission;
use crate::auth::{Caller, Signer, Verified, bearer};
use crate::error::Error;
use crate::feed::{FeedBody, FeedHub};
use crate::handlers;
use crate::openapi::OpenApi;
use crate::order_sink::OrderSinkHandle;
use crate::pages::Pages;
use crate::router::{Endpoint, Matched, Router};
use crate::telemetry::{Checkout, Telemetry};
use crate::wire;
use flashsale_engine::rules::token_in_force;
use flashsale_store::Store;

/// The token of the request's one `Authorization: Bearer` header. Errors:
/// `400` for two headers, `401` for none or another scheme.
fn bearer_token(parts: &Parts) -> Result<&str, Error> {
    let header = single_header(&parts.headers, &AUTHORIZATION, "Authorization")?
        .ok_or(Error::Unauthorized("a bearer token is required"))?;
    header
        .to_str()
        .ok()
        .and_then(bearer)
        .ok_or(Error::Unauthorized(
            "the Authorization header must be `Bearer <token>`",
        ))
}

/// The answer of a handler: one buffer.
pub(crate) type HttpResponse = Response<Full<Bytes>>;
/// The body of every answer: one buffer, or the feed's stream.
pub(crate) type ResponseBody = Either<Full<Bytes>, FeedBody>;

pub(crate) struct App {
    /// Where the sale's state lives: this process, or Redis.
    pub store: Arc<Store>,
    /// `GET /v1/openapi.json`, prepared once.
    pub openapi: OpenApi,
    pub signer: Signer,
    pub admission: Admission,
    pub telemetry: Telemetry,
    pub router: Router,
    pub body_limits: wire::BodyLimits,
    /// One request's whole time, headers to answer.
    pub request_timeout: std::time::Duration,
    pub token_ttl_seconds: i64,
    /// Credited to each wallet created by `POST /v1/shoppers`.
    pub signup_credit: flashsale_engine::Money,
    /// The feed's live stream: latest cards and subscribers.
    pub feed: Arc<FeedHub>,
    pub pages: Pages,
    /// The storefront's address as shoppers reach it, the base of the deals'
    /// QR links: `--public-url`, or set from the listening address when
    /// the server starts serving.
    pub public_url: std::sync::OnceLock<url::Url>,
    /// The Postgres order sink when `--database-url` is set; taken at
    /// shutdown to be joined.
    pub order_sink: std::sync::Mutex<Option<OrderSinkHandle>>,
    /// With `--database-url`: whether an order is in Postgres yet.
    pub books: Option<Arc<crate::order_sink::BooksLookup>>,
    /// `--trusted-proxies`: whose forwarding headers name the client.
    pub proxies: crate::proxies::TrustedProxies,
    /// `--idp-jwks`: the platform's identity provider, whose JWTs name
    /// shoppers and merchants by the platform's user ids.
    pub idp: Option<Arc<crate::idp::Idp>>,
}

impl App {
    /// The service of every connection.
    pub(crate) async fn handle(
        self: Arc<App>,
        request: Request<Incoming>,
        peer: IpAddr,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let response = match self.router.route(&parts.method, parts.uri.path()) {
            Ok(matched) => {
                let endpoint = matched.endpoint;
                let served = tokio::time::timeout(
                    self.request_timeout,
                    self.serve(matched, &parts, body, peer),
                )
                .await;
                let response = match served {
                    Ok(Ok(response)) => response,
                    Ok(Err(error)) => error.into_response().map(Either::Left),
                    // Past the whole request's bound: shed, and close the
                    // connection, whose body may be half read.
                    Err(_elapsed) => {
                        let mut response = Error::Overloaded.into_response();
                        response
                            .headers_mut()
                            .insert(CONNECTION, HeaderValue::from_static("close"));
                        response.map(Either::Left)
                    }
                };
                self.telemetry
                    .request(endpoint, response.status().as_u16(), started.elapsed());
                response
            }
            Err(error) => error.into_response().map(Either::Left),
        };
        Ok(response)
    }

    async fn serve(
        &self,
        matched: Matched<'_>,
        parts: &Parts,
        body: Incoming,
        peer: IpAddr,
    ) -> Result<Response<ResponseBody>, Error> {
        let Matched { endpoint, id } = matched;
        check_framing(parts)?;
        if !endpoint.takes_query() {
            handlers::no_query(parts)?;
        }
        // The body arrives before the request counts in flight, so clients
        // that send slowly hold a body-read slot (a smaller bound of its
        // own), never an in-flight one.
        let body = if endpoint.takes_body() {
            let _reading = self.admission.enter_body_read()?;
            wire::read_body(&parts.headers, body, &self.body_limits).await?
        } else {
            Bytes::new()
        };
        let _in_flight = if endpoint.is_ops() {
            None
        } else {
            Some(self.admission.enter()?)
        };
        if endpoint.changes_state()
            && let Some(reason) = self.store.not_ready()
        {
            return Err(Error::NotReady(Cow::Borrowed(reason)));
        }
        let response = match endpoint {
            // The stream's body outlives this request's in-flight count.
            Endpoint::FeedStream => {
                return handlers::feed_stream(self, parts)
                    .map(|response| response.map(Either::Right));
            }
            Endpoint::Buy => {
                let result = handlers::buy(self, parts, id, &body).await;
                self.telemetry.buy(Checkout::OneTap, &result);
                result.map(|(response, _)| response)
            }
            Endpoint::CreateHold => handlers::create_hold(self, parts, id, &body).await,
            Endpoint::PayHold => {
                // A payment settles an order or is refused (a second one
                // is `hold_settled`): never a replay.
                let result = handlers::pay_hold(self, parts, id, &body)
                    .await
                    .map(|response| (response, Answer::Settled));
                self.telemetry.buy(Checkout::HoldPayment, &result);
                result.map(|(response, _)| response)
            }
            Endpoint::ReleaseHold => handlers::release_hold(self, parts, id, &body).await,
            Endpoint::GetDeal => handlers::get_deal(self, id).await,
            Endpoint::DealQrSvg => handlers::deal_qr(self, id, handlers::QrFormat::Svg).await,
            Endpoint::DealQrPng => handlers::deal_qr(self, id, handlers::QrFormat::Png).await,
            Endpoint::Feed => handlers::feed(self, parts).await,
            Endpoint::GetOrder => handlers::get_order(self, parts, id).await,
            Endpoint::ListOrders => handlers::list_orders(self, parts).await,
            Endpoint::GetWallet => handlers::get_wallet(self, parts).await,
            Endpoint::Register => handlers::register(self, parts, id, &body).await,
            Endpoint::GetDraw => handlers::get_draw(self, parts, id).await,
            Endpoint::GetDrawMe => handlers::get_draw_me(self, parts, id).await,
            Endpoint::GetDrawRegistrants => handlers::get_draw_registrants(self, parts, id).await,
            Endpoint::CreateMerchant => handlers::create_merchant(self, parts, &body).await,
            Endpoint::CreateShopper => {
                let client = self.proxies.client(peer, &parts.headers);
                handlers::create_shopper(self, &body, client).await
            }
            Endpoint::CreateShoppersBulk => {
                handlers::create_shoppers_bulk(self, parts, &body).await
            }
            Endpoint::CreditWallet => handlers::credit_wallet(self, parts, id, &body).await,
            Endpoint::CreditExternalWallet => {
                handlers::credit_external_wallet(self, parts, id, &body).await
            }
            Endpoint::IssueMerchantToken
            | Endpoint::IssueShopperToken
            | Endpoint::RevokeMerchantTokens
            | Endpoint::RevokeShopperTokens => {
                handlers::account_tokens(self, parts, endpoint, id, &body).await
            }
            Endpoint::CreateDeal => handlers::create_deal(self, parts, &body).await,
            Endpoint::PatchDeal => handlers::patch_deal(self, parts, id, &body).await,
            Endpoint::Review => handlers::review(self, parts, id, &body).await,
            Endpoint::Share => handlers::share(self, parts, id, &body).await,
            Endpoint::MerchantMe => handlers::merchant_me(self, parts).await,
            Endpoint::ExchangeToken => handlers::exchange_token(self, parts, &body).await,
            Endpoint::OpenApi => Ok(self.openapi.response()),
            Endpoint::Storefront => Ok(self.pages.storefront.response()),
            Endpoint::MerchantPage => Ok(self.pages.merchant.response()),
            Endpoint::Healthz => Ok(handlers::healthz()),
            Endpoint::Readyz => Ok(handlers::readyz(self)),
            Endpoint::Metrics => Ok(handlers::metrics(self)),
        };
        response.map(|response| response.map(Either::Left))
    }

    // ----- who is calling ------------------------------------------------------

    /// The verified caller, within its rate limit. Two `Authorization`
    /// headers are `400 bad_request`: which one counts is not the server's
    /// guess to make. A JWT goes to the identity provider when one is
    /// configured (`crate::idp`); any other token is the engine's own,
    /// refused when its account revoked it.
    pub(crate) async fn caller(&self, parts: &Parts) -> Result<Caller, Error> {
        Ok(self.caller_in_epoch(parts).await?.0)
    }

    /// [`App::caller`] and the epoch its token was verified under (the
    /// store's then), which the store's steps acting for a shopper check
    /// the account against (a node learns a new epoch only at its next
    /// poll).
    async fn caller_in_epoch(&self, parts: &Parts) -> Result<(Caller, u64), Error> {
        let token = bearer_token(parts)?;
        let epoch = self.store.epoch();
        let caller = match &self.idp {
            Some(idp) if crate::idp::is_jwt(token) => {
                self.platform_caller(idp, token, epoch).await?.0
            }
            _ => self.not_revoked(self.signer.verify(token, self.now_seconds(), epoch)?)?,
        };
        self.admission.check_caller(caller)?;
        Ok((caller, epoch))
    }

    /// The account of a platform token and the token's `exp` (Unix
    /// seconds), within its rate limit; for the token exchange. Errors:
    /// `401` for a token that is not a valid platform JWT, and for every
    /// token without `--idp-jwks` (no platform token is accepted then).
    pub(crate) async fn platform_account(&self, parts: &Parts) -> Result<(Caller, i64), Error> {
        let token = bearer_token(parts)?;
        let Some(idp) = &self.idp else {
            return Err(Error::Unauthorized(
                "this deployment trusts no identity provider (--idp-jwks): \
                 no platform token is accepted",
            ));
        };
        let token = Some(token)
            .filter(|token| crate::idp::is_jwt(token))
            .ok_or(Error::Unauthorized(
                "the Authorization header must be `Bearer <the platform's JWT>`",
            ))?;
        let (caller, expires_at) = self.platform_caller(idp, token, self.store.epoch()).await?;
        self.admission.check_caller(caller)?;
        Ok((caller, expires_at))
    }

    /// The account of a platform token and the token's `exp`: remembered
    /// if this token was verified before, else verified and its `sub`'s
    /// account looked up, made at its first use (a new shopper gets
    /// `--signup-credit` like a signup); `epoch`: the store's, read by the
    /// caller.
    async fn platform_caller(
        &self,
        idp: &crate::idp::Idp,
        token: &str,
        epoch: u64,
    ) -> Result<(Caller, i64), Error> {
        let now = self.now_seconds();
        if let Some(remembered) = idp.remembered(token, now, epoch) {
            return Ok(remembered);
        }
        let identity = idp.verify(token, now).await?;
        let blank = match identity.role {
            crate::idp::Role::Shopper => "shopper",
            crate::idp::Role::Merchant => "merchant",
        };
        let name = identity
            .name
            .clone()
            .filter(|name| {
                flashsale_engine::check_name(name, "name", flashsale_engine::engine::NAME_CHARS_MAX)
                    .is_ok()
            })
            .unwrap_or_else(|| handlers::name_of(&identity.external_id, blank));
        let caller = match identity.role {
            crate::idp::Role::Shopper => {
                let (shopper, _made) = self
                    .store
                    .link_shopper(
                        &identity.external_id,
                        &name,
                        self.signup_credit,
                        handlers::SIGNUP_CREDIT_REFERENCE,
                    )
                    .await?;
                Caller::Shopper(shopper.id)
            }
            crate::idp::Role::Merchant => {
                let (merchant, _made) = self
                    .store
                    .link_merchant(&identity.external_id, &name)
                    .await?;
                Caller::Merchant(merchant.id)
            }
        };
        idp.remember(token, &identity, caller, epoch);
        Ok((caller, identity.expires_at))
    }

    pub(crate) async fn shopper(&self, parts: &Parts) -> Result<ShopperId, Error> {
        Ok(self.shopper_in_epoch(parts).await?.0)
    }

    /// [`App::shopper`] and the epoch its token was verified under, for
    /// the store's calls that act for the shopper.
    pub(crate) async fn shopper_in_epoch(&self, parts: &Parts) -> Result<(ShopperId, u64), Error> {
        match self.caller_in_epoch(parts).await? {
            (Caller::Shopper(id), epoch) => Ok((id, epoch)),
            _ => Err(Error::Forbidden("only a shopper may do this")),
        }
    }

    pub(crate) async fn merchant(&self, parts: &Parts) -> Result<MerchantId, Error> {
        match self.caller(parts).await? {
            Caller::Merchant(id) => Ok(id),
            _ => Err(Error::Forbidden("only a merchant may do this")),
        }
    }

    pub(crate) async fn admin(&self, parts: &Parts) -> Result<(), Error> {
        match self.caller(parts).await? {
            Caller::Admin => Ok(()),
            _ => Err(Error::Forbidden("only the admin may do this")),
        }
    }

    /// The caller of a verified token, unless its account revoked it: a
    /// token issued before the account's not-before time as this node
    /// knows it (`rules::token_in_force`; no I/O, one relaxed load while
    /// no account was ever revoked) is `401`. In Redis mode a node whose
    /// copy of the times is stale answers `503` instead.
    fn not_revoked(&self, verified: Verified) -> Result<Caller, Error> {
        let Some(account) = verified.caller.account() else {
            return Ok(verified.caller);
        };
        let not_before = self.store.tokens_not_before(account)?;
        if token_in_force(verified.issued_at, not_before) {
            Ok(verified.caller)
        } else {
            Err(Error::Unauthorized(
                "the token was revoked; the admin can issue a new one",
            ))
        }
    }

    /// A fresh token for a new account, valid for `--token-ttl-hours`.
    pub(crate) fn issue(&self, caller: Caller) -> String {
        self.issue_for(caller, self.token_ttl_seconds).0
    }

    /// A fresh token for `caller`, issued now and valid for `ttl_seconds`;
    /// with its expiry (Unix seconds).
    pub(crate) fn issue_for(&self, caller: Caller, ttl_seconds: i64) -> (String, i64) {
        let now = self.store.now();
        let expires_at = now.millis().div_euclid(1000).saturating_add(ttl_seconds);
        let token = self
            .signer
            .issue(caller, now, expires_at, self.store.epoch());
        (token, expires_at)
    }

    /// A fresh token valid for `--token-ttl-hours` but not past
    /// `expires_at` (Unix seconds), and when it expires.
    pub(crate) fn issue_until(&self, caller: Caller, expires_at: i64) -> (String, i64) {
        let ttl_seconds = expires_at
            .saturating_sub(self.now_seconds())
            .min(self.token_ttl_seconds);
        self.issue_for(caller, ttl_seconds)
    }

    fn now_seconds(&self) -> i64 {
        self.store.now().millis().div_euclid(1000)
    }

    /// Why the server is not ready, if it is not: the store (journal or
    /// Redis), shedding load (a request was shed in the last second), the configured order
    /// sink failing (its real error), or the sink having met a row already
    /// in Postgres with other content (until restart: the books disagree
    /// and an operator must look).
    pub(crate) fn not_ready(&self) -> Option<Cow<'static, str>> {
        if let Some(reason) = self.store.not_ready() {
            return Some(Cow::Borrowed(reason));
        }
        if self.admission.shedding() {
            return Some(Cow::Borrowed(
                "shedding load: requests in flight or bodies arriving are at their bound",
            ));
        }
        let Ok(sink) = self.order_sink.lock() else {
            return Some(Cow::Borrowed("the order sink's state is poisoned"));
        };
        let sink = sink.as_ref()?;
        if let Some(error) = sink.last_error() {
            let lag = sink.lag();
            return Some(Cow::Owned(format!(
                "the order sink is failing: {error}; {} record(s) wait for Postgres, the oldest for {:.1} s",
                lag.records, lag.seconds
            )));
        }
        let (_, conflicts, last) = sink.set_aside();
        (conflicts > 0).then(|| {
            Cow::Owned(format!(
                "the order sink met {conflicts} row(s) already in Postgres with other content; last set aside: {}",
                last.unwrap_or_default()
            ))
        })
    }

    /// What the order sink set aside, if anything: readiness names it
    /// without failing (the later orders still reach the books).
    pub(crate) fn set_aside(&self) -> Option<String> {
        let sink = self.order_sink.lock().ok()?;
        let (count, _, last) = sink.as_ref()?.set_aside();
        (count > 0).then(|| {
            format!(
                "{count} journal event(s) set aside in order_sink_set_aside; last: {}",
                last.unwrap_or_default()
            )
        })
    }
}

/// The value of a header that may appear at most once; a second one is
/// `400 bad_request` (docs/api.md, "Errors"). No allocation.
pub(crate) fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    spelled: &'static str,
) -> Result<Option<&'a HeaderValue>, Error> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Error::BadRequest(Cow::Owned(format!(
            "the {spelled} header must appear once"
        ))));
    }
    Ok(first)
}

/// The framing rules of RFC 9112 that hyper leaves to the server: an
/// HTTP/1.1 request names its `Host` exactly once (§3.2), and the only
/// `Transfer-Encoding` taken is plain `chunked` (§6.1: a coding the server
/// does not understand is `501`; `gzip, chunked` would otherwise be read
/// as if the gzip were not there). Checked before the body is read, so
/// nothing changes.
fn check_framing(parts: &Parts) -> Result<(), Error> {
    let host = single_header(&parts.headers, &HOST, "Host")?;
    if host.is_none() && parts.version == hyper::Version::HTTP_11 {
        return Err(Error::BadRequest(Cow::Borrowed(
            "an HTTP/1.1 request must have a Host header (RFC 9112 section 3.2)",
        )));
    }
    let mut codings = parts.headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        let plain_chunked = coding
            .to_str()
            .is_ok_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        if !plain_chunked || codings.next().is_some() {
            let spelled: Vec<&str> = parts
                .headers
                .get_all(TRANSFER_ENCODING)
                .iter()
                .map(|value| value.to_str().unwrap_or("(not text)"))
                .collect();
            return Err(Error::NotImplemented(spelled.join(", ")));
        }
    }
    Ok(())
}
