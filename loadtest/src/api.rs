//! The HTTP contract as the load generator sees it: the JSON shapes it
//! reads, and the setup and check calls it makes (merchant, shoppers, deal,
//! registrations, order listing, wallets).
//!
//! Setup and check calls are not measured. They retry a few times on `503`,
//! `429` and transport failures (a server that sheds load during setup is
//! not broken), and fail the run on any other unexpected answer. Calls that
//! touch every shopper run on many connections at once via [`fan_out`].

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use tokio::task::JoinSet;

use crate::connection::{Call, Connection};
use crate::error::LoadtestError;
use crate::retry::{RetryPolicy, is_retryable};
use crate::target::Target;

/// Most shoppers one `POST /v1/admin/shoppers` may create (the contract's
/// limit).
pub const SHOPPERS_PER_CALL_MAX: usize = 10_000;

/// Page size asked of `GET /v1/orders` (the contract's maximum).
pub const ORDERS_PAGE_LIMIT: usize = 1_000;

/// Attempts for one setup or check call before the run fails.
pub const SETUP_ATTEMPTS_MAX: u32 = 6;

/// Concurrent bulk shopper creations: each one is a big answer for the
/// server to sign and serialise, so a few at a time is enough.
pub const SHOPPER_BATCHES_IN_FLIGHT_MAX: usize = 4;

/// A merchant account made by the admin.
#[derive(Debug, Clone, Deserialize)]
pub struct Merchant {
    pub token: String,
}

/// One account from `POST /v1/admin/shoppers`.
#[derive(Debug, Clone, Deserialize)]
pub struct ShopperAccount {
    pub id: String,
    pub token: String,
}

#[derive(Debug, Deserialize)]
struct ShopperBatch {
    shoppers: Vec<ShopperAccount>,
}

/// A shopper as the load generator keeps it: its id and a ready-made
/// `Authorization` value (cloning a `HeaderValue` shares its bytes).
#[derive(Debug, Clone)]
pub struct Shopper {
    pub id: String,
    pub auth: HeaderValue,
}

/// A deal with its live numbers.
#[derive(Debug, Clone, Deserialize)]
pub struct Deal {
    pub id: String,
    /// Initial plus restocked units.
    pub stock: u64,
    pub per_user_limit: u64,
    pub remaining: u64,
    pub held: u64,
    pub sold: u64,
    pub status: String,
}

/// A settled order.
#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    pub id: String,
    pub deal_id: String,
    pub shopper_id: String,
    pub quantity: u64,
    #[serde(deserialize_with = "money")]
    pub amount: Decimal,
}

#[derive(Debug, Deserialize)]
struct OrderPage {
    orders: Vec<Order>,
    next_cursor: Option<String>,
}

/// A shopper's wallet.
#[derive(Debug, Clone, Deserialize)]
pub struct Wallet {
    pub shopper_id: String,
    #[serde(deserialize_with = "money")]
    pub spent: Decimal,
}

/// The error body every refusal carries.
#[derive(Debug, Deserialize)]
pub struct ErrorBody<'a> {
    #[serde(borrow)]
    pub error: ErrorDetail<'a>,
}

/// `code` is stable and machine-readable; `message` is for people.
#[derive(Debug, Deserialize)]
pub struct ErrorDetail<'a> {
    #[serde(borrow)]
    pub code: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub message: std::borrow::Cow<'a, str>,
}

/// The error `code` of a refusal body, if it has the contract's shape.
pub fn error_code(body: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    serde_json::from_slice::<ErrorBody<'_>>(body)
        .ok()
        .map(|body| body.error.code)
}

/// Money travels as a decimal string (`"999.00"`); never as a float.
fn money<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    Decimal::from_str(&text).map_err(serde::de::Error::custom)
}

/// Money as the contract writes it: exactly two decimal places.
pub fn money_text(amount: Decimal) -> String {
    let mut amount =
        amount.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    amount.rescale(2);
    amount.to_string()
}

/// `Bearer <token>` as a header value.
pub fn bearer(token: &str) -> Result<HeaderValue, LoadtestError> {
    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| LoadtestError::Api {
        what: "reading a token".to_owned(),
        status: 0,
        code: "invalid_token".to_owned(),
        message: "the server issued a token that is not a valid header value".to_owned(),
    })
}

