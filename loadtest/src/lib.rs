//! `flashsale loadtest`: the SREs' load generator for the flash-sale
//! gateway.
//!
//! It replays what a flash sale does to the checkout API and then checks
//! that nothing was oversold, double-charged or lost:
//!
//! - **burst**: a merchant, a deal of S units and N funded shoppers are set
//!   up through the admin API; then every shopper taps Buy once within a
//!   short ramp after T0, each with its own Idempotency-Key, retrying
//!   `503`, `429` and lost answers with the same key after a jittered
//!   backoff. `--profile xiaomi` is 1,000,000 shoppers for 100,000 units.
//!
//! `--target` may be given once per node of a deployment: setup goes
//! through the first, the burst's taps and steady's operations spread
//! over all of them, each retry goes to another node than the attempt
//! before (as a client behind a load balancer), and the checks read every
//! node.
//! - **steady**: a constant open-loop arrival rate of buys, holds, pays,
//!   releases and feed reads for a fixed time.
//! - **raffle**: a raffle deal: a registration wave, the
//!   draw, winners paying (`--pay-fraction`) or letting their holds
//!   expire, the waitlist refilling; checked against the published draw.
//! - **hello**: a bare hyper hello-world server, the ceiling baseline for
//!   `scripts/compare.sh`.
//!
//! The load scenarios report the rate the client offered (its schedule)
//! apart from the rate the server answered, latency percentiles measured
//! from each operation's *scheduled* instant (so coordinated omission
//! cannot hide a stall), answers by status and error code and by target,
//! time to sell out, and the client's own CPU per request; optionally as
//! JSON and as an SVG plot. Then they read the deal, its orders and every
//! wallet back from every target (and Postgres, with `--database-url`) and
//! check the invariants of ARCHITECTURE.md; a failed check makes the exit
//! status non-zero.
//!
//! The client must never be the bottleneck: one keep-alive HTTP/1.1
//! connection per worker task on hyper's low-level client, no pool, no
//! TLS, no per-request allocation beyond the request itself, on a runtime
//! of its own whose threads' CPU is measured.
//!
//! # Layout
//!
//! - `args.rs`: flags and environment variables, validated in one place.
//! - `target.rs`: the `http://` or `https://` targets, resolved once;
//!   which one an attempt goes to.
//! - `connection.rs`: per worker, one keep-alive connection to each
//!   target; reconnects.
//! - `api.rs`: the contract's JSON shapes and the setup/check calls.
//! - `retry.rs`: which answers are retried, and the jittered backoff.
//! - `open_loop.rs`: the scheduler and workers; latency from the schedule.
//! - `recorder.rs`: counters, histograms, timeline, acknowledged orders.
//! - `scenario.rs`: what both scenarios share (setup, one attempt, checks).
//! - `burst.rs`, `steady.rs`, `raffle.rs`: the load scenarios.
//! - `checks.rs`: the invariant checks, pure, plus the Postgres look-up.
//! - `report.rs`, `plot.rs`: the table, the JSON, the SVG.
//! - `cpu.rs`: the dedicated runtime and the CPU it uses.
//! - `progress.rs`: the live bar on stderr.
//! - `spawn.rs`: `--spawn`, a local `flashsale serve` for the run
//!   ([`SpawnedServer`], also used by the root crate's API fuzz test).
//! - `hello.rs`: the hello-world baseline server.

mod api;
mod args;
mod burst;
mod checks;
mod connection;
// libc calls for the tool's own CPU time; each block has a SAFETY comment.
#[allow(unsafe_code)]
mod cpu;
mod error;
mod hello;
mod open_loop;
mod platform;
mod plot;
mod progress;
mod raffle;
mod recorder;
mod report;
mod retry;
mod scenario;
mod spawn;
mod steady;
mod target;
pub mod verify_draw;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub use args::{
    BurstArgs, Durability, HelloArgs, LoadtestArgs, Mix, Profile, RaffleArgs, RunArgs, Scenario,
    SteadyArgs,
};
pub use error::{LoadtestError, TransportError};
pub use hello::serve as serve_hello;
pub use recorder::TimelinePoint;
pub use report::{
    Check, ClientCpu, LatencySummary, OfferedRate, Outcomes, RaffleFigures, Report, TargetFigures,
};
pub use spawn::SpawnedServer;
pub use target::parse_target_url;

use crate::progress::Progress;
use crate::scenario::Context;

/// Shoppers in the burst run by [`demo`].
pub const DEMO_SHOPPERS: usize = 500;
/// Units for sale in the burst run by [`demo`].
pub const DEMO_STOCK: u64 = 50;
/// Connections of the burst run by [`demo`].
pub const DEMO_CONNECTIONS: usize = 16;

