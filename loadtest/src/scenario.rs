//! What the scenarios share: the run's context, the setup through the
//! admin API (on the first target), one attempt's bookkeeping, the checks
//! after the load (on every target), and the assembly of the [`Report`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use hyper::header::HeaderValue;
use rust_decimal::Decimal;
use serde::Deserialize;
use tokio::time::Instant;

use crate::api::{self, Deal, Merchant, NewDeal, Shopper};
use crate::checks::{self, Evidence};
use crate::connection::{Answer, Connection, Connections};
use crate::cpu::CpuMeter;
use crate::error::{LoadtestError, TransportError};
use crate::open_loop::{Disposition, Job};
use crate::progress::Progress;
use crate::recorder::{
    Acknowledged, Counters, Final, Outcome, Recorder, Response, Tally, classify,
};
use crate::report::{Check, ClientCpu, LatencySummary, Outcomes, Report, TargetFigures};
use crate::retry::{RetryPolicy, is_retryable};
use crate::target::Target;

/// Code counted when a `2xx` body is not what the contract says.
pub const UNDECODABLE_CODE: &str = "client:undecodable_answer";

/// How long a scenario's deal stays open after it starts.
pub const DEAL_OPEN_FOR: Duration = Duration::from_secs(3_600);

/// How long a hold lasts, in seconds, for deals made here.
pub const HOLD_SECONDS: u64 = 120;

/// Everything a scenario needs about where and how to run.
#[derive(Debug, Clone)]
pub struct Context {
    /// The first target: setup and the scenario's own reads go there.
    pub target: Arc<Target>,
    /// Every target, the first included, in `--target` order: the load
    /// spreads over them and the checks read each.
    pub targets: Arc<[Arc<Target>]>,
    pub admin: HeaderValue,
    pub connections: usize,
    pub timeout: Duration,
    pub progress: Progress,
    pub database_url: Option<String>,
    pub meter: Arc<CpuMeter>,
    /// `--platform-key`: shoppers are the platform's users.
    pub platform: Option<Arc<crate::platform::Platform>>,
}

/// Accounts and the deal made for one run.
#[derive(Debug)]
pub struct Setup {
    pub merchant_auth: HeaderValue,
    pub shoppers: Arc<Vec<Shopper>>,
    pub deal: Deal,
}

/// What the scenario asks of setup.
#[derive(Debug, Clone)]
pub struct SetupPlan {
    pub shoppers: usize,
    pub credit: Decimal,
}

impl Context {
    /// The report's setting naming what the taps carry when the shoppers
    /// are a platform's users (`platform_auth`: `exchange` or `jwt`), so
    /// that two runs' reports say which each measured; `None` for the
    /// admin's bulk shoppers.
    pub fn platform_setting(&self) -> Option<(String, serde_json::Value)> {
        let platform = self.platform.as_ref()?;
        let auth = match platform.auth {
            crate::platform::PlatformAuth::Exchange => "exchange",
            crate::platform::PlatformAuth::Jwt => "jwt",
        };
        Some(("platform_auth".to_owned(), serde_json::json!(auth)))
    }

    /// A connection to the first target, for setup and check calls.
    pub fn connection(&self) -> Connection {
        Connection::new(self.target.clone(), self.timeout)
    }

