//! Catalog queries of the fetch stage.

use std::collections::HashSet;

use rusqlite::{Connection, Transaction, params};

use super::BlobInfo;
use super::ENV_FILTER;
use crate::error::Result;

/// One bucket object to download, and the pending refs it serves.
pub struct KeyWork {
    pub key: String,
    pub refs: Vec<i64>,
}

/// One Telegram file to download: the envs of the pending refs it serves
/// (which say the bot, SPEC §1), in the order of their first ref.
pub struct FileIdWork {
    pub file_id: String,
    pub envs: Vec<EnvRefs>,
}

/// The pending refs of one env that a Telegram file serves.
pub struct EnvRefs {
    pub env: Option<String>,
    /// How many.
    pub refs: u64,
    /// The least id among them.
    pub first: i64,
}

/// `--retry-failed`: failed refs in scope are pending again, their keys re-checked.
pub fn retry_failed(conn: &Connection, envs: &Option<String>) -> Result<usize> {
    Ok(conn.execute(
        &format!(
            "UPDATE refs_core SET state = 0, reason = NULL, key_dangling = 0
             WHERE state = 2 AND {ENV_FILTER}"
        ),
        [envs],
    )?)
}

/// The reason [`fail_unservable`] gives.
const UNSERVABLE: &str =
    "the storage key is missing in the bucket and there is no Telegram file_id";

/// A fetch with a bucket reads again every key found missing before (the
/// bucket URL may have been wrong, or the bot has uploaded the object since):
/// refs in scope waiting on Telegram because of it, and refs failed for it
/// alone, are pending with their key not dangling. Returns how many.
pub fn retry_dangling(conn: &Connection, envs: &Option<String>) -> Result<usize> {
    Ok(conn.execute(
        &format!(
            "UPDATE refs_core SET state = 0, reason = NULL, key_dangling = 0
             WHERE key_dangling = 1
               AND (state = 0 OR (state = 2 AND reason = ?2))
               AND {ENV_FILTER}"
        ),
        params![envs, UNSERVABLE],
    )?)
}

/// Which of `keys` a ref in scope names as its storage key (one pass over the refs).
pub fn named_among(
    conn: &Connection,
    envs: &Option<String>,
    keys: &[String],
) -> Result<HashSet<String>> {
    let keys = serde_json::Value::from(keys).to_string();
    let mut stmt = conn.prepare(&format!(
        "SELECT DISTINCT storage_key FROM refs
         WHERE storage_key IN (SELECT value FROM json_each(?2)) AND {ENV_FILTER}"
    ))?;
    let rows = stmt.query_map(params![envs, keys], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether a ref in scope was read from the bucket: some key the rows name is there.
pub fn any_read_from_bucket(conn: &Connection, envs: &Option<String>) -> Result<bool> {
    Ok(conn.query_row(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM refs_core
                            WHERE state = 1 AND source = 'bucket' AND {ENV_FILTER})"
        ),
        [envs],
        |r| r.get(0),
    )?)
}

