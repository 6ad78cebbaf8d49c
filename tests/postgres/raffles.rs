use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sqlx::PgConnection;

use crate::support::*;

/// Every row of every books table as JSON text, one per line.
async fn every_row(conn: &mut PgConnection) -> String {
    let mut rows = String::new();
    for table in [
        "deals",
        "orders",
        "wallet_movements",
        "registrations",
        "draws",
        "draw_places",
        "order_sink_set_aside",
    ] {
        let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') FROM {table} t"
        )))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        rows.push_str(&text);
        rows.push('\n');
    }
    rows
}

/// A place of a raffle's ranking as Postgres and the API both tell it:
/// 0-based place, shopper, outcome, and for an offer its hold id,
/// quantity, amount and ending (`released`/`expired`/none).
type PlaceRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// What Postgres says of raffle `deal`: registrants (sorted), the draw row
/// (seed, commitment, registrants, registrants hash), the places, and the
/// deal's orders `(id, shopper, hold, amount)` (sorted).
type RaffleBooks = (
    Vec<String>,
    Option<(String, String, i64, String)>,
    Vec<PlaceRow>,
    Vec<(String, String, Option<String>, String)>,
);

async fn raffle_books(conn: &mut PgConnection, deal: &str) -> RaffleBooks {
    let registrants = sqlx::query_scalar(
        "SELECT shopper_id FROM registrations WHERE deal_id = $1 ORDER BY shopper_id",
    )
    .bind(deal)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let draw = sqlx::query_as(
        "SELECT seed, seed_commitment, registrants, registrants_hash FROM draws WHERE id = $1",
    )
    .bind(deal)
    .fetch_optional(&mut *conn)
    .await
    .unwrap();
    // In walk order.
    let places = sqlx::query_as(
        "SELECT (row_number() OVER (ORDER BY journal_position) - 1)::int8, shopper_id, \
         outcome, hold_id, quantity, amount::text, ended FROM draw_places \
         WHERE deal_id = $1 ORDER BY journal_position",
    )
    .bind(deal)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let orders = sqlx::query_as(
        "SELECT id, shopper_id, hold_id, amount::text FROM orders WHERE deal_id = $1 ORDER BY id",
    )
    .bind(deal)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    (registrants, draw, places, orders)
}

