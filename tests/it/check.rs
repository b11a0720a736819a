//! `check`: packs, blobs and the bucket held against the database (SPEC §3).
//!
//! A bot is generated in a throwaway PostgreSQL with known faults (a pack
//! batch missing a position and holding another twice, a key no object
//! has), its files put in a bucket served by the in-process S3 server,
//! snapshotted and fetched; then the archive and the bucket are damaged in
//! known ways (a blob deleted, one corrupted, one no ref names, orphans of
//! each kind uploaded) and the report must name exactly those.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::backend::{Backend, Bucket, Kind};
use crate::support::dataset::sticker_bytes;
use crate::support::pg::TestPg;
use crate::support::run::{Run, run};
use crate::support::{bin, sha256_hex, temp_dir};

const DB: &str = "bot";

/// Prod: user 100, a pack session with two batches and two single sessions.
const S_PACK: &str = "00000000-0000-4000-8000-0000000000a1";
const B_HOLES: &str = "00000000-0000-4000-8000-0000000000b1";
const B_WHOLE: &str = "00000000-0000-4000-8000-0000000000b2";
const S_SINGLE: &str = "00000000-0000-4000-8000-0000000000a2";
const S_LAST: &str = "00000000-0000-4000-8000-0000000000a3";
/// Test: user 200, one single session and one pack batch.
const T_SINGLE: &str = "00000000-0000-4000-8000-0000000000c1";
const T_BATCH: &str = "00000000-0000-4000-8000-0000000000d1";

const SHEET_KEY: &str = "pack_sheets/b1.png";
const LAST_KEY: &str = "stickers/100/00000000-0000-4000-8000-0000000000a3/last.webp";
const SINGLE_KEY: &str = "stickers/100/00000000-0000-4000-8000-0000000000a2/1.webp";
const GONE_KEY: &str = "stickers/100/00000000-0000-4000-8000-0000000000a3/gone.webp";

/// The bot: its database, its bucket and an archive of both.
struct Bot {
    pg: TestPg,
    bucket: Bucket,
    /// Declared after the bucket: a Supabase bucket is deleted before its server goes.
    _backend: Backend,
    archive: tempfile::TempDir,
    /// Every key a row names that the bucket holds, with its bytes.
    files: BTreeMap<String, Vec<u8>>,
    seed: u64,
}

impl Bot {
    fn start(kind: Kind) -> Bot {
        let pg = TestPg::start();
        pg.create_db(DB);
        pg.load_schema(DB);
        let backend = Backend::new(kind);
        Bot {
            pg,
            bucket: backend.bucket(),
            _backend: backend,
            archive: temp_dir(),
            files: BTreeMap::new(),
            seed: 0,
        }
    }

    fn sql(&self, sql: &str) {
        self.pg.psql(DB, sql);
    }

    /// Distinct bytes for the next file, put in the bucket at `key`.
    fn file(&mut self, key: &str) {
        self.seed += 1;
        let bytes = sticker_bytes(self.seed, 200 + self.seed as usize);
        self.bucket.objects.put(key, bytes.clone());
        self.files.insert(key.to_string(), bytes);
    }

    fn session(&mut self, id: &str, user: u64, env: &str, last_key: Option<&str>) {
        if let Some(key) = last_key {
            self.file(key);
        }
        let last = last_key.map_or("NULL".to_string(), |k| format!("'{k}'"));
        self.sql(&format!(
            "INSERT INTO sessions (id, user_id, env, last_sticker_storage_path)
             VALUES ('{id}', {user}, '{env}', {last});"
        ));
    }

    fn batch(&mut self, id: &str, session: &str, user: u64, sheet: Option<&str>) {
        if let Some(key) = sheet {
            self.file(key);
        }
        let sheet = sheet.map_or("NULL".to_string(), |k| format!("'{k}'"));
        self.sql(&format!(
            "INSERT INTO pack_batches (id, session_id, user_id, cleaned_sheet_storage_path)
             VALUES ('{id}', '{session}', {user}, {sheet});"
        ));
    }

    /// A sticker row at `key`; its file is put in the bucket unless `in_bucket` is false.
    fn sticker(
        &mut self,
        session: &str,
        user: u64,
        pack: Option<(&str, i64)>,
        key: &str,
        in_bucket: bool,
    ) {
        if in_bucket {
            self.file(key);
        }
        let (batch, index) = match pack {
            Some((batch, index)) => (format!("'{batch}'"), index.to_string()),
            None => ("NULL".into(), "NULL".into()),
        };
        self.sql(&format!(
            "INSERT INTO stickers (user_id, session_id, pack_batch_id, pack_index, result_storage_path)
             VALUES ({user}, '{session}', {batch}, {index}, '{key}');"
        ));
    }

    /// A pack batch's stickers at these positions, each with its own file.
    fn pack(&mut self, session: &str, user: u64, batch: &str, indexes: &[i64]) {
        for (n, index) in indexes.iter().enumerate() {
            let key = format!("stickers/{user}/{batch}/{n}_{index}.webp");
            self.sticker(session, user, Some((batch, *index)), &key, true);
        }
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = bin();
        cmd.arg("--archive")
            .arg(self.archive.path())
            .args(args)
            .envs(self.bucket.env("STORAGE"));
        cmd
    }

