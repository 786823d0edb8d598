#!/usr/bin/env bash
# `make test`: builds the service binaries once, makes sure NATS and PostgreSQL are there,
# and runs every test (unit, flows on SQLite and on PostgreSQL, contract) with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_nats
ensure_postgres
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"

# The end-to-end tests run these binaries as separate processes.
cargo build --workspace --bins
bash scripts/test-contract.sh
bash scripts/test-sdk-python.sh
bash scripts/test-sdk-typescript.sh
bash scripts/test-community.sh
bash scripts/check-manifests.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  say "cargo-nextest not found; falling back to cargo test (install: cargo install cargo-nextest --locked)"
  cargo test --workspace --no-fail-fast
fi
