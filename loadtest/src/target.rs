//! The servers under test: where to connect, what to put in `Host`, and
//! which node of a deployment each attempt goes to.
//!
//! Only plain `http://` is supported: the tool measures the gateway, and a
//! TLS terminator in front of it would be measured with a different tool.
//! The URL may carry a path prefix (`http://lb:80/flashsale`), which is put
//! in front of every API path.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::Uri;
use hyper::header::HeaderValue;

use crate::error::LoadtestError;

/// A resolved `http://` target.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as the user gave it, without a trailing slash.
    pub url: String,
    /// The socket address every connection goes to.
    pub addr: SocketAddr,
    /// The `Host` header value (the URL's authority).
    pub host: HeaderValue,
    /// Path prefix put before every API path, empty or starting with `/`.
    pub prefix: String,
}

impl Target {
    /// Parses `url` and resolves its host once, up front.
    pub async fn resolve(url: &str) -> Result<Target, LoadtestError> {
        let (authority, prefix) = split_url(url)?;
        let host = HeaderValue::from_str(authority).map_err(|_| LoadtestError::InvalidTarget {
            url: url.to_owned(),
            reason: "the host is not a valid header value",
        })?;
        let with_port = if has_port(authority) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|source| LoadtestError::Resolve {
                authority: authority.to_owned(),
                source,
            })?
            .next()
            .ok_or_else(|| LoadtestError::Resolve {
                authority: authority.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            })?;
        Ok(Target {
            url: url.trim_end_matches('/').to_owned(),
            addr,
            host,
            prefix: prefix.to_owned(),
        })
    }

    /// The origin-form URI (`/prefix/v1/...?...`) for an API path.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, LoadtestError> {
        let full = format!("{}{}", self.prefix, path_and_query);
        Uri::try_from(full).map_err(|_| LoadtestError::InvalidTarget {
            url: self.url.clone(),
            reason: "an API path built on it is not a valid URI",
        })
    }
}

/// Resolves every `--target` URL, in order.
pub async fn resolve_all(urls: &[String]) -> Result<Vec<Arc<Target>>, LoadtestError> {
    let mut targets = Vec::with_capacity(urls.len());
    for url in urls {
        targets.push(Arc::new(Target::resolve(url).await?));
    }
    Ok(targets)
}

/// The index, among `count` targets, that an operation's attempt goes
/// to: operation `spread` starts on target `spread mod count` (so the
/// operations spread evenly), and each retry (`attempts_made` ≥ 1) moves
/// on to the next target, as a client behind a load balancer whose retry
/// lands on another node. With one target it is always 0.
pub fn pick(spread: usize, attempts_made: u32, count: usize) -> usize {
    let count = count.max(1);
    let attempts = usize::try_from(attempts_made).unwrap_or(usize::MAX) % count;
    (spread % count + attempts) % count
}

/// Splits `http://authority/prefix` into its authority and its prefix
/// (without a trailing slash).
fn split_url(url: &str) -> Result<(&str, &str), LoadtestError> {
    let invalid = |reason| LoadtestError::InvalidTarget {
        url: url.to_owned(),
        reason,
    };
    if url.starts_with("https://") {
        return Err(invalid(
            "https is not supported: point the tool at the plain-HTTP gateway",
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("it must start with http://"))?;
    let (authority, prefix) = match rest.find(['/', '?', '#']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(invalid("it has no host"));
    }
    if prefix.contains(['?', '#']) {
        return Err(invalid("it must not carry a query or fragment"));
    }
    Ok((authority, prefix.trim_end_matches('/')))
}

/// Whether an authority names a port (`host:1`, `[::1]:1`; not `[::1]`).
fn has_port(authority: &str) -> bool {
    match authority.rfind(':') {
        Some(colon) => !authority[colon..].contains(']'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_authority_and_prefix() {
        assert_eq!(
            split_url("http://127.0.0.1:8080").ok(),
            Some(("127.0.0.1:8080", ""))
        );
        assert_eq!(split_url("http://h:1/").ok(), Some(("h:1", "")));
        assert_eq!(split_url("http://h/a/b/").ok(), Some(("h", "/a/b")));
        assert!(split_url("https://h").is_err());
        assert!(split_url("ftp://h").is_err());
        assert!(split_url("http://").is_err());
        assert!(split_url("http://h/?x=1").is_err());
    }

    #[test]
    fn knows_when_a_port_is_given() {
        assert!(has_port("h:80"));
        assert!(has_port("[::1]:80"));
        assert!(!has_port("[::1]"));
        assert!(!has_port("example.com"));
    }

    #[test]
    fn operations_spread_and_retries_move_to_the_next_target() {
        assert_eq!(
            (0..6).map(|op| pick(op, 0, 3)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2]
        );
        assert_eq!(
            (0..4).map(|made| pick(4, made, 3)).collect::<Vec<_>>(),
            [1, 2, 0, 1]
        );
        assert_eq!(pick(7, 5, 1), 0);
        assert_eq!(
            pick(usize::MAX, u32::MAX, 2),
            pick(usize::MAX % 2, u32::MAX % 2, 2)
        );
    }

    #[tokio::test]
    async fn resolves_loopback_with_default_port() {
        let target = Target::resolve("http://127.0.0.1/p/").await;
        let target = target.expect("loopback always resolves");
        assert_eq!(target.addr.port(), 80);
        assert_eq!(target.prefix, "/p");
        assert_eq!(
            target.uri("/v1/feed").expect("valid path").to_string(),
            "/p/v1/feed"
        );
    }
}