    fn snapshot_and_fetch(&self) {
        run(&mut self.cmd(&["--json", "snapshot", "--db", &self.pg.url(DB)])).expect_code(0);
        let fetched = run(&mut self.cmd(&["--json", "fetch", "--storage", self.bucket.url()]));
        assert!(
            matches!(fetched.code, Some(0 | 3)),
            "fetch: {}\n{}",
            fetched.stdout,
            fetched.stderr
        );
    }

    fn check(&self, extra: &[&str]) -> Run {
        let mut args = vec!["check", "--storage", self.bucket.url()];
        args.extend_from_slice(extra);
        run(&mut self.cmd(&args))
    }

    fn blob_path(&self, key: &str) -> PathBuf {
        let sha = sha256_hex(&self.files[key]);
        blob_path(self.archive.path(), &sha)
    }
}

/// Sizes as the text report shows them.
fn human(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} bytes")
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn blob_path(archive: &Path, sha: &str) -> PathBuf {
    archive.join("blobs").join(&sha[..2]).join(sha)
}

/// The generated bot with its known faults, snapshotted and fetched.
fn faulty_bot(kind: Kind) -> Bot {
    let mut bot = Bot::start(kind);
    bot.session(S_PACK, 100, "prod", None);
    bot.batch(B_HOLES, S_PACK, 100, Some(SHEET_KEY));
    // Position 2 missing, position 3 held twice.
    bot.pack(S_PACK, 100, B_HOLES, &[0, 1, 3, 3, 4]);
    bot.batch(B_WHOLE, S_PACK, 100, None);
    bot.pack(S_PACK, 100, B_WHOLE, &[0, 1, 2]);
    // A single sticker named by its stickers row and by its session: class sticker.
    bot.session(S_SINGLE, 100, "prod", Some(SINGLE_KEY));
    bot.sql(&format!(
        "INSERT INTO stickers (user_id, session_id, result_storage_path)
         VALUES (100, '{S_SINGLE}', '{SINGLE_KEY}');"
    ));
    // Named by its session only: class session_sticker. And a sticker whose key is gone.
    bot.session(S_LAST, 100, "prod", Some(LAST_KEY));
    bot.sticker(S_LAST, 100, None, GONE_KEY, false);
    // Env test: complete, with its own single sticker.
    bot.session(T_SINGLE, 200, "test", None);
    bot.sticker(
        T_SINGLE,
        200,
        None,
        &format!("stickers/200/{T_SINGLE}/1.webp"),
        true,
    );
    bot.batch(T_BATCH, T_SINGLE, 200, None);
    bot.pack(T_SINGLE, 200, T_BATCH, &[0, 1]);
    bot.snapshot_and_fetch();
    bot
}

/// Orphans of every kind (and env) put in the bucket: key -> (size, kind).
fn add_orphans(bot: &Bot) -> BTreeMap<String, (u64, &'static str)> {
    let mut orphans = BTreeMap::new();
    let mut put = |key: String, kind: &'static str, len: usize| {
        bot.bucket.objects.put(&key, vec![b'o'; len]);
        orphans.insert(key, (len as u64, kind));
    };
    put(format!("stickers/100/{B_HOLES}/old_7.webp"), "pack", 70);
    put(format!("stickers/100/{S_SINGLE}/old.webp"), "single", 80);
    put(format!("stickers/200/{T_SINGLE}/old.webp"), "single", 90);
    put(format!("stickers/200/{T_BATCH}/old.webp"), "pack", 95);
    put("stickers/200/not-a-row/x.webp".into(), "unknown", 60);
    put("misc/readme.txt".into(), "unknown", 10);
    // The other shapes of the bot's and backfill's keys (SPEC §5): the id
    // they name is looked up in the tables as well.
    put(
        format!("stickers/100/{B_HOLES}/backfill_x.webp"),
        "pack",
        71,
    );
    put(
        format!("stickers/100/backfill_session/{S_SINGLE}.webp"),
        "single",
        81,
    );
    put(
        format!("stickers/200/backfill_session/{T_SINGLE}.tgs"),
        "single",
        82,
    );
    put(
        "stickers/100/backfill_session/not-a-row.webp".into(),
        "unknown",
        83,
    );
    put(format!("pack_sheets/{B_WHOLE}.webp"), "pack", 72);
    put(format!("pack_sheets/{T_BATCH}.png"), "pack", 73);
    put(format!("pack_sheets/session_{S_LAST}.webp"), "single", 84);
    put("pack_sheets/session_not-a-row.webp".into(), "unknown", 61);
    put("pack_sheets/not-a-row.webp".into(), "unknown", 62);
    // More unknown orphans than a text report shows.
    for i in 0..22 {
        put(
            format!("stickers/100/deadbeef/{i:02}.webp"),
            "unknown",
            100 + i,
        );
    }
    orphans
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The damage done to the archive: (deleted blob, corrupted blob, blob no ref names).
fn damage_blobs(bot: &Bot) -> (String, String, String) {
    let whole_first = format!("stickers/100/{B_WHOLE}/0_0.webp");
    let deleted = sha256_hex(&bot.files[&whole_first]);
    std::fs::remove_file(bot.blob_path(&whole_first)).expect("delete a blob");
    let corrupted = sha256_hex(&bot.files[LAST_KEY]);
    std::fs::write(bot.blob_path(LAST_KEY), b"flipped bits").expect("corrupt a blob");
    let stray = b"a file some earlier snapshot named".to_vec();
    let stray_sha = sha256_hex(&stray);
    let path = blob_path(bot.archive.path(), &stray_sha);
    std::fs::create_dir_all(path.parent().expect("fan")).expect("fan dir");
    std::fs::write(path, stray).expect("stray blob");
    (deleted, corrupted, stray_sha)
}

