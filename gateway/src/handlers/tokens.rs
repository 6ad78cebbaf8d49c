//! Recovering an account's tokens (docs/api.md "Recovering a token"): the
//! admin issues a fresh token for an existing merchant or shopper, and
//! revokes every token of one issued so far.

use flashsale_engine::{Account, EngineError, Entity, MerchantId, ShopperId};
use hyper::StatusCode;
use hyper::http::request::Parts;

use crate::app::{App, HttpResponse};
use crate::auth::Caller;
use crate::error::Error;
use crate::router::Endpoint;
use crate::wire::{
    Rfc3339Utc, TTL_SECONDS_ACCEPTS, Text, TokenBody, TokenJson, is_json_whitespace, json,
    parse_id, parse_json, parse_no_fields,
};

/// `POST` and `DELETE /v1/{merchants|shoppers}/{id}/tokens` (admin), by
/// `endpoint`: [`issue_token`] or [`revoke_tokens`] for the account the
/// path's `{id}` names (`404 not_found` when it is not an id of the
/// path's kind).
pub(crate) async fn account_tokens(
    app: &App,
    parts: &Parts,
    endpoint: Endpoint,
    id: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    app.admin(parts).await?;
    let merchant = || parse_id::<MerchantId>(id, Entity::Merchant).map(Account::Merchant);
    let shopper = || parse_id::<ShopperId>(id, Entity::Shopper).map(Account::Shopper);
    match endpoint {
        Endpoint::IssueMerchantToken => issue_token(app, merchant()?, body).await,
        Endpoint::IssueShopperToken => issue_token(app, shopper()?, body).await,
        Endpoint::RevokeMerchantTokens => revoke_tokens(app, merchant()?, body).await,
        Endpoint::RevokeShopperTokens => revoke_tokens(app, shopper()?, body).await,
        // Routed here only for the four above.
        _ => Err(Error::NotFound("path")),
    }
}

/// `POST /v1/{merchants|shoppers}/{id}/tokens` (admin): `201 {id, token,
/// expires_at}`, a token issued now for the existing account, valid for
/// `ttl_seconds` (1 to `--token-ttl-hours` in seconds; absent: the
/// latter). Earlier tokens stay valid. Errors: `404` for an unknown
/// account, `422 invalid` for a `ttl_seconds` out of range.
async fn issue_token(app: &App, account: Account, body: &[u8]) -> Result<HttpResponse, Error> {
    let ttl_seconds = if body.iter().all(is_json_whitespace) {
        app.token_ttl_seconds
    } else {
        let TokenBody { ttl_seconds } = parse_json(body)?;
        match ttl_seconds {
            None => app.token_ttl_seconds,
            Some(seconds) => i64::try_from(seconds)
                .ok()
                .filter(|seconds| (1..=app.token_ttl_seconds).contains(seconds))
                .ok_or(Error::Invalid {
                    field: "ttl_seconds",
                    reason: TTL_SECONDS_ACCEPTS,
                })?,
        }
    };
    let caller = match account {
        Account::Merchant(id) => match app.store.merchant(id).await? {
            Some(_) => Caller::Merchant(id),
            None => return Err(Error::Engine(EngineError::NotFound(Entity::Merchant))),
        },
        Account::Shopper(id) => {
            // The wallet's read answers `404` for an unknown shopper.
            app.store.wallet(id).await?;
            Caller::Shopper(id)
        }
    };
    let (token, expires_at) = app.issue_for(caller, ttl_seconds);
    Ok(json(
        StatusCode::CREATED,
        &TokenJson {
            id: Text(account),
            token: &token,
            expires_at: Rfc3339Utc(flashsale_engine::Timestamp(expires_at.saturating_mul(1000))),
        },
    ))
}

/// `DELETE /v1/{merchants|shoppers}/{id}/tokens` (admin): revokes every
/// token of the account issued so far, `200 {id, not_before}`. Answers once
/// every node refuses them (`Store::revoke_tokens`); a token issued after
/// the answer is valid. Errors: `404` for an unknown account, `503
/// unavailable` when [`flashsale_engine::TOKEN_REVOCATIONS_MAX`] other
/// accounts are revoked.
async fn revoke_tokens(app: &App, account: Account, body: &[u8]) -> Result<HttpResponse, Error> {
    parse_no_fields(body)?;
    let not_before = app.store.revoke_tokens(account).await?;
    #[derive(serde::Serialize)]
    struct Revoked {
        id: Text<Account>,
        not_before: Rfc3339Utc,
    }
    Ok(json(
        StatusCode::OK,
        &Revoked {
            id: Text(account),
            not_before: Rfc3339Utc(not_before),
        },
    ))
}
