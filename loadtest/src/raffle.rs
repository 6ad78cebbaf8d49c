//! The raffle (docs/fair-draws.md): a registration wave, the
//! draw at `starts_at`, winners paying or letting their holds expire, and
//! the waitlist refilling until the stock is paid.
//!
//! Setup makes a merchant, `registrants` funded shoppers (the bulk admin
//! endpoint) and a raffle deal of `stock` units, one per winner, starting
//! after the time registering takes; every shopper then registers,
//! concurrently. After `starts_at` the client polls the public draw record
//! until it is drawn. It then follows the offers: each new offered rank is
//! mapped to its registrant with the engine's [`Ranker`] (an offer that
//! maps to nobody who registered is counted against the draw), the winner
//! reads its hold from `draw/me`, and pays it (measured, retried like a
//! tap) with probability `pay_fraction`, or lets it run out so that its
//! unit passes down the waitlist. This goes on until the stock is sold,
//! the waitlist is exhausted or `follow_for` passes.
//!
//! Checks: the common invariants (every winner one order at most), the
//! published draw recomputed by [`crate::verify_draw`], and that every
//! offer and every order belongs to one of the run's registrants.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flashsale_engine::{Digest, DrawSeed, Ranker};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::api::{self, NewDeal, Order, Shopper};
use crate::args::RaffleArgs;
use crate::burst;
use crate::connection::{Call, Connection};
use crate::error::LoadtestError;
use crate::open_loop::{Disposition, Job};
use crate::recorder::Recorder;
use crate::report::{Check, RaffleFigures, Report, grouped};
use crate::retry::RetryPolicy;
use crate::scenario::{self, Concluded, Context, SetupPlan};
use crate::verify_draw::{self, DrawPage, hex_decode};

/// Timeline resolution of a raffle: its payments come in waves one hold
/// period apart.
pub const RAFFLE_TIMELINE_INTERVAL: Duration = Duration::from_millis(250);

/// Pause between two looks at the draw record while waiting for the draw.
pub const DRAW_POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Longest wait for the draw after `starts_at` before the run fails
/// (the server's housekeeping runs it within a second or so).
pub const DRAW_WAIT_MAX: Duration = Duration::from_secs(60);

/// Pause between two rounds of following the offers.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// A winner's own result, from `GET /v1/deals/{id}/draw/me`.
#[derive(Debug, Deserialize)]
struct DrawMe {
    outcome: String,
    hold: Option<DrawHold>,
}

/// The hold a winner was offered.
#[derive(Debug, Deserialize)]
struct DrawHold {
    id: String,
    status: String,
}

/// What the payers share.
struct Payers {
    shoppers: Arc<Vec<Shopper>>,
    deal_id: String,
    recorder: Arc<Recorder>,
    policy: RetryPolicy,
    seed: u64,
}

/// What became of one new winner.
enum Turn {
    /// `draw/me` does not show the won hold the offer says it has.
    Mismatch,
    /// Paid (or tried to): the recorder has the outcome.
    Paid,
    /// Left to run out.
    LetGo(usize),
}

/// Reads `shopper`'s own result in the raffle.
async fn draw_me(
    connection: &mut Connection,
    shopper: &Shopper,
    deal_id: &str,
) -> Result<DrawMe, LoadtestError> {
    api::call(
        connection,
        "reading a winner's result",
        Method::GET,
        &format!("/v1/deals/{}/draw/me", api::path_segment(deal_id)),
        Some(&shopper.auth),
        None,
        &[StatusCode::OK],
    )
    .await
}

/// Pays `hold_id` for `shopper`, recorded as one operation and retried on
/// `503`, `429` and no answer like a tap.
async fn pay(
    connection: &mut Connection,
    payers: &Payers,
    shopper: usize,
    hold_id: &str,
) -> Result<(), LoadtestError> {
    let uri = connection
        .target()
        .uri(&format!("/v1/holds/{}/payment", api::path_segment(hold_id)))?;
    let mut rng = fastrand::Rng::with_seed(payers.seed.wrapping_add(shopper as u64));
    let mut job = Job {
        scheduled: Instant::now(),
        attempts: 0,
        payload: (),
    };
    loop {
        payers.recorder.sent(0);
        let result = connection
            .send(Call {
                method: Method::POST,
                uri: uri.clone(),
                auth: Some(&payers.shoppers[shopper].auth),
                idempotency_key: None,
                body: Bytes::new(),
            })
            .await;
        let concluded = scenario::conclude(
            &payers.recorder,
            &payers.policy,
            &mut rng,
            job,
            0,
            result,
            |answer| {
                scenario::created_id(&answer.body)
                    .map(|order_id| Some(crate::recorder::Acknowledged { order_id, shopper }))
                    .ok_or(())
            },
        );
        match concluded {
            Concluded::Again(Disposition::RetryAt(at, again)) => {
                tokio::time::sleep_until(at).await;
                job = again;
            }
            Concluded::Again(Disposition::Done) | Concluded::Over => return Ok(()),
        }
    }
}

