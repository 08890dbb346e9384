#!/usr/bin/env bash
# Fill the ignored folders that travel to the device machine with scripts/gpu_check.sh:
#   .gguf_parts/part1..3 + SHA256SUMS   the embedded model's GGUF in three parts of <= 34 MB
#                                       (one per call: a call carries at most 64 MiB)
#   .whl/gguf-*.whl                     the GGUF reader transformers needs (not on that machine)
# Run once here (a machine with the project's venv and pip access to the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
gguf="$("$PY" -c 'import sys; sys.path.insert(0, "python"); from bastion.models import embedded_gguf_path; print(embedded_gguf_path())')"
mkdir -p .gguf_parts .whl
size=$(stat -c %s "$gguf")
part=$(( (size + 2) / 3 ))
split -b "$part" -d -a 1 "$gguf" .gguf_parts/tmp
for k in 0 1 2; do mv ".gguf_parts/tmp$k" ".gguf_parts/part$((k + 1))"; done
(cd .gguf_parts && sha256sum part1 part2 part3 > SHA256SUMS && sha256sum < "$gguf" | sed 's/-$/model.gguf/' >> SHA256SUMS)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 -d .whl "gguf==$("$PY" -c 'import importlib.metadata as m; print(m.version("gguf"))')"
ls -l .gguf_parts .whl
