//! The envs a destination holds (SPEC §3: `--env` limits every command).
//!
//! A push with `--env` places only those envs' refs at its destination; a
//! later push there with other envs adds theirs. What the destination holds
//! is the union, recorded per destination, so that its manifest lists every
//! ref placed there (not only the last push's) and its catalog copy holds
//! those envs' rows and refs and no other env's: a pull of it gives an
//! archive whose `plan`, `status`, `verify` and `check` speak of what the
//! destination holds. A push without `--env` makes the destination hold
//! every env from then on.

use std::collections::BTreeSet;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use crate::error::Result;

/// The `settings` key, in a catalog copy, of the envs it was cut to (a JSON
/// array); absent when it holds every env of the archive it was copied from.
pub const COPY_ENVS: &str = "copy_envs";

/// The `settings` key of the envs destination `dest` holds: a JSON array, or
/// `null` for every env.
fn scope_key(dest: i64) -> String {
    format!("dest_envs:{dest}")
}

/// Envs in the form [`super::ENV_FILTER`] takes: a JSON array, `None` for every env.
pub type Envs = Option<String>;

/// Parses [`Envs`] into a set; `None` stays every env. Text that is no
/// array of strings (a hand-edited setting) reads as every env: the wider
/// scope loses nothing.
fn parse(envs: &Envs) -> Option<BTreeSet<String>> {
    serde_json::from_str(envs.as_deref()?).ok()
}

fn to_param(envs: &Option<BTreeSet<String>>) -> Envs {
    envs.as_ref()
        .map(|set| serde_json::Value::from(set.iter().cloned().collect::<Vec<_>>()).to_string())
}

/// Records that a push with `envs` placed refs at `dest`, and returns what
/// the destination holds now: every env once any push there had no
/// `--env`, else the union of the envs pushed there. A destination pushed
/// to before this was recorded is taken to hold this push's envs.
pub fn widen(conn: &Connection, dest: i64, envs: &Envs) -> Result<Envs> {
    let key = scope_key(dest);
    let held: Option<Option<String>> = conn
        .query_row("SELECT value FROM settings WHERE key = ?1", [&key], |r| {
            r.get(0)
        })
        .optional()?
        .map(|value: String| (value != "null").then_some(value));
    let union = match (held.map(|h| parse(&h)), parse(envs)) {
        (Some(Some(mut held)), Some(more)) => {
            held.extend(more);
            Some(held)
        }
        (None, this) => this,
        _ => None,
    };
    let widened = to_param(&union);
    super::set_setting(conn, &key, widened.as_deref().unwrap_or("null"))?;
    Ok(widened)
}

/// The envs a catalog copy holds ([`COPY_ENVS`]): `None` for every env.
pub fn copy_envs(conn: &Connection) -> Result<Envs> {
    Ok(conn
        .query_row(
            "SELECT value FROM settings WHERE key = ?1",
            [COPY_ENVS],
            |r| r.get(0),
        )
        .optional()?)
}

/// Whether a destination holding `theirs` holds an env that a catalog copy
/// cut to `ours` lacks.
pub fn is_wider(theirs: &Envs, ours: &Envs) -> bool {
    match (parse(theirs), parse(ours)) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(theirs), Some(ours)) => !theirs.is_subset(&ours),
    }
}

/// A consistent copy of the catalog at `path` (`VACUUM INTO`), readable
/// while the catalog is written; with `envs`, cut to those envs
/// ([`cut_to_envs`]) and rebuilt, so that no page of the file keeps what
/// was cut.
pub fn copy_into(conn: &Connection, path: &Path, envs: &Envs) -> Result<()> {
    conn.execute("VACUUM INTO ?1", [path.to_string_lossy()])?;
    let was_cut = copy_envs(conn)?.is_some();
    if envs.is_none() && !was_cut {
        return Ok(());
    }
    let copy = Connection::open(path)?;
    // No WAL beside a file about to be compressed and uploaded.
    copy.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
    match envs {
        // Copied from a catalog that was itself cut (a pulled archive):
        // this copy is cut to nothing more.
        None => {
            copy.execute("DELETE FROM settings WHERE key = ?1", [COPY_ENVS])?;
        }
        Some(envs) => {
            let tx = copy.unchecked_transaction()?;
            cut_to_envs(&tx, envs)?;
            tx.commit()?;
            copy.execute_batch("VACUUM")?;
        }
    }
    Ok(())
}

/// Leaves in a catalog copy only what belongs to `envs` (a JSON array):
/// the sessions of those envs, the stickers and pack batches of those
/// sessions, their refs (with their placements and blobs), the objects
/// placed for them, and the journal of their backfill; and records
/// [`COPY_ENVS`].
fn cut_to_envs(conn: &Connection, envs: &str) -> Result<()> {
    // A row of no env (NULL or empty) is of none of `envs`.
    let kept = "coalesce(nullif(env, '') IN (SELECT value FROM json_each(?1)), 0)";
    // The journal first: a change's session is found through its row.
    conn.execute(
        &format!(
            "DELETE FROM backfill_journal WHERE coalesce(session_id, CASE table_name
                 WHEN 'sessions' THEN row_id
                 WHEN 'stickers' THEN (SELECT session_id FROM stickers WHERE id = row_id)
                 WHEN 'pack_batches' THEN (SELECT session_id FROM pack_batches WHERE id = row_id)
             END, '') NOT IN (SELECT id FROM sessions WHERE {kept})"
        ),
        [envs],
    )?;
    conn.execute(&format!("DELETE FROM sessions WHERE NOT {kept}"), [envs])?;
    for table in ["stickers", "pack_batches"] {
        conn.execute(
            &format!(
                "DELETE FROM {table} WHERE coalesce(session_id, '') NOT IN (SELECT id FROM sessions)"
            ),
            [],
        )?;
    }
    conn.execute(
        &format!("DELETE FROM placements WHERE ref_id IN (SELECT id FROM refs WHERE NOT {kept})"),
        [envs],
    )?;
    conn.execute(&format!("DELETE FROM refs_core WHERE NOT {kept}"), [envs])?;
    conn.execute_batch(
        "DELETE FROM objects WHERE NOT EXISTS (
             SELECT 1 FROM placements p WHERE p.dest_id = objects.dest_id AND p.key = objects.key);
         DELETE FROM blobs WHERE sha256 NOT IN (SELECT sha256 FROM refs WHERE sha256 IS NOT NULL);",
    )?;
    super::set_setting(conn, COPY_ENVS, envs)?;
    Ok(())
}
