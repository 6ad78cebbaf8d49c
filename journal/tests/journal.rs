//! The journal end to end on a real directory: group commit, recovery
//! round trips, torn tails, corruption, snapshots, segment rollover and
//! pruning, the shard-count guard.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flashsale_engine::{
    Account, Clock, DealChange, DealId, DealView, Engine, EngineConfig, EngineError, Event, Hold,
    HoldId, ManualClock, MerchantId, Money, NewDeal, Order, OrderCursor, ShopperId, Timestamp,
    Wallet,
};
use flashsale_journal::{Durability, Journal, JournalConfig, JournalError, JournalReader};

const START: Timestamp = Timestamp(1_750_000_000_000);

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(START))
}

fn config(dir: &Path) -> JournalConfig {
    JournalConfig::new(dir.to_owned(), Durability::Sync)
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        shards: 8,
        ..EngineConfig::default()
    }
}

fn open_with(
    config: JournalConfig,
    clock: &Arc<ManualClock>,
) -> Result<(Arc<Journal>, Arc<Engine>), JournalError> {
    let clock: Arc<dyn Clock> = clock.clone();
    Journal::open(config, engine_config(), clock)
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> (Arc<Journal>, Arc<Engine>) {
    open_with(config(dir), clock).expect("the journal opens")
}

fn fen(amount: i64) -> Money {
    Money::from_fen(amount).expect("a valid amount")
}

fn new_deal(title: &str, stock: u64, starts_at: Timestamp) -> NewDeal {
    NewDeal {
        title: title.into(),
        price: fen(99_900),
        stock,
        per_user_limit: Some(3),
        starts_at,
        ends_at: START.plus_seconds(3600),
        requires_registration: false,
        hold_seconds: Some(60),
        allocation: flashsale_engine::Allocation::FirstCome,
    }
}

/// What must survive a restart exactly.
#[derive(Debug, PartialEq)]
struct State {
    deals: Vec<DealView>,
    wallets: Vec<(ShopperId, Wallet)>,
    orders: Vec<Order>,
    holds: Vec<Hold>,
}

fn state(engine: &Engine, shoppers: &[ShopperId], holds: &[HoldId]) -> State {
    engine.check_invariants().expect("invariants hold");
    let mut orders = Vec::new();
    for &shopper in shoppers {
        orders.extend(
            engine
                .orders_of_shopper(shopper, None, OrderCursor::default(), 10_000)
                .orders,
        );
    }
    State {
        deals: engine.deals_newest_first(None, 1_000),
        wallets: shoppers
            .iter()
            .map(|&shopper| (shopper, engine.wallet(shopper).expect("a wallet")))
            .collect(),
        orders,
        holds: holds
            .iter()
            .map(|&hold| engine.hold_by_id(hold).expect("a hold"))
            .collect(),
    }
}

/// Every kind of event: deals, registrations, credits, buys, holds, pays,
/// releases, expiries, late payments, restocks and deal changes.
struct Scenario {
    merchant: MerchantId,
    deal: DealId,
    later: DealId,
    shoppers: Vec<ShopperId>,
    holds: Vec<HoldId>,
}

fn drive(engine: &Engine, clock: &ManualClock) -> Scenario {
    let merchant = engine.create_merchant("Xiaomi").unwrap().id;
    let later = engine
        .create_deal(merchant, {
            let mut deal = new_deal("Later phone", 5, START.plus_seconds(600));
            deal.requires_registration = true;
            deal
        })
        .unwrap()
        .id;
    let deal = engine
        .create_deal(merchant, new_deal("Phone", 20, START))
        .unwrap()
        .id;
    let mut shoppers = Vec::new();
    for index in 0..6 {
        let shopper = engine
            .create_shopper(&format!("shopper {index}"))
            .unwrap()
            .id;
        engine
            .credit_wallet(shopper, fen(500_000), &format!("topup-{index}"))
            .unwrap();
        shoppers.push(shopper);
    }
    shoppers.extend(engine.create_shoppers(3, fen(300_000)).unwrap());
    for &shopper in &shoppers[..4] {
        assert!(engine.register(shopper, later).unwrap());
    }
    for (index, &shopper) in shoppers.iter().enumerate() {
        engine
            .buy(shopper, deal, 1, &format!("buy-{index}"))
            .unwrap();
    }
    let mut holds = Vec::new();
    for (index, &shopper) in shoppers[..5].iter().enumerate() {
        holds.push(
            engine
                .hold(shopper, deal, 1, &format!("hold-{index}"))
                .unwrap()
                .id,
        );
    }
    engine.pay_hold(shoppers[0], holds[0]).unwrap();
    engine.release_hold(shoppers[1], holds[1]).unwrap();
    clock.advance_seconds(61);
    engine.pay_hold(shoppers[2], holds[2]).unwrap(); // late
    assert!(engine.expire_holds() >= 1);
    // A hold still active at the restart, with its expiry.
    holds.push(engine.hold(shoppers[5], deal, 1, "hold-active").unwrap().id);
    engine
        .update_deal(
            merchant,
            deal,
            DealChange {
                add_stock: Some(7),
                ends_at: Some(START.plus_seconds(7200)),
                paused: None,
            },
        )
        .unwrap();
    // Reviews and shares feed the merchant's rating and the deal's popularity.
    let first = engine
        .orders_of_shopper(shoppers[0], None, OrderCursor::default(), 10)
        .orders[0]
        .id;
    engine
        .review(shoppers[0], first, [5, 4, 3], "fast")
        .unwrap();
    assert!(engine.share(shoppers[0], first).unwrap());
    Scenario {
        merchant,
        deal,
        later,
        shoppers,
        holds,
    }
}

#[test]
fn a_restart_restores_exactly_and_keeps_idempotent_retries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let (journal, engine) = open(dir.path(), &clock);
    let scenario = drive(&engine, &clock);
    journal.wait_durable(journal.written()).unwrap();
    let retried = engine
        .buy(scenario.shoppers[3], scenario.deal, 1, "buy-3")
        .unwrap();
    // Shopper 0 owns 2 (a buy and a paid hold); a third reaches the limit of 3.
    engine
        .buy(scenario.shoppers[0], scenario.deal, 1, "buy-to-limit")
        .unwrap();
    journal.wait_durable(journal.written()).unwrap();
    let before = state(&engine, &scenario.shoppers, &scenario.holds);
    let rating = engine.rating(scenario.merchant);
    let written = journal.written();
    // A crash-like stop: no final snapshot, recovery replays everything.
    drop(engine);
    drop(journal);

    let (journal, engine) = open(dir.path(), &clock);
    assert_eq!(journal.written(), written);
    assert_eq!(state(&engine, &scenario.shoppers, &scenario.holds), before);
    let again = engine
        .buy(scenario.shoppers[3], scenario.deal, 1, "buy-3")
        .unwrap();
    assert_eq!(again, retried, "an idempotent retry gets the same order");
    assert_eq!(journal.written(), written, "a retry emits nothing");
    // Per-user counts, registrations, reviews and shares came back too.
    assert_eq!(
        engine.buy(scenario.shoppers[0], scenario.deal, 1, "buy-over"),
        Err(EngineError::PurchaseLimitReached { limit: 3 })
    );
    assert_eq!(
        engine.register(scenario.shoppers[1], scenario.later),
        Ok(false)
    );
    assert_eq!(engine.rating(scenario.merchant), rating);
    let first = before.orders[0].id;
    assert_eq!(
        engine.review(scenario.shoppers[0], first, [1, 1, 1], "again"),
        Err(EngineError::AlreadyReviewed)
    );
    assert_eq!(engine.share(scenario.shoppers[0], first), Ok(false));
    // The active hold still expires on time after the restart.
    clock.advance_seconds(61);
    assert_eq!(engine.expire_holds(), 1);
    let after_expiry = state(&engine, &scenario.shoppers, &scenario.holds);
    journal.close(&engine).unwrap();
    drop(engine);
    drop(journal);

    // A clean close leaves a snapshot; start-up loads it.
    let (journal, engine) = open(dir.path(), &clock);
    assert!(journal.stats().snapshot_position > 0);
    assert_eq!(
        state(&engine, &scenario.shoppers, &scenario.holds),
        after_expiry
    );
    let merchant_deal = engine.deal(scenario.deal).unwrap();
    assert_eq!(merchant_deal.merchant, scenario.merchant);
    assert_eq!(
        engine
            .buy(scenario.shoppers[3], scenario.deal, 1, "buy-3")
            .unwrap(),
        retried
    );
}