fn report_names_exactly_the_holes_damage_and_orphans(kind: Kind) {
    let bot = faulty_bot(kind);
    let orphans = add_orphans(&bot);
    let (deleted, corrupted, stray) = damage_blobs(&bot);

    let doc = bot.check(&["--json"]).expect_code(3).json();
    assert_eq!(doc["packs"]["batches"], 3, "{doc:#}");
    assert_eq!(doc["packs"]["complete"], 2, "{doc:#}");
    assert_eq!(
        doc["packs"]["incomplete"],
        json!([{
            "pack_batch_id": B_HOLES,
            "session_id": S_PACK,
            "stickers": 5,
            "missing_indexes": [2],
            "duplicate_indexes": [3],
            "invalid_indexes": [],
            "unindexed": 0,
            "unfetched": 0,
            "has_sheet": true,
        }])
    );
    assert_eq!(strings(&doc["blobs"]["missing"]), set(&[&deleted]));
    assert_eq!(strings(&doc["blobs"]["bad"]), set(&[&corrupted]));
    assert_eq!(strings(&doc["blobs"]["unreferenced"]), set(&[&stray]));

    let bucket = &doc["bucket"];
    let got: BTreeMap<String, (u64, String)> = bucket["orphans"]
        .as_array()
        .expect("orphans")
        .iter()
        .map(|o| {
            (
                o["key"].as_str().expect("key").to_string(),
                (
                    o["size"].as_u64().expect("size"),
                    o["kind"].as_str().expect("kind").to_string(),
                ),
            )
        })
        .collect();
    let want: BTreeMap<String, (u64, String)> = orphans
        .iter()
        .map(|(k, (size, kind))| (k.clone(), (*size, kind.to_string())))
        .collect();
    assert_eq!(got, want);
    assert_eq!(strings(&bucket["dangling"]), set(&[GONE_KEY]));
    // One key dangling beside the keys found: no prefix is wrong.
    assert!(bucket.get("hint").is_none(), "{bucket:#}");

    // Every object the rows name, by the class of the first ref naming it.
    let class_of = |key: &str| match key {
        SHEET_KEY => "pack_sheet",
        LAST_KEY => "session_sticker",
        _ => "sticker",
    };
    let mut want_classes: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (key, bytes) in &bot.files {
        let c = want_classes.entry(class_of(key)).or_default();
        c.0 += 1;
        c.1 += bytes.len() as u64;
    }
    want_classes.insert(
        "orphan",
        (orphans.len() as u64, orphans.values().map(|o| o.0).sum()),
    );
    for class in ["sticker", "session_sticker", "pack_sheet", "orphan"] {
        let (objects, bytes) = want_classes[class];
        assert_eq!(
            bucket["classes"][class],
            json!({"objects": objects, "bytes": bytes}),
            "class {class}"
        );
    }
    let total: (u64, u64) = want_classes
        .values()
        .fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
    assert_eq!(
        (bucket["objects"].as_u64(), bucket["bytes"].as_u64()),
        (Some(total.0), Some(total.1))
    );

    // The text report: a summary with the orphans' bytes, then the details, lists cut.
    let text = bot.check(&[]).expect_code(3).stdout.clone();
    let orphan_bytes: u64 = orphans.values().map(|o| o.0).sum();
    assert!(
        text.starts_with(&format!(
            "against snapshot 1, taken {}\npack batches: 3, 2 complete, 1 incomplete\n",
            doc["snapshot_taken_at"].as_str().expect("taken_at")
        )),
        "{text}"
    );
    let summary = text.split("\n\n").next().expect("summary");
    let orphan_line = summary
        .lines()
        .find(|l| l.trim_start().starts_with("orphan "))
        .unwrap_or_else(|| panic!("no orphan line in the summary:\n{text}"));
    assert!(
        orphan_line.contains(&format!("{} objects", orphans.len()))
            && orphan_line.contains(&human(orphan_bytes)),
        "{orphan_line}"
    );
    assert!(
        text.contains(&format!(
            "{B_HOLES} (session {S_PACK}): 5 stickers; missing positions 2; positions held twice 3"
        )),
        "{text}"
    );
    for sha in [&deleted, &corrupted, &stray] {
        assert!(text.contains(sha.as_str()), "{sha} not named:\n{text}");
    }
    assert!(text.contains(GONE_KEY), "{text}");
    assert!(!text.contains("hint:"), "{text}");
    assert!(
        text.contains(&format!("… and {} more", orphans.len() - 20)),
        "{text}"
    );
    assert!(
        !text.contains("stickers/100/deadbeef/21.webp"),
        "cut list shows too much:\n{text}"
    );
    let full = bot.check(&["--full"]).expect_code(3).stdout.clone();
    for key in orphans.keys() {
        assert!(
            full.contains(key.as_str()),
            "--full does not name {key}:\n{full}"
        );
    }
    assert!(!full.contains("more (--full"), "{full}");
}

