//! Deriving the `refs` table from the catalog's copies of the bot's rows
//! (SPEC §1): every ref at once, or only those of the rows a snapshot
//! listed as changed. Which columns name files is [`crate::refs`]'s
//! knowledge; this is the SQL that applies it.

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use crate::error::Result;

/// Rebuilds the refs (`refs_core`) from the snapshot's rows, in the
/// caller's transaction. A ref whose Telegram id and storage key are
/// unchanged keeps its state (fetched stays fetched), as does a fetched one
/// whose Telegram id is unchanged and only its storage key came, went or
/// moved; one whose file changed is pending again;
/// refs whose row is gone are removed.
pub fn derive(conn: &Connection, include_photos: bool) -> Result<()> {
    let found = found_sql(Scope::All);
    let empty: bool = conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM refs_core)", [], |r| {
        r.get(0)
    })?;
    if empty {
        // Into an empty table (a first snapshot): a plain insert, and the
        // file id index built after it in one sort rather than row by row.
        conn.execute_batch("DROP INDEX refs_core_fid")?;
        conn.execute(
            &format!("{found} {INSERT_REFS} FROM found"),
            rusqlite::named_params! {":photos": include_photos},
        )?;
        build_fid_index(conn)?;
        return note_photos(conn, include_photos);
    }
    // Again: only new and changed refs are written, so that a snapshot of a
    // database that changed little changes little of the catalog.
    upsert_found(conn, &found, include_photos, "main.refs_core")?;
    note_photos(conn, include_photos)
}

/// What a first snapshot does before its rows arrive, to write the ref of
/// each sticker with its row ([`STICKER_REF_INSERT`]) rather than derive
/// them all after: those refs are most of a catalog's, and written from
/// what the reader's thread found in the row ([`super::events::RefHashes`])
/// they cost one append each, where deriving them read every row's JSON
/// again. The `refs_core_fid` index is built after, in one sort
/// ([`derive_after_sticker_refs`]).
pub const STICKER_REFS_BEGIN: &str = "DROP INDEX refs_core_fid;";

/// The env of the session `?1` (NULL when it has none), as [`derive`]
/// finds it.
pub const SESSION_ENV: &str = "SELECT nullif(env, '') FROM sessions WHERE id = ?1";

/// The ref of a stickers row just inserted in a first snapshot, as
/// [`derive`] would find it: `?1` the row's rowid, `?2` the env of its
/// session ([`SESSION_ENV`]), `?3` and `?4` the hashes of its file id and
/// storage key.
pub const STICKER_REF_INSERT: &str = "
INSERT INTO refs_core (kind, row, env, fid_hash, key_hash) VALUES (0, ?1, ?2, ?3, ?4)";

/// Derives the refs of a first snapshot that wrote those of its stickers
/// already ([`STICKER_REFS_BEGIN`]): every other ref, then the
/// `refs_core_fid` index.
pub fn derive_after_sticker_refs(conn: &Connection, include_photos: bool) -> Result<()> {
    let found = found_sql(Scope::AllButStickers);
    conn.execute(
        &format!("{found} {INSERT_REFS} FROM found"),
        rusqlite::named_params! {":photos": include_photos},
    )?;
    build_fid_index(conn)?;
    note_photos(conn, include_photos)
}

/// The hash `refs_core` keeps of a Telegram file id or a storage key: the
/// first 48 bits of its SHA-256, as a positive integer (6 bytes in a
/// record). Equal hashes are taken for the same file only where a ref is
/// compared with itself across snapshots (a chance of 2^-48 per changed
/// ref); a lookup by file id compares the ids themselves after.
pub fn file_hash(text: &str) -> i64 {
    hash_bytes(text.as_bytes())
}

fn hash_bytes(bytes: &[u8]) -> i64 {
    let digest = Sha256::digest(bytes);
    let mut be = [0u8; 8];
    be[2..].copy_from_slice(&digest[..6]);
    i64::from_be_bytes(be)
}