#[test]
fn group_commit_makes_many_events_durable_with_few_fsyncs() {
    const THREADS: usize = 8;
    const BUYS_PER_THREAD: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let (journal, engine) = open(dir.path(), &clock);
    let merchant = engine.create_merchant("m").unwrap().id;
    let deal = engine
        .create_deal(merchant, new_deal("d", 1_000_000, START))
        .unwrap()
        .id;
    let shoppers = engine
        .create_shoppers((THREADS * BUYS_PER_THREAD) as u32, fen(1_000_000))
        .unwrap();
    journal.wait_durable(journal.written()).unwrap();
    let syncs_before = journal.stats().syncs;
    let events_before = journal.written();
    std::thread::scope(|scope| {
        for chunk in shoppers.chunks(BUYS_PER_THREAD) {
            let (journal, engine) = (&journal, &engine);
            scope.spawn(move || {
                for &shopper in chunk {
                    engine.buy(shopper, deal, 1, "k").unwrap();
                    journal.wait_durable(journal.written()).unwrap();
                }
            });
        }
    });
    let events = journal.written() - events_before;
    let syncs = journal.stats().syncs - syncs_before;
    assert_eq!(events, (THREADS * BUYS_PER_THREAD) as u64);
    assert_eq!(journal.durable_position(), journal.written());
    assert!(syncs < events, "{syncs} fsyncs for {events} events");
    assert!(syncs > 0);
}

