//! `fetch`: every pending ref's file into `blobs/`, each distinct file once,
//! from the bucket first and from Telegram otherwise (SPEC §1, §2, §3, §7).
//!
//! The binary is run end to end against the in-process S3 server and the
//! fake Bot API; what it did is read back from the archive (blob files,
//! `catalog.sqlite`) and from the servers' counters.

mod bench;
mod bots;
mod dangling;
mod disk;
mod hostile_api;
mod repair;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::dataset::{
    Db, FIXTURE_BUCKET, FIXTURE_DB, FIXTURE_EXPECTED, FIXTURE_TELEGRAM, sticker_bytes,
};
use crate::support::run::{Run, catalog, run};
use crate::support::s3::TestS3;
use crate::support::telegram::{FakeTelegram, TOKEN};
use crate::support::{bin, sha256_hex, temp_dir};

// ---- helpers ------------------------------------------------------------

const INVALID_FILE_ID: &str = "CAACAgIAAxkBAAI-invalid-file-id-0000000000000000000000000000";
const DANGLING_KEY: &str =
    "stickers/100000001/00000000-0000-4000-8000-000000000101/1740823320000.webp";

/// `starchive --archive DIR snapshot --db DB`, which must succeed.
pub(super) fn snapshot(archive: &Path, db: &Path) {
    run(bin()
        .arg("--archive")
        .arg(archive)
        .args(["--json", "snapshot", "--db"])
        .arg(db))
    .expect_code(0);
}

/// `starchive --archive DIR --json fetch` with the bucket and the Bot API
/// wired in when given (credentials and token from the environment only).
pub(super) fn fetch_cmd(
    archive: &Path,
    s3: Option<(&TestS3, &str)>,
    tg: Option<&FakeTelegram>,
) -> Command {
    let mut cmd = bin();
    cmd.arg("--archive").arg(archive).args(["--json", "fetch"]);
    if let Some((s3, bucket)) = s3 {
        cmd.arg("--storage").arg(s3.store_url(bucket, ""));
        cmd.envs(s3.env("STORAGE"));
    }
    if let Some(tg) = tg {
        cmd.envs(tg.env());
    }
    cmd
}

/// One ref as the catalog has it.
#[derive(Debug, Clone)]
pub(super) struct Ref {
    pub class: String,
    pub row_id: String,
    pub file_id: Option<String>,
    pub key: Option<String>,
    pub state: String,
    pub sha256: Option<String>,
    pub source: Option<String>,
    pub dangling: bool,
    pub reason: Option<String>,
}

pub(super) fn refs(archive: &Path) -> Vec<Ref> {
    let conn = catalog(archive);
    let mut stmt = conn
        .prepare(
            "SELECT class, row_id, telegram_file_id, storage_key, state, sha256, source,
                    key_dangling, reason
             FROM refs ORDER BY class, row_table, row_id, slot",
        )
        .expect("prepare");
    stmt.query_map([], |r| {
        Ok(Ref {
            class: r.get(0)?,
            row_id: r.get(1)?,
            file_id: r.get(2)?,
            key: r.get(3)?,
            state: r.get(4)?,
            sha256: r.get(5)?,
            source: r.get(6)?,
            dangling: r.get::<_, i64>(7)? != 0,
            reason: r.get(8)?,
        })
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// Every blob file of the archive, checked: its SHA-256 is its name, it sits
/// in its fan-out directory; returns sha256 -> bytes. Files left in
/// `blobs/tmp` are returned separately (they are never blobs).
pub(super) fn blob_files(archive: &Path) -> (BTreeMap<String, Vec<u8>>, Vec<PathBuf>) {
    let root = archive.join("blobs");
    let mut blobs = BTreeMap::new();
    let mut staging = Vec::new();
    let Ok(fans) = std::fs::read_dir(&root) else {
        return (blobs, staging);
    };
    for fan in fans.flatten() {
        let fan_name = fan.file_name().to_string_lossy().into_owned();
        for entry in std::fs::read_dir(fan.path()).expect("read fan").flatten() {
            if fan_name == "tmp" {
                staging.push(entry.path());
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path()).expect("read blob");
            assert_eq!(
                sha256_hex(&bytes),
                name,
                "blob {} holds other bytes than its name says",
                entry.path().display()
            );
            assert_eq!(&name[..2], fan_name, "blob {name} in the wrong directory");
            blobs.insert(name, bytes);
        }
    }
    (blobs, staging)
}

/// Every blob right and nothing left in staging.
#[track_caller]
pub(super) fn clean_blobs(archive: &Path) -> BTreeMap<String, Vec<u8>> {
    let (blobs, staging) = blob_files(archive);
    assert!(staging.is_empty(), "left in blobs/tmp: {staging:?}");
    blobs
}

/// Every fetched ref points at a blob file with that hash, listed in `blobs`.
#[track_caller]
fn fetched_refs_have_their_blob(archive: &Path, refs: &[Ref]) {
    let (files, _) = blob_files(archive);
    let conn = catalog(archive);
    for r in refs.iter().filter(|r| r.state == "fetched") {
        let sha = r.sha256.as_deref().expect("a fetched ref has a sha256");
        assert!(files.contains_key(sha), "{r:?}: blob file missing");
        let size: i64 = conn
            .query_row("SELECT size FROM blobs WHERE sha256 = ?1", [sha], |row| {
                row.get(0)
            })
            .expect("the blob is in the blobs table");
        assert_eq!(size as usize, files[sha].len(), "{r:?}: size");
    }
}

/// A fake Bot API serving `n` distinct files `tg-file-0000..`, and the ids.
fn telegram_with_files(n: usize, len: usize) -> (FakeTelegram, Vec<String>) {
    let tg = FakeTelegram::new();
    let ids: Vec<String> = (0..n).map(|i| format!("tg-file-{i:04}")).collect();
    for (i, id) in ids.iter().enumerate() {
        tg.add_file(
            id,
            &format!("stickers/file_{i}.webp"),
            sticker_bytes(i as u64 + 1, len),
        );
    }
    (tg, ids)
}

/// An archive with the fixture dataset snapshotted, the fixture bucket and
/// Bot API up, nothing fetched yet.
struct Fixture {
    archive: tempfile::TempDir,
    s3: TestS3,
    tg: FakeTelegram,
}

impl Fixture {
    fn new() -> Fixture {
        let archive = temp_dir();
        snapshot(archive.path(), Path::new(FIXTURE_DB));
        let s3 = TestS3::start();
        assert_eq!(s3.put_dir("stickers", FIXTURE_BUCKET), 13);
        let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
        Fixture { archive, s3, tg }
    }

    fn path(&self) -> &Path {
        self.archive.path()
    }

    fn fetch(&self) -> Command {
        fetch_cmd(self.path(), Some((&self.s3, "stickers")), Some(&self.tg))
    }

    /// Every file_id the fake Bot API serves.
    fn telegram_ids(&self) -> Vec<String> {
        std::fs::read_dir(FIXTURE_TELEGRAM)
            .expect("read fixtures/telegram")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".json"))
            .collect()
    }

    fn completed_downloads(&self) -> u64 {
        self.telegram_ids()
            .iter()
            .map(|id| self.tg.completed_downloads(id))
            .sum()
    }
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(FIXTURE_EXPECTED).expect("read expected.json"))
        .expect("expected.json")
}

