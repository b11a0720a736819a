//! Writing a snapshot: every row of the source into the catalog, in one
//! transaction. A snapshot killed midway leaves the previous one whole
//! (SQLite rolls the transaction back on the next open); a finished one
//! replaces it, with counts of what was added, changed and removed.

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::types::ToSqlOutput as SqlRef;
use rusqlite::{OptionalExtension, Transaction};
use serde::Serialize;

use super::events::{CheckedRow, SourceEvent};
use super::{Catalog, derive};
use crate::error::Result;
use crate::refs::{self, Table};

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

/// The statements writing one row of a table, and what the snapshot
/// learnt of the table so far.
struct TableWriter {
    table: Table,
    /// `?1` id: the row's rowid, JSON text, and [`refs::noted_column`].
    lookup: String,
    /// `?1` id, `?2` JSON text: the row's rowid, and whether its text is the same.
    same: String,
    /// `?1` rowid: the JSON type and text of the row's session
    /// ([`refs::session_of`]), for `--env`.
    session: String,
    /// `?1` rowid, `?2` data, `?3` the snapshot, then the typed columns.
    update: String,
    /// The typed columns alone (`?1` rowid, then the typed columns).
    refresh: Option<String>,
    /// `?1` id, `?2` data, `?3` the snapshot, then the typed columns.
    insert: String,
    /// Empty when the snapshot began: every row is new, nothing to look up.
    fresh: bool,
    /// Rows in the table when the snapshot began.
    before: u64,
    /// Rowids of the rows this snapshot saw, to tell the removed ones and a
    /// second row with the same id.
    seen: RowidSet,
    counts: TableCounts,
}

impl TableWriter {
    fn new(tx: &Transaction, table: Table) -> Result<TableWriter> {
        let t = table.name();
        let typed = refs::typed_columns(table);
        let sets = |first: usize| -> String {
            typed
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c} = ?{}", i + first))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let names: String = typed.iter().map(|c| format!(", {c}")).collect();
        let values: String = (0..typed.len()).map(|i| format!(", ?{}", i + 4)).collect();
        let update_sets: String = typed
            .iter()
            .enumerate()
            .map(|(i, c)| format!(", {c} = ?{}", i + 4))
            .collect();
        let before: u64 = tx.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?;
        Ok(TableWriter {
            table,
            lookup: format!(
                "SELECT rowid, data, {} FROM {t} WHERE id = ?1",
                refs::noted_column(table).unwrap_or("NULL")
            ),
            same: format!("SELECT rowid, data = ?2 FROM {t} WHERE id = ?1"),
            session: format!(
                "SELECT json_type(data, '$.{s}'), CAST(json_extract(data, '$.{s}') AS TEXT)
                 FROM {t} WHERE rowid = ?1",
                s = table.session_column()
            ),
            update: format!(
                "UPDATE {t} SET data = ?2, changed_snapshot = ?3{update_sets} WHERE rowid = ?1"
            ),
            refresh: (!typed.is_empty())
                .then(|| format!("UPDATE {t} SET {} WHERE rowid = ?1", sets(2))),
            insert: format!(
                "INSERT OR IGNORE INTO {t}(id, data, first_snapshot, changed_snapshot{names})
                 VALUES (?1, ?2, ?3, ?3{values})"
            ),
            fresh: before == 0,
            before,
            seen: RowidSet::default(),
            counts: TableCounts::default(),
        })
    }
}

/// A set of rowids, one bit each: flat memory for any table a snapshot reads.
#[derive(Default)]
struct RowidSet(Vec<u64>);

impl RowidSet {
    /// Adds `rowid`; false when it was there already.
    fn insert(&mut self, rowid: i64) -> bool {
        let Ok(i) = usize::try_from(rowid) else {
            return true;
        };
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let new = self.0[word] & bit == 0;
        self.0[word] |= bit;
        new
    }

    fn contains(&self, rowid: i64) -> bool {
        usize::try_from(rowid)
            .ok()
            .and_then(|i| self.0.get(i / 64).map(|w| w & (1u64 << (i % 64)) != 0))
            .unwrap_or(false)
    }
}

