//! Shoppers of a platform (`--platform-key`): instead of the admin's bulk
//! accounts, every shopper is a platform user whose JWT the load generator
//! signs with the platform's key, as a platform's identity provider would
//! (the server trusts the public half through `serve --idp-jwks`).
//!
//! Setup does what a storefront does before a sale: it presents each
//! shopper's JWT once to `POST /v1/tokens/exchange` (which makes the
//! shopper at its first use), and the admin credits the wallet. The taps
//! then carry either the exchanged engine token (`--platform-auth
//! exchange`) or the JWT itself (`--platform-auth jwt`, which the server
//! verified at the exchange and keeps in its verified-token cache).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::Method;
use hyper::StatusCode;
use hyper::header::HeaderValue;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::api::{self, Shopper};
use crate::error::LoadtestError;
use crate::target::Target;

/// Exchanges and credits in flight at once during setup.
pub const PLATFORM_SETUP_IN_FLIGHT_MAX: usize = 64;
/// How long the shoppers' JWTs are valid.
pub const JWT_LIFETIME: Duration = Duration::from_secs(3_600);

/// What the taps carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlatformAuth {
    /// The engine's own token, exchanged for the JWT before the sale.
    Exchange,
    /// The platform's JWT itself.
    Jwt,
}

/// `--platform-*`: the platform whose users the shoppers are.
#[derive(Debug, Clone, clap::Args)]
pub struct PlatformArgs {
    /// PKCS#8 PEM private key (RSA: RS256; EC P-256: ES256) that signs the
    /// shoppers' JWTs; the server must trust its public half (serve
    /// --idp-jwks; with --spawn the load generator writes that JWKS and
    /// starts the server with it). Unset: the admin's bulk shoppers.
    #[arg(long, env = "FLASHSALE_LOADTEST_PLATFORM_KEY", value_name = "PEM")]
    pub platform_key: Option<PathBuf>,

    /// The `kid` the JWTs name (the key's id in the server's JWKS); with
    /// --platform-key.
    #[arg(
        long,
        env = "FLASHSALE_LOADTEST_PLATFORM_KID",
        requires = "platform_key",
        default_value = "loadtest"
    )]
    pub platform_kid: String,

    /// The JWTs' `iss` (serve --idp-issuer); with --platform-key.
    #[arg(
        long,
        env = "FLASHSALE_LOADTEST_PLATFORM_ISSUER",
        requires = "platform_key",
        default_value = "https://id.platform.invalid"
    )]
    pub platform_issuer: String,

    /// The JWTs' `aud` (serve --idp-audience); with --platform-key.
    #[arg(
        long,
        env = "FLASHSALE_LOADTEST_PLATFORM_AUDIENCE",
        requires = "platform_key",
        default_value = "flashsale"
    )]
    pub platform_audience: String,

    /// What each tap carries: the exchanged engine token, or the JWT; with
    /// --platform-key.
    #[arg(
        long,
        env = "FLASHSALE_LOADTEST_PLATFORM_AUTH",
        requires = "platform_key",
        value_enum,
        default_value_t = PlatformAuth::Exchange
    )]
    pub platform_auth: PlatformAuth,
}

impl PlatformArgs {
    /// No platform: the admin's bulk shoppers (`flashsale demo`, tests).
    pub fn none() -> PlatformArgs {
        PlatformArgs {
            platform_key: None,
            platform_kid: "loadtest".to_owned(),
            platform_issuer: "https://id.platform.invalid".to_owned(),
            platform_audience: "flashsale".to_owned(),
            platform_auth: PlatformAuth::Exchange,
        }
    }
}

