#!/usr/bin/env bash
# Benchmark of `starchive push` (tests/it/bench_push.rs): 5,000 small files to
# the loopback S3 server against `rclone copy` at the same concurrency, a
# no-op second push over 10,000 refs, and peak RSS at 1,000 vs 100,000 refs.
# Needs rclone and /usr/bin/time (Debian packages `rclone`, `time`).
# BENCH_ONLY=upload|noop|rss runs one measure; BENCH_ROUNDS=N sets the rounds.
# BENCH_ONLY=noop1m (only when asked: minutes) fetches and pushes 1,000 then
# 1,000,000 refs on 1,000 shared files (BENCH_NOOP_REFS sets the second):
# seconds and peak RSS of each run, no-op pushes included.
set -euo pipefail
# Files (the archives, the rclone source, the loopback server's root) go to a
# RAM-backed TMPDIR, /dev/shm when there is one: on disk, the writeback of one
# round's 160 MB lands on whichever tool runs next (the server's CPU for the
# same upload varied from 2 to 12 s), which measures the disk, not the tools.
# Set TMPDIR to choose another place.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." && exec cargo test --release --test it -- --ignored --nocapture --test-threads 1 bench_push "$@"
