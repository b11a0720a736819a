//! The one place that decides what goes where: reports to stdout (text or one
//! JSON document), logs to stderr, progress bars only on a terminal. Log
//! lines go through the bar ([`LogWriter`]), so that none is drawn over it and
//! no stale bar line is left behind.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde::Serialize;

use starchive::progress::Progress;

pub struct Printer {
    pub json: bool,
    /// The bars, on a terminal only.
    bars: Option<Arc<Bars>>,
}

impl Printer {
    pub fn new(json: bool) -> Printer {
        Printer {
            json,
            bars: std::io::stderr()
                .is_terminal()
                .then(|| Arc::new(Bars::default())),
        }
    }

    /// Writes the report, scrubbed of secrets ([`starchive::redact::text`]):
    /// a reason may quote a library's message.
    pub fn report<T: Serialize + std::fmt::Display>(&self, report: &T) {
        let text = if self.json {
            match serde_json::to_string_pretty(report) {
                Ok(text) => format!("{text}\n"),
                Err(e) => {
                    eprintln!("error: cannot render the report: {e}");
                    return;
                }
            }
        } else {
            report.to_string()
        };
        let _ = std::io::stdout()
            .lock()
            .write_all(starchive::redact::text(&text).as_bytes());
    }

    /// The JSON document of a command that stopped on an error (`--json`):
    /// `{"error": MESSAGE, "exit_code": N}`, so that stdout always holds one.
    pub fn error(&self, message: &str, exit_code: u8) {
        let doc = serde_json::json!({ "error": message, "exit_code": exit_code });
        let _ = writeln!(std::io::stdout().lock(), "{doc:#}");
    }

    /// A progress sink: bars on a terminal, nothing elsewhere.
    pub fn progress(&self) -> Arc<dyn Progress> {
        match &self.bars {
            Some(bars) => bars.clone(),
            None => Arc::new(starchive::progress::NoProgress),
        }
    }

    /// Where log lines go: stderr, around the bar.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter(self.bars.clone())
    }
}

/// Makes a writer per log event that writes the whole line to stderr at
/// once, with the bar (if any) hidden meanwhile.
#[derive(Clone)]
pub struct LogWriter(Option<Arc<Bars>>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            buf: Vec::new(),
            bars: self.0.clone(),
        }
    }
}

/// One log event, written out when dropped.
pub struct LogLine {
    buf: Vec<u8>,
    bars: Option<Arc<Bars>>,
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        // Every log line is scrubbed: a library's message may quote a URL.
        let line = starchive::redact::text(&String::from_utf8_lossy(&self.buf));
        let write = || {
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        };
        match &self.bars {
            Some(bars) => bars.suspend(write),
            None => write(),
        }
    }
}

#[derive(Default)]
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// Runs `f` with the bar cleared, then draws it again.
    fn suspend(&self, f: impl FnOnce()) {
        match self.bar.lock() {
            Ok(slot) => match slot.as_ref() {
                Some(bar) => bar.suspend(f),
                None => f(),
            },
            Err(_) => f(),
        }
    }
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: Option<u64>) {
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let template = if total.is_some() {
            "{msg} [{bar:30}] {human_pos}/{human_len} ({rate}, {eta} left)"
        } else {
            "{msg} {human_pos} ({rate})"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> ").with_key("rate", rate));
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

/// Items per second as a person reads them: `1243/s`, `12.5/s`, `0.25/s`.
fn rate(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{}/s", human_rate(state.per_sec()));
}

fn human_rate(per_sec: f64) -> String {
    match per_sec {
        r if !r.is_finite() || r <= 0.0 => "0".into(),
        r if r >= 100.0 => format!("{}", indicatif::HumanCount(r.round() as u64)),
        r if r >= 1.0 => format!("{r:.1}"),
        r => format!("{r:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_a_person_would() {
        assert_eq!(human_rate(1242.7274), "1,243");
        assert_eq!(human_rate(12.46), "12.5");
        assert_eq!(human_rate(0.25), "0.25");
        assert_eq!(human_rate(f64::NAN), "0");
    }
}