fn status_json(archive: &Path) -> Value {
    run(bin()
        .arg("--archive")
        .arg(archive)
        .args(["--json", "status"]))
    .expect_code(0)
    .json()
}

// ---- the fixture dataset --------------------------------------------------

#[test]
fn fetch_from_bucket_and_telegram_stores_every_blob_once() {
    let fx = Fixture::new();
    let want = &expected()["without_photos"];
    let out = run(&mut fx.fetch());
    out.expect_code(3);
    let doc = out.json();
    let keys: BTreeSet<&str> = doc
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    for key in ["done", "skipped", "failed", "pending", "bytes", "seconds"] {
        assert!(keys.contains(key), "fetch --json lacks {key:?}: {doc}");
    }
    let refs_total = want["total"]["refs"].as_u64().expect("refs");
    assert_eq!(doc["done"], refs_total - 1, "{doc}");
    assert_eq!(doc["failed"], want["failed_refs"], "{doc}");
    assert_eq!(doc["pending"], 0, "{doc}");
    assert_eq!(doc["skipped"], 0, "{doc}");
    assert!(doc["seconds"].as_f64().is_some(), "{doc}");

    // Every blob right, each distinct content once.
    let blobs = clean_blobs(fx.path());
    assert_eq!(
        blobs.len() as u64,
        want["unique_blobs"].as_u64().expect("n")
    );
    let bytes: usize = blobs.values().map(Vec::len).sum();
    assert_eq!(bytes as u64, want["unique_blob_bytes"].as_u64().expect("n"));
    assert!(
        doc["bytes"].as_u64().expect("bytes") >= bytes as u64,
        "{doc}"
    );
    let refs = refs(fx.path());
    assert_eq!(refs.len() as u64, refs_total);
    fetched_refs_have_their_blob(fx.path(), &refs);
    let blob_rows: i64 = catalog(fx.path())
        .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
        .expect("count");
    assert_eq!(blob_rows as usize, blobs.len());

    // Each bucket key read once (13 present + the dangling one), each
    // file_id downloaded at most once, 10 in all.
    assert_eq!(fx.s3.requests("GET"), 14, "{:?}", fx.s3.request_log());
    let mut seen = BTreeSet::new();
    for (category, path) in fx.s3.request_log() {
        if category == "GET" {
            assert!(seen.insert(path.clone()), "{path} read twice");
        }
    }
    for id in fx.telegram_ids() {
        assert!(fx.tg.completed_downloads(&id) <= 1, "{id} downloaded twice");
        assert!(fx.tg.get_file_calls(&id) <= 1, "{id} asked twice");
    }
    assert_eq!(
        fx.completed_downloads(),
        want["telegram_file_ids_downloaded"].as_u64().expect("n")
    );

    // The refused file_id is the one failure, with Telegram's reason.
    let failed: Vec<&Ref> = refs.iter().filter(|r| r.state == "failed").collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].file_id.as_deref(), Some(INVALID_FILE_ID));
    let reason = failed[0].reason.as_deref().unwrap_or("");
    assert!(reason.contains("invalid file_id"), "{reason}");
    assert_eq!(
        fx.tg.get_file_calls(INVALID_FILE_ID),
        1,
        "a refusal is final"
    );
}

#[test]
fn no_telegram_call_for_files_the_bucket_holds() {
    let fx = Fixture::new();
    run(&mut fx.fetch()).expect_code(3);
    let refs = refs(fx.path());
    // file_ids some ref can read from the bucket.
    let from_bucket: BTreeSet<&str> = refs
        .iter()
        .filter(|r| r.key.is_some() && !r.dangling)
        .filter_map(|r| r.file_id.as_deref())
        .collect();
    assert!(from_bucket.len() >= 10, "{from_bucket:?}");
    for id in &from_bucket {
        assert_eq!(fx.tg.get_file_calls(id), 0, "{id} asked of Telegram");
        assert_eq!(fx.tg.downloads(id), 0, "{id} downloaded from Telegram");
    }
    for r in &refs {
        if r.key.is_some() && !r.dangling {
            assert_eq!(r.source.as_deref(), Some("bucket"), "{r:?}");
        }
    }
    // A session sticker without a key but with the file_id of a sticker
    // read from the bucket shares that sticker's blob.
    let session_101 = refs
        .iter()
        .find(|r| r.class == "session_sticker" && r.row_id.ends_with("000000000101"))
        .expect("session 101's last sticker");
    let sticker_301 = refs
        .iter()
        .find(|r| r.class == "sticker" && r.row_id.ends_with("000000000301"))
        .expect("sticker 301");
    assert_eq!(session_101.state, "fetched");
    assert_eq!(session_101.sha256, sticker_301.sha256);
}

#[test]
fn dangling_key_falls_back_to_telegram() {
    let fx = Fixture::new();
    run(&mut fx.fetch()).expect_code(3);
    let refs = refs(fx.path());
    let dangling: Vec<&Ref> = refs.iter().filter(|r| r.dangling).collect();
    assert_eq!(dangling.len(), 1, "{dangling:?}");
    let r = dangling[0];
    assert_eq!(r.key.as_deref(), Some(DANGLING_KEY));
    assert_eq!(r.state, "fetched", "{r:?}");
    assert_eq!(r.source.as_deref(), Some("telegram"));
    let id = r.file_id.as_deref().expect("file_id");
    let served = fx.tg.file_bytes(id).expect("served");
    assert_eq!(r.sha256.as_deref(), Some(sha256_hex(&served).as_str()));
    assert_eq!(fx.tg.completed_downloads(id), 1);
}