/// The env of each session a first snapshot inserted, for the refs of the
/// stickers after them (sessions come first): by a 64-bit hash of the
/// session's id, about 17 bytes a session, where a table of the sessions
/// looked up once per sticker cost a sixth of the snapshot. Where two
/// sessions of different envs share a hash, the catalog's `sessions` tells
/// them apart; so it does for the sessions past the first [`MOST_SESSIONS`],
/// which keeps memory flat however many sessions the bot has.
struct SessionEnvs {
    /// The hash of a session's id.
    key: fn(&str) -> u64,
    /// How many sessions are kept ([`MOST_SESSIONS`]).
    most: usize,
    /// Sessions came past `most`: one not kept may be any.
    full: bool,
    /// Each env once (`None`: a session without one), and where it is in `envs`.
    envs: Vec<Option<String>>,
    env_at: HashMap<Option<String>, u32>,
    /// The env of each session by the hash of its id, `None` if ambiguous.
    by_id: HashMap<u64, Option<u32>>,
}

/// What [`SessionEnvs`] knows of a session.
enum SessionEnv<'a> {
    /// No session of that id was inserted.
    Unknown,
    /// The session's env (`None`: it has none).
    Found(Option<&'a str>),
    /// Ask the catalog's `sessions` (a shared hash, or a session not kept).
    Ambiguous,
}

impl Default for SessionEnvs {
    fn default() -> Self {
        SessionEnvs {
            key: |id| {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::hash::DefaultHasher::new();
                id.hash(&mut hasher);
                hasher.finish()
            },
            most: MOST_SESSIONS,
            full: false,
            envs: Vec::new(),
            env_at: HashMap::new(),
            by_id: HashMap::new(),
        }
    }
}

/// The sessions whose env [`SessionEnvs`] keeps: a map of about 9 MiB
/// (hashbrown's 2^19 buckets of 17 bytes hold 7/8 of that many). Past
/// them, each sticker of a session not kept looks its env up in the
/// catalog: a first snapshot of 10 M stickers and 1 M sessions took 127 s
/// at a peak RSS of 66 MB, against 106 s and 89 MB with every session
/// kept (one run each).
const MOST_SESSIONS: usize = 458_752;

impl SessionEnvs {
    fn insert(&mut self, id: &str, env: Option<String>) {
        let at = match self.env_at.get(&env) {
            Some(at) => Some(*at),
            None => u32::try_from(self.envs.len()).ok().inspect(|at| {
                self.envs.push(env.clone());
                self.env_at.insert(env, *at);
            }),
        };
        let key = (self.key)(id);
        if self.by_id.len() >= self.most && !self.by_id.contains_key(&key) {
            self.full = true;
            return;
        }
        self.by_id
            .entry(key)
            .and_modify(|found| {
                if *found != at {
                    *found = None;
                }
            })
            .or_insert(at);
    }

    fn get(&self, id: &str) -> SessionEnv<'_> {
        match self.by_id.get(&(self.key)(id)) {
            None if self.full => SessionEnv::Ambiguous,
            None => SessionEnv::Unknown,
            Some(None) => SessionEnv::Ambiguous,
            Some(Some(at)) => match self.envs.get(*at as usize) {
                Some(env) => SessionEnv::Found(env.as_deref()),
                None => SessionEnv::Ambiguous,
            },
        }
    }
}

/// What a row was before this snapshot changed or removed it.
struct Before {
    id: String,
    /// The value of [`refs::noted_column`].
    noted: Option<String>,
}

pub struct SnapshotWriter<'c> {
    tx: Transaction<'c>,
    id: i64,
    envs: Option<HashSet<String>>,
    sessions_in_scope: HashSet<String>,
    tables: Vec<TableWriter>,
    /// Whether the snapshot lists its changes for [`super::derive::derive_changed`];
    /// false once they are many (deriving every ref is then cheaper).
    listing: bool,
    /// Changes listed so far, and how many make deriving every ref cheaper.
    listed: u64,
    most_listed: u64,
    /// The typed columns of unchanged rows are written again (migration 8).
    refresh_typed: bool,
    /// In a first snapshot, the refs of stickers are written with their
    /// rows ([`derive::STICKER_REFS_BEGIN`]), with the envs of the sessions
    /// inserted before them.
    sticker_refs: Option<SessionEnvs>,
    /// In a first snapshot, the generated columns of `stickers` are out of
    /// its schema until the rows are in ([`VirtualColumns`]).
    hidden: Option<VirtualColumns>,
    skipped: BTreeMap<Table, u64>,
    warnings: BTreeMap<Table, u64>,
    missing: Vec<Table>,
    taken_at: String,
    source: String,
    /// The source is CSV exports ([`SourceEvent::Began`]).
    exports: bool,
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
        let shown = crate::redact::conninfo::shown(&source);
        if shown != source {
            tx.execute(
                "UPDATE snapshots SET source = ?1 WHERE id = ?2",
                rusqlite::params![shown, id],
            )?;
        }
    }
    Ok(())
}

