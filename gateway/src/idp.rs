//! Platform identity: bearer tokens that are JWTs (RFC 7519) signed by the
//! platform's identity provider, checked against its published keys (a
//! JWKS, RFC 7517), so that a shopper or merchant is the platform's user.
//!
//! - **Keys.** `--idp-jwks` is a file or an `http(s)://` URL, read at start
//!   (a failure there stops the start), again every
//!   [`JWKS_REFRESH_INTERVAL`] and on a token whose `kid` is not known, at
//!   most once per [`JWKS_REREAD_INTERVAL_MIN`]; each read is bounded by
//!   [`JWKS_BYTES_MAX`] and [`JWKS_READ_TIMEOUT`]. A read that fails keeps
//!   the keys last read, and `/readyz` says so. Only signature keys are
//!   taken: RSA (RS256/384/512, PS256/384/512), EC P-256/P-384 (ES256,
//!   ES384) and Ed25519 (EdDSA); symmetric (`oct`) keys are refused, and
//!   every key accepts exactly one algorithm (its JWK `alg`, else the one
//!   its type implies), so neither `alg: none` nor an HMAC token "signed"
//!   with a public key (RFC 8725 §2.1, §3.1) can pass.
//! - **Claims.** `iss` and `aud` must be the configured ones, `exp` is
//!   required, `nbf` is honoured, all with `--idp-leeway-seconds`
//!   (RFC 7519 §4.1). `sub` is the platform's user id, the account's
//!   **external id** (`flashsale_engine::check_external_id`); the role claim
//!   (`--idp-role-claim`, default `flashsale_role`) is `shopper` or
//!   `merchant`, absent meaning shopper. The optional `name` claim names a
//!   new account.
//! - **Cost.** An asymmetric signature check costs tens of microseconds,
//!   more than a whole sold-out answer, so a verified token is remembered
//!   in a bounded cache ([`VERIFIED_TOKENS_MAX`]) keyed by the SHA-256 of
//!   its bytes, until its `exp`, and only while its key is still in the
//!   JWKS (docs/platform-identity.md has the measurements).
//!
//! The gateway's `App::caller` sends a token here when it is shaped like a
//! JWT and the identity provider is configured; everything else is the
//! engine's own token (`crate::auth`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::auth::Caller;
use crate::error::Error;

/// Largest JWKS document read, in bytes.
pub const JWKS_BYTES_MAX: usize = 256 * 1024;
/// Longest a JWKS read may take (a URL's connection, answer and body).
pub const JWKS_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the JWKS is read again in the background.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Shortest time between two reads caused by unknown `kid`s: a stream of
/// tokens naming made-up keys cannot make the node hammer the provider.
pub const JWKS_REREAD_INTERVAL_MIN: Duration = Duration::from_secs(60);
/// Most keys taken from one JWKS.
pub const JWKS_KEYS_MAX: usize = 64;
/// Longest JWT looked at, in bytes; longer ones are refused unread.
pub const JWT_BYTES_MAX: usize = 8 * 1024;
/// Verified tokens remembered at most (about 100 bytes each).
pub const VERIFIED_TOKENS_MAX: usize = 262_144;
/// The role claim's default name.
pub const ROLE_CLAIM_DEFAULT: &str = "flashsale_role";
/// `/metrics`: the signature keys in use (gauge).
pub const KEYS_METRIC: &str = "flashsale_identity_provider_keys";
/// `/metrics`: reads of the JWKS that failed after the start, the keys last
/// read staying in use (counter).
pub const READ_FAILURES_METRIC: &str = "flashsale_identity_provider_read_failures_total";
/// `/metrics`: platform tokens presented, by `outcome`: `verified` (a
/// signature checked), `remembered` (found in the cache), `refused`.
pub const TOKENS_METRIC: &str = "flashsale_platform_tokens_total";

/// This node's series of the identity provider ([`KEYS_METRIC`],
/// [`READ_FAILURES_METRIC`], [`TOKENS_METRIC`]), registered at start so
/// that alerts have them before the first event.
struct IdpMetrics {
    keys: metrics::Gauge,
    read_failures: metrics::Counter,
    verified: metrics::Counter,
    remembered: metrics::Counter,
    refused: metrics::Counter,
}

