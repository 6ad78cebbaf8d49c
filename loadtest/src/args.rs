//! Command-line flags, each also read from a `FLASHSALE_LOADTEST_…`
//! environment variable (`--admin-token` from `FLASHSALE_ADMIN_TOKEN`, as
//! the server does). Parsed raw here by clap; ranges and combinations are
//! checked by [`LoadtestArgs::validate`] before anything is sent.
//!
//! A scenario takes its own options (help heading "Burst options",
//! "Steady options" or "Raffle options") and the options of a run against a gateway
//! ([`RunArgs`], heading "Run options"); `hello` is a server, not a run,
//! and takes only its address, so no option is accepted and then ignored.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;

use crate::error::LoadtestError;
use crate::retry::ATTEMPTS_MAX;

/// Most connections (worker tasks) one run may open.
pub const CONNECTIONS_MAX: usize = 10_000;
/// Most `--target` nodes one run may drive.
pub const TARGETS_MAX: usize = 64;
/// Most shoppers one run may create.
pub const SHOPPERS_MAX: usize = 10_000_000;
/// Highest steady arrival rate, per second.
pub const RATE_PER_SECOND_MAX: u64 = 1_000_000;
/// Longest steady run or burst ramp.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Longest hold of a raffle's winner, in seconds (the contract's bound).
pub const HOLD_SECONDS_MAX: u64 = 24 * 3600;
/// Most operations one steady run may plan (`rate × duration`).
pub const STEADY_OPERATIONS_MAX: u64 = 100_000_000;

/// `flashsale loadtest …`: a scenario and its options.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    #[command(subcommand)]
    pub command: Scenario,
}

/// How a burst, steady or raffle run reaches its gateway and reports: the options
/// the load scenarios share.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Run options")]
pub struct RunArgs {
    /// Base URL of a gateway node under test (http://, or https://
    /// checked against Mozilla's root certificates), with an optional path
    /// prefix. Give it once per node of a deployment: taps spread over the
    /// nodes, a retry goes to another one, and the invariant check reads
    /// every one. Setup goes through the first.
    #[arg(
        long = "target",
        value_name = "URL",
        env = "FLASHSALE_LOADTEST_TARGET",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080",
        value_parser = crate::target::parse_target_url
    )]
    pub targets: Vec<String>,

    /// Start a local `flashsale serve` (fresh data dir, random admin token,
    /// rate limits off) for this run instead of using --target.
    #[arg(long, env = "FLASHSALE_LOADTEST_SPAWN")]
    pub spawn: bool,

    /// Program started by --spawn [default: this executable].
    #[arg(long, env = "FLASHSALE_LOADTEST_SERVER_BIN")]
    pub server_bin: Option<PathBuf>,

    /// Durability of the server started by --spawn.
    #[arg(
        long,
        env = "FLASHSALE_LOADTEST_DURABILITY",
        value_enum,
        default_value_t = Durability::Sync
    )]
    pub durability: Durability,

    /// Admin bearer token of the target (not needed with --spawn).
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Keep-alive connections, one worker task each.
    #[arg(long, env = "FLASHSALE_LOADTEST_CONNECTIONS", default_value_t = 64)]
    pub connections: usize,

    /// Worker threads of the load generator [default: one per core].
    #[arg(long, env = "FLASHSALE_LOADTEST_THREADS")]
    pub threads: Option<usize>,

    /// Per-attempt timeout (connect, send, whole answer).
    #[arg(
        long,
        env = "FLASHSALE_LOADTEST_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub timeout: Duration,

    /// No progress bar and no phase messages.
    #[arg(long, env = "FLASHSALE_LOADTEST_QUIET")]
    pub quiet: bool,

    /// Also write the report as JSON to this file.
    #[arg(long, env = "FLASHSALE_LOADTEST_JSON")]
    pub json: Option<PathBuf>,

    /// Draw latency percentiles and throughput over time to this SVG file.
    #[arg(long, env = "FLASHSALE_LOADTEST_PLOT")]
    pub plot: Option<PathBuf>,

    /// Postgres of the order sink: check every acknowledged order is there.
    #[arg(long, env = "FLASHSALE_LOADTEST_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    #[command(flatten)]
    pub platform: crate::platform::PlatformArgs,
}