/// Whether the catalog holds stickers rows (the next snapshot is a
/// re-snapshot of them).
pub fn has_stickers(catalog: &Catalog) -> Result<bool> {
    Ok(catalog
        .conn()
        .query_row("SELECT EXISTS (SELECT 1 FROM stickers)", [], |r| r.get(0))?)
}

/// The setting migration 8 leaves for the next snapshot.
const REFRESH_TYPED: &str = "refresh_typed";

impl<'c> SnapshotWriter<'c> {
    pub fn begin(catalog: &'c mut Catalog, source: &str, envs: &[String]) -> Result<Self> {
        let refresh_typed = catalog.setting(REFRESH_TYPED)?.is_some();
        let tx = catalog.conn_mut().transaction()?;
        let envs_json = (!envs.is_empty()).then(|| serde_json::to_string(envs).unwrap_or_default());
        tx.execute(
            "INSERT INTO snapshots(taken_at, source, envs) VALUES (?1, ?2, ?3)",
            rusqlite::params![super::now_text(), source, envs_json],
        )?;
        let id = tx.last_insert_rowid();
        redact_older_sources(&tx)?;
        let tables = Table::ALL
            .into_iter()
            .map(|t| TableWriter::new(&tx, t))
            .collect::<Result<Vec<_>>>()?;
        let has_refs: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM refs)", [], |r| r.get(0))?;
        let rows: u64 = tables.iter().map(|t| t.before).sum();
        tx.execute_batch(derive::DROP_CHANGE_TABLES)?;
        tx.execute_batch(derive::CHANGE_TABLES)?;
        let sticker_refs = (!has_refs && rows == 0).then(SessionEnvs::default);
        let mut hidden = None;
        if sticker_refs.is_some() {
            tx.execute_batch(derive::STICKER_REFS_BEGIN)?;
            hidden = VirtualColumns::hide(&tx, Table::Stickers.name())?;
        }
        Ok(SnapshotWriter {
            tx,
            id,
            envs: (!envs.is_empty()).then(|| envs.iter().cloned().collect()),
            sessions_in_scope: HashSet::new(),
            tables,
            listing: has_refs,
            listed: 0,
            most_listed: (rows / 4).max(1000),
            refresh_typed,
            sticker_refs,
            hidden,
            skipped: BTreeMap::new(),
            warnings: BTreeMap::new(),
            missing: Vec::new(),
            taken_at: super::now_text(),
            source: source.to_string(),
            exports: false,
        })
    }

    pub fn apply(&mut self, event: SourceEvent) -> Result<()> {
        match event {
            SourceEvent::Began { taken_at, exports } => {
                self.taken_at = taken_at;
                self.exports = exports;
            }
            SourceEvent::Table { table, present } => {
                if !present {
                    tracing::warn!("the source has no {} table: taken as empty", table.name());
                    self.missing.push(table);
                }
            }
            SourceEvent::Malformed { table, at, reason } => self.skip(table, &at, &reason),
            SourceEvent::Unparsed { table, id, text } => {
                if !self.seen_unchanged(table, &id, &text)? {
                    self.apply(SourceEvent::from_json_text(table, text))?;
                }
            }
            SourceEvent::Row { table, row } => {
                if !self.in_scope(table, &row.id, row.scope.as_deref()) {
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

    /// Takes an unparsed row whose JSON text the catalog holds as is, the
    /// common case of a re-snapshot: the row is seen, unchanged, and nothing
    /// is parsed or written. False when it must be parsed and written as any
    /// row: new, changed, seen twice, or of a table whose rows the snapshot
    /// must read (a session's env decides which rows `--env` keeps, and its
    /// malformed values are warned of at every snapshot).
    fn seen_unchanged(&mut self, table: Table, id: &str, text: &str) -> Result<bool> {
        let w = &mut self.tables[table_index(table)];
        if w.fresh || table == Table::Sessions || (self.refresh_typed && w.refresh.is_some()) {
            return Ok(false);
        }
        let found = self
            .tx
            .prepare_cached(&w.same)?
            .query_row([id, text], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?))
            })
            .optional()?;
        let Some((rowid, true)) = found else {
            return Ok(false);
        };
        if w.seen.contains(rowid) {
            return Ok(false);
        }
        if self.envs.is_some() {
            let (session_type, session) =
                self.tx
                    .prepare_cached(&w.session)?
                    .query_row([rowid], |r| {
                        Ok((
                            r.get::<_, Option<String>>(0)?,
                            r.get::<_, Option<String>>(1)?,
                        ))
                    })?;
            // The session as `refs::session_of` reads it from the JSON: text
            // or an integer; any other value is none (a real number, rare,
            // is left to the parser's own formatting).
            let session = match session_type.as_deref() {
                Some("text" | "integer") => session,
                Some("real") => return Ok(false),
                _ => None,
            };
            if !self.in_scope(table, id, session.as_deref()) {
                return Ok(true);
            }
        }
        let w = &mut self.tables[table_index(table)];
        w.seen.insert(rowid);
        w.counts.rows += 1;
        Ok(true)
    }

    /// Writes one row if it is new or its JSON text changed; false when
    /// this snapshot saw its id already. An unchanged row costs one lookup
    /// and writes nothing.
    fn write_row(&mut self, table: Table, row: &CheckedRow) -> Result<bool> {
        let SnapshotWriter {
            tx,
            id,
            tables,
            refresh_typed,
            ..
        } = self;
        let w = &mut tables[table_index(table)];
        if !w.fresh {
            let found = tx
                .prepare_cached(&w.lookup)?
                .query_row([&row.id], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get_ref(1)?.as_str()? == row.data,
                        r.get::<_, Option<String>>(2)?,
                    ))
                })
                .optional()?;
            if let Some((rowid, same, noted)) = found {
                if !w.seen.insert(rowid) {
                    return Ok(false);
                }
                w.counts.rows += 1;
                if same {
                    if let (true, Some(refresh)) = (*refresh_typed, &w.refresh) {
                        let typed = std::iter::once(SqlRef::from(rowid))
                            .chain(row.typed.iter().map(SqlRef::from));
                        tx.prepare_cached(refresh)?
                            .execute(rusqlite::params_from_iter(typed))?;
                    }
                    return Ok(true);
                }
                tx.prepare_cached(&w.update)?
                    .execute(rusqlite::params_from_iter(row_params(rowid, row, *id)))?;
                w.counts.changed += 1;
                let before = Before {
                    id: row.id.clone(),
                    noted,
                };
                self.list(table, &before, Some(row))?;
                return Ok(true);
            }
        }
        let inserted = tx
            .prepare_cached(&w.insert)?
            .execute(rusqlite::params_from_iter(row_params(
                row.id.as_str(),
                row,
                *id,
            )))?;
        if inserted == 0 {
            return Ok(false);
        }
        if !w.fresh {
            w.seen.insert(tx.last_insert_rowid());
        }
        w.counts.rows += 1;
        w.counts.added += 1;
        if self.sticker_refs.is_some() {
            self.write_sticker_ref(table, row)?;
        }
        self.list_new(table, row)?;
        Ok(true)
    }

    /// In a first snapshot, with a row just inserted: the env of a session,
    /// the ref of a sticker.
    fn write_sticker_ref(&mut self, table: Table, row: &CheckedRow) -> Result<()> {
        let Some(envs) = &mut self.sticker_refs else {
            return Ok(());
        };
        match (table, row.sticker_ref) {
            (Table::Sessions, _) => envs.insert(&row.id, typed_value(table, row, "env")),
            (Table::Stickers, Some(hashes)) => {
                let env = match row.scope.as_deref().map(|s| envs.get(s)) {
                    None | Some(SessionEnv::Unknown) => None,
                    Some(SessionEnv::Found(env)) => env.map(str::to_string),
                    Some(SessionEnv::Ambiguous) => self
                        .tx
                        .prepare_cached(derive::SESSION_ENV)?
                        .query_row([&row.scope], |r| r.get(0))
                        .optional()?
                        .flatten(),
                };
                self.tx
                    .prepare_cached(derive::STICKER_REF_INSERT)?
                    .execute(rusqlite::params![
                        self.tx.last_insert_rowid(),
                        env,
                        hashes.fid_hash,
                        hashes.key_hash
                    ])?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Lists a row that changed (`now`: its new state) or is gone (`None`).
    fn list(&mut self, table: Table, before: &Before, now: Option<&CheckedRow>) -> Result<()> {
        if !self.note_listed() {
            return Ok(());
        }
        self.tx
            .prepare_cached("INSERT OR IGNORE INTO temp.snap_rows(row_table, id) VALUES (?1, ?2)")?
            .execute([table.name(), before.id.as_str()])?;
        match table {
            Table::Sessions => {
                let env_now = now.and_then(|row| typed_value(table, row, "env"));
                if now.is_none() || env_now.as_deref() != before.noted.as_deref() {
                    self.tx
                        .prepare_cached(
                            "INSERT OR IGNORE INTO temp.snap_env(id, known) VALUES (?1, 1)",
                        )?
                        .execute([&before.id])?;
                }
            }
            Table::PackBatches => {
                if let Some(session) = &before.noted {
                    self.tx
                        .prepare_cached("INSERT OR IGNORE INTO temp.snap_sessions(id) VALUES (?1)")?
                        .execute([session])?;
                }
            }
            Table::Stickers => {}
        }
        Ok(())
    }

    /// Lists a row this snapshot added.
    fn list_new(&mut self, table: Table, row: &CheckedRow) -> Result<()> {
        if !self.note_listed() {
            return Ok(());
        }
        self.tx
            .prepare_cached("INSERT OR IGNORE INTO temp.snap_rows(row_table, id) VALUES (?1, ?2)")?
            .execute([table.name(), row.id.as_str()])?;
        if table == Table::Sessions {
            self.tx
                .prepare_cached("INSERT OR IGNORE INTO temp.snap_env(id, known) VALUES (?1, 0)")?
                .execute([&row.id])?;
        }
        Ok(())
    }

    /// Counts one more listed change; false once listing stopped paying.
    fn note_listed(&mut self) -> bool {
        if !self.listing {
            return false;
        }
        self.listed += 1;
        if self.listed > self.most_listed {
            self.listing = false;
        }
        self.listing
    }

    /// Whether `--env` keeps the row `id` of `table`, whose scope is the
    /// env of a session, the session of any other row ([`CheckedRow::scope`]).
    fn in_scope(&mut self, table: Table, id: &str, scope: Option<&str>) -> bool {
        let Some(envs) = &self.envs else {
            return true;
        };
        let Some(scope) = scope else {
            return false;
        };
        if table == Table::Sessions {
            let keep = envs.contains(scope);
            if keep {
                self.sessions_in_scope.insert(id.to_string());
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
            let cut = if self.exports {
                " (an export cut at its size limit?)"
            } else {
                ""
            };
            tracing::warn!(
                "{} id {id}: column {column} is malformed{cut}: the row is kept, the refs it names are left out",
                table.name()
            );
        } else if *n == LOGGED_SKIPS + 1 {
            tracing::warn!("{}: more malformed values; counting only", table.name());
        }
    }

    /// Removes the rows this snapshot did not see, derives the refs and commits.
    pub fn finish(mut self, include_photos: bool) -> Result<SnapshotReport> {
        let started = std::time::Instant::now();
        if let Some(hidden) = self.hidden.take() {
            hidden.restore(&self.tx)?;
        }
        for at in 0..self.tables.len() {
            self.remove_unseen(at)?;
        }
        tracing::debug!("snapshot: removed rows in {:?}", started.elapsed());
        let SnapshotWriter {
            tx,
            id,
            tables: writers,
            listing,
            refresh_typed,
            sticker_refs,
            skipped,
            warnings,
            taken_at,
            source,
            ..
        } = self;
        let mut tables = BTreeMap::new();
        for w in writers {
            let counts = TableCounts {
                skipped: skipped.get(&w.table).copied().unwrap_or(0),
                warnings: warnings.get(&w.table).copied().unwrap_or(0),
                ..w.counts
            };
            tables.insert(w.table.name().to_string(), counts);
        }
        tx.execute(
            "UPDATE snapshots SET taken_at = ?1 WHERE id = ?2",
            rusqlite::params![taken_at, id],
        )?;
        if refresh_typed {
            tx.execute("DELETE FROM settings WHERE key = ?1", [REFRESH_TYPED])?;
        }
        let listing = listing && derive::can_derive_changed(&tx, include_photos)?;
        let how = if sticker_refs.is_some() {
            derive::derive_after_sticker_refs(&tx, include_photos)?;
            "all rows, stickers' with them"
        } else if listing {
            derive::derive_changed(&tx, include_photos)?;
            "changed rows"
        } else {
            derive::derive(&tx, include_photos)?;
            "all rows"
        };
        tx.execute_batch(derive::DROP_CHANGE_TABLES)?;
        tracing::debug!("snapshot: refs derived ({how}) in {:?}", started.elapsed());
        tx.commit()?;
        tracing::debug!("snapshot: committed in {:?}", started.elapsed());
        Ok(SnapshotReport {
            snapshot_id: id,
            taken_at,
            source,
            tables,
        })
    }

    /// Deletes the rows of table `at` that this snapshot did not see (none
    /// to look for when it saw as many as there were).
    fn remove_unseen(&mut self, at: usize) -> Result<()> {
        let w = &self.tables[at];
        let seen_before = w.counts.rows - w.counts.added;
        if seen_before >= w.before {
            return Ok(());
        }
        let table = w.table;
        let gone: Vec<(i64, Before)> = self
            .tx
            .prepare(&format!(
                "SELECT rowid, id, {} FROM {}",
                refs::noted_column(table).unwrap_or("NULL"),
                table.name()
            ))?
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    Before {
                        id: r.get(1)?,
                        noted: r.get(2)?,
                    },
                ))
            })?
            .filter(|found| match found {
                Ok((rowid, _)) => !w.seen.contains(*rowid),
                Err(_) => true,
            })
            .collect::<Result<_, _>>()?;
        let delete = format!("DELETE FROM {} WHERE rowid = ?1", table.name());
        for (rowid, before) in &gone {
            self.tx.prepare_cached(&delete)?.execute([rowid])?;
            self.list(table, before, None)?;
        }
        self.tables[at].counts.removed = gone.len() as u64;
        Ok(())
    }
}