/// Resolves pending refs to blobs already fetched for the same file: the same
/// (present) storage key, or, for refs read through Telegram, the same
/// `file_id`, or the same `file_id` and key together. Returns how many refs
/// were resolved.
pub fn resolve_known(conn: &Connection, envs: &Option<String>) -> Result<usize> {
    // `refs_core` keeps hashes of keys and file_ids: the keys already read
    // are gathered by hash in one pass (the join gets an automatic index),
    // rather than a correlated subquery scanning every ref for every
    // pending ref, which is quadratic; a pending ref takes the blob of a
    // ref whose key (or file_id) is its own, compared in full ([`SAME_AS`]).
    let by_key = conn.execute(
        &format!(
            "UPDATE refs_core SET state = 1, reason = NULL, updated_at = ?2,
                sha256 = k.sha256, source = 'bucket'
             FROM (SELECT key_hash AS hash, min(sha256) AS sha256, id AS rep
                   FROM refs_core NOT INDEXED
                   WHERE key_hash IS NOT NULL AND key_dangling = 0
                     AND sha256 IS NOT NULL AND source = 'bucket'
                   GROUP BY key_hash) AS k
             WHERE refs_core.key_hash = k.hash AND refs_core.state = 0
               AND refs_core.key_dangling = 0 AND {ENV_FILTER}
               AND {}",
            same_as("storage_key")
        ),
        params![envs, super::now_text()],
    )?;
    // Likewise the file_ids already read, gathered in one pass over the
    // table (NOT INDEXED: through `refs_core_fid`, every ref is a random
    // read), then joined from a scan of the pending refs (`+` and NOT
    // INDEXED: not the other way round, which reads every ref of a known
    // file_id at random, nor every ref in the order of `refs_core_fid`,
    // which took 3.7 s at 1M refs with none pending). A
    // correlated search per pending ref visited every ref of its file_id:
    // a million refs on 1,000 file_ids took minutes.
    let by_file_id = conn.execute(
        &format!(
            "UPDATE refs_core NOT INDEXED SET state = 1, reason = NULL, updated_at = ?2,
                sha256 = k.sha256, source = k.source
             FROM (SELECT fid_hash AS hash, min(sha256) AS sha256, source, id AS rep
                   FROM refs_core NOT INDEXED
                   WHERE fid_hash IS NOT NULL AND sha256 IS NOT NULL
                   GROUP BY fid_hash) AS k
             WHERE +refs_core.fid_hash = k.hash AND refs_core.state = 0
               AND (refs_core.key_hash IS NULL OR refs_core.key_dangling = 1)
               AND {ENV_FILTER} AND {}",
            same_as("telegram_file_id")
        ),
        params![envs, super::now_text()],
    )?;
    // A ref with both a key and a file_id that another ref fetched from
    // Telegram names together (a `stickers` row `backfill --sync-stickers`
    // added for a session's sticker, with the key it wrote from that very
    // blob): the same file, by both names; also a ref whose key was
    // dangling and that Telegram served. Those may be many: the pending
    // refs are scanned (NOT INDEXED, `+`) rather than reached through
    // `refs_core_fid` from each of them at random.
    let by_both = conn.execute(
        &format!(
            "UPDATE refs_core NOT INDEXED SET state = 1, reason = NULL, updated_at = ?2,
                sha256 = k.sha256, source = k.source
             FROM (SELECT fid_hash, key_hash, min(sha256) AS sha256, source, id AS rep
                   FROM refs_core NOT INDEXED
                   WHERE fid_hash IS NOT NULL AND key_hash IS NOT NULL
                     AND sha256 IS NOT NULL AND source = 'telegram'
                   GROUP BY fid_hash, key_hash) AS k
             WHERE +refs_core.fid_hash = k.fid_hash AND +refs_core.key_hash = k.key_hash
               AND refs_core.state = 0 AND refs_core.key_dangling = 0 AND {ENV_FILTER}
               AND {} AND {}",
            same_as("telegram_file_id"),
            same_as("storage_key")
        ),
        params![envs, super::now_text()],
    )?;
    Ok(by_key + by_file_id + by_both)
}

/// That the ref being updated (`refs_core`) and the ref `k.rep` name the
/// same `column` of the `refs` view, compared in full: their hashes are
/// equal already.
fn same_as(column: &str) -> String {
    format!(
        "(SELECT v.{column} FROM refs v WHERE v.id = refs_core.id)
         = (SELECT v.{column} FROM refs v WHERE v.id = k.rep)"
    )
}

/// Pending refs with a storage key not known to be dangling, grouped by key.
pub fn pending_keys(conn: &Connection, envs: &Option<String>) -> Result<Vec<KeyWork>> {
    grouped(
        conn,
        &format!(
            "SELECT storage_key, id FROM refs
             WHERE state = 'pending' AND storage_key IS NOT NULL AND key_dangling = 0
               AND {ENV_FILTER}
             ORDER BY storage_key, id"
        ),
        envs,
    )
    .map(|groups| {
        groups
            .into_iter()
            .map(|(key, refs)| KeyWork { key, refs })
            .collect()
    })
}

