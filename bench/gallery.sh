#!/usr/bin/env bash
# Benchmark of `starchive gallery`.
#
# For N refs (default 10,000 and 100,000): a bot of N/20 sessions (4 per
# user), each with a session sticker, 3 single stickers and a pack batch of
# 15 stickers and a sheet, snapshot from CSV exports; then every ref is made
# fetched by writing its blob into blobs/ and the catalog directly (the
# gallery reads only those two; a real fetch of N files is fetch's bench):
# 10% tgs (each its own animation, unpacked into a script by the gallery),
# 10% png, 1% webm, 1% pending and 1% failed (placeholders), the rest webp.
# Measures the release binary's `gallery` wall time and peak RSS (from
# /usr/bin/time -v), median of RUNS runs, each re-writing the whole site.
# Target: under 10 s at 100,000 refs, and a peak RSS flat between 10k and 100k.
#
# Measured (2 shared cores, release, median of 3): 10,000 refs 1.1 s and
# 16 MiB; 100,000 refs 3.3 s and 27 MiB; 300,000 refs (1 run) 8.7 s and
# 27 MiB. The step from 10k to 100k is SQLite's page caches filling to
# their caps (8 MiB for the catalog, 2 MiB for the TEMP tables); past that
# the peak stays put.
#
# Usage: bench/gallery.sh                    (RUNS=3)
#        SIZES="100000 1000000" RUNS=1 bench/gallery.sh
#        BIN=target/debug/starchive SIZES=2000 bench/gallery.sh   (no release build)
#
# Needs cargo, python3, /usr/bin/time (Debian package `time`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SIZES=${SIZES:-"10000 100000"}
RUNS=${RUNS:-3}

# Nothing from this machine's environment may steer starchive.
for var in $(compgen -e); do
    case "$var" in
        AWS_* | STARCHIVE_* | TELEGRAM_* | DATABASE_URL) unset "$var" ;;
    esac
done

if [ ! -x /usr/bin/time ]; then
    echo "bench: /usr/bin/time missing; installing the Debian package 'time'" >&2
    apt-get install -y time >/dev/null
fi

if [ -z "${BIN:-}" ]; then
    echo "==> cargo build --release" >&2
    cargo build --release --quiet
    BIN=$ROOT/target/release/starchive
fi

