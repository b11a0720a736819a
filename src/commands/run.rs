//! `run`: snapshot, fetch and push in one go.

use serde::Serialize;

use super::fetch::{FetchOptions, fetch};
use super::push::{PushOptions, push};
use super::snapshot::snapshot;
use super::{Context, TransferReport};
use crate::catalog::snapshot::SnapshotReport;
use crate::error::Result;

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub snapshot: SnapshotReport,
    pub fetch: TransferReport,
    pub push: TransferReport,
}

impl RunReport {
    pub fn exit_code(&self) -> u8 {
        self.fetch.exit_code().max(self.push.exit_code())
    }
}

pub fn run(
    ctx: &Context,
    db: &str,
    fetch_opts: &FetchOptions,
    push_opts: &PushOptions,
) -> Result<RunReport> {
    // Refused before anything is done, not after a snapshot and a fetch.
    crate::store_url::refuse_archive_overlap(&push_opts.to, &ctx.archive, "--to")?;
    crate::telegram::check_api_url(&fetch_opts.telegram_api).map_err(crate::Error::Usage)?;
    let snapshot = snapshot(ctx, db)?;
    let fetch = fetch(ctx, fetch_opts)?;
    let push = push(ctx, push_opts)?;
    Ok(RunReport {
        snapshot,
        fetch,
        push,
    })
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.snapshot)?;
        write!(f, "fetch: {}", self.fetch)?;
        write!(f, "push: {}", self.push)
    }
}