#[tokio::test]
async fn durable_resolves_for_async_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let (journal, engine) = open(dir.path(), &clock);
    let merchant = engine.create_merchant("m").unwrap().id;
    engine
        .create_deal(merchant, new_deal("d", 10, START))
        .unwrap();
    let mut waiters = Vec::new();
    for index in 0..50 {
        let (journal, engine) = (journal.clone(), engine.clone());
        waiters.push(tokio::spawn(async move {
            engine.create_shopper(&format!("s{index}")).unwrap();
            journal.durable(journal.written()).await
        }));
    }
    for waiter in waiters {
        waiter.await.unwrap().unwrap();
    }
    assert!(journal.is_ready());
    assert_eq!(journal.durable_position(), journal.written());
}

#[test]
fn async_mode_answers_at_once_and_flushes_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let mut config = config(dir.path());
    config.durability = Durability::Async;
    config.async_flush_interval = Duration::from_millis(5);
    let (journal, engine) = open_with(config, &clock).unwrap();
    engine.create_merchant("m").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime
        .block_on(journal.durable(journal.written()))
        .unwrap();
    journal.wait_durable(journal.written()).unwrap();
    assert_eq!(journal.durable_position(), 1);
    drop(engine);
    drop(journal);
    let (journal, engine) = open(dir.path(), &clock);
    assert_eq!(journal.written(), 1);
    assert!(engine.merchant(MerchantId(1)).is_some());
}

/// Frame offsets of every record in a segment, read by hand.
fn record_offsets(path: &Path) -> Vec<(u64, u64)> {
    let bytes = fs::read(path).unwrap();
    let mut offsets = Vec::new();
    let mut at = 16;
    while at + 8 <= bytes.len() {
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        offsets.push((at as u64, (8 + length) as u64));
        at += 8 + length;
    }
    offsets
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
}

/// A journal of one merchant and `shoppers` shoppers, closed without a snapshot.
fn small_journal(dir: &Path, clock: &Arc<ManualClock>, shoppers: usize) -> u64 {
    let (journal, engine) = open(dir, clock);
    engine.create_merchant("m").unwrap();
    for index in 0..shoppers {
        engine.create_shopper(&format!("s{index}")).unwrap();
    }
    journal.wait_durable(journal.written()).unwrap();
    journal.written()
}

