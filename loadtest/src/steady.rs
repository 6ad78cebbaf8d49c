//! The steady scenario: a constant open-loop arrival rate of mixed
//! operations for a fixed time.
//!
//! Operation `i` is due at `T0 + i / rate`, whether or not the ones before
//! it have been answered, and its latency counts from that instant, so a
//! server stall shows as the queue it causes (no coordinated omission).
//! The mix draws from: buy (`POST /v1/deals/{id}/orders`), hold
//! (`POST /v1/deals/{id}/holds`), pay a held unit
//! (`POST /v1/holds/{id}/payment`), release one (`DELETE /v1/holds/{id}`)
//! and read the feed (`GET /v1/feed`). Pay and release take the oldest
//! open hold from a bounded pool ([`OPEN_HOLDS_MAX`]); with none open they
//! read the feed instead, and are counted as what they did. Operation `i`
//! goes to target `i mod n` of the `n` targets, and each retry to the next.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Uri};
use parking_lot::Mutex;
use serde_json::json;
use tokio::time::Instant;

use crate::api::{self, NewDeal, Shopper};
use crate::args::{Mix, SteadyArgs};
use crate::connection::{Call, Connections};
use crate::error::LoadtestError;
use crate::open_loop::{self, Disposition, Job, Worker};
use crate::recorder::{Acknowledged, Recorder};
use crate::report::{OfferedRate, Report, grouped};
use crate::retry::RetryPolicy;
use crate::scenario::{self, Concluded, Context, SetupPlan};

/// Timeline resolution of a steady run.
pub const STEADY_TIMELINE_INTERVAL: Duration = Duration::from_secs(1);

/// Time between the end of setup and T0.
pub const STEADY_LEAD: Duration = Duration::from_millis(100);

/// Most open holds remembered for later pays and releases; holds made
/// beyond it are left to expire.
pub const OPEN_HOLDS_MAX: usize = 100_000;

/// Cards asked of each feed read.
pub const FEED_PAGE_LIMIT: usize = 20;

/// An operation as planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    Buy { shopper: usize },
    Hold { shopper: usize },
    Pay,
    Release,
    Feed,
}

/// An operation as run (pay and release know their hold after the first
/// attempt, so a retry acts on the same one); `index` is its place in the
/// plan.
#[derive(Debug, Clone)]
pub enum Operation {
    Planned { index: u64, planned: Planned },
    Pay { index: u64, hold: OpenHold },
    Release { index: u64, hold: OpenHold },
}

impl Operation {
    /// Its place in the plan, which spreads the operations over targets.
    fn index(&self) -> u64 {
        match self {
            Operation::Planned { index, .. }
            | Operation::Pay { index, .. }
            | Operation::Release { index, .. } => *index,
        }
    }
}

/// A hold the client made and has not paid or released.
#[derive(Debug, Clone)]
pub struct OpenHold {
    pub id: String,
    pub shopper: usize,
}

const KINDS: [&str; 5] = ["buy", "hold", "pay", "release", "feed"];

fn kind_index(kind: &str) -> usize {
    KINDS.iter().position(|known| *known == kind).unwrap_or(4)
}

/// Picks an operation by the mix's weights.
pub fn pick(mix: &Mix, shoppers: usize, rng: &mut fastrand::Rng) -> Planned {
    let mut roll = rng.u32(0..mix.total());
    let shopper = rng.usize(0..shoppers.max(1));
    for (weight, planned) in [
        (mix.buy, Planned::Buy { shopper }),
        (mix.hold, Planned::Hold { shopper }),
        (mix.pay, Planned::Pay),
        (mix.release, Planned::Release),
    ] {
        if roll < weight {
            return planned;
        }
        roll -= weight;
    }
    Planned::Feed
}

/// The URIs of one target.
struct Uris {
    orders: Uri,
    holds: Uri,
    feed: Uri,
    target: Arc<crate::target::Target>,
}

struct Shared {
    shoppers: Arc<Vec<Shopper>>,
    /// Per target, in `--target` order.
    uris: Vec<Uris>,
    body: Bytes,
    run_id: String,
    recorder: Arc<Recorder>,
    policy: RetryPolicy,
    open_holds: Mutex<VecDeque<OpenHold>>,
    performed: [AtomicU64; 5],
}

struct Operator {
    connections: Connections,
    shared: Arc<Shared>,
    rng: fastrand::Rng,
}

/// What one attempt sends.
struct Request {
    kind: &'static str,
    method: Method,
    uri: Uri,
    shopper: Option<usize>,
    key: Option<HeaderValue>,
    body: Bytes,
}