/// Makes [`file_hash`] the SQL function `file_hash(text)` of `conn` (NULL
/// for NULL), which deriving and the migration to thin refs call.
pub fn register_file_hash(conn: &Connection) -> Result<()> {
    use rusqlite::functions::FunctionFlags;
    use rusqlite::types::ValueRef;
    conn.create_scalar_function(
        "file_hash",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            Ok(match ctx.get_raw(0) {
                ValueRef::Null => None,
                ValueRef::Text(b) | ValueRef::Blob(b) => Some(hash_bytes(b)),
                ValueRef::Integer(i) => Some(file_hash(&i.to_string())),
                ValueRef::Real(f) => Some(file_hash(&f.to_string())),
            })
        },
    )?;
    Ok(())
}

/// The setting that says whether the refs were last derived with photos.
const REFS_PHOTOS: &str = "refs_photos";

fn note_photos(conn: &Connection, include_photos: bool) -> Result<()> {
    conn.execute(
        "INSERT INTO settings(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [REFS_PHOTOS, if include_photos { "true" } else { "false" }],
    )?;
    Ok(())
}

/// Whether [`derive_changed`] can bring the refs up to date: they were
/// derived (by this starchive) with the same `include_photos`.
pub fn can_derive_changed(conn: &Connection, include_photos: bool) -> Result<bool> {
    use rusqlite::OptionalExtension;
    let noted: Option<String> = conn
        .query_row(
            "SELECT value FROM settings WHERE key = ?1",
            [REFS_PHOTOS],
            |r| r.get(0),
        )
        .optional()?;
    Ok(noted.as_deref() == Some(if include_photos { "true" } else { "false" }))
}