/// On the in-process S3 server.
#[test]
fn report_names_exactly_the_holes_damage_and_orphans_s3s() {
    report_names_exactly_the_holes_damage_and_orphans(Kind::S3s);
}

/// On the real Supabase Storage server, through its S3 protocol.
#[test]
fn report_names_exactly_the_holes_damage_and_orphans_supabase() {
    report_names_exactly_the_holes_damage_and_orphans(Kind::Supabase);
}

#[test]
fn env_limits_packs_blobs_and_bucket_to_its_rows() {
    let bot = faulty_bot(Kind::S3s);
    let orphans = add_orphans(&bot);
    damage_blobs(&bot);

    let doc = bot
        .check(&["--json", "--env", "test"])
        .expect_code(3)
        .json();
    assert_eq!(
        doc["packs"],
        json!({"batches": 1, "complete": 1, "incomplete": []})
    );
    assert_eq!(doc["blobs"]["missing"], json!([]));
    assert_eq!(doc["blobs"]["bad"], json!([]));
    // A blob no ref names has no env: left out by any --env.
    assert_eq!(doc["blobs"]["unreferenced"], json!([]));
    assert_eq!(doc["blobs"]["checked"], 3);
    let bucket = &doc["bucket"];
    let got: BTreeSet<String> = bucket["orphans"]
        .as_array()
        .expect("orphans")
        .iter()
        .map(|o| o["key"].as_str().expect("key").to_string())
        .collect();
    // Those in user 200's folder and those whose key names a row of env test.
    let of_test =
        |k: &str| k.starts_with("stickers/200/") || k.contains(T_SINGLE) || k.contains(T_BATCH);
    let want: BTreeSet<String> = orphans.keys().filter(|k| of_test(k)).cloned().collect();
    assert!(
        want.contains(&format!("pack_sheets/{T_BATCH}.png")),
        "{want:?}"
    );
    assert_eq!(got, want);
    assert_eq!(bucket["dangling"], json!([]));
    assert_eq!(bucket["classes"]["sticker"]["objects"], 3);
    assert_eq!(bucket["classes"]["session_sticker"]["objects"], 0);
    assert_eq!(bucket["classes"]["pack_sheet"]["objects"], 0);
    assert_eq!(bucket["objects"], 3 + want.len() as u64);

    // Prod sees its own faults and none of test's orphans.
    let prod = bot
        .check(&["--json", "--env", "prod"])
        .expect_code(3)
        .json();
    assert_eq!(prod["packs"]["batches"], 2);
    assert_eq!(prod["bucket"]["dangling"], json!([GONE_KEY]));
    assert!(
        prod["bucket"]["orphans"]
            .as_array()
            .expect("orphans")
            .iter()
            .all(|o| !of_test(o["key"].as_str().expect("key"))),
        "{prod:#}"
    );
    assert!(
        prod["bucket"]["orphans"]
            .as_array()
            .expect("orphans")
            .iter()
            .any(|o| o["key"] == format!("pack_sheets/session_{S_LAST}.webp")),
        "{prod:#}"
    );
}

#[test]
fn consistent_archive_and_bucket_exit_0() {
    let mut bot = Bot::start(Kind::S3s);
    bot.session(S_PACK, 100, "prod", None);
    bot.batch(B_WHOLE, S_PACK, 100, Some(SHEET_KEY));
    bot.pack(S_PACK, 100, B_WHOLE, &[0, 1, 2]);
    bot.session(S_SINGLE, 100, "prod", Some(SINGLE_KEY));
    bot.snapshot_and_fetch();

    // Read-only: it runs while another process holds the archive (a fetch, say).
    let writer = starchive::catalog::Catalog::open_existing(bot.archive.path()).expect("lock");
    let doc = bot.check(&["--json"]).expect_code(0).json();
    drop(writer);
    assert_eq!(
        doc["packs"],
        json!({"batches": 1, "complete": 1, "incomplete": []})
    );
    // The snapshot it holds the archive against.
    assert_eq!(doc["snapshot_id"], 1, "{doc:#}");
    let taken_at = doc["snapshot_taken_at"]
        .as_str()
        .expect("taken_at")
        .to_string();
    assert!(taken_at.starts_with("20"), "{taken_at}");
    assert_eq!(
        doc["blobs"],
        json!({"checked": 5, "missing": [], "bad": [], "unreferenced": []})
    );
    assert_eq!(doc["bucket"]["objects"], 5);
    assert_eq!(
        doc["bucket"]["classes"]["orphan"],
        json!({"objects": 0, "bytes": 0})
    );
    assert_eq!(doc["bucket"]["orphans"], json!([]));
    assert_eq!(doc["bucket"]["dangling"], json!([]));
    let text = bot.check(&[]).expect_code(0).stdout.clone();
    assert!(text.contains("consistent: nothing to report"), "{text}");
    assert!(
        text.starts_with(&format!("against snapshot 1, taken {taken_at}\n")),
        "{text}"
    );

    // Without --storage: the archive alone, and no bucket in the document.
    let local = run(&mut bot.cmd(&["--json", "check"]))
        .expect_code(0)
        .json();
    assert!(local.get("bucket").is_none(), "{local:#}");

    // Before a fetch, the packs' stickers are not fetched: reported.
    bot.sql(&format!(
        "INSERT INTO stickers (user_id, session_id, pack_batch_id, pack_index, result_storage_path)
         VALUES (100, '{S_PACK}', '{B_WHOLE}', 3, 'stickers/100/{B_WHOLE}/late_3.webp');"
    ));
    run(&mut bot.cmd(&["--json", "snapshot", "--db", &bot.pg.url(DB)])).expect_code(0);
    let doc = run(&mut bot.cmd(&["--json", "check"]))
        .expect_code(3)
        .json();
    assert_eq!(doc["packs"]["incomplete"][0]["unfetched"], 1, "{doc:#}");
    assert_eq!(doc["packs"]["incomplete"][0]["missing_indexes"], json!([]));
    assert_eq!(doc["snapshot_id"], 2, "{doc:#}");
}