/// Runs `flashsale loadtest …`: serves hello-world until ctrl-c, or runs a
/// scenario, prints its report to stdout and writes the requested files.
/// The exit code is a failure when any invariant check failed.
pub async fn run(args: LoadtestArgs) -> Result<ExitCode, LoadtestError> {
    if let Scenario::Hello(hello) = &args.command {
        hello::run(hello.addr).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let report = run_scenario(args).await?;
    print!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs a burst, steady or raffle scenario and returns its report without printing
/// it; writes `--json` and `--plot` if asked. `hello` is refused: it is a
/// server, not a scenario.
pub async fn run_scenario(args: LoadtestArgs) -> Result<Report, LoadtestError> {
    args.validate()?;
    let threads = args.run_args()?.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    cpu::on_load_runtime(threads, move |meter| run_on_load_runtime(args, meter)).await
}

async fn run_on_load_runtime(
    args: LoadtestArgs,
    meter: Arc<cpu::CpuMeter>,
) -> Result<Report, LoadtestError> {
    let run = args.run_args()?;
    let progress = Progress::new(run.quiet);
    let spawned = if run.spawn {
        let program = match &run.server_bin {
            Some(program) => program.clone(),
            None => std::env::current_exe().map_err(|source| LoadtestError::File {
                action: "locate",
                path: "the running executable".into(),
                source,
            })?,
        };
        let platform = platform::Platform::load(&run.platform)?;
        let server = SpawnedServer::start(
            &program,
            run.durability,
            run.database_url.as_deref(),
            platform.as_ref(),
        )
        .await?;
        progress.phase(format!(
            "started {} serve at {}",
            program.display(),
            server.url
        ));
        Some(server)
    } else {
        None
    };
    let result = run_against(&args, spawned.as_ref(), progress, meter).await;
    if let Some(server) = spawned {
        server.stop().await;
    }
    let report = result?;
    if let Some(path) = &run.json {
        report.write_json(path)?;
    }
    if let Some(path) = &run.plot {
        plot::write_svg(&report, path)?;
    }
    Ok(report)
}

async fn run_against(
    args: &LoadtestArgs,
    spawned: Option<&SpawnedServer>,
    progress: Progress,
    meter: Arc<cpu::CpuMeter>,
) -> Result<Report, LoadtestError> {
    let run = args.run_args()?;
    let (urls, admin_token) = match spawned {
        Some(server) => (vec![server.url.clone()], Some(server.admin_token.clone())),
        None => (run.targets.clone(), run.admin_token.clone()),
    };
    let admin_token = admin_token
        .filter(|token| !token.is_empty())
        .ok_or(LoadtestError::MissingAdminToken)?;
    let targets = target::resolve_all(&urls).await?;
    let first = targets
        .first()
        .cloned()
        .ok_or_else(|| LoadtestError::Config("--target is given at least once".to_owned()))?;
    let context = Context {
        target: first,
        targets: targets.into(),
        admin: api::bearer(&admin_token)?,
        connections: run.connections,
        timeout: run.timeout,
        progress,
        database_url: run.database_url.clone(),
        meter,
        platform: platform::Platform::load(&run.platform)?.map(Arc::new),
    };
    match &args.command {
        Scenario::Burst(burst) => burst::run(&context, burst).await,
        Scenario::Steady(steady) => steady::run(&context, steady).await,
        Scenario::Raffle(raffle) => raffle::run(&context, raffle).await,
        Scenario::Hello(_) => Err(args::hello_is_not_a_run()),
    }
}

/// `flashsale demo`: a small burst ([`DEMO_SHOPPERS`] shoppers for
/// [`DEMO_STOCK`] units) against an already running server, e.g. one
/// embedded in the same process; returns the report without printing it
/// (the caller prints it once).
pub async fn demo(target: String, admin_token: String) -> Result<Report, LoadtestError> {
    let args = LoadtestArgs {
        command: Scenario::Burst(BurstArgs {
            profile: Profile::Small,
            shoppers: Some(DEMO_SHOPPERS),
            stock: Some(DEMO_STOCK),
            per_user_limit: 1,
            quantity: 1,
            price: rust_decimal::Decimal::new(99_900, 2),
            credit: None,
            ramp: Duration::from_millis(500),
            register: false,
            start_in: None,
            max_attempts: 8,
            seed: None,
            run: RunArgs {
                targets: vec![target],
                spawn: false,
                server_bin: None,
                durability: Durability::Sync,
                admin_token: Some(admin_token),
                connections: DEMO_CONNECTIONS,
                // One thread: the embedded server needs the other cores.
                threads: Some(1),
                timeout: Duration::from_secs(10),
                quiet: false,
                json: None,
                plot: None,
                database_url: None,
                platform: crate::platform::PlatformArgs::none(),
            },
        }),
    };
    run_scenario(args).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// A quiet run with one connection and no admin token.
    fn run_args(target: &str) -> RunArgs {
        RunArgs {
            targets: vec![target.to_owned()],
            spawn: false,
            server_bin: None,
            durability: Durability::Sync,
            admin_token: None,
            connections: 1,
            threads: Some(1),
            timeout: Duration::from_secs(1),
            quiet: true,
            json: None,
            plot: None,
            database_url: None,
            platform: crate::platform::PlatformArgs::none(),
        }
    }

    #[test]
    fn the_entry_points_can_be_spawned() {
        let args = LoadtestArgs {
            command: Scenario::Hello(HelloArgs {
                addr: "127.0.0.1:0".parse().expect("valid"),
            }),
        };
        assert_send(&run(args.clone()));
        assert_send(&run_scenario(args));
        assert_send(&demo(String::new(), String::new()));
    }

    #[tokio::test]
    async fn a_missing_admin_token_is_reported_before_any_load() {
        let args = LoadtestArgs {
            command: Scenario::Steady(SteadyArgs {
                rate: 1,
                duration: Duration::from_secs(1),
                shoppers: 1,
                stock: 1,
                per_user_limit: 1,
                quantity: 1,
                price: rust_decimal::Decimal::ONE,
                credit: None,
                mix: "feed=1".parse().expect("valid"),
                max_attempts: 1,
                seed: None,
                run: run_args("http://127.0.0.1:9"),
            }),
        };
        let error = run_scenario(args).await.expect_err("no token");
        assert!(matches!(error, LoadtestError::MissingAdminToken), "{error}");
    }
}
