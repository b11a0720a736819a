//! `plan`'s counts: refs per class and state, blobs, backfill volumes.

use std::collections::BTreeMap;

use rusqlite::Connection;
use serde::Serialize;

use super::{CORE_CLASS, ENV_FILTER};
use crate::error::Result;
use crate::refs::RefClass;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub refs: u64,
    pub with_storage_key: u64,
    pub telegram_only: u64,
    pub fetched: u64,
    pub pending: u64,
    pub failed: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct BlobCounts {
    pub count: u64,
    pub bytes: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct BackfillVolumes {
    pub sessions_missing_storage_path: u64,
    pub stickers_missing_storage_path: u64,
}

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub classes: BTreeMap<String, Counts>,
    pub total: Counts,
    pub blobs: BlobCounts,
    pub backfill: BackfillVolumes,
}

/// `plan`'s counts over an open catalog, for the envs in `envs` (a JSON array, or `None` for every env).
pub fn counts(conn: &Connection, envs: &Option<String>) -> Result<PlanReport> {
    let mut classes: BTreeMap<String, Counts> = RefClass::ALL
        .iter()
        .map(|c| (c.name().to_string(), Counts::default()))
        .collect();
    // One scan of `refs_core` for every count, the backfill volumes too
    // (which refs have a key or a file_id: those whose hash it keeps).
    let mut stmt = conn.prepare(&format!(
        "SELECT {CORE_CLASS} AS class, count(*), count(key_hash), count(*) - count(key_hash),
                count(*) FILTER (WHERE state = 1),
                count(*) FILTER (WHERE state = 0),
                count(*) FILTER (WHERE state = 2),
                count(*) FILTER (WHERE fid_hash IS NOT NULL AND key_hash IS NULL)
         FROM refs_core NOT INDEXED WHERE {ENV_FILTER} GROUP BY class"
    ))?;
    let mut backfill = BackfillVolumes::default();
    let rows = stmt.query_map([envs], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Counts {
                refs: r.get(1)?,
                with_storage_key: r.get(2)?,
                telegram_only: r.get(3)?,
                fetched: r.get(4)?,
                pending: r.get(5)?,
                failed: r.get(6)?,
            },
            r.get::<_, u64>(7)?,
        ))
    })?;
    for row in rows {
        let (class, counts, file_id_without_key) = row?;
        if class == RefClass::SessionSticker.name() {
            backfill.sessions_missing_storage_path = file_id_without_key;
        } else if class == RefClass::Sticker.name() {
            backfill.stickers_missing_storage_path = counts.telegram_only;
        }
        classes.insert(class, counts);
    }
    let total = classes.values().fold(Counts::default(), |a, c| Counts {
        refs: a.refs + c.refs,
        with_storage_key: a.with_storage_key + c.with_storage_key,
        telegram_only: a.telegram_only + c.telegram_only,
        fetched: a.fetched + c.fetched,
        pending: a.pending + c.pending,
        failed: a.failed + c.failed,
    });
    let blobs = conn.query_row(
        &format!(
            "SELECT count(*), coalesce(sum(size), 0) FROM blobs
             WHERE sha256 IN (SELECT sha256 FROM refs WHERE {ENV_FILTER})"
        ),
        [envs],
        |r| {
            Ok(BlobCounts {
                count: r.get(0)?,
                bytes: r.get(1)?,
            })
        },
    )?;
    Ok(PlanReport {
        classes,
        total,
        blobs,
        backfill,
    })
}
