//! Benchmark of `push`, as an ignored test (it takes minutes and needs
//! `rclone` and `/usr/bin/time`). Run it on an optimised build, with the
//! output shown:
//!
//! ```text
//! cargo test --release --test it -- --ignored --nocapture --test-threads 1 bench_push
//! ```
//! (`bench/push.sh` does just that.) `BENCH_ONLY=upload`, `noop` or `rss`
//! runs one of the three measures below; `BENCH_ONLY=noop1m` runs the
//! fourth, which only runs when asked (minutes of setup). The loopback S3 server is the test
//! support server, in this process; `starchive` is the binary cargo built
//! beside the tests (release with `--release`). Three measures:
//!
//! 1. upload of 5,000 small files (2-60 KiB) to the loopback S3 server:
//!    `starchive push` against `rclone copy` of the same files, same
//!    concurrency, same server, alternating which goes first, medians of 3
//!    (target: starchive at least 1.5x rclone);
//! 2. a no-op second push over 10,000 refs (target: under 1 s);
//! 3. peak RSS of `push` at 1,000 and 100,000 refs (target: flat, under
//!    150 MB);
//! 4. a no-op push over 1,000,000 refs (`BENCH_NOOP_REFS` overrides) in
//!    the cas layout to a local directory, with its peak RSS: right after a
//!    push that left the destination whole, and after a `fetch` with
//!    nothing to do, which changes nothing in the catalog (target: under
//!    2 s, both); the fetch and push before it, and the same runs over
//!    1,000 refs first, with their peak RSS (target: flat).
//!
//! CPU: the S3 server runs in this process, so this process's CPU time over
//! a run is the server's (the harness itself idles meanwhile); the client's
//! is that of the child, read from `/proc/self/stat` once it was waited for.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::push::push_cmd;
use crate::support::bench::{
    Measure, env_number, measured, median, rclone_copy, rounds, shared_file_ids, time_v,
    tool_available,
};
use crate::support::dataset::{Db, sticker_bytes};
use crate::support::run::{run, starchive};
use crate::support::s3::TestS3;
use crate::support::temp_dir;

const FILES: usize = 5_000;
const MIN_SIZE: usize = 2 * 1024;
const MAX_SIZE: usize = 60 * 1024;
const JOBS: usize = 16;
const NOOP_REFS: usize = 10_000;
const RSS_SIZES: [usize; 2] = [1_000, 100_000];

/// Whether measure `name` runs: every one unless `BENCH_ONLY` names one.
fn runs(name: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only == name)
}

