//! The engine is the specification: the same random sequences of
//! operations, sent to a one-node server (engine and journal) and to a
//! Redis-mode node, get the same answers (status, code, quantities,
//! amounts, late flags), and the same wallets and deal numbers after every
//! step.

use serde_json::{Value, json};

use crate::burst::fen;
use crate::node::{ADMIN_TOKEN, Deployment, Node, Target};

/// Steps per sequence, and sequences (seeds).
const STEPS: usize = 120;
const SEEDS: [u64; 3] = [1, 7, 2026];
const SHOPPERS: usize = 4;

/// A small deterministic generator (xorshift64*), so a failing seed can be
/// replayed exactly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

/// One side of the comparison: a server, its tokens and what it answered.
struct Side {
    node: Node,
    merchant: String,
    deal: String,
    shoppers: Vec<(String, String)>,
    /// Hold and order ids in the order the side created them.
    holds: Vec<String>,
    orders: Vec<String>,
    /// Reviews and shares answered 201, so the test can tell it tried them.
    reviewed: usize,
    shared: usize,
}

impl Side {
    async fn new(node: Node) -> Side {
        let merchant = node.merchant("Model").await;
        let deal = node
            .deal_with(
                &merchant,
                json!({ "stock": 5, "per_user_limit": 2, "hold_seconds": 3600 }),
            )
            .await;
        let shoppers = node.shoppers(SHOPPERS as u32, "35.00").await;
        Side {
            node,
            merchant,
            deal,
            shoppers,
            holds: Vec::new(),
            orders: Vec::new(),
            reviewed: 0,
            shared: 0,
        }
    }

    /// Runs one step; what must match across sides.
    async fn step(&mut self, step: &Step) -> Value {
        use reqwest::Method;
        let answer = match step {
            Step::Buy {
                shopper,
                quantity,
                key,
            }
            | Step::Hold {
                shopper,
                quantity,
                key,
            } => {
                let path = match step {
                    Step::Buy { .. } => format!("/v1/deals/{}/orders", self.deal),
                    _ => format!("/v1/deals/{}/holds", self.deal),
                };
                let answer = self
                    .node
                    .call(
                        Method::POST,
                        &path,
                        Some(&self.shoppers[*shopper].1),
                        Some(json!({ "quantity": quantity })),
                        Some(key),
                    )
                    .await;
                if matches!(step, Step::Hold { .. })
                    && answer.status == 201
                    && let Some(id) = answer.body["id"].as_str()
                    && !self.holds.iter().any(|hold| hold == id)
                {
                    self.holds.push(id.to_owned());
                }
                answer
            }
            Step::Pay { shopper, hold } | Step::Release { shopper, hold } => {
                let Some(id) = self.holds.get(*hold).cloned() else {
                    return json!("no such hold");
                };
                let (method, path) = match step {
                    Step::Pay { .. } => (Method::POST, format!("/v1/holds/{id}/payment")),
                    _ => (Method::DELETE, format!("/v1/holds/{id}")),
                };
                self.node
                    .call(method, &path, Some(&self.shoppers[*shopper].1), None, None)
                    .await
            }
            Step::Credit {
                shopper,
                amount,
                reference,
            } => {
                let path = format!("/v1/wallets/{}/credits", self.shoppers[*shopper].0);
                self.node
                    .call(
                        Method::POST,
                        &path,
                        Some(ADMIN_TOKEN),
                        Some(json!({ "amount": amount, "reference": reference })),
                        None,
                    )
                    .await
            }
            Step::Patch(change) => {
                let path = format!("/v1/deals/{}", self.deal);
                self.node
                    .call(
                        Method::PATCH,
                        &path,
                        Some(&self.merchant),
                        Some(change.clone()),
                        None,
                    )
                    .await
            }
            Step::Review {
                shopper,
                order,
                score,
            } => {
                let Some(id) = self.orders.get(*order).cloned() else {
                    return json!("no such order");
                };
                let review = json!({ "description": score, "delivery": 5, "service": 1 });
                self.node
                    .call(
                        Method::POST,
                        &format!("/v1/orders/{id}/review"),
                        Some(&self.shoppers[*shopper].1),
                        Some(review),
                        None,
                    )
                    .await
            }
            Step::Share { shopper, order } => {
                let Some(id) = self.orders.get(*order).cloned() else {
                    return json!("no such order");
                };
                self.node
                    .call(
                        Method::POST,
                        &format!("/v1/orders/{id}/share"),
                        Some(&self.shoppers[*shopper].1),
                        None,
                        None,
                    )
                    .await
            }
        };
        if answer.status == 201 {
            match step {
                Step::Review { .. } => self.reviewed += 1,
                Step::Share { .. } => self.shared += 1,
                _ => {}
            }
        }
        // Orders in the order this side made them (a replay is not new).
        if answer.status == 201
            && answer.body["unit_price"].is_string()
            && let Some(id) = answer.body["id"].as_str()
            && !self.orders.iter().any(|order| order == id)
        {
            self.orders.push(id.to_owned());
        }
        let mut seen = json!({ "status": answer.status, "code": answer.code() });
        for field in [
            "quantity",
            "amount",
            "late",
            "status",
            "available",
            "held",
            "spent",
            "shared",
            "description",
            "merchant_rating",
        ] {
            if answer.status < 300
                && let Some(value) = answer.body.get(field)
            {
                seen[field] = value.clone();
            }
        }
        seen
    }

