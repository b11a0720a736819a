//! `run`: snapshot, fetch and push in one go. A stage that stops on an
//! error stops the run, and the report still holds the stages that ran, with
//! the stage that failed and its error.

use serde::Serialize;

use super::fetch::FetchOptions;
use super::push::PushOptions;
use super::{Context, TransferReport};
use crate::catalog::snapshot::SnapshotReport;
use crate::error::{Error, ExitStatus, Result};

pub struct RunOptions {
    /// `--db`: the source database or CSV directory.
    pub db: String,
    pub fetch: FetchOptions,
    pub push: PushOptions,
}

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

/// Snapshot, fetch and push in turn. What `run` refuses before anything is
/// done (a `--to` inside the archive, a `--telegram-api` that is no URL) is
/// an error; a stage that fails after that ends the run with a report of
/// the stages before it ([`RunReport::failure`]).
pub fn run(ctx: &Context, opts: &RunOptions) -> Result<RunReport> {
    crate::store_url::refuse_archive_overlap(&opts.push.to, &ctx.archive, "--to")?;
    crate::telegram::check_api_url(&opts.fetch.telegram_api).map_err(Error::Usage)?;
    let mut report = RunReport::default();
    match super::snapshot::snapshot(ctx, &opts.db) {
        Ok(snapshot) => report.snapshot = Some(snapshot),
        Err(e) => return Ok(report.failed("snapshot", e)),
    }
    match super::fetch::fetch(ctx, &opts.fetch) {
        Ok(fetch) => report.fetch = Some(fetch),
        Err(e) => return Ok(report.failed("fetch", e)),
    }
    match super::push::push(ctx, &opts.push) {
        Ok(push) => report.push = Some(push),
        Err(e) => return Ok(report.failed("push", e)),
    }
    Ok(report)
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
