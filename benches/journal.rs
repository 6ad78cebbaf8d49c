//! Durability benchmarks. Run with `cargo bench --bench journal`.
//!
//! - `disk/write_fdatasync`: the disk's own ceiling, measured in the same
//!   directory: one large write + `fdatasync`, in bytes/s; divided by the
//!   bytes of one order record it is the most orders/s any journal could
//!   make durable there.
//! - `journal/durable_orders`: one-tap buys on a real engine from 4096
//!   tokio tasks (the gateway's default requests in flight), each awaiting
//!   its order's durability (group commit), in orders/s.
//! - `order_sink/postgres` (only with `DATABASE_URL`): orders/s from the
//!   journal on disk into Postgres through the order sink.
//!
//! After criterion, a summary prints each figure as a ratio to its goal:
//! journal ≥ 0.5 × disk ceiling; sink ≥ 100k orders/s.
//! `FLASHSALE_BENCH_SUMMARY=journal` or `=sink` prints only that part (and
//! `=none` neither); criterion's own groups are chosen by its filter
//! argument as usual, e.g. `cargo bench --bench journal -- disk`.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use flashsale_engine::{
    Clock, DealId, Engine, EngineConfig, ManualClock, Money, NewDeal, ShopperId, Timestamp,
};
use flashsale_journal::{Durability, Journal, JournalConfig};

const START: Timestamp = Timestamp(1_795_262_400_000);
/// Threads emitting and waiting at once (requests in flight).
const EMITTERS: usize = 4_096;
const UNITS_PER_SHOPPER: u32 = 1_000;
/// The bytes of one large write in the disk-ceiling measurement.
const CEILING_WRITE_BYTES: usize = 8 << 20;

struct Sale {
    journal: Arc<Journal>,
    engine: Arc<Engine>,
    deal: DealId,
    shoppers: Vec<ShopperId>,
}

fn sale(dir: &Path, buys: u64) -> Sale {
    sale_with(dir, buys, Durability::Sync)
}

fn sale_with(dir: &Path, buys: u64, durability: Durability) -> Sale {
    let config = JournalConfig::new(dir.to_owned(), durability);
    let engine_config = EngineConfig {
        orders_max: usize::MAX / 2,
        holds_max: usize::MAX / 2,
        idempotency_records_max: usize::MAX / 2,
        ..EngineConfig::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START));
    let (journal, engine) = Journal::open(config, engine_config, clock).expect("journal opens");
    let merchant = engine.create_merchant("bench").expect("merchant").id;
    let deal = engine
        .create_deal(
            merchant,
            NewDeal {
                title: "phone".into(),
                price: Money::from_fen(99_900).expect("price"),
                stock: 1_000_000_000,
                per_user_limit: Some(UNITS_PER_SHOPPER),
                starts_at: START,
                ends_at: START.plus_seconds(3600),
                requires_registration: false,
                hold_seconds: Some(600),
                allocation: flashsale_engine::Allocation::FirstCome,
            },
        )
        .expect("deal")
        .id;
    let credit = Money::from_fen(99_900 * i64::from(UNITS_PER_SHOPPER)).expect("credit");
    let mut shoppers = Vec::new();
    let mut left = buys
        .div_ceil(u64::from(UNITS_PER_SHOPPER))
        .max(EMITTERS as u64);
    while left > 0 {
        let count = left.min(10_000) as u32;
        shoppers.extend(engine.create_shoppers(count, credit).expect("shoppers"));
        left -= u64::from(count);
    }
    journal
        .wait_durable(journal.written())
        .expect("setup durable");
    Sale {
        journal,
        engine,
        deal,
        shoppers,
    }
}