    /// The numbers both sides must agree on after every step.
    async fn state(&self) -> Value {
        let deal = self
            .node
            .get(&format!("/v1/deals/{}", self.deal), None)
            .await
            .ok(200);
        let mut wallets = Vec::new();
        for (_, token) in &self.shoppers {
            let wallet = self.node.get("/v1/wallet", Some(token)).await.ok(200);
            let parts: Vec<i64> = ["credited", "available", "held", "spent"]
                .iter()
                .map(|part| fen(&wallet[*part]))
                .collect();
            assert_eq!(
                parts[0],
                parts[1] + parts[2] + parts[3],
                "wallet conserved: {wallet}"
            );
            wallets.push(parts);
        }
        let (total, remaining, held, sold) = (
            deal["stock"].as_u64().unwrap_or(0),
            deal["remaining"].as_u64().unwrap_or(0),
            deal["held"].as_u64().unwrap_or(0),
            deal["sold"].as_u64().unwrap_or(0),
        );
        assert_eq!(total, remaining + held + sold, "stock conserved: {deal}");
        let merchant = self
            .node
            .get("/v1/merchants/me", Some(&self.merchant))
            .await
            .ok(200);
        json!({
            "deal": [total, remaining, held, sold, deal["status"], deal["paused"], deal["buyers"], deal["shares"]],
            "wallets": wallets,
            "rating": merchant["rating"],
        })
    }
}

#[derive(Debug, Clone)]
enum Step {
    Buy {
        shopper: usize,
        quantity: u32,
        key: String,
    },
    Hold {
        shopper: usize,
        quantity: u32,
        key: String,
    },
    Pay {
        shopper: usize,
        hold: usize,
    },
    Release {
        shopper: usize,
        hold: usize,
    },
    Credit {
        shopper: usize,
        amount: String,
        reference: String,
    },
    Patch(Value),
    Review {
        shopper: usize,
        order: usize,
        score: u8,
    },
    Share {
        shopper: usize,
        order: usize,
    },
}

