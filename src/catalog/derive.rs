//! Deriving the `refs` table from the catalog's copies of the bot's rows
//! (SPEC §1): every ref at once, or only those of the rows a snapshot
//! listed as changed. Which columns name files is [`crate::refs`]'s
//! knowledge; this is the SQL that applies it.

use rusqlite::Connection;

use crate::error::Result;
use crate::refs::RefClass;

/// Rebuilds the `refs` table from the snapshot's rows, in the caller's
/// transaction. A ref whose Telegram id and storage key are unchanged keeps
/// its state (fetched stays fetched), as does a fetched one that only gained
/// a storage key; one whose file changed is pending again;
/// refs whose row is gone are removed.
pub fn derive(conn: &Connection, include_photos: bool) -> Result<()> {
    let gen_ = next_gen(conn)?;
    let found = found_sql(Scope::All);
    if gen_ == 1 {
        // Into an empty table (a first snapshot): a plain insert, and the
        // file_id index built after it in one sort rather than row by row.
        conn.execute_batch("DROP INDEX refs_file_id")?;
        conn.execute(
            &format!("{found} {INSERT_REFS} FROM found"),
            rusqlite::named_params! {":gen": gen_, ":photos": include_photos},
        )?;
        conn.execute_batch(REFS_FILE_ID_INDEX)?;
        return note_photos(conn, include_photos);
    }
    // Again: only new and changed refs are written, so that a snapshot of a
    // database that changed little changes little of the catalog.
    upsert_found(conn, &found, gen_, include_photos)?;
    conn.execute_batch(
        "DELETE FROM refs WHERE NOT EXISTS (
             SELECT 1 FROM temp.found_refs f
             WHERE f.class = refs.class AND f.row_table = refs.row_table
               AND f.row_id = refs.row_id AND f.slot = refs.slot);
         DROP TABLE temp.found_refs;",
    )?;
    note_photos(conn, include_photos)
}

/// What a first snapshot does before its rows arrive, to derive the refs
/// of stickers as it goes ([`STICKER_REFS_SINCE`]) rather than all after:
/// those refs are most of a catalog's, and derived while the snapshot waits
/// for the database's next rows, from rows still in the page cache, they
/// cost little. `temp.snap_session_env` holds the env of each session
/// inserted (sessions come first); the `refs_file_id` index is built after,
/// in one sort ([`derive_after_sticker_refs`]).
pub const STICKER_REFS_BEGIN: &str = "
DROP INDEX refs_file_id;
CREATE TEMP TABLE snap_session_env (id TEXT PRIMARY KEY NOT NULL, env TEXT) WITHOUT ROWID;";

/// Notes a session's env for [`STICKER_REFS_SINCE`]: `?1` its id, `?2` its env.
pub const SESSION_ENV_INSERT: &str =
    "INSERT OR IGNORE INTO temp.snap_session_env(id, env) VALUES (?1, ?2)";

/// The refs of the stickers rows inserted after rowid `?1` (in a first
/// snapshot, whose stickers table began empty), as [`derive`] finds them.
pub const STICKER_REFS_SINCE: &str = "
INSERT INTO refs (class, row_table, row_id, slot, session_id, user_id, env,
                  pack_batch_id, pack_index, telegram_file_id, storage_key, derived_gen)
SELECT 'sticker', 'stickers', t.id, '', t.session_id, t.user_id, nullif(e.env, ''),
       t.pack_batch_id, t.pack_index,
       nullif(t.telegram_file_id, ''), nullif(t.result_storage_path, ''), 1
FROM stickers t LEFT JOIN temp.snap_session_env e ON e.id = t.session_id
WHERE t.rowid > ?1
  AND (nullif(t.telegram_file_id, '') IS NOT NULL OR nullif(t.result_storage_path, '') IS NOT NULL)
ORDER BY t.rowid";

