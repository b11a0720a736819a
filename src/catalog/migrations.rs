//! Numbered, append-only schema migrations over `PRAGMA user_version`
//! (the shape of cargo's `util/sqlite.rs`). Never edit a migration that has
//! shipped: add one.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::derive;
use crate::error::{Error, Result};

const MIGRATIONS: &[&str] = &[
    // 1: snapshots of the bot's tables, refs, blobs, destinations.
    r#"
CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE snapshots (
    id        INTEGER PRIMARY KEY,
    taken_at  TEXT NOT NULL,
    source    TEXT NOT NULL,
    envs      TEXT
);

CREATE TABLE sessions (
    id                        TEXT PRIMARY KEY NOT NULL,
    data                      TEXT NOT NULL,
    first_snapshot            INTEGER NOT NULL,
    changed_snapshot          INTEGER NOT NULL,
    seen_snapshot             INTEGER NOT NULL,
    user_id                   TEXT AS (json_extract(data, '$.user_id')),
    env                       TEXT AS (json_extract(data, '$.env')),
    mode                      TEXT AS (json_extract(data, '$.mode')),
    current_photo_file_id     TEXT AS (json_extract(data, '$.current_photo_file_id')),
    photos                    TEXT AS (json_extract(data, '$.photos')),
    last_sticker_file_id      TEXT AS (json_extract(data, '$.last_sticker_file_id')),
    last_sticker_storage_path TEXT AS (json_extract(data, '$.last_sticker_storage_path')),
    pack_sheet_file_id        TEXT AS (json_extract(data, '$.pack_sheet_file_id')),
    created_at                TEXT AS (json_extract(data, '$.created_at')),
    updated_at                TEXT AS (json_extract(data, '$.updated_at'))
);

CREATE TABLE pack_batches (
    id                         TEXT PRIMARY KEY NOT NULL,
    data                       TEXT NOT NULL,
    first_snapshot             INTEGER NOT NULL,
    changed_snapshot           INTEGER NOT NULL,
    seen_snapshot              INTEGER NOT NULL,
    session_id                 TEXT AS (json_extract(data, '$.session_id')),
    user_id                    TEXT AS (json_extract(data, '$.user_id')),
    status                     TEXT AS (json_extract(data, '$.status')),
    cleaned_sheet_storage_path TEXT AS (json_extract(data, '$.cleaned_sheet_storage_path')),
    created_at                 TEXT AS (json_extract(data, '$.created_at'))
);
CREATE INDEX pack_batches_session ON pack_batches(session_id, created_at, id);

CREATE TABLE stickers (
    id                  TEXT PRIMARY KEY NOT NULL,
    data                TEXT NOT NULL,
    first_snapshot      INTEGER NOT NULL,
    changed_snapshot    INTEGER NOT NULL,
    seen_snapshot       INTEGER NOT NULL,
    user_id             TEXT AS (json_extract(data, '$.user_id')),
    session_id          TEXT AS (json_extract(data, '$.session_id')),
    pack_batch_id       TEXT AS (json_extract(data, '$.pack_batch_id')),
    pack_index          INTEGER AS (json_extract(data, '$.pack_index')),
    style_preset_id     TEXT AS (json_extract(data, '$.style_preset_id')),
    telegram_file_id    TEXT AS (json_extract(data, '$.telegram_file_id')),
    result_storage_path TEXT AS (json_extract(data, '$.result_storage_path')),
    created_at          TEXT AS (json_extract(data, '$.created_at'))
);

CREATE TABLE blobs (
    sha256     TEXT PRIMARY KEY NOT NULL,
    size       INTEGER NOT NULL,
    type       TEXT NOT NULL,
    source     TEXT NOT NULL,
    fetched_at TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE refs (
    id               INTEGER PRIMARY KEY,
    class            TEXT NOT NULL,
    row_table        TEXT NOT NULL,
    row_id           TEXT NOT NULL,
    slot             TEXT NOT NULL DEFAULT '',
    session_id       TEXT,
    user_id          TEXT,
    env              TEXT,
    pack_batch_id    TEXT,
    pack_index       INTEGER,
    telegram_file_id TEXT,
    storage_key      TEXT,
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'fetched', 'failed')),
    sha256           TEXT REFERENCES blobs(sha256),
    source           TEXT,
    key_dangling     INTEGER NOT NULL DEFAULT 0,
    reason           TEXT,
    derived_gen      INTEGER NOT NULL,
    updated_at       TEXT,
    UNIQUE (class, row_table, row_id, slot)
);
CREATE INDEX refs_file_id ON refs(telegram_file_id);

CREATE TABLE destinations (
    id     INTEGER PRIMARY KEY,
    url    TEXT NOT NULL UNIQUE,
    layout TEXT NOT NULL
);

CREATE TABLE objects (
    dest_id    INTEGER NOT NULL REFERENCES destinations(id),
    key        TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    size       INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pushed', 'failed')),
    reason     TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (dest_id, key)
) WITHOUT ROWID;