impl Operator {
    /// Turns a planned pay or release into one on a real hold.
    fn bind_hold(&self, operation: Operation) -> Operation {
        match operation {
            Operation::Planned {
                planned: Planned::Pay,
                index,
            } => match self.shared.open_holds.lock().pop_front() {
                Some(hold) => Operation::Pay { index, hold },
                None => Operation::Planned {
                    index,
                    planned: Planned::Feed,
                },
            },
            Operation::Planned {
                planned: Planned::Release,
                index,
            } => match self.shared.open_holds.lock().pop_front() {
                Some(hold) => Operation::Release { index, hold },
                None => Operation::Planned {
                    index,
                    planned: Planned::Feed,
                },
            },
            other => other,
        }
    }

    /// What `operation` sends to target `target`.
    fn request(&self, operation: &Operation, target: usize) -> Request {
        let shared = &*self.shared;
        let uris = &shared.uris[target];
        let key = |prefix: &str, index: u64| {
            HeaderValue::try_from(format!("{}-{prefix}{index}", shared.run_id)).ok()
        };
        let hold_uri = |hold: &OpenHold, suffix: &str| {
            let path = format!("/v1/holds/{}{suffix}", api::path_segment(&hold.id));
            uris.target.uri(&path).unwrap_or_else(|_| uris.feed.clone())
        };
        match operation {
            Operation::Planned { index, planned } => match *planned {
                Planned::Buy { shopper } => Request {
                    kind: "buy",
                    method: Method::POST,
                    uri: uris.orders.clone(),
                    shopper: Some(shopper),
                    key: key("b", *index),
                    body: shared.body.clone(),
                },
                Planned::Hold { shopper } => Request {
                    kind: "hold",
                    method: Method::POST,
                    uri: uris.holds.clone(),
                    shopper: Some(shopper),
                    key: key("h", *index),
                    body: shared.body.clone(),
                },
                // Unbound pay and release (no open hold) read the feed.
                Planned::Pay | Planned::Release | Planned::Feed => Request {
                    kind: "feed",
                    method: Method::GET,
                    uri: uris.feed.clone(),
                    shopper: None,
                    key: None,
                    body: Bytes::new(),
                },
            },
            Operation::Pay { hold, .. } => Request {
                kind: "pay",
                method: Method::POST,
                uri: hold_uri(hold, "/payment"),
                shopper: Some(hold.shopper),
                key: None,
                body: Bytes::new(),
            },
            Operation::Release { hold, .. } => Request {
                kind: "release",
                method: Method::DELETE,
                uri: hold_uri(hold, ""),
                shopper: Some(hold.shopper),
                key: None,
                body: Bytes::new(),
            },
        }
    }
}

impl Worker for Operator {
    type Payload = Operation;

    async fn handle(&mut self, mut job: Job<Operation>) -> Disposition<Operation> {
        if job.attempts == 0 {
            job.payload = self.bind_hold(job.payload);
        }
        let spread = usize::try_from(job.payload.index()).unwrap_or(usize::MAX);
        let target = crate::target::pick(spread, job.attempts, self.connections.count());
        let request = self.request(&job.payload, target);
        let shared = self.shared.clone();
        shared.recorder.sent(target);
        let result = self
            .connections
            .to(target)
            .send(Call {
                method: request.method,
                uri: request.uri,
                auth: request
                    .shopper
                    .map(|shopper| &shared.shoppers[shopper].auth),
                idempotency_key: request.key,
                body: request.body,
            })
            .await;
        let kind = request.kind;
        let shopper = request.shopper;
        let concluded = scenario::conclude(
            &shared.recorder,
            &shared.policy,
            &mut self.rng,
            job,
            target,
            result,
            |answer| match (kind, shopper) {
                ("buy" | "pay", Some(shopper)) => scenario::created_id(&answer.body)
                    .map(|order_id| Some(Acknowledged { order_id, shopper }))
                    .ok_or(()),
                ("hold", Some(shopper)) => {
                    let id = scenario::created_id(&answer.body).ok_or(())?;
                    let mut holds = shared.open_holds.lock();
                    if holds.len() < OPEN_HOLDS_MAX {
                        holds.push_back(OpenHold { id, shopper });
                    }
                    Ok(None)
                }
                _ => Ok(None),
            },
        );
        match concluded {
            Concluded::Again(retry) => retry,
            Concluded::Over => {
                shared.performed[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
                Disposition::Done
            }
        }
    }
}

/// Runs the steady scenario and checks its deal's invariants.
pub async fn run(context: &Context, args: &SteadyArgs) -> Result<Report, LoadtestError> {
    let run_id = scenario::run_id();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let credit = args
        .credit
        .unwrap_or_else(|| scenario::default_credit(args.price, args.per_user_limit));
    let plan = SetupPlan {
        shoppers: args.shoppers,
        credit,
    };
    let setup = context
        .set_up(&plan, &run_id, || {
            let (starts_at, ends_at) =
                scenario::deal_times(SystemTime::now() - Duration::from_secs(60));
            NewDeal {
                title: format!("loadtest steady {run_id}"),
                price: args.price,
                stock: args.stock,
                per_user_limit: args.per_user_limit,
                starts_at,
                ends_at,
                requires_registration: false,
                hold_seconds: scenario::HOLD_SECONDS,
                raffle: false,
            }
        })
        .await?;

    let connections = context.warm_connections().await;
    let t0 = Instant::now() + STEADY_LEAD;
    let recorder = Arc::new(Recorder::new(
        t0,
        STEADY_TIMELINE_INTERVAL,
        context.targets.len(),
    ));
    let deal_path = format!("/v1/deals/{}", api::path_segment(&setup.deal.id));
    let uris = context
        .targets
        .iter()
        .map(|target| {
            Ok(Uris {
                orders: target.uri(&format!("{deal_path}/orders"))?,
                holds: target.uri(&format!("{deal_path}/holds"))?,
                feed: target.uri(&format!("/v1/feed?limit={FEED_PAGE_LIMIT}"))?,
                target: target.clone(),
            })
        })
        .collect::<Result<Vec<_>, LoadtestError>>()?;
    let shared = Arc::new(Shared {
        shoppers: setup.shoppers.clone(),
        uris,
        body: Bytes::from(format!("{{\"quantity\":{}}}", args.quantity)),
        run_id,
        recorder: recorder.clone(),
        policy: RetryPolicy::new(args.max_attempts),
        open_holds: Mutex::new(VecDeque::new()),
        performed: Default::default(),
    });
    let operators: Vec<Operator> = connections
        .into_iter()
        .enumerate()
        .map(|(index, connections)| Operator {
            connections,
            shared: shared.clone(),
            rng: fastrand::Rng::with_seed(seed.wrapping_add(index as u64 + 1)),
        })
        .collect();

    let operations = args.operations();
    context.progress.phase(format!(
        "{} operations/s for {:?} ({} in all) on {} connections",
        grouped(args.rate),
        args.duration,
        grouped(operations),
        operators.len()
    ));
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mix, shoppers, rate) = (args.mix, args.shoppers, args.rate);
    let plan = (0..operations).map(move |index| {
        let offset = Duration::from_nanos(
            u64::try_from(u128::from(index) * 1_000_000_000 / u128::from(rate)).unwrap_or(u64::MAX),
        );
        let planned = pick(&mix, shoppers, &mut rng);
        (t0 + offset, Operation::Planned { index, planned })
    });
    tokio::time::sleep_until(t0).await;
    let cpu_before = context.meter.sample();
    let bar = context.progress.start(operations, recorder.clone());
    open_loop::run(plan, operators).await;
    let measured = scenario::measured(&recorder, cpu_before, &context.meter);
    bar.stop();