#[test]
fn a_torn_last_record_is_cut_off() {
    let clock = clock();
    for damage in ["cut", "corrupt", "zeros"] {
        let dir = tempfile::tempdir().unwrap();
        let written = small_journal(dir.path(), &clock, 10);
        let segment = segments(dir.path()).pop().unwrap();
        let (last_offset, last_length) = *record_offsets(&segment).last().unwrap();
        let file = OpenOptions::new().write(true).open(&segment).unwrap();
        match damage {
            "cut" => file.set_len(last_offset + last_length - 3).unwrap(),
            "corrupt" => {
                let mut bytes = fs::read(&segment).unwrap();
                let end = bytes.len();
                bytes[end - 1] ^= 0xff;
                fs::write(&segment, bytes).unwrap();
            }
            _ => {
                // A crash after the size grew but before the data landed.
                file.set_len(last_offset + last_length + 4096).unwrap();
                let mut bytes = fs::read(&segment).unwrap();
                bytes[last_offset as usize..].fill(0);
                fs::write(&segment, bytes).unwrap();
            }
        }
        drop(file);

        let (journal, engine) = open(dir.path(), &clock);
        assert_eq!(journal.written(), written - 1, "{damage}");
        assert!(engine.shopper(ShopperId(9)).is_some());
        assert!(engine.shopper(ShopperId(10)).is_none(), "{damage}");
        assert_eq!(fs::metadata(&segment).unwrap().len(), last_offset);
        // The journal goes on from there, and reopens cleanly.
        engine.create_shopper("again").unwrap();
        journal.wait_durable(journal.written()).unwrap();
        drop(engine);
        drop(journal);
        let (journal, engine) = open(dir.path(), &clock);
        assert_eq!(journal.written(), written);
        assert_eq!(engine.shopper(ShopperId(10)).unwrap().name, "again");
    }
}

#[test]
fn corruption_before_the_tail_stops_start_up_naming_file_and_offset() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    small_journal(dir.path(), &clock, 10);
    let segment = segments(dir.path()).pop().unwrap();
    let (offset, length) = record_offsets(&segment)[4];
    let mut bytes = fs::read(&segment).unwrap();
    bytes[(offset + length - 1) as usize] ^= 0x55;
    fs::write(&segment, bytes).unwrap();

    let error = open_with(config(dir.path()), &clock)
        .err()
        .expect("start-up refuses");
    match &error {
        JournalError::Corrupt {
            file, offset: at, ..
        } => {
            assert_eq!(file, &segment);
            assert_eq!(*at, offset);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&segment.display().to_string()),
        "{message}"
    );
    assert!(message.contains(&format!("offset {offset}")), "{message}");
    // Nothing was cut: the file still holds every record.
    assert_eq!(record_offsets(&segment).len(), 11);
}

#[test]
fn a_snapshot_then_the_records_after_it_restore_the_state() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let (journal, engine) = open(dir.path(), &clock);
    let scenario = drive(&engine, &clock);
    journal.wait_durable(journal.written()).unwrap();
    let position = journal.snapshot_now().unwrap();
    assert_eq!(position, journal.written());
    assert_eq!(journal.stats().snapshot_position, position);
    // More after the snapshot.
    engine
        .buy(scenario.shoppers[6], scenario.deal, 2, "after-snapshot")
        .unwrap();
    clock.advance_seconds(61);
    engine.expire_holds();
    journal.wait_durable(journal.written()).unwrap();
    let before = state(&engine, &scenario.shoppers, &scenario.holds);
    let written = journal.written();
    drop(engine);
    drop(journal);

    let (journal, engine) = open(dir.path(), &clock);
    assert_eq!(journal.written(), written);
    assert_eq!(journal.stats().snapshot_position, position);
    assert_eq!(state(&engine, &scenario.shoppers, &scenario.holds), before);
}

