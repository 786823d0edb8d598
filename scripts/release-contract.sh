#!/usr/bin/env bash
# Cuts a release of the contract: builds proto/ as of a git ref into a buf image,
# proto/released/parking-v<version>.binpb, which scripts/test-contract.sh then holds every
# later change to (`buf breaking`, against the newest release). Commit the image.
#   bash scripts/release-contract.sh            # HEAD, version from proto/VERSION
#   bash scripts/release-contract.sh <ref> [version]
# The first release, 1.0.0, is commit 436f336 (before proto/VERSION existed):
#   bash scripts/release-contract.sh 436f336 1.0.0
set -euo pipefail
cd "$(dirname "$0")/.."

REF="${1:-HEAD}"
VERSION="${2:-$(git show "$REF:proto/VERSION" 2>/dev/null | tr -d '[:space:]')}"
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || {
  echo "release-contract: no version for $REF (give it: $0 $REF <x.y.z>)" >&2
  exit 1
}
OUT="proto/released/parking-v$VERSION.binpb"
[ ! -e "$OUT" ] || { echo "release-contract: $OUT exists; a release is never rewritten" >&2; exit 1; }

BUF="$(bash scripts/tools.sh)/buf"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git archive "$REF" proto | tar -x -C "$WORK"
# Built from the ref's own proto/ as the module root (the paths buf.yaml gives it today);
# no source info, so the image is small and the same bytes from any checkout.
(cd "$WORK/proto" && "$BUF" build --exclude-source-info -o "$WORK/image.binpb")
mkdir -p proto/released
mv "$WORK/image.binpb" "$OUT"
echo "$OUT"