/// The parameters of a row's update or insert: `key` (rowid or id), its
/// JSON text, the snapshot, then its typed columns.
fn row_params<'a>(
    key: impl Into<SqlRef<'a>>,
    row: &'a CheckedRow,
    snapshot: i64,
) -> impl Iterator<Item = SqlRef<'a>> {
    [
        key.into(),
        SqlRef::from(row.data.as_str()),
        SqlRef::from(snapshot),
    ]
    .into_iter()
    .chain(row.typed.iter().map(SqlRef::from))
}

/// The position of `table` in [`Table::ALL`].
fn table_index(table: Table) -> usize {
    Table::ALL.iter().position(|t| *t == table).unwrap_or(0)
}

/// A table's virtual generated columns, taken out of its schema while a
/// first snapshot fills it. SQLite computes every generated column of a row
/// it inserts, read or not: for `stickers`, eight `json_extract` calls per
/// row, about a tenth of a first snapshot's CPU. Virtual columns are not
/// stored (<https://sqlite.org/gencol.html>), so the rows are the same
/// bytes with or without them in the schema: their `CREATE TABLE` text is
/// changed in place as <https://sqlite.org/lang_altertable.html#otheralter>
/// allows for changes that leave the stored content alone, and put back
/// byte for byte before the snapshot derives its refs. Both happen inside
/// the snapshot's transaction: no other connection, and no catalog a crash
/// leaves, ever sees the table without its columns.
struct VirtualColumns {
    table: &'static str,
    /// The table's `CREATE TABLE` text, with its virtual columns.
    sql: String,
}