/// What to run.
#[derive(Debug, Clone, clap::Subcommand)]
#[command(subcommand_help_heading = "Scenarios")]
pub enum Scenario {
    /// Every shopper taps Buy at T0 (within a ramp); then check invariants.
    Burst(BurstArgs),
    /// A constant open-loop arrival rate of mixed operations.
    Steady(SteadyArgs),
    /// A raffle: registration wave, the draw, winners paying or letting
    /// their holds expire, the waitlist refilling; then check the draw.
    Raffle(RaffleArgs),
    /// A bare hyper hello-world server: the ceiling baseline.
    Hello(HelloArgs),
}

/// Journal durability of a spawned server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Answer after fsync.
    Sync,
    /// Answer at once.
    Async,
}

impl Durability {
    /// The value of the server's `--durability` flag.
    pub fn as_flag(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Async => "async",
        }
    }
}

/// Preset sizes of a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// 2,000 shoppers for 200 units: seconds on a laptop.
    Small,
    /// 1,000,000 shoppers for 100,000 units, as in the phone maker's sales.
    Xiaomi,
}

impl Profile {
    /// (shoppers, stock) of the profile.
    pub fn sizes(self) -> (usize, u64) {
        match self {
            Profile::Small => (2_000, 200),
            Profile::Xiaomi => (1_000_000, 100_000),
        }
    }
}

/// `flashsale loadtest burst`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Burst options")]
pub struct BurstArgs {
    /// Preset shoppers and stock; --shoppers and --stock override it.
    #[arg(long, env = "FLASHSALE_LOADTEST_PROFILE", value_enum, default_value_t = Profile::Small)]
    pub profile: Profile,

    /// Shoppers, each tapping Buy once [default: from --profile].
    #[arg(long, env = "FLASHSALE_LOADTEST_SHOPPERS")]
    pub shoppers: Option<usize>,

    /// Units for sale [default: from --profile].
    #[arg(long, env = "FLASHSALE_LOADTEST_STOCK")]
    pub stock: Option<u64>,

    /// Units one shopper may buy.
    #[arg(long, env = "FLASHSALE_LOADTEST_PER_USER_LIMIT", default_value_t = 1)]
    pub per_user_limit: u64,

    /// Units per tap.
    #[arg(long, env = "FLASHSALE_LOADTEST_QUANTITY", default_value_t = 1)]
    pub quantity: u64,

    /// Unit price.
    #[arg(long, env = "FLASHSALE_LOADTEST_PRICE", default_value = "999.00", value_parser = parse_money)]
    pub price: Decimal,

    /// Wallet credit per shopper [default: enough for the per-user limit].
    #[arg(long, env = "FLASHSALE_LOADTEST_CREDIT", value_parser = parse_money)]
    pub credit: Option<Decimal>,

    /// Window over which the taps are spread, uniformly at random.
    #[arg(
        long,
        env = "FLASHSALE_LOADTEST_RAMP",
        default_value = "1s",
        value_parser = humantime::parse_duration
    )]
    pub ramp: Duration,

    /// Deal requires registration: register every shopper first, and
    /// start the deal a few seconds in the future.
    #[arg(long, env = "FLASHSALE_LOADTEST_REGISTER")]
    pub register: bool,

    /// With --register: how far in the future the deal starts [default:
    /// 3 s plus time to register everyone at a conservative rate].
    #[arg(long, env = "FLASHSALE_LOADTEST_START_IN", value_parser = humantime::parse_duration)]
    pub start_in: Option<Duration>,

    /// Attempts per tap; retries on 503, 429 and no answer, same key.
    #[arg(long, env = "FLASHSALE_LOADTEST_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,

    /// Seed of the tap schedule and jitter [default: random].
    #[arg(long, env = "FLASHSALE_LOADTEST_SEED")]
    pub seed: Option<u64>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// `flashsale loadtest steady`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Steady options")]
pub struct SteadyArgs {
    /// Operations started per second, on schedule (open loop).
    #[arg(long, env = "FLASHSALE_LOADTEST_RATE", default_value_t = 200)]
    pub rate: u64,

