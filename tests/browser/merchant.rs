//! The merchant's dashboard at `/merchant`: signing in with the merchant's
//! token, posting a deal from the form, its sold/held/remaining numbers
//! moving live, the deal's orders and their CSV export, the new deal
//! showing on the storefront; pausing, resuming, restocking and extending
//! a deal (each checked through the API); and the deal's QR code in the
//! print view, read back from the screen and followed to the deal's card.

use std::time::Instant;

use hyper::StatusCode;

use crate::browser::{Browser, DESKTOP, PHONE, WAIT, in_card, testid};
use crate::server::Server;

const ROW: &str = r#"[data-testid="deal-row"]"#;

/// Opens the dashboard and signs in with `token` (a merchant named acme).
async fn sign_in(browser: &Browser, token: &str) {
    browser.goto("/merchant").await;
    browser.type_into(&testid("merchant-token"), token).await;
    browser.click(&testid("merchant-token-save")).await;
    browser
        .wait_text(
            &testid("merchant-who"),
            "the token names the merchant",
            |text| text.contains("acme"),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_posts_a_deal_that_sells_live_and_shows_on_the_storefront() {
    let server = Server::start();
    let merchant = server.create_merchant("acme").await;
    let Some(browser) = Browser::open(&server.url).await else {
        return;
    };
    sign_in(&browser, &merchant.token).await;

    // The times default to "live now, for an hour".
    browser
        .type_into(&testid("deal-form-title"), "Blender 1.5 L")
        .await;
    browser.type_into(&testid("deal-form-price"), "59.90").await;
    browser.type_into(&testid("deal-form-stock"), "30").await;
    browser.click(&testid("deal-submit")).await;
    browser
        .wait_text(&testid("deal-form-status"), "the deal is posted", |text| {
            text.contains("posted")
        })
        .await;
    browser
        .wait_text(
            &format!("{ROW} [data-testid=\"row-select\"]"),
            "the deal's row",
            |text| text == "Blender 1.5 L",
        )
        .await;
    let deal = browser
        .attribute(ROW, "data-deal-id")
        .await
        .expect("the row names its deal");
    browser
        .run(
            "document.getElementById('deal-form-status').scrollIntoView({block: 'center'});",
            vec![],
        )
        .await;
    browser.screenshot("merchant-deal-posted").await;

    // Three shoppers buy through the API: the row follows through the stream.
    let shoppers = server.create_shoppers(3).await;
    for (n, shopper) in shoppers.iter().enumerate() {
        let answer = server.buy(shopper, &deal, &format!("buy-{n}")).await;
        answer.expect(StatusCode::CREATED, "a shopper buys the new deal");
    }
    let row = |part: &str| format!(r#"{ROW}[data-deal-id="{deal}"] [data-testid="{part}"]"#);
    browser
        .wait_text(&row("row-sold"), "3 sold", |text| text == "3")
        .await;
    browser
        .wait_text(&row("row-remaining"), "27 left", |text| text == "27")
        .await;
    assert_eq!(browser.text(&row("row-held")).await.as_deref(), Some("0"));

    browser.click(&row("row-select")).await;
    browser
        .wait_text(&testid("orders-status"), "the deal's orders", |text| {
            text == "3 orders."
        })
        .await;
    let shown = browser
        .run(
            r#"return document.querySelectorAll('[data-testid="orders-table"] tbody tr').length;"#,
            vec![],
        )
        .await;
    assert_eq!(shown, 3, "one row per order");

    browser.click(&testid("export-csv")).await;
    browser
        .wait_text(&testid("orders-status"), "the export", |text| {
            text.starts_with("Exported 3 orders")
        })
        .await;
    let file = browser.downloads.path().join(format!(
        "orders-{}.csv",
        deal.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-',
            "_"
        )
    ));
    let csv = wait_for_file(&file).await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("id,deal_id,shopper_id,quantity,unit_price,amount,status,late,created_at")
    );
    assert_eq!(lines.len(), 4, "a header and three orders: {csv}");
    for line in &lines[1..] {
        assert!(line.contains(&format!(",{deal},")), "{line}");
        assert!(line.contains(",1,59.90,59.90,"), "{line}");
    }
    for shopper in &shoppers {
        assert!(
            csv.contains(&format!(",{},", shopper.id)),
            "{} in {csv}",
            shopper.id
        );
    }
    browser
        .run(
            "document.getElementById('deals-panel').scrollIntoView();",
            vec![],
        )
        .await;
    browser.screenshot("merchant-live-deals-and-orders").await;

    // The storefront shows the deal the form posted, with its live numbers.
    browser.goto("/").await;
    browser
        .wait_text(
            &in_card(&deal, "deal-title"),
            "the new deal's card",
            |text| text == "Blender 1.5 L",
        )
        .await;
    browser
        .wait_text(&in_card(&deal, "deal-remaining"), "27 left", |text| {
            text == "27"
        })
        .await;
    browser.screenshot("storefront-merchant-deal").await;
    browser.close().await;
}

/// The text of a downloaded file once the browser has finished writing it.
async fn wait_for_file(path: &std::path::Path) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        // Chromium writes `NAME.crdownload` and renames it when complete.
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not downloaded within {WAIT:?}",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Regression: at 1280 × 900 the form put the start and end side by side,
/// each too narrow for its date and time. Each field is at least as wide as
/// its whole value needs (text measured in the field's own font, plus the
/// picker's icon and padding), on a laptop and on a phone; the page has a
/// favicon its policy lets load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_and_end_fields_show_the_whole_date_and_time() {
    let server = Server::start();
    let merchant = server.create_merchant("acme").await;
    for (screen, name) in [(DESKTOP, "desktop"), (PHONE, "phone")] {
        let Some(browser) = Browser::open_on(&server.url, screen).await else {
            return;
        };
        sign_in(&browser, &merchant.token).await;
        for field in ["deal-form-starts-at", "deal-form-ends-at"] {
            let room = browser
                .run(
                    r#"const input = document.querySelector(arguments[0]);
                       const style = getComputedStyle(input);
                       const context = document.createElement("canvas").getContext("2d");
                       context.font = style.font;
                       // The longest a datetime-local spells itself in English.
                       const text = context.measureText("12/28/2026, 12:58 PM").width;
                       // The picker's icon, its gap and the field's padding.
                       const needed = text + 40 + parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
                       return input.getBoundingClientRect().width - needed;"#,
                    vec![serde_json::json!(testid(field))],
                )
                .await;
            let room = room.as_f64().expect("a width");
            assert!(
                room >= 0.0,
                "{field} on the {name} screen is {} px too narrow",
                -room
            );
        }
        assert!(browser.favicon_loads().await, "the favicon loads");
        browser
            .run(
                "document.getElementById('deal-form').scrollIntoView();",
                vec![],
            )
            .await;
        browser
            .screenshot(&format!("merchant-deal-times-{name}"))
            .await;
        browser.close().await;
    }
}