/// What a deal is created with.
#[derive(Debug, Clone)]
pub struct NewDeal {
    pub title: String,
    pub price: Decimal,
    pub stock: u64,
    pub per_user_limit: u64,
    pub starts_at: std::time::SystemTime,
    pub ends_at: std::time::SystemTime,
    pub requires_registration: bool,
    pub hold_seconds: u64,
    /// `allocation: "raffle"` (drawn at `starts_at`) instead of the
    /// default first come.
    pub raffle: bool,
}

/// One setup or check call: sends, retries on overload, checks the status
/// against `accept` and decodes the body.
pub async fn call<T: DeserializeOwned>(
    connection: &mut Connection,
    what: &str,
    method: Method,
    path: &str,
    auth: Option<&HeaderValue>,
    body: Option<serde_json::Value>,
    accept: &[StatusCode],
) -> Result<T, LoadtestError> {
    let uri = connection.target().uri(path)?;
    let body = match body {
        Some(value) => Bytes::from(value.to_string()),
        None => Bytes::new(),
    };
    let policy = RetryPolicy::new(SETUP_ATTEMPTS_MAX);
    let mut rng = fastrand::Rng::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = connection
            .send(Call {
                method: method.clone(),
                uri: uri.clone(),
                auth,
                idempotency_key: None,
                body: body.clone(),
            })
            .await;
        let retry_after = match outcome {
            Ok(answer) if accept.contains(&answer.status) => {
                return serde_json::from_slice(&answer.body).map_err(|source| {
                    LoadtestError::Decode {
                        what: what.to_owned(),
                        source,
                    }
                });
            }
            Ok(answer) if is_retryable(answer.status) && policy.allows_another(attempts) => {
                answer.retry_after
            }
            Ok(answer) => return Err(refusal(what, answer.status, &answer.body)),
            Err(_) if policy.allows_another(attempts) => None,
            Err(source) => {
                return Err(LoadtestError::Transport {
                    what: what.to_owned(),
                    source,
                });
            }
        };
        tokio::time::sleep(policy.delay(attempts, retry_after, &mut rng)).await;
    }
}

fn refusal(what: &str, status: StatusCode, body: &[u8]) -> LoadtestError {
    let (code, message) = match serde_json::from_slice::<ErrorBody<'_>>(body) {
        Ok(parsed) => (
            parsed.error.code.into_owned(),
            parsed.error.message.into_owned(),
        ),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            ("-".to_owned(), text.chars().take(200).collect())
        }
    };
    LoadtestError::Api {
        what: what.to_owned(),
        status: status.as_u16(),
        code,
        message,
    }
}

/// Runs `work(connection, index)` for every index in `0..count` on up to
/// `tasks` connections at once, and returns the results in index order.
/// Stops at the first error and returns it.
///
/// `work` takes the connection by value and hands it back, so that the
/// future need not borrow from the task that runs it.
pub async fn fan_out<T, F, Fut>(
    target: &Arc<Target>,
    timeout: Duration,
    tasks: usize,
    count: usize,
    work: F,
) -> Result<Vec<T>, LoadtestError>
where
    T: Send + 'static,
    F: Fn(Connection, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (Connection, Result<T, LoadtestError>)> + Send + 'static,
{
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    for _ in 0..tasks.clamp(1, count.max(1)) {
        let (work, next, failed) = (work.clone(), next.clone(), failed.clone());
        let mut connection = Connection::new(target.clone(), timeout);
        set.spawn(async move {
            let mut done = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                let (returned, result) = work(connection, index).await;
                connection = returned;
                match result {
                    Ok(value) => done.push((index, value)),
                    Err(error) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(error);
                    }
                }
            }
            Ok(done)
        });
    }
    let mut slots: Vec<Option<T>> = std::iter::repeat_with(|| None).take(count).collect();
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(done)) => {
                for (index, value) in done {
                    slots[index] = Some(value);
                }
            }
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    // invariant: without an error every index in 0..count was claimed by
    // exactly one task and its value stored, so no slot is empty.
    Ok(slots.into_iter().flatten().collect())
}

