#!/usr/bin/env bash
# Benchmark of `starchive pull` (tests/it/bench_pull.rs): 5,000 small files
# pushed to the loopback S3 server, brought back by `starchive pull` and by
# `rclone copy` of the same destination at the same concurrency, alternating,
# medians. Needs rclone (Debian package `rclone`). BENCH_ROUNDS=N sets the rounds.
set -euo pipefail
# Files go to a RAM-backed TMPDIR (/dev/shm) when there is one, as in
# bench/push.sh: on disk, one round's writeback lands on the next tool.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." && exec cargo test --release --test it -- --ignored --nocapture --test-threads 1 bench_pull "$@"
