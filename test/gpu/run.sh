#!/usr/bin/env bash
# The GPU check (issue 19): everything the cuda engine must show on a GPU, in one run of a few
# minutes, from the repository or from the folder scripts/gpu-bundle.sh writes (which carries
# Deno compressed, the sources, and no weights or data). Parts, each timed and recorded:
#   env       the GPU, driver and tool versions (fails without a GPU unless CUDA_EMULATE=1);
#   build     the kernels with nvcc (scripts/build-cuda.sh);
#   kernels   the cuda engine's tests: every kernel and product shape against the emulation, the
#             FFI bindings against the installed headers and libraries; none may be ignored;
#   generate  random-weight GPT-2 checkpoints (Hugging Face layout) at the 124M and 345M shapes,
#             with the project's own generator;
#   oracle    one mixed batch of three tasks (3, 10 and 15 virtual tokens): logits, the prompt-
#             tuning loss's input-embedding gradient and KV-cached greedy decoding at every cuda
#             precision, checked by test/gpu/oracle.py (transformers' GPT2LMHeadModel, or the
#             plain PyTorch GPT-2 of bench/torch_gpt2.py, in float64) with stated tolerances;
#   serving   the service's mixed-task continuous batching on cuda: outputs alone = mixed;
#   training  the service's trainer on cuda (p-tuning two tasks, validation, registry writes);
#   bench     training/forward tokens/s, ms per token for 1 and 32 sequences and peak GPU memory,
#             ours at each precision next to PyTorch (fp32, TF32, bf16, fp16) and PEFT;
# then one verdict line, last. Writes OUT/gpu_check.json and OUT/gpu_check.log (OUT: $OUT, else
# .bench/gpu-check under the root). Exit 0 when every part passes.
#
# CUDA_EMULATE=1 is the dry run CI makes on every commit: the tiny shape, the cuda engine on the
# CPU emulation of its device, PyTorch on the CPU as the oracle (and the fast engine checked too),
# so every step's logic, file names and output format are tested before a GPU sees them.
# Settings: DENO (a Deno binary), PYTHON (one that imports torch), CUDA_HOME, GPU_CHECK_SHAPES
# (default gpt2,gpt2-medium; tiny when emulating), GPU_CHECK_WORK (scratch, default a temp dir,
# removed after unless GPU_CHECK_KEEP=1).
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
start=$(date +%s)
emulate="${CUDA_EMULATE:-0}"
out="${OUT:-$root/.bench/gpu-check}"
mkdir -p "$out"
work="${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}"
mkdir -p "$work/results"
: > "$work/parts.tsv"
if [ "${GPU_CHECK_KEEP:-0}" != 1 ] && [ -z "${GPU_CHECK_WORK:-}" ]; then
  trap 'rm -rf "$work"' EXIT
fi
if [ "$emulate" = 1 ]; then
  shapes="${GPU_CHECK_SHAPES:-tiny}"
else
  shapes="${GPU_CHECK_SHAPES:-gpt2,gpt2-medium}"
fi
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda-13.0 ]; then export CUDA_HOME=/usr/local/cuda-13.0; fi
export PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"
export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-Haswell}" DENO_NO_UPDATE_CHECK=1

# Deno: $DENO, the bundle's deno.xz (unpacked with xz, or Python's lzma), the npm package, PATH.
find_deno() {
  if [ -n "${DENO:-}" ]; then echo "$DENO"; return; fi
  if [ -f "$root/deno.xz" ]; then
    mkdir -p "$work/bin"
    if command -v xz >/dev/null; then
      xz -dc "$root/deno.xz" > "$work/bin/deno"
    else
      "${PYTHON:-python3}" -c 'import lzma, shutil, sys
shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$root/deno.xz" "$work/bin/deno"
    fi
    chmod +x "$work/bin/deno" && echo "$work/bin/deno"
    return
  fi
  if [ -x node_modules/deno/deno ]; then echo node_modules/deno/deno; return; fi
  command -v deno || true
}
# Python: $PYTHON, else the first python3 that imports torch.
find_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  for p in python3 /usr/bin/python3; do
    if "$p" -c 'import torch' 2>/dev/null; then echo "$p"; return; fi
  done
}

