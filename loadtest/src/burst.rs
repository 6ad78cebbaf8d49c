//! The burst: every shopper taps Buy once, all within a short ramp after
//! T0, as when a phone maker's flash sale opens.
//!
//! Setup makes a merchant, a deal of `stock` units and `shoppers` funded
//! accounts (optionally registered for the deal, which then starts a few
//! seconds later). Each tap is scheduled at T0 plus a uniform random offset
//! within the ramp; latency counts from that instant. Shopper `i` taps on
//! target `i mod n` of the `n` targets. A tap that gets `503`, `429` or no
//! answer is retried with the same Idempotency-Key after a jittered
//! backoff, on the next target, like a real client behind a load balancer;
//! any other answer ends it. After the last tap the invariants are
//! checked on every target; every shopper tapped once, so none may own
//! more than one order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Uri};
use serde_json::json;
use tokio::time::Instant;

use crate::api::{self, NewDeal, Shopper};
use crate::args::BurstArgs;
use crate::connection::{Call, Connections};
use crate::error::LoadtestError;
use crate::open_loop::{self, Disposition, Job, Worker};
use crate::recorder::{Acknowledged, Recorder};
use crate::report::{OfferedRate, Report, grouped};
use crate::retry::RetryPolicy;
use crate::scenario::{self, Concluded, Context, SetupPlan};

/// Timeline resolution of a burst: short, because a burst is.
pub const BURST_TIMELINE_INTERVAL: Duration = Duration::from_millis(100);

/// Time between the end of setup and T0 (without registration), for the
/// workers to open their connections.
pub const BURST_LEAD: Duration = Duration::from_millis(300);

/// Lead of a registration deal beyond the time registering takes.
pub const REGISTRATION_LEAD_MIN: Duration = Duration::from_secs(3);

/// Registrations per second assumed when choosing the default lead: low,
/// because a deal that starts before everyone registered spoils the run.
pub const REGISTRATIONS_PER_SECOND_ESTIMATE: u64 = 5_000;

/// Taps start this long after the deal's `starts_at`, so that no tap is
/// early by the server's clock.
pub const START_MARGIN: Duration = Duration::from_millis(20);

/// Registration must end at least this long before the deal starts.
pub const REGISTRATION_MARGIN: Duration = Duration::from_millis(500);

struct Shared {
    shoppers: Arc<Vec<Shopper>>,
    /// The deal's orders URI on each target.
    orders_uris: Vec<Uri>,
    body: Bytes,
    run_id: String,
    recorder: Arc<Recorder>,
    policy: RetryPolicy,
}

/// One worker's worth of shoppers tapping, with a connection to each
/// target.
struct Tapper {
    connections: Connections,
    shared: Arc<Shared>,
    rng: fastrand::Rng,
}

impl Worker for Tapper {
    /// The shopper's index.
    type Payload = usize;

    async fn handle(&mut self, job: Job<usize>) -> Disposition<usize> {
        let shared = &*self.shared;
        let shopper = job.payload;
        // The key is derived from the run and the shopper: one tap, one
        // key, the same on every retry.
        let key = HeaderValue::try_from(format!("{}-{shopper}", shared.run_id)).ok();
        let target = crate::target::pick(shopper, job.attempts, self.connections.count());
        shared.recorder.sent(target);
        let result = self
            .connections
            .to(target)
            .send(Call {
                method: Method::POST,
                uri: shared.orders_uris[target].clone(),
                auth: Some(&shared.shoppers[shopper].auth),
                idempotency_key: key,
                body: shared.body.clone(),
            })
            .await;
        let concluded = scenario::conclude(
            &shared.recorder,
            &shared.policy,
            &mut self.rng,
            job,
            target,
            result,
            |answer| {
                scenario::created_id(&answer.body)
                    .map(|order_id| Some(Acknowledged { order_id, shopper }))
                    .ok_or(())
            },
        );
        match concluded {
            Concluded::Again(retry) => retry,
            Concluded::Over => Disposition::Done,
        }
    }
}

/// The default lead of a registration deal for `shoppers` shoppers.
pub fn registration_lead(shoppers: usize) -> Duration {
    REGISTRATION_LEAD_MIN + Duration::from_secs(shoppers as u64 / REGISTRATIONS_PER_SECOND_ESTIMATE)
}

