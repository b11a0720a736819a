//! Catalog queries of the push and verify stages.

use rusqlite::{Connection, OptionalExtension, params};

use super::{ENV_FILTER, ObjectState, PlacementState};
use crate::error::Result;
use crate::layout::{Layout, RefPlace};

/// The identity of a store URL as typed, `None` when it is none
/// (`crate::store_url::identity`, given by the caller: the catalog opens no store).
pub type IdentityOf = fn(&str) -> Option<String>;

/// A fetched ref, with what its key depends on.
pub struct FetchedRef {
    pub id: i64,
    pub place: RefPlace,
    pub sha256: String,
    pub size: u64,
    pub kind: String,
}

/// Records the destination by its identity ([`crate::store_url`]) and
/// returns its id, after folding into it the rows that name the same store
/// ([`fold_legacy`]).
pub fn destination(
    conn: &Connection,
    identity: &str,
    identity_of: IdentityOf,
    layout: Layout,
) -> Result<i64> {
    fold_legacy(conn, identity, identity_of)?;
    conn.execute(
        "INSERT INTO destinations(url, layout, canonical) VALUES (?1, ?2, 1)
         ON CONFLICT(url) DO UPDATE SET layout = excluded.layout, canonical = 1",
        params![identity, layout.name()],
    )?;
    Ok(conn.query_row(
        "SELECT id FROM destinations WHERE url = ?1",
        [identity],
        |r| r.get(0),
    )?)
}

/// The destination of this identity, if one was recorded: (id, layout).
pub fn find_destination(
    conn: &Connection,
    identity: &str,
    identity_of: IdentityOf,
) -> Result<Option<(i64, String)>> {
    fold_legacy(conn, identity, identity_of)?;
    Ok(conn
        .query_row(
            "SELECT id, layout FROM destinations WHERE url = ?1",
            [identity],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// Whether a push placed refs at destination `dest` (a verify that found
/// objects there before any push records the destination too).
pub fn has_placements(conn: &Connection, dest: i64) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM placements WHERE dest_id = ?1)",
        [dest],
        |r| r.get(0),
    )?)
}

/// The layout of the destination of this identity once it holds something
/// of this archive's (an object pushed, or a manifest written); `None`
/// before, however often a push to it failed.
pub fn held_layout(conn: &Connection, identity: &str) -> Result<Option<Layout>> {
    let name: Option<String> = conn
        .query_row(
            "SELECT layout FROM destinations d WHERE url = ?1
               AND (manifest_sha256 IS NOT NULL OR manifest_size IS NOT NULL
                    OR EXISTS (SELECT 1 FROM objects o WHERE o.dest_id = d.id AND o.state = 'pushed'))",
            [identity],
            |r| r.get(0),
        )
        .optional()?;
    Ok(name.as_deref().and_then(Layout::parse))
}

