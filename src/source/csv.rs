//! Reading the bot's tables from CSV exports: `TABLE.csv` or `TABLE_rows.csv`
//! (the Supabase dashboard's name), as its table editor or its SQL editor
//! writes them (SPEC §7).
//!
//! The `csv` crate reads them: quoting, a UTF-8 byte order mark before the
//! header, `\r\n` or `\n`. Supabase's exports do not tell NULL from an empty
//! string, so every empty field, quoted or not, is NULL.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::Batcher;
use crate::catalog::events::SourceEvent;
use crate::error::{Error, Result};
use crate::refs::{self, RowColumns, Table};

/// Reads the three tables of `dir` into `out` (runs on a plain thread).
pub fn read(dir: &Path, out: &mut Batcher) -> Result<()> {
    out.push_blocking(SourceEvent::Began {
        taken_at: crate::catalog::now_text(),
        exports: true,
    })?;
    for table in Table::ALL {
        let path = table_file(dir, table)?;
        if path.is_none() && table.required() {
            return Err(Error::Csv {
                path: dir.join(format!("{}.csv", table.name())),
                message: "not found: a CSV export directory needs sessions.csv or sessions_rows.csv (and the same for stickers, pack_batches)".into(),
            });
        }
        out.push_blocking(SourceEvent::Table {
            table,
            present: path.is_some(),
        })?;
        if let Some(path) = path {
            read_table(table, &path, out)?;
        }
    }
    out.flush_blocking()
}

/// The file of `table` in `dir`: `TABLE.csv` or `TABLE_rows.csv`; both is ambiguous.
fn table_file(dir: &Path, table: Table) -> Result<Option<PathBuf>> {
    let found: Vec<PathBuf> = [
        format!("{}.csv", table.name()),
        format!("{}_rows.csv", table.name()),
    ]
    .into_iter()
    .map(|name| dir.join(name))
    .filter(|path| path.is_file())
    .collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        [first, second, ..] => Err(Error::Csv {
            path: dir.to_path_buf(),
            message: format!(
                "both {} and {} are there: keep the export to snapshot and move the other away",
                file_name(first),
                file_name(second)
            ),
        }),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_table(table: Table, path: &Path, out: &mut Batcher) -> Result<()> {
    let csv_err = |message: String| Error::Csv {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        // A line with the wrong number of fields is one malformed row, not the end of the file.
        .flexible(true)
        .from_path(path)
        .map_err(|e| csv_err(e.to_string()))?;
    let header: Vec<String> = reader
        .byte_headers()
        .map_err(|e| csv_err(e.to_string()))?
        .iter()
        .map(|name| String::from_utf8_lossy(name).trim().to_string())
        .collect();
    if header.iter().all(String::is_empty) {
        // An export always has its header line, even of an empty table: a
        // file without one was cut or never written, and reading it as an
        // empty table would remove every row from the catalog.
        return Err(csv_err(
            "no header line: not a CSV export (an empty table's export still has its header line); export the table again".into(),
        ));
    }
    if !header.iter().any(|h| h == "id") {
        return Err(csv_err(format!(
            "the header has no `id` column (it has {})",
            header.join(", ")
        )));
    }
    let lines = Lines(File::open(path).map_err(|e| csv_err(e.to_string()))?);
    let id_column = header.iter().position(|h| h == "id");
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let at = || lines.at(record.position());
                let event = match to_row(table, &header, &record) {
                    Ok(row) => SourceEvent::row(
                        &RowColumns::of_map(table, &row),
                        || Value::Object(row).to_string(),
                        at,
                    ),
                    Err(reason) => SourceEvent::Malformed {
                        table,
                        at: crate::catalog::events::skipped_label(
                            at(),
                            // An empty field is NULL: no id.
                            id_column
                                .and_then(|i| record.get(i))
                                .filter(|id| !id.is_empty())
                                .map(|id| String::from_utf8_lossy(id).into_owned()),
                        ),
                        reason,
                    },
                };
                out.push_blocking(event)?;
            }
            Err(e) => return Err(csv_err(e.to_string())),
        }
    }
}

/// The line a record starts on, as a person counts them. The `csv` crate
/// gives a record the position its reader stood at before reading it: at
/// the `\n` of a `\r\n` line end (it ends a record at the `\r`) and before
/// the blank lines it skips, so its line is short of one per `\n` there.
/// Those bytes are read again from the file (only for a skipped row) and
/// counted.
struct Lines(File);

impl Lines {
    fn at(&self, position: Option<&csv::Position>) -> Option<String> {
        let position = position?;
        let mut line = position.line();
        let mut offset = position.byte();
        let mut buf = [0u8; 256];
        let mut file = &self.0;
        // A file that cannot be read again here keeps the crate's count.
        while let Ok(n) = file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| file.read(&mut buf))
        {
            let ends = buf[..n]
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            line += buf[..ends].iter().filter(|b| **b == b'\n').count() as u64;
            if n == 0 || ends < n {
                break;
            }
            offset += n as u64;
        }
        Some(format!("line {line}"))
    }
}

fn to_row(
    table: Table,
    header: &[String],
    record: &csv::ByteRecord,
) -> Result<Map<String, Value>, String> {
    if record.len() != header.len() {
        return Err(format!(
            "{} fields where the header has {}",
            record.len(),
            header.len()
        ));
    }
    let mut row = Map::new();
    for (name, field) in header.iter().zip(record) {
        let text = std::str::from_utf8(field).map_err(|_| format!("column {name} is not UTF-8"))?;
        let value = (!text.is_empty()).then(|| text.to_string());
        row.insert(name.clone(), refs::csv_value(table, name, value)?);
    }
    Ok(row)
}
