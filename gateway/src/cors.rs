//! Cross-origin calls from storefronts on origins of their own
//! (`--cors-origins`): tower-http's CORS layer around the gateway's
//! service, per the WHATWG Fetch standard's CORS protocol.
//!
//! Without `--cors-origins` nothing here runs: a browser then allows only
//! same-origin calls (the pages this server serves), and `OPTIONS` is `405`
//! like any other method a path does not take. With it, every `OPTIONS` is
//! a preflight, answered `204` with the methods and request headers a
//! storefront sends and how long the browser may keep the answer; every
//! answer to a listed origin carries `Access-Control-Allow-Origin` with
//! that origin (never `*`) and exposes the headers a client acts on. No
//! credentials are allowed: tokens travel in `Authorization`, not cookies.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Incoming};
use hyper::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::ResponseBody;

/// How long a browser may reuse a preflight's answer
/// (`Access-Control-Max-Age`).
pub(crate) const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// An answer's body behind the CORS layer, which needs bodies with a
/// default (its preflight answers are empty): boxed, one allocation per
/// answer, paid only with `--cors-origins`.
pub(crate) type CorsBody = UnsyncBoxBody<Bytes, <ResponseBody as Body>::Error>;

/// The CORS rules for `origins`; `None` when there are none.
pub(crate) fn layer(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                AUTHORIZATION,
                CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([RETRY_AFTER, WWW_AUTHENTICATE])
            .max_age(CORS_MAX_AGE),
    )
}

/// `inner` (the gateway's service for one connection) behind `cors`, with
/// preflights answered `204 No Content`.
pub(crate) fn wrap<S>(
    cors: &CorsLayer,
    inner: S,
) -> impl Service<
    Request<Incoming>,
    Response = Response<CorsBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static
where
    S: Service<Request<Incoming>, Response = Response<ResponseBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let boxed =
        inner.map_response(|response: Response<ResponseBody>| response.map(BodyExt::boxed_unsync));
    let service = cors.layer(boxed);
    tower::service_fn(move |request: Request<Incoming>| {
        let preflight = request.method() == Method::OPTIONS;
        let answer = service.clone().oneshot(request);
        async move {
            let mut response = answer.await?;
            if preflight && response.status() == StatusCode::OK {
                *response.status_mut() = StatusCode::NO_CONTENT;
            }
            Ok(response)
        }
    })
}
