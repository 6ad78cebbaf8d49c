//! `flashsale`: the one binary users run.
//!
//! - `flashsale serve`: the HTTP gateway on the embedded engine and journal
//!   (`flashsale-gateway`). Prints one stdout line, `flashsale listening on
//!   http://IP:PORT`, once bound (and the admin token, if it generated one);
//!   logs go to stderr (`RUST_LOG`, default `info`).
//! - `flashsale loadtest …`: the SREs' load generator (`flashsale-loadtest`).
//! - `flashsale demo`: an embedded server on a free port with a temporary
//!   data directory and rate limits off, and a small burst against it.
//!
//! Errors are printed once, here, with their whole chain.

use std::error::Error as StdError;
use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flashsale_gateway::config::AdminTokenSource;
use flashsale_gateway::{Config, Gateway, ServeArgs};
use flashsale_loadtest::LoadtestArgs;
use tokio::net::TcpListener;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Flash-sale checkout engine.
#[derive(Parser)]
#[command(name = "flashsale", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP API v1 (single node: engine in memory, journal on disk).
    Serve(ServeArgs),
    /// Drive load against a gateway and check the invariants afterwards.
    Loadtest(LoadtestArgs),
    /// Start an embedded server with a temporary data directory and run a
    /// small burst against it.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return report(&error),
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Loadtest(args) => flashsale_loadtest::run(args).await.map_err(BoxError::from),
            Command::Demo => demo().await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => report(&*error),
    }
}

/// Prints an error and every cause under it, once.
fn report(error: &(dyn StdError + 'static)) -> ExitCode {
    let mut text = format!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    eprintln!("{text}");
    ExitCode::FAILURE
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn serve(args: ServeArgs) -> Result<ExitCode, BoxError> {
    let config = Config::from_args(args)?;
    let addr = config.addr;
    let generated_admin_token = (config.admin_token_source == AdminTokenSource::Generated)
        .then(|| config.admin_token.clone());
    let gateway = Gateway::open(config).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| flashsale_gateway::Error::Bind { addr, source })?;
    let bound = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "flashsale listening on http://{bound}")?;
        if let Some(token) = generated_admin_token {
            writeln!(
                stdout,
                "flashsale admin token (generated, shown once): {token}"
            )?;
        }
        stdout.flush()?;
    }
    tracing::info!(
        %bound,
        storefront = %format_args!("http://{bound}/"),
        dashboard = %format_args!("http://{bound}/merchant"),
        "serving"
    );
    gateway.serve(listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}

async fn demo() -> Result<ExitCode, BoxError> {
    let data_dir = tempfile::Builder::new()
        .prefix("flashsale-demo-")
        .tempdir()?;
    let mut config = Config::new(data_dir.path().to_path_buf())?;
    config.rate_limit_shopper = 0;
    config.rate_limit_address = 0;
    let server = flashsale_gateway::spawn(config).await?;
    let target = server.url();
    let admin_token = server.admin_token.clone();
    println!("flashsale listening on {target}");
    let outcome = flashsale_loadtest::demo(target, admin_token).await;
    server.shutdown().await?;
    let report = outcome?;
    print!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