/// `POST /v1/merchants` as admin.
pub async fn create_merchant(
    connection: &mut Connection,
    admin: &HeaderValue,
    name: &str,
) -> Result<Merchant, LoadtestError> {
    call(
        connection,
        "creating the merchant",
        Method::POST,
        "/v1/merchants",
        Some(admin),
        Some(serde_json::json!({ "name": name })),
        &[StatusCode::CREATED],
    )
    .await
}

/// `POST /v1/admin/shoppers` in batches of at most
/// [`SHOPPERS_PER_CALL_MAX`], each wallet credited with `credit`.
pub async fn create_shoppers(
    target: &Arc<Target>,
    timeout: Duration,
    admin: &HeaderValue,
    count: usize,
    credit: Decimal,
) -> Result<Vec<Shopper>, LoadtestError> {
    let batches = count.div_ceil(SHOPPERS_PER_CALL_MAX);
    let admin = admin.clone();
    let credit = money_text(credit);
    let made = fan_out(
        target,
        timeout,
        SHOPPER_BATCHES_IN_FLIGHT_MAX,
        batches,
        move |mut connection, batch| {
            let admin = admin.clone();
            let credit = credit.clone();
            async move {
                let size = SHOPPERS_PER_CALL_MAX.min(count - batch * SHOPPERS_PER_CALL_MAX);
                let result = create_shopper_batch(&mut connection, &admin, size, &credit).await;
                (connection, result)
            }
        },
    )
    .await?;
    made.into_iter().flatten().collect()
}

async fn create_shopper_batch(
    connection: &mut Connection,
    admin: &HeaderValue,
    size: usize,
    credit: &str,
) -> Result<Vec<Result<Shopper, LoadtestError>>, LoadtestError> {
    let what = "creating shoppers";
    let batch: ShopperBatch = call(
        connection,
        what,
        Method::POST,
        "/v1/admin/shoppers",
        Some(admin),
        Some(serde_json::json!({ "count": size, "credit": credit })),
        &[StatusCode::CREATED],
    )
    .await?;
    if batch.shoppers.len() != size {
        return Err(LoadtestError::Api {
            what: what.to_owned(),
            status: 201,
            code: "-".to_owned(),
            message: format!("asked for {size} shoppers, got {}", batch.shoppers.len()),
        });
    }
    Ok(batch
        .shoppers
        .into_iter()
        .map(|account| {
            Ok(Shopper {
                auth: bearer(&account.token)?,
                id: account.id,
            })
        })
        .collect())
}

/// `POST /v1/deals` as the merchant.
pub async fn create_deal(
    connection: &mut Connection,
    merchant: &HeaderValue,
    deal: &NewDeal,
) -> Result<Deal, LoadtestError> {
    let mut body = serde_json::json!({
        "title": deal.title,
        "price": money_text(deal.price),
        "stock": deal.stock,
        "per_user_limit": deal.per_user_limit,
        "starts_at": humantime::format_rfc3339_seconds(deal.starts_at).to_string(),
        "ends_at": humantime::format_rfc3339_seconds(deal.ends_at).to_string(),
        "requires_registration": deal.requires_registration,
        "hold_seconds": deal.hold_seconds,
    });
    if deal.raffle {
        body["allocation"] = serde_json::Value::from("raffle");
    }
    call(
        connection,
        "creating the deal",
        Method::POST,
        "/v1/deals",
        Some(merchant),
        Some(body),
        &[StatusCode::CREATED],
    )
    .await
}

/// `GET /v1/deals/{id}`.
pub async fn get_deal(connection: &mut Connection, deal_id: &str) -> Result<Deal, LoadtestError> {
    call(
        connection,
        "reading the deal",
        Method::GET,
        &format!("/v1/deals/{}", path_segment(deal_id)),
        None,
        None,
        &[StatusCode::OK],
    )
    .await
}

