//! Catalog queries of the push and verify stages.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::commands::ENV_FILTER;
use crate::error::Result;
use crate::layout::{Layout, RefPlace};

/// A fetched ref, with what its key depends on.
pub struct FetchedRef {
    pub id: i64,
    pub place: RefPlace,
    pub sha256: String,
    pub size: u64,
    pub kind: String,
}

/// Records the destination (URL without secrets) and returns its id.
pub fn destination(conn: &Connection, url: &str, layout: Layout) -> Result<i64> {
    conn.execute(
        "INSERT INTO destinations(url, layout) VALUES (?1, ?2)
         ON CONFLICT(url) DO UPDATE SET layout = excluded.layout",
        params![url, layout.name()],
    )?;
    Ok(
        conn.query_row("SELECT id FROM destinations WHERE url = ?1", [url], |r| {
            r.get(0)
        })?,
    )
}

pub fn find_destination(conn: &Connection, url: &str) -> Result<Option<(i64, String)>> {
    Ok(conn
        .query_row(
            "SELECT id, layout FROM destinations WHERE url = ?1",
            [url],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// The eight columns a [`RefPlace`] is read from (`refs r`), for [`place_at`].
/// A session sticker's `sticker_key` is the key of a `stickers` row with the
/// same `file_id` (SPEC §5).
pub(crate) const PLACE_COLUMNS: &str = "r.class, r.row_id, r.slot, r.session_id, r.user_id,
    r.pack_batch_id, r.storage_key,
    CASE WHEN r.class = 'session_sticker' AND r.telegram_file_id IS NOT NULL THEN
        (SELECT o.storage_key FROM refs o
         WHERE o.class = 'sticker' AND o.telegram_file_id = r.telegram_file_id
           AND o.storage_key IS NOT NULL
         ORDER BY o.row_id LIMIT 1)
    END";

/// Reads a [`RefPlace`] from [`PLACE_COLUMNS`] starting at column `at`.
pub(crate) fn place_at(r: &rusqlite::Row, at: usize) -> rusqlite::Result<RefPlace> {
    Ok(RefPlace {
        class: r.get(at)?,
        row_id: r.get(at + 1)?,
        slot: r.get(at + 2)?,
        session_id: r.get(at + 3)?,
        user_id: r.get(at + 4)?,
        pack_batch_id: r.get(at + 5)?,
        storage_key: r.get(at + 6)?,
        sticker_key: r.get(at + 7)?,
    })
}

/// Every fetched ref in scope, in a stable order (the one that owns a key
/// first), one at a time.
pub fn for_each_fetched_ref(
    conn: &Connection,
    envs: &Option<String>,
    mut each: impl FnMut(FetchedRef) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(&format!(
        "SELECT r.id, {PLACE_COLUMNS}, r.sha256, b.size, b.type
         FROM refs r JOIN blobs b ON b.sha256 = r.sha256
         WHERE r.state = 'fetched' AND {ENV_FILTER}
         ORDER BY r.storage_key IS NULL, r.class, r.row_id, r.slot"
    ))?;
    let rows = stmt.query_map([envs], |r| {
        Ok(FetchedRef {
            id: r.get(0)?,
            place: place_at(r, 1)?,
            sha256: r.get(9)?,
            size: r.get(10)?,
            kind: r.get(11)?,
        })
    })?;
    for row in rows {
        each(row?)?;
    }
    Ok(())
}

/// Refs in scope that are not fetched (pending or failed at fetch).
pub fn unfetched_count(conn: &Connection, envs: &Option<String>) -> Result<u64> {
    Ok(conn.query_row(
        &format!("SELECT count(*) FROM refs WHERE state <> 'fetched' AND {ENV_FILTER}"),
        [envs],
        |r| r.get(0),
    )?)
}

/// The object recorded at `key`, whatever its state: (sha256, size, state).
pub fn recorded_object(
    conn: &Connection,
    dest: i64,
    key: &str,
) -> Result<Option<(String, u64, String)>> {
    Ok(conn
        .prepare_cached("SELECT sha256, size, state FROM objects WHERE dest_id = ?1 AND key = ?2")?
        .query_row(params![dest, key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?)
}

pub fn set_placement(
    tx: &Transaction,
    dest: i64,
    ref_id: i64,
    key: Option<&str>,
    state: &str,
    reason: Option<&str>,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO placements(dest_id, ref_id, key, state, reason) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(dest_id, ref_id) DO UPDATE SET
            key = excluded.key, state = excluded.state, reason = excluded.reason",
    )?
    .execute(params![dest, ref_id, key, state, reason])?;
    Ok(())
}

/// Records the object at `key` and the state of every ref placed there.
pub fn set_object(
    tx: &Transaction,
    dest: i64,
    key: &str,
    sha256: &str,
    size: u64,
    outcome: Result<(), &str>,
) -> Result<()> {
    let (state, reason) = match outcome {
        Ok(()) => ("pushed", None),
        Err(reason) => ("failed", Some(reason)),
    };
    tx.prepare_cached(
        "INSERT INTO objects(dest_id, key, sha256, size, state, reason, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(dest_id, key) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,
            state = excluded.state, reason = excluded.reason, updated_at = excluded.updated_at",
    )?
    .execute(params![
        dest,
        key,
        sha256,
        size,
        state,
        reason,
        super::now_text()
    ])?;
    // Without statistics, SQLite 3.50 would walk this destination's every
    // placement by primary key (dest_id) for each object: quadratic.
    tx.prepare_cached(
        "UPDATE placements INDEXED BY placements_key SET state = ?3, reason = ?4
         WHERE dest_id = ?1 AND key = ?2",
    )?
    .execute(params![dest, key, state, reason])?;
    Ok(())
}

pub fn manifest_sha256(conn: &Connection, dest: i64) -> Result<Option<String>> {
    Ok(conn.query_row(
        "SELECT manifest_sha256 FROM destinations WHERE id = ?1",
        [dest],
        |r| r.get(0),
    )?)
}

pub fn set_manifest_sha256(conn: &Connection, dest: i64, sha: &str) -> Result<()> {
    conn.execute(
        "UPDATE destinations SET manifest_sha256 = ?2 WHERE id = ?1",
        params![dest, sha],
    )?;
    Ok(())
}

/// The manifest's counts: refs in scope, and those pushed to `dest`.
pub fn manifest_counts(conn: &Connection, dest: i64, envs: &Option<String>) -> Result<(u64, u64)> {
    Ok(conn.query_row(
        &format!(
            "SELECT count(*), coalesce(sum(p.state = 'pushed'), 0)
             FROM refs r LEFT JOIN placements p ON p.ref_id = r.id AND p.dest_id = ?2
             WHERE {ENV_FILTER}"
        ),
        params![envs, dest],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// One line of the manifest: a ref in scope and where it is at the destination.
pub fn for_each_manifest_ref(
    conn: &Connection,
    dest: i64,
    envs: &Option<String>,
    mut each: impl FnMut(serde_json::Value) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(&format!(
        "SELECT r.class, r.row_table, r.row_id, r.slot, r.session_id, r.pack_batch_id, r.pack_index,
                r.env, r.telegram_file_id, r.storage_key, p.key, p.state, r.sha256, b.size, b.type
         FROM refs r
         LEFT JOIN placements p ON p.ref_id = r.id AND p.dest_id = ?2
         LEFT JOIN blobs b ON b.sha256 = r.sha256
         WHERE {ENV_FILTER}
         ORDER BY r.class, r.row_table, r.row_id, r.slot"
    ))?;
    let mut rows = stmt.query(params![envs, dest])?;
    while let Some(r) = rows.next()? {
        let slot: String = r.get(3)?;
        let line = serde_json::json!({
            "class": r.get::<_, String>(0)?,
            "table": r.get::<_, String>(1)?,
            "row_id": r.get::<_, String>(2)?,
            "slot": (!slot.is_empty()).then_some(slot),
            "session_id": r.get::<_, Option<String>>(4)?,
            "pack_batch_id": r.get::<_, Option<String>>(5)?,
            "pack_index": r.get::<_, Option<i64>>(6)?,
            "env": r.get::<_, Option<String>>(7)?,
            "telegram_file_id": r.get::<_, Option<String>>(8)?,
            "storage_key": r.get::<_, Option<String>>(9)?,
            "key": r.get::<_, Option<String>>(10)?,
            "state": r.get::<_, Option<String>>(11)?.unwrap_or_else(|| "pending".into()),
            "sha256": r.get::<_, Option<String>>(12)?,
            "size": r.get::<_, Option<i64>>(13)?,
            "type": r.get::<_, Option<String>>(14)?,
        });
        each(line)?;
    }
    Ok(())
}

/// The latest snapshot: (id, taken_at).
pub fn latest_snapshot(conn: &Connection) -> Result<Option<(i64, String)>> {
    Ok(conn
        .query_row(
            "SELECT id, taken_at FROM snapshots ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}