/// Folds the rows an older starchive recorded by the URL as typed
/// (`canonical = 0`) whose URL names the store of `identity` into one row
/// of that identity: their objects and placements join it (its own win).
///
/// A relative path is read from the current directory, which need not be
/// the one it was typed in; so the row's manifest record is cleared, and
/// the next push checks every object against a listing before it trusts
/// what the folded rows say.
pub fn fold_legacy(conn: &Connection, identity: &str, identity_of: IdentityOf) -> Result<()> {
    let mut stmt = conn.prepare("SELECT id, url FROM destinations WHERE canonical = 0")?;
    let same: Vec<i64> = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
        .filter_map(|row| match row {
            Ok((id, url)) => (identity_of(&url).as_deref() == Some(identity)).then_some(Ok(id)),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    let Some(&first) = same.first() else {
        return Ok(());
    };
    let tx = conn.unchecked_transaction()?;
    let keep: i64 = tx
        .query_row(
            "SELECT id FROM destinations WHERE url = ?1",
            [identity],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(first);
    tx.execute(
        "UPDATE destinations SET url = ?2, canonical = 1, manifest_size = NULL,
                manifest_etag = NULL, manifest_sha256 = NULL
         WHERE id = ?1",
        params![keep, identity],
    )?;
    for id in same.into_iter().filter(|&id| id != keep) {
        tx.execute(
            "INSERT OR IGNORE INTO objects(dest_id, key, sha256, size, state, reason, updated_at, written)
             SELECT ?1, key, sha256, size, state, reason, updated_at, written FROM objects WHERE dest_id = ?2",
            params![keep, id],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO placements(dest_id, ref_id, key, state, reason)
             SELECT ?1, ref_id, key, state, reason FROM placements WHERE dest_id = ?2",
            params![keep, id],
        )?;
        tx.execute("DELETE FROM placements WHERE dest_id = ?1", [id])?;
        tx.execute("DELETE FROM objects WHERE dest_id = ?1", [id])?;
        tx.execute("DELETE FROM destinations WHERE id = ?1", [id])?;
    }
    tx.commit()?;
    Ok(())
}

/// The eight columns a [`RefPlace`] is read from (`refs r`), for [`place_at`].
/// A session sticker's `sticker_key` is the key of a `stickers` row with the
/// same `file_id` (SPEC §5), found by the hash of the `file_id` first.
pub(crate) const PLACE_COLUMNS: &str = "r.class, r.row_id, r.slot, r.session_id, r.user_id,
    r.pack_batch_id, r.storage_key,
    CASE WHEN r.class = 'session_sticker' AND r.telegram_file_id IS NOT NULL THEN
        (SELECT o.storage_key FROM refs o
         WHERE o.fid_hash = r.fid_hash AND o.class = 'sticker'
           AND o.telegram_file_id = r.telegram_file_id
           AND o.storage_key IS NOT NULL
         ORDER BY o.row_id LIMIT 1)
    END";

/// Reads a [`RefPlace`] from [`PLACE_COLUMNS`] starting at column `at`.
pub(crate) fn place_at(r: &rusqlite::Row, at: usize) -> rusqlite::Result<RefPlace> {
    Ok(RefPlace {
        class: r.get(at)?,
        row_id: r.get(at + 1)?,
        slot: r.get(at + 2)?,
        session_id: r.get(at + 3)?,
        user_id: r.get(at + 4)?,
        pack_batch_id: r.get(at + 5)?,
        storage_key: r.get(at + 6)?,
        sticker_key: r.get(at + 7)?,
    })
}

/// Every fetched ref in scope, in a stable order (the one that owns a key
/// first), one at a time; with `placed_at`, only those a push placed at
/// that destination.
pub fn for_each_fetched_ref(
    conn: &Connection,
    envs: &Option<String>,
    placed_at: Option<i64>,
    mut each: impl FnMut(FetchedRef) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(&format!(
        "SELECT r.id, {PLACE_COLUMNS}, r.sha256, b.size, b.type
         FROM refs r JOIN blobs b ON b.sha256 = r.sha256
         WHERE r.state = 'fetched' AND {ENV_FILTER}
           AND (?2 IS NULL OR EXISTS (
               SELECT 1 FROM placements p WHERE p.dest_id = ?2 AND p.ref_id = r.id))
         ORDER BY r.storage_key IS NULL, r.class, r.row_id, r.slot"
    ))?;
    let rows = stmt.query_map(params![envs, placed_at], |r| {
        Ok(FetchedRef {
            id: r.get(0)?,
            place: place_at(r, 1)?,
            sha256: r.get(9)?,
            size: r.get(10)?,
            kind: r.get(11)?,
        })
    })?;
    for row in rows {
        each(row?)?;
    }
    Ok(())
}

/// Creates, empty, the temp tables a plan is built in.
///
/// A plan holds a row per fetched ref and per destination key, so it lives
/// in SQLite's temp store (a file, read through a bounded page cache) rather
/// than in memory: a push's memory does not grow with the number of refs.
/// Temp tables belong to this connection and vanish with it.
///
/// `plan_objects.state`: `pushed`, the destination holds the object;
/// `pending`, to push, unless an object of the right size is found at its
/// key; `replace`, to push whatever is found there, because the catalog knows
/// the key held other bytes (a ref whose file changed, same size or not, or
/// an object verify found missing or bad); `foreign`, not pushed, because
/// the key holds an object of another size that starchive never wrote there.
/// `recorded`: push wrote (or tried to write) an object at the key
/// (`objects.written`), and may overwrite what it finds there.
pub fn create_plan_tables(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.plan_objects;
         DROP TABLE IF EXISTS temp.plan_refs;
         DROP TABLE IF EXISTS temp.plan_keys;
         CREATE TEMP TABLE plan_objects (
             key    TEXT PRIMARY KEY NOT NULL,
             sha256 TEXT NOT NULL,
             size   INTEGER NOT NULL,
             kind   TEXT NOT NULL,
             refs   INTEGER NOT NULL,
             state  TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pushed', 'pending', 'replace', 'foreign')),
             recorded INTEGER NOT NULL DEFAULT 0
         ) WITHOUT ROWID;
         CREATE TEMP TABLE plan_refs (
             ref_id INTEGER PRIMARY KEY,
             key    TEXT,
             reason TEXT
         );
         CREATE TEMP TABLE plan_keys (
             seq    INTEGER PRIMARY KEY,
             ref_id INTEGER NOT NULL,
             key    TEXT NOT NULL,
             sha256 TEXT NOT NULL,
             size   INTEGER NOT NULL,
             kind   TEXT NOT NULL
         );",
    )?;
    Ok(())
}

/// Adds ref `ref_id` to the plan at `key`, as the next ref in the order
/// that decides who owns a key ([`settle_keys`] places it).
pub fn key_in_plan(
    conn: &Connection,
    ref_id: i64,
    key: &str,
    sha256: &str,
    size: u64,
    kind: &str,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO temp.plan_keys(ref_id, key, sha256, size, kind) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![ref_id, key, sha256, size, kind])?;
    Ok(())
}

/// Places every ref of [`key_in_plan`] at once: a key gets the bytes of the
/// first ref given for it, with every ref of those bytes; a ref with other
/// bytes at a key so owned is refused, with the sha256 found there. Set
/// based: per ref, a statement or three cost more than the sorts of these.
pub fn settle_keys(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "INSERT INTO temp.plan_objects(key, sha256, size, kind, refs)
         SELECT key, sha256, size, kind, n FROM (
             SELECT key, sha256, size, kind, n,
                    row_number() OVER (PARTITION BY key ORDER BY first) AS rank
             FROM (SELECT key, sha256, size, kind, count(*) AS n, min(seq) AS first
                   FROM temp.plan_keys GROUP BY key, sha256, size, kind))
         WHERE rank = 1;
         INSERT INTO temp.plan_refs(ref_id, key, reason)
         SELECT k.ref_id, k.key, CASE WHEN o.sha256 = k.sha256 THEN NULL
             ELSE 'key ' || k.key || ' already holds other bytes ('
                  || substr(o.sha256, 1, 12) || ') from another ref' END
         FROM temp.plan_keys k JOIN temp.plan_objects o ON o.key = k.key;
         DROP TABLE temp.plan_keys;",
    )?;
    Ok(())
}

