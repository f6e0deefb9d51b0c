#!/usr/bin/env bash
# Starts Valet, designs and printshop for screenshots (ports 8090-8092).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
V=target/debug/valet
export VALET_DATABASE_URL=postgres://postgres@127.0.0.1:5432/valet_shots
export VALET_KEY_ENCRYPTION_KEY=74657374206b65792d656e6372797074696f6e206b6579206f662076616c6574
psql -q postgres://postgres@127.0.0.1:5432/postgres -c "DROP DATABASE IF EXISTS valet_shots WITH (FORCE)"
$V migrate >/dev/null
VALET_LISTEN=127.0.0.1:8090 $V serve > /tmp/shots-valet.log 2>&1 &
sleep 3
printf '%s\n' 'a long passphrase' | $V user create --username alice --password-stdin --name "Alice Liddell" --email alice@example.com --email-verified true >/dev/null
printf '%s\n' 'a long passphrase' | $V user create --username alice.liddell --password-stdin --name "Alice Liddell" --email alice@example.com --email-verified true >/dev/null
shop=$($V client create --name Printshop --redirect-uri http://127.0.0.1:8092/callback --post-logout-redirect-uri http://127.0.0.1:8092/ --scope openid --scope profile --scope email --scope designs:read --json)
des=$($V client create --name designs --scope introspect --json)
j() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
VALET_INTROSPECT_URL=http://127.0.0.1:8090/introspect DESIGNS_CLIENT_ID=$(j "$des" client_id) DESIGNS_CLIENT_SECRET=$(j "$des" client_secret) DESIGNS_LISTEN=127.0.0.1:8091 target/debug/examples/designs > /tmp/shots-designs.log 2>&1 &
sleep 2
PRINTSHOP_ISSUER=http://127.0.0.1:8090 PRINTSHOP_CLIENT_ID=$(j "$shop" client_id) PRINTSHOP_CLIENT_SECRET=$(j "$shop" client_secret) PRINTSHOP_LISTEN=127.0.0.1:8092 DESIGNS_URL=http://127.0.0.1:8091 target/debug/printshop > /tmp/shots-shop.log 2>&1 &
sleep 2
echo started