#[test]
fn storage_can_be_a_local_directory_or_a_prefix_in_a_bucket() {
    let want = &expected()["without_photos"];
    // A plain directory holding the bucket's keys.
    let fx = Fixture::new();
    let doc = run(fetch_cmd(fx.path(), None, Some(&fx.tg))
        .arg("--storage")
        .arg(FIXTURE_BUCKET))
    .expect_code(3)
    .json();
    assert_eq!(doc["failed"], 1, "{doc}");
    assert_eq!(doc["pending"], 0, "{doc}");
    assert_eq!(
        clean_blobs(fx.path()).len() as u64,
        want["unique_blobs"].as_u64().expect("n")
    );
    assert_eq!(
        fx.completed_downloads(),
        want["telegram_file_ids_downloaded"].as_u64().expect("n"),
        "the dangling key fell back, nothing else went to Telegram"
    );
    assert_eq!(fx.s3.requests("TOTAL"), 0);

    // The keys under a prefix of another bucket.
    let fx = Fixture::new();
    let s3 = TestS3::start();
    s3.create_bucket("archive");
    let copied = s3.put_dir("archive", FIXTURE_BUCKET);
    assert_eq!(copied, 13);
    for key in s3.object_keys("archive") {
        let bytes = s3.get_file("archive", &key).expect("object");
        s3.put_file("archive", &format!("old/bot/{key}"), bytes);
    }
    let doc = run(fetch_cmd(fx.path(), None, Some(&fx.tg))
        .arg("--storage")
        .arg(s3.store_url("archive", "old/bot"))
        .envs(s3.env("STORAGE")))
    .expect_code(3)
    .json();
    assert_eq!(doc["failed"], 1, "{doc}");
    assert_eq!(doc["pending"], 0, "{doc}");
    for (category, path) in s3.request_log() {
        if category == "GET" {
            assert!(path.starts_with("/archive/old/bot/"), "{path}");
        }
    }
    assert_eq!(s3.requests("GET"), 14);
    assert_eq!(
        clean_blobs(fx.path()).len() as u64,
        want["unique_blobs"].as_u64().expect("n")
    );
}

#[test]
fn second_run_downloads_nothing_and_retry_failed_asks_again() {
    let fx = Fixture::new();
    run(&mut fx.fetch()).expect_code(3);
    let (gets, downloads, calls) = (
        fx.s3.requests("GET"),
        fx.completed_downloads(),
        fx.tg.total_requests(),
    );
    let doc = run(&mut fx.fetch()).expect_code(3).json();
    assert_eq!(doc["done"], 0, "{doc}");
    assert_eq!(doc["skipped"], 25, "{doc}");
    assert_eq!(doc["failed"], 1, "{doc}");
    assert_eq!(fx.s3.requests("GET"), gets, "the bucket was read again");
    assert_eq!(fx.completed_downloads(), downloads);
    assert_eq!(fx.tg.total_requests(), calls, "a failed ref is not retried");

    // --retry-failed: the invalid file_id is asked again, and fails again.
    let doc = run(fx.fetch().arg("--retry-failed")).expect_code(3).json();
    assert_eq!(doc["failed"], 1, "{doc}");
    assert_eq!(fx.tg.get_file_calls(INVALID_FILE_ID), 2);
    assert_eq!(fx.tg.total_requests(), calls + 1, "only the failed ref");
}

#[test]
fn include_photos_fetches_users_photos() {
    let fx = Fixture::new();
    let want = &expected()["with_photos"];
    let doc = run(fx.fetch().args(["--include", "photos"]))
        .expect_code(3)
        .json();
    let total = want["total"]["refs"].as_u64().expect("refs");
    assert_eq!(doc["done"], total - 1, "{doc}");
    assert_eq!(doc["failed"], 1, "{doc}");
    let blobs = clean_blobs(fx.path());
    assert_eq!(
        blobs.len() as u64,
        want["unique_blobs"].as_u64().expect("n")
    );
    let bytes: usize = blobs.values().map(Vec::len).sum();
    assert_eq!(bytes as u64, want["unique_blob_bytes"].as_u64().expect("n"));
    assert_eq!(
        fx.completed_downloads(),
        want["telegram_file_ids_downloaded"].as_u64().expect("n")
    );
    let photos = refs(fx.path())
        .into_iter()
        .filter(|r| r.class == "photo")
        .inspect(|r| assert_eq!(r.state, "fetched", "{r:?}"))
        .count();
    assert_eq!(
        photos as u64,
        want["classes"]["photo"]["refs"].as_u64().expect("n")
    );
}

#[test]
fn photos_are_left_out_unless_asked_for() {
    let fx = Fixture::new();
    run(&mut fx.fetch()).expect_code(3);
    let refs = refs(fx.path());
    assert!(refs.iter().all(|r| r.class != "photo"));
    // A file_id only photos name (session 110's sheet is a JPEG photo too,
    // so pick one that no other ref names).
    let photo_only = "AgACAgIAAxkBAAIuzgQwrDzwCZxYQtkrlh5zH8kwlcOn06ALi6ZuHcou70";
    assert!(
        refs.iter()
            .all(|r| r.file_id.as_deref() != Some(photo_only))
    );
    assert_eq!(fx.tg.get_file_calls(photo_only), 0);
}

#[test]
fn env_limits_fetch_to_its_refs() {
    let fx = Fixture::new();
    let by_env = &expected()["by_env"];
    let doc = run(fx.fetch().args(["--env", "test"]))
        .expect_code(3)
        .json();
    let test_refs = by_env["test"]["refs"].as_u64().expect("n");
    assert_eq!(doc["done"], test_refs - 1, "{doc}");
    assert_eq!(doc["failed"], 1, "{doc}");
    assert_eq!(
        doc["pending"], 0,
        "pending counts the env's refs only: {doc}"
    );
    for r in refs(fx.path()) {
        if r.state != "pending" {
            let conn = catalog(fx.path());
            let env: Option<String> = conn
                .query_row(
                    "SELECT env FROM refs WHERE class = ?1 AND row_id = ?2",
                    [&r.class, &r.row_id],
                    |row| row.get(0),
                )
                .expect("env");
            assert_eq!(env.as_deref(), Some("test"), "{r:?} touched by --env test");
        }
    }
    assert_eq!(
        clean_blobs(fx.path()).len() as u64,
        by_env["test"]["unique_blobs"].as_u64().expect("n")
    );

    // Then prod: its refs, and the test env's failure is left alone.
    let doc = run(fx.fetch().args(["--env", "prod"]))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], by_env["prod"]["refs"], "{doc}");
    assert_eq!(doc["failed"], 0, "{doc}");
    assert_eq!(fx.tg.get_file_calls(INVALID_FILE_ID), 1);
}

// ---- dedup ----------------------------------------------------------------

