#!/usr/bin/env bash
# The community service's virtualenv (var/community-venv; var/ is git-ignored): the pinned
# packages of services/community/requirements.txt, then sdk/python and services/community
# installed editable (so code changes need no reinstall). Needs only Python 3 with venv
# and PyPI. Idempotent: a stamp holds what was installed from, and nothing is installed
# again while it matches. Prints the venv's bin directory on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${PARKING_COMMUNITY_VENV:-$PWD/var/community-venv}"
STAMP="$VENV/.installed"
WANT=$(cat services/community/requirements.txt services/community/pyproject.toml sdk/python/pyproject.toml)

if [ -x "$VENV/bin/parking-community" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "$VENV/bin"
  exit 0
fi

. scripts/lib.sh
echo "community-venv.sh: installing services/community/requirements.txt, sdk/python and services/community into $VENV" >&2
rm -f "$STAMP"
make_venv "$VENV"
pip=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
"${pip[@]}" install -r services/community/requirements.txt >&2
"${pip[@]}" install --no-deps -e sdk/python -e services/community >&2
"${pip[@]}" check >&2
echo "$WANT" > "$STAMP"
echo "$VENV/bin"
