//! `snapshot`: the bot's tables into the catalog.

use tokio::sync::mpsc;

use super::Context;
use crate::catalog::snapshot::{SnapshotReport, SnapshotWriter};
use crate::catalog::{Catalog, INCLUDE_PHOTOS};
use crate::error::{Error, Result};
use crate::source::{self, Batcher, SourceSpec};

/// The page cache of a snapshot's temp tables, in KiB.
const TEMP_CACHE_KIB: u32 = 8 * 1024;

pub fn snapshot(ctx: &Context, db: &str) -> Result<SnapshotReport> {
    let spec = SourceSpec::parse(db, ctx.db_origin)?;
    let mut catalog = Catalog::open_or_create(&ctx.archive)?;
    // The temp tables a snapshot looks up once per row (the env of each
    // session, the changes listed) get a cache of their own.
    catalog.set_temp_in_file(TEMP_CACHE_KIB)?;
    let include_photos = catalog.setting(INCLUDE_PHOTOS)?.as_deref() == Some("true");
    let resnapshot = crate::catalog::snapshot::has_stickers(&catalog)?;
    let (tx, mut rx) = mpsc::channel(4);
    let producer = match &spec {
        SourceSpec::Postgres(url) => {
            let url = url.clone();
            ctx.runtime.spawn(async move {
                let mut out = Batcher::new(tx);
                source::postgres::read(&url, &mut out, resnapshot).await
            })
        }
        SourceSpec::CsvDir(dir) => {
            let dir = dir.clone();
            ctx.runtime.spawn_blocking(move || {
                let mut out = Batcher::new(tx);
                source::csv::read(&dir, &mut out)
            })
        }
    };
    catalog.with_rollback_journal(|catalog| {
        let mut writer = SnapshotWriter::begin(catalog, &spec.describe(), &ctx.envs)?;
        ctx.progress.start("reading rows", None);
        let mut failed = None;
        while let Some(batch) = rx.blocking_recv() {
            let n = batch.len() as u64;
            for event in batch {
                if let Err(e) = writer.apply(event) {
                    failed = Some(e);
                    break;
                }
            }
            if failed.is_some() {
                break;
            }
            ctx.progress.advance(n);
        }
        drop(rx);
        let read = ctx
            .runtime
            .block_on(producer)
            .map_err(|e| Error::Internal(format!("the source reader stopped: {e}")))?;
        ctx.progress.finish();
        if let Some(e) = failed {
            return Err(e);
        }
        read?;
        ctx.progress.start("deriving refs", None);
        let report = writer.finish(include_photos);
        ctx.progress.finish();
        report
    })
}

impl std::fmt::Display for SnapshotReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "snapshot {} of {} taken at {}",
            self.snapshot_id, self.source, self.taken_at
        )?;
        writeln!(
            f,
            "{:<14}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "table", "rows", "added", "changed", "removed", "skipped", "warnings"
        )?;
        for (name, c) in &self.tables {
            writeln!(
                f,
                "{:<14}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
                name, c.rows, c.added, c.changed, c.removed, c.skipped, c.warnings
            )?;
        }
        Ok(())
    }
}
