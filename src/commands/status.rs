//! `status`: where every stage stands, and every failure with its reason.

use serde::Serialize;

use super::Context;
use super::fetch::{TelegramTokens, wrong_bot_notes};
use crate::catalog::Catalog;
use crate::catalog::status::{self as q, Failure, StateCounts};
use crate::error::Result;

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub fetch: StateCounts,
    pub destinations: StateCounts,
    pub failures: Vec<Failure>,
    /// What to do about failures a setting explains (as `fetch` notes them):
    /// refs of an env without its own token that failed with Telegram's
    /// `wrong file_id`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The text report lists every failure (`--full`).
    #[serde(skip)]
    pub full: bool,
}

/// Where every stage stands; `full`: the text report lists every failure;
/// `tokens`: the Telegram tokens set, for the notes.
///
/// A destination is shown once this archive reached it: an object pushed
/// there (or refused by it), or a manifest written. One that was never
/// reached (a typo, a store that was down) is not: its pending placements
/// say nothing about it.
pub fn status(ctx: &Context, full: bool, tokens: &TelegramTokens) -> Result<StatusReport> {
    let catalog = Catalog::open_read_only(&ctx.archive)?;
    ctx.warn_unknown_envs(&catalog)?;
    let conn = catalog.conn();
    let envs = ctx.env_param();
    Ok(StatusReport {
        fetch: q::fetch_counts(conn, &envs)?,
        destinations: q::destination_counts(conn, &envs)?,
        failures: q::failures(conn, &envs)?,
        notes: wrong_bot_notes(
            &crate::catalog::fetch::wrong_file_id_failures(conn, &envs)?,
            tokens,
        ),
        full,
    })
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "fetch:")?;
        if self.fetch.is_empty() {
            writeln!(f, "  no refs")?;
        }
        for (class, states) in &self.fetch {
            let states: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
            writeln!(f, "  {class:<16} {}", states.join(", "))?;
        }
        writeln!(f, "destinations:")?;
        if self.destinations.is_empty() {
            writeln!(f, "  none pushed yet")?;
        }
        for (url, states) in &self.destinations {
            let states: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
            writeln!(f, "  {url}: {}", states.join(", "))?;
        }
        if self.failures.is_empty() {
            writeln!(f, "no failures")?;
        } else {
            writeln!(f, "failures ({}):", self.failures.len())?;
            super::write_cut(f, &self.failures, self.full, "  ", |f, x| {
                let at = x
                    .destination
                    .as_deref()
                    .map(|d| format!(" to {d}"))
                    .unwrap_or_default();
                writeln!(
                    f,
                    "  {} {} [{}{at}]: {}",
                    x.class, x.ref_, x.stage, x.reason
                )
            })?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}
