//! Catalog queries of `check`: pack batches and the positions their
//! stickers hold, the blobs refs name, and a bucket listing held against the
//! refs and the rows.
//!
//! Whatever grows with the archive or the bucket lives in temp tables of
//! the connection (SQLite's temp store: a file read through a bounded page
//! cache), never in a Rust collection: the listing is written there as it
//! streams by and joined there, so memory stays flat for millions of
//! objects. Temp tables vanish with the connection.

use rusqlite::{Connection, OptionalExtension, params};

use super::ENV_FILTER;
use crate::bot::key_column;
use crate::error::Result;
use crate::layout::KeyOwner;
use crate::refs::RefClass;

/// One pack batch in scope and the stickers it holds.
#[derive(Debug, Default)]
pub struct Batch {
    pub id: String,
    pub session_id: Option<String>,
    pub sheet: Sheet,
    /// `pack_index` of each sticker that has one, in ascending order
    /// (a position held twice appears twice).
    pub indexes: Vec<i64>,
    pub stickers: u64,
    /// Stickers with no `pack_index`: no position in the pack holds them.
    pub unindexed: u64,
    pub unfetched: u64,
}

/// A pack batch's sheet, as far as the archive has it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Sheet {
    /// No `pack_sheet` ref is attached to the batch.
    #[default]
    None,
    /// A `pack_sheet` ref is attached but none is fetched yet.
    NotFetched,
    /// A `pack_sheet` ref of the batch is fetched.
    Fetched,
}

/// Every pack batch in scope, one at a time, in id order: those the
/// `pack_batches` table has and those only sticker refs name. A batch's
/// env is its session's. Its sheet is that of the `pack_sheet` refs
/// attached to it: fetched when one of them is.
pub fn for_each_batch(
    conn: &Connection,
    envs: &Option<String>,
    mut each: impl FnMut(Batch) -> Result<()>,
) -> Result<()> {
    // The pack stickers, indexed by batch: `refs` has no index on
    // `pack_batch_id`, and joining it directly would scan every sticker ref
    // once per batch.
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.check_pack_stickers;
         CREATE TEMP TABLE check_pack_stickers AS
             SELECT pack_batch_id, pack_index, session_id, env, state = 'fetched' AS fetched
             FROM refs WHERE class = 'sticker' AND pack_batch_id IS NOT NULL;
         CREATE INDEX temp.check_pack_stickers_batch
             ON check_pack_stickers(pack_batch_id, pack_index);",
    )?;
    let mut stmt = conn.prepare(&format!(
        "WITH batches(id, session_id, env) AS (
             SELECT b.id, b.session_id, s.env
             FROM pack_batches b LEFT JOIN sessions s ON s.id = b.session_id
             UNION ALL
             SELECT t.pack_batch_id, min(t.session_id), min(t.env)
             FROM temp.check_pack_stickers t
             WHERE NOT EXISTS (SELECT 1 FROM pack_batches b WHERE b.id = t.pack_batch_id)
             GROUP BY t.pack_batch_id
         ),
         sheets AS (
             SELECT pack_batch_id, max(state = 'fetched') AS fetched FROM refs
             WHERE class = 'pack_sheet' AND pack_batch_id IS NOT NULL
             GROUP BY pack_batch_id
         )
         SELECT b.id, b.session_id, sh.fetched,
                t.pack_batch_id IS NOT NULL, t.pack_index, t.fetched
         FROM (SELECT * FROM batches WHERE {ENV_FILTER}) b
         LEFT JOIN sheets sh ON sh.pack_batch_id = b.id
         LEFT JOIN temp.check_pack_stickers t ON t.pack_batch_id = b.id
         ORDER BY b.id, t.pack_index"
    ))?;
    let mut rows = stmt.query([envs])?;
    let mut batch: Option<Batch> = None;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        if batch.as_ref().is_none_or(|b| b.id != id) {
            if let Some(done) = batch.take() {
                each(done)?;
            }
            batch = Some(Batch {
                id,
                session_id: r.get(1)?,
                sheet: match r.get::<_, Option<bool>>(2)? {
                    None => Sheet::None,
                    Some(false) => Sheet::NotFetched,
                    Some(true) => Sheet::Fetched,
                },
                ..Batch::default()
            });
        }
        let Some(b) = batch.as_mut() else { continue };
        if r.get::<_, bool>(3)? {
            b.stickers += 1;
            match r.get::<_, Option<i64>>(4)? {
                Some(index) => b.indexes.push(index),
                None => b.unindexed += 1,
            }
            if !r.get::<_, bool>(5)? {
                b.unfetched += 1;
            }
        }
    }
    if let Some(done) = batch {
        each(done)?;
    }
    Ok(())
}