impl IdpMetrics {
    fn register() -> IdpMetrics {
        metrics::describe_gauge!(
            KEYS_METRIC,
            "Signature keys of the identity provider in use"
        );
        metrics::describe_counter!(
            READ_FAILURES_METRIC,
            "Reads of the identity provider's JWKS that failed after the start (the keys last read stay in use)"
        );
        metrics::describe_counter!(TOKENS_METRIC, "Platform tokens presented, by outcome");
        let tokens = |outcome: &'static str| {
            let counter = metrics::counter!(TOKENS_METRIC, "outcome" => outcome);
            counter.increment(0);
            counter
        };
        let read_failures = metrics::counter!(READ_FAILURES_METRIC);
        read_failures.increment(0);
        IdpMetrics {
            keys: metrics::gauge!(KEYS_METRIC),
            read_failures,
            verified: tokens("verified"),
            remembered: tokens("remembered"),
            refused: tokens("refused"),
        }
    }
}

/// Where the platform publishes its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(Url),
}

impl JwksSource {
    /// `http://` or `https://` URLs are fetched; anything else is a file
    /// path. Errors: a URL of another scheme, or with credentials.
    pub fn parse(text: &str) -> Result<JwksSource, String> {
        if text.is_empty() {
            return Err("is empty".to_owned());
        }
        if !text.contains("://") {
            return Ok(JwksSource::File(PathBuf::from(text)));
        }
        let url = Url::parse(text).map_err(|error| format!("is not a URL: {error}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be a file path or an http(s):// URL".to_owned());
        }
        if url.host_str().is_none() || !url.username().is_empty() || url.password().is_some() {
            return Err("must name a host and carry no credentials".to_owned());
        }
        Ok(JwksSource::Url(url))
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(path) => write!(f, "{}", path.display()),
            JwksSource::Url(url) => write!(f, "{url}"),
        }
    }
}

/// The identity provider a deployment trusts (`serve --idp-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpSettings {
    pub jwks: JwksSource,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// An `aud` every token must carry.
    pub audience: String,
    /// The claim that says `shopper` or `merchant`.
    pub role_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
}

/// The role a platform token gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Shopper,
    Merchant,
}

/// A verified platform token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The platform's user id (`sub`).
    pub external_id: String,
    pub role: Role,
    /// The `name` claim, if any.
    pub name: Option<String>,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// The key that signed it.
    kid: Arc<str>,
}

/// A key of the JWKS and how a token signed by it is checked.
struct Key {
    decoding: DecodingKey,
    validation: Validation,
}

/// The keys last read, by `kid` (the empty `kid` when the JWKS has one
/// key without an id).
struct KeySet {
    keys: HashMap<Arc<str>, Key>,
    /// Unix seconds of the read.
    read_at: i64,
}

/// A token verified before, and the account it resolved to.
#[derive(Clone)]
struct Verified {
    caller: Caller,
    expires_at: i64,
    kid: Arc<str>,
    /// The deployment's epoch when it resolved (an account id of another
    /// epoch may name someone else).
    epoch: u64,
}

