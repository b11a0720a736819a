//! Benchmark of `check --storage`, as an ignored test (it needs `rclone` and
//! `/usr/bin/time`). Run it on an optimised build, with the output shown:
//!
//! ```text
//! cargo test --release --test it -- --ignored --nocapture --test-threads 1 bench_check
//! ```
//! (`bench/check.sh` does just that.) Buckets on the loopback S3 server
//! (s3s-fs, in this process), 90 % of their objects named by `stickers` rows
//! of the catalog and 10 % orphans (half in sessions' folders, half in
//! folders no row names):
//!
//! 1. `starchive check --storage` (the listing streamed into the catalog's
//!    temp tables and classified there) beside `rclone lsjson -R` of the same
//!    bucket of 10,000 objects (`BENCH_SIDE_OBJECTS`), the listing's floor;
//!    alternating which goes first, medians of 3 (`BENCH_ROUNDS=N`): wall
//!    time and peak RSS of each;
//! 2. `starchive check --storage` alone over 100,000 objects
//!    (`BENCH_OBJECTS`): wall time and peak RSS.
//!
//! Why not rclone at 100,000: s3s-fs walks the whole bucket for every
//! listing request (a page of 1,000 keys costs a scan of all of them), and
//! it takes the empty delimiter of rclone's flat listing for a delimiter, so
//! rclone must list a directory at a time, each request another full scan:
//! hours at 100,000 objects, all of it the server's.
//!
//! The catalog is snapshotted, not fetched: the listing and its
//! classification are measured, not the re-hashing of blobs.

use std::path::Path;
use std::process::Command;

use crate::support::bench::{env_number, median, rclone_for, rounds, time_v, tool_available};
use crate::support::dataset::Db;
use crate::support::run::starchive;
use crate::support::s3::TestS3;
use crate::support::temp_dir;

const OBJECTS: usize = 100_000;
/// Objects of the side-by-side measure.
const SIDE_BY_SIDE: usize = 10_000;
const BUCKET: &str = "stickers";
/// Stickers per session.
const PER_SESSION: usize = 50;

/// Objects in the bucket (env `BENCH_OBJECTS` overrides).
fn objects() -> usize {
    env_number("BENCH_OBJECTS", OBJECTS, 20)
}

/// `n` objects in bucket `stickers` of `s3`, and an archive whose catalog
/// names 90 % of them; returns the archive. Every tenth object is an orphan:
/// in its session's folder (even ones) or in a folder no row names (odd).
fn dataset(s3: &TestS3, dir: &Path, n: usize) -> std::path::PathBuf {
    s3.create_bucket(BUCKET);
    let mut db = Db::default();
    for i in 0..n {
        let user = 100_000 + i / PER_SESSION;
        let session = format!("00000000-0000-4000-8000-{:012}", i / PER_SESSION);
        if i % PER_SESSION == 0 {
            db.session(&session, &user.to_string(), "prod", None, None);
        }
        let bytes = vec![b'x'; 100 + i % 200];
        if i % 10 == 9 {
            let folder = if i % 20 == 9 {
                session.clone()
            } else {
                format!("gone-{i}")
            };
            s3.put_file(
                BUCKET,
                &format!("stickers/{user}/{folder}/orphan_{i}.webp"),
                bytes,
            );
            continue;
        }
        let key = format!("stickers/{user}/{session}/{i}.webp");
        s3.put_file(BUCKET, &key, bytes);
        db.sticker(
            &format!("00000000-0000-4000-9000-{i:012}"),
            &user.to_string(),
            &session,
            None,
            Some(&key),
        );
    }
    let archive = dir.join("archive");
    db.snapshot(&dir.join("db"), &archive);
    archive
}

fn check_cmd(s3: &TestS3, archive: &Path) -> Command {
    let mut cmd = starchive(archive);
    cmd.args(["check", "--storage", &s3.store_url(BUCKET, "")])
        .envs(s3.env("STORAGE"));
    cmd
}

