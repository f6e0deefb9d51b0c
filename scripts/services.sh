#!/usr/bin/env bash
# Make sure the local services Valet needs for development, tests and CI run:
#   - PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth), plus pgbench;
#   - NATS with JetStream on 127.0.0.1:4222.
# Idempotent: when both already run it does nothing and prints nothing.
# Missing pieces are installed from Debian's packages (needs root, or sudo -n).
#
# Environment:
#   VALET_NATS_CONF  nats-server config to start NATS with
#                    (default: nats/nats-server.conf in this repo)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NATS_CONF="${VALET_NATS_CONF:-$ROOT/nats/nats-server.conf}"
case "$NATS_CONF" in
  /*) ;;
  *) NATS_CONF="$PWD/$NATS_CONF" ;; # relative to the caller's directory
esac
# nats-server resolves relative paths in its config (the JetStream store_dir)
# against its working directory: everything below runs from the repo root.
cd "$ROOT"

PG_HOST=127.0.0.1
PG_PORT=5432
NATS_HOST=127.0.0.1
NATS_PORT=4222
BUILD_DIR="$ROOT/.build"
NATS_DIR="$BUILD_DIR/nats"

export DEBIAN_FRONTEND=noninteractive

log() { echo "[setup] $*"; }
die() {
  echo "[setup] error: $*" >&2
  exit 1
}

# Run a command as root: directly when we are root, else through sudo -n
# (never prompts: CI has no stdin).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root to run: $*"
  fi
}

APT_UPDATED=0
apt_install() {
  mkdir -p "$BUILD_DIR"
  local apt_log="$BUILD_DIR/apt.log"
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update >"$apt_log" 2>&1 || {
      tail -n 20 "$apt_log" >&2
      die "apt-get update failed (full log: $apt_log)"
    }
    APT_UPDATED=1
  fi
  log "installing $* (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" \
    </dev/null >>"$apt_log" 2>&1 || {
    tail -n 30 "$apt_log" >&2
    die "apt-get install $* failed (full log: $apt_log)"
  }
}

# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------

pg_ready() {
  command -v pg_isready >/dev/null 2>&1 &&
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1
}

# Highest major version that has a cluster "main" (/etc/postgresql/<ver>/main).
pg_cluster_version() {
  local d
  for d in /etc/postgresql/*/main; do
    if [ -d "$d" ]; then basename "$(dirname "$d")"; fi
  done | sort -V | tail -n 1
}

