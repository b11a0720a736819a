//! `backfill`: the database repair of SPEC §6, end to end.
//!
//! A real throwaway PostgreSQL holds the bot's tables; the in-process S3
//! server is the bot's bucket (the `--storage` that `fetch` reads and the
//! `--to` that `backfill` writes); the fake Bot API serves Telegram's files.
//! What the binary did is read back from the database (table checksums, row
//! values), from the bucket (objects, their bytes and metadata, request
//! counters) and from the catalog's `backfill_journal`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::dataset::{FIXTURE_BUCKET, FIXTURE_TELEGRAM};
use crate::support::objects::files;
use crate::support::pg::TestPg;
use crate::support::run::{Run, run};
use crate::support::s3::{SECRET_KEY, TestS3};
use crate::support::telegram::{FakeTelegram, TOKEN};
use crate::support::{bin, sha256_hex, temp_dir};

const DB: &str = "bot";
const BUCKET: &str = "stickers";
pub(crate) const TABLES: [&str; 3] = ["sessions", "pack_batches", "stickers"];

/// Sticker `...315` (env test) names this file_id; Telegram refuses it.
const INVALID_FILE_ID: &str = "CAACAgIAAxkBAAI-invalid-file-id-0000000000000000000000000000";
/// Sticker `...302` names this key; the bucket lacks it.
pub(crate) const DANGLING_KEY: &str =
    "stickers/100000001/00000000-0000-4000-8000-000000000101/1740823320000.webp";