/// The claims read from a token; the rest are ignored.
#[derive(Debug, Clone, Deserialize)]
struct Claims {
    /// Optional here so that a token without it meets the validation's
    /// "required claim" refusal, not a parse error.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(flatten)]
    other: HashMap<String, serde_json::Value>,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// The identity provider of one node: its keys, the verified-token cache
/// and how to read the keys again.
pub struct Idp {
    settings: IdpSettings,
    keys: RwLock<Arc<KeySet>>,
    /// The last read's failure, kept until a read succeeds.
    read_error: Mutex<Option<String>>,
    /// When a read for an unknown `kid` last ran; held across the read so
    /// that racing requests wait for one read.
    reread: tokio::sync::Mutex<Option<Instant>>,
    verified: quick_cache::sync::Cache<[u8; 32], Verified>,
    http: HttpClient,
    metrics: IdpMetrics,
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idp")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why a JWKS could not be used.
fn jwks_error(source: &JwksSource, reason: impl std::fmt::Display) -> Error {
    Error::Config(format!("--idp-jwks {source}: {reason}"))
}

impl Idp {
    /// Reads the keys once. Errors: [`Error::Config`] naming `--idp-jwks`
    /// when the JWKS cannot be read, parsed, or holds no usable key.
    pub async fn start(settings: IdpSettings, now: i64) -> Result<Idp, Error> {
        let http = http_client()?;
        let keys = read_keys(&settings, &http, now).await?;
        let metrics = IdpMetrics::register();
        metrics.keys.set(keys.keys.len() as f64);
        Ok(Idp {
            settings,
            keys: RwLock::new(Arc::new(keys)),
            read_error: Mutex::new(None),
            reread: tokio::sync::Mutex::new(None),
            verified: quick_cache::sync::Cache::new(VERIFIED_TOKENS_MAX),
            http,
            metrics,
        })
    }

    /// Reads the JWKS again; on failure keeps the keys last read and
    /// remembers why, for `/readyz`.
    pub async fn refresh(&self, now: i64) {
        match read_keys(&self.settings, &self.http, now).await {
            Ok(keys) => {
                self.metrics.keys.set(keys.keys.len() as f64);
                *self.keys.write() = Arc::new(keys);
                *self.read_error.lock() = None;
            }
            Err(error) => {
                self.metrics.read_failures.increment(1);
                tracing::warn!(%error, "keeping the identity provider's keys last read");
                // The reason alone: at runtime the provider failed, not the
                // configuration the error's own text would blame.
                let reason = match error {
                    Error::Config(reason) => reason,
                    other => other.to_string(),
                };
                *self.read_error.lock() = Some(reason);
            }
        }
    }

    /// What `/readyz` says of the keys: how many, when read, and the last
    /// read's failure if the newest read failed.
    pub fn status(&self) -> serde_json::Value {
        let keys = self.keys.read().clone();
        let mut status = serde_json::json!({
            "keys": keys.keys.len(),
            "read_at": keys.read_at,
        });
        if let Some(error) = self.read_error.lock().clone() {
            status["read_error"] = serde_json::Value::String(error);
        }
        status
    }

    /// The account a verified token resolved to before, if this exact
    /// token was verified at this `epoch`, has not expired at `now` (Unix
    /// seconds) and its key is still published; and the token's `exp`.
    pub fn remembered(&self, token: &str, now: i64, epoch: u64) -> Option<(Caller, i64)> {
        let verified = self.verified.get(&digest(token))?;
        let fresh = verified.expires_at > now
            && verified.epoch == epoch
            && self.keys.read().keys.contains_key(&verified.kid);
        if fresh {
            self.metrics.remembered.increment(1);
        }
        fresh.then_some((verified.caller, verified.expires_at))
    }

    /// Remembers that `token`, verified as `identity`, is `caller` at
    /// `epoch`.
    pub fn remember(&self, token: &str, identity: &Identity, caller: Caller, epoch: u64) {
        self.verified.insert(
            digest(token),
            Verified {
                caller,
                expires_at: identity.expires_at,
                kid: identity.kid.clone(),
                epoch,
            },
        );
    }

    /// Checks a JWT at `now` (Unix seconds): its key, signature and claims.
    /// A `kid` not in the keys makes one read of the JWKS (at most one per
    /// [`JWKS_REREAD_INTERVAL_MIN`]) before refusing. Errors:
    /// [`Error::Unauthorized`] for a token that is oversized, malformed,
    /// signed by an unknown key or with another algorithm than its key's,
    /// wrongly signed, expired, not yet valid, of another issuer or
    /// audience, or with an unusable `sub` or role.
    pub async fn verify(&self, token: &str, now: i64) -> Result<Identity, Error> {
        let verified = self.check(token, now).await;
        match &verified {
            Ok(_) => self.metrics.verified.increment(1),
            Err(_) => self.metrics.refused.increment(1),
        }
        verified
    }

