# Valet — developer tasks. `make` alone lists them.
# Services (PostgreSQL, NATS with JetStream) are set up by scripts/services.sh,
# which installs them from Debian's packages when missing.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Database of `make setup` / `make run` (valet migrate creates it if missing).
VALET_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/valet
# Server URL without a database: tests create (and drop) their own databases.
VALET_TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432
export VALET_TEST_DATABASE_URL

VALET := target/release/valet

.PHONY: help setup run demo test fuzz lint bench clean

help:
	@echo "Valet make targets:"
	@echo "  make run     setup, then serve on http://127.0.0.1:8080 (valet serve)"
	@echo "  make setup   start/install PostgreSQL and NATS, build target/release/valet, migrate"
	@echo "  make demo    Valet, the designs service and Printshop to click through (:8080-8082)"
	@echo "  make test    start services, run the workspace tests (nextest if installed)"
	@echo "  make fuzz    schemathesis against the admin API's OpenAPI document"
	@echo "  make lint    cargo fmt --check and clippy -D warnings"
	@echo "  make bench   start services, run the benchmarks"
	@echo "  make clean   cargo clean, stop a NATS started by setup, remove .build/"
	@echo "  make help    this list"
	@echo "Variables: VALET_DATABASE_URL=$(VALET_DATABASE_URL)"
	@echo "           VALET_TEST_DATABASE_URL=$(VALET_TEST_DATABASE_URL)"

setup:
	bash scripts/services.sh
	cargo build --release -p valet-cli
	VALET_DATABASE_URL='$(VALET_DATABASE_URL)' $(VALET) migrate

run: setup
	VALET_DATABASE_URL='$(VALET_DATABASE_URL)' exec $(VALET) serve

demo:
	bash scripts/demo.sh

test:
	bash scripts/services.sh
	@# Databases left behind by interrupted test runs (tests drop their own on success).
	@for db in $$(psql '$(VALET_TEST_DATABASE_URL)/postgres' -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'valet\_t\_%'"); do \
	  psql -q '$(VALET_TEST_DATABASE_URL)/postgres' -c "DROP DATABASE IF EXISTS \"$$db\" WITH (FORCE)"; \
	done
	@# tests/tests/oidc_e2e.rs drives openid-client in chromium.
	bash scripts/browser-tests.sh
	@# The black-box tests spawn target/debug/valet, printshop and the designs example.
	cargo build -p valet-cli -p printshop
	cargo build -p valet-resource --example designs
	@if cargo nextest --version >/dev/null 2>&1; then \
	  echo "cargo nextest run --workspace --no-fail-fast"; \
	  cargo nextest run --workspace --no-fail-fast; \
	else \
	  echo "cargo-nextest not installed: cargo test --workspace --no-fail-fast"; \
	  cargo test --workspace --no-fail-fast; \
	fi

fuzz:
	bash scripts/services.sh
	cargo build -p valet-cli
	bash scripts/admin-fuzz.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Later issues add more benches here.
bench:
	bash scripts/services.sh
	cargo bench -p valet-store --bench append
	bash scripts/bench-oauth.sh
	bash scripts/bench-replay.sh
	cargo build --release -p valet-cli && cargo bench -p valet-resource --bench propagation
	VALET_BIN=$(CURDIR)/target/release/valet cargo bench -p valet-tests --bench code_flow
	VALET_BIN=$(CURDIR)/target/release/valet bash scripts/bench-jwt.sh
	cargo bench -p valet-tests --bench jwt_verify
	VALET_BIN=$(CURDIR)/target/release/valet cargo bench -p valet-tests --bench logout_lag
	VALET_BIN=$(CURDIR)/target/release/valet bash scripts/bench-admin.sh
	VALET_BIN=$(CURDIR)/target/release/valet bash scripts/bench-tls.sh

# A nats-server started by scripts/services.sh keeps its JetStream store in
# .build/nats: stop it (and only it, by its pid file) before removing .build.
clean:
	cargo clean
	@if [ -f .build/nats/nats.pid ]; then \
	  PATH="$$PATH:/usr/sbin:/sbin" start-stop-daemon --stop --quiet --oknodo --retry 10 \
	    --pidfile .build/nats/nats.pid --exec "$$(command -v nats-server)"; \
	fi
	rm -rf .build