/// SPEC's rule, "complete when every position 0..max is held once and every
/// sticker is fetched": a sticker with no `pack_index` makes a batch
/// incomplete; a batch with no sticker (a failed generation) has no position
/// to miss and is complete, its sheet or not; "has a sheet" means the archive
/// has it (fetched), not that a row names one.
#[test]
fn a_pack_is_complete_only_when_whole_and_its_sheet_shown_as_fetched() {
    const B_EMPTY: &str = "00000000-0000-4000-8000-0000000000b3";
    const B_UNPLACED: &str = "00000000-0000-4000-8000-0000000000b4";
    let mut bot = Bot::start(Kind::S3s);
    bot.session(S_PACK, 100, "prod", None);
    bot.batch(B_WHOLE, S_PACK, 100, Some(SHEET_KEY));
    bot.pack(S_PACK, 100, B_WHOLE, &[0, 1, 2]);
    // No sticker yet; its sheet's key is not in the bucket (nor a file_id).
    bot.batch(B_EMPTY, S_PACK, 100, None);
    bot.sql(&format!(
        "UPDATE pack_batches SET cleaned_sheet_storage_path = 'pack_sheets/b3.png' WHERE id = '{B_EMPTY}';"
    ));
    // Positions 0 and 1 held, a third sticker with no position.
    bot.batch(B_UNPLACED, S_PACK, 100, None);
    bot.pack(S_PACK, 100, B_UNPLACED, &[0, 1]);
    bot.file(&format!("stickers/100/{B_UNPLACED}/nowhere.webp"));
    bot.sql(&format!(
        "INSERT INTO stickers (user_id, session_id, pack_batch_id, pack_index, result_storage_path)
         VALUES (100, '{S_PACK}', '{B_UNPLACED}', NULL, 'stickers/100/{B_UNPLACED}/nowhere.webp');"
    ));

    // Snapshotted, not fetched: every sheet is still to fetch.
    run(&mut bot.cmd(&["--json", "snapshot", "--db", &bot.pg.url(DB)])).expect_code(0);
    let text = run(&mut bot.cmd(&["check"])).expect_code(3).stdout.clone();
    assert!(
        text.contains(&format!(
            "{B_WHOLE} (session {S_PACK}): 3 stickers; 3 not fetched; sheet not fetched"
        )),
        "{text}"
    );
    assert!(!text.contains("has a sheet"), "{text}");

    bot.snapshot_and_fetch();
    let doc = run(&mut bot.cmd(&["--json", "check"]))
        .expect_code(3)
        .json();
    assert_eq!(doc["packs"]["batches"], 3, "{doc:#}");
    assert_eq!(doc["packs"]["complete"], 2, "{doc:#}");
    let incomplete: BTreeMap<String, Value> = doc["packs"]["incomplete"]
        .as_array()
        .expect("incomplete")
        .iter()
        .map(|b| {
            (
                b["pack_batch_id"].as_str().expect("id").to_string(),
                b.clone(),
            )
        })
        .collect();
    assert_eq!(incomplete.len(), 1, "{doc:#}");
    assert!(!incomplete.contains_key(B_EMPTY), "{doc:#}");
    let unplaced = &incomplete[B_UNPLACED];
    assert_eq!(
        (
            &unplaced["stickers"],
            &unplaced["unindexed"],
            &unplaced["unfetched"]
        ),
        (&json!(3), &json!(1), &json!(0)),
        "{unplaced}"
    );
    assert_eq!(unplaced["missing_indexes"], json!([]), "{unplaced}");
    let text = run(&mut bot.cmd(&["check"])).expect_code(3).stdout.clone();
    assert!(!text.contains(B_EMPTY), "{text}");
    assert!(
        text.contains(&format!(
            "{B_UNPLACED} (session {S_PACK}): 3 stickers; 1 without a position; no sheet"
        )),
        "{text}"
    );
}

