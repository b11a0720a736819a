//! Benchmark of `check --storage`, as an ignored test (it needs `rclone` and
//! `/usr/bin/time`). Run it on an optimised build, with the output shown:
//!
//! ```text
//! cargo test --release --test it -- --ignored --nocapture --test-threads 1 bench_check
//! ```
//! (`bench/check.sh` does just that.) Buckets of generated objects, 90 % of
//! them named by `stickers` rows of the catalog and 10 % orphans (half in
//! sessions' folders, half in folders no row names):
//!
//! 1. on the loopback S3 server (s3s-fs, in this process), `starchive check
//!    --storage` (the listing streamed into the catalog's temp tables and
//!    classified there) beside `rclone lsjson -R` of the same bucket, the
//!    listing's floor: 10,000 objects (`BENCH_SIDE_OBJECTS=N`), alternating
//!    which goes first, medians of 3 rounds (`BENCH_ROUNDS=N`): wall time,
//!    CPU time and peak RSS of each;
//! 2. peak RSS of `check --storage` over a local directory of 10,000,
//!    100,000 and 300,000 objects (`BENCH_MEMORY_OBJECTS=N,N,…`): whether
//!    memory stays flat as the bucket grows, without a server's cost.
//!
//! What bounds the time on s3s-fs is the server (s3s-fs 0.14): every
//! ListObjectsV2 request walks the whole bucket directory, one `tokio::fs`
//! call per file, then sorts and cuts it, so a flat listing of N objects in
//! pages of 1,000 costs N²/1,000 file visits, for both tools: rclone's
//! `lsjson -R` makes the same flat listing (ListR; the test server reads its
//! empty `delimiter=` as none, as S3 does). Both are idle nearly all the
//! time at 100,000 objects: CPU seconds against wall seconds show it.
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

/// Objects of the side-by-side measure.
const SIDE_BY_SIDE: usize = 10_000;
/// Bucket sizes of the memory measure.
const MEMORY_SIZES: [usize; 3] = [10_000, 100_000, 300_000];
const BUCKET: &str = "stickers";
/// Stickers per session.
const PER_SESSION: usize = 50;

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

/// One run under `/usr/bin/time -v`.
struct Measured {
    wall: f64,
    /// User plus system CPU seconds.
    cpu: f64,
    rss_mb: f64,
    stdout: String,
}

/// Runs `cmd` under `/usr/bin/time -v`, expecting exit code `expect_code`.
fn measure(cmd: &Command, work: &Path, expect_code: i32) -> Measured {
    let report = work.join("time.txt");
    let (wall, kb, out) = time_v(cmd, &report);
    assert_eq!(
        out.status.code(),
        Some(expect_code),
        "{:?}: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&report).expect("time -v report");
    let seconds = |label: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{label} in {text}"))
    };
    Measured {
        wall,
        cpu: seconds("User time (seconds): ") + seconds("System time (seconds): "),
        rss_mb: kb as f64 / 1024.0,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
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
    flat_memory(&memory_sizes());
}

/// Bucket sizes of the memory measure (env `BENCH_MEMORY_OBJECTS`, comma-separated, overrides).
fn memory_sizes() -> Vec<usize> {
    std::env::var("BENCH_MEMORY_OBJECTS")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .filter(|n| *n >= 20)
                .collect::<Vec<usize>>()
        })
        .filter(|sizes| !sizes.is_empty())
        .unwrap_or_else(|| MEMORY_SIZES.to_vec())
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
    // One flat listing (ListR), as starchive's.
    lsjson.args(["lsjson", "-R", "--files-only"]);
    lsjson.arg(format!("x:{BUCKET}"));
    let check = check_cmd(&s3, &archive);
    let names = ["starchive check --storage", "rclone lsjson -R"];
    let mut runs: [Vec<Measured>; 2] = Default::default();
    println!(
        "1. side by side over {n} objects ({} orphans) on the loopback S3 server, {} rounds",
        n / 10,
        rounds()
    );
    for round in 0..rounds() {
        for k in 0..2 {
            let which = (round + k) % 2;
            let m = if which == 0 {
                let m = measure(&check, work.path(), 3);
                assert_eq!(orphans_counted(&m.stdout), Some(n / 10), "{}", m.stdout);
                m
            } else {
                let m = measure(&lsjson, work.path(), 0);
                let listed: Vec<serde_json::Value> =
                    serde_json::from_str(&m.stdout).expect("lsjson output");
                assert_eq!(listed.len(), n, "rclone listed {:.300}", m.stdout);
                m
            };
            println!(
                "   round {round}: {} {:.2} s ({:.2} s CPU), {:.1} MB",
                names[which], m.wall, m.cpu, m.rss_mb
            );
            runs[which].push(m);
        }
    }
    let med = |which: usize, f: fn(&Measured) -> f64| median(runs[which].iter().map(f).collect());
    println!(
        "   {:<28} {:>9} {:>9} {:>13}",
        "tool", "median s", "CPU s", "peak RSS MB"
    );
    for (which, name) in names.iter().enumerate() {
        println!(
            "   {:<28} {:>9.2} {:>9.2} {:>13.1}",
            name,
            med(which, |m| m.wall),
            med(which, |m| m.cpu),
            med(which, |m| m.rss_mb)
        );
    }
    println!(
        "   ratio starchive/rclone: {:.2}x the time",
        med(0, |m| m.wall) / med(1, |m| m.wall)
    );
}

/// Peak RSS of `check --storage` over a local directory holding buckets of
/// each size in `sizes`: the same listing and classification, with no
/// server's cost in the way.
fn flat_memory(sizes: &[usize]) {
    println!("2. check --storage over a local directory: peak RSS by bucket size");
    println!("   {:>9} {:>9} {:>13}", "objects", "wall s", "peak RSS MB");
    for &n in sizes {
        let work = temp_dir();
        let s3 = TestS3::start();
        let archive = dataset(&s3, work.path(), n);
        let mut cmd = starchive(&archive);
        cmd.args(["check", "--storage"]).arg(s3.root().join(BUCKET));
        let m = measure(&cmd, work.path(), 3);
        assert_eq!(orphans_counted(&m.stdout), Some(n / 10), "{}", m.stdout);
        println!("   {n:>9} {:>9.2} {:>13.1}", m.wall, m.rss_mb);
    }
}
