//! The shopper's page at `/`: the feed as cards, linking a wallet, the
//! one-tap buy and its outcome, and what changes live through the feed's
//! Server-Sent Events while the page stays open: a card's numbers, and a
//! newly posted deal taking the first place. Also: Buy disabled at the
//! per-shopper limit, Register before the start of a deal that requires
//! it, the configured currency symbol, and the Newest / Top rated switch.

use std::sync::Arc;

use hyper::{Method, StatusCode};
use tokio::task::JoinSet;

use crate::browser::{Browser, in_card, testid};
use crate::server::Server;

/// Links a wallet for `name` from the page; waits until it shows the
/// server's signup credit.
async fn link_wallet(browser: &Browser, name: &str) {
    browser.type_into(&testid("shopper-name"), name).await;
    browser.click(&testid("link-wallet")).await;
    browser
        .wait_text(
            &testid("wallet-available"),
            "the new wallet holds the signup credit",
            |text| text == "¥5000.00",
        )
        .await;
}

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

    link_wallet(&browser, "Li Wei").await;

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

    // One per shopper: at the limit Buy is disabled and says so (a
    // webdriver cannot even press it).
    browser
        .wait_text(
            &in_card(&deal, "buy-button"),
            "Buy turns into the limit reached",
            |text| text == "Limit reached",
        )
        .await;
    assert_eq!(
        browser
            .attribute(&in_card(&deal, "buy-button"), "disabled")
            .await
            .as_deref(),
        Some(""),
        "Buy is disabled at the per-shopper limit"
    );
    assert_eq!(
        browser
            .text(&in_card(&deal, "deal-remaining"))
            .await
            .as_deref(),
        Some("9"),
        "a refused tap takes no stock"
    );

    let orders = server.orders(&merchant, &deal).await;
    assert_eq!(orders.len(), 1, "one order: {orders:?}");
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

/// A deal that has not started shows a disabled countdown where Buy would
/// be; a live one beside it can be bought. The page has a favicon its
/// policy lets load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_not_started_counts_down_instead_of_offering_buy() {
    let server = Server::start();
    let merchant = server.create_merchant("acme").await;
    let live = server
        .create_deal(&merchant, "Desk lamp", "49.00", 10)
        .await;
    let upcoming = server
        .create_deal_starting(&merchant, "Phone Y 512 GB", "1999.00", 10, 600)
        .await;
    let Some(browser) = Browser::open(&server.url).await else {
        return;
    };
    browser.goto("/").await;
    let label = browser
        .wait_text(
            &in_card(&upcoming, "buy-button"),
            "the upcoming deal counts down",
            |text| text.starts_with("Starts in 00:"),
        )
        .await;
    assert!(label.ends_with(|c: char| c.is_ascii_digit()), "{label}");
    assert!(
        browser
            .attribute(&in_card(&upcoming, "buy-button"), "disabled")
            .await
            .is_some(),
        "the countdown cannot be tapped"
    );
    assert_eq!(
        browser.text(&in_card(&live, "buy-button")).await.as_deref(),
        Some("Buy")
    );
    assert_eq!(
        browser
            .attribute(&in_card(&live, "buy-button"), "disabled")
            .await,
        None
    );
    assert!(browser.favicon_loads().await, "the favicon loads");
    browser.screenshot("storefront-upcoming-deal").await;
    browser.close().await;
}

/// Regression: after a reload the page forgot what the shopper had bought.
/// It reads their orders and says so on each card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reload_each_card_shows_what_the_shopper_bought() {
    let server = Server::start();
    let merchant = server.create_merchant("acme").await;
    let bought = server
        .create_deal(&merchant, "Headphones", "129.00", 10)
        .await;
    let other = server.create_deal(&merchant, "Speaker", "89.00", 10).await;
    let Some(browser) = Browser::open(&server.url).await else {
        return;
    };
    browser.goto("/").await;
    link_wallet(&browser, "Li Wei").await;
    browser.click(&in_card(&bought, "buy-button")).await;
    browser
        .wait_text(
            &in_card(&bought, "deal-owned"),
            "the card counts the order",
            |text| text == "You bought 1",
        )
        .await;

    browser.goto("/").await;
    browser
        .wait_text(
            &in_card(&bought, "deal-owned"),
            "after the reload the card still shows the order",
            |text| text == "You bought 1",
        )
        .await;
    browser
        .wait_text(&in_card(&other, "deal-title"), "the other card", |text| {
            text == "Speaker"
        })
        .await;
    assert_eq!(
        browser
            .text(&in_card(&other, "deal-owned"))
            .await
            .as_deref(),
        Some(""),
        "nothing bought there"
    );
    assert!(
        browser
            .attribute(&in_card(&other, "deal-owned"), "hidden")
            .await
            .is_some()
    );
    browser.screenshot("storefront-bought-after-reload").await;
    browser.close().await;
}