    /// How long to keep the rate.
    #[arg(
        long,
        env = "FLASHSALE_LOADTEST_DURATION",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub duration: Duration,

    /// Shoppers the operations are spread over.
    #[arg(long, env = "FLASHSALE_LOADTEST_SHOPPERS", default_value_t = 1_000)]
    pub shoppers: usize,

    /// Units of the scenario's deal.
    #[arg(long, env = "FLASHSALE_LOADTEST_STOCK", default_value_t = 1_000_000)]
    pub stock: u64,

    /// Units one shopper may buy.
    #[arg(long, env = "FLASHSALE_LOADTEST_PER_USER_LIMIT", default_value_t = 100)]
    pub per_user_limit: u64,

    /// Units per buy or hold.
    #[arg(long, env = "FLASHSALE_LOADTEST_QUANTITY", default_value_t = 1)]
    pub quantity: u64,

    /// Unit price.
    #[arg(long, env = "FLASHSALE_LOADTEST_PRICE", default_value = "999.00", value_parser = parse_money)]
    pub price: Decimal,

    /// Wallet credit per shopper [default: enough for the per-user limit].
    #[arg(long, env = "FLASHSALE_LOADTEST_CREDIT", value_parser = parse_money)]
    pub credit: Option<Decimal>,

    /// Weights of the operations: buy, hold, pay (a held unit), release (a
    /// held unit), feed (GET /v1/feed).
    #[arg(
        long,
        env = "FLASHSALE_LOADTEST_MIX",
        default_value = "buy=50,hold=15,pay=10,release=5,feed=20",
        value_parser = Mix::from_str
    )]
    pub mix: Mix,

    /// Attempts per operation (1: measure the server's raw answers).
    #[arg(long, env = "FLASHSALE_LOADTEST_MAX_ATTEMPTS", default_value_t = 1)]
    pub max_attempts: u32,

    /// Seed of the operation mix and jitter [default: random].
    #[arg(long, env = "FLASHSALE_LOADTEST_SEED")]
    pub seed: Option<u64>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// `flashsale loadtest raffle`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Raffle options")]
pub struct RaffleArgs {
    /// Shoppers who register for the draw.
    #[arg(long, env = "FLASHSALE_LOADTEST_REGISTRANTS", default_value_t = 2_000)]
    pub registrants: usize,

    /// Units of the raffle deal.
    #[arg(long, env = "FLASHSALE_LOADTEST_STOCK", default_value_t = 200)]
    pub stock: u64,

    /// Seconds a winner's hold lasts before it passes down the waitlist.
    #[arg(long, env = "FLASHSALE_LOADTEST_HOLD_SECONDS", default_value_t = 3)]
    pub hold_seconds: u64,

    /// Share of winners who pay; the others let their holds expire.
    #[arg(long, env = "FLASHSALE_LOADTEST_PAY_FRACTION", default_value_t = 0.7)]
    pub pay_fraction: f64,

    /// Unit price.
    #[arg(long, env = "FLASHSALE_LOADTEST_PRICE", default_value = "999.00", value_parser = parse_money)]
    pub price: Decimal,

    /// How far in the future the draw runs [default: 3 s plus time to
    /// register everyone at a conservative rate].
    #[arg(long, env = "FLASHSALE_LOADTEST_START_IN", value_parser = humantime::parse_duration)]
    pub start_in: Option<Duration>,

    /// Give up following the waitlist this long after the draw.
    #[arg(
        long,
        env = "FLASHSALE_LOADTEST_FOLLOW_FOR",
        default_value = "120s",
        value_parser = humantime::parse_duration
    )]
    pub follow_for: Duration,

    /// Attempts per payment; retries on 503, 429 and no answer.
    #[arg(long, env = "FLASHSALE_LOADTEST_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,

    /// Seed of who pays and of the jitter [default: random].
    #[arg(long, env = "FLASHSALE_LOADTEST_SEED")]
    pub seed: Option<u64>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// `flashsale loadtest hello`.
#[derive(Debug, Clone, clap::Args)]
pub struct HelloArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(
        long,
        env = "FLASHSALE_LOADTEST_HELLO_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub addr: SocketAddr,
}

