//! What starchive knows of the bot's schema: its tables, which of their
//! columns name files, and how rows become refs (SPEC §1).
//!
//! No other module names a column of the bot's tables but [`crate::bot`],
//! which holds backfill's writes to them; the catalog's typed columns
//! (migrations) mirror `schema.sql` and are written and read only from here.

use rusqlite::Connection;
use rusqlite::types::Value as SqlValue;
use serde_json::{Map, Value};

use crate::error::Result;

/// The bot's tables, in the order a snapshot reads them: sessions first, so
/// that `--env` can filter the others by their session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Sessions,
    PackBatches,
    Stickers,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Sessions, Table::PackBatches, Table::Stickers];

    pub fn name(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::PackBatches => "pack_batches",
            Table::Stickers => "stickers",
        }
    }

    /// The column naming the session a row belongs to (its env comes from there).
    pub fn session_column(self) -> &'static str {
        match self {
            Table::Sessions => "id",
            Table::PackBatches | Table::Stickers => "session_id",
        }
    }

    /// A missing `sessions` table means a wrong database, not an old bot.
    pub fn required(self) -> bool {
        self == Table::Sessions
    }
}

/// What kind of place names a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefClass {
    Sticker,
    SessionSticker,
    PackSheet,
    Photo,
}

impl RefClass {
    pub const ALL: [RefClass; 4] = [
        RefClass::Sticker,
        RefClass::SessionSticker,
        RefClass::PackSheet,
        RefClass::Photo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RefClass::Sticker => "sticker",
            RefClass::SessionSticker => "session_sticker",
            RefClass::PackSheet => "pack_sheet",
            RefClass::Photo => "photo",
        }
    }

    /// The class of this [`RefClass::name`].
    pub fn parse(name: &str) -> Option<RefClass> {
        RefClass::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The catalog's `refs.class` holds [`RefClass::name`].
impl rusqlite::types::FromSql for RefClass {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let name = value.as_str()?;
        RefClass::parse(name).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(format!("unknown ref class {name:?}").into())
        })
    }
}

impl rusqlite::types::ToSql for RefClass {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.name().into())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// uuid, bigint or text: kept as given, read as opaque text.
    Id,
    Text,
    Integer,
    /// jsonb array of file_id strings. Only photo refs depend on it: a
    /// malformed value drops those refs, not the row.
    FileIdArray,
    /// timestamptz: compared as the instant it names.
    Instant,
}

fn column_kind(table: Table, column: &str) -> Option<Kind> {
    use Kind::*;
    let kind = match (table, column) {
        (_, "id") => Id,
        (_, "user_id") => Id,
        (Table::Sessions, "env" | "mode") => Text,
        (
            Table::Sessions,
            "current_photo_file_id"
            | "last_sticker_file_id"
            | "last_sticker_storage_path"
            | "pack_sheet_file_id",
        ) => Text,
        (Table::Sessions, "photos") => FileIdArray,
        (Table::PackBatches, "session_id") => Id,
        (Table::PackBatches, "status" | "cleaned_sheet_storage_path") => Text,
        (Table::Stickers, "session_id" | "pack_batch_id") => Id,
        (Table::Stickers, "pack_index") => Integer,
        (Table::Stickers, "style_preset_id" | "telegram_file_id" | "result_storage_path") => Text,
        (_, "created_at") | (Table::Sessions, "updated_at") => Instant,
        _ => return None,
    };
    Some(kind)
}

/// The catalog's stored typed columns of each table (migration 4), in the
/// order [`typed_values`] gives their values. Those of `stickers` are
/// virtual (migration 8): SQLite computes them when they are read.
pub fn typed_columns(table: Table) -> &'static [&'static str] {
    match table {
        Table::Sessions => &[
            "user_id",
            "env",
            "mode",
            "current_photo_file_id",
            "photos",
            "last_sticker_file_id",
            "last_sticker_storage_path",
            "pack_sheet_file_id",
            "created_at",
            "updated_at",
        ],
        Table::PackBatches => &[
            "session_id",
            "user_id",
            "status",
            "cleaned_sheet_storage_path",
            "created_at",
        ],
        Table::Stickers => &[],
    }
}

/// A row's values for [`typed_columns`], as `json_extract(data, '$.column')`
/// gives them (the column's affinity then applies, as for any insert), but
/// for a timestamp, which is its [`instant`] when it names one, and for the
/// `dropped` columns ([`CheckedRow::dropped`]), which are NULL.
pub fn typed_values(table: Table, row: &Map<String, Value>, dropped: &[String]) -> Vec<SqlValue> {
    typed_columns(table)
        .iter()
        .map(|column| match row.get(*column) {
            _ if dropped.iter().any(|d| d == column) => SqlValue::Null,
            None | Some(Value::Null) => SqlValue::Null,
            Some(Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => SqlValue::Integer(i),
                (None, Some(f)) => SqlValue::Real(f),
                (None, None) => SqlValue::Text(n.to_string()),
            },
            Some(Value::String(s)) => match column_kind(table, column) {
                Some(Kind::Instant) => SqlValue::Text(instant(s).unwrap_or_else(|| s.clone())),
                _ => SqlValue::Text(s.clone()),
            },
            Some(v @ (Value::Array(_) | Value::Object(_))) => SqlValue::Text(v.to_string()),
        })
        .collect()
}

