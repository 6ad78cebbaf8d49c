//! A fake flashsale gateway for the load generator's tests: just enough of
//! the HTTP contract (merchants, bulk shoppers, deals, registrations, buys,
//! holds, wallets, order listing, feed) to run small bursts and steady
//! runs, with switchable flaws that the invariant checks must catch.
//! [`start_nodes`] starts several "nodes" over one shared state, as the
//! nodes of one Redis-mode deployment, each with its own flaw.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Largest request body the fake reads.
const BODY_BYTES_MAX: usize = 64 * 1024;

/// How the fake misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// Keeps the contract.
    None,
    /// Answers 201 past the stock.
    Oversell,
    /// Answers 201 but leaves every third order out of `GET /v1/orders`.
    LoseOrders,
    /// Makes the order, then answers the first attempt of each key with
    /// 503, as if the answer were lost; the retry gets the order.
    DropFirstAnswer,
    /// Takes this long over every buy: a stalled server.
    Slow(Duration),
    /// Shows every deal as it was created (nothing sold), whatever the
    /// shared state says: a node serving a view of its own.
    StaleDeal,
}

struct ShopperRec {
    id: String,
    available: Decimal,
    held: Decimal,
    spent: Decimal,
}

struct DealRec {
    id: String,
    merchant_id: String,
    title: String,
    price: Decimal,
    stock: u64,
    per_user_limit: u64,
    starts_at: SystemTime,
    ends_at: SystemTime,
    requires_registration: bool,
    hold_seconds: u64,
    remaining: i64,
    held: u64,
    sold: u64,
    registrations: HashSet<String>,
    units_by_shopper: HashMap<String, u64>,
}

struct HoldRec {
    id: String,
    deal_id: String,
    shopper_id: String,
    quantity: u64,
    amount: Decimal,
    status: &'static str,
}

#[derive(Default)]
struct State {
    next_id: u64,
    merchants: HashMap<String, String>,
    shoppers: HashMap<String, ShopperRec>,
    deals: HashMap<String, DealRec>,
    orders: Vec<Value>,
    orders_made: u64,
    /// (shopper id, key) → the answer of the request that used it.
    keys: HashMap<(String, String), Value>,
    answered_keys: HashSet<(String, String)>,
    holds: HashMap<String, HoldRec>,
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{}", self.next_id)
    }
}

struct Fake {
    admin_token: String,
    flaw: Flaw,
    state: Arc<Mutex<State>>,
    buys: Arc<AtomicU64>,
}