# Highest major version whose server binaries are installed.
pg_server_version() {
  local b
  for b in /usr/lib/postgresql/*/bin/postgres; do
    if [ -x "$b" ]; then basename "$(dirname "$(dirname "$b")")"; fi
  done | sort -V | tail -n 1
}

# A fresh Debian cluster authenticates TCP connections with scram-sha-256 and
# local ones with peer. This is a local development/test database: let user
# postgres in over loopback without a password, as the project's tests and
# the default VALET_DATABASE_URL expect. The lines go at the top of
# pg_hba.conf (first match wins) and are added only once.
pg_trust_loopback() {
  local hba="$1" addr add=""
  for addr in 127.0.0.1/32 ::1/128; do
    if ! grep -Eq "^[[:space:]]*host[[:space:]]+all[[:space:]]+(all|postgres)[[:space:]]+${addr}[[:space:]]+trust([[:space:]]|$)" "$hba"; then
      add+="host    all    postgres    ${addr}    trust"$'\n'
    fi
  done
  [ -n "$add" ] || return 0
  log "pg_hba.conf: trust user postgres on loopback (local dev/test database)"
  local tmp
  tmp="$(mktemp)"
  {
    echo "# Added by Valet's scripts/services.sh: local development/test database,"
    echo "# user postgres may connect over loopback without a password."
    printf '%s' "$add"
    cat "$hba"
  } >"$tmp"
  # Rewrite in place so that owner and mode of pg_hba.conf stay as they are.
  as_root tee "$hba" <"$tmp" >/dev/null
  rm -f "$tmp"
}

ensure_postgres() {
  if pg_ready; then
    :
  else
    local ver
    ver="$(pg_cluster_version)"
    if [ -z "$ver" ]; then
      # Not installed (or installed without a cluster).
      if [ -z "$(pg_server_version)" ]; then
        apt_install postgresql
      fi
      ver="$(pg_server_version)"
      [ -n "$ver" ] || die "PostgreSQL server binaries not found after installing"
      if [ ! -d "/etc/postgresql/$ver/main" ]; then
        log "creating PostgreSQL $ver cluster main"
        as_root pg_createcluster -p "$PG_PORT" "$ver" main >/dev/null
      fi
      pg_trust_loopback "/etc/postgresql/$ver/main/pg_hba.conf"
    fi

    if as_root pg_ctlcluster "$ver" main status >/dev/null 2>&1; then
      # Running (e.g. started by the package's install script) but not ready
      # on 127.0.0.1:5432 yet: reload so that pg_hba.conf changes apply.
      as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload >/dev/null 2>&1 || true
    else
      log "starting PostgreSQL $ver main"
      as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start ||
        die "could not start PostgreSQL (see /var/log/postgresql/postgresql-$ver-main.log)"
    fi

    local i
    for i in $(seq 1 30); do
      pg_ready && break
      [ "$i" -lt 30 ] || die "PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT after 30 s (see /var/log/postgresql/postgresql-$ver-main.log)"
      sleep 1
    done
  fi

  # pgbench (used by `make bench`). On Debian 12 /usr/bin/pgbench is only the
  # pg_wrapper of postgresql-client-common; the program itself ships in the
  # server package postgresql-<ver>, which postgresql-contrib depends on.
  if ! pgbench --version >/dev/null 2>&1; then
    apt_install postgresql-contrib
  fi
}

# --------------------------------------------------------------------------
# NATS with JetStream
# --------------------------------------------------------------------------

nats_listening() {
  # shellcheck disable=SC2016 # $0 and $1 are expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$NATS_HOST" "$NATS_PORT" 2>/dev/null
}

# Speak just enough of the NATS protocol to ask JetStream for the account
# info ($JS.API.INFO) and print the server's reply lines (3 s at most).
nats_js_probe() {
  exec 3<>"/dev/tcp/$NATS_HOST/$NATS_PORT" || return 1
  printf '%s\r\n' \
    'CONNECT {"verbose":false,"pedantic":false,"name":"valet-setup"}' \
    'SUB _INBOX.valet_setup 1' \
    "PUB \$JS.API.INFO _INBOX.valet_setup 0" \
    '' \
    'PING' >&3
  local line deadline=$((SECONDS + 3))
  while [ "$SECONDS" -lt "$deadline" ]; do
    # read fails with > 128 on a timeout (keep waiting), else on EOF (stop).
    IFS= read -r -t 1 line <&3 || { [ $? -gt 128 ] && continue; break; }
    printf '%s\n' "$line"
    case "$line" in
      *account_info_response* | -ERR*) break ;;
      INFO*) [[ "$line" == *'"jetstream":true'* ]] || break ;; # no JetStream
    esac
  done
  exec 3<&-
}

nats_jetstream_ok() {
  local reply
  reply="$(nats_js_probe 2>/dev/null)" || true
  case "$reply" in
    *'"type":"io.nats.jetstream.api.v1.account_info_response"'*)
      case "$reply" in
        *'"error"'*) return 1 ;;
        *) return 0 ;;
      esac
      ;;
  esac
  return 1
}

ensure_nats() {
  if nats_listening; then
    nats_jetstream_ok && return 0
    die "something listens on $NATS_HOST:$NATS_PORT but it is not a NATS server with JetStream enabled; stop it, or restart it with JetStream (nats-server -js, or -c nats/nats-server.conf)"
  fi

  if ! command -v nats-server >/dev/null 2>&1; then
    apt_install nats-server
  fi
  local bin
  bin="$(command -v nats-server)" || die "nats-server not found after installing"
  [ -f "$NATS_CONF" ] || die "NATS config not found: $NATS_CONF"
  command -v start-stop-daemon >/dev/null 2>&1 ||
    PATH="$PATH:/usr/sbin:/sbin"

  mkdir -p "$NATS_DIR"
  # Config errors go to stderr, which the daemonised server has not got.
  "$bin" -c "$NATS_CONF" -t >/dev/null 2>"$NATS_DIR/conf-test.log" || {
    cat "$NATS_DIR/conf-test.log" >&2
    die "invalid NATS config: $NATS_CONF"
  }
  log "starting nats-server -c $NATS_CONF (log: .build/nats/nats.log)"
  echo "=== $(date -u +%FT%TZ) started by scripts/services.sh" >>"$NATS_DIR/nats.log"
  start-stop-daemon --start --quiet --oknodo --background \
    --make-pidfile --pidfile "$NATS_DIR/nats.pid" --chdir "$ROOT" \
    --exec "$bin" -- -c "$NATS_CONF" -l "$NATS_DIR/nats.log" </dev/null

  local i pid
  for i in $(seq 1 40); do # 40 x 0.5 s = 20 s
    nats_listening && break
    pid="$(cat "$NATS_DIR/nats.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$NATS_DIR/nats.log" >&2 || true
      die "nats-server exited right after starting (log: $NATS_DIR/nats.log)"
    fi
    [ "$i" -lt 40 ] || {
      tail -n 20 "$NATS_DIR/nats.log" >&2 || true
      die "nats-server is not accepting connections on $NATS_HOST:$NATS_PORT after 20 s (log: $NATS_DIR/nats.log)"
    }
    sleep 0.5
  done

  for i in 1 2 3 4 5; do
    nats_jetstream_ok && return 0
    sleep 1
  done
  die "nats-server runs on $NATS_HOST:$NATS_PORT but JetStream does not answer (config: $NATS_CONF, log: $NATS_DIR/nats.log)"
}

main() {
  ensure_postgres
  ensure_nats
}

# Run unless sourced (sourcing lets one try single functions).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
