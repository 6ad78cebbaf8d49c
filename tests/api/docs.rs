//! What a newcomer reads holds: the curl sales of the README and of
//! `docs/walkthrough.md` run as written against a real server, and the
//! server serves the contract (`gateway/openapi.yaml`) at
//! `GET /v1/openapi.json`.

use std::time::Duration;

use flashsale_testkit::Service;

use crate::helpers::{output_within, start_with};

/// The README section whose `sh` blocks run: the short sale.
const README_HEADING: &str = "## A whole sale with curl";
/// The `docs/walkthrough.md` section whose `sh` blocks run: every call.
const WALKTHROUGH_HEADING: &str = "## The sale, call by call";
/// The address the documents' blocks talk to; the test swaps in its server's.
const DOC_URL: &str = "http://127.0.0.1:8080";
/// How long one document's sale may take (a dozen curl calls).
const SALE_TIMEOUT: Duration = Duration::from_secs(60);

/// The ```sh blocks of the section of `doc` under `heading`, in order.
fn sh_blocks(doc: &str, heading: &str) -> Vec<String> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("the document has no {heading:?} section"));
    let section = &doc[start + heading.len()..];
    let section = section.find("\n## ").map_or(section, |end| &section[..end]);
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + "```sh\n".len()..];
        let close = body.find("```").expect("every ```sh block is closed");
        blocks.push(body[..close].to_owned());
        rest = &body[close..][3..];
    }
    blocks
}

/// The section's blocks as one script for `url`, and the admin token its
/// `flashsale serve` line starts the server with. The lines that build and
/// start the server are left out: the test has already started it.
fn sale_script(doc: &str, heading: &str, url: &str) -> (String, String) {
    let blocks = sh_blocks(doc, heading);
    assert!(blocks.len() >= 6, "{heading:?} has its blocks: {blocks:?}");
    let mut admin_token = None;
    let mut script = String::from("set -euo pipefail\n");
    for line in blocks.iter().flat_map(|block| block.lines()) {
        if line.starts_with("cargo build") {
            continue;
        }
        if line.contains("flashsale serve") {
            let (_, after) = line
                .split_once("--admin-token ")
                .expect("the sale's server has a known admin token");
            let token = after.split_whitespace().next().expect("a token");
            assert!(admin_token.replace(token.to_owned()).is_none());
            continue;
        }
        script.push_str(&line.replace(DOC_URL, url));
        script.push('\n');
    }
    let admin_token = admin_token.expect("the sale starts a server");
    (script, admin_token)
}

