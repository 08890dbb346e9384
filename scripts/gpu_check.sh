#!/usr/bin/env bash
# The one device script: every GPU check of the project, in two tiers, run from the repository
# root on a CUDA machine. Each step writes its log / JSON under $OUT as it finishes, so a run
# cut short still brings back what it did; a failed step is reported and the later ones run.
#
#   scripts/gpu_check.sh tier1          no model: build with CUDA, the CUDA op tests, memcheck,
#                                       build_tree / walk / compact_kv timings, the tree
#                                       attention cases, the latency model at real sizes (8B shapes)
#   scripts/gpu_check.sh part K         receive part K (1..3) of the embedded model's GGUF into
#                                       /tmp/bastion_gguf and check its sha256 (three calls in a row)
#   scripts/gpu_check.sh tier2          the embedded model on the GPU: the lossless tests on CUDA
#                                       (21 prompts x 64 tokens), bastion bench in bf16 at batch 1 and 4
#                                       (with the drafter tier's drafter when this machine still has it)
#   scripts/gpu_check.sh drafter        after the parts: train a drafter on the GPU from the committed
#                                       token chunks (features by one teacher-forced forward there),
#                                       brought back as $OUT/drafter (about 24 MB) with its held-out scores;
#                                       it stays in /tmp for a tier2 call on the same warm machine
#
# GPU_CHECK_REHEARSE=1 runs every step on the CPU with the CUDA-only parts skipped and small
# shapes, so that the device run is not where a typo is found:
#   GPU_CHECK_REHEARSE=1 PYTHON=.venv/bin/python OUT=/tmp/rehearsal scripts/gpu_check.sh tier1   (and tier2)
# On the device (three calls for the GGUF, each carrying one part, then the drafter and tier 2):
#   run: scripts/gpu_check.sh tier1                       (carry: nothing)
#   run: scripts/gpu_check.sh part 1   (carry .gguf_parts/part1, .gguf_parts/SHA256SUMS), then 2 and 3
#   run: scripts/gpu_check.sh drafter                     (carry .whl; only while the committed drafter
#                                                          is below the drafter issue's bar)
#   run: scripts/gpu_check.sh tier2                       (carry .whl; scripts/prepare_gpu_run.sh fills both)
# Needs there: python3 with a CUDA torch, setuptools, pybind11, cmake, ninja; nvcc; no network.
set -uo pipefail

TIER="${1:?usage: scripts/gpu_check.sh tier1|tier2|drafter|part K}"
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 BASTION_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}"
# Nothing may be fetched, and a root install into the system interpreter is intended.
export PIP_NO_INDEX=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY="${PYTHON:-python3}"
REHEARSE="${GPU_CHECK_REHEARSE:-0}"
GGUF_DIR=/tmp/bastion_gguf
DRAFTER_RUN=/tmp/bastion_drafter_run   # /tmp outlives a call on a warm machine; $OUT does not
PARTS_DIR=.gguf_parts   # ignored; scripts/split_gguf.sh fills it here, one part travels per call
FAILED=()