#[test]
fn refs_sharing_a_file_id_or_bytes_are_downloaded_once() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(3, 3000);
    // tg-file-0003 serves the same bytes as tg-file-0000 under another id.
    tg.add_file("tg-file-same", "stickers/same.webp", sticker_bytes(1, 3000));
    let s3 = TestS3::start();
    s3.create_bucket("stickers");
    s3.put_file("stickers", "a/one.webp", sticker_bytes(1, 3000));
    s3.put_file("stickers", "a/two.webp", sticker_bytes(2, 3000));
    let mut db = Db::per_env();
    for _ in 0..5 {
        db.in_env("prod", Some(ids[0].as_str()), None);
    }
    db.in_env("prod", Some(ids[1].as_str()), None)
        .in_env("test", Some(ids[1].as_str()), None)
        .in_env("prod", Some(ids[2].as_str()), None)
        .in_env("prod", Some("tg-file-same"), None)
        // Two refs, one key: one GET; the same bytes as tg-file-0000.
        .in_env("prod", None, Some("a/one.webp"))
        .in_env("test", None, Some("a/one.webp"))
        // A key and a file_id: the bucket serves it, Telegram is not asked;
        // a ref with the same file_id and no key shares the blob.
        .in_env("prod", Some("tg-file-keyed"), Some("a/two.webp"))
        .in_env("prod", Some("tg-file-keyed"), None);
    tg.add_file(
        "tg-file-keyed",
        "stickers/keyed.webp",
        sticker_bytes(2, 3000),
    );
    let archive = db.snapshotted(dir.path());

    let doc = run(fetch_cmd(&archive, Some((&s3, "stickers")), Some(&tg)).args(["--jobs", "8"]))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], 13, "{doc}");
    for id in &ids {
        assert_eq!(tg.get_file_calls(id), 1, "{id}");
        assert_eq!(tg.completed_downloads(id), 1, "{id}");
    }
    assert_eq!(tg.completed_downloads("tg-file-same"), 1);
    assert_eq!(tg.get_file_calls("tg-file-keyed"), 0, "the bucket holds it");
    assert_eq!(s3.requests("GET"), 2, "{:?}", s3.request_log());
    let blobs = clean_blobs(&archive);
    // Bytes 1 (three sources), 2 (two sources), 3: three blobs.
    assert_eq!(blobs.len(), 3, "{:?}", blobs.keys());
    let refs = refs(&archive);
    fetched_refs_have_their_blob(&archive, &refs);
    let shas: BTreeSet<_> = refs.iter().filter_map(|r| r.sha256.clone()).collect();
    assert_eq!(shas.len(), 3);
}

// ---- Telegram faults ------------------------------------------------------

/// A `retry_after` that is negative, zero, tiny or not an integer is a short
/// wait; one that is huge (near `u64::MAX`, `1e300`) is a wait bounded to an
/// hour, never an overflow or a panic.
#[test]
fn extreme_retry_after_is_a_bounded_wait() {
    let dir = temp_dir();
    let small = ["-5", "0", "1e-30", "0.25", "-1e308"];
    let (tg, ids) = telegram_with_files(small.len() + 1, 100);
    for (id, secs) in ids.iter().zip(small) {
        tg.fail_get_file_429_raw(id, 1, secs);
    }
    let mut db = Db::per_env();
    for id in &ids[..small.len()] {
        db.in_env("prod", Some(id.as_str()), None);
    }
    let archive = db.snapshotted(dir.path());
    let started = Instant::now();
    let doc = run(&mut fetch_cmd(&archive, None, Some(&tg)))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], small.len(), "{doc}");
    assert!(started.elapsed() < Duration::from_secs(30));
    for id in &ids[..small.len()] {
        assert_eq!(tg.get_file_calls(id), 2, "{id}: asked again after the wait");
    }

    for huge in ["18446744073709551615", "1e300", "9223372036854775807"] {
        let dir = temp_dir();
        let id = &ids[small.len()];
        tg.fail_get_file_429_raw(id, 1, huge);
        let mut db = Db::per_env();
        db.in_env("prod", Some(id.as_str()), None);
        let archive = db.snapshotted(dir.path());
        let mut child = fetch_cmd(&archive, None, Some(&tg))
            .env("STARCHIVE_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn fetch");
        let asked = Instant::now();
        while tg.get_file_calls(id) == 0 && asked.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let still_waiting = child.try_wait().expect("try_wait").is_none();
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(still_waiting, "retry_after {huge}: fetch ended: {err}");
        assert!(!err.contains("panicked"), "retry_after {huge}: {err}");
        assert!(
            err.contains("wait 3600 s"),
            "retry_after {huge}: bounded: {err}"
        );
        assert_eq!(tg.get_file_calls(id), 1, "retry_after {huge}: waiting");
        tg.reset_counts();
    }
}

#[test]
fn flood_control_waits_and_goes_on() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(20, 1000);
    tg.latency(Duration::from_millis(40));
    // The first file_id in the order fetch takes them: flood control at once.
    tg.fail_get_file_429(&ids[0], 1, 1);
    let mut db = Db::per_env();
    for id in &ids {
        db.in_env("prod", Some(id.as_str()), None);
    }
    let archive = db.snapshotted(dir.path());

    let started = Instant::now();
    // At the default rate (20/s) with 8 workers, slots are handed out ahead:
    // a worker holding one must still wait out the pause.
    let doc = run(fetch_cmd(&archive, None, Some(&tg)).args(["--jobs", "8"]))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], 20, "{doc}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(tg.get_file_calls(&ids[0]), 2, "asked again after the wait");
    assert_eq!(clean_blobs(&archive).len(), 20);

    // The wait is shared: after the 429 every worker held off for about
    // retry_after (only requests already on their way could arrive), so
    // there is a gap of ~1 s and most of the work comes after it.
    let times = tg.request_times();
    assert_eq!(times.len(), 41, "20 getFile + 20 downloads + the 429");
    let (at, gap) = times
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, w[1] - w[0]))
        .max_by_key(|(_, gap)| *gap)
        .expect("requests");
    assert!(gap >= Duration::from_millis(850), "largest gap {gap:?}");
    let after = times.len() - (at + 1);
    assert!(
        after >= 30,
        "only {after} of {} requests came after the pause: the other workers did not wait",
        times.len()
    );
}

#[test]
fn server_errors_resets_and_truncated_bodies_are_retried() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(6, 5000);
    tg.fail_get_file_500(&ids[0], 2)
        .fail_download_502(&ids[1], 2)
        .reset_download(&ids[2], 2)
        .truncate_download(&ids[3], 2);
    let s3 = TestS3::start();
    s3.create_bucket("stickers");
    s3.put_file("stickers", "k/one.webp", sticker_bytes(100, 4000));
    s3.fail_next("GET", 2, 503);
    let mut db = Db::per_env();
    for id in &ids {
        db.in_env("prod", Some(id.as_str()), None);
    }
    db.in_env("prod", None, Some("k/one.webp"));
    let archive = db.snapshotted(dir.path());

    let doc = run(&mut fetch_cmd(&archive, Some((&s3, "stickers")), Some(&tg)))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], 7, "{doc}");
    assert_eq!(tg.get_file_calls(&ids[0]), 3);
    assert_eq!(tg.downloads(&ids[1]), 3);
    assert_eq!(tg.downloads(&ids[2]), 3);
    assert_eq!(tg.downloads(&ids[3]), 3);
    for id in &ids {
        assert_eq!(tg.completed_downloads(id), 1, "{id}");
    }
    assert_eq!(s3.requests("GET"), 3);
    let blobs = clean_blobs(&archive);
    assert_eq!(blobs.len(), 7);
    for id in &ids {
        let want = sha256_hex(tg.file_bytes(id).expect("bytes"));
        assert!(blobs.contains_key(&want), "{id}");
    }
}

