//! The storefront page and the merchant's dashboard, tested in a real browser.
//!
//! Each test starts the real `flashsale` binary on `127.0.0.1:0` with a fresh
//! data directory ([`server::Server`]), sets up merchants, deals and shoppers
//! through HTTP API v1 with the admin token, and drives Debian's `chromium`
//! through `chromedriver` with `fantoccini` ([`browser::Browser`]) on a
//! phone-sized screen, the way a shopper or a merchant would: typing, tapping,
//! reading what the page shows.
//!
//! Every wait is bounded ([`browser::Browser::wait_text`]): the tests poll the
//! DOM until a condition holds or a deadline passes, never sleep for a fixed
//! time. Each test saves screenshots under
//! `$CARGO_TARGET_TMPDIR/screenshots/` for a person to look at.
//!
//! These tests need `chromium` and `chromium-driver`
//! (`apt-get install -y chromium chromium-driver`). Without them each test
//! returns at once and the binary prints one `skipped: browser tests …`
//! line; under `CI` or `FLASHSALE_REQUIRE_SERVICES=1` they fail instead
//! (`flashsale-testkit`).
//!
//! ## Layout
//! - [`server`]: the `flashsale serve` child process and a small API client.
//! - [`browser`]: chromedriver, a chromium session and the DOM helpers.
//! - [`storefront`]: the shopper's page at `/`.
//! - [`merchant`]: the merchant's dashboard at `/merchant`.
//! - [`origins`]: a storefront on an origin of its own (`--cors-origins`).

mod browser;
mod merchant;
mod origins;
mod server;
mod storefront;
