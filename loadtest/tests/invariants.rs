//! End-to-end runs of the load generator against a fake gateway on
//! 127.0.0.1:0: a correct fake must pass every invariant check, and each
//! deliberately broken one must fail the check that describes its flaw.

mod support;

use std::time::Duration;

use clap::Parser;
use flashsale_loadtest::{LoadtestArgs, Report, Scenario, run, run_scenario};
use support::{FakeServer, Flaw};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadtestArgs,
}

fn args(server: &FakeServer, scenario: &[&str]) -> LoadtestArgs {
    let mut argv = vec!["loadtest"];
    argv.extend_from_slice(scenario);
    argv.extend_from_slice(&[
        "--target",
        &server.url,
        "--admin-token",
        &server.admin_token,
        "--connections",
        "16",
        "--timeout",
        "5s",
        "--quiet",
    ]);
    Cli::try_parse_from(argv).expect("valid flags").args
}

const SMALL_BURST: &[&str] = &[
    "burst",
    "--shoppers",
    "400",
    "--stock",
    "60",
    "--ramp",
    "200ms",
    "--seed",
    "7",
];

async fn burst(flaw: Flaw, extra: &[&str]) -> Report {
    let server = support::start(flaw).await;
    let mut scenario = SMALL_BURST.to_vec();
    scenario.extend_from_slice(extra);
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        run_scenario(args(&server, &scenario)),
    )
    .await
    .expect("a small burst ends within a minute")
    .expect("the burst runs");
    eprintln!("{report}");
    report
}

fn failed(report: &Report) -> Vec<&str> {
    report
        .checks
        .iter()
        .filter(|check| !check.passed)
        .map(|check| check.name.as_str())
        .collect()
}

#[tokio::test]
async fn a_correct_server_passes_every_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (json, plot) = (dir.path().join("report.json"), dir.path().join("plot.svg"));
    let report = burst(
        Flaw::None,
        &[
            "--json",
            json.to_str().expect("utf-8 path"),
            "--plot",
            plot.to_str().expect("utf-8 path"),
        ],
    )
    .await;

    assert_eq!(failed(&report), Vec::<&str>::new());
    assert!(report.passed());
    assert_eq!(report.operations, 400);
    assert_eq!(report.outcomes.ok, 60);
    assert_eq!(report.outcomes.sold_out, 340);
    assert_eq!(report.outcomes.errors, 0);
    assert_eq!(report.by_status.get("201"), Some(&60));
    assert_eq!(report.by_code.get("sold_out"), Some(&340));
    assert!(report.sold_out_after_seconds.is_some());
    assert!(report.latency_ms.count == 400 && report.latency_ms.max > 0.0);
    assert!(report.latency_ms.p50 <= report.latency_ms.p99);
    assert!(report.checks.len() >= 8);
    eprintln!(
        "client CPU: {:.1} µs per request ({} requests)",
        report.client_cpu.per_request_us, report.requests
    );

    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).expect("valid JSON");
    assert_eq!(written["scenario"], "burst");
    assert_eq!(written["outcomes"]["ok"], 60);
    assert!(written["latency_ms"]["p99"].is_number());
    assert!(
        written["checks"]
            .as_array()
            .is_some_and(|checks| !checks.is_empty())
    );
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(
        svg.contains("<svg") && svg.contains("<polyline"),
        "{}",
        &svg[..svg.len().min(300)]
    );
}

#[tokio::test]
async fn an_overselling_server_fails_the_stock_checks() {
    let report = burst(Flaw::Oversell, &[]).await;
    assert!(!report.passed());
    let failed = failed(&report);
    assert!(failed.contains(&"sold within stock"), "{failed:?}");
    assert!(report.outcomes.ok > 60);
}

#[tokio::test]
async fn a_server_that_loses_acknowledged_orders_fails() {
    let report = burst(Flaw::LoseOrders, &[]).await;
    assert!(!report.passed());
    let failed = failed(&report);
    assert!(failed.contains(&"acknowledged orders kept"), "{failed:?}");
    assert!(failed.contains(&"sold equals orders"), "{failed:?}");
}

#[tokio::test]
async fn a_lost_answer_is_retried_with_the_same_key_and_buys_once() {
    let report = burst(Flaw::DropFirstAnswer, &[]).await;
    assert_eq!(failed(&report), Vec::<&str>::new());
    // Every order's first answer was lost: each was retried and the retry
    // got the same order back.
    assert_eq!(report.outcomes.ok, 60);
    assert_eq!(report.retries, 60);
    assert_eq!(report.by_status.get("503"), Some(&60));
}

#[tokio::test]
async fn a_registration_burst_starts_on_time() {
    let report = burst(Flaw::None, &["--register", "--start-in", "2s"]).await;
    assert_eq!(failed(&report), Vec::<&str>::new());
    assert_eq!(report.by_code.get("not_started"), None);
    assert_eq!(report.by_code.get("not_registered"), None);
    assert_eq!(report.outcomes.ok, 60);
}

#[tokio::test]
async fn the_exit_status_reports_a_failed_check() {
    let server = support::start(Flaw::Oversell).await;
    let code = run(args(&server, SMALL_BURST)).await.expect("runs");
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::FAILURE)
    );
    let server = support::start(Flaw::None).await;
    let code = run(args(&server, SMALL_BURST)).await.expect("runs");
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::SUCCESS)
    );
}

