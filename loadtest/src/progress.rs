//! The live progress line: connected / target, deliveries per second, recent p99, errors.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// The progress line, or nothing when it is off.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A progress line on stderr, hidden when `off` or when stderr is not a terminal.
    pub fn new(off: bool) -> Progress {
        let bar = if off || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        };
        Progress { bar }
    }

    /// Replaces the line's text.
    pub fn show(&self, phase: &str, line: String) {
        self.bar.set_message(format!("{phase:<10} {line}"));
    }

    /// Prints a line above the progress line.
    pub fn note(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Removes the line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
