#!/usr/bin/env bash
# Everything issue 14 needs checked on a GPU machine, in one go and within 5 minutes:
#   1. builds the kernels (deno task build-cuda);
#   2. the cuda engine's tests: FFI bindings against the installed headers and libraries, every
#      kernel and product shape against the emulation, precisions, freeing;
#   3. the reference tests on the cuda backend, same tolerances as on CPU (ENGINES=cuda: the
#      engine must load, or this fails), mixed cached batches included;
#   4. the serving mixed-task batch tests and the training runs on the cuda backend;
#   5. the benchmark (bench/cuda_bench.ts), its JSON written to $OUT (or .bench/) as cuda_bench.json.
# Run from anywhere: scripts/gpu-check.sh. Needs nvcc, libcudart.so.13, libcublas.so.13 (CUDA_HOME,
# default /usr/local/cuda-13.0 when present), the npm packages in node_modules (`npm ci`; run here
# when node_modules is missing and npm exists) and Deno: node_modules/deno/deno, or $DENO (a Deno
# 2.9 binary brought along where nothing can be installed).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-Haswell}"
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda-13.0 ]; then export CUDA_HOME=/usr/local/cuda-13.0; fi
export PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"
if [ ! -d node_modules ] && command -v npm >/dev/null; then npm ci --no-audit --no-fund; fi
DENO="${DENO:-node_modules/deno/deno}"
if ! "$DENO" --version >/dev/null 2>&1; then
  echo "gpu-check: no Deno at $DENO: run npm ci, or set DENO to a Deno 2.9 binary" >&2
  exit 1
fi
out_dir="${OUT:-.bench}"
mkdir -p "$out_dir"
step() { echo; echo "== $* ($(( $(date +%s) - start ))s)"; }

step "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

step "build kernels"
scripts/build-cuda.sh

step "cuda engine tests (bindings, kernels vs emulation, precisions)"
"$DENO" test -A server/model/cuda/ 2>&1 | tee "$out_dir/gpu_tests.log"
# Every GPU test must have run here: an ignored one means the GPU was not usable.
if grep -q "ignored: needs a GPU" "$out_dir/gpu_tests.log"; then
  echo "gpu-check: GPU tests were ignored: the cuda backend could not start (see above)" >&2
  exit 1
fi

step "reference tests on the cuda backend"
ENGINES=cuda "$DENO" test -A server/model/engine_reference_test.ts 2>&1 | tee "$out_dir/reference.log"

step "mixed-task serving batches on the cuda backend"
ENGINES=cuda "$DENO" test -A server/serving/mixed_batch_test.ts 2>&1 | tee "$out_dir/mixed.log"
if grep -q "\[cuda\] engine loads" "$out_dir/mixed.log"; then
  echo "gpu-check: the mixed-batch tests did not run on cuda (engine did not load)" >&2
  exit 1
fi

step "training on the cuda backend (the trainer unchanged)"
TRAIN_TEST_BACKEND=cuda "$DENO" test -A server/training/run_test.ts 2>&1 | tee "$out_dir/training.log"

step "benchmark"
"$DENO" run -A bench/cuda_bench.ts --json "$out_dir/cuda_bench.json" 2>&1 | tee "$out_dir/bench.log"

step "done: all checks passed in $(( $(date +%s) - start ))s"