/// Polls Postgres until `raffle_books` of `deal` equals `expected` (the
/// sink is behind by a batch or two), then asserts it.
async fn assert_raffle_books(conn: &mut PgConnection, deal: &str, expected: &RaffleBooks) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = raffle_books(conn, deal).await;
        if found == *expected || Instant::now() > deadline {
            assert_eq!(found, *expected);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const RAFFLE_FUNDED: usize = 32;
const RAFFLE_BROKE: usize = 8;
const RAFFLE_STOCK: u64 = 8;

/// A raffle served over HTTP (40 registrants, 8 of them too poor, for 8
/// units) reaches Postgres as the API tells it: the
/// registrations, the draw with its seed (and no seed anywhere in Postgres
/// before the draw), each place of the ranking offered or passed over in
/// walk order, paid holds linked to their orders, released and expired
/// holds marked. Then the sink's position is lost: applying the journal
/// again writes every row once, and a first-come hold's release adds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raffle_reaches_postgres_as_the_api_tells_it_and_its_seed_only_after_the_draw() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &db).await;
    let api = Api::new(&server);
    let merchant = api.merchant().await;
    let created = api
        .deal(
            &merchant,
            serde_json::json!({
                "title": "Phone raffle", "price": "10.00", "stock": RAFFLE_STOCK,
                "starts_at": flashsale_testkit::rfc3339_from_now(6),
                "ends_at": flashsale_testkit::rfc3339_from_now(3600),
                "allocation": "raffle", "hold_seconds": 2,
            }),
        )
        .await;
    let deal = created["id"].as_str().unwrap().to_owned();
    let mut registrants = api.shoppers(RAFFLE_FUNDED, "100.00").await;
    registrants.extend(api.shoppers(RAFFLE_BROKE, "5.00").await);
    let registration = format!("/v1/deals/{deal}/registrations");
    for (_, token) in &registrants {
        api.call(reqwest::Method::POST, &registration, Some(token), None, 201)
            .await;
    }

    // Before the draw: the registrations and the commitment are in
    // Postgres, the seed is nowhere.
    let mut conn = db.connect().await;
    let mut ids: Vec<String> = registrants.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    assert_raffle_books(&mut conn, &deal, &(ids.clone(), None, vec![], vec![])).await;
    let before_draw = every_row(&mut conn).await;
    let (allocation, commitment): (String, Option<String>) =
        sqlx::query_as("SELECT allocation, seed_commitment FROM deals WHERE id = $1")
            .bind(&deal)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(allocation, "raffle");
    assert_eq!(commitment.as_deref(), created["seed_commitment"].as_str());
    let draw_path = format!("/v1/deals/{deal}/draw");
    assert_eq!(
        api.get(&draw_path, None).await["drawn"],
        false,
        "Postgres was read before the draw"
    );

    // The draw runs at starts_at; winners: half pay, a quarter release, a
    // quarter let the hold expire; units pass down the waitlist.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut record = api.get(&draw_path, None).await;
    while record["drawn"] != true {
        assert!(Instant::now() < deadline, "the draw never ran: {record}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        record = api.get(&draw_path, None).await;
    }
    let seed = record["seed"].as_str().unwrap().to_owned();
    assert!(
        !before_draw.contains(&seed),
        "the seed was in Postgres before the draw"
    );
    let me_path = format!("/v1/deals/{deal}/draw/me");
    let mut handled = BTreeSet::new();
    loop {
        let view = api.get(&format!("/v1/deals/{deal}"), None).await;
        if view["sold"] == RAFFLE_STOCK {
            break;
        }
        assert!(Instant::now() < deadline, "never sold out: {view}");
        for (id, token) in &registrants {
            let me = api.get(&me_path, Some(token)).await;
            if me["outcome"] != "won" || me["hold"]["status"] != "active" {
                continue;
            }
            let hold = me["hold"]["id"].as_str().unwrap().to_owned();
            if !handled.insert(id.clone()) {
                continue;
            }
            // By the order holds are seen, not by who won them, so the
            // first four winners release, let expire, pay and pay
            // whatever the seed ranks first.
            match (handled.len() - 1) % 4 {
                0 => {
                    let path = format!("/v1/holds/{hold}");
                    api.call(reqwest::Method::DELETE, &path, Some(token), None, 200)
                        .await;
                }
                1 => {} // lets it expire
                _ => {
                    let path = format!("/v1/holds/{hold}/payment");
                    api.call(reqwest::Method::POST, &path, Some(token), None, 201)
                        .await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What the API says, place by place and order by order.
    let record = api.get(&format!("{draw_path}?limit=1000"), None).await;
    let mut places = Vec::new();
    let mut orders = Vec::new();
    for (id, token) in &registrants {
        let me = api.get(&me_path, Some(token)).await;
        let place = me["place"].as_i64().map(|place| place - 1);
        let hold = &me["hold"];
        match me["outcome"].as_str().unwrap() {
            "won" => {
                let hold_id = hold["id"].as_str().unwrap().to_owned();
                let ended = match hold["status"].as_str().unwrap() {
                    "settled" => {
                        let order = hold["order_id"].as_str().unwrap().to_owned();
                        let amount = hold["amount"].as_str().unwrap().to_owned();
                        orders.push((order, id.clone(), Some(hold_id.clone()), amount));
                        None
                    }
                    ended @ ("released" | "expired") => Some(ended.to_owned()),
                    other => panic!("sold out, yet a hold is {other}"),
                };
                places.push((
                    place.unwrap(),
                    id.clone(),
                    "offered".to_owned(),
                    Some(hold_id),
                    hold["quantity"].as_i64(),
                    hold["amount"].as_str().map(str::to_owned),
                    ended,
                ));
            }
            "passed_over" => {
                places.push((
                    place.unwrap(),
                    id.clone(),
                    "passed_over".to_owned(),
                    None,
                    None,
                    None,
                    None,
                ));
            }
            "not_drawn" => {}
            other => panic!("sold out, yet {id} is {other}"),
        }
    }
    places.sort();
    orders.sort();
    assert_eq!(
        places.len() as u64,
        record["offers_total"].as_u64().unwrap()
    );
    assert_eq!(orders.len() as u64, RAFFLE_STOCK);
    // Units passed down the waitlist: more offers than units, some
    // released, some expired.
    let ended = |how: &str| {
        places
            .iter()
            .filter(|p| p.6.as_deref() == Some(how))
            .count()
    };
    assert!(ended("released") > 0 && ended("expired") > 0, "{places:?}");
    let offered = places.iter().filter(|p| p.2 == "offered").count();
    assert!(offered > RAFFLE_STOCK as usize, "{places:?}");
    // The broke (the last RAFFLE_BROKE registrants) the walk reached are
    // exactly the places passed over (which of them it reaches depends on
    // the seed).
    let broke: BTreeSet<&str> = registrants[RAFFLE_FUNDED..]
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    for place in &places {
        assert_eq!(
            place.2 == "passed_over",
            broke.contains(place.1.as_str()),
            "{place:?}"
        );
    }
    let deal_json = api.get(&format!("/v1/deals/{deal}"), None).await;
    let drawn = (
        seed.clone(),
        deal_json["seed_commitment"].as_str().unwrap().to_owned(),
        record["registrants"].as_i64().unwrap(),
        record["registrants_hash"].as_str().unwrap().to_owned(),
    );
    assert_eq!(drawn.2 as usize, registrants.len());
    assert_eq!(deal_json["seed"].as_str(), Some(seed.as_str()));
    let expected = (ids.clone(), Some(drawn), places, orders);
    assert_raffle_books(&mut conn, &deal, &expected).await;
    // An offered place held its hold for hold_seconds.
    let held: Vec<f64> = sqlx::query_scalar(
        "SELECT DISTINCT extract(epoch FROM expires_at - reached_at)::float8 FROM draw_places \
         WHERE deal_id = $1 AND outcome = 'offered'",
    )
    .bind(&deal)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(held, vec![2.0]);
    // A hold ended after it was offered: expired at or past its expiry,
    // released before it.
    let misdated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM draw_places WHERE deal_id = $1 AND (ended_at < reached_at \
         OR (ended = 'expired' AND ended_at < expires_at) \
         OR (ended = 'released' AND ended_at > expires_at))",
    )
    .bind(&deal)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(misdated, 0);
    let before_loss = every_row(&mut conn).await;
    server.shutdown().await.unwrap();

    // The position lost: the journal is applied again from the start, and
    // what comes after it (a first-come hold released, a new raffle's
    // registrations) lands once too.
    sqlx::query("UPDATE order_sink_positions SET position = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    let server = serve(dir.path(), &db).await;
    let api = Api::new(&server);
    let first_come = api
        .deal(&merchant, first_come_deal("Case", "3.00", 5))
        .await;
    let buyer = api.shoppers(1, "10.00").await.remove(0);
    let hold = api
        .post(
            &format!("/v1/deals/{}/holds", first_come["id"].as_str().unwrap()),
            &buyer.1,
            serde_json::json!({ "quantity": 1 }),
        )
        .await;
    let path = format!("/v1/holds/{}", hold["id"].as_str().unwrap());
    api.call(reqwest::Method::DELETE, &path, Some(&buyer.1), None, 200)
        .await;
    let next = api
        .deal(
            &merchant,
            serde_json::json!({
                "title": "Next raffle", "price": "10.00", "stock": 1,
                "starts_at": flashsale_testkit::rfc3339_from_now(3600),
                "ends_at": flashsale_testkit::rfc3339_from_now(7200),
                "allocation": "raffle",
            }),
        )
        .await;
    let next_deal = next["id"].as_str().unwrap().to_owned();
    let late = api.shoppers(3, "100.00").await;
    for (_, token) in &late {
        let path = format!("/v1/deals/{next_deal}/registrations");
        api.call(reqwest::Method::POST, &path, Some(token), None, 201)
            .await;
    }
    let mut late_ids: Vec<String> = late.iter().map(|(id, _)| id.clone()).collect();
    late_ids.sort();
    assert_raffle_books(&mut conn, &next_deal, &(late_ids, None, vec![], vec![])).await;
    assert_raffle_books(&mut conn, &deal, &expected).await;
    let after: Vec<String> = every_row(&mut conn)
        .await
        .lines()
        .map(str::to_owned)
        .collect();
    for row in before_loss.lines().filter(|row| !row.is_empty()) {
        assert_eq!(
            after.iter().filter(|found| *found == row).count(),
            1,
            "once: {row}"
        );
    }
    let counts: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM draw_places), (SELECT count(*) FROM draws), \
         (SELECT count(*) FROM registrations), (SELECT count(*) FROM order_sink_set_aside)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        counts,
        (
            expected.2.len() as i64,
            1,
            (registrants.len() + late.len()) as i64,
            0
        )
    );
    let metrics = scrape_metrics(&api.client, &api.url).await;
    assert!(
        metrics.lines().any(
            |line| line.starts_with("flashsale_order_sink_merged_batches") && !line.ends_with(" 0")
        ),
        "the lost position was applied by the merge: {metrics}"
    );
    server.shutdown().await.unwrap();
    db.drop_db().await;
}
