#!/usr/bin/env bash
# JWT access-token issuance, side by side in one run (client_credentials at /token, the
# same load tool and concurrency for every target):
#   valet-opaque      a client with opaque access tokens (the baseline)
#   valet-jwt-es256   a client with JWT access tokens signed ES256
#   valet-jwt-eddsa   ... signed EdDSA
#   valet-jwt-rs256   ... signed RS256
#   oidcp-jwt         node-oidc-provider issuing RS256 JWT access tokens
#                     (ACCESS_TOKEN_FORMAT=jwt $SHARED_DIR/peers/node-oidc-provider/run.sh)
# Goals: ES256 and EdDSA at least 80% of the opaque rate; RS256 at least twice
# node-oidc-provider's.
#
# In each of ROUNDS rounds: valet serve on a fresh database (valet_jwt_bench) with the
# four clients, measured in a rotated order (the database grows as it is measured), then
# stopped; then node-oidc-provider (started once, idle meanwhile). The report gives each
# target's median round and the ratios of the medians; JSON lines go to
# .build/bench/jwt-results.jsonl, the report to stdout and .build/bench/jwt-report.md.
#
# Environment (all optional): DURATION (10s), CONCURRENCY (32), ROUNDS (3), LOAD_TOOL
# (oha or wrk), SHARED_DIR (<repo>/../shared), VALET_BIN (an already-built valet; default:
# cargo build --release -p valet-cli), SKIP_OIDCP=1, OIDCP_PORT (8803), PAUSE.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VALET_BIN="${VALET_BIN:-}"
[[ -z "$VALET_BIN" || "$VALET_BIN" == /* ]] || VALET_BIN="$PWD/$VALET_BIN"
cd "$ROOT"

DURATION="${DURATION:-10s}"
[[ "$DURATION" =~ ^[0-9]+$ ]] && DURATION="${DURATION}s"
CONCURRENCY="${CONCURRENCY:-32}"
ROUNDS="${ROUNDS:-3}"
LOAD_TOOL="${LOAD_TOOL:-}"
SKIP_OIDCP="${SKIP_OIDCP:-0}"
OIDCP_PORT="${OIDCP_PORT:-8803}"
SHARED_DIR="${SHARED_DIR:-$ROOT/../shared}"
SHARED_DIR="$(cd "$SHARED_DIR" 2>/dev/null && pwd)" || {
    echo "[bench-jwt] error: shared directory not found (set SHARED_DIR)" >&2
    exit 1
}
LOAD="$SHARED_DIR/bench/oauth-load.sh"
OIDCP_DIR="$SHARED_DIR/peers/node-oidc-provider"
OIDCP_URL="http://127.0.0.1:$OIDCP_PORT"

PG_ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
VALET_DB=valet_jwt_bench
VALET_DB_URL="postgres://postgres@127.0.0.1:5432/$VALET_DB"
VALET_ADDR=127.0.0.1:8091
VALET_URL="http://$VALET_ADDR"
VALET="${VALET_BIN:-$ROOT/target/release/valet}"
OUT_DIR="$ROOT/.build/bench"
RESULTS="$OUT_DIR/jwt-results.jsonl"
REPORT="$OUT_DIR/jwt-report.md"
VALET_LOG="$OUT_DIR/jwt-valet.log"
OIDCP_SETUP_LOG="$OUT_DIR/jwt-oidcp-setup.log"
VARIANTS=(opaque jwt-es256 jwt-eddsa jwt-rs256)

log() { printf '[bench-jwt] %s\n' "$*" >&2; }
# stop_valet, admin_sql, checkpoint
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
[[ "$CONCURRENCY" =~ ^[1-9][0-9]*$ ]] || { log "error: CONCURRENCY must be a positive integer"; exit 1; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { log "error: ROUNDS must be a positive integer"; exit 1; }
[[ -x "$LOAD" ]] || { log "error: $LOAD not found (set SHARED_DIR)"; exit 1; }
mkdir -p "$OUT_DIR"
: >"$RESULTS"
TMP="$(mktemp -d)"
VALET_PID=""
OIDCP_STARTED=0
OIDCP_FAIL=""

stop_oidcp() {
    ((OIDCP_STARTED)) || return 0
    log "stopping node-oidc-provider on $OIDCP_URL"
    PORT="$OIDCP_PORT" "$OIDCP_DIR/run.sh" stop || log "warning: '$OIDCP_DIR/run.sh stop' failed"
    OIDCP_STARTED=0
}
cleanup() {
    stop_valet
    stop_oidcp
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


bash "$ROOT/scripts/services.sh" >&2
[[ -n "$LOAD_TOOL" ]] || { if command -v oha >/dev/null; then LOAD_TOOL=oha; else LOAD_TOOL=wrk; fi; }
COMMIT="$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
if [[ -z "$VALET_BIN" ]]; then
    log "cargo build --release -p valet-cli"
    cargo build --release -p valet-cli >&2
fi
[[ -x "$VALET" ]] || { log "error: $VALET is not an executable"; exit 1; }

# ------------------------------------------------------------------ node-oidc-provider
if [[ "$SKIP_OIDCP" == 1 ]]; then
    OIDCP_FAIL="left out (SKIP_OIDCP=1)"
else
    log "node-oidc-provider with JWT access tokens on $OIDCP_URL (log: $OIDCP_SETUP_LOG)"
    OIDCP_STARTED=1
    if ! ACCESS_TOKEN_FORMAT=jwt PORT="$OIDCP_PORT" timeout 300 "$OIDCP_DIR/run.sh" start >"$OIDCP_SETUP_LOG" 2>&1; then
        tail -n 15 "$OIDCP_SETUP_LOG" >&2 || true
        OIDCP_FAIL="node-oidc-provider could not be started (see $OIDCP_SETUP_LOG)"
        log "*** $OIDCP_FAIL: continuing without it ***"
        stop_oidcp
    fi
fi

ROUND=0
record() { sed "s/^{/{\"round\": $ROUND, /" >>"$RESULTS"; }

# token TARGET TOKEN_URL ID SECRET: one issuance measurement, after a CHECKPOINT.
token() {
    local target="$1" url="$2" id="$3" secret="$4"
    checkpoint
    TARGET="$target" TOKEN_URL="$url" INTROSPECT_URL="$url" CLIENT_ID="$id" \
        CLIENT_SECRET="$secret" OPS=token DURATION="$DURATION" CONCURRENCY="$CONCURRENCY" \
        LOAD_TOOL="$LOAD_TOOL" "$LOAD" >"$TMP/load.jsonl" || return 1
    grep '^{' "$TMP/load.jsonl" | record
}

# client VARIANT: "id secret" of a new client_credentials client with that token format.
client() {
    local args=(client create --name "bench-$1" --grant-type client_credentials --scope read --json)
    case "$1" in
        jwt-es256) args+=(--access-token-format jwt --access-token-signed-response-alg ES256) ;;
        jwt-eddsa) args+=(--access-token-format jwt --access-token-signed-response-alg EdDSA) ;;
        jwt-rs256) args+=(--access-token-format jwt --access-token-signed-response-alg RS256) ;;
    esac
    VALET_DATABASE_URL="$VALET_DB_URL" "$VALET" "${args[@]}" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["client_id"], d["client_secret"])'
}

measure_valet() {
    admin_sql "DROP DATABASE IF EXISTS $VALET_DB WITH (FORCE)"
    VALET_DATABASE_URL="$VALET_DB_URL" "$VALET" migrate >&2
    declare -A ids secrets
    local variant id secret
    for variant in "${VARIANTS[@]}"; do
        read -r id secret < <(client "$variant")
        ids[$variant]="$id"
        secrets[$variant]="$secret"
    done
    VALET_DATABASE_URL="$VALET_DB_URL" VALET_LISTEN="$VALET_ADDR" "$VALET" serve >>"$VALET_LOG" 2>&1 &
    VALET_PID=$!
    local deadline=$((SECONDS + 30))
    until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$VALET_URL/healthz" || true)" == 200 ]]; do
        ((SECONDS < deadline)) && kill -0 "$VALET_PID" 2>/dev/null || { log "error: valet serve did not start (see $VALET_LOG)"; return 1; }
        sleep 0.2
    done
    # Rotated each round: the database grows while it is measured.
    local n=${#VARIANTS[@]} i
    for ((i = 0; i < n; i++)); do
        variant="${VARIANTS[$(((i + ROUND) % n))]}"
        log "round $ROUND: valet-$variant"
        token "valet-$variant" "$VALET_URL/token" "${ids[$variant]}" "${secrets[$variant]}" || return 1
    done
    stop_valet
}

LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    measure_valet || { log "error: Valet could not be measured"; exit 1; }
    if [[ -z "$OIDCP_FAIL" ]]; then
        log "round $ROUND: oidcp-jwt"
        token oidcp-jwt "$OIDCP_URL/token" bench-client bench-secret ||
            OIDCP_FAIL="oauth-load.sh failed against node-oidc-provider"
    fi
done
stop_oidcp

python3 - "$RESULTS" "$DURATION" "$CONCURRENCY" "$LOAD_TOOL" "$COMMIT" "$(nproc)" "$LOADAVG" "$OIDCP_FAIL" <<'PY' | tee "$REPORT"
import json, statistics, sys
path, duration, conc, tool, commit, cores, loadavg, oidcp_fail = sys.argv[1:]
rows = {}
for line in open(path):
    if line.strip():
        r = json.loads(line)
        rows.setdefault(r["target"], []).append(r)
median = {t: statistics.median(r["rps"] for r in rs) for t, rs in rows.items()}
p99 = {t: statistics.median(r["p99_ms"] for r in rs) for t, rs in rows.items()}
print(f"JWT access-token issuance (client_credentials), {duration} per run, {conc} connections, "
      f"{tool}, {cores} cores, load before: {loadavg}; commit {commit}; median of "
      f"{max((len(v) for v in rows.values()), default=0)} rounds\n")
print("| target | tokens/s | p99 ms | rounds (tokens/s) |\n|---|---|---|---|")
for t in ["valet-opaque", "valet-jwt-es256", "valet-jwt-eddsa", "valet-jwt-rs256", "oidcp-jwt"]:
    if t in rows:
        every = ", ".join(f"{r['rps']:.0f}" for r in rows[t])
        print(f"| {t} | {median[t]:.0f} | {p99[t]:.1f} | {every} |")
print()
def ratio(a, b, goal, what):
    if a in median and b in median and median[b] > 0:
        r = median[a] / median[b]
        verdict = "met" if r >= goal else "missed"
        print(f"- {what}: {r:.2f} (goal ≥ {goal:g}: {verdict})")
    else:
        print(f"- {what}: not measured")
ratio("valet-jwt-es256", "valet-opaque", 0.8, "ES256 JWT / opaque")
ratio("valet-jwt-eddsa", "valet-opaque", 0.8, "EdDSA JWT / opaque")
ratio("valet-jwt-rs256", "valet-opaque", 0, "RS256 JWT / opaque")
ratio("valet-jwt-rs256", "oidcp-jwt", 2.0, "Valet RS256 JWT / node-oidc-provider RS256 JWT")
if oidcp_fail:
    print(f"\nnode-oidc-provider: {oidcp_fail}")
PY