#[test]
fn segments_roll_over_and_pruning_keeps_what_readers_need() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.segment_bytes_max = 512;
    let (journal, engine) = open_with(config, &clock).unwrap();
    engine.create_merchant("m").unwrap();
    for index in 0..200 {
        engine.create_shopper(&format!("shopper {index}")).unwrap();
        if index % 10 == 0 {
            journal.wait_durable(journal.written()).unwrap();
        }
    }
    journal.wait_durable(journal.written()).unwrap();
    let written = journal.written();
    assert!(segments(dir.path()).len() > 5, "segments roll over");
    for segment in segments(dir.path()) {
        assert!(fs::metadata(&segment).unwrap().len() <= 512);
    }

    // A reader sees every position once, in order, across segments.
    let mut reader = JournalReader::open(dir.path(), 1).unwrap();
    let mut seen = Vec::new();
    loop {
        let batch = reader.next_batch(37, written).unwrap();
        if batch.is_empty() {
            break;
        }
        seen.extend(batch);
    }
    assert_eq!(seen.len() as u64, written);
    assert!(
        seen.iter()
            .enumerate()
            .all(|(i, (p, _))| *p == i as u64 + 1)
    );
    assert!(matches!(seen[0].1, Event::MerchantCreated { .. }));

    // Pruning keeps what a reader has not consumed.
    journal.retain_from(100);
    journal.snapshot_now().unwrap();
    assert!(journal.oldest_position().unwrap() <= 100);
    assert!(
        journal.oldest_position().unwrap() > 1,
        "older segments went"
    );
    let mut reader = JournalReader::open(dir.path(), 100).unwrap();
    assert_eq!(reader.next_batch(1, written).unwrap()[0].0, 100);
    assert!(matches!(
        JournalReader::open(dir.path(), 1),
        Err(JournalError::Truncated { .. })
    ));

    // Without a reader, everything before the snapshot goes but the last segment.
    journal.retain_from(u64::MAX);
    engine.create_shopper("one more").unwrap();
    journal.wait_durable(journal.written()).unwrap();
    journal.snapshot_now().unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    let snapshots = fs::read_dir(dir.path())
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == "snap")
        })
        .count();
    assert_eq!(snapshots, 1, "older snapshots are deleted");
    let written = journal.written();
    drop(engine);
    drop(journal);
    let (journal, engine) = open(dir.path(), &clock);
    assert_eq!(journal.written(), written);
    assert_eq!(engine.shopper(ShopperId(201)).unwrap().name, "one more");
}

#[test]
fn the_shard_count_cannot_change() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    small_journal(dir.path(), &clock, 1);
    let other = EngineConfig {
        shards: 16,
        ..EngineConfig::default()
    };
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let error = Journal::open(config(dir.path()), other, dyn_clock)
        .err()
        .expect("refused");
    assert!(
        matches!(
            error,
            JournalError::ShardCountMismatch {
                stored: 8,
                configured: 16,
                ..
            }
        ),
        "{error:?}"
    );
}

/// Sets the format byte of every segment header and the meta file's
/// format line of `dir` to `version`.
fn set_format(dir: &Path, version: u8) {
    for segment in segments(dir) {
        let mut bytes = fs::read(&segment).unwrap();
        bytes[4] = version;
        fs::write(&segment, bytes).unwrap();
    }
    let meta = dir.join("journal.meta");
    let text = fs::read_to_string(&meta).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    assert!(first.starts_with("flashsale-journal format "), "{first}");
    fs::write(&meta, format!("flashsale-journal format {version}\n{rest}")).unwrap();
}

/// Formats 3 and 4 only appended (events, and the snapshot's links and
/// revocations), so a format-2 or format-3 directory replays; it is format
/// 4 from then on (an older build refuses it). Format 1 is refused.
#[test]
fn a_format_2_or_3_directory_replays_and_becomes_format_4() {
    for version in [2, 3] {
        older_directory_replays(version);
    }
}

fn older_directory_replays(version: u8) {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let written = small_journal(dir.path(), &clock, 3);
    set_format(dir.path(), version);
    let (journal, engine) = open(dir.path(), &clock);
    assert_eq!(journal.written(), written);
    assert!(engine.shopper(ShopperId(3)).is_some());
    let meta = fs::read_to_string(dir.path().join("journal.meta")).unwrap();
    assert!(meta.starts_with("flashsale-journal format 4\n"), "{meta}");
    engine.create_shopper("after").unwrap();
    journal.wait_durable(journal.written()).unwrap();
    drop(engine);
    drop(journal);
    let (journal, engine) = open(dir.path(), &clock);
    assert_eq!(journal.written(), written + 1);
    assert_eq!(engine.shopper(ShopperId(4)).unwrap().name, "after");
    drop(engine);
    drop(journal);

    set_format(dir.path(), 1);
    assert!(matches!(
        open_with(config(dir.path()), &clock),
        Err(JournalError::Meta { .. })
    ));
    let meta = dir.path().join("journal.meta");
    let text = fs::read_to_string(&meta).unwrap();
    fs::write(&meta, text.replacen("format 1", "format 4", 1)).unwrap();
    assert!(matches!(
        open_with(config(dir.path()), &clock),
        Err(JournalError::UnsupportedFormat {
            found: 1,
            oldest: 2,
            newest: 4,
            ..
        })
    ));
}

