//! The gallery's queries.
//!
//! [`Scope::prepare`] copies what the site shows (the refs of the selected
//! envs with their blobs, the sessions and the pack batches) into TEMP tables
//! indexed by session, user and pack batch: the catalog has no such indexes,
//! and a page per user or per pack is then a lookup, not a scan. TEMP tables
//! live in SQLite's temporary database (spilled to a file past its cache),
//! so memory stays flat whatever the archive's size, and the catalog itself
//! is not changed. Each `for_each_*` streams rows from one statement into a
//! callback: no result set is held.

use rusqlite::{Connection, Row};

use crate::error::Result;

/// One ref as a gallery card shows it.
#[derive(Debug, Clone)]
pub struct Card {
    pub class: String,
    pub row_id: String,
    /// Which file of the row (`current` or an index for photos, else empty).
    pub slot: String,
    pub pack_index: Option<i64>,
    pub telegram_file_id: Option<String>,
    pub storage_key: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    /// The detected type of the blob: webp, png, jpg, webm, tgs or bin.
    pub kind: Option<String>,
}

/// One env of the selection with its volumes; or, with `env` `None`, the
/// rows of sessions with no env (`session_known`), or those whose session
/// is unknown (a ref or batch naming no session the catalog has).
#[derive(Debug, Clone)]
pub struct EnvRow {
    pub env: Option<String>,
    pub session_known: bool,
    pub users: u64,
    pub sessions: u64,
    pub pack_batches: u64,
    pub refs: u64,
    pub fetched: u64,
}

/// A user: every user id that a session, a pack batch or a ref names.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub user_id: Option<String>,
    pub sessions: u64,
    pub refs: u64,
}

/// A session of the selection.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub user_id: Option<String>,
    pub env: Option<String>,
    pub mode: Option<String>,
    pub created_at: Option<String>,
    /// The page that shows it, from the site's root, once recorded.
    pub page: Option<String>,
}

/// A pack batch: a `pack_batches` row, or a batch id that only stickers name.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub id: String,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub env: Option<String>,
    pub status: Option<String>,
    pub created_at: Option<String>,
    /// False when no `pack_batches` row has this id.
    pub known: bool,
    pub stickers: u64,
    pub fetched: u64,
    /// Positions in `0..=max(pack_index)` that no sticker holds.
    pub missing_positions: u64,
    /// Stickers beyond the first at a position.
    pub duplicate_positions: u64,
    /// The page that shows its session, once recorded.
    pub session_page: Option<String>,
}

/// The TEMP tables of one gallery run over `conn`.
pub struct Scope<'c> {
    conn: &'c Connection,
}

const CARD_COLUMNS: &str = "class, row_id, slot, pack_index, telegram_file_id, storage_key, \
                            state, reason, sha256, size, type";

/// The order of cards within a session: its sticker, its single stickers,
/// a sheet with no batch, photos.
const CLASS_ORDER: &str = "CASE class WHEN 'session_sticker' THEN 0 WHEN 'sticker' THEN 1 \
                           WHEN 'pack_sheet' THEN 2 ELSE 3 END";

const BATCH_COLUMNS: &str = "b.id, b.session_id, b.user_id, b.env, b.status, b.created_at, \
    b.known, coalesce(c.stickers, 0), coalesce(c.fetched, 0), coalesce(c.missing_positions, 0), \
    coalesce(c.duplicate_positions, 0), p.page";

