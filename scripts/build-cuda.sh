#!/usr/bin/env bash
# Builds the cuda engine's kernels (server/model/cuda/kernels.cu) into the shared library the
# engine opens through FFI: server/model/cuda/build/libpromptlearning_kernels.so.
#
# Targets: Hopper machine code (sm_90: the H100 and H200 this service runs on) plus compute_90
# PTX, which the driver compiles at load time on anything newer. One real architecture keeps the
# build to seconds (each extra one is another full device compile); set CUDA_GENCODE to build for
# others, e.g. CUDA_GENCODE="-gencode=arch=compute_80,code=sm_80" for an A100.
#
# `-cudart shared`: the kernels use the same libcudart.so.13 the engine opens, so there is one
# CUDA runtime in the process (nvcc's default, a static runtime inside the .so, would be a second).
#
# Fails, naming what is missing, when nvcc cannot be found: CI runs this so that a compile error
# fails the build, and a skipped build would hide one.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${NVCC:-}"
if [ -z "$NVCC" ]; then
  if command -v nvcc >/dev/null; then
    NVCC=nvcc
  elif [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
    NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
  else
    echo "build-cuda: nvcc not found (not on PATH, not in \$CUDA_HOME/bin or /usr/local/cuda/bin): install the CUDA toolkit (13.x) or set NVCC" >&2
    exit 1
  fi
fi
GENCODE="${CUDA_GENCODE:--gencode=arch=compute_90,code=[sm_90,compute_90]}"
SRC=server/model/cuda/kernels.cu
OUT_DIR=server/model/cuda/build
mkdir -p "$OUT_DIR"
# Write to a temporary name and rename, so a failed build never leaves a stale or partial library
# where the engine looks.
# shellcheck disable=SC2086 # GENCODE holds several flags
"$NVCC" -O3 -std=c++17 -shared -Xcompiler -fPIC -cudart shared $GENCODE \
  -Werror all-warnings -o "$OUT_DIR/libpromptlearning_kernels.so.tmp" "$SRC"
mv "$OUT_DIR/libpromptlearning_kernels.so.tmp" "$OUT_DIR/libpromptlearning_kernels.so"
echo "build-cuda: $OUT_DIR/libpromptlearning_kernels.so ($("$NVCC" --version | tail -1))"
