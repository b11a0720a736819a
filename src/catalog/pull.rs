//! Catalog queries of the pull stage. The blobs the manifest names live in
//! a temp table of the connection (one row per sha256), so memory does not
//! grow with the number of refs.

use rusqlite::{Connection, OptionalExtension, params};

use super::BlobInfo;
use super::ENV_FILTER;
use crate::error::Result;

/// The `settings` key of the destination a catalog was pulled from: the
/// identity of a pull from a manifest that names no archive id (format 1).
pub const PULLED_FROM: &str = "pulled_from";
/// The `settings` key of the latest snapshot a pull installed: while it is
/// still the archive's latest, the archive has no snapshot of its own and a
/// newer one at the destination may replace its catalog.
pub const PULLED_SNAPSHOT: &str = "pulled_snapshot";

/// The id of a catalog's latest snapshot; `None` before the first.
pub fn latest_snapshot_id(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn.query_row("SELECT max(id) FROM snapshots", [], |r| r.get(0))?)
}

/// Writes a catalog file's WAL into it and empties it, so that the file
/// alone holds every commit (before it is replaced, its WAL removed).
pub fn checkpoint(conn: &Connection) -> Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// One blob to download, from its key at the source.
pub struct BlobToPull {
    pub sha256: String,
    pub key: String,
    pub size: u64,
    /// Where it comes in the download order (see [`blobs_to_pull_after`]).
    pub order: (i64, String),
}

/// `pull_blobs`: every blob the manifest names, with `outcome` `present`
/// when `blobs/` had it, `failed` when it could not be had, else NULL: once
/// every blob was tried, downloaded by this run (not written per blob: in
/// the order blobs come, each commit would rewrite most of the table);
/// `pull_lines`: the refs the manifest says pushed, by identity, with the
/// blob each names.
pub fn create_pull_table(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS pull_blobs (
             sha256    TEXT PRIMARY KEY NOT NULL,
             key       TEXT NOT NULL,
             size      INTEGER NOT NULL,
             type      TEXT NOT NULL,
             outcome   TEXT,
             first_ref INTEGER NOT NULL DEFAULT 0
         ) WITHOUT ROWID;
         DELETE FROM pull_blobs;
         CREATE TEMP TABLE IF NOT EXISTS pull_lines (
             class     TEXT NOT NULL,
             row_table TEXT NOT NULL,
             row_id    TEXT NOT NULL,
             slot      TEXT NOT NULL,
             sha256    TEXT NOT NULL,
             PRIMARY KEY (class, row_table, row_id, slot)
         ) WITHOUT ROWID;
         DELETE FROM pull_lines;",
    )?;
    Ok(())
}

/// A ref of the manifest, pushed with the blob `sha256` (found at `key`,
/// the first key naming it serves).
pub struct PushedLine<'a> {
    pub class: &'a str,
    pub table: &'a str,
    pub row_id: &'a str,
    pub slot: &'a str,
    pub sha256: &'a str,
    pub key: &'a str,
    pub size: u64,
    /// The type the manifest gives (`bin` when it gives none).
    pub kind: &'a str,
}

/// Adds a pushed ref of the manifest and the blob it names.
pub fn add_line(conn: &Connection, line: &PushedLine) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO pull_blobs(sha256, key, size, type) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(sha256) DO NOTHING",
    )?
    .execute(params![line.sha256, line.key, line.size, line.kind])?;
    conn.prepare_cached(
        "INSERT INTO pull_lines(class, row_table, row_id, slot, sha256) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        line.class,
        line.table,
        line.row_id,
        line.slot,
        line.sha256
    ])?;
    Ok(())
}

/// Marks present the blobs `blobs/` holds already and the catalog knows
/// (a blob `verify` forgot is downloaded again); returns how many are left.
pub fn mark_present(conn: &Connection, is_present: impl Fn(&str) -> bool) -> Result<u64> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut select = tx.prepare(
            "SELECT sha256 FROM pull_blobs p
             WHERE EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = p.sha256)",
        )?;
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

