//! One server's shared state and the path of every request through it.
//!
//! [`App::handle`] is the hyper service: route, count the request in
//! flight (or shed it), refuse state changes while the store (journal or
//! Redis) is not ready, run the endpoint's handler, turn an error into the contract's
//! body, and record the route's status and latency. Every answer but the
//! feed's stream is one `Full` buffer; the stream is a [`FeedBody`]; the
//! two travel as one `Either`, so a buy's answer is not boxed. The helpers here are
//! what handlers share: who is calling ([`App::shopper`] and friends, which
//! also apply the per-token rate limit) and reading a bounded body.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flashsale_engine::{Answer, MerchantId, ShopperId};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::http::request::Parts;
use hyper::{Request, Response};

use crate::admission::Admission;
use crate::auth::{Caller, Signer, bearer};
use crate::error::Error;
use crate::feed::{FeedBody, FeedHub};
use crate::handlers;
use crate::openapi::OpenApi;
use crate::order_sink::OrderSinkHandle;
use crate::pages::Pages;
use crate::router::{Endpoint, Matched, Router};
use crate::store::Store;
use crate::telemetry::{Checkout, Telemetry};
use crate::wire;

/// The answer of a handler: one buffer.
pub(crate) type HttpResponse = Response<Full<Bytes>>;
/// The body of every answer: one buffer, or the feed's stream.
pub(crate) type ResponseBody = Either<Full<Bytes>, FeedBody>;

pub(crate) struct App {
    /// Where the sale's state lives: this process, or Redis.
    pub store: Arc<Store>,
    pub signer: Signer,
    pub admission: Admission,
    pub telemetry: Telemetry,
    pub router: Router,
    pub body_bytes_max: usize,
    pub token_ttl_seconds: i64,
    /// Credited to each wallet created by `POST /v1/shoppers`.
    pub signup_credit: flashsale_engine::Money,
    /// The feed's live stream: latest cards and subscribers.
    pub feed: Arc<FeedHub>,
    pub pages: Pages,
    /// `GET /v1/openapi.json`, prepared once.
    pub openapi: OpenApi,
    /// The Postgres order sink when `--database-url` is set; taken at
    /// shutdown to be joined.
    pub order_sink: std::sync::Mutex<Option<OrderSinkHandle>>,
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
                let response = match self.serve(matched, &parts, body, peer).await {
                    Ok(response) => response,
                    Err(error) => error.into_response().map(Either::Left),
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
        let _in_flight = if endpoint.is_ops() {
            None
        } else {
            Some(self.admission.enter()?)
        };
        if endpoint.changes_state()
            && let Some(reason) = self.store.not_ready()
        {
            return Err(Error::NotReady(reason));
        }
        let response = match endpoint {
            // The stream's body outlives this request's in-flight count.
            Endpoint::FeedStream => {
                return handlers::feed_stream(self).map(|response| response.map(Either::Right));
            }
            Endpoint::Buy => {
                let result = handlers::buy(self, parts, id, body).await;
                self.telemetry.buy(Checkout::OneTap, &result);
                result.map(|(response, _)| response)
            }
            Endpoint::CreateHold => handlers::create_hold(self, parts, id, body).await,
            Endpoint::PayHold => {
                // A payment settles an order or is refused (a second one
                // is `hold_settled`): never a replay.
                let result = handlers::pay_hold(self, parts, id)
                    .await
                    .map(|response| (response, Answer::Settled));
                self.telemetry.buy(Checkout::HoldPayment, &result);
                result.map(|(response, _)| response)
            }
            Endpoint::ReleaseHold => handlers::release_hold(self, parts, id).await,
            Endpoint::GetDeal => handlers::get_deal(self, id).await,
            Endpoint::Feed => handlers::feed(self, parts).await,
            Endpoint::GetOrder => handlers::get_order(self, parts, id).await,
            Endpoint::ListOrders => handlers::list_orders(self, parts).await,
            Endpoint::GetWallet => handlers::get_wallet(self, parts).await,
            Endpoint::Register => handlers::register(self, parts, id).await,
            Endpoint::CreateMerchant => handlers::create_merchant(self, parts, body).await,
            Endpoint::CreateShopper => handlers::create_shopper(self, parts, body, peer).await,
            Endpoint::CreateShoppersBulk => handlers::create_shoppers_bulk(self, parts, body).await,
            Endpoint::CreditWallet => handlers::credit_wallet(self, parts, id, body).await,
            Endpoint::CreateDeal => handlers::create_deal(self, parts, body).await,
            Endpoint::PatchDeal => handlers::patch_deal(self, parts, id, body).await,
            Endpoint::Review => handlers::review(self, parts, id, body).await,
            Endpoint::Share => handlers::share(self, parts, id).await,
            Endpoint::MerchantMe => handlers::merchant_me(self, parts).await,
            Endpoint::Storefront => Ok(self.pages.storefront.response()),
            Endpoint::MerchantPage => Ok(self.pages.merchant.response()),
            Endpoint::OpenApi => Ok(self.openapi.response()),
            Endpoint::Healthz => Ok(handlers::healthz()),
            Endpoint::Readyz => Ok(handlers::readyz(self)),
            Endpoint::Metrics => Ok(handlers::metrics(self)),
        };
        response.map(|response| response.map(Either::Left))
    }

    // ----- who is calling ------------------------------------------------------

    /// The verified caller, within its rate limit.
    pub(crate) fn caller(&self, parts: &Parts) -> Result<Caller, Error> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(Error::Unauthorized("a bearer token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(bearer)
            .ok_or(Error::Unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ))?;
        let caller = self.signer.verify(token, self.now_seconds())?;
        self.admission.check_caller(caller)?;
        Ok(caller)
    }

    pub(crate) fn shopper(&self, parts: &Parts) -> Result<ShopperId, Error> {
        match self.caller(parts)? {
            Caller::Shopper(id) => Ok(id),
            _ => Err(Error::Forbidden("only a shopper may do this")),
        }
    }

    pub(crate) fn merchant(&self, parts: &Parts) -> Result<MerchantId, Error> {
        match self.caller(parts)? {
            Caller::Merchant(id) => Ok(id),
            _ => Err(Error::Forbidden("only a merchant may do this")),
        }
    }

    pub(crate) fn admin(&self, parts: &Parts) -> Result<(), Error> {
        match self.caller(parts)? {
            Caller::Admin => Ok(()),
            _ => Err(Error::Forbidden("only the admin may do this")),
        }
    }

    /// A fresh token for a new account.
    pub(crate) fn issue(&self, caller: Caller) -> String {
        self.signer.issue(
            caller,
            self.now_seconds().saturating_add(self.token_ttl_seconds),
        )
    }

    fn now_seconds(&self) -> i64 {
        self.store.now().millis().div_euclid(1000)
    }

    /// Why the server is not ready, if it is not: the store (journal or
    /// Redis), or the configured order sink failing to reach Postgres.
    pub(crate) fn not_ready(&self) -> Option<&'static str> {
        if let Some(reason) = self.store.not_ready() {
            return Some(reason);
        }
        let sink_failing = self.order_sink.lock().map_or(true, |sink| {
            sink.as_ref()
                .is_some_and(|sink| sink.last_error().is_some())
        });
        sink_failing.then_some("the order sink cannot reach Postgres")
    }

    // ----- bodies ------------------------------------------------------------------

    pub(crate) async fn body(&self, parts: &Parts, body: Incoming) -> Result<Bytes, Error> {
        wire::read_body(&parts.headers, body, self.body_bytes_max).await
    }
}