/// A column as `PRAGMA table_xinfo` gives it: name, declared type, NOT
/// NULL, default, position in the primary key, hidden ([`VIRTUAL`]).
type ColumnInfo = (String, String, bool, Option<String>, i64, i64);

/// `table_xinfo`'s `hidden` of a virtual generated column
/// (<https://sqlite.org/pragma.html#pragma_table_xinfo>).
const VIRTUAL: i64 = 2;

impl VirtualColumns {
    /// Takes the virtual columns of `table` out of its schema; `None` (the
    /// schema untouched) unless they are its last columns and the text
    /// without them declares exactly the columns it stores.
    fn hide(tx: &Transaction, table: &'static str) -> Result<Option<VirtualColumns>> {
        let sql: String = tx.query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )?;
        let columns = column_info(tx, table)?;
        let is_virtual = |c: &ColumnInfo| c.5 == VIRTUAL;
        let stored = columns.iter().take_while(|c| !is_virtual(c)).count();
        if stored == columns.len() || !columns[stored..].iter().all(is_virtual) {
            return Ok(None);
        }
        let Some(cut) = sql.find(&format!(",\n    {} ", columns[stored].0)) else {
            return Ok(None);
        };
        set_table_sql(tx, table, &format!("{}\n)", &sql[..cut]))?;
        if column_info(tx, table)? != columns[..stored] {
            set_table_sql(tx, table, &sql)?;
            tracing::debug!("{table}: its generated columns stay while the rows go in");
            return Ok(None);
        }
        tracing::debug!("{table}: generated columns left out while the rows go in");
        Ok(Some(VirtualColumns { table, sql }))
    }

    /// Puts the columns back.
    fn restore(self, tx: &Transaction) -> Result<()> {
        set_table_sql(tx, self.table, &self.sql)
    }
}

