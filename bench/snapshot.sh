#!/usr/bin/env bash
# Benchmark of `starchive snapshot` from a local PostgreSQL, beside the
# database's own export.
#
# For N stickers rows (default 100,000 and 1,000,000; plus N/10 sessions),
# in a throwaway cluster, each run measures (wall time, peak RSS from
# /usr/bin/time -v, the client's CPU):
#   psql       psql `\copy (SELECT to_jsonb(t)::text FROM TABLE t) TO '/dev/null'`
#              over the same tables: the bare cost of getting every row out as JSON;
#   first      a first snapshot into an empty archive;
#   unchanged  a re-snapshot of the unchanged database;
#   1% changed a re-snapshot after 1% of the stickers changed (a column of
#              theirs gets a new value before each run, outside the timing).
# psql and starchive alternate which goes first (the machine may be shared).
# Then the ratios to the goals of issue #17, medians over RUNS runs:
#   first >= 0.8x psql's rows/s, unchanged >= 1.0x, 1% changed >= 0.9x,
#   catalog bytes <= 1.5x the JSON text of its rows
#   (sum(octet_length(to_jsonb(t)::text)), what the database sends),
# and the size of the compressed catalog copy a push writes
# (`_starchive/catalog.sqlite.zst`, from a push to a local directory).
#
# Usage: bench/snapshot.sh                  (RUNS=3 runs each, medians)
#        SIZES="100000 1000000 3000000" RUNS=1 bench/snapshot.sh
#
# Needs cargo, PostgreSQL's server binaries (initdb, pg_ctl: on PATH or in
# /usr/lib/postgresql/*/bin), psql and /usr/bin/time (Debian package `time`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SIZES=${SIZES:-"100000 1000000"}
RUNS=${RUNS:-3}

# Nothing from this machine's environment may steer starchive or psql.
for var in $(compgen -e); do
    case "$var" in
        AWS_* | STARCHIVE_* | TELEGRAM_* | DATABASE_URL | PG*) unset "$var" ;;
    esac
done

if [ ! -x /usr/bin/time ]; then
    echo "bench: /usr/bin/time missing; installing the Debian package 'time'" >&2
    apt-get install -y time >/dev/null
fi

# PostgreSQL's server binaries, as tests/it/support/pg.rs finds them.
if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    PGBIN=$(dirname "$(readlink -f "$(command -v initdb)")")
else
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
[ -x "$PGBIN/initdb" ] || { echo "bench: PostgreSQL's initdb not found" >&2; exit 1; }
PSQL=$PGBIN/psql
[ -x "$PSQL" ] || PSQL=$(command -v psql)

echo "==> cargo build --release" >&2
cargo build --release --quiet
BIN=$ROOT/target/release/starchive

