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

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || { echo "community-venv.sh: $PYTHON is required" >&2; exit 1; }
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  # Debian splits venv out of python3.
  . scripts/lib.sh
  apt_install python3-venv || { echo "community-venv.sh: python3-venv is required" >&2; exit 1; }
fi

echo "community-venv.sh: installing services/community/requirements.txt, sdk/python and services/community into $VENV" >&2
rm -f "$STAMP"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" >&2
pip=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
"${pip[@]}" install -r services/community/requirements.txt >&2
"${pip[@]}" install --no-deps -e sdk/python -e services/community >&2
"${pip[@]}" check >&2
echo "$WANT" > "$STAMP"
echo "$VENV/bin"