/// The temp tables in which a snapshot lists what changed, for
/// [`derive_changed`]: `snap_rows` the rows added, changed or removed;
/// `snap_sessions` the sessions whose refs (and whose batches' refs) must
/// be derived again besides; `snap_env` the sessions whose sticker refs may
/// carry a stale env (`known` = 0: the session is new, so only refs that
/// had no env can be).
pub const CHANGE_TABLES: &str = "
CREATE TEMP TABLE snap_rows (
    row_table TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (row_table, id)
) WITHOUT ROWID;
CREATE TEMP TABLE snap_sessions (id TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;
CREATE TEMP TABLE snap_env (id TEXT PRIMARY KEY NOT NULL, known INTEGER NOT NULL) WITHOUT ROWID;";

/// Drops the tables of [`CHANGE_TABLES`].
pub const DROP_CHANGE_TABLES: &str = "
DROP TABLE IF EXISTS temp.snap_rows;
DROP TABLE IF EXISTS temp.snap_sessions;
DROP TABLE IF EXISTS temp.snap_env;";

/// [`derive`] for only the rows a snapshot listed in [`CHANGE_TABLES`] and
/// those depending on them: the result is the same, at the cost of what
/// changed rather than of the whole catalog. Only when
/// [`can_derive_changed`].
pub fn derive_changed(conn: &Connection, include_photos: bool) -> Result<()> {
    let unchanged: bool = conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM temp.snap_rows)
            AND NOT EXISTS (SELECT 1 FROM temp.snap_sessions)
            AND NOT EXISTS (SELECT 1 FROM temp.snap_env)",
        [],
        |r| r.get(0),
    )?;
    if unchanged {
        return Ok(());
    }
    // A changed session, and the sessions a changed batch belongs to (now;
    // the snapshot noted those it belonged to before), are derived whole.
    // `snap_derived_rows`: the rowids of the derived rows still there.
    conn.execute_batch(
        "INSERT OR IGNORE INTO temp.snap_sessions
             SELECT id FROM temp.snap_rows WHERE row_table = 'sessions';
         INSERT OR IGNORE INTO temp.snap_sessions
             SELECT b.session_id FROM temp.snap_rows r JOIN pack_batches b ON b.id = r.id
             WHERE r.row_table = 'pack_batches' AND b.session_id IS NOT NULL;
         CREATE TEMP TABLE snap_derived (
             row_table TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (row_table, id)
         ) WITHOUT ROWID;
         INSERT OR IGNORE INTO temp.snap_derived
             SELECT row_table, id FROM temp.snap_rows WHERE row_table <> 'sessions';
         INSERT OR IGNORE INTO temp.snap_derived
             SELECT 'sessions', id FROM temp.snap_sessions;
         INSERT OR IGNORE INTO temp.snap_derived
             SELECT 'pack_batches', b.id FROM temp.snap_sessions s
             CROSS JOIN pack_batches b ON b.session_id = s.id;
         CREATE TEMP TABLE snap_derived_rows (
             row_table TEXT NOT NULL, row INTEGER NOT NULL, PRIMARY KEY (row_table, row)
         ) WITHOUT ROWID;
         INSERT OR IGNORE INTO temp.snap_derived_rows
             SELECT 'stickers', t.rowid FROM temp.snap_derived d JOIN stickers t ON t.id = d.id
             WHERE d.row_table = 'stickers';
         INSERT OR IGNORE INTO temp.snap_derived_rows
             SELECT 'sessions', t.rowid FROM temp.snap_derived d JOIN sessions t ON t.id = d.id
             WHERE d.row_table = 'sessions';
         INSERT OR IGNORE INTO temp.snap_derived_rows
             SELECT 'pack_batches', t.rowid FROM temp.snap_derived d
             JOIN pack_batches t ON t.id = d.id
             WHERE d.row_table = 'pack_batches';",
    )?;
    // The refs of the derived rows (one pass over the thin refs, each
    // looked up among the derived rows): the only ones a found ref can be.
    // The rowid alone is checked first (a list of integers SQLite builds
    // once), which leaves out almost every ref before the lookup by table
    // and rowid: 1.1M refs, 10k derived rows: 0.43 s to 0.29 s.
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE derived_refs AS
             SELECT r.id, r.kind, r.row, r.slot FROM refs_core r
             CROSS JOIN temp.snap_derived_rows d ON d.row_table = {} AND d.row = r.row
             WHERE r.row IN (SELECT row FROM temp.snap_derived_rows);",
        ROW_TABLE.replace("kind", "r.kind")
    ))?;
    upsert_found(
        conn,
        &found_sql(Scope::Changed),
        include_photos,
        "temp.derived_refs",
    )?;
    conn.execute_batch(
        "DROP TABLE temp.derived_refs;
         DROP TABLE temp.snap_derived;
         DROP TABLE temp.snap_derived_rows;",
    )?;
    remove_refs_of_removed_rows(conn)?;
    // The env of the sticker refs of other sessions: found through the
    // partial index `refs_orphans` for a new session; a session whose env
    // changed or that is gone (rare) costs a pass over the refs. (INDEXED
    // BY: SQLite would rather scan all refs.)
    let session = "(SELECT t.session_id FROM stickers t WHERE t.rowid = refs_core.row)";
    let env = format!("(SELECT nullif(s.env, '') FROM sessions s WHERE s.id = {session})");
    conn.execute(
        &format!(
            "UPDATE refs_core INDEXED BY refs_orphans SET env = {env}
             WHERE env IS NULL AND kind = 0
               AND {session} IN (SELECT id FROM temp.snap_env WHERE known = 0)"
        ),
        [],
    )?;
    let known: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM temp.snap_env WHERE known = 1)",
        [],
        |r| r.get(0),
    )?;
    if known {
        conn.execute(
            &format!(
                "UPDATE refs_core SET env = {env}
                 WHERE kind = 0
                   AND {session} IN (SELECT id FROM temp.snap_env WHERE known = 1)
                   AND env IS NOT {env}"
            ),
            [],
        )?;
    }
    Ok(())
}