/// `POST /v1/deals/{id}/registrations` for every shopper, on up to `tasks`
/// connections at once.
pub async fn register_all(
    target: &Arc<Target>,
    timeout: Duration,
    tasks: usize,
    shoppers: &Arc<Vec<Shopper>>,
    deal_id: &str,
) -> Result<(), LoadtestError> {
    let path: Arc<str> = format!("/v1/deals/{}/registrations", path_segment(deal_id)).into();
    let shoppers_for_work = shoppers.clone();
    fan_out(
        target,
        timeout,
        tasks,
        shoppers.len(),
        move |mut connection, index| {
            let shoppers = shoppers_for_work.clone();
            let path = path.clone();
            async move {
                let result: Result<serde_json::Value, _> = call(
                    &mut connection,
                    "registering a shopper",
                    Method::POST,
                    &path,
                    Some(&shoppers[index].auth),
                    Some(serde_json::json!({})),
                    &[StatusCode::CREATED, StatusCode::OK],
                )
                .await;
                (connection, result.map(drop))
            }
        },
    )
    .await
    .map(drop)
}

/// Every order of a deal, as its merchant sees them, page by page. Fails
/// if the listing runs past `orders_max` (a server whose cursor never ends
/// must not keep the check running forever).
pub async fn list_orders(
    connection: &mut Connection,
    merchant: &HeaderValue,
    deal_id: &str,
    orders_max: usize,
) -> Result<Vec<Order>, LoadtestError> {
    let what = "listing the deal's orders";
    let pages_max = orders_max / ORDERS_PAGE_LIMIT + 2;
    let mut orders = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..pages_max {
        let mut path = format!(
            "/v1/orders?deal_id={}&limit={ORDERS_PAGE_LIMIT}",
            query_value(deal_id)
        );
        if let Some(cursor) = &cursor {
            path.push_str("&cursor=");
            path.push_str(&query_value(cursor));
        }
        let page: OrderPage = call(
            connection,
            what,
            Method::GET,
            &path,
            Some(merchant),
            None,
            &[StatusCode::OK],
        )
        .await?;
        orders.extend(page.orders);
        match page.next_cursor {
            Some(next) if !next.is_empty() => cursor = Some(next),
            _ => return Ok(orders),
        }
    }
    Err(LoadtestError::Api {
        what: what.to_owned(),
        status: 200,
        code: "-".to_owned(),
        message: format!(
            "still paging after {pages_max} pages ({} orders)",
            orders.len()
        ),
    })
}

/// `GET /v1/wallet` for every shopper, on up to `tasks` connections.
pub async fn wallets(
    target: &Arc<Target>,
    timeout: Duration,
    tasks: usize,
    shoppers: &Arc<Vec<Shopper>>,
) -> Result<Vec<Wallet>, LoadtestError> {
    let shoppers_for_work = shoppers.clone();
    fan_out(
        target,
        timeout,
        tasks,
        shoppers.len(),
        move |mut connection, index| {
            let shoppers = shoppers_for_work.clone();
            async move {
                let result = call(
                    &mut connection,
                    "reading a wallet",
                    Method::GET,
                    "/v1/wallet",
                    Some(&shoppers[index].auth),
                    None,
                    &[StatusCode::OK],
                )
                .await;
                (connection, result)
            }
        },
    )
    .await
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An id as one path segment (ids are opaque; encode to be safe).
pub fn path_segment(id: &str) -> String {
    query_value(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_written_with_two_places() {
        assert_eq!(money_text(Decimal::new(999, 0)), "999.00");
        assert_eq!(money_text(Decimal::new(12345, 3)), "12.35");
        assert_eq!(money_text(Decimal::new(5, 1)), "0.50");
    }

    #[test]
    fn money_is_read_from_strings_only() {
        let wallet: Wallet = serde_json::from_str(
            r#"{"shopper_id":"s1","available":"1.00","held":"0.00","spent":"999.00"}"#,
        )
        .expect("valid wallet");
        assert_eq!(wallet.spent, Decimal::new(99900, 2));
        assert!(serde_json::from_str::<Wallet>(r#"{"shopper_id":"s1","spent":999.0}"#).is_err());
    }

    #[test]
    fn error_codes_are_read_from_the_contract_shape() {
        let body = br#"{"error":{"code":"sold_out","message":"deal d_1 is sold out"}}"#;
        assert_eq!(error_code(body).as_deref(), Some("sold_out"));
        assert_eq!(error_code(b"oops").as_deref(), None);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("d_1-a.b~"), "d_1-a.b~");
        assert_eq!(query_value("a b/c+="), "a%20b%2Fc%2B%3D");
    }
}
