//! The end-of-run report: a table for people, the same as JSON for
//! machines, and the pass/fail list of invariant checks.
//!
//! The table has one number format: thousands separators in every count,
//! rate and amount (`1,000,000`, `12,345.678`), and lines of at most
//! [`REPORT_COLUMNS`] characters (long settings and check details wrap).
//! In the JSON, settings keep their types: counts are numbers, flags
//! booleans, money a decimal string as in the API.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::error::LoadtestError;
use crate::recorder::{TimelinePoint, millis};

/// Everything a run measured and checked.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `burst`, `steady` or `raffle`.
    pub scenario: String,
    /// Every `--target`, in order; setup went through the first.
    pub targets: Vec<String>,
    /// The scenario's parameters, typed: numbers, booleans, strings.
    pub settings: BTreeMap<String, serde_json::Value>,
    /// From T0 to the last answer.
    pub duration_seconds: f64,
    /// Operations planned and finished (a tap with its retries is one).
    pub operations: u64,
    /// HTTP requests sent (attempts, retries included).
    pub requests: u64,
    /// Requests that got an HTTP answer.
    pub answered: u64,
    pub retries: u64,
    /// Attempts that got no answer: connection failures and timeouts.
    pub transport_errors: u64,
    pub timeouts: u64,
    pub outcomes: Outcomes,
    /// The rate the client planned to send operations at, and what it is
    /// in the scenario's terms; absent when it planned no rate (a raffle,
    /// a burst with no ramp).
    pub offered: Option<OfferedRate>,
    /// The rate the server answered at: answers over the time from the
    /// first request sent to the last answer, per second.
    pub answered_per_second: f64,
    /// Requests and answers per target, in the order of `targets`.
    pub by_target: Vec<TargetFigures>,
    /// Per operation, from its scheduled instant to its final answer.
    pub latency_ms: LatencySummary,
    /// Answers by HTTP status.
    pub by_status: BTreeMap<String, u64>,
    /// Refusals by the contract's error `code`.
    pub by_code: BTreeMap<String, u64>,
    /// Operations by kind (steady's mix), empty for a burst.
    pub by_operation: BTreeMap<String, u64>,
    /// From T0 to the first `sold_out` answer.
    pub sold_out_after_seconds: Option<f64>,
    /// From T0 to the last acknowledged order.
    pub last_sale_after_seconds: Option<f64>,
    pub client_cpu: ClientCpu,
    pub timeline: Vec<TimelinePoint>,
    /// A raffle run's own figures; absent for the other scenarios.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raffle: Option<RaffleFigures>,
    pub checks: Vec<Check>,
}

/// What a raffle run saw of its draw and its waitlist.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct RaffleFigures {
    /// Shoppers registered for the draw.
    pub registrants: u64,
    /// From the deal's `starts_at` to the first look that saw it drawn
    /// (so it includes up to one poll interval of the client).
    pub draw_after_seconds: Option<f64>,
    /// From `starts_at` until the last unit was paid; `None` if the run
    /// stopped (waitlist exhausted or `--follow-for` passed) before.
    pub all_paid_after_seconds: Option<f64>,
    /// Offers the draw made (holds and ranks passed over).
    pub offers: u64,
    /// Winners' holds the client saw.
    pub holds: u64,
    /// Holds paid.
    pub paid: u64,
    /// Holds left to run out that the server reports as expired.
    pub expired: u64,
}

/// The client's offered rate: operations planned per second.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OfferedRate {
    pub per_second: f64,
    /// How it was set: `shoppers ÷ ramp` in a burst, `--rate` in a
    /// steady run.
    pub basis: String,
}

/// What one target was sent and answered.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TargetFigures {
    pub url: String,
    /// Requests sent to it, retries included.
    pub sent: u64,
    /// Of those, answered over HTTP.
    pub answered: u64,
    /// Of those, not answered (connection failures and timeouts).
    pub no_answer: u64,
}