/// Records in the plan that ref `ref_id` gets no key, and why.
pub fn refuse_in_plan(conn: &Connection, ref_id: i64, reason: &str) -> Result<()> {
    conn.prepare_cached("INSERT INTO temp.plan_refs(ref_id, reason) VALUES (?1, ?2)")?
        .execute(params![ref_id, reason])?;
    Ok(())
}

/// Sets the state of every planned object from what the catalog recorded at
/// its key at `dest` (see [`create_plan_tables`]). Unless `trusted`, no
/// record makes an object `pushed`: it must be found again. Where push wrote
/// the object, a failed record (an upload that failed, an object verify
/// found missing or bad) or other bytes recorded is replaced whatever a
/// listing finds there; an object only taken for present is never replaced.
pub fn settle_plan(conn: &Connection, dest: i64, trusted: bool) -> Result<()> {
    conn.execute(
        "UPDATE temp.plan_objects AS p SET recorded = o.written, state = CASE
             WHEN ?2 AND o.state = 'pushed' AND o.sha256 = p.sha256 AND o.size = p.size
                THEN 'pushed'
             WHEN o.written AND (o.state = 'failed' OR o.sha256 <> p.sha256) THEN 'replace'
             ELSE 'pending' END
         FROM objects o WHERE o.dest_id = ?1 AND o.key = p.key",
        params![dest, trusted],
    )?;
    Ok(())
}

