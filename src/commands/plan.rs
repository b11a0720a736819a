//! `plan`: what the archive holds and what is left to do, from the catalog alone.

use super::Context;
use crate::catalog::Catalog;
use crate::catalog::plan::PlanReport;
use crate::catalog::plan::counts;
use crate::error::Result;

pub fn plan(ctx: &Context) -> Result<PlanReport> {
    let catalog = Catalog::open_read_only(&ctx.archive)?;
    ctx.warn_unknown_envs(&catalog)?;
    ctx.latest_snapshot(&catalog)?;
    counts(catalog.conn(), &ctx.env_param())
}

impl std::fmt::Display for PlanReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<16}{:>9}{:>11}{:>15}{:>9}{:>9}{:>8}",
            "class", "refs", "with key", "telegram only", "fetched", "pending", "failed"
        )?;
        let rows = self.classes.iter().map(|(k, v)| (k.as_str(), v));
        for (name, c) in rows.chain([("total", &self.total)]) {
            writeln!(
                f,
                "{:<16}{:>9}{:>11}{:>15}{:>9}{:>9}{:>8}",
                name, c.refs, c.with_storage_key, c.telegram_only, c.fetched, c.pending, c.failed
            )?;
        }
        writeln!(
            f,
            "blobs: {} unique, {}",
            self.blobs.count,
            indicatif::HumanBytes(self.blobs.bytes)
        )?;
        writeln!(
            f,
            "backfill: {} sessions and {} stickers have no storage path",
            self.backfill.sessions_missing_storage_path,
            self.backfill.stickers_missing_storage_path
        )
    }
}