/// Runs the sale of `doc` under `heading` against a fresh server and checks
/// that its output shows `expected`, in that order.
async fn runs_as_written(name: &str, doc: &str, heading: &str, expected: &[&str]) {
    if flashsale_testkit::program("CURL", &["curl"]).is_none() {
        flashsale_testkit::missing(Service::Curl, "curl is not on $PATH");
        return;
    }
    let (_, admin_token) = sale_script(doc, heading, DOC_URL);
    // The document's server: its admin token, everything else as a newcomer
    // gets it (fresh data directory; rate limits off as in every API test).
    let t = start_with(|config| config.admin_token = Some(admin_token)).await;
    let (script, _) = sale_script(doc, heading, &t.url);
    let mut bash = tokio::process::Command::new("bash");
    bash.arg("-c").arg(&script);
    let output = output_within(bash, SALE_TIMEOUT, name).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} failed ({}):\n{stdout}\n{stderr}\nscript:\n{script}",
        output.status
    );
    let mut rest = &stdout[..];
    for answer in expected {
        let at = rest.find(answer).unwrap_or_else(|| {
            panic!("{name}: {answer} is not in the rest of the output:\n{stdout}")
        });
        rest = &rest[at + answer.len()..];
    }
    t.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_curl_sale_runs_as_written() {
    // The key answers, in the order the README shows them.
    let expected = [
        r#""name":"Xiaomi","token":"v2."#,
        r#""title":"Mi 15, 12 GB","price":"999.00","stock":500,"remaining":500"#,
        r#""status":"live""#,
        r#""name":"Li Lei","token":"v2."#,
        r#""available":"1500.00","held":"0.00","spent":"0.00","credited":"1500.00""#,
        r#""quantity":1,"unit_price":"999.00","amount":"999.00","status":"paid","late":false"#,
        r#""available":"501.00","held":"0.00","spent":"999.00","credited":"1500.00""#,
        r#""remaining":499,"held":0,"sold":1"#,
    ];
    let readme = include_str!("../../README.md");
    runs_as_written("the README's sale", readme, README_HEADING, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_walkthrough_runs_as_written() {
    // The key answers, in the order docs/walkthrough.md shows them.
    let expected = [
        r#""name":"Xiaomi","token":"v2."#,
        r#""title":"Mi 15, 12 GB","price":"999.00","stock":500,"remaining":500"#,
        r#""status":"live""#,
        r#""name":"Li Lei","token":"v2."#,
        r#""available":"1500.00","held":"0.00","spent":"0.00","credited":"1500.00""#,
        r#""quantity":1,"unit_price":"999.00","amount":"999.00","status":"paid","late":false"#,
        r#"{"error":{"code":"purchase_limit_reached""#,
        r#""status":"paid""#,
        r#""available":"501.00","held":"0.00","spent":"999.00","credited":"1500.00""#,
        r#""remaining":499,"held":0,"sold":1"#,
        r#"{"orders":[{"id":""#,
        r#"{"cards":[{"id":""#,
        r#""text":"Fast delivery""#,
        r#""merchant_rating":{"average":"4.33","reviews":1}"#,
        r#""shared":true"#,
        r#""name":"Xiaomi","rating":{"average":"4.33","reviews":1}"#,
        r#"{"id":"s_1","not_before":""#,
        r#"{"error":{"code":"unauthorized","message":"the token was revoked"#,
        r#"{"id":"s_1","token":"v2.s_1."#,
        r#""available":"501.00","held":"0.00","spent":"999.00""#,
    ];
    let walkthrough = include_str!("../../docs/walkthrough.md");
    runs_as_written(
        "docs/walkthrough.md",
        walkthrough,
        WALKTHROUGH_HEADING,
        &expected,
    )
    .await;
}

#[test]
fn the_sale_is_found_and_its_server_line_left_out() {
    let doc = "# x\n## A whole sale with curl\n\n```sh\ncargo build --release\n\
               target/release/flashsale serve --admin-token tok-1 &\n\
               B=http://127.0.0.1:8080\n```\ntext\n```sh\ncurl -s $B/a\n```\n\
               ```sh\n\n```\n```sh\n\n```\n```sh\n\n```\n```sh\necho last\n```\n\
               ## Next\n```sh\nnot this\n```\n";
    let (script, token) = sale_script(doc, README_HEADING, "http://127.0.0.1:9");
    assert_eq!(token, "tok-1");
    assert_eq!(
        script,
        "set -euo pipefail\nB=http://127.0.0.1:9\ncurl -s $B/a\n\n\n\necho last\n"
    );
    let doc = doc.replace(README_HEADING, WALKTHROUGH_HEADING);
    let (other, _) = sale_script(&doc, WALKTHROUGH_HEADING, "http://127.0.0.1:9");
    assert_eq!(other, script);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_is_served_as_openapi_json() {
    let t = start_with(|_| {}).await;
    let reply = t.get("/v1/openapi.json", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.headers["content-type"], "application/json");
    let document = reply.body;
    assert_eq!(document["openapi"], "3.1.0");
    for (path, method) in [
        ("/v1/deals/{deal_id}/orders", "post"),
        ("/v1/admin/shoppers", "post"),
        ("/v1/deals/{deal_id}", "patch"),
        ("/v1/deals/{deal_id}/registrations", "post"),
        ("/v1/openapi.json", "get"),
    ] {
        assert!(
            document["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    let codes = &document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
        ["enum"];
    assert!(
        codes
            .as_array()
            .is_some_and(|codes| codes.iter().any(|code| code == "not_started")),
        "{codes}"
    );
}

/// The `docs/multi-node.md` section whose block starts the nodes.
const MULTI_NODE_HEADING: &str = "## Running it";
/// The file that block keeps the deployment's secret and admin token in.
const MULTI_NODE_SECRETS: &str = "multi-node.secrets";

/// The multi-node block pasted twice keeps one secret and one admin token:
/// its lines before the nodes start (less the Redis script, which the test
/// does not run: the shared services stay as they are) make
/// `multi-node.secrets` (mode 0600) once and read it at every paste, and
/// the nodes are started with what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multi_node_block_keeps_its_secrets_across_pastes() {
    use std::os::unix::fs::PermissionsExt as _;
    let doc = include_str!("../../docs/multi-node.md");
    let blocks = sh_blocks(doc, MULTI_NODE_HEADING);
    let block = blocks.first().expect("the section has its block");
    let (before, nodes) = block
        .split_once("for port in")
        .expect("the block starts nodes in a loop");
    assert!(
        nodes.contains(r#"--secret "$S" --admin-token "$T""#),
        "the nodes take what the file holds: {nodes}"
    );
    let mut script = String::from("set -euo pipefail\n");
    for line in before
        .lines()
        .filter(|line| !line.starts_with("bash scripts/"))
    {
        script.push_str(line);
        script.push('\n');
    }
    script.push_str("printf '%s\\n%s\\n' \"$S\" \"$T\"\n");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut pastes = Vec::new();
    for paste in ["first paste", "second paste"] {
        let mut bash = tokio::process::Command::new("bash");
        bash.arg("-c").arg(&script).current_dir(dir.path());
        let output = output_within(bash, Duration::from_secs(10), paste).await;
        assert!(
            output.status.success(),
            "{paste}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        pastes.push(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    assert_eq!(pastes[0], pastes[1], "a second paste made new secrets");
    let lines: Vec<&str> = pastes[0].lines().collect();
    let [secret, admin_token] = lines[..] else {
        panic!("the secret and the admin token: {lines:?}");
    };
    assert!(secret.len() >= 16, "{secret:?}");
    assert!(admin_token.len() >= 16, "{admin_token:?}");
    let mode = std::fs::metadata(dir.path().join(MULTI_NODE_SECRETS))
        .expect("the block keeps its file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}
