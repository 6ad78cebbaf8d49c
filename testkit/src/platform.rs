//! A platform's identity provider, made up for the tests: signing keys
//! (`testkit/keys/`, public in this repository and trusted by nothing but
//! the tests), the JWKS that publishes them, and the JWTs they sign.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The `iss` of [`claims`].
pub const ISSUER: &str = "https://id.platform.test";
/// The `aud` of [`claims`].
pub const AUDIENCE: &str = "flashsale";

/// One of the test keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKey {
    /// RSA 2048, RS256, `kid` "rsa-1".
    Rsa1,
    /// Another RSA 2048 key, for rotation, `kid` "rsa-2".
    Rsa2,
    /// EC P-256, ES256, `kid` "es-1".
    Es256,
}

impl TestKey {
    pub fn kid(self) -> &'static str {
        match self {
            TestKey::Rsa1 => "rsa-1",
            TestKey::Rsa2 => "rsa-2",
            TestKey::Es256 => "es-1",
        }
    }

    pub fn algorithm(self) -> Algorithm {
        match self {
            TestKey::Rsa1 | TestKey::Rsa2 => Algorithm::RS256,
            TestKey::Es256 => Algorithm::ES256,
        }
    }

    /// The private key, PKCS#8 PEM.
    pub fn private_pem(self) -> &'static [u8] {
        match self {
            TestKey::Rsa1 => include_bytes!("../keys/rsa-1.pem"),
            TestKey::Rsa2 => include_bytes!("../keys/rsa-2.pem"),
            TestKey::Es256 => include_bytes!("../keys/es256-1.pem"),
        }
    }

    fn encoding(self) -> EncodingKey {
        let pem = self.private_pem();
        let key = match self.algorithm() {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            _ => EncodingKey::from_rsa_pem(pem),
        };
        key.expect("the test keys parse")
    }

    /// The public key as a JWK with its `kid` and `alg`.
    pub fn jwk(self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding(), self.algorithm())
            .expect("a JWK of a test key");
        jwk.common.key_id = Some(self.kid().to_owned());
        jwk
    }

    /// A JWT of `claims` signed by this key, naming it in `kid`.
    pub fn sign(self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.algorithm());
        header.kid = Some(self.kid().to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding()).expect("signing with a test key")
    }
}

/// `rsa-1`'s public key, PEM: what an attacker has, and signs an HS256
/// token with in the key-confusion attack.
pub const RSA_1_PUBLIC_PEM: &[u8] = include_bytes!("../keys/rsa-1.pub.pem");

/// The JWKS publishing `keys`, as JSON text.
pub fn jwks(keys: &[TestKey]) -> String {
    let set = JwkSet {
        keys: keys.iter().map(|key| key.jwk()).collect(),
    };
    serde_json::to_string(&set).expect("a JWKS serializes")
}

/// Makes a server's `config` trust `keys`: their JWKS in a file of its
/// data directory, with [`ISSUER`] and [`AUDIENCE`].
pub fn trust(config: &mut flashsale_gateway::Config, keys: &[TestKey]) {
    let path = config.data_dir.join("jwks.json");
    std::fs::write(&path, jwks(keys)).expect("the JWKS is written");
    config.idp = Some(flashsale_gateway::config::IdpSettings {
        jwks: flashsale_gateway::config::JwksSource::File(path),
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        role_claim: "flashsale_role".to_owned(),
        leeway_seconds: 5,
    });
}

/// Now, Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or(0)
}

/// Claims of a platform user `sub` valid for an hour from now, with
/// [`ISSUER`] and [`AUDIENCE`]; `role` goes into `flashsale_role` when
/// given.
pub fn claims(sub: &str, role: Option<&str>) -> serde_json::Value {
    let now = unix_now();
    let mut claims = serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "iat": now,
        "exp": now + 3600,
    });
    if let Some(role) = role {
        claims["flashsale_role"] = serde_json::Value::String(role.to_owned());
    }
    claims
}

/// A token forged without a signature: `alg: none` (RFC 7519 §6).
pub fn unsigned(claims: &serde_json::Value, kid: &str) -> String {
    use base64::Engine as _;
    let encode = |value: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    let header = serde_json::json!({ "alg": "none", "typ": "JWT", "kid": kid });
    format!("{}.{}.", encode(&header), encode(claims))
}

/// The key-confusion forgery: an HS256 token whose HMAC key is the RSA
/// key's public PEM, naming the RSA key's `kid`.
pub fn hs256_with_public_key(claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(TestKey::Rsa1.kid().to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(RSA_1_PUBLIC_PEM))
        .expect("HS256 signing")
}
