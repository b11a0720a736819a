#!/usr/bin/env bash
# Benchmarks of `starchive fetch` (tests/it/fetch/bench.rs), on a release build:
# - 3,000 files of 2-60 KB from the loopback S3 server, beside `rclone copy`
#   of the same bucket at the same concurrency, at 8 and at 16 (BENCH_ROUNDS
#   rounds each, 3 by default, alternating which goes first; medians);
# - the fake Bot API with 20 ms per request, at --jobs 1, 8 and 32;
# - peak RSS of fetch at 1,000, 100,000 and 1,000,000 refs on 1,000 shared
#   Telegram files (BENCH_RSS_REFS sets the last; needs /usr/bin/time).
# Needs rclone (apt-get install -y rclone). Extra arguments go to the test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --release --test it -- --ignored --nocapture --test-threads 1 bench_fetch "$@"