    /// Per worker, one open connection to each target (a failed one is
    /// left to reconnect on its first request, where the failure is
    /// counted).
    pub async fn warm_connections(&self) -> Vec<Connections> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..self.connections {
            let mut connection = Connections::new(&self.targets, self.timeout);
            set.spawn(async move {
                connection.warm_up().await;
                connection
            });
        }
        let mut connections = Vec::with_capacity(self.connections);
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(connection) => connections.push(connection),
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            }
        }
        connections
    }

    /// Makes the merchant, the shoppers (wallets funded) and the deal.
    ///
    /// The deal is described by `deal` only once the shoppers exist, so
    /// that its start time can be relative to the end of a long setup.
    pub async fn set_up(
        &self,
        plan: &SetupPlan,
        run_id: &str,
        deal: impl FnOnce() -> NewDeal,
    ) -> Result<Setup, LoadtestError> {
        let mut connection = self.connection();
        let merchant: Merchant =
            api::create_merchant(&mut connection, &self.admin, &format!("loadtest-{run_id}"))
                .await?;
        let merchant_auth = api::bearer(&merchant.token)?;
        let started = Instant::now();
        self.progress.phase(format!(
            "creating {} shoppers with {} each",
            crate::report::grouped(plan.shoppers as u64),
            api::money_text(plan.credit)
        ));
        let shoppers = match &self.platform {
            None => {
                api::create_shoppers(
                    &self.target,
                    self.timeout,
                    &self.admin,
                    plan.shoppers,
                    plan.credit,
                )
                .await?
            }
            Some(platform) => {
                crate::platform::create_shoppers(
                    &self.target,
                    self.timeout,
                    &self.admin,
                    platform,
                    run_id,
                    plan.shoppers,
                    plan.credit,
                )
                .await?
            }
        };
        self.progress.phase(format!(
            "shoppers ready in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        let deal = api::create_deal(&mut connection, &merchant_auth, &deal()).await?;
        Ok(Setup {
            merchant_auth,
            shoppers: Arc::new(shoppers),
            deal,
        })
    }

    /// Reads back the deal, its orders and every wallet from every
    /// target, checks each target's view against itself and against what
    /// the client saw, and, with several targets, that they all show the
    /// same ([`checks::agreement`]; a target that cannot be read fails
    /// that check). When no target can be read the run fails with
    /// [`LoadtestError::Node`], naming the first.
    pub async fn verify(
        &self,
        setup: &Setup,
        acknowledged: &[Acknowledged],
        orders_per_shopper_max: Option<usize>,
    ) -> Result<Vec<Check>, LoadtestError> {
        let mut views = Vec::with_capacity(self.targets.len());
        let mut unread = Vec::new();
        for target in self.targets.iter() {
            self.progress
                .phase(format!("checking invariants on {}", target.url));
            match self.read_view(target, setup, acknowledged.len()).await {
                Ok(view) => views.push(view),
                Err(source) => unread.push((target.url.clone(), source)),
            }
        }
        if views.is_empty() {
            return Err(match unread.into_iter().next() {
                Some((url, source)) => LoadtestError::Node {
                    url,
                    source: Box::new(source),
                },
                None => LoadtestError::Config("--target is given at least once".to_owned()),
            });
        }
        let evaluated: Vec<(String, Vec<Check>)> = views
            .iter()
            .map(|view| {
                let checks = checks::evaluate(&Evidence {
                    deal: &view.deal,
                    orders: &view.orders,
                    wallets: &view.wallets,
                    shoppers: &setup.shoppers,
                    acknowledged,
                    orders_per_shopper_max,
                });
                (view.url.clone(), checks)
            })
            .collect();
        let mut checks = checks::on_every_node(evaluated);
        if self.targets.len() > 1 {
            let unread: Vec<String> = unread
                .iter()
                .map(|(url, error)| format!("{url} cannot be read: {error}"))
                .collect();
            checks.push(checks::agreement(&views, &unread));
        }
        if let (Some(url), Some(first)) = (&self.database_url, views.first()) {
            checks.push(
                checks::postgres_check(url, &first.deal.id, acknowledged, &first.orders).await?,
            );
        }
        Ok(checks)
    }

    /// One target's account of the run: the deal, its orders, and the
    /// wallet of every scenario shopper.
    async fn read_view(
        &self,
        target: &Arc<Target>,
        setup: &Setup,
        acknowledged: usize,
    ) -> Result<checks::View, LoadtestError> {
        let mut connection = Connection::new(target.clone(), self.timeout);
        let deal = api::get_deal(&mut connection, &setup.deal.id).await?;
        // Room for an oversold deal to show itself, but not without end.
        let orders_max = usize::try_from(deal.stock.max(deal.sold))
            .unwrap_or(usize::MAX)
            .saturating_mul(2)
            .saturating_add(acknowledged);
        let orders =
            api::list_orders(&mut connection, &setup.merchant_auth, &deal.id, orders_max).await?;
        let wallets = api::wallets(target, self.timeout, self.connections, &setup.shoppers).await?;
        Ok(checks::View {
            url: target.url.clone(),
            deal,
            orders,
            wallets,
        })
    }
}

/// A new deal's times: starting at `starts_at`, open for [`DEAL_OPEN_FOR`].
pub fn deal_times(starts_at: SystemTime) -> (SystemTime, SystemTime) {
    (starts_at, starts_at.max(SystemTime::now()) + DEAL_OPEN_FOR)
}

/// Credit that lets a shopper buy up to the per-user limit.
pub fn default_credit(price: Decimal, per_user_limit: u64) -> Decimal {
    price * Decimal::from(per_user_limit)
}

/// A short random id that keeps this run's names and keys apart from any
/// earlier run against the same server.
pub fn run_id() -> String {
    crate::spawn::random_hex(6)
}

#[derive(Deserialize)]
struct Created<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

/// The `id` of a `201` body (order or hold).
pub fn created_id(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Created<'_>>(body)
        .ok()
        .map(|created| created.id.into_owned())
}

/// What became of one attempt.
pub enum Concluded<T> {
    /// Retry later: hand this back to the scheduler.
    Again(Disposition<T>),
    /// The operation is over.
    Over,
}

/// Records one attempt, sent to target `target`, and decides: retry (503,
/// 429, no answer, attempts left) or final. `order_of` names the order a
/// `201` acknowledged, if the operation creates orders; `Err` means the
/// `201` body was unreadable.
pub fn conclude<T>(
    recorder: &Recorder,
    policy: &RetryPolicy,
    rng: &mut fastrand::Rng,
    mut job: Job<T>,
    target: usize,
    result: Result<Answer, TransportError>,
    order_of: impl FnOnce(&Answer) -> Result<Option<Acknowledged>, ()>,
) -> Concluded<T> {
    job.attempts += 1;
    let now = Instant::now();
    let retry_allowed = policy.allows_another(job.attempts);
    let answer = match result {
        Err(error) => {
            let response = Response::Transport(&error);
            if retry_allowed {
                recorder.record(now, target, response, None);
                recorder.retry();
                let at = now + policy.delay(job.attempts, None, rng);
                return Concluded::Again(Disposition::RetryAt(at, job));
            }
            let last = Final {
                scheduled: job.scheduled,
                outcome: Outcome::Error,
                order: None,
            };
            recorder.record(now, target, response, Some(last));
            return Concluded::Over;
        }
        Ok(answer) => answer,
    };
    let status = answer.status;
    let code = if status.is_success() {
        None
    } else {
        api::error_code(&answer.body)
    };
    let response = Response::Http {
        status,
        code: code.as_deref(),
    };
    if is_retryable(status) && retry_allowed {
        recorder.record(now, target, response, None);
        recorder.retry();
        let at = now + policy.delay(job.attempts, answer.retry_after, rng);
        return Concluded::Again(Disposition::RetryAt(at, job));
    }
    let mut outcome = classify(status, code.as_deref());
    let mut order = None;
    let mut undecodable = false;
    if status == StatusCode::CREATED {
        match order_of(&answer) {
            Ok(acknowledged) => order = acknowledged,
            Err(()) => {
                outcome = Outcome::Error;
                undecodable = true;
            }
        }
    }
    let response = if undecodable {
        Response::Http {
            status,
            code: Some(UNDECODABLE_CODE),
        }
    } else {
        response
    };
    let last = Final {
        scheduled: job.scheduled,
        outcome,
        order,
    };
    recorder.record(now, target, response, Some(last));
    Concluded::Over
}

/// The load phase's measurements, ready for the report.
#[derive(Debug)]
pub struct Measured {
    pub tally: Tally,
    /// CPU the load generator used, user and system together.
    pub cpu: Duration,
    /// From T0 to the end of the load phase.
    pub wall: Duration,
}

/// Ends the load phase: closes the recorder and reads the CPU meter.
pub fn measured(recorder: &Recorder, cpu_before: Duration, meter: &CpuMeter) -> Measured {
    let end = Instant::now();
    let cpu = meter.sample().saturating_sub(cpu_before);
    Measured {
        tally: recorder.finish(end),
        cpu,
        wall: end.saturating_duration_since(recorder.origin()),
    }
}

/// Assembles the report of a finished run on `targets`, with no offered
/// rate (the scenario sets it, if it planned one).
pub fn report(
    scenario: &str,
    targets: &[Arc<Target>],
    settings: BTreeMap<String, serde_json::Value>,
    recorder: &Recorder,
    measured: &Measured,
    by_operation: BTreeMap<String, u64>,
    checks: Vec<Check>,
) -> Report {
    let c = &recorder.counters;
    let tally = &measured.tally;
    let requests = Counters::get(&c.sent);
    let answered = Counters::get(&c.answered);
    let outcomes = Outcomes {
        ok: Counters::get(&c.ok),
        sold_out: Counters::get(&c.sold_out),
        refused: Counters::get(&c.refused),
        errors: Counters::get(&c.errors),
    };
    let duration = tally
        .last_answer
        .unwrap_or(measured.wall)
        .max(Duration::from_micros(1));
    // The server's rate: from the first request out to the last answer in.
    let first_sent = recorder.first_sent().map_or(Duration::ZERO, |at| {
        at.saturating_duration_since(recorder.origin())
    });
    let answering = duration
        .saturating_sub(first_sent)
        .max(Duration::from_micros(1));
    Report {
        scenario: scenario.to_owned(),
        targets: targets.iter().map(|target| target.url.clone()).collect(),
        settings,
        duration_seconds: duration.as_secs_f64(),
        operations: outcomes.ok + outcomes.sold_out + outcomes.refused + outcomes.errors,
        requests,
        answered,
        retries: Counters::get(&c.retries),
        transport_errors: Counters::get(&c.transport_errors),
        timeouts: Counters::get(&c.timeouts),
        outcomes,
        offered: None,
        answered_per_second: answered as f64 / answering.as_secs_f64(),
        by_target: targets
            .iter()
            .zip(&recorder.by_target)
            .map(|(target, counts)| TargetFigures {
                url: target.url.clone(),
                sent: Counters::get(&counts.sent),
                answered: Counters::get(&counts.answered),
                no_answer: Counters::get(&counts.no_answer),
            })
            .collect(),
        latency_ms: LatencySummary::from_micros(&tally.latency),
        by_status: tally
            .by_status
            .iter()
            .map(|(status, count)| (status.to_string(), *count))
            .collect(),
        by_code: tally.by_code.clone(),
        by_operation,
        sold_out_after_seconds: tally.first_sold_out.map(|d| d.as_secs_f64()),
        last_sale_after_seconds: tally.last_sale.map(|d| d.as_secs_f64()),
        client_cpu: ClientCpu::new(measured.cpu, requests, measured.wall),
        timeline: tally.timeline.clone(),
        raffle: None,
        checks,
    }
}
