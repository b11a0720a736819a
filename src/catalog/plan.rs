//! `plan`'s counts: refs per class and state, blobs, backfill volumes.

use std::collections::BTreeMap;

use rusqlite::Connection;
use serde::Serialize;

use super::tally::tally_refs;
use super::{ENV_FILTER, RefState};
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
    let mut backfill = BackfillVolumes::default();
    for t in tally_refs(conn, envs)? {
        let c = classes.entry(t.class.name().to_string()).or_default();
        c.refs += t.refs;
        match t.has_key {
            true => c.with_storage_key += t.refs,
            false => c.telegram_only += t.refs,
        }
        match t.state {
            RefState::Fetched => c.fetched += t.refs,
            RefState::Pending => c.pending += t.refs,
            RefState::Failed => c.failed += t.refs,
        }
        match (t.class, t.has_key, t.has_file_id) {
            (RefClass::SessionSticker, false, true) => {
                backfill.sessions_missing_storage_path += t.refs
            }
            (RefClass::Sticker, false, _) => backfill.stickers_missing_storage_path += t.refs,
            _ => {}
        }
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
