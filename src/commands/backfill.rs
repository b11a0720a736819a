//! `backfill`: the database repair of SPEC §6.
//!
//! For every ref without a storage key the file is uploaded to the bot's
//! bucket at its mirror key, checked there, and only then is the key written
//! into the row, with a guard (`… AND col IS NULL`) so a value the bot wrote
//! meanwhile is left alone. Every change is journaled in the catalog before
//! it is made, so `--undo` can revert exactly what we wrote and a killed run
//! loses nothing. Without `--apply` nothing is changed anywhere: the dry run
//! reads the current values and says what `--apply` would do.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use super::Context;
use crate::blobs::BlobStore;
use crate::bot::{
    Inserted, KeyCell, NewStickerRow, STICKER_KEY_COLUMN, Written, key_column, written_column,
};
use crate::catalog::Catalog;
use crate::catalog::backfill::{self as q, Change, JournalAction, JournalState};
use crate::error::{Error, ExitStatus, Result};
use crate::layout::{Layout, dest_key};
use crate::object_check::{Check, check_object};
use crate::refs::{RefClass, Table};
use crate::source::postgres;
use crate::stores::{self, Role, Store};
use crate::transfer::run_units;
use crate::upload::{object_attributes, put_file, refused_key};

pub struct BackfillOptions {
    pub db: String,
    pub to: String,
    pub apply: bool,
    pub undo: bool,
    pub sync_stickers: bool,
    pub jobs: usize,
}

/// One thing backfill does (or would do) for one ref.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub class: String,
    #[serde(rename = "ref")]
    pub ref_: String,
    /// `set` (upload, then write the key), `reuse` (write an existing key),
    /// `upload_only` (a dangling key: the file goes back, no row changes),
    /// `insert` (`--sync-stickers`), `undo`.
    pub action: &'static str,
    pub table: Option<String>,
    pub id: Option<String>,
    pub column: Option<String>,
    pub key: Option<String>,
    pub upload: bool,
    /// What happened (or, in a dry run, would happen).
    pub outcome: String,
    pub failed: bool,
}

