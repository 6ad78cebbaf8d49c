//! Accounts and wallets: merchants, shoppers (one and in bulk), credits
//! by shopper id and by the platform's user id (external id).

use flashsale_engine::engine::NAME_CHARS_MAX;
use flashsale_engine::{EngineError, Entity, Money, ShopperId, check_credit, check_external_id};
use hyper::StatusCode;
use hyper::http::request::Parts;
use serde::Serialize;

use crate::app::{App, HttpResponse};
use crate::auth::Caller;
use crate::error::Error;
use crate::wire::{
    AccountJson, BulkShoppersBody, CreditBody, NameBody, Rfc3339Utc, Text, WalletJson, json,
    parse_id, parse_json, parse_money, parse_no_fields,
};

/// `POST /v1/merchants` (admin).
pub(crate) async fn create_merchant(
    app: &App,
    parts: &Parts,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    app.admin(parts).await?;
    let NameBody { name } = parse_json(body)?;
    let merchant = app.store.create_merchant(&name).await?;
    let token = app.issue(Caller::Merchant(merchant.id));
    Ok(json(
        StatusCode::CREATED,
        &AccountJson {
            id: Text(merchant.id),
            name: &merchant.name,
            token: &token,
        },
    ))
}

/// The reference of the `--signup-credit` credit in every new wallet.
pub(crate) const SIGNUP_CREDIT_REFERENCE: &str = "signup";

/// `POST /v1/shoppers` (anyone, rate limited per address). With
/// `--signup-credit`, the new wallet is credited that amount (reference
/// `signup`) before the answer.
pub(crate) async fn create_shopper(
    app: &App,
    body: &[u8],
    peer: std::net::IpAddr,
) -> Result<HttpResponse, Error> {
    app.admission.check_address(peer)?;
    let NameBody { name } = parse_json(body)?;
    let shopper = app
        .store
        .create_shopper(&name, app.signup_credit, SIGNUP_CREDIT_REFERENCE)
        .await?;
    let token = app.issue(Caller::Shopper(shopper.id));
    Ok(json(
        StatusCode::CREATED,
        &AccountJson {
            id: Text(shopper.id),
            name: &shopper.name,
            token: &token,
        },
    ))
}

/// `POST /v1/admin/shoppers` (admin): bulk accounts for load tests.
pub(crate) async fn create_shoppers_bulk(
    app: &App,
    parts: &Parts,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    app.admin(parts).await?;
    let BulkShoppersBody { count, credit } = parse_json(body)?;
    let credit = parse_money(&credit, "credit")?;
    let ids = app.store.create_shoppers(count, credit).await?;
    #[derive(Serialize)]
    struct Created {
        id: Text<ShopperId>,
        token: String,
    }
    #[derive(Serialize)]
    struct Bulk {
        shoppers: Vec<Created>,
    }
    let shoppers = ids
        .into_iter()
        .map(|id| Created {
            id: Text(id),
            token: app.issue(Caller::Shopper(id)),
        })
        .collect();
    Ok(json(StatusCode::CREATED, &Bulk { shoppers }))
}

/// `POST /v1/wallets/{shopper_id}/credits` (admin, the payment provider).
pub(crate) async fn credit_wallet(
    app: &App,
    parts: &Parts,
    shopper: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    app.admin(parts).await?;
    let shopper: ShopperId = parse_id(shopper, Entity::Shopper)?;
    let CreditBody { amount, reference } = parse_json(body)?;
    let amount = parse_money(&amount, "amount")?;
    let wallet = app.store.credit_wallet(shopper, amount, &reference).await?;
    let external_id = external_id_of(app, shopper).await?;
    Ok(json(
        StatusCode::CREATED,
        &WalletJson::new(shopper, external_id.as_deref(), &wallet),
    ))
}