/// A push destination holds starchive's own `_starchive/` objects (manifest,
/// catalog copy): checking it as the bucket (a mirror has the bot's keys)
/// never calls them orphans, which a clean-up would delete.
#[test]
fn starchives_own_objects_are_never_orphans() {
    let mut bot = Bot::start(Kind::S3s);
    bot.session(S_PACK, 100, "prod", None);
    bot.batch(B_WHOLE, S_PACK, 100, Some(SHEET_KEY));
    bot.pack(S_PACK, 100, B_WHOLE, &[0, 1, 2]);
    bot.session(S_SINGLE, 100, "prod", Some(SINGLE_KEY));
    bot.snapshot_and_fetch();
    let mirror = temp_dir();
    let to = mirror.path().to_str().expect("utf-8 path");
    run(&mut bot.cmd(&["--json", "push", "--to", to])).expect_code(0);
    let own = std::fs::read_dir(mirror.path().join("_starchive"))
        .expect("_starchive/")
        .count() as u64;
    assert!(own >= 2, "a manifest and a catalog copy");

    let doc = run(&mut bot.cmd(&["--json", "check", "--storage", to]))
        .expect_code(0)
        .json();
    let bucket = &doc["bucket"];
    assert_eq!(bucket["orphans"], json!([]), "{doc:#}");
    assert_eq!(bucket["objects"], 5, "the bot's objects only: {doc:#}");
    assert_eq!(bucket["starchive_objects"], own, "{doc:#}");
    let text = run(&mut bot.cmd(&["check", "--storage", to]))
        .expect_code(0)
        .stdout
        .clone();
    assert!(
        text.contains(&format!(
            "({own} objects under _starchive/, starchive's own, left out)"
        )),
        "{text}"
    );

    // Anything else no row names is still an orphan, even beside them.
    std::fs::write(mirror.path().join("_starchived.webp"), b"not ours").expect("write");
    let doc = run(&mut bot.cmd(&["--json", "check", "--storage", to]))
        .expect_code(3)
        .json();
    assert_eq!(
        doc["bucket"]["orphans"][0]["key"], "_starchived.webp",
        "{doc:#}"
    );
}

/// An archive whose first snapshot failed has a catalog but nothing to hold
/// the bucket against: an error (exit 1) like `plan`'s, never "consistent"
/// nor every object of the bucket counted as an orphan.
#[test]
fn an_archive_without_a_snapshot_is_an_error() {
    let mut bot = Bot::start(Kind::S3s);
    bot.file(SINGLE_KEY);
    let db = temp_dir();
    std::fs::write(db.path().join("sessions.csv"), "").expect("csv");
    let failed = run(&mut bot.cmd(&["snapshot", "--db", &db.path().display().to_string()]));
    assert_ne!(failed.code, Some(0), "{}", failed.stdout);
    assert!(bot.archive.path().join("catalog.sqlite").is_file());
    for extra in [&["--json"][..], &[], &["--json", "--env", "prod"]] {
        let mut args = extra.to_vec();
        args.push("check");
        for storage in [false, true] {
            let mut args = args.clone();
            if storage {
                args.extend(["--storage", bot.bucket.url()]);
            }
            let out = run(&mut bot.cmd(&args));
            out.expect_code(1);
            // With --json the error is the document; else on stderr alone.
            let error = if args[0] == "--json" {
                out.json()["error"].as_str().expect("error").to_string()
            } else {
                assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
                out.stderr.clone()
            };
            assert!(error.contains("no snapshot yet"), "{args:?}: {error}");
        }
    }
}

/// A `pack_index` far out of range lists its holes as ranges on a short
/// line; one below 0 makes its batch incomplete and is named.
#[test]
fn positions_out_of_range_are_short_in_text_and_reported() {
    const B_NEGATIVE: &str = "00000000-0000-4000-8000-0000000000b3";
    let mut bot = Bot::start(Kind::S3s);
    bot.session(S_PACK, 100, "prod", None);
    bot.batch(B_HOLES, S_PACK, 100, None);
    bot.pack(S_PACK, 100, B_HOLES, &[0, 1, 2, 3, 5_000_000]);
    bot.batch(B_WHOLE, S_PACK, 100, None);
    bot.pack(S_PACK, 100, B_WHOLE, &[-1, 0, 1]);
    bot.batch(B_NEGATIVE, S_PACK, 100, None);
    bot.pack(S_PACK, 100, B_NEGATIVE, &[-2, -2, 0, 2, 4, 4]);
    bot.snapshot_and_fetch();

    let doc = bot.check(&["--json"]).expect_code(3).json();
    assert_eq!(doc["packs"]["complete"], 0, "{doc:#}");
    let incomplete: BTreeMap<String, Value> = doc["packs"]["incomplete"]
        .as_array()
        .expect("incomplete")
        .iter()
        .map(|b| {
            (
                b["pack_batch_id"].as_str().expect("id").to_string(),
                b.clone(),
            )
        })
        .collect();
    let far = &incomplete[B_HOLES];
    let missing = far["missing_indexes"].as_array().expect("missing");
    assert_eq!((missing.len(), &missing[0]), (1000, &json!(4)));
    assert_eq!(far["missing_indexes_more"], 5_000_000 - 4 - 1000);
    assert_eq!(far["invalid_indexes"], json!([]));
    let negative = &incomplete[B_WHOLE];
    assert_eq!(negative["invalid_indexes"], json!([-1]));
    assert_eq!(negative["missing_indexes"], json!([]));
    assert_eq!(negative["duplicate_indexes"], json!([]));
    let mixed = &incomplete[B_NEGATIVE];
    assert_eq!(mixed["invalid_indexes"], json!([-2]));
    assert_eq!(mixed["missing_indexes"], json!([1, 3]));
    assert_eq!(mixed["duplicate_indexes"], json!([4]));

    let text = bot.check(&[]).expect_code(3).stdout.clone();
    let line = |batch: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(batch))
            .unwrap_or_else(|| panic!("{batch} in {text}"))
    };
    assert!(
        line(B_HOLES).contains("; missing positions 4–4999999;"),
        "{text}"
    );
    assert!(line(B_HOLES).len() < 200, "{text}");
    assert!(line(B_WHOLE).contains("; invalid positions -1;"), "{text}");
    assert!(
        line(B_NEGATIVE)
            .contains("; missing positions 1, 3; positions held twice 4; invalid positions -2;"),
        "{text}"
    );
}