impl Step {
    fn new(class: &str, ref_: String, action: &'static str) -> Step {
        Step {
            class: class.to_string(),
            ref_,
            action,
            table: None,
            id: None,
            column: None,
            key: None,
            upload: false,
            outcome: String::new(),
            failed: false,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct BackfillReport {
    pub apply: bool,
    pub undo: bool,
    /// Per class, the number of steps per outcome.
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    pub failed: u64,
    pub steps: Vec<Step>,
}

impl BackfillReport {
    /// Incomplete when some step failed.
    pub fn exit_status(&self) -> ExitStatus {
        ExitStatus::incomplete_if(self.failed > 0)
    }
}

/// A step with what it needs to be carried out.
struct Work {
    step: Step,
    change: Option<Change>,
    /// (sha256, size, type) of the blob to upload at `step.key`.
    blob: Option<(String, u64, String)>,
    insert: Option<NewStickerRow>,
}

/// Whether `--db` names a PostgreSQL database (a URL, or libpq's
/// `key=value` form) rather than a directory of CSV exports.
fn is_connection_string(db: &str) -> bool {
    db.starts_with("postgres://")
        || db.starts_with("postgresql://")
        || (crate::redact::conninfo::starts_as_pairs(db) && !std::path::Path::new(db).exists())
}

const WOULD_WRITE: &str = "would write";
const WRITTEN: &str = "written";
const ALREADY: &str = "already written";
const LEFT_ALONE: &str = "set by someone else: left alone";
const NAMED_ALREADY: &str = "a stickers row names this file already: nothing added";

pub fn backfill(ctx: &Context, opts: &BackfillOptions) -> Result<BackfillReport> {
    if !is_connection_string(&opts.db) {
        // Neither a URL nor a directory: said as snapshot says it.
        crate::source::SourceSpec::parse(&opts.db, ctx.db_origin)?;
        return Err(Error::Usage(format!(
            "{} {}: backfill writes to the database, so it needs a postgres:// connection string (a directory of CSV exports can only be snapshotted)",
            ctx.db_origin,
            crate::redact::url(&opts.db)
        )));
    }
    crate::store_url::refuse_archive_overlap(&opts.to, &ctx.archive, "--to")?;
    let mut catalog = Catalog::open_existing(&ctx.archive)?;
    ctx.warn_unknown_envs(&catalog)?;
    if opts.apply {
        crate::store_url::create_local_dir(&opts.to, "--to")?;
    }
    let store = Arc::new(stores::open(&opts.to, Role::To)?);
    ctx.runtime.block_on(stores::check(&store, Role::To))?;
    let client = Arc::new(ctx.runtime.block_on(postgres::connect(&opts.db))?);
    let blobs = Arc::new(BlobStore::new(&ctx.archive));
    let works = if opts.undo {
        undo_works(&catalog, &ctx.env_param())?
    } else {
        plan(&catalog, &ctx.env_param(), opts.sync_stickers)?
    };
    let mut report = BackfillReport {
        apply: opts.apply,
        undo: opts.undo,
        ..BackfillReport::default()
    };
    // A step that failed already, or that has nothing to carry out, is only reported.
    let (ready, refused): (Vec<Work>, Vec<Work>) = works
        .into_iter()
        .partition(|w| !w.step.failed && (w.change.is_some() || w.blob.is_some()));
    report.steps.extend(refused.into_iter().map(|w| w.step));

    if opts.apply {
        let tx = catalog.conn_mut().transaction()?;
        let changes: Vec<&Change> = ready.iter().filter_map(|w| w.change.as_ref()).collect();
        if !opts.undo {
            q::plan_changes(&tx, &changes)?;
        }
        tx.commit()?;
    }
    // Inserts go one at a time, after the keys they name are written.
    let (mut inserts, updates): (Vec<Work>, Vec<Work>) =
        ready.into_iter().partition(|w| w.insert.is_some());
    for (phase, mut works) in [updates, Vec::new()].into_iter().enumerate() {
        let jobs = if phase == 0 {
            opts.jobs
        } else {
            works = std::mem::take(&mut inserts);
            hold_back_inserts(&mut works, &report.steps);
            1
        };
        ctx.progress.start(
            if opts.apply {
                "backfilling"
            } else {
                "checking"
            },
            Some(works.len() as u64),
        );
        let (store, blobs, client) = (store.clone(), blobs.clone(), client.clone());
        let (apply, undo) = (opts.apply, opts.undo);
        let steps = &mut report.steps;
        run_units(
            &ctx.runtime,
            ctx.progress.as_ref(),
            works.into_iter().map(Ok),
            jobs,
            move |work| {
                let (store, blobs, client) = (store.clone(), blobs.clone(), client.clone());
                async move {
                    let outcome = if undo {
                        undo_one(&client, &work, apply).await
                    } else {
                        carry_out(&client, &store, &blobs, &work, apply).await
                    };
                    (work, outcome)
                }
            },
            |batch| {
                let tx = catalog.conn_mut().transaction()?;
                for (mut work, outcome) in batch {
                    let (text, state) = match outcome {
                        Ok((text, state)) => (text, state),
                        Err(reason) => {
                            work.step.failed = true;
                            (reason, Some(JournalState::Failed))
                        }
                    };
                    if let (true, Some(change), Some(state)) = (apply, &work.change, state) {
                        let reason = work.step.failed.then_some(text.as_str());
                        q::set_change_state(&tx, change, state, reason)?;
                    }
                    work.step.outcome = text;
                    steps.push(work.step);
                }
                tx.commit()?;
                Ok(())
            },
        )?;
        ctx.progress.finish();
    }
    report
        .steps
        .sort_by(|a, b| (&a.class, &a.ref_, a.action).cmp(&(&b.class, &b.ref_, b.action)));
    for step in &report.steps {
        let outcome = if step.failed {
            "failed".to_string()
        } else {
            step.outcome.clone()
        };
        *report
            .counts
            .entry(step.class.clone())
            .or_default()
            .entry(outcome)
            .or_default() += 1;
        report.failed += u64::from(step.failed);
    }
    Ok(report)
}

/// What backfill must do, from the catalog.
fn plan(catalog: &Catalog, envs: &Option<String>, sync_stickers: bool) -> Result<Vec<Work>> {
    let mut works = Vec::new();
    let mut session_keys: BTreeMap<String, String> = BTreeMap::new();
    for c in q::candidates(catalog.conn(), envs)? {
        let class = c.place.class.name();
        let mut step = Step::new(class, c.label.clone(), "set");
        let unfetched = || {
            c.reason
                .clone()
                .map(|r| format!("the file cannot be had: {r}"))
                .unwrap_or_else(|| {
                    format!(
                        "the file is not fetched yet ({}): run `starchive fetch`",
                        c.state.name()
                    )
                })
        };
        if c.dangling {
            step.action = "upload_only";
            step.key = c.place.storage_key.clone();
            step.upload = true;
            if c.blob.is_none() {
                step.failed = true;
                step.outcome = unfetched();
            }
            works.push(Work {
                step,
                change: None,
                blob: c.blob.clone(),
                insert: None,
            });
            continue;
        }
        let Some((table, column)) = key_column(c.place.class) else {
            continue;
        };
        let row_id = match table {
            Table::PackBatches => c.place.pack_batch_id.clone(),
            _ => Some(c.place.row_id.clone()),
        };
        let Some(row_id) = row_id else {
            step.action = "upload_only";
            step.outcome = "no pack_batches row to record the sheet's key in: left as is".into();
            step.key = None;
            works.push(Work {
                step,
                change: None,
                blob: None,
                insert: None,
            });
            continue;
        };
        step.table = Some(table.name().to_string());
        step.id = Some(row_id.clone());
        step.column = Some(column.to_string());
        let key = match (&c.place.sticker_key, &c.blob) {
            (Some(existing), _) => {
                step.action = "reuse";
                Ok(existing.clone())
            }
            (None, Some((sha, _, kind))) => {
                step.upload = true;
                dest_key(Layout::Mirror, &c.place, sha, kind).map_err(|reason| {
                    format!("{reason}: backfill cannot name a key for this row, left as it is")
                })
            }
            (None, None) => Err(unfetched()),
        };
        match key {
            Ok(key) => {
                if c.place.class == RefClass::SessionSticker {
                    session_keys.insert(c.place.row_id.clone(), key.clone());
                }
                step.key = Some(key.clone());
                let change = Change {
                    action: JournalAction::Set,
                    table: table.name().to_string(),
                    row_id,
                    column: column.to_string(),
                    value: key,
                    session_id: c.place.session_id.clone(),
                };
                let blob = if step.upload { c.blob.clone() } else { None };
                works.push(Work {
                    step,
                    change: Some(change),
                    blob,
                    insert: None,
                });
            }
            Err(reason) => {
                step.failed = true;
                step.outcome = reason;
                works.push(Work {
                    step,
                    change: None,
                    blob: None,
                    insert: None,
                });
            }
        }
    }
    if sync_stickers {
        let mut seen_files = HashSet::new();
        for s in q::session_stickers(catalog.conn(), envs)? {
            if s.has_sticker_row || !seen_files.insert(s.telegram_file_id.clone()) {
                continue;
            }
            let key = s
                .storage_key
                .clone()
                .or_else(|| session_keys.get(&s.session_id).cloned());
            let mut step = Step {
                table: Some(Table::Stickers.name().into()),
                key: key.clone(),
                ..Step::new(
                    RefClass::SessionSticker.name(),
                    format!("sessions/{}", s.session_id),
                    "insert",
                )
            };
            let Some(key) = key else {
                step.failed = true;
                step.outcome = "no storage key for this sticker: no stickers row added".into();
                works.push(Work {
                    step,
                    change: None,
                    blob: None,
                    insert: None,
                });
                continue;
            };
            let row =
                NewStickerRow::new(&s.session_id, s.user_id.clone(), &s.telegram_file_id, &key);
            step.id = Some(row.id.clone());
            step.column = Some(STICKER_KEY_COLUMN.into());
            let change = Change {
                action: JournalAction::Insert,
                table: Table::Stickers.name().into(),
                row_id: row.id.clone(),
                column: STICKER_KEY_COLUMN.into(),
                value: key,
                session_id: Some(s.session_id.clone()),
            };
            works.push(Work {
                step,
                change: Some(change),
                blob: None,
                insert: Some(row),
            });
        }
    }
    Ok(works)
}

fn undo_works(catalog: &Catalog, envs: &Option<String>) -> Result<Vec<Work>> {
    let changes = q::standing_changes(catalog.conn(), envs)?;
    // The journal is a file users can edit: only what backfill writes is undone.
    if let Some(c) = changes
        .iter()
        .find(|c| !written_column(&c.table, &c.column))
    {
        return Err(Error::Config(format!(
            "the backfill journal names {:?}.{:?}, which backfill never writes: the catalog was altered; nothing was undone",
            c.table, c.column
        )));
    }
    Ok(changes
        .into_iter()
        .map(|c| Work {
            step: Step {
                table: Some(c.table.clone()),
                id: Some(c.row_id.clone()),
                column: Some(c.column.clone()),
                key: Some(c.value.clone()),
                ..Step::new(&c.table, format!("{}/{}", c.table, c.row_id), "undo")
            },
            insert: (c.action == JournalAction::Insert).then(|| NewStickerRow {
                id: c.row_id.clone(),
                user_id: None,
                session_id: String::new(),
                telegram_file_id: String::new(),
                result_storage_path: c.value.clone(),
            }),
            change: Some(c),
            blob: None,
        })
        .collect())
}

type Outcome = Result<(String, Option<JournalState>), String>;

/// A `stickers` row names the key its session's step uploads (or reuses):
/// when that step failed, the object may be missing, so the row is not
/// added (it fails, and is journaled so, when carried out).
fn hold_back_inserts(inserts: &mut [Work], done: &[Step]) {
    let failed: HashSet<(&str, &str)> = done
        .iter()
        .filter(|s| s.failed && s.action != "insert")
        .map(|s| (s.class.as_str(), s.ref_.as_str()))
        .collect();
    for w in inserts {
        if failed.contains(&(w.step.class.as_str(), w.step.ref_.as_str())) {
            w.step.failed = true;
            w.step.outcome =
                "the sticker's file could not be put at its key: no stickers row added".into();
        }
    }
}

/// Uploads (and checks) the file, then writes the key with its guard.
async fn carry_out(
    client: &tokio_postgres::Client,
    store: &Store,
    blobs: &BlobStore,
    work: &Work,
    apply: bool,
) -> Outcome {
    if work.step.failed {
        return Err(work.step.outcome.clone());
    }
    if !apply {
        return dry_run(client, store, work).await;
    }
    let mut uploaded = false;
    if let (Some(key), Some((sha, size, kind))) = (&work.step.key, &work.blob) {
        uploaded = ensure_object(store, blobs, key, sha, *size, kind).await?;
    }
    let Some(change) = &work.change else {
        let text = if uploaded {
            "uploaded"
        } else {
            "already in the bucket"
        };
        return Ok((text.into(), None));
    };
    if let Some(row) = &work.insert {
        return Ok(match row.insert(client).await? {
            Inserted::Now => (WRITTEN.into(), Some(JournalState::Written)),
            Inserted::Already => (ALREADY.into(), Some(JournalState::Written)),
            Inserted::NamedElsewhere => (NAMED_ALREADY.into(), Some(JournalState::Kept)),
        });
    }
    Ok(match cell(change).write(client, &change.value).await? {
        Written::Now => (WRITTEN.into(), Some(JournalState::Written)),
        Written::Already => (ALREADY.into(), Some(JournalState::Written)),
        Written::Other => (LEFT_ALONE.into(), Some(JournalState::Kept)),
    })
}

/// The cell of the bot's database a change writes.
fn cell(change: &Change) -> KeyCell<'_> {
    KeyCell {
        table: &change.table,
        column: &change.column,
        row_id: &change.row_id,
    }
}

/// What `carry_out` would answer, from reads only (the same words).
async fn dry_run(client: &tokio_postgres::Client, store: &Store, work: &Work) -> Outcome {
    let Some(change) = &work.change else {
        // An upload only: `--apply` skips an object that is there already.
        if let (Some(key), Some((sha, size, _))) = (&work.step.key, &work.blob)
            && matches!(
                check_object(store, key, sha, *size, false).await,
                Check::Good
            )
        {
            return Ok(("already in the bucket".into(), None));
        }
        return Ok(("would upload".into(), None));
    };
    if let Some(row) = &work.insert {
        let text = match row.would_insert(client).await? {
            Inserted::Already => ALREADY,
            Inserted::NamedElsewhere => NAMED_ALREADY,
            Inserted::Now => "would insert",
        };
        return Ok((text.into(), None));
    }
    let text = match cell(change).would_write(client, &change.value).await? {
        Written::Now => WOULD_WRITE,
        Written::Already => ALREADY,
        Written::Other => LEFT_ALONE,
    };
    Ok((text.into(), None))
}

/// Sets back to NULL (or removes the row we added) where our value still stands.
async fn undo_one(client: &tokio_postgres::Client, work: &Work, apply: bool) -> Outcome {
    let Some(c) = &work.change else {
        return Ok(("nothing to undo".into(), None));
    };
    let cell = cell(c);
    if !apply {
        return Ok((
            if cell.holds(client, &c.value).await? {
                "would set back to NULL"
            } else {
                "changed since: would be left alone"
            }
            .into(),
            None,
        ));
    }
    Ok(
        if cell.undo(client, &c.value, work.insert.is_some()).await? {
            ("undone".into(), Some(JournalState::Undone))
        } else {
            (
                "changed since: left alone".into(),
                Some(JournalState::Changed),
            )
        },
    )
}

/// The object at `key` holds the blob: uploaded unless already there, then
/// checked. Returns whether it was uploaded.
async fn ensure_object(
    store: &Store,
    blobs: &BlobStore,
    key: &str,
    sha: &str,
    size: u64,
    kind: &str,
) -> Result<bool, String> {
    if matches!(
        check_object(store, key, sha, size, false).await,
        Check::Good
    ) {
        return Ok(false);
    }
    let path = store.path(key)?;
    put_file(
        store,
        &path,
        &blobs.path(sha),
        size,
        object_attributes(store, sha, kind),
    )
    .await
    .map_err(|reason| match refused_key(key, &reason) {
        // Backfill writes the key the bot's column will hold: no other
        // key would do.
        true => format!("{reason}; the bucket refuses that key: the row is left as it is"),
        false => reason,
    })?;
    match check_object(store, key, sha, size, false).await {
        Check::Good => Ok(true),
        Check::Missing(p) | Check::Bad(p) => {
            Err(format!("uploaded {key}, but it does not check: {p}"))
        }
    }
}

impl std::fmt::Display for BackfillReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match (self.undo, self.apply) {
            (false, false) => "backfill dry run (nothing changed; --apply does this)",
            (false, true) => "backfill",
            (true, false) => "undo dry run (nothing changed; --undo --apply does this)",
            (true, true) => "undo",
        };
        writeln!(f, "{mode}:")?;
        for s in &self.steps {
            let target = match (&s.table, &s.id, &s.column) {
                (Some(t), Some(id), Some(c)) => format!("{t} {id} {c}"),
                _ => "-".into(),
            };
            let upload = if s.upload { " (upload)" } else { "" };
            writeln!(
                f,
                "  {:<16} {:<12} {target} = {}{upload}: {}",
                s.class,
                s.action,
                s.key.as_deref().unwrap_or("-"),
                if s.failed {
                    format!("FAILED: {}", s.outcome)
                } else {
                    s.outcome.clone()
                }
            )?;
        }
        for (class, counts) in &self.counts {
            let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
            writeln!(f, "{class}: {}", counts.join(", "))?;
        }
        if self.steps.is_empty() {
            writeln!(f, "nothing to do")?;
        }
        Ok(())
    }
}
