#!/usr/bin/env bash
# Replay benchmark: a generated log of EVENTS events (default 1,000,000), then
#   - a full projection rebuild with verification (valet projections rebuild --verify),
#   - a point-in-time answer over the whole log (valet audit at now),
# each timed, with its events/s and peak memory (maximum resident set size).
#
# Environment: EVENTS (default 1000000), VALET_BENCH_SERVER (PostgreSQL server URL,
# default postgres://postgres@127.0.0.1:5432); the database valet_replay_bench on it is
# dropped and recreated. Seeding 1M events takes a minute or two. VALET_BIN: an
# already-built valet to measure instead of building target/release/valet.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EVENTS="${EVENTS:-1000000}"
SERVER="${VALET_BENCH_SERVER:-postgres://postgres@127.0.0.1:5432}"
export VALET_DATABASE_URL="$SERVER/valet_replay_bench"
OUT=.build/bench
mkdir -p "$OUT"
log() { printf '[bench-replay] %s\n' "$*" >&2; }

if [[ -n "${VALET_BIN:-}" ]]; then
    VALET="$VALET_BIN"
else
    cargo build --release -p valet-cli >&2
    VALET=target/release/valet
fi
psql -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS valet_replay_bench WITH (FORCE)" >&2
"$VALET" migrate >&2
log "seeding $EVENTS events"
"$VALET" seed --events "$EVENTS" 2>/dev/null | tee "$OUT/replay-seed.txt" >&2
psql -q "$VALET_DATABASE_URL" -c "VACUUM ANALYZE" >&2

# measure NAME COMMAND...: prints "seconds peak_kb" and keeps the command's output.
measure() {
    local name="$1"; shift
    psql -q "$VALET_DATABASE_URL" -c "CHECKPOINT" >&2
    /usr/bin/time -f "%e %M" -o "$OUT/replay-$name.time" "$@" >"$OUT/replay-$name.out" 2>"$OUT/replay-$name.err"
    cat "$OUT/replay-$name.time"
}

total=$(psql -Atq "$VALET_DATABASE_URL" -c "SELECT count(*) FROM events")
log "rebuild --verify over $total events"
read -r rebuild_s rebuild_kb < <(measure rebuild "$VALET" projections rebuild --verify --batch-size 10000)
grep -q "equal the rebuild" "$OUT/replay-rebuild.out" || { log "verify failed"; cat "$OUT/replay-rebuild.out" >&2; exit 1; }
log "audit at now over $total events"
read -r at_s at_kb < <(measure at "$VALET" audit at now --format jsonl)

python3 - "$total" "$rebuild_s" "$rebuild_kb" "$at_s" "$at_kb" <<'PY'
import sys
total, rb_s, rb_kb, at_s, at_kb = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
goal = 100_000
print()
print(f"Replay over {total:,} events (wall time of the whole command, including connect)")
print()
print("| operation | seconds | events/s | peak RSS MiB | goal ≥ 100,000 events/s |")
print("|---|---:|---:|---:|---|")
for name, s, kb in [("projections rebuild --verify", rb_s, rb_kb), ("audit at now", at_s, at_kb)]:
    rate = total / s if s else 0
    print(f"| {name} | {s:.1f} | {rate:,.0f} | {kb/1024:.0f} | {'PASS' if rate >= goal else 'FAIL'} |")
PY
