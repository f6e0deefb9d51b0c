#!/usr/bin/env bash
# What the browser-driven tests need: Debian's chromium, Node.js with npm, and the npm
# packages of tests/js (openid-client, playwright-core) at their locked versions.
# Installs what is missing (apt needs root, as on CI); idempotent and quiet when done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

apt_install() {
  if [[ $EUID -ne 0 ]]; then
    echo "browser-tests: $* missing; install it (apt-get install -y $*) or run as root" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}

command -v chromium >/dev/null 2>&1 || apt_install chromium
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || apt_install nodejs npm
# Reinstall when the lock file is newer than what is installed.
if [[ ! -d tests/js/node_modules || tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]]; then
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
fi
