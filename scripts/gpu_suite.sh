#!/usr/bin/env bash
# The whole GPU job in one command, for a lent GPU machine (the device tool's `run`) or any CUDA box:
# build the extension for the visible GPU, run the GPU tests, then the benchmark suite and the demo.
# Everything worth keeping goes to $OUT (default ./gpu-out): suite.log (every step's output, in order)
# and the benchmark's <device>-<date>.{json,csv,png} (commit those to bench/results/): four files,
# within what the device tool brings back (8).
#
#   OUT=/tmp/gpu bash scripts/gpu_suite.sh            # everything
#   STEPS="build test" bash scripts/gpu_suite.sh      # a subset: build, test, sanitize, bench, demo
#
# Uses the python3 that is there (its torch, triton, pytest): no network is needed, and nothing is
# installed beyond the editable build of this checkout. Exit status: non-zero if any step failed;
# later steps still run, so one call brings back every result it can.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
STEPS=${STEPS:-build test sanitize bench demo}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [[ -z "${CUDA_HOME:-}" ]]; then
  for c in /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc 2>/dev/null || echo /nonexistent)")")")"; do
    [[ -x "$c/bin/nvcc" && -f "$c/include/cuda.h" ]] && export CUDA_HOME=$c && break
  done
fi
# The visible GPU's arch only (setup.py would take every arch torch knows otherwise).
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]] && command -v nvidia-smi >/dev/null; then
  TORCH_CUDA_ARCH_LIST=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | sort -u | paste -sd';')
  export TORCH_CUDA_ARCH_LIST
fi
export FASTOPS_BUILD_CUDA=1
status=0
step() { [[ " $STEPS " == *" $1 "* ]]; }
LOG=$OUT/suite.log
run() {  # run NAME CMD...: append to $OUT/suite.log, remember a failure
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  [[ $rc -eq 0 ]] || status=1
  return "$rc"
}

{
  nvidia-smi || true
  $PYTHON -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  echo "CUDA_HOME=${CUDA_HOME:-} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-}"
} > "$LOG" 2>&1

if step build; then
  run build $PYTHON -m pip install --no-build-isolation --no-deps -e . || { echo "build failed: see $LOG"; exit 1; }
  $PYTHON -c "import fastops, pprint; pprint.pprint(fastops.backends())" 2>&1 | tee -a "$LOG"
fi
if step test; then
  # The GPU-marked tests: every op suite's CUDA cases (native and Triton), the tensor-core conv ones included.
  run pytest $PYTHON -m pytest -q -m gpu -p no:cacheprovider -rfE tests
fi
if step sanitize; then
  # scripts/gpu_sanitize.py under compute-sanitizer: out-of-bounds / misaligned accesses, shared-memory
  # races (the conv2d tensor-core kernel's double buffer) and barrier misuse, on small shapes.
  sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
  if [[ -x "$sanitizer" ]]; then
    for tool in memcheck racecheck synccheck; do
      run "sanitize-$tool" "$sanitizer" --tool "$tool" --error-exitcode 1 $PYTHON scripts/gpu_sanitize.py
    done
  else
    echo "compute-sanitizer not found: running scripts/gpu_sanitize.py without it" | tee -a "$LOG"
    run sanitize $PYTHON scripts/gpu_sanitize.py
  fi
fi
if step bench; then
  run bench $PYTHON -m bench --device cuda --out "$OUT"
fi
if step demo; then
  run demo $PYTHON -m fastops.demo
fi
exit $status