/// Takes the turns of `winners` (shopper index, pays or not), on up to
/// `tasks` connections at once.
async fn take_turns(
    context: &Context,
    payers: &Arc<Payers>,
    winners: Vec<(usize, bool)>,
) -> Result<Vec<Turn>, LoadtestError> {
    let winners = Arc::new(winners);
    let count = winners.len();
    let payers = payers.clone();
    api::fan_out(
        &context.target,
        context.timeout,
        context.connections,
        count,
        move |mut connection, index| {
            let (winners, payers) = (winners.clone(), payers.clone());
            async move {
                let (shopper, pays) = winners[index];
                let result = async {
                    let me = draw_me(&mut connection, &payers.shoppers[shopper], &payers.deal_id)
                        .await?;
                    let Some(hold) = me.hold.filter(|_| me.outcome == "won") else {
                        return Ok(Turn::Mismatch);
                    };
                    if pays && hold.status == "active" {
                        pay(&mut connection, &payers, shopper, &hold.id).await?;
                        Ok(Turn::Paid)
                    } else {
                        Ok(Turn::LetGo(shopper))
                    }
                }
                .await;
                (connection, result)
            }
        },
    )
    .await
}

/// Counts the holds of `let_go` that the server now reports as expired.
async fn count_expired(
    context: &Context,
    shoppers: &Arc<Vec<Shopper>>,
    deal_id: &str,
    let_go: Vec<usize>,
) -> Result<u64, LoadtestError> {
    let let_go = Arc::new(let_go);
    let (shoppers, deal_id) = (shoppers.clone(), Arc::<str>::from(deal_id));
    let expired = api::fan_out(
        &context.target,
        context.timeout,
        context.connections,
        let_go.len(),
        move |mut connection, index| {
            let (let_go, shoppers, deal_id) = (let_go.clone(), shoppers.clone(), deal_id.clone());
            async move {
                let result = draw_me(&mut connection, &shoppers[let_go[index]], &deal_id)
                    .await
                    .map(|me| me.hold.is_some_and(|hold| hold.status == "expired"));
                (connection, result)
            }
        },
    )
    .await?;
    Ok(expired.into_iter().filter(|&expired| expired).count() as u64)
}

/// What the run saw of who was drawn, for [`registrants_check`].
struct Drawn<'a> {
    /// The run's registrants.
    shoppers: &'a [Shopper],
    /// Registrants in the published draw record.
    published: u64,
    /// Offered ranks that are no registrant's rank.
    outsiders: u64,
    /// Offered holds that the winner's own `draw/me` does not show.
    mismatches: u64,
    /// Every order of the deal.
    orders: &'a [Order],
}

