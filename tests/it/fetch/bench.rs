//! Benchmarks of `fetch`, as ignored tests (they take a minute and need
//! `rclone`). Run them on an optimised build, with the output shown:
//!
//! ```text
//! cargo test --release --test it -- --ignored --nocapture --test-threads 1 bench_fetch
//! ```
//! (`bench/fetch.sh` does just that.) Everything runs in this process: the
//! loopback S3 server and the fake Bot API are the test support servers,
//! `starchive` is the binary cargo built beside the tests (release with
//! `--release`).

use std::path::Path;
use std::time::Duration;

use super::{fetch_cmd, refs, snapshot};
use crate::support::bench::{
    env_number, measured, median, rclone_copy, rounds, shared_file_ids, time_v, tool_available,
};
use crate::support::dataset::{Db, sticker_bytes};
use crate::support::s3::TestS3;
use crate::support::telegram::FakeTelegram;
use crate::support::temp_dir;

/// Files in the bucket, their sizes (bytes), the transfers in flight.
const FILES: usize = 3_000;
const MIN_SIZE: usize = 2 * 1024;
const MAX_SIZE: usize = 60 * 1024;
const JOBS: [usize; 2] = [8, 16];
/// Bytes of every file under `dir`, and how many files.
fn tree_size(dir: &Path) -> (u64, usize) {
    let sizes: Vec<u64> = crate::support::objects::files(dir)
        .iter()
        .filter_map(|(_, path)| std::fs::symlink_metadata(path).ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .collect();
    (sizes.iter().sum(), sizes.len())
}

#[test]
#[ignore = "benchmark: cargo test --release --test it -- --ignored --nocapture bench_fetch"]
fn bench_fetch_vs_rclone() {
    assert!(
        tool_available("rclone", "version"),
        "rclone is needed: apt-get install -y rclone"
    );
    let work = temp_dir();
    let s3 = TestS3::start();
    s3.create_bucket("bench");
    let mut db = Db::per_env();
    let mut total: u64 = 0;
    let mut x: u64 = 0x5EED_F00D;
    for i in 0..FILES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = MIN_SIZE + (x % (MAX_SIZE - MIN_SIZE + 1) as u64) as usize;
        let key = format!("stickers/{}/{:08x}/{i}.webp", 100_000 + i % 97, x as u32);
        s3.put_file("bench", &key, sticker_bytes(x, size));
        db.in_env(
            if i % 4 == 0 { "test" } else { "prod" },
            None,
            Some(key.as_str()),
        );
        total += size as u64;
    }
    db.write(&work.path().join("db"));
    let mb = total as f64 / 1e6;
    let rounds = rounds();
    println!(
        "bench_fetch_vs_rclone: {FILES} files, {mb:.1} MB ({} to {} KiB), --jobs/--transfers {JOBS:?}, {rounds} rounds each, loopback S3 (s3s-fs), archives in {}, binary {}",
        MIN_SIZE / 1024,
        MAX_SIZE / 1024,
        std::env::temp_dir().display(),
        env!("CARGO_BIN_EXE_starchive")
    );

    let mut ratios = Vec::new();
    for jobs in JOBS {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for round in 0..rounds {
            let archive = work.path().join(format!("archive-{jobs}-{round}"));
            snapshot(&archive, &work.path().join("db"));
            let dest = work.path().join(format!("rclone-{jobs}-{round}"));
            std::fs::create_dir_all(&dest).expect("create rclone dest");
            let run_ours = || {
                let mut cmd = fetch_cmd(&archive, Some((&s3, "bench")), None);
                cmd.args(["--jobs", &jobs.to_string()]);
                measured(&mut cmd, "starchive fetch").secs
            };
            let run_theirs = || {
                let mut cmd =
                    rclone_copy(&s3, "x:bench", &dest.to_string_lossy(), jobs, work.path());
                measured(&mut cmd, "rclone copy").secs
            };
            let (a, b) = if round % 2 == 0 {
                let a = run_ours();
                (a, run_theirs())
            } else {
                let b = run_theirs();
                (run_ours(), b)
            };
            // Both got everything.
            let fetched = refs(&archive)
                .iter()
                .filter(|r| r.state == "fetched")
                .count();
            assert_eq!(fetched, FILES);
            let (bytes, files) = tree_size(&dest);
            assert_eq!((bytes, files), (total, FILES), "rclone copied everything");
            println!(
                "  --jobs {jobs:>2} round {round} ({} first): starchive {a:.2} s, rclone {b:.2} s",
                if round % 2 == 0 {
                    "starchive"
                } else {
                    "rclone"
                }
            );
            ours.push(a);
            theirs.push(b);
            // Nothing is deleted before the end: on an ext4 without a journal
            // (this machine's), every inode allocation scans past the inodes
            // deleted in the last minute, which would tax whichever tool ran
            // after a cleanup.
        }
        let (a, b) = (median(ours), median(theirs));
        println!(
            "  --jobs {jobs:>2} starchive fetch: {:>7.0} files/s {:>7.1} MB/s (median {a:.2} s)",
            FILES as f64 / a,
            mb / a
        );
        println!(
            "  --jobs {jobs:>2} rclone copy:     {:>7.0} files/s {:>7.1} MB/s (median {b:.2} s)",
            FILES as f64 / b,
            mb / b
        );
        ratios.push((jobs, b / a));
    }
    for (jobs, ratio) in ratios {
        println!("  ratio starchive/rclone at --jobs {jobs}: {ratio:.2}x (target >= 1.5x)");
    }
}