/// The table of a ref's row, from its `kind` (as `refs_core.kind` numbers
/// the classes: 0 sticker, 1 session_sticker, 2 a session's pack_sheet,
/// 3 a batch's pack_sheet, 4 photo).
const ROW_TABLE: &str =
    "CASE kind WHEN 0 THEN 'stickers' WHEN 3 THEN 'pack_batches' ELSE 'sessions' END";

/// Removes the refs whose row a snapshot removed: only for a table that
/// lost rows (some row listed in `temp.snap_rows` is no longer there),
/// then in one pass over the refs of its kinds.
fn remove_refs_of_removed_rows(conn: &Connection) -> Result<()> {
    for (table, kinds) in [
        ("stickers", "0"),
        ("sessions", "1, 2, 4"),
        ("pack_batches", "3"),
    ] {
        let lost: bool = conn.query_row(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM temp.snap_rows s WHERE s.row_table = ?1
                     AND NOT EXISTS (SELECT 1 FROM {table} t WHERE t.id = s.id))"
            ),
            [table],
            |r| r.get(0),
        )?;
        if lost {
            conn.execute(
                &format!(
                    "DELETE FROM refs_core WHERE kind IN ({kinds})
                       AND NOT EXISTS (SELECT 1 FROM {table} t WHERE t.rowid = refs_core.row)"
                ),
                [],
            )?;
        }
    }
    Ok(())
}

/// Writes `found` into `temp.found_refs` and links each to the ref at its
/// place among `known` (a table of refs' `id, kind, row, slot`: every ref
/// a found one can be; one pass over it, each looked up among the found);
/// updates the refs that changed, removes those of `known` not found, then
/// inserts the new ones.
fn upsert_found(conn: &Connection, found: &str, include_photos: bool, known: &str) -> Result<()> {
    conn.execute(
        &format!(
            "CREATE TEMP TABLE found_refs AS {found}
             SELECT kind, row, slot, batch, env, fid_hash, key_hash, NULL AS id FROM found"
        ),
        rusqlite::named_params! {":photos": include_photos},
    )?;
    conn.execute_batch(&format!(
        "CREATE INDEX temp.found_refs_place ON found_refs(kind, row, slot);
         CREATE TEMP TABLE found_links AS
             SELECT f.rowid AS f, r.id AS id FROM {known} r
             CROSS JOIN temp.found_refs f ON f.kind = r.kind AND f.row = r.row AND f.slot = r.slot;
         UPDATE temp.found_refs SET id = l.id FROM temp.found_links l WHERE l.f = found_refs.rowid;
         DROP TABLE temp.found_links;
         {UPDATE_REFS}
         DELETE FROM refs_core WHERE id IN (
             SELECT id FROM {known}
             WHERE id NOT IN (SELECT id FROM temp.found_refs WHERE id IS NOT NULL));
         INSERT INTO refs_core (kind, row, slot, batch, env, fid_hash, key_hash)
             SELECT kind, row, slot, batch, env, fid_hash, key_hash FROM temp.found_refs
             WHERE id IS NULL ORDER BY rowid;
         DROP TABLE temp.found_refs;",
        UPDATE_REFS = UPDATE_REFS.replace("{SAME_FILE}", SAME_FILE)
    ))?;
    Ok(())
}

const REFS_FID_INDEX: &str =
    "CREATE INDEX refs_core_fid ON refs_core(fid_hash) WHERE fid_hash IS NOT NULL";

/// The page cache while [`REFS_FID_INDEX`] is built, in KiB. SQLite's
/// sorter keeps a run as large as the page cache in memory before it
/// writes it out (twice that while the run's buffer grows), and never less
/// than 250 pages (`SQLITE_SORTER_PMASZ`: 4 MiB of the catalog's 16 KiB
/// pages). With the catalog's 8 MiB cache, a first snapshot of 1M stickers
/// peaked at 52 MB here against 35 MB while its rows went in; with 4 MiB,
/// at 43 MB, in the same time.
const INDEX_SORT_CACHE_KIB: i64 = 4 * 1024;

