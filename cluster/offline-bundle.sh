#!/usr/bin/env bash
# A site-packages tarball for an air-gapped GPU node whose image already holds PyTorch, timm and the
# scientific stack (an NGC or similar PyTorch container), built on a machine that reaches PyPI.
#
#   bash cluster/offline-bundle.sh OUT.tar.xz [PYTHON_VERSION]        (default 3.12)
#
# PY: the interpreter that runs pip and builds DeepSpeed's wheel, which imports torch (default:
# .venv/bin/python if there, else python3). Needs unzip (it keeps Ray's executables executable).
#
# It holds what the trainer, the gpu tests and the benches need beyond such an image (Ray with its
# dashboard's needs, DeepSpeed and its pure-Python needs, the shard builder's DICOM and hash readers,
# WebDataset), at the versions constraints.txt pins, unpacked from manylinux x86-64 wheels for that
# Python. Ray's Java jars, RLlib and its LLM library are left out (ark-dist uses none of them). W&B,
# S3 and Foundation X's packages are not in it (`tracking.wandb=disabled` and a local store need
# none). Checked in a clean environment of the device image's packages (torch, timm, numpy, pandas,
# pyarrow, aiohttp, grpcio, prometheus-client, einops, ...) at the pinned versions. On the node:
#
#   mkdir -p /tmp/site && tar -xJf OUT.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site
set -euo pipefail
out=${1:?usage: offline-bundle.sh OUT.tar.xz [PYTHON_VERSION]}
pyver=${2:-3.12}
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PY:-}" ]; then
  if [ -x "$here/.venv/bin/python" ]; then PY=$here/.venv/bin/python; else PY=python3; fi
fi
PACKAGES="ray deepspeed pydantic pydantic_core annotated-types typing-inspection hjson ImageHash PyWavelets pydicom
jsonschema referencing rpds-py jsonschema-specifications tensorboardX braceexpand webdataset
aiohttp-cors opencensus opencensus-context opentelemetry-api opentelemetry-sdk opentelemetry-exporter-prometheus
opentelemetry-proto opentelemetry-semantic-conventions google-api-core googleapis-common-protos proto-plus google-auth
pyasn1 pyasn1_modules"  # the last two lines: what Ray's dashboard imports (the trainer starts it) beyond such an image
pins=()
for name in $PACKAGES; do
  pin=$(grep -i -E "^${name}==" "$here/constraints.txt" || true)
  [ -n "$pin" ] || { echo "error: $name is not pinned in constraints.txt" >&2; exit 2; }
  pins+=("$pin")
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/wheels" "$work/site"
binary=()
for pin in "${pins[@]}"; do
  case $pin in deepspeed==*) ;; *) binary+=("$pin") ;; esac
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$work/wheels" "${binary[@]}"
# DeepSpeed ships a source archive only; its wheel is pure Python (ops build on the node at first use).
deepspeed=$(printf '%s\n' "${pins[@]}" | grep -i '^deepspeed==')
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$work/sdist" "$deepspeed"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$work/wheels" "$work"/sdist/deepspeed-*
for wheel in "$work"/wheels/*.whl; do
  unzip -q -o "$wheel" -d "$work/site"
done
rm -rf "$work/site/ray/jars" "$work/site/ray/rllib" "$work/site/ray/llm"
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
tar -C "$work/site" -cf - . | xz -T0 -9 >"$out.tmp"
mv "$out.tmp" "$out"
echo "$out: $(du -h "$out" | cut -f1), ${#pins[@]} packages for CPython $pyver"