/// Creates `temp.check_blobs`: every sha256 a ref names, and whether a
/// fetched ref in scope names it (then its file is re-hashed). A ref with no
/// env is out of any `--env`: the filter gives NULL there, taken as no.
pub fn create_blob_table(conn: &Connection, envs: &Option<String>) -> Result<()> {
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.check_blobs;
         CREATE TEMP TABLE check_blobs (
             sha256 TEXT PRIMARY KEY NOT NULL,
             rehash INTEGER NOT NULL
         ) WITHOUT ROWID;",
    )?;
    conn.execute(
        &format!(
            "INSERT INTO temp.check_blobs(sha256, rehash)
             SELECT sha256, coalesce(max(state = 'fetched' AND {ENV_FILTER}), 0) FROM refs
             WHERE sha256 IS NOT NULL GROUP BY sha256"
        ),
        [envs],
    )?;
    Ok(())
}

/// How many blobs [`blobs_to_rehash_after`] gives in all.
pub fn blobs_to_rehash(conn: &Connection) -> Result<u64> {
    Ok(conn.query_row(
        "SELECT count(*) FROM temp.check_blobs WHERE rehash",
        [],
        |r| r.get(0),
    )?)
}

/// The next `limit` blobs to re-hash after `after` (keyset pagination).
pub fn blobs_to_rehash_after(
    conn: &Connection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT sha256 FROM temp.check_blobs
         WHERE rehash AND sha256 > coalesce(?1, '') ORDER BY sha256 LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit as i64], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether some ref names the blob `sha256`.