# The parts (each a function, run by part() under a time limit).
env_part() {
  [ -f "$root/MANIFEST" ] && head -3 "$root/MANIFEST"
  echo "deno: $("$deno" --version 2>&1 | head -1)"
  echo "python: $python $("$python" -c 'import sys, torch
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())' 2>&1 | tail -1)"
  for m in transformers peft; do echo "$m: $("$python" -c "import $m; print($m.__version__)" 2>&1 | tail -1)"; done
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1)"
  [ -n "$deno" ] && [ -n "$python" ] || return 1
  if [ "$emulate" = 1 ]; then echo "CUDA_EMULATE=1: the cuda engine runs on the CPU emulation"; return 0; fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
}
kernels_part() {
  "$deno" test --no-check -A server/model/cuda/ 2>&1 | tee "$work/kernels.log"
  local rc=${PIPESTATUS[0]}
  # On a GPU every test must have run: an ignored one means the GPU path did not.
  if [ "$emulate" != 1 ] && grep -q "ignored: needs a GPU" "$work/kernels.log"; then
    echo "kernels: GPU tests were ignored: the cuda device could not open (see above)"
    return 1
  fi
  return "$rc"
}
deno_step() {
  "$deno" run --no-check -A test/gpu/check.ts "$1" --work "$work" --shapes "$shapes" \
    --python "$python" $([ "$emulate" = 1 ] && echo --emulate)
}
export -f env_part kernels_part deno_step

# part NAME TIMEOUT_S FUNCTION [ARG]: runs one part, recording pass/FAIL and its seconds.
part() {
  local name="$1" limit="$2" t0 rc status=pass
  shift 2
  t0=$(date +%s)
  echo
  echo "== $name ($((t0 - start))s)"
  timeout "$limit" bash -c '"$@"' part "$@"
  rc=$?
  if [ $rc -eq 124 ]; then echo "$name: timed out after ${limit}s"; fi
  [ $rc -eq 0 ] || status=FAIL
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "${note:-}" >> "$work/parts.tsv"
  note=""
}
skip() {
  printf '%s\tskipped\t0\t%s\n' "$1" "$2" >> "$work/parts.tsv"
  echo
  echo "== $1: skipped ($2)"
}

main() {
  deno="$(find_deno)"
  python="$(find_python)"
  export root work shapes emulate deno python
  [ -n "$deno" ] || echo "gpu-check: no Deno (set DENO, or run from the bundle)"
  [ -n "$python" ] || echo "gpu-check: no python3 that imports torch (set PYTHON)"
  note="$( { nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true; } | head -1)"
  [ -n "$note" ] || note="$([ "$emulate" = 1 ] && echo "the CPU emulation" || echo "no GPU")"
  part env 60 env_part
  if command -v nvcc >/dev/null || [ "$emulate" != 1 ]; then
    part build 180 scripts/build-cuda.sh
  else
    skip build "no nvcc; the dry run needs none"
  fi
  part kernels 240 kernels_part
  part generate 180 deno_step generate
  part oracle 300 deno_step oracle
  part serving 180 deno_step serving
  part training 240 deno_step training
  part bench 420 deno_step bench

  echo
  local verdict rc=1
  if [ -n "$deno" ] && "$deno" run --no-check -A test/gpu/check.ts verdict --work "$work" \
    --out "$out" > "$work/verdict.txt" 2>&1; then rc=0; fi
  verdict="$(tail -1 "$work/verdict.txt" 2>/dev/null)"
  if [[ "$verdict" != "GPU CHECK "* ]]; then
    # The verdict step itself failed: say so, with the parts' outcomes from parts.tsv.
    verdict="GPU CHECK FAIL: $(awk -F'\t' '{printf "%s%s %s %ss", (NR > 1 ? ", " : ""), $1, $2, $3}' \
      "$work/parts.tsv"); the verdict step failed: $(tail -3 "$work/verdict.txt" 2>/dev/null | tr '\n' ' ')"
    rc=1
  fi
  echo "$verdict"
  return $rc
}

main 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
