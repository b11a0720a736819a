//! The one place that decides what goes where: reports to stdout (text or one
//! JSON document), logs to stderr, progress bars only on a terminal. Log
//! lines go through the bar ([`LogWriter`]), so that none is drawn over it and
//! no stale bar line is left behind.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde::Serialize;

use starchive::ExitStatus;
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

    /// Writes the report, scrubbed of secrets ([`starchive::redact::text`])
    /// line by line as it is rendered: a reason may quote a library's
    /// message, and a report may list a whole bucket (`check --json`), so
    /// it streams out rather than being held whole.
    pub fn report<T: Serialize + std::fmt::Display>(&self, report: &T) {
        let mut out = Redacting::new(std::io::stdout().lock());
        let written = if self.json {
            serde_json::to_writer_pretty(&mut out, report)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out))
        } else {
            write!(out, "{report}")
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            eprintln!("error: cannot write the report: {e}");
        }
    }

    /// The JSON document of a command that stopped on an error (`--json`):
    /// `{"error": MESSAGE, "exit_code": N}`, so that stdout always holds one.
    pub fn error(&self, message: &str, status: ExitStatus) {
        let doc = serde_json::json!({ "error": message, "exit_code": status.code() });
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

/// A writer that passes each whole line through [`starchive::redact::text`]
/// (a secret never spans lines: URLs, tokens and keys end at whitespace).
struct Redacting<W: Write> {
    out: std::io::BufWriter<W>,
    line: Vec<u8>,
}

impl<W: Write> Redacting<W> {
    fn new(out: W) -> Self {
        Redacting {
            out: std::io::BufWriter::new(out),
            line: Vec::new(),
        }
    }

    fn write_line(&mut self) -> std::io::Result<()> {
        let text = starchive::redact::text(&String::from_utf8_lossy(&self.line));
        self.line.clear();
        self.out.write_all(text.as_bytes())
    }
}

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..=end]);
            self.write_line()?;
            rest = &rest[end + 1..];
        }
        self.line.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.line.is_empty() {
            self.write_line()?;
        }
        self.out.flush()
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

    #[test]
    fn a_streamed_report_is_scrubbed_line_by_line() {
        starchive::redact::remember("hunter2-streamed");
        let mut out = Redacting::new(Vec::new());
        // A secret and a URL's password cut across writes, a last line with no newline.
        for chunk in [
            "key hunt",
            "er2-streamed here\nurl s3://u:pa",
            "ss@host/b ok\n",
            "tail hunter2-",
            "streamed",
        ] {
            out.write_all(chunk.as_bytes()).expect("write");
        }
        out.flush().expect("flush");
        let text = String::from_utf8(out.out.into_inner().expect("inner")).expect("utf-8");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("pass"), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            text.starts_with("key ") && text.contains("s3://u:"),
            "{text}"
        );
    }
}