/// A running fake gateway.
pub struct FakeServer {
    pub url: String,
    pub admin_token: String,
    /// Buys (`POST /v1/deals/{id}/orders`) this server was sent.
    pub buys: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a fake gateway on 127.0.0.1:0.
pub async fn start(flaw: Flaw) -> FakeServer {
    start_with_admin(flaw, "fake-admin".to_owned()).await
}

/// Starts a fake gateway on 127.0.0.1:0 that accepts `admin_token`.
pub async fn start_with_admin(flaw: Flaw, admin_token: String) -> FakeServer {
    serve(flaw, admin_token, Arc::default()).await
}

/// Starts one fake node per flaw, each on its own 127.0.0.1:0, all over
/// one shared state (one deployment), accepting the admin token of
/// [`start`].
pub async fn start_nodes(flaws: &[Flaw]) -> Vec<FakeServer> {
    let state: Arc<Mutex<State>> = Arc::default();
    let mut nodes = Vec::with_capacity(flaws.len());
    for flaw in flaws {
        nodes.push(serve(*flaw, "fake-admin".to_owned(), state.clone()).await);
    }
    nodes
}

async fn serve(flaw: Flaw, admin_token: String, state: Arc<Mutex<State>>) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    let buys = Arc::new(AtomicU64::new(0));
    let fake = Arc::new(Fake {
        admin_token: admin_token.clone(),
        flaw,
        state,
        buys: buys.clone(),
    });
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(_) => continue,
                },
            };
            let fake = fake.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let fake = fake.clone();
                    async move { Ok::<_, Infallible>(fake.handle(request).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    FakeServer {
        url,
        admin_token,
        buys,
        stop: Some(stop),
    }
}

type Answer = Response<Full<Bytes>>;

fn json_answer(status: StatusCode, value: &Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn refuse(status: StatusCode, code: &str) -> Answer {
    json_answer(
        status,
        &json!({ "error": { "code": code, "message": format!("fake says {code}") } }),
    )
}

fn money(amount: Decimal) -> String {
    let mut amount = amount;
    amount.rescale(2);
    amount.to_string()
}

fn deal_json(deal: &DealRec) -> Value {
    let now = SystemTime::now();
    let status = if now < deal.starts_at {
        "scheduled"
    } else if deal.remaining <= 0 {
        "sold_out"
    } else {
        "live"
    };
    json!({
        "id": deal.id,
        "merchant_id": deal.merchant_id,
        "title": deal.title,
        "price": money(deal.price),
        "stock": deal.stock,
        "per_user_limit": deal.per_user_limit,
        "starts_at": humantime::format_rfc3339_seconds(deal.starts_at).to_string(),
        "ends_at": humantime::format_rfc3339_seconds(deal.ends_at).to_string(),
        "requires_registration": deal.requires_registration,
        "hold_seconds": deal.hold_seconds,
        "remaining": deal.remaining.max(0),
        "held": deal.held,
        "sold": deal.sold,
        "registrations": deal.registrations.len(),
        "buyers": deal.units_by_shopper.len(),
        "status": status,
        "created_at": humantime::format_rfc3339_seconds(now).to_string(),
    })
}

fn hold_json(hold: &HoldRec) -> Value {
    json!({
        "id": hold.id,
        "deal_id": hold.deal_id,
        "shopper_id": hold.shopper_id,
        "quantity": hold.quantity,
        "amount": money(hold.amount),
        "expires_at": humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(120)).to_string(),
        "status": hold.status,
    })
}

fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

impl Fake {
    async fn handle(&self, request: Request<Incoming>) -> Answer {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let token = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::to_owned);
        let key = request
            .headers()
            .get("idempotency-key")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let query = query(&request);
        let body = match Limited::new(request.into_body(), BODY_BYTES_MAX)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        };
        let body: Value = if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(&body) {
                Ok(value) => value,
                Err(_) => return refuse(StatusCode::BAD_REQUEST, "malformed_json"),
            }
        };
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let is_admin = token.as_deref() == Some(self.admin_token.as_str());
        match (method, segments.as_slice()) {
            (Method::POST, ["v1", "merchants"]) if is_admin => self.create_merchant(&body),
            (Method::POST, ["v1", "admin", "shoppers"]) if is_admin => self.create_shoppers(&body),
            (Method::POST, ["v1", "deals"]) => self.create_deal(token, &body),
            (Method::GET, ["v1", "deals", id]) => match self.state.lock().deals.get(*id) {
                Some(deal) => {
                    let mut shown = deal_json(deal);
                    if self.flaw == Flaw::StaleDeal {
                        shown["remaining"] = json!(deal.stock);
                        shown["held"] = json!(0);
                        shown["sold"] = json!(0);
                    }
                    json_answer(StatusCode::OK, &shown)
                }
                None => refuse(StatusCode::NOT_FOUND, "not_found"),
            },
            (Method::POST, ["v1", "deals", id, "registrations"]) => self.register(token, id),
            (Method::POST, ["v1", "deals", id, "orders"]) => {
                self.buys.fetch_add(1, Ordering::Relaxed);
                if let Flaw::Slow(stall) = self.flaw {
                    tokio::time::sleep(stall).await;
                }
                self.buy(token, key, id, &body, false)
            }
            (Method::POST, ["v1", "deals", id, "holds"]) => self.buy(token, key, id, &body, true),
            (Method::POST, ["v1", "holds", id, "payment"]) => self.pay(token, id),
            (Method::DELETE, ["v1", "holds", id]) => self.release(token, id),
            (Method::GET, ["v1", "wallet"]) => self.wallet(token),
            (Method::GET, ["v1", "orders"]) => self.orders(token, &query),
            (Method::GET, ["v1", "feed"]) => {
                json_answer(StatusCode::OK, &json!({ "cards": [], "next_cursor": null }))
            }
            (_, ["v1", "merchants"] | ["v1", "admin", "shoppers"]) => {
                refuse(StatusCode::UNAUTHORIZED, "unauthorized")
            }
            _ => refuse(StatusCode::NOT_FOUND, "not_found"),
        }
    }

    fn create_merchant(&self, body: &Value) -> Answer {
        let mut state = self.state.lock();
        let id = state.id("m");
        let token = format!("tok-{id}");
        state.merchants.insert(token.clone(), id.clone());
        json_answer(
            StatusCode::CREATED,
            &json!({ "id": id, "name": body["name"], "token": token }),
        )
    }

    fn create_shoppers(&self, body: &Value) -> Answer {
        let count = body["count"].as_u64().unwrap_or(0);
        let credit = body["credit"]
            .as_str()
            .and_then(|c| Decimal::from_str(c).ok());
        let (Some(credit), 1..=10_000) = (credit, count) else {
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        };
        let mut state = self.state.lock();
        let mut made = Vec::new();
        for _ in 0..count {
            let id = state.id("s");
            let token = format!("tok-{id}");
            state.shoppers.insert(
                token.clone(),
                ShopperRec {
                    id: id.clone(),
                    available: credit,
                    held: Decimal::ZERO,
                    spent: Decimal::ZERO,
                },
            );
            made.push(json!({ "id": id, "token": token }));
        }
        json_answer(StatusCode::CREATED, &json!({ "shoppers": made }))
    }

    fn create_deal(&self, token: Option<String>, body: &Value) -> Answer {
        let mut state = self.state.lock();
        let Some(merchant_id) = token.and_then(|t| state.merchants.get(&t).cloned()) else {
            return refuse(StatusCode::FORBIDDEN, "forbidden");
        };
        let time = |field: &str| {
            body[field]
                .as_str()
                .and_then(|text| humantime::parse_rfc3339(text).ok())
        };
        let price = body["price"]
            .as_str()
            .and_then(|p| Decimal::from_str(p).ok());
        let (Some(price), Some(stock), Some(starts_at), Some(ends_at)) = (
            price,
            body["stock"].as_u64(),
            time("starts_at"),
            time("ends_at"),
        ) else {
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        };
        let id = state.id("d");
        let deal = DealRec {
            id: id.clone(),
            merchant_id,
            title: body["title"].as_str().unwrap_or("").to_owned(),
            price,
            stock,
            per_user_limit: body["per_user_limit"].as_u64().unwrap_or(1),
            starts_at,
            ends_at,
            requires_registration: body["requires_registration"].as_bool().unwrap_or(false),
            hold_seconds: body["hold_seconds"].as_u64().unwrap_or(120),
            remaining: i64::try_from(stock).unwrap_or(i64::MAX),
            held: 0,
            sold: 0,
            registrations: HashSet::new(),
            units_by_shopper: HashMap::new(),
        };
        let answer = deal_json(&deal);
        state.deals.insert(id, deal);
        json_answer(StatusCode::CREATED, &answer)
    }

    fn register(&self, token: Option<String>, deal_id: &str) -> Answer {
        let mut state = self.state.lock();
        let Some(shopper_id) = token.and_then(|t| state.shoppers.get(&t).map(|s| s.id.clone()))
        else {
            return refuse(StatusCode::UNAUTHORIZED, "unauthorized");
        };
        let Some(deal) = state.deals.get_mut(deal_id) else {
            return refuse(StatusCode::NOT_FOUND, "not_found");
        };
        if SystemTime::now() >= deal.starts_at {
            return refuse(StatusCode::CONFLICT, "deal_started");
        }
        let status = if deal.registrations.insert(shopper_id) {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        json_answer(status, &json!({ "deal_id": deal_id }))
    }

    /// A one-tap buy (`hold == false`) or a hold.
    fn buy(
        &self,
        token: Option<String>,
        key: Option<String>,
        deal_id: &str,
        body: &Value,
        hold: bool,
    ) -> Answer {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let Some(token) = token.filter(|t| state.shoppers.contains_key(t)) else {
            return refuse(StatusCode::UNAUTHORIZED, "unauthorized");
        };
        let Some(key) = key else {
            return refuse(StatusCode::BAD_REQUEST, "bad_request");
        };
        let Some(quantity) = body["quantity"].as_u64().filter(|q| *q > 0) else {
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        };
        let shopper_id = state.shoppers[&token].id.clone();
        let key = (shopper_id.clone(), key);
        if let Some(previous) = state.keys.get(&key) {
            return json_answer(StatusCode::CREATED, previous);
        }
        let Some(deal) = state.deals.get_mut(deal_id) else {
            return refuse(StatusCode::NOT_FOUND, "not_found");
        };
        if SystemTime::now() < deal.starts_at {
            return refuse(StatusCode::TOO_EARLY, "not_started");
        }
        if deal.requires_registration && !deal.registrations.contains(&shopper_id) {
            return refuse(StatusCode::FORBIDDEN, "not_registered");
        }
        let enough = deal.remaining >= i64::try_from(quantity).unwrap_or(i64::MAX);
        if !enough && self.flaw != Flaw::Oversell {
            return refuse(StatusCode::CONFLICT, "sold_out");
        }
        let owned = deal.units_by_shopper.get(&shopper_id).copied().unwrap_or(0);
        if owned + quantity > deal.per_user_limit {
            return refuse(StatusCode::CONFLICT, "purchase_limit_reached");
        }
        let amount = deal.price * Decimal::from(quantity);
        let shopper = state.shoppers.get_mut(&token).expect("checked above");
        if shopper.available < amount {
            return refuse(StatusCode::PAYMENT_REQUIRED, "insufficient_funds");
        }
        shopper.available -= amount;
        deal.remaining -= i64::try_from(quantity).unwrap_or(i64::MAX);
        *deal.units_by_shopper.entry(shopper_id.clone()).or_insert(0) += quantity;
        let price = deal.price;
        let answer = if hold {
            shopper.held += amount;
            deal.held += quantity;
            state.next_id += 1;
            let id = format!("h_{}", state.next_id);
            let record = HoldRec {
                id: id.clone(),
                deal_id: deal_id.to_owned(),
                shopper_id: shopper_id.clone(),
                quantity,
                amount,
                status: "held",
            };
            let answer = hold_json(&record);
            state.holds.insert(id, record);
            answer
        } else {
            shopper.spent += amount;
            deal.sold += quantity;
            state.next_id += 1;
            let id = format!("o_{}", state.next_id);
            self.settle(state, id, deal_id, &shopper_id, quantity, price, amount)
        };
        state.keys.insert(key.clone(), answer.clone());
        if self.flaw == Flaw::DropFirstAnswer && state.answered_keys.insert(key) {
            let mut lost = refuse(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
            lost.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("0"));
            return lost;
        }
        json_answer(StatusCode::CREATED, &answer)
    }

    /// Records a settled order (or, with `LoseOrders`, forgets every third).
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        state: &mut State,
        id: String,
        deal_id: &str,
        shopper_id: &str,
        quantity: u64,
        price: Decimal,
        amount: Decimal,
    ) -> Value {
        let order = json!({
            "id": id,
            "deal_id": deal_id,
            "shopper_id": shopper_id,
            "quantity": quantity,
            "unit_price": money(price),
            "amount": money(amount),
            "status": "settled",
            "late": false,
            "created_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        });
        state.orders_made += 1;
        if !(self.flaw == Flaw::LoseOrders && state.orders_made.is_multiple_of(3)) {
            state.orders.push(order.clone());
        }
        order
    }

    fn pay(&self, token: Option<String>, hold_id: &str) -> Answer {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let Some(token) = token.filter(|t| state.shoppers.contains_key(t)) else {
            return refuse(StatusCode::UNAUTHORIZED, "unauthorized");
        };
        let shopper_id = state.shoppers[&token].id.clone();
        let Some(hold) = state
            .holds
            .get_mut(hold_id)
            .filter(|h| h.shopper_id == shopper_id)
        else {
            return refuse(StatusCode::NOT_FOUND, "not_found");
        };
        if hold.status != "held" {
            return refuse(StatusCode::CONFLICT, "hold_settled");
        }
        hold.status = "settled";
        let (deal_id, quantity, amount) = (hold.deal_id.clone(), hold.quantity, hold.amount);
        let deal = state.deals.get_mut(&deal_id).expect("hold of a known deal");
        deal.held -= quantity;
        deal.sold += quantity;
        let price = deal.price;
        let shopper = state.shoppers.get_mut(&token).expect("checked above");
        shopper.held -= amount;
        shopper.spent += amount;
        state.next_id += 1;
        let id = format!("o_{}", state.next_id);
        let order = self.settle(state, id, &deal_id, &shopper_id, quantity, price, amount);
        json_answer(StatusCode::CREATED, &order)
    }

    fn release(&self, token: Option<String>, hold_id: &str) -> Answer {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let Some(token) = token.filter(|t| state.shoppers.contains_key(t)) else {
            return refuse(StatusCode::UNAUTHORIZED, "unauthorized");
        };
        let shopper_id = state.shoppers[&token].id.clone();
        let Some(hold) = state
            .holds
            .get_mut(hold_id)
            .filter(|h| h.shopper_id == shopper_id)
        else {
            return refuse(StatusCode::NOT_FOUND, "not_found");
        };
        if hold.status != "held" {
            return refuse(StatusCode::CONFLICT, "hold_settled");
        }
        hold.status = "released";
        let answer = hold_json(hold);
        let (deal_id, quantity, amount) = (hold.deal_id.clone(), hold.quantity, hold.amount);
        let deal = state.deals.get_mut(&deal_id).expect("hold of a known deal");
        deal.held -= quantity;
        deal.remaining += i64::try_from(quantity).unwrap_or(0);
        if let Some(units) = deal.units_by_shopper.get_mut(&shopper_id) {
            *units -= quantity;
        }
        let shopper = state.shoppers.get_mut(&token).expect("checked above");
        shopper.held -= amount;
        shopper.available += amount;
        json_answer(StatusCode::OK, &answer)
    }

    fn wallet(&self, token: Option<String>) -> Answer {
        let state = self.state.lock();
        match token.and_then(|t| state.shoppers.get(&t)) {
            Some(shopper) => json_answer(
                StatusCode::OK,
                &json!({
                    "shopper_id": shopper.id,
                    "available": money(shopper.available),
                    "held": money(shopper.held),
                    "spent": money(shopper.spent),
                }),
            ),
            None => refuse(StatusCode::UNAUTHORIZED, "unauthorized"),
        }
    }

    fn orders(&self, token: Option<String>, query: &HashMap<String, String>) -> Answer {
        let state = self.state.lock();
        let Some(merchant_id) = token.and_then(|t| state.merchants.get(&t).cloned()) else {
            return refuse(StatusCode::FORBIDDEN, "forbidden");
        };
        let Some(deal) = query.get("deal_id").and_then(|id| state.deals.get(id)) else {
            return refuse(StatusCode::NOT_FOUND, "not_found");
        };
        if deal.merchant_id != merchant_id {
            return refuse(StatusCode::FORBIDDEN, "forbidden");
        }
        let limit: usize = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100)
            .clamp(1, 1_000);
        let start: usize = query
            .get("cursor")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let of_deal: Vec<&Value> = state
            .orders
            .iter()
            .filter(|order| order["deal_id"] == deal.id.as_str())
            .collect();
        let page: Vec<&Value> = of_deal.iter().skip(start).take(limit).copied().collect();
        let next = start + page.len();
        let next_cursor = (next < of_deal.len()).then(|| next.to_string());
        json_answer(
            StatusCode::OK,
            &json!({ "orders": page, "next_cursor": next_cursor }),
        )
    }
}