/// Pending refs that only Telegram can serve, grouped by `file_id` and env:
/// memory grows with the files, not with the refs (a million refs on 1,000
/// file_ids held 70 MB as ids). Read by a scan of the table and sorted (NOT
/// INDEXED): in the order of `refs_file_id`, every ref is a random read (a
/// million refs: 2 million reads, 20 s).
pub fn pending_file_ids(conn: &Connection, envs: &Option<String>) -> Result<Vec<FileIdWork>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT telegram_file_id, env, count(*), min(id) FROM refs
         WHERE {TELEGRAM_ONLY} AND {ENV_FILTER}
         GROUP BY telegram_file_id, env
         ORDER BY telegram_file_id, min(id)"
    ))?;
    let mut rows = stmt.query([envs])?;
    let mut out: Vec<FileIdWork> = Vec::new();
    while let Some(row) = rows.next()? {
        let file_id: String = row.get(0)?;
        let refs = EnvRefs {
            env: row.get(1)?,
            refs: row.get(2)?,
            first: row.get(3)?,
        };
        match out.last_mut() {
            Some(last) if last.file_id == file_id => last.envs.push(refs),
            _ => out.push(FileIdWork {
                file_id,
                envs: vec![refs],
            }),
        }
    }
    Ok(out)
}

/// The refs [`pending_file_ids`] and [`file_id_refs`] read: pending ones
/// that only Telegram can serve (by the columns `refs_core` keeps, so that
/// the others are passed over without reading their rows). `+`: not through
/// `refs_core_fid`, in whose order every ref is a random read (at 1M refs,
/// 5.2 s instead of 0.7 s).
const TELEGRAM_ONLY: &str = "state = 'pending' AND +fid_hash IS NOT NULL
           AND (key_hash IS NULL OR key_dangling = 1)";

/// The pending refs of `file_id` that only Telegram can serve, of the envs
/// in `envs` (the refs a unit of [`pending_file_ids`] stands for), by id.
pub fn file_id_refs(conn: &Connection, file_id: &str, envs: &[Option<String>]) -> Result<Vec<i64>> {
    let named: Vec<&str> = envs.iter().flatten().map(String::as_str).collect();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id FROM refs
         WHERE fid_hash = ?4 AND telegram_file_id = ?1 AND {TELEGRAM_ONLY}
           AND (env IN (SELECT value FROM json_each(?2)) OR (env IS NULL AND ?3))
         ORDER BY id"
    ))?;
    let rows = stmt.query_map(
        params![
            file_id,
            serde_json::Value::from(named).to_string(),
            envs.contains(&None),
            super::derive::file_hash(file_id)
        ],
        |r| r.get(0),
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn grouped(conn: &Connection, sql: &str, envs: &Option<String>) -> Result<Vec<(String, Vec<i64>)>> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([envs])?;
    let mut out: Vec<(String, Vec<i64>)> = Vec::new();
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let id: i64 = row.get(1)?;
        match out.last_mut() {
            Some((last, ids)) if *last == name => ids.push(id),
            _ => out.push((name, vec![id])),
        }
    }
    Ok(out)
}

/// Pending refs whose storage key is missing and that have no `file_id`: nothing can serve them.
pub fn fail_unservable(conn: &Connection, envs: &Option<String>) -> Result<usize> {
    Ok(conn.execute(
        &format!(
            "UPDATE refs_core SET state = 2, updated_at = ?2, reason = ?3
             WHERE state = 0 AND key_dangling = 1 AND fid_hash IS NULL
               AND {ENV_FILTER}"
        ),
        params![envs, super::now_text(), UNSERVABLE],
    )?)
}