/// The deal's numbers as the API tells them.
async fn deal_view(server: &Server, deal: &str) -> serde_json::Value {
    server
        .call(
            hyper::Method::GET,
            &format!("/v1/deals/{deal}"),
            None,
            None,
            &[],
        )
        .await
        .expect(StatusCode::OK, "read the deal")
}

/// Chooses the deal's row, which opens its orders and its controls.
async fn choose(browser: &Browser, deal: &str) {
    browser
        .click(&format!(
            r#"{ROW}[data-deal-id="{deal}"] [data-testid="row-select"]"#
        ))
        .await;
    browser
        .wait_text(&testid("manage-state"), "the deal's controls", |text| {
            !text.is_empty()
        })
        .await;
}

/// Waits until the dashboard says a change of the deal was saved.
async fn saved(browser: &Browser, what: &str, starts: &str) {
    browser
        .wait_text(&testid("manage-status"), what, |text| {
            text.starts_with(starts)
        })
        .await;
}

/// Pause, resume, restock and extend from the dashboard, each seen through
/// the API afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_pauses_resumes_restocks_and_extends_a_deal() {
    let server = Server::start();
    let merchant = server.create_merchant("acme").await;
    let deal = server
        .create_deal(&merchant, "Air fryer", "199.00", 10)
        .await;
    let before = deal_view(&server, &deal).await;
    let Some(browser) = Browser::open_on(&server.url, DESKTOP).await else {
        return;
    };
    sign_in(&browser, &merchant.token).await;
    choose(&browser, &deal).await;

    browser.click(&testid("deal-pause")).await;
    saved(&browser, "paused", "Paused").await;
    assert_eq!(deal_view(&server, &deal).await["paused"], true);
    let shopper = &server.create_shoppers(1).await[0];
    let refused = server.buy(shopper, &deal, "while-paused").await;
    assert_eq!(refused.body["error"]["code"], "deal_paused", "{refused:?}");
    assert_eq!(
        browser
            .attribute(&testid("deal-pause"), "disabled")
            .await
            .as_deref(),
        Some(""),
        "a paused deal offers Resume, not Pause"
    );

    browser.click(&testid("deal-resume")).await;
    saved(&browser, "resumed", "Resumed").await;
    assert_eq!(deal_view(&server, &deal).await["paused"], false);
    server
        .buy(shopper, &deal, "resumed")
        .await
        .expect(StatusCode::CREATED, "a buy after the resume");

    browser.type_into(&testid("restock-units"), "5").await;
    browser.click(&testid("restock-submit")).await;
    saved(&browser, "restocked", "Restocked").await;
    let view = deal_view(&server, &deal).await;
    assert_eq!(
        (&view["stock"], &view["remaining"]),
        (&15.into(), &14.into())
    );

    // The new end defaults to an hour after the current one.
    browser.click(&testid("extend-submit")).await;
    saved(&browser, "extended", "The deal now ends").await;
    let ends = |view: &serde_json::Value| view["ends_at"].as_str().expect("ends_at").to_owned();
    let (old, new) = (ends(&before), ends(&deal_view(&server, &deal).await));
    assert!(new > old, "the end moved later: {old} -> {new}");
    browser.screenshot("merchant-deal-managed").await;
    browser.close().await;
}

