//! `--plot FILE`: latency percentiles and throughput over time, as SVG.
//!
//! Two panels share the time axis: on top p50, p90, p99, p99.9 and max
//! latency of the operations that finished in each interval; below, answers
//! per second. Drawn with `plotters`' SVG backend and line series only.
//!
//! The legend has a column of its own right of the charts, so it never
//! covers a line. The last interval, cut short by the end of the run, is
//! drawn as a rate only when it lasted at least half an interval: a rate
//! over a few milliseconds says nothing and would dwarf the rest.

use std::path::Path;

use plotters::prelude::*;

use crate::error::LoadtestError;
use crate::recorder::TimelinePoint;
use crate::report::Report;

/// Size of the picture, in pixels.
pub const PLOT_SIZE: (u32, u32) = (1_000, 720);
/// Width of the legend's column, right of the charts, in pixels.
pub const LEGEND_WIDTH: u32 = 110;
/// Shortest interval, as a share of the timeline's interval, whose rate is
/// drawn.
const RATE_INTERVAL_SHARE_MIN: f64 = 0.5;

type Series<'a> = (&'a str, RGBColor, fn(&TimelinePoint) -> Option<f64>);

/// Draws the report's timeline to `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), LoadtestError> {
    draw(report, path).map_err(|error| LoadtestError::Plot {
        path: path.to_owned(),
        message: error.to_string(),
    })
}

fn draw(report: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let timeline = &report.timeline;
    let t_max = timeline
        .last()
        .map_or(1.0, |point| point.t_seconds)
        .max(0.001);
    let root = SVGBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (charts, legend) = root.split_horizontally(PLOT_SIZE.0 - LEGEND_WIDTH);
    let (upper, lower) = charts.split_vertically(PLOT_SIZE.1 * 3 / 5);

    let series: [Series<'_>; 5] = [
        ("p50", BLUE, |p| p.p50_ms),
        ("p90", GREEN, |p| p.p90_ms),
        ("p99", RGBColor(230, 140, 0), |p| p.p99_ms),
        ("p99.9", RED, |p| p.p999_ms),
        ("max", BLACK, |p| p.max_ms),
    ];
    let latency_max = timeline
        .iter()
        .filter_map(|point| point.max_ms)
        .fold(0.0_f64, f64::max)
        .max(0.001)
        * 1.05;
    let mut latency = ChartBuilder::on(&upper)
        .caption(
            format!(
                "{} against {}: latency (ms)",
                report.scenario,
                report.targets.join(", ")
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..latency_max)?;
    latency
        .configure_mesh()
        .x_desc("seconds after T0")
        .y_desc("ms")
        .draw()?;
    for (row, (name, color, value)) in (0_i32..).zip(series) {
        latency.draw_series(LineSeries::new(
            timeline
                .iter()
                .filter_map(|point| value(point).map(|ms| (point.t_seconds, ms))),
            color.stroke_width(2),
        ))?;
        let y = 50 + row * 22;
        legend.draw(&PathElement::new(
            vec![(8, y), (32, y)],
            color.stroke_width(2),
        ))?;
        legend.draw(&Text::new(name, (40, y - 7), ("sans-serif", 14)))?;
    }

    let rates = rate_points(timeline);
    let answers_max = rates
        .iter()
        .map(|&(_, rate)| rate)
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.05;
    let mut throughput = ChartBuilder::on(&lower)
        .caption("throughput (answers/s)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..answers_max)?;
    throughput
        .configure_mesh()
        .x_desc("seconds after T0")
        .y_desc("answers/s")
        .draw()?;
    throughput.draw_series(LineSeries::new(rates, BLUE.stroke_width(2)))?;
    root.present()?;
    Ok(())
}

/// `(t_seconds, answers_per_second)` of the intervals that lasted at least
/// [`RATE_INTERVAL_SHARE_MIN`] of the longest one.
fn rate_points(timeline: &[TimelinePoint]) -> Vec<(f64, f64)> {
    let interval = timeline
        .iter()
        .map(|point| point.interval_seconds)
        .fold(0.0_f64, f64::max);
    timeline
        .iter()
        .filter(|point| point.interval_seconds >= interval * RATE_INTERVAL_SHARE_MIN)
        .map(|point| (point.t_seconds, point.answers_per_second))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t_seconds: f64, interval_seconds: f64, answers: f64) -> TimelinePoint {
        TimelinePoint {
            t_seconds,
            interval_seconds,
            answers_per_second: answers / interval_seconds,
            completed: answers as u64,
            p50_ms: Some(1.0),
            p90_ms: Some(2.0),
            p99_ms: Some(3.0),
            p999_ms: Some(4.0),
            max_ms: Some(5.0),
        }
    }

    /// Regression: the last second, cut after 1 ms, was drawn as 1,000
    /// times its few answers per second.
    #[test]
    fn a_short_last_interval_is_not_drawn_as_a_rate() {
        let timeline = [
            point(1.0, 1.0, 900.0),
            point(2.0, 1.0, 1_000.0),
            point(2.001, 0.001, 3.0),
        ];
        assert_eq!(rate_points(&timeline), vec![(1.0, 900.0), (2.0, 1_000.0)]);
        let longer = [point(1.0, 1.0, 900.0), point(1.6, 0.6, 300.0)];
        assert_eq!(rate_points(&longer).len(), 2);
    }

    /// The legend's labels sit in their own column, right of both charts.
    #[test]
    fn the_legend_is_beside_the_charts() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("plot.svg");
        let mut report = crate::report::tests::report();
        report.timeline = vec![point(1.0, 1.0, 900.0), point(2.0, 1.0, 1_000.0)];
        write_svg(&report, &path).expect("drawn");
        let svg = std::fs::read_to_string(&path).expect("written");
        // Each `<text x="…" …>label</text>`, as (x, label).
        let texts: Vec<(f64, &str)> = svg
            .split("<text ")
            .skip(1)
            .filter_map(|tag| {
                let x = tag.split("x=\"").nth(1)?.split('"').next()?.parse().ok()?;
                let label = tag.split_once('>')?.1.split("</text>").next()?.trim();
                Some((x, label))
            })
            .collect();
        for name in ["p50", "p90", "p99", "p99.9", "max"] {
            let (x, _) = texts
                .iter()
                .find(|(_, label)| *label == name)
                .unwrap_or_else(|| panic!("{name} in {texts:?}"));
            assert!(*x >= f64::from(PLOT_SIZE.0 - LEGEND_WIDTH), "{name} at {x}");
        }
    }
}
