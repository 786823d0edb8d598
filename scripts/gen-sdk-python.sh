#!/usr/bin/env bash
# Generates the Python SDK's code from proto/ into sdk/python/src/parking_sdk (or into the
# package directory given as $1, which the staleness test uses). One command, pinned tools:
# grpcio-tools (protoc and the gRPC plugin) and mypy-protobuf (.pyi stubs), in a venv of its own.
#
#   scripts/gen-sdk-python.sh            # regenerate the committed SDK
#   scripts/gen-sdk-python.sh DIR        # write the generated files into DIR instead
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
. scripts/lib.sh
out="${1:-sdk/python/src/parking_sdk}"

# The generator's pins (also in sdk/python/pyproject.toml's dev extra, so the venv that
# scripts/test-sdk-python.sh keeps already has them and the two scripts share it).
pins=(grpcio-tools==1.85.1 grpcio==1.85.1 protobuf==7.36.2 mypy-protobuf==5.1.0)
venv="${SDK_VENV:-$repo/var/sdk-venv}"
stamp="$venv/.generator-pins"
if [[ ! -x "$venv/bin/pip" || "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]]; then
  make_venv "$venv"
  "$venv/bin/pip" install --quiet "${pins[@]}"
  echo "${pins[*]}" >"$stamp"
fi

work="$(mktemp -d)"
mkdir "$work/out"
trap 'rm -rf "$work"' EXIT
# protoc-gen-mypy and protoc-gen-mypy_grpc are found on PATH.
PATH="$venv/bin:$PATH" "$venv/bin/python" -m grpc_tools.protoc -I proto \
  --python_out="$work/out" --grpc_python_out="$work/out" \
  --mypy_out="$work/out" --mypy_grpc_out="$work/out" \
  proto/parking/v1/*.proto proto/google/api/*.proto >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }

# Rewrites the generated imports so the package is self-contained: parking.v1 becomes
# parking_sdk.v1 and google.api becomes parking_sdk.google.api (no top-level module that
# could clash with googleapis-common-protos or another copy of these protos).
"$venv/bin/python" - "$work/out" "$out" "$(cat proto/VERSION)" <<'PY'
import pathlib
import re
import shutil
import sys

work, out, version = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3].strip()
moves = {"parking/v1": "v1", "google/api": "google/api"}
package_docs = {
    "v1": "Generated from proto/parking/v1: messages (*_pb2), stubs and servicers (*_pb2_grpc).",
    "google": "Generated google.api annotations that the parking protos import.",
    "google/api": "Generated from proto/google/api (HTTP annotations).",
}
rewrites = [
    (re.compile(r"^from parking\.v1 import ", re.M), "from parking_sdk.v1 import "),
    (re.compile(r"^from google\.api import ", re.M), "from parking_sdk.google.api import "),
    (re.compile(r"'parking\.v1\.(\w+_pb2)'"), r"'parking_sdk.v1.\1'"),
    (re.compile(r"'google\.api\.(\w+_pb2)'"), r"'parking_sdk.google.api.\1'"),
]
SHIM = '''"""google.api's {module}: googleapis-common-protos's module when it is installed
(protobuf's descriptor pool takes one google/api file of a name, so a second copy would
clash), else the copy generated from proto/google/api. Written by scripts/gen-sdk-python.sh."""

try:
    from google.api.{module} import *  # noqa: F403
except ImportError:
    from parking_sdk.google.api._embedded.{module} import *  # noqa: F403
'''
for sub in ("v1", "google"):
    shutil.rmtree(out / sub, ignore_errors=True)
for src, dst in moves.items():
    target = out / dst
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted((work / src).iterdir()):
        text = path.read_text()
        # Files without a service get an empty *_pb2_grpc module: leave it out.
        if path.stem.endswith("_pb2_grpc") and "Stub" not in text:
            continue
        for pattern, replacement in rewrites:
            text = pattern.sub(replacement, text)
        if dst == "google/api" and path.suffix == ".py":
            # The descriptor pool holds one google/api/http.proto: when googleapis-common-protos
            # is installed, both copies would clash, so its modules are used instead of ours.
            (target / "_embedded").mkdir(exist_ok=True)
            (target / "_embedded" / path.name).write_text(text)
            (target / path.name).write_text(SHIM.format(module=path.stem))
            continue
        (target / path.name).write_text(text)
(out / "google/api/_embedded/__init__.py").write_text(
    '"""Generated from proto/google/api; used when googleapis-common-protos is absent."""\n'
)
for sub, doc in package_docs.items():
    (out / sub / "__init__.py").write_text(f'"""{doc}"""\n')
(out / "_version.py").write_text(
    f'"""The contract version (proto/VERSION), written by scripts/gen-sdk-python.sh."""\n\n'
    f'__version__ = "{version}"\n'
)
PY
echo "generated $(find "$out/v1" "$out/google" -name '*.py*' | wc -l) files into $out (contract $(cat proto/VERSION))"
