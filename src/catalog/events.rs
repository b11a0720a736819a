//! What a source ([`crate::source`]) sends the snapshot writer
//! ([`super::snapshot`]): rows checked against what starchive relies on
//! ([`crate::refs`]), reduced to what the catalog keeps.

use serde_json::Value;

use super::derive;
use crate::refs::{self, RowColumns, Table};

#[derive(Debug)]
pub enum SourceEvent {
    /// The source's consistent state was taken at this time (RFC 3339 UTC).
    /// `exports`: the source is CSV exports, whose cells the dashboard may
    /// cut at its size limit (a malformed value is then most likely cut).
    Began {
        taken_at: String,
        exports: bool,
    },
    /// The table is about to be read; `present` is false when the source lacks it.
    Table {
        table: Table,
        present: bool,
    },
    Row {
        table: Table,
        row: CheckedRow,
    },
    /// A row as the source's JSON text, not parsed yet, with the id the
    /// source gave beside it. In a re-snapshot most rows are unchanged: the
    /// writer compares the text with the catalog's and parses only a row
    /// that differs ([`SourceEvent::from_json_text`]), where parsing was
    /// most of the reader's work. `id` only finds the row: a row found
    /// with the same text has the id its text gives.
    Unparsed {
        table: Table,
        id: String,
        text: String,
    },
    /// A row that could not be read at all (wrong field count, bad encoding).
    Malformed {
        table: Table,
        at: String,
        reason: String,
    },
}

/// A row checked in the reader's thread and reduced to what the writer
/// keeps: the catalog's writer thread is the snapshot's bottleneck.
#[derive(Debug)]
pub struct CheckedRow {
    pub id: String,
    /// The row as JSON text, every column.
    pub data: String,
    /// What `--env` filters on: the env of a session, the session of any other row.
    pub scope: Option<String>,
    /// The values of the table's typed columns ([`refs::typed_columns`]).
    pub typed: Vec<rusqlite::types::Value>,
    /// Malformed columns whose refs are dropped ([`refs::RowCheck::dropped`]).
    pub dropped: Vec<String>,
    /// Of a stickers row that names a file: its `sticker` ref's hashes,
    /// taken here so that a first snapshot writes the ref with its row
    /// without reading the JSON again.
    pub sticker_ref: Option<RefHashes>,
}

/// The hashes `refs_core` keeps of a ref's Telegram file id and storage key
/// ([`derive::file_hash`]); `None` where the ref has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefHashes {
    pub fid_hash: Option<i64>,
    pub key_hash: Option<i64>,
}

impl RefHashes {
    /// The ref of a stickers row ([`refs::sticker_files`]); `None` when the
    /// row names no file.
    fn of_sticker(row: &RowColumns) -> Option<RefHashes> {
        let (fid, key) = refs::sticker_files(row);
        (fid.is_some() || key.is_some()).then(|| RefHashes {
            fid_hash: fid.map(derive::file_hash),
            key_hash: key.map(derive::file_hash),
        })
    }
}

impl SourceEvent {
    /// A row given as JSON text (as Postgres sends `to_jsonb(t)::text`),
    /// parsed and checked as [`SourceEvent::row`] does; text that is not a
    /// JSON object is a `Malformed` row.
    pub fn from_json_text(table: Table, text: String) -> SourceEvent {
        match RowColumns::from_json(table, &text) {
            Ok(row) => SourceEvent::row(&row, || text, || None),
            Err(e) => SourceEvent::Malformed {
                table,
                at: "a row".into(),
                reason: e.to_string(),
            },
        }
    }

    /// A source row as an event: `Row` when starchive can rely on it,
    /// `Malformed` (skipped and counted) when not. `text` gives the row's
    /// JSON text, every column, stored as is; asked only of a row that is
    /// kept. `place` says where the row is in the source (a CSV line),
    /// asked only of a row that is skipped.
    pub fn row(
        row: &RowColumns,
        text: impl FnOnce() -> String,
        place: impl FnOnce() -> Option<String>,
    ) -> SourceEvent {
        let table = row.table();
        match refs::check_row(row) {
            Ok(refs::RowCheck { id, dropped }) => {
                let scope = match table {
                    Table::Sessions => refs::env_of_session(row).map(str::to_string),
                    _ => refs::session_of(row),
                };
                let typed = refs::typed_values(row, &dropped);
                let sticker_ref = match table {
                    Table::Stickers => RefHashes::of_sticker(row),
                    _ => None,
                };
                SourceEvent::Row {
                    table,
                    row: CheckedRow {
                        id,
                        data: text(),
                        scope,
                        typed,
                        dropped,
                        sticker_ref,
                    },
                }
            }
            Err(reason) => SourceEvent::Malformed {
                table,
                at: row_label(row, place()),
                reason,
            },
        }
    }
}

/// How a skipped row is named: where it is and its id, as far as known.
fn row_label(row: &RowColumns, place: Option<String>) -> String {
    let id = match row.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    skipped_label(place, id)
}

/// `line 10 (id st-1)`, `line 10`, `id st-1` or `a row`: a skipped row by
/// its place in the source and its id (an empty one shown as `""`).
pub(crate) fn skipped_label(place: Option<String>, id: Option<String>) -> String {
    let id = id.map(|id| {
        if id.is_empty() {
            "\"\"".to_string()
        } else {
            id
        }
    });
    match (place, id) {
        (Some(place), Some(id)) => format!("{place} (id {id})"),
        (Some(place), None) => place,
        (None, Some(id)) => format!("id {id}"),
        (None, None) => "a row".to_string(),
    }
}
