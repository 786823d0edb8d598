#!/usr/bin/env bash
# The TypeScript SDK (sdk/typescript): installs its pinned packages (npm ci, skipped when
# node_modules already matches package-lock.json), type-checks, builds dist/, and runs its
# tests against a local-cluster (LOCAL_CLUSTER, default target/debug/local-cluster) through
# the gateway's gRPC-Web; the tests also fail when the generated code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

command -v node >/dev/null || { say "test-sdk-typescript: node not found (Node.js 20 or later is needed)"; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
((major >= 20)) || { say "test-sdk-typescript: Node.js $(node --version) is too old, 20 or later is needed"; exit 1; }
ensure_nats

cd sdk/typescript
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
stamp=node_modules/.installed-from-lock
if [[ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]]; then
  npm ci --no-audit --no-fund
  echo "$lock_sum" >"$stamp"
fi
npm run --silent typecheck
npm run --silent build
npm test --silent