/// `POST /v1/wallets/external/{external_id}/credits` (admin, the payment
/// provider): credits the wallet of the shopper of the platform's user id
/// `external_id` (percent-decoded from the path), making that shopper
/// first if it has none, named after its external id. Checked before
/// anything changes: the external id (`check_external_id`), the body and
/// the credit (`check_credit`), so a refused request makes no shopper.
pub(crate) async fn credit_external_wallet(
    app: &App,
    parts: &Parts,
    external: &str,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    app.admin(parts).await?;
    let external_id = decode_external_id(external)?;
    let CreditBody { amount, reference } = parse_json(body)?;
    let amount = parse_money(&amount, "amount")?;
    check_credit(amount, &reference)?;
    let (shopper, _) = app
        .store
        .link_shopper(
            &external_id,
            &name_of(&external_id, "shopper"),
            Money::ZERO,
            "",
        )
        .await?;
    let wallet = app
        .store
        .credit_wallet(shopper.id, amount, &reference)
        .await?;
    Ok(json(
        StatusCode::CREATED,
        &WalletJson::new(shopper.id, Some(&external_id), &wallet),
    ))
}

/// The external id of a path segment: percent-decoded (`auth0%7C123` is
/// `auth0|123`), then held to the one rule (`check_external_id`).
/// Refusal: `422 invalid` naming `external_id`.
fn decode_external_id(segment: &str) -> Result<String, Error> {
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| {
            Error::Engine(EngineError::Invalid {
                field: "external_id",
                reason: "must be UTF-8 once percent-decoded",
            })
        })?;
    check_external_id(&decoded)?;
    Ok(decoded.into_owned())
}

/// The name an account made for its external id gets when nothing else
/// names it: the external id's first [`NAME_CHARS_MAX`] characters, or
/// `blank` (such as `shopper`) when they are blank. An external id is up
/// to 255 bytes, a name up to [`NAME_CHARS_MAX`] characters: the external
/// id itself would not always do.
pub(crate) fn name_of(external_id: &str, blank: &str) -> String {
    let name: String = external_id.chars().take(NAME_CHARS_MAX).collect();
    if name.trim().is_empty() {
        blank.to_owned()
    } else {
        name
    }
}

/// The external id of `shopper`, if it has one.
async fn external_id_of(app: &App, shopper: ShopperId) -> Result<Option<String>, Error> {
    Ok(app
        .store
        .shopper(shopper)
        .await?
        .and_then(|shopper| shopper.external_id))
}

/// `GET /v1/wallet` (shopper).
pub(crate) async fn get_wallet(app: &App, parts: &Parts) -> Result<HttpResponse, Error> {
    let shopper = app.shopper(parts).await?;
    let wallet = app.store.wallet(shopper).await?;
    let external_id = external_id_of(app, shopper).await?;
    Ok(json(
        StatusCode::OK,
        &WalletJson::new(shopper, external_id.as_deref(), &wallet),
    ))
}

/// `POST /v1/tokens/exchange` (a platform JWT, with `--idp-jwks`): the
/// engine's own token for the account the JWT names, made at its first use
/// (the token exchange of RFC 8693, in the API's JSON). The token expires
/// with the JWT at the latest. A storefront exchanges once, before a sale,
/// so that the sale's requests carry a token the node checks with one HMAC
/// instead of a signature (docs/platform-identity.md).
pub(crate) async fn exchange_token(
    app: &App,
    parts: &Parts,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    parse_no_fields(body)?;
    let (caller, jwt_expires_at) = app.platform_account(parts).await?;
    let (token, expires_at) = app.issue_until(caller, jwt_expires_at);
    #[derive(Serialize)]
    struct Exchanged {
        id: String,
        role: &'static str,
        token: String,
        expires_at: Rfc3339Utc,
    }
    let (id, role) = match caller {
        Caller::Shopper(id) => (id.to_string(), "shopper"),
        Caller::Merchant(id) => (id.to_string(), "merchant"),
        Caller::Admin => return Err(Error::Forbidden("the admin token is not exchanged")),
    };
    Ok(json(
        StatusCode::CREATED,
        &Exchanged {
            id,
            role,
            token,
            expires_at: Rfc3339Utc(flashsale_engine::Timestamp(expires_at.saturating_mul(1000))),
        },
    ))
}