#[test]
fn truncated_body_is_never_stored() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(2, 6000);
    tg.truncate_download(&ids[0], 1000);
    let mut db = Db::per_env();
    db.in_env("prod", Some(ids[0].as_str()), None)
        .in_env("prod", Some(ids[1].as_str()), None);
    let archive = db.snapshotted(dir.path());

    let doc = run(&mut fetch_cmd(&archive, None, Some(&tg)))
        .expect_code(3)
        .json();
    assert_eq!(doc["failed"], 1, "{doc}");
    assert_eq!(doc["done"], 1, "{doc}");
    assert!(tg.downloads(&ids[0]) >= 2, "retried");
    let blobs = clean_blobs(&archive);
    assert_eq!(blobs.len(), 1);
    let whole = tg.file_bytes(&ids[0]).expect("bytes");
    for bytes in blobs.values() {
        assert!(
            !whole.starts_with(bytes),
            "a part of the truncated file is stored as a blob"
        );
    }
    let r = refs(&archive)
        .into_iter()
        .find(|r| r.file_id.as_deref() == Some(ids[0].as_str()))
        .expect("ref");
    assert_eq!(r.state, "failed");
    assert!(r.sha256.is_none());
    let reason = r.reason.unwrap_or_default();
    assert!(reason.contains("Telegram"), "{reason}");
}

#[test]
fn expired_link_is_renewed() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(3, 2000);
    tg.expire_link_once(&ids[1]);
    let mut db = Db::per_env();
    for id in &ids {
        db.in_env("prod", Some(id.as_str()), None);
    }
    let archive = db.snapshotted(dir.path());

    run(&mut fetch_cmd(&archive, None, Some(&tg))).expect_code(0);
    assert_eq!(tg.get_file_calls(&ids[1]), 2, "a fresh link was asked for");
    assert_eq!(tg.downloads(&ids[1]), 2);
    assert_eq!(tg.completed_downloads(&ids[1]), 1);
    assert_eq!(clean_blobs(&archive).len(), 3);
}

#[test]
fn refused_files_fail_with_telegram_reason_and_the_run_goes_on() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(4, 1500);
    tg.too_big(&ids[0]).gone(&ids[1]);
    let mut db = Db::per_env();
    for id in &ids {
        db.in_env("prod", Some(id.as_str()), None);
    }
    db.in_env("prod", Some("no-such-file-id"), None);
    let archive = db.snapshotted(dir.path());

    let out = run(fetch_cmd(&archive, None, Some(&tg)).arg("--jobs").arg("1"));
    out.expect_code(3);
    let doc = out.json();
    assert_eq!(doc["done"], 2, "{doc}");
    assert_eq!(doc["failed"], 3, "{doc}");
    assert_eq!(tg.get_file_calls(&ids[0]), 1, "a refusal is final");
    assert_eq!(
        tg.get_file_calls(&ids[1]),
        5,
        "\"temporarily unavailable\" is retried, then final"
    );
    for id in [&ids[0], &ids[1]] {
        assert_eq!(tg.downloads(id), 0);
    }

    let status = status_json(&archive);
    let failures = status["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 3, "{status}");
    let reasons: Vec<String> = failures
        .iter()
        .map(|f| {
            assert_eq!(f["stage"], "fetch", "{f}");
            assert_eq!(f["class"], "sticker", "{f}");
            f["reason"].as_str().expect("reason").to_owned()
        })
        .collect();
    for needle in [
        "file is too big",
        "temporarily unavailable",
        "invalid file_id",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "no failure says {needle:?}: {reasons:?}"
        );
    }
    assert_eq!(status["fetch"]["sticker"]["failed"], 3, "{status}");
    assert_eq!(status["fetch"]["sticker"]["fetched"], 2, "{status}");
    // Human status lists them too.
    let text = run(bin().arg("--archive").arg(&archive).arg("status"));
    text.expect_code(0);
    assert!(text.stdout.contains("invalid file_id"), "{}", text.stdout);
    // And the human fetch report points there.
    let again = run(bin()
        .arg("--archive")
        .arg(&archive)
        .arg("fetch")
        .envs(tg.env()));
    again.expect_code(3);
    assert!(
        again.stdout.contains("starchive status"),
        "{}",
        again.stdout
    );
}

#[test]
fn file_larger_than_max_file_size_is_refused() {
    let dir = temp_dir();
    let tg = FakeTelegram::new();
    tg.add_file("tg-big", "stickers/big.webp", sticker_bytes(1, 3000));
    tg.add_file("tg-small", "stickers/small.webp", sticker_bytes(2, 1000));
    let s3 = TestS3::start();
    s3.create_bucket("stickers");
    s3.put_file("stickers", "k/big.webp", sticker_bytes(3, 3000));
    s3.put_file("stickers", "k/small.webp", sticker_bytes(4, 2048));
    let mut db = Db::per_env();
    db.in_env("prod", Some("tg-big"), None)
        .in_env("prod", Some("tg-small"), None)
        .in_env("prod", None, Some("k/big.webp"))
        .in_env("prod", None, Some("k/small.webp"));
    let archive = db.snapshotted(dir.path());

    let doc =
        run(fetch_cmd(&archive, Some((&s3, "stickers")), Some(&tg))
            .args(["--max-file-size", "2KiB"]))
        .expect_code(3)
        .json();
    assert_eq!(doc["failed"], 2, "{doc}");
    assert_eq!(doc["done"], 2, "{doc}");
    assert_eq!(
        tg.completed_downloads("tg-big"),
        0,
        "getFile said it is too big"
    );
    let blobs = clean_blobs(&archive);
    assert_eq!(blobs.len(), 2);
    assert!(blobs.values().all(|b| b.len() <= 2048));
    for r in refs(&archive).iter().filter(|r| r.state == "failed") {
        let reason = r.reason.as_deref().unwrap_or("");
        assert!(reason.contains("--max-file-size"), "{reason}");
    }
}

// ---- hostile keys -----------------------------------------------------------