pub fn mark_fetched(tx: &Transaction, refs: &[i64], blob: &BlobInfo, source: &str) -> Result<()> {
    let now = super::now_text();
    tx.prepare_cached(
        "INSERT INTO blobs(sha256, size, type, source, fetched_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(sha256) DO NOTHING",
    )?
    .execute(params![blob.sha256, blob.size, blob.kind, source, now])?;
    let mut stmt = tx.prepare_cached(
        "UPDATE refs_core SET state = 1, sha256 = unhex(?2), source = ?3, reason = NULL,
                              updated_at = ?4
         WHERE id = ?1",
    )?;
    for id in refs {
        stmt.execute(params![id, blob.sha256, source, now])?;
    }
    Ok(())
}

pub fn mark_dangling(tx: &Transaction, refs: &[i64]) -> Result<()> {
    let mut stmt = tx.prepare_cached("UPDATE refs_core SET key_dangling = 1 WHERE id = ?1")?;
    for id in refs {
        stmt.execute([id])?;
    }
    Ok(())
}

/// Refs whose key the bucket will not serve (`reason`): those with a
/// file_id are fetched from Telegram as for a missing key (the key is
/// dangling for the fetch; a fetch with --storage tries it again), the
/// others fail with the reason.
pub fn mark_unreadable(tx: &Transaction, refs: &[i64], reason: &str) -> Result<()> {
    mark_dangling(tx, refs)?;
    let reason = crate::redact::text(&format!(
        "{reason}; no file_id to fetch it from Telegram instead"
    ));
    let mut stmt = tx.prepare_cached(
        "UPDATE refs_core SET state = 2, reason = ?2, updated_at = ?3
         WHERE id = ?1 AND fid_hash IS NULL",
    )?;
    let now = super::now_text();
    for id in refs {
        stmt.execute(params![id, reason, now])?;
    }
    Ok(())
}

/// Marks refs failed; the reason is scrubbed of secrets here, where every
/// fetch failure enters the catalog.
pub fn mark_failed(tx: &Transaction, refs: &[i64], reason: &str) -> Result<()> {
    let reason = crate::redact::text(reason);
    let mut stmt = tx.prepare_cached(
        "UPDATE refs_core SET state = 2, reason = ?2, updated_at = ?3 WHERE id = ?1",
    )?;
    let now = super::now_text();
    for id in refs {
        stmt.execute(params![id, reason, now])?;
    }
    Ok(())
}

/// How refs are named in warnings: `class table/row_id` (as `status` lists
/// them), the first few of `refs` and how many more there are.
pub fn ref_names(conn: &Connection, refs: &[i64]) -> Result<String> {
    const SHOWN: usize = 3;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT class || ' ' || {} FROM refs WHERE id = ?1",
        super::REF_LABEL_SQL
    ))?;
    let mut names = Vec::with_capacity(SHOWN + 1);
    for id in refs.iter().take(SHOWN) {
        names.push(stmt.query_row([id], |r| r.get::<_, String>(0))?);
    }
    if refs.len() > SHOWN {
        names.push(format!("{} more", refs.len() - SHOWN));
    }
    Ok(names.join(", "))
}