/// `cmd` run under `/usr/bin/time -v`, which must succeed: (wall seconds, peak RSS in KiB).
fn with_peak_rss(cmd: &Command, report: &Path) -> (f64, u64) {
    let (secs, kb, out) = time_v(cmd, report);
    assert!(
        out.status.success(),
        "{:?} failed: {:?}\n{}\n{}",
        cmd.get_program(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, kb)
}

/// `rclone copy SRC x:BUCKET`, configured from the environment only (an
/// empty config file, nothing of the caller's `RCLONE_*`/`AWS_*`), as
/// DESIGN.md shows.
fn rclone(s3: &TestS3, src: &Path, bucket: &str, jobs: usize, work: &Path) -> Command {
    rclone_copy(
        s3,
        &src.to_string_lossy(),
        &format!("x:{bucket}"),
        jobs,
        work,
    )
}

/// `n` stickers with distinct bytes of `min..=max` bytes, as files of a
/// local bucket directory named by their storage keys, snapshotted and
/// fetched into an archive. Returns (archive, bucket dir, total bytes).
pub(crate) fn dataset(dir: &Path, n: usize, min: usize, max: usize) -> (PathBuf, PathBuf, u64) {
    let bucket = dir.join("bucket");
    let mut db = Db::default();
    let mut total = 0u64;
    let mut x: u64 = 0x5EED_F00D ^ n as u64;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let user = 100_000 + i / 20;
        let session = format!("00000000-0000-4000-8000-{:012}", i / 20);
        if i % 20 == 0 {
            db.session(&session, &user.to_string(), "prod", None, None);
        }
        let size = min + (x % (max - min + 1) as u64) as usize;
        let key = format!("stickers/{user}/{session}/{i}.webp");
        let path = bucket.join(&key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, sticker_bytes(x, size)).expect("write bucket file");
        db.sticker(
            &format!("00000000-0000-4000-9000-{i:012}"),
            &user.to_string(),
            &session,
            None,
            Some(&key),
        );
        total += size as u64;
    }
    let archive = dir.join("archive");
    db.snapshot(&dir.join("db"), &archive);
    let started = Instant::now();
    let doc = run(starchive(&archive)
        .args(["--json", "fetch", "--jobs", "16", "--storage"])
        .arg(&bucket))
    .expect_code(0)
    .json();
    assert_eq!(doc["done"], n as u64, "{doc}");
    println!(
        "  (dataset of {n} refs, {:.1} MB, fetched in {:.1} s)",
        total as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    (archive, bucket, total)
}

#[test]
#[ignore = "benchmark: cargo test --release --test it -- --ignored --nocapture bench_push"]
fn bench_push_vs_rclone() {
    assert!(
        !runs("upload") || tool_available("rclone", "version"),
        "rclone is needed: apt-get install -y rclone"
    );
    assert!(
        !runs("rss") || tool_available("/usr/bin/time", "true"),
        "/usr/bin/time is needed: apt-get install -y time"
    );
    println!(
        "bench_push_vs_rclone: binary {}",
        env!("CARGO_BIN_EXE_starchive")
    );
    if runs("upload") {
        bench_upload();
    }
    if runs("noop") {
        bench_noop();
    }
    if runs("rss") {
        bench_rss();
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "noop1m") {
        bench_noop_1m();
    }
}

/// Measure 4, a no-op push over a million refs: `n` stickers without a
/// storage key whose Telegram files are 1,000 blobs (fetched once each, the
/// other refs resolved from them), pushed in the cas layout to a local
/// directory; the same at 1,000 refs first, for the peak RSS.
fn bench_noop_1m() {
    let n = env_number("BENCH_NOOP_REFS", 1_000_000, 1);
    println!(
        "4. fetch and push over 1,000 then {n} refs (1,000 blobs, cas, local directory), /usr/bin/time -v"
    );
    println!(
        "   {:>8} {:<44} {:>8} {:>8}",
        "refs", "run", "seconds", "peak MB"
    );
    for refs in [1_000, n] {
        noop_push_over(refs);
    }
}

/// One size of measure 4.
fn noop_push_over(n: usize) {
    const FILE_IDS: usize = 1_000;
    let work = temp_dir();
    let (tg, archive, snapshot_secs) = shared_file_ids(work.path(), n, FILE_IDS);
    let fetch = || {
        let mut cmd = starchive(&archive);
        cmd.args(["--json", "fetch", "--telegram-rate", "1000"])
            .envs(tg.env());
        cmd
    };
    let dest = work.path().join("dest").to_string_lossy().into_owned();
    let push = || {
        let mut cmd = push_cmd(&archive, &dest, None);
        cmd.args(["--layout", "cas"]);
        cmd
    };
    let time = work.path().join("time.txt");
    let row = |what: &str, (secs, kb): (f64, u64)| {
        println!(
            "   {n:>8} {what:<44} {secs:>8.2} {:>8.1}",
            kb as f64 / 1024.0
        );
    };
    println!("   {n:>8} {:<44} {snapshot_secs:>8.2}", "snapshot");
    row("fetch", with_peak_rss(&fetch(), &time));
    row("first push", with_peak_rss(&push(), &time));
    for round in 0..rounds() {
        row(
            &format!("no-op push, round {round}"),
            with_peak_rss(&push(), &time),
        );
    }
    row("fetch with nothing to do", with_peak_rss(&fetch(), &time));
    row("no-op push after it", with_peak_rss(&push(), &time));
    row("no-op push again", with_peak_rss(&push(), &time));
}

/// 1. Uploads, side by side.
fn bench_upload() {
    let work = temp_dir();
    let s3 = TestS3::start();
    let (archive, bucket_dir, total) = dataset(work.path(), FILES, MIN_SIZE, MAX_SIZE);
    let mb = total as f64 / 1e6;
    println!(
        "1. upload of {FILES} files, {mb:.1} MB ({}-{} KiB) to the loopback S3 (s3s-fs, SigV4), {JOBS} in flight, {} rounds",
        MIN_SIZE / 1024,
        MAX_SIZE / 1024,
        rounds()
    );
    // Three runs a round, in a rotating order: starchive as it is over plain
    // http (payload signed: the server hashes every body to check it), the
    // same with `unsigned_payload=true` (the request rclone sends: unsigned
    // payload, what starchive does over https), and rclone.
    let names = ["starchive push", "  unsigned payload", "rclone copy"];
    let mut runs: [Vec<Measure>; 3] = Default::default();
    for round in 0..rounds() {
        let buckets = [0, 1, 2].map(|i| format!("r{round}-{i}"));
        for b in &buckets {
            s3.create_bucket(b);
        }
        let run = |which: usize| match which {
            0 | 1 => {
                let mut url = s3.store_url(&buckets[which], "");
                if which == 1 {
                    url.push_str("&unsigned_payload=true");
                }
                let mut cmd = push_cmd(&archive, &url, Some(&s3));
                cmd.args(["--jobs", &JOBS.to_string()]);
                measured(&mut cmd, "starchive push")
            }
            _ => {
                let mut cmd = rclone(&s3, &bucket_dir, &buckets[2], JOBS, work.path());
                measured(&mut cmd, "rclone copy")
            }
        };
        let mut line = format!("   round {round}:");
        for k in 0..3 {
            let which = (round + k) % 3;
            let m = run(which);
            line.push_str(&format!(
                " {} {:.2} s (CPU client {:.1} s, server {:.1} s);",
                names[which].trim(),
                m.secs,
                m.client_cpu,
                m.server_cpu
            ));
            runs[which].push(m);
        }
        println!("{line}");
        // Every run sent everything (starchive also its manifest and catalog copy).
        assert_eq!(s3.object_keys(&buckets[0]).len(), FILES + 2);
        assert_eq!(s3.object_keys(&buckets[1]).len(), FILES + 2);
        assert_eq!(s3.object_keys(&buckets[2]).len(), FILES);
        for b in &buckets {
            let _ = std::fs::remove_dir_all(s3.bucket_dir(b));
        }
    }
    let row = |name: &str, runs: &[Measure]| {
        let secs = median(runs.iter().map(|m| m.secs).collect());
        let client = median(runs.iter().map(|m| m.client_cpu).collect());
        let server = median(runs.iter().map(|m| m.server_cpu).collect());
        println!(
            "   {name:<18} {:>8.0} {:>8.1} {:>9.2} {:>11.1} {:>11.1}",
            FILES as f64 / secs,
            mb / secs,
            secs,
            client,
            server
        );
        secs
    };
    println!(
        "   {:<18} {:>8} {:>8} {:>9} {:>11} {:>11}",
        "tool", "files/s", "MB/s", "median s", "client CPU", "server CPU"
    );
    let secs: Vec<f64> = (0..3).map(|i| row(names[i], &runs[i])).collect();
    println!(
        "   ratio starchive/rclone: {:.2}x signed, {:.2}x unsigned payload (target >= 1.5x)",
        secs[2] / secs[0],
        secs[2] / secs[1]
    );
}

/// 2. A no-op second push.
fn bench_noop() {
    let work = temp_dir();
    let s3 = TestS3::start();
    s3.create_bucket("noop");
    let (archive, _, _) = dataset(work.path(), NOOP_REFS, 200, 2_000);
    let url = s3.store_url("noop", "");
    let mut first = push_cmd(&archive, &url, Some(&s3));
    let first = measured(first.args(["--jobs", &JOBS.to_string()]), "first push");
    let mut again = Vec::new();
    for _ in 0..rounds() {
        s3.reset_counts();
        let m = measured(&mut push_cmd(&archive, &url, Some(&s3)), "second push");
        assert_eq!(s3.requests("TOTAL"), 0, "a no-op push sends nothing");
        again.push(m.secs);
    }
    println!(
        "2. push over {NOOP_REFS} refs: first {:.2} s; second (no-op, 0 requests) median {:.3} s, max {:.3} s (target < 1 s)",
        first.secs,
        median(again.clone()),
        again.iter().copied().fold(0.0, f64::max)
    );
}

/// 3. Peak RSS by size.
fn bench_rss() {
    println!("3. peak RSS of push (/usr/bin/time -v), small files (100-400 bytes)");
    println!(
        "   {:>8} {:>18} {:>10} {:>10}",
        "refs", "destination", "seconds", "peak MB"
    );
    for n in RSS_SIZES {
        let work = temp_dir();
        let (archive, _, _) = dataset(work.path(), n, 100, 400);
        let s3 = TestS3::start();
        s3.create_bucket("rss");
        let dir_dest = work.path().join("dest");
        for (label, url, creds) in [
            ("local dir", dir_dest.to_string_lossy().into_owned(), None),
            ("loopback S3", s3.store_url("rss", ""), Some(&s3)),
        ] {
            let mut cmd = push_cmd(&archive, &url, creds);
            cmd.args(["--jobs", &JOBS.to_string()]);
            let (secs, kb) = with_peak_rss(&cmd, &work.path().join("time.txt"));
            println!(
                "   {n:>8} {label:>18} {secs:>10.1} {:>10.1}",
                kb as f64 / 1024.0
            );
        }
    }
}
