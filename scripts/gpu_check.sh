#!/usr/bin/env bash
# The GPU checks of the CUDA ops in one run, from the repository root on a CUDA machine:
# build with the CUDA sources, the CUDA tests, compute-sanitizer memcheck over a small run of
# the kernels, then the benchmark. Logs and the benchmark JSON go to $OUT.
# Needs: python3 with a CUDA torch, setuptools, pybind11, cmake, ninja; nvcc; no network.
# A failed build stops the run; a failed test or memcheck step is reported and the later
# steps still run (one device session should bring back everything it can), then the script
# exits non-zero.
set -uo pipefail

OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 BASTION_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}"
# Nothing may be fetched, and a root install into the system interpreter is intended.
export PIP_NO_INDEX=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY="${PYTHON:-python3}"
FAILED=()

step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/device.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  2>&1 | tee -a "$OUT/device.txt"

step "kernel resources (nvcc -Xptxas -v, sm_90a)"
NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
for cu in csrc/*.cu; do
  "$NVCC" -c -std=c++17 -O3 --fmad=false -arch=sm_90a -Xptxas -v "$cu" -o /dev/null 2>&1 \
    | grep -E "Compiling entry|Used|error" | sed 's/^ptxas info *: //' | tee -a "$OUT/ptxas.txt"
done

step "build (BASTION_CUDA=1, MAX_JOBS=$MAX_JOBS)"
start=$(date +%s)
if ! timeout 420 "$PY" -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"
  echo "BUILD FAILED (log: $OUT/build.log)"
  exit 1
fi
echo "build took $(( $(date +%s) - start )) s"
"$PY" -c "import bastion_ext._C as c; assert c.has_cuda(), 'built without CUDA'; print('bastion_ext._C has CUDA')" || exit 1

step "CUDA tests"
timeout 300 "$PY" -m pytest -x -q -p no:cacheprovider -rs tests/test_cuda_graph.py tests/test_ops_cuda.py \
  2>&1 | tee "$OUT/pytest_cuda.log" || FAILED+=("pytest")

step "compute-sanitizer memcheck"
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
if [ -z "$SANITIZER" ]; then
  echo "compute-sanitizer not found: memcheck NOT run" | tee "$OUT/memcheck.log"
  FAILED+=("memcheck-missing")
else
  timeout 200 "$SANITIZER" --tool memcheck --error-exitcode 1 \
    "$PY" -m pytest -x -q -p no:cacheprovider tests/test_ops_cuda.py \
    -k "shapes or non_finite or budgets_differ or max_capacity or corrupted or one_hot or matches_cpu or (many_slices and fixed)" \
    > "$OUT/memcheck.log" 2>&1 || FAILED+=("memcheck")
  tail -4 "$OUT/memcheck.log"
fi

step "benchmark"
timeout 200 "$PY" bench/bench_build_tree_cuda.py --out "$OUT" 2>&1 | tee "$OUT/bench.log" || FAILED+=("bench")

step "done"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED: ${FAILED[*]}"
  exit 1
fi
echo "all GPU checks passed"
