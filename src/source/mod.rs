//! Where the bot's rows come from: a Postgres database or a directory of CSV
//! exports. A source sends [`SourceEvent`]s, in batches, to the catalog
//! writer; it holds no rows itself, so memory stays flat at any table size.

pub mod conninfo;
pub mod csv;
pub mod postgres;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::refs::{self, Table};

/// Rows travel in batches of this many events.
pub const BATCH: usize = 1024;

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
}

impl SourceEvent {
    /// A source row as an event: `Row` when starchive can rely on it,
    /// `Malformed` (skipped and counted) when not. `text` is the row's JSON
    /// text as the source gave it, stored as is when present. `place` says
    /// where the row is in the source (a CSV line), asked only of a row
    /// that is skipped.
    pub fn row(
        table: Table,
        row: Map<String, Value>,
        text: Option<String>,
        place: impl FnOnce() -> Option<String>,
    ) -> SourceEvent {
        match refs::check_row(table, &row) {
            Ok(refs::RowCheck { id, dropped }) => {
                let scope = match table {
                    Table::Sessions => refs::env_of_session(&row).map(str::to_string),
                    _ => refs::session_of(table, &row),
                };
                let typed = refs::typed_values(table, &row, &dropped);
                let data = text.unwrap_or_else(|| Value::Object(row).to_string());
                SourceEvent::Row {
                    table,
                    row: CheckedRow {
                        id,
                        data,
                        scope,
                        typed,
                        dropped,
                    },
                }
            }
            Err(reason) => SourceEvent::Malformed {
                table,
                at: row_label(&row, place()),
                reason,
            },
        }
    }
}

/// How a skipped row is named: where it is and its id, as far as known.
fn row_label(row: &Map<String, Value>, place: Option<String>) -> String {
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

/// Where `snapshot --db` reads from.
pub enum SourceSpec {
    Postgres(String),
    CsvDir(std::path::PathBuf),
}

impl SourceSpec {
    /// `origin` names where `db` came from (`--db`, `DATABASE_URL`) in messages.
    pub fn parse(db: &str, origin: &str) -> Result<SourceSpec> {
        if db.starts_with("postgres://")
            || db.starts_with("postgresql://")
            || (conninfo::starts_as_pairs(db) && !std::path::Path::new(db).exists())
        {
            return Ok(SourceSpec::Postgres(db.to_string()));
        }
        let path = std::path::Path::new(db.strip_prefix("file://").unwrap_or(db));
        if path.is_dir() {
            return Ok(SourceSpec::CsvDir(path.to_path_buf()));
        }
        Err(Error::Usage(format!(
            "{origin} {}: neither a postgres:// URL nor a directory of CSV exports",
            conninfo::shown(db)
        )))
    }

    /// The source as it may be shown: no password.
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::Postgres(url) => conninfo::shown(url),
            SourceSpec::CsvDir(path) => path.display().to_string(),
        }
    }
}

/// Collects events into batches and sends them; the writer applies
/// backpressure through the bounded channel.
pub struct Batcher {
    tx: mpsc::Sender<Vec<SourceEvent>>,
    buf: Vec<SourceEvent>,
}

impl Batcher {
    pub fn new(tx: mpsc::Sender<Vec<SourceEvent>>) -> Self {
        Batcher {
            tx,
            buf: Vec::with_capacity(BATCH),
        }
    }

    pub async fn push(&mut self, ev: SourceEvent) -> Result<()> {
        self.buf.push(ev);
        if self.buf.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH));
        self.tx.send(batch).await.map_err(|_| writer_gone())
    }

    /// For sources read on a plain thread.
    pub fn push_blocking(&mut self, ev: SourceEvent) -> Result<()> {
        self.buf.push(ev);
        if self.buf.len() >= BATCH {
            self.flush_blocking()?;
        }
        Ok(())
    }

    pub fn flush_blocking(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH));
        self.tx.blocking_send(batch).map_err(|_| writer_gone())
    }
}

fn writer_gone() -> Error {
    Error::Internal("the catalog writer stopped before the source was read".into())
}