/// Failed refs in scope with an env whose reason is Telegram's `wrong
/// file_id` (what a bot answers for a file_id another bot received), counted
/// per env, in env order.
pub fn wrong_file_id_failures(
    conn: &Connection,
    envs: &Option<String>,
) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT env, count(*) FROM refs
         WHERE state = 'failed' AND env IS NOT NULL AND reason LIKE '%wrong file_id%'
           AND {ENV_FILTER}
         GROUP BY env ORDER BY env"
    ))?;
    let rows = stmt.query_map([envs], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Counts of refs in scope by state: (fetched, failed, pending).
pub fn state_counts(conn: &Connection, envs: &Option<String>) -> Result<(u64, u64, u64)> {
    Ok(conn.query_row(
        &format!(
            "SELECT count(*) FILTER (WHERE state = 1),
                    count(*) FILTER (WHERE state = 2),
                    count(*) FILTER (WHERE state = 0)
             FROM refs_core WHERE {ENV_FILTER}"
        ),
        [envs],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog with `per` sticker refs on each of `file_ids` Telegram
    /// files, all pending but the last ref of each file, fetched (the blob
    /// of file `fN` is N in 64 digits, from Telegram), and refs of `test`
    /// that share the files.
    fn shared_file_ids(file_ids: usize, per: usize) -> (tempfile::TempDir, super::super::Catalog) {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = super::super::Catalog::open_or_create(dir.path()).expect("open");
        catalog
            .conn()
            .execute(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1 * ?2)
                 INSERT INTO stickers(id, data, first_snapshot, changed_snapshot)
                 SELECT 'r' || i, json_object('id', 'r' || i, 'telegram_file_id', 'f' || (i % ?1)),
                        1, 1
                 FROM n",
                params![file_ids as i64, per as i64],
            )
            .expect("stickers");
        catalog
            .conn()
            .execute_batch(
                "INSERT INTO refs_core(kind, row, env, fid_hash)
                     SELECT 0, rowid,
                            CASE WHEN CAST(substr(id, 2) AS INTEGER) % 7 = 0 THEN 'test' ELSE 'prod' END,
                            file_hash(telegram_file_id)
                     FROM stickers ORDER BY rowid;
                 INSERT INTO blobs(sha256, size, type, source, fetched_at)
                     SELECT DISTINCT printf('%064d', substr(telegram_file_id, 2)), 1, 'webp',
                            'telegram', 'now'
                     FROM refs;
                 UPDATE refs_core SET state = 1, env = 'prod', source = 'telegram',
                        sha256 = unhex((SELECT printf('%064d', substr(telegram_file_id, 2))
                                        FROM refs WHERE refs.id = refs_core.id))
                 WHERE id IN (SELECT max(id) FROM refs GROUP BY telegram_file_id);",
            )
            .expect("fetched");
        (dir, catalog)
    }

    /// (env, state, source, whether the blob is the file's) of every ref, counted.
    fn states(conn: &Connection) -> Vec<(String, i64)> {
        let mut stmt = conn
            .prepare(
                "SELECT env || ' ' || state || ' ' || coalesce(source, '-') || ' '
                        || coalesce(sha256 = printf('%064d', substr(telegram_file_id, 2)), '-'),
                        count(*)
                 FROM refs GROUP BY 1 ORDER BY 1",
            )
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// Refs pending on a file_id another ref has fetched take its blob, in
    /// scope only, and in time linear in the refs: a search of the refs of
    /// the same file_id per pending ref took minutes on a million refs
    /// sharing 1,000 file_ids (here 40,000 refs on 20 took 27 s).
    #[test]
    fn pending_refs_take_the_blob_of_their_file_id_in_one_pass() {
        const FILES: usize = 20;
        const PER: usize = 2_000;
        let (_dir, catalog) = shared_file_ids(FILES, PER);
        let conn = catalog.conn();
        let prod = Some(r#"["prod"]"#.to_string());
        let started = std::time::Instant::now();
        let resolved = resolve_known(conn, &prod).expect("resolve");
        let took = started.elapsed();
        let test_refs = (0..FILES * PER).filter(|i| i.is_multiple_of(7)).count();
        // Every fetched ref (the last of each file) is in prod.
        let last_were_test = (0..FILES)
            .filter(|f| (FILES * (PER - 1) + f).is_multiple_of(7))
            .count();
        let pending_test = (test_refs - last_were_test) as i64;
        let prod_refs = (FILES * PER) as i64 - pending_test;
        assert_eq!(resolved as i64, prod_refs - FILES as i64);
        assert_eq!(
            states(conn),
            [
                ("prod fetched telegram 1".to_string(), prod_refs),
                ("test pending - -".to_string(), pending_test),
            ]
        );
        assert!(took.as_secs() < 10, "resolving took {took:?}");
        // Everything in scope: the rest too; a second pass has nothing to do.
        assert_eq!(
            resolve_known(conn, &None).expect("resolve") as i64,
            pending_test
        );
        assert_eq!(resolve_known(conn, &None).expect("resolve"), 0);
    }
}