/// The dashboard's print view shows the deal's QR code; read back from
/// the screen (chromium draws the SVG) and from the PNG, it is the
/// storefront's link to the deal, and following it in the browser opens
/// the deal's card on top, marked, with its Buy, which a new wallet taps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deals_qr_code_opens_its_card_with_buy() {
    let server = Server::start();
    let merchant = server.create_merchant("acme").await;
    let deal = server
        .create_deal(&merchant, "Vending cola", "3.50", 100)
        .await;
    // Newer deals come first in the feed: the link must still lead to ours.
    for title in ["Chips", "Water"] {
        server.create_deal(&merchant, title, "2.00", 10).await;
    }
    let Some(browser) = Browser::open(&server.url).await else {
        return;
    };
    sign_in(&browser, &merchant.token).await;
    choose(&browser, &deal).await;
    browser.click(&testid("deal-qr")).await;
    browser
        .wait_text(&testid("qr-title"), "the print view", |text| {
            text == "Vending cola"
        })
        .await;
    let loaded = "const i = document.getElementById('qr-image'); \
                  return i.complete && i.naturalWidth > 0;";
    let deadline = Instant::now() + WAIT;
    while browser.run(loaded, vec![]).await != serde_json::json!(true) {
        assert!(Instant::now() < deadline, "the QR image never loaded");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let screen = browser.screenshot("merchant-qr-print-view").await;
    let screen = std::fs::read(screen).expect("the screenshot");
    let link = format!("{}/?deal={deal}", server.url);
    assert_eq!(
        flashsale_testkit::qr::decode_png(&screen),
        std::slice::from_ref(&link),
        "the code on the screen"
    );
    let (status, png) = server.get_bytes(&format!("/v1/deals/{deal}/qr.png")).await;
    assert_eq!(status, StatusCode::OK);
    let scanned = flashsale_testkit::qr::decode_png(&png);
    assert_eq!(scanned, [link], "the PNG's code");

    // The shopper's phone opens the scanned link.
    let path = scanned[0]
        .strip_prefix(&server.url)
        .expect("the link names the server");
    browser.goto(path).await;
    let first_card = r#"[data-testid="feed"] > [data-testid="deal-card"]"#;
    browser
        .wait_attribute(first_card, "data-deal-id", "the linked deal on top", |id| {
            id == deal
        })
        .await;
    assert!(
        browser
            .attribute(
                &format!(r#"{first_card}[data-deal-id="{deal}"]"#),
                "data-linked"
            )
            .await
            .is_some(),
        "the linked card is marked"
    );
    browser
        .wait_text(&in_card(&deal, "buy-button"), "its Buy", |text| {
            text == "Buy"
        })
        .await;
    browser.screenshot("storefront-qr-link").await;
    browser.type_into(&testid("shopper-name"), "Li Wei").await;
    browser.click(&testid("link-wallet")).await;
    browser
        .wait_text(&testid("notice"), "the wallet is linked", |text| {
            text.starts_with("Wallet linked")
        })
        .await;
    browser.click(&in_card(&deal, "buy-button")).await;
    browser
        .wait_text(&in_card(&deal, "buy-outcome"), "bought", |text| {
            text.starts_with("Order placed")
        })
        .await;
    assert_eq!(server.orders(&merchant, &deal).await.len(), 1);
    browser.close().await;
}