/// `pull_refs`: the catalog's refs that the manifest says pushed, by the
/// sha256 it names, whatever their state (a scoped pull, a killed one or
/// `verify` left them pending or failed). Made once, in one pass over
/// `refs`, after [`mark_present`]: `refs` has no index by sha256 (nor by
/// row id: it names rows by rowid), and a search of it per blob made a
/// pull quadratic in its refs. The refs of
/// blobs already present are fetched at once. Each blob's `first_ref` is
/// the least id of its refs: blobs are downloaded in that order.
pub fn index_refs_to_pull(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS pull_refs (
             sha256 TEXT NOT NULL,
             ref_id INTEGER NOT NULL,
             PRIMARY KEY (sha256, ref_id)
         ) WITHOUT ROWID;
         DELETE FROM pull_refs;
         INSERT INTO pull_refs(sha256, ref_id)
             SELECT l.sha256, r.id FROM refs r
             CROSS JOIN pull_lines l ON l.class = r.class AND l.row_table = r.row_table
                                    AND l.row_id = r.row_id AND l.slot = r.slot;
         UPDATE pull_blobs SET first_ref = coalesce(
             (SELECT min(p.ref_id) FROM pull_refs p WHERE p.sha256 = pull_blobs.sha256), 0);
         CREATE INDEX IF NOT EXISTS temp.pull_blobs_order ON pull_blobs(first_ref, sha256);",
    )?;
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "UPDATE refs_core SET state = 1, reason = NULL, updated_at = ?1,
                sha256 = unhex((SELECT p.sha256 FROM pull_refs p WHERE p.ref_id = refs_core.id)),
                source = coalesce(source, 'pull')
         WHERE state <> 1
           AND id IN (SELECT p.ref_id FROM pull_refs p JOIN pull_blobs b USING (sha256)
                      WHERE b.outcome = 'present')",
        [super::now_text()],
    )?;
    tx.commit()?;
    Ok(())
}

