//! The contract, fuzzed: schemathesis (PyPI) reads the document a real
//! `flashsale serve` serves at `/v1/openapi.json` and sends it requests
//! generated from every operation's schema, valid and invalid, checking
//! that
//! - no answer is a `5xx` (`not_a_server_error`);
//! - every answer matches the document: a status the operation lists
//!   (`status_code_conformance`), a body of that status's schema
//!   (`response_schema_conformance`), the declared `Content-Type`
//!   (`content_type_conformance`) and headers (`Retry-After` on `429` and
//!   `503`: `response_headers_conformance`);
//! - a missing `Idempotency-Key` is refused (`missing_required_header`), a
//!   method the path does not take is `405` with `Allow`
//!   (`unsupported_method`, `allow_header_conformance`), and an operation
//!   that needs a token refuses a request without one (`ignored_auth`);
//! - a request the document says is invalid (an unknown field, a wrong
//!   type, money as `"1e2"`, a body on an endpoint that takes none) is
//!   refused with a `4xx` (`negative_data_rejection`).
//!
//! Each operation is called with the token of the role that may call it
//! and with ids that exist (a live deal, a hold, an order, a shopper), so
//! success paths are fuzzed too, not only `401`/`404`.
//!
//! Not checked here, because it cannot hold:
//! - `positive_data_acceptance`: a body can match the schema and still be
//!   refused for what no schema can say (an `ends_at` in the past, a
//!   quantity over the deal's limit, a hold already paid).
//!
//! Bounded: a few examples per operation, deterministic, one worker, and a
//! deadline on the whole run. Without `schemathesis` on `$PATH` (or
//! `$SCHEMATHESIS`) the test is skipped, and fails under CI
//! (`flashsale-testkit`); `.ci/run` installs the pinned version.

use std::path::Path;
use std::time::Duration;

use flashsale_loadtest::{Durability, SpawnedServer};
use flashsale_testkit::Service;
use serde_json::{Value, json};

use crate::helpers::{client, output_within};

/// Test cases per operation and phase.
const EXAMPLES_PER_OPERATION: u32 = 12;
/// The whole schemathesis run, setup included, must end within this.
const FUZZ_TIMEOUT: Duration = Duration::from_secs(150);
/// One request of schemathesis' may take this long, in seconds.
const REQUEST_TIMEOUT_SECONDS: u32 = 10;

/// Operation ids of `gateway/openapi.yaml` by the role that may call them.
const ADMIN_OPERATIONS: [&str; 3] = ["createMerchant", "createShoppersBulk", "creditWallet"];
const MERCHANT_OPERATIONS: [&str; 3] = ["getMerchantMe", "createDeal", "patchDeal"];
const SHOPPER_OPERATIONS: [&str; 10] = [
    "getWallet",
    "register",
    "buy",
    "createHold",
    "payHold",
    "releaseHold",
    "listOrders",
    "getOrder",
    "review",
    "share",
];

/// `POST url` with a JSON body, the bearer `token` and an optional
/// idempotency key; the answer's JSON after checking its status.
async fn post(url: &str, token: Option<&str>, key: Option<&str>, body: &Value) -> Value {
    let mut request = client().post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON answer");
    assert!(status.is_success(), "POST {url}: {status} {body}");
    body
}

