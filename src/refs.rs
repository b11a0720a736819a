//! What starchive knows of the bot's schema: its tables, which of their
//! columns name files and their types, and the rules rows are checked by
//! (SPEC §1). The SQL that derives refs from the catalog's copies of the
//! rows is [`crate::catalog::derive`].
//!
//! No other module names a column of the bot's tables but [`crate::bot`],
//! which holds backfill's writes to them, and the catalog's SQL over its
//! copies of them; the typed columns (migrations) mirror `schema.sql`.

use std::sync::LazyLock;

use chrono::format::{Item, StrftimeItems};
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

/// A column of the bot's that starchive reads.
struct Column {
    name: &'static str,
    kind: Kind,
    /// The catalog keeps it in a typed column of its copy of the table
    /// (migration 4), besides the row's JSON.
    typed: bool,
}

const fn col(name: &'static str, kind: Kind, typed: bool) -> Column {
    Column { name, kind, typed }
}

use Kind::{FileIdArray, Id, Instant, Integer, Text};

const SESSIONS: &[Column] = &[
    col("id", Id, false),
    col("user_id", Id, true),
    col("env", Text, true),
    col("mode", Text, true),
    col("current_photo_file_id", Text, true),
    col("photos", FileIdArray, true),
    col("last_sticker_file_id", Text, true),
    col("last_sticker_storage_path", Text, true),
    col("pack_sheet_file_id", Text, true),
    col("created_at", Instant, true),
    col("updated_at", Instant, true),
];
const PACK_BATCHES: &[Column] = &[
    col("id", Id, false),
    col("session_id", Id, true),
    col("user_id", Id, true),
    col("status", Text, true),
    col("cleaned_sheet_storage_path", Text, true),
    col("created_at", Instant, true),
];
// Its typed columns are virtual (migration 8): SQLite computes them
// from the JSON when they are read, so none is written.
const STICKERS: &[Column] = &[
    col("id", Id, false),
    col("user_id", Id, false),
    col("session_id", Id, false),
    col("pack_batch_id", Id, false),
    col("pack_index", Integer, false),
    col("style_preset_id", Text, false),
    col("telegram_file_id", Text, false),
    col("result_storage_path", Text, false),
    col("created_at", Instant, false),
];

/// The most columns starchive reads of one table.
const MOST_COLUMNS: usize = {
    let (a, b, c) = (SESSIONS.len(), PACK_BATCHES.len(), STICKERS.len());
    let ab = if a > b { a } else { b };
    if ab > c { ab } else { c }
};

/// The columns starchive reads of each table, with their types; the typed
/// ones in the order of the catalog's typed columns.
fn columns(table: Table) -> &'static [Column] {
    match table {
        Table::Sessions => SESSIONS,
        Table::PackBatches => PACK_BATCHES,
        Table::Stickers => STICKERS,
    }
}

/// The values of the columns starchive reads ([`columns`]) of one row; a
/// column the row lacks has none. The row's other columns are only kept in
/// its JSON text.
pub struct RowColumns {
    table: Table,
    values: [Option<Value>; MOST_COLUMNS],
}

impl RowColumns {
    fn empty(table: Table) -> RowColumns {
        RowColumns {
            table,
            values: [const { None }; MOST_COLUMNS],
        }
    }

    /// Those of a row read as a map (a CSV line).
    pub fn of_map(table: Table, row: &Map<String, Value>) -> RowColumns {
        let mut known = RowColumns::empty(table);
        for (slot, column) in known.values.iter_mut().zip(columns(table)) {
            *slot = row.get(column.name).cloned();
        }
        known
    }

    /// Those of a row given as the JSON text of an object, as Postgres
    /// sends `to_jsonb(t)::text`. The other columns are read only as far
    /// as to know the text is JSON: no key or value of theirs is kept, so
    /// that a million rows cost no map each. The error is serde_json's, as
    /// for a `Map` (a text that is not an object: "expected a map").
    pub fn from_json(table: Table, text: &str) -> serde_json::Result<RowColumns> {
        let mut de = serde_json::Deserializer::from_str(text);
        let row = serde::de::DeserializeSeed::deserialize(ColumnsSeed(table), &mut de)?;
        de.end()?;
        Ok(row)
    }

    pub fn table(&self) -> Table {
        self.table
    }

    /// The value of `column`, one of the table's [`columns`]; `None` when
    /// the row lacks it (or it is not one of them).
    pub fn get(&self, column: &str) -> Option<&Value> {
        let at = columns(self.table).iter().position(|c| c.name == column)?;
        self.values[at].as_ref()
    }

    /// The columns the row has, with their kind and value.
    fn present(&self) -> impl Iterator<Item = (&'static Column, &Value)> {
        columns(self.table)
            .iter()
            .zip(&self.values)
            .filter_map(|(column, value)| Some((column, value.as_ref()?)))
    }
}

/// Reads a JSON object into [`RowColumns`].
struct ColumnsSeed(Table);

