//! `flashsale`: the one binary users run.
//!
//! - `flashsale serve`: the HTTP gateway on the embedded engine and journal
//!   (`flashsale-gateway`). Binds first (a taken port fails before anything
//!   is written to the data directory), then prints one stdout line,
//!   `flashsale listening on http://IP:PORT` (and, on the first start
//!   without `--admin-token`, the admin token it generated and the file
//!   that keeps it); logs go to stderr (`RUST_LOG`, default `info`).
//! - `flashsale loadtest …`: the SREs' load generator (`flashsale-loadtest`).
//! - `flashsale audit …`: checks a Redis-mode deployment's invariants
//!   (`flashsale_gateway::audit`); exit 0 when they hold, 1 with a report
//!   on a violation, 2 when it cannot check.
//! - `flashsale demo`: an embedded server on a free port with a temporary
//!   data directory and rate limits off, and a small burst against it.
//! - `flashsale verify-draw --deal URL`: recomputes a raffle's published
//!   draw from its public record (docs/fair-draws.md), over http or https;
//!   exit 0 on a match, 1 on a mismatch, 2 when it cannot check.
//!
//! Errors are printed once, here, with their whole chain; a flag's value
//! refused by clap that came from an environment variable is said to come
//! from it. An environment variable set to the empty string counts as
//! unset, for every flag. Every URL a flag takes is checked when the
//! command line is read, before anything connects or is written.
//! `--help` shows which variable each flag reads, never its value.

use std::error::Error as StdError;
use std::io::Write as _;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use flashsale_gateway::{Config, Gateway, ServeArgs};
use flashsale_loadtest::LoadtestArgs;
use tokio::net::TcpListener;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The process' allocator: mimalloc, whose thread-local free lists cost a
/// node's buy path less than glibc's arenas (`scripts/compare.sh`, README
/// "Speed": malloc and free were a fifth of a Redis-mode node's CPU).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Check a Redis-mode deployment's invariants (Redis, and its books in
    /// Postgres): exit 0 when they hold, 1 with a report of each violation
    /// on stdout, 2 with the error on stderr when it cannot audit.
    Audit(flashsale_gateway::audit::AuditArgs),
    /// Start an embedded server with a temporary data directory and run a
    /// small burst against it.
    Demo,
    /// Recompute a raffle's published draw from its public record
    /// (docs/fair-draws.md): exit 0 when it matches, 1 when it does not, 2
    /// when it cannot check (not drawn yet, the deal not found, no answer,
    /// TLS refused, a bad URL).
    VerifyDraw {
        /// The deal's URL, http:// or https://, e.g.
        /// https://127.0.0.1:8443/v1/deals/d_1
        #[arg(long, value_name = "URL", value_parser = flashsale_loadtest::parse_target_url)]
        deal: String,
        /// A PEM file of CA certificates to trust for an https:// URL, on
        /// top of Mozilla's root certificates (a private CA, a self-signed
        /// server).
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<std::path::PathBuf>,
    },
    /// Print this build's Redis Functions library, or a step's call
    /// (scripts/compare.sh loads and calls the `reserve` step this way).
    #[command(hide = true)]
    RedisSteps {
        #[command(subcommand)]
        print: StepsPrint,
    },
}

#[derive(Subcommand)]
enum StepsPrint {
    /// The library, as `FUNCTION LOAD` takes it (its first line names it).
    Library,
    /// The `FCALL` of buys of one unit of deal 1 on shard 0, one word a
    /// line, as a node sends it.
    ReserveCall {
        /// The deployment's `--redis-namespace`.
        #[arg(long)]
        namespace: String,
        /// The buying shopper's id (`__rand_int__`: redis-benchmark gives
        /// each buy an account of its own among `-r` of them, which must
        /// exist as `<namespace>:{s:0}:acct:<12-digit number>`).
        #[arg(long, default_value = "1")]
        shopper: String,
        /// The idempotency key (`__rand_int__`: redis-benchmark makes each
        /// call's key new).
        #[arg(long, default_value = "__rand_int__")]
        key: String,
        /// Buys in the one call, as a node sends a shard's buys that
        /// arrived together (1 to `RESERVE_BATCH_MAX`).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=flashsale_redis::RESERVE_BATCH_MAX as i64))]
        requests: u16,
    },
}

