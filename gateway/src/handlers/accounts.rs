//! Accounts and wallets: merchants, shoppers (one and in bulk), credits.

use flashsale_engine::{Entity, ShopperId};
use hyper::StatusCode;
use hyper::http::request::Parts;
use serde::Serialize;

use crate::app::{App, HttpResponse};
use crate::auth::Caller;
use crate::error::Error;
use crate::wire::{
    AccountJson, BulkShoppersBody, CreditBody, NameBody, Text, WalletJson, json, parse_id,
    parse_json, parse_money,
};

/// `POST /v1/merchants` (admin).
pub(crate) async fn create_merchant(
    app: &App,
    parts: &Parts,
    body: &[u8],
) -> Result<HttpResponse, Error> {
    app.admin(parts)?;
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
    app.admin(parts)?;
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
    app.admin(parts)?;
    let shopper: ShopperId = parse_id(shopper, Entity::Shopper)?;
    let CreditBody { amount, reference } = parse_json(body)?;
    let amount = parse_money(&amount, "amount")?;
    let wallet = app.store.credit_wallet(shopper, amount, &reference).await?;
    Ok(json(
        StatusCode::CREATED,
        &WalletJson::new(shopper, &wallet),
    ))
}

/// `GET /v1/wallet` (shopper).
pub(crate) async fn get_wallet(app: &App, parts: &Parts) -> Result<HttpResponse, Error> {
    let shopper = app.shopper(parts)?;
    let wallet = app.store.wallet(shopper).await?;
    Ok(json(StatusCode::OK, &WalletJson::new(shopper, &wallet)))
}
