//! Writing a snapshot: every row of the source into the catalog, in one
//! transaction. A snapshot killed midway leaves the previous one whole
//! (SQLite rolls the transaction back on the next open); a finished one
//! replaces it, with counts of what was added, changed and removed.

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::Transaction;
use rusqlite::types::ToSqlOutput as SqlRef;
use serde::Serialize;

use super::Catalog;
use crate::error::Result;
use crate::refs::{self, Table};
use crate::source::{CheckedRow, SourceEvent};

/// How many skipped rows are logged one by one before only counting.
const LOGGED_SKIPS: u64 = 20;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct TableCounts {
    pub rows: u64,
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    pub skipped: u64,
    /// Rows kept with a malformed value whose refs were dropped (SPEC §7).
    pub warnings: u64,
}

#[derive(Debug, Serialize)]
pub struct SnapshotReport {
    pub snapshot_id: i64,
    pub taken_at: String,
    pub source: String,
    pub tables: BTreeMap<String, TableCounts>,
}

/// The statements writing one row of a table: `?1` id, `?2` data, `?3` the
/// snapshot, then the typed columns.
struct RowSql {
    update: String,
    insert: String,
}

impl RowSql {
    fn new(table: Table) -> RowSql {
        let t = table.name();
        let typed = refs::typed_columns(table);
        let sets: String = typed
            .iter()
            .enumerate()
            .map(|(i, c)| format!(", {c} = ?{}", i + 4))
            .collect();
        let names: String = typed.iter().map(|c| format!(", {c}")).collect();
        let values: String = (0..typed.len()).map(|i| format!(", ?{}", i + 4)).collect();
        RowSql {
            update: format!(
                "UPDATE {t} SET seen_snapshot = ?3,
                    changed_snapshot = CASE WHEN data = ?2 THEN changed_snapshot ELSE ?3 END,
                    data = ?2{sets}
                 WHERE id = ?1 AND seen_snapshot < ?3"
            ),
            insert: format!(
                "INSERT OR IGNORE INTO {t}(id, data, first_snapshot, changed_snapshot, seen_snapshot{names})
                 VALUES (?1, ?2, ?3, ?3, ?3{values})"
            ),
        }
    }
}

pub struct SnapshotWriter<'c> {
    tx: Transaction<'c>,
    id: i64,
    envs: Option<HashSet<String>>,
    sessions_in_scope: HashSet<String>,
    /// Tables empty when the snapshot began: every row is new, no update to try.
    fresh: HashSet<Table>,
    sql: HashMap<Table, RowSql>,
    skipped: BTreeMap<Table, u64>,
    warnings: BTreeMap<Table, u64>,
    missing: Vec<Table>,
    taken_at: String,
    source: String,
}

/// Hides what an older starchive left readable in the sources of earlier
/// snapshots (it missed passwords in some forms of connection string), so
/// that no later push copies them to a destination.
fn redact_older_sources(tx: &Transaction) -> Result<()> {
    let sources: Vec<(i64, String)> = tx
        .prepare("SELECT id, source FROM snapshots")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, source) in sources {
        let shown = crate::source::conninfo::shown(&source);
        if shown != source {
            tx.execute(
                "UPDATE snapshots SET source = ?1 WHERE id = ?2",
                rusqlite::params![shown, id],
            )?;
        }
    }
    Ok(())
}

