#!/usr/bin/env bash
# Benchmark of `starchive check --storage` (tests/it/bench_check.rs): a
# bucket on the loopback S3 server listed and classified, beside `rclone
# lsjson -R` of the same bucket (the listing's floor) at 10,000 objects
# (BENCH_SIDE_OBJECTS=N), alternating, medians of 3 rounds (BENCH_ROUNDS=N):
# wall time, CPU time and peak RSS; then peak RSS over a local directory of
# 10,000, 100,000 and 300,000 objects (BENCH_MEMORY_OBJECTS=N,N,...).
# Needs rclone and /usr/bin/time (Debian packages `rclone`, `time`).
set -euo pipefail
# The loopback server's root and the archives go to a RAM-backed TMPDIR
# (/dev/shm when there is one), so that the disk does not time the tools.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." && exec cargo test --release --test it -- --ignored --nocapture --test-threads 1 bench_check "$@"