/// Builds [`REFS_FID_INDEX`] in one sort, with the page cache at
/// [`INDEX_SORT_CACHE_KIB`] meanwhile (as it was after).
fn build_fid_index(conn: &Connection) -> Result<()> {
    let cache: i64 = conn.pragma_query_value(None, "cache_size", |r| r.get(0))?;
    conn.pragma_update(None, "cache_size", -INDEX_SORT_CACHE_KIB)?;
    let built = conn.execute_batch(REFS_FID_INDEX);
    conn.pragma_update(None, "cache_size", cache)?;
    Ok(built?)
}

/// Which rows [`found_sql`] derives refs from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    /// Those listed in the temp tables of [`CHANGE_TABLES`] and `snap_derived`.
    Changed,
    /// All but stickers ([`derive_after_sticker_refs`]).
    AllButStickers,
}

/// Every ref of SPEC §1 (of the rows of `scope`), as the CTE `found`.
/// `:photos` says whether photos are in scope. Empty strings count as NULL.
fn found_sql(scope: Scope) -> String {
    let (sessions, stickers, batches, env) = match scope {
        Scope::All => ("", "", "", "s"),
        Scope::AllButStickers => ("", "AND false", "", "s"),
        Scope::Changed => (
            "WHERE id IN (SELECT id FROM temp.snap_sessions)",
            "AND t.id IN (SELECT id FROM temp.snap_derived WHERE row_table = 'stickers')",
            "AND b.id IN (SELECT id FROM temp.snap_derived WHERE row_table = 'pack_batches')",
            // Any session, by its primary key.
            "(SELECT id, nullif(env, '') AS env FROM sessions)",
        ),
    };
    FOUND_SQL
        .replace("{SESSIONS}", sessions)
        .replace("{STICKERS}", stickers)
        .replace("{BATCHES}", batches)
        .replace("{ENV}", env)
}

/// [`found_sql`]'s text: `{SESSIONS}` restricts the sessions, `{STICKERS}`
/// and `{BATCHES}` the stickers and batches; `{ENV}` is where the env of
/// another row's session is found. The columns are those of `refs_core`
/// that deriving writes ([`ROW_TABLE`] names the kinds).
const FOUND_SQL: &str = r#"
WITH
-- Materialized: sessions are read once, not once per sticker.
s AS MATERIALIZED (
    SELECT rowid AS row, id, user_id, nullif(env, '') AS env,
           nullif(last_sticker_file_id, '') AS last_fid,
           nullif(last_sticker_storage_path, '') AS last_key,
           nullif(pack_sheet_file_id, '') AS sheet_fid,
           nullif(current_photo_file_id, '') AS photo_fid,
           photos
    FROM sessions {SESSIONS}
),
-- A session's latest batch (SPEC §1): the one no other batch of the session
-- is later than, by created_at (the typed column holds the instant in UTC,
-- fixed width: text order is time order; NULL is earliest), then by id,
-- numerically when both ids are integers, else as text.
latest_batch AS (
    SELECT s.id AS session_id,
           (SELECT b.rowid FROM pack_batches b WHERE b.session_id = s.id
            ORDER BY NOT EXISTS (
                SELECT 1 FROM pack_batches c
                WHERE c.session_id = b.session_id
                  AND (coalesce(c.created_at, '') > coalesce(b.created_at, '')
                       OR (coalesce(c.created_at, '') = coalesce(b.created_at, '')
                           AND CASE WHEN CAST(CAST(c.id AS INTEGER) AS TEXT) = c.id
                                     AND CAST(CAST(b.id AS INTEGER) AS TEXT) = b.id
                                    THEN CAST(c.id AS INTEGER) > CAST(b.id AS INTEGER)
                                    ELSE c.id > b.id END))
            ) DESC, b.created_at DESC, b.id DESC
            LIMIT 1) AS batch_row
    FROM s WHERE s.sheet_fid IS NOT NULL
),
found(kind, row, slot, batch, env, fid_hash, key_hash) AS (
    SELECT 0, t.rowid, '', NULL, e.env,
           file_hash(nullif(t.telegram_file_id, '')), file_hash(nullif(t.result_storage_path, ''))
    FROM stickers t LEFT JOIN {ENV} e ON e.id = t.session_id
    WHERE (nullif(t.telegram_file_id, '') IS NOT NULL
           OR nullif(t.result_storage_path, '') IS NOT NULL) {STICKERS}
    UNION ALL
    SELECT 1, s.row, '', NULL, s.env, file_hash(s.last_fid), file_hash(s.last_key)
    FROM s WHERE s.last_fid IS NOT NULL OR s.last_key IS NOT NULL
    UNION ALL
    SELECT 2, s.row, '', l.batch_row, s.env,
           file_hash(s.sheet_fid), file_hash(nullif(b.cleaned_sheet_storage_path, ''))
    FROM latest_batch l JOIN s ON s.id = l.session_id
    LEFT JOIN pack_batches b ON b.rowid = l.batch_row
    UNION ALL
    SELECT 3, b.rowid, '', b.rowid, e.env, NULL, file_hash(b.cleaned_sheet_storage_path)
    FROM pack_batches b LEFT JOIN {ENV} e ON e.id = b.session_id
    WHERE nullif(b.cleaned_sheet_storage_path, '') IS NOT NULL {BATCHES}
      AND b.rowid NOT IN (SELECT batch_row FROM latest_batch WHERE batch_row IS NOT NULL)
    UNION ALL
    SELECT 4, s.row, 'current', NULL, s.env, file_hash(s.photo_fid), NULL
    FROM s WHERE :photos AND s.photo_fid IS NOT NULL
    UNION ALL
    SELECT 4, s.row, CAST(j.key AS TEXT), NULL, s.env, file_hash(j.value), NULL
    FROM s, json_each(s.photos) j
    WHERE :photos AND j.type = 'text' AND j.value <> ''
)
"#;