/// The platform's signing key and claims.
#[derive(Clone)]
pub struct Platform {
    key: EncodingKey,
    header: Header,
    jwk: Jwk,
    pub issuer: String,
    pub audience: String,
    pub auth: PlatformAuth,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("issuer", &self.issuer)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// The platform of `args`, `None` without `--platform-key`. Errors:
    /// [`LoadtestError::Config`] for a key that is unreadable or neither
    /// an EC P-256 nor an RSA private key.
    pub fn load(args: &PlatformArgs) -> Result<Option<Platform>, LoadtestError> {
        let Some(path) = &args.platform_key else {
            return Ok(None);
        };
        let refuse = |why: String| {
            LoadtestError::Config(format!("--platform-key {}: {why}", path.display()))
        };
        let pem = std::fs::read(path).map_err(|error| refuse(error.to_string()))?;
        let (key, algorithm) = match EncodingKey::from_ec_pem(&pem) {
            Ok(key) => (key, Algorithm::ES256),
            Err(_) => (
                EncodingKey::from_rsa_pem(&pem).map_err(|_| {
                    refuse("not a PKCS#8 PEM EC P-256 or RSA private key".to_owned())
                })?,
                Algorithm::RS256,
            ),
        };
        let mut jwk = Jwk::from_encoding_key(&key, algorithm)
            .map_err(|error| refuse(format!("no public key: {error}")))?;
        jwk.common.key_id = Some(args.platform_kid.clone());
        let mut header = Header::new(algorithm);
        header.kid = Some(args.platform_kid.clone());
        Ok(Some(Platform {
            key,
            header,
            jwk,
            issuer: args.platform_issuer.clone(),
            audience: args.platform_audience.clone(),
            auth: args.platform_auth,
        }))
    }

    /// The JWKS publishing the key's public half, as JSON text.
    pub fn jwks(&self) -> String {
        let set = JwkSet {
            keys: vec![self.jwk.clone()],
        };
        serde_json::to_string(&set).unwrap_or_default()
    }

    /// A JWT for the platform user `sub`, valid [`JWT_LIFETIME`].
    pub fn token(&self, sub: &str) -> Result<String, LoadtestError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or(0);
        let claims = serde_json::json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "exp": now + JWT_LIFETIME.as_secs(),
        });
        jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|error| LoadtestError::Config(format!("signing a JWT: {error}")))
    }
}

/// The answer of `POST /v1/tokens/exchange`.
#[derive(Debug, Deserialize)]
struct Exchanged {
    id: String,
    token: String,
}

/// `count` platform users `loadtest-<run_id>-<n>`: each JWT exchanged once
/// (making the shopper) and the wallet credited `credit` by the admin, at
/// most [`PLATFORM_SETUP_IN_FLIGHT_MAX`] at once.
pub async fn create_shoppers(
    target: &Arc<Target>,
    timeout: Duration,
    admin: &HeaderValue,
    platform: &Platform,
    run_id: &str,
    count: usize,
    credit: Decimal,
) -> Result<Vec<Shopper>, LoadtestError> {
    let admin = admin.clone();
    let platform = Arc::new(platform.clone());
    let run_id = Arc::<str>::from(run_id);
    let credit = api::money_text(credit);
    api::fan_out(
        target,
        timeout,
        PLATFORM_SETUP_IN_FLIGHT_MAX,
        count,
        move |mut connection, index| {
            let (admin, platform, run_id, credit) = (
                admin.clone(),
                platform.clone(),
                run_id.clone(),
                credit.clone(),
            );
            async move {
                let result = async {
                    let jwt = platform.token(&format!("loadtest-{run_id}-{index}"))?;
                    let jwt = api::bearer(&jwt)?;
                    let exchanged: Exchanged = api::call(
                        &mut connection,
                        "exchanging a platform token",
                        Method::POST,
                        "/v1/tokens/exchange",
                        Some(&jwt),
                        None,
                        &[StatusCode::CREATED],
                    )
                    .await?;
                    let _: serde_json::Value = api::call(
                        &mut connection,
                        "crediting a platform shopper",
                        Method::POST,
                        &format!("/v1/wallets/{}/credits", exchanged.id),
                        Some(&admin),
                        Some(serde_json::json!({ "amount": credit, "reference": "loadtest" })),
                        &[StatusCode::CREATED],
                    )
                    .await?;
                    let auth = match platform.auth {
                        PlatformAuth::Exchange => api::bearer(&exchanged.token)?,
                        PlatformAuth::Jwt => jwt,
                    };
                    Ok(Shopper {
                        id: exchanged.id,
                        auth,
                    })
                }
                .await;
                (connection, result)
            }
        },
    )
    .await
}