/// `now + lead`, rounded up to a whole second (the deal's `starts_at` is
/// sent with whole seconds).
pub(crate) fn whole_second_after(now: SystemTime, lead: Duration) -> SystemTime {
    let at = (now + lead).duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = at.as_secs() + u64::from(at.subsec_nanos() > 0);
    UNIX_EPOCH + Duration::from_secs(seconds)
}

/// The instant on the monotonic clock that corresponds to `at`.
pub(crate) fn instant_of(at: SystemTime) -> Instant {
    let now = Instant::now();
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => now + ahead,
        Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
    }
}

/// Registers every shopper of `setup` for its deal, concurrently on the
/// context's connections; fails with [`LoadtestError::RegistrationTooSlow`]
/// unless that ends [`REGISTRATION_MARGIN`] before `starts_at`.
pub(crate) async fn register_in_time(
    context: &Context,
    setup: &scenario::Setup,
    starts_at: SystemTime,
) -> Result<(), LoadtestError> {
    let shoppers = setup.shoppers.len();
    context.progress.phase(format!(
        "registering {} shoppers; the deal starts at {}",
        grouped(shoppers as u64),
        humantime::format_rfc3339_seconds(starts_at)
    ));
    api::register_all(
        &context.target,
        context.timeout,
        context.connections,
        &setup.shoppers,
        &setup.deal.id,
    )
    .await?;
    if SystemTime::now() + REGISTRATION_MARGIN > starts_at {
        return Err(LoadtestError::RegistrationTooSlow {
            shoppers,
            margin: REGISTRATION_MARGIN,
        });
    }
    Ok(())
}

