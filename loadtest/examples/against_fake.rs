//! Runs a load scenario against the tests' fake gateway, in this process,
//! to measure the load generator itself (its CPU per request) without a
//! real server:
//!
//! ```text
//! cargo run --release -p flashsale-loadtest --example against_fake -- \
//!     burst --shoppers 20000 --stock 2000
//! ```
//!
//! The fake serves on its own runtime; the scenario runs on the load
//! generator's dedicated runtime, whose threads alone are measured.
//!
//! `against_fake serve --admin-token T` only serves the fake, printing
//! `fake listening on http://IP:PORT` like `flashsale serve` does, so that
//! scripts written against the real server can be tried on it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::ExitCode;

use clap::Parser;
use flashsale_loadtest::LoadtestArgs;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadtestArgs,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("serve") {
        let admin_token = argv
            .iter()
            .position(|arg| arg == "--admin-token")
            .and_then(|at| argv.get(at + 1))
            .cloned()
            .unwrap_or_else(|| "fake-admin".to_owned());
        let server = support::start_with_admin(support::Flaw::None, admin_token).await;
        println!("fake listening on {}", server.url);
        let _ = tokio::signal::ctrl_c().await;
        return ExitCode::SUCCESS;
    }
    let server = support::start(support::Flaw::None).await;
    let argv = std::env::args()
        .chain(["--target".to_owned(), server.url.clone()])
        .chain(["--admin-token".to_owned(), server.admin_token.clone()]);
    let cli = Cli::parse_from(argv);
    match flashsale_loadtest::run(cli.args).await {
        Ok(code) => code,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
