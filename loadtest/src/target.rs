//! The servers under test (or whose draw is verified): where to connect,
//! over TLS or not, what to put in `Host`, and which node of a deployment
//! each attempt goes to.
//!
//! The URL is `http://` or `https://` (parsed by the `url` crate) and may
//! carry a path prefix (`http://lb:80/flashsale`), which is put in front of
//! every API path. Over `https://` the server's certificate is checked
//! (rustls, with the `ring` provider) against Mozilla's root certificates
//! (`webpki-roots`) and any extra PEM file the caller trusts
//! (`verify-draw --ca-cert`); the name checked is the URL's host.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hyper::Uri;
use hyper::header::HeaderValue;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::error::LoadtestError;

/// What a target URL takes, said in every refusal of one.
const TARGET_URL_HINT: &str =
    "expected http://HOST:PORT or https://HOST[:PORT], with an optional path prefix";

/// A resolved `http://` or `https://` target.
#[derive(Clone)]
pub struct Target {
    /// The URL as the user gave it, without a trailing slash.
    pub url: String,
    /// The socket address every connection goes to.
    pub addr: SocketAddr,
    /// The `Host` header value (the URL's authority).
    pub host: HeaderValue,
    /// Path prefix put before every API path, empty or starting with `/`.
    pub prefix: String,
    /// `https://`: the TLS client and the name its certificate must carry.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A target URL taken apart, before any name is resolved.
#[derive(Debug, PartialEq, Eq)]
struct Parts {
    https: bool,
    /// `host:port` as written, the `Host` header's value.
    authority: String,
    /// The host alone (no brackets around an IPv6 address), for TLS.
    host: String,
    port: u16,
    /// Empty or starting with `/`, without a trailing slash.
    prefix: String,
}

impl Target {
    /// Parses `url` and resolves its host once, up front; over `https://`
    /// trusts Mozilla's roots and the certificates of `ca_cert` (a PEM
    /// file), if given. Errors: [`LoadtestError::InvalidTarget`] (the URL,
    /// or `ca_cert` unreadable or without a certificate),
    /// [`LoadtestError::Resolve`].
    pub async fn resolve(url: &str, ca_cert: Option<&Path>) -> Result<Target, LoadtestError> {
        let invalid = |reason: String| LoadtestError::InvalidTarget {
            url: url.to_owned(),
            reason,
        };
        let parts = split_url(url).map_err(invalid)?;
        let host = HeaderValue::from_str(&parts.authority)
            .map_err(|_| invalid("the host is not a valid header value".to_owned()))?;
        let addr = tokio::net::lookup_host((parts.host.as_str(), parts.port))
            .await
            .map_err(|source| LoadtestError::Resolve {
                authority: parts.authority.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| LoadtestError::Resolve {
                authority: parts.authority.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            })?;
        let tls = if parts.https {
            let name = ServerName::try_from(parts.host.clone()).map_err(|_| {
                invalid("its host is not a name a certificate can carry".to_owned())
            })?;
            Some((TlsConnector::from(Arc::new(client_config(ca_cert)?)), name))
        } else {
            None
        };
        Ok(Target {
            url: url.trim_end_matches('/').to_owned(),
            addr,
            host,
            prefix: parts.prefix,
            tls,
        })
    }

    /// The origin-form URI (`/prefix/v1/...?...`) for an API path.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, LoadtestError> {
        let full = format!("{}{}", self.prefix, path_and_query);
        Uri::try_from(full).map_err(|_| LoadtestError::InvalidTarget {
            url: self.url.clone(),
            reason: "an API path built on it is not a valid URI".to_owned(),
        })
    }
}

/// A target URL (`--target`, `verify-draw --deal`) checked when the
/// command line is read: returns it as given; errors: what is wrong, with
/// the form expected (clap names the flag).
pub fn parse_target_url(text: &str) -> Result<String, String> {
    split_url(text)?;
    Ok(text.to_owned())
}

/// Resolves every `--target` URL, in order.
pub async fn resolve_all(urls: &[String]) -> Result<Vec<Arc<Target>>, LoadtestError> {
    let mut targets = Vec::with_capacity(urls.len());
    for url in urls {
        targets.push(Arc::new(Target::resolve(url, None).await?));
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

/// A TLS client trusting Mozilla's roots and the certificates in
/// `ca_cert`. Errors: [`LoadtestError::InvalidTarget`] naming the file.
fn client_config(ca_cert: Option<&Path>) -> Result<rustls::ClientConfig, LoadtestError> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_cert {
        let invalid = |reason: String| LoadtestError::InvalidTarget {
            url: format!("--ca-cert {}", path.display()),
            reason,
        };
        let certificates = CertificateDer::pem_file_iter(path)
            .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
            .map_err(|error| invalid(format!("not a readable PEM file ({error})")))?;
        if certificates.is_empty() {
            return Err(invalid("it holds no CERTIFICATE".to_owned()));
        }
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|error| invalid(format!("a certificate is refused ({error})")))?;
        }
    }
    // rustls deprecates its ring provider for lacking post-quantum key
    // exchange, which guards long-lived secrets; what is fetched here is a
    // public record checked for authenticity now. ring builds with only a
    // C compiler, where aws-lc-rs needs a much longer native build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| LoadtestError::Config(format!("TLS: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Takes `http[s]://authority/prefix` apart. Errors: what is wrong, with
/// [`TARGET_URL_HINT`].
fn split_url(text: &str) -> Result<Parts, String> {
    let wrong = |what: String| format!("{what}; {TARGET_URL_HINT}");
    let url = url::Url::parse(text).map_err(|error| wrong(format!("not a URL ({error})")))?;
    let https = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(wrong(format!("the scheme {other:?} is not http or https"))),
    };
    let Some(host) = url.host_str() else {
        return Err(wrong("it has no host".to_owned()));
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(wrong("it must not carry a query or fragment".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(wrong("it must not carry a user or password".to_owned()));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| wrong("it has no port".to_owned()))?;
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Ok(Parts {
        https,
        authority,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        prefix: url.path().trim_end_matches('/').to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(https: bool, authority: &str, host: &str, port: u16, prefix: &str) -> Parts {
        Parts {
            https,
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            prefix: prefix.to_owned(),
        }
    }

    #[test]
    fn splits_scheme_authority_and_prefix() {
        assert_eq!(
            split_url("http://127.0.0.1:8080"),
            Ok(parts(false, "127.0.0.1:8080", "127.0.0.1", 8080, ""))
        );
        assert_eq!(
            split_url("http://h:1/"),
            Ok(parts(false, "h:1", "h", 1, ""))
        );
        assert_eq!(
            split_url("http://h/a/b/"),
            Ok(parts(false, "h", "h", 80, "/a/b"))
        );
        assert_eq!(
            split_url("https://flash.example/v1/deals/d_1"),
            Ok(parts(
                true,
                "flash.example",
                "flash.example",
                443,
                "/v1/deals/d_1"
            ))
        );
        assert_eq!(
            split_url("https://[::1]:8443"),
            Ok(parts(true, "[::1]:8443", "::1", 8443, ""))
        );
        for (bad, says) in [
            ("ftp://h", "the scheme \"ftp\""),
            ("http://", "not a URL"),
            ("127.0.0.1:8080", "not a URL"),
            ("http://h/?x=1", "query"),
            ("http://u:p@h/", "user"),
        ] {
            let message = split_url(bad).expect_err(bad);
            assert!(message.contains(says), "{bad:?}: {message}");
            assert!(message.ends_with(TARGET_URL_HINT), "{bad:?}: {message}");
        }
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
        let target = Target::resolve("http://127.0.0.1/p/", None).await;
        let target = target.expect("loopback always resolves");
        assert_eq!(target.addr.port(), 80);
        assert_eq!(target.prefix, "/p");
        assert!(target.tls.is_none());
        assert_eq!(
            target.uri("/v1/feed").expect("valid path").to_string(),
            "/p/v1/feed"
        );
        let target = Target::resolve("https://127.0.0.1/", None).await;
        assert_eq!(target.expect("resolves").addr.port(), 443);
    }

    #[tokio::test]
    async fn a_ca_file_without_a_certificate_is_refused_naming_it() {
        let file = tempfile::NamedTempFile::new().expect("a temporary file");
        let Err(error) = Target::resolve("https://127.0.0.1/", Some(file.path())).await else {
            panic!("an empty CA file must be refused");
        };
        let message = error.to_string();
        assert!(message.contains("--ca-cert"), "{message}");
        assert!(message.contains("no CERTIFICATE"), "{message}");
    }
}
