#!/usr/bin/env bash
# Benchmark of `starchive check --storage` (tests/it/bench_check.rs): buckets
# on the loopback S3 server listed and classified; beside `rclone lsjson -R`
# of the same bucket (the listing's floor) at 10,000 objects, medians of 3
# rounds (BENCH_ROUNDS=N), and alone at 100,000 objects: wall time and peak
# RSS. (The module doc says why rclone is not run at 100,000 on s3s-fs.)
# Needs rclone and /usr/bin/time (Debian packages `rclone`, `time`).
set -euo pipefail
# The loopback server's root and the archives go to a RAM-backed TMPDIR
# (/dev/shm when there is one), so that the disk does not time the tools.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." && exec cargo test --release --test it -- --ignored --nocapture --test-threads 1 bench_check "$@"