/// A signup refused by the per-address limit says, in words, how long to
/// wait, rather than the server's error text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_signup_says_how_long_to_wait() {
    let server = Server::start_with_env(&[("FLASHSALE_RATE_LIMIT_ADDRESS", "1")]);
    let Some(browser) = Browser::open(&server.url).await else {
        return;
    };
    browser.goto("/").await;
    browser.type_into(&testid("shopper-name"), "Li Wei").await;
    browser.click(&testid("link-wallet")).await;
    browser
        .wait_text(&testid("notice"), "the first wallet is linked", |text| {
            text.starts_with("Wallet linked")
        })
        .await;
    browser.click(&testid("unlink-wallet")).await;
    browser.type_into(&testid("shopper-name"), "Han Mei").await;
    browser.click(&testid("link-wallet")).await;
    let notice = browser
        .wait_text(&testid("notice"), "the second signup is refused", |text| {
            text.starts_with("Too many wallets")
        })
        .await;
    assert!(
        notice.ends_with("try again in 1 minute.") || notice.contains(" seconds."),
        "{notice}"
    );
    assert!(!notice.contains("rate_limited"), "{notice}");
    browser.screenshot("storefront-signup-rate-limited").await;
    browser.close().await;
}

/// A raffle's card lets a linked shopper register before the
/// start, then shows their result when the draw runs ("You won: pay within
/// …"), and pays the won hold with one tap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrant_sees_their_draw_result_and_pays_the_win() {
    let server = Server::start();
    let merchant = server.create_merchant("acme").await;
    let deal = server
        .create_deal_starting_with(
            &merchant,
            "Console raffle",
            "499.00",
            1,
            12,
            serde_json::json!({ "allocation": "raffle" }),
        )
        .await;
    let Some(browser) = Browser::open(&server.url).await else {
        return;
    };
    browser.goto("/").await;
    link_wallet(&browser, "Li Wei").await;
    browser
        .wait_text(&in_card(&deal, "buy-button"), "a Register button", |text| {
            text == "Register for the draw"
        })
        .await;
    browser.click(&in_card(&deal, "buy-button")).await;
    browser
        .wait_text(&in_card(&deal, "draw-result"), "registered", |text| {
            text.starts_with("Registered")
        })
        .await;

    // The only registrant of one unit: the draw makes it the winner.
    browser
        .wait_text(
            &in_card(&deal, "draw-result"),
            "the win, as the draw runs",
            |text| text.starts_with("You won: pay within "),
        )
        .await;
    browser
        .wait_text(&in_card(&deal, "buy-button"), "a Pay button", |text| {
            text == "Pay ¥499.00"
        })
        .await;
    browser.click(&in_card(&deal, "buy-button")).await;
    browser
        .wait_text(&in_card(&deal, "draw-result"), "paid", |text| {
            text == "You won, and paid"
        })
        .await;
    browser
        .wait_text(&testid("wallet-available"), "the wallet paid", |text| {
            text == "¥4501.00"
        })
        .await;
}

/// A first-come deal that requires registration offers Register before its
/// start (and Registered after the tap, counted by the server), then Buy
/// once it starts, which the registered shopper taps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_that_requires_registration_offers_register_before_its_start() {
    let server = Server::start();
    let merchant = server.create_merchant("acme").await;
    let Some(browser) = Browser::open(&server.url).await else {
        return;
    };
    // Starts soon enough for the wait below, late enough to register first.
    let deal = server
        .create_deal_starting_with(
            &merchant,
            "Console",
            "399.00",
            5,
            10,
            serde_json::json!({ "requires_registration": true }),
        )
        .await;
    browser.goto("/").await;
    link_wallet(&browser, "Li Wei").await;
    browser
        .wait_text(
            &in_card(&deal, "buy-button"),
            "Register before the start",
            |text| text == "Register",
        )
        .await;
    browser.screenshot("storefront-register").await;
    // From the keyboard, as a shopper without a pointer would.
    browser.press_enter(&in_card(&deal, "buy-button")).await;
    browser
        .wait_text(&in_card(&deal, "buy-button"), "the tap registers", |text| {
            text == "Registered"
        })
        .await;
    let view = server
        .call(Method::GET, &format!("/v1/deals/{deal}"), None, None, &[])
        .await
        .expect(StatusCode::OK, "read the deal");
    assert_eq!(view["registrations"], 1, "the server has the registration");

    browser
        .wait_text(
            &in_card(&deal, "buy-button"),
            "Buy once the deal starts",
            |text| text == "Buy",
        )
        .await;
    browser.click(&in_card(&deal, "buy-button")).await;
    browser
        .wait_text(
            &in_card(&deal, "buy-outcome"),
            "the registered shopper buys",
            |text| text.starts_with("Order placed"),
        )
        .await;
    assert_eq!(server.orders(&merchant, &deal).await.len(), 1);
    browser.close().await;
}

