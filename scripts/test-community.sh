#!/usr/bin/env bash
# The community service's checks, part of `make test`: ruff (lint and format), mypy
# (strict) and pytest, whose tests run local-cluster (the Rust services and the gateway,
# built by `cargo build --workspace --bins`; LOCAL_CLUSTER overrides the binary) beside
# the service, with real NATS and real Redis. Starts Redis when none answers, and stops
# what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_nats
ensure_redis
trap stop_redis EXIT

bin=$(bash scripts/community-venv.sh)
cd services/community
"$bin/ruff" check .
"$bin/ruff" format --check .
"$bin/mypy"
"$bin/pytest" -q