CREATE VIEW v_rows(table_name, id, data) AS
    SELECT 'sessions', id, data FROM sessions
    UNION ALL SELECT 'stickers', id, data FROM stickers
    UNION ALL SELECT 'pack_batches', id, data FROM pack_batches;

CREATE VIEW v_refs(class, env, row_id, session_id, telegram_file_id, storage_key,
                   state, sha256, size, type, reason) AS
    SELECT r.class, r.env, r.row_id, r.session_id, r.telegram_file_id, r.storage_key,
           r.state, r.sha256, b.size, b.type, r.reason
    FROM refs r LEFT JOIN blobs b ON b.sha256 = r.sha256;
"#,
    // 2: where each ref stands at each destination, and the manifest last written there.
    r#"
CREATE TABLE placements (
    dest_id INTEGER NOT NULL REFERENCES destinations(id),
    ref_id  INTEGER NOT NULL REFERENCES refs(id) ON DELETE CASCADE,
    key     TEXT,
    state   TEXT NOT NULL CHECK (state IN ('pending', 'pushed', 'failed')),
    reason  TEXT,
    PRIMARY KEY (dest_id, ref_id)
) WITHOUT ROWID;
CREATE INDEX placements_key ON placements(dest_id, key);
CREATE INDEX placements_ref ON placements(ref_id);
ALTER TABLE destinations ADD COLUMN manifest_sha256 TEXT;
"#,
    // 3: the backfill journal: every change `backfill --apply` makes to the bot's database.
    r#"
CREATE TABLE backfill_journal (
    id          INTEGER PRIMARY KEY,
    action      TEXT NOT NULL CHECK (action IN ('set', 'insert')),
    table_name  TEXT NOT NULL,
    row_id      TEXT NOT NULL,
    column_name TEXT NOT NULL,
    value       TEXT NOT NULL,
    state       TEXT NOT NULL
                CHECK (state IN ('planned', 'written', 'kept', 'failed', 'undone', 'changed')),
    reason      TEXT,
    planned_at  TEXT NOT NULL,
    written_at  TEXT,
    undone_at   TEXT,
    UNIQUE (table_name, row_id, column_name, value)
);
"#,
    // 4: typed columns become plain columns, written by the snapshot from the
    // row it parsed already. As generated columns, SQLite parsed every row's
    // JSON again on insert and again on every read (deriving refs).
    r#"
DROP VIEW v_rows;

CREATE TABLE sessions_4 (
    id                        TEXT PRIMARY KEY NOT NULL,
    data                      TEXT NOT NULL,
    first_snapshot            INTEGER NOT NULL,
    changed_snapshot          INTEGER NOT NULL,
    seen_snapshot             INTEGER NOT NULL,
    user_id                   TEXT,
    env                       TEXT,
    mode                      TEXT,
    current_photo_file_id     TEXT,
    photos                    TEXT,
    last_sticker_file_id      TEXT,
    last_sticker_storage_path TEXT,
    pack_sheet_file_id        TEXT,
    created_at                TEXT,
    updated_at                TEXT
);
INSERT INTO sessions_4 SELECT id, data, first_snapshot, changed_snapshot, seen_snapshot,
    user_id, env, mode, current_photo_file_id, photos, last_sticker_file_id,
    last_sticker_storage_path, pack_sheet_file_id, created_at, updated_at
FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_4 RENAME TO sessions;

CREATE TABLE pack_batches_4 (
    id                         TEXT PRIMARY KEY NOT NULL,
    data                       TEXT NOT NULL,
    first_snapshot             INTEGER NOT NULL,
    changed_snapshot           INTEGER NOT NULL,
    seen_snapshot              INTEGER NOT NULL,
    session_id                 TEXT,
    user_id                    TEXT,
    status                     TEXT,
    cleaned_sheet_storage_path TEXT,
    created_at                 TEXT
);
INSERT INTO pack_batches_4 SELECT id, data, first_snapshot, changed_snapshot, seen_snapshot,
    session_id, user_id, status, cleaned_sheet_storage_path, created_at
FROM pack_batches;
DROP TABLE pack_batches;
ALTER TABLE pack_batches_4 RENAME TO pack_batches;
CREATE INDEX pack_batches_session ON pack_batches(session_id, created_at, id);

CREATE TABLE stickers_4 (
    id                  TEXT PRIMARY KEY NOT NULL,
    data                TEXT NOT NULL,
    first_snapshot      INTEGER NOT NULL,
    changed_snapshot    INTEGER NOT NULL,
    seen_snapshot       INTEGER NOT NULL,
    user_id             TEXT,
    session_id          TEXT,
    pack_batch_id       TEXT,
    pack_index          INTEGER,
    style_preset_id     TEXT,
    telegram_file_id    TEXT,
    result_storage_path TEXT,
    created_at          TEXT
);
INSERT INTO stickers_4 SELECT id, data, first_snapshot, changed_snapshot, seen_snapshot,
    user_id, session_id, pack_batch_id, pack_index, style_preset_id, telegram_file_id,
    result_storage_path, created_at
