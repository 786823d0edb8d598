#!/usr/bin/env bash
# `make test`: builds the service binaries once, makes sure NATS and PostgreSQL are there,
# then runs every part of the suite: the contract checks, the Python and TypeScript SDKs,
# the community service (Python), the manifests, and the Rust tests (unit, flows on SQLite
# and on PostgreSQL) with nextest. Every part runs even when an earlier one failed, so one
# run reports them all; the exit status fails if any did.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_nats
ensure_postgres
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"

# The end-to-end tests (Rust, Python and TypeScript) run these binaries as separate processes.
cargo build --workspace --bins

failed=()
part() {
  say "== $*"
  "$@" || failed+=("$*")
}
part bash scripts/test-contract.sh
part bash scripts/test-sdk-python.sh
part bash scripts/test-sdk-typescript.sh
part bash scripts/test-community.sh
part bash scripts/check-manifests.sh
if cargo nextest --version >/dev/null 2>&1; then
  part cargo nextest run --workspace --no-fail-fast
else
  say "cargo-nextest not found; falling back to cargo test (install: cargo install cargo-nextest --locked)"
  part cargo test --workspace --no-fail-fast
fi

if [ ${#failed[@]} -gt 0 ]; then
  say "failed: ${failed[*]}"
  exit 1
fi
say "every part passed"
