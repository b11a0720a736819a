//! The one place that decides what goes where: reports to stdout (text or one
//! JSON document), logs to stderr, progress bars only on a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use starchive::progress::Progress;

pub struct Printer {
    pub json: bool,
}

impl Printer {
    pub fn report<T: Serialize + std::fmt::Display>(&self, report: &T) {
        let mut out = std::io::stdout().lock();
        let _ = if self.json {
            match serde_json::to_string_pretty(report) {
                Ok(text) => writeln!(out, "{text}"),
                Err(e) => writeln!(std::io::stderr(), "error: cannot render the report: {e}"),
            }
        } else {
            write!(out, "{report}")
        };
    }

    /// A progress sink: bars on a terminal, nothing elsewhere.
    pub fn progress(&self) -> std::sync::Arc<dyn Progress> {
        if std::io::stderr().is_terminal() {
            std::sync::Arc::new(Bars::default())
        } else {
            std::sync::Arc::new(starchive::progress::NoProgress)
        }
    }
}

#[derive(Default)]
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: Option<u64>) {
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        let template = if total.is_some() {
            "{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta})"
        } else {
            "{msg} {pos} ({per_sec})"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(stage.to_string());
        if let Ok(mut slot) = self.bar.lock()
            && let Some(old) = slot.replace(bar)
        {
            old.finish_and_clear();
        }
    }

    fn advance(&self, n: u64) {
        if let Ok(slot) = self.bar.lock()
            && let Some(bar) = slot.as_ref()
        {
            bar.inc(n);
        }
    }

    fn finish(&self) {
        if let Ok(mut slot) = self.bar.lock()
            && let Some(bar) = slot.take()
        {
            bar.finish_and_clear();
        }
    }
}