pub fn blob_is_named(conn: &Connection, sha256: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM temp.check_blobs WHERE sha256 = ?1")?
        .query_row([sha256], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Creates, empty, `temp.check_bucket` (the listing: key, size and the
/// owner its key names) and fills `temp.check_keys`: every storage key a
/// ref names, with the class of the first ref in scope that names it
/// (`sticker` before `session_sticker` before `pack_sheet`), NULL when only
/// refs of other envs do; then every key `backfill` wrote (journaled
/// `written`, not undone) that no ref names, with the class its column
/// says (`journaled`): the row names it in the database, though the
/// catalog's snapshot is older than the backfill.
pub fn create_bucket_tables(conn: &Connection, envs: &Option<String>) -> Result<()> {
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.check_bucket;
         DROP TABLE IF EXISTS temp.check_keys;
         CREATE TEMP TABLE check_bucket (
             key         TEXT PRIMARY KEY NOT NULL,
             size        INTEGER NOT NULL,
             owner_user  TEXT,
             owner_id    TEXT
         ) WITHOUT ROWID;
         CREATE TEMP TABLE check_keys (
             key       TEXT PRIMARY KEY NOT NULL,
             class     TEXT,
             journaled INTEGER NOT NULL DEFAULT 0
         ) WITHOUT ROWID;",
    )?;
    conn.execute(
        &format!(
            "INSERT INTO temp.check_keys(key, class)
             SELECT storage_key, substr(min(CASE WHEN {ENV_FILTER} THEN
                        CASE class WHEN 'sticker' THEN '0' WHEN 'session_sticker' THEN '1'
                                   ELSE '2' END || class END), 2)
             FROM refs WHERE storage_key IS NOT NULL GROUP BY storage_key"
        ),
        [envs],
    )?;
    // The class each key column names (`stickers.result_storage_path`: sticker, …).
    let class_of_column: String = RefClass::ALL
        .into_iter()
        .filter_map(|class| {
            key_column(class).map(|(table, column)| {
                format!(
                    "WHEN j.table_name = '{}' AND j.column_name = '{column}' THEN '{}' ",
                    table.name(),
                    class.name()
                )
            })
        })
        .collect();
    conn.execute(
        &format!(
            "INSERT INTO temp.check_keys(key, class, journaled)
             SELECT value, substr(min(CASE WHEN {ENV_FILTER} THEN
                        CASE class WHEN 'sticker' THEN '0' WHEN 'session_sticker' THEN '1'
                                   ELSE '2' END || class END), 2), 1
             FROM (SELECT j.value, CASE {class_of_column} END AS class,
                          (SELECT s.env FROM sessions s WHERE s.id = coalesce(j.session_id,
                               CASE j.table_name
                                   WHEN 'sessions' THEN j.row_id
                                   WHEN 'stickers' THEN (SELECT session_id FROM stickers WHERE id = j.row_id)
                                   WHEN 'pack_batches' THEN (SELECT session_id FROM pack_batches WHERE id = j.row_id)
                               END)) AS env
                   FROM backfill_journal j WHERE j.state = 'written')
             WHERE class IS NOT NULL
             GROUP BY value
             ON CONFLICT(key) DO NOTHING"
        ),
        [envs],
    )?;
    Ok(())
}

/// Objects in scope that only `backfill`'s journal names (no ref of the
/// snapshot does): the catalog is older than the backfill.
pub fn journaled_objects(conn: &Connection, envs: &Option<String>) -> Result<u64> {
    Ok(conn.query_row(
        &format!("{OBJECTS} SELECT count(*) FROM objects WHERE in_scope AND journaled"),
        [envs],
        |r| r.get(0),
    )?)
}

/// Records one listed object; `owner` is what [`crate::layout::key_owner`] read from its key.
pub fn add_listed(
    conn: &Connection,
    key: &str,
    size: u64,
    owner: Option<KeyOwner<'_>>,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO temp.check_bucket(key, size, owner_user, owner_id) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(key) DO UPDATE SET size = excluded.size",
    )?
    .execute(params![
        key,
        size as i64,
        owner.and_then(|o| o.user_id),
        owner.map(|o| o.id)
    ])?;
    Ok(())
}

/// Every listed object in scope with its class (that of a ref naming its
/// key, or of the column `backfill` wrote it to, else `orphan`) and, for an orphan, its kind: `pack` when the owner
/// its key names is a pack batch, `single` when a session, `unknown`
/// otherwise. With `--env` (`?1`), an object is in scope when a ref of
/// those envs names it, or, named by none, when its owner is a batch or
/// session of those envs, or neither but in the folder of one of their users.
const OBJECTS: &str = "
WITH envs AS (SELECT value AS env FROM json_each(?1)),
objects AS (
    SELECT b.key, b.size,
           CASE WHEN k.key IS NULL THEN 'orphan' ELSE k.class END AS class,
           coalesce(k.journaled, 0) AS journaled,
           CASE WHEN k.key IS NOT NULL THEN NULL
                WHEN pb.id IS NOT NULL THEN 'pack'
                WHEN s.id IS NOT NULL THEN 'single'
                ELSE 'unknown' END AS kind,
           CASE WHEN ?1 IS NULL THEN 1
                WHEN k.key IS NOT NULL THEN k.class IS NOT NULL
                WHEN pb.id IS NOT NULL THEN
                    (SELECT ps.env FROM sessions ps WHERE ps.id = pb.session_id) IN (SELECT env FROM envs)
                WHEN s.id IS NOT NULL THEN s.env IN (SELECT env FROM envs)
                ELSE b.owner_user IN (SELECT user_id FROM sessions WHERE env IN (SELECT env FROM envs))
           END AS in_scope
    FROM temp.check_bucket b
    LEFT JOIN temp.check_keys k ON k.key = b.key
    LEFT JOIN pack_batches pb ON pb.id = b.owner_id
    LEFT JOIN sessions s ON s.id = b.owner_id
)";

/// Objects and bytes in scope per class (`orphan` among them).
pub fn bucket_classes(conn: &Connection, envs: &Option<String>) -> Result<Vec<(String, u64, u64)>> {
    let mut stmt = conn.prepare(&format!(
        "{OBJECTS} SELECT class, count(*), coalesce(sum(size), 0) FROM objects
         WHERE in_scope GROUP BY class"
    ))?;
    let rows = stmt.query_map([envs], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An object no ref names.
pub struct Orphan {
    pub key: String,
    pub size: u64,
    pub kind: String,
}

/// Orphans in scope, in key order, one at a time.
pub fn for_each_orphan(
    conn: &Connection,
    envs: &Option<String>,
    mut each: impl FnMut(Orphan) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(&format!(
        "{OBJECTS} SELECT key, size, kind FROM objects
         WHERE in_scope AND class = 'orphan' ORDER BY key"
    ))?;
    let mut rows = stmt.query([envs])?;
    while let Some(r) = rows.next()? {
        each(Orphan {
            key: r.get(0)?,
            size: r.get(1)?,
            kind: r.get(2)?,
        })?;
    }
    Ok(())
}

/// Keys that refs in scope name and the listing lacks, in key order, one at a time.
pub fn for_each_dangling(
    conn: &Connection,
    mut each: impl FnMut(String) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(
        "SELECT key FROM temp.check_keys k
         WHERE class IS NOT NULL AND NOT journaled
           AND NOT EXISTS (SELECT 1 FROM temp.check_bucket b WHERE b.key = k.key)
         ORDER BY key",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        each(r.get(0)?)?;
    }
    Ok(())
}

/// The first `limit` listed keys, in key order.
pub fn first_listed(conn: &Connection, limit: usize) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT key FROM temp.check_bucket ORDER BY key LIMIT ?1")?;
    let rows = stmt.query_map([limit as i64], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether a ref in scope names the storage key `key`.
pub fn key_is_named(conn: &Connection, key: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM temp.check_keys WHERE key = ?1 AND class IS NOT NULL")?
        .query_row([key], |_| Ok(()))
        .optional()?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> (tempfile::TempDir, crate::catalog::Catalog) {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = crate::catalog::Catalog::open_or_create(dir.path()).expect("open");
        catalog
            .conn()
            .execute_batch(
                r#"INSERT INTO sessions(id, data, first_snapshot, changed_snapshot, env,
                                        last_sticker_storage_path)
                   VALUES ('p', '{"id":"p","env":"prod"}', 1, 1, 'prod', NULL),
                          ('s', '{"id":"s","env":"prod"}', 1, 1, 'prod', 'k/shared'),
                          ('u', '{"id":"u","env":"test"}', 1, 1, 'test', 'k/test');
                   INSERT INTO stickers(id, data, first_snapshot, changed_snapshot)
                   VALUES ('t', '{"id":"t","session_id":"p","result_storage_path":"k/shared"}', 1, 1);
                   INSERT INTO pack_batches(id, data, first_snapshot, changed_snapshot, session_id,
                                            cleaned_sheet_storage_path)
                   VALUES ('b', '{"id":"b"}', 1, 1, 'p', 'k/shared'),
                          ('c', '{"id":"c"}', 1, 1, 'p', 'k/test');"#,
            )
            .expect("rows");
        crate::catalog::derive::derive(catalog.conn(), false).expect("refs");
        (dir, catalog)
    }

    fn classes(conn: &Connection) -> Vec<(String, Option<String>)> {
        let mut stmt = conn
            .prepare("SELECT key, class FROM temp.check_keys ORDER BY key")
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    #[test]
    fn a_key_takes_the_class_of_the_first_ref_in_scope_that_names_it() {
        let (_dir, catalog) = catalog();
        let conn = catalog.conn();
        create_bucket_tables(conn, &None).expect("tables");
        assert_eq!(
            classes(conn),
            [
                ("k/shared".to_string(), Some("sticker".to_string())),
                ("k/test".to_string(), Some("session_sticker".to_string())),
            ]
        );
        let prod = Some(r#"["prod"]"#.to_string());
        create_bucket_tables(conn, &prod).expect("tables");
        assert_eq!(
            classes(conn),
            [
                ("k/shared".to_string(), Some("sticker".to_string())),
                ("k/test".to_string(), Some("pack_sheet".to_string())),
            ]
        );
        let none = Some(r#"["staging"]"#.to_string());
        create_bucket_tables(conn, &none).expect("tables");
        assert_eq!(
            classes(conn),
            [("k/shared".to_string(), None), ("k/test".to_string(), None)]
        );
    }
}
