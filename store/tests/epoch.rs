//! The steps acting for a shopper's token refuse an account made in
//! another epoch than the token: after Redis lost its data a node learns
//! the new epoch only at its next poll, and until then it takes tokens of
//! the old one, whose ids may name accounts made since. Two `RedisStore`s
//! share one namespace on the Redis of `REDIS_URL`, neither running the
//! poller, so the one connected before the loss keeps the old epoch.

mod support;

use flashsale_engine::{Money, OrderCursor, ShopperId, Wallet};
use flashsale_redis::RedisTarget;
use flashsale_store::RedisStore;

async fn store(url: &str, namespace: &str) -> RedisStore {
    support::connect(RedisTarget::Single(url.to_owned()), namespace, None).await
}

/// The field `field` of the account hash of `shopper` (its only key
/// ending in `:acct:<id>` in `namespace`), deleted when `delete`.
fn account_field(
    url: &str,
    namespace: &str,
    shopper: ShopperId,
    field: &str,
    delete: bool,
) -> Option<String> {
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut connection = client.get_connection().expect("Redis answers");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*:acct:{}", shopper.0))
        .query(&mut connection)
        .expect("the account's key");
    assert_eq!(keys.len(), 1, "one account hash: {keys:?}");
    let value: Option<String> = redis::cmd("HGET")
        .arg(&keys[0])
        .arg(field)
        .query(&mut connection)
        .expect("the field");
    if delete {
        let _: () = redis::cmd("HDEL")
            .arg(&keys[0])
            .arg(field)
            .query(&mut connection)
            .expect("the field deleted");
    }
    value
}

fn earlier_epoch<T: std::fmt::Debug>(result: Result<T, flashsale_redis::Error>, what: &str) {
    match result {
        Err(flashsale_redis::Error::EarlierEpoch) => {}
        other => panic!("{what}: expected the epoch refusal, got {other:?}"),
    }
}

/// A shopper made before the loss through node `old`; Redis loses the
/// namespace; node `new` makes a new shopper that gets the same id (and
/// a deal, and a hold of that shopper). `old`, still in the old epoch,
/// acts for the old token's id: buy, hold, pay and release of the hold,
/// registration, and review and share of the new shopper's order are
/// each refused, and the new shopper's wallet, the deal's stock, the hold
/// and the order are as they were. An account without an
/// epoch (an older build's) is taken, and `link` keeps the epoch too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_of_a_newer_epoch_refuses_a_node_in_the_old_one() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let namespace = support::namespace("epochacct");
    let credit = Money::from_fen(1_000).expect("a credit");
    let old = store(&url, &namespace).await;
    let before = old.create_shoppers(1, credit).await.expect("a shopper")[0];
    let old_epoch = old.epoch();

    support::delete_namespace(std::slice::from_ref(&url), &namespace);
    let new = store(&url, &namespace).await;
    assert_ne!(new.epoch(), old_epoch, "an empty Redis has a new epoch");
    let shopper = new.create_shoppers(1, credit).await.expect("a shopper")[0];
    assert_eq!(shopper, before, "ids start again from 1 after the loss");
    assert_eq!(
        account_field(&url, &namespace, shopper, "e", false),
        Some(new.epoch().to_string()),
        "the account keeps the epoch it was made in"
    );
    let merchant = new.create_merchant("epoch").await.expect("a merchant");
    let deal = new
        .create_deal(merchant.id, support::open_deal("epoch", new.now()))
        .await
        .expect("a deal")
        .id;
    let hold = new
        .hold(shopper, deal, 1, "new-hold", new.epoch())
        .await
        .expect("the new shopper holds");
    let wallet = |wallet: Wallet| (wallet.available, wallet.held, wallet.spent);
    let wallet_before = wallet(new.wallet(shopper).await.expect("the wallet"));

    earlier_epoch(old.buy(shopper, deal, 1, "old-buy", old_epoch).await, "buy");
    earlier_epoch(
        old.hold(shopper, deal, 1, "old-hold", old_epoch).await,
        "hold",
    );
    earlier_epoch(old.pay_hold(shopper, hold.id, old_epoch).await, "pay");
    earlier_epoch(
        old.release_hold(shopper, hold.id, old_epoch).await,
        "release",
    );
    earlier_epoch(old.register(shopper, deal, old_epoch).await, "register");

    assert_eq!(
        wallet(new.wallet(shopper).await.expect("the wallet")),
        wallet_before,
        "the refused steps changed the wallet"
    );
    let view = new.deal(deal).await.expect("the deal");
    assert_eq!(
        (view.counts.remaining, view.counts.held, view.counts.sold),
        (9, 1, 0),
        "the refused steps changed the stock"
    );
    let page = new
        .orders_of_shopper(shopper, None, OrderCursor::default(), 10)
        .await
        .expect("the orders");
    assert!(
        page.orders.is_empty(),
        "an order was made: {:?}",
        page.orders
    );

    // A node of the account's epoch acts for it.
    let (order, _) = new
        .buy(shopper, deal, 1, "new-buy", new.epoch())
        .await
        .expect("the new epoch's node buys");

    // Reviewing and sharing the new shopper's order: refused the same, so
    // the new shopper's own review and share are still the first.
    earlier_epoch(
        old.review(shopper, order.id, [5, 5, 5], "old", old_epoch)
            .await,
        "review",
    );
    earlier_epoch(old.share(shopper, order.id, old_epoch).await, "share");
    new.review(shopper, order.id, [4, 4, 4], "new", new.epoch())
        .await
        .expect("the order's first review");
    assert!(
        new.share(shopper, order.id, new.epoch())
            .await
            .expect("a share"),
        "the order's first share"
    );

    // An account without an epoch (made by an older build) has none to
    // compare: taken.
    account_field(&url, &namespace, shopper, "e", true);
    old.buy(shopper, deal, 1, "old-buy-no-epoch", old_epoch)
        .await
        .expect("an account without an epoch is taken");

    // `link` makes accounts with the epoch too.
    let (linked, made) = new
        .link_shopper("platform-user", "linked", credit, "signup")
        .await
        .expect("a linked shopper");
    assert!(made, "the link made the account");
    assert_eq!(
        account_field(&url, &namespace, linked.id, "e", false),
        Some(new.epoch().to_string()),
        "a linked account keeps the epoch it was made in"
    );

    support::delete_namespace(&[url], &namespace);
}
