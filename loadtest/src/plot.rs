//! `--plot FILE`: latency percentiles and throughput over time, as SVG.
//!
//! Two panels share the time axis: on top p50, p90, p99, p99.9 and max
//! latency of the operations that finished in each interval; below, answers
//! per second. Drawn with `plotters`' SVG backend and line series only.

use std::path::Path;

use plotters::prelude::*;

use crate::error::LoadtestError;
use crate::report::Report;

/// Size of the picture, in pixels.
pub const PLOT_SIZE: (u32, u32) = (1_000, 720);

type Series<'a> = (
    &'a str,
    RGBColor,
    fn(&crate::recorder::TimelinePoint) -> Option<f64>,
);

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
    let (upper, lower) = root.split_vertically(PLOT_SIZE.1 * 3 / 5);

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
                report.scenario, report.target
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
    for (name, color, value) in series {
        latency
            .draw_series(LineSeries::new(
                timeline
                    .iter()
                    .filter_map(|point| value(point).map(|ms| (point.t_seconds, ms))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    latency
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let answers_max = timeline
        .iter()
        .map(|point| point.answers_per_second)
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
    throughput.draw_series(LineSeries::new(
        timeline
            .iter()
            .map(|point| (point.t_seconds, point.answers_per_second)),
        BLUE.stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}
