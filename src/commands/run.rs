//! `run`: snapshot, fetch and push in one go (the binary calls them in turn).

use serde::Serialize;

use super::{Context, TransferReport};
use crate::catalog::snapshot::SnapshotReport;
use crate::error::{ExitStatus, Result};

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub snapshot: SnapshotReport,
    pub fetch: TransferReport,
    pub push: TransferReport,
}

impl RunReport {
    /// The worse of fetch's and push's.
    pub fn exit_status(&self) -> ExitStatus {
        self.fetch.exit_status().max(self.push.exit_status())
    }
}

/// What `run` refuses before anything is done, not after a snapshot and a
/// fetch: a `--to` inside the archive, a `--telegram-api` that is no URL.
/// The binary then runs snapshot, fetch and push in turn into a [`RunReport`].
pub fn check_options(ctx: &Context, to: &str, telegram_api: &str) -> Result<()> {
    crate::store_url::refuse_archive_overlap(to, &ctx.archive, "--to")?;
    crate::telegram::check_api_url(telegram_api).map_err(crate::Error::Usage)
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.snapshot)?;
        write!(f, "fetch: {}", self.fetch)?;
        write!(f, "push: {}", self.push)
    }
}