    /// [`Idp::verify`] without the counting.
    async fn check(&self, token: &str, now: i64) -> Result<Identity, Error> {
        if token.len() > JWT_BYTES_MAX {
            return Err(Error::Unauthorized("the token is too long"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Error::Unauthorized("the token is not a valid JWT"))?;
        // `crit` lists header extensions the recipient must understand or
        // refuse the token (RFC 7515 §4.1.11); this server understands none.
        if header.crit.is_some() {
            return Err(Error::Unauthorized(
                "the token's header names extensions this server does not understand (crit)",
            ));
        }
        let kid: Arc<str> = Arc::from(header.kid.as_deref().unwrap_or(""));
        if !self.keys.read().keys.contains_key(&kid) {
            self.reread_for_unknown_kid(now).await;
        }
        let keys = self.keys.read().clone();
        let key = keys.keys.get(&kid).ok_or(Error::Unauthorized(
            "the token's key (kid) is not the identity provider's",
        ))?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &key.validation)
            .map_err(|error| Error::Unauthorized(refusal(error.kind())))?;
        let claims = data.claims;
        let missing = Error::Unauthorized(refusal(
            &jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(String::new()),
        ));
        let (Some(sub), Some(exp)) = (claims.sub, claims.exp) else {
            return Err(missing);
        };
        flashsale_engine::check_external_id(&sub)
            .map_err(|_| Error::Unauthorized("the token's sub is not a usable user id"))?;
        let role = match claims.other.get(&self.settings.role_claim) {
            None => Role::Shopper,
            Some(serde_json::Value::String(role)) if role == "shopper" => Role::Shopper,
            Some(serde_json::Value::String(role)) if role == "merchant" => Role::Merchant,
            Some(_) => {
                return Err(Error::Unauthorized(
                    "the token's role claim must be \"shopper\" or \"merchant\"",
                ));
            }
        };
        Ok(Identity {
            external_id: sub,
            role,
            name: claims.name,
            expires_at: exp,
            kid,
        })
    }

    async fn reread_for_unknown_kid(&self, now: i64) {
        let mut last = self.reread.lock().await;
        if last.is_some_and(|at| at.elapsed() < JWKS_REREAD_INTERVAL_MIN) {
            return;
        }
        *last = Some(Instant::now());
        self.refresh(now).await;
    }
}

/// Whether a bearer token is shaped like a JWT (three base64url parts,
/// the first a JSON object: `eyJ` is `{"` encoded); the engine's own tokens
/// start with their version (`v1.`) and the admin token is opaque.
pub fn is_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|byte| *byte == b'.').count() == 2
}

/// The cache key of a token: a collision-resistant digest, so no other
/// token can hit a verified one's entry.
fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The message of a refused token.
fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "the token has expired",
        K::ImmatureSignature => "the token is not valid yet (nbf)",
        K::InvalidIssuer => "the token's issuer (iss) is not the identity provider",
        K::InvalidAudience => "the token's audience (aud) is not this deployment",
        K::InvalidAlgorithm => "the token's algorithm is not its key's",
        K::InvalidSignature => "the token's signature does not verify",
        K::MissingRequiredClaim(_) => "the token lacks a required claim (sub, exp, iss, aud)",
        _ => "the token is not a valid JWT",
    }
}

/// The one algorithm a key verifies: its JWK `alg`, else the one its type
/// implies; `None` for keys that must not verify tokens (symmetric keys,
/// encryption keys, unsupported curves or algorithms).
fn algorithm_of(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::RS384) => Some(Algorithm::RS384),
        Some(KeyAlgorithm::RS512) => Some(Algorithm::RS512),
        Some(KeyAlgorithm::PS256) => Some(Algorithm::PS256),
        Some(KeyAlgorithm::PS384) => Some(Algorithm::PS384),
        Some(KeyAlgorithm::PS512) => Some(Algorithm::PS512),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::ES384) => Some(Algorithm::ES384),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(_) => return None,
    };
    let implied = match &jwk.algorithm {
        // An RSA key declaring a non-RSA `alg` is misdeclared: ignored,
        // like an EC key declaring another curve's algorithm.
        AlgorithmParameters::RSA(_) => {
            return match declared {
                None => Some(Algorithm::RS256),
                Some(alg) => Some(alg).filter(|alg| {
                    matches!(
                        alg,
                        Algorithm::RS256
                            | Algorithm::RS384
                            | Algorithm::RS512
                            | Algorithm::PS256
                            | Algorithm::PS384
                            | Algorithm::PS512
                    )
                }),
            };
        }
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => return None,
    };
    match declared {
        Some(alg) if alg != implied => None,
        _ => Some(implied),
    }
}