/// A `timestamptz` as Postgres writes it (`2025-10-26 02:30:00+02` in a CSV
/// export, `2025-10-26T00:30:00.5+00:00` from `to_jsonb`) as the instant it
/// names, in UTC and fixed width so that text order is time order
/// (`2025-10-26T00:30:00.000000Z`); `None` when the text is not one.
pub fn instant(text: &str) -> Option<String> {
    let text = text.trim();
    let parsed = ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"]
        .iter()
        .find_map(|format| chrono::DateTime::parse_from_str(text, format).ok())?;
    Some(
        parsed
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string(),
    )
}

/// What [`check_row`] found in a row starchive can rely on.
#[derive(Debug, PartialEq, Eq)]
pub struct RowCheck {
    pub id: String,
    /// Columns whose value is malformed but only some refs depend on (the
    /// photos): those refs are dropped, the row and its other refs kept.
    pub dropped: Vec<String>,
}

/// Checks a row against what starchive relies on and returns its id and
/// the columns to drop. The error is the reason the row is skipped.
pub fn check_row(table: Table, row: &Map<String, Value>) -> Result<RowCheck, String> {
    let id = match row.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Null) | None => return Err("no id".into()),
        Some(Value::String(_)) => return Err("the id is empty".into()),
        Some(_) => return Err("id is not text".into()),
    };
    let mut dropped = Vec::new();
    for (column, value) in row {
        let Some(kind) = column_kind(table, column) else {
            continue;
        };
        let ok = match (kind, value) {
            (_, Value::Null) => true,
            (Kind::Id, Value::String(_) | Value::Number(_)) => true,
            (Kind::Text, Value::String(_)) => true,
            (Kind::Integer, Value::Number(n)) => n.is_i64(),
            (Kind::FileIdArray, Value::Array(items)) if items.iter().all(Value::is_string) => true,
            (Kind::FileIdArray, _) => {
                dropped.push(column.clone());
                true
            }
            (Kind::Instant, Value::String(_)) => true,
            _ => false,
        };
        if !ok {
            return Err(format!("column {column} is malformed: {value}"));
        }
    }
    Ok(RowCheck { id, dropped })
}

/// The JSON value of a CSV field (`None` is an empty unquoted field: NULL).
/// Known columns get the type Postgres would give them, so that a CSV export
/// and the database give the same refs.
pub fn csv_value(table: Table, column: &str, field: Option<String>) -> Result<Value, String> {
    let Some(text) = field else {
        return Ok(Value::Null);
    };
    Ok(match column_kind(table, column) {
        Some(Kind::Id) => match text.parse::<i64>() {
            Ok(n) if column == "user_id" => Value::from(n),
            _ => Value::String(text),
        },
        Some(Kind::Integer) => match text.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => return Err(format!("column {column} is not an integer: {text:?}")),
        },
        // Not JSON (an export cuts long cells): kept as text, and
        // `check_row` drops the refs that depend on it.
        Some(Kind::FileIdArray) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        Some(Kind::Text | Kind::Instant) | None => Value::String(text),
    })
}

/// The session id a row belongs to, for `--env` filtering.
pub fn session_of(table: Table, row: &Map<String, Value>) -> Option<String> {
    match row.get(table.session_column())? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The env a session row names (an empty one is none, as in a CSV export).
pub fn env_of_session(row: &Map<String, Value>) -> Option<&str> {
    row.get("env")
        .and_then(Value::as_str)
        .filter(|env| !env.is_empty())
}

/// Rebuilds the `refs` table from the snapshot's rows, in the caller's
/// transaction. A ref whose Telegram id and storage key are unchanged keeps
/// its state (fetched stays fetched); one whose file changed is pending again;
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

/// The column whose value before a change a snapshot notes for
/// [`derive_changed`]: a session's env (its stickers' refs carry it), a
/// batch's session (whose latest batch it may have been).
pub fn noted_column(table: Table) -> Option<&'static str> {
    match table {
        Table::Sessions => Some("env"),
        Table::PackBatches => Some("session_id"),
        Table::Stickers => None,
    }
}

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
        &format!("{INSERT_REFS} FROM temp.found_refs WHERE true {UPDATE_REFS}"),
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
}