/// Runs a burst and checks the invariants.
pub async fn run(context: &Context, args: &BurstArgs) -> Result<Report, LoadtestError> {
    let (shopper_count, stock) = args.sizes();
    let run_id = scenario::run_id();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let credit = args
        .credit
        .unwrap_or_else(|| scenario::default_credit(args.price, args.per_user_limit));
    let lead = args
        .start_in
        .unwrap_or_else(|| registration_lead(shopper_count));
    let plan = SetupPlan {
        shoppers: shopper_count,
        credit,
    };
    let mut deal_start = None;
    let setup = context
        .set_up(&plan, &run_id, || {
            let starts_at = if args.register {
                whole_second_after(SystemTime::now(), lead)
            } else {
                SystemTime::now() - Duration::from_secs(60)
            };
            deal_start = Some(starts_at);
            let (starts_at, ends_at) = scenario::deal_times(starts_at);
            NewDeal {
                title: format!("loadtest burst {run_id}"),
                price: args.price,
                stock,
                per_user_limit: args.per_user_limit,
                starts_at,
                ends_at,
                requires_registration: args.register,
                hold_seconds: scenario::HOLD_SECONDS,
                raffle: false,
            }
        })
        .await?;

    if args.register {
        register_in_time(context, &setup, deal_start.unwrap_or_else(SystemTime::now)).await?;
    }

    // Taps at uniform random offsets within the ramp, in time order.
    let mut rng = fastrand::Rng::with_seed(seed);
    let ramp_micros = u64::try_from(args.ramp.as_micros()).unwrap_or(u64::MAX);
    let mut taps: Vec<(u64, u32)> = (0..shopper_count)
        .map(|shopper| {
            let offset = if ramp_micros == 0 {
                0
            } else {
                rng.u64(0..ramp_micros)
            };
            (offset, u32::try_from(shopper).unwrap_or(u32::MAX))
        })
        .collect();
    taps.sort_unstable();

    let connections = context.warm_connections().await;
    let t0 = match deal_start {
        Some(starts_at) if args.register => instant_of(starts_at) + START_MARGIN,
        _ => Instant::now() + BURST_LEAD,
    };
    let recorder = Arc::new(Recorder::new(
        t0,
        BURST_TIMELINE_INTERVAL,
        context.targets.len(),
    ));
    let orders_path = format!("/v1/deals/{}/orders", api::path_segment(&setup.deal.id));
    let shared = Arc::new(Shared {
        shoppers: setup.shoppers.clone(),
        orders_uris: context
            .targets
            .iter()
            .map(|target| target.uri(&orders_path))
            .collect::<Result<_, _>>()?,
        body: Bytes::from(format!("{{\"quantity\":{}}}", args.quantity)),
        run_id: run_id.clone(),
        recorder: recorder.clone(),
        policy: RetryPolicy::new(args.max_attempts),
    });
    let tappers: Vec<Tapper> = connections
        .into_iter()
        .enumerate()
        .map(|(index, connections)| Tapper {
            connections,
            shared: shared.clone(),
            rng: fastrand::Rng::with_seed(seed.wrapping_add(index as u64 + 1)),
        })
        .collect();

    context.progress.phase(format!(
        "{} shoppers tap Buy for {} units within {:?} on {} connections to each of {} target(s)",
        grouped(shopper_count as u64),
        grouped(stock),
        args.ramp,
        tappers.len(),
        context.targets.len()
    ));
    tokio::time::sleep_until(t0).await;
    let cpu_before = context.meter.sample();
    let bar = context
        .progress
        .start(shopper_count as u64, recorder.clone());
    let plan = taps
        .into_iter()
        .map(move |(offset, shopper)| (t0 + Duration::from_micros(offset), shopper as usize));
    open_loop::run(plan, tappers).await;
    let measured = scenario::measured(&recorder, cpu_before, &context.meter);
    bar.stop();

    let checks = context
        .verify(&setup, &measured.tally.acknowledged, Some(1))
        .await?;
    let mut settings = BTreeMap::from([
        ("shoppers".to_owned(), json!(shopper_count)),
        ("stock".to_owned(), json!(stock)),
        ("per_user_limit".to_owned(), json!(args.per_user_limit)),
        ("quantity".to_owned(), json!(args.quantity)),
        ("price".to_owned(), json!(api::money_text(args.price))),
        ("ramp_seconds".to_owned(), json!(args.ramp.as_secs_f64())),
        ("register".to_owned(), json!(args.register)),
        ("connections".to_owned(), json!(context.connections)),
        ("max_attempts".to_owned(), json!(args.max_attempts)),
        ("seed".to_owned(), json!(seed)),
        ("deal".to_owned(), json!(setup.deal.id)),
    ]);
    settings.extend(context.platform_setting());
    let mut report = scenario::report(
        "burst",
        &context.targets,
        settings,
        &recorder,
        &measured,
        BTreeMap::new(),
        checks,
    );
    report.offered = offered_rate(shopper_count, args.ramp);
    Ok(report)
}

/// A burst's offered rate: its shoppers' taps spread over the ramp
/// (`shoppers ÷ ramp`), first attempts only; none for a zero ramp (every
/// tap at T0).
pub fn offered_rate(shoppers: usize, ramp: Duration) -> Option<OfferedRate> {
    (!ramp.is_zero()).then(|| OfferedRate {
        per_second: shoppers as f64 / ramp.as_secs_f64(),
        basis: "shoppers ÷ ramp".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_deals_start_on_a_whole_second_after_the_lead() {
        let now = UNIX_EPOCH + Duration::from_millis(1_000_250);
        assert_eq!(
            whole_second_after(now, Duration::from_secs(3)),
            UNIX_EPOCH + Duration::from_secs(1_004)
        );
        let exact = UNIX_EPOCH + Duration::from_secs(10);
        assert_eq!(whole_second_after(exact, Duration::ZERO), exact);
    }

    #[test]
    fn the_offered_rate_is_shoppers_over_the_ramp() {
        let offered = offered_rate(2_000, Duration::from_millis(500)).expect("a ramp");
        assert_eq!(offered.per_second, 4_000.0);
        assert_eq!(offered.basis, "shoppers ÷ ramp");
        assert_eq!(offered_rate(2_000, Duration::ZERO), None);
    }

    #[test]
    fn the_default_lead_grows_with_the_crowd() {
        assert_eq!(registration_lead(2_000), REGISTRATION_LEAD_MIN);
        assert_eq!(
            registration_lead(1_000_000),
            REGISTRATION_LEAD_MIN + Duration::from_secs(200)
        );
    }
}