/// Derives the refs of a first snapshot that wrote those of its stickers
/// already ([`STICKER_REFS_BEGIN`]): every other ref, then the
/// `refs_file_id` index.
pub fn derive_after_sticker_refs(conn: &Connection, include_photos: bool) -> Result<()> {
    let found = found_sql(Scope::AllButStickers);
    conn.execute(
        &format!("{found} {INSERT_REFS} FROM found"),
        rusqlite::named_params! {":gen": 1, ":photos": include_photos},
    )?;
    conn.execute_batch(REFS_FILE_ID_INDEX)?;
    conn.execute_batch("DROP TABLE temp.snap_session_env")?;
    note_photos(conn, include_photos)
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
    let gen_ = next_gen(conn)?;
    let classes = RefClass::ALL
        .iter()
        .map(|c| format!("'{}'", c.name()))
        .collect::<Vec<_>>()
        .join(", ");
    // A changed session, and the sessions a changed batch belongs to (now;
    // the snapshot noted those it belonged to before), are derived whole.
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
             CROSS JOIN pack_batches b ON b.session_id = s.id;",
    )?;
    upsert_found(conn, &found_sql(Scope::Changed), gen_, include_photos)?;
    conn.execute_batch(&format!(
        "DELETE FROM refs WHERE rowid IN (
             SELECT r.rowid FROM temp.snap_derived d
             CROSS JOIN refs r ON r.class IN ({classes}) AND r.row_table = d.row_table AND r.row_id = d.id
             WHERE NOT EXISTS (
                 SELECT 1 FROM temp.found_refs f
                 WHERE f.class = r.class AND f.row_table = r.row_table
                   AND f.row_id = r.row_id AND f.slot = r.slot));
         DROP TABLE temp.found_refs;
         DROP TABLE temp.snap_derived;"
    ))?;
    // The env of the sticker refs of other sessions: found through the
    // partial index `refs_orphans` for a new session; a session whose env
    // changed or that is gone (rare) costs a pass over the refs. (CROSS
    // JOIN and INDEXED BY: SQLite would rather scan all refs by class.)
    let env = "(SELECT nullif(s.env, '') FROM sessions s WHERE s.id = refs.session_id)";
    conn.execute(
        &format!(
            "UPDATE refs INDEXED BY refs_orphans SET env = {env}
             WHERE env IS NULL AND session_id IS NOT NULL AND class = 'sticker'
               AND session_id IN (SELECT id FROM temp.snap_env WHERE known = 0)"
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
                "UPDATE refs SET env = {env}
                 WHERE class = 'sticker'
                   AND session_id IN (SELECT id FROM temp.snap_env WHERE known = 1)
                   AND env IS NOT {env}"
            ),
            [],
        )?;
    }
    Ok(())
}

/// The derivation number of the next [`derive`]: 1 when `refs` is empty.
fn next_gen(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT coalesce(max(derived_gen), 0) + 1 FROM refs",
        [],
        |r| r.get(0),
    )?)
}

/// Writes `found` into `temp.found_refs` (indexed by place), then the refs
/// of it that are new or changed into `refs`.
fn upsert_found(conn: &Connection, found: &str, gen_: i64, include_photos: bool) -> Result<()> {
    conn.execute(
        &format!("CREATE TEMP TABLE found_refs AS {found} SELECT * FROM found"),
        rusqlite::named_params! {":photos": include_photos},
    )?;
    conn.execute(
        &format!(
            "{INSERT_REFS} FROM temp.found_refs WHERE true {}",
            UPDATE_REFS.replace("{SAME_FILE}", SAME_FILE)
        ),
        rusqlite::named_params! {":gen": gen_},
    )?;
    conn.execute_batch(
        "CREATE INDEX temp.found_refs_place ON found_refs(class, row_table, row_id, slot)",
    )?;
    Ok(())
}