/// Writes every planned ref's placement at `dest`: pushed where its object
/// is, failed where it gets none, pending otherwise. Rows that already say
/// so are left untouched, so that a no-op push writes nothing.
pub fn write_placements(conn: &Connection, dest: i64) -> Result<()> {
    // `WHERE true`: without it SQLite would read `ON CONFLICT` as a join constraint.
    conn.execute(
        "INSERT INTO placements(dest_id, ref_id, key, state, reason)
         SELECT ?1, r.ref_id, r.key,
                CASE WHEN r.reason IS NOT NULL THEN 'failed'
                     WHEN p.state = 'pushed' THEN 'pushed'
                     ELSE 'pending' END,
                r.reason
         FROM temp.plan_refs r
         LEFT JOIN temp.plan_objects p ON r.reason IS NULL AND p.key = r.key
         WHERE true
         ON CONFLICT(dest_id, ref_id) DO UPDATE SET
            key = excluded.key, state = excluded.state, reason = excluded.reason
         WHERE placements.key IS NOT excluded.key OR placements.state IS NOT excluded.state
            OR placements.reason IS NOT excluded.reason",
        [dest],
    )?;
    Ok(())
}

/// What a settled plan holds, in refs and in work.
pub struct PlanCounts {
    /// Refs placed at objects the destination holds.
    pub refs_pushed: u64,
    /// Refs that get no object.
    pub refs_refused: u64,
    /// Distinct blobs of the objects still to push.
    pub blobs_to_push: u64,
}

pub fn plan_counts(conn: &Connection) -> Result<PlanCounts> {
    Ok(conn.query_row(
        "SELECT (SELECT coalesce(sum(refs), 0) FROM temp.plan_objects WHERE state = 'pushed'),
                (SELECT count(*) FROM temp.plan_refs WHERE reason IS NOT NULL),
                (SELECT count(DISTINCT sha256) FROM temp.plan_objects WHERE state IN ('pending', 'replace'))",
        [],
        |r| {
            Ok(PlanCounts {
                refs_pushed: r.get(0)?,
                refs_refused: r.get(1)?,
                blobs_to_push: r.get(2)?,
            })
        },
    )?)
}

/// Whether the plan puts an object still to push at `key`.
pub fn is_planned_to_push(conn: &Connection, key: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM temp.plan_objects
             WHERE key = ?1 AND state IN ('pending', 'replace'))",
        )?
        .query_row([key], |r| r.get(0))?)
}

/// Every directory holding a key still to push, once, as a key prefix:
/// `a/b/`, or an empty string for the root.
pub fn for_each_dir_to_push(
    conn: &Connection,
    mut each: impl FnMut(&str) -> Result<()>,
) -> Result<()> {
    // rtrim drops the characters of the key's last segment, up to its last
    // `/`: the only character not in the set it is given.
    let mut stmt = conn.prepare(
        "SELECT DISTINCT rtrim(key, replace(key, '/', '')) FROM temp.plan_objects
         WHERE state IN ('pending', 'replace')",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let dir: String = r.get(0)?;
        each(&dir)?;
    }
    Ok(())
}

/// The planned object at `key` that an object found there may stand for
/// (one not to replace whatever is there).
pub struct PendingObject {
    pub sha256: String,
    pub size: u64,
    /// Refs placed at the key.
    pub refs: u64,
    /// Starchive has a record of writing at the key ([`create_plan_tables`]).
    pub recorded: bool,
}

/// The [`PendingObject`] at `key`, if any.
pub fn planned_pending(conn: &Connection, key: &str) -> Result<Option<PendingObject>> {
    Ok(conn
        .prepare_cached(
            "SELECT sha256, size, refs, recorded FROM temp.plan_objects
             WHERE key = ?1 AND state = 'pending'",
        )?
        .query_row([key], |r| {
            Ok(PendingObject {
                sha256: r.get(0)?,
                size: r.get(1)?,
                refs: r.get(2)?,
                recorded: r.get(3)?,
            })
        })
        .optional()?)
}

/// Leaves the planned object at `key` unpushed, because the destination
/// holds there an object starchive did not write: the refs of its bytes
/// placed there fail with `reason`. No object row is written, so that no
/// later push takes it for one of starchive's and overwrites it.
pub fn refuse_foreign(
    conn: &Connection,
    dest: i64,
    key: &str,
    sha256: &str,
    reason: &str,
) -> Result<()> {
    conn.prepare_cached("UPDATE temp.plan_objects SET state = 'foreign' WHERE key = ?1")?
        .execute([key])?;
    conn.prepare_cached(
        "UPDATE placements INDEXED BY placements_key SET state = 'failed', reason = ?3
         WHERE dest_id = ?1 AND key = ?2
           AND (SELECT r.sha256 FROM refs r WHERE r.id = placements.ref_id) = ?4",
    )?
    .execute(params![dest, key, crate::redact::text(reason), sha256])?;
    Ok(())
}