/// Up to `limit` blobs still to download after `after`, in the order of
/// their first ref: the refs a group of blobs turns fetched then sit on a
/// few pages of `refs`, where in the order of their sha256 every commit
/// rewrote most of the table (`bench/pull.sh`: the catalog's log took more
/// bytes than the blobs).
pub fn blobs_to_pull_after(
    conn: &Connection,
    after: Option<&(i64, String)>,
    limit: usize,
) -> Result<Vec<BlobToPull>> {
    let mut stmt = conn.prepare_cached(
        "SELECT sha256, key, size, first_ref FROM pull_blobs
         WHERE outcome IS NULL AND (?1 IS NULL OR (first_ref, sha256) > (?1, ?2))
         ORDER BY first_ref, sha256 LIMIT ?3",
    )?;
    let (first_ref, sha256) = after.map(|(r, s)| (r, s.as_str())).unzip();
    let rows = stmt.query_map(params![first_ref, sha256, limit as i64], |r| {
        let sha256: String = r.get(0)?;
        Ok(BlobToPull {
            key: r.get(1)?,
            size: r.get(2)?,
            order: (r.get(3)?, sha256.clone()),
            sha256,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A blob is stored (published: durable): the refs the manifest says hold
/// it and that are not fetched yet are fetched (found through
/// [`index_refs_to_pull`]).
pub fn mark_pulled(conn: &Connection, blob: &BlobInfo) -> Result<()> {
    let now = super::now_text();
    conn.prepare_cached(
        "INSERT INTO blobs(sha256, size, type, source, fetched_at) VALUES (?1, ?2, ?3, 'pull', ?4)
         ON CONFLICT(sha256) DO UPDATE SET size = excluded.size, type = excluded.type",
    )?
    .execute(params![blob.sha256, blob.size, blob.kind, now])?;
    conn.prepare_cached(
        "UPDATE refs_core SET state = 1, sha256 = unhex(?1), reason = NULL, updated_at = ?2,
                source = coalesce(source, 'pull')
         WHERE id IN (SELECT ref_id FROM pull_refs WHERE sha256 = ?1) AND state <> 1",
    )?
    .execute(params![blob.sha256, now])?;
    Ok(())
}

/// A blob could not be had: its refs (found through [`index_refs_to_pull`])
/// but those fetched with another blob fail with `reason` and name it, so
/// that the next pull tries it again.
pub fn mark_pull_failed(conn: &Connection, sha256: &str, reason: &str) -> Result<()> {
    let now = super::now_text();
    // A ref names a blob the catalog knows: the manifest's record of it,
    // kept until the blob is here.
    conn.prepare_cached(
        "INSERT INTO blobs(sha256, size, type, source, fetched_at)
         SELECT sha256, size, type, 'pull', ?2 FROM pull_blobs WHERE sha256 = ?1
         ON CONFLICT(sha256) DO NOTHING",
    )?
    .execute(params![sha256, now])?;
    conn.prepare_cached(
        "UPDATE refs_core SET state = 2, sha256 = unhex(?1), reason = ?2, updated_at = ?3
         WHERE id IN (SELECT ref_id FROM pull_refs WHERE sha256 = ?1)
           AND (state <> 1 OR sha256 = unhex(?1))",
    )?
    .execute(params![sha256, reason, now])?;
    conn.prepare_cached("UPDATE pull_blobs SET outcome = 'failed' WHERE sha256 = ?1")?
        .execute([sha256])?;
    Ok(())
}

/// Refs the catalog says fetched whose blob is not in `blobs/` (the
/// destination did not hold it: a ref the push refused, another env) are
/// pending again, with no blob, so that `fetch` can get them. Returns how
/// many. `after_pull`: on the connection of a pull whose every blob was
/// tried, whose `pull_blobs` says which blobs are in `blobs/` (not looked
/// at again).
pub fn unbacked_to_pending(
    conn: &Connection,
    after_pull: bool,
    is_present: impl Fn(&str) -> bool,
) -> Result<usize> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS pull_absent (sha256 TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;
         DELETE FROM pull_absent;",
    )?;
    {
        let mut select = tx.prepare(if after_pull {
            "SELECT DISTINCT sha256 FROM refs WHERE state = 'fetched' AND sha256 IS NOT NULL
               AND sha256 NOT IN (SELECT sha256 FROM pull_blobs
                                  WHERE outcome IS NULL OR outcome = 'present')"
        } else {
            "SELECT DISTINCT sha256 FROM refs WHERE state = 'fetched' AND sha256 IS NOT NULL"
        })?;
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
        "UPDATE refs_core SET state = 0, sha256 = NULL, source = NULL, reason = NULL,
                updated_at = ?1
         WHERE state = 1 AND sha256 IN (SELECT unhex(sha256) FROM pull_absent)",
        [super::now_text()],
    )?;
    tx.commit()?;
    Ok(n)
}

/// The report's counts over refs in scope, once every blob was tried:
/// (downloaded now, present before, failed by a pull, pending).
pub fn pull_counts(conn: &Connection, envs: &Option<String>) -> Result<(u64, u64, u64, u64)> {
    Ok(conn.query_row(
        &format!(
            "SELECT count(*) FILTER (WHERE state = 1 AND p.sha256 IS NOT NULL
                                      AND p.outcome IS NULL),
                    count(*) FILTER (WHERE state = 1 AND p.outcome = 'present'),
                    count(*) FILTER (WHERE state = 2 AND r.sha256 IS NOT NULL),
                    count(*) FILTER (WHERE state = 0)
             FROM refs_core r LEFT JOIN pull_blobs p ON p.sha256 = lower(hex(r.sha256))
             WHERE {ENV_FILTER}"
        ),
        [envs],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?)
}

/// Opens a catalog file as it is, without the lock, pragmas or migrations
/// of [`super::Catalog`]: the archive's catalog under a lock the caller
/// holds, or a catalog copy about to be installed, to read or set a setting.
pub fn open_file(path: &std::path::Path) -> Result<Connection> {
    Ok(Connection::open(path)?)
}

/// Applies to a catalog file opened with [`open_file`] the migrations it
/// lacks (as [`super::Catalog`] would on its next opening).
pub fn migrate_file(conn: &mut Connection, path: &std::path::Path) -> Result<()> {
    super::migrations::migrate(conn, path)
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
