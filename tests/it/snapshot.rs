//! `snapshot`: the bot's tables, from a real throwaway PostgreSQL or from
//! CSV exports, into the catalog; read back with `rusqlite` as a user would
//! with `sqlite3` (SPEC §1-§3, §7).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::{Map, Value};

use crate::plan::plan_json;
use crate::support::dataset::FIXTURE_DB;
use crate::support::pg::{FIXTURE_TABLES as TABLES, TestPg};
use crate::support::run::catalog;
use crate::support::{bin, temp_dir};

// ---- helpers ---------------------------------------------------------------

/// Runs the binary with `args` on `archive`; returns its output whatever it is.
pub(crate) fn starchive(archive: &Path, args: &[&str]) -> Output {
    bin()
        .arg("--archive")
        .arg(archive)
        .args(args)
        .output()
        .expect("run starchive")
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `snapshot --json --db DB [extra]`, which must succeed; its JSON report.
pub(crate) fn snapshot_ok(archive: &Path, db: &str, extra: &[&str]) -> Value {
    let mut args = vec!["snapshot", "--json", "--db", db];
    args.extend_from_slice(extra);
    let out = starchive(archive, &args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "snapshot failed:\n{}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "snapshot --json printed no JSON document ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `(rows, added, changed, removed, skipped)` of one table in a snapshot report.
pub(crate) fn counts(report: &Value, table: &str) -> (u64, u64, u64, u64, u64) {
    let t = &report["tables"][table];
    let n = |k: &str| {
        t[k].as_u64()
            .unwrap_or_else(|| panic!("tables.{table}.{k} missing in {report}"))
    };
    (
        n("rows"),
        n("added"),
        n("changed"),
        n("removed"),
        n("skipped"),
    )
}

/// Every row of `table` in `v_rows`, by id, parsed.
fn catalog_rows(conn: &Connection, table: &str) -> BTreeMap<String, Value> {
    let mut stmt = conn
        .prepare("SELECT id, data FROM v_rows WHERE table_name = ?1")
        .expect("prepare v_rows");
    stmt.query_map([table], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })
    .expect("query v_rows")
    .map(|r| {
        let (id, data) = r.expect("v_rows row");
        let value: Value = serde_json::from_str(&data).expect("v_rows.data is JSON");
        (id, value)
    })
    .collect()
}

/// Every row of `table` as PostgreSQL's `to_jsonb` gives it (UTC), by id.
fn pg_rows(pg: &TestPg, db: &str, table: &str) -> BTreeMap<String, Value> {
    pg.psql(
        db,
        &format!("SET TIME ZONE 'UTC'; SELECT to_jsonb(t)::text FROM public.{table} t;"),
    )
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let v: Value = serde_json::from_str(l).expect("to_jsonb text");
        (v["id"].as_str().expect("uuid id").to_owned(), v)
    })
    .collect()
}

/// One scalar from the catalog.
pub(crate) fn one<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> T {
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub(crate) type RefRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// The refs table as a set of what a ref says (no state, no generation).
pub(crate) fn refs_of(conn: &Connection) -> BTreeSet<RefRow> {
    let mut stmt = conn
        .prepare(
            "SELECT class, row_table, row_id, slot, session_id, user_id, env, pack_batch_id,
                    pack_index, telegram_file_id, storage_key FROM refs",
        )
        .expect("prepare refs");
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
        ))
    })
    .expect("query refs")
    .map(|r| r.expect("refs row"))
    .collect()
}

/// `count(*)` of refs per class.
/// As if fetch had stored every ref's file (one blob named `ab`).
fn mark_every_ref_fetched(archive: &Path) {
    catalog(archive)
        .execute_batch(
            "INSERT INTO blobs(sha256, size, type, source, fetched_at)
               VALUES ('ab', 1, 'webp', 'bucket', '2025-01-01T00:00:00Z');
             UPDATE refs_core SET state = 1, sha256 = unhex('ab'), source = 'bucket';",
        )
        .expect("mark fetched");
}