/// `buys` orders from `EMITTERS` tokio tasks (as the gateway runs them),
/// each awaiting its own order's durability before the next; returns the
/// elapsed time.
fn durable_orders(
    runtime: &tokio::runtime::Runtime,
    sale: &Sale,
    buys: u64,
    round: u64,
) -> Duration {
    let per_task = buys.div_ceil(EMITTERS as u64);
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::with_capacity(EMITTERS);
        for task in 0..EMITTERS {
            let (journal, engine, deal) = (sale.journal.clone(), sale.engine.clone(), sale.deal);
            let shoppers = sale.shoppers.clone();
            tasks.push(tokio::spawn(async move {
                for index in 0..per_task {
                    let global = task as u64 * per_task + index;
                    let shopper = shoppers[(global as usize) % shoppers.len()];
                    let key = format!("{round}-{global}");
                    engine.buy(shopper, deal, 1, &key).expect("a buy succeeds");
                    journal.durable(journal.written()).await.expect("durable");
                }
            }));
        }
        for task in tasks {
            task.await.expect("emitter");
        }
    });
    started.elapsed()
}

/// `fdatasync`s per second of a small (4 KiB) append in `dir`: the latency
/// ceiling of any group commit there.
fn fsync_rate(dir: &Path, rounds: u32) -> f64 {
    let path = dir.join("fsync-rate.bin");
    let block = vec![0x5a_u8; 4096];
    let mut file = File::create(&path).expect("create");
    let started = Instant::now();
    for _ in 0..rounds {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(&path);
    f64::from(rounds) / elapsed.as_secs_f64()
}

/// Bytes per second of one large write + `fdatasync` in `dir`.
fn disk_ceiling(dir: &Path, rounds: u32) -> f64 {
    let path = dir.join("ceiling.bin");
    let buffer = vec![0x5a_u8; CEILING_WRITE_BYTES];
    let started = Instant::now();
    for _ in 0..rounds {
        let mut file = File::create(&path).expect("create");
        file.write_all(&buffer).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(&path);
    (CEILING_WRITE_BYTES as f64 * f64::from(rounds)) / elapsed.as_secs_f64()
}

/// The bytes one order adds to the journal, measured on disk.
fn bytes_per_order(runtime: &tokio::runtime::Runtime, dir: &Path) -> f64 {
    let sale = sale(dir, 10_000);
    let size = |dir: &Path| -> u64 {
        std::fs::read_dir(dir)
            .expect("dir")
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.path().extension().is_some_and(|e| e == "wal"))
            .map(|entry| entry.metadata().map_or(0, |m| m.len()))
            .sum()
    };
    let before = size(dir);
    durable_orders(runtime, &sale, 10_000, 0);
    (size(dir) - before) as f64 / 10_000.0
}

fn bench_disk(c: &mut Criterion, dir: &Path) {
    let mut group = c.benchmark_group("disk");
    group.throughput(Throughput::Bytes(CEILING_WRITE_BYTES as u64));
    group.sample_size(10);
    group.bench_function("write_fdatasync", |b| {
        b.iter_custom(|iters| {
            let rate = disk_ceiling(dir, iters as u32);
            Duration::from_secs_f64(CEILING_WRITE_BYTES as f64 * iters as f64 / rate)
        });
    });
    group.finish();
}

fn bench_journal(c: &mut Criterion, runtime: &tokio::runtime::Runtime, dir: &Path) {
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    let sale = sale(dir, 4_000_000);
    let mut round = 0;
    group.bench_function("durable_orders", |b| {
        b.iter_custom(|iters| {
            round += 1;
            durable_orders(runtime, &sale, iters, round)
        });
    });
    group.finish();
}

/// Orders/s through the order sink into a fresh database, or `None`
/// without `DATABASE_URL`.
fn postgres_orders_per_second(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    orders: u64,
) -> Option<f64> {
    let url = std::env::var("DATABASE_URL").ok()?;
    let sale = sale(dir, orders);
    durable_orders(runtime, &sale, orders, 0);
    runtime.block_on(async {
        use sqlx::Connection;
        let name = format!(
            "flashsale_bench_{}_{:x}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ u128::from(START.millis() as u64)
        );
        let mut admin = sqlx::PgConnection::connect(&url)
            .await
            .expect("DATABASE_URL is reachable");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        let (base, _) = url.rsplit_once('/').expect("a database URL");
        let db_url = format!("{base}/{name}");
        let started = Instant::now();
        let sink = flashsale_gateway::order_sink::start(
            &db_url,
            sale.journal.clone(),
            std::future::pending(),
        )
        .await
        .expect("sink starts");
        while sink.lag().records > 0 || sink.lag().applied.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        sink.abort().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .expect("drop database");
        Some(orders as f64 / elapsed.as_secs_f64())
    })
}

fn main() {
    let base = std::env::var_os("FLASHSALE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = |name: &str| {
        tempfile::Builder::new()
            .prefix(name)
            .tempdir_in(&base)
            .expect("tempdir")
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut c = Criterion::default().configure_from_args();
    let disk_dir = dir("disk");
    bench_disk(&mut c, disk_dir.path());
    let journal_dir = dir("journal");
    bench_journal(&mut c, &runtime, journal_dir.path());
    drop(journal_dir);
    c.final_summary();

    let summary = std::env::var("FLASHSALE_BENCH_SUMMARY").unwrap_or_else(|_| "all".to_owned());
    let wants = |part: &str| summary == "all" || summary.split(',').any(|p| p == part);
    println!("\n== durability summary");
    if wants("journal") {
        journal_summary(&runtime, disk_dir.path(), &dir);
    }
    if wants("sink") {
        match postgres_orders_per_second(&runtime, dir("postgres").path(), 200_000) {
            Some(rate) => println!(
                "order sink: {rate:.0} orders/s into Postgres = {:.3} x goal of 100k orders/s",
                rate / 100_000.0
            ),
            None => println!("order sink: skipped (DATABASE_URL is not set)"),
        }
    }
}

/// The journal's ratios, from fixed measurements in fresh directories.
fn journal_summary(
    runtime: &tokio::runtime::Runtime,
    disk_dir: &Path,
    dir: &dyn Fn(&str) -> tempfile::TempDir,
) {
    let ceiling_bytes = disk_ceiling(disk_dir, 20);
    let fsyncs_ceiling = fsync_rate(disk_dir, 2_000);
    let record_bytes = bytes_per_order(runtime, dir("bytes").path());
    let ceiling_orders = ceiling_bytes / record_bytes;
    let summary_dir = dir("summary");
    let orders = 400_000;
    let sale = sale(summary_dir.path(), orders + 50_000);
    durable_orders(runtime, &sale, 50_000, 0);
    let syncs_before = sale.journal.stats().syncs;
    let elapsed = durable_orders(runtime, &sale, orders, 1);
    let syncs = sale.journal.stats().syncs - syncs_before;
    let journal_rate = orders as f64 / elapsed.as_secs_f64();
    let journal_fsyncs = syncs as f64 / elapsed.as_secs_f64();
    drop(sale);
    // The same harness without waiting for fsync: what the CPU allows.
    let async_dir = dir("async");
    let sale = sale_with(async_dir.path(), orders + 50_000, Durability::Async);
    durable_orders(runtime, &sale, 50_000, 0);
    let cpu_rate = orders as f64 / durable_orders(runtime, &sale, orders, 1).as_secs_f64();
    drop(sale);
    println!(
        "disk ceiling: {:.1} MiB/s (write {} MiB + fdatasync); {record_bytes:.1} bytes per order record => {ceiling_orders:.0} orders/s",
        ceiling_bytes / f64::from(1 << 20),
        CEILING_WRITE_BYTES >> 20
    );
    println!("disk fdatasync rate (4 KiB appends): {fsyncs_ceiling:.0}/s");
    println!(
        "journal: {journal_rate:.0} durable orders/s from {EMITTERS} tasks, {:.1} orders per fdatasync, {journal_fsyncs:.0} fdatasync/s",
        orders as f64 / syncs.max(1) as f64,
    );
    println!(
        "journal / disk bandwidth ceiling = {:.4} (goal >= 0.5); journal fdatasync/s / disk fdatasync/s = {:.2}",
        journal_rate / ceiling_orders,
        journal_fsyncs / fsyncs_ceiling
    );
    println!(
        "same harness, async durability (CPU ceiling): {cpu_rate:.0} orders/s; sync / async = {:.2}",
        journal_rate / cpu_rate
    );
}