impl<'c> Scope<'c> {
    /// Builds the TEMP tables for the envs in `envs` (a JSON array, or
    /// `None` for every env; see `Context::env_param`).
    pub fn prepare(conn: &'c Connection, envs: &Option<String>) -> Result<Scope<'c>> {
        // TEMP tables in a file (SQLite's default, said here because flat
        // memory depends on it), cached like the catalog.
        conn.pragma_update(None, "temp_store", "FILE")?;
        conn.execute_batch(
            "DROP TABLE IF EXISTS temp.g_refs;
             DROP TABLE IF EXISTS temp.g_sessions;
             DROP TABLE IF EXISTS temp.g_batches;
             DROP TABLE IF EXISTS temp.g_counts;
             DROP TABLE IF EXISTS temp.g_session_pages;",
        )?;
        conn.execute(
            "CREATE TEMP TABLE g_refs AS
             SELECT r.class, r.row_id, r.slot, r.session_id, r.user_id, r.env, r.pack_batch_id,
                    r.pack_index, r.telegram_file_id, r.storage_key, r.state, r.reason,
                    r.sha256, b.size, b.type,
                    r.env IS NOT NULL
                        OR EXISTS (SELECT 1 FROM sessions s WHERE s.id = r.session_id)
                        AS session_known
             FROM refs r LEFT JOIN blobs b ON b.sha256 = r.sha256
             WHERE ?1 IS NULL OR r.env IN (SELECT value FROM json_each(?1))",
            [envs],
        )?;
        conn.execute(
            "CREATE TEMP TABLE g_sessions AS
             SELECT id, user_id, env, mode, created_at FROM sessions
             WHERE ?1 IS NULL OR env IN (SELECT value FROM json_each(?1))",
            [envs],
        )?;
        conn.execute_batch(
            "CREATE INDEX temp.g_refs_batch ON g_refs(pack_batch_id, pack_index, row_id);
             CREATE INDEX temp.g_refs_session ON g_refs(session_id, pack_batch_id);
             CREATE INDEX temp.g_refs_user ON g_refs(user_id, pack_batch_id);
             CREATE UNIQUE INDEX temp.g_sessions_id ON g_sessions(id);
             CREATE INDEX temp.g_sessions_user ON g_sessions(user_id, created_at, id);
             CREATE TEMP TABLE g_session_pages (id TEXT PRIMARY KEY NOT NULL, page TEXT NOT NULL);",
        )?;
        // Batches of the selected envs, then batch ids that only refs name
        // (their stickers still make a pack), then the counts of each.
        conn.execute(
            "CREATE TEMP TABLE g_batches AS
             SELECT b.id, b.session_id, coalesce(b.user_id, s.user_id) AS user_id, s.env,
                    b.status, b.created_at, 1 AS known, s.id IS NOT NULL AS session_known
             FROM pack_batches b LEFT JOIN sessions s ON s.id = b.session_id
             WHERE ?1 IS NULL OR s.env IN (SELECT value FROM json_each(?1))",
            [envs],
        )?;
        conn.execute_batch(
            "CREATE UNIQUE INDEX temp.g_batches_id ON g_batches(id);
             INSERT INTO g_batches
             SELECT pack_batch_id, min(session_id), min(user_id), min(env), NULL, NULL, 0,
                    max(session_known)
             FROM g_refs
             WHERE pack_batch_id IS NOT NULL AND pack_batch_id NOT IN (SELECT id FROM g_batches)
             GROUP BY pack_batch_id;
             CREATE INDEX temp.g_batches_session ON g_batches(session_id, created_at, id);
             CREATE INDEX temp.g_batches_user ON g_batches(user_id, session_id);
             CREATE TEMP TABLE g_counts AS
             SELECT pack_batch_id AS id, count(*) AS stickers,
                    count(*) FILTER (WHERE state = 'fetched') AS fetched,
                    -- max - held + 1, in this order: no overflow even at i64::MAX.
                    CASE WHEN max(pack_index) >= 0
                         THEN max(pack_index)
                              - count(DISTINCT pack_index) FILTER (WHERE pack_index >= 0) + 1
                         ELSE 0 END AS missing_positions,
                    count(pack_index) - count(DISTINCT pack_index) AS duplicate_positions
             FROM g_refs WHERE class = 'sticker' AND pack_batch_id IS NOT NULL
             GROUP BY pack_batch_id;
             CREATE UNIQUE INDEX temp.g_counts_id ON g_counts(id);",
        )?;
        Ok(Scope { conn })
    }

    /// Every env of the selection, then the rows of no env: of sessions with
    /// none, and of sessions unknown.
    pub fn envs(&self) -> Result<Vec<EnvRow>> {
        let mut stmt = self.conn.prepare(
            "WITH e(env, known) AS (SELECT env, 1 FROM g_sessions
                                    UNION SELECT env, session_known FROM g_refs
                                    UNION SELECT env, session_known FROM g_batches)
             SELECT e.env, e.known,
                    (SELECT count(user_id) FROM (
                         SELECT user_id FROM g_sessions s WHERE s.env IS e.env AND e.known
                         UNION SELECT user_id FROM g_refs r
                         WHERE r.env IS e.env AND r.session_known = e.known)),
                    (SELECT count(*) FROM g_sessions s WHERE s.env IS e.env AND e.known),
                    (SELECT count(*) FROM g_batches b
                     WHERE b.env IS e.env AND b.session_known = e.known),
                    (SELECT count(*) FROM g_refs r
                     WHERE r.env IS e.env AND r.session_known = e.known),
                    (SELECT count(*) FROM g_refs r
                     WHERE r.env IS e.env AND r.session_known = e.known AND state = 'fetched')
             FROM e ORDER BY e.env IS NULL, e.env, e.known DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(EnvRow {
                env: r.get(0)?,
                session_known: r.get(1)?,
                users: r.get(2)?,
                sessions: r.get(3)?,
                pack_batches: r.get(4)?,
                refs: r.get(5)?,
                fetched: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every user, in id order (a NULL user id first).
    pub fn for_each_user(&self, mut each: impl FnMut(UserRow) -> Result<()>) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "WITH u(user_id) AS (SELECT user_id FROM g_sessions UNION SELECT user_id FROM g_refs
                                 UNION SELECT user_id FROM g_batches)
             SELECT u.user_id,
                    (SELECT count(*) FROM g_sessions s WHERE s.user_id IS u.user_id),
                    (SELECT count(*) FROM g_refs r WHERE r.user_id IS u.user_id)
             FROM u ORDER BY u.user_id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            each(UserRow {
                user_id: r.get(0)?,
                sessions: r.get(1)?,
                refs: r.get(2)?,
            })?;
        }
        Ok(())
    }

    /// Every session, by user, then time.
    pub fn for_each_session(&self, each: impl FnMut(SessionRow) -> Result<()>) -> Result<()> {
        self.sessions_where("1", &[], each)
    }

    /// The sessions of one user, by time.
    pub fn for_each_session_of(
        &self,
        user_id: Option<&str>,
        each: impl FnMut(SessionRow) -> Result<()>,
    ) -> Result<()> {
        self.sessions_where("s.user_id IS ?1", &[&user_id], each)
    }

    fn sessions_where(
        &self,
        condition: &str,
        params: &[&dyn rusqlite::ToSql],
        mut each: impl FnMut(SessionRow) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT s.id, s.user_id, s.env, s.mode, s.created_at, p.page
             FROM g_sessions s LEFT JOIN g_session_pages p ON p.id = s.id
             WHERE {condition} ORDER BY s.user_id, s.created_at, s.id"
        ))?;
        let mut rows = stmt.query(params)?;
        while let Some(r) = rows.next()? {
            each(SessionRow {
                id: r.get(0)?,
                user_id: r.get(1)?,
                env: r.get(2)?,
                mode: r.get(3)?,
                created_at: r.get(4)?,
                page: r.get(5)?,
            })?;
        }
        Ok(())
    }

    /// Every pack batch, in id order.
    pub fn for_each_batch(&self, each: impl FnMut(BatchRow) -> Result<()>) -> Result<()> {
        self.batches_where("1", &[], each)
    }

    /// The pack batches of one session, by time.
    pub fn for_each_batch_of_session(
        &self,
        session_id: &str,
        each: impl FnMut(BatchRow) -> Result<()>,
    ) -> Result<()> {
        self.batches_where("b.session_id = ?1", &[&session_id], each)
    }

    /// The pack batches of one user whose session is not in the selection.
    pub fn for_each_sessionless_batch_of(
        &self,
        user_id: Option<&str>,
        each: impl FnMut(BatchRow) -> Result<()>,
    ) -> Result<()> {
        self.batches_where(
            "b.user_id IS ?1 AND (b.session_id IS NULL
                                  OR b.session_id NOT IN (SELECT id FROM g_sessions))",
            &[&user_id],
            each,
        )
    }

    fn batches_where(
        &self,
        condition: &str,
        params: &[&dyn rusqlite::ToSql],
        mut each: impl FnMut(BatchRow) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {BATCH_COLUMNS} FROM g_batches b LEFT JOIN g_counts c ON c.id = b.id
             LEFT JOIN g_session_pages p ON p.id = b.session_id
             WHERE {condition} ORDER BY {}",
            if condition == "1" {
                "b.id"
            } else {
                "b.created_at, b.id"
            }
        ))?;
        let mut rows = stmt.query(params)?;
        while let Some(r) = rows.next()? {
            each(batch_row(r)?)?;
        }
        Ok(())
    }

    /// The stickers of a pack batch in `pack_index` order (stickers without
    /// a position last), then its sheet; with each, whether another sticker
    /// of the batch holds its position.
    pub fn for_each_card_of_batch(
        &self,
        batch_id: &str,
        mut each: impl FnMut(Card, bool) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {CARD_COLUMNS},
                    class = 'sticker' AND pack_index IS NOT NULL
                    AND (SELECT count(*) FROM g_refs x
                         WHERE x.pack_batch_id = g.pack_batch_id
                           AND x.pack_index = g.pack_index AND x.class = 'sticker') > 1
             FROM g_refs g WHERE pack_batch_id = ?1
             ORDER BY class = 'pack_sheet', pack_index IS NULL, pack_index, row_id"
        ))?;
        let mut rows = stmt.query([batch_id])?;
        while let Some(r) = rows.next()? {
            each(card(r)?, r.get(11)?)?;
        }
        Ok(())
    }

    /// Records the page that shows a session.
    pub fn set_session_page(&self, session_id: &str, page: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO g_session_pages(id, page) VALUES (?1, ?2)",
            [session_id, page],
        )?;
        Ok(())
    }

    /// The cards of a session that no pack batch shows: its sticker, its
    /// single stickers, a sheet that has no batch, photos.
    pub fn for_each_card_of_session(
        &self,
        session_id: &str,
        each: impl FnMut(Card) -> Result<()>,
    ) -> Result<()> {
        self.cards_where(
            "session_id = ?1 AND pack_batch_id IS NULL",
            &format!("{CLASS_ORDER}, slot, row_id"),
            &[&session_id],
            each,
        )
    }

    /// The cards of a user whose session is not in the selection and that no
    /// pack batch shows.
    pub fn for_each_sessionless_card_of(
        &self,
        user_id: Option<&str>,
        each: impl FnMut(Card) -> Result<()>,
    ) -> Result<()> {
        self.cards_where(
            "user_id IS ?1 AND pack_batch_id IS NULL
             AND (session_id IS NULL OR session_id NOT IN (SELECT id FROM g_sessions))",
            &format!("{CLASS_ORDER}, row_id, slot"),
            &[&user_id],
            each,
        )
    }

    fn cards_where(
        &self,
        condition: &str,
        order: &str,
        params: &[&dyn rusqlite::ToSql],
        mut each: impl FnMut(Card) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {CARD_COLUMNS} FROM g_refs WHERE {condition} ORDER BY {order}"
        ))?;
        let mut rows = stmt.query(params)?;
        while let Some(r) = rows.next()? {
            each(card(r)?)?;
        }
        Ok(())
    }
}

fn card(r: &Row<'_>) -> rusqlite::Result<Card> {
    Ok(Card {
        class: r.get(0)?,
        row_id: r.get(1)?,
        slot: r.get(2)?,
        pack_index: r.get(3)?,
        telegram_file_id: r.get(4)?,
        storage_key: r.get(5)?,
        state: r.get(6)?,
        reason: r.get(7)?,
        sha256: r.get(8)?,
        size: r.get(9)?,
        kind: r.get(10)?,
    })
}

fn batch_row(r: &Row<'_>) -> rusqlite::Result<BatchRow> {
    Ok(BatchRow {
        id: r.get(0)?,
        session_id: r.get(1)?,
        user_id: r.get(2)?,
        env: r.get(3)?,
        status: r.get(4)?,
        created_at: r.get(5)?,
        known: r.get(6)?,
        stickers: r.get(7)?,
        fetched: r.get(8)?,
        missing_positions: r.get(9)?,
        duplicate_positions: r.get(10)?,
        session_page: r.get(11)?,
    })
}