/// Nobody outside the registrants won: the published registrant count is
/// the run's, every offer is a registrant's rank and shows in its
/// `draw/me`, and every order is a registrant's.
fn registrants_check(drawn: &Drawn<'_>) -> Check {
    let ids: HashSet<&str> = drawn.shoppers.iter().map(|s| s.id.as_str()).collect();
    let foreign: Vec<&str> = drawn
        .orders
        .iter()
        .filter(|order| !ids.contains(order.shopper_id.as_str()))
        .map(|order| order.shopper_id.as_str())
        .collect();
    let registered = drawn.shoppers.len() as u64;
    let passed = drawn.published == registered
        && drawn.outsiders == 0
        && drawn.mismatches == 0
        && foreign.is_empty();
    Check::new(
        "only registrants won",
        passed,
        format!(
            "{} registered, {} published; {} offers to no registrant, {} not shown \
             to their winner; {} orders of others{}",
            grouped(registered),
            grouped(drawn.published),
            grouped(drawn.outsiders),
            grouped(drawn.mismatches),
            grouped(foreign.len() as u64),
            if foreign.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    foreign
                        .iter()
                        .take(crate::checks::DETAIL_IDS_MAX)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
    )
}

/// Every offer of the draw so far, as (rank, outcome), in offer order.
async fn offers(
    connection: &mut Connection,
    draw_path: &str,
) -> Result<(DrawPage, Vec<(Digest, String)>), LoadtestError> {
    let mut all = verify_draw::pages(connection, draw_path, |page: &DrawPage| {
        page.next_cursor.clone()
    })
    .await?;
    let mut offers = Vec::new();
    for page in &mut all {
        for offer in page.offers.drain(..) {
            let mut rank = [0; 32];
            // An undecodable rank maps to no registrant: counted below.
            let _ = hex_decode(&offer.rank, &mut rank);
            offers.push((rank, offer.outcome));
        }
    }
    let first = all
        .into_iter()
        .next()
        .ok_or_else(|| LoadtestError::Config(format!("{draw_path} answered no page")))?;
    Ok((first, offers))
}

/// Runs a raffle and checks the draw and the invariants.
pub async fn run(context: &Context, args: &RaffleArgs) -> Result<Report, LoadtestError> {
    let run_id = scenario::run_id();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let lead = args
        .start_in
        .unwrap_or_else(|| burst::registration_lead(args.registrants));
    let plan = SetupPlan {
        shoppers: args.registrants,
        credit: scenario::default_credit(args.price, 1),
    };
    let mut deal_start = SystemTime::now();
    let setup = context
        .set_up(&plan, &run_id, || {
            deal_start = burst::whole_second_after(SystemTime::now(), lead);
            let (starts_at, ends_at) = scenario::deal_times(deal_start);
            NewDeal {
                title: format!("loadtest raffle {run_id}"),
                price: args.price,
                stock: args.stock,
                per_user_limit: 1,
                starts_at,
                ends_at,
                requires_registration: true,
                hold_seconds: args.hold_seconds,
                raffle: true,
            }
        })
        .await?;
    let starts_at = deal_start;
    burst::register_in_time(context, &setup, starts_at).await?;

    // The draw.
    let draw_path = format!("/v1/deals/{}/draw", api::path_segment(&setup.deal.id));
    let mut connection = context.connection();
    let start = burst::instant_of(starts_at);
    tokio::time::sleep_until(start).await;
    let drawn = loop {
        let page: DrawPage = api::call(
            &mut connection,
            "reading the draw",
            Method::GET,
            &format!("{draw_path}?limit=1"),
            None,
            None,
            &[StatusCode::OK],
        )
        .await?;
        if page.drawn {
            break page;
        }
        if start.elapsed() > DRAW_WAIT_MAX {
            return Err(LoadtestError::DrawNotRun {
                waited: DRAW_WAIT_MAX,
            });
        }
        tokio::time::sleep(DRAW_POLL_INTERVAL).await;
    };
    let draw_after = SystemTime::now()
        .duration_since(starts_at)
        .unwrap_or_default();
    context.progress.phase(format!(
        "drawn {:.3} s after starts_at; following the offers",
        draw_after.as_secs_f64()
    ));
    let mut drawn_seed = [0; 32];
    if hex_decode(drawn.seed.as_deref().unwrap_or(""), &mut drawn_seed).is_none() {
        return Err(LoadtestError::Api {
            what: "reading the draw".to_owned(),
            status: 200,
            code: "-".to_owned(),
            message: "drawn, but the seed is not 64 hex digits".to_owned(),
        });
    }
    let ranker = Ranker::new(&DrawSeed(drawn_seed));
    let by_rank: HashMap<Digest, usize> = setup
        .shoppers
        .iter()
        .enumerate()
        .map(|(index, shopper)| (ranker.rank(shopper.id.as_bytes()), index))
        .collect();

    // The waitlist, followed until the stock is paid.
    // One target only (`RaffleArgs` refuses more): every payment goes to it.
    let recorder = Arc::new(Recorder::new(Instant::now(), RAFFLE_TIMELINE_INTERVAL, 1));
    let cpu_before = context.meter.sample();
    let payers = Arc::new(Payers {
        shoppers: setup.shoppers.clone(),
        deal_id: setup.deal.id.clone(),
        recorder: recorder.clone(),
        policy: RetryPolicy::new(args.max_attempts),
        seed,
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let deadline = Instant::now() + args.follow_for;
    let (mut seen, mut holds, mut outsiders, mut mismatches) = (0, 0u64, 0u64, 0u64);
    let mut let_go = Vec::new();
    let mut all_paid_after = None;
    let mut offers_total: u64;
    loop {
        let (first, offered) = offers(&mut connection, &draw_path).await?;
        offers_total = offered.len() as u64;
        let mut winners = Vec::new();
        for (rank, outcome) in offered.iter().skip(seen) {
            match by_rank.get(rank) {
                None => outsiders += 1,
                Some(&shopper) if outcome == "hold" => {
                    winners.push((shopper, rng.f64() < args.pay_fraction));
                }
                Some(_) => {}
            }
        }
        seen = offered.len();
        holds += winners.len() as u64;
        for turn in take_turns(context, &payers, winners).await? {
            match turn {
                Turn::Mismatch => mismatches += 1,
                Turn::Paid => {}
                Turn::LetGo(shopper) => let_go.push(shopper),
            }
        }
        let deal = api::get_deal(&mut connection, &setup.deal.id).await?;
        if deal.sold >= deal.stock {
            all_paid_after = SystemTime::now().duration_since(starts_at).ok();
            break;
        }
        let exhausted = first.registrants == Some(offers_total) && deal.held == 0;
        if exhausted || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
    let measured = scenario::measured(&recorder, cpu_before, &context.meter);
    let paid = measured.tally.acknowledged.len() as u64;
    let expired = count_expired(context, &setup.shoppers, &setup.deal.id, let_go).await?;

    let mut checks = context
        .verify(&setup, &measured.tally.acknowledged, Some(1))
        .await?;
    let deal_url = format!(
        "{}/v1/deals/{}",
        context.target.url,
        api::path_segment(&setup.deal.id)
    );
    let verdict = verify_draw::verify_draw(&deal_url, None).await?;
    checks.push(Check::new(
        "draw follows the ranking",
        verdict.drawn && verdict.problems.is_empty(),
        if verdict.problems.is_empty() {
            format!(
                "{} offers are the first ranks recomputed from the seed over {} registrants",
                grouped(verdict.offers),
                grouped(verdict.registrants)
            )
        } else {
            verdict.problems.join("; ")
        },
    ));
    let orders = api::list_orders(
        &mut connection,
        &setup.merchant_auth,
        &setup.deal.id,
        usize::try_from(args.stock)
            .unwrap_or(usize::MAX)
            .saturating_mul(2),
    )
    .await?;
    checks.push(registrants_check(&Drawn {
        shoppers: &setup.shoppers,
        published: verdict.registrants,
        outsiders,
        mismatches,
        orders: &orders,
    }));

    let mut settings = BTreeMap::from([
        ("registrants".to_owned(), json!(args.registrants)),
        ("stock".to_owned(), json!(args.stock)),
        ("hold_seconds".to_owned(), json!(args.hold_seconds)),
        ("pay_fraction".to_owned(), json!(args.pay_fraction)),
        ("price".to_owned(), json!(api::money_text(args.price))),
        ("connections".to_owned(), json!(context.connections)),
        ("max_attempts".to_owned(), json!(args.max_attempts)),
        ("seed".to_owned(), json!(seed)),
        ("deal".to_owned(), json!(setup.deal.id)),
    ]);
    settings.extend(context.platform_setting());
    let mut report = scenario::report(
        "raffle",
        &context.targets,
        settings,
        &recorder,
        &measured,
        BTreeMap::new(),
        checks,
    );
    report.raffle = Some(RaffleFigures {
        registrants: args.registrants as u64,
        draw_after_seconds: Some(draw_after.as_secs_f64()),
        all_paid_after_seconds: all_paid_after.map(|after| after.as_secs_f64()),
        offers: offers_total,
        holds,
        paid,
        expired,
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;
    use rust_decimal::Decimal;

    use super::*;

    fn shopper(id: &str) -> Shopper {
        Shopper {
            id: id.to_owned(),
            auth: HeaderValue::from_static("Bearer t"),
        }
    }

    fn order(shopper_id: &str) -> Order {
        Order {
            id: format!("o_{shopper_id}"),
            deal_id: "d_1".to_owned(),
            shopper_id: shopper_id.to_owned(),
            quantity: 1,
            amount: Decimal::ONE,
        }
    }

    #[test]
    fn only_registrants_may_win() {
        let shoppers = [shopper("s_1"), shopper("s_2")];
        let fair = [order("s_1")];
        let drawn = Drawn {
            shoppers: &shoppers,
            published: 2,
            outsiders: 0,
            mismatches: 0,
            orders: &fair,
        };
        assert!(registrants_check(&drawn).passed);
        let stranger = [order("s_9")];
        for bad in [
            Drawn {
                orders: &stranger,
                ..drawn
            },
            Drawn {
                outsiders: 1,
                ..drawn
            },
            Drawn {
                mismatches: 1,
                ..drawn
            },
            Drawn {
                published: 3,
                ..drawn
            },
        ] {
            let check = registrants_check(&bad);
            assert!(!check.passed, "{}", check.detail);
        }
    }
}