/// A revocation is journalled: it survives a restart, from the segments
/// and from a snapshot, and a snapshot of journal format 3 (which has no
/// revocations) still loads.
#[test]
fn a_revocation_survives_restarts_from_segments_and_snapshots() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let (journal, engine) = open(dir.path(), &clock);
    let shopper = engine.create_shopper("ann").unwrap().id;
    let merchant = engine.create_merchant("shop").unwrap().id;
    let line = engine.revoke_tokens(Account::Shopper(shopper)).unwrap();
    journal.wait_durable(journal.written()).unwrap();
    drop(engine);
    drop(journal);

    let (journal, engine) = open(dir.path(), &clock);
    assert_eq!(
        engine.tokens_not_before(Account::Shopper(shopper)),
        Some(line)
    );
    assert_eq!(engine.tokens_not_before(Account::Merchant(merchant)), None);
    journal.snapshot_now().unwrap();
    clock.advance_millis(7);
    let merchant_line = engine.revoke_tokens(Account::Merchant(merchant)).unwrap();
    journal.wait_durable(journal.written()).unwrap();
    drop(engine);
    drop(journal);

    let (journal, engine) = open(dir.path(), &clock);
    assert!(journal.stats().snapshot_position > 0);
    assert_eq!(
        engine.tokens_not_before(Account::Shopper(shopper)),
        Some(line)
    );
    assert_eq!(
        engine.tokens_not_before(Account::Merchant(merchant)),
        Some(merchant_line)
    );
    drop(engine);
    drop(journal);

    // A format-3 snapshot is a format-4 one without the links' and the
    // revocations' lists.
    let dir = tempfile::tempdir().unwrap();
    let written = small_journal(dir.path(), &clock, 2);
    let (journal, engine) = open(dir.path(), &clock);
    let position = journal.snapshot_now().unwrap();
    drop(engine);
    drop(journal);
    let snapshot = dir.path().join(format!("snapshot-{position:020}.snap"));
    let mut bytes = fs::read(&snapshot).unwrap();
    for _list in 0..3 {
        assert_eq!(bytes.pop(), Some(0), "an empty list is one zero byte");
    }
    bytes[4] = 3;
    let body = bytes.len() as u64 - 32;
    bytes[16..24].copy_from_slice(&body.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[32..]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    fs::write(&snapshot, bytes).unwrap();
    let (journal, engine) = open(dir.path(), &clock);
    assert_eq!(journal.stats().snapshot_position, position);
    assert_eq!(journal.written(), written);
    assert!(engine.shopper(ShopperId(2)).is_some());
}

#[test]
fn one_process_per_directory() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let (_journal, _engine) = open(dir.path(), &clock);
    assert!(matches!(
        open_with(config(dir.path()), &clock),
        Err(JournalError::Locked { .. })
    ));
}

#[test]
fn close_flushes_snapshots_and_refuses_later_events() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let (journal, engine) = open(dir.path(), &clock);
    engine.create_merchant("m").unwrap();
    journal.close(&engine).unwrap();
    assert_eq!(journal.stats().snapshot_position, 1);
    assert!(!journal.is_ready());
    engine.create_merchant("late").unwrap();
    assert!(journal.wait_durable(journal.written()).is_err());
    journal.close(&engine).unwrap();
}