/// `--currency-symbol` (here by its variable) is what every amount on both
/// pages starts with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_carry_the_configured_currency_symbol() {
    let server = Server::start_with_env(&[("FLASHSALE_CURRENCY_SYMBOL", "€")]);
    let merchant = server.create_merchant("acme").await;
    let deal = server.create_deal(&merchant, "Kettle", "29.90", 10).await;
    let Some(browser) = Browser::open(&server.url).await else {
        return;
    };
    browser.goto("/").await;
    browser
        .wait_text(
            &in_card(&deal, "deal-price"),
            "the price in euros",
            |text| text == "€29.90",
        )
        .await;
    browser.type_into(&testid("shopper-name"), "Li Wei").await;
    browser.click(&testid("link-wallet")).await;
    browser
        .wait_text(&testid("wallet-available"), "the wallet in euros", |text| {
            text == "€5000.00"
        })
        .await;
    browser.screenshot("storefront-euros").await;
    browser.goto("/merchant").await;
    browser
        .type_into(&testid("merchant-token"), &merchant.token)
        .await;
    browser.click(&testid("merchant-token-save")).await;
    browser
        .wait_text(
            &format!(r#"[data-deal-id="{deal}"] [data-testid="row-sub"]"#),
            "the dashboard's price in euros",
            |text| text.starts_with("€29.90"),
        )
        .await;
    assert_eq!(
        browser.text(r#"label[for="deal-price"]"#).await.as_deref(),
        Some("Price (€)")
    );
    browser.close().await;
}

/// Newest first by default; "Top rated" puts the deal of the merchant with
/// the better reviews and more buyers first, though it is older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_switches_between_newest_and_top_rated() {
    let server = Server::start();
    let liked = server.create_merchant("liked").await;
    let plain = server.create_merchant("plain").await;
    let older = server.create_deal(&liked, "Rice cooker", "99.00", 10).await;
    let newer = server.create_deal(&plain, "Toaster", "49.00", 10).await;
    let shopper = &server.create_shoppers(1).await[0];
    let order = server
        .buy(shopper, &older, "k")
        .await
        .expect(StatusCode::CREATED, "a shopper buys");
    let order = order["id"].as_str().expect("an order id");
    server
        .call(
            Method::POST,
            &format!("/v1/orders/{order}/review"),
            Some(&shopper.token),
            Some(serde_json::json!({ "description": 5, "delivery": 5, "service": 5 })),
            &[],
        )
        .await
        .expect(StatusCode::CREATED, "a five-star review");
    let Some(browser) = Browser::open(&server.url).await else {
        return;
    };
    let first_card = r#"[data-testid="feed"] > [data-testid="deal-card"]"#;
    browser.goto("/").await;
    browser
        .wait_attribute(
            testid("feed").as_str(),
            "data-loaded",
            "the feed loads",
            |v| v == "newest",
        )
        .await;
    browser
        .wait_attribute(first_card, "data-deal-id", "newest first", |id| id == newer)
        .await;
    browser.click(&testid("order-top")).await;
    browser
        .wait_attribute(
            testid("feed").as_str(),
            "data-loaded",
            "the top feed loads",
            |v| v == "top",
        )
        .await;
    browser
        .wait_attribute(
            first_card,
            "data-deal-id",
            "the better-rated deal first",
            |id| id == older,
        )
        .await;
    assert_eq!(
        browser
            .attribute(&testid("order-top"), "aria-pressed")
            .await
            .as_deref(),
        Some("true")
    );
    browser.screenshot("storefront-top-rated").await;
    browser.click(&testid("order-newest")).await;
    browser
        .wait_attribute(first_card, "data-deal-id", "newest first again", |id| {
            id == newer
        })
        .await;
    browser.close().await;
}