FROM stickers;
DROP TABLE stickers;
ALTER TABLE stickers_4 RENAME TO stickers;

CREATE VIEW v_rows(table_name, id, data) AS
    SELECT 'sessions', id, data FROM sessions
    UNION ALL SELECT 'stickers', id, data FROM stickers
    UNION ALL SELECT 'pack_batches', id, data FROM pack_batches;
"#,
    // 5: the session of each journaled change, so that `--undo --env` can
    // tell a change's env even for a row the catalog has not seen yet (a
    // stickers row `--sync-stickers` added).
    r#"
ALTER TABLE backfill_journal ADD COLUMN session_id TEXT;
"#,
    // 6: destinations by identity, not spelling (`url` of a row with
    // `canonical = 0` is the URL as typed, to be folded into its identity's
    // row by the next push or verify); the manifest last written there, as
    // the store described it, so that push can tell it is still there.
    r#"
ALTER TABLE destinations ADD COLUMN canonical INTEGER NOT NULL DEFAULT 0;
ALTER TABLE destinations ADD COLUMN manifest_size INTEGER;
ALTER TABLE destinations ADD COLUMN manifest_etag TEXT;
"#,
    // 7: the archive's identity, made once with the catalog (or on its
    // first open by a starchive that knows it) and kept by every copy of
    // it, so that `pull` tells a resumed pull from another archive.
    r#"
INSERT INTO settings(key, value) VALUES ('archive_id', lower(hex(randomblob(16))))
ON CONFLICT(key) DO NOTHING;
"#,
    // 8: a snapshot writes only the rows whose JSON text changed. Every
    // row of a table is in the latest snapshot, so `seen_snapshot` goes
    // (rewriting it was rewriting the whole catalog on every snapshot).
    // The typed columns of `stickers` become virtual: the catalog's
    // largest table kept each value twice, and its refs a third time.
    // `refs_orphans` finds the sticker refs whose session was unknown when
    // a snapshot brings it. The typed columns of sessions and pack batches
    // are written again by the next snapshot (`refresh_typed`), in case an
    // older starchive left them as `json_extract` gave them.
    r#"
DROP VIEW v_rows;

ALTER TABLE sessions DROP COLUMN seen_snapshot;
ALTER TABLE pack_batches DROP COLUMN seen_snapshot;

CREATE TABLE stickers_8 (
    id                  TEXT PRIMARY KEY NOT NULL,
    data                TEXT NOT NULL,
    first_snapshot      INTEGER NOT NULL,
    changed_snapshot    INTEGER NOT NULL,
    user_id             TEXT AS (json_extract(data, '$.user_id')),
    session_id          TEXT AS (json_extract(data, '$.session_id')),
    pack_batch_id       TEXT AS (json_extract(data, '$.pack_batch_id')),
    pack_index          INTEGER AS (json_extract(data, '$.pack_index')),
    style_preset_id     TEXT AS (json_extract(data, '$.style_preset_id')),
    telegram_file_id    TEXT AS (json_extract(data, '$.telegram_file_id')),
    result_storage_path TEXT AS (json_extract(data, '$.result_storage_path')),
    created_at          TEXT AS (json_extract(data, '$.created_at'))
);
INSERT INTO stickers_8(id, data, first_snapshot, changed_snapshot)
    SELECT id, data, first_snapshot, changed_snapshot FROM stickers ORDER BY id;
DROP TABLE stickers;
ALTER TABLE stickers_8 RENAME TO stickers;

CREATE INDEX refs_orphans ON refs(session_id) WHERE env IS NULL AND session_id IS NOT NULL;

INSERT INTO settings(key, value) VALUES ('refresh_typed', 'true')
ON CONFLICT(key) DO NOTHING;

CREATE VIEW v_rows(table_name, id, data) AS
    SELECT 'sessions', id, data FROM sessions
    UNION ALL SELECT 'stickers', id, data FROM stickers
    UNION ALL SELECT 'pack_batches', id, data FROM pack_batches;
"#,
    // 9: whether push wrote each object (1), or took one found at its key
    // with the right size for it (0): push overwrites only what it wrote.
    r#"
ALTER TABLE objects ADD COLUMN written INTEGER NOT NULL DEFAULT 1;
"#,
    // 10: an empty env is none (as in a CSV export): a session whose env is
    // empty has no env, like one whose env is NULL, in every command (the
    // refs had none already).
    r#"
UPDATE sessions SET env = NULL WHERE env = '';
"#,
    // 11: thin refs. `refs_core` keeps only what no row holds: the place
    // (`kind`, the row by its rowid, the slot; `batch`: the rowid of the
    // batch whose sheet a `pack_sheet` ref stands for), the env (read by
    // every scope filter), the fetch's record (state 0 pending, 1 fetched,
    // 2 failed; the blob's sha256 as 32 bytes), and a 48-bit hash of the
    // Telegram file id (`fid_hash`) and of the storage key (`key_hash`), NULL where
    // the ref has none: enough to tell a changed file and to find the refs
    // sharing a file id. `refs` becomes a view that reads the rest from the
    // rows. Each ref cost about 330 bytes with its indexes; now about 55.
    r#"
