//! Catalog changes of the verify stage: what it finds missing or bad is
//! marked so that the next `fetch` or `push` does it again (SPEC §3).

use rusqlite::{Connection, OptionalExtension, params};

use super::ENV_FILTER;
use crate::error::Result;

/// The blobs `verify` re-hashes, (sha256, size) in sha256 order: those of
/// the fetched refs of the envs in `envs`. A failed ref may name a blob
/// that is not here (a pull whose source object was bad or missing keeps
/// its sha256 for the next pull), which is a failure `status` reports, not
/// a bad blob.
pub fn blobs_to_rehash(conn: &Connection, envs: &Option<String>) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT sha256, size FROM blobs
         WHERE sha256 IN (SELECT sha256 FROM refs WHERE state = 'fetched' AND {ENV_FILTER})
         ORDER BY sha256"
    ))?;
    let blobs = stmt
        .query_map([envs], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(blobs)
}

/// A local blob found missing or bad: every ref that names it (whatever its
/// env: the blob is gone for all) is pending again, and the blob's record is
/// removed, so that the next `fetch` downloads it again. Returns the refs.
pub fn forget_blob(conn: &Connection, sha256: &str) -> Result<u64> {
    let refs = conn
        .prepare_cached(
            "UPDATE refs_core SET state = 0, sha256 = NULL, source = NULL, reason = NULL,
                updated_at = ?2
             WHERE sha256 = unhex(?1)",
        )?
        .execute(params![sha256, super::now_text()])?;
    conn.prepare_cached("DELETE FROM blobs WHERE sha256 = ?1")?
        .execute([sha256])?;
    Ok(refs as u64)
}

/// An object found missing (`missing`) or bad at destination `dest`: its
/// record says failed (what it should hold kept), so that every `verify`
/// checks it again ([`add_recorded_objects_to_plan`]) until a push writes
/// it, and the refs placed there are pending again. Where push wrote it,
/// the next push replaces it whatever it finds there; where push took an
/// object found there for it, only a missing one is written (a push does
/// not overwrite what it did not write). Returns whether the next push
/// uploads it; without a record (never pushed there) nothing changes.
pub fn mark_object(
    conn: &Connection,
    dest: i64,
    key: &str,
    missing: bool,
    problem: &str,
) -> Result<bool> {
    let written: Option<bool> = conn
        .prepare_cached(
            "UPDATE objects SET state = 'failed', reason = ?3, updated_at = ?4
             WHERE dest_id = ?1 AND key = ?2 RETURNING written",
        )?
        .query_row(
            params![
                dest,
                key,
                crate::redact::text(&format!("verify: {problem}")),
                super::now_text()
            ],
            |r| r.get(0),
        )
        .optional()?;
    let Some(written) = written else {
        return Ok(false);
    };
    conn.prepare_cached(
        "UPDATE placements INDEXED BY placements_key SET state = 'pending', reason = NULL
         WHERE dest_id = ?1 AND key = ?2 AND state = 'pushed'",
    )?
    .execute(params![dest, key])?;
    Ok(written || missing)
}

/// Adds to the plan of what `dest` should hold every object recorded there
/// that refs are still placed at, whatever those refs' state: an object
/// whose ref went back to pending for a missing local blob is still checked,
/// and one verify found bad stays reported until a push replaces it.
/// Only the objects of refs of the envs in `envs`.
pub fn add_recorded_objects_to_plan(
    conn: &Connection,
    envs: &Option<String>,
    dest: i64,
) -> Result<()> {
    conn.execute(
        &format!(
            "INSERT OR IGNORE INTO temp.plan_objects(key, sha256, size, kind, refs)
             SELECT o.key, o.sha256, o.size, '', 0 FROM objects o
             WHERE o.dest_id = ?2 AND EXISTS (
                 SELECT 1 FROM placements p INDEXED BY placements_key
                 JOIN refs ON refs.id = p.ref_id
                 WHERE p.dest_id = o.dest_id AND p.key = o.key AND {ENV_FILTER})"
        ),
        params![envs, dest],
    )?;
    Ok(())
}