/// Marks the planned object at `key` as held by the destination.
pub fn set_planned_pushed(conn: &Connection, key: &str) -> Result<()> {
    conn.prepare_cached("UPDATE temp.plan_objects SET state = 'pushed' WHERE key = ?1")?
        .execute([key])?;
    Ok(())
}

/// Indexes the objects still to push by blob, for [`keys_to_push_after`].
/// Built once the plan is settled rather than kept as it is built, which a
/// no-op push would pay for and never use.
pub fn index_keys_to_push(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS temp.plan_objects_to_push
         ON plan_objects(sha256, key) WHERE state IN ('pending', 'replace')",
    )?;
    Ok(())
}

/// A key the plan still has to push, with its blob.
pub struct KeyToPush {
    pub sha256: String,
    pub size: u64,
    pub kind: String,
    pub key: String,
    /// Refs placed at the key.
    pub refs: u64,
}

/// The keys still to push of the first `blobs` blobs after `after`, by
/// sha256 then key: a blob's keys all come in one page.
pub fn keys_to_push_after(
    conn: &Connection,
    after: Option<&str>,
    blobs: usize,
) -> Result<Vec<KeyToPush>> {
    let mut stmt = conn.prepare_cached(
        "SELECT sha256, size, kind, key, refs FROM temp.plan_objects
         WHERE state IN ('pending', 'replace') AND sha256 IN (
             SELECT DISTINCT sha256 FROM temp.plan_objects
             WHERE state IN ('pending', 'replace') AND sha256 > coalesce(?1, '')
             ORDER BY sha256 LIMIT ?2)
         ORDER BY sha256, key",
    )?;
    let rows = stmt.query_map(params![after, blobs as i64], |r| {
        Ok(KeyToPush {
            sha256: r.get(0)?,
            size: r.get(1)?,
            kind: r.get(2)?,
            key: r.get(3)?,
            refs: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An object the plan puts at a destination.
pub struct PlannedObject {
    pub key: String,
    pub sha256: String,
    pub size: u64,
}

pub fn planned_object_count(conn: &Connection) -> Result<u64> {
    Ok(conn.query_row("SELECT count(*) FROM temp.plan_objects", [], |r| r.get(0))?)
}

/// The first `limit` planned objects after key `after`, by key.
pub fn planned_objects_after(
    conn: &Connection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<PlannedObject>> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, sha256, size FROM temp.plan_objects WHERE key > coalesce(?1, '')
         ORDER BY key LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit as i64], |r| {
        Ok(PlannedObject {
            key: r.get(0)?,
            sha256: r.get(1)?,
            size: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Refs in scope that are not fetched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unfetched {
    pub pending: u64,
    /// Failed at fetch: no blob (the bucket or Telegram gave none).
    pub failed_at_fetch: u64,
    /// Failed at pull: they name the blob the destination pulled from did
    /// not give whole (missing or bad there).
    pub failed_at_pull: u64,
}

/// Pending refs in scope that the push to the destination shown as `url`
/// could not place there (their key cannot be named in its layout): no
/// pull from there brings them. (How many, the reason given for one.)
pub fn unplaced_at(
    conn: &Connection,
    envs: &Option<String>,
    url: &str,
) -> Result<(u64, Option<String>)> {
    Ok(conn.query_row(
        &format!(
            "SELECT count(*), min(p.reason) FROM refs
             JOIN placements p ON p.ref_id = refs.id
             JOIN destinations d ON d.id = p.dest_id
             WHERE d.url = ?2 AND refs.state = 'pending' AND p.state = 'failed'
               AND p.key IS NULL AND {ENV_FILTER}"
        ),
        params![envs, url],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// Refs in scope that are not fetched, by what leaves them so.
pub fn unfetched_counts(conn: &Connection, envs: &Option<String>) -> Result<Unfetched> {
    Ok(conn.query_row(
        &format!(
            "SELECT count(*) FILTER (WHERE state = 'pending'),
                    count(*) FILTER (WHERE state = 'failed' AND sha256 IS NULL),
                    count(*) FILTER (WHERE state = 'failed' AND sha256 IS NOT NULL)
             FROM refs WHERE {ENV_FILTER}"
        ),
        [envs],
        |r| {
            Ok(Unfetched {
                pending: r.get(0)?,
                failed_at_fetch: r.get(1)?,
                failed_at_pull: r.get(2)?,
            })
        },
    )?)
}

/// Records the object at `key` and the state of every ref placed there;
/// `written`: push wrote it (else it took one found there for it, and a
/// record that it wrote there is kept).
pub fn set_object(
    tx: &Connection,
    dest: i64,
    key: &str,
    sha256: &str,
    size: u64,
    written: bool,
    outcome: Result<(), &str>,
) -> Result<()> {
    // Scrubbed here, where every push failure enters the catalog.
    let (state, placed, reason) = match outcome {
        Ok(()) => (ObjectState::Pushed, PlacementState::Pushed, None),
        Err(reason) => (
            ObjectState::Failed,
            PlacementState::Failed,
            Some(crate::redact::text(reason)),
        ),
    };
    tx.prepare_cached(
        "INSERT INTO objects(dest_id, key, sha256, size, state, reason, updated_at, written)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(dest_id, key) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,
            state = excluded.state, reason = excluded.reason, updated_at = excluded.updated_at,
            written = max(written, excluded.written)",
    )?
    .execute(params![
        dest,
        key,
        sha256,
        size,
        state,
        reason,
        super::now_text(),
        written
    ])?;
    // Only the refs of these bytes: a ref refused at this key because another
    // ref's bytes own it stays failed. Without statistics, SQLite 3.50 would
    // walk this destination's every placement by primary key (dest_id) for
    // each object: quadratic.
    tx.prepare_cached(
        "UPDATE placements INDEXED BY placements_key SET state = ?3, reason = ?4
         WHERE dest_id = ?1 AND key = ?2
           AND (SELECT r.sha256 FROM refs r WHERE r.id = placements.ref_id) = ?5",
    )?
    .execute(params![dest, key, placed, reason, sha256])?;
    Ok(())
}

pub fn manifest_sha256(conn: &Connection, dest: i64) -> Result<Option<String>> {
    Ok(conn.query_row(
        "SELECT manifest_sha256 FROM destinations WHERE id = ?1",
        [dest],
        |r| r.get(0),
    )?)
}

/// The manifest last written to `dest` as the store described it once
/// written: (size, etag).
pub fn manifest_record(conn: &Connection, dest: i64) -> Result<Option<(u64, Option<String>)>> {
    Ok(conn.query_row(
        "SELECT manifest_size, manifest_etag FROM destinations WHERE id = ?1",
        [dest],
        |r| {
            let etag: Option<String> = r.get(1)?;
            Ok(r.get::<_, Option<u64>>(0)?.map(|size| (size, etag)))
        },
    )?)
}

/// Records the manifest just written to `dest`: the sha256 of its text, and
/// its size and etag as the store describes it.
pub fn set_manifest_record(
    conn: &Connection,
    dest: i64,
    sha: &str,
    size: u64,
    etag: Option<&str>,
) -> Result<()> {
    conn.execute(
        "UPDATE destinations SET manifest_sha256 = ?2, manifest_size = ?3, manifest_etag = ?4
         WHERE id = ?1",
        params![dest, sha, size, etag],
    )?;
    Ok(())
}

/// The manifest's counts: refs in scope, and those pushed to `dest`.
pub fn manifest_counts(conn: &Connection, dest: i64, envs: &Option<String>) -> Result<(u64, u64)> {
    Ok(conn.query_row(
        &format!(
            "SELECT count(*), coalesce(sum(p.state = 'pushed'), 0)
             FROM refs r LEFT JOIN placements p ON p.ref_id = r.id AND p.dest_id = ?2
             WHERE {ENV_FILTER}"
        ),
        params![envs, dest],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// One line of the manifest: a ref in scope and where it is at the
/// destination. Its fields are in the order of their names, the order the
/// manifest's lines always had (`serde_json`'s maps are sorted), so that
/// the text, and the sha256 the catalog keeps of it, stay the same.
#[derive(serde::Serialize)]
pub struct ManifestRef {
    pub class: String,
    pub env: Option<String>,
    pub key: Option<String>,
    pub pack_batch_id: Option<String>,
    pub pack_index: Option<i64>,
    pub row_id: String,
    pub session_id: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub slot: Option<String>,
    pub state: String,
    pub storage_key: Option<String>,
    pub table: String,
    pub telegram_file_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// Every line of the manifest, in its order.
pub fn for_each_manifest_ref(
    conn: &Connection,
    dest: i64,
    envs: &Option<String>,
    mut each: impl FnMut(&ManifestRef) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(&format!(
        "SELECT r.class, r.row_table, r.row_id, r.slot, r.session_id, r.pack_batch_id, r.pack_index,
                r.env, r.telegram_file_id, r.storage_key, p.key, p.state, r.sha256, b.size, b.type
         FROM refs r
         LEFT JOIN placements p ON p.ref_id = r.id AND p.dest_id = ?2
         LEFT JOIN blobs b ON b.sha256 = r.sha256
         WHERE {ENV_FILTER}
         ORDER BY r.class, r.row_table, r.row_id, r.slot"
    ))?;
    let mut rows = stmt.query(params![envs, dest])?;
    while let Some(r) = rows.next()? {
        let slot: String = r.get(3)?;
        let line = ManifestRef {
            class: r.get(0)?,
            table: r.get(1)?,
            row_id: r.get(2)?,
            slot: (!slot.is_empty()).then_some(slot),
            session_id: r.get(4)?,
            pack_batch_id: r.get(5)?,
            pack_index: r.get(6)?,
            env: r.get(7)?,
            telegram_file_id: r.get(8)?,
            storage_key: r.get(9)?,
            key: r.get(10)?,
            state: r
                .get::<_, Option<String>>(11)?
                .unwrap_or_else(|| PlacementState::Pending.name().into()),
            sha256: r.get(12)?,
            size: r.get(13)?,
            kind: r.get(14)?,
        };
        each(&line)?;
    }
    Ok(())
}

/// The `settings` key of what the last push that left destination `dest`
/// whole recorded (`push`'s fast path).
fn whole_push_key(dest: i64) -> String {
    format!("whole_push:{dest}")
}

/// What the last push that left `dest` whole recorded, if it still stands.
pub fn whole_push(conn: &Connection, dest: i64) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT value FROM settings WHERE key = ?1",
            [whole_push_key(dest)],
            |r| r.get(0),
        )
        .optional()?)
}

/// Records what a push that left `dest` whole saw, or (`None`) forgets it.
pub fn set_whole_push(conn: &Connection, dest: i64, record: Option<&str>) -> Result<()> {
    let key = whole_push_key(dest);
    match record {
        Some(record) => conn.execute(
            "INSERT INTO settings(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, record],
        )?,
        None => conn.execute("DELETE FROM settings WHERE key = ?1", [key])?,
    };
    Ok(())
}

/// The latest snapshot: (id, taken_at).
pub fn latest_snapshot(conn: &Connection) -> Result<Option<(i64, String)>> {
    Ok(conn
        .query_row(
            "SELECT id, taken_at FROM snapshots ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::ManifestRef;

    /// A manifest line keeps the text it always had (keys in name order, as
    /// `serde_json`'s maps write them): a push after an upgrade finds the
    /// manifest's sha256 unchanged and writes nothing.
    #[test]
    fn manifest_line_keys_in_name_order() {
        let some = |s: &str| Some(s.to_string());
        let line = ManifestRef {
            class: "session_sticker".into(),
            env: some("prod"),
            key: some("k/1.webp"),
            pack_batch_id: some("b"),
            pack_index: Some(3),
            row_id: "7".into(),
            session_id: some("s"),
            sha256: some("ab"),
            size: Some(12),
            slot: None,
            state: "pushed".into(),
            storage_key: some("sk"),
            table: "session_stickers".into(),
            telegram_file_id: some("f"),
            kind: some("image/webp"),
        };
        let text = serde_json::to_string(&line).unwrap();
        let as_map: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(text, serde_json::to_string(&as_map).unwrap());
        assert!(text.ends_with(r#""telegram_file_id":"f","type":"image/webp"}"#));
    }
}
