//! A storefront on an origin of its own calls the API of a server started
//! with `--cors-origins`: chromium itself enforces CORS, so a page of a
//! listed origin buys, and the same page on an unlisted origin is blocked
//! before its buy reaches the server.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::browser::Browser;
use crate::server::Server;

/// The page another origin serves: a blank storefront whose script the
/// test runs.
const PAGE: &str =
    "<!doctype html><html><head><title>another storefront</title></head><body></body></html>";
/// Longest request head the page's server reads.
const PAGE_REQUEST_BYTES_MAX: usize = 16 * 1024;
/// How long the page's server waits for a request head.
const PAGE_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A loopback HTTP server answering every request with [`PAGE`], with no
/// Content-Security-Policy of its own; stopped when dropped.
struct PageServer {
    port: u16,
    task: JoinHandle<()>,
}

impl PageServer {
    async fn start() -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|window| window == b"\r\n\r\n")
                        && head.len() < PAGE_REQUEST_BYTES_MAX
                    {
                        match tokio::time::timeout(PAGE_READ_TIMEOUT, stream.read(&mut chunk)).await
                        {
                            Ok(Ok(read)) if read > 0 => head.extend_from_slice(&chunk[..read]),
                            _ => return,
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{PAGE}",
                        PAGE.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        PageServer { port, task }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Buys one unit of `deal` from the page now loaded, through `api`, with
/// `key`: `{status, body}` as the page saw it, or `{blocked}` with the
/// browser's error when it refused the call.
async fn buy_from_page(browser: &Browser, api: &str, deal: &str, token: &str, key: &str) -> Value {
    const BUY: &str = r#"
        const [api, deal, token, key] = arguments;
        return fetch(api + "/v1/deals/" + deal + "/orders", {
            method: "POST",
            headers: {
                "Authorization": "Bearer " + token,
                "Content-Type": "application/json",
                "Idempotency-Key": key,
            },
            body: JSON.stringify({ quantity: 1 }),
        }).then(
            async (answer) => ({ status: answer.status, body: await answer.json() }),
            (error) => ({ blocked: String(error) }),
        );
    "#;
    browser
        .run(BUY, vec![json!(api), json!(deal), json!(token), json!(key)])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storefront_on_a_listed_origin_buys_and_an_unlisted_one_is_blocked() {
    let page = PageServer::start().await;
    let listed = format!("http://127.0.0.1:{}", page.port);
    let server = Server::start_with_env(&[("FLASHSALE_CORS_ORIGINS", &listed)]);
    let merchant = server.create_merchant("acme").await;
    let deal = server.create_deal(&merchant, "Phone X", "999.00", 10).await;
    let shopper = server.create_shoppers(1).await.remove(0);
    let Some(browser) = Browser::open("").await else {
        return;
    };

    browser.goto(&format!("{listed}/")).await;
    let bought = buy_from_page(&browser, &server.url, &deal, &shopper.token, "cors-1").await;
    assert_eq!(bought["status"], 201, "{bought}");
    assert_eq!(bought["body"]["deal_id"], deal.as_str(), "{bought}");

    // The same page from `localhost` is another origin, not listed.
    browser
        .goto(&format!("http://localhost:{}/", page.port))
        .await;
    let refused = buy_from_page(&browser, &server.url, &deal, &shopper.token, "cors-2").await;
    assert!(refused["blocked"].is_string(), "{refused}");
    let orders = server.orders(&merchant, &deal).await;
    assert_eq!(
        orders.len(),
        1,
        "the blocked buy reached the server: {orders:?}"
    );
    browser.close().await;
}