/// Relative weights of steady's operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub buy: u32,
    pub hold: u32,
    pub pay: u32,
    pub release: u32,
    pub feed: u32,
}

impl Mix {
    /// Sum of the weights.
    pub fn total(&self) -> u32 {
        self.buy + self.hold + self.pay + self.release + self.feed
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            buy: 0,
            hold: 0,
            pay: 0,
            release: 0,
            feed: 0,
        };
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not name=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight of {name} is not a whole number"))?;
            let slot = match name.trim() {
                "buy" => &mut mix.buy,
                "hold" => &mut mix.hold,
                "pay" => &mut mix.pay,
                "release" => &mut mix.release,
                "feed" => &mut mix.feed,
                other => {
                    return Err(format!(
                        "unknown operation {other:?} (buy, hold, pay, release, feed)"
                    ));
                }
            };
            *slot = weight;
        }
        if mix.total() == 0 || mix.total() > 1_000_000 {
            return Err("weights must add up to between 1 and 1,000,000".to_owned());
        }
        Ok(mix)
    }
}

/// A positive amount with at most 2 decimal places.
pub fn parse_money(text: &str) -> Result<Decimal, String> {
    let amount = Decimal::from_str(text.trim()).map_err(|error| error.to_string())?;
    if amount.scale() > 2 {
        return Err("money has at most 2 decimal places".to_owned());
    }
    if amount <= Decimal::ZERO {
        return Err("must be positive".to_owned());
    }
    Ok(amount)
}

/// The refusal of `hello` where a load run is needed.
pub(crate) fn hello_is_not_a_run() -> LoadtestError {
    config("hello is a server, not a load scenario".to_owned())
}

fn config(message: String) -> LoadtestError {
    LoadtestError::Config(message)
}

fn within<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    low: T,
    high: T,
) -> Result<(), LoadtestError> {
    if value < low || value > high {
        return Err(config(format!(
            "--{name} must be in {low}..={high}, not {value}"
        )));
    }
    Ok(())
}

impl LoadtestArgs {
    /// The run options of a burst, steady or raffle scenario; `hello` is refused
    /// with [`LoadtestError::Config`]: it is a server, not a load scenario.
    pub fn run_args(&self) -> Result<&RunArgs, LoadtestError> {
        match &self.command {
            Scenario::Burst(burst) => Ok(&burst.run),
            Scenario::Steady(steady) => Ok(&steady.run),
            Scenario::Raffle(raffle) => Ok(&raffle.run),
            Scenario::Hello(_) => Err(hello_is_not_a_run()),
        }
    }

    /// Checks ranges and combinations of flags.
    pub fn validate(&self) -> Result<(), LoadtestError> {
        match &self.command {
            Scenario::Burst(burst) => burst.run.validate().and_then(|()| burst.validate()),
            Scenario::Steady(steady) => steady.run.validate().and_then(|()| steady.validate()),
            Scenario::Raffle(raffle) => {
                raffle.run.validate()?;
                if raffle.run.targets.len() > 1 {
                    // Redis mode refuses raffles (docs/multi-node.md).
                    return Err(config(
                        "a raffle runs on one node: give --target once".to_owned(),
                    ));
                }
                raffle.validate()
            }
            Scenario::Hello(_) => Ok(()),
        }
    }
}

impl RunArgs {
    fn validate(&self) -> Result<(), LoadtestError> {
        if self.targets.is_empty() || self.targets.len() > TARGETS_MAX {
            return Err(config(format!(
                "--target is given 1 to {TARGETS_MAX} times, not {}",
                self.targets.len()
            )));
        }
        if self.spawn && self.targets.len() > 1 {
            return Err(config(
                "--spawn starts one server: give --target only without it".to_owned(),
            ));
        }
        within("connections", self.connections, 1, CONNECTIONS_MAX)?;
        if let Some(threads) = self.threads {
            within("threads", threads, 1, crate::cpu::LOAD_THREADS_MAX)?;
        }
        if self.timeout.is_zero() {
            return Err(config("--timeout must be positive".to_owned()));
        }
        Ok(())
    }
}

