#!/usr/bin/env bash
# HTTPS against plain HTTP, side by side: the same valet serve (release) on a fresh
# database, once with --tls-cert/--tls-key (a certificate of a CA made here with openssl)
# and once without, alternating for ROUNDS rounds; each time /token (client_credentials)
# and /introspect under ../shared/bench/oauth-load.sh with wrk (keep-alive, CONCURRENCY
# connections, DURATION each). Then the rate of new connections: wrk with
# `Connection: close` on /healthz, so every request is a new TCP connection (and, over
# HTTPS, a full TLS 1.3 handshake). Goal: HTTPS costs at most 15% of the plain rate.
# valet's CPU time per request is measured around each keep-alive run (from /proc), so
# the server's share of the cost shows apart from wrk's own TLS on the same cores.
#
# Environment: ROUNDS (default 2), DURATION (10s), CONCURRENCY (32), PORT (18767),
# VALET_BIN (an already-built valet), VALET_BENCH_SERVER (PostgreSQL server URL; the
# database valet_tls_bench on it is dropped and recreated), SHARED_DIR (../shared).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-10s}"
CONCURRENCY="${CONCURRENCY:-32}"
PORT="${PORT:-18767}"
SERVER="${VALET_BENCH_SERVER:-postgres://postgres@127.0.0.1:5432}"
SHARED_DIR="${SHARED_DIR:-$(cd .. && pwd)/shared}"
PG_ADMIN_URL="$SERVER/postgres"
export VALET_DATABASE_URL="$SERVER/valet_tls_bench"
OUT=.build/bench/tls
mkdir -p "$OUT"
log() { printf '[bench-tls] %s\n' "$*" >&2; }
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
VALET_PID=""
trap stop_valet EXIT

command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
if [[ -n "${VALET_BIN:-}" ]]; then
    VALET="$VALET_BIN"
else
    cargo build --release -p valet-cli >&2
    VALET=target/release/valet
fi

# A CA and a leaf for 127.0.0.1 (P-256, as most certificates issued today).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=Valet bench CA" -keyout "$OUT/ca.key" -out "$OUT/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$OUT/key.pem" -out "$OUT/leaf.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$OUT/ext.cnf"
openssl x509 -req -in "$OUT/leaf.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" \
    -CAcreateserial -days 2 -extfile "$OUT/ext.cnf" -out "$OUT/cert.pem" 2>/dev/null
export CURL_CA_BUNDLE="$PWD/$OUT/ca.pem"
export VALET_KEY_ENCRYPTION_KEY_FILE="$PWD/$OUT/kek"

admin_sql "DROP DATABASE IF EXISTS valet_tls_bench WITH (FORCE)"
"$VALET" migrate >&2
CLIENT=$("$VALET" client create --name bench --grant-type client_credentials --scope read --json)
json() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
CLIENT_ID=$(json client_id <<<"$CLIENT")
CLIENT_SECRET=$(json client_secret <<<"$CLIENT")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$VALET_PID/stat"; }

start() { # MODE: plain or tls
    local args=(serve --listen "127.0.0.1:$PORT")
    [[ "$1" == tls ]] && args+=(--tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem")
    "$VALET" "${args[@]}" >"$OUT/serve-$1.log" 2>&1 &
    VALET_PID=$!
    for _ in $(seq 100); do
        grep -q "valet listening" "$OUT/serve-$1.log" && return 0
        sleep 0.1
    done
    cat "$OUT/serve-$1.log" >&2
    return 1
}

: >"$OUT/results.jsonl"
for round in $(seq "$ROUNDS"); do
    for mode in plain tls; do
        scheme=http; [[ $mode == tls ]] && scheme=https
        base="$scheme://127.0.0.1:$PORT"
        start "$mode"
        log "round $round: $mode"
        for op in token introspect; do
            # valet's own CPU time (user + system, in clock ticks) around each
            # measurement: what TLS costs the server, apart from wrk on the same cores.
            before=$(cpu_ticks)
            line=$(TARGET="$mode" TOKEN_URL="$base/token" INTROSPECT_URL="$base/introspect" \
                CLIENT_ID="$CLIENT_ID" CLIENT_SECRET="$CLIENT_SECRET" DURATION="$DURATION" \
                CONCURRENCY="$CONCURRENCY" LOAD_TOOL=wrk PAUSE=1 OPS="$op" \
                bash "$SHARED_DIR/bench/oauth-load.sh")
            ticks=$(( $(cpu_ticks) - before ))
            python3 -c '
import json, sys
row = json.loads(sys.argv[1])
row["server_cpu_us_per_req"] = int(sys.argv[2]) * 1e6 / int(sys.argv[3]) / row["requests"]
print(json.dumps(row))' "$line" "$ticks" "$(getconf CLK_TCK)" >>"$OUT/results.jsonl"
        done
        sleep 1
        rps=$(wrk -t2 -c"$CONCURRENCY" -d"$DURATION" -H "Connection: close" "$base/healthz" \
            | awk '/Requests\/sec/ {print $2}')
        printf '{"target":"%s","op":"new_connections","rps":%s}\n' "$mode" "$rps" >>"$OUT/results.jsonl"
        stop_valet
    done
done

python3 - "$OUT/results.jsonl" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ops = ["token_client_credentials", "introspect", "new_connections"]
print(f"{'op':<26} {'plain /s':>10} {'https /s':>10} {'https/plain':>12} {'server CPU us/req plain, https':>32}")
for op in ops:
    def median(t, key):
        values = [r[key] for r in rows if r["op"] == op and r["target"] == t and key in r]
        return statistics.median(values) if values else None
    plain, tls = median("plain", "rps"), median("tls", "rps")
    cpu = ""
    if median("plain", "server_cpu_us_per_req") is not None:
        cpu_plain, cpu_tls = median("plain", "server_cpu_us_per_req"), median("tls", "server_cpu_us_per_req")
        cpu = f"{cpu_plain:.0f}, {cpu_tls:.0f} ({cpu_tls / cpu_plain:.2f}x)"
    print(f"{op:<26} {plain:>10.0f} {tls:>10.0f} {tls / plain:>11.2f}x {cpu:>32}")
PY