fn random_step(rng: &mut Rng) -> Step {
    let shopper = rng.below(SHOPPERS as u64) as usize;
    // Few keys and references, so replays and reuse happen often.
    let key = format!("k{}", rng.below(6));
    let quantity = 1 + rng.below(3) as u32;
    match rng.below(23) {
        20 | 21 => Step::Review {
            shopper,
            order: rng.below(6) as usize,
            // Now and then out of range: refused alike.
            score: rng.below(7) as u8,
        },
        22 => Step::Share {
            shopper,
            order: rng.below(6) as usize,
        },
        0..=6 => Step::Buy {
            shopper,
            quantity,
            key,
        },
        7..=10 => Step::Hold {
            shopper,
            quantity,
            key,
        },
        11..=13 => Step::Pay {
            shopper,
            hold: rng.below(6) as usize,
        },
        14..=15 => Step::Release {
            shopper,
            hold: rng.below(6) as usize,
        },
        16 => Step::Credit {
            shopper,
            amount: format!("{}.00", 5 * (1 + rng.below(3))),
            reference: format!("r{}", rng.below(3)),
        },
        17 => Step::Patch(json!({ "add_stock": 1 + rng.below(2) })),
        18 => Step::Patch(json!({ "paused": true })),
        _ => Step::Patch(json!({ "paused": false })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_answers_every_step_as_the_engine_does() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let (mut reviewed, mut shared) = (0, 0);
    for seed in SEEDS {
        let deployment = Deployment::new(Target::Single(url.clone()), 64);
        let mut engine = Side::new(crate::node::one_node()).await;
        let mut redis = Side::new(deployment.node()).await;
        let mut rng = Rng(seed);
        for index in 0..STEPS {
            let step = random_step(&mut rng);
            let expected = engine.step(&step).await;
            let got = redis.step(&step).await;
            assert_eq!(got, expected, "seed {seed}, step {index}: {step:?}");
            let (expected, got) = (engine.state().await, redis.state().await);
            assert_eq!(
                got, expected,
                "seed {seed}, state after step {index}: {step:?}"
            );
        }
        reviewed += redis.reviewed;
        shared += redis.shared;
    }
    assert!(
        reviewed > 0 && shared > 0,
        "reviews {reviewed}, shares {shared}: tried"
    );
}

/// Late payment, the engine's rule: an expired hold is still paid if the
/// stock and funds allow (`late: true`), and answered `hold_expired` with
/// nothing charged when they do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_is_paid_late_or_refused_as_the_engine_does() {
    let Some(url) = flashsale_testkit::redis_url() else {
        return;
    };
    let _serial = crate::node::serial().await;
    let deployment = Deployment::new(Target::Single(url), 64);
    for node in [crate::node::one_node(), deployment.node()] {
        let merchant = node.merchant("Late").await;
        let deal = node
            .deal_with(
                &merchant,
                json!({ "stock": 1, "per_user_limit": 1, "hold_seconds": 1 }),
            )
            .await;
        let shoppers = node.shoppers(2, "20.00").await;
        let hold_of = |index: usize| {
            let (node, deal, shoppers) = (&node, &deal, &shoppers);
            async move {
                node.call(
                    reqwest::Method::POST,
                    &format!("/v1/deals/{deal}/holds"),
                    Some(&shoppers[index].1),
                    Some(json!({ "quantity": 1 })),
                    Some("h"),
                )
                .await
                .ok(201)["id"]
                    .as_str()
                    .expect("a hold id")
                    .to_owned()
            }
        };
        let first = hold_of(0).await;
        tokio::time::sleep(std::time::Duration::from_millis(1_600)).await;
        let late = node
            .call(
                reqwest::Method::POST,
                &format!("/v1/holds/{first}/payment"),
                Some(&shoppers[0].1),
                None,
                None,
            )
            .await
            .ok(201);
        assert_eq!(late["late"], true);
        // The second shopper's hold expires while the unit is sold: refused.
        let view = node.get(&format!("/v1/deals/{deal}"), None).await.ok(200);
        assert_eq!(view["sold"], 1);
        let refused = node
            .call(
                reqwest::Method::POST,
                &format!("/v1/deals/{deal}/holds"),
                Some(&shoppers[1].1),
                Some(json!({ "quantity": 1 })),
                Some("h"),
            )
            .await;
        assert_eq!(refused.code(), "sold_out");
        let wallet = node.get("/v1/wallet", Some(&shoppers[1].1)).await.ok(200);
        assert_eq!(wallet["available"], "20.00", "a refusal charges nothing");
    }
}
