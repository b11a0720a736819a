//! Catalog changes of the verify stage: what it finds missing or bad is
//! marked so that the next `fetch` or `push` does it again (SPEC §3).

use rusqlite::{Connection, params};

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
            "UPDATE refs SET state = 'pending', sha256 = NULL, source = NULL, reason = NULL,
                updated_at = ?2
             WHERE sha256 = ?1",
        )?
        .execute(params![sha256, super::now_text()])?;
    conn.prepare_cached("DELETE FROM blobs WHERE sha256 = ?1")?
        .execute([sha256])?;
    Ok(refs as u64)
}

/// What a destination was found to hold at a key it should hold.
pub enum Found<'a> {
    /// Nothing, or bytes of unknown hash: the next `push` compares the key
    /// with its listing and uploads it unless the right size is there.
    Unknown,
    /// Bytes hashing to (or described by sha256 metadata as) this: the next
    /// `push` replaces them whatever their size.
    Other { sha256: &'a str, size: u64 },
    /// Bytes of this size not written by starchive (no sha256 metadata where
    /// the store keeps it): recorded with an empty sha256, which no blob
    /// has, so that the next `push` replaces them.
    Foreign { size: u64 },
}

/// An object found missing or bad at destination `dest`: its record no
/// longer says pushed, and the refs placed there are pending again.
pub fn mark_object(
    conn: &Connection,
    dest: i64,
    key: &str,
    found: Found,
    problem: &str,
) -> Result<()> {
    let held = match found {
        Found::Unknown => None,
        Found::Other { sha256, size } => Some((sha256, size)),
        Found::Foreign { size } => Some(("", size)),
    };
    match held {
        None => conn
            .prepare_cached("DELETE FROM objects WHERE dest_id = ?1 AND key = ?2")?
            .execute(params![dest, key])?,
        Some((sha256, size)) => conn
            .prepare_cached(
                "INSERT INTO objects(dest_id, key, sha256, size, state, reason, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'failed', ?5, ?6)
                 ON CONFLICT(dest_id, key) DO UPDATE SET sha256 = excluded.sha256,
                    size = excluded.size, state = excluded.state, reason = excluded.reason,
                    updated_at = excluded.updated_at",
            )?
            .execute(params![
                dest,
                key,
                sha256,
                size,
                crate::redact::text(&format!("verify: {problem}")),
                super::now_text()
            ])?,
    };
    conn.prepare_cached(
        "UPDATE placements INDEXED BY placements_key SET state = 'pending', reason = NULL
         WHERE dest_id = ?1 AND key = ?2 AND state = 'pushed'",
    )?
    .execute(params![dest, key])?;
    Ok(())
}
