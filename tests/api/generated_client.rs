//! A client that a generator nobody here wrote makes from the served
//! OpenAPI document drives the README's sale end to end: openapi-python-client
//! (PyPI) generates a Python package from `GET /v1/openapi.json`, and
//! `generated_client/sale.py` runs the sale through it (a merchant, a
//! signup, a credit, a deal posted with Python's microsecond datetimes, a
//! buy and its retry, the wallet and the deal read back, and a platform
//! user's token exchange). Without `openapi-python-client` on `$PATH` (or
//! at `$OPENAPI_PYTHON_CLIENT`) the test is skipped, or fails under CI.

use std::process::Command;
use std::time::Duration;

use flashsale_testkit::Service;
use flashsale_testkit::platform::{self, TestKey, claims};
use flashsale_testkit::server::start_with;

/// Generation and the sale must each end within this.
const STEP_MAX: Duration = Duration::from_secs(120);

/// Runs `command` to its end within [`STEP_MAX`], asserting success.
fn run(what: &str, command: &mut Command) -> String {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{what} starts: {error}"));
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().expect("the child's status").is_some() {
            break;
        }
        if started.elapsed() > STEP_MAX {
            let _ = child.kill();
            panic!("{what} took longer than {STEP_MAX:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("the child's output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(
        output.status.success(),
        "{what} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_drives_the_readme_sale() {
    let Some(generator) =
        flashsale_testkit::program("OPENAPI_PYTHON_CLIENT", &["openapi-python-client"])
    else {
        flashsale_testkit::missing(
            Service::GeneratedClient,
            "openapi-python-client is not installed (not at $OPENAPI_PYTHON_CLIENT, not on $PATH)",
        );
        return;
    };
    let server = start_with(|config| platform::trust(config, &[TestKey::Es256])).await;
    let api = server.api();
    let document = api.get("/v1/openapi.json", None).await.ok(200);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let document_path = dir.path().join("openapi.json");
    std::fs::write(&document_path, document.to_string()).expect("write the document");
    let package = dir.path().join("flashsale_client");
    let generated = tokio::task::spawn_blocking({
        let (document_path, package) = (document_path.clone(), package.clone());
        move || {
            run(
                "openapi-python-client generate",
                Command::new(generator)
                    .arg("generate")
                    .arg("--path")
                    .arg(&document_path)
                    .arg("--meta")
                    .arg("none")
                    .arg("--output-path")
                    .arg(&package),
            )
        }
    })
    .await
    .expect("the generator ran");
    assert!(package.join("client.py").is_file(), "{generated}");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/api/generated_client/sale.py"
    );
    let jwt = TestKey::Es256.sign(&claims("platform|alice", None));
    let (url, admin) = (api.url.clone(), api.admin.clone());
    let printed = tokio::task::spawn_blocking(move || {
        run(
            "the sale through the generated client",
            Command::new("python3")
                .arg(script)
                .env("PYTHONPATH", dir.path())
                .env("FLASHSALE_URL", url)
                .env("FLASHSALE_ADMIN_TOKEN", admin)
                .env("PLATFORM_JWT", jwt),
        )
    })
    .await
    .expect("the sale ran");
    assert!(printed.contains("sale ok"), "{printed}");
    server.check_invariants();
}