/// Runs `cmd` under `/usr/bin/time -v`: wall seconds, peak RSS in MB, stdout.
fn measure(cmd: &Command, work: &Path, expect_code: i32) -> (f64, f64, String) {
    let (secs, kb, out) = time_v(cmd, &work.join("time.txt"));
    assert_eq!(
        out.status.code(),
        Some(expect_code),
        "{:?}: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        secs,
        kb as f64 / 1024.0,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
#[ignore = "benchmark: cargo test --release --test it -- --ignored --nocapture bench_check"]
fn bench_check_vs_rclone_lsjson() {
    assert!(
        tool_available("rclone", "version"),
        "rclone is needed: apt-get install -y rclone"
    );
    assert!(
        tool_available("/usr/bin/time", "true"),
        "/usr/bin/time is needed: apt-get install -y time"
    );
    println!(
        "bench_check_vs_rclone_lsjson: binary {}",
        env!("CARGO_BIN_EXE_starchive")
    );
    side_by_side(side_by_side_objects());
    alone(objects());
}

/// Objects of the side-by-side measure (env `BENCH_SIDE_OBJECTS` overrides).
fn side_by_side_objects() -> usize {
    env_number("BENCH_SIDE_OBJECTS", SIDE_BY_SIDE, 20)
}

/// The orphans the text report of `check` counts.
fn orphans_counted(report: &str) -> Option<usize> {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix("orphan "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// `check --storage` and `rclone lsjson -R` over the same bucket of `n`
/// objects, alternating which goes first.
fn side_by_side(n: usize) {
    let work = temp_dir();
    let s3 = TestS3::start();
    let archive = dataset(&s3, work.path(), n);
    let mut lsjson = rclone_for(&s3, work.path());
    // Listed a directory at a time: s3s-fs takes the empty delimiter of
    // rclone's one flat listing (ListR) for a delimiter and answers one
    // common prefix and no object.
    lsjson.args(["lsjson", "-R", "--disable", "ListR", "--files-only"]);
    lsjson.arg(format!("x:{BUCKET}"));
    let check = check_cmd(&s3, &archive);
    let names = ["starchive check --storage", "rclone lsjson -R"];
    let mut secs: [Vec<f64>; 2] = Default::default();
    let mut rss: [Vec<f64>; 2] = Default::default();
    println!(
        "1. side by side over {n} objects ({} orphans) on the loopback S3 server, {} rounds",
        n / 10,
        rounds()
    );
    for round in 0..rounds() {
        for k in 0..2 {
            let which = (round + k) % 2;
            let (s, mb, stdout) = if which == 0 {
                measure(&check, work.path(), 3)
            } else {
                measure(&lsjson, work.path(), 0)
            };
            if which == 0 {
                assert_eq!(orphans_counted(&stdout), Some(n / 10), "{stdout}");
            } else {
                let listed: Vec<serde_json::Value> =
                    serde_json::from_str(&stdout).expect("lsjson output");
                assert_eq!(listed.len(), n, "rclone listed {stdout:.300}");
            }
            println!("   round {round}: {} {s:.2} s, {mb:.1} MB", names[which]);
            secs[which].push(s);
            rss[which].push(mb);
        }
    }
    println!("   {:<28} {:>9} {:>13}", "tool", "median s", "peak RSS MB");
    for which in 0..2 {
        println!(
            "   {:<28} {:>9.2} {:>13.1}",
            names[which],
            median(secs[which].clone()),
            median(rss[which].clone())
        );
    }
    println!(
        "   ratio starchive/rclone: {:.2}x the time",
        median(secs[0].clone()) / median(secs[1].clone())
    );
}

/// `check --storage` over a bucket of `n` objects, once: wall time and peak RSS.
fn alone(n: usize) {
    let work = temp_dir();
    let s3 = TestS3::start();
    let archive = dataset(&s3, work.path(), n);
    let (s, mb, stdout) = measure(&check_cmd(&s3, &archive), work.path(), 3);
    assert_eq!(orphans_counted(&stdout), Some(n / 10), "{stdout}");
    println!("2. starchive check --storage over {n} objects: {s:.2} s, peak RSS {mb:.1} MB");
}