step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
# run NAME TIMEOUT CMD...: one step, its output in $OUT/NAME.log, a failure recorded.
run() {
  local name="$1" limit="$2"; shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -15 "$OUT/$name.log"
  [ $rc -eq 0 ] || { echo "STEP $name FAILED (rc $rc)"; FAILED+=("$name"); }
}
finish() {
  step "done"
  if [ ${#FAILED[@]} -gt 0 ]; then echo "FAILED: ${FAILED[*]}"; exit 1; fi
  echo "all $TIER checks passed"
}

device_info() {
  step "device"
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
    "$PY" -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  } 2>&1 | tee "$OUT/device.txt"
}

build() {
  if [ "$REHEARSE" = 1 ]; then step "build: skipped in the rehearsal (the CPU build is the checkout's)"; return; fi
  step "kernel resources (nvcc -Xptxas -v, sm_90a)"
  NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
  for cu in csrc/*.cu; do
    "$NVCC" -c -std=c++17 -O3 --fmad=false -gencode=arch=compute_90a,code=sm_90a -Xptxas -v "$cu" -o /dev/null 2>&1 \
      | grep -E "Compiling entry|Used|error" | sed 's/^ptxas info *: //' >> "$OUT/ptxas.txt"
  done
  step "build (BASTION_CUDA=1, MAX_JOBS=$MAX_JOBS)"
  if ! timeout 420 "$PY" -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"; echo "BUILD FAILED (log: $OUT/build.log)"; exit 1
  fi
  "$PY" -c "import bastion_ext._C as c; assert c.has_cuda(), 'built without CUDA'; print('bastion_ext._C has CUDA')" || exit 1
}

tier1() {
  device_info
  build
  local small=() sanitizer_prefix=()
  [ "$REHEARSE" = 1 ] && small=(--small)
  step "CUDA op tests (CUDA vs CPU, graphs, opcheck, compact_kv, tree attention)"
  run pytest_cuda 300 "$PY" -m pytest -q -p no:cacheprovider -rs -m "cuda and not model" \
    tests/test_ops_cuda.py tests/test_cuda_graph.py tests/test_compact_kv.py tests/test_tree_attention.py
  if [ "$REHEARSE" = 1 ]; then
    step "memcheck: skipped in the rehearsal"
  else
    step "compute-sanitizer memcheck"
    SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
    if [ -z "$SANITIZER" ]; then
      echo "compute-sanitizer not found: memcheck NOT run" | tee "$OUT/memcheck.log"; FAILED+=("memcheck-missing")
    else
      sanitizer_prefix=("$SANITIZER" --tool memcheck --error-exitcode 1)
      run memcheck 200 "${sanitizer_prefix[@]}" "$PY" -m pytest -x -q -p no:cacheprovider tests/test_ops_cuda.py tests/test_compact_kv.py \
        -k "shapes or non_finite or budgets_differ or max_capacity or corrupted or one_hot or matches_cpu or matches_reference or (many_slices and fixed)"
      grep -E "ERROR SUMMARY" "$OUT/memcheck.log" | tail -1
    fi
  fi
  step "build_tree timings (ours, host heap, floor)"
  if [ "$REHEARSE" = 1 ]; then echo "skipped in the rehearsal (CUDA only)"; else
    run bench_build_tree 200 "$PY" bench/bench_build_tree_cuda.py --out "$OUT"
  fi
  step "walk and compact_kv timings"
  run bench_verify 120 "$PY" bench/bench_verify.py --out "$OUT" "${small[@]}"
  step "latency model at real sizes (Qwen3-8B, Llama-3.1-8B shapes, random bf16 weights)"
  run calibrate_real_sizes 300 "$PY" bench/calibrate_real_sizes.py --out "$OUT" "${small[@]}"
  finish
}

part() {
  local k="${1:?part number}"
  mkdir -p "$GGUF_DIR"
  cp "$PARTS_DIR/part$k" "$GGUF_DIR/part$k" && cp "$PARTS_DIR/SHA256SUMS" "$GGUF_DIR/SHA256SUMS"
  (cd "$GGUF_DIR" && grep " part$k\$" SHA256SUMS | sha256sum -c -) || { echo "part $k: checksum FAILED"; exit 1; }
  ls -l "$GGUF_DIR"
}

tier2() {
  device_info
  local model_args=() device=cuda
  if [ "$REHEARSE" = 1 ]; then
    device=cpu
  else
    # A machine still warm from tier 1 keeps its build; a fresh one builds again.
    "$PY" -c "import bastion_ext._C as c; assert c.has_cuda()" 2>/dev/null || build
    model_on_device
    model_args=(--model "$GGUF_DIR/model.gguf")
    export BASTION_TEST_MODEL="$GGUF_DIR/model.gguf"
  fi
  step "lossless on $device: every strategy at batch 1 and 4 vs ar (21 prompts x 64 tokens)"
  BASTION_TEST_FULL=1 run lossless_cuda 420 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_batch_engine.py -k "cuda_engine"
  step "bastion bench on $device (T=0, batch 1 and 4, round-time breakdown)"
  local budgets=16,64,256 per=7 tokens=128 drafter_args=()
  [ "$REHEARSE" = 1 ] && { budgets=4; per=1; tokens=8; }
  [ -f "$DRAFTER_RUN/drafter/model.safetensors" ] && drafter_args=(--drafter "$DRAFTER_RUN/drafter")
  run bench_gpu 540 "$PY" -m bastion bench --device "$device" "${model_args[@]}" "${drafter_args[@]}" \
    --strategies ar,dflash,ddtree,caddtree,bastion --budgets "$budgets" --batch-sizes 1,4 --hf-baselines \
    --prompts-per-category "$per" --max-new-tokens "$tokens" --out "$OUT/bench_gpu"
  finish
}

# The GGUF from its parts and the GGUF reader wheel (tier 2 and the drafter tier need both).
model_on_device() {
  (cd "$GGUF_DIR" && cat part1 part2 part3 > model.gguf && grep " model.gguf\$" SHA256SUMS | sha256sum -c -) \
    || { echo "the GGUF is not complete in $GGUF_DIR: send the three parts first"; exit 1; }
  if ls .whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  fi
}

drafter() {
  device_info
  # The recipe of python/bastion/weights/RECIPE.md at the size a GPU affords: 3 layers, 6
  # epochs over every root of the 3,780 committed sequences, 8 sequences a step.
  local device=cuda model_args=() size=(--epochs 6 --seqs-per-step 8)
  if [ "$REHEARSE" = 1 ]; then
    device=cpu size=(--epochs 0.02 --seqs-per-step 2 --max-train-prompts 64 --eval-limit 2)
  else
    "$PY" -c "import bastion_ext._C as c; assert c.has_cuda()" 2>/dev/null || build
    model_on_device
    model_args=(--target "$GGUF_DIR/model.gguf")
  fi
  step "train a drafter on $device from the committed tokens (resumes in $DRAFTER_RUN), bring it back"
  run drafter_train 560 "$PY" -m bastion train-drafter --device "$device" "${model_args[@]}" --out "$DRAFTER_RUN" \
    --layers 3 --lr 3e-3 --save-every 200 "${size[@]}"
  cp -r "$DRAFTER_RUN/drafter" "$OUT/drafter" && cp "$DRAFTER_RUN/eval.json" "$OUT/drafter_eval.json"
  finish
}

case "$TIER" in
  tier1) tier1 ;;
  tier2) tier2 ;;
  drafter) drafter ;;
  part) part "${2:-}" ;;
  *) echo "unknown tier $TIER: tier1, tier2, drafter or part K"; exit 2 ;;
esac
