//! The end-of-run report: a table for people, the same as JSON for
//! machines, and the pass/fail list of invariant checks.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::error::LoadtestError;
use crate::recorder::{TimelinePoint, millis};

/// Everything a run measured and checked.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `burst` or `steady`.
    pub scenario: String,
    pub target: String,
    /// The scenario's parameters, as shown to the user.
    pub settings: BTreeMap<String, String>,
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
    /// Answers per second over the run.
    pub throughput_per_second: f64,
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
    pub checks: Vec<Check>,
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

/// CPU the load generator itself used during the load phase.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct ClientCpu {
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// User plus system time per request sent, in microseconds.
    pub per_request_us: f64,
    /// Share of the load phase's wall time, in cores (1.0 = one core busy).
    pub cores_busy: f64,
}

impl ClientCpu {
    /// CPU figures from the totals of the load phase.
    pub fn new(user: Duration, system: Duration, requests: u64, wall: Duration) -> ClientCpu {
        let total = (user + system).as_secs_f64();
        ClientCpu {
            user_seconds: user.as_secs_f64(),
            system_seconds: system.as_secs_f64(),
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

/// Thousands separators for counts: `1234567` → `1,234,567`.
pub fn grouped(count: u64) -> String {
    let digits = count.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |s| format!("{s:.3} s"))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let row = |out: &mut String, name: &str, value: String| {
            let _ = writeln!(out, "  {name:<24} {value}");
        };
        let _ = writeln!(
            out,
            "\nflashsale loadtest {} against {}",
            self.scenario, self.target
        );
        let settings: Vec<String> = self
            .settings
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let _ = writeln!(out, "  {}", settings.join(" "));
        let _ = writeln!(out, "\nload");
        row(
            &mut out,
            "duration",
            format!("{:.3} s", self.duration_seconds),
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
        row(
            &mut out,
            "throughput",
            format!("{:.0} answers/s", self.throughput_per_second),
        );
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
            "  {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
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
        let c = &self.client_cpu;
        let _ = writeln!(out, "\nclient CPU (load phase)");
        row(
            &mut out,
            "user + system",
            format!(
                "{:.3} s + {:.3} s ({:.2} cores)",
                c.user_seconds, c.system_seconds, c.cores_busy
            ),
        );
        row(
            &mut out,
            "per request",
            format!("{:.1} µs", c.per_request_us),
        );
        let _ = writeln!(out, "\ninvariant checks");
        for check in &self.checks {
            let verdict = if check.passed { "pass" } else { "FAIL" };
            let _ = writeln!(out, "  [{verdict}] {:<28} {}", check.name, check.detail);
        }
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let _ = writeln!(out, "\nresult: {verdict}");
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
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
        let cpu = ClientCpu::new(
            Duration::from_millis(300),
            Duration::from_millis(100),
            20_000,
            Duration::from_secs(2),
        );
        assert!((cpu.per_request_us - 20.0).abs() < 1e-9);
        assert!((cpu.cores_busy - 0.2).abs() < 1e-9);
        assert_eq!(
            ClientCpu::new(Duration::ZERO, Duration::ZERO, 0, Duration::ZERO).per_request_us,
            0.0
        );
    }

    #[test]
    fn counts_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_000_000), "1,000,000");
    }

    #[test]
    fn a_failed_check_fails_the_report() {
        let mut report = Report {
            scenario: "burst".into(),
            target: "http://127.0.0.1:1".into(),
            settings: BTreeMap::new(),
            duration_seconds: 1.0,
            operations: 0,
            requests: 0,
            answered: 0,
            retries: 0,
            transport_errors: 0,
            timeouts: 0,
            outcomes: Outcomes::default(),
            throughput_per_second: 0.0,
            latency_ms: LatencySummary::default(),
            by_status: BTreeMap::new(),
            by_code: BTreeMap::new(),
            by_operation: BTreeMap::new(),
            sold_out_after_seconds: None,
            last_sale_after_seconds: None,
            client_cpu: ClientCpu::default(),
            timeline: Vec::new(),
            checks: vec![Check::new("a", true, "")],
        };
        assert!(report.passed());
        report.checks.push(Check::new("b", false, "broken"));
        assert!(!report.passed());
        let table = report.to_string();
        assert!(table.contains("[FAIL] b"));
        assert!(table.contains("result: FAILED"));
    }
}
