//! A headless chromium driven through `chromedriver` with `fantoccini`, and
//! the few DOM helpers the tests share.
//!
//! Each [`Browser`] starts its own `chromedriver` on a port the driver picks
//! (`--port=0`, read back from its first lines), in its own process group,
//! and a chromium session with a fresh profile. The screen is a phone's
//! unless asked otherwise ([`Browser::open_on`] with [`DESKTOP`]): Chrome's
//! headless window cannot be narrower than 500 px, so the session emulates a
//! 360 × 800 touch screen (`mobileEmulation`), the narrowest the pages are
//! made for. Dropping the [`Browser`] kills the whole group, so a
//! failing test leaves no chromium behind.
//!
//! Connections to chromedriver are plain HTTP on loopback: `fantoccini`
//! runs without a TLS stack, over hyper-util's `HttpConnector`.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use flashsale_testkit::Service;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::server::TempDir;

/// How long any one condition in the page may take to come true.
pub const WAIT: Duration = Duration::from_secs(20);
/// How often a bounded wait looks at the page again.
const POLL: Duration = Duration::from_millis(100);
/// How long chromedriver may take to say which port it listens on.
const DRIVER_STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// An emulated screen: its size in CSS pixels and whether it is a phone's
/// (touch, mobile viewport).
#[derive(Debug, Clone, Copy)]
pub struct Screen {
    pub width: u32,
    pub height: u32,
    pub mobile: bool,
}

/// The narrowest phone the pages are made for.
pub const PHONE: Screen = Screen {
    width: 360,
    height: 800,
    mobile: true,
};
/// A laptop's window.
pub const DESKTOP: Screen = Screen {
    width: 1280,
    height: 900,
    mobile: false,
};
/// The names chromium goes by on `$PATH` (Debian's first).
const CHROMIUM_NAMES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

/// A chromium session on one server's pages.
pub struct Browser {
    client: Client,
    base_url: String,
    /// Where downloads (the merchant's CSV export) land.
    pub downloads: TempDir,
    _profile: TempDir,
    _driver: Driver,
    /// `TMPDIR` of chromedriver and chromium, removed after both are
    /// killed (fields drop in order), so the system temporary directory
    /// keeps none of chromium's `org.chromium.Chromium.*` directories.
    _scratch: TempDir,
}

impl Browser {
    /// Starts chromedriver and a chromium session for pages of `base_url`
    /// on a [`PHONE`] screen; `None` when either is not installed (see
    /// [`Browser::open_on`]).
    pub async fn open(base_url: &str) -> Option<Browser> {
        Browser::open_on(base_url, PHONE).await
    }