#[test]
#[ignore = "benchmark: cargo test --release --test it -- --ignored --nocapture bench_fetch"]
fn bench_fetch_telegram_jobs_hide_latency() {
    const TG_FILES: usize = 300;
    const LATENCY: Duration = Duration::from_millis(20);
    let work = temp_dir();
    let tg = FakeTelegram::new();
    tg.latency(LATENCY);
    let mut db = Db::per_env();
    let mut total = 0u64;
    for i in 0..TG_FILES {
        let size = 2048 + (i * 7919) % (58 * 1024);
        let id = format!("bench-file-{i:05}");
        tg.add_file(
            &id,
            &format!("stickers/file_{i}.webp"),
            sticker_bytes(i as u64 + 7, size),
        );
        db.in_env("prod", Some(id.as_str()), None);
        total += size as u64;
    }
    db.write(&work.path().join("db"));
    println!(
        "bench_fetch_telegram_jobs_hide_latency: {TG_FILES} files, {:.1} MB, fake Bot API with {LATENCY:?} per request (getFile + download per file)",
        total as f64 / 1e6
    );
    let mut rates = Vec::new();
    for jobs in [1usize, 8, 32] {
        let archive = work.path().join(format!("archive-{jobs}"));
        snapshot(&archive, &work.path().join("db"));
        let mut cmd = fetch_cmd(&archive, None, Some(&tg));
        cmd.args(["--jobs", &jobs.to_string(), "--telegram-rate", "100000"]);
        let secs = measured(&mut cmd, "starchive fetch").secs;
        let rate = TG_FILES as f64 / secs;
        println!(
            "  --jobs {jobs:>2}: {secs:>6.2} s, {rate:>6.0} files/s, {:>5.1} MB/s",
            total as f64 / 1e6 / secs
        );
        rates.push(rate);
    }
    println!(
        "  speed-up over --jobs 1: x{:.1} at 8, x{:.1} at 32 (latency bound: 1 file = 2 x {LATENCY:?})",
        rates[1] / rates[0],
        rates[2] / rates[0]
    );
}

/// Peak RSS of `fetch` at 1,000, 100,000 and 1,000,000 refs
/// (`BENCH_RSS_REFS` sets the last) whose files are 1,000 Telegram files
/// shared by the refs (target: flat). Needs `/usr/bin/time`.
#[test]
#[ignore = "benchmark: cargo test --release --test it -- --ignored --nocapture bench_fetch"]
fn bench_fetch_peak_rss() {
    assert!(
        tool_available("/usr/bin/time", "true"),
        "/usr/bin/time is needed: apt-get install -y time"
    );
    let most = env_number("BENCH_RSS_REFS", 1_000_000, 1);
    println!(
        "bench_fetch_peak_rss: refs on 1,000 Telegram files of 300 bytes, /usr/bin/time -v, binary {}",
        env!("CARGO_BIN_EXE_starchive")
    );
    println!(
        "  {:>9} {:>10} {:>10} {:>9}",
        "refs", "snapshot s", "fetch s", "peak MB"
    );
    for n in [1_000, 100_000, most] {
        let work = temp_dir();
        let (tg, archive, snapshot_secs) = shared_file_ids(work.path(), n, 1_000);
        let mut cmd = fetch_cmd(&archive, None, Some(&tg));
        cmd.args(["--telegram-rate", "1000"]);
        let (secs, kb, out) = time_v(&cmd, &work.path().join("time.txt"));
        assert!(
            out.status.success(),
            "fetch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fetched = refs(&archive)
            .iter()
            .filter(|r| r.state == "fetched")
            .count();
        assert_eq!(fetched, n);
        println!(
            "  {n:>9} {snapshot_secs:>10.1} {secs:>10.2} {:>9.1}",
            kb as f64 / 1024.0
        );
    }
}
