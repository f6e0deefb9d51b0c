#!/usr/bin/env bash
# Admin API list benchmark: a database seeded with CLIENTS service clients (default
# 10,000) and about GRANTS grants (default 100,000; one in ten a user's), then pages of
# GET /admin/v1/clients and /admin/v1/grants (all, per client, per user) at the start of
# each list and deep in it (keyset paging: a cursor near the end), SAMPLES requests each
# on one keep-alive connection. Prints p50/p99 per query (goal: p99 < 50 ms).
#
# Environment: CLIENTS, GRANTS, SAMPLES (default 200), LIMIT (page size, default 50),
# VALET_BENCH_SERVER (PostgreSQL server URL); the database valet_admin_bench on it is
# dropped and recreated. VALET_BIN: an already-built valet instead of building one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLIENTS="${CLIENTS:-10000}"
GRANTS="${GRANTS:-100000}"
SAMPLES="${SAMPLES:-200}"
LIMIT="${LIMIT:-50}"
SERVER="${VALET_BENCH_SERVER:-postgres://postgres@127.0.0.1:5432}"
PG_ADMIN_URL="$SERVER/postgres"
export VALET_DATABASE_URL="$SERVER/valet_admin_bench"
PORT="${PORT:-18766}"
OUT=.build/bench
mkdir -p "$OUT"
log() { printf '[bench-admin] %s\n' "$*" >&2; }
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
VALET_PID=""
trap stop_valet EXIT

if [[ -n "${VALET_BIN:-}" ]]; then
    VALET="$VALET_BIN"
else
    cargo build --release -p valet-cli >&2
    VALET=target/release/valet
fi
admin_sql "DROP DATABASE IF EXISTS valet_admin_bench WITH (FORCE)"
"$VALET" migrate >&2
# Events per grant in the seed: 1 for a service grant, 3 for a user's (two refreshes),
# one more for one in twenty (revoked): about 1.25 events per grant.
EVENTS=$((GRANTS * 125 / 100))
log "seeding $CLIENTS clients and about $GRANTS grants ($EVENTS events)"
"$VALET" seed --events "$EVENTS" --clients "$CLIENTS" 2>/dev/null >&2
psql -X -q "$VALET_DATABASE_URL" -c "VACUUM ANALYZE" >&2
psql -X -At "$VALET_DATABASE_URL" -c \
  "SELECT (SELECT count(*) FROM clients), (SELECT count(*) FROM grants)" | tr '|' ' ' \
  | { read -r c g; log "seeded: $c clients, $g grants"; }

export VALET_KEY_ENCRYPTION_KEY_FILE="$OUT/admin-bench-kek"
"$VALET" serve --listen "127.0.0.1:$PORT" >"$OUT/admin-serve.log" 2>&1 &
VALET_PID=$!
for _ in $(seq 100); do
    grep -q "valet listening" "$OUT/admin-serve.log" && break
    sleep 0.1
done
ADMIN=$("$VALET" client create --name bench-admin --grant-type client_credentials --scope valet:admin --json)
json() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
ID=$(json client_id <<<"$ADMIN")
SECRET=$(json client_secret <<<"$ADMIN")
sleep 1.2
TOKEN=$(curl -sf -u "$ID:$SECRET" -d grant_type=client_credentials -d scope=valet:admin \
  "http://127.0.0.1:$PORT/token" | json access_token)
# Keys deep in each list, to start a page near its end (the cursor is base64url of the key).
DEEP_CLIENT=$(psql -X -At "$VALET_DATABASE_URL" -c \
  "SELECT client_id FROM clients ORDER BY client_id OFFSET $((CLIENTS - LIMIT - 10)) LIMIT 1")
DEEP_GRANT=$(psql -X -At "$VALET_DATABASE_URL" -c \
  "SELECT grant_id FROM grants ORDER BY grant_id OFFSET $((GRANTS * 95 / 100)) LIMIT 1")
BUSY_CLIENT=$(psql -X -At "$VALET_DATABASE_URL" -c \
  "SELECT client_id FROM grants GROUP BY client_id ORDER BY count(*) DESC LIMIT 1")
USER=$(psql -X -At "$VALET_DATABASE_URL" -c "SELECT username FROM users LIMIT 1")
DEEP_USER_GRANT=$(psql -X -At "$VALET_DATABASE_URL" -c \
  "SELECT grant_id FROM grants WHERE username = '$USER' ORDER BY grant_id DESC OFFSET $((LIMIT + 10)) LIMIT 1")
DEEP_BUSY_GRANT=$(psql -X -At "$VALET_DATABASE_URL" -c \
  "SELECT grant_id FROM grants WHERE client_id = '$BUSY_CLIENT' ORDER BY grant_id DESC OFFSET $((LIMIT + 10)) LIMIT 1")

python3 - "$PORT" "$TOKEN" "$SAMPLES" "$LIMIT" "$DEEP_CLIENT" "$DEEP_GRANT" "$BUSY_CLIENT" \
  "$USER" "$DEEP_USER_GRANT" "$DEEP_BUSY_GRANT" <<'PY' | tee "$OUT/admin-lists.txt"
import base64, http.client, json, sys, time
port, token, samples, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
deep_client, deep_grant, busy, user, deep_user_grant, deep_busy_grant = sys.argv[5:11]
cursor = lambda key: base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
queries = [
    ("clients, first page", f"/admin/v1/clients?limit={limit}"),
    ("clients, deep page", f"/admin/v1/clients?limit={limit}&after={cursor(deep_client)}"),
    ("grants, first page", f"/admin/v1/grants?limit={limit}"),
    ("grants, deep page", f"/admin/v1/grants?limit={limit}&after={cursor(deep_grant)}"),
    ("grants of a client, first page", f"/admin/v1/grants?client_id={busy}&limit={limit}"),
    ("grants of a client, deep page", f"/admin/v1/grants?client_id={busy}&limit={limit}&after={cursor(deep_busy_grant)}"),
    ("grants of a user, first page", f"/admin/v1/grants?username={user}&limit={limit}"),
    ("grants of a user, deep page", f"/admin/v1/grants?username={user}&limit={limit}&after={cursor(deep_user_grant)}"),
    ("active grants of a user, deep page", f"/admin/v1/grants?username={user}&status=active&limit={limit}&after={cursor(deep_user_grant)}"),
]
conn = http.client.HTTPConnection("127.0.0.1", int(port))
headers = {"Authorization": f"Bearer {token}"}
print(f"{'query':<38} {'items':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
worst = 0.0
for name, path in queries:
    times, items = [], 0
    for i in range(samples + 10):
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        elapsed = (time.perf_counter() - start) * 1000
        if resp.status != 200:
            sys.exit(f"{name}: {resp.status} {body[:200]!r}")
        if i >= 10:  # warm-up
            times.append(elapsed)
        items = len(json.loads(body)["items"])
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    worst = max(worst, p(0.99))
    print(f"{name:<38} {items:>5} {p(0.5):>8.2f} {p(0.99):>8.2f} {times[-1]:>8.2f}")
print(f"worst p99: {worst:.2f} ms (goal < 50 ms)")
PY