impl BurstArgs {
    /// (shoppers, stock) after the profile and overrides.
    pub fn sizes(&self) -> (usize, u64) {
        let (shoppers, stock) = self.profile.sizes();
        (
            self.shoppers.unwrap_or(shoppers),
            self.stock.unwrap_or(stock),
        )
    }

    fn validate(&self) -> Result<(), LoadtestError> {
        let (shoppers, stock) = self.sizes();
        within("shoppers", shoppers, 1, SHOPPERS_MAX)?;
        within("stock", stock, 1, u64::from(u32::MAX))?;
        within(
            "per-user-limit",
            self.per_user_limit,
            1,
            u64::from(u32::MAX),
        )?;
        within("quantity", self.quantity, 1, self.per_user_limit)?;
        within("max-attempts", self.max_attempts, 1, ATTEMPTS_MAX)?;
        if self.ramp > DURATION_MAX {
            return Err(config(format!("--ramp must be at most {DURATION_MAX:?}")));
        }
        if self.start_in.is_some() && !self.register {
            return Err(config("--start-in only applies with --register".to_owned()));
        }
        Ok(())
    }
}

impl RaffleArgs {
    fn validate(&self) -> Result<(), LoadtestError> {
        within("registrants", self.registrants, 1, SHOPPERS_MAX)?;
        within("stock", self.stock, 1, u64::from(u32::MAX))?;
        within("hold-seconds", self.hold_seconds, 1, HOLD_SECONDS_MAX)?;
        within("pay-fraction", self.pay_fraction, 0.0, 1.0)?;
        within("max-attempts", self.max_attempts, 1, ATTEMPTS_MAX)?;
        if self.follow_for.is_zero() || self.follow_for > DURATION_MAX {
            return Err(config(format!(
                "--follow-for must be in (0, {DURATION_MAX:?}]"
            )));
        }
        if self.start_in.is_some_and(|lead| lead > DURATION_MAX) {
            return Err(config(format!(
                "--start-in must be at most {DURATION_MAX:?}"
            )));
        }
        Ok(())
    }
}

impl SteadyArgs {
    fn validate(&self) -> Result<(), LoadtestError> {
        within("rate", self.rate, 1, RATE_PER_SECOND_MAX)?;
        within("shoppers", self.shoppers, 1, SHOPPERS_MAX)?;
        within("stock", self.stock, 1, u64::from(u32::MAX))?;
        within(
            "per-user-limit",
            self.per_user_limit,
            1,
            u64::from(u32::MAX),
        )?;
        within("quantity", self.quantity, 1, self.per_user_limit)?;
        within("max-attempts", self.max_attempts, 1, ATTEMPTS_MAX)?;
        if self.duration.is_zero() || self.duration > DURATION_MAX {
            return Err(config(format!(
                "--duration must be in (0, {DURATION_MAX:?}]"
            )));
        }
        if self.operations() > STEADY_OPERATIONS_MAX {
            return Err(config(format!(
                "--rate × --duration plans {} operations, more than {STEADY_OPERATIONS_MAX}",
                self.operations()
            )));
        }
        Ok(())
    }

    /// Operations the run plans: `rate × duration`.
    pub fn operations(&self) -> u64 {
        (self.rate as f64 * self.duration.as_secs_f64()).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadtestArgs,
    }

    fn parse(argv: &[&str]) -> Result<LoadtestArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("loadtest").chain(argv.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn run_flags_go_after_the_scenario() {
        let args = parse(&[
            "burst",
            "--target",
            "http://127.0.0.1:9",
            "--connections",
            "8",
        ])
        .expect("parses");
        let run = args.run_args().expect("a run");
        assert_eq!(run.targets, ["http://127.0.0.1:9"]);
        assert_eq!(run.connections, 8);
        let Scenario::Burst(burst) = &args.command else {
            panic!("burst expected");
        };
        assert_eq!(burst.sizes(), (2_000, 200));
        args.validate().expect("valid");
    }

    #[test]
    fn target_may_be_given_once_per_node() {
        let args = parse(&["burst"]).expect("parses");
        let run = args.run_args().expect("a run");
        assert_eq!(run.targets, ["http://127.0.0.1:8080"], "the default");
        let args = parse(&[
            "steady",
            "--target",
            "http://127.0.0.1:1",
            "--target",
            "http://127.0.0.1:2,http://127.0.0.1:3",
        ])
        .expect("parses");
        let run = args.run_args().expect("a run");
        assert_eq!(
            run.targets,
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:3"
            ]
        );
        args.validate().expect("valid");
        let two = [
            "--target",
            "http://127.0.0.1:1",
            "--target",
            "http://127.0.0.1:2",
        ];
        for refused in [
            [&["burst", "--spawn"][..], &two[..]].concat(),
            [&["raffle"][..], &two[..]].concat(),
        ] {
            let args = parse(&refused).expect("parses");
            assert!(args.validate().is_err(), "{refused:?}");
        }
    }

