//! A full archive disk stops `fetch` and `pull` (exit 1, naming the path
//! and the cause): no ref is failed for it, what was stored stays, and the
//! next plain run finishes once there is room.

use std::path::Path;

use serde_json::Value;

use super::{fetch_cmd, refs, telegram_with_files};
use crate::support::dataset::{Db, sticker_bytes};
use crate::support::run::{run, starchive};
use crate::support::temp_dir;
use crate::support::tmpfs::Tmpfs;

/// Files of this size, 24 of them: about 2.4 MB, where `blobs/` has 1 MiB.
const LEN: usize = 100_000;
const FILES: usize = 24;

#[track_caller]
fn assert_stopped_on_full_disk(out: &crate::support::run::Run) {
    out.expect_code(1);
    let doc: Value = out.json();
    let error = doc["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("No space left on device"),
        "the cause: {doc}"
    );
    assert!(error.contains("blobs"), "the path: {doc}");
    assert!(
        !error.contains("Telegram:"),
        "not blamed on Telegram: {doc}"
    );
}

/// (fetched, failed, pending) refs.
fn states(archive: &Path) -> (usize, usize, usize) {
    let refs = refs(archive);
    let n = |s: &str| refs.iter().filter(|r| r.state == s).count();
    (n("fetched"), n("failed"), n("pending"))
}

#[test]
fn a_full_disk_stops_fetch_leaving_the_refs_pending() {
    for source in ["bucket", "telegram"] {
        let dir = temp_dir();
        let (tg, ids) = telegram_with_files(FILES, LEN);
        let bucket = dir.path().join("bucket");
        let mut db = Db::per_env();
        for (i, id) in ids.iter().enumerate() {
            let key = format!("stickers/1/{i:04}.webp");
            if source == "bucket" {
                let path = bucket.join(&key);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(&path, sticker_bytes(1000 + i as u64, LEN)).expect("file");
            }
            let key = (source == "bucket").then_some(key);
            db.in_env("prod", Some(id.as_str()), key.as_deref());
        }
        std::fs::create_dir_all(&bucket).expect("bucket");
        let archive = db.snapshotted(dir.path());
        let Some(disk) = Tmpfs::mount(&archive.join("blobs"), "1m") else {
            return;
        };
        let fetch = || {
            let mut cmd = fetch_cmd(&archive, None, Some(&tg));
            cmd.arg("--storage")
                .arg(&bucket)
                .args(["--telegram-rate", "1000"]);
            run(&mut cmd)
        };
        let out = fetch();
        assert_stopped_on_full_disk(&out);
        let (fetched, failed, pending) = states(&archive);
        assert_eq!(failed, 0, "{source}: no ref failed for the disk");
        assert!(
            fetched > 0 && pending > 0,
            "{source}: {fetched} fetched, {pending} pending"
        );
        // Room again: a plain fetch (no --retry-failed) finishes.
        disk.resize("16m");
        let doc = fetch().expect_code(0).json();
        assert_eq!(doc["done"], (FILES - fetched) as u64, "{source}: {doc}");
        assert_eq!(states(&archive), (FILES, 0, 0), "{source}");
        run(starchive(&archive).arg("verify")).expect_code(0);
        drop(disk);
    }
}

#[test]
fn a_full_disk_stops_pull_leaving_the_refs_pending() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(FILES, LEN);
    let mut db = Db::per_env();
    for id in &ids {
        db.in_env("prod", Some(id.as_str()), None);
    }
    let archive = db.snapshotted(dir.path());
    run(fetch_cmd(&archive, None, Some(&tg)).args(["--telegram-rate", "1000"])).expect_code(0);
    let dest = dir.path().join("dest");
    run(starchive(&archive).arg("push").arg("--to").arg(&dest)).expect_code(0);

    let copy = dir.path().join("copy");
    let Some(disk) = Tmpfs::mount(&copy.join("blobs"), "1m") else {
        return;
    };
    let pull = || {
        run(starchive(&copy)
            .args(["--json", "pull", "--from"])
            .arg(&dest))
    };
    let out = pull();
    assert_stopped_on_full_disk(&out);
    assert!(
        out.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("pull --from"))
    );
    let (fetched, failed, pending) = states(&copy);
    assert_eq!(failed, 0, "no ref failed for the disk");
    assert!(
        fetched > 0 && pending > 0,
        "{fetched} fetched, {pending} pending"
    );
    disk.resize("16m");
    pull().expect_code(0);
    assert_eq!(states(&copy), (FILES, 0, 0));
    run(starchive(&copy).arg("verify")).expect_code(0);
    drop(disk);
}

/// A long fetch needs little more disk than its files: the catalog's
/// write-ahead log is checkpointed and cut back while the fetch runs. By
/// default SQLite let it reach 1,000 pages (16 MiB of the catalog's 16 KiB
/// pages) before a checkpoint and kept that size: a fetch of 1,000 small
/// files on a disk of 8 MiB stopped with "database or disk is full", and so
/// did every run after it.
#[test]
fn a_long_fetch_fits_on_a_disk_little_larger_than_its_files() {
    const N: usize = 600;
    const SMALL: usize = 2000;
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(N, SMALL);
    let mut db = Db::per_env();
    for id in &ids {
        db.in_env("prod", Some(id.as_str()), None);
    }
    let Some(disk) = Tmpfs::mount(&dir.path().join("archive"), "8m") else {
        return;
    };
    let archive = db.snapshotted(dir.path());
    // One job at Telegram's pace: a commit per file, the most a fetch makes.
    let out =
        run(fetch_cmd(&archive, None, Some(&tg)).args(["--jobs", "1", "--telegram-rate", "400"]));
    out.expect_code(0);
    assert_eq!(states(&archive), (N, 0, 0));
    run(starchive(&archive).arg("verify")).expect_code(0);
    drop(disk);
}

/// A catalog write the disk refuses names the catalog and the way out, not
/// only SQLite's "database or disk is full"; the refs stay pending, and the
/// same fetch finishes once there is room.
#[test]
fn a_full_disk_under_the_catalog_names_it() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(FILES, 2000);
    let mut db = Db::per_env();
    for id in &ids {
        db.in_env("prod", Some(id.as_str()), None);
    }
    let Some(disk) = Tmpfs::mount(&dir.path().join("archive"), "4m") else {
        return;
    };
    let archive = db.snapshotted(dir.path());
    // The files have room of their own; the catalog's disk has none left.
    let Some(blobs) = Tmpfs::mount(&archive.join("blobs"), "16m") else {
        return;
    };
    let filler = archive.join("filler");
    let mut file = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
    drop(file);
    let fetch = || run(fetch_cmd(&archive, None, Some(&tg)).args(["--telegram-rate", "1000"]));
    let out = fetch();
    out.expect_code(1);
    let error = out.json()["error"].as_str().unwrap_or_default().to_string();
    let catalog = archive.join("catalog.sqlite");
    assert!(
        error.contains(&catalog.display().to_string()) && error.contains("free space"),
        "the catalog and the way out: {error}"
    );
    std::fs::remove_file(&filler).expect("remove filler");
    assert_eq!(states(&archive).1, 0, "no ref failed for the disk");
    fetch().expect_code(0);
    assert_eq!(states(&archive), (FILES, 0, 0));
    drop(blobs);
    drop(disk);
}