#[test]
fn unsafe_key_fails_the_ref_and_reads_nothing() {
    let dir = temp_dir();
    let tg = FakeTelegram::new();
    tg.add_file(
        "tg-behind-bad-key",
        "stickers/x.webp",
        sticker_bytes(9, 500),
    );
    let s3 = TestS3::start();
    s3.create_bucket("stickers");
    s3.put_file("stickers", "ok/fine.webp", sticker_bytes(1, 700));
    let hostile = [
        "../../etc/passwd",
        "/etc/passwd",
        "stickers//x.webp",
        "stickers/../../../outside.webp",
        "stickers/./x.webp",
        "stickers/x.webp/",
        "stickers\\..\\x.webp",
        "stickers/a\u{1}b.webp",
    ];
    let mut db = Db::per_env();
    db.in_env("prod", None, Some("ok/fine.webp"));
    for key in hostile {
        db.in_env("prod", None, Some(key));
    }
    // A bad key with a file_id: still failed, never asked of Telegram.
    db.in_env("prod", Some("tg-behind-bad-key"), Some("../secret.webp"));
    let archive = db.snapshotted(dir.path());

    let doc = run(&mut fetch_cmd(&archive, Some((&s3, "stickers")), Some(&tg)))
        .expect_code(3)
        .json();
    assert_eq!(doc["done"], 1, "{doc}");
    assert_eq!(doc["failed"], hostile.len() + 1, "{doc}");
    assert_eq!(s3.requests("GET"), 1, "{:?}", s3.request_log());
    // And the one listing that checks the bucket can serve.
    assert_eq!(s3.requests("LIST"), 1, "{:?}", s3.request_log());
    assert_eq!(s3.requests("TOTAL"), 2, "{:?}", s3.request_log());
    assert_eq!(tg.total_requests(), 0);
    for r in refs(&archive).iter().filter(|r| r.state == "failed") {
        let reason = r.reason.as_deref().unwrap_or("");
        assert!(reason.contains("unsafe key"), "{r:?}");
    }
    assert_eq!(clean_blobs(&archive).len(), 1);
    // Nothing written beside the archive.
    let beside: BTreeSet<String> = std::fs::read_dir(dir.path())
        .expect("read")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        beside,
        ["archive", "db"].iter().map(|s| s.to_string()).collect()
    );
}

#[test]
fn unsafe_key_fails_even_without_a_bucket() {
    let dir = temp_dir();
    let tg = FakeTelegram::new();
    tg.add_file(
        "tg-behind-bad-key",
        "stickers/x.webp",
        sticker_bytes(9, 500),
    );
    let mut db = Db::per_env();
    db.in_env("prod", Some("tg-behind-bad-key"), Some("../../etc/passwd"));
    let archive = db.snapshotted(dir.path());

    let doc = run(&mut fetch_cmd(&archive, None, Some(&tg)))
        .expect_code(3)
        .json();
    assert_eq!(doc["failed"], 1, "{doc}");
    assert_eq!(tg.total_requests(), 0);
    let r = &refs(&archive)[0];
    assert!(
        r.reason.as_deref().unwrap_or("").contains("unsafe key"),
        "{r:?}"
    );
}

#[test]
fn dangling_key_without_file_id_fails_with_a_reason() {
    let dir = temp_dir();
    let s3 = TestS3::start();
    s3.create_bucket("stickers");
    s3.put_file("stickers", "k/here.webp", sticker_bytes(1, 900));
    let mut db = Db::per_env();
    db.in_env("prod", None, Some("k/here.webp"))
        .in_env("prod", None, Some("k/gone.webp"));
    let archive = db.snapshotted(dir.path());

    let doc = run(&mut fetch_cmd(&archive, Some((&s3, "stickers")), None))
        .expect_code(3)
        .json();
    assert_eq!(doc["done"], 1, "{doc}");
    assert_eq!(doc["failed"], 1, "{doc}");
    let r = refs(&archive)
        .into_iter()
        .find(|r| r.state == "failed")
        .expect("a failed ref");
    assert_eq!(r.key.as_deref(), Some("k/gone.webp"));
    assert!(r.dangling);
    let reason = r.reason.unwrap_or_default();
    assert!(reason.contains("missing in the bucket"), "{reason}");

    // Put back in the bucket, --retry-failed reads it.
    s3.put_file("stickers", "k/gone.webp", sticker_bytes(2, 900));
    let doc = run(fetch_cmd(&archive, Some((&s3, "stickers")), None).arg("--retry-failed"))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], 1, "{doc}");
    assert_eq!(clean_blobs(&archive).len(), 2);
}

/// A bucket `stickers` holding `n` keys named by `n` sticker rows, snapshotted
/// into `DIR/archive`.
fn bucket_of_stickers(n: u64) -> (tempfile::TempDir, TestS3, std::path::PathBuf) {
    let dir = temp_dir();
    let s3 = TestS3::start();
    s3.create_bucket("stickers");
    let mut db = Db::per_env();
    for i in 0..n {
        let key = format!("k/{i}.webp");
        s3.put_file("stickers", &key, sticker_bytes(i, 700));
        db.in_env("prod", None, Some(&key));
    }
    let archive = db.snapshotted(dir.path());
    (dir, s3, archive)
}

#[test]
fn refused_bucket_credentials_stop_with_exit_1() {
    let (_dir, s3, archive) = bucket_of_stickers(40);

    let started = Instant::now();
    let out = run(fetch_cmd(&archive, Some((&s3, "stickers")), None)
        .args(["--jobs", "2"])
        .env(
            "STARCHIVE_STORAGE_SECRET_ACCESS_KEY",
            "wrong-secret-hunter2",
        ));
    out.expect_code(1);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.stderr.contains("STARCHIVE_STORAGE_"), "{}", out.stderr);
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    assert!(
        s3.requests("GET") <= 4,
        "it went on: {}",
        s3.requests("GET")
    );
    assert!(refs(&archive).iter().all(|r| r.state == "pending"));

    let doc = run(&mut fetch_cmd(&archive, Some((&s3, "stickers")), None))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], 40, "{doc}");
}