    /// Regression: `hello` accepted the load scenarios' options and
    /// ignored them.
    #[test]
    fn hello_takes_only_its_address() {
        let args = parse(&["hello", "--addr", "127.0.0.1:0"]).expect("parses");
        assert!(args.run_args().is_err());
        for ignored in [
            &["hello", "--connections", "8"][..],
            &["hello", "--target", "http://127.0.0.1:9"][..],
            &["hello", "--rate", "5"][..],
            &["--connections", "8", "hello"][..],
        ] {
            assert!(parse(ignored).is_err(), "{ignored:?}");
        }
    }

    /// Each scenario's help lists its own options and the run options
    /// under their own headings.
    #[test]
    fn help_groups_scenario_and_run_options() {
        use clap::CommandFactory;
        let mut command = Cli::command();
        for (scenario, heading, own) in [
            ("burst", "Burst options:", "--shoppers"),
            ("steady", "Steady options:", "--rate"),
            ("raffle", "Raffle options:", "--pay-fraction"),
        ] {
            let help = command
                .find_subcommand_mut(scenario)
                .expect("a scenario")
                .render_help()
                .to_string();
            let scenario_at = help.find(heading).unwrap_or_else(|| panic!("{help}"));
            let run_at = help
                .find("Run options:")
                .unwrap_or_else(|| panic!("{help}"));
            let own_at = help.find(own).expect("its own option");
            let target_at = help.find("--target").expect("a run option");
            assert!(scenario_at < own_at && own_at < run_at, "{help}");
            assert!(run_at < target_at, "{help}");
        }
        let hello = command
            .find_subcommand_mut("hello")
            .expect("hello")
            .render_help()
            .to_string();
        assert!(!hello.contains("--target"), "{hello}");
    }

    #[test]
    fn the_xiaomi_profile_sizes_and_overrides() {
        let args = parse(&["burst", "--profile", "xiaomi"]).expect("parses");
        let Scenario::Burst(burst) = &args.command else {
            panic!("burst expected");
        };
        assert_eq!(burst.sizes(), (1_000_000, 100_000));
        let args = parse(&["burst", "--profile", "xiaomi", "--stock", "5"]).expect("parses");
        let Scenario::Burst(burst) = &args.command else {
            panic!("burst expected");
        };
        assert_eq!(burst.sizes(), (1_000_000, 5));
    }

    #[test]
    fn out_of_range_flags_are_refused() {
        for argv in [
            &["burst", "--connections", "0"][..],
            &["burst", "--quantity", "2"][..],
            &["burst", "--start-in", "5s"][..],
            &["steady", "--rate", "0"][..],
            &["raffle", "--pay-fraction", "1.5"][..],
            &["raffle", "--hold-seconds", "0"][..],
            &["steady", "--rate", "1000000", "--duration", "24h"][..],
        ] {
            let args = parse(argv).expect("parses");
            assert!(args.validate().is_err(), "{argv:?}");
        }
        assert!(parse(&["burst", "--price", "1.001"]).is_err());
        assert!(parse(&["burst", "--price", "-1"]).is_err());
    }

    #[test]
    fn mixes_parse_and_reject_nonsense() {
        let mix: Mix = "buy=1, feed=3".parse().expect("valid");
        assert_eq!((mix.buy, mix.feed, mix.total()), (1, 3, 4));
        assert!("buy".parse::<Mix>().is_err());
        assert!("steal=1".parse::<Mix>().is_err());
        assert!("buy=0".parse::<Mix>().is_err());
    }
}
