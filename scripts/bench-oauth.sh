#!/usr/bin/env bash
# Side-by-side OAuth benchmark: Valet against Django OAuth Toolkit (DOT) and
# node-oidc-provider, plus the machine's ceiling for single-row INSERT transactions
# (pgbench), all in one run with the same load tool and the same concurrency.
#
# Measured (each one after a CHECKPOINT, so no run pays for another's dirty pages), in
# ROUNDS rounds of pgbench, Valet, DOT-unhashed and node-oidc-provider in turn (DOT
# hashed in the first round only: it is a reference at a few requests per second). This
# machine's speed drifts by a quarter over minutes, and DOT's own rate with it, so one
# 10-second run of each can land in different phases; the report gives each target's
# median round and the ratios of the medians, and lists every round's ratio.
#   pgbench       one-row INSERT transactions into a jsonb table (database valet_pgbench)
#   valet         client_credentials token issuance and introspection (valet serve on
#                 127.0.0.1:8090, database valet_oauth_bench, recreated each round)
#   dot           the DOT peer with its default hashed client secret (bench-client)
#   dot-unhashed  the DOT peer with the unhashed-secret client (bench-client-plain)
#   oidcp         the node-oidc-provider peer (opaque access tokens, its in-memory store,
#                 one Node.js process) on 127.0.0.1:8802: installed from npm on first use
#                 by $SHARED_DIR/peers/node-oidc-provider/run.sh, started once before the
#                 first round (idle while the others are measured), stopped at the end
# The HTTP measurements are made by $SHARED_DIR/bench/oauth-load.sh, which checks
# correctness before timing. Its JSON lines (and one for pgbench) are collected in
# .build/bench/oauth-results.jsonl; the markdown report goes to stdout and to
# .build/bench/oauth-report.md. Progress goes to stderr.
#
# Exit status: non-zero when Valet or pgbench could not be measured (the report is
# still printed). The peers never fail the run: without DOT (or node-oidc-provider, e.g.
# when npm is unreachable) the Valet rows are printed without that comparison. Missing
# goals are reported, not fatal.
#
# Environment (all optional):
#   DURATION        length of each measurement: 10s, 1m or seconds (default 10s)
#   CONCURRENCY     concurrent connections / pgbench clients (default 32)
#   ROUNDS          rounds of measurements, alternating the targets (default 3)
#   LOAD_TOOL       oha or wrk (default: oha when on PATH, else wrk, installed from apt)
#   SHARED_DIR      the shared/ checkout (default: <repo>/../shared)
#   VALET_BIN       an already-built valet binary to measure: skips the default
#                   `cargo build --release -p valet-cli` (and target/release/valet)
#   SKIP_DOT_SETUP  1: do not run peers/dot/setup.sh (reuse the existing DOT venv/DB)
#   DOT_PORT        port of the DOT peer (default 8801)
#   SKIP_OIDCP      1: leave node-oidc-provider out (no comparison with it)
#   OIDCP_PORT      port of the node-oidc-provider peer (default 8802)
#   PAUSE           seconds of quiet before each HTTP measurement (oauth-load.sh; default 3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VALET_BIN="${VALET_BIN:-}"
[[ -z "$VALET_BIN" || "$VALET_BIN" == /* ]] || VALET_BIN="$PWD/$VALET_BIN" # relative to the caller
cd "$ROOT"

DURATION="${DURATION:-10s}"
[[ "$DURATION" =~ ^[0-9]+$ ]] && DURATION="${DURATION}s"
CONCURRENCY="${CONCURRENCY:-32}"
ROUNDS="${ROUNDS:-3}"
LOAD_TOOL="${LOAD_TOOL:-}"
SKIP_DOT_SETUP="${SKIP_DOT_SETUP:-0}"
DOT_PORT="${DOT_PORT:-8801}"
SKIP_OIDCP="${SKIP_OIDCP:-0}"
OIDCP_PORT="${OIDCP_PORT:-8802}"
if [[ -z "${SHARED_DIR:-}" ]]; then
    SHARED_DIR="$(git -C "$ROOT" rev-parse --show-toplevel 2>/dev/null || echo "$ROOT")/../shared"
fi
SHARED_DIR="$(cd "$SHARED_DIR" 2>/dev/null && pwd)" || {
    echo "[bench-oauth] error: shared directory not found (set SHARED_DIR)" >&2
    exit 1
}
LOAD="$SHARED_DIR/bench/oauth-load.sh"
DOT_DIR="$SHARED_DIR/peers/dot"
OIDCP_DIR="$SHARED_DIR/peers/node-oidc-provider"

PG_ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
VALET_DB=valet_oauth_bench
VALET_DB_URL="postgres://postgres@127.0.0.1:5432/$VALET_DB"
VALET_ADDR=127.0.0.1:8090
VALET_URL="http://$VALET_ADDR"
VALET="${VALET_BIN:-$ROOT/target/release/valet}"
DOT_URL="http://127.0.0.1:$DOT_PORT"
OIDCP_URL="http://127.0.0.1:$OIDCP_PORT"
# run.sh's own PEER_DIR default; its server log is server-$OIDCP_PORT.log there
OIDCP_LOG="${PEER_DIR:-$HOME/.cache/valet-peers/oidcp}/server-$OIDCP_PORT.log"
PGBENCH_DB=valet_pgbench

OUT_DIR="$ROOT/.build/bench"
RESULTS="$OUT_DIR/oauth-results.jsonl"
REPORT="$OUT_DIR/oauth-report.md"
VALET_LOG="$OUT_DIR/valet.log"
DOT_SETUP_LOG="$OUT_DIR/dot-setup.log"
OIDCP_SETUP_LOG="$OUT_DIR/oidcp-setup.log"

log() { printf '[bench-oauth] %s\n' "$*" >&2; }
# stop_valet, admin_sql, checkpoint
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"

[[ "$CONCURRENCY" =~ ^[1-9][0-9]*$ ]] || { log "error: CONCURRENCY must be a positive integer"; exit 1; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { log "error: ROUNDS must be a positive integer"; exit 1; }
[[ "$OIDCP_PORT" =~ ^[1-9][0-9]*$ ]] || { log "error: OIDCP_PORT must be a port number"; exit 1; }
# pgbench -T takes whole seconds.
case "$DURATION" in
    *[0-9]s) SECS="${DURATION%s}" ;;
    *[0-9]m) SECS="$((${DURATION%m} * 60))" ;;
    *[0-9]h) SECS="$((${DURATION%h} * 3600))" ;;
    *) SECS="" ;;
esac
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { log "error: DURATION '$DURATION': use e.g. 10s, 1m or 10"; exit 1; }
[[ -x "$LOAD" ]] || { log "error: $LOAD not found (set SHARED_DIR)"; exit 1; }

mkdir -p "$OUT_DIR"
: >"$RESULTS"
TMP="$(mktemp -d)"

VALET_PID=""
DOT_STARTED=0
OIDCP_STARTED=0
OIDCP_SETUP_PID="" # timeout ... run.sh start, while it runs
# Why a part could not be measured (empty: measured).
VALET_FAIL=""
PGBENCH_FAIL=""
DOT_FAIL=""
OIDCP_FAIL=""

stop_dot() {
    ((DOT_STARTED)) || return 0
    PORT="$DOT_PORT" "$DOT_DIR/run.sh" stop || log "warning: '$DOT_DIR/run.sh stop' failed"
    DOT_STARTED=0
}

# Stops node-oidc-provider if this run started it (run.sh stop: the PID in its pidfile).
stop_oidcp() {
    if [[ -n "$OIDCP_SETUP_PID" ]]; then # interrupted while run.sh installs or starts it
        # timeout passes the signal on to its process group: run.sh, npm, node
        kill -TERM "$OIDCP_SETUP_PID" 2>/dev/null || true
        wait "$OIDCP_SETUP_PID" 2>/dev/null || true
        OIDCP_SETUP_PID=""
    fi
    ((OIDCP_STARTED)) || return 0
    log "stopping node-oidc-provider on $OIDCP_URL"
    PORT="$OIDCP_PORT" "$OIDCP_DIR/run.sh" stop || log "warning: '$OIDCP_DIR/run.sh stop' failed"
    OIDCP_STARTED=0
}

cleanup() {
    stop_valet
    stop_dot
    stop_oidcp
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    else
        sudo -n "$@"
    fi
}


# ------------------------------------------------------------------ services, load tool
log "services (PostgreSQL, NATS): scripts/services.sh"
bash "$ROOT/scripts/services.sh" >&2

if [[ -z "$LOAD_TOOL" ]]; then
    if command -v oha >/dev/null; then LOAD_TOOL=oha; else LOAD_TOOL=wrk; fi
fi
case "$LOAD_TOOL" in
    oha) ;; # oauth-load.sh finds it (or builds it with cargo, since it was asked for)
    wrk)
        if ! command -v wrk >/dev/null; then
            log "wrk not found: apt-get install wrk (log: $OUT_DIR/apt.log)"
            export DEBIAN_FRONTEND=noninteractive
            if ! as_root apt-get install -y -qq wrk >"$OUT_DIR/apt.log" 2>&1; then
                as_root apt-get update -qq >>"$OUT_DIR/apt.log" 2>&1 || true
                as_root apt-get install -y -qq wrk >>"$OUT_DIR/apt.log" 2>&1 || {
                    tail -n 20 "$OUT_DIR/apt.log" >&2
                    log "error: cannot install wrk (set LOAD_TOOL=oha to use oha instead)"
                    exit 1
                }
            fi
        fi
        ;;
    *) log "error: LOAD_TOOL must be oha or wrk, not '$LOAD_TOOL'"; exit 1 ;;
esac
log "load tool $LOAD_TOOL, $DURATION per measurement, $CONCURRENCY connections, $ROUNDS rounds; shared: $SHARED_DIR"

# ------------------------------------------------------------------ build Valet
# What was built and measured (the working tree may differ from HEAD).
COMMIT="$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
if [[ -n "$VALET_BIN" ]]; then
    log "VALET_BIN: measuring $VALET (not building)"
    if [[ ! -f "$VALET" || ! -x "$VALET" ]]; then
        VALET_FAIL="VALET_BIN=$VALET is not an executable file"
        log "error: $VALET_FAIL"
    fi
    # Built elsewhere: the working tree says nothing about what it contains.
    MEASURED="binary $VALET, not built here; working tree at $COMMIT"
else
    log "cargo build --release -p valet-cli"
    if ! cargo build --release -p valet-cli >&2; then
        VALET_FAIL="cargo build --release -p valet-cli failed"
        log "error: $VALET_FAIL"
    fi
    MEASURED="commit $COMMIT"
fi

# ------------------------------------------------------------------ DOT setup
if [[ "$SKIP_DOT_SETUP" == 1 ]]; then
    log "SKIP_DOT_SETUP=1: not running $DOT_DIR/setup.sh"
elif PORT="$DOT_PORT" "$DOT_DIR/run.sh" status >/dev/null 2>&1; then
    log "a DOT peer already runs on $DOT_URL (not started here): using it as it is, without setup"
else
    log "DOT peer setup: $DOT_DIR/setup.sh (log: $DOT_SETUP_LOG)"
    if ! PORT="$DOT_PORT" "$DOT_DIR/setup.sh" >"$DOT_SETUP_LOG" 2>&1; then
        tail -n 15 "$DOT_SETUP_LOG" >&2 || true
        DOT_FAIL="DOT peer setup failed (see $DOT_SETUP_LOG)"
        log "*** $DOT_FAIL: continuing without a DOT comparison ***"
    fi
fi

# ------------------------------------------------------------------ node-oidc-provider
# Started once here and kept for every round (it sits idle while the others are measured).
if [[ "$SKIP_OIDCP" == 1 ]]; then
    OIDCP_FAIL="left out (SKIP_OIDCP=1)"
    log "SKIP_OIDCP=1: node-oidc-provider left out"
else
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$OIDCP_URL/.well-known/openid-configuration" || true)"
    if [[ -n "$code" && "$code" != 000 ]]; then
        # Not ours (run.sh would stop the one in its pidfile): measured as it is, not stopped.
        log "a server already answers on $OIDCP_URL (HTTP $code; not started here): using it as it is"
    else
        log "node-oidc-provider peer: $OIDCP_DIR/run.sh (installs oidc-provider from npm on first use; log: $OIDCP_SETUP_LOG)"
        # Set before starting, so that the EXIT trap stops it even when run.sh fails or is
        # interrupted half-way (run.sh stop only touches the PID in its own pidfile).
        OIDCP_STARTED=1
        # timeout: an unreachable npm registry must not stall the run for long. It runs
        # run.sh in a process group of its own, which Ctrl-C does not reach: waited for
        # with `wait`, which (unlike a foreground command) the INT trap interrupts at once.
        PORT="$OIDCP_PORT" timeout 300 "$OIDCP_DIR/run.sh" start >"$OIDCP_SETUP_LOG" 2>&1 &
        OIDCP_SETUP_PID=$!
        code=0
        wait "$OIDCP_SETUP_PID" || code=$?
        OIDCP_SETUP_PID=""
        if ((code != 0)); then
            ((code != 124)) || echo "(timed out after 300 s)" >>"$OIDCP_SETUP_LOG"
            tail -n 15 "$OIDCP_SETUP_LOG" >&2 || true
            OIDCP_FAIL="node-oidc-provider could not be set up or started (see $OIDCP_SETUP_LOG and $OIDCP_LOG)"
            log "*** $OIDCP_FAIL: continuing without a node-oidc-provider comparison ***"
            stop_oidcp
        else
            log "node-oidc-provider answers on $OIDCP_URL (log: $OIDCP_LOG)"
        fi
    fi
fi

# ------------------------------------------------------------------ measurements
ROUND=0
# Appends stdin's JSON lines to $RESULTS, each marked with the current round.
record() { sed "s/^{/{\"round\": $ROUND, /" >>"$RESULTS"; }

# load TARGET TOKEN_URL INTROSPECT_URL CLIENT_ID CLIENT_SECRET: oauth-load.sh once per op,
# each after a CHECKPOINT; JSON lines appended to $RESULTS. Returns 1 on the first failure.
load() {
    local target="$1" token_url="$2" introspect_url="$3" id="$4" secret="$5" op
    for op in token introspect; do
        checkpoint
        if ! TARGET="$target" TOKEN_URL="$token_url" INTROSPECT_URL="$introspect_url" \
            CLIENT_ID="$id" CLIENT_SECRET="$secret" OPS="$op" DURATION="$DURATION" \
            CONCURRENCY="$CONCURRENCY" LOAD_TOOL="$LOAD_TOOL" \
            "$LOAD" >"$TMP/load.jsonl"; then
            log "error: oauth-load.sh failed for target $target, op $op"
            return 1
        fi
        grep '^{' "$TMP/load.jsonl" | record || { log "error: no result line for $target/$op"; return 1; }
    done
}

# pgbench: single-row INSERT transactions at the same concurrency; one JSON line.
measure_pgbench() {
    local db_url="postgres://postgres@127.0.0.1:5432/$PGBENCH_DB" out="$TMP/pgbench.out"
    log "pgbench: scratch database $PGBENCH_DB"
    admin_sql "DROP DATABASE IF EXISTS $PGBENCH_DB WITH (FORCE)" || return 1
    admin_sql "CREATE DATABASE $PGBENCH_DB" || return 1
    psql -X -q -v ON_ERROR_STOP=1 "$db_url" >&2 -c \
        'CREATE TABLE raw_inserts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload jsonb NOT NULL)' ||
        return 1
    # One INSERT of a ~500-byte JSON document, about the size of a token event.
    python3 - "$TMP/insert.sql" <<'PY' || return 1
import json, sys
doc = {"type": "AccessTokenIssued", "client_id": "bench-client",
       "grant_type": "client_credentials", "scope": "read", "token_type": "Bearer",
       "expires_in": 3600, "issued_at": "2026-11-28T04:00:00Z",
       "token_hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
       "correlation_id": "0b7f5a8e-4c0e-4f5e-9b7a-2f6c1d3e8a90", "pad": ""}
doc["pad"] = "x" * (500 - len(json.dumps(doc)))
text = json.dumps(doc)
assert len(text) == 500 and "'" not in text
open(sys.argv[1], "w").write(f"INSERT INTO raw_inserts (payload) VALUES ('{text}');\n")
PY
    checkpoint
    log "pgbench -n -c $CONCURRENCY -j 2 -T $SECS (one-row INSERT per transaction)"
    rm -f "$TMP"/pgbench_log.*
    (cd "$TMP" && pgbench -n -c "$CONCURRENCY" -j 2 -T "$SECS" -l --log-prefix=pgbench_log \
        -f "$TMP/insert.sql" "$db_url" >"$out" 2>"$TMP/pgbench.err") || {
        cat "$TMP/pgbench.err" >&2
        return 1
    }
    cat "$out" >&2
    python3 - "$out" "$TMP" "$CONCURRENCY" "$SECS" "$(pgbench --version)" >"$TMP/pgbench.jsonl" <<'PY' || return 1
import glob, json, os, re, sys
out, tmp, conc, secs, version = sys.argv[1:]
text = open(out).read()
tps = re.search(r"^tps = ([0-9.]+)", text, re.M)
if not tps:
    sys.exit("no 'tps = N' in pgbench output")
done = re.search(r"^number of transactions actually processed: (\d+)", text, re.M)
failed = re.search(r"^number of failed transactions: (\d+)", text, re.M)
lat = []  # per-transaction log: client_id transaction_no time_us script_no epoch epoch_us
for path in glob.glob(os.path.join(tmp, "pgbench_log.*")):
    with open(path) as f:
        lat.extend(int(line.split()[2]) for line in f if line.strip())
lat.sort()
pct = lambda p: round(lat[min(len(lat) - 1, int(len(lat) * p / 100))] / 1000, 3) if lat else None
print(json.dumps({"target": "pgbench", "op": "insert", "rps": round(float(tps.group(1)), 2),
                  "p50_ms": pct(50), "p99_ms": pct(99), "non2xx": None,
                  "errors": int(failed.group(1)) if failed else 0,
                  "requests": int(done.group(1)) if done else len(lat),
                  "concurrency": int(conc), "duration_s": float(secs), "tool": version}))
PY
    record <"$TMP/pgbench.jsonl"
}

# Valet: fresh database, one client_credentials client, valet serve on $VALET_ADDR.
start_valet() {
    local out code
    log "valet: database $VALET_DB (dropped and migrated)"
    admin_sql "DROP DATABASE IF EXISTS $VALET_DB WITH (FORCE)" || { VALET_FAIL="cannot drop $VALET_DB"; return 1; }
    VALET_DATABASE_URL="$VALET_DB_URL" "$VALET" migrate >&2 || { VALET_FAIL="valet migrate failed"; return 1; }
    if ! out="$(VALET_DATABASE_URL="$VALET_DB_URL" "$VALET" client create --name bench-client \
        --grant-type client_credentials --scope read --json)"; then
        VALET_FAIL="valet client create failed"
        return 1
    fi
    if ! python3 -c '
import json, sys
text = sys.stdin.read()
d = json.JSONDecoder().raw_decode(text[text.index("{"):])[0]  # tolerate text around it
print(d["client_id"]); print(d["client_secret"])' <<<"$out" >"$TMP/valet-client"; then
        VALET_FAIL="cannot parse the output of valet client create --json: $out"
        return 1
    fi
    { read -r VALET_CLIENT_ID && read -r VALET_CLIENT_SECRET; } <"$TMP/valet-client"
    log "valet: client $VALET_CLIENT_ID created"

    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$VALET_URL/healthz" || true)"
    if [[ -n "$code" && "$code" != 000 ]]; then
        VALET_FAIL="something already answers on $VALET_URL (HTTP $code)"
        return 1
    fi
    log "valet: serve on $VALET_URL (log: $VALET_LOG)"
    VALET_DATABASE_URL="$VALET_DB_URL" VALET_LISTEN="$VALET_ADDR" "$VALET" serve >"$VALET_LOG" 2>&1 &
    VALET_PID=$!
    local deadline=$((SECONDS + 30))
    until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$VALET_URL/healthz" || true)" == 200 ]]; do
        if ! kill -0 "$VALET_PID" 2>/dev/null; then
            tail -n 20 "$VALET_LOG" >&2 || true
            VALET_FAIL="valet serve exited (see $VALET_LOG)"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$VALET_LOG" >&2 || true
            VALET_FAIL="valet serve: $VALET_URL/healthz not 200 within 30s (see $VALET_LOG)"
            return 1
        fi
        sleep 0.2
    done
    log "valet: /healthz answers 200 (PID $VALET_PID)"
    # The client is visible to /token once the projector caught up: wait for it (10 s
    # at most; oauth-load.sh reports the error if it never does).
    deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -u "$VALET_CLIENT_ID:$VALET_CLIENT_SECRET" \
            -d 'grant_type=client_credentials&scope=read' "$VALET_URL/token" || true)"
        [[ "$code" == 200 ]] && break
        sleep 0.5
    done
}

start_dot() {
    PORT="$DOT_PORT" "$DOT_DIR/run.sh" status >/dev/null 2>&1 && return 0 # not ours: not stopped
    PORT="$DOT_PORT" "$DOT_DIR/run.sh" start || return 1
    DOT_STARTED=1
}

# Other work on the machine skews every number: say how busy it was.
LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
log "load average before measuring: $LOADAVG"

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    log "round $ROUND of $ROUNDS"
    # 1. the ceiling
    if [[ -z "$PGBENCH_FAIL" ]]; then
        measure_pgbench || { PGBENCH_FAIL="pgbench measurement failed"; log "error: $PGBENCH_FAIL"; }
    fi

    # 2. Valet (stopped before the peer runs, so the two never share the CPU)
    if [[ -z "$VALET_FAIL" ]]; then
        if start_valet; then
            load valet "$VALET_URL/token" "$VALET_URL/introspect" "$VALET_CLIENT_ID" "$VALET_CLIENT_SECRET" ||
                VALET_FAIL="oauth-load.sh failed against Valet (see above and $VALET_LOG)"
        fi
        stop_valet
        [[ -z "$VALET_FAIL" ]] || log "error: $VALET_FAIL"
    fi

    # 3. the DOT peer: default hashed secret (first round only), unhashed secret
    if [[ -z "$DOT_FAIL" ]]; then
        if start_dot; then
            if ((ROUND == 1)); then
                load dot "$DOT_URL/o/token/" "$DOT_URL/o/introspect/" bench-client bench-secret ||
                    DOT_FAIL="oauth-load.sh failed against DOT with bench-client"
            fi
            load dot-unhashed "$DOT_URL/o/token/" "$DOT_URL/o/introspect/" bench-client-plain bench-secret ||
                DOT_FAIL="${DOT_FAIL:+$DOT_FAIL; }oauth-load.sh failed against DOT with bench-client-plain"
        else
            DOT_FAIL="DOT peer did not start ($DOT_DIR/run.sh)"
        fi
        stop_dot
        [[ -z "$DOT_FAIL" ]] || log "*** $DOT_FAIL: no full DOT comparison ***"
    fi

    # 4. node-oidc-provider (started once, before the first round)
    if [[ -z "$OIDCP_FAIL" ]]; then
        load oidcp "$OIDCP_URL/token" "$OIDCP_URL/token/introspection" bench-client bench-secret ||
            OIDCP_FAIL="oauth-load.sh failed against node-oidc-provider (see above and $OIDCP_LOG)"
        [[ -z "$OIDCP_FAIL" ]] || log "*** $OIDCP_FAIL: no full node-oidc-provider comparison ***"
    fi
done
stop_oidcp

# ------------------------------------------------------------------ report
python3 - "$RESULTS" "$DURATION" "$CONCURRENCY" "$LOAD_TOOL" "$VALET_FAIL" "$PGBENCH_FAIL" "$DOT_FAIL" \
    "$OIDCP_FAIL" "$MEASURED" "$(nproc)" "$LOADAVG" "$ROUNDS" <<'PY' | tee "$REPORT"
import json, statistics, sys
(path, duration, conc, tool, valet_fail, pg_fail, dot_fail, oidcp_fail, measured, cores, loadavg,
 rounds) = sys.argv[1:]
runs = {}  # (op, target) -> [row per round, in order]
tools = set()
for line in open(path):
    if line.strip():
        r = json.loads(line)
        runs.setdefault((r["op"], r["target"]), []).append(r)
        if r["target"] != "pgbench":
            tools.add(r.get("tool") or tool)

def median_row(key):
    """The round whose rps is the median (the lower of the middle two for an even count),
    so the latencies shown are those of a real run."""
    rs = runs.get(key)
    if not rs:
        return None
    mid = statistics.median_low([r["rps"] for r in rs])
    return next(r for r in rs if r["rps"] == mid)

rows = {key: median_row(key) for key in runs}

def num(v, fmt):
    return "n/a" if v is None else format(v, fmt)

TOKEN, INTRO = "token_client_credentials", "introspect"
OPS = [(TOKEN, "token (client_credentials)"), (INTRO, "introspect")]
TARGETS = ["valet", "dot", "dot-unhashed", "oidcp"]
NAMES = {"oidcp": "node-oidc-provider"}  # how a target is shown, when not by its label
no_dot = not any(t in ("dot", "dot-unhashed") for _, t in runs)
no_oidcp = not any(t == "oidcp" for _, t in runs)
missing = " or ".join(n for n, gone in (("DOT", no_dot), ("node-oidc-provider", no_oidcp)) if gone)

print(f"## OAuth benchmark: Valet vs Django OAuth Toolkit and node-oidc-provider ({measured})\n")
print(f"Load tool: {', '.join(sorted(tools)) or tool}; {conc} connections; {duration} per "
      f"measurement; {rounds} round(s) alternating pgbench, Valet, DOT-unhashed and "
      f"node-oidc-provider (DOT hashed in the first only; node-oidc-provider started once, idle "
      f"while the others run); {cores} cores shared by server, database and load tool; load "
      f"average before measuring {loadavg}.\n")
print("Each row is the target's median round; `rounds` lists every round's rate.\n")
print("| op | target | rps | p50 ms | p99 ms | non2xx | errors | rounds (rps) |")
print("|---|---|---:|---:|---:|---:|---:|---|")
table = [(op, label, t) for op, label in OPS for t in TARGETS] + [("insert", "INSERT (pgbench)", "pgbench")]
for op, label, t in table:
    r = rows.get((op, t))
    name = NAMES.get(t, t) + (f" (no {missing} comparison)" if t == "valet" and missing else "")
    if r is None:
        print(f"| {label} | {name} | n/a | n/a | n/a | n/a | n/a | |")
    else:
        # no request completed within the duration (wrk cuts them off): no latency
        lat = (None, None) if r.get("requests") == 0 else (r["p50_ms"], r["p99_ms"])
        every = " / ".join(format(x["rps"], ".0f") for x in runs[(op, t)])
        print(f"| {label} | {name} | {num(r['rps'], '.1f')} | {num(lat[0], '.2f')} | "
              f"{num(lat[1], '.2f')} | {num(r['non2xx'], 'd')} | {num(r['errors'], 'd')} | {every} |")

def clean(op, t):  # a throughput with failed requests (in any round) does not count
    rs = runs.get((op, t)) or []
    return bool(rs) and not any(r.get("non2xx") or r.get("errors") for r in rs)

def ratio(a, b):
    return None if a is None or b is None or not b["rps"] else a["rps"] / b["rps"]

def per_round(op, other, show):
    """valet's `op` / the `other` key in each round that measured both, each shown with
    `show`: e.g. '; rounds: 21.0x / 18.9x'."""
    by_round = {r.get("round"): r for r in runs.get(other) or []}
    xs = [ratio(v, by_round.get(v.get("round"))) for v in runs.get((op, "valet")) or []]
    xs = [x for x in xs if x is not None]
    return "; rounds: " + " / ".join(map(show, xs)) if len(xs) > 1 else ""

def verdict(value, ok, op):
    if value is None:
        return "n/a"
    if not clean(op, "valet"):
        return "FAIL (Valet had non-2xx responses or errors)"
    return "PASS" if ok else "FAIL"

def peer_note(op, t):  # a peer's failed requests make its rate (and the ratio) suspect
    return "" if not runs.get((op, t)) or clean(op, t) else \
        f" (note: {NAMES.get(t, t)} had non-2xx responses or errors)"

print("\nRatios of the medians, and goals:\n")
pg = rows.get(("insert", "pgbench"))
for op, label in OPS:
    v = rows.get((op, "valet"))
    goal_x = 20 if op == TOKEN else 50
    r = ratio(v, rows.get((op, "dot")))
    print(f"- {label}: valet / dot = {num(r, '.1f')}{'x' if r is not None else ''}"
          f" (goal: none, DOT's default hashed secret, for reference)")
    r = ratio(v, rows.get((op, "dot-unhashed")))
    print(f"- {label}: valet / dot-unhashed = {num(r, '.1f')}{'x' if r is not None else ''}"
          f" (goal: >= {goal_x}x): {verdict(r, r is not None and r >= goal_x, op)}"
          f"{per_round(op, (op, 'dot-unhashed'), lambda x: f'{x:.1f}x')}")
    goal_o = 2 if op == TOKEN else 5
    r = ratio(v, rows.get((op, "oidcp")))
    print(f"- {label}: valet / node-oidc-provider = {num(r, '.2f')}{'x' if r is not None else ''}"
          f" (goal: >= {goal_o}x): {verdict(r, r is not None and r >= goal_o, op)}"
          f"{per_round(op, (op, 'oidcp'), lambda x: f'{x:.2f}x')}{peer_note(op, 'oidcp')}")
    if op == TOKEN:
        r = ratio(v, pg)
        pct = None if r is None else 100 * r
        print(f"- {label}: valet rps / pgbench INSERT tps = {num(pct, '.1f')}{'%' if pct is not None else ''}"
              f" (goal: >= 50%): {verdict(pct, pct is not None and pct >= 50, op)}"
              f"{per_round(op, ('insert', 'pgbench'), lambda x: f'{100 * x:.1f}%')}")
    else:
        p99 = None if v is None else v["p99_ms"]
        p99s = [x["p99_ms"] for x in runs.get((op, "valet")) or [] if x.get("p99_ms") is not None]
        extra = f"; worst round {max(p99s):.2f} ms" if len(p99s) > 1 else ""
        print(f"- {label}: valet p99 = {num(p99, '.2f')}{' ms' if p99 is not None else ''}"
              f" (goal: < 10 ms): {verdict(p99, p99 is not None and p99 < 10, op)}{extra}")

notes = [n for n in (valet_fail and f"Valet not measured: {valet_fail}.",
                     pg_fail and f"pgbench not measured: {pg_fail}.",
                     dot_fail and f"No DOT comparison: {dot_fail}.",
                     oidcp_fail and f"No node-oidc-provider comparison: {oidcp_fail}.") if n]
if notes:
    print()
    for n in notes:
        print(f"Note: {n}")
print(f"\nRaw results: {path}")
PY

if [[ -n "$VALET_FAIL" || -n "$PGBENCH_FAIL" ]]; then
    log "error: ${VALET_FAIL:+Valet: $VALET_FAIL}${VALET_FAIL:+${PGBENCH_FAIL:+; }}${PGBENCH_FAIL:+pgbench: $PGBENCH_FAIL}"
    exit 1
fi
log "report: $REPORT"