    /// Starts chromedriver and a chromium session (`$CHROMIUM`, or the
    /// first of [`CHROMIUM_NAMES`] on `$PATH`) for pages of `base_url` on
    /// `screen`; `None` when either is not installed (the test then
    /// returns: a skip, or a failure under CI, see `flashsale-testkit`).
    pub async fn open_on(base_url: &str, screen: Screen) -> Option<Browser> {
        let Some(chromium) = flashsale_testkit::program("CHROMIUM", &CHROMIUM_NAMES) else {
            flashsale_testkit::missing(
                Service::Browser,
                "chromium is not installed (not at $CHROMIUM, not on $PATH)",
            );
            return None;
        };
        let scratch = TempDir::new("tmp");
        let driver = Driver::start(&scratch)?;
        let profile = TempDir::new("profile");
        let downloads = TempDir::new("downloads");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    format!("--window-size={},{}", screen.width.max(500), screen.height),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "mobileEmulation": {
                    "deviceMetrics": {
                        "width": screen.width,
                        "height": screen.height,
                        "pixelRatio": 1.0,
                        "touch": screen.mobile,
                        "mobile": screen.mobile,
                    },
                },
                "prefs": {
                    "download.default_directory": downloads.path().display().to_string(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "chromedriver could not start chromium ({error}); is `chromium` installed? \
                     (`apt-get install -y chromium chromium-driver`)"
                )
            });
        Some(Browser {
            client,
            base_url: base_url.to_owned(),
            downloads,
            _profile: profile,
            _driver: driver,
            _scratch: scratch,
        })
    }

    /// Loads a page of the server, e.g. `/` or `/merchant`.
    pub async fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base_url);
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|error| panic!("load {url}: {error}"));
    }

    /// Taps the element `css` matches, once it exists.
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        element
            .click()
            .await
            .unwrap_or_else(|error| panic!("click {css}: {error}"));
    }

    /// Types `text` into the field `css` matches, after clearing it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element
            .clear()
            .await
            .unwrap_or_else(|error| panic!("clear {css}: {error}"));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|error| panic!("type into {css}: {error}"));
    }

    /// Presses Enter on the element `css` matches, as a keyboard user would.
    pub async fn press_enter(&self, css: &str) {
        let element = self.find(css).await;
        element
            .send_keys(&Key::Enter.to_string())
            .await
            .unwrap_or_else(|error| panic!("press Enter on {css}: {error}"));
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .every(POLL)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no element {css} within {WAIT:?}: {error}"))
    }

    /// Runs `script` in the page with `args`; its return value.
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|error| panic!("run {script}: {error}"))
    }

    /// Whether the page's `<link rel="icon">` loads as an image under the
    /// page's own Content-Security-Policy (bounded by chromedriver's script
    /// timeout).
    pub async fn favicon_loads(&self) -> bool {
        let loaded = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1]; \
                 const link = document.querySelector('link[rel=\"icon\"]'); \
                 if (!link) { done(false); return; } \
                 const img = new Image(); \
                 img.onload = () => done(img.naturalWidth > 0); \
                 img.onerror = () => done(false); \
                 img.src = link.href;",
                vec![],
            )
            .await
            .unwrap_or_else(|error| panic!("load the favicon: {error}"));
        loaded == json!(true)
    }

    /// The text of the first element `css` matches, trimmed; `None` if none.
    pub async fn text(&self, css: &str) -> Option<String> {
        let value = self
            .run(
                "const e = document.querySelector(arguments[0]); \
                 return e ? e.textContent.trim() : null;",
                vec![json!(css)],
            )
            .await;
        value.as_str().map(str::to_owned)
    }

    /// An attribute of the first element `css` matches; `None` if none.
    pub async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let value = self
            .run(
                "const e = document.querySelector(arguments[0]); \
                 return e ? e.getAttribute(arguments[1]) : null;",
                vec![json!(css), json!(name)],
            )
            .await;
        value.as_str().map(str::to_owned)
    }

    /// Waits until the text of `css` satisfies `accept`; that text. Fails
    /// after [`WAIT`], naming `what` and the last text seen.
    pub async fn wait_text(&self, css: &str, what: &str, accept: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text(css).await;
            if let Some(text) = text.as_deref().filter(|text| accept(text)) {
                return text.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; `{css}` reads {text:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the attribute `name` of `css` satisfies `accept`.
    pub async fn wait_attribute(
        &self,
        css: &str,
        name: &str,
        what: &str,
        accept: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.attribute(css, name).await;
            if let Some(value) = value.as_deref().filter(|value| accept(value)) {
                return value.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; `{css}` [{name}] is {value:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Saves what the screen shows as `$CARGO_TARGET_TMPDIR/screenshots/NAME.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|error| panic!("screenshot {name}: {error}"));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).expect("the target tmp dir is writable");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is written");
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// Ends the session, so chromedriver closes chromium itself.
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// CSS for `testid` inside the deal card of `deal_id`.
pub fn in_card(deal_id: &str, testid: &str) -> String {
    format!(r#"[data-testid="deal-card"][data-deal-id="{deal_id}"] [data-testid="{testid}"]"#)
}

/// CSS for an element by its `data-testid`.
pub fn testid(testid: &str) -> String {
    format!(r#"[data-testid="{testid}"]"#)
}

/// A `chromedriver` child process, leader of its own process group.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// Starts `chromedriver`, and so chromium, with `scratch` as their
    /// `TMPDIR`; `None` after [`flashsale_testkit::missing`]
    /// when it is not installed.
    fn start(scratch: &TempDir) -> Option<Driver> {
        let Some(path) = flashsale_testkit::program("CHROMEDRIVER", &["chromedriver"]) else {
            flashsale_testkit::missing(
                Service::Browser,
                "chromedriver is not installed (not at $CHROMEDRIVER, not on $PATH)",
            );
            return None;
        };
        let mut child = Command::new(&path)
            .arg("--port=0")
            .env("TMPDIR", scratch.path())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", path.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (port_tx, port_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // "ChromeDriver was started successfully on port 39809."
                let port = line
                    .split_once("started successfully on port ")
                    .and_then(|(_, rest)| rest.trim_end_matches('.').parse::<u16>().ok());
                if let Some(port) = port
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        let mut driver = Driver { child, port: 0 };
        driver.port = port_rx
            .recv_timeout(DRIVER_STARTUP_TIMEOUT)
            .unwrap_or_else(|_| {
                panic!("chromedriver did not say its port within {DRIVER_STARTUP_TIMEOUT:?}")
            });
        Some(driver)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group is chromedriver and the chromium it started.
        let group = i32::try_from(self.child.id()).expect("a pid fits an i32");
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created for our own child; it touches no memory.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