#[test]
fn access_denied_on_one_key_fails_that_ref_only() {
    let (_dir, s3, archive) = bucket_of_stickers(5);

    s3.fail_next("GET", 1, 403);
    let doc = run(fetch_cmd(&archive, Some((&s3, "stickers")), None).args(["--jobs", "1"]))
        .expect_code(3)
        .json();
    assert_eq!(doc["done"], 4, "{doc}");
    assert_eq!(doc["failed"], 1, "{doc}");
    assert_eq!(s3.requests("GET"), 5, "a refusal is not retried");
    let failed: Vec<Ref> = refs(&archive)
        .into_iter()
        .filter(|r| r.state == "failed")
        .collect();
    assert_eq!(failed[0].key.as_deref(), Some("k/0.webp"));
    assert!(
        failed[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("AccessDenied")
    );
}

// ---- the token --------------------------------------------------------------

#[test]
fn refused_token_stops_with_exit_1() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(30, 800);
    let s3 = TestS3::start();
    s3.create_bucket("stickers");
    s3.put_file("stickers", "k/a.webp", sticker_bytes(50, 900));
    s3.put_file("stickers", "k/b.webp", sticker_bytes(51, 900));
    let mut db = Db::per_env();
    db.in_env("prod", None, Some("k/a.webp"))
        .in_env("prod", None, Some("k/b.webp"));
    for id in &ids {
        db.in_env("prod", Some(id.as_str()), None);
    }
    let archive = db.snapshotted(dir.path());

    let wrong = "987654321:AAWRONG-token_SECRET_zyxwvu";
    let out = run(fetch_cmd(&archive, Some((&s3, "stickers")), Some(&tg))
        .args(["--jobs", "2"])
        .env("TELEGRAM_BOT_TOKEN", wrong));
    out.expect_code(1);
    out.expect_error_doc();
    assert!(out.stderr.contains("TELEGRAM_BOT_TOKEN"), "{}", out.stderr);
    assert!(out.stderr.contains("refused the token"), "{}", out.stderr);
    assert!(!out.stderr.contains(wrong) && !out.stderr.contains("AAWRONG"));
    // No file_id was failed for the token's sake; the bucket's files stay fetched.
    let refs_now = refs(&archive);
    for r in &refs_now {
        match &r.key {
            Some(_) => assert_eq!(r.state, "fetched", "{r:?}"),
            None => assert_eq!(r.state, "pending", "{r:?}"),
        }
    }
    fetched_refs_have_their_blob(&archive, &refs_now);
    // It stopped at once: only the requests already under way were made.
    assert!(tg.total_requests() <= 4, "{}", tg.total_requests());

    let gets = s3.requests("GET");
    let doc = run(&mut fetch_cmd(&archive, Some((&s3, "stickers")), Some(&tg)))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], 30, "{doc}");
    assert_eq!(doc["skipped"], 2, "{doc}");
    assert_eq!(
        s3.requests("GET"),
        gets,
        "the bucket's files were not read again"
    );
    assert_eq!(clean_blobs(&archive).len(), 32);
}

#[test]
fn token_never_appears_in_output_or_archive() {
    let fx = Fixture::new();
    // Faults whose messages could carry a URL.
    let ids = fx.telegram_ids();
    let mut ids: Vec<&String> = ids.iter().collect();
    ids.sort();
    fx.tg
        .gone(ids[0])
        .fail_download_502(ids[1], 1)
        .reset_download(ids[2], 1)
        .truncate_download(ids[3], 1)
        .expire_link_once(ids[4])
        .fail_get_file_500(ids[5], 1);
    let mut outputs = Vec::new();
    for args in [&["--include", "photos"][..], &[][..]] {
        let out = run(fx.fetch().args(args).env("STARCHIVE_LOG", "trace"));
        outputs.push(out);
        let out = run(bin()
            .arg("--archive")
            .arg(fx.path())
            .args(["fetch", "--include", "photos"])
            .envs(fx.tg.env())
            .env("STARCHIVE_LOG", "debug"));
        outputs.push(out);
    }
    // The reasons of the failures were recorded, without the token.
    let failed = refs(fx.path())
        .into_iter()
        .filter(|r| r.state == "failed")
        .count();
    assert!(failed >= 2, "the faults left failures to look at");
    // A Bot API that cannot be reached stops asking it (exit 3), naming the
    // URL without the token; the refs stay pending.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let out = run(bin()
        .arg("--archive")
        .arg(fx.path())
        .args(["fetch", "--retry-failed", "--include", "photos"])
        .env("TELEGRAM_BOT_TOKEN", TOKEN)
        .env("TELEGRAM_API_URL", &dead_url)
        .env("STARCHIVE_LOG", "debug"));
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot reach the Telegram Bot API") && out.stderr.contains(&dead_url),
        "{}",
        out.stderr
    );
    outputs.push(out);
    for cmd in ["status", "plan"] {
        for json in [true, false] {
            let mut c = bin();
            c.arg("--archive").arg(fx.path()).arg(cmd);
            if json {
                c.arg("--json");
            }
            outputs.push(run(&mut c));
        }
    }
    let secret_part = TOKEN.split(':').nth(1).expect("token secret");
    for out in &outputs {
        for text in [&out.stdout, &out.stderr] {
            assert!(
                !text.contains(secret_part) && !text.contains("SECRET"),
                "the token leaked:\n{text}"
            );
        }
    }
    // No file of the archive holds it.
    let mut stack = vec![fx.path().to_path_buf()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).expect("read");
            let found = bytes
                .windows(secret_part.len())
                .any(|w| w == secret_part.as_bytes());
            assert!(!found, "the token is in {}", path.display());
        }
    }
    assert!(files > 20);
}

// ---- exit codes and reports -------------------------------------------------

#[test]
fn exit_codes_say_done_failed_error_or_usage() {
    let dir = temp_dir();
    // No catalog: an error, exit 1, and what to do.
    let out = run(bin()
        .arg("--archive")
        .arg(dir.path().join("none"))
        .arg("fetch"));
    out.expect_code(1);
    assert!(out.stderr.contains("starchive snapshot"), "{}", out.stderr);

    let (tg, ids) = telegram_with_files(2, 600);
    let mut db = Db::per_env();
    for id in &ids {
        db.in_env("prod", Some(id.as_str()), None);
    }
    let archive = db.snapshotted(dir.path());

    // Bad usage: exit 2, nothing done, and (with --json) one JSON document
    // on stdout that says why. Credentials in a store URL, in any form, are
    // refused and never shown.
    for args in [
        &["--max-file-size", "5MB"][..],
        &["--storage", "ftp://host/bucket"][..],
        &["--storage", "s3://bucket?secret_access_key=hunter2"][..],
        &[
            "--storage",
            "s3://bkt?endpoint=http://AKUSER:hunter2@127.0.0.1:1&allow_http=true",
        ][..],
        &[
            "--storage",
            "s3://bkt?allow_http=true&endpoint=http%3A%2F%2FAKUSER%3Ahunter2%40127.0.0.1%3A1",
        ][..],
        &["--storage", "s3://AKUSER:hunter2@bkt/prefix"][..],
        &["--jobs", "0"][..],
        &["--include", "everything"][..],
    ] {
        let out = run(fetch_cmd(&archive, None, Some(&tg)).args(args));
        out.expect_code(2);
        assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
        assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
        let doc = out.json();
        assert_eq!(doc["exit_code"], 2, "{doc}");
        let message = doc["error"].as_str().expect("error text");
        assert!(
            out.stderr.contains(message.lines().next().expect("a line")),
            "{message}\n{}",
            out.stderr
        );
        if args[1].contains("AKUSER") {
            assert!(
                message.contains("STARCHIVE_STORAGE_ACCESS_KEY_ID"),
                "{message}"
            );
        }
    }
    assert_eq!(tg.total_requests(), 0, "bad usage did nothing");
    let failed: i64 = catalog(&archive)
        .query_row(
            "SELECT count(*) FROM refs WHERE state = 'failed'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(failed, 0, "a refused store URL marked no ref failed");

    // All done: 0. Nothing left: 0 again.
    let doc = run(&mut fetch_cmd(&archive, None, Some(&tg)))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], 2, "{doc}");
    let doc = run(&mut fetch_cmd(&archive, None, Some(&tg)))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], 0, "{doc}");
    assert_eq!(doc["skipped"], 2, "{doc}");
    assert_eq!(doc["bytes"], 0, "{doc}");
}

