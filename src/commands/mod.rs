//! The stages as library functions: each reads its work from the catalog,
//! does it and returns a report. The binary parses options, calls one of
//! these and renders the report.

pub mod backfill;
pub mod check;
pub mod fetch;
pub mod gallery;
pub mod plan;
pub mod pull;
pub mod push;
pub mod run;
pub mod snapshot;
pub mod status;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::error::{ExitStatus, Result};
use crate::progress::Progress;

/// What every command is given.
pub struct Context {
    pub archive: PathBuf,
    /// `--env`: an empty list means every env.
    pub envs: Vec<String>,
    pub runtime: tokio::runtime::Handle,
    pub progress: Arc<dyn Progress>,
    /// Where the database URL came from, to name it in messages: `--db` or
    /// `DATABASE_URL`.
    pub db_origin: &'static str,
}

/// Items of each list a text report shows (the rest are counted).
pub const CUT: usize = 20;

/// Writes `items` one per line with `line`: the first [`CUT`] of
/// them unless `full`, then `indent` and "… and N more". A text report stays readable
/// however many items fail; `--full` (and `--json`) has them all.
pub(crate) fn write_cut<T>(
    f: &mut std::fmt::Formatter<'_>,
    items: &[T],
    full: bool,
    indent: &str,
    mut line: impl FnMut(&mut std::fmt::Formatter<'_>, &T) -> std::fmt::Result,
) -> std::fmt::Result {
    let shown = if full { items.len() } else { CUT };
    for item in items.iter().take(shown) {
        line(f, item)?;
    }
    if items.len() > shown {
        writeln!(
            f,
            "{indent}… and {} more (--full lists them all)",
            items.len() - shown
        )?;
    }
    Ok(())
}

impl Context {
    /// `--env` as a SQL parameter: a JSON array, or NULL for every env.
    /// Used as `(?N IS NULL OR env IN (SELECT value FROM json_each(?N)))`.
    pub fn env_param(&self) -> Option<String> {
        (!self.envs.is_empty()).then(|| serde_json::Value::from(self.envs.clone()).to_string())
    }
}

impl Context {
    /// The catalog's latest snapshot (its id and when it was taken), or
    /// [`crate::Error::NoSnapshot`]: a catalog whose first snapshot failed
    /// has no rows to report on, and an empty report would read as "all is well".
    pub fn latest_snapshot(&self, catalog: &Catalog) -> Result<(i64, String)> {
        crate::catalog::push::latest_snapshot(catalog.conn())?
            .ok_or_else(|| crate::Error::NoSnapshot(self.archive.clone()))
    }

    /// Warns about each `--env` that no session in the catalog has, naming
    /// the envs there are: a misspelt env would otherwise give silent zeros.
    pub fn warn_unknown_envs(&self, catalog: &Catalog) -> Result<()> {
        if self.envs.is_empty() {
            return Ok(());
        }
        let known = crate::catalog::known_envs(catalog.conn())?;
        for env in self.envs.iter().filter(|e| !known.contains(e)) {
            tracing::warn!(
                "--env {env}: no session has this env ({})",
                envs_there(&known)
            );
        }
        Ok(())
    }

    /// Refuses `--env ""` as bad usage: an empty env is none (SPEC §1, as in
    /// a CSV export), which no `--env` selects. The message names the envs
    /// of the archive's catalog, when there is one.
    pub fn refuse_empty_env(&self) -> Result<()> {
        if !self.envs.iter().any(String::is_empty) {
            return Ok(());
        }
        let there = match Catalog::open_read_only(&self.archive) {
            Ok(catalog) => envs_there(&crate::catalog::known_envs(catalog.conn())?),
            Err(_) => format!("{} holds no catalog yet", self.archive.display()),
        };
        Err(crate::Error::Usage(format!(
            "--env \"\": an empty env is no env, and sessions with none are left out by any \
             --env; give an env's name ({there}), or no --env for every env"
        )))
    }
}

/// The envs the catalog knows, as a message names them.
fn envs_there(known: &[String]) -> String {
    if known.is_empty() {
        "the catalog has no env".to_string()
    } else {
        let shown: Vec<String> = known.iter().map(|e| shown_env(e)).collect();
        format!("the envs are: {}", shown.join(", "))
    }
}

/// An env as a list shows it: quoted when it would not read as itself
/// there (empty, blank at an end, or holding a comma).
fn shown_env(env: &str) -> String {
    if env.is_empty() || env.trim() != env || env.contains(',') {
        format!("{env:?}")
    } else {
        env.to_string()
    }
}

/// `fetch --json` and `push --json` (SPEC §3).
#[derive(Debug, Default, Serialize)]
pub struct TransferReport {
    pub done: u64,
    pub skipped: u64,
    pub failed: u64,
    pub pending: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Why refs were left pending, when something was missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Objects of `_starchive/` the store refused for their size, each
    /// named with what to do (push): the run exits 3.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Why a source stopped serving before every ref was tried (fetch: the
    /// Telegram Bot API could not be reached): the refs left are pending,
    /// and the run exits 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl TransferReport {
    /// Incomplete when some refs failed, the store refused an object, or
    /// a source stopped serving.
    pub fn exit_status(&self) -> ExitStatus {
        ExitStatus::incomplete_if(
            self.failed > 0 || !self.refused.is_empty() || self.stopped.is_some(),
        )
    }
}

impl std::fmt::Display for TransferReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "done {}, skipped {}, failed {}, pending {}; {} in {:.1} s",
            self.done,
            self.skipped,
            self.failed,
            self.pending,
            indicatif::HumanBytes(self.bytes),
            self.seconds
        )?;
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        for refused in &self.refused {
            writeln!(f, "error: {refused}")?;
        }
        if let Some(stopped) = &self.stopped {
            writeln!(f, "error: {stopped}")?;
        }
        if self.failed > 0 {
            writeln!(
                f,
                "`starchive status` lists the failures with their reasons"
            )?;
        }
        Ok(())
    }
}

/// What `fetch` or `pull` (`command`) stops with when the archive's disk
/// refuses a write ([`crate::error::Error::disk_refuses`]): no file's fault, so no ref is
/// failed for it.
pub(crate) fn disk_stop(e: &crate::error::Error, command: &str) -> String {
    format!(
        "{e}: the archive's disk takes no more writes: free space there (or raise the quota, or make the archive writable), then run `starchive {command}` again; what was stored stays, the refs not stored are still pending"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_the_store_refused_exits_3() {
        let mut report = TransferReport::default();
        assert_eq!(report.exit_status(), ExitStatus::Success);
        report
            .refused
            .push("_starchive/catalog.sqlite.zst refused".into());
        assert_eq!(report.exit_status(), ExitStatus::Incomplete);
        assert!(
            report
                .to_string()
                .contains("error: _starchive/catalog.sqlite.zst")
        );
    }
}