#[tokio::test]
async fn steady_runs_its_mix_on_schedule_and_keeps_the_invariants() {
    let server = support::start(Flaw::None).await;
    let scenario = [
        "steady",
        "--rate",
        "400",
        "--duration",
        "1s",
        "--shoppers",
        "50",
        "--stock",
        "10000",
        "--per-user-limit",
        "50",
        "--mix",
        "buy=30,hold=30,pay=15,release=10,feed=15",
        "--seed",
        "3",
    ];
    let report = run_scenario(args(&server, &scenario)).await.expect("runs");
    eprintln!("{report}");
    assert_eq!(failed(&report), Vec::<&str>::new());
    assert_eq!(report.operations, 400);
    assert_eq!(report.outcomes.errors, 0);
    for kind in ["buy", "hold", "pay", "release", "feed"] {
        assert!(
            report.by_operation.get(kind).is_some_and(|n| *n > 0),
            "{kind}: {:?}",
            report.by_operation
        );
    }
    assert_eq!(report.by_operation.values().sum::<u64>(), 400);
}

#[tokio::test]
async fn a_stalled_server_shows_in_steady_latency() {
    // 100 buys/s on 2 connections to a server that takes 100 ms per buy:
    // it can serve 20/s, so the queue grows all second long. Latency from
    // the schedule must show it; per-request timing would say 100 ms.
    let server = support::start(Flaw::Slow(Duration::from_millis(100))).await;
    let mut flags = args(
        &server,
        &[
            "steady",
            "--rate",
            "100",
            "--duration",
            "1s",
            "--shoppers",
            "20",
            "--mix",
            "buy=1",
        ],
    );
    let Scenario::Steady(steady) = &mut flags.command else {
        panic!("a steady run");
    };
    steady.run.connections = 2;
    let report = run_scenario(flags).await.expect("runs");
    assert_eq!(report.operations, 100);
    // The last buy is due at ~1 s and answered at ~5 s.
    assert!(report.latency_ms.max > 3_000.0, "{:?}", report.latency_ms);
    assert!(report.latency_ms.p50 > 1_000.0, "{:?}", report.latency_ms);
}

/// `SMALL_BURST` on `nodes` (fake nodes of one deployment), with `extra`
/// targets after theirs.
async fn burst_on_nodes(nodes: &[support::FakeServer], extra: &[&str]) -> Report {
    let mut argv = vec!["loadtest"];
    argv.extend_from_slice(SMALL_BURST);
    for node in nodes {
        argv.extend_from_slice(&["--target", &node.url]);
    }
    for target in extra {
        argv.extend_from_slice(&["--target", target]);
    }
    argv.extend_from_slice(&[
        "--admin-token",
        "fake-admin",
        "--connections",
        "16",
        "--timeout",
        "5s",
        "--quiet",
    ]);
    let args = Cli::try_parse_from(argv).expect("valid flags").args;
    let report = tokio::time::timeout(Duration::from_secs(60), run_scenario(args))
        .await
        .expect("a small burst ends within a minute")
        .expect("the burst runs");
    eprintln!("{report}");
    report
}

#[tokio::test]
async fn taps_spread_over_every_target_and_the_check_reads_each() {
    let nodes = support::start_nodes(&[Flaw::None, Flaw::None, Flaw::None]).await;
    let report = burst_on_nodes(&nodes, &[]).await;
    assert_eq!(failed(&report), Vec::<&str>::new());
    assert_eq!((report.outcomes.ok, report.outcomes.sold_out), (60, 340));
    // Shopper i taps on node i mod 3: 134, 133 and 133 of the 400.
    let buys: Vec<u64> = nodes
        .iter()
        .map(|node| node.buys.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    assert_eq!(buys, [134, 133, 133]);
    let sent: Vec<u64> = report.by_target.iter().map(|target| target.sent).collect();
    assert_eq!(sent, buys, "the report counts what each node got");
    let agree = report
        .checks
        .iter()
        .find(|check| check.name == "targets agree")
        .expect("several targets are compared");
    assert!(
        agree.detail.contains("3 targets show the same deal"),
        "{agree:?}"
    );
}

#[tokio::test]
async fn a_target_with_a_view_of_its_own_fails_the_check() {
    let nodes = support::start_nodes(&[Flaw::None, Flaw::None, Flaw::StaleDeal]).await;
    let report = burst_on_nodes(&nodes, &[]).await;
    let failed = failed(&report);
    assert!(failed.contains(&"targets agree"), "{failed:?}");
    assert!(failed.contains(&"sold equals orders"), "{failed:?}");
    for check in report.checks.iter().filter(|check| !check.passed) {
        assert!(check.detail.contains(&nodes[2].url), "{check:?}");
        assert!(!check.detail.contains(&nodes[1].url), "{check:?}");
    }
    assert_eq!(report.outcomes.ok, 60, "the sale itself went well");
}

#[tokio::test]
async fn taps_on_a_dead_target_are_retried_on_another() {
    let nodes = support::start_nodes(&[Flaw::None, Flaw::None]).await;
    // A port nobody listens on: connections are refused at once.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        format!("http://{}", listener.local_addr().expect("bound"))
    };
    let report = burst_on_nodes(&nodes, &[&dead]).await;
    // Every shopper was served: those whose tap went to the dead target
    // (i mod 3 = 2) were retried on the next one, node 0.
    assert_eq!((report.outcomes.ok, report.outcomes.sold_out), (60, 340));
    assert_eq!(report.outcomes.errors, 0);
    let dead_figures = &report.by_target[2];
    assert_eq!(dead_figures.url, dead);
    assert_eq!((dead_figures.answered, dead_figures.no_answer), (0, 133));
    assert!(report.retries >= 133, "{}", report.retries);
    let buys: u64 = nodes
        .iter()
        .map(|node| node.buys.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(buys, 400);
    // The check reads every target: the dead one cannot be read.
    assert_eq!(failed(&report), ["targets agree"]);
    let agree = report
        .checks
        .iter()
        .find(|check| check.name == "targets agree")
        .expect("compared");
    assert!(agree.detail.contains(&dead), "{agree:?}");
}
