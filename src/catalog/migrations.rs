//! Numbered, append-only schema migrations over `PRAGMA user_version`
//! (the shape of cargo's `util/sqlite.rs`). Never edit a migration that has
//! shipped: add one.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

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
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    check_version(found, path)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    // Migration 8 leaves the pages of the old `stickers` table free, most
    // of the file: given back to the filesystem once.
    if (1..REBUILT_STICKERS).contains(&found) {
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}

/// The `user_version` after the migration that rebuilt `stickers` (8).
const REBUILT_STICKERS: i64 = 8;

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