impl<'de> serde::de::DeserializeSeed<'de> for ColumnsSeed {
    type Value = RowColumns;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<RowColumns, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ColumnsSeed {
    type Value = RowColumns;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        // As a `Map` says it.
        f.write_str("a map")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RowColumns, A::Error> {
        let mut row = RowColumns::empty(self.0);
        // A key met twice keeps its last value, as in a `Map`.
        while let Some(at) = map.next_key_seed(ColumnSeed(columns(self.0)))? {
            match at {
                Some(at) => row.values[at] = Some(map.next_value()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(row)
    }
}

/// Reads a key of a row as the position of its column in `.0`, without
/// keeping the key.
struct ColumnSeed(&'static [Column]);

impl<'de> serde::de::DeserializeSeed<'de> for ColumnSeed {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Option<usize>, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ColumnSeed {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a column name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|c| c.name == key))
    }
}

fn column_kind(table: Table, column: &str) -> Option<Kind> {
    columns(table)
        .iter()
        .find(|c| c.name == column)
        .map(|c| c.kind)
}

/// The catalog's stored typed columns of each table (migration 4), in the
/// order [`typed_values`] gives their values.
pub fn typed_columns(table: Table) -> Vec<&'static str> {
    columns(table)
        .iter()
        .filter(|c| c.typed)
        .map(|c| c.name)
        .collect()
}

/// A row's values for [`typed_columns`], as `json_extract(data, '$.column')`
/// gives them (the column's affinity then applies, as for any insert), but
/// for a timestamp, which is its [`instant`] when it names one, for an
/// empty `env`, which is NULL (no env), and for the
/// `dropped` columns ([`crate::catalog::events::CheckedRow::dropped`]), which are NULL.
pub fn typed_values(row: &RowColumns, dropped: &[String]) -> Vec<SqlValue> {
    columns(row.table)
        .iter()
        .zip(&row.values)
        .filter(|(column, _)| column.typed)
        .map(|(column, value)| match value {
            _ if dropped.iter().any(|d| d == column.name) => SqlValue::Null,
            None | Some(Value::Null) => SqlValue::Null,
            // An empty env is none, as in a CSV export (SPEC §1).
            Some(Value::String(e)) if column.name == "env" && e.is_empty() => SqlValue::Null,
            Some(Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => SqlValue::Integer(i),
                (None, Some(f)) => SqlValue::Real(f),
                (None, None) => SqlValue::Text(n.to_string()),
            },
            Some(Value::String(s)) => match column.kind {
                Kind::Instant => SqlValue::Text(instant(s).unwrap_or_else(|| s.clone())),
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
    let parsed = INSTANT_FORMATS.0.iter().find_map(|items| {
        let mut parsed = chrono::format::Parsed::new();
        chrono::format::parse(&mut parsed, text, items.iter()).ok()?;
        parsed.to_datetime().ok()
    })?;
    Some(
        parsed
            .with_timezone(&chrono::Utc)
            .format_with_items(INSTANT_FORMATS.1.iter())
            .to_string(),
    )
}

/// The formats [`instant`] reads (`2025-10-26 02:30:00+02`,
/// `2025-10-26T00:30:00.5+00:00`) and the one it writes, parsed once: a
/// snapshot meets two timestamps in every session, and reading the format
/// strings again for each was most of the time it spent on them.
static INSTANT_FORMATS: LazyLock<([Vec<Item<'static>>; 2], Vec<Item<'static>>)> =
    LazyLock::new(|| {
        let items = |format| StrftimeItems::new(format).collect::<Vec<_>>();
        (
            [
                items("%Y-%m-%d %H:%M:%S%.f%#z"),
                items("%Y-%m-%dT%H:%M:%S%.f%#z"),
            ],
            items("%Y-%m-%dT%H:%M:%S%.6fZ"),
        )
    });

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
pub fn check_row(row: &RowColumns) -> Result<RowCheck, String> {
    let id = match row.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Null) | None => return Err("no id".into()),
        Some(Value::String(_)) => return Err("the id is empty".into()),
        Some(_) => return Err("id is not text".into()),
    };
    let mut dropped = Vec::new();
    // Of several malformed columns, the first by name is named (as a row
    // read into a map, in name order, always said).
    let mut malformed: Option<(&str, &Value)> = None;
    for (column, value) in row.present() {
        let ok = match (column.kind, value) {
            (_, Value::Null) => true,
            (Kind::Id, Value::String(_) | Value::Number(_)) => true,
            (Kind::Text, Value::String(_)) => true,
            (Kind::Integer, Value::Number(n)) => n.is_i64(),
            (Kind::FileIdArray, Value::Array(items)) if items.iter().all(Value::is_string) => true,
            (Kind::FileIdArray, _) => {
                dropped.push(column.name.to_string());
                true
            }
            (Kind::Instant, Value::String(_)) => true,
            _ => false,
        };
        if !ok && malformed.is_none_or(|(name, _)| column.name < name) {
            malformed = Some((column.name, value));
        }
    }
    if let Some((column, value)) = malformed {
        return Err(format!("column {column} is malformed: {value}"));
    }
    dropped.sort_unstable();
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
pub fn session_of(row: &RowColumns) -> Option<String> {
    match row.get(row.table.session_column())? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The Telegram file id and the storage key a stickers row names (its
/// `sticker` ref, SPEC §1): text that is not empty, else none, as deriving
/// reads them ([`crate::catalog::derive`]).
pub fn sticker_files(row: &RowColumns) -> (Option<&str>, Option<&str>) {
    let file = |column| {
        row.get(column)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    (file("telegram_file_id"), file("result_storage_path"))
}

/// The env a session row names (an empty one is none, as in a CSV export).
pub fn env_of_session(row: &RowColumns) -> Option<&str> {
    row.get("env")
        .and_then(Value::as_str)
        .filter(|env| !env.is_empty())
}

/// The column whose value before a change a snapshot notes for
/// [`crate::catalog::derive::derive_changed`]: a session's env (its stickers' refs carry it), a
/// batch's session (whose latest batch it may have been).
pub fn noted_column(table: Table) -> Option<&'static str> {
    match table {
        Table::Sessions => Some("env"),
        Table::PackBatches => Some("session_id"),
        Table::Stickers => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The row `v` as a source sends it: JSON text.
    fn row(table: Table, v: Value) -> RowColumns {
        RowColumns::from_json(table, &v.to_string()).expect("an object")
    }

    #[test]
    fn a_row_without_id_is_malformed() {
        assert!(check_row(&row(Table::Stickers, json!({"user_id": 1}))).is_err());
        assert!(check_row(&row(Table::Stickers, json!({"id": ""}))).is_err());
    }

    #[test]
    fn wrong_types_are_malformed_and_unknown_columns_are_free() {
        let cut = row(
            Table::Sessions,
            json!({"id": "a", "photos": "[\"AgAD1\", \"AgA"}),
        );
        let check = check_row(&cut).expect("the row is kept");
        assert_eq!(check.dropped, vec!["photos".to_string()]);
        let bad = row(Table::Sessions, json!({"id": "a", "photos": {"x": 1}}));
        assert_eq!(check_row(&bad).expect("kept").dropped.len(), 1);
        let bad = row(Table::Stickers, json!({"id": "a", "pack_index": "x"}));
        assert!(check_row(&bad).is_err());
        let ok = row(
            Table::Stickers,
            json!({"id": "a", "user_id": 7, "anything": {"x": [1]}}),
        );
        assert_eq!(check_row(&ok).map(|c| c.id), Ok("a".to_string()));
    }

    #[test]
    fn json_text_reads_as_the_map_of_the_same_row() {
        let texts = [
            // Postgres's own form, with columns starchive does not read.
            r#"{"id": "s1", "env": "prod", "mode": "pack", "photos": ["AgA1", "AgA2"], "user_id": 7, "extra": {"a": [1, 2.5, null]}, "created_at": "2025-10-26T00:30:00.5+00:00"}"#,
            // A key written with escapes, and one met twice (the last wins).
            r#"{"i\u0064": "s2", "env": "test", "env": "prod", "photos": "cut"}"#,
            // Several malformed columns: the first by name is said.
            r#"{"id": "s3", "user_id": [1], "env": 5, "mode": true}"#,
            r#"{"id": 12, "photos": [1, "x"], "updated_at": null}"#,
            r#"{"id": ""}"#,
            r#"{}"#,
        ];
        for text in texts {
            let map: Map<String, Value> = serde_json::from_str(text).expect("an object");
            let parsed = RowColumns::from_json(Table::Sessions, text).expect("an object");
            let from_map = RowColumns::of_map(Table::Sessions, &map);
            let check = check_row(&parsed);
            assert_eq!(check, check_row(&from_map), "{text}");
            let dropped = check.map(|c| c.dropped).unwrap_or_default();
            assert_eq!(
                typed_values(&parsed, &dropped),
                typed_values(&from_map, &dropped),
                "{text}"
            );
            assert_eq!(env_of_session(&parsed), env_of_session(&from_map));
            assert_eq!(session_of(&parsed), session_of(&from_map));
        }
        let several = RowColumns::from_json(Table::Sessions, texts[2]).expect("an object");
        assert_eq!(
            check_row(&several).map(|c| c.id),
            Err("column env is malformed: 5".to_string())
        );
        let sticker = r#"{"id": "t", "telegram_file_id": "", "result_storage_path": "k/1.webp", "big": 1e400}"#;
        let sticker = RowColumns::from_json(Table::Stickers, sticker).expect("an object");
        assert_eq!(sticker_files(&sticker), (None, Some("k/1.webp")));
        // Text that is not one JSON object is refused as a map would be.
        for text in ["[1, 2]", "\"id\"", r#"{"id": "a"} x"#, r#"{"id": "a""#, ""] {
            let as_map =
                serde_json::from_str::<Map<String, Value>>(text).map_err(|e| e.to_string());
            let as_row = RowColumns::from_json(Table::Stickers, text)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(as_row, as_map.map(|_| ()), "{text}");
        }
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
