//! A flash-sale burst over real HTTP: thousands of taps, concurrent
//! retries with the same key, and the invariants afterwards.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::helpers::{ADMIN, Account, start};

const SHOPPERS: usize = 250;
/// Distinct keys per shopper; each key is sent twice at once.
const KEYS_PER_SHOPPER: usize = 4;
const STOCK: u64 = 100;
const PER_USER_LIMIT: u32 = 2;
const CONCURRENCY: usize = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_sells_exactly_the_stock_and_no_key_buys_twice() {
    let t = Arc::new(start().await);
    let merchant = t.merchant("Xiaomi").await;
    let deal = t.deal(&merchant, "999.00", STOCK, PER_USER_LIMIT).await;
    let bulk = t
        .post(
            "/v1/admin/shoppers",
            Some(ADMIN),
            &json!({ "count": SHOPPERS, "credit": "2000.00" }),
        )
        .await
        .ok(201);
    let shoppers: Vec<Account> = bulk["shoppers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|shopper| Account {
            id: shopper["id"].as_str().unwrap().to_owned(),
            token: shopper["token"].as_str().unwrap().to_owned(),
        })
        .collect();

    // Every (shopper, key) twice, interleaved so retries race each other.
    let mut taps = Vec::new();
    for key in 0..KEYS_PER_SHOPPER {
        for shopper in &shoppers {
            for _ in 0..2 {
                taps.push((shopper.clone(), format!("tap-{key}")));
            }
        }
    }
    assert!(taps.len() >= 2_000);
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(taps.len());
    for (shopper, key) in taps {
        let t = t.clone();
        let deal = deal.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let answer = t.buy(&shopper, &deal, 1, &key).await;
            (shopper.id, key, answer)
        }));
    }
    let mut by_key: HashMap<(String, String), Vec<Value>> = HashMap::new();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for task in tasks {
        let (shopper, key, answer) = task.await.unwrap();
        *statuses.entry(answer.status).or_default() += 1;
        match answer.status {
            201 => by_key.entry((shopper, key)).or_default().push(answer.body),
            409 => assert!(
                matches!(answer.code(), "sold_out" | "purchase_limit_reached"),
                "{}",
                answer.text
            ),
            _ => panic!("unexpected answer {}: {}", answer.status, answer.text),
        }
    }

    // One key, one order, however many retries.
    let mut orders: HashMap<String, Value> = HashMap::new();
    for answers in by_key.values() {
        let ids: HashSet<&str> = answers
            .iter()
            .map(|order| order["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "one key yielded two orders: {answers:?}");
        orders.insert(
            answers[0]["id"].as_str().unwrap().to_owned(),
            answers[0].clone(),
        );
    }
    assert_eq!(orders.len() as u64, STOCK, "statuses: {statuses:?}");
    let view = t.get_deal(&deal).await;
    assert_eq!(
        (&view["sold"], &view["remaining"], &view["held"]),
        (&json!(STOCK), &json!(0), &json!(0))
    );

    // No shopper over its limit; spent equals the orders' amounts.
    let mut units: HashMap<&str, u64> = HashMap::new();
    for order in orders.values() {
        *units
            .entry(order["shopper_id"].as_str().unwrap())
            .or_default() += order["quantity"].as_u64().unwrap();
    }
    assert!(
        units
            .values()
            .all(|&owned| owned <= u64::from(PER_USER_LIMIT))
    );
    let mut spent_fen = 0u64;
    for shopper in &shoppers {
        let wallet = t.wallet(shopper).await;
        let spent = wallet["spent"].as_str().unwrap().replace('.', "");
        spent_fen += spent.parse::<u64>().unwrap();
        let own = t.get("/v1/orders", Some(&shopper.token)).await.ok(200);
        let own = own["orders"].as_array().unwrap().len() as u64;
        assert_eq!(own, units.get(shopper.id.as_str()).copied().unwrap_or(0));
    }
    let amounts_fen: u64 = orders
        .values()
        .map(|order| {
            order["amount"]
                .as_str()
                .unwrap()
                .replace('.', "")
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(spent_fen, amounts_fen);
    assert_eq!(amounts_fen, STOCK * 99_900);

    // The merchant sees the same orders.
    let mut listed = HashSet::new();
    let mut cursor = String::new();
    loop {
        let page = t
            .get(
                &format!("/v1/orders?deal_id={deal}&limit=30{cursor}"),
                Some(&merchant.token),
            )
            .await
            .ok(200);
        for order in page["orders"].as_array().unwrap() {
            listed.insert(order["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(listed, orders.keys().cloned().collect::<HashSet<_>>());
    t.check_invariants();
}