/// Every ref of SPEC §1 (of the rows of `scope`), as the CTE `found`.
/// `:photos` says whether photos are in scope. Empty strings count as NULL.
fn found_sql(scope: Scope) -> String {
    let (sessions, stickers, batches, env) = match scope {
        Scope::All => ("", "", "", "s"),
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

/// A known ref is updated only when something of it changed.
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
    state = CASE WHEN refs.telegram_file_id IS excluded.telegram_file_id
                  AND refs.storage_key IS excluded.storage_key
                 THEN refs.state ELSE 'pending' END,
    sha256 = CASE WHEN refs.telegram_file_id IS excluded.telegram_file_id
                   AND refs.storage_key IS excluded.storage_key
                  THEN refs.sha256 ELSE NULL END,
    source = CASE WHEN refs.telegram_file_id IS excluded.telegram_file_id
                   AND refs.storage_key IS excluded.storage_key
                  THEN refs.source ELSE NULL END,
    key_dangling = CASE WHEN refs.storage_key IS excluded.storage_key
                        THEN refs.key_dangling ELSE 0 END,
    reason = CASE WHEN refs.telegram_file_id IS excluded.telegram_file_id
                   AND refs.storage_key IS excluded.storage_key
                  THEN refs.reason ELSE NULL END
WHERE (refs.session_id, refs.user_id, refs.env, refs.pack_batch_id, refs.pack_index,
       refs.telegram_file_id, refs.storage_key)
   IS NOT (excluded.session_id, excluded.user_id, excluded.env, excluded.pack_batch_id,
           excluded.pack_index, excluded.telegram_file_id, excluded.storage_key)";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test rows are objects"),
        }
    }

    #[test]
    fn a_row_without_id_is_malformed() {
        assert!(check_row(Table::Stickers, &obj(json!({"user_id": 1}))).is_err());
        assert!(check_row(Table::Stickers, &obj(json!({"id": ""}))).is_err());
    }

    #[test]
    fn wrong_types_are_malformed_and_unknown_columns_are_free() {
        let cut = obj(json!({"id": "a", "photos": "[\"AgAD1\", \"AgA"}));
        let check = check_row(Table::Sessions, &cut).expect("the row is kept");
        assert_eq!(check.dropped, vec!["photos".to_string()]);
        let bad = obj(json!({"id": "a", "photos": {"x": 1}}));
        assert_eq!(
            check_row(Table::Sessions, &bad)
                .expect("kept")
                .dropped
                .len(),
            1
        );
        let bad = obj(json!({"id": "a", "pack_index": "x"}));
        assert!(check_row(Table::Stickers, &bad).is_err());
        let ok = obj(json!({"id": "a", "user_id": 7, "anything": {"x": [1]}}));
        assert_eq!(
            check_row(Table::Stickers, &ok).map(|c| c.id),
            Ok("a".to_string())
        );
    }

    #[test]
    fn csv_fields_get_postgres_types() {
        let v = csv_value(Table::Sessions, "user_id", Some("100".into()));
        assert_eq!(v, Ok(json!(100)));
        let v = csv_value(Table::Sessions, "photos", Some(r#"["a","b"]"#.into()));
        assert_eq!(v, Ok(json!(["a", "b"])));
        assert_eq!(csv_value(Table::Sessions, "env", None), Ok(Value::Null));
        let v = csv_value(Table::Sessions, "env", Some(String::new()));
        assert_eq!(v, Ok(json!("")));
        assert!(csv_value(Table::Stickers, "pack_index", Some("one".into())).is_err());
        let v = csv_value(Table::Sessions, "photos", Some(r#"["a","b"#.into()));
        assert_eq!(v, Ok(json!(r#"["a","b"#)), "cut JSON stays text");
    }

    #[test]
    fn timestamps_are_instants() {
        let utc = |t: &str| instant(t).unwrap_or_else(|| panic!("{t} is an instant"));
        assert_eq!(utc("2025-10-26 02:30:00+02"), "2025-10-26T00:30:00.000000Z");
        assert_eq!(utc("2025-10-26 02:10:00+01"), "2025-10-26T01:10:00.000000Z");
        assert_eq!(
            utc("2025-10-26T00:30:00.5+00:00"),
            "2025-10-26T00:30:00.500000Z"
        );
        assert_eq!(
            utc("2024-03-01 00:00:00.123456-05:30"),
            "2024-03-01T05:30:00.123456Z"
        );
        assert_eq!(
            utc("2024-12-31 23:59:59.999999-01"),
            "2025-01-01T00:59:59.999999Z"
        );
        assert_eq!(instant("yesterday"), None);
        assert_eq!(
            instant("2025-10-26 02:30:00"),
            None,
            "no offset: not an instant"
        );
    }
}