/// The schemathesis configuration: each role's token on its operations,
/// and ids that exist for the path parameters.
fn config(admin: &str, merchant: &str, shopper: &str, ids: &[(&str, &str)]) -> String {
    let list = |operations: &[&str]| {
        operations
            .iter()
            .map(|id| format!("{id:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut config = String::new();
    for (operations, token) in [
        (&ADMIN_OPERATIONS[..], admin),
        (&MERCHANT_OPERATIONS[..], merchant),
        (&SHOPPER_OPERATIONS[..], shopper),
    ] {
        config.push_str(&format!(
            "[[operations]]\ninclude-operation-id = [{}]\nheaders = {{ Authorization = \"Bearer {token}\" }}\n\n",
            list(operations)
        ));
    }
    config.push_str("[parameters]\n");
    for (name, value) in ids {
        config.push_str(&format!("\"path.{name}\" = {value:?}\n"));
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_contract() {
    let Some(schemathesis) = flashsale_testkit::program("SCHEMATHESIS", &["schemathesis", "st"])
    else {
        flashsale_testkit::missing(
            Service::Schemathesis,
            "schemathesis is not installed (not at $SCHEMATHESIS, not on $PATH)",
        );
        return;
    };
    let server = SpawnedServer::start(
        Path::new(env!("CARGO_BIN_EXE_flashsale")),
        Durability::Sync,
        None,
        None,
    )
    .await
    .expect("flashsale serve starts");
    let url = server.url.clone();
    let admin = server.admin_token.clone();

    // One of everything, so that path ids name something.
    let merchant = post(
        &format!("{url}/v1/merchants"),
        Some(&admin),
        None,
        &json!({ "name": "Fuzz" }),
    )
    .await;
    let merchant_token = merchant["token"].as_str().expect("a token").to_owned();
    let deal = post(
        &format!("{url}/v1/deals"),
        Some(&merchant_token),
        None,
        &json!({
            "title": "Fuzzed phone", "price": "1.00", "stock": 1_000_000,
            "per_user_limit": 1000,
            // Live now and for as long as any run of this test.
            "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2999-01-01T00:00:00Z",
        }),
    )
    .await;
    let deal_id = deal["id"].as_str().expect("a deal id").to_owned();
    let shopper = post(
        &format!("{url}/v1/shoppers"),
        None,
        None,
        &json!({ "name": "Fuzzer" }),
    )
    .await;
    let shopper_id = shopper["id"].as_str().expect("a shopper id").to_owned();
    let shopper_token = shopper["token"].as_str().expect("a token").to_owned();
    post(
        &format!("{url}/v1/wallets/{shopper_id}/credits"),
        Some(&admin),
        None,
        &json!({ "amount": "1000000.00", "reference": "fuzz" }),
    )
    .await;
    let order = post(
        &format!("{url}/v1/deals/{deal_id}/orders"),
        Some(&shopper_token),
        Some("fuzz-order"),
        &json!({ "quantity": 1 }),
    )
    .await;
    let hold = post(
        &format!("{url}/v1/deals/{deal_id}/holds"),
        Some(&shopper_token),
        Some("fuzz-hold"),
        &json!({ "quantity": 1 }),
    )
    .await;
    let ids = [
        ("deal_id", deal_id.as_str()),
        ("shopper_id", shopper_id.as_str()),
        ("order_id", order["id"].as_str().expect("an order id")),
        ("hold_id", hold["id"].as_str().expect("a hold id")),
    ];

    let dir = tempfile::tempdir().expect("a temporary directory");
    let config_path = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config_path,
        config(&admin, &merchant_token, &shopper_token, &ids),
    )
    .expect("write the schemathesis config");

    let mut fuzz = tokio::process::Command::new(&schemathesis);
    fuzz.arg("--no-color")
        .arg("--config-file")
        .arg(&config_path)
        .arg("run")
        .arg(format!("{url}/v1/openapi.json"))
        .args(["--url", &url])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance,\
             content_type_conformance,response_headers_conformance,missing_required_header,\
             unsupported_method,allow_header_conformance,ignored_auth,negative_data_rejection",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &EXAMPLES_PER_OPERATION.to_string()])
        // Deterministic: the same cases every run, and no example database.
        .arg("--generation-deterministic")
        .args(["--workers", "1"])
        .args(["--request-timeout", &REQUEST_TIMEOUT_SECONDS.to_string()])
        // An endless event stream has no answer to check.
        .args(["--exclude-operation-id", "feedStream"])
        // Nothing of schemathesis' (reports, caches) lands in the repository.
        .current_dir(dir.path());
    let output = output_within(fuzz, FUZZ_TIMEOUT, "schemathesis").await;
    server.stop().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found answers off the contract ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // What was run, for `--nocapture`.
    eprintln!("{stdout}");
}