WORK=$(mktemp -d /tmp/starchive-bench-gallery-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# The CSV exports of a bot with about N refs.
make_csv() {
    python3 - "$1" "$2" <<'EOF'
import csv, sys
from pathlib import Path
out, n = Path(sys.argv[1]), int(sys.argv[2])
out.mkdir(parents=True)
sessions = max(1, n // 20)
uid = lambda s: f"00000000-0000-4000-8000-{s:012d}"
with open(out / "sessions.csv", "w", newline="") as fs, \
     open(out / "pack_batches.csv", "w", newline="") as fb, \
     open(out / "stickers.csv", "w", newline="") as ft:
    s_w, b_w, t_w = csv.writer(fs), csv.writer(fb), csv.writer(ft)
    s_w.writerow(["id", "user_id", "env", "mode", "last_sticker_file_id",
                  "last_sticker_storage_path", "pack_sheet_file_id", "created_at"])
    b_w.writerow(["id", "session_id", "user_id", "status", "cleaned_sheet_storage_path", "created_at"])
    t_w.writerow(["id", "user_id", "session_id", "pack_batch_id", "pack_index",
                  "telegram_file_id", "result_storage_path", "created_at"])
    sticker = 0
    for s in range(sessions):
        sid, user = uid(s), 100000 + s // 4
        env = "prod" if s % 3 else "test"
        at = f"2025-{1 + s % 12:02d}-{1 + s % 28:02d} 10:00:00+00"
        s_w.writerow([sid, user, env, "pack", f"CAAC-last-{s}", f"stickers/{user}/{sid}/last.webp",
                      "", at])
        bid = uid(10**9 + s)
        b_w.writerow([bid, sid, user, "done", f"pack_sheets/{user}/{bid}/sheet.png", at])
        for i in range(18):
            sticker += 1
            batch, index = (bid, i) if i < 15 else ("", "")
            t_w.writerow([uid(2 * 10**9 + sticker), user, sid, batch, index, f"CAAC-{sticker}",
                          f"stickers/{user}/{batch or sid}/{sticker}.webp", at])
EOF
}

# Every ref fetched (a few pending or failed), its blob in blobs/.
make_fetched() {
    python3 - "$1" "$ROOT/tests/browser/fixtures/sticker.webm" <<'EOF'
import gzip, hashlib, json, sqlite3, struct, sys
from pathlib import Path
archive, webm = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
db = sqlite3.connect(archive / "catalog.sqlite")
def webp(n):
    data = struct.pack("<BI", 0x2F, 0x0F03C0FF) + n.to_bytes(4, "little") * 4
    chunk = b"VP8L" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk
def tgs(n):
    doc = {"v": "5.5.2", "fr": 30, "ip": 0, "op": 30, "w": 512, "h": 512, "nm": f"s{n}",
           "layers": [{"ty": 4, "ind": 1, "ip": 0, "op": 30, "st": 0, "ks": {},
                       "shapes": [{"ty": "rc", "s": {"a": 0, "k": [n % 500, 100]},
                                   "p": {"a": 0, "k": [256, 256]}, "r": {"a": 0, "k": 8}}]}]}
    return gzip.compress(json.dumps(doc).encode(), mtime=0)
def png(n):
    return b"\x89PNG\r\n\x1a\n" + n.to_bytes(8, "little")
rows = db.execute("SELECT id FROM refs ORDER BY id").fetchall()
blobs, refs = [], []
for (ref,) in rows:
    k = ref % 100
    if k == 0:
        refs.append(("pending", None, None, ref)); continue
    if k == 1:
        refs.append(("failed", None, 'Telegram: Bad Request: <wrong file_id "x">', ref)); continue
    kind, body = (("tgs", tgs(ref)) if k % 10 == 2 else ("webm", webm + ref.to_bytes(8, "little"))
                  if k == 3 else ("png", png(ref)) if k % 10 == 4 else ("webp", webp(ref)))
    sha = hashlib.sha256(body).hexdigest()
    path = archive / "blobs" / sha[:2] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    blobs.append((sha, len(body), kind))
    refs.append(("fetched", sha, None, ref))
with db:
    db.executemany("INSERT OR IGNORE INTO blobs(sha256, size, type, source, fetched_at) "
                   "VALUES (?, ?, ?, 'bucket', '2025-01-01T00:00:00Z')", blobs)
    db.executemany("UPDATE refs SET state = ?, sha256 = ?, reason = ? WHERE id = ?", refs)
print(f"{len(rows)} refs, {len(blobs)} blobs", file=sys.stderr)
EOF
}

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

printf '%-10s %10s %14s %8s %10s\n' refs "wall s" "peak RSS MiB" pages stickers
for n in $SIZES; do
    dir=$WORK/$n
    make_csv "$dir/db" "$n"
    "$BIN" --archive "$dir/archive" snapshot --db "$dir/db" >/dev/null
    make_fetched "$dir/archive"
    walls=() rss=()
    for _ in $(seq "$RUNS"); do
        /usr/bin/time -v -o "$dir/time" "$BIN" --archive "$dir/archive" gallery --json >"$dir/report"
        walls+=("$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0;
                     for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s}' "$dir/time")")
        rss+=("$(awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2 / 1024}' "$dir/time")")
    done
    refs=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM refs").fetchone()[0])' "$dir/archive/catalog.sqlite")
    pages=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["pages"], r["stickers"])' "$dir/report")
    printf '%-10s %10s %14s %8s %10s\n' "$refs" "$(printf '%s\n' "${walls[@]}" | median)" \
        "$(printf '%s\n' "${rss[@]}" | median)" ${pages}
    rm -rf "$dir"
done
