//! The SREs' tool against the real server: `flashsale loadtest burst`,
//! `steady` and `raffle` with `--spawn` at small scale, and `flashsale demo`. Each run's
//! own invariant check (sold ≤ stock and = orders, no shopper over the
//! limit, spent = order amounts, every 201 kept) must pass, and the JSON
//! report must say what happened.

use std::process::{Command, Output};

use serde_json::Value;

fn flashsale(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    for variable in ["REDIS_URL", "DATABASE_URL", "FLASHSALE_ADMIN_TOKEN"] {
        command.env_remove(variable);
    }
    command.args(args).output().expect("flashsale runs")
}

/// Runs a scenario with `--json`, asserts it succeeded, returns the report.
fn run_scenario(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.json");
    let plot = dir.path().join("latency.svg");
    let mut argv = vec!["loadtest"];
    argv.extend_from_slice(args);
    let (report_path, plot_path) = (report.to_str().unwrap(), plot.to_str().unwrap());
    argv.extend_from_slice(&[
        "--spawn",
        "--quiet",
        "--json",
        report_path,
        "--plot",
        plot_path,
    ]);
    let output = flashsale(&argv);
    assert!(
        output.status.success(),
        "flashsale {argv:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let svg = std::fs::read_to_string(&plot).expect("the plot is written");
    assert!(svg.contains("<svg"), "the plot is an SVG");
    serde_json::from_slice(&std::fs::read(&report).expect("the report is written"))
        .expect("JSON report")
}

fn assert_checks_pass(report: &Value) {
    let checks = report["checks"].as_array().expect("checks");
    assert!(checks.len() >= 4, "the invariant check ran: {checks:?}");
    for check in checks {
        assert_eq!(check["passed"], true, "check failed: {check}");
    }
}

#[test]
fn a_small_burst_against_a_spawned_server_sells_exactly_the_stock() {
    let report = run_scenario(&[
        "burst",
        "--shoppers",
        "400",
        "--stock",
        "60",
        "--ramp",
        "300ms",
        "--seed",
        "7",
    ]);
    assert_checks_pass(&report);
    assert_eq!(
        report["outcomes"]["ok"], 60,
        "400 shoppers for 60 units buy them all"
    );
    assert_eq!(report["outcomes"]["sold_out"], 340);
    assert!(report["latency_ms"]["p99"].as_f64().is_some());
    // The client's schedule and the server's answers are two rates.
    assert_eq!(report["offered"]["basis"], "shoppers ÷ ramp");
    let offered = report["offered"]["per_second"].as_f64().expect("offered");
    assert!((offered - 400.0 / 0.3).abs() < 1e-6, "{offered}");
    let answered = report["answered_per_second"].as_f64().expect("answered");
    assert!(answered > 0.0, "{answered}");
    assert_eq!(report["by_target"][0]["sent"], report["requests"]);
    assert!(
        report["client_cpu"]["cpu_seconds"]
            .as_f64()
            .is_some_and(|cpu| cpu > 0.0)
    );
}

/// A burst of a platform's users: each shopper's JWT is signed by the
/// load generator with a test key, which the spawned server trusts
/// (`--idp-jwks`); setup exchanges each JWT once, and the taps carry the
/// engine's token or the JWT itself.
#[test]
fn a_burst_of_platform_users_sells_exactly_the_stock_either_way_they_authenticate() {
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/testkit/keys/es256-1.pem");
    for auth in ["exchange", "jwt"] {
        let report = run_scenario(&[
            "burst",
            "--shoppers",
            "120",
            "--stock",
            "30",
            "--ramp",
            "200ms",
            "--seed",
            "11",
            "--platform-key",
            key,
            "--platform-auth",
            auth,
        ]);
        assert_checks_pass(&report);
        assert_eq!(report["outcomes"]["ok"], 30, "{auth}");
        assert_eq!(report["outcomes"]["sold_out"], 90, "{auth}");
        assert_eq!(
            report["settings"]["platform_auth"], auth,
            "the report says which"
        );
    }
}

#[test]
fn a_short_steady_run_against_a_spawned_server_keeps_the_invariants() {
    let report = run_scenario(&[
        "steady",
        "--rate",
        "300",
        "--duration",
        "2s",
        "--shoppers",
        "100",
    ]);
    assert_checks_pass(&report);
    let operations = report["operations"].as_u64().expect("operations");
    assert!(
        (500..=700).contains(&operations),
        "open loop keeps its schedule: {operations}"
    );
}

#[test]
fn a_small_raffle_against_a_spawned_server_draws_fairly_and_refills() {
    let report = run_scenario(&[
        "raffle",
        "--registrants",
        "200",
        "--stock",
        "20",
        "--hold-seconds",
        "2",
        "--pay-fraction",
        "0.7",
        "--start-in",
        "3s",
        "--follow-for",
        "60s",
        "--seed",
        "11",
    ]);
    assert_checks_pass(&report);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|check| check["name"].as_str())
        .collect();
    assert!(names.contains(&"draw follows the ranking"), "{names:?}");
    assert!(names.contains(&"only registrants won"), "{names:?}");
    let raffle = &report["raffle"];
    let count = |field: &str| {
        raffle[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field}: {raffle}"))
    };
    assert_eq!(count("registrants"), 200);
    assert_eq!(count("paid"), 20, "all stock is paid: {raffle}");
    assert_eq!(report["outcomes"]["ok"], 20, "one payment per unit");
    assert!(
        count("expired") > 0,
        "with 70 % paying some holds expire and refill: {raffle}"
    );
    assert_eq!(
        count("holds"),
        count("paid") + count("expired"),
        "every hold was paid or expired: {raffle}"
    );
    assert!(count("offers") >= count("holds") && count("offers") <= 200);
    let drawn = raffle["draw_after_seconds"].as_f64().expect("drawn");
    let all_paid = raffle["all_paid_after_seconds"].as_f64().expect("all paid");
    assert!((0.0..5.0).contains(&drawn) && drawn <= all_paid, "{raffle}");
    assert!(
        all_paid >= 2.0,
        "expired holds took at least one hold period to pass on: {raffle}"
    );
}

#[test]
fn demo_runs_a_burst_end_to_end() {
    let output = flashsale(&["demo"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
}
