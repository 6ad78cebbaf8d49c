//! The shopper's page at `/`: the feed as cards, linking a wallet, the
//! one-tap buy and its outcome, and what changes live through the feed's
//! Server-Sent Events while the page stays open: a card's numbers, and a
//! newly posted deal taking the first place.

use std::sync::Arc;

use hyper::StatusCode;
use tokio::task::JoinSet;

use crate::browser::{Browser, in_card, testid};
use crate::server::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_wallet_buys_and_the_card_shows_the_order_and_the_stock_drop() {
    let server = Server::start();
    let merchant = server.create_merchant("acme").await;
    let deal = server
        .create_deal(&merchant, "Phone X 256 GB", "999.00", 10)
        .await;
    let Some(browser) = Browser::open(&server.url).await else {
        return;
    };
    browser.goto("/").await;

    browser
        .wait_text(&in_card(&deal, "deal-title"), "the deal's card", |text| {
            text == "Phone X 256 GB"
        })
        .await;
    assert_eq!(
        browser.text(&in_card(&deal, "deal-price")).await.as_deref(),
        Some("¥999.00")
    );
    let merchant_line = browser.text(&in_card(&deal, "deal-merchant")).await;
    assert!(
        merchant_line
            .as_deref()
            .is_some_and(|line| line.starts_with("acme")),
        "the card names the merchant: {merchant_line:?}"
    );
    browser
        .wait_text(&in_card(&deal, "deal-remaining"), "10 left", |text| {
            text == "10"
        })
        .await;

    // A tap before a wallet is linked asks for the wallet, and buys nothing.
    browser.click(&in_card(&deal, "buy-button")).await;
    browser
        .wait_text(
            &in_card(&deal, "buy-outcome"),
            "the page asks for a wallet first",
            |text| text.starts_with("Link your wallet"),
        )
        .await;

    browser.type_into(&testid("shopper-name"), "Li Wei").await;
    browser.click(&testid("link-wallet")).await;
    browser
        .wait_text(
            &testid("wallet-available"),
            "the new wallet holds the signup credit",
            |text| text == "¥5000.00",
        )
        .await;

    browser.click(&in_card(&deal, "buy-button")).await;
    browser
        .wait_text(
            &in_card(&deal, "buy-outcome"),
            "the order is placed",
            |text| text.starts_with("Order placed"),
        )
        .await;
    browser
        .wait_text(&in_card(&deal, "deal-remaining"), "9 left", |text| {
            text == "9"
        })
        .await;
    browser
        .wait_text(
            &testid("wallet-available"),
            "the wallet paid 999.00",
            |text| text == "¥4001.00",
        )
        .await;
    browser.screenshot("storefront-order-placed").await;

    // One per shopper: a second buy, from the keyboard, is refused plainly.
    browser.press_enter(&in_card(&deal, "buy-button")).await;
    browser
        .wait_text(
            &in_card(&deal, "buy-outcome"),
            "the second tap reaches the limit",
            |text| text.starts_with("Limit reached"),
        )
        .await;
    assert_eq!(
        browser
            .text(&in_card(&deal, "deal-remaining"))
            .await
            .as_deref(),
        Some("9"),
        "a refused tap takes no stock"
    );

    let orders = server.orders(&merchant, &deal).await;
    assert_eq!(orders.len(), 1, "one order for two taps: {orders:?}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_shoppers_buying_makes_the_remaining_number_fall_live() {
    const STOCK: u64 = 200;
    const BUYERS: usize = 50;
    let server = Arc::new(Server::start());
    let merchant = server.create_merchant("acme").await;
    let deal = server
        .create_deal(&merchant, "Rice cooker 3 L", "199.00", STOCK)
        .await;
    let shoppers = server.create_shoppers(BUYERS).await;
    let Some(browser) = Browser::open(&server.url).await else {
        return;
    };
    browser.goto("/").await;
    browser
        .wait_text(
            &in_card(&deal, "deal-remaining"),
            "the full stock",
            |text| text == STOCK.to_string(),
        )
        .await;
    // Events sent before the stream is open would not reach the page.
    browser
        .wait_attribute(
            &testid("stream-status"),
            "data-state",
            "the live stream is open",
            |state| state == "live",
        )
        .await;

    let mut burst = JoinSet::new();
    for (n, shopper) in shoppers.into_iter().enumerate() {
        let server = Arc::clone(&server);
        let deal = deal.clone();
        burst.spawn(async move {
            server
                .buy(&shopper, &deal, &format!("burst-{n}"))
                .await
                .status
        });
    }
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.expect("a buy task ends"), StatusCode::CREATED);
    }

    // The page reads the feed once; only the stream can bring these numbers.
    let left = (STOCK - BUYERS as u64).to_string();
    browser
        .wait_text(
            &in_card(&deal, "deal-remaining"),
            "the card shows every sale",
            |text| text == left,
        )
        .await;
    let events = browser
        .attribute(&testid("stream-status"), "data-events")
        .await
        .and_then(|events| events.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(events > 0, "the numbers came through the stream");
    browser
        .wait_attribute(
            &in_card(&deal, "deal-stock-bar"),
            "aria-valuenow",
            "the stock bar follows",
            |now| now == left,
        )
        .await;
    browser.screenshot("storefront-live-stock").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_posted_while_the_page_is_open_appears_first() {
    let server = Server::start();
    let merchant = server.create_merchant("acme").await;
    let older = server
        .create_deal(&merchant, "Kettle 1.7 L", "89.00", 40)
        .await;
    let Some(browser) = Browser::open(&server.url).await else {
        return;
    };
    browser.goto("/").await;
    browser
        .wait_text(&in_card(&older, "deal-title"), "the first deal", |text| {
            text == "Kettle 1.7 L"
        })
        .await;
    browser
        .wait_attribute(
            &testid("stream-status"),
            "data-state",
            "the live stream is open",
            |state| state == "live",
        )
        .await;

    let newer = server
        .create_deal(&merchant, "Air fryer 5 L", "299.00", 25)
        .await;
    browser
        .wait_text(
            &in_card(&newer, "deal-title"),
            "the new deal's card",
            |text| text == "Air fryer 5 L",
        )
        .await;
    browser
        .wait_attribute(
            &testid("deal-card"),
            "data-deal-id",
            "the newest deal comes first",
            |first| first == newer,
        )
        .await;
    browser.close().await;
}