DROP VIEW v_refs;

CREATE TABLE refs_core (
    id           INTEGER PRIMARY KEY,
    kind         INTEGER NOT NULL,
    row          INTEGER NOT NULL,
    slot         TEXT NOT NULL DEFAULT '',
    batch        INTEGER,
    env          TEXT,
    state        INTEGER NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),
    sha256       BLOB,
    source       TEXT,
    key_dangling INTEGER NOT NULL DEFAULT 0,
    reason       TEXT,
    updated_at   TEXT,
    fid_hash     INTEGER,
    key_hash     INTEGER
);
INSERT INTO refs_core(id, kind, row, slot, batch, env, state, sha256, source, key_dangling,
                      reason, updated_at, fid_hash, key_hash)
SELECT r.id, k.kind, coalesce(t.rowid, s.rowid, b.rowid), r.slot,
       CASE k.kind WHEN 2 THEN (SELECT p.rowid FROM pack_batches p WHERE p.id = r.pack_batch_id)
                   WHEN 3 THEN b.rowid END,
       r.env, CASE r.state WHEN 'pending' THEN 0 WHEN 'fetched' THEN 1 ELSE 2 END,
       unhex(r.sha256), r.source, r.key_dangling, r.reason, r.updated_at,
       file_hash(r.telegram_file_id), file_hash(r.storage_key)
FROM refs r
JOIN (SELECT 0 AS kind, 'sticker' AS class, 'stickers' AS tab
      UNION ALL SELECT 1, 'session_sticker', 'sessions'
      UNION ALL SELECT 2, 'pack_sheet', 'sessions'
      UNION ALL SELECT 3, 'pack_sheet', 'pack_batches'
      UNION ALL SELECT 4, 'photo', 'sessions') k ON k.class = r.class AND k.tab = r.row_table
LEFT JOIN stickers t ON r.row_table = 'stickers' AND t.id = r.row_id
LEFT JOIN sessions s ON r.row_table = 'sessions' AND s.id = r.row_id
LEFT JOIN pack_batches b ON r.row_table = 'pack_batches' AND b.id = r.row_id
WHERE coalesce(t.rowid, s.rowid, b.rowid) IS NOT NULL
ORDER BY r.id;

CREATE TABLE placements_11 (
    dest_id INTEGER NOT NULL REFERENCES destinations(id),
    ref_id  INTEGER NOT NULL REFERENCES refs_core(id) ON DELETE CASCADE,
    key     TEXT,
    state   TEXT NOT NULL CHECK (state IN ('pending', 'pushed', 'failed')),
    reason  TEXT,
    PRIMARY KEY (dest_id, ref_id)
) WITHOUT ROWID;
INSERT INTO placements_11(dest_id, ref_id, key, state, reason)
    SELECT dest_id, ref_id, key, state, reason FROM placements
    WHERE ref_id IN (SELECT id FROM refs_core);
DROP TABLE placements;
DROP TABLE refs;
ALTER TABLE placements_11 RENAME TO placements;
CREATE INDEX placements_key ON placements(dest_id, key);
CREATE INDEX placements_ref ON placements(ref_id);

CREATE INDEX refs_core_fid ON refs_core(fid_hash) WHERE fid_hash IS NOT NULL;
CREATE INDEX refs_orphans ON refs_core(row) WHERE env IS NULL AND kind = 0;

CREATE VIEW refs(id, class, row_table, row_id, slot, session_id, user_id, env, pack_batch_id,
                 pack_index, telegram_file_id, storage_key, state, sha256, source,
                 key_dangling, reason, updated_at, fid_hash, key_hash) AS
SELECT r.id,
       CASE r.kind WHEN 0 THEN 'sticker' WHEN 1 THEN 'session_sticker' WHEN 4 THEN 'photo'
                   ELSE 'pack_sheet' END,
       CASE r.kind WHEN 0 THEN 'stickers' WHEN 3 THEN 'pack_batches' ELSE 'sessions' END,
       CASE r.kind WHEN 0 THEN t.id WHEN 3 THEN b.id ELSE s.id END,
       r.slot,
       CASE r.kind WHEN 0 THEN t.session_id WHEN 3 THEN b.session_id ELSE s.id END,
       CASE r.kind WHEN 0 THEN t.user_id WHEN 3 THEN b.user_id ELSE s.user_id END,
       r.env,
       CASE r.kind WHEN 0 THEN t.pack_batch_id WHEN 2 THEN b.id WHEN 3 THEN b.id END,
       CASE r.kind WHEN 0 THEN t.pack_index END,
       CASE WHEN r.fid_hash IS NOT NULL THEN
           CASE r.kind WHEN 0 THEN t.telegram_file_id WHEN 1 THEN s.last_sticker_file_id
                       WHEN 2 THEN s.pack_sheet_file_id
                       WHEN 4 THEN CASE r.slot WHEN 'current' THEN s.current_photo_file_id
                                   ELSE json_extract(s.photos, '$[' || r.slot || ']') END
           END
       END,
       CASE WHEN r.key_hash IS NOT NULL THEN
           CASE r.kind WHEN 0 THEN t.result_storage_path WHEN 1 THEN s.last_sticker_storage_path
                       ELSE b.cleaned_sheet_storage_path END
       END,
       CASE r.state WHEN 0 THEN 'pending' WHEN 1 THEN 'fetched' ELSE 'failed' END,
       CASE WHEN r.sha256 IS NOT NULL THEN lower(hex(r.sha256)) END,
       r.source, r.key_dangling, r.reason, r.updated_at, r.fid_hash, r.key_hash