/// Fixture uuid `00000000-0000-4000-8000-000000000NNN`.
pub(crate) fn fx(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// The columns backfill can fill in the fixtures, with the key SPEC §5 gives
/// each: `(table, row, column, key)`. Sessions `...101` and `...102` share
/// their file with a `stickers` row that has a key: that key is reused.
pub(crate) fn fixture_fills() -> Vec<(&'static str, String, &'static str, String)> {
    let session = |n: u32, key: String| ("sessions", fx(n), "last_sticker_storage_path", key);
    let sticker = |n: u32, key: String| ("stickers", fx(n), "result_storage_path", key);
    vec![
        session(
            101,
            format!("stickers/100000001/{}/1740823500000.webp", fx(101)),
        ),
        session(
            102,
            format!("stickers/100000001/{}/1740907800000.webp", fx(102)),
        ),
        session(
            103,
            format!("stickers/100000002/backfill_session/{}.webp", fx(103)),
        ),
        session(
            104,
            format!("stickers/100000002/backfill_session/{}.tgs", fx(104)),
        ),
        session(
            106,
            format!("stickers/100000003/backfill_session/{}.webm", fx(106)),
        ),
        sticker(
            306,
            format!("stickers/100000004/{}/backfill_{}.webp", fx(201), fx(306)),
        ),
        sticker(
            308,
            format!("stickers/100000004/{}/backfill_{}.webp", fx(202), fx(308)),
        ),
        sticker(
            309,
            format!("stickers/100000004/{}/backfill_{}.webp", fx(202), fx(309)),
        ),
        sticker(
            314,
            format!("stickers/100000002/{}/backfill_{}.webp", fx(204), fx(314)),
        ),
        (
            "pack_batches",
            fx(204),
            "cleaned_sheet_storage_path",
            format!("pack_sheets/{}.png", fx(204)),
        ),
    ]
}

/// Backfill's report, read from a run of it.
impl Run {
    fn steps(&self) -> Vec<Value> {
        self.json()["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("no steps in {}", self.stdout))
            .clone()
    }

    /// The steps that change (or would change) `table`/`id`.
    fn steps_for(&self, table: &str, id: &str) -> Vec<Value> {
        self.steps()
            .into_iter()
            .filter(|s| s["table"] == table && s["id"] == id)
            .collect()
    }

    /// The one step for the ref labelled `reference` with `action`.
    #[track_caller]
    fn step(&self, reference: &str, action: &str) -> Value {
        let found: Vec<Value> = self
            .steps()
            .into_iter()
            .filter(|s| s["ref"] == reference && s["action"] == action)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {action} step for {reference} expected in\n{}",
            self.stdout
        );
        found[0].clone()
    }

    /// How many steps ended with `outcome`.
    fn outcomes(&self, outcome: &str) -> usize {
        self.steps()
            .iter()
            .filter(|s| s["outcome"] == outcome)
            .count()
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so that a
/// failing test leaves no starchive running.
struct Killable(Child);

impl Killable {
    /// SIGKILL unless it ended already; true when it was still running.
    fn kill(&mut self) -> bool {
        let running = matches!(self.0.try_wait(), Ok(None));
        if running {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
        running
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The bot: its database, its bucket, Telegram, and an archive.
struct Bot {
    archive: tempfile::TempDir,
    tg: FakeTelegram,
    s3: TestS3,
    pg: TestPg,
    db: String,
}

impl Bot {
    /// The servers and an empty archive; the database holds schema.sql plus
    /// the fixtures' extra columns, and no row; the bucket is empty.
    fn start(tg: FakeTelegram) -> Bot {
        let pg = TestPg::start();
        pg.create_fixture_schema(DB);
        let s3 = TestS3::start();
        s3.create_bucket(BUCKET);
        let db = pg.url(DB);
        Bot {
            archive: temp_dir(),
            tg,
            s3,
            pg,
            db,
        }
    }

    /// The fixture dataset, snapshotted and fetched (fetch exits 3: one
    /// file_id is refused by Telegram).
    fn fixtures() -> Bot {
        let bot = Bot::start(FakeTelegram::from_dir(FIXTURE_TELEGRAM));
        bot.pg.copy_fixture_rows(DB);
        bot.s3.put_dir(BUCKET, FIXTURE_BUCKET);
        bot.snapshot();
        bot.fetch(&[]).expect_code(3);
        bot
    }

    /// `n` sessions whose last sticker is only on Telegram (no storage path,
    /// no `stickers` row), snapshotted and fetched.
    fn generated(n: usize) -> Bot {
        let bot = Bot::start(FakeTelegram::new());
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let file_id = generated_file_id(i);
            let mut bytes = b"RIFF\0\0\0\0WEBPVP8L".to_vec();
            bytes.extend_from_slice(format!("generated sticker number {i}").as_bytes());
            let len = (bytes.len() - 8) as u32;
            bytes[4..8].copy_from_slice(&len.to_le_bytes());
            bot.tg
                .add_file(&file_id, &format!("stickers/file_{i}.webp"), bytes);
            rows.push(format!(
                "('{}', {}, 'prod', 'single', '{file_id}')",
                generated_session(i),
                200_000_000 + i
            ));
        }
        bot.pg.psql(
            DB,
            &format!(
                "INSERT INTO sessions (id, user_id, env, mode, last_sticker_file_id) VALUES {};",
                rows.join(",\n")
            ),
        );
        bot.snapshot();
        bot.fetch(&["--telegram-rate", "10000", "--jobs", "16"])
            .expect_code(0);
        bot
    }

    /// `starchive --archive A ARGS` with the bucket's credentials for both
    /// roles and the Bot API in the environment.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = bin();
        cmd.arg("--archive")
            .arg(self.archive.path())
            .args(args)
            .envs(self.s3.env("STORAGE"))
            .envs(self.s3.env("TO"))
            .envs(self.tg.env());
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        run(&mut self.cmd(args))
    }

    fn snapshot(&self) {
        self.run(&["--json", "snapshot", "--db", &self.db])
            .expect_code(0);
    }

    fn fetch(&self, extra: &[&str]) -> Run {
        let storage = self.s3.store_url(BUCKET, "");
        let mut args = vec!["--json", "fetch", "--storage", &storage];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `backfill --json --db DB --to BUCKET EXTRA`.
    fn backfill_cmd(&self, extra: &[&str]) -> Command {
        let to = self.s3.store_url(BUCKET, "");
        let mut args = vec!["--json", "backfill", "--db", &self.db, "--to", &to];
        args.extend_from_slice(extra);
        self.cmd(&args)
    }

    fn backfill(&self, extra: &[&str]) -> Run {
        run(&mut self.backfill_cmd(extra))
    }

    fn sql(&self, sql: &str) -> String {
        self.pg.psql(DB, sql).trim_end().to_string()
    }

    /// md5 of every row of `table` (matching `filter`), in id order.
    fn checksum(&self, table: &str, filter: &str) -> String {
        self.sql(&format!(
            "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY id)), 'empty')
             FROM public.{table} t WHERE {filter};"
        ))
    }

    fn checksums(&self) -> BTreeMap<&'static str, String> {
        TABLES
            .into_iter()
            .map(|t| (t, self.checksum(t, "true")))
            .collect()
    }

    /// A column's value; `None` for NULL (and for a missing row).
    fn value(&self, table: &str, id: &str, column: &str) -> Option<String> {
        let out = self.sql(&format!(
            "SELECT CASE WHEN {column} IS NULL THEN 'N' ELSE 'V' || {column} END
             FROM public.{table} WHERE id = '{id}';"
        ));
        out.strip_prefix('V').map(str::to_string)
    }

    /// One row as JSON text.
    fn row(&self, table: &str, id: &str) -> String {
        self.sql(&format!(
            "SELECT to_jsonb(t)::text FROM public.{table} t WHERE id = '{id}';"
        ))
    }

    /// The Telegram file_id of the file a column names.
    fn file_id_behind(&self, table: &str, id: &str) -> String {
        let sql = match table {
            "sessions" => format!("SELECT last_sticker_file_id FROM sessions WHERE id = '{id}';"),
            "stickers" => format!("SELECT telegram_file_id FROM stickers WHERE id = '{id}';"),
            "pack_batches" => format!(
                "SELECT s.pack_sheet_file_id FROM pack_batches b
                 JOIN sessions s ON s.id = b.session_id WHERE b.id = '{id}';"
            ),
            other => panic!("no file column in {other}"),
        };
        let file_id = self.sql(&sql);
        assert!(!file_id.is_empty(), "{table} {id} names no file");
        file_id
    }

    /// SHA-256 of what Telegram serves for `file_id`.
    fn telegram_sha(&self, file_id: &str) -> String {
        sha256_hex(
            self.tg
                .file_bytes(file_id)
                .unwrap_or_else(|| panic!("Telegram has no file {file_id}")),
        )
    }

    /// Every object of the bucket: key -> SHA-256 of its bytes.
    fn objects(&self) -> BTreeMap<String, String> {
        self.s3
            .object_keys(BUCKET)
            .into_iter()
            .map(|k| {
                let bytes = self.s3.get_file(BUCKET, &k).expect("object bytes");
                (k, sha256_hex(bytes))
            })
            .collect()
    }

    /// Asserts the object at `key` holds the file `file_id` names; when
    /// starchive uploaded it, its `sha256` metadata says so too.
    #[track_caller]
    fn assert_object_holds(&self, key: &str, file_id: &str, uploaded: bool) {
        let bytes = self
            .s3
            .get_file(BUCKET, key)
            .unwrap_or_else(|| panic!("no object at {key}"));
        let sha = self.telegram_sha(file_id);
        assert_eq!(sha256_hex(&bytes), sha, "bytes of {key}");
        if uploaded {
            assert_eq!(
                self.s3.user_metadata(BUCKET, key).get("sha256"),
                Some(&sha),
                "sha256 metadata of {key}"
            );
        }
    }

    /// The catalog's journal: (action, table, row, column, value) -> state.
    fn journal(&self) -> BTreeMap<(String, String, String, String, String), String> {
        let conn = rusqlite::Connection::open_with_flags(
            self.archive.path().join("catalog.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open catalog");
        let mut stmt = conn
            .prepare(
                "SELECT action, table_name, row_id, column_name, value, state FROM backfill_journal",
            )
            .expect("prepare journal");
        stmt.query_map([], |r| {
            Ok((
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
                r.get(5)?,
            ))
        })
        .expect("query journal")
        .collect::<Result<_, _>>()
        .expect("journal rows")
    }

    /// How many journal entries are in each state.
    fn journal_states(&self) -> BTreeMap<String, usize> {
        let mut states = BTreeMap::new();
        for state in self.journal().into_values() {
            *states.entry(state).or_default() += 1;
        }
        states
    }

    /// Session ids whose last sticker has a file_id but no `stickers` row names that file.
    fn session_stickers_without_row(&self) -> Vec<String> {
        self.sql(
            "SELECT s.id FROM sessions s WHERE s.last_sticker_file_id IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM stickers t
                               WHERE t.telegram_file_id = s.last_sticker_file_id)
             ORDER BY s.id;",
        )
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// File ids named by more than one `stickers` row.
    fn duplicate_sticker_files(&self) -> String {
        self.sql(
            "SELECT telegram_file_id || ' x' || count(*) FROM stickers
             WHERE telegram_file_id IS NOT NULL
             GROUP BY telegram_file_id HAVING count(*) > 1;",
        )
    }
}

fn generated_file_id(i: usize) -> String {
    format!("CAACAgIAAxkBAAIgenerated-{i:06}")
}

fn generated_session(i: usize) -> String {
    format!("00000000-0000-4000-9000-{i:012}")
}

/// A step's identity: everything but its outcome.
fn step_identity(s: &Value) -> String {
    let mut s = s.clone();
    if let Some(o) = s.as_object_mut() {
        o.remove("outcome");
    }
    s.to_string()
}

// ---- the tests ---------------------------------------------------------------

#[test]
fn dry_run_changes_nothing() {
    let bot = Bot::fixtures();
    let tables = bot.checksums();
    let objects = bot.objects();
    bot.s3.reset_counts();

    let plain = bot.backfill(&[]);
    // The refused file_id is reported: exit 3 even in a dry run.
    plain.expect_code(3);
    let doc = plain.json();
    assert_eq!(doc["apply"], false);
    assert_eq!(doc["undo"], false);
    assert_eq!(
        plain.outcomes("would write"),
        fixture_fills().len(),
        "{}",
        plain.stdout
    );
    for (table, id, column, key) in fixture_fills() {
        let steps = plain.steps_for(table, &id);
        assert_eq!(steps.len(), 1, "{table} {id}: {}", plain.stdout);
        assert_eq!(steps[0]["column"], column);
        assert_eq!(steps[0]["key"], key.as_str());
        assert_eq!(steps[0]["outcome"], "would write");
    }

    let sync = bot.backfill(&["--sync-stickers"]);
    sync.expect_code(3);
    assert_eq!(sync.outcomes("would insert"), 4, "{}", sync.stdout);

    let human = bot.run(&[
        "backfill",
        "--db",
        &bot.db,
        "--to",
        &bot.s3.store_url(BUCKET, ""),
    ]);
    human.expect_code(3);
    assert!(human.stdout.contains("dry run"), "{}", human.stdout);

    let undo = bot.backfill(&["--undo"]);
    undo.expect_code(0);
    assert_eq!(
        undo.steps().len(),
        0,
        "nothing was written, nothing to undo"
    );

    assert_eq!(bot.checksums(), tables, "a dry run changed the database");
    assert_eq!(bot.objects(), objects, "a dry run changed the bucket");
    for category in ["PUT", "COPY", "POST", "DELETE"] {
        assert_eq!(
            bot.s3.requests(category),
            0,
            "{category} requests in a dry run"
        );
    }
    assert!(bot.journal().is_empty(), "a dry run journaled changes");
}

#[test]
fn dry_run_says_exactly_what_apply_does() {
    let bot = Bot::fixtures();
    let dry = bot.backfill(&["--sync-stickers"]);
    dry.expect_code(3);
    let apply = bot.backfill(&["--apply", "--sync-stickers"]);
    apply.expect_code(3);
    assert_eq!(apply.json()["apply"], true);

    let dry_steps: BTreeSet<String> = dry.steps().iter().map(step_identity).collect();
    let apply_steps: BTreeSet<String> = apply.steps().iter().map(step_identity).collect();
    assert_eq!(dry_steps, apply_steps, "the dry run announced other steps");

    let done: BTreeMap<String, String> = apply
        .steps()
        .iter()
        .map(|s| (step_identity(s), s["outcome"].as_str().unwrap_or("").into()))
        .collect();
    for step in dry.steps() {
        let said = step["outcome"].as_str().unwrap_or("");
        let did = done[&step_identity(&step)].as_str();
        let expected = match said {
            "would write" | "would insert" => "written",
            "would upload" => "uploaded",
            other => other,
        };
        if step["failed"] == true {
            assert_eq!(said, did, "a failure changed between dry run and apply");
        } else {
            assert_eq!(did, expected, "dry run said {said:?} for {step}");
        }
    }
    assert_eq!(dry.json()["failed"], apply.json()["failed"]);
}

#[test]
fn apply_fills_every_fillable_column_with_checked_objects() {
    let bot = Bot::fixtures();
    let objects_before = bot.objects();
    for (table, id, column, _) in fixture_fills() {
        assert_eq!(
            bot.value(table, &id, column),
            None,
            "{table} {id} is filled already"
        );
    }

    let run = bot.backfill(&["--apply"]);
    run.expect_code(3);
    let doc = run.json();
    assert_eq!(doc["failed"], 1, "only the refused file_id fails: {doc}");

    let mut new_objects = BTreeSet::new();
    for (table, id, column, key) in fixture_fills() {
        assert_eq!(
            bot.value(table, &id, column).as_deref(),
            Some(key.as_str()),
            "{table} {id} {column}"
        );
        let step = &run.steps_for(table, &id)[0];
        assert_eq!(step["outcome"], "written", "{step}");
        let reused = table == "sessions" && (id == fx(101) || id == fx(102));
        assert_eq!(
            step["action"],
            if reused { "reuse" } else { "set" },
            "{step}"
        );
        assert_eq!(step["upload"], !reused, "{step}");
        bot.assert_object_holds(&key, &bot.file_id_behind(table, &id), !reused);
        if !reused {
            new_objects.insert(key.clone());
        }
    }
    // Nothing fillable is left.
    assert_eq!(
        bot.sql(
            "SELECT count(*) FROM sessions
             WHERE last_sticker_file_id IS NOT NULL AND last_sticker_storage_path IS NULL;"
        ),
        "0"
    );
    assert_eq!(
        bot.sql("SELECT id FROM stickers WHERE result_storage_path IS NULL;"),
        fx(315),
        "only the sticker Telegram refuses stays without a key"
    );
    // Batch ...202 is older than ...201 and carries no sheet.
    assert_eq!(
        bot.sql("SELECT id FROM pack_batches WHERE cleaned_sheet_storage_path IS NULL;"),
        fx(202)
    );

    // The bucket gained exactly the uploaded keys and the dangling one.
    new_objects.insert(DANGLING_KEY.to_string());
    let after = bot.objects();
    let gained: BTreeSet<String> = after
        .keys()
        .filter(|k| !objects_before.contains_key(*k))
        .cloned()
        .collect();
    assert_eq!(gained, new_objects);
    for (key, sha) in &objects_before {
        assert_eq!(after.get(key), Some(sha), "{key} was overwritten");
    }

    // Every change is journaled as written.
    let journal = bot.journal();
    assert_eq!(journal.len(), fixture_fills().len(), "{journal:?}");
    for (table, id, column, key) in fixture_fills() {
        let entry = ("set".into(), table.into(), id, column.into(), key);
        assert_eq!(
            journal.get(&entry).map(String::as_str),
            Some("written"),
            "{entry:?}"
        );
    }
}

#[test]
fn values_written_meanwhile_are_kept() {
    let bot = Bot::fixtures();
    bot.backfill(&[]).expect_code(3);
    // The bot writes two of the columns between the dry run and the apply.
    let bot_session_key = "stickers/100000002/written-by-the-bot.webp";
    let bot_sticker_key = "stickers/100000004/written-by-the-bot_2.webp";
    bot.sql(&format!(
        "UPDATE sessions SET last_sticker_storage_path = '{bot_session_key}' WHERE id = '{}';
         UPDATE stickers SET result_storage_path = '{bot_sticker_key}' WHERE id = '{}';",
        fx(103),
        fx(306)
    ));

    let run = bot.backfill(&["--apply"]);
    run.expect_code(3);
    assert_eq!(
        bot.value("sessions", &fx(103), "last_sticker_storage_path")
            .as_deref(),
        Some(bot_session_key)
    );
    assert_eq!(
        bot.value("stickers", &fx(306), "result_storage_path")
            .as_deref(),
        Some(bot_sticker_key)
    );
    let left_alone = "set by someone else: left alone";
    for (table, id) in [("sessions", fx(103)), ("stickers", fx(306))] {
        let step = &run.steps_for(table, &id)[0];
        assert_eq!(step["outcome"], left_alone, "{step}");
        assert_eq!(step["failed"], false, "{step}");
    }
    let counts = &run.json()["counts"];
    assert_eq!(counts["session_sticker"][left_alone], 1, "{counts}");
    assert_eq!(counts["sticker"][left_alone], 1, "{counts}");
    // The others are written all the same.
    assert_eq!(run.outcomes("written"), fixture_fills().len() - 2);
    let states = bot.journal_states();
    assert_eq!(states.get("kept"), Some(&2), "{states:?}");

    // Undo never touches what the bot wrote.
    bot.backfill(&["--undo", "--apply"]).expect_code(0);
    assert_eq!(
        bot.value("sessions", &fx(103), "last_sticker_storage_path")
            .as_deref(),
        Some(bot_session_key)
    );
    assert_eq!(
        bot.value("stickers", &fx(306), "result_storage_path")
            .as_deref(),
        Some(bot_sticker_key)
    );
}

#[test]
fn second_apply_changes_nothing() {
    let bot = Bot::fixtures();
    bot.backfill(&["--apply", "--sync-stickers"]).expect_code(3);
    let tables = bot.checksums();
    let objects = bot.objects();
    let journal = bot.journal();

    bot.s3.reset_counts();
    let dry = bot.backfill(&["--sync-stickers"]);
    let again = bot.backfill(&["--apply", "--sync-stickers"]);
    again.expect_code(3);
    // The dry run said so, word for word.
    assert_eq!(
        dry.steps(),
        again.steps(),
        "dry run and second apply differ"
    );
    assert_eq!(
        bot.checksums(),
        tables,
        "a second apply changed the database"
    );
    assert_eq!(bot.objects(), objects);
    assert_eq!(bot.s3.requests("PUT"), 0, "{:?}", bot.s3.request_log());
    assert_eq!(again.outcomes("written"), 0, "{}", again.stdout);
    assert_eq!(again.outcomes("uploaded"), 0, "{}", again.stdout);
    assert_eq!(bot.journal(), journal);

    // The same after a fresh snapshot, which now sees the keys.
    bot.snapshot();
    bot.s3.reset_counts();
    let fresh = bot.backfill(&["--apply", "--sync-stickers"]);
    fresh.expect_code(3);
    assert_eq!(bot.checksums(), tables);
    assert_eq!(bot.objects(), objects);
    assert_eq!(bot.s3.requests("PUT"), 0, "{:?}", bot.s3.request_log());
    assert_eq!(fresh.outcomes("written"), 0, "{}", fresh.stdout);
}

#[test]
fn dangling_key_is_uploaded_back_at_that_very_key() {
    let bot = Bot::fixtures();
    assert!(bot.s3.get_file(BUCKET, DANGLING_KEY).is_none());
    let row = bot.row("stickers", &fx(302));

    let dry = bot.backfill(&[]);
    let step = dry.step(&format!("stickers/{}", fx(302)), "upload_only");
    assert_eq!(step["key"], DANGLING_KEY);
    assert_eq!(step["table"], Value::Null, "no database change: {step}");
    assert_eq!(step["outcome"], "would upload");

    let run = bot.backfill(&["--apply"]);
    let step = run.step(&format!("stickers/{}", fx(302)), "upload_only");
    assert_eq!(step["outcome"], "uploaded", "{step}");
    assert_eq!(step["upload"], true);
    bot.assert_object_holds(
        DANGLING_KEY,
        &bot.file_id_behind("stickers", &fx(302)),
        true,
    );
    assert_eq!(bot.row("stickers", &fx(302)), row, "the row was changed");
    assert!(
        !bot.journal().keys().any(|k| k.2 == fx(302)),
        "a journal entry for an upload-only step"
    );
}

#[test]
fn sync_stickers_leaves_no_session_sticker_without_a_row() {
    let bot = Bot::fixtures();
    let missing = bot.session_stickers_without_row();
    assert_eq!(missing, [fx(103), fx(104), fx(105), fx(106)]);
    let stickers_before = bot.sql("SELECT count(*) FROM stickers;");
    let objects_before = bot.objects();

    let run = bot.backfill(&["--apply", "--sync-stickers"]);
    run.expect_code(3);
    assert_eq!(bot.session_stickers_without_row(), Vec::<String>::new());
    assert_eq!(bot.duplicate_sticker_files(), "");
    assert_eq!(run.outcomes("written"), fixture_fills().len() + 4);

    // Each added row describes its session's sticker, at a key that holds it.
    for session in &missing {
        let step = run.step(&format!("sessions/{session}"), "insert");
        assert_eq!(step["outcome"], "written", "{step}");
        let id = step["id"].as_str().expect("the new row's id").to_string();
        let uuid = uuid::Uuid::parse_str(&id).expect("a uuid");
        assert_eq!(uuid.get_version_num(), 5, "{id} is not derived (v5)");
        let row = bot.sql(&format!(
            "SELECT t.user_id = s.user_id, t.session_id, t.telegram_file_id = s.last_sticker_file_id,
                    t.result_storage_path = s.last_sticker_storage_path, t.pack_batch_id IS NULL,
                    t.result_storage_path
             FROM stickers t JOIN sessions s ON s.id = t.session_id WHERE t.id = '{id}';"
        ));
        let key = row.rsplit('|').next().unwrap_or_default().to_string();
        assert_eq!(row, format!("t|{session}|t|t|t|{key}"), "row {id}");
        let uploaded = !objects_before.contains_key(&key);
        bot.assert_object_holds(&key, &bot.file_id_behind("sessions", session), uploaded);
    }
    let added: usize = bot.sql("SELECT count(*) FROM stickers;").parse().unwrap();
    assert_eq!(
        added,
        stickers_before.parse::<usize>().unwrap() + missing.len()
    );

    // A second run adds no row twice.
    let tables = bot.checksums();
    bot.backfill(&["--apply", "--sync-stickers"]).expect_code(3);
    assert_eq!(bot.checksums(), tables);
}

#[test]
fn invalid_file_id_rows_are_untouched_and_reported() {
    let bot = Bot::fixtures();
    let row = bot.row("stickers", &fx(315));
    assert!(row.contains(INVALID_FILE_ID));

    let run = bot.backfill(&["--apply", "--sync-stickers"]);
    run.expect_code(3);
    assert_eq!(
        bot.row("stickers", &fx(315)),
        row,
        "the refused sticker's row changed"
    );
    let doc = run.json();
    assert_eq!(doc["failed"], 1, "{doc}");
    assert_eq!(doc["counts"]["sticker"]["failed"], 1, "{doc}");
    let step = run.step(&format!("stickers/{}", fx(315)), "set");
    assert_eq!(step["failed"], true, "{step}");
    let reason = step["outcome"].as_str().unwrap_or_default();
    assert!(
        reason.contains("invalid file_id"),
        "Telegram's reason: {reason}"
    );
    assert!(!bot.journal().keys().any(|k| k.2 == fx(315)));

    // The human report names it too.
    let human = bot.run(&[
        "backfill",
        "--db",
        &bot.db,
        "--to",
        &bot.s3.store_url(BUCKET, ""),
        "--apply",
    ]);
    human.expect_code(3);
    let line = human
        .stdout
        .lines()
        .find(|l| l.contains(&fx(315)))
        .unwrap_or_else(|| panic!("no line for {}:\n{}", fx(315), human.stdout));
    assert!(line.contains("FAILED"), "{line}");
    assert!(line.contains("invalid file_id"), "{line}");
}

#[test]
fn undo_restores_exactly_what_it_wrote() {
    let bot = Bot::fixtures();
    let pre = bot.checksums();
    // The bot will change one value we write.
    let changed = fx(104);
    let others = format!("id <> '{changed}'");
    let pre_others = bot.checksum("sessions", &others);
    bot.backfill(&["--apply", "--sync-stickers"]).expect_code(3);
    assert_ne!(bot.checksums(), pre);
    let bot_key = "stickers/100000002/rewritten-by-the-bot.tgs";
    bot.sql(&format!(
        "UPDATE sessions SET last_sticker_storage_path = '{bot_key}' WHERE id = '{changed}';"
    ));
    let after_bot = bot.checksums();

    let dry = bot.backfill(&["--undo"]);
    dry.expect_code(0);
    assert_eq!(
        bot.checksums(),
        after_bot,
        "an undo dry run changed the database"
    );
    assert_eq!(
        dry.outcomes("changed since: would be left alone"),
        1,
        "{}",
        dry.stdout
    );
    assert_eq!(
        dry.outcomes("would set back to NULL"),
        fixture_fills().len() + 4 - 1
    );

    let undo = bot.backfill(&["--undo", "--apply"]);
    undo.expect_code(0);
    assert_eq!(
        undo.outcomes("undone"),
        fixture_fills().len() + 4 - 1,
        "{}",
        undo.stdout
    );
    let kept = undo
        .steps()
        .into_iter()
        .filter(|s| s["outcome"] == "changed since: left alone")
        .collect::<Vec<_>>();
    assert_eq!(kept.len(), 1, "{}", undo.stdout);
    assert_eq!(kept[0]["id"], changed.as_str());

    let now = bot.checksums();
    assert_eq!(now["stickers"], pre["stickers"], "stickers not restored");
    assert_eq!(
        now["pack_batches"], pre["pack_batches"],
        "pack_batches not restored"
    );
    assert_ne!(now["sessions"], pre["sessions"]);
    assert_eq!(
        bot.checksum("sessions", &others),
        pre_others,
        "other sessions not restored"
    );
    assert_eq!(
        bot.value("sessions", &changed, "last_sticker_storage_path")
            .as_deref(),
        Some(bot_key),
        "a value changed since was reverted"
    );
    // Putting the bot's change back to NULL gives the pre-apply table.
    bot.sql(&format!(
        "UPDATE sessions SET last_sticker_storage_path = NULL WHERE id = '{changed}';"
    ));
    assert_eq!(bot.checksums(), pre);
    assert_eq!(bot.checksum("sessions", &others), pre_others);

    // Nothing is left to undo.
    let again = bot.backfill(&["--undo", "--apply"]);
    again.expect_code(0);
    assert_eq!(again.outcomes("undone"), 0, "{}", again.stdout);
    assert_eq!(bot.checksums(), pre);
}

/// `--undo` reads tables, columns, row ids and values back from the catalog's
/// journal, a file anyone can edit: a journal that names a table or column
/// backfill never writes is refused before anything is undone, and ids and
/// values reach SQL only as escaped literals.
#[test]
fn undo_with_a_tampered_journal_runs_no_injected_sql() {
    let bot = Bot::fixtures();
    bot.backfill(&["--apply", "--sync-stickers"]).expect_code(3);
    let applied = bot.checksums();
    let journal = rusqlite::Connection::open(bot.archive.path().join("catalog.sqlite"))
        .expect("open catalog");
    let first = |table: &str| -> i64 {
        journal
            .query_row(
                "SELECT min(id) FROM backfill_journal WHERE table_name = ?1 AND state = 'written'",
                [table],
                |r| r.get(0),
            )
            .expect("a written journal entry")
    };
    let (session_entry, sticker_entry) = (first("sessions"), first("stickers"));
    let set = |id: i64, column: &str, value: &str| {
        journal
            .execute(
                &format!("UPDATE backfill_journal SET {column} = ?1 WHERE id = ?2"),
                rusqlite::params![value, id],
            )
            .expect("tamper with the journal");
    };
    for (column, bad) in [
        (
            "column_name",
            "last_sticker_storage_path = NULL; DROP TABLE stickers; --",
        ),
        ("column_name", "user_id"),
        ("column_name", "LAST_STICKER_STORAGE_PATH"),
        ("table_name", "sessions; DROP TABLE stickers; --"),
        ("table_name", "stickers"),
    ] {
        set(session_entry, column, bad);
        for args in [&["--undo"][..], &["--undo", "--apply"]] {
            let run = bot.backfill(args);
            run.expect_code(1);
            assert!(
                run.stderr.contains("journal") && run.stderr.contains("nothing was undone"),
                "{column} = {bad:?}: {}",
                run.stderr
            );
        }
        assert_eq!(
            bot.checksums(),
            applied,
            "{column} = {bad:?}: the database changed"
        );
        set(
            session_entry,
            column,
            if column == "table_name" {
                "sessions"
            } else {
                "last_sticker_storage_path"
            },
        );
    }

    // Quotes and backslashes in ids and values stay inside their literals.
    let value_of = |id: i64, column: &str| -> String {
        journal
            .query_row(
                &format!("SELECT {column} FROM backfill_journal WHERE id = ?1"),
                [id],
                |r| r.get(0),
            )
            .expect("journal entry")
    };
    let (session_row, sticker_row) = (
        value_of(session_entry, "row_id"),
        value_of(sticker_entry, "row_id"),
    );
    let session_key = value_of(session_entry, "value");
    set(session_entry, "value", "x\\'); DROP TABLE stickers; --");
    set(sticker_entry, "row_id", "\\'; DROP TABLE sessions; --");
    let undo = bot.backfill(&["--undo", "--apply"]);
    assert!(matches!(undo.code, Some(0 | 3)), "{}", undo.stderr);
    assert!(undo.outcomes("undone") > 0, "{}", undo.stdout);
    assert_eq!(
        bot.value("sessions", &session_row, "last_sticker_storage_path"),
        Some(session_key),
        "the entry whose value was altered is left alone"
    );
    assert!(
        bot.value("stickers", &sticker_row, "result_storage_path")
            .is_some(),
        "the entry whose id was altered is left alone"
    );
    assert_eq!(
        bot.sql(
            "SELECT count(*) FROM information_schema.tables
             WHERE table_schema = 'public' AND table_name IN ('sessions', 'stickers', 'pack_batches')"
        ),
        "3",
        "a table was dropped"
    );
}

/// `--undo --env` reverts only the changes to rows of that env, stickers
/// rows that `--sync-stickers` added included (the catalog has not seen them);
/// a later `--undo` without `--env` reverts the rest.
#[test]
fn undo_with_env_reverts_only_that_env() {
    let bot = Bot::fixtures();
    let pre = bot.checksums();
    bot.backfill(&["--apply", "--sync-stickers"]).expect_code(3);
    assert!(bot.session_stickers_without_row().is_empty());
    let test_sessions: BTreeSet<String> = [105, 106, 108, 110].into_iter().map(fx).collect();
    let session_of = |table: &str, id: &str| match table {
        "sessions" => id.to_string(),
        _ => bot.sql(&format!(
            "SELECT session_id FROM {table} WHERE id = '{id}';"
        )),
    };

    let undo = bot.backfill(&["--undo", "--apply", "--env", "test"]);
    undo.expect_code(0);
    assert!(undo.outcomes("undone") > 0, "{}", undo.stdout);
    for (table, id, column, _) in fixture_fills() {
        let is_test = test_sessions.contains(&session_of(table, &id));
        assert_eq!(
            bot.value(table, &id, column).is_none(),
            is_test,
            "{table} {id}: only test rows set back to NULL"
        );
    }
    assert_eq!(
        bot.session_stickers_without_row(),
        [fx(105), fx(106)],
        "only the rows added for test sessions are removed"
    );

    bot.backfill(&["--undo", "--apply"]).expect_code(0);
    assert_eq!(bot.checksums(), pre, "the rest undone without --env");
}

#[test]
fn env_limits_backfill_to_its_rows() {
    let bot = Bot::fixtures();
    let run = bot.backfill(&["--env", "test", "--apply", "--sync-stickers"]);
    // Sticker ...315 (refused by Telegram) is a test one.
    run.expect_code(3);
    assert_eq!(
        bot.value("sessions", &fx(106), "last_sticker_storage_path")
            .as_deref(),
        Some(format!("stickers/100000003/backfill_session/{}.webm", fx(106)).as_str())
    );
    for (table, id, column, _) in fixture_fills() {
        if id != fx(106) {
            assert_eq!(
                bot.value(table, &id, column),
                None,
                "prod row {table} {id} written"
            );
        }
    }
    // Rows added for the test sessions ...105 and ...106 only.
    assert_eq!(
        bot.session_stickers_without_row(),
        [fx(103), fx(104)],
        "prod sessions are left to a run without --env test"
    );
    let test_sessions: BTreeSet<String> = [105, 106, 108, 110].into_iter().map(fx).collect();
    for step in run.steps() {
        let reference = step["ref"].as_str().unwrap_or_default();
        let session = match reference.split_once('/') {
            Some(("sessions", id)) => id.to_string(),
            Some(("stickers", id)) => bot.sql(&format!(
                "SELECT session_id FROM stickers WHERE id = '{id}';"
            )),
            _ => panic!("unexpected ref {reference}"),
        };
        assert!(
            test_sessions.contains(&session),
            "step outside --env test: {step}"
        );
    }
}

#[test]
fn failed_upload_writes_no_key() {
    let bot = Bot::fixtures();
    // Every upload is refused by the bucket.
    bot.s3.fail_next("PUT", 1_000, 403);
    let run = bot.backfill(&["--apply", "--sync-stickers"]);
    run.expect_code(3);
    // No column and no added row names an object the bucket lacks.
    let keys: Vec<String> = bot
        .sql(
            "SELECT last_sticker_storage_path FROM sessions WHERE last_sticker_storage_path IS NOT NULL
             UNION ALL SELECT result_storage_path FROM stickers WHERE result_storage_path IS NOT NULL
             UNION ALL SELECT cleaned_sheet_storage_path FROM pack_batches
                       WHERE cleaned_sheet_storage_path IS NOT NULL;",
        )
        .lines()
        .map(str::to_string)
        .collect();
    let objects = bot.objects();
    let fixture_keys: BTreeSet<String> = [DANGLING_KEY.to_string()].into();
    for key in keys {
        assert!(
            objects.contains_key(&key) || fixture_keys.contains(&key),
            "{key} is written in the database but is not in the bucket\n{}",
            run.stdout
        );
    }
    // Written: the two reused keys (no upload) and the row for session
    // ...105, whose key is in the bucket already.
    assert_eq!(run.outcomes("written"), 2 + 1, "{}", run.stdout);
    for session in [fx(103), fx(104), fx(106)] {
        let step = run.step(&format!("sessions/{session}"), "insert");
        assert_eq!(step["failed"], true, "{step}");
    }
    // Nothing is left as planned: what was not written is journaled failed.
    let states = bot.journal_states();
    assert_eq!(states.get("planned"), None, "{states:?}");
    assert_eq!(states.get("written"), Some(&3), "{states:?}");
}

#[test]
fn killed_apply_resumes_without_duplicates() {
    const N: usize = 300;
    let bot = Bot::generated(N);
    let pre = bot.checksums();
    // A slower bucket and a slower database stretch the run so that kills
    // land inside it, in either phase.
    bot.s3.set_latency(Duration::from_millis(3));
    bot.sql(
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(0.003); RETURN NEW; END $$;
         CREATE TRIGGER slow_insert BEFORE INSERT ON stickers
           FOR EACH ROW EXECUTE FUNCTION slow_insert();",
    );
    let progress = || -> usize {
        let n: usize = bot
            .sql(
                "SELECT (SELECT count(*) FROM sessions WHERE last_sticker_storage_path IS NOT NULL)
                      + (SELECT count(*) FROM stickers);",
            )
            .parse()
            .expect("a count");
        n
    };
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    // Four kills at random moments spread over the run: two while keys are
    // uploaded and written (progress below N), two while stickers rows are
    // added (above N).
    let total = 2 * N as u64;
    let mut kills = Vec::new();
    for (round, quarter) in (0..4u64).enumerate() {
        let start = progress();
        let target = (quarter * total / 4 + 1 + random(total / 4 - 30)).max(start as u64 + 1);
        let mut child = Killable(
            bot.backfill_cmd(&["--apply", "--sync-stickers"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn backfill"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while (progress() as u64) < target
            && matches!(child.0.try_wait(), Ok(None))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let was_running = child.kill();
        let now = progress();
        eprintln!("kill {round}: aimed at {target}, progress {start} -> {now} of {total}");
        assert!(
            was_running && now < 2 * N,
            "kill {round} came after the run ended"
        );
        kills.push(now);
        assert_eq!(bot.duplicate_sticker_files(), "", "after kill {round}");
    }
    assert!(
        kills.iter().any(|&p| p < N),
        "no kill while keys were written: {kills:?}"
    );
    assert!(
        kills.iter().any(|&p| p > N),
        "no kill while rows were added: {kills:?}"
    );

    let last = bot.backfill(&["--apply", "--sync-stickers"]);
    last.expect_code(0);
    assert_eq!(last.json()["failed"], 0);
    assert_eq!(progress(), 2 * N, "{}", last.stdout);
    assert_eq!(bot.duplicate_sticker_files(), "");
    assert_eq!(bot.session_stickers_without_row(), Vec::<String>::new());
    assert_eq!(bot.sql("SELECT count(*) FROM stickers;"), N.to_string());
    for i in (0..N).step_by(7) {
        let session = generated_session(i);
        let key = bot
            .value("sessions", &session, "last_sticker_storage_path")
            .expect("filled");
        assert_eq!(
            key,
            format!(
                "stickers/{}/backfill_session/{session}.webp",
                200_000_000 + i
            )
        );
        bot.assert_object_holds(&key, &generated_file_id(i), true);
        let row_key = bot.sql(&format!(
            "SELECT result_storage_path FROM stickers WHERE session_id = '{session}';"
        ));
        assert_eq!(row_key, key);
    }
    assert_eq!(bot.s3.object_keys(BUCKET).len(), N);
    let states = bot.journal_states();
    assert_eq!(states.get("written"), Some(&(2 * N)), "{states:?}");

    // The journal survived the kills: undo takes the database back.
    bot.s3.set_latency(Duration::ZERO);
    bot.backfill(&["--undo", "--apply"]).expect_code(0);
    assert_eq!(bot.checksums(), pre);
}

#[test]
fn password_never_appears_in_output_or_catalog() {
    const PASSWORD: &str = "s3cretPW";
    let bot = Bot::fixtures();
    bot.sql(&format!(
        "CREATE ROLE bf LOGIN PASSWORD '{PASSWORD}';
         GRANT USAGE ON SCHEMA public TO bf;
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO bf;"
    ));
    // The cluster trusts everyone: make role bf prove its password.
    let hba = bot.pg.dir().join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(
        &hba,
        format!("host all bf 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .expect("write pg_hba.conf");
    bot.sql("SELECT pg_reload_conf();");

    let url = |password: &str| {
        format!(
            "postgres://bf:{password}@127.0.0.1:{}/{DB}?sslmode=disable",
            bot.pg.port()
        )
    };
    let to = bot.s3.store_url(BUCKET, "");
    let mut runs = Vec::new();
    // A wrong password is refused, and not shown either.
    let wrong = bot.run(&["backfill", "--db", &url("Wr0ngPW"), "--to", &to]);
    wrong.expect_code(1);
    assert!(wrong.stderr.contains("password"), "{}", wrong.stderr);
    assert!(!wrong.stderr.contains("Wr0ngPW") && !wrong.stdout.contains("Wr0ngPW"));
    assert!(
        wrong.stderr.contains("postgres://bf:***@"),
        "{}",
        wrong.stderr
    );
    runs.push(wrong);

    let good = url(PASSWORD);
    runs.push(bot.run(&["snapshot", "--db", &good]));
    runs[1].expect_code(0);
    for args in [
        vec!["backfill", "--db", &good, "--to", &to],
        vec![
            "--json",
            "backfill",
            "--db",
            &good,
            "--to",
            &to,
            "--apply",
            "--sync-stickers",
        ],
        vec!["backfill", "--db", &good, "--to", &to, "--undo"],
        vec!["backfill", "--db", &good, "--to", &to, "--undo", "--apply"],
    ] {
        let run = bot.run(&args);
        assert!(matches!(run.code, Some(0 | 3)), "{args:?}: {}", run.stderr);
        runs.push(run);
    }
    // The password in the environment instead of on the command line.
    let mut env_cmd = bot.cmd(&["backfill", "--to", &to, "--apply"]);
    env_cmd.env("DATABASE_URL", &good);
    let env_run = run(&mut env_cmd);
    env_run.expect_code(3);
    assert!(
        bot.value("stickers", &fx(306), "result_storage_path")
            .is_some(),
        "role bf wrote nothing"
    );
    runs.push(env_run);
    // An unreachable database: the error names it, without the password.
    let gone = format!("postgres://bf:{PASSWORD}@127.0.0.1:1/{DB}");
    let refused = bot.run(&["backfill", "--db", &gone, "--to", &to]);
    refused.expect_code(1);
    assert!(
        refused.stderr.contains("postgres://bf:***@127.0.0.1:1/"),
        "{}",
        refused.stderr
    );
    runs.push(refused);

    for secret in [PASSWORD, SECRET_KEY, TOKEN] {
        for run in &runs {
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "{secret} shown:\n{}\n{}",
                run.stdout,
                run.stderr
            );
        }
        for file in walk(bot.archive.path()) {
            let bytes = std::fs::read(&file).expect("read archive file");
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} stored in {}",
                file.display()
            );
        }
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    files(dir).into_iter().map(|(_, path)| path).collect()
}

/// Right after `backfill --apply`, before any new snapshot, `check --storage`
/// counts each object backfill wrote by the row whose column it filled
/// (the journal says which), never as an orphan, and says the catalog is
/// older than the backfill; a new snapshot names them by their refs. Once
/// undone (the rows back to NULL), they are orphans again.
#[test]
fn check_after_apply_counts_backfilled_objects_by_their_row() {
    let bot = Bot::fixtures();
    let storage = bot.s3.store_url(BUCKET, "");
    let check = || bot.run(&["--json", "check", "--storage", &storage]).json();
    let orphan_keys = |doc: &Value| -> BTreeSet<String> {
        doc["bucket"]["orphans"]
            .as_array()
            .expect("orphans")
            .iter()
            .map(|o| o["key"].as_str().expect("key").to_string())
            .collect()
    };
    let class_objects = |doc: &Value, class: &str| {
        doc["bucket"]["classes"][class]["objects"]
            .as_u64()
            .expect("objects")
    };
    let before = check();
    let orphans_before = orphan_keys(&before);

    bot.backfill(&["--apply"]).expect_code(3);
    // Uploaded: every fill but the two sessions that reuse a sticker's key.
    let uploaded: BTreeSet<String> = fixture_fills()
        .into_iter()
        .filter(|(table, id, _, _)| !(*table == "sessions" && (*id == fx(101) || *id == fx(102))))
        .map(|(_, _, _, key)| key)
        .collect();
    assert_eq!(uploaded.len(), 8);
    let after = check();
    assert_eq!(orphan_keys(&after), orphans_before, "{:#}", after["bucket"]);
    assert_eq!(
        after["bucket"]["backfilled_since_snapshot"], 8,
        "{:#}",
        after["bucket"]
    );
    // By the class of the column filled: 3 sessions, 4 stickers, 1 sheet
    // (and the dangling sticker key, uploaded back, a sticker's already).
    for (class, gained) in [("session_sticker", 3), ("sticker", 5), ("pack_sheet", 1)] {
        assert_eq!(
            class_objects(&after, class),
            class_objects(&before, class) + gained,
            "{class}: {:#}",
            after["bucket"]
        );
    }
    // By env: each object counts in the env of the row whose column it filled.
    let by_env: u64 = ["prod", "test"]
        .iter()
        .map(|env| {
            let doc = bot
                .run(&["--json", "--env", env, "check", "--storage", &storage])
                .json();
            assert!(
                orphan_keys(&doc).is_disjoint(&uploaded),
                "{env}: {:#}",
                doc["bucket"]
            );
            doc["bucket"]["backfilled_since_snapshot"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(by_env, 8);
    let dangling = |doc: &Value| doc["bucket"]["dangling"].as_array().map(Vec::len);
    assert_eq!(dangling(&after), Some(0), "{:#}", after["bucket"]);
    let text = bot.run(&["check", "--storage", &storage]).stdout.clone();
    assert!(
        text.contains("(8 objects backfill wrote after this snapshot are counted by the rows"),
        "{text}"
    );
    assert!(!text.contains("(no row names them"), "{text}");

    // A new snapshot: the refs name them, the note goes.
    bot.snapshot();
    let snapped = check();
    assert!(
        snapped["bucket"].get("backfilled_since_snapshot").is_none(),
        "{snapped:#}"
    );
    assert_eq!(snapped["bucket"]["classes"], after["bucket"]["classes"]);
    assert_eq!(orphan_keys(&snapped), orphans_before);

    // Undone and snapshotted: no row names the uploaded objects any more.
    bot.backfill(&["--undo", "--apply"]).expect_code(0);
    bot.snapshot();
    let undone = check();
    let mut want = orphans_before.clone();
    want.extend(uploaded);
    assert_eq!(orphan_keys(&undone), want, "{:#}", undone["bucket"]);
    assert!(undone["bucket"].get("backfilled_since_snapshot").is_none());
}

/// After `backfill --apply` and a new snapshot, a ref fetched by its
/// file_id that only gained a storage key (the one backfill wrote, for that
/// very file) stays fetched with its blob: `plan` shows it fetched and
/// `fetch` downloads nothing; nor after `backfill --undo --apply` takes the
/// key away again, or the bot moves a key: the file_id names the file. A ref
/// whose file_id changed meanwhile is a new file: fetched again.
#[test]
fn a_key_backfill_wrote_downloads_nothing_again() {
    const N: usize = 6;
    let bot = Bot::generated(N);
    let blobs_before: BTreeMap<String, Option<String>> = refs_sha(&bot);
    assert!(
        blobs_before.values().all(Option::is_some),
        "{blobs_before:?}"
    );

    bot.backfill(&["--apply"]).expect_code(0);
    let filled =
        bot.sql("SELECT count(*) FROM sessions WHERE last_sticker_storage_path IS NOT NULL;");
    assert_eq!(filled, N.to_string());
    // The bot changes one session's sticker meanwhile (a new file).
    let changed = generated_session(0);
    let new_file = "generated-file-id-changed";
    bot.tg.add_file(
        new_file,
        "stickers/changed.webp",
        b"RIFF\x0c\0\0\0WEBPVP8Lnew!".to_vec(),
    );
    bot.sql(&format!(
        "UPDATE sessions SET last_sticker_file_id = '{new_file}' WHERE id = '{changed}';"
    ));
    bot.snapshot();

    let plan = bot.run(&["--json", "plan"]).expect_code(0).json();
    let counts = &plan["classes"]["session_sticker"];
    assert_eq!(
        (
            &counts["with_storage_key"],
            &counts["fetched"],
            &counts["pending"]
        ),
        (&N.into(), &(N - 1).into(), &1.into()),
        "{plan:#}"
    );
    let after = refs_sha(&bot);
    for (session, sha) in &after {
        if *session == changed {
            assert_eq!(sha, &None, "{session}");
        } else {
            assert_eq!(sha, &blobs_before[session], "{session}: its blob is kept");
        }
    }

    let requests = bot.tg.total_requests();
    let fetched = bot.fetch(&[]).expect_code(0).json();
    assert_eq!(
        (&fetched["done"], &fetched["skipped"], &fetched["pending"]),
        (&1.into(), &(N - 1).into(), &0.into()),
        "{fetched}"
    );
    // The changed one was read from the bucket (it has a key): no Telegram call.
    assert_eq!(bot.tg.total_requests(), requests);

    // The backfill undone (the keys it wrote are NULL again) and the bot
    // moving one key elsewhere: every ref keeps its file_id, so its file.
    let after_fetch = refs_sha(&bot);
    bot.backfill(&["--undo", "--apply"]).expect_code(0);
    let moved = generated_session(1);
    bot.sql(&format!(
        "UPDATE sessions SET last_sticker_storage_path = 'stickers/moved/elsewhere.webp'
         WHERE id = '{moved}';"
    ));
    bot.snapshot();
    let plan = bot.run(&["--json", "plan"]).expect_code(0).json();
    let counts = &plan["classes"]["session_sticker"];
    assert_eq!(
        (&counts["fetched"], &counts["pending"], &counts["failed"]),
        (&N.into(), &0.into(), &0.into()),
        "undo and a moved key leave every ref fetched: {plan:#}"
    );
    assert_eq!(refs_sha(&bot), after_fetch, "every blob is kept");
    let fetched = bot.fetch(&[]).expect_code(0).json();
    assert_eq!(fetched["done"], 0, "nothing downloaded again: {fetched}");
    assert_eq!(bot.tg.total_requests(), requests);
}

/// session id -> the sha256 of its `session_sticker` ref.
fn refs_sha(bot: &Bot) -> BTreeMap<String, Option<String>> {
    let conn = rusqlite::Connection::open_with_flags(
        bot.archive.path().join("catalog.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open catalog");
    let mut stmt = conn
        .prepare("SELECT row_id, sha256 FROM refs WHERE class = 'session_sticker'")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// The `stickers` rows `backfill --apply --sync-stickers` adds name each
/// session sticker's file by its file_id and by the key backfill wrote from
/// that very blob: new refs, resolved to that blob by the next fetch with
/// no download from the bucket or Telegram.
#[test]
fn sync_stickers_rows_resolve_to_their_files_blob_without_a_download() {
    const N: usize = 5;
    let bot = Bot::generated(N);
    bot.backfill(&["--apply", "--sync-stickers"]).expect_code(0);
    bot.snapshot();
    let requests = bot.tg.total_requests();
    let fetched = bot.fetch(&[]).expect_code(0).json();
    assert_eq!(
        (&fetched["done"], &fetched["bytes"], &fetched["pending"]),
        (&N.into(), &0.into(), &0.into()),
        "{fetched}"
    );
    assert_eq!(bot.tg.total_requests(), requests);
    let conn = rusqlite::Connection::open_with_flags(
        bot.archive.path().join("catalog.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open catalog");
    // Each sticker row's blob is that of the session sticker it was added for.
    let mismatched: i64 = conn
        .query_row(
            "SELECT count(*) FROM refs t JOIN refs s
                 ON s.class = 'session_sticker' AND s.telegram_file_id = t.telegram_file_id
             WHERE t.class = 'sticker' AND (t.state <> 'fetched' OR t.sha256 IS NOT s.sha256)",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(mismatched, 0);
    let stickers: i64 = conn
        .query_row(
            "SELECT count(*) FROM refs WHERE class = 'sticker'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(stickers, N as i64);
}

/// A key the real Supabase Storage refuses (non-ASCII: 400 InvalidKey):
/// the upload-only step fails with a short reason (the key as written, the
/// status, S3's code and message, never the XML nor the encoded URL) that
/// says the bucket refuses that key; the row is left as it is.
#[test]
fn a_key_the_real_supabase_refuses_fails_its_step_with_a_short_reason() {
    let bot = Bot::start(FakeTelegram::from_dir(FIXTURE_TELEGRAM));
    bot.pg.copy_fixture_rows(DB);
    bot.s3.put_dir(BUCKET, FIXTURE_BUCKET);
    let key = "stickers/100000001/ключ ünï.webp";
    bot.sql(&format!(
        "UPDATE stickers SET result_storage_path = '{key}' WHERE id = '{}';",
        fx(302)
    ));
    bot.snapshot();
    bot.fetch(&[]).expect_code(3);
    let row = bot.row("stickers", &fx(302));
    let server = crate::support::supabase::supabase();
    let dest = server.bucket();
    let to = dest.store_url("");
    let out = run(bot
        .cmd(&["backfill", "--db", &bot.db, "--to", &to, "--apply"])
        .envs(server.env("TO")));
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("the step names the key: {}{}", out.stdout, out.stderr));
    assert!(line.contains("(upload): FAILED: "), "{line}");
    assert!(line.contains("HTTP 400 InvalidKey"), "{line}");
    assert!(line.contains("the bucket refuses that key"), "{line}");
    assert!(!line.contains("--layout"), "backfill has no layout: {line}");
    assert!(line.len() < 300, "short: {line}");
    assert!(
        !out.stdout.contains("<?xml") && !out.stdout.contains("%D0"),
        "{}",
        out.stdout
    );
    assert_eq!(bot.row("stickers", &fx(302)), row, "the row was changed");
}

/// A sticker without `user_id` has no key backfill can name: its step
/// fails with a reason that says so and that the row is left as it is,
/// never advice backfill cannot follow (a layout); apply leaves the row.
#[test]
fn a_sticker_without_user_id_is_left_with_a_reason_backfill_can_follow() {
    let bot = Bot::start(FakeTelegram::from_dir(FIXTURE_TELEGRAM));
    bot.pg.copy_fixture_rows(DB);
    bot.s3.put_dir(BUCKET, FIXTURE_BUCKET);
    bot.sql(&format!(
        "ALTER TABLE stickers ALTER COLUMN user_id DROP NOT NULL;
         UPDATE stickers SET user_id = NULL WHERE id = '{}';",
        fx(306)
    ));
    bot.snapshot();
    bot.fetch(&[]).expect_code(3);
    let row = bot.row("stickers", &fx(306));
    for args in [&[][..], &["--apply"][..]] {
        let out = bot.backfill(args);
        let steps = out.steps_for("stickers", &fx(306));
        assert_eq!(steps.len(), 1, "{}", out.stdout);
        let reason = steps[0]["outcome"].as_str().unwrap_or_default();
        assert!(
            reason.contains("no user_id") && reason.contains("backfill cannot name a key"),
            "{reason}"
        );
        assert!(!reason.contains("--layout"), "{reason}");
    }
    assert_eq!(bot.row("stickers", &fx(306)), row, "the row was changed");
}