    let checks = context
        .verify(&setup, &measured.tally.acknowledged, None)
        .await?;
    let by_operation = KINDS
        .iter()
        .zip(&shared.performed)
        .map(|(kind, count)| ((*kind).to_owned(), count.load(Ordering::Relaxed)))
        .filter(|(_, count)| *count > 0)
        .collect();
    let mut settings = BTreeMap::from([
        ("rate".to_owned(), json!(args.rate)),
        (
            "duration_seconds".to_owned(),
            json!(args.duration.as_secs_f64()),
        ),
        ("shoppers".to_owned(), json!(args.shoppers)),
        ("stock".to_owned(), json!(args.stock)),
        ("per_user_limit".to_owned(), json!(args.per_user_limit)),
        ("connections".to_owned(), json!(context.connections)),
        ("max_attempts".to_owned(), json!(args.max_attempts)),
        (
            "mix".to_owned(),
            json!({
                "buy": mix.buy,
                "hold": mix.hold,
                "pay": mix.pay,
                "release": mix.release,
                "feed": mix.feed,
            }),
        ),
        ("seed".to_owned(), json!(seed)),
        ("deal".to_owned(), json!(setup.deal.id)),
    ]);
    settings.extend(context.platform_setting());
    let mut report = scenario::report(
        "steady",
        &context.targets,
        settings,
        &recorder,
        &measured,
        by_operation,
        checks,
    );
    report.offered = Some(OfferedRate {
        per_second: args.rate as f64,
        basis: "--rate".to_owned(),
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_followed() {
        let mix: Mix = "buy=50,hold=15,pay=10,release=5,feed=20"
            .parse()
            .expect("valid");
        let mut rng = fastrand::Rng::with_seed(42);
        let mut counts = [0u32; 5];
        for _ in 0..100_000 {
            let index = match pick(&mix, 10, &mut rng) {
                Planned::Buy { shopper } | Planned::Hold { shopper } if shopper >= 10 => {
                    panic!("shopper out of range")
                }
                Planned::Buy { .. } => 0,
                Planned::Hold { .. } => 1,
                Planned::Pay => 2,
                Planned::Release => 3,
                Planned::Feed => 4,
            };
            counts[index] += 1;
        }
        for (count, weight) in counts.iter().zip([50, 15, 10, 5, 20]) {
            let expected = 1_000 * weight;
            assert!(count.abs_diff(expected) < expected / 10, "{counts:?}");
        }
    }
}