FROM refs_core r
LEFT JOIN stickers t ON r.kind = 0 AND t.rowid = r.row
LEFT JOIN sessions s ON r.kind IN (1, 2, 4) AND s.rowid = r.row
LEFT JOIN pack_batches b ON b.rowid = r.batch;

CREATE VIEW v_refs(class, env, row_id, session_id, telegram_file_id, storage_key,
                   state, sha256, size, type, reason) AS
    SELECT r.class, r.env, r.row_id, r.session_id, r.telegram_file_id, r.storage_key,
           r.state, r.sha256, b.size, b.type, r.reason
    FROM refs r LEFT JOIN blobs b ON b.sha256 = r.sha256;
"#,
    // 12: the checks on the state of `refs_core` and `placements`, a row
    // per ref each, compare with each value in turn. SQLite built
    // `state IN (a, b, c)` into a temporary table for every row written (a
    // sixth of a first snapshot's time). Both pass the same rows, so
    // SQLite's procedure for changing a CHECK in place applies
    // (https://sqlite.org/lang_altertable.html#otheralter): the tables'
    // text in `sqlite_schema` is rewritten, and `migrate` bumps the schema
    // version after.
    r#"
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql, 'CHECK (state IN (0, 1, 2))', 'CHECK (state = 0 OR state = 1 OR state = 2)')
WHERE type = 'table' AND name = 'refs_core';
UPDATE sqlite_schema
SET sql = replace(sql, 'CHECK (state IN (''pending'', ''pushed'', ''failed''))',
                  'CHECK (state = ''pending'' OR state = ''pushed'' OR state = ''failed'')')
WHERE type = 'table' AND name = 'placements';
PRAGMA writable_schema = OFF;
"#,
];

/// The number of migrations this starchive knows: the `user_version` of an
/// up-to-date catalog.
pub fn count() -> i64 {
    MIGRATIONS.len() as i64
}

