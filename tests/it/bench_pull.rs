//! Benchmark of `pull`, as an ignored test (it takes minutes and needs
//! `rclone`). Run it on an optimised build, with the output shown:
//!
//! ```text
//! cargo test --release --test it -- --ignored --nocapture --test-threads 1 bench_pull
//! ```
//! (`bench/pull.sh` does just that.) 5,000 small files (2-60 KiB), pushed
//! to the loopback S3 server, brought back by `starchive pull` and by
//! `rclone copy` of the same destination, at the same concurrency,
//! alternating which goes first, medians of the rounds (target: starchive
//! at least 1.5x rclone). Both download every object; rclone writes them
//! under their keys, starchive under their hashes, with the catalog first.

use crate::bench_push::dataset;
use crate::push::push_cmd;
use crate::support::bench::{measured, median, rclone_copy, rounds, tool_available};
use crate::support::run::{run, starchive};
use crate::support::s3::TestS3;
use crate::support::temp_dir;

const FILES: usize = 5_000;
const MIN_SIZE: usize = 2 * 1024;
const MAX_SIZE: usize = 60 * 1024;
const JOBS: usize = 16;

#[test]
#[ignore = "benchmark: cargo test --release --test it -- --ignored --nocapture bench_pull"]
fn bench_pull_vs_rclone() {
    assert!(
        tool_available("rclone", "version"),
        "rclone is needed: apt-get install -y rclone"
    );
    let work = temp_dir();
    let (archive, _, total) = dataset(work.path(), FILES, MIN_SIZE, MAX_SIZE);
    let s3 = TestS3::start();
    s3.create_bucket("dest");
    run(&mut push_cmd(
        &archive,
        &s3.store_url("dest", ""),
        Some(&s3),
    ))
    .expect_code(0);
    let mb = total as f64 / 1e6;
    let rounds = rounds();
    println!(
        "bench_pull_vs_rclone: {FILES} files, {mb:.1} MB ({} to {} KiB), --jobs/--transfers {JOBS}, {rounds} rounds, loopback S3 (s3s-fs), binary {}",
        MIN_SIZE / 1024,
        MAX_SIZE / 1024,
        env!("CARGO_BIN_EXE_starchive")
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let pulled = work.path().join(format!("pulled-{round}"));
        let copied = work.path().join(format!("rclone-{round}"));
        let run_ours = || {
            let mut cmd = starchive(&pulled);
            cmd.args(["--json", "pull", "--jobs", &JOBS.to_string(), "--from"])
                .arg(s3.store_url("dest", ""))
                .envs(s3.env("STORAGE"));
            measured(&mut cmd, "starchive pull")
        };
        let run_theirs = || {
            let mut cmd = rclone_copy(&s3, "x:dest", &copied.to_string_lossy(), JOBS, work.path());
            measured(&mut cmd, "rclone copy")
        };
        let (a, b) = if round % 2 == 0 {
            let a = run_ours();
            (a, run_theirs())
        } else {
            let b = run_theirs();
            (run_ours(), b)
        };
        let plan = run(starchive(&pulled).args(["--json", "plan"]))
            .expect_code(0)
            .json();
        assert_eq!(plan["total"]["fetched"], FILES as u64, "{plan}");
        println!(
            "  round {round} ({} first): starchive {:.2} s (client CPU {:.2} s, server {:.2} s), rclone {:.2} s (client CPU {:.2} s, server {:.2} s)",
            if round % 2 == 0 {
                "starchive"
            } else {
                "rclone"
            },
            a.secs,
            a.client_cpu,
            a.server_cpu,
            b.secs,
            b.client_cpu,
            b.server_cpu
        );
        ours.push(a.secs);
        theirs.push(b.secs);
    }
    let (a, b) = (median(ours), median(theirs));
    println!(
        "  starchive pull: {:>7.0} files/s {:>7.1} MB/s (median {a:.2} s)",
        FILES as f64 / a,
        mb / a
    );
    println!(
        "  rclone copy:    {:>7.0} files/s {:>7.1} MB/s (median {b:.2} s)",
        FILES as f64 / b,
        mb / b
    );
    println!("  ratio starchive/rclone: {:.2}x (target >= 1.5x)", b / a);
}
