//! The live progress bar and phase messages on stderr.
//!
//! The bar (elapsed, ok, sold out, refused, errors, current rate) is
//! drawn only when stderr is a terminal and `--quiet` is off; otherwise no
//! ticker runs at all, so a scripted run pays nothing for it. Phase
//! messages ("creating 1,000,000 shoppers") go to stderr unless `--quiet`.
//! The bar's line fits [`PROGRESS_COLUMNS`] and its counts are grouped as
//! in the report.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::recorder::{Counters, Recorder};
use crate::report::{decimal, grouped};

/// How often the bar is redrawn.
pub const PROGRESS_TICK: Duration = Duration::from_millis(200);
/// Widest line of the bar, in characters.
pub const PROGRESS_COLUMNS: usize = 80;
/// The bar's template: `HH:MM:SS [bar] ` before the message.
const TEMPLATE: &str = "{elapsed_precise} [{bar:12.cyan/blue}] {msg}";
/// Characters of the template before the message: 8 + 1 + 14 + 1.
const TEMPLATE_COLUMNS: usize = 24;

/// Where progress goes.
#[derive(Debug, Clone)]
pub struct Progress {
    quiet: bool,
    visible: bool,
}

/// A running bar; [`LiveBar::stop`] clears it.
#[derive(Debug)]
pub struct LiveBar {
    bar: ProgressBar,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Progress for this process: a bar only on a terminal, and nothing at
    /// all with `quiet`.
    pub fn new(quiet: bool) -> Progress {
        Progress {
            quiet,
            visible: !quiet && std::io::stderr().is_terminal(),
        }
    }

    /// Says what the run is doing now.
    pub fn phase(&self, message: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("flashsale loadtest: {}", message.as_ref());
        }
    }

    /// Starts the bar for `operations` planned operations, fed from the
    /// recorder's counters.
    pub fn start(&self, operations: u64, recorder: Arc<Recorder>) -> LiveBar {
        if !self.visible {
            return LiveBar {
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(operations), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        let ticker = tokio::spawn(tick(bar.clone(), recorder));
        LiveBar {
            bar,
            ticker: Some(ticker),
        }
    }
}

impl LiveBar {
    /// Stops the ticker and clears the bar.
    pub fn stop(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }
}

async fn tick(bar: ProgressBar, recorder: Arc<Recorder>) {
    let mut interval = tokio::time::interval(PROGRESS_TICK);
    let mut last = (Instant::now(), 0u64);
    loop {
        interval.tick().await;
        let c = &recorder.counters;
        let sent = Counters::get(&c.sent);
        let (ok, sold_out, refused, errors) = (
            Counters::get(&c.ok),
            Counters::get(&c.sold_out),
            Counters::get(&c.refused),
            Counters::get(&c.errors),
        );
        let now = Instant::now();
        let elapsed = now.duration_since(last.0).as_secs_f64();
        let rate = if elapsed > 0.0 {
            (sent - last.1) as f64 / elapsed
        } else {
            0.0
        };
        last = (now, sent);
        bar.set_position(ok + sold_out + refused + errors);
        bar.set_message(message([ok, sold_out, refused, errors], rate));
    }
}

/// The bar's message: `[ok, sold out, refused, errors]` and the rate of
/// requests sent, cut to fit [`PROGRESS_COLUMNS`] after the template.
fn message([ok, sold_out, refused, errors]: [u64; 4], rate: f64) -> String {
    let text = format!(
        "ok {} sold out {} refused {} err {} {}/s",
        grouped(ok),
        grouped(sold_out),
        grouped(refused),
        grouped(errors),
        decimal(rate, 0)
    );
    let room = PROGRESS_COLUMNS - TEMPLATE_COLUMNS;
    if text.chars().count() <= room {
        return text;
    }
    let mut cut: String = text.chars().take(room - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the bar's line ran past 80 columns in a large burst.
    #[test]
    fn the_bar_fits_80_columns() {
        let xiaomi = message([100_000, 900_000, 0, 12], 98_765.4);
        assert_eq!(
            xiaomi,
            "ok 100,000 sold out 900,000 refused 0 err 12 98,765/s"
        );
        assert!(TEMPLATE_COLUMNS + xiaomi.chars().count() <= PROGRESS_COLUMNS);
        let absurd = message([10_000_000; 4], 1e9);
        assert_eq!(
            TEMPLATE_COLUMNS + absurd.chars().count(),
            PROGRESS_COLUMNS,
            "{absurd}"
        );
        assert!(absurd.ends_with('…'));
    }
}
