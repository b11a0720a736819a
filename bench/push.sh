#!/usr/bin/env bash
# Benchmark of `starchive push` (tests/it/bench_push.rs): 5,000 small files to
# the loopback S3 server against `rclone copy` at the same concurrency, a
# no-op second push over 10,000 refs, and peak RSS at 1,000 vs 100,000 refs.
# Needs rclone and /usr/bin/time (Debian packages `rclone`, `time`).
# BENCH_ONLY=upload|noop|rss runs one measure; BENCH_ROUNDS=N sets the rounds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." && exec cargo test --release --test it -- --ignored --nocapture --test-threads 1 bench_push "$@"
