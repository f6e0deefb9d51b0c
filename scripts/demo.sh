#!/usr/bin/env bash
# `make demo`: Valet (http://127.0.0.1:8080), the designs service (:8081) and Printshop
# (:8082) on a fresh database `valet_demo`, with a user to sign in as. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/services.sh
cargo build --release -q -p valet-cli -p printshop
cargo build --release -q -p valet-resource --example designs

export VALET_DATABASE_URL="${VALET_DEMO_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/valet_demo}"
mkdir -p .build/demo
# A key-encryption key of the demo's own, beside its logs.
export VALET_KEY_ENCRYPTION_KEY_FILE="$PWD/.build/demo/key-encryption-key"
V=target/release/valet
admin_url="${VALET_DATABASE_URL%/*}/postgres"
psql -q "$admin_url" -c "DROP DATABASE IF EXISTS valet_demo WITH (FORCE)" 2>/dev/null || true
$V migrate >/dev/null

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; }
trap stop EXIT INT TERM

VALET_LISTEN=127.0.0.1:8080 $V serve >.build/demo/valet.log 2>&1 &
pids+=($!)
until curl -fsS http://127.0.0.1:8080/readyz >/dev/null 2>&1; do sleep 0.2; done

password='a long passphrase'
printf '%s\n' "$password" | $V user create --username alice --password-stdin \
  --name "Alice Liddell" --email alice@example.com --email-verified true >/dev/null
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
shop=$($V client create --name Printshop --redirect-uri http://127.0.0.1:8082/callback \
  --post-logout-redirect-uri http://127.0.0.1:8082/ \
  --backchannel-logout-uri http://127.0.0.1:8082/backchannel-logout --backchannel-logout-session-required \
  --scope openid --scope profile --scope email --scope designs:read --json)
designs=$($V client create --name designs --scope introspect --json)

VALET_INTROSPECT_URL=http://127.0.0.1:8080/introspect \
  DESIGNS_CLIENT_ID=$(field client_id <<<"$designs") \
  DESIGNS_CLIENT_SECRET=$(field client_secret <<<"$designs") \
  DESIGNS_LISTEN=127.0.0.1:8081 \
  target/release/examples/designs >.build/demo/designs.log 2>&1 &
pids+=($!)
PRINTSHOP_ISSUER=http://127.0.0.1:8080 \
  PRINTSHOP_CLIENT_ID=$(field client_id <<<"$shop") \
  PRINTSHOP_CLIENT_SECRET=$(field client_secret <<<"$shop") \
  PRINTSHOP_LISTEN=127.0.0.1:8082 DESIGNS_URL=http://127.0.0.1:8081 \
  target/release/printshop >.build/demo/printshop.log 2>&1 &
pids+=($!)
until curl -fsS http://127.0.0.1:8082/healthz >/dev/null 2>&1; do sleep 0.2; done

cat <<MSG

  Printshop:  http://127.0.0.1:8082/   (sign in as alice, password: $password)
  Valet:      http://127.0.0.1:8080/.well-known/openid-configuration
  designs:    http://127.0.0.1:8081/readyz
  Logs:       .build/demo/*.log        Ctrl-C stops all three.

MSG
wait