fn refs_per_class(conn: &Connection) -> BTreeMap<String, i64> {
    let mut stmt = conn
        .prepare("SELECT class, count(*) FROM refs GROUP BY class")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

/// Fixture uuid `00000000-0000-4000-8000-000000000NNN`.
pub(crate) fn fid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// A row's JSON without its time columns (their text form differs between
/// `to_jsonb` and a CSV export) and with empty strings as NULL (a CSV export
/// does not tell them apart).
fn without_times(v: &Value) -> Value {
    let mut m: Map<String, Value> = v.as_object().expect("row object").clone();
    m.remove("created_at");
    m.remove("updated_at");
    for value in m.values_mut() {
        if value.as_str() == Some("") {
            *value = Value::Null;
        }
    }
    Value::Object(m)
}

/// Waits for a child process, killing it after `limit`.
fn wait_with_limit(mut child: std::process::Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "starchive did not finish within {limit:?}:\n{}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- tests -----------------------------------------------------------------

/// Every column of every row — uuid, bigint beyond 2^53, jsonb, timestamptz,
/// numeric, arrays, booleans and columns schema.sql does not name — is in
/// `v_rows.data`, equal to what PostgreSQL's `to_jsonb` gives, and readable
/// with `json_extract`.
#[test]
fn every_column_survives_in_v_rows() {
    let pg = TestPg::start();
    let url = pg.fixture_db("bot");
    pg.psql(
        "bot",
        r#"ALTER TABLE stickers ADD COLUMN meta jsonb, ADD COLUMN score numeric(6,2),
               ADD COLUMN tags text[], ADD COLUMN nsfw boolean;
           INSERT INTO sessions (id, user_id, env, mode, photos, language_code, created_at, updated_at)
           VALUES ('00000000-0000-4000-8000-0000000001ff', 9007199254740993, 'prod', 'pack',
                   '["p1", "p2"]', 'fr', '2025-06-01 12:34:56.789+02', '2025-06-01 12:34:56.789+02');
           INSERT INTO stickers (id, user_id, session_id, pack_index, telegram_file_id, meta, score,
                                 tags, nsfw, prompt, created_at)
           VALUES ('00000000-0000-4000-8000-0000000003ff', 9007199254740993,
                   '00000000-0000-4000-8000-0000000001ff', 7, 'F-big-user',
                   '{"seed": 42, "nested": {"a": [1, null, "x"]}}', 12.50, '{a,"b c"}', false,
                   E'tab\there "quoted" \u2713', '2025-06-01 10:00:00.000001+00');"#,
    );
    let archive = temp_dir();
    let report = snapshot_ok(archive.path(), &url, &[]);
    assert_eq!(counts(&report, "sessions"), (12, 12, 0, 0, 0), "{report}");
    assert_eq!(counts(&report, "stickers"), (17, 17, 0, 0, 0), "{report}");
    assert_eq!(counts(&report, "pack_batches"), (4, 4, 0, 0, 0), "{report}");

    let conn = catalog(archive.path());
    for table in TABLES {
        // Every column PostgreSQL has is a key of every row's JSON...
        let columns: BTreeSet<String> = pg
            .psql(
                "bot",
                &format!(
                    "SELECT column_name FROM information_schema.columns
                     WHERE table_schema = 'public' AND table_name = '{table}';"
                ),
            )
            .lines()
            .map(str::to_owned)
            .collect();
        let ours = catalog_rows(&conn, table);
        for (id, row) in &ours {
            let keys: BTreeSet<String> = row.as_object().expect("object").keys().cloned().collect();
            assert_eq!(keys, columns, "{table} {id}: columns in v_rows.data");
        }
        // ...and every value equals PostgreSQL's own JSON of the row.
        let theirs = pg_rows(&pg, "bot", table);
        assert_eq!(ours.len(), theirs.len(), "{table}: row count");
        for (id, expected) in &theirs {
            assert_eq!(ours.get(id), Some(expected), "{table} {id}");
        }
    }

    // Read back with json_extract, as SPEC §2 promises users.
    let s = |path: &str, id: &str| -> (Option<String>, Option<String>) {
        conn.query_row(
            "SELECT CAST(json_extract(data, ?1) AS TEXT), json_type(data, ?1)
             FROM v_rows WHERE id = ?2",
            [path, id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or_else(|e| panic!("{path} of {id}: {e}"))
    };
    let big = "00000000-0000-4000-8000-0000000001ff";
    let big_sticker = "00000000-0000-4000-8000-0000000003ff";
    // uuid: the id itself, and references to other rows.
    assert_eq!(
        s("$.id", big),
        (Some(big.into()), Some("text".into())),
        "uuid"
    );
    assert_eq!(
        s("$.session_id", big_sticker),
        (Some(big.into()), Some("text".into()))
    );
    // bigint, exact beyond 2^53.
    let user_id: i64 = one(
        &conn,
        "SELECT json_extract(data, '$.user_id') FROM v_rows WHERE id = '00000000-0000-4000-8000-0000000001ff'",
    );
    assert_eq!(user_id, 9_007_199_254_740_993);
    assert_eq!(s("$.user_id", big).1.as_deref(), Some("integer"));
    // jsonb
    assert_eq!(s("$.photos", big).1.as_deref(), Some("array"));
    assert_eq!(s("$.photos[1]", big).0.as_deref(), Some("p2"));
    assert_eq!(s("$.meta.seed", big_sticker).0.as_deref(), Some("42"));
    assert_eq!(s("$.meta.nested.a[2]", big_sticker).0.as_deref(), Some("x"));
    assert_eq!(
        s("$.meta.nested.a[1]", big_sticker).1.as_deref(),
        Some("null")
    );
    // timestamptz, in UTC, microseconds kept.
    assert_eq!(
        s("$.created_at", big).0.as_deref(),
        Some("2025-06-01T10:34:56.789+00:00")
    );
    assert_eq!(
        s("$.created_at", big_sticker).0.as_deref(),
        Some("2025-06-01T10:00:00.000001+00:00")
    );
    assert_eq!(
        s("$.updated_at", &fid(101)).0.as_deref(),
        Some("2025-03-01T10:05:12.345678+00:00")
    );
    // numeric, array, boolean, integer
    assert_eq!(
        s("$.score", big_sticker),
        (Some("12.5".into()), Some("real".into()))
    );
    assert_eq!(s("$.tags[1]", big_sticker).0.as_deref(), Some("b c"));
    assert_eq!(s("$.nsfw", big_sticker).1.as_deref(), Some("false"));
    assert_eq!(s("$.pack_index", big_sticker).1.as_deref(), Some("integer"));
    // Columns schema.sql does not name: text, NULL and the empty string kept apart.
    assert_eq!(s("$.language_code", big).0.as_deref(), Some("fr"));
    assert_eq!(
        s("$.language_code", &fid(104)),
        (Some(String::new()), Some("text".into())),
        "a quoted empty string stays the empty string"
    );
    assert_eq!(
        s("$.language_code", &fid(103)),
        (None, Some("null".into())),
        "NULL stays a present JSON null"
    );
    assert_eq!(
        s("$.prompt", big_sticker).0.as_deref(),
        Some("tab\there \"quoted\" \u{2713}")
    );
    let prompt = s("$.prompt", &fid(303)).0.expect("prompt of 303");
    assert!(
        prompt.starts_with("кот в шляпе") && prompt.ends_with("вторая строка"),
        "{prompt:?}"
    );
    assert_eq!(s("$.style", &fid(203)).0.as_deref(), Some("pixel, retro"));
    // The typed columns read the same values.
    let typed: (String, i64, String) = conn
        .query_row(
            "SELECT user_id, pack_index, session_id FROM stickers WHERE id = ?1",
            [big_sticker],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("typed columns");
    assert_eq!(typed, ("9007199254740993".into(), 7, big.into()));
}

/// A second snapshot after inserts, updates and deletes reports, per table,
/// exactly the rows added, changed and removed; refs follow; a third one with
/// nothing changed reports nothing.
#[test]
fn resnapshot_counts_added_changed_removed() {
    let pg = TestPg::start();
    let url = pg.fixture_db("bot");
    let archive = temp_dir();
    let first = snapshot_ok(archive.path(), &url, &[]);
    assert_eq!(counts(&first, "sessions"), (11, 11, 0, 0, 0), "{first}");
    assert_eq!(counts(&first, "stickers"), (16, 16, 0, 0, 0), "{first}");
    assert_eq!(counts(&first, "pack_batches"), (4, 4, 0, 0, 0), "{first}");

    pg.psql(
        "bot",
        &format!(
            "INSERT INTO sessions (id, user_id, env, last_sticker_file_id)
               VALUES ('{n1}', 42, 'prod', 'F-new-1'), ('{n2}', 42, 'test', NULL);
             INSERT INTO stickers (id, user_id, session_id, telegram_file_id)
               VALUES ('{n3}', 42, '{n1}', 'F-new-1');
             UPDATE stickers SET telegram_file_id = 'F-replaced' WHERE id = '{s301}';
             UPDATE stickers SET prompt = 'edited' WHERE id IN ('{s302}', '{s310}');
             UPDATE sessions SET language_code = 'uk' WHERE id = '{s111}';
             UPDATE sessions SET updated_at = updated_at WHERE id = '{s101}';
             DELETE FROM stickers WHERE id IN ('{s308}', '{s309}');
             DELETE FROM pack_batches WHERE id = '{b202}';",
            n1 = fid(901),
            n2 = fid(902),
            n3 = fid(903),
            s301 = fid(301),
            s302 = fid(302),
            s310 = fid(310),
            s111 = fid(111),
            s101 = fid(101),
            s308 = fid(308),
            s309 = fid(309),
            b202 = fid(202),
        ),
    );
    let second = snapshot_ok(archive.path(), &url, &[]);
    assert_eq!(
        second["snapshot_id"],
        first["snapshot_id"].as_i64().unwrap() + 1
    );
    assert_eq!(counts(&second, "sessions"), (13, 2, 1, 0, 0), "{second}");
    assert_eq!(counts(&second, "stickers"), (15, 1, 3, 2, 0), "{second}");
    assert_eq!(counts(&second, "pack_batches"), (3, 0, 0, 1, 0), "{second}");

    let conn = catalog(archive.path());
    let file_id: String = one(
        &conn,
        &format!(
            "SELECT telegram_file_id FROM refs WHERE class = 'sticker' AND row_id = '{}'",
            fid(301)
        ),
    );
    assert_eq!(file_id, "F-replaced", "the ref follows the changed row");
    let gone: i64 = one(
        &conn,
        &format!(
            "SELECT count(*) FROM refs WHERE row_id IN ('{}', '{}', '{}')",
            fid(308),
            fid(309),
            fid(202)
        ),
    );
    assert_eq!(gone, 0, "refs of deleted rows are gone");
    let new_refs: i64 = one(
        &conn,
        &format!(
            "SELECT count(*) FROM refs WHERE row_id IN ('{}', '{}')",
            fid(901),
            fid(903)
        ),
    );
    assert_eq!(
        new_refs, 2,
        "a session_sticker and a sticker ref for the new rows"
    );
    let prompt: String = one(
        &conn,
        &format!(
            "SELECT json_extract(data, '$.prompt') FROM v_rows WHERE id = '{}'",
            fid(310)
        ),
    );
    assert_eq!(prompt, "edited");
    drop(conn);

    let third = snapshot_ok(archive.path(), &url, &[]);
    assert_eq!(counts(&third, "sessions"), (13, 0, 0, 0, 0), "{third}");
    assert_eq!(counts(&third, "stickers"), (15, 0, 0, 0, 0), "{third}");
    assert_eq!(counts(&third, "pack_batches"), (3, 0, 0, 0, 0), "{third}");
}

/// A re-snapshot rewrites only the refs that changed: a fetched ref whose file
/// is unchanged stays fetched even when its session's env changed (the env
/// follows), a ref whose file changed is pending again, and a ref whose row
/// no longer names any file is gone while the row stays.
#[test]
fn resnapshot_updates_only_changed_refs() {
    let pg = TestPg::start();
    let url = pg.fixture_db("bot");
    let archive = temp_dir();
    snapshot_ok(archive.path(), &url, &[]);
    mark_every_ref_fetched(archive.path());

    let session = fid(107);
    pg.psql(
        "bot",
        &format!(
            "UPDATE sessions SET env = 'staging' WHERE id = '{session}';
             UPDATE stickers SET telegram_file_id = 'F-replaced' WHERE id = '{s304}';
             UPDATE stickers SET telegram_file_id = NULL, result_storage_path = NULL
               WHERE id = '{s305}';",
            s304 = fid(304),
            s305 = fid(305),
        ),
    );
    snapshot_ok(archive.path(), &url, &[]);

    let conn = catalog(archive.path());
    let sticker_ref = |row: &str| -> Option<(String, String, Option<String>)> {
        conn.query_row(
            "SELECT env, state, sha256 FROM refs WHERE class = 'sticker' AND row_id = ?1",
            [row],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok()
    };
    assert_eq!(
        sticker_ref(&fid(304)),
        Some(("staging".into(), "pending".into(), None)),
        "a changed file is pending again, in the session's new env"
    );
    assert_eq!(
        sticker_ref(&fid(305)),
        None,
        "a row naming no file has no ref"
    );
    let others: Vec<(String, String, Option<String>)> = {
        let mut stmt = conn
            .prepare(
                "SELECT env, state, sha256 FROM refs
                 WHERE class = 'sticker' AND session_id = ?1 AND row_id NOT IN (?2, ?3)",
            )
            .expect("prepare");
        stmt.query_map([session.as_str(), &fid(304), &fid(305)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    };
    assert!(!others.is_empty(), "the session has other stickers");
    for other in others {
        assert_eq!(
            other,
            ("staging".into(), "fetched".into(), Some("ab".into())),
            "an unchanged file stays fetched; its env follows the session"
        );
    }
    let v305: i64 = one(
        &conn,
        &format!("SELECT count(*) FROM stickers WHERE id = '{}'", fid(305)),
    );
    assert_eq!(v305, 1, "the row itself stays");
}

/// A re-snapshot derives again only the refs of what changed (and of what
/// depends on it: a session's env in its stickers' refs, a session's latest
/// batch). After each round of changes its refs are the refs a first
/// snapshot of the same database gives, and a fetched file whose ref did
/// not change stays fetched.
#[test]
fn resnapshot_refs_equal_a_first_snapshot_of_the_same_database() {
    let pg = TestPg::start();
    let url = pg.fixture_db("bot");
    let archive = temp_dir();
    snapshot_ok(archive.path(), &url, &[]);
    mark_every_ref_fetched(archive.path());
    let rounds = [
        // A session's env, a sticker's file, a sticker that names no file any more.
        format!(
            "UPDATE sessions SET env = 'staging' WHERE id = '{s107}';
             UPDATE stickers SET telegram_file_id = 'F-new' WHERE id = '{t304}';
             UPDATE stickers SET telegram_file_id = NULL, result_storage_path = NULL
               WHERE id = '{t305}';",
            s107 = fid(107),
            t304 = fid(304),
            t305 = fid(305),
        ),
        // The session an orphan sticker names arrives; a later batch with a
        // cleaned sheet becomes session 107's latest; a new sticker.
        format!(
            "INSERT INTO sessions (id, user_id, env, pack_sheet_file_id)
               VALUES ('{s199}', 100000002, 'test', 'SHEET-199');
             INSERT INTO pack_batches (id, session_id, user_id, cleaned_sheet_storage_path, created_at)
               VALUES ('{b205}', '{s107}', 100000004, 'pack_sheets/x/205_clean.png', '2025-04-01 00:00:00+00'),
                      ('{b206}', '{s199}', 100000002, 'pack_sheets/x/206_clean.png', '2025-04-01 00:00:00+00');
             INSERT INTO stickers (id, user_id, session_id, pack_batch_id, pack_index, telegram_file_id)
               VALUES ('{t390}', 100000004, '{s107}', '{b205}', 0, 'F-390');",
            s199 = fid(199),
            s107 = fid(107),
            b205 = fid(205),
            b206 = fid(206),
            t390 = fid(390),
        ),
        // The latest batch goes (the one before is latest again), a batch
        // moves to another session, a session goes (its stickers lose their
        // env), a sticker goes.
        format!(
            "DELETE FROM stickers WHERE pack_batch_id = '{b205}';
             DELETE FROM pack_batches WHERE id = '{b205}';
             UPDATE pack_batches SET session_id = '{s107}', created_at = '2025-05-01 00:00:00+00'
               WHERE id = '{b206}';
             DELETE FROM pack_batches WHERE session_id = '{s199}';
             DELETE FROM sessions WHERE id = '{s199}';
             DELETE FROM stickers WHERE id = '{t301}';",
            b205 = fid(205),
            b206 = fid(206),
            s107 = fid(107),
            s199 = fid(199),
            t301 = fid(301),
        ),
    ];
    for (i, sql) in rounds.iter().enumerate() {
        pg.psql("bot", sql);
        let report = snapshot_ok(archive.path(), &url, &[]);
        let fresh = temp_dir();
        snapshot_ok(fresh.path(), &url, &[]);
        let again = refs_of(&catalog(archive.path()));
        let first = refs_of(&catalog(fresh.path()));
        assert_eq!(again, first, "round {i}: {report}");
        let conn = catalog(archive.path());
        let (fetched, pending): (i64, i64) = conn
            .query_row(
                "SELECT count(*) FILTER (WHERE state = 'fetched'),
                        count(*) FILTER (WHERE state = 'pending') FROM refs",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("states");
        assert!(fetched > 20, "round {i}: unchanged refs stay fetched");
        assert!(pending > 0, "round {i}: changed refs are pending");
    }
    // Unchanged rows are not written: their `changed_snapshot` stays.
    let conn = catalog(archive.path());
    let unchanged: i64 = one(
        &conn,
        &format!(
            "SELECT changed_snapshot FROM stickers WHERE id = '{}'",
            fid(302)
        ),
    );
    assert_eq!(unchanged, 1);
}

/// A first snapshot writes the ref of each sticker with its row, with the
/// env of its session from memory, not all after: both give the same refs, for
/// generated bots (NULL and empty file ids and keys, stickers without a
/// session, sessions with an empty env, integer batch ids; one with
/// thousands of stickers), with and without `--env`. The catalog's refs are
/// deleted and a second snapshot of the same database derives them all again.
#[test]
fn a_first_snapshot_writes_the_refs_a_full_derivation_finds() {
    let pg = TestPg::start();
    for (seed, bigint_batches) in [(0x5eed_0011, false), (0x5eed_0012, true)] {
        let db = format!("bot_{seed:x}");
        generated_bot(&pg, &db, seed, bigint_batches);
        if !bigint_batches {
            pg.psql(
                &db,
                "INSERT INTO stickers (user_id, session_id, telegram_file_id, result_storage_path)
                 SELECT 1000 + g % 5,
                        CASE WHEN g % 7 <> 0 THEN
                            (SELECT id FROM sessions ORDER BY id OFFSET g % 80 LIMIT 1) END,
                        CASE WHEN g % 3 = 0 THEN '' WHEN g % 11 = 0 THEN NULL ELSE 'bulk_' || g END,
                        CASE WHEN g % 4 = 0 THEN NULL ELSE 'stickers/bulk/' || g || '.webp' END
                 FROM generate_series(1, 2500) g;",
            );
        }
        for extra in [&[][..], &["--env", "prod"][..]] {
            let archive = temp_dir();
            let first = snapshot_ok(archive.path(), &pg.url(&db), extra);
            let streamed = refs_of(&catalog(archive.path()));
            let stickers = streamed.iter().filter(|r| r.0 == "sticker");
            let with_env = stickers.clone().filter(|r| r.6.is_some()).count();
            let without_env = stickers.clone().filter(|r| r.6.is_none()).count();
            assert!(
                with_env > 20 && (without_env > 5 || !extra.is_empty()),
                "{seed:x} {extra:?}: {with_env} sticker refs with an env, {without_env} without: {first}"
            );
            catalog(archive.path())
                .execute("DELETE FROM refs_core", [])
                .expect("delete refs");
            snapshot_ok(archive.path(), &pg.url(&db), extra);
            let derived = refs_of(&catalog(archive.path()));
            let missing: Vec<_> = derived.difference(&streamed).take(5).collect();
            let more: Vec<_> = streamed.difference(&derived).take(5).collect();
            assert!(
                missing.is_empty() && more.is_empty(),
                "{seed:x} {extra:?}: only derived after: {missing:#?}\nonly written with the rows: {more:#?}"
            );
            let conn = catalog(archive.path());
            let index: i64 = one(
                &conn,
                "SELECT count(*) FROM sqlite_schema WHERE name = 'refs_core_fid'",
            );
            assert_eq!(index, 1, "the file id index is back");
        }
    }
}

/// A snapshot reads a large stickers table in two halves at once, over two
/// connections in one state, the first snapshot as a re-snapshot: while
/// each runs, another connection keeps committing pairs of stickers, one in
/// each half (ids from `00000000-` and from `ffffffff-`). Every pair is in
/// the catalog whole or not at all, the pairs are those committed before
/// one instant, and every other row is as the database has it, with the
/// rows changed and removed in both halves counted.
#[test]
fn a_large_table_is_read_in_two_halves_of_one_state() {
    let pg = TestPg::start();
    pg.create_db("bot");
    pg.load_schema("bot");
    pg.psql(
        "bot",
        "INSERT INTO stickers (user_id, telegram_file_id, result_storage_path)
         SELECT g, 'file_' || g, 'stickers/' || g || '/x.webp' FROM generate_series(1, 30000) g;
         ANALYZE stickers;",
    );
    let url = pg.url("bot");
    let archive = temp_dir();
    // A snapshot beside a writer of pairs (`round` tells the pairs of each
    // snapshot apart): its report, how many pairs it took, and how many
    // were committed when the writer stopped.
    let beside_pairs = |round: u64| -> (Value, u64, u64) {
        let writer = Writer::start(&url, move |g| {
            format!(
                "BEGIN;
                 INSERT INTO stickers (id, user_id, style_preset_id, telegram_file_id)
                   VALUES ('00000000-0000-4000-900{round}-{g:012x}', {g}, 'pair-{round}', 'low-{g}'),
                          ('ffffffff-0000-4000-900{round}-{g:012x}', {g}, 'pair-{round}', 'high-{g}');
                 COMMIT;"
            )
        });
        let (out, at_exit) = snapshot_beside(writer, archive.path(), &url);
        assert!(
            stderr(&out).contains("stickers: read in two halves"),
            "round {round}: the stickers were read in two halves:\n{}",
            stderr(&out)
        );
        let pairs: BTreeMap<u64, i64> = catalog(archive.path())
            .prepare(
                "SELECT CAST(user_id AS INTEGER), count(*) FROM stickers
                 WHERE style_preset_id = ?1 GROUP BY 1",
            )
            .expect("prepare")
            .query_map([format!("pair-{round}")], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .expect("query")
            .map(|r| r.expect("row"))
            .collect();
        for (g, n) in &pairs {
            assert_eq!(
                *n, 2,
                "round {round}: pair {g} is torn: both halves must be in one state"
            );
        }
        let k = pairs.len() as u64;
        assert_eq!(
            pairs.keys().copied().collect::<BTreeSet<_>>(),
            (1..=k).collect::<BTreeSet<_>>(),
            "round {round}: the pairs of one instant: a prefix of the commit order"
        );
        assert!(
            at_exit > k && k >= 20,
            "round {round}: pairs were committed while the snapshot read ({k} in, {at_exit} committed)"
        );
        (
            serde_json::from_slice(&out.stdout).expect("report"),
            k,
            at_exit,
        )
    };
    let not_pairs = |rows: BTreeMap<String, Value>| -> BTreeMap<String, Value> {
        rows.into_iter()
            .filter(|(_, v)| {
                !v["style_preset_id"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("pair")
            })
            .collect()
    };
    let same_as_database = |round: u64| {
        assert_eq!(
            not_pairs(catalog_rows(&catalog(archive.path()), "stickers")),
            not_pairs(pg_rows(&pg, "bot", "stickers")),
            "round {round}: every other row as the database has it"
        );
    };

    let (report, first, committed) = beside_pairs(1);
    let (rows, added, changed, removed, _) = counts(&report, "stickers");
    assert_eq!(
        (rows, added),
        (30_000 + 2 * first, 30_000 + 2 * first),
        "{report}"
    );
    assert_eq!((changed, removed), (0, 0), "{report}");
    same_as_database(1);

    // Changes in both halves of the ids (random uuids: about half each).
    pg.psql(
        "bot",
        "UPDATE stickers SET style_preset_id = 'changed'
         WHERE user_id % 100 = 1 AND telegram_file_id LIKE 'file_%';
         DELETE FROM stickers WHERE user_id % 100 = 2 AND telegram_file_id LIKE 'file_%';",
    );
    // New: the pairs committed after the first snapshot's instant, and
    // this one's.
    let (report, again, _) = beside_pairs(2);
    let (rows, added, changed, removed, _) = counts(&report, "stickers");
    assert_eq!(
        (rows, added),
        (
            29_700 + 2 * committed + 2 * again,
            2 * (committed - first) + 2 * again
        ),
        "{report}"
    );
    assert_eq!((changed, removed), (300, 300), "{report}");
    same_as_database(2);
}

/// A snapshot leaves no temp files on the bot's database: reading a table
/// in id order is the primary key's index scan, never a sort spilled to
/// disk, even where the planner would choose one. It does for a half of a
/// re-snapshot of a million stickers with random ids, and there writes
/// about 400 MB of temp files on the bot's server; here a high
/// `random_page_cost` and a small `work_mem` make it choose so at 30,000.
#[test]
fn a_snapshot_writes_no_temp_files_on_the_database() {
    let pg = TestPg::start();
    pg.create_db("bot");
    pg.load_schema("bot");
    pg.psql(
        "bot",
        "INSERT INTO sessions (id, user_id, env)
         SELECT md5('s' || g)::uuid, g, 'prod' FROM generate_series(1, 20000) g;
         INSERT INTO stickers (user_id, session_id, telegram_file_id, result_storage_path)
         SELECT g, md5('s' || (g % 20000 + 1))::uuid, 'file_' || g, 'stickers/' || g || '/x.webp'
         FROM generate_series(1, 30000) g;
         ALTER DATABASE bot SET work_mem = '64kB';
         ALTER DATABASE bot SET random_page_cost = 40;
         VACUUM ANALYZE;",
    );
    let temp_files = || -> i64 {
        pg.psql(
            "postgres",
            "SELECT temp_files FROM pg_stat_database WHERE datname = 'bot'",
        )
        .trim()
        .parse()
        .expect("a count")
    };
    // The statistics of a backend reach pg_stat_database when it ends.
    let settled = |before: i64| -> i64 {
        let mut now = temp_files();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            now = temp_files();
            if now != before {
                break;
            }
        }
        now
    };
    let url = pg.url("bot");
    let archive = temp_dir();
    let before = temp_files();
    snapshot_ok(archive.path(), &url, &[]);
    assert_eq!(
        settled(before),
        before,
        "temp files written by a first snapshot"
    );
    pg.psql(
        "bot",
        "UPDATE stickers SET style_preset_id = 'changed' WHERE user_id % 100 = 1;",
    );
    let out = snapshot_traced(archive.path(), 1, &url);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stickers: read in two halves"),
        "{}",
        stderr(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(
        counts(&report, "stickers"),
        (30_000, 0, 300, 0, 0),
        "{report}"
    );
    assert_eq!(
        settled(before),
        before,
        "temp files written by a re-snapshot"
    );
}

/// A server that will not share a transaction's state with a second
/// connection (here a role that may not call `pg_export_snapshot`; a pooler
/// or replica that cannot) gets a re-snapshot over one connection, whole
/// and in one state: the failed attempt must not leave the read's
/// transaction aborted.
#[test]
fn a_re_snapshot_reads_on_one_connection_when_the_state_cannot_be_shared() {
    let pg = TestPg::start();
    pg.create_db("bot");
    pg.load_schema("bot");
    pg.psql(
        "bot",
        "INSERT INTO sessions (user_id, env) SELECT g, 'prod' FROM generate_series(1, 100) g;
         INSERT INTO stickers (user_id, session_id, telegram_file_id)
           SELECT s.user_id, s.id, 'file_' || s.user_id || '_' || g
           FROM sessions s, generate_series(1, 120) g;
         ANALYZE stickers;
         CREATE ROLE lonely LOGIN;
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO lonely;
         REVOKE EXECUTE ON FUNCTION pg_export_snapshot() FROM PUBLIC;",
    );
    let url = format!("postgres://lonely@127.0.0.1:{}/bot", pg.port());
    let archive = temp_dir();
    snapshot_ok(archive.path(), &url, &[]);
    pg.psql(
        "bot",
        "UPDATE stickers SET style_preset_id = 'changed' WHERE telegram_file_id LIKE '%\\_7';
         DELETE FROM stickers WHERE telegram_file_id LIKE '%\\_9';",
    );
    let report = snapshot_ok(archive.path(), &url, &[]);
    let (rows, added, changed, removed, _) = counts(&report, "stickers");
    assert_eq!(
        (rows, added, changed, removed),
        (11_900, 0, 100, 100),
        "{report}"
    );
    let conn = catalog(archive.path());
    assert_eq!(
        catalog_rows(&conn, "stickers"),
        pg_rows(&pg, "bot", "stickers"),
        "every row as the database has it"
    );
    assert_eq!(
        catalog_rows(&conn, "sessions"),
        pg_rows(&pg, "bot", "sessions")
    );
}

/// While a snapshot of big tables runs, another connection keeps committing
/// groups (a session, its pack batch and 3 stickers in one transaction). The
/// catalog holds every group whole or not at all, and exactly the groups
/// 1..=k committed before one instant: one consistent state of all three tables.
/// (`sessions` is read first and is big, so groups committed while it is read
/// would show up torn in the later tables if each table had its own state.)
#[test]
fn concurrent_writes_do_not_tear_the_snapshot() {
    let pg = TestPg::start();
    pg.create_db("bot");
    pg.load_schema("bot");
    pg.psql(
        "bot",
        "INSERT INTO sessions (user_id, env, mode)
         SELECT g, 'prod', 'bulk' FROM generate_series(1, 100000) g;
         INSERT INTO stickers (user_id, telegram_file_id, result_storage_path)
         SELECT g, 'file_' || g, 'stickers/' || g || '/x.webp' FROM generate_series(1, 50000) g;",
    );
    let url = pg.url("bot");

    let writer = Writer::start(&url, |g| {
        let session = format!("{g:08x}-0000-4000-9000-000000000001");
        let batch = format!("{g:08x}-0000-4000-9000-000000000002");
        let mut sql = format!(
            "BEGIN;
             INSERT INTO sessions (id, user_id, env, mode, pack_sheet_file_id)
               VALUES ('{session}', {g}, 'prod', 'grp', 'sheet-{g}');
             INSERT INTO pack_batches (id, session_id, user_id, status)
               VALUES ('{batch}', '{session}', {g}, 'grp');"
        );
        for i in 0..3 {
            sql.push_str(&format!(
                "INSERT INTO stickers (id, user_id, session_id, pack_batch_id, pack_index,
                                       style_preset_id, telegram_file_id)
                 VALUES ('{g:08x}-0000-4000-9000-00000000001{i}', {g}, '{session}',
                         '{batch}', {i}, 'grp', 'grp-{g}-{i}');"
            ));
        }
        sql.push_str("COMMIT;");
        sql
    });

    let archive = temp_dir();
    let at_spawn = writer.committed();
    let (_, at_exit) = snapshot_beside(writer, archive.path(), &url);

    let conn = catalog(archive.path());
    eprintln!("groups committed: {at_spawn} at spawn, {at_exit} at exit");
    let groups = |sql: &str| -> BTreeMap<u64, i64> {
        let mut stmt = conn.prepare(sql).expect("prepare");
        stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    let sessions = groups(
        "SELECT CAST(user_id AS INTEGER), count(*) FROM sessions WHERE mode = 'grp' GROUP BY 1",
    );
    let batches = groups(
        "SELECT CAST(user_id AS INTEGER), count(*) FROM pack_batches WHERE status = 'grp' GROUP BY 1",
    );
    let stickers = groups(
        "SELECT CAST(user_id AS INTEGER), count(*) FROM stickers WHERE style_preset_id = 'grp' GROUP BY 1",
    );
    let all: BTreeSet<u64> = sessions
        .keys()
        .chain(batches.keys())
        .chain(stickers.keys())
        .copied()
        .collect();
    for g in &all {
        assert_eq!(
            (sessions.get(g), batches.get(g), stickers.get(g)),
            (Some(&1), Some(&1), Some(&3)),
            "group {g} is torn: session, batch and stickers must be all in or all out"
        );
    }
    let k = all.len() as u64;
    eprintln!("groups in the catalog: {k}");
    assert_eq!(
        all,
        (1..=k).collect::<BTreeSet<_>>(),
        "the groups of one instant: a prefix of the commit order"
    );
    assert!(
        k >= at_spawn && k <= at_exit,
        "state taken while the snapshot ran: {at_spawn} <= {k} <= {at_exit}"
    );
    assert!(
        at_exit > k,
        "groups were committed while the snapshot was reading ({k} in, {at_exit} committed): \
         the test did not exercise concurrency"
    );
    let sticker_rows: i64 = one(&conn, "SELECT count(*) FROM stickers");
    assert_eq!(sticker_rows as u64, 50_000 + 3 * k);
    let session_rows: i64 = one(&conn, "SELECT count(*) FROM sessions");
    assert_eq!(session_rows as u64, 100_000 + k);
    let sheets: i64 = one(
        &conn,
        "SELECT count(*) FROM refs WHERE class = 'pack_sheet' AND pack_batch_id IS NOT NULL",
    );
    assert_eq!(
        sheets as u64, k,
        "every group's sheet is attached to its batch"
    );
}

/// A directory of CSV exports and the database they came from give the same
/// refs, the same plan and the same rows (time columns aside).
#[test]
fn csv_and_postgres_give_the_same_refs() {
    let pg = TestPg::start();
    let url = pg.fixture_db("bot");
    let from_pg = temp_dir();
    let from_csv = temp_dir();
    let a = snapshot_ok(from_pg.path(), &url, &[]);
    let b = snapshot_ok(from_csv.path(), FIXTURE_DB, &[]);
    assert_eq!(a["tables"], b["tables"], "same counts");

    let (pa, pb) = (catalog(from_pg.path()), catalog(from_csv.path()));
    let (ra, rb) = (refs_of(&pa), refs_of(&pb));
    assert_eq!(ra.len(), 26);
    assert_eq!(ra, rb, "same refs from Postgres and from CSV");
    for table in TABLES {
        let (x, y) = (catalog_rows(&pa, table), catalog_rows(&pb, table));
        assert_eq!(
            x.keys().collect::<Vec<_>>(),
            y.keys().collect::<Vec<_>>(),
            "{table} ids"
        );
        for (id, row) in &x {
            assert_eq!(
                without_times(row),
                without_times(&y[id]),
                "{table} {id}: non-time columns"
            );
        }
    }
    drop((pa, pb));
    assert_eq!(
        plan_json(from_pg.path(), &[]),
        plan_json(from_csv.path(), &[])
    );
}

/// `snapshot --env` copies only the rows of sessions with that env (stickers
/// and batches by their session; a row of an unknown session is left out),
/// from Postgres and from CSV alike; a later snapshot without it adds the rest.
#[test]
fn env_limits_the_rows_copied() {
    let pg = TestPg::start();
    let url = pg.fixture_db("bot");
    for db in [url.as_str(), FIXTURE_DB] {
        let archive = temp_dir();
        let test_only = snapshot_ok(archive.path(), db, &["--env", "test"]);
        assert_eq!(counts(&test_only, "sessions").0, 4, "{db}: {test_only}");
        assert_eq!(counts(&test_only, "pack_batches").0, 1, "{db}: {test_only}");
        assert_eq!(counts(&test_only, "stickers").0, 4, "{db}: {test_only}");
        let conn = catalog(archive.path());
        let other_envs: i64 = one(
            &conn,
            "SELECT count(*) FROM sessions WHERE env IS NOT 'test'",
        );
        assert_eq!(other_envs, 0, "{db}");
        let foreign: i64 = one(
            &conn,
            "SELECT count(*) FROM stickers WHERE session_id NOT IN (SELECT id FROM sessions)",
        );
        assert_eq!(
            foreign, 0,
            "{db}: no sticker of another env or of no session"
        );
        let refs: BTreeMap<Option<String>, i64> = {
            let mut stmt = conn
                .prepare("SELECT env, count(*) FROM refs GROUP BY env")
                .expect("prepare");
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .map(|r| r.expect("row"))
                .collect()
        };
        assert_eq!(refs, BTreeMap::from([(Some("test".to_owned()), 8)]), "{db}");
        drop(conn);

        // --env is global: after the command's name too, and repeatable.
        let out = starchive(
            archive.path(),
            &[
                "snapshot", "--db", db, "--json", "--env", "prod", "--env", "test",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let both: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(counts(&both, "sessions"), (11, 7, 0, 0, 0), "{db}: {both}");
        assert_eq!(counts(&both, "stickers"), (15, 11, 0, 0, 0), "{db}: {both}");
        assert_eq!(
            counts(&both, "pack_batches"),
            (4, 3, 0, 0, 0),
            "{db}: {both}"
        );
        assert_eq!(plan_json(archive.path(), &[])["total"]["refs"], 25, "{db}");

        let all = snapshot_ok(archive.path(), db, &[]);
        assert_eq!(counts(&all, "stickers"), (16, 1, 0, 0, 0), "{db}: {all}");
        assert_eq!(plan_json(archive.path(), &[])["total"]["refs"], 26, "{db}");
    }
}

/// A re-snapshot with `--env` takes an unchanged sticker's session from the
/// catalog's text, not the database's: a session that moved to another env
/// takes its unchanged stickers and their refs out, and one that moved in
/// brings its stickers in, whose text changed nowhere.
#[test]
fn env_follows_a_session_that_changed_env_under_unchanged_stickers() {
    let pg = TestPg::start();
    let url = pg.fixture_db("bot");
    let archive = temp_dir();
    let first = snapshot_ok(archive.path(), &url, &["--env", "test"]);
    let (stickers_before, ..) = counts(&first, "stickers");
    // A test session with stickers goes to prod, a prod one with stickers
    // comes to test; no sticker row changes.
    let moved = |env: &str| -> String {
        pg.psql(
            "bot",
            &format!(
                "SELECT s.id FROM sessions s WHERE s.env = '{env}'
                 AND EXISTS (SELECT 1 FROM stickers t WHERE t.session_id = s.id)
                 ORDER BY s.id LIMIT 1"
            ),
        )
        .trim()
        .to_string()
    };
    let (out_of_test, into_test) = (moved("test"), moved("prod"));
    assert!(!out_of_test.is_empty() && !into_test.is_empty());
    let stickers_of = |session: &str| -> u64 {
        pg.psql(
            "bot",
            &format!("SELECT count(*) FROM stickers WHERE session_id = '{session}'"),
        )
        .trim()
        .parse()
        .expect("a count")
    };
    let (leaving, coming) = (stickers_of(&out_of_test), stickers_of(&into_test));
    pg.psql(
        "bot",
        &format!(
            "UPDATE sessions SET env = CASE WHEN id = '{out_of_test}' THEN 'prod' ELSE 'test' END
             WHERE id IN ('{out_of_test}', '{into_test}')"
        ),
    );
    let again = snapshot_ok(archive.path(), &url, &["--env", "test"]);
    assert_eq!(
        counts(&again, "stickers"),
        (stickers_before - leaving + coming, coming, 0, leaving, 0),
        "{again}"
    );
    let conn = catalog(archive.path());
    let of_session = |session: &str, sql: &str| -> i64 { one(&conn, &sql.replace("{s}", session)) };
    for (session, rows) in [(&out_of_test, 0), (&into_test, coming as i64)] {
        assert_eq!(
            of_session(
                session,
                "SELECT count(*) FROM stickers WHERE session_id = '{s}'"
            ),
            rows,
            "{session}"
        );
        assert_eq!(
            of_session(
                session,
                "SELECT count(*) FROM refs WHERE class = 'sticker' AND session_id = '{s}'"
            ),
            rows,
            "{session}: its sticker refs follow its rows"
        );
    }
    // A third run changes nothing.
    let third = snapshot_ok(archive.path(), &url, &["--env", "test"]);
    assert_eq!(
        counts(&third, "stickers"),
        (stickers_before - leaving + coming, 0, 0, 0, 0),
        "{third}"
    );
}

/// Rows a snapshot cannot use are skipped and counted, never a crash: from
/// Postgres (no id, a duplicate id) and from CSV (wrong field count, no id, a
/// non-integer index). A photos value that is not an array of file ids
/// drops only the photo refs: the row is kept and counted as a warning.
#[test]
fn malformed_rows_are_skipped_and_counted() {
    let pg = TestPg::start();
    let url = pg.fixture_db("bot");
    pg.psql(
        "bot",
        &format!(
            "ALTER TABLE stickers DROP CONSTRAINT stickers_pkey;
             ALTER TABLE stickers ALTER COLUMN id DROP NOT NULL;
             ALTER TABLE stickers ALTER COLUMN id TYPE text;
             INSERT INTO stickers (id, user_id, telegram_file_id) VALUES (NULL, 1, 'F-no-id');
             INSERT INTO stickers (id, user_id, telegram_file_id) VALUES ('', 1, 'F-empty-id');
             INSERT INTO stickers (id, user_id, telegram_file_id) VALUES ('{dup}', 1, 'F-dup');
             INSERT INTO sessions (id, user_id, photos) VALUES ('{b1}', 1, '[1, 2]'), ('{b2}', 1, '\"x\"');",
            dup = fid(301),
            b1 = fid(991),
            b2 = fid(992),
        ),
    );
    let archive = temp_dir();
    // A snapshot's report and log, each skipped row named by its id when it
    // has one, even an empty one; `added`: rows new to the catalog.
    let snapshot_skipping = |added: u64| -> (Value, String) {
        let out = starchive(archive.path(), &["snapshot", "--json", "--db", &url]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let report: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(
            counts(&report, "sessions"),
            (13, 13 * added, 0, 0, 0),
            "{report}"
        );
        assert_eq!(report["tables"]["sessions"]["warnings"], 2, "{report}");
        assert_eq!(
            counts(&report, "stickers"),
            (16, 16 * added, 0, 0, 3),
            "{report}"
        );
        let err = stderr(&out);
        for skipped in [
            "stickers a row: skipped: no id",
            "stickers id \"\": skipped: the id is empty",
            &format!(
                "stickers id {}: skipped: a second row with the same id",
                fid(301)
            ),
        ] {
            assert!(err.contains(skipped), "no {skipped:?} in\n{err}");
        }
        (report, err)
    };
    let (report, err) = snapshot_skipping(1);
    assert_eq!(counts(&report, "pack_batches"), (4, 4, 0, 0, 0), "{report}");
    assert!(err.contains(&fid(992)), "{err}");
    // Postgres cuts no value: no word of an export's size limit.
    assert!(
        err.contains(&format!(
            "sessions id {}: column photos is malformed: the row is kept",
            fid(992)
        )),
        "{err}"
    );
    assert!(!err.contains("size limit"), "{err}");
    let conn = catalog(archive.path());
    let bad: i64 = one(
        &conn,
        &format!(
            "SELECT count(*) FROM v_rows WHERE id IN ('{}', '{}')",
            fid(991),
            fid(992)
        ),
    );
    assert_eq!(bad, 2, "rows with malformed photos are kept");
    assert_eq!(
        refs_of(&conn).len(),
        26,
        "the good rows' refs are all there"
    );
    drop(conn);

    // A re-snapshot, which compares most rows' text before it parses them,
    // skips, warns and counts the same rows again.
    snapshot_skipping(0);
    assert_eq!(refs_of(&catalog(archive.path())).len(), 26);

    // CSV: the fixtures plus broken lines.
    let dir = temp_dir();
    for table in TABLES {
        let mut text = std::fs::read_to_string(Path::new(FIXTURE_DB).join(format!("{table}.csv")))
            .expect("fixture");
        match table {
            "sessions" => {
                text.push_str("00000000-0000-4000-8000-000000000993,1,en,prod\r\n");
                text.push_str(
                    ",1,en,prod,single,,[],F-x,,,2025-01-01 00:00:00+00,2025-01-01 00:00:00+00\r\n",
                );
                text.push_str("00000000-0000-4000-8000-000000000994,1,en,prod,single,,not json,,,,2025-01-01 00:00:00+00,2025-01-01 00:00:00+00\r\n");
            }
            "stickers" => {
                text.push_str("00000000-0000-4000-8000-000000000995,1,,,one,,F-y,,2025-01-01 00:00:00+00,\r\n");
            }
            _ => {}
        }
        std::fs::write(dir.path().join(format!("{table}.csv")), text).expect("write csv");
    }
    let archive = temp_dir();
    let csv = dir.path().to_str().expect("utf-8 path");
    let out = starchive(archive.path(), &["snapshot", "--json", "--db", csv]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    // An export's malformed value is most likely cut at its size limit.
    assert!(
        stderr(&out).contains(
            "sessions id 00000000-0000-4000-8000-000000000994: column photos is malformed \
             (an export cut at its size limit?)"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(counts(&report, "sessions"), (12, 12, 0, 0, 2), "{report}");
    assert_eq!(report["tables"]["sessions"]["warnings"], 1, "{report}");
    assert_eq!(counts(&report, "stickers"), (16, 16, 0, 0, 1), "{report}");
    assert_eq!(counts(&report, "pack_batches"), (4, 4, 0, 0, 0), "{report}");
}

/// A skipped CSV row is named by the line it starts on in the file, whatever
/// the line ends (`\r\n` put the crate's count one short), blank lines and
/// quoted fields spanning lines before it; with its id when it has one.
#[test]
fn skipped_csv_rows_name_their_file_line() {
    let header = "id,user_id,session_id,pack_batch_id,pack_index,style_preset_id,telegram_file_id,result_storage_path,created_at";
    let good = |i: u32| format!("st-{i},1,s1,,,cartoon,F-{i},,2025-01-01 00:00:00+00");
    // Physical lines of stickers.csv; the skipped rows at lines 10, 13 and 15.
    let mut lines = vec![header.to_string()];
    lines.extend((1..=5).map(good)); // lines 2-6
    lines.push("st-q,1,s1,,,\"a style".into()); // lines 7-8: one quoted field on two lines
    lines.push("on two lines\",F-q,,2025-01-01 00:00:00+00".into());
    lines.push(String::new()); // line 9: blank
    lines.push("st-short,1,s1".into()); // line 10: too few fields
    lines.push(good(6)); // line 11
    lines.push(String::new()); // line 12: blank
    lines.push("st-index,1,s1,b1,one,,F-i,,2025-01-01 00:00:00+00".into()); // line 13
    lines.push(good(7)); // line 14
    lines.push(",1,s1,,,,F-noid,,2025-01-01 00:00:00+00".into()); // line 15: no id
    for end in ["\n", "\r\n"] {
        let dir = temp_dir();
        for table in ["sessions", "pack_batches"] {
            std::fs::copy(
                Path::new(FIXTURE_DB).join(format!("{table}.csv")),
                dir.path().join(format!("{table}.csv")),
            )
            .expect("copy fixture");
        }
        let mut text = lines.join(end);
        text.push_str(end);
        std::fs::write(dir.path().join("stickers.csv"), text).expect("write csv");
        let archive = temp_dir();
        let db = dir.path().to_str().expect("utf-8 path");
        let out = starchive(archive.path(), &["snapshot", "--json", "--db", db]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let report: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(
            report["tables"]["stickers"]["skipped"], 3,
            "{end:?}: {report}"
        );
        let err = stderr(&out);
        for at in [
            "stickers line 10 (id st-short): skipped",
            "stickers line 13 (id st-index): skipped",
            "stickers line 15: skipped: no id",
        ] {
            assert!(err.contains(at), "{end:?}: no {at:?} in\n{err}");
        }
    }
}

/// A source that lacks optional tables and columns still snapshots; one with
/// no `sessions` table is refused with a clear message and exit 1.
#[test]
fn missing_optional_tables_and_columns_still_snapshot() {
    let pg = TestPg::start();
    pg.create_db("old");
    pg.psql(
        "old",
        "CREATE TABLE sessions (id uuid PRIMARY KEY, user_id bigint, last_sticker_file_id text);
         INSERT INTO sessions VALUES ('00000000-0000-4000-8000-000000000001', 5, 'F-1'),
                                     ('00000000-0000-4000-8000-000000000002', 6, NULL);",
    );
    let archive = temp_dir();
    let report = snapshot_ok(archive.path(), &pg.url("old"), &[]);
    assert_eq!(counts(&report, "sessions"), (2, 2, 0, 0, 0), "{report}");
    assert_eq!(counts(&report, "stickers"), (0, 0, 0, 0, 0), "{report}");
    assert_eq!(counts(&report, "pack_batches"), (0, 0, 0, 0, 0), "{report}");
    let conn = catalog(archive.path());
    assert_eq!(
        refs_per_class(&conn),
        BTreeMap::from([("session_sticker".to_owned(), 1)])
    );
    drop(conn);

    pg.create_db("wrong");
    let out = starchive(temp_dir().path(), &["snapshot", "--db", &pg.url("wrong")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("sessions"), "{}", stderr(&out));
}

/// While one process holds the archive, a second `verify` or `snapshot`
/// exits 1 saying the archive is in use, and the catalog is unchanged;
/// `plan`, which only reads, runs.
#[test]
fn second_process_is_locked_out_and_changes_nothing() {
    let pg = TestPg::start();
    let url = pg.fixture_db("bot");
    let archive = temp_dir();
    snapshot_ok(archive.path(), &url, &[]);
    pg.psql(
        "bot",
        &format!(
            "DELETE FROM stickers WHERE id = '{}'; UPDATE sessions SET env = 'x';",
            fid(316)
        ),
    );
    let state = |conn: &Connection| -> (i64, i64, String) {
        (
            one(conn, "SELECT count(*) FROM snapshots"),
            one(conn, "SELECT count(*) FROM v_rows"),
            one(
                conn,
                "SELECT group_concat(table_name || id || data, '|')
                 FROM (SELECT * FROM v_rows ORDER BY table_name, id)",
            ),
        )
    };
    let before = state(&catalog(archive.path()));

    let holder =
        starchive::catalog::Catalog::open_or_create(archive.path()).expect("hold the lock");
    for args in [
        vec!["verify"],
        vec!["snapshot", "--db", url.as_str()],
        vec!["snapshot", "--db", FIXTURE_DB],
    ] {
        let out = starchive(archive.path(), &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("in use"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        assert_eq!(state(holder.conn()), before, "{args:?} changed the catalog");
    }
    let plan = starchive(archive.path(), &["plan"]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    drop(holder);
    assert_eq!(state(&catalog(archive.path())), before);
    // Once the holder is gone, the next run goes through.
    let report = snapshot_ok(archive.path(), &url, &[]);
    assert_eq!(counts(&report, "stickers"), (15, 0, 0, 1, 0), "{report}");
}

/// A `sqlite3` user with the catalog open does not stop a snapshot (which
/// then writes through the WAL), and sees the new snapshot once it is done.
#[test]
fn snapshot_runs_while_a_reader_has_the_catalog_open() {
    let archive = temp_dir();
    let first = snapshot_ok(archive.path(), FIXTURE_DB, &[]);
    let reader = catalog(archive.path());
    let refs_before: i64 = one(&reader, "SELECT count(*) FROM refs");
    assert!(refs_before > 0);

    let second = snapshot_ok(archive.path(), FIXTURE_DB, &[]);
    for table in ["sessions", "stickers", "pack_batches"] {
        let (rows, _, _, _, skipped) = counts(&first, table);
        assert_eq!(counts(&second, table), (rows, 0, 0, 0, skipped), "{second}");
    }
    assert_eq!(one::<i64>(&reader, "SELECT count(*) FROM snapshots"), 2);
    assert_eq!(
        one::<i64>(&reader, "SELECT count(*) FROM refs"),
        refs_before
    );
    assert_eq!(one::<String>(&reader, "PRAGMA journal_mode"), "wal");
}

/// The size of the archive's file `name` in bytes (0 when absent).
fn written(archive: &Path, name: &str) -> u64 {
    std::fs::metadata(archive.join(name))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Runs `snapshot --db url` into `archive` and kills it with SIGKILL once
/// it has run 300 ms and `far_enough` holds (within 20 s).
fn kill_while_writing(archive: &Path, url: &str, far_enough: impl Fn() -> bool) {
    let mut child = bin()
        .arg("--archive")
        .arg(archive)
        .args(["snapshot", "--db", url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn snapshot");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(300) || !far_enough() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the snapshot never got far enough to be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("killing the snapshot after {:?}", started.elapsed());
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the snapshot finished before it could be killed midway"
    );
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

/// A first snapshot killed with SIGKILL while writing its rows (with the
/// generated columns of `stickers` out of the schema, which its transaction
/// does) leaves the catalog as it was: no rows, and `stickers` with every
/// typed column; the next run fills it, typed columns included.
#[test]
fn first_snapshot_killed_midway_keeps_the_typed_columns() {
    let pg = TestPg::start();
    pg.create_db("bot");
    pg.load_schema("bot");
    pg.psql(
        "bot",
        "INSERT INTO sessions (id, user_id, env) VALUES
           ('00000000-0000-4000-8000-000000000001', 1, 'prod');
         INSERT INTO stickers (id, user_id, session_id, telegram_file_id, result_storage_path)
           SELECT ('00000000-0000-4000-9000-' || lpad(g::text, 12, '0'))::uuid, 1,
                  '00000000-0000-4000-8000-000000000001', 'file_' || g, 'stickers/' || g || '.webp'
           FROM generate_series(1, 200000) g;",
    );
    let url = pg.url("bot");
    let archive = temp_dir();
    // The catalog file grows by the pages SQLite's cache spills.
    kill_while_writing(archive.path(), &url, || {
        written(archive.path(), "catalog.sqlite") > 16 << 20
    });
    let columns =
        "SELECT group_concat(name || ':' || hidden, ' ') FROM pragma_table_xinfo('stickers')";
    let typed = "id:0 data:0 first_snapshot:0 changed_snapshot:0 user_id:2 session_id:2 \
                 pack_batch_id:2 pack_index:2 style_preset_id:2 telegram_file_id:2 \
                 result_storage_path:2 created_at:2";
    let conn = catalog(archive.path());
    assert_eq!(one::<String>(&conn, "PRAGMA integrity_check"), "ok");
    assert_eq!(one::<i64>(&conn, "SELECT count(*) FROM stickers"), 0);
    assert_eq!(one::<i64>(&conn, "SELECT count(*) FROM snapshots"), 0);
    assert_eq!(one::<String>(&conn, columns), typed);
    drop(conn);

    let first = snapshot_ok(archive.path(), &url, &[]);
    assert_eq!(counts(&first, "stickers"), (200_000, 200_000, 0, 0, 0));
    let conn = catalog(archive.path());
    assert_eq!(one::<String>(&conn, columns), typed);
    assert_eq!(
        one::<i64>(
            &conn,
            "SELECT count(*) FROM stickers WHERE telegram_file_id = 'file_' || (substr(id, 25) + 0)
               AND result_storage_path = 'stickers/' || (substr(id, 25) + 0) || '.webp'
               AND session_id = '00000000-0000-4000-8000-000000000001' AND user_id = 1"
        ),
        200_000
    );
}

/// A snapshot killed with SIGKILL while writing leaves the previous snapshot
/// whole (its counts, its values), the catalog intact, and the next run succeeds.
#[test]
fn snapshot_killed_midway_keeps_the_previous_one() {
    let pg = TestPg::start();
    pg.create_db("bot");
    pg.load_schema("bot");
    pg.psql(
        "bot",
        "INSERT INTO sessions (id, user_id, env, last_sticker_file_id)
           SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, g, 'prod', 'S' || g
           FROM generate_series(1, 5000) g;
         INSERT INTO stickers (id, user_id, session_id, telegram_file_id, result_storage_path)
           SELECT ('00000000-0000-4000-9000-' || lpad(g::text, 12, '0'))::uuid, g % 5000 + 1,
                  ('00000000-0000-4000-8000-' || lpad((g % 5000 + 1)::text, 12, '0'))::uuid,
                  'file_' || g, 'stickers/' || g || '.webp'
           FROM generate_series(1, 150000) g;",
    );
    let url = pg.url("bot");
    let archive = temp_dir();
    let first = snapshot_ok(archive.path(), &url, &[]);
    assert_eq!(counts(&first, "sessions"), (5000, 5000, 0, 0, 0));
    assert_eq!(counts(&first, "stickers"), (150_000, 150_000, 0, 0, 0));

    let marked = "00000000-0000-4000-9000-000000000007";
    pg.psql(
        "bot",
        &format!(
            "UPDATE stickers SET telegram_file_id = 'CHANGED' WHERE id = '{marked}';
             DELETE FROM stickers WHERE user_id = 3;
             INSERT INTO stickers (user_id, telegram_file_id) SELECT g, 'new_' || g FROM generate_series(1, 1000) g;"
        ),
    );
    let deleted: u64 = pg
        .psql("bot", "SELECT 150000 + 1000 - count(*) FROM stickers;")
        .trim()
        .parse()
        .expect("count");
    assert!(deleted > 0);

    // Second snapshot: killed once it has been writing its transaction for a
    // while: its rollback journal (or the WAL) holds over a MiB.
    let wal_before = written(archive.path(), "catalog.sqlite-wal");
    kill_while_writing(archive.path(), &url, || {
        let journal = written(archive.path(), "catalog.sqlite-journal");
        let wal = written(archive.path(), "catalog.sqlite-wal").saturating_sub(wal_before);
        journal.max(wal) > 1 << 20
    });

    // The catalog still shows exactly the first snapshot.
    let conn = catalog(archive.path());
    let ok: String = one(&conn, "PRAGMA integrity_check");
    assert_eq!(ok, "ok");
    assert_eq!(one::<i64>(&conn, "SELECT count(*) FROM snapshots"), 1);
    assert_eq!(one::<i64>(&conn, "SELECT count(*) FROM stickers"), 150_000);
    assert_eq!(one::<i64>(&conn, "SELECT count(*) FROM sessions"), 5000);
    let value: String = one(
        &conn,
        &format!(
            "SELECT json_extract(data, '$.telegram_file_id') FROM v_rows WHERE id = '{marked}'"
        ),
    );
    assert_eq!(value, "file_7", "the first snapshot's value");
    assert_eq!(one::<i64>(&conn, "SELECT count(*) FROM refs"), 155_000);
    drop(conn);

    // The next run succeeds and counts from the first snapshot.
    let third = snapshot_ok(archive.path(), &url, &[]);
    assert_eq!(
        counts(&third, "stickers"),
        (150_000 + 1000 - deleted, 1000, 1, deleted, 0),
        "{third}"
    );
    assert_eq!(counts(&third, "sessions"), (5000, 0, 0, 0, 0), "{third}");
    let conn = catalog(archive.path());
    let value: String = one(
        &conn,
        &format!("SELECT telegram_file_id FROM refs WHERE row_id = '{marked}'"),
    );
    assert_eq!(value, "CHANGED");
    // The snapshot wrote with a rollback journal; the catalog is back in WAL
    // mode for the many small commits of fetch and push.
    assert_eq!(one::<String>(&conn, "PRAGMA journal_mode"), "wal");
    assert!(!archive.path().join("catalog.sqlite-journal").exists());
}

/// The database password appears nowhere: not on stdout (text or JSON), not
/// in logs or errors, not in the catalog nor at a push destination; from
/// `--db` and from `DATABASE_URL`, in every form the driver accepts (raw
/// `# / @ :` in a URL, percent-encoded, a `password` query parameter,
/// `key=value` quoted with spaces, spaces around `=`), also when the string
/// does not parse or the connection fails.
#[test]
fn password_never_shown() {
    let pg = TestPg::start();
    let _ = pg.fixture_db("bot");
    pg.psql(
        "postgres",
        "CREATE ROLE \"postgres.abcdef\" LOGIN SUPERUSER; CREATE ROLE kv LOGIN SUPERUSER;",
    );
    let port = pg.port();
    // (what is given, the secrets it holds, whether it connects)
    let cases: Vec<(String, Vec<&str>, bool)> = vec![
        (
            format!("postgres://postgres.abcdef:pa#ss/wd@127.0.0.1:{port}/bot?sslmode=disable"),
            vec!["pa#ss/wd", "ss/wd"],
            true,
        ),
        (
            format!("postgres://postgres:Sup3r-s3cret-pa55@127.0.0.1:{port}/bot"),
            vec!["Sup3r-s3cret-pa55"],
            true,
        ),
        (
            format!("postgresql://postgres:x%40y%23z%2Fw%25v%3Au@127.0.0.1:{port}/bot"),
            vec!["x%40y%23z%2Fw%25v%3Au", "x@y#z/w%v:u", "y%23z"],
            true,
        ),
        (
            format!(
                "postgres://postgres@127.0.0.1:{port}/bot?password=Qu3ry-s3cret&sslmode=disable"
            ),
            vec!["Qu3ry-s3cret"],
            true,
        ),
        (
            format!("host=127.0.0.1 port={port} user=kv password='Hj#aF xcv736 3cC^6' dbname=bot"),
            vec!["Hj#aF", "xcv736", "3cC^6"],
            true,
        ),
        (
            format!(
                "host = 127.0.0.1 port = {port} user = kv password = Sp4ced-s3cret dbname = bot"
            ),
            vec!["Sp4ced-s3cret"],
            true,
        ),
        (
            format!("host=127.0.0.1 port={port} user=kv password=Esc4pe\\ d-s3cr\\'et dbname=bot"),
            vec!["Esc4pe", "d-s3cr"],
            true,
        ),
        // Failures name the database, never the password.
        (
            "postgres://u:N0tap0rt-s3cret@host:notaport/db".into(),
            vec!["N0tap0rt-s3cret"],
            false,
        ),
        (
            format!("postgres://postgres:pa#ss/wd@127.0.0.1:{port}/no_such_db"),
            vec!["pa#ss/wd", "ss/wd"],
            false,
        ),
        (
            "postgres://postgres:Refu5ed-s3cret@127.0.0.1:1/bot".into(),
            vec!["Refu5ed-s3cret"],
            false,
        ),
        (
            format!("host=127.0.0.1 port={port} user=kv password='Unclosed s3cret dbname=bot"),
            vec!["Unclosed", "s3cret"],
            false,
        ),
        (
            format!("host=127.0.0.1 port={port} password = 'Hj#aF xcv736 3cC^6' dbname=no_such_db"),
            vec!["Hj#aF", "xcv736", "3cC^6"],
            false,
        ),
        (
            format!("postgres://postgres:Tls-s3cret@127.0.0.1:{port}/bot?sslmode=require"),
            vec!["Tls-s3cret"],
            false,
        ),
    ];
    let archive = temp_dir();
    let mut outputs = Vec::new();
    let mut connected = 0;
    for (i, (db, _, connects)) in cases.iter().enumerate() {
        let out = snapshot_traced(archive.path(), i, db);
        let want = if *connects { 0 } else { 1 };
        assert_eq!(out.status.code(), Some(want), "{i}: {}", stderr(&out));
        if *connects {
            connected += 1;
        } else {
            let text = stderr(&out);
            assert!(
                text.contains("127.0.0.1") || text.contains("host:notaport"),
                "the error names the database: {text}"
            );
        }
        outputs.push(out);
    }
    // A source an older starchive stored unredacted is hidden by the next snapshot.
    let leaked = format!("postgres://postgres:Old-s3cret@127.0.0.1:{port}/bot");
    catalog(archive.path())
        .execute(
            "INSERT INTO snapshots(taken_at, source) VALUES ('2020-01-01T00:00:00Z', ?1)",
            [&leaked],
        )
        .expect("an old snapshot");
    let out = starchive(archive.path(), &["snapshot", "--db", &cases[1].0]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    connected += 2;
    let secrets_before: Vec<&str> = vec!["Old-s3cret"];

    let dest = temp_dir();
    let out = starchive(
        archive.path(),
        &["push", "--to", &dest.path().display().to_string()],
    );
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "push: {}",
        stderr(&out)
    );
    outputs.push(out);

    let secrets: Vec<&str> = cases
        .iter()
        .flat_map(|c| c.1.iter().copied())
        .chain(secrets_before)
        .collect();
    for out in &outputs {
        for text in [
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        ] {
            for secret in &secrets {
                assert!(!text.contains(secret), "{secret} shown:\n{text}");
            }
        }
    }
    let conn = catalog(archive.path());
    let sources: Vec<String> = {
        let mut stmt = conn
            .prepare("SELECT source FROM snapshots")
            .expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    assert_eq!(sources.len(), connected);
    assert!(
        sources.iter().all(|s| s.contains("127.0.0.1")),
        "{sources:?}"
    );
    assert!(
        sources
            .iter()
            .any(|s| s.contains("postgres.abcdef:***@127.0.0.1")),
        "the user stays shown: {sources:?}"
    );
    drop(conn);
    let mut files = Vec::new();
    for root in [archive.path(), dest.path()] {
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path);
                }
            }
        }
    }
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("_starchive/catalog.sqlite.zst")),
        "the destination holds the catalog copy: {files:?}"
    );
    for file in &files {
        let mut bytes = std::fs::read(file).expect("read file");
        // The catalog copy and the manifest are zstd streams: their text.
        if file.extension().is_some_and(|e| e == "zst") {
            bytes = zstd::decode_all(&bytes[..]).expect("a zstd stream");
        }
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} stored in {}",
                file.display()
            );
        }
    }
}

/// A role whose `statement_timeout` and `idle_in_transaction_session_timeout`
/// are 5 ms (Supabase sets such timeouts per role) snapshots tens of
/// thousands of rows: the snapshot's transaction lifts both for itself.
#[test]
fn role_timeouts_do_not_cut_the_snapshot() {
    const ROWS: u64 = 40_000;
    let pg = TestPg::start();
    pg.create_db("bot");
    pg.load_schema("bot");
    pg.psql(
        "bot",
        &format!(
            "INSERT INTO sessions (user_id, env, last_sticker_file_id)
               SELECT g, 'prod', 'fid_' || g FROM generate_series(1, {ROWS}) g;
             INSERT INTO stickers (user_id, session_id, telegram_file_id)
               SELECT user_id, id, 'st_' || user_id FROM sessions;
             CREATE ROLE hurried LOGIN;
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO hurried;
             ALTER ROLE hurried SET statement_timeout = '5ms';
             ALTER ROLE hurried SET idle_in_transaction_session_timeout = '5ms';"
        ),
    );
    let url = format!("postgres://hurried@127.0.0.1:{}/bot", pg.port());
    let archive = temp_dir();
    let report = snapshot_ok(archive.path(), &url, &[]);
    assert_eq!(counts(&report, "sessions").0, ROWS);
    assert_eq!(counts(&report, "stickers").0, ROWS);
    let conn = catalog(archive.path());
    assert_eq!(
        one::<i64>(&conn, "SELECT count(*) FROM v_refs") as u64,
        2 * ROWS
    );
}

/// URL and `key=value` parameters reach the driver as written: a
/// percent-encoded `options` means what it means to `psql` (re-encoded, `%20`
/// would become `+` and the server would refuse `+statement_timeout`), and
/// only starchive's own `sslmode` is taken out, wherever it stands.
#[test]
fn connection_parameters_reach_the_driver_unchanged() {
    let pg = TestPg::start();
    let base = pg.fixture_db("bot");
    let port = pg.port();
    for db in [
        format!("{base}?sslmode=disable&options=-c%20statement_timeout%3D5min"),
        format!("{base}?options=-c%20statement_timeout%3D5min&sslmode=disable"),
        format!("{base}?options=-c%20statement_timeout%3D5min%20-c%20search_path%3Dpublic"),
        format!("{base}?application_name=star%20chive&options=-c%20lock_timeout%3D1s"),
        format!(
            "host=127.0.0.1 port={port} user=postgres dbname=bot sslmode=disable options='-c statement_timeout=5min'"
        ),
        format!(
            "host = 127.0.0.1 port = {port} user = postgres dbname = bot sslmode = disable options = '-c statement_timeout=5min'"
        ),
    ] {
        let archive = temp_dir();
        let report = snapshot_ok(archive.path(), &db, &[]);
        assert!(counts(&report, "sessions").0 > 0, "{db}: {report}");
    }
}

/// An `sslmode` libpq refuses (its values are case sensitive) is bad usage,
/// never a plaintext connection: the test server has no TLS, so before this
/// was refused `REQUIRE` connected in plaintext and snapshotted.
#[test]
fn an_sslmode_libpq_refuses_is_bad_usage() {
    let pg = TestPg::start();
    let base = pg.fixture_db("bot");
    let port = pg.port();
    for db in [
        format!("{base}?sslmode=REQUIRE"),
        format!("{base}?sslmode=bogus"),
        format!("{base}?sslmode=disable&sslmode=Verify-Full"),
        format!("host=127.0.0.1 port={port} user=postgres dbname=bot sslmode=Require"),
    ] {
        let archive = temp_dir();
        let out = bin()
            .arg("--archive")
            .arg(archive.path())
            .args(["snapshot", "--db", &db])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{db}: {err}");
        assert!(
            err.contains("use one of disable, allow, prefer, require, verify-ca, verify-full"),
            "{db}: {err}"
        );
    }
    // libpq's own spellings connect (the server has no TLS: `prefer` and
    // `allow` fall back to plaintext, as libpq's do).
    for mode in ["disable", "allow", "prefer"] {
        let archive = temp_dir();
        let report = snapshot_ok(archive.path(), &format!("{base}?sslmode={mode}"), &[]);
        assert!(counts(&report, "sessions").0 > 0, "{mode}: {report}");
    }
}

/// A password is hidden where a message quotes it, and nowhere else: a
/// password such as `refused` or `o` once turned the driver's "Connection
/// refused (os error 111)" into `Connection ***` or `C***nnecti***n`, which
/// gave the password away.
#[test]
fn a_password_is_hidden_where_quoted_not_wherever_its_letters_occur() {
    for pw in ["refused", "o", "Connection", "111", "error"] {
        let archive = temp_dir();
        let db = format!("postgres://postgres:{pw}@127.0.0.1:1/bot");
        let out = starchive(archive.path(), &["snapshot", "--db", &db]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{pw}: {err}");
        assert!(
            err.contains("error connecting to server: Connection refused (os error 111)"),
            "{pw}: the driver's message reads whole: {err}"
        );
        assert!(
            err.contains("postgres://postgres:***@127.0.0.1:1/bot"),
            "{pw}: {err}"
        );
        assert_eq!(err.matches("***").count(), 1, "{pw}: {err}");
    }
    // The server quotes a database name that is also the password: hidden.
    let pg = TestPg::start();
    let port = pg.port();
    let pw = "nosuch_pw_db";
    let archive = temp_dir();
    let db = format!("postgres://postgres:{pw}@127.0.0.1:{port}/{pw}");
    let out = starchive(archive.path(), &["snapshot", "--json", "--db", &db]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("database \"***\" does not exist"), "{all}");
    // The URL names its database; nothing else shows those letters.
    assert!(!all.replace(&format!("/{pw}"), "").contains(pw), "{all}");
}

/// A snapshot of `db` into `archive` with every log line on: case `i` gives
/// the URL alternately on the command line and in `DATABASE_URL`, with text
/// and JSON output (where a password could show).
fn snapshot_traced(archive: &Path, i: usize, db: &str) -> Output {
    let mut cmd = bin();
    cmd.arg("--archive").arg(archive).arg("snapshot");
    if i.is_multiple_of(2) {
        cmd.args(["--db", db]);
    } else {
        cmd.arg("--json").env("DATABASE_URL", db);
    }
    cmd.env("STARCHIVE_LOG", "trace").output().expect("run")
}

/// A raw `@` in a URL's password makes the driver look up the wrong host
/// (`ss` for `p@ss/w0rd#X@127.0.0.1`): refused up front as bad usage, with
/// the advice to percent-encode, never showing the password.
#[test]
fn a_raw_at_in_a_url_password_is_bad_usage() {
    for (i, db) in [
        "postgres://postgres:p@ss/w0rd#X@127.0.0.1:55436/bot",
        "postgresql://postgres:p@ss@127.0.0.1:55436/bot?sslmode=disable",
        "postgres://postgres:p?ss@w0rd@127.0.0.1:55436/bot",
    ]
    .iter()
    .enumerate()
    {
        let archive = temp_dir();
        let out = snapshot_traced(archive.path(), i, db);
        let err = stderr(&out);
        let all = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(2), "{db}: {all}");
        assert!(
            err.contains("more than one `@` before its host")
                && err.contains("`@` as %40, `#` as %23, `/` as %2F"),
            "{db}: {err}"
        );
        for secret in ["p@ss", "w0rd", "p?ss"] {
            assert!(!all.contains(secret), "{db}: {secret} shown: {all}");
        }
    }
}

// ---- CSV exports in every style against Postgres (SPEC §7) ------------------

/// A small deterministic generator (xorshift64*), so that a failure replays.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    /// NULL, an empty string or `value`, as an SQL literal.
    fn text(&mut self, value: &str) -> String {
        match self.below(4) {
            0 => "NULL".into(),
            1 => "''".into(),
            _ => format!("'{value}'"),
        }
    }

    /// An empty string or `value`, as an SQL literal (a NOT NULL column).
    fn text_or_empty(&mut self, value: &str) -> String {
        if self.below(3) == 0 {
            "''".into()
        } else {
            format!("'{value}'")
        }
    }

    /// An instant near one of 2025's two DST changes in Europe/Berlin, as
    /// a UTC literal; few distinct values, so that batches tie.
    fn instant(&mut self) -> String {
        let change = self.pick(&["2025-10-26 01:00:00+00", "2025-03-30 01:00:00+00"]);
        let minutes = self.pick(&["-80", "-50", "-20", "-10", "10", "20", "50", "0.5"]);
        format!("(timestamptz '{change}' + interval '{minutes} minutes')")
    }
}

/// Loads a generated bot into `db`: NULLs and empty strings in typed
/// columns, pack batches created around DST changes (in the database's time
/// zone, Europe/Berlin, the same wall-clock hour happens twice), and ties.
/// With `bigint_batches`, pack batch ids are integers whose text order is
/// not their numeric order.
fn generated_bot(pg: &TestPg, db: &str, seed: u64, bigint_batches: bool) {
    pg.create_db(db);
    pg.load_schema(db);
    pg.psql(
        "postgres",
        &format!("ALTER DATABASE \"{db}\" SET timezone TO 'Europe/Berlin';"),
    );
    if bigint_batches {
        pg.psql(
            db,
            "ALTER TABLE stickers DROP CONSTRAINT stickers_pack_batch_id_fkey;
             ALTER TABLE pack_batches ALTER COLUMN id DROP DEFAULT;
             ALTER TABLE pack_batches ALTER COLUMN id TYPE bigint USING 0;
             ALTER TABLE stickers ALTER COLUMN pack_batch_id TYPE bigint USING NULL;",
        );
    }
    let mut g = Gen(seed);
    let mut sql = String::new();
    let mut batch_ids = BTreeSet::new();
    for s in 0..80u64 {
        let session = format!("{:08x}-0000-4000-8000-{s:012x}", g.next() as u32);
        let user = 1000 + g.below(5);
        let env = g.pick(&["prod", "test", ""]);
        let photos = g.pick(&["[]", r#"["ph_a", "ph_b"]"#, r#"["ph_c"]"#]);
        sql.push_str(&format!(
            "INSERT INTO sessions (id, user_id, env, mode, current_photo_file_id, photos,
                 last_sticker_file_id, last_sticker_storage_path, pack_sheet_file_id,
                 created_at, updated_at)
             VALUES ('{session}', {user}, '{env}', {mode}, {photo}, '{photos}', {last},
                 {last_key}, {sheet}, {at}, {at2});\n",
            mode = g.text_or_empty("pack"),
            photo = g.text(&format!("ph_{s}")),
            last = g.text(&format!("last_{s}")),
            last_key = g.text(&format!("stickers/{user}/{session}/last.webp")),
            sheet = if g.below(5) == 0 {
                g.text(&format!("sheet_{s}"))
            } else {
                format!("'sheet_{s}'")
            },
            at = g.instant(),
            at2 = g.instant(),
        ));
        for b in 0..g.below(5) {
            let batch = if bigint_batches {
                let mut id = 1 + g.below(1200);
                while !batch_ids.insert(id) {
                    id = 1 + g.below(1200);
                }
                id.to_string()
            } else {
                format!("{:08x}-1111-4000-8000-{:012x}", g.next() as u32, s * 10 + b)
            };
            sql.push_str(&format!(
                "INSERT INTO pack_batches (id, session_id, user_id, status,
                     cleaned_sheet_storage_path, created_at)
                 VALUES ('{batch}', '{session}', {user}, {status}, {key}, {at});\n",
                status = g.text_or_empty("done"),
                key = g.text(&format!("stickers/{user}/{batch}/sheet.png")),
                at = g.instant(),
            ));
            for i in 0..g.below(4) {
                sql.push_str(&format!(
                    "INSERT INTO stickers (user_id, session_id, pack_batch_id, pack_index,
                         style_preset_id, telegram_file_id, result_storage_path, created_at)
                     VALUES ({user}, '{session}', '{batch}', {i}, {style}, {fid}, {key}, {at});\n",
                    style = g.text("pop"),
                    fid = g.text(&format!("st_{s}_{b}_{i}")),
                    key = g.text(&format!("stickers/{user}/{batch}/{i}.webp")),
                    at = g.instant(),
                ));
            }
        }
        if g.below(2) == 0 {
            sql.push_str(&format!(
                "INSERT INTO stickers (user_id, session_id, telegram_file_id, result_storage_path)
                 VALUES ({user}, {session}, {fid}, {key});\n",
                session = if g.below(4) == 0 {
                    "NULL".to_string()
                } else {
                    format!("'{session}'")
                },
                fid = g.text(&format!("single_{s}")),
                key = g.text(&format!("stickers/{user}/{session}/single.webp")),
            ));
        }
    }
    pg.psql(db, &sql);
}

/// How the Supabase dashboard writes a table's CSV (SPEC §7).
#[derive(Clone, Copy, Debug)]
enum ExportStyle {
    /// Table editor: `TABLE_rows.csv`, `\r\n`, NULL and `''` both an empty
    /// field, quoted only where needed.
    TableEditor,
    /// SQL editor "Download CSV": a byte order mark, every name and field
    /// quoted, NULL and `''` both as `""`.
    SqlEditor,
}

/// Exports the three tables of `db` with `psql \copy` (timestamps in the
/// database's time zone) and rewrites them in `style` into `dir`.
fn export_csv(pg: &TestPg, db: &str, dir: &Path, style: ExportStyle) {
    std::fs::create_dir_all(dir).expect("export dir");
    for table in TABLES {
        let raw = dir.join(format!("{table}.psql"));
        pg.psql(
            db,
            &format!(
                "\\copy (SELECT * FROM public.{table}) TO '{}' WITH (FORMAT csv, HEADER)\n",
                raw.display()
            ),
        );
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_path(&raw)
            .expect("read psql export");
        let (name, mut out) = match style {
            ExportStyle::TableEditor => (
                format!("{table}_rows.csv"),
                csv::WriterBuilder::new()
                    .terminator(csv::Terminator::CRLF)
                    .quote_style(csv::QuoteStyle::Necessary)
                    .from_writer(Vec::new()),
            ),
            ExportStyle::SqlEditor => (
                format!("{table}.csv"),
                csv::WriterBuilder::new()
                    .quote_style(csv::QuoteStyle::Always)
                    .from_writer(b"\xEF\xBB\xBF".to_vec()),
            ),
        };
        for record in reader.records() {
            out.write_record(&record.expect("psql csv record"))
                .expect("write csv");
        }
        let bytes = out.into_inner().expect("csv bytes");
        std::fs::write(dir.join(name), bytes).expect("write export");
        std::fs::remove_file(raw).expect("remove psql export");
    }
}

/// Each session's pack sheet and the batch it is attached to.
fn sheet_batches(conn: &Connection) -> BTreeMap<String, Option<String>> {
    let mut stmt = conn
        .prepare("SELECT row_id, pack_batch_id FROM refs WHERE class = 'pack_sheet' AND row_table = 'sessions'")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

/// The same data gives the same refs from Postgres and from each of its
/// dashboard export styles, and every pack sheet is attached to the batch
/// Postgres itself calls the latest (`ORDER BY created_at DESC, id DESC`),
/// across DST changes, ties, NULLs and empty strings, uuid and bigint ids.
#[test]
fn csv_exports_in_every_style_give_the_refs_postgres_gives() {
    let pg = TestPg::start();
    for (seed, bigint_batches) in [
        (0x5eed_0001, false),
        (0x5eed_0002, true),
        (0x5eed_0003, false),
    ] {
        let db = format!("bot_{seed:x}");
        generated_bot(&pg, &db, seed, bigint_batches);
        let work = temp_dir();
        let from_pg = work.path().join("pg");
        let pg_report = snapshot_ok(&from_pg, &pg.url(&db), &[]);
        let pg_conn = catalog(&from_pg);
        let pg_refs = refs_of(&pg_conn);
        let pg_sheets = sheet_batches(&pg_conn);

        let latest: BTreeMap<String, Option<String>> = pg
            .psql(
                &db,
                "SELECT DISTINCT ON (s.id) s.id, coalesce(b.id::text, '-')
                 FROM sessions s LEFT JOIN pack_batches b ON b.session_id = s.id
                 WHERE nullif(s.pack_sheet_file_id, '') IS NOT NULL
                 ORDER BY s.id, b.created_at DESC, b.id DESC;",
            )
            .lines()
            .map(|line| {
                let (session, batch) = line.split_once('|').expect("session|batch");
                (
                    session.to_string(),
                    (batch != "-").then(|| batch.to_string()),
                )
            })
            .collect();
        assert!(latest.len() > 40, "{seed:x}: the data has pack sheets");
        assert_eq!(
            pg_sheets, latest,
            "{seed:x}: from Postgres, sheets on the latest batch"
        );
        assert!(pg_refs.len() > 150, "{seed:x}: {} refs", pg_refs.len());

        for style in [ExportStyle::TableEditor, ExportStyle::SqlEditor] {
            let exports = work.path().join(format!("{style:?}"));
            export_csv(&pg, &db, &exports, style);
            let archive = work.path().join(format!("{style:?}-archive"));
            let report = snapshot_ok(&archive, &exports.display().to_string(), &[]);
            for table in TABLES {
                assert_eq!(
                    counts(&report, table),
                    counts(&pg_report, table),
                    "{seed:x} {style:?} {table}: {report}"
                );
            }
            let conn = catalog(&archive);
            assert_eq!(
                sheet_batches(&conn),
                latest,
                "{seed:x} {style:?}: sheets on the latest batch"
            );
            let csv_refs = refs_of(&conn);
            let missing: Vec<_> = pg_refs.difference(&csv_refs).take(5).collect();
            let extra: Vec<_> = csv_refs.difference(&pg_refs).take(5).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{seed:x} {style:?}: refs differ\nonly from Postgres: {missing:#?}\nonly from CSV: {extra:#?}"
            );
        }
    }
}

/// What the Supabase dashboard really writes: `TABLE_rows.csv` with `\r\n`
/// from the table editor; a byte order mark and every name and field quoted
/// (NULL as `""`) from the SQL editor; a `photos` cell cut off at the export's
/// size limit, which drops only that row's photo refs, with a warning naming
/// the row and the column and a `warnings` count in the report; batches
/// whose `created_at` texts order the other way round from their instants.
#[test]
fn dashboard_csv_exports_are_read_as_written() {
    let dir = temp_dir();
    let exports = dir.path().join("exports");
    std::fs::create_dir_all(&exports).expect("mkdir");
    let cut_photos = format!(
        "\"[{}, \"\"AgACAgIAAxkBAAI",
        (0..300)
            .map(|i| format!("\"\"AgACAgIAAxkBAAI_{i:04}\"\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::fs::write(
        exports.join("sessions_rows.csv"),
        format!(
            "id,user_id,env,mode,photos,current_photo_file_id,last_sticker_file_id,pack_sheet_file_id,created_at\r\n\
             s-cut,7,prod,pack,{cut_photos}\",ph_cur,last_cut,sheet_cut,2025-10-26 02:30:00+02\r\n\
             s-ok,8,,,\"[\"\"ph_ok_1\"\", \"\"ph_ok_2\"\"]\",,,sheet_ok,2025-10-26 02:10:00+01\r\n"
        ),
    )
    .expect("write sessions");
    std::fs::write(
        exports.join("pack_batches_rows.csv"),
        "id,session_id,user_id,status,cleaned_sheet_storage_path,created_at\r\n\
         b-early,s-cut,7,done,,2025-10-26 02:30:00+02\r\n\
         b-late,s-cut,7,done,,2025-10-26 02:10:00+01\r\n\
         9,s-ok,8,done,,2025-03-30 03:00:00+02\r\n\
         10,s-ok,8,done,,2025-03-30 01:00:00+00\r\n",
    )
    .expect("write batches");
    std::fs::write(
        exports.join("stickers.csv"),
        "\u{feff}\"id\",\"user_id\",\"session_id\",\"pack_batch_id\",\"pack_index\",\"telegram_file_id\",\"result_storage_path\"\n\
         \"t1\",\"7\",\"s-cut\",\"b-late\",\"0\",\"st_1\",\"\"\n\
         \"t2\",\"7\",\"s-cut\",\"\",\"\",\"st_2\",\"\"\n\
         \"t3\",\"8\",\"s-ok\",\"10\",\"\",\"\",\"stickers/8/10/0.webp\"\n",
    )
    .expect("write stickers");
    let db = exports.display().to_string();

    let archive = dir.path().join("archive");
    let out = starchive(&archive, &["snapshot", "--json", "--db", &db]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(counts(&report, "sessions"), (2, 2, 0, 0, 0), "{report}");
    assert_eq!(counts(&report, "pack_batches"), (4, 4, 0, 0, 0), "{report}");
    assert_eq!(counts(&report, "stickers"), (3, 3, 0, 0, 0), "{report}");
    assert_eq!(report["tables"]["sessions"]["warnings"], 1, "{report}");
    assert_eq!(report["tables"]["stickers"]["warnings"], 0, "{report}");
    let err = stderr(&out);
    assert!(
        err.contains("sessions id s-cut") && err.contains("photos"),
        "the warning names the row and the column: {err}"
    );

    // The text report counts the warnings too.
    let text_archive = dir.path().join("text");
    let out = starchive(&text_archive, &["snapshot", "--db", &db]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text
        .lines()
        .find(|l| l.starts_with("table"))
        .expect("table header");
    assert!(header.split_whitespace().any(|w| w == "warnings"), "{text}");
    let sessions = text
        .lines()
        .find(|l| l.starts_with("sessions"))
        .expect("sessions line");
    assert_eq!(sessions.split_whitespace().last(), Some("1"), "{text}");

    // The cut row keeps its other refs; its sheet is on the batch created
    // last (02:10+01 is after 02:30+02), and 10 is after 9 at the same instant.
    let conn = catalog(&archive);
    let refs: BTreeSet<(String, String, Option<String>, Option<String>)> = {
        let mut stmt = conn
            .prepare("SELECT class, row_id, pack_batch_id, telegram_file_id FROM refs")
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    let want = |class: &str, row: &str, batch: Option<&str>, fid: Option<&str>| {
        (
            class.to_string(),
            row.to_string(),
            batch.map(str::to_string),
            fid.map(str::to_string),
        )
    };
    for r in [
        want("session_sticker", "s-cut", None, Some("last_cut")),
        want("pack_sheet", "s-cut", Some("b-late"), Some("sheet_cut")),
        want("pack_sheet", "s-ok", Some("10"), Some("sheet_ok")),
        want("sticker", "t1", Some("b-late"), Some("st_1")),
        want("sticker", "t2", None, Some("st_2")),
        want("sticker", "t3", Some("10"), None),
    ] {
        assert!(refs.contains(&r), "{r:?} missing from {refs:#?}");
    }
    assert_eq!(
        one::<Option<i64>>(&conn, "SELECT pack_index FROM stickers WHERE id = 't2'"),
        None,
        "a quoted empty pack_index is NULL"
    );
    assert_eq!(
        one::<Option<String>>(&conn, "SELECT env FROM v_refs WHERE row_id = 't3'"),
        None,
        "an empty env is no env"
    );

    // With photos in scope: the cut cell gives no photo ref, the other
    // photo columns and rows do.
    conn.execute(
        "INSERT INTO settings(key, value) VALUES ('include_photos', 'true')",
        [],
    )
    .expect("include photos");
    drop(conn);
    snapshot_ok(&archive, &db, &[]);
    let conn = catalog(&archive);
    let mut photos: Vec<(String, String)> = {
        let mut stmt = conn
            .prepare("SELECT row_id, telegram_file_id FROM refs WHERE class = 'photo'")
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    photos.sort();
    assert_eq!(
        photos,
        vec![
            ("s-cut".to_string(), "ph_cur".to_string()),
            ("s-ok".to_string(), "ph_ok_1".to_string()),
            ("s-ok".to_string(), "ph_ok_2".to_string()),
        ]
    );

    // Both names for one table: which one is meant is not guessed.
    std::fs::copy(
        exports.join("stickers.csv"),
        exports.join("stickers_rows.csv"),
    )
    .expect("copy");
    let out = starchive(&archive, &["snapshot", "--db", &db]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stickers_rows.csv"),
        "{}",
        stderr(&out)
    );
}

/// A --db value that is neither a URL nor a directory (a mistyped scheme) is
/// refused without showing its password, naming where it came from.
#[test]
fn a_mistyped_database_url_is_refused_without_its_password() {
    let archive = temp_dir();
    for (db, secret) in [
        (
            "postgres:/postgres:UrlPw2@127.0.0.1:55432/postgres",
            "UrlPw2",
        ),
        (
            "postgres//postgres:LeakA1@127.0.0.1:55432/postgres",
            "LeakA1",
        ),
        ("postgres:LeakA2@127.0.0.1:55432/postgres", "LeakA2"),
        ("postgresql:/u:Leak:A3@h/db?sslmode=require", "Leak:A3"),
        ("postgres//h/db?sslmode=require&password=LeakA4", "LeakA4"),
        ("postgre://u:LeakA5@h/db", "LeakA5"),
    ] {
        for (origin, json) in [("--db", false), ("DATABASE_URL", true)] {
            let mut cmd = bin();
            cmd.arg("--archive").arg(archive.path()).arg("snapshot");
            if json {
                cmd.arg("--json").env("DATABASE_URL", db);
            } else {
                cmd.args(["--db", db]).env_remove("DATABASE_URL");
            }
            let out = cmd.output().expect("run");
            assert_eq!(out.status.code(), Some(2), "{db}: {}", stderr(&out));
            let err = stderr(&out);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                !err.contains(secret) && !stdout.contains(secret),
                "{db}: {err}{stdout}"
            );
            assert!(
                err.contains(&format!("error: {origin} ")),
                "{db}: names {origin}: {err}"
            );
            assert!(err.contains("neither a postgres:// URL"), "{err}");
        }
        let out = bin()
            .arg("--archive")
            .arg(archive.path())
            .args(["backfill", "--to"])
            .arg(archive.path().join("dest"))
            .env("DATABASE_URL", db)
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(2),
            "backfill {db}: {}",
            stderr(&out)
        );
        let err = stderr(&out);
        assert!(!err.contains(secret), "{db}: {err}");
        assert!(
            err.contains("DATABASE_URL ") && err.contains("neither a postgres:// URL"),
            "{err}"
        );
    }
    assert!(!archive.path().join("catalog.sqlite").exists());
}

/// A CSV file without a header line (0 bytes, or blank) is no export: the
/// snapshot stops naming it and the catalog keeps its rows. A header-only
/// file is an empty table.
#[test]
fn a_csv_file_without_a_header_line_is_refused() {
    let archive = temp_dir();
    let db = temp_dir();
    for table in TABLES {
        std::fs::copy(
            Path::new(FIXTURE_DB).join(format!("{table}.csv")),
            db.path().join(format!("{table}.csv")),
        )
        .expect("copy fixture");
    }
    let dir = db.path().display().to_string();
    snapshot_ok(archive.path(), &dir, &[]);
    let rows_before = catalog_rows(&catalog(archive.path()), "pack_batches");
    let snapshots = |archive: &Path| -> i64 {
        catalog(archive)
            .query_row("SELECT count(*) FROM snapshots", [], |r| r.get(0))
            .expect("count snapshots")
    };
    let taken = snapshots(archive.path());
    let file = db.path().join("pack_batches.csv");
    let header = std::fs::read_to_string(&file)
        .expect("read")
        .lines()
        .next()
        .expect("a header")
        .to_string();
    for (content, name) in [
        ("", "pack_batches.csv"),
        ("\n", "pack_batches.csv"),
        ("\r\n\r\n", "pack_batches_rows.csv"),
        ("\u{feff}", "pack_batches_rows.csv"),
    ] {
        let _ = std::fs::remove_file(db.path().join("pack_batches.csv"));
        let _ = std::fs::remove_file(db.path().join("pack_batches_rows.csv"));
        std::fs::write(db.path().join(name), content).expect("write");
        let out = starchive(archive.path(), &["snapshot", "--db", &dir]);
        assert_eq!(out.status.code(), Some(1), "{content:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(name), "{}", stderr(&out));
        assert!(stderr(&out).contains("no header line"), "{}", stderr(&out));
        assert_eq!(
            snapshots(archive.path()),
            taken,
            "{content:?}: no snapshot taken"
        );
        assert_eq!(
            catalog_rows(&catalog(archive.path()), "pack_batches"),
            rows_before,
            "{content:?}: the catalog kept its rows"
        );
    }
    let _ = std::fs::remove_file(db.path().join("pack_batches_rows.csv"));
    std::fs::write(&file, format!("{header}\n")).expect("write header only");
    let report = snapshot_ok(archive.path(), &dir, &[]);
    let (rows, _, _, removed, _) = counts(&report, "pack_batches");
    assert_eq!((rows, removed as usize), (0, rows_before.len()), "{report}");
}

/// A client of the bot's database that commits one transaction after
/// another (`sql(g)` for g = 1, 2, …) while a snapshot reads: steady, not
/// flat out, since the snapshot needs the CPU too.
/// `snapshot --json --db url` into `archive` (its debug log on stderr)
/// while `writer` writes, then the writer stopped; the snapshot must
/// succeed. Its output, and the transactions the writer committed in all.
fn snapshot_beside(writer: Writer, archive: &Path, url: &str) -> (Output, u64) {
    let child = bin()
        .env("STARCHIVE_LOG", "starchive=debug")
        .arg("--archive")
        .arg(archive)
        .args(["snapshot", "--json", "--db", url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn snapshot");
    let out = wait_with_limit(child, Duration::from_secs(60));
    let at_exit = writer.stop();
    assert_eq!(out.status.code(), Some(0), "snapshot:\n{}", stderr(&out));
    (out, at_exit)
}

struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Starts writing, and returns once 20 transactions are in.
    fn start(url: &str, sql: impl Fn(u64) -> String + Send + 'static) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, committed, url) = (stop.clone(), committed.clone(), url.to_string());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .expect("writer connects");
                    tokio::spawn(connection);
                    let mut g: u64 = 0;
                    while !stop.load(Ordering::SeqCst) {
                        g += 1;
                        client.batch_execute(&sql(g)).await.expect("writer commits");
                        committed.store(g, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                });
            })
        };
        let writer = Writer {
            stop,
            committed,
            thread,
        };
        while writer.committed() < 20 {
            std::thread::sleep(Duration::from_millis(5));
        }
        writer
    }

    /// The transactions committed so far.
    fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Stops writing; the transactions committed in all, the one under
    /// way when asked included.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("writer thread");
        self.committed.load(Ordering::SeqCst)
    }
}