WORK=$(mktemp -d /tmp/starchive-bench-XXXXXX)
chmod 777 "$WORK"
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        (cd "$WORK" && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}
cleanup() {
    if [ -f "$WORK/data/postmaster.pid" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
as_pg "$PGBIN/initdb" -D "$WORK/data" -A trust -U postgres --no-sync -E UTF8 --locale=C >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w -t 60 \
    -o "-k $WORK -c listen_addresses=127.0.0.1 -p $PORT -c fsync=off -c synchronous_commit=off -c shared_buffers=256MB" \
    start >/dev/null
psql_db() { "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d "$1" "${@:2}"; }
url() { echo "postgres://postgres@127.0.0.1:$PORT/$1"; }

# Schema as the tests load it (pgcrypto only when the contrib package is there).
schema() {
    if [ "$(psql_db postgres -c "select count(*) from pg_available_extensions where name = 'pgcrypto'")" = 1 ]; then
        cat tests/it/schema.sql
    else
        grep -vi 'create extension if not exists pgcrypto' tests/it/schema.sql
    fi
}

# N stickers (single and pack, with and without storage keys) and N/10 sessions.
# Ids look random (md5 as uuid), as the bot's gen_random_uuid() ids do: in id
# order, rows do not arrive in insertion order.
load() {
    local db=$1 n=$2 s=$(($2 / 10))
    psql_db postgres -c "create database $db" >/dev/null
    schema | psql_db "$db" >/dev/null
    psql_db "$db" >/dev/null <<SQL
INSERT INTO sessions (id, user_id, env, mode, photos, last_sticker_file_id, last_sticker_storage_path, created_at, updated_at)
SELECT md5('s' || g)::uuid, 100000000 + g % 50000,
       CASE WHEN g % 5 = 0 THEN 'test' ELSE 'prod' END,
       CASE WHEN g % 3 = 0 THEN 'pack' ELSE 'single' END,
       jsonb_build_array('AgACAgIAAxkBAAI' || md5(g::text)),
       'CAACAgIAAxkBAAI' || md5('s' || g) || '-' || g,
       CASE WHEN g % 2 = 0 THEN 'stickers/' || (100000000 + g % 50000) || '/' || g || '.webp' END,
       timestamptz '2025-01-01' + g * interval '1 second', timestamptz '2025-01-01' + g * interval '2 second'
FROM generate_series(1, $s) g;
INSERT INTO stickers (id, user_id, session_id, pack_index, style_preset_id, telegram_file_id, result_storage_path, created_at)
SELECT md5('t' || g)::uuid, 100000000 + (g % $s + 1) % 50000,
       md5('s' || (g % $s + 1))::uuid,
       CASE WHEN g % 4 = 0 THEN g % 9 END, 'cartoon',
       'CAACAgIAAxkBAAI' || md5(g::text) || '-' || g,
       CASE WHEN g % 10 <> 0 THEN 'stickers/' || (100000000 + (g % $s + 1) % 50000) || '/' || g || '.webp' END,
       timestamptz '2025-01-01' + g * interval '1 second'
FROM generate_series(1, $n) g;
VACUUM ANALYZE;
SQL
}

# Runs "$@" under /usr/bin/time -v; prints "WALL_SECONDS PEAK_RSS_KB CPU_SECONDS"
# (CPU: user + system time of the command itself, not of the server).
measure() {
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -v -o "$WORK/time.txt" "$@" >"$WORK/out.txt" 2>"$WORK/err.txt" || {
        echo "bench: command failed: $*" >&2
        cat "$WORK/err.txt" >&2
        exit 1
    }
    t1=$(date +%s.%N)
    echo "$(echo "$t1 - $t0" | bc -l)" \
        "$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt")" \
        "$(awk -F': ' '/User time|System time/ {t += $2} END {print t}' "$WORK/time.txt")"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
printf '\n%-10s %-12s %9s %10s %10s %9s %9s\n' "stickers" "what" "rows" "rows/s" "peak MB" "wall s" "cpu s"
for n in $SIZES; do
    db=bench_$n
    echo "==> loading $n stickers and $((n / 10)) sessions" >&2
    load "$db" "$n"
    rows=$((n + n / 10))
    json_bytes=$(psql_db "$db" -c "SELECT (SELECT coalesce(sum(octet_length(to_jsonb(t)::text)), 0) FROM sessions t)
        + (SELECT coalesce(sum(octet_length(to_jsonb(t)::text)), 0) FROM stickers t)
        + (SELECT coalesce(sum(octet_length(to_jsonb(t)::text)), 0) FROM pack_batches t)")
    for what in ref first again changed; do
        declare -a "${what}_s=()" "${what}_kb=()" "${what}_cpu=()"
    done
    snap() {
        read -r s kb cpu < <(measure "$BIN" --archive "$WORK/archive" snapshot --json --db "$(url "$db")")
        got=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["tables"]; print(d["stickers"]["rows"] + d["sessions"]["rows"], d["stickers"]["changed"])' "$WORK/out.txt")
        [ "${got% *}" = "$rows" ] || { echo "bench: snapshot copied ${got% *} rows, expected $rows" >&2; exit 1; }
        declare -n S="${1}_s" KB="${1}_kb" CPU="${1}_cpu"
        S+=("$s") KB+=("$kb") CPU+=("$cpu")
        unset -n S KB CPU
        changed=${got#* }
    }
    for run in $(seq "$RUNS"); do
        # Alternate which goes first: the machine is shared and noisy.
        for which in $( ((run % 2)) && echo "ref star" || echo "star ref"); do
            if [ "$which" = ref ]; then
                read -r s kb cpu < <(measure "$PSQL" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d "$db" \
                    -c "\\copy (SELECT to_jsonb(t)::text FROM sessions t) TO '/dev/null'" \
                    -c "\\copy (SELECT to_jsonb(t)::text FROM stickers t) TO '/dev/null'")
                ref_s+=("$s") ref_kb+=("$kb") ref_cpu+=("$cpu")
            else
                rm -rf "$WORK/archive"
                snap first
                catalog_bytes=$(stat -c %s "$WORK/archive/catalog.sqlite")
                snap again
                [ "$changed" = 0 ] || { echo "bench: an unchanged re-snapshot changed $changed stickers" >&2; exit 1; }
                psql_db "$db" -c "UPDATE stickers SET style_preset_id = 'run-$run'
                    WHERE ('x' || substr(md5(id::text), 1, 8))::bit(32)::int % 100 = 0" >/dev/null
                snap changed
                [ "$changed" -gt $((n / 200)) ] || { echo "bench: only $changed stickers changed" >&2; exit 1; }
            fi
        done
    done
    rm -rf "$WORK/dest"
    "$BIN" --archive "$WORK/archive" push --to "$WORK/dest" >/dev/null 2>&1 || true
    # One object, or parts .000, .001, … when large.
    copy_bytes=$(cat "$WORK/dest/_starchive/catalog.sqlite.zst"* 2>/dev/null | wc -c)
    ref_med=$(printf '%s\n' "${ref_s[@]}" | median)
    ratios=()
    for what in first again changed ref; do
        declare -n S="${what}_s" KB="${what}_kb" CPU="${what}_cpu"
        s=$(printf '%s\n' "${S[@]}" | median)
        kb=$(printf '%s\n' "${KB[@]}" | median)
        cpu=$(printf '%s\n' "${CPU[@]}" | median)
        case $what in
            first) label="snapshot" ;;
            again) label="unchanged" ;;
            changed) label="1% changed" ;;
            ref) label="psql \\copy" ;;
        esac
        [ "$what" = ref ] || ratios+=("$(printf '%s %.2fx' "$label" "$(echo "$ref_med / $s" | bc -l)")")
        printf '%-10s %-12s %9d %10.0f %10.1f %9.2f %9.2f\n' "$n" "$label" "$rows" "$(echo "$rows / $s" | bc -l)" \
            "$(echo "$kb / 1024" | bc -l)" "$s" "$cpu"
        unset -n S KB CPU
    done
    printf '%-10s goals: %s (>= 0.8x), %s (>= 1.0x), %s (>= 0.9x) of psql rows/s; catalog %.2fx the JSON (<= 1.5x)\n' \
        "$n" "${ratios[0]}" "${ratios[1]}" "${ratios[2]}" "$(echo "$catalog_bytes / $json_bytes" | bc -l)"
    printf '%-10s catalog %.1f MB on disk, JSON text %.1f MB, compressed copy a push writes %.1f MB\n' \
        "$n" "$(echo "$catalog_bytes / 1048576" | bc -l)" "$(echo "$json_bytes / 1048576" | bc -l)" \
        "$(echo "$copy_bytes / 1048576" | bc -l)"
    echo "           (medians of $RUNS runs; rows = stickers + sessions; rows/s over wall time;"
    echo "            cpu s: the client's own user+system time; ratios: psql's wall time / starchive's)"
    psql_db postgres -c "drop database $db" >/dev/null
done
