#!/usr/bin/env bash
# Schema-driven fuzzing of the admin API: schemathesis (PyPI, pinned) reads
# /admin/v1/openapi.json from a Valet started here on a database of its own, and sends
# generated requests (examples, coverage, fuzzing and stateful phases) with an admin
# token. Fails on any 5xx and on any response the document does not describe.
# Uses target/debug/valet (`make test` builds it); EXAMPLES sets examples per operation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCHEMATHESIS_VERSION=4.32.5
EXAMPLES="${EXAMPLES:-100}"
VALET="${VALET:-target/debug/valet}"
SERVER="${VALET_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}"
DB="valet_t_fuzz_$$"
PORT="${PORT:-18765}"
WORK="$(mktemp -d)"

VENV=.build/schemathesis
if [[ ! -x "$VENV/bin/st" ]] || ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cleanup() {
  [[ -n "${SERVE_PID:-}" ]] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null || true
  psql -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

export VALET_DATABASE_URL="$SERVER/$DB"
export VALET_KEY_ENCRYPTION_KEY_FILE="$WORK/kek"
"$VALET" migrate >/dev/null
"$VALET" serve --listen "127.0.0.1:$PORT" --nats-url "${VALET_NATS_URL:-nats://127.0.0.1:4222}" \
  >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do
  grep -q "valet listening" "$WORK/serve.log" && break
  kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
  sleep 0.1
done
BASE="http://127.0.0.1:$PORT"

json() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
ADMIN=$("$VALET" client create --name fuzz-admin --grant-type client_credentials --scope valet:admin --json)
ID=$(json client_id <<<"$ADMIN")
SECRET=$(json client_secret <<<"$ADMIN")
# Something to list: a user, a client with grants.
printf 'a long passphrase\n' | "$VALET" user create --username alice --password-stdin >/dev/null
sleep 1.2 # the server's client cache
TOKEN=$(curl -sf -u "$ID:$SECRET" -d grant_type=client_credentials -d scope=valet:admin "$BASE/token" | json access_token)

status=0
# From the scratch directory: schemathesis keeps a cache where it runs.
(cd "$WORK" && "$OLDPWD/$VENV/bin/st" run "$BASE/admin/v1/openapi.json" --url "$BASE" \
  -H "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection \
  --max-examples "$EXAMPLES" --workers 2 --seed 20261207 --no-color \
  --report junit --report-junit-path "$WORK/junit.xml") >"$WORK/st.log" 2>&1 || status=$?
# The failures in full, else the summary.
if [[ "${status:-0}" -ne 0 ]]; then
  sed -n '/^=* FAILURES =*$/,$p' "$WORK/st.log"
else
  sed -n '/^=* SUMMARY =*$/,$p' "$WORK/st.log"
fi
# The counts, for the record.
python3 - "$WORK/junit.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
tests = sum(int(s.get("tests", 0)) for s in suites)
failures = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
print(f"admin-fuzz: {tests} operations tested, {failures} failing")
PY
exit "${status:-0}"