impl<'c> SnapshotWriter<'c> {
    pub fn begin(catalog: &'c mut Catalog, source: &str, envs: &[String]) -> Result<Self> {
        let tx = catalog.conn_mut().transaction()?;
        let envs_json = (!envs.is_empty()).then(|| serde_json::to_string(envs).unwrap_or_default());
        tx.execute(
            "INSERT INTO snapshots(taken_at, source, envs) VALUES (?1, ?2, ?3)",
            rusqlite::params![super::now_text(), source, envs_json],
        )?;
        let id = tx.last_insert_rowid();
        redact_older_sources(&tx)?;
        let mut fresh = HashSet::new();
        for table in Table::ALL {
            let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM {})", table.name());
            if tx.query_row(&sql, [], |r| r.get(0))? {
                fresh.insert(table);
            }
        }
        Ok(SnapshotWriter {
            tx,
            id,
            envs: (!envs.is_empty()).then(|| envs.iter().cloned().collect()),
            sessions_in_scope: HashSet::new(),
            fresh,
            sql: Table::ALL
                .into_iter()
                .map(|t| (t, RowSql::new(t)))
                .collect(),
            skipped: BTreeMap::new(),
            warnings: BTreeMap::new(),
            missing: Vec::new(),
            taken_at: super::now_text(),
            source: source.to_string(),
        })
    }

    pub fn apply(&mut self, event: SourceEvent) -> Result<()> {
        match event {
            SourceEvent::Began { taken_at } => self.taken_at = taken_at,
            SourceEvent::Table { table, present } => {
                if !present {
                    tracing::warn!("the source has no {} table: taken as empty", table.name());
                    self.missing.push(table);
                }
            }
            SourceEvent::Malformed { table, at, reason } => self.skip(table, &at, &reason),
            SourceEvent::Row { table, row } => {
                if !self.in_scope(table, &row) {
                    return Ok(());
                }
                if !self.write_row(table, &row)? {
                    self.skip(
                        table,
                        &format!("id {}", row.id),
                        "a second row with the same id",
                    );
                } else {
                    for column in &row.dropped {
                        self.warn(table, &row.id, column);
                    }
                }
            }
        }
        Ok(())
    }

    /// Inserts or refreshes one row; false when this snapshot saw its id already.
    /// Not an upsert: SQLite computes every column of an upsert's `excluded`
    /// row, and an update first is wasted on a table that was empty.
    fn write_row(&mut self, table: Table, row: &CheckedRow) -> Result<bool> {
        let sql = &self.sql[&table];
        let params = || {
            let fixed = [
                SqlRef::from(row.id.as_str()),
                SqlRef::from(row.data.as_str()),
                SqlRef::from(self.id),
            ];
            fixed
                .into_iter()
                .chain(row.typed.iter().map(SqlRef::from))
                .collect::<Vec<_>>()
        };
        if !self.fresh.contains(&table)
            && self
                .tx
                .prepare_cached(&sql.update)?
                .execute(rusqlite::params_from_iter(params()))?
                == 1
        {
            return Ok(true);
        }
        let inserted = self
            .tx
            .prepare_cached(&sql.insert)?
            .execute(rusqlite::params_from_iter(params()))?;
        Ok(inserted == 1)
    }

    fn in_scope(&mut self, table: Table, row: &CheckedRow) -> bool {
        let Some(envs) = &self.envs else {
            return true;
        };
        let Some(scope) = &row.scope else {
            return false;
        };
        if table == Table::Sessions {
            let keep = envs.contains(scope);
            if keep {
                self.sessions_in_scope.insert(row.id.clone());
            }
            keep
        } else {
            self.sessions_in_scope.contains(scope)
        }
    }

    fn skip(&mut self, table: Table, at: &str, reason: &str) {
        let n = self.skipped.entry(table).or_default();
        *n += 1;
        if *n <= LOGGED_SKIPS {
            tracing::warn!("{} {at}: skipped: {reason}", table.name());
        } else if *n == LOGGED_SKIPS + 1 {
            tracing::warn!("{}: more rows skipped; counting only", table.name());
        }
    }

    fn warn(&mut self, table: Table, id: &str, column: &str) {
        let n = self.warnings.entry(table).or_default();
        *n += 1;
        if *n <= LOGGED_SKIPS {
            tracing::warn!(
                "{} id {id}: column {column} is malformed (an export cut at its size limit?): the row is kept, the refs it names are left out",
                table.name()
            );
        } else if *n == LOGGED_SKIPS + 1 {
            tracing::warn!("{}: more malformed values; counting only", table.name());
        }
    }

    /// Removes the rows this snapshot did not see, rebuilds the refs and commits.
    pub fn finish(self, include_photos: bool) -> Result<SnapshotReport> {
        let SnapshotWriter {
            tx,
            id,
            skipped,
            warnings,
            taken_at,
            source,
            ..
        } = self;
        let started = std::time::Instant::now();
        let mut tables = BTreeMap::new();
        for table in Table::ALL {
            let t = table.name();
            let removed = tx.execute(&format!("DELETE FROM {t} WHERE seen_snapshot < ?1"), [id])?;
            let (rows, added, changed): (u64, u64, u64) = tx.query_row(
                &format!(
                    "SELECT count(*),
                            count(*) FILTER (WHERE first_snapshot = ?1),
                            count(*) FILTER (WHERE changed_snapshot = ?1 AND first_snapshot < ?1)
                     FROM {t}"
                ),
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            tables.insert(
                t.to_string(),
                TableCounts {
                    rows,
                    added,
                    changed,
                    removed: removed as u64,
                    skipped: skipped.get(&table).copied().unwrap_or(0),
                    warnings: warnings.get(&table).copied().unwrap_or(0),
                },
            );
        }
        tx.execute(
            "UPDATE snapshots SET taken_at = ?1 WHERE id = ?2",
            rusqlite::params![taken_at, id],
        )?;
        tracing::debug!("snapshot: rows counted in {:?}", started.elapsed());
        refs::derive(&tx, include_photos)?;
        tracing::debug!("snapshot: refs derived in {:?}", started.elapsed());
        tx.commit()?;
        tracing::debug!("snapshot: committed in {:?}", started.elapsed());
        Ok(SnapshotReport {
            snapshot_id: id,
            taken_at,
            source,
            tables,
        })
    }
}