/// Final outcomes of the operations.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Outcomes {
    pub ok: u64,
    pub sold_out: u64,
    pub refused: u64,
    pub errors: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencySummary {
    /// Summarises a histogram of microseconds.
    pub fn from_micros(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: histogram.len(),
            mean: histogram.mean() / 1_000.0,
            p50: millis(histogram.value_at_quantile(0.50)),
            p90: millis(histogram.value_at_quantile(0.90)),
            p99: millis(histogram.value_at_quantile(0.99)),
            p999: millis(histogram.value_at_quantile(0.999)),
            max: millis(histogram.max()),
        }
    }
}

/// CPU the load generator itself used during the load phase: the time
/// its threads ran, user and system together, read from their CPU clocks
/// (nanosecond resolution; see `cpu.rs`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct ClientCpu {
    /// CPU time of the load phase, in seconds.
    pub cpu_seconds: f64,
    /// CPU time per request sent, in microseconds.
    pub per_request_us: f64,
    /// Share of the load phase's wall time, in cores (1.0 = one core busy).
    pub cores_busy: f64,
}

impl ClientCpu {
    /// CPU figures from the CPU time `used` by the load phase.
    pub fn new(used: Duration, requests: u64, wall: Duration) -> ClientCpu {
        let total = used.as_secs_f64();
        ClientCpu {
            cpu_seconds: total,
            per_request_us: if requests == 0 {
                0.0
            } else {
                total * 1e6 / requests as f64
            },
            cores_busy: if wall.is_zero() {
                0.0
            } else {
                total / wall.as_secs_f64()
            },
        }
    }
}

/// One invariant check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: &str, passed: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_owned(),
            passed,
            detail: detail.into(),
        }
    }
}

impl Report {
    /// Whether every check passed (a run with no checks passes).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.passed)
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), LoadtestError> {
        let mut text =
            serde_json::to_string_pretty(self).map_err(|source| LoadtestError::Decode {
                what: "encoding the report".to_owned(),
                source,
            })?;
        text.push('\n');
        std::fs::write(path, text).map_err(|source| LoadtestError::File {
            action: "write",
            path: path.to_owned(),
            source,
        })
    }
}

/// Widest line of the table, in characters.
pub const REPORT_COLUMNS: usize = 80;

/// Thousands separators for counts: `1234567` → `1,234,567`.
pub fn grouped(count: u64) -> String {
    group_digits(&count.to_string())
}

/// `digits` (ASCII digits, maybe after a `-`) with a `,` every three from
/// the right.
fn group_digits(digits: &str) -> String {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", digits),
    };
    let mut out = String::with_capacity(sign.len() + digits.len() + digits.len() / 3);
    out.push_str(sign);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A measured figure with `places` decimals and grouped thousands:
/// `12345.6789, 3` → `12,345.679`.
pub fn decimal(value: f64, places: usize) -> String {
    let text = format!("{value:.places$}");
    match text.split_once('.') {
        Some((whole, fraction)) => format!("{}.{fraction}", group_digits(whole)),
        None => group_digits(&text),
    }
}

/// Money with two places and grouped thousands: `99900000` → `99,900,000.00`.
pub fn amount(value: Decimal) -> String {
    let text = format!("{:.2}", value.round_dp(2));
    match text.split_once('.') {
        Some((whole, fraction)) => format!("{}.{fraction}", group_digits(whole)),
        None => group_digits(&text),
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |s| format!("{} s", decimal(s, 3)))
}