/// Reads and parses the JWKS. Errors: [`Error::Config`] naming
/// `--idp-jwks`.
async fn read_keys(settings: &IdpSettings, http: &HttpClient, now: i64) -> Result<KeySet, Error> {
    let source = &settings.jwks;
    let bytes = tokio::time::timeout(JWKS_READ_TIMEOUT, fetch(source, http))
        .await
        .map_err(|_| jwks_error(source, format!("not read within {JWKS_READ_TIMEOUT:?}")))??;
    let set: JwkSet = serde_json::from_slice(&bytes)
        .map_err(|error| jwks_error(source, format!("is not a JWK set: {error}")))?;
    if set.keys.len() > JWKS_KEYS_MAX {
        return Err(jwks_error(
            source,
            format!("holds {} keys, more than {JWKS_KEYS_MAX}", set.keys.len()),
        ));
    }
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(algorithm) = algorithm_of(jwk) else {
            continue;
        };
        let decoding = DecodingKey::from_jwk(jwk).map_err(|error| {
            jwks_error(
                source,
                format!("key {:?} is not usable: {error}", jwk.common.key_id),
            )
        })?;
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.leeway = settings.leeway_seconds;
        validation.validate_nbf = true;
        let kid: Arc<str> = Arc::from(jwk.common.key_id.as_deref().unwrap_or(""));
        keys.insert(
            kid,
            Key {
                decoding,
                validation,
            },
        );
    }
    if keys.is_empty() {
        return Err(jwks_error(
            source,
            "holds no signature key this server verifies (RSA, EC P-256/P-384 or Ed25519)",
        ));
    }
    Ok(KeySet { keys, read_at: now })
}

/// The JWKS document's bytes, at most [`JWKS_BYTES_MAX`].
async fn fetch(source: &JwksSource, http: &HttpClient) -> Result<Bytes, Error> {
    match source {
        JwksSource::File(path) => {
            let path = path.clone();
            let read = tokio::task::spawn_blocking(move || {
                use std::io::Read as _;
                let file = std::fs::File::open(&path)?;
                let mut bytes = Vec::new();
                file.take(JWKS_BYTES_MAX as u64 + 1)
                    .read_to_end(&mut bytes)?;
                Ok::<_, std::io::Error>(bytes)
            })
            .await
            .map_err(Error::Task)?
            .map_err(|error| jwks_error(source, error))?;
            if read.len() > JWKS_BYTES_MAX {
                return Err(jwks_error(
                    source,
                    format!("is larger than {JWKS_BYTES_MAX} bytes"),
                ));
            }
            Ok(Bytes::from(read))
        }
        JwksSource::Url(url) => {
            let uri: hyper::Uri = url
                .as_str()
                .parse()
                .map_err(|error| jwks_error(source, error))?;
            let response = http
                .get(uri)
                .await
                .map_err(|error| jwks_error(source, error))?;
            if !response.status().is_success() {
                return Err(jwks_error(
                    source,
                    format!("answered {}", response.status()),
                ));
            }
            let body = Limited::new(response.into_body(), JWKS_BYTES_MAX)
                .collect()
                .await
                .map_err(|error| jwks_error(source, error))?;
            Ok(body.to_bytes())
        }
    }
}