/// Refuses a catalog of `user_version` `found` newer than this starchive.
pub fn check_version(found: i64, path: &Path) -> Result<()> {
    let known = count();
    if found > known {
        return Err(Error::CatalogTooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    Ok(())
}

/// Applies the migrations this catalog lacks, in one exclusive transaction.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    derive::register_file_hash(conn)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    check_version(found, path)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    if found < count() {
        // Every connection reads the schema again, this one too: migration
        // 12 rewrote `sqlite_schema` without telling SQLite.
        let version: i64 = tx.pragma_query_value(None, "schema_version", |r| r.get(0))?;
        tx.pragma_update(None, "schema_version", version.wrapping_add(1))?;
    }
    tx.commit()?;
    // Migrations 8 and 11 leave the pages of the old `stickers` and `refs`
    // tables free, most of the file: given back to the filesystem once.
    // (VACUUM keeps the rowids `refs_core` names rows by: those of a table
    // with an index are copied, not renumbered.)
    if (1..THIN_REFS).contains(&found) {
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}

/// The `user_version` after the migration that made `refs` thin (11).
const THIN_REFS: i64 = 11;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn, Path::new(":memory:")).expect("first");
        migrate(&mut conn, Path::new(":memory:")).expect("second");
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version");
        assert_eq!(v, MIGRATIONS.len() as i64);
    }

    /// A catalog written before migration 4 keeps its rows, and its typed
    /// columns keep the values they were generated with.
    #[test]
    fn typed_columns_survive_migration_4() {
        let mut conn = Connection::open_in_memory().expect("open");
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).expect("migrations 1-3");
        }
        conn.pragma_update(None, "user_version", 3).expect("set");
        conn.execute_batch(
            r#"INSERT INTO stickers(id, data, first_snapshot, changed_snapshot, seen_snapshot)
               VALUES ('s1', '{"id":"s1","user_id":9007199254740993,"pack_index":7,"telegram_file_id":"F"}', 1, 1, 1);
               INSERT INTO sessions(id, data, first_snapshot, changed_snapshot, seen_snapshot)
               VALUES ('a', '{"id":"a","env":"prod","photos":["p1","p2"]}', 1, 1, 1);"#,
        )
        .expect("rows");
        migrate(&mut conn, Path::new(":memory:")).expect("migrate");
        let sticker: (String, i64, String) = conn
            .query_row(
                "SELECT user_id, pack_index, telegram_file_id FROM stickers",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("sticker");
        assert_eq!(sticker, ("9007199254740993".into(), 7, "F".into()));
        let session: (String, String, String) = conn
            .query_row(
                "SELECT s.env, s.photos, v.data FROM v_rows v JOIN sessions s ON s.id = v.id",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("session");
        assert_eq!(session.0, "prod");
        assert_eq!(session.1, r#"["p1","p2"]"#);
        assert!(session.2.contains("p2"));
    }

    /// Migration 8 keeps every row and its typed values (those of
    /// `stickers` now computed from `data`), drops `seen_snapshot`, and
    /// leaves no free pages behind.
    #[test]
    fn migration_8_keeps_rows_and_frees_the_old_stickers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.sqlite");
        let mut conn = Connection::open(&path).expect("open");
        for sql in &MIGRATIONS[..7] {
            conn.execute_batch(sql).expect("migrations 1-7");
        }
        conn.pragma_update(None, "user_version", 7).expect("set");
        conn.execute_batch(
            r#"INSERT INTO sessions(id, data, first_snapshot, changed_snapshot, seen_snapshot, env)
               VALUES ('a', '{"id":"a","env":"prod"}', 1, 1, 1, 'prod');
               WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
               INSERT INTO stickers(id, data, first_snapshot, changed_snapshot, seen_snapshot,
                                    session_id, telegram_file_id)
               SELECT 's' || i, json_object('id', 's' || i, 'session_id', 'a',
                                            'telegram_file_id', 'F' || i, 'pack_index', i),
                      1, 2, 2, 'a', 'F' || i FROM n;"#,
        )
        .expect("rows");
        migrate(&mut conn, &path).expect("migrate");
        let (n, file_id, index, changed): (i64, String, i64, i64) = conn
            .query_row(
                "SELECT count(*), max(telegram_file_id) FILTER (WHERE id = 's7'),
                        sum(pack_index), min(changed_snapshot) FROM stickers",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("stickers");
        assert_eq!(
            (n, file_id.as_str(), index, changed),
            (2000, "F7", 2001000, 2)
        );
        let seen: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('sessions') WHERE name = 'seen_snapshot'",
                [],
                |r| r.get(0),
            )
            .expect("columns");
        assert_eq!(seen, 0);
        let free: i64 = conn
            .pragma_query_value(None, "freelist_count", |r| r.get(0))
            .expect("freelist");
        assert_eq!(free, 0, "the old stickers' pages are given back");
    }

    /// The columns of every ref, as `refs` gives them, in id order.
    fn refs_as_read(conn: &Connection) -> Vec<Vec<rusqlite::types::Value>> {
        let mut stmt = conn
            .prepare(
                "SELECT id, class, row_table, row_id, slot, session_id, user_id, env,
                        pack_batch_id, pack_index, telegram_file_id, storage_key, state,
                        sha256, source, key_dangling, reason, updated_at
                 FROM refs ORDER BY id",
            )
            .expect("prepare");
        stmt.query_map([], |r| {
            (0..18)
                .map(|i| r.get::<_, rusqlite::types::Value>(i))
                .collect()
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("refs")
    }

    fn all_text(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(sql).expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// Migration 11 moves a catalog's refs into `refs_core` in place: every
    /// ref reads as it did through `refs` and `v_refs` (fetched with its
    /// blob, failed with its reason, pending, with a dangling key, without
    /// a session), keeps its id and its placements, the journal stays, the
    /// old pages are given back, and a derive afterwards changes nothing.
    /// Rows deleted before leave gaps in the rowids, which the VACUUM after
    /// the migration must keep.
    #[test]
    fn migration_11_keeps_every_ref_as_it_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.sqlite");
        let mut conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "foreign_keys", "ON").expect("fk");
        for sql in &MIGRATIONS[..10] {
            conn.execute_batch(sql).expect("migrations 1-10");
        }
        conn.pragma_update(None, "user_version", 10).expect("set");
        let sha = "ab".repeat(32);
        conn.execute_batch(&format!(
            r#"INSERT INTO sessions(id, data, first_snapshot, changed_snapshot, user_id, env,
                                    last_sticker_file_id, last_sticker_storage_path,
                                    pack_sheet_file_id, current_photo_file_id, photos)
               VALUES ('x', '{{}}', 1, 1, NULL, 'prod', NULL, NULL, NULL, NULL, NULL),
                      ('a', '{{"id":"a"}}', 1, 1, '7', 'prod', 'LS', 'k/ls', 'PS', 'PH',
                       '["P0","P1"]'),
                      ('b', '{{"id":"b"}}', 1, 1, '8', 'test', NULL, NULL, NULL, NULL, NULL);
               DELETE FROM sessions WHERE id = 'x';
               INSERT INTO pack_batches(id, data, first_snapshot, changed_snapshot, session_id,
                                        user_id, cleaned_sheet_storage_path, created_at)
               VALUES ('b1', '{{}}', 1, 1, 'a', '7', 'k/sheet1', '2025-01-01T00:00:00.000000Z'),
                      ('b2', '{{}}', 1, 1, 'a', '7', 'k/sheet2', '2025-01-02T00:00:00.000000Z');
               INSERT INTO stickers(id, data, first_snapshot, changed_snapshot) VALUES
                   ('s1', '{{"id":"s1","session_id":"a","user_id":7,"telegram_file_id":"F1",
                            "result_storage_path":"k/1","pack_batch_id":"b2","pack_index":3}}', 1, 1),
                   ('s2', '{{"id":"s2"}}', 1, 1),
                   ('s3', '{{"id":"s3","session_id":"b","telegram_file_id":"F3"}}', 1, 1),
                   ('s4', '{{"id":"s4"}}', 1, 1),
                   ('s5', '{{"id":"s5","session_id":"a","result_storage_path":"k/5"}}', 1, 1),
                   ('s6', '{{"id":"s6","session_id":"zz","telegram_file_id":"F1"}}', 1, 1);
               DELETE FROM stickers WHERE id IN ('s2', 's4');
               INSERT INTO refs(class, row_table, row_id, slot, session_id, user_id, env,
                                pack_batch_id, pack_index, telegram_file_id, storage_key,
                                derived_gen)
                   SELECT 'sticker', 'stickers', t.id, '', t.session_id, t.user_id, s.env,
                          t.pack_batch_id, t.pack_index, t.telegram_file_id,
                          t.result_storage_path, 1
                   FROM stickers t LEFT JOIN sessions s ON s.id = t.session_id ORDER BY t.rowid;
               INSERT INTO refs(class, row_table, row_id, slot, session_id, user_id, env,
                                pack_batch_id, telegram_file_id, storage_key, derived_gen)
               VALUES ('session_sticker', 'sessions', 'a', '', 'a', '7', 'prod', NULL, 'LS',
                       'k/ls', 1),
                      ('pack_sheet', 'sessions', 'a', '', 'a', '7', 'prod', 'b2', 'PS',
                       'k/sheet2', 1),
                      ('pack_sheet', 'pack_batches', 'b1', '', 'a', '7', 'prod', 'b1', NULL,
                       'k/sheet1', 1),
                      ('photo', 'sessions', 'a', 'current', 'a', '7', 'prod', NULL, 'PH', NULL, 1),
                      ('photo', 'sessions', 'a', '0', 'a', '7', 'prod', NULL, 'P0', NULL, 1),
                      ('photo', 'sessions', 'a', '1', 'a', '7', 'prod', NULL, 'P1', NULL, 1);
               INSERT INTO blobs(sha256, size, type, source, fetched_at)
                   VALUES ('{sha}', 5, 'webp', 'bucket', '2025-01-03T00:00:00Z');
               UPDATE refs SET state = 'fetched', sha256 = '{sha}', source = 'bucket',
                               updated_at = '2025-01-03T00:00:00Z'
                   WHERE row_id IN ('s1', 'a') AND class IN ('sticker', 'session_sticker');
               UPDATE refs SET state = 'failed', reason = 'gone', updated_at = '2025-01-04T00:00:00Z'
                   WHERE row_id IN ('s3', 'b1');
               UPDATE refs SET key_dangling = 1 WHERE row_id = 's5';
               INSERT INTO destinations(id, url, layout, canonical) VALUES (1, '/d', 'mirror', 1);
               INSERT INTO placements(dest_id, ref_id, key, state, reason)
                   SELECT 1, id, 'x/' || row_id, 'pushed', NULL FROM refs WHERE row_id = 's1'
                   UNION ALL
                   SELECT 1, id, NULL, 'failed', 'no key' FROM refs WHERE class = 'session_sticker';
               INSERT INTO backfill_journal(action, table_name, row_id, column_name, value, state,
                                            planned_at)
                   VALUES ('set', 'sessions', 'a', 'last_sticker_storage_path', 'k/ls', 'written',
                           '2025-01-05T00:00:00Z');"#
        ))
        .expect("a catalog of migration 10");
        let before = refs_as_read(&conn);
        let v_refs = "SELECT json_array(class, env, row_id, session_id, telegram_file_id,
                                        storage_key, state, sha256, size, type, reason)
                      FROM v_refs ORDER BY row_id, class, telegram_file_id";
        let v_before = all_text(&conn, v_refs);
        let placed = "SELECT json_array(dest_id, ref_id, key, state, reason) FROM placements
                      ORDER BY ref_id";
        let placements_before = all_text(&conn, placed);
        assert_eq!(before.len(), 10);
        assert_eq!(placements_before.len(), 2);

        migrate(&mut conn, &path).expect("migrate");
        assert_eq!(refs_as_read(&conn), before);
        assert_eq!(all_text(&conn, v_refs), v_before);
        assert_eq!(all_text(&conn, placed), placements_before);
        assert_eq!(
            all_text(&conn, "SELECT state FROM backfill_journal"),
            ["written"]
        );
        let free: i64 = conn
            .pragma_query_value(None, "freelist_count", |r| r.get(0))
            .expect("freelist");
        assert_eq!(free, 0, "the old refs' pages are given back");
        // The hashes are those deriving computes: a derive finds every ref
        // as it is, the fetched ones stay fetched.
        let tx = conn.transaction().expect("tx");
        derive::derive(&tx, true).expect("derive");
        tx.commit().expect("commit");
        assert_eq!(refs_as_read(&conn), before);
        // A ref's placements still go with it.
        conn.execute(
            "DELETE FROM refs_core WHERE id = ?1",
            [before[0][0].clone()],
        )
        .expect("delete");
        assert_eq!(all_text(&conn, placed).len(), 1);
    }

    /// Migration 12 changes how the states of `refs_core` and `placements`
    /// are checked, not what passes: the rows of a catalog of migration 11
    /// stay as they were, a second connection open all along sees the new
    /// checks, the states of each table are written (a ref's as text too,
    /// which the column's affinity makes integers), any other value is
    /// refused, and writing a row builds no temporary table (the cost the
    /// migration removes).
    #[test]
    fn migration_12_checks_states_as_before_without_a_temporary_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.sqlite");
        let mut conn = Connection::open(&path).expect("open");
        derive::register_file_hash(&conn).expect("file_hash");
        for sql in &MIGRATIONS[..11] {
            conn.execute_batch(sql).expect("migrations 1-11");
        }
        conn.pragma_update(None, "user_version", 11).expect("set");
        conn.execute_batch(
            "INSERT INTO refs_core(kind, row, state) VALUES (0, 1, 0), (0, 2, 1), (0, 3, 2);
             INSERT INTO destinations(id, url, layout, canonical) VALUES (1, '/d', 'mirror', 1);
             INSERT INTO placements(dest_id, ref_id, state)
                 VALUES (1, 1, 'pending'), (1, 2, 'pushed'), (1, 3, 'failed');",
        )
        .expect("rows of migration 11");
        let other = Connection::open(&path).expect("a second connection");
        let rows = |c: &Connection| {
            all_text(
                c,
                "SELECT r.id || ':' || r.state || ':' || p.state
                 FROM refs_core r JOIN placements p ON p.ref_id = r.id ORDER BY r.id",
            )
        };
        let before = ["1:0:pending", "2:1:pushed", "3:2:failed"];
        assert_eq!(rows(&other), before);

        migrate(&mut conn, &path).expect("migrate");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok");
        // (table, the insert of a row in state {}, its delete, states that
        // pass, states refused)
        let cases = [
            (
                "refs_core",
                "INSERT INTO refs_core(id, kind, row, state) VALUES (10, 0, 10, {})",
                "DELETE FROM refs_core WHERE id = 10",
                &["0", "2", "'1'"][..],
                &["3", "-1", "1.5", "'x'", "NULL"][..],
            ),
            (
                "placements",
                "INSERT INTO placements(dest_id, ref_id, state) VALUES (1, 9, {})",
                "DELETE FROM placements WHERE ref_id = 9",
                &["'pending'", "'pushed'", "'failed'"][..],
                &["'Pushed'", "'pushed '", "''", "0", "NULL"][..],
            ),
        ];
        for c in [&conn, &other] {
            assert_eq!(rows(c), before);
            c.execute("INSERT INTO refs_core(id, kind, row) VALUES (9, 0, 9)", [])
                .expect("a ref to place");
            for (table, insert, clear, pass, refused) in cases {
                for (state, passes) in pass
                    .iter()
                    .map(|s| (s, true))
                    .chain(refused.iter().map(|s| (s, false)))
                {
                    c.execute(clear, []).expect("clear");
                    let written = c.execute(&insert.replace("{}", state), []);
                    assert_eq!(written.is_ok(), passes, "{table} {state}: {written:?}");
                }
                let program: Vec<String> = c
                    .prepare(&format!("EXPLAIN {}", insert.replace("{}", pass[0])))
                    .expect("explain")
                    .query_map([], |r| r.get(1))
                    .expect("opcodes")
                    .collect::<Result<_, _>>()
                    .expect("opcodes");
                assert!(
                    !program.iter().any(|op| op == "OpenEphemeral"),
                    "{table}: {program:?}"
                );
            }
            c.execute_batch(
                "DELETE FROM placements WHERE ref_id = 9; DELETE FROM refs_core WHERE id = 9;",
            )
            .expect("clear");
        }
    }

    #[test]
    fn newer_catalog_is_refused() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.pragma_update(None, "user_version", 999).expect("set");
        assert!(matches!(
            migrate(&mut conn, Path::new(":memory:")),
            Err(Error::CatalogTooNew { .. })
        ));
    }
}