/// A setting's value for people: counts grouped, except the seed (a name
/// for a schedule, not a quantity), text as it is.
fn setting(key: &str, value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Number(number) if key != "seed" => match number.as_u64() {
            Some(count) => grouped(count),
            None => number.to_string(),
        },
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Object(fields) => fields
            .iter()
            .map(|(name, value)| format!("{name}={}", setting(name, value)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// Appends `text` wrapped to [`REPORT_COLUMNS`], the first line after
/// `first` and the others indented by `indent` spaces.
fn wrapped(out: &mut String, first: &str, indent: usize, text: &str) {
    let indent = " ".repeat(indent);
    let options = textwrap::Options::new(REPORT_COLUMNS)
        .initial_indent(first)
        .subsequent_indent(&indent);
    for line in textwrap::wrap(text, options) {
        let _ = writeln!(out, "{line}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let row = |out: &mut String, name: &str, value: String| {
            wrapped(out, &format!("  {name:<24} "), 27, &value);
        };
        let _ = writeln!(
            out,
            "\nflashsale loadtest {} against {}",
            self.scenario,
            self.targets.join(", ")
        );
        let settings: Vec<String> = self
            .settings
            .iter()
            .map(|(key, value)| format!("{key}={}", setting(key, value)))
            .collect();
        wrapped(&mut out, "  ", 2, &settings.join(" "));
        let _ = writeln!(out, "\nload");
        row(
            &mut out,
            "duration",
            format!("{} s", decimal(self.duration_seconds, 3)),
        );
        row(&mut out, "operations", grouped(self.operations));
        row(
            &mut out,
            "requests",
            format!(
                "{} sent, {} answered, {} retries",
                grouped(self.requests),
                grouped(self.answered),
                grouped(self.retries)
            ),
        );
        row(
            &mut out,
            "no answer",
            format!(
                "{} connection errors, {} timeouts",
                grouped(self.transport_errors),
                grouped(self.timeouts)
            ),
        );
        if let Some(offered) = &self.offered {
            row(
                &mut out,
                "offered rate",
                format!(
                    "{}/s ({}, as the client sent)",
                    decimal(offered.per_second, 0),
                    offered.basis
                ),
            );
        }
        row(
            &mut out,
            "answered rate",
            format!(
                "{}/s (answers ÷ first send to last answer)",
                decimal(self.answered_per_second, 0)
            ),
        );
        if self.by_target.len() > 1 {
            for figures in &self.by_target {
                wrapped(
                    &mut out,
                    "  ",
                    4,
                    &format!(
                        "{}: {} sent, {} answered, {} no answer",
                        figures.url,
                        grouped(figures.sent),
                        grouped(figures.answered),
                        grouped(figures.no_answer)
                    ),
                );
            }
        }
        let o = &self.outcomes;
        row(
            &mut out,
            "outcomes",
            format!(
                "{} ok, {} sold out, {} refused, {} errors",
                grouped(o.ok),
                grouped(o.sold_out),
                grouped(o.refused),
                grouped(o.errors)
            ),
        );
        row(
            &mut out,
            "sold out after",
            seconds(self.sold_out_after_seconds),
        );
        row(
            &mut out,
            "last sale after",
            seconds(self.last_sale_after_seconds),
        );
        let l = &self.latency_ms;
        let _ = writeln!(out, "\nlatency (ms, from the scheduled instant)");
        let _ = writeln!(
            out,
            "  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let _ = writeln!(
            out,
            "  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            decimal(l.p50, 3),
            decimal(l.p90, 3),
            decimal(l.p99, 3),
            decimal(l.p999, 3),
            decimal(l.max, 3),
            decimal(l.mean, 3)
        );
        let _ = writeln!(out, "\nanswers by status");
        for (status, count) in &self.by_status {
            row(&mut out, status, grouped(*count));
        }
        if !self.by_code.is_empty() {
            let _ = writeln!(out, "\nanswers by error code");
            for (code, count) in &self.by_code {
                row(&mut out, code, grouped(*count));
            }
        }
        if !self.by_operation.is_empty() {
            let _ = writeln!(out, "\noperations by kind");
            for (kind, count) in &self.by_operation {
                row(&mut out, kind, grouped(*count));
            }
        }
        if let Some(r) = &self.raffle {
            let _ = writeln!(out, "\nraffle");
            row(&mut out, "registrants", grouped(r.registrants));
            row(&mut out, "drawn after", seconds(r.draw_after_seconds));
            row(
                &mut out,
                "all paid after",
                seconds(r.all_paid_after_seconds),
            );
            row(
                &mut out,
                "offers",
                format!(
                    "{} ({} holds, {} paid, {} expired)",
                    grouped(r.offers),
                    grouped(r.holds),
                    grouped(r.paid),
                    grouped(r.expired)
                ),
            );
        }
        let c = &self.client_cpu;
        let _ = writeln!(out, "\nclient CPU (load phase)");
        row(
            &mut out,
            "user + system",
            format!(
                "{} s ({} cores)",
                decimal(c.cpu_seconds, 3),
                decimal(c.cores_busy, 2)
            ),
        );
        row(
            &mut out,
            "per request",
            format!("{} µs", decimal(c.per_request_us, 1)),
        );
        let _ = writeln!(out, "\ninvariant checks");
        for check in &self.checks {
            let verdict = if check.passed { "pass" } else { "FAIL" };
            wrapped(
                &mut out,
                &format!("  [{verdict}] {:<24} ", check.name),
                34,
                &check.detail,
            );
        }
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let _ = writeln!(out, "\nresult: {verdict}");
        f.write_str(&out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::recorder::LATENCY_MICROS_MAX;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, LATENCY_MICROS_MAX, 3).expect("valid bounds");
        // 1 ms, 2 ms, ..., 1000 ms: p50 = 500 ms, p99 = 990 ms.
        for ms in 1..=1_000u64 {
            histogram.record(ms * 1_000).expect("in range");
        }
        let summary = LatencySummary::from_micros(&histogram);
        let close =
            |actual: f64, expected: f64| (actual - expected).abs() <= expected * 0.001 + 0.001;
        assert_eq!(summary.count, 1_000);
        assert!(close(summary.p50, 500.0), "{summary:?}");
        assert!(close(summary.p90, 900.0), "{summary:?}");
        assert!(close(summary.p99, 990.0), "{summary:?}");
        assert!(close(summary.p999, 999.0), "{summary:?}");
        assert!(close(summary.max, 1_000.0), "{summary:?}");
        assert!(close(summary.mean, 500.5), "{summary:?}");
    }

    #[test]
    fn an_empty_histogram_summarises_to_zero() {
        let histogram = Histogram::<u64>::new(3).expect("valid");
        assert_eq!(
            LatencySummary::from_micros(&histogram),
            LatencySummary::default()
        );
    }

    #[test]
    fn cpu_per_request_and_cores() {
        let cpu = ClientCpu::new(Duration::from_millis(400), 20_000, Duration::from_secs(2));
        assert!((cpu.per_request_us - 20.0).abs() < 1e-9);
        assert!((cpu.cores_busy - 0.2).abs() < 1e-9);
        assert_eq!(
            ClientCpu::new(Duration::ZERO, 0, Duration::ZERO).per_request_us,
            0.0
        );
    }

    #[test]
    fn counts_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_000_000), "1,000,000");
        assert_eq!(decimal(12_345.678_9, 3), "12,345.679");
        assert_eq!(decimal(999.5, 0), "1,000");
        assert_eq!(decimal(0.25, 2), "0.25");
        assert_eq!(amount(Decimal::new(9_990_000_000, 2)), "99,900,000.00");
        assert_eq!(amount(Decimal::new(5, 0)), "5.00");
    }

    /// Regression: the table mixed `1,000` and `1000`, ran past 80
    /// columns, and its JSON spelled every setting as a string.
    #[test]
    fn the_table_fits_80_columns_with_one_number_format() {
        let mut report = report();
        report.settings = BTreeMap::from([
            ("shoppers".to_owned(), serde_json::json!(1_000_000)),
            ("stock".to_owned(), serde_json::json!(100_000)),
            ("connections".to_owned(), serde_json::json!(64)),
            ("per_user_limit".to_owned(), serde_json::json!(1)),
            ("price".to_owned(), serde_json::json!("999.00")),
            ("ramp_seconds".to_owned(), serde_json::json!(1.0)),
            ("register".to_owned(), serde_json::json!(false)),
            ("max_attempts".to_owned(), serde_json::json!(8)),
            ("seed".to_owned(), serde_json::json!(12_345_678_901_234_u64)),
            ("deal".to_owned(), serde_json::json!("d_1")),
        ]);
        report.operations = 1_000_000;
        report.requests = 1_234_567;
        report.answered = 1_234_567;
        report.offered = Some(OfferedRate {
            per_second: 1_000_000.0,
            basis: "shoppers ÷ ramp".to_owned(),
        });
        report.answered_per_second = 123_456.7;
        report.targets = vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()];
        report.by_target = vec![
            TargetFigures {
                url: "http://127.0.0.1:1".into(),
                sent: 617_284,
                answered: 617_284,
                no_answer: 0,
            },
            TargetFigures {
                url: "http://127.0.0.1:2".into(),
                sent: 617_283,
                answered: 617_283,
                no_answer: 0,
            },
        ];
        report.latency_ms = LatencySummary {
            count: 1_000_000,
            mean: 12.5,
            p50: 3.25,
            p90: 40.0,
            p99: 1_234.5,
            p999: 12_345.678,
            max: 99_999.999,
        };
        report.by_status =
            BTreeMap::from([("201".to_owned(), 100_000), ("409".to_owned(), 900_000)]);
        report.checks.push(Check::new(
            "acknowledged orders kept",
            false,
            "1,234 answered 201 but not listed (o_1, o_2, o_3, o_4, o_5, o_6, o_7, \
             o_8, o_9, o_10); 0 listed for another shopper",
        ));
        let table = report.to_string();
        for line in table.lines() {
            assert!(
                line.chars().count() <= REPORT_COLUMNS,
                "{line:?} in\n{table}"
            );
        }
        for figure in [
            "shoppers=1,000,000",
            "stock=100,000",
            "seed=12345678901234",
            "1,000,000",
            "1,234,567 sent",
            "1,000,000/s (shoppers ÷ ramp, as the client sent)",
            "123,457/s (answers ÷ first send to last answer)",
            "http://127.0.0.1:2: 617,283 sent",
            "12,345.678",
            "100,000",
        ] {
            assert!(table.contains(figure), "{figure} in\n{table}");
        }
        // No count of four digits or more without its separator.
        let ungrouped = table
            .split(|c: char| !c.is_ascii_digit() && c != ',' && c != '.')
            .filter(|word| !word.contains(',') && !word.contains('.'))
            .any(|word| word.len() >= 4 && word != "12345678901234");
        assert!(!ungrouped, "{table}");

        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&report).expect("JSON")).expect("parses");
        assert_eq!(json["settings"]["shoppers"], 1_000_000);
        assert_eq!(json["settings"]["register"], false);
        assert_eq!(json["settings"]["price"], "999.00");
    }

    /// A report of nothing, for tests to fill in.
    pub(crate) fn report() -> Report {
        Report {
            scenario: "burst".into(),
            targets: vec!["http://127.0.0.1:1".into()],
            settings: BTreeMap::new(),
            duration_seconds: 1.0,
            operations: 0,
            requests: 0,
            answered: 0,
            retries: 0,
            transport_errors: 0,
            timeouts: 0,
            outcomes: Outcomes::default(),
            offered: None,
            answered_per_second: 0.0,
            by_target: Vec::new(),
            latency_ms: LatencySummary::default(),
            by_status: BTreeMap::new(),
            by_code: BTreeMap::new(),
            by_operation: BTreeMap::new(),
            sold_out_after_seconds: None,
            last_sale_after_seconds: None,
            client_cpu: ClientCpu::default(),
            timeline: Vec::new(),
            raffle: None,
            checks: vec![Check::new("a", true, "")],
        }
    }

    #[test]
    fn a_failed_check_fails_the_report() {
        let mut report = report();
        assert!(report.passed());
        report.checks.push(Check::new("b", false, "broken"));
        assert!(!report.passed());
        let table = report.to_string();
        assert!(table.contains("[FAIL] b"));
        assert!(table.contains("result: FAILED"));
    }
}