/// Inserts the rows of `found` as refs; the caller appends `FROM …`.
const INSERT_REFS: &str = "
INSERT INTO refs_core (kind, row, slot, batch, env, fid_hash, key_hash)
SELECT kind, row, slot, batch, env, fid_hash, key_hash";

/// Whether an updated ref still names the file it named (`refs_core`: as
/// it was, `f`: as found; by the hashes of its Telegram id and storage
/// key): the same Telegram id and storage key; or, for a fetched ref, the
/// same Telegram id whatever became of its storage key. A Telegram file id
/// names one file: a key `backfill --apply` wrote for it, one `backfill
/// --undo` took away again, or one the bot moved, still stands for the
/// blob the ref has, and nothing is downloaded again.
const SAME_FILE: &str = "(refs_core.fid_hash IS f.fid_hash
    AND (refs_core.key_hash IS f.key_hash
         OR (refs_core.state = 1 AND refs_core.fid_hash IS NOT NULL)))";

/// A known ref found again is updated only when something of it changed;
/// it keeps its state, blob and reason while it names the same file
/// ([`SAME_FILE`]).
const UPDATE_REFS: &str = "
UPDATE refs_core SET
    batch = f.batch,
    env = f.env,
    fid_hash = f.fid_hash,
    key_hash = f.key_hash,
    state = CASE WHEN {SAME_FILE} THEN refs_core.state ELSE 0 END,
    sha256 = CASE WHEN {SAME_FILE} THEN refs_core.sha256 END,
    source = CASE WHEN {SAME_FILE} THEN refs_core.source END,
    key_dangling = CASE WHEN refs_core.key_hash IS f.key_hash THEN refs_core.key_dangling ELSE 0 END,
    reason = CASE WHEN {SAME_FILE} THEN refs_core.reason END
FROM temp.found_refs f
WHERE f.id = refs_core.id
  AND (refs_core.batch, refs_core.env, refs_core.fid_hash, refs_core.key_hash)
      IS NOT (f.batch, f.env, f.fid_hash, f.key_hash);";
