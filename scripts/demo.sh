#!/usr/bin/env bash
# The whole pipeline on the bundled fixtures, offline:
#   snapshot (CSV exports in fixtures/db) -> plan -> fetch (bucket in
#   fixtures/bucket, Telegram's files from a stand-in Bot API) -> status ->
#   push + verify to a local directory -> catalog.
#
# Usage: scripts/demo.sh            (from anywhere; works on a fresh clone)
#        KEEP=1 scripts/demo.sh     (keep the temporary directory, print its path)
#
# Needs cargo and python3 (the stand-in Bot API); uses zstd and sqlite3 when
# they are installed. Builds the release binary first (honours
# CARGO_TARGET_DIR); a cold build takes a few minutes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Nothing from this machine's environment may steer starchive: no AWS or
# starchive settings, no real bot token or Bot API URL.
for var in $(compgen -e); do
    case "$var" in
        AWS_* | STARCHIVE_* | TELEGRAM_*) unset "$var" ;;
    esac
done

# A token for the stand-in Bot API only; it opens nothing real.
DEMO_TOKEN='123456:demo-token-not-secret'

header() { printf '\n==> %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; }
note() { printf '    (%s)\n' "$*"; }
has() { command -v "$1" >/dev/null 2>&1; }

for tool in cargo python3; do
    if ! has "$tool"; then
        echo "demo: $tool is required" >&2
        exit 1
    fi
done

header "build: cargo build --release (a cold build takes a few minutes)"
cargo build --release
# Where cargo put it: CARGO_TARGET_DIR or the build configuration may move it.
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
BIN="$TARGET_DIR/release/starchive"

T="$(mktemp -d "${TMPDIR:-/tmp}/starchive-demo.XXXXXX")"
SERVER_PID=""
cleanup() {
    local status=$?
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ "${KEEP:-}" == 1 ]]; then
        printf '\nKEEP=1: kept %s\n' "$T"
    else
        rm -rf "$T"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

header "start the stand-in Telegram Bot API (fixtures/fake_bot_api.py, 127.0.0.1 only)"
python3 fixtures/fake_bot_api.py --dir fixtures/telegram --token "$DEMO_TOKEN" \
    --port 0 --port-file "$T/bot-api.port" 2>"$T/bot-api.log" &
SERVER_PID=$!
for _ in $(seq 100); do
    [[ -s "$T/bot-api.port" ]] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "demo: the fake Bot API did not start:" >&2
        cat "$T/bot-api.log" >&2
        exit 1
    fi
    sleep 0.1
done
if [[ ! -s "$T/bot-api.port" ]]; then
    echo "demo: the fake Bot API did not report its port within 10 s" >&2
    exit 1
fi
PORT="$(cat "$T/bot-api.port")"
API_URL="http://127.0.0.1:$PORT"
echo "listening on $API_URL"

A="$T/archive"
B="$T/backup"
FAILED=0

header "1. snapshot the database (CSV exports) into a new catalog"
show "starchive --archive $A snapshot --db fixtures/db"
"$BIN" --archive "$A" snapshot --db fixtures/db

header "2. plan: what there is to fetch"
show "starchive --archive $A plan"
"$BIN" --archive "$A" plan

header "3. fetch every file: from the bucket by storage key, else from the Bot API by file_id"
show "TELEGRAM_BOT_TOKEN=<demo token> TELEGRAM_API_URL=$API_URL starchive --archive $A fetch --storage fixtures/bucket"
rc=0
TELEGRAM_BOT_TOKEN="$DEMO_TOKEN" TELEGRAM_API_URL="$API_URL" \
    "$BIN" --archive "$A" fetch --storage fixtures/bucket || rc=$?
case "$rc" in
    3) note "exit code 3, as expected: the fixtures hold one deliberately invalid file_id, which Telegram refuses; status lists it" ;;
    0) note "exit code 0, but 3 was expected: the fixtures hold one deliberately invalid file_id" ;;
    *)
        echo "demo: fetch failed with exit code $rc" >&2
        exit "$rc"
        ;;
esac

header "4. status: states per class, and every failure with its reason"
show "starchive --archive $A status"
"$BIN" --archive "$A" status

header "5. push the archive to a local directory (mirror layout)"
show "starchive --archive $A push --to $B"
rc=0
"$BIN" --archive "$A" push --to "$B" || rc=$?
case "$rc" in
    3) note "exit code 3, as expected: the ref whose file_id Telegram refused has no file to push" ;;
    0) note "exit code 0, but 3 was expected: the ref Telegram refused counts as failed" ;;
    *)
        echo "demo: push failed with exit code $rc" >&2
        exit "$rc"
        ;;
esac

header "6. verify the local blobs and the destination"
show "starchive --archive $A verify --to $B"
rc=0
"$BIN" --archive "$A" verify --to "$B" || rc=$?
if [[ "$rc" -ne 0 ]]; then
    note "verify exited $rc: something is missing or bad"
    FAILED=1
fi

header "7. what the destination holds (first 40 files)"
show "find $B -type f | sort | head -40"
find "$B" -type f | sort >"$T/backup-files.txt"
head -40 "$T/backup-files.txt"
note "$(wc -l <"$T/backup-files.txt") files in all"

manifest="$B/_starchive/manifest.jsonl.zst"
if has zstd; then
    header "8. the manifest's first lines"
    show "zstd -dc $manifest | head -3"
    if [[ -f "$manifest" ]]; then
        zstd -dc "$manifest" >"$T/manifest.jsonl"
        head -3 "$T/manifest.jsonl"
    else
        note "no manifest at $manifest"
        FAILED=1
    fi
else
    note "zstd is not installed: not showing the manifest"
fi

if has sqlite3; then
    header "the catalog, read with sqlite3"
    show "sqlite3 -header -column $A/catalog.sqlite \"SELECT class, state, count(*) FROM v_refs GROUP BY 1,2\""
    sqlite3 -header -column "$A/catalog.sqlite" "SELECT class, state, count(*) FROM v_refs GROUP BY 1,2"
else
    note "sqlite3 is not installed: not showing the catalog"
fi

if [[ "$FAILED" -ne 0 ]]; then
    printf '\ndemo: finished, but the destination did not verify\n' >&2
    exit 1
fi
printf '\ndemo: done\n'