#[test]
fn without_token_or_bucket_refs_stay_pending_and_the_report_says_why() {
    let fx = Fixture::new();
    let out = run(&mut fetch_cmd(fx.path(), None, None));
    let doc = out.json();
    assert_eq!(doc["done"], 0, "{doc}");
    assert_eq!(doc["pending"], 26, "{doc}");
    let notes = doc["notes"].to_string();
    assert!(notes.contains("--storage"), "{notes}");
    assert!(notes.contains("TELEGRAM_BOT_TOKEN"), "{notes}");
    assert_eq!(fx.s3.requests("TOTAL"), 0);
    assert_eq!(fx.tg.total_requests(), 0);
    assert_ne!(out.code, Some(3), "nothing failed");
}

// ---- pacing -----------------------------------------------------------------

#[test]
fn request_rate_stays_under_telegram_rate() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(12, 700);
    let mut db = Db::per_env();
    for id in &ids {
        db.in_env("prod", Some(id.as_str()), None);
    }
    let archive = db.snapshotted(dir.path());

    run(fetch_cmd(&archive, None, Some(&tg)).args(["--jobs", "8", "--telegram-rate", "10"]))
        .expect_code(0);
    let times = tg.request_times();
    assert_eq!(times.len(), 24);
    // Any k+1 consecutive requests span at least k intervals of 100 ms,
    // less a slack for when a request, sent on time, reaches the server:
    // the loopback's and a loaded machine's scheduling jitter, which reached
    // 100 ms on 2 cores with the rest of the suite running beside it. The
    // spans are of 5 intervals and more, where that slack still leaves most
    // of the pacing to prove (unpaced, 8 jobs send 6 requests in a few ms).
    for k in [5, 10, 20] {
        let least = Duration::from_millis(100 * k as u64 - 150);
        for w in times.windows(k + 1) {
            let span = w[k] - w[0];
            assert!(span >= least, "{} requests in {span:?}", k + 1);
        }
    }
    let total = times[times.len() - 1] - times[0];
    let rate = (times.len() - 1) as f64 / total.as_secs_f64();
    assert!(rate <= 10.5, "{rate:.1} requests/s");
    assert!(rate >= 5.0, "{rate:.1} requests/s: paced far too slowly");
}

// ---- kill -9 ------------------------------------------------------------------

#[test]
fn killed_fetch_resumes_without_redownloading() {
    const FILES: usize = 400;
    const JOBS: u64 = 8;
    const KILLS: usize = 5;
    let mut next = crate::support::seeded_rng("killed_fetch_resumes_without_redownloading");

    let dir = temp_dir();
    let tg = FakeTelegram::new();
    tg.latency(Duration::from_millis(40));
    let mut ids = Vec::new();
    let mut db = Db::per_env();
    for i in 0..FILES {
        let id = format!("kill-file-{i:04}");
        let len = 1000 + (next() % 7000) as usize;
        tg.add_file(
            &id,
            &format!("stickers/k{i}.webp"),
            sticker_bytes(next(), len),
        );
        db.in_env(
            if i % 3 == 0 { "test" } else { "prod" },
            Some(id.as_str()),
            None,
        );
        // Some file_ids named twice: still one download.
        if i % 10 == 0 {
            db.in_env("prod", Some(id.as_str()), None);
        }
        ids.push(id);
    }
    let archive = db.snapshotted(dir.path());
    let refs_total = refs(&archive).len();

    let fetch = || {
        let mut cmd = fetch_cmd(&archive, None, Some(&tg));
        cmd.args(["--jobs", &JOBS.to_string(), "--telegram-rate", "2000"]);
        cmd
    };
    // For each kill: the downloads counted for every file_id that was
    // committed as fetched at that moment. None of them may grow later.
    let mut committed: Vec<BTreeMap<String, u64>> = Vec::new();
    let mut kills = 0;
    for round in 0..KILLS {
        let delay = Duration::from_millis(50 + next() % 650);
        if crate::support::kill_after(&mut fetch(), delay) {
            eprintln!("round {round}: finished before the kill at {delay:?}");
            break;
        }
        kills += 1;
        // What the catalog says is fetched is on disk, whole.
        let now = refs(&archive);
        fetched_refs_have_their_blob(&archive, &now);
        let fetched: BTreeSet<String> = now
            .iter()
            .filter(|r| r.state == "fetched")
            .filter_map(|r| r.file_id.clone())
            .collect();
        eprintln!(
            "round {round}: killed after {delay:?}, {} file_ids fetched",
            fetched.len()
        );
        committed.push(
            fetched
                .into_iter()
                .map(|id| {
                    let n = tg.completed_downloads(&id);
                    (id, n)
                })
                .collect(),
        );
    }
    assert!(kills >= 2, "the run finished too fast to be killed");

    let doc = run(&mut fetch()).expect_code(0).json();
    assert_eq!(doc["pending"], 0, "{doc}");
    assert_eq!(doc["failed"], 0, "{doc}");
    let refs = refs(&archive);
    assert_eq!(refs.len(), refs_total);
    assert!(refs.iter().all(|r| r.state == "fetched"));
    let blobs = clean_blobs(&archive);
    assert_eq!(blobs.len(), FILES);
    fetched_refs_have_their_blob(&archive, &refs);
    for r in &refs {
        let id = r.file_id.as_deref().expect("file_id");
        let want = sha256_hex(tg.file_bytes(id).expect("served"));
        assert_eq!(r.sha256.as_deref(), Some(want.as_str()), "{r:?}");
    }
    for (k, snapshot) in committed.iter().enumerate() {
        for (id, n) in snapshot {
            assert_eq!(
                tg.completed_downloads(id),
                *n,
                "{id} was fetched at kill {k} and downloaded again"
            );
        }
    }
    // A kill loses at most the units in flight: the `--jobs` downloads and
    // the blobs staged but waiting for their durability group (at most
    // `COMMIT_BATCH` = 256 beyond the jobs, src/commands/fetch.rs
    // `PUBLISHING`). How many of those a kill meets depends on the machine's
    // load (a slow syncfs holds a bigger group), so the bound is the design's.
    const PUBLISHING: u64 = 256;
    let total: u64 = ids.iter().map(|id| tg.completed_downloads(id)).sum();
    assert!(
        total <= FILES as u64 + kills as u64 * (JOBS + PUBLISHING),
        "{total} downloads for {FILES} files and {kills} kills"
    );
    for id in &ids {
        assert!(tg.completed_downloads(id) >= 1);
    }
}