fn main() -> ExitCode {
    let cli = parse_cli();
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
            Command::Audit(args) => audit(args).await.or_else(cannot_check),
            Command::VerifyDraw { deal, ca_cert } => verify_draw(&deal, ca_cert.as_deref())
                .await
                .or_else(cannot_check),
            Command::RedisSteps { print } => {
                match print {
                    StepsPrint::Library => print!("{}", flashsale_redis::steps::library_code()),
                    StepsPrint::ReserveCall {
                        namespace,
                        shopper,
                        key,
                        requests,
                    } => {
                        for word in flashsale_redis::steps::bench_reserve_call(
                            &namespace,
                            &shopper,
                            &key,
                            usize::from(requests),
                        ) {
                            println!("{word}");
                        }
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => report(&*error),
    }
}

/// The command line, parsed; on a refusal clap's message (naming the
/// environment variable when the refused value came from one) and exit.
fn parse_cli() -> Cli {
    let command = check_loadtest_database_url(environment_fallbacks(Cli::command()));
    let matches = command.clone().try_get_matches();
    match matches.and_then(|matches| Cli::from_arg_matches(&matches)) {
        Ok(cli) => cli,
        Err(error) => {
            match refused_environment_variable(&command, &error) {
                // Under clap's first line, which names only the flag.
                Some(variable) => {
                    let mut text = error.render().to_string();
                    let first_line_end = text.find('\n').unwrap_or(text.len());
                    text.insert_str(
                        first_line_end,
                        &format!("\n  (the value came from the environment variable {variable})"),
                    );
                    eprint!("{text}");
                }
                None => {
                    let _ = error.print();
                }
            }
            std::process::exit(error.exit_code());
        }
    }
}

/// `command` and its subcommands at any depth with every argument's help
/// saying `[env: NAME]`, not `[env: NAME=value]` (the value may be a
/// secret), and with every environment variable set to the empty string
/// read as unset (`DATABASE_URL= flashsale audit …` is an audit without
/// Postgres, not a refused URL); such a variable is then not shown in the
/// help either.
fn environment_fallbacks(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| {
            let empty = arg
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|value| value.is_empty());
            let arg = arg.hide_env_values(true);
            if empty {
                arg.env(None::<&'static str>)
            } else {
                arg
            }
        })
        .mut_subcommands(environment_fallbacks)
}

/// `command` with `loadtest`'s `--database-url` (of every scenario) checked
/// like `serve`'s and `audit`'s ([`flashsale_gateway::order_sink::parse_database_url`]),
/// which the loadtest crate cannot reach.
fn check_loadtest_database_url(command: clap::Command) -> clap::Command {
    command.mut_subcommand("loadtest", |loadtest| {
        loadtest.mut_subcommands(|scenario| {
            scenario.mut_args(|arg| {
                if arg.get_id() == "database_url" {
                    arg.value_parser(flashsale_gateway::order_sink::parse_database_url)
                } else {
                    arg
                }
            })
        })
    })
}

/// The environment variable behind the value clap refused, if it gave
/// the value: the flag was not on the command line and the variable is set.
fn refused_environment_variable(command: &clap::Command, error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(refused)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    // clap names the argument as `--long <VALUE>`.
    let long = refused.strip_prefix("--")?.split(' ').next()?;
    let given_as_flag = std::env::args().any(|word| {
        word.strip_prefix("--")
            .is_some_and(|word| word == long || word.starts_with(&format!("{long}=")))
    });
    if given_as_flag {
        return None;
    }
    every_argument(command)
        .into_iter()
        .filter(|arg| arg.get_long() == Some(long))
        .filter_map(clap::Arg::get_env)
        .find(|variable| std::env::var_os(variable).is_some())
        .map(|variable| variable.to_string_lossy().into_owned())
}

/// The arguments of `command` and of all its subcommands, at any depth.
fn every_argument(command: &clap::Command) -> Vec<&clap::Arg> {
    command
        .get_arguments()
        .chain(command.get_subcommands().flat_map(every_argument))
        .collect()
}

/// Prints an error and every cause under it, once; exit 1.
fn report(error: &(dyn StdError + 'static)) -> ExitCode {
    print_error(error);
    ExitCode::FAILURE
}

/// Prints an error and every cause under it on stderr.
fn print_error(error: &(dyn StdError + 'static)) {
    let mut text = format!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    eprintln!("{text}");
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

/// Exit code of `audit` and `verify-draw` when what they check does not
/// hold (0: it holds).
const CHECK_FAILED: u8 = 1;
/// Exit code of `audit` and `verify-draw` when they could not check
/// (the error on stderr); clap's refusals of the command line exit 2 too.
const CANNOT_CHECK: u8 = 2;
/// Exit code of a command line refused, by clap or by a setting's check
/// (`serve`'s `Config::from_args`).
const COMMAND_LINE_REFUSED: u8 = 2;

/// An error of `audit` or `verify-draw`, printed; exit [`CANNOT_CHECK`].
fn cannot_check(error: BoxError) -> Result<ExitCode, BoxError> {
    print_error(&*error);
    Ok(ExitCode::from(CANNOT_CHECK))
}

/// `flashsale audit`: prints the report; exit 1 on a violation.
async fn audit(args: flashsale_gateway::audit::AuditArgs) -> Result<ExitCode, BoxError> {
    let report = flashsale_gateway::audit::run(args).await?;
    print!("{}", report.text());
    Ok(if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(CHECK_FAILED)
    })
}

async fn serve(args: ServeArgs) -> Result<ExitCode, BoxError> {
    let config = match Config::from_args(args) {
        Ok(config) => config,
        // A refused setting is a refused command line, like clap's own
        // refusals (docs/operations.md, "Exit codes").
        Err(error) => {
            print_error(&error);
            return Ok(ExitCode::from(COMMAND_LINE_REFUSED));
        }
    };
    let addr = config.addr;
    // Bind before opening: a taken port must not leave a new data
    // directory, secret or journal behind.
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| flashsale_gateway::Error::Bind { addr, source })?;
    let bound = listener.local_addr()?;
    let gateway = Gateway::open(config).await?;
    // Listen for signals before saying we listen: a SIGTERM right after
    // the line must stop the server gracefully, not kill it.
    let shutdown = shutdown_signal();
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "flashsale listening on http://{bound}")?;
        if let Some(path) = gateway.admin_token_made() {
            writeln!(
                stdout,
                "flashsale admin token (generated, shown once, kept in {}): {}",
                path.display(),
                gateway.admin_token()
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
    gateway.serve(listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// A future that completes on ctrl-c or SIGTERM; the handlers are
/// installed when this is called, not when the future is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::SignalKind;
        let mut terminate = listen(SignalKind::terminate(), "SIGTERM");
        let mut interrupt = listen(SignalKind::interrupt(), "ctrl-c");
        async move {
            tokio::select! {
                () = received(interrupt.as_mut()) => tracing::info!("ctrl-c: shutting down"),
                () = received(terminate.as_mut()) => tracing::info!("SIGTERM: shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
        tracing::info!("ctrl-c: shutting down");
    }
}

/// A handler for `kind`, or `None` (logged) if it cannot be installed.
#[cfg(unix)]
fn listen(
    kind: tokio::signal::unix::SignalKind,
    name: &str,
) -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind)
        .inspect_err(|error| tracing::error!(%error, "cannot listen for {name}"))
        .ok()
}

/// Completes when `signal` arrives; never without a handler.
#[cfg(unix)]
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// `flashsale verify-draw`: prints what it checked and each mismatch.
async fn verify_draw(deal: &str, ca_cert: Option<&std::path::Path>) -> Result<ExitCode, BoxError> {
    let verdict = flashsale_loadtest::verify_draw::verify_draw(deal, ca_cert).await?;
    let mut out = std::io::stdout().lock();
    if !verdict.drawn {
        writeln!(
            out,
            "not drawn yet: the draw runs at the deal's starts_at; nothing to verify until then"
        )?;
        return Ok(ExitCode::from(CANNOT_CHECK));
    }
    for problem in &verdict.problems {
        writeln!(out, "mismatch: {problem}")?;
    }
    if verdict.problems.is_empty() {
        writeln!(
            out,
            "match: {} registrants, {} offers follow the ranking recomputed from the seed",
            verdict.registrants, verdict.offers
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(out, "the published draw does NOT match its recomputation")?;
        Ok(ExitCode::from(CHECK_FAILED))
    }
}

async fn demo() -> Result<ExitCode, BoxError> {
    let data_dir = tempfile::Builder::new()
        .prefix("flashsale-demo-")
        .tempdir()?;
    let mut config = Config::new(data_dir.path().to_path_buf());
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
