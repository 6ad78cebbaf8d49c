//! The two pages: the storefront at `GET /` and the merchant's dashboard at
//! `GET /merchant`, embedded in the binary (`gateway/assets/*.html`).
//!
//! Each page is one file of HTML with one inline `<style>` and one inline
//! `<script>`, and fetches nothing but the API of its own origin. The
//! `Content-Security-Policy` says exactly that: no source by default, the
//! page's own inline script and style allowed by their SHA-256 hashes
//! (computed here, once, from the embedded text, so the policy follows the
//! files), `connect-src 'self'` for the API and the stream, and no framing,
//! `<base>` or plugins. An injected `<script>` or `on…=` attribute does not
//! run. Each page's favicon is an inline SVG `data:` URI (`img-src data:`),
//! so no route serves one. Both pages are answered with `Cache-Control: no-cache`, so a new
//! binary's pages are picked up at once.
//!
//! One thing of the configuration goes into the pages: the currency symbol
//! (`--currency-symbol`), as the `content` of each page's
//! `<meta name="currency-symbol">` ([`CURRENCY_META`]), HTML-escaped, once
//! at start. The scripts read it from there, so their hashes do not change.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use sha2::{Digest, Sha256};

const STOREFRONT_HTML: &str = include_str!("../assets/storefront.html");
const MERCHANT_HTML: &str = include_str!("../assets/merchant.html");

/// The tag each page carries once, with the default symbol, that
/// [`Pages::new`] replaces by the configured one.
const CURRENCY_META: &str = r#"<meta name="currency-symbol" content="¥">"#;

static CONTENT_SECURITY_POLICY: HeaderName = HeaderName::from_static("content-security-policy");
static X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");
static REFERRER_POLICY: HeaderName = HeaderName::from_static("referrer-policy");

/// One page ready to serve: its text and its policy.
pub(crate) struct Page {
    html: Bytes,
    policy: HeaderValue,
}

/// Both pages.
pub(crate) struct Pages {
    pub storefront: Page,
    pub merchant: Page,
}

impl Pages {
    /// Both pages, printing `currency_symbol` before every amount.
    pub(crate) fn new(currency_symbol: &str) -> Pages {
        Pages {
            storefront: Page::new(STOREFRONT_HTML, currency_symbol),
            merchant: Page::new(MERCHANT_HTML, currency_symbol),
        }
    }
}

impl Page {
    fn new(html: &'static str, currency_symbol: &str) -> Page {
        let policy = content_security_policy(html);
        let html = html.replacen(
            CURRENCY_META,
            &format!(
                r#"<meta name="currency-symbol" content="{}">"#,
                escape_attribute(currency_symbol)
            ),
            1,
        );
        // invariant: the policy is ASCII (keywords and base64).
        let policy = HeaderValue::from_str(&policy).unwrap_or_else(|_| {
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'")
        });
        Page {
            html: Bytes::from(html),
            policy,
        }
    }

    pub(crate) fn response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.html.clone()));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(CONTENT_SECURITY_POLICY.clone(), self.policy.clone());
        headers.insert(
            X_CONTENT_TYPE_OPTIONS.clone(),
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            REFERRER_POLICY.clone(),
            HeaderValue::from_static("no-referrer"),
        );
        response
    }
}

/// `text` safe inside a double-quoted HTML attribute.
fn escape_attribute(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The policy of a page whose inline scripts and styles are `html`'s.
fn content_security_policy(html: &str) -> String {
    let hashes = |tag: &str| {
        inline_elements(html, tag)
            .map(|text| {
                let digest = Sha256::digest(text.as_bytes());
                format!(
                    " 'sha256-{}'",
                    base64::engine::general_purpose::STANDARD.encode(digest)
                )
            })
            .collect::<String>()
    };
    let scripts = hashes("script");
    let styles = hashes("style");
    format!(
        "default-src 'none'; script-src{}; style-src{}; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        if scripts.is_empty() {
            " 'none'"
        } else {
            &scripts
        },
        if styles.is_empty() {
            " 'none'"
        } else {
            &styles
        },
    )
}

/// The text inside every `<tag …>…</tag>` of `html`, exactly as the
/// browser hashes it. External scripts (`src=`) have no inline text.
fn inline_elements<'a>(html: &'a str, tag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut rest = html;
    std::iter::from_fn(move || {
        loop {
            let start = rest.find(&open)?;
            let after_name = &rest[start + open.len()..];
            // `<scripts>` or `<style-guide>` are other tags.
            if !after_name.starts_with(['>', ' ', '\t', '\n', '\r']) {
                rest = after_name;
                continue;
            }
            let head_end = after_name.find('>')?;
            let body = &after_name[head_end + 1..];
            let body_end = body.find(&close)?;
            rest = &body[body_end + close.len()..];
            return Some(&body[..body_end]);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_hashes_each_inline_script_and_style() {
        let html = "<html><style>p{}</style><script>\"use strict\";</script>\
                    <scripts>no</scripts><script type=\"module\">1</script></html>";
        let scripts: Vec<&str> = inline_elements(html, "script").collect();
        assert_eq!(scripts, ["\"use strict\";", "1"]);
        let policy = content_security_policy(html);
        let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"p{}"));
        assert!(
            policy.contains(&format!("style-src 'sha256-{expected}';")),
            "{policy}"
        );
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(policy.matches("'sha256-").count(), 3, "{policy}");
    }

    /// The policy allows the pages' own inline `<script>` and `<style>`
    /// only: markup with handlers or style attributes would not work.
    #[test]
    fn the_pages_need_nothing_the_policy_forbids() {
        for html in [STOREFRONT_HTML, MERCHANT_HTML] {
            assert_eq!(inline_elements(html, "script").count(), 1);
            assert_eq!(inline_elements(html, "style").count(), 1);
            for forbidden in [
                " onclick=",
                " onload=",
                " onsubmit=",
                " style=\"",
                "<script src",
            ] {
                assert!(!html.contains(forbidden), "a page uses {forbidden}");
            }
        }
        let page = Pages::new("¥").storefront.response();
        let policy = page.headers()[&CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"));
        assert_eq!(page.headers()[CACHE_CONTROL], "no-cache");
    }

    /// The configured symbol replaces the default in each page's one
    /// meta tag, escaped; the script's hash (the policy) stays the same.
    #[test]
    fn the_currency_symbol_goes_into_each_page_escaped() {
        for html in [STOREFRONT_HTML, MERCHANT_HTML] {
            assert_eq!(html.matches(CURRENCY_META).count(), 1);
            let page = Page::new(html, "\"<€>");
            let served = std::str::from_utf8(&page.html).unwrap();
            assert!(
                served.contains(r#"<meta name="currency-symbol" content="&quot;&lt;€&gt;">"#),
                "the symbol is not in the page"
            );
            assert!(!served.contains(CURRENCY_META));
            assert_eq!(page.policy, Page::new(html, "¥").policy);
        }
    }

    /// Each page carries its favicon inline, as a `data:` SVG the policy's
    /// `img-src` allows: no request, no route, no file to serve.
    #[test]
    fn the_pages_carry_a_favicon_their_policy_allows() {
        for html in [STOREFRONT_HTML, MERCHANT_HTML] {
            assert!(
                html.contains(r#"<link rel="icon" type="image/svg+xml" href="data:image/svg+xml,"#),
                "a page without its favicon"
            );
            assert!(content_security_policy(html).contains("img-src 'self' data:;"));
        }
    }
}
