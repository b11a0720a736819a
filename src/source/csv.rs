//! Reading the bot's tables from CSV exports (`sessions.csv`, `stickers.csv`,
//! `pack_batches.csv`, as the Supabase dashboard writes them).
//!
//! The reader is our own RFC 4180 parser because NULL and the empty string
//! differ only by quoting (an empty unquoted field is NULL, `""` is empty
//! text), which general CSV readers do not report.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::{Map, Value};

use super::{Batcher, SourceEvent};
use crate::error::{Error, Result};
use crate::refs::{self, Table};

/// Reads the three files of `dir` into `out` (runs on a plain thread).
pub fn read(dir: &Path, out: &mut Batcher) -> Result<()> {
    out.push_blocking(SourceEvent::Began {
        taken_at: crate::catalog::now_text(),
    })?;
    for table in Table::ALL {
        let path = dir.join(format!("{}.csv", table.name()));
        let present = path.is_file();
        if !present && table.required() {
            return Err(Error::Csv {
                path,
                message: "not found: a CSV export directory needs sessions.csv (and stickers.csv, pack_batches.csv)".into(),
            });
        }
        out.push_blocking(SourceEvent::Table { table, present })?;
        if present {
            read_table(table, &path, out)?;
        }
    }
    out.flush_blocking()
}

fn read_table(table: Table, path: &Path, out: &mut Batcher) -> Result<()> {
    let csv_err = |message: String| Error::Csv {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|e| csv_err(e.to_string()))?;
    let mut reader = RecordReader::new(BufReader::with_capacity(1 << 16, file));
    let Some(header) = reader.next_record().map_err(|e| csv_err(e.to_string()))? else {
        return Ok(());
    };
    let header: Vec<String> = header
        .fields
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let name = String::from_utf8_lossy(&f.unwrap_or_default())
                .trim()
                .to_string();
            // The dashboard may start the file with a byte order mark.
            if i == 0 {
                name.trim_start_matches('\u{feff}').to_string()
            } else {
                name
            }
        })
        .collect();
    if !header.iter().any(|h| h == "id") {
        return Err(csv_err("the header has no `id` column".into()));
    }
    while let Some(record) = reader.next_record().map_err(|e| csv_err(e.to_string()))? {
        let at = format!("line {}", record.line);
        let event = match to_row(table, &header, record.fields) {
            Ok(row) => SourceEvent::row(table, row, None),
            Err(reason) => SourceEvent::Malformed { table, at, reason },
        };
        out.push_blocking(event)?;
    }
    Ok(())
}

fn to_row(
    table: Table,
    header: &[String],
    fields: Vec<Option<Vec<u8>>>,
) -> Result<Map<String, Value>, String> {
    if fields.len() != header.len() {
        return Err(format!(
            "{} fields where the header has {}",
            fields.len(),
            header.len()
        ));
    }
    let mut row = Map::new();
    for (name, field) in header.iter().zip(fields) {
        let text = field
            .map(String::from_utf8)
            .transpose()
            .map_err(|_| format!("column {name} is not UTF-8"))?;
        row.insert(name.clone(), refs::csv_value(table, name, text)?);
    }
    Ok(row)
}

/// One CSV record: its fields (`None` for an empty unquoted field) and the
/// line it starts on.
pub struct Record {
    pub line: u64,
    pub fields: Vec<Option<Vec<u8>>>,
}

pub struct RecordReader<R> {
    inner: R,
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> RecordReader<R> {
    pub fn new(inner: R) -> Self {
        RecordReader {
            inner,
            line: 0,
            buf: Vec::new(),
        }
    }

    /// The next record, skipping blank lines; a record may span lines inside quotes.
    pub fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        loop {
            let start = self.line + 1;
            let mut fields = Vec::new();
            let mut field = Vec::new();
            let mut quoted = false;
            let mut in_quotes = false;
            let mut any = false;
            loop {
                self.buf.clear();
                if self.inner.read_until(b'\n', &mut self.buf)? == 0 {
                    if !any {
                        return Ok(None);
                    }
                    if in_quotes {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("line {start}: a quoted field is never closed"),
                        ));
                    }
                    break;
                }
                self.line += 1;
                any = true;
                let mut i = 0;
                let line = &self.buf;
                let mut ended = false;
                while i < line.len() {
                    let c = line[i];
                    if in_quotes {
                        if c == b'"' {
                            if line.get(i + 1) == Some(&b'"') {
                                field.push(b'"');
                                i += 1;
                            } else {
                                in_quotes = false;
                            }
                        } else {
                            field.push(c);
                        }
                    } else {
                        match c {
                            b',' => {
                                fields.push(finish(&mut field, quoted));
                                quoted = false;
                            }
                            b'"' if field.is_empty() && !quoted => {
                                quoted = true;
                                in_quotes = true;
                            }
                            b'\n' => {
                                ended = true;
                                break;
                            }
                            b'\r' if matches!(line.get(i + 1), Some(b'\n') | None) => {}
                            _ => field.push(c),
                        }
                    }
                    i += 1;
                }
                if !in_quotes && (ended || i >= line.len()) {
                    break;
                }
            }
            fields.push(finish(&mut field, quoted));
            if fields.len() == 1 && fields[0].is_none() {
                continue; // a blank line
            }
            return Ok(Some(Record {
                line: start,
                fields,
            }));
        }
    }
}

fn finish(field: &mut Vec<u8>, quoted: bool) -> Option<Vec<u8>> {
    let value = std::mem::take(field);
    if value.is_empty() && !quoted {
        None
    } else {
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Vec<Vec<Option<String>>> {
        let mut r = RecordReader::new(text.as_bytes());
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().expect("parse") {
            out.push(
                rec.fields
                    .into_iter()
                    .map(|f| f.map(|b| String::from_utf8(b).expect("utf8")))
                    .collect(),
            );
        }
        out
    }

    #[test]
    fn empty_unquoted_is_null_and_quoted_empty_is_text() {
        let got = records("id,a,b\r\n1,,\"\"\r\n");
        assert_eq!(got[1], vec![Some("1".into()), None, Some(String::new())]);
    }

    #[test]
    fn quotes_commas_and_newlines_inside_fields() {
        let got = records("id,photos\n2,\"[\"\"x\"\",\"\"y\"\"]\"\n3,\"two\nlines\"\n\n");
        assert_eq!(got.len(), 3);
        assert_eq!(got[1][1].as_deref(), Some(r#"["x","y"]"#));
        assert_eq!(got[2][1].as_deref(), Some("two\nlines"));
    }

    #[test]
    fn last_line_without_newline() {
        let got = records("id\n7");
        assert_eq!(got, vec![vec![Some("id".into())], vec![Some("7".into())]]);
    }
}