#[test]
fn a_bucket_that_cannot_be_listed_stops_the_check() {
    let mut bot = Bot::start(Kind::S3s);
    bot.session(S_SINGLE, 100, "prod", Some(SINGLE_KEY));
    bot.snapshot_and_fetch();
    // No such bucket: an error (exit 1), never every key reported dangling.
    let url = bot
        .bucket
        .url()
        .replacen("s3://bucket-", "s3://no-such-bucket-", 1);
    assert_ne!(url, bot.bucket.url());
    let out = run(&mut bot.cmd(&["check", "--storage", &url]));
    out.expect_code(1);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains("no-such-bucket"), "{}", out.stderr);
}

/// `--storage` with a wrong prefix (every object an orphan, every key the
/// rows name dangling): the report says what is likely wrong, and where the
/// bot's keys seem to be when the listing shows them.
fn a_wrong_prefix_gets_a_hint(kind: Kind) {
    let mut bot = Bot::start(kind);
    bot.session(S_PACK, 100, "prod", None);
    bot.batch(B_WHOLE, S_PACK, 100, Some(SHEET_KEY));
    bot.pack(S_PACK, 100, B_WHOLE, &[0, 1]);
    bot.session(S_SINGLE, 100, "prod", Some(SINGLE_KEY));
    bot.snapshot_and_fetch();
    let named = bot.files.len();
    let with_prefix = |prefix: &str| bot.bucket.url().replacen('?', &format!("/{prefix}?"), 1);
    let check = |url: &str, extra: &[&str]| {
        let mut args = vec!["check", "--storage", url];
        args.extend_from_slice(extra);
        run(&mut bot.cmd(&args))
    };

    // The right bucket and prefix: no hint.
    let right = check(bot.bucket.url(), &[]).expect_code(0).stdout.clone();
    assert!(!right.contains("hint"), "{right}");
    let doc = check(bot.bucket.url(), &["--json"]).expect_code(0).json();
    assert!(doc["bucket"].get("hint").is_none(), "{doc:#}");

    // One level too deep: the listing shows the keys, one level up.
    let deep = with_prefix("stickers");
    let doc = check(&deep, &["--json"]).expect_code(3).json();
    assert_eq!(doc["bucket"]["classes"]["sticker"]["objects"], 0, "{doc:#}");
    assert_eq!(
        doc["bucket"]["dangling"].as_array().map(Vec::len),
        Some(named)
    );
    let hint = doc["bucket"]["hint"].as_str().expect("a hint").to_string();
    assert!(
        hint.starts_with(&format!(
            "none of the {named} keys the rows name is in the bucket under the prefix 'stickers', \
             but they seem to be at the bucket's root"
        )),
        "{hint}"
    );
    let text = check(&deep, &[]).expect_code(3).stdout.clone();
    assert!(text.contains(&format!("\nhint: {hint}\n")), "{text}");

    // Bot's keys below the prefix: the listing shows them under a longer one.
    for key in bot.files.keys() {
        bot.bucket
            .objects
            .put(&format!("old/bot/{key}"), b"x".to_vec());
    }
    let doc = check(&with_prefix("old"), &["--json"])
        .expect_code(3)
        .json();
    let hint = doc["bucket"]["hint"].as_str().expect("a hint");
    assert!(
        hint.contains("under the prefix 'old', but they seem to be under the prefix 'old/bot'"),
        "{hint}"
    );

    // A prefix with no object at all.
    let doc = check(&with_prefix("nothing-here"), &["--json"])
        .expect_code(3)
        .json();
    assert_eq!(
        doc["bucket"]["hint"],
        format!(
            "none of the {named} keys the rows name is in the bucket, which lists no object \
             under the prefix 'nothing-here': are the bucket and the prefix right?"
        )
    );

    // Objects, but none the rows name (another bot's bucket, say).
    bot.bucket.objects.put("misc/a.txt", b"a".to_vec());
    let doc = check(&with_prefix("misc"), &["--json"])
        .expect_code(3)
        .json();
    assert_eq!(
        doc["bucket"]["hint"],
        format!(
            "none of the {named} keys the rows name is among the 1 objects the bucket lists \
             under the prefix 'misc': are the bucket and the prefix right?"
        )
    );
}

