//! `run`: snapshot, fetch and push in one go (the binary calls them in
//! turn: no command imports another). A stage that stops on an error stops
//! the run, and the report still holds the stages that ran, with the stage
//! that failed and its error.

use serde::Serialize;

use super::{Context, TransferReport};
use crate::catalog::snapshot::SnapshotReport;
use crate::error::{Error, ExitStatus, Result};

/// The reports of the stages that ran; with `--json`, one document whose
/// `error` and `exit_code` (as any command's error document has them) and
/// `failed_stage` say which stage stopped the run, when one did.
#[derive(Debug, Default, Serialize)]
pub struct RunReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch: Option<TransferReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<TransferReport>,
    #[serde(flatten)]
    pub failure: Option<StageFailure>,
}

/// A stage that stopped the run on an error.
#[derive(Debug, Serialize)]
pub struct StageFailure {
    /// `snapshot`, `fetch` or `push`.
    pub failed_stage: &'static str,
    /// The error's message, without secrets.
    pub error: String,
    pub exit_code: u8,
    #[serde(skip)]
    pub status: ExitStatus,
}

impl RunReport {
    /// The failed stage's, else the worse of fetch's and push's.
    pub fn exit_status(&self) -> ExitStatus {
        match &self.failure {
            Some(failure) => failure.status,
            None => [&self.fetch, &self.push]
                .into_iter()
                .flatten()
                .map(TransferReport::exit_status)
                .max()
                .unwrap_or(ExitStatus::Success),
        }
    }

    fn failed(mut self, stage: &'static str, error: Error) -> RunReport {
        let status = error.exit_status();
        self.failure = Some(StageFailure {
            failed_stage: stage,
            error: crate::redact::text(&error.to_string()),
            exit_code: status.code(),
            status,
        });
        self
    }
}

/// What `run` refuses before anything is done, not after a snapshot and a
/// fetch: a `--to` inside the archive, a `--telegram-api` that is no URL.
pub fn check_options(ctx: &Context, to: &str, telegram_api: &str) -> Result<()> {
    crate::store_url::refuse_archive_overlap(to, &ctx.archive, "--to")?;
    crate::telegram::check_api_url(telegram_api).map_err(Error::Usage)
}

/// The three stages, called in turn until one stops on an error: the
/// report of those that ran, and of the one that failed
/// ([`RunReport::failure`]).
pub fn in_turn(
    snapshot: impl FnOnce() -> Result<SnapshotReport>,
    fetch: impl FnOnce() -> Result<TransferReport>,
    push: impl FnOnce() -> Result<TransferReport>,
) -> RunReport {
    let mut report = RunReport::default();
    match snapshot() {
        Ok(snapshot) => report.snapshot = Some(snapshot),
        Err(e) => return report.failed("snapshot", e),
    }
    match fetch() {
        Ok(fetch) => report.fetch = Some(fetch),
        Err(e) => return report.failed("fetch", e),
    }
    match push() {
        Ok(push) => report.push = Some(push),
        Err(e) => return report.failed("push", e),
    }
    report
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(snapshot) = &self.snapshot {
            write!(f, "{snapshot}")?;
        }
        if let Some(fetch) = &self.fetch {
            write!(f, "fetch: {fetch}")?;
        }
        if let Some(push) = &self.push {
            write!(f, "push: {push}")?;
        }
        if let Some(failure) = &self.failure {
            writeln!(
                f,
                "{}: stopped the run (the stages before it are reported above)",
                failure.failed_stage
            )?;
        }
        Ok(())
    }
}
