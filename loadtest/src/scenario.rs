//! What both scenarios share: the run's context, the setup through the
//! admin API, one attempt's bookkeeping, the checks after the load, and
//! the assembly of the [`Report`].

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
use crate::connection::{Answer, Connection};
use crate::cpu::{CpuMeter, CpuTimes};
use crate::error::{LoadtestError, TransportError};
use crate::open_loop::{Disposition, Job};
use crate::progress::Progress;
use crate::recorder::{
    Acknowledged, Counters, Final, Outcome, Recorder, Response, Tally, classify,
};
use crate::report::{Check, ClientCpu, LatencySummary, Outcomes, Report};
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
    pub target: Arc<Target>,
    pub admin: HeaderValue,
    pub connections: usize,
    pub timeout: Duration,
    pub progress: Progress,
    pub database_url: Option<String>,
    pub meter: Arc<CpuMeter>,
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
    /// A connection for setup and check calls.
    pub fn connection(&self) -> Connection {
        Connection::new(self.target.clone(), self.timeout)
    }

    /// One open connection per worker (a failed one is left to reconnect
    /// on its first request, where the failure is counted).
    pub async fn warm_connections(&self) -> Vec<Connection> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..self.connections {
            let mut connection = self.connection();
            set.spawn(async move {
                let _ = connection.warm_up().await;
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
        let shoppers = api::create_shoppers(
            &self.target,
            self.timeout,
            &self.admin,
            plan.shoppers,
            plan.credit,
        )
        .await?;
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

    /// Reads back the deal, its orders and every wallet, and checks them
    /// against each other and against what the client saw.
    pub async fn verify(
        &self,
        setup: &Setup,
        acknowledged: &[Acknowledged],
        orders_per_shopper_max: Option<usize>,
    ) -> Result<Vec<Check>, LoadtestError> {
        self.progress.phase("checking invariants");
        let mut connection = self.connection();
        let deal = api::get_deal(&mut connection, &setup.deal.id).await?;
        // Room for an oversold deal to show itself, but not without end.
        let orders_max = usize::try_from(deal.stock.max(deal.sold))
            .unwrap_or(usize::MAX)
            .saturating_mul(2)
            .saturating_add(acknowledged.len());
        let orders =
            api::list_orders(&mut connection, &setup.merchant_auth, &deal.id, orders_max).await?;
        let wallets = api::wallets(
            &self.target,
            self.timeout,
            self.connections,
            &setup.shoppers,
        )
        .await?;
        let mut checks = checks::evaluate(&Evidence {
            deal: &deal,
            orders: &orders,
            wallets: &wallets,
            shoppers: &setup.shoppers,
            acknowledged,
            orders_per_shopper_max,
        });
        if let Some(url) = &self.database_url {
            checks.push(checks::postgres_check(url, &deal.id, acknowledged, &orders).await?);
        }
        Ok(checks)
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

/// Records one attempt and decides: retry (503, 429, no answer, attempts
/// left) or final. `order_of` names the order a `201` acknowledged, if the
/// operation creates orders; `Err` means the `201` body was unreadable.
pub fn conclude<T>(
    recorder: &Recorder,
    policy: &RetryPolicy,
    rng: &mut fastrand::Rng,
    mut job: Job<T>,
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
                recorder.record(now, response, None);
                recorder.retry();
                let at = now + policy.delay(job.attempts, None, rng);
                return Concluded::Again(Disposition::RetryAt(at, job));
            }
            let last = Final {
                scheduled: job.scheduled,
                outcome: Outcome::Error,
                order: None,
            };
            recorder.record(now, response, Some(last));
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
        recorder.record(now, response, None);
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
    recorder.record(now, response, Some(last));
    Concluded::Over
}

/// The load phase's measurements, ready for the report.
#[derive(Debug)]
pub struct Measured {
    pub tally: Tally,
    pub cpu: CpuTimes,
    /// From T0 to the end of the load phase.
    pub wall: Duration,
}

/// Ends the load phase: closes the recorder and reads the CPU meter.
pub fn measured(recorder: &Recorder, cpu_before: CpuTimes, meter: &CpuMeter) -> Measured {
    let end = Instant::now();
    let cpu = meter.sample().since(cpu_before);
    Measured {
        tally: recorder.finish(end),
        cpu,
        wall: end.saturating_duration_since(recorder.origin()),
    }
}

/// Assembles the report of a finished run.
pub fn report(
    scenario: &str,
    target: &Target,
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
    Report {
        scenario: scenario.to_owned(),
        target: target.url.clone(),
        settings,
        duration_seconds: duration.as_secs_f64(),
        operations: outcomes.ok + outcomes.sold_out + outcomes.refused + outcomes.errors,
        requests,
        answered,
        retries: Counters::get(&c.retries),
        transport_errors: Counters::get(&c.transport_errors),
        timeouts: Counters::get(&c.timeouts),
        outcomes,
        throughput_per_second: answered as f64 / duration.as_secs_f64(),
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
        client_cpu: ClientCpu::new(
            measured.cpu.user,
            measured.cpu.system,
            requests,
            measured.wall,
        ),
        timeline: tally.timeline.clone(),
        raffle: None,
        checks,
    }
}