#[test]
fn a_wrong_prefix_gets_a_hint_s3s() {
    a_wrong_prefix_gets_a_hint(Kind::S3s);
}

#[test]
fn a_wrong_prefix_gets_a_hint_supabase() {
    a_wrong_prefix_gets_a_hint(Kind::Supabase);
}

/// `check` beside a running `fetch` (SPEC: it runs beside any command): a
/// blob the fetch has published but not committed yet (in its durability
/// group) is never reported as a blob no ref names.
#[test]
fn a_running_fetch_leaves_no_blob_unreferenced() {
    use crate::support::dataset::Db;
    use crate::support::telegram::FakeTelegram;
    const FILES: u64 = 160;
    let dir = temp_dir();
    let tg = FakeTelegram::new();
    tg.latency(std::time::Duration::from_millis(25));
    let mut db = Db::per_env();
    for i in 0..FILES {
        let id = format!("beside-{i:04}");
        tg.add_file(&id, &format!("stickers/b{i}.webp"), sticker_bytes(i, 3000));
        db.in_env("prod", Some(&id), None);
    }
    let archive = db.snapshotted(dir.path());
    let check = || {
        run(bin()
            .arg("--archive")
            .arg(&archive)
            .args(["--json", "check"]))
        .json()
    };
    let mut fetch = crate::fetch::fetch_cmd(&archive, None, Some(&tg))
        .args(["--jobs", "4", "--telegram-rate", "2000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn fetch");
    let mut checks = 0;
    while fetch.try_wait().expect("try_wait").is_none() {
        let doc = check();
        assert_eq!(doc["blobs"]["unreferenced"], json!([]), "{doc:#}");
        checks += 1;
    }
    assert!(fetch.wait().expect("wait").success());
    assert!(
        checks > 1,
        "the fetch ended before a check could run beside it"
    );
    // Once it ends, every blob is named and nothing is left out.
    let doc = check();
    assert_eq!(doc["blobs"]["unreferenced"], json!([]), "{doc:#}");
    assert!(doc["blobs"].get("in_flight").is_none(), "{doc:#}");
    assert_eq!(blob_count(&archive), FILES as usize);
}

fn blob_count(archive: &Path) -> usize {
    std::fs::read_dir(archive.join("blobs"))
        .expect("blobs/")
        .flatten()
        .filter(|fan| fan.file_name().len() == 2)
        .map(|fan| std::fs::read_dir(fan.path()).expect("fan").count())
        .sum()
}

/// The rule, case by case: a file no ref names is listed only when no other
/// command held the archive's lock as the check began and the file is older
/// than that; otherwise it is counted apart (`in_flight`), not listed.
#[test]
fn a_blob_no_ref_names_is_listed_only_once_no_writer_can_commit_it() {
    use crate::support::dataset::Db;
    use std::time::{Duration, SystemTime};
    let dir = temp_dir();
    let archive = Db::per_env()
        .in_env("prod", Some("FILEID"), None)
        .snapshotted(dir.path());
    let plant = |seed: u64, modified: SystemTime| {
        let bytes = sticker_bytes(seed, 500);
        let sha = sha256_hex(&bytes);
        let path = blob_path(&archive, &sha);
        std::fs::create_dir_all(path.parent().expect("fan")).expect("fan dir");
        std::fs::write(&path, &bytes).expect("blob");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open blob")
            .set_modified(modified)
            .expect("set mtime");
        sha
    };
    let check = |json: bool| {
        let mut cmd = bin();
        cmd.arg("--archive").arg(&archive);
        if json {
            cmd.arg("--json");
        }
        run(cmd.arg("check"))
    };
    let old = plant(1, SystemTime::now() - Duration::from_secs(3600));

    // Another command holds the lock: it may be about to commit the file.
    let lock = std::fs::File::options()
        .write(true)
        .open(archive.join("catalog.lock"))
        .expect("lock file");
    lock.lock().expect("lock the archive");
    let doc = check(true).expect_code(0).json();
    assert_eq!(doc["blobs"]["unreferenced"], json!([]), "{doc:#}");
    assert_eq!(doc["blobs"]["in_flight"], 1, "{doc:#}");
    let text = check(false).expect_code(0).stdout.clone();
    assert!(
        text.contains("(1 more in blobs/ that no ref names yet are left out: a fetch or pull"),
        "{text}"
    );
    drop(lock);

    // No writer: the old file is a blob no ref names; one newer than the
    // check (written by a command that began after it) is left out.
    let new = plant(2, SystemTime::now() + Duration::from_secs(60));
    let doc = check(true).expect_code(3).json();
    assert_eq!(doc["blobs"]["unreferenced"], json!([old]), "{doc:#}");
    assert_eq!(doc["blobs"]["in_flight"], 1, "{doc:#}");
    assert!(!doc.to_string().contains(&new), "{doc:#}");
}
