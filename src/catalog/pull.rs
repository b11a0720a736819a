//! Catalog queries of the pull stage. The blobs the manifest names live in
//! a temp table of the connection (one row per sha256), so memory does not
//! grow with the number of refs.

use rusqlite::{Connection, OptionalExtension, params};

use super::ENV_FILTER;
use crate::blobs::BlobInfo;
use crate::error::Result;

/// The `settings` key of the destination a catalog was pulled from: the
/// identity of a pull from a manifest that names no archive id (format 1).
pub const PULLED_FROM: &str = "pulled_from";

/// One blob to download, from its key at the source.
pub struct BlobToPull {
    pub sha256: String,
    pub key: String,
    pub size: u64,
}

/// `pull_blobs`: every blob the manifest names, with `outcome` NULL until
/// it is found present (`present`), downloaded (`downloaded`) or failed.
pub fn create_pull_table(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS pull_blobs (
             sha256  TEXT PRIMARY KEY NOT NULL,
             key     TEXT NOT NULL,
             size    INTEGER NOT NULL,
             outcome TEXT
         ) WITHOUT ROWID;
         DELETE FROM pull_blobs;",
    )?;
    Ok(())
}

/// Adds a blob the manifest names (the first key naming it serves).
pub fn add_blob(conn: &Connection, sha256: &str, key: &str, size: u64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO pull_blobs(sha256, key, size) VALUES (?1, ?2, ?3)
         ON CONFLICT(sha256) DO NOTHING",
    )?
    .execute(params![sha256, key, size])?;
    Ok(())
}

/// Marks present the blobs `blobs/` holds already; returns how many are left.
pub fn mark_present(conn: &Connection, is_present: impl Fn(&str) -> bool) -> Result<u64> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut select = tx.prepare("SELECT sha256 FROM pull_blobs")?;
        let mut update =
            tx.prepare("UPDATE pull_blobs SET outcome = 'present' WHERE sha256 = ?1")?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let sha256: String = row.get(0)?;
            if is_present(&sha256) {
                update.execute([&sha256])?;
            }
        }
    }
    let left = tx.query_row(
        "SELECT count(*) FROM pull_blobs WHERE outcome IS NULL",
        [],
        |r| r.get(0),
    )?;
    tx.commit()?;
    Ok(left)
}

/// `pull_refs`: the refs whose blob is still to download and that a pull
/// may change (fetched or failed), by sha256. Made once, in one pass over
/// `refs`, after [`mark_present`]: `refs` has no index by sha256, and a
/// search of it per blob made a pull quadratic in its refs (most of its CPU
/// at 5,000 refs).
pub fn index_refs_to_pull(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS pull_refs (
             sha256 TEXT NOT NULL,
             ref_id INTEGER NOT NULL,
             PRIMARY KEY (sha256, ref_id)
         ) WITHOUT ROWID;
         DELETE FROM pull_refs;
         INSERT INTO pull_refs(sha256, ref_id)
             SELECT sha256, id FROM refs
             WHERE state IN ('fetched', 'failed')
               AND sha256 IN (SELECT sha256 FROM pull_blobs WHERE outcome IS NULL);",
    )?;
    Ok(())
}

/// Up to `limit` blobs still to download after `after`, by sha256.
pub fn blobs_to_pull_after(
    conn: &Connection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<BlobToPull>> {
    let mut stmt = conn.prepare_cached(
        "SELECT sha256, key, size FROM pull_blobs
         WHERE outcome IS NULL AND (?1 IS NULL OR sha256 > ?1)
         ORDER BY sha256 LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit as i64], |r| {
        Ok(BlobToPull {
            sha256: r.get(0)?,
            key: r.get(1)?,
            size: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A blob is stored: its refs that an earlier pull failed are fetched
/// again (found through [`index_refs_to_pull`]).
pub fn mark_pulled(conn: &Connection, blob: &BlobInfo) -> Result<()> {
    let now = super::now_text();
    conn.prepare_cached(
        "INSERT INTO blobs(sha256, size, type, source, fetched_at) VALUES (?1, ?2, ?3, 'pull', ?4)
         ON CONFLICT(sha256) DO NOTHING",
    )?
    .execute(params![blob.sha256, blob.size, blob.kind, now])?;
    conn.prepare_cached(
        "UPDATE refs SET state = 'fetched', reason = NULL, updated_at = ?2
         WHERE id IN (SELECT ref_id FROM pull_refs WHERE sha256 = ?1) AND state = 'failed'",
    )?
    .execute(params![blob.sha256, now])?;
    conn.prepare_cached("UPDATE pull_blobs SET outcome = 'downloaded' WHERE sha256 = ?1")?
        .execute([&blob.sha256])?;
    Ok(())
}

/// A blob could not be had: its refs (found through [`index_refs_to_pull`])
/// fail with `reason` and keep their sha256, so that the next pull tries it
/// again.
pub fn mark_pull_failed(conn: &Connection, sha256: &str, reason: &str) -> Result<()> {
    conn.prepare_cached(
        "UPDATE refs SET state = 'failed', reason = ?2, updated_at = ?3
         WHERE id IN (SELECT ref_id FROM pull_refs WHERE sha256 = ?1)
           AND state IN ('fetched', 'failed')",
    )?
    .execute(params![sha256, reason, super::now_text()])?;
    conn.prepare_cached("UPDATE pull_blobs SET outcome = 'failed' WHERE sha256 = ?1")?
        .execute([sha256])?;
    Ok(())
}

/// Refs the catalog says fetched whose blob is not in `blobs/` (the
/// destination did not hold it: a ref the push refused, another env) are
/// pending again, with no blob, so that `fetch` can get them. Returns how many.
pub fn unbacked_to_pending(conn: &Connection, is_present: impl Fn(&str) -> bool) -> Result<usize> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS pull_absent (sha256 TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;
         DELETE FROM pull_absent;",
    )?;
    {
        let mut select = tx.prepare(
            "SELECT DISTINCT sha256 FROM refs WHERE state = 'fetched' AND sha256 IS NOT NULL",
        )?;
        let mut insert = tx.prepare("INSERT INTO pull_absent(sha256) VALUES (?1)")?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let sha256: String = row.get(0)?;
            if !is_present(&sha256) {
                insert.execute([&sha256])?;
            }
        }
    }
    let n = tx.execute(
        "UPDATE refs SET state = 'pending', sha256 = NULL, source = NULL, reason = NULL,
                updated_at = ?1
         WHERE state = 'fetched' AND sha256 IN (SELECT sha256 FROM pull_absent)",
        [super::now_text()],
    )?;
    tx.commit()?;
    Ok(n)
}

/// The report's counts over refs in scope: (downloaded now, present
/// before, failed by a pull, pending).
pub fn pull_counts(conn: &Connection, envs: &Option<String>) -> Result<(u64, u64, u64, u64)> {
    Ok(conn.query_row(
        &format!(
            "SELECT count(*) FILTER (WHERE state = 'fetched' AND p.outcome = 'downloaded'),
                    count(*) FILTER (WHERE state = 'fetched' AND p.outcome = 'present'),
                    count(*) FILTER (WHERE state = 'failed' AND refs.sha256 IS NOT NULL),
                    count(*) FILTER (WHERE state = 'pending')
             FROM refs LEFT JOIN pull_blobs p ON p.sha256 = refs.sha256
             WHERE {ENV_FILTER}"
        ),
        [envs],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?)
}

/// A setting of a catalog file opened read-only; `None` when it has none
/// (or is no catalog).
pub fn read_setting(conn: &Connection, key: &str) -> Option<String> {
    conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .optional()
    .ok()
    .flatten()
}
