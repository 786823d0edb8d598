#!/usr/bin/env bash
# The Python SDK's checks (part of `make test`): ruff (lint and format), mypy (strict), and
# pytest against a real local-cluster (target/debug/local-cluster, or $LOCAL_CLUSTER), which
# the tests start and stop themselves. The venv (var/sdk-venv) is reinstalled only when the
# pinned requirements or the contract version change.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
. scripts/lib.sh

venv="${SDK_VENV:-$repo/var/sdk-venv}"
stamp="$venv/.stamp"
want="$(cat sdk/python/pyproject.toml proto/VERSION | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/pip" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  make_venv "$venv"
  "$venv/bin/pip" install --quiet -e "sdk/python[dev]"
  echo "$want" >"$stamp"
fi

# The staleness test runs scripts/gen-sdk-python.sh, which uses this venv too.
export SDK_VENV="$venv"
cd sdk/python
"$venv/bin/ruff" check src tests examples
"$venv/bin/ruff" format --check src tests examples
"$venv/bin/mypy"
"$venv/bin/pytest" -q
