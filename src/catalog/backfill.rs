//! Catalog queries of the backfill stage: what lacks a key, and the journal
//! of every change made to the bot's database.

use rusqlite::{Connection, Transaction, params};

use super::ENV_FILTER;
use super::REF_LABEL_SQL;
use super::RefState;
use super::push::{PLACE_COLUMNS, place_at};
use crate::error::Result;
use crate::layout::RefPlace;

/// A ref with no storage key in the database, or a key the bucket lacks.
pub struct Candidate {
    pub label: String,
    pub place: RefPlace,
    pub telegram_file_id: Option<String>,
    pub dangling: bool,
    pub state: RefState,
    pub reason: Option<String>,
    /// (sha256, size, type) when fetched.
    pub blob: Option<(String, u64, String)>,
}

pub fn candidates(conn: &Connection, envs: &Option<String>) -> Result<Vec<Candidate>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {REF_LABEL_SQL}, {PLACE_COLUMNS}, r.telegram_file_id, r.key_dangling, r.state, r.reason, r.sha256, b.size, b.type
         FROM refs r LEFT JOIN blobs b ON b.sha256 = r.sha256
         WHERE r.class IN ('sticker', 'session_sticker', 'pack_sheet')
           AND (r.storage_key IS NULL OR r.key_dangling = 1)
           AND {ENV_FILTER}
         ORDER BY r.class, r.row_id"
    ))?;
    let rows = stmt.query_map([envs], |r| {
        let sha: Option<String> = r.get(13)?;
        let size: Option<u64> = r.get(14)?;
        let kind: Option<String> = r.get(15)?;
        Ok(Candidate {
            label: r.get(0)?,
            place: place_at(r, 1)?,
            telegram_file_id: r.get(9)?,
            dangling: r.get::<_, i64>(10)? != 0,
            state: r.get(11)?,
            reason: r.get(12)?,
            blob: match (sha, size, kind) {
                (Some(s), Some(n), Some(k)) => Some((s, n, k)),
                _ => None,
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Session stickers (with a file id) and whether a `stickers` row names their file.
pub struct SessionSticker {
    pub session_id: String,
    pub user_id: Option<String>,
    pub telegram_file_id: String,
    pub storage_key: Option<String>,
    pub has_sticker_row: bool,
}

pub fn session_stickers(conn: &Connection, envs: &Option<String>) -> Result<Vec<SessionSticker>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT r.row_id, r.user_id, r.telegram_file_id, r.storage_key,
                EXISTS (SELECT 1 FROM refs o WHERE o.fid_hash = r.fid_hash
                        AND o.class = 'sticker' AND o.telegram_file_id = r.telegram_file_id)
         FROM refs r
         WHERE r.class = 'session_sticker' AND r.telegram_file_id IS NOT NULL AND {ENV_FILTER}
         ORDER BY r.row_id"
    ))?;
    let rows = stmt.query_map([envs], |r| {
        Ok(SessionSticker {
            session_id: r.get(0)?,
            user_id: r.get(1)?,
            telegram_file_id: r.get(2)?,
            storage_key: r.get(3)?,
            has_sticker_row: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

super::sql_enum! {
    /// `backfill_journal.action`: what a change does to the bot's database.
    pub enum JournalAction {
        /// A storage key written into a NULL column.
        Set = "set",
        /// A `stickers` row added (`--sync-stickers`).
        Insert = "insert",
    }
}

super::sql_enum! {
    /// `backfill_journal.state`: where a change stands.
    pub enum JournalState {
        /// About to be tried (or tried by a run that was killed).
        Planned = "planned",
        /// Made, and ours: `--undo` reverts it.
        Written = "written",
        /// Someone else's value was there: left alone.
        Kept = "kept",
        /// It could not be made; `reason` says why.
        Failed = "failed",
        /// Reverted by `--undo`.
        Undone = "undone",
        /// Changed by someone else since: `--undo` left it alone.
        Changed = "changed",
    }
}

/// One change to the bot's database.
#[derive(Clone, Debug)]
pub struct Change {
    pub action: JournalAction,
    pub table: String,
    pub row_id: String,
    pub column: String,
    pub value: String,
    /// The session of the changed row (its env decides `--env`).
    pub session_id: Option<String>,
}

/// Journals changes before they are made, so that none can be made unrecorded:
/// every change about to be tried stands as `planned` (or `written`), the
/// states `--undo` looks at, until its outcome is recorded; a `kept` or
/// `changed` entry from an earlier run is tried again, and a run killed
/// after its write but before its outcome must not leave it hidden from undo.
pub fn plan_changes(tx: &Transaction, changes: &[&Change]) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO backfill_journal(action, table_name, row_id, column_name, value, state, planned_at, session_id)
         VALUES (?1, ?2, ?3, ?4, ?5, 'planned', ?6, ?7)
         ON CONFLICT(table_name, row_id, column_name, value) DO UPDATE SET
            state = CASE WHEN state = 'written' THEN state ELSE 'planned' END,
            session_id = coalesce(session_id, excluded.session_id)",
    )?;
    let now = super::now_text();
    for c in changes {
        stmt.execute(params![
            c.action,
            c.table,
            c.row_id,
            c.column,
            c.value,
            now,
            c.session_id
        ])?;
    }
    Ok(())
}

pub fn set_change_state(
    tx: &Transaction,
    c: &Change,
    state: JournalState,
    reason: Option<&str>,
) -> Result<()> {
    let now = super::now_text();
    let reason = reason.map(crate::redact::text);
    tx.prepare_cached(
        "UPDATE backfill_journal SET state = ?5, reason = ?6,
            written_at = CASE WHEN ?5 = 'written' THEN ?7 ELSE written_at END,
            undone_at = CASE WHEN ?5 = 'undone' THEN ?7 ELSE undone_at END
         WHERE table_name = ?1 AND row_id = ?2 AND column_name = ?3 AND value = ?4",
    )?
    .execute(params![
        c.table, c.row_id, c.column, c.value, state, reason, now
    ])?;
    Ok(())
}

/// Changes that may still stand in the database (written, or planned when a
/// run was killed), of rows whose session has one of `envs` (all when `None`).
/// A change journaled before its session was recorded takes the session of
/// its row in the catalog.
pub fn standing_changes(conn: &Connection, envs: &Option<String>) -> Result<Vec<Change>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT action, table_name, row_id, column_name, value, session_id FROM (
            SELECT j.*, (SELECT s.env FROM sessions s WHERE s.id = j.session_id) AS env
            FROM (SELECT id, action, table_name, row_id, column_name, value, state,
                         coalesce(session_id, CASE table_name
                             WHEN 'sessions' THEN row_id
                             WHEN 'stickers' THEN (SELECT session_id FROM stickers WHERE id = row_id)
                             WHEN 'pack_batches' THEN (SELECT session_id FROM pack_batches WHERE id = row_id)
                         END) AS session_id
                  FROM backfill_journal) j
         )
         WHERE state IN ('planned', 'written') AND {ENV_FILTER}
         ORDER BY id"
    ))?;
    let rows = stmt.query_map([envs], |r| {
        // The journal is a file users can edit: what is not an insert is a set.
        let action: String = r.get(0)?;
        Ok(Change {
            action: if action == JournalAction::Insert.name() {
                JournalAction::Insert
            } else {
                JournalAction::Set
            },
            table: r.get(1)?,
            row_id: r.get(2)?,
            column: r.get(3)?,
            value: r.get(4)?,
            session_id: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