/// An HTTP(S) client trusting Mozilla's roots (rustls with `ring`).
fn http_client() -> Result<HttpClient, Error> {
    // rustls deprecates its ring provider for lacking post-quantum key
    // exchange, which guards long-lived secrets; a JWKS is public keys
    // checked for authenticity now. ring builds with only a C compiler.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Config(format!("TLS for --idp-jwks: {error}")))?
        .with_root_certificates(rustls::RootCertStore::from_iter(
            webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
        ))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use flashsale_engine::ShopperId;
    use flashsale_testkit::platform::{
        self, AUDIENCE, ISSUER, TestKey, claims, hs256_with_public_key, unsigned,
    };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn settings(jwks: JwksSource) -> IdpSettings {
        IdpSettings {
            jwks,
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
            role_claim: ROLE_CLAIM_DEFAULT.to_owned(),
            leeway_seconds: 5,
        }
    }

    /// An identity provider reading `keys` from a file.
    async fn from_file(keys: &[TestKey]) -> (Idp, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, platform::jwks(keys)).unwrap();
        let idp = Idp::start(settings(JwksSource::File(path)), platform::unix_now())
            .await
            .unwrap();
        (idp, dir)
    }

    fn refused(result: Result<Identity, Error>) -> &'static str {
        match result {
            Err(Error::Unauthorized(message)) => message,
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn rs256_and_es256_tokens_of_the_published_keys_verify() {
        let (idp, _dir) = from_file(&[TestKey::Rsa1, TestKey::Es256]).await;
        let now = platform::unix_now();
        for key in [TestKey::Rsa1, TestKey::Es256] {
            let token = key.sign(&claims("auth0|alice", None));
            assert!(is_jwt(&token));
            let identity = idp.verify(&token, now).await.unwrap();
            assert_eq!(identity.external_id, "auth0|alice");
            assert_eq!(identity.role, Role::Shopper, "no role claim: a shopper");
            assert!(identity.expires_at > now);
        }
        let token = TestKey::Es256.sign(&claims("shop-9", Some("merchant")));
        assert_eq!(idp.verify(&token, now).await.unwrap().role, Role::Merchant);
    }

    #[tokio::test]
    async fn tokens_of_another_issuer_audience_time_or_role_are_refused() {
        let (idp, _dir) = from_file(&[TestKey::Rsa1]).await;
        let now = platform::unix_now();
        let with = |field: &str, value: serde_json::Value| {
            let mut claims = claims("alice", None);
            claims[field] = value;
            TestKey::Rsa1.sign(&claims)
        };
        let cases = [
            (with("iss", "https://evil.test".into()), "issuer"),
            (with("aud", "another-app".into()), "audience"),
            (with("exp", (now - 60).into()), "expired"),
            (with("nbf", (now + 600).into()), "not valid yet"),
            (with("flashsale_role", "admin".into()), "role claim"),
            (with("sub", "".into()), "sub"),
            (with("sub", "a\u{7}b".into()), "sub"),
        ];
        for (token, says) in cases {
            let message = refused(idp.verify(&token, now).await);
            assert!(message.contains(says), "{says}: {message}");
        }
        let mut no_exp = claims("alice", None);
        no_exp.as_object_mut().unwrap().remove("exp");
        let message = refused(idp.verify(&TestKey::Rsa1.sign(&no_exp), now).await);
        assert!(message.contains("required claim"), "{message}");
        // Within the leeway an expired token still passes.
        let just_expired = with("exp", (now - 2).into());
        assert!(idp.verify(&just_expired, now).await.is_ok());
    }

    #[tokio::test]
    async fn alg_none_and_hmac_with_the_public_key_are_refused() {
        let (idp, _dir) = from_file(&[TestKey::Rsa1]).await;
        let now = platform::unix_now();
        let none = unsigned(&claims("alice", None), TestKey::Rsa1.kid());
        refused(idp.verify(&none, now).await);
        let confused = hs256_with_public_key(&claims("alice", None));
        let message = refused(idp.verify(&confused, now).await);
        assert!(message.contains("algorithm"), "{message}");
        // A good token with one byte of its signature changed.
        let mut forged = TestKey::Rsa1.sign(&claims("alice", None));
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        refused(idp.verify(&forged, now).await);
        let huge = format!("eyJ{}", "a".repeat(JWT_BYTES_MAX));
        assert!(refused(idp.verify(&huge, now).await).contains("too long"));
    }

    #[tokio::test]
    async fn a_token_with_critical_header_extensions_is_refused() {
        let (idp, _dir) = from_file(&[TestKey::Es256]).await;
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(TestKey::Es256.kid().to_owned());
        header.crit = Some(vec!["https://id.platform.test/step-up".to_owned()]);
        let key = jsonwebtoken::EncodingKey::from_ec_pem(TestKey::Es256.private_pem()).unwrap();
        let token = jsonwebtoken::encode(&header, &claims("alice", None), &key).unwrap();
        let message = refused(idp.verify(&token, platform::unix_now()).await);
        assert!(message.contains("crit"), "{message}");
    }

    #[tokio::test]
    async fn a_token_of_an_unknown_key_is_refused() {
        let (idp, _dir) = from_file(&[TestKey::Rsa1]).await;
        let token = TestKey::Rsa2.sign(&claims("alice", None));
        let message = refused(idp.verify(&token, platform::unix_now()).await);
        assert!(message.contains("kid"), "{message}");
    }

    #[tokio::test]
    async fn a_jwks_that_cannot_be_used_stops_the_start_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = JwksSource::File(dir.path().join("nowhere.json"));
        let oct = dir.path().join("oct.json");
        std::fs::write(&oct, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#).unwrap();
        let junk = dir.path().join("junk.json");
        std::fs::write(&junk, "not json").unwrap();
        for source in [missing, JwksSource::File(oct), JwksSource::File(junk)] {
            match Idp::start(settings(source), 0).await {
                Err(Error::Config(message)) => {
                    assert!(message.starts_with("--idp-jwks"), "{message}")
                }
                other => panic!("expected a start-up error, got {other:?}"),
            }
        }
    }

    /// A JWKS served over HTTP on loopback: answers the current document
    /// (500 when there is none) and counts requests.
    struct JwksServer {
        url: Url,
        document: Arc<Mutex<Option<String>>>,
        requests: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl JwksServer {
        async fn start(document: String) -> JwksServer {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = Url::parse(&format!(
                "http://{}/jwks.json",
                listener.local_addr().unwrap()
            ))
            .unwrap();
            let document = Arc::new(Mutex::new(Some(document)));
            let requests = Arc::new(AtomicUsize::new(0));
            let (served, counted) = (document.clone(), requests.clone());
            let task = tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let mut head = vec![0u8; 4096];
                    let _ = stream.read(&mut head).await;
                    let answer = match served.lock().clone() {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\
                                 connection: close\r\n\r\n"
                            .to_owned(),
                    };
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            });
            JwksServer {
                url,
                document,
                requests,
                task,
            }
        }
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    #[tokio::test]
    async fn a_new_kid_rereads_the_url_at_most_once_a_minute() {
        let server = JwksServer::start(platform::jwks(&[TestKey::Rsa1])).await;
        let idp = Idp::start(settings(JwksSource::Url(server.url.clone())), 0)
            .await
            .unwrap();
        assert_eq!(server.requests.load(Ordering::SeqCst), 1);
        // The provider rotates: rsa-2 is published and signs new tokens.
        *server.document.lock() = Some(platform::jwks(&[TestKey::Rsa1, TestKey::Rsa2]));
        let now = platform::unix_now();
        let rotated = TestKey::Rsa2.sign(&claims("alice", None));
        assert_eq!(
            idp.verify(&rotated, now).await.unwrap().external_id,
            "alice"
        );
        assert_eq!(server.requests.load(Ordering::SeqCst), 2, "one re-read");
        // A made-up kid right after makes no further read.
        let unknown = TestKey::Es256.sign(&claims("alice", None));
        refused(idp.verify(&unknown, now).await);
        assert_eq!(
            server.requests.load(Ordering::SeqCst),
            2,
            "no re-read within a minute"
        );
    }

    #[tokio::test]
    async fn a_jwks_that_disappears_keeps_the_keys_last_read_and_says_so() {
        let server = JwksServer::start(platform::jwks(&[TestKey::Es256])).await;
        let idp = Idp::start(settings(JwksSource::Url(server.url.clone())), 7)
            .await
            .unwrap();
        assert!(idp.status().get("read_error").is_none());
        *server.document.lock() = None;
        idp.refresh(8).await;
        let status = idp.status();
        assert_eq!(status["keys"], 1);
        assert_eq!(status["read_at"], 7, "the keys of the last good read");
        let read_error = status["read_error"].as_str().unwrap();
        assert!(read_error.contains("500"), "{status}");
        assert!(
            read_error.starts_with("--idp-jwks "),
            "the reason, not an invalid configuration: {status}"
        );
        let token = TestKey::Es256.sign(&claims("alice", None));
        assert!(idp.verify(&token, platform::unix_now()).await.is_ok());
        *server.document.lock() = Some(platform::jwks(&[TestKey::Es256]));
        idp.refresh(9).await;
        assert!(idp.status().get("read_error").is_none());
    }

    #[tokio::test]
    async fn a_remembered_token_lasts_until_its_exp_its_key_or_its_epoch_go() {
        let server = JwksServer::start(platform::jwks(&[TestKey::Rsa1, TestKey::Rsa2])).await;
        let idp = Idp::start(settings(JwksSource::Url(server.url.clone())), 0)
            .await
            .unwrap();
        let now = platform::unix_now();
        let token = TestKey::Rsa2.sign(&claims("alice", None));
        let identity = idp.verify(&token, now).await.unwrap();
        let alice = Caller::Shopper(ShopperId(4));
        assert_eq!(
            idp.remembered(&token, now, 1),
            None,
            "not before it is remembered"
        );
        idp.remember(&token, &identity, alice, 1);
        assert_eq!(
            idp.remembered(&token, now, 1),
            Some((alice, identity.expires_at))
        );
        assert_eq!(idp.remembered(&token, now, 2), None, "another epoch");
        assert_eq!(
            idp.remembered(&token, identity.expires_at, 1),
            None,
            "expired"
        );
        let other = TestKey::Rsa2.sign(&claims("bob", Some("merchant")));
        assert_eq!(idp.remembered(&other, now, 1), None, "another token");
        // The provider drops rsa-2: its tokens are no longer taken, even
        // remembered ones.
        *server.document.lock() = Some(platform::jwks(&[TestKey::Rsa1]));
        idp.refresh(now).await;
        assert_eq!(
            idp.remembered(&token, now, 1),
            None,
            "its key left the JWKS"
        );
    }

    #[test]
    fn a_key_verifies_its_declared_algorithm_or_none() {
        let with_alg = |key: TestKey, alg: Option<KeyAlgorithm>| {
            let mut jwk = key.jwk();
            jwk.common.key_algorithm = alg;
            algorithm_of(&jwk)
        };
        assert_eq!(with_alg(TestKey::Rsa1, None), Some(Algorithm::RS256));
        assert_eq!(
            with_alg(TestKey::Rsa1, Some(KeyAlgorithm::PS384)),
            Some(Algorithm::PS384)
        );
        assert_eq!(with_alg(TestKey::Es256, None), Some(Algorithm::ES256));
        // A key whose declared algorithm is not of its type verifies nothing.
        for (key, alg) in [
            (TestKey::Rsa1, KeyAlgorithm::ES256),
            (TestKey::Rsa1, KeyAlgorithm::EdDSA),
            (TestKey::Rsa1, KeyAlgorithm::HS256),
            (TestKey::Es256, KeyAlgorithm::RS256),
            (TestKey::Es256, KeyAlgorithm::ES384),
        ] {
            assert_eq!(with_alg(key, Some(alg)), None, "{key:?} declaring {alg:?}");
        }
    }

    #[test]
    fn jwks_sources_are_files_or_http_urls() {
        assert_eq!(
            JwksSource::parse("/etc/flashsale/jwks.json"),
            Ok(JwksSource::File(PathBuf::from("/etc/flashsale/jwks.json")))
        );
        assert!(matches!(
            JwksSource::parse("https://id.example/.well-known/jwks.json"),
            Ok(JwksSource::Url(_))
        ));
        for bad in [
            "",
            "ftp://id.example/jwks",
            "https://user:pw@id.example/jwks",
        ] {
            assert!(JwksSource::parse(bad).is_err(), "{bad:?}");
        }
    }
}