#[test]
fn a_disk_error_stops_the_writer_and_nothing_after_it_is_reported_durable() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.segment_bytes_max = 1; // every record after the first rolls to a new segment
    let (journal, engine) = open_with(config.clone(), &clock).unwrap();
    engine.create_merchant("m").unwrap();
    journal.wait_durable(journal.written()).unwrap();
    let durable = journal.durable_position();
    assert!(journal.is_ready());

    // The next segment's file is a full disk: its first write fails (ENOSPC).
    let next_segment = dir.path().join(format!("{:020}.wal", durable + 1));
    std::os::unix::fs::symlink("/dev/full", &next_segment).unwrap();
    let shopper = engine.create_shopper("s").unwrap().id;
    let error = journal.wait_durable(journal.written()).unwrap_err();
    assert!(
        matches!(&error, JournalError::WriterFailed { reason } if reason.contains("space")),
        "{error}"
    );
    assert_eq!(journal.durable_position(), durable);
    assert!(!journal.is_ready(), "a failed journal sheds load");
    // Later events and async waiters get the same error, at once.
    engine.create_shopper("t").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let later = runtime.block_on(journal.durable(journal.written()));
    assert!(matches!(later, Err(JournalError::WriterFailed { .. })));
    assert_eq!(journal.durable_position(), durable);
    drop(engine);
    drop(journal);

    // Once the disk is fixed, a restart holds exactly what was durable.
    fs::remove_file(&next_segment).unwrap();
    let (journal, engine) = open_with(config, &clock).unwrap();
    assert_eq!(journal.written(), durable);
    assert!(engine.shopper(shopper).is_none());
    assert!(engine.merchant(MerchantId(1)).is_some());
}

/// Every file of a journal is its owner's only (a segment or snapshot can
/// hold the seed of a raffle not yet drawn), and files an older build left
/// readable by others are tightened when the journal opens.
#[test]
fn journal_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let modes = |dir: &Path| -> Vec<(String, u32)> {
        let mut modes: Vec<(String, u32)> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
                (entry.file_name().to_string_lossy().into_owned(), mode)
            })
            .collect();
        modes.sort();
        modes
    };
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let (journal, engine) = open(dir.path(), &clock);
    drive(&engine, &clock);
    journal.wait_durable(journal.written()).unwrap();
    journal.snapshot_now().unwrap();
    drop(engine);
    drop(journal);
    let written = modes(dir.path());
    assert!(
        written.len() >= 3,
        "meta, a segment, a snapshot: {written:?}"
    );
    for (name, mode) in &written {
        assert_eq!(*mode & 0o077, 0, "{name} is {mode:o}");
    }
    // As an older build left them: readable by all.
    for (name, _) in &written {
        fs::set_permissions(dir.path().join(name), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (journal, engine) = open(dir.path(), &clock);
    drop(engine);
    drop(journal);
    for (name, mode) in modes(dir.path()) {
        assert_eq!(mode, 0o600, "{name} after a reopen");
    }
}

/// An external id's account survives a crash-like stop (replay of
/// `ShopperLinked`/`MerchantLinked`) and a snapshot (its links): after
/// each reopen, the same external id finds the same account.
#[test]
fn linked_accounts_survive_restarts_by_replay_and_by_snapshot() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let (journal, engine) = open(dir.path(), &clock);
    let (shopper, made) = engine.link_shopper("auth0|1", "Ann").unwrap();
    assert!(made);
    let (merchant, _) = engine.link_merchant("auth0|m", "Shop").unwrap();
    journal.wait_durable(journal.written()).unwrap();
    // A crash-like stop: no final snapshot, recovery replays the records.
    drop(engine);
    drop(journal);
    let (journal, engine) = open(dir.path(), &clock);
    assert_eq!(
        engine.link_shopper("auth0|1", "other").unwrap(),
        (shopper.clone(), false)
    );
    assert_eq!(
        engine.link_merchant("auth0|m", "other").unwrap(),
        (merchant.clone(), false)
    );
    journal.snapshot_now().unwrap();
    let (second, made) = engine.link_shopper("auth0|2", "Bob").unwrap();
    assert!(made);
    journal.wait_durable(journal.written()).unwrap();
    drop(engine);
    drop(journal);
    // The snapshot holds the first links, the records after it the second.
    let (_journal, engine) = open(dir.path(), &clock);
    assert!(_journal.stats().snapshot_position > 0);
    assert_eq!(engine.shopper(shopper.id), Some(shopper.clone()));
    assert_eq!(
        engine.link_shopper("auth0|1", "x").unwrap(),
        (shopper, false)
    );
    assert_eq!(
        engine.link_shopper("auth0|2", "x").unwrap(),
        (second, false)
    );
    assert_eq!(
        engine.link_merchant("auth0|m", "x").unwrap(),
        (merchant, false)
    );
}