const REFS_FILE_ID_INDEX: &str = "CREATE INDEX refs_file_id ON refs(telegram_file_id)";

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
/// another row's session is found.
const FOUND_SQL: &str = r#"
WITH
-- Materialized: sessions are read once, not once per sticker.
s AS MATERIALIZED (
    SELECT id, user_id, nullif(env, '') AS env,
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
           (SELECT b.id FROM pack_batches b WHERE b.session_id = s.id
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
            LIMIT 1) AS batch_id
    FROM s WHERE s.sheet_fid IS NOT NULL
),
found(class, row_table, row_id, slot, session_id, user_id, env, pack_batch_id,
      pack_index, telegram_file_id, storage_key) AS (
    SELECT 'sticker', 'stickers', t.id, '', t.session_id, t.user_id, e.env,
           t.pack_batch_id, t.pack_index,
           nullif(t.telegram_file_id, ''), nullif(t.result_storage_path, '')
    FROM stickers t LEFT JOIN {ENV} e ON e.id = t.session_id
    WHERE (nullif(t.telegram_file_id, '') IS NOT NULL
           OR nullif(t.result_storage_path, '') IS NOT NULL) {STICKERS}
    UNION ALL
    SELECT 'session_sticker', 'sessions', s.id, '', s.id, s.user_id, s.env,
           NULL, NULL, s.last_fid, s.last_key
    FROM s WHERE s.last_fid IS NOT NULL OR s.last_key IS NOT NULL
    UNION ALL
    SELECT 'pack_sheet', 'sessions', s.id, '', s.id, s.user_id, s.env,
           l.batch_id, NULL, s.sheet_fid, nullif(b.cleaned_sheet_storage_path, '')
    FROM latest_batch l JOIN s ON s.id = l.session_id
    LEFT JOIN pack_batches b ON b.id = l.batch_id
    UNION ALL
    SELECT 'pack_sheet', 'pack_batches', b.id, '', b.session_id, b.user_id, e.env,
           b.id, NULL, NULL, b.cleaned_sheet_storage_path
    FROM pack_batches b LEFT JOIN {ENV} e ON e.id = b.session_id
    WHERE nullif(b.cleaned_sheet_storage_path, '') IS NOT NULL {BATCHES}
      AND b.id NOT IN (SELECT batch_id FROM latest_batch WHERE batch_id IS NOT NULL)
    UNION ALL
    SELECT 'photo', 'sessions', s.id, 'current', s.id, s.user_id, s.env,
           NULL, NULL, s.photo_fid, NULL
    FROM s WHERE :photos AND s.photo_fid IS NOT NULL
    UNION ALL
    SELECT 'photo', 'sessions', s.id, CAST(j.key AS TEXT), s.id, s.user_id, s.env,
           NULL, NULL, j.value, NULL
    FROM s, json_each(s.photos) j
    WHERE :photos AND j.type = 'text' AND j.value <> ''
)
"#;

/// Inserts the rows of `found` (or a table of its shape) as refs of
/// derivation `:gen`; the caller appends `FROM …`.
const INSERT_REFS: &str = "
INSERT INTO refs (class, row_table, row_id, slot, session_id, user_id, env,
                  pack_batch_id, pack_index, telegram_file_id, storage_key, derived_gen)
SELECT class, row_table, row_id, slot, session_id, user_id, env,
       pack_batch_id, pack_index, telegram_file_id, storage_key, :gen";

/// Whether an updated ref still names the file it named (`refs`: as it
/// was, `excluded`: as found): the same Telegram id and storage key; or,
/// for a fetched ref, the same Telegram id and a storage key where there
/// was none (`backfill --apply` wrote it, or the bot did, for that very
/// file: its blob stays, nothing is downloaded again).
const SAME_FILE: &str = "(refs.telegram_file_id IS excluded.telegram_file_id
    AND (refs.storage_key IS excluded.storage_key
         OR (refs.state = 'fetched' AND refs.telegram_file_id IS NOT NULL
             AND refs.storage_key IS NULL AND excluded.storage_key IS NOT NULL)))";

/// A known ref is updated only when something of it changed; it keeps its
/// state, blob and reason while it names the same file ([`SAME_FILE`]).
const UPDATE_REFS: &str = "
ON CONFLICT (class, row_table, row_id, slot) DO UPDATE SET
    derived_gen = excluded.derived_gen,
    session_id = excluded.session_id,
    user_id = excluded.user_id,
    env = excluded.env,
    pack_batch_id = excluded.pack_batch_id,
    pack_index = excluded.pack_index,
    telegram_file_id = excluded.telegram_file_id,
    storage_key = excluded.storage_key,
    state = CASE WHEN {SAME_FILE} THEN refs.state ELSE 'pending' END,
    sha256 = CASE WHEN {SAME_FILE} THEN refs.sha256 ELSE NULL END,
    source = CASE WHEN {SAME_FILE} THEN refs.source ELSE NULL END,
    key_dangling = CASE WHEN refs.storage_key IS excluded.storage_key
                        THEN refs.key_dangling ELSE 0 END,
    reason = CASE WHEN {SAME_FILE} THEN refs.reason ELSE NULL END
WHERE (refs.session_id, refs.user_id, refs.env, refs.pack_batch_id, refs.pack_index,
       refs.telegram_file_id, refs.storage_key)
   IS NOT (excluded.session_id, excluded.user_id, excluded.env, excluded.pack_batch_id,
           excluded.pack_index, excluded.telegram_file_id, excluded.storage_key)";
