//! What checking a bearer token costs, side by side in one run. Run with
//! `cargo bench --bench tokens`.
//!
//! - `tokens/engine_hmac`: the engine's own token (`v1.<id>.<expiry>.<mac>`,
//!   one HMAC-SHA256);
//! - `tokens/jwt_rs256` and `tokens/jwt_es256`: a platform JWT verified
//!   against its JWKS key (RSA 2048 and EC P-256 signatures, claims
//!   checked), what the first request of every new JWT pays;
//! - `tokens/jwt_remembered`: the same JWT found in the verified-token
//!   cache (a SHA-256 of the token and a map lookup), what its later
//!   requests pay.
//!
//! The summary after criterion prints each as a ratio to the engine's
//! token; docs/platform-identity.md keeps a dated run.

use std::time::Duration;

use criterion::Criterion;
use flashsale_engine::ShopperId;
use flashsale_gateway::idp::{Idp, IdpSettings, JwksSource};
use flashsale_gateway::{Caller, NO_EPOCH, Signer};
use flashsale_testkit::platform::{self, AUDIENCE, ISSUER, TestKey, claims};

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, platform::jwks(&[TestKey::Rsa1, TestKey::Es256])).expect("the JWKS");
    let now = platform::unix_now();
    let idp = runtime
        .block_on(Idp::start(
            IdpSettings {
                jwks: JwksSource::File(path),
                issuer: ISSUER.to_owned(),
                audience: AUDIENCE.to_owned(),
                role_claim: "flashsale_role".to_owned(),
                leeway_seconds: 30,
            },
            now,
        ))
        .expect("the identity provider");
    let signer = Signer::new(b"0123456789abcdef0123456789abcdef", "an-admin-token-of-16");
    let shopper = Caller::Shopper(ShopperId(123_456));
    let own = signer.issue(
        shopper,
        flashsale_engine::Timestamp(now * 1000),
        now + 3600,
        NO_EPOCH,
    );
    let rs256 = TestKey::Rsa1.sign(&claims("auth0|4711", None));
    let es256 = TestKey::Es256.sign(&claims("auth0|4711", None));
    let identity = runtime.block_on(idp.verify(&es256, now)).expect("verifies");
    idp.remember(&es256, &identity, shopper, NO_EPOCH);

    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = criterion.benchmark_group("tokens");
    group.bench_function("engine_hmac", |b| {
        b.iter(|| signer.verify(&own, now, NO_EPOCH).expect("verifies"))
    });
    group.bench_function("jwt_rs256", |b| {
        b.iter(|| runtime.block_on(idp.verify(&rs256, now)).expect("verifies"))
    });
    group.bench_function("jwt_es256", |b| {
        b.iter(|| runtime.block_on(idp.verify(&es256, now)).expect("verifies"))
    });
    group.bench_function("jwt_remembered", |b| {
        b.iter(|| idp.remembered(&es256, now, NO_EPOCH).expect("remembered"))
    });
    group.finish();

    let mean = |name: &str| {
        let started = std::time::Instant::now();
        let mut runs = 0u32;
        while started.elapsed() < Duration::from_millis(500) {
            match name {
                "engine_hmac" => drop(signer.verify(&own, now, NO_EPOCH)),
                "jwt_rs256" => drop(runtime.block_on(idp.verify(&rs256, now))),
                "jwt_es256" => drop(runtime.block_on(idp.verify(&es256, now))),
                _ => drop(idp.remembered(&es256, now, NO_EPOCH)),
            }
            runs += 1;
        }
        started.elapsed().as_secs_f64() / f64::from(runs)
    };
    let base = mean("engine_hmac");
    println!("\nsummary (mean per check, ratio to the engine's own token):");
    for name in ["engine_hmac", "jwt_rs256", "jwt_es256", "jwt_remembered"] {
        let seconds = if name == "engine_hmac" {
            base
        } else {
            mean(name)
        };
        println!(
            "  {name:<16} {:>9.2} µs  {:>7.1}×",
            seconds * 1e6,
            seconds / base
        );
    }
}
