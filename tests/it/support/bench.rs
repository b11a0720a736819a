//! What the benchmarks share: rounds and medians, timing a child (wall
//! seconds, CPU, peak RSS), and `rclone` configured for the loopback S3
//! server, the tool starchive is measured against.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::dataset::{Db, sticker_bytes};
use super::s3::{ACCESS_KEY, REGION, SECRET_KEY, TestS3};
use super::telegram::FakeTelegram;

/// A whole number from the environment variable `name`, if it is at least
/// `min`, else `default`.
pub fn env_number(name: &str, default: usize, min: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= min)
        .unwrap_or(default)
}

/// Rounds of each measure: 3 (env `BENCH_ROUNDS` overrides).
pub fn rounds() -> usize {
    env_number("BENCH_ROUNDS", 3, 1)
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// CPU seconds of this process and of its waited-for children so far
/// (`/proc/self/stat`: utime, stime, cutime, cstime, in 1/100 s).
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // rest[0] is field 3 (state): utime is field 14, i.e. rest[11].
    ((f[11] + f[12]) / 100.0, (f[13] + f[14]) / 100.0)
}

/// One measured run: wall seconds, server CPU seconds, client CPU seconds.
pub struct Measure {
    pub secs: f64,
    pub server_cpu: f64,
    pub client_cpu: f64,
}

pub fn measured(cmd: &mut Command, what: &str) -> Measure {
    let (self0, child0) = cpu_seconds();
    let started = Instant::now();
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let secs = started.elapsed().as_secs_f64();
    let (self1, child1) = cpu_seconds();
    assert!(
        out.status.success(),
        "{what} failed: {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Measure {
        secs,
        server_cpu: self1 - self0,
        client_cpu: child1 - child0,
    }
}

/// `cmd` run under `/usr/bin/time -v` (report written to `report`):
/// wall seconds, peak RSS in KiB and what it gave (its exit code is the
/// command's own).
pub fn time_v(cmd: &Command, report: &Path) -> (f64, u64, std::process::Output) {
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-v")
        .arg("-o")
        .arg(report)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => timed.env(key, v),
            None => timed.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    let started = Instant::now();
    let out = timed.output().expect("run under /usr/bin/time");
    let secs = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(report).expect("time -v report");
    let kb = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("peak RSS in the time -v report");
    (secs, kb, out)
}

/// `rclone copy FROM TO` at `jobs` transfers, where `x:BUCKET` names a
/// bucket of `s3`.
pub fn rclone_copy(s3: &TestS3, from: &str, to: &str, jobs: usize, work: &Path) -> Command {
    let mut cmd = rclone_for(s3, work);
    cmd.arg("copy")
        .arg(from)
        .arg(to)
        .args(["--transfers", &jobs.to_string()])
        .args(["--checkers", &jobs.to_string()])
        .arg("--quiet");
    cmd
}

/// `rclone` with remote `x:` the loopback S3 server, configured from the
/// environment only (an empty config file in `work`, nothing of the
/// caller's `RCLONE_*`/`AWS_*`), as DESIGN.md shows.
pub fn rclone_for(s3: &TestS3, work: &Path) -> Command {
    let mut cmd = Command::new("rclone");
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("RCLONE_") || k.starts_with("AWS_") {
            cmd.env_remove(&key);
        }
    }
    let empty_config = work.join("rclone.conf");
    std::fs::write(&empty_config, "").expect("write empty rclone config");
    cmd.env("RCLONE_CONFIG", &empty_config)
        .env("RCLONE_CONFIG_X_TYPE", "s3")
        .env("RCLONE_CONFIG_X_PROVIDER", "Other")
        .env("RCLONE_CONFIG_X_ENV_AUTH", "false")
        .env("RCLONE_CONFIG_X_ENDPOINT", s3.endpoint())
        .env("RCLONE_CONFIG_X_REGION", REGION)
        .env("RCLONE_CONFIG_X_ACCESS_KEY_ID", ACCESS_KEY)
        .env("RCLONE_CONFIG_X_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RCLONE_CONFIG_X_FORCE_PATH_STYLE", "true");
    cmd
}

pub fn tool_available(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An archive of `n` stickers without a storage key whose Telegram files are
/// `file_ids` blobs of 300 bytes (ref `i` on file `i % file_ids`), one
/// session per 20 stickers, snapshotted into `dir/archive`, and the fake Bot
/// API that serves them: the shape of the benches at a million refs, where
/// every file is shared by a thousand refs. Returns the snapshot's seconds.
pub fn shared_file_ids(dir: &Path, n: usize, file_ids: usize) -> (FakeTelegram, PathBuf, f64) {
    let tg = FakeTelegram::new();
    for i in 0..file_ids {
        tg.add_file(
            &format!("tg-{i}"),
            &format!("stickers/file_{i}.webp"),
            sticker_bytes(i as u64 + 1, 300),
        );
    }
    let mut db = Db::default();
    for i in 0..n {
        let (user, session) = ((100_000 + i / 20).to_string(), format!("s-{}", i / 20));
        if i % 20 == 0 {
            db.session(&session, &user, "prod", None, None);
        }
        let file_id = format!("tg-{}", i % file_ids);
        db.sticker(&format!("st-{i}"), &user, &session, Some(&file_id), None);
    }
    let archive = dir.join("archive");
    let started = Instant::now();
    db.snapshot(&dir.join("db"), &archive);
    (tg, archive, started.elapsed().as_secs_f64())
}