fn column_info(tx: &Transaction, table: &str) -> Result<Vec<ColumnInfo>> {
    let mut stmt = tx.prepare(
        "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?1)",
    )?;
    let columns = stmt
        .query_map([table], |r| ColumnInfo::try_from(r))?
        .collect::<Result<_, _>>()?;
    Ok(columns)
}

/// Sets the `CREATE TABLE` text of `table`; every connection reads the
/// schema again (as after migration 12).
fn set_table_sql(tx: &Transaction, table: &str, sql: &str) -> Result<()> {
    let version: i64 = tx.pragma_query_value(None, "schema_version", |r| r.get(0))?;
    tx.pragma_update(None, "writable_schema", true)?;
    tx.execute(
        "UPDATE sqlite_schema SET sql = ?1 WHERE type = 'table' AND name = ?2",
        [sql, table],
    )?;
    tx.pragma_update(None, "writable_schema", false)?;
    tx.pragma_update(None, "schema_version", version.wrapping_add(1))?;
    Ok(())
}

/// The value of the typed column `column` of a row, as text.
fn typed_value(table: Table, row: &CheckedRow, column: &str) -> Option<String> {
    let i = refs::typed_columns(table)
        .iter()
        .position(|c| *c == column)?;
    match row.typed.get(i)? {
        rusqlite::types::Value::Text(s) => Some(s.clone()),
        rusqlite::types::Value::Integer(n) => Some(n.to_string()),
        rusqlite::types::Value::Real(f) => Some(f.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions whose ids share a hash, and sessions past the ones kept,
    /// are told apart by the catalog: with every id of one hash, or with
    /// one session kept, a first snapshot still gives each sticker's ref
    /// the env of its session (none for a session without one or unknown,
    /// as deriving finds it), and [`SessionEnvs`] answers from memory where
    /// the sessions of a hash share their env.
    #[test]
    fn sessions_of_one_hash_keep_their_envs() {
        let mut envs = SessionEnvs {
            key: |_| 7,
            ..SessionEnvs::default()
        };
        envs.insert("a", Some("prod".into()));
        envs.insert("b", Some("prod".into()));
        assert!(matches!(envs.get("b"), SessionEnv::Found(Some("prod"))));
        envs.insert("c", None);
        assert!(matches!(envs.get("a"), SessionEnv::Ambiguous));
        let mut envs = SessionEnvs::default();
        envs.insert("a", None);
        assert!(matches!(envs.get("a"), SessionEnv::Found(None)));
        assert!(matches!(envs.get("z"), SessionEnv::Unknown));
        let mut envs = SessionEnvs {
            most: 1,
            ..SessionEnvs::default()
        };
        envs.insert("a", Some("prod".into()));
        envs.insert("b", Some("test".into()));
        assert!(matches!(envs.get("a"), SessionEnv::Found(Some("prod"))));
        assert!(matches!(envs.get("b"), SessionEnv::Ambiguous));
        assert!(matches!(envs.get("z"), SessionEnv::Ambiguous));

        let colliding = SessionEnvs {
            key: |_| 7,
            ..SessionEnvs::default()
        };
        let one_kept = SessionEnvs {
            most: 1,
            ..SessionEnvs::default()
        };
        for envs in [colliding, one_kept] {
            assert_eq!(
                sticker_envs(envs),
                ["t1:prod", "t2:test", "t3:-", "t4:-", "t5:-", "t6:-"]
            );
        }
    }

    /// The env of each sticker's ref after a first snapshot of a few rows
    /// that remembers the envs of sessions in `envs`, as `id:env`.
    fn sticker_envs(envs: SessionEnvs) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut catalog = Catalog::open_or_create(dir.path()).expect("catalog");
        let mut writer = SnapshotWriter::begin(&mut catalog, "test", &[]).expect("begin");
        writer.sticker_refs = Some(envs);
        let rows = [
            (Table::Sessions, r#"{"id":"s1","env":"prod"}"#),
            (Table::Sessions, r#"{"id":"s2","env":"test"}"#),
            (Table::Sessions, r#"{"id":"s3","env":""}"#),
            (Table::Sessions, r#"{"id":"s4","env":null}"#),
            (
                Table::Stickers,
                r#"{"id":"t1","session_id":"s1","telegram_file_id":"F1"}"#,
            ),
            (
                Table::Stickers,
                r#"{"id":"t2","session_id":"s2","result_storage_path":"k/2"}"#,
            ),
            (
                Table::Stickers,
                r#"{"id":"t3","session_id":"s3","telegram_file_id":"F3"}"#,
            ),
            (
                Table::Stickers,
                r#"{"id":"t4","session_id":"s4","telegram_file_id":"F4"}"#,
            ),
            (
                Table::Stickers,
                r#"{"id":"t5","session_id":"s9","telegram_file_id":"F5"}"#,
            ),
            (Table::Stickers, r#"{"id":"t6","telegram_file_id":"F6"}"#),
            (Table::Stickers, r#"{"id":"t7","session_id":"s1"}"#),
        ];
        writer
            .apply(SourceEvent::Began {
                taken_at: "2025-01-01T00:00:00Z".into(),
                exports: false,
            })
            .expect("began");
        for (table, text) in rows {
            writer
                .apply(SourceEvent::from_json_text(table, text.into()))
                .expect("row");
        }
        writer.finish(false).expect("finish");
        catalog
            .conn()
            .prepare(
                "SELECT t.id || ':' || coalesce(r.env, '-') FROM refs_core r
                 JOIN stickers t ON t.rowid = r.row WHERE r.kind = 0 ORDER BY t.id",
            )
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("refs")
    }

    /// Virtual columns leave a table's schema and come back byte for byte,
    /// the rows written meanwhile reading them after; a table whose virtual
    /// columns are not its last keeps its schema as it is.
    #[test]
    fn virtual_columns_leave_and_come_back_byte_for_byte() {
        let mut conn = rusqlite::Connection::open_in_memory().expect("sqlite");
        conn.execute_batch(
            "CREATE TABLE t (\n    id TEXT PRIMARY KEY NOT NULL,\n    data TEXT NOT NULL,\n    \
             a INTEGER AS (json_extract(data, '$.a')),\n    b TEXT AS (json_extract(data, '$.b'))\n);
             CREATE TABLE u (\n    id TEXT,\n    a TEXT AS (id),\n    data TEXT\n);",
        )
        .expect("tables");
        let tx = conn.transaction().expect("tx");
        let sql = |table: &str| -> String {
            tx.query_row(
                "SELECT sql FROM sqlite_schema WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .expect("sql")
        };
        let (t_before, u_before) = (sql("t"), sql("u"));
        let hidden = VirtualColumns::hide(&tx, "t")
            .expect("hide")
            .expect("hidden");
        assert_eq!(column_info(&tx, "t").expect("columns").len(), 2);
        assert_eq!(
            sql("t"),
            "CREATE TABLE t (\n    id TEXT PRIMARY KEY NOT NULL,\n    data TEXT NOT NULL\n)"
        );
        tx.execute(
            "INSERT INTO t(id, data) VALUES ('x', '{\"a\": 5, \"b\": \"z\"}')",
            [],
        )
        .expect("insert");
        hidden.restore(&tx).expect("restore");
        assert_eq!(sql("t"), t_before);
        let ab: (i64, String) = tx
            .query_row("SELECT a, b FROM t WHERE id = 'x'", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("typed");
        assert_eq!(ab, (5, "z".to_string()));
        assert!(VirtualColumns::hide(&tx, "u").expect("hide").is_none());
        assert_eq!(sql("u"), u_before);
        assert_eq!(column_info(&tx, "u").expect("columns").len(), 3);
    }
}
