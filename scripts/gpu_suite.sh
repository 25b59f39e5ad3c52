#!/usr/bin/env bash
# GPU first light: one call that builds the extension for the visible GPU and runs every CUDA and
# Triton path, in stages, each under its own `timeout`, so that a call cut off anywhere still
# brings back what it got. Written for the lent H100/H200 (the device tool's `run`, ~8 minutes of
# one call) and for any CUDA box; it uses the python3 that is there (torch, triton, pytest: no
# network, nothing installed; the extension is built in place).
#
#   device tool: two calls, the second at once while the machine is warm (it is given back 30 s
#   after a call; a session's 15 device minutes held ~745 s of work this way on 2026-12-06):
#     run(command="bash scripts/gpu_suite.sh", timeout_s=480)          stages 1-4 (7.5 min), bench a smoke
#     run(command="STAGES='build bench' GPU_SUITE_BUDGET=280 bash scripts/gpu_suite.sh", timeout_s=300)
#   (build is a no-op then: ninja finds the objects of the first call). Measured on an H100, cold:
#   build 68 s, native 83 s, triton > 128 s (its kernels compile on first use; 55 s warm),
#   memcheck + racecheck 179 s over every kernel, bench --quick > 91 s.
#   the full autotune sweep, every sanitizer tool and the full bench (~10 min: a CUDA box, or a
#   second lease; a fresh machine rebuilds), or a subset of it in a shorter second call:
#     run(command="bash scripts/gpu_suite.sh --full", timeout_s=600)
#     run(command="STAGES='build triton' GPU_SUITE_BUDGET=280 bash scripts/gpu_suite.sh --full", timeout_s=300)
#   a CPU machine / CI (make gpu-dry-run): every stage's command printed, the build check, test
#   collection and a CPU smoke of gpu_sanitize.py; nothing that needs a GPU runs
#     bash scripts/gpu_suite.sh --dry-run
#
# Stages and their timeouts (seconds; quick / --full). Stages 1-4 share a deadline, 440 s after the
# start in quick mode (500 s full): a stage's timeout is what is left of it less the caps below of
# the stages still to come, so time a stage leaves unused flows on, and never less than its own
# cap unless the deadline is nearer. Stage 5 gets what is left of GPU_SUITE_BUDGET (450 s quick,
# 580 s full), at least 30 s. Sanitize: memcheck 3/5 of the stage, racecheck the rest.
#   1 build     150 / 150  python setup.py build_ext --inplace, TORCH_CUDA_ARCH_LIST = the visible
#                          GPU's compute capability (nvidia-smi), MAX_JOBS = nproc, FASTOPS_BUILD_CUDA=1;
#                          then fastops.backends() is logged and a native CUDA linear_relu must run
#   2 native    100 / 100  pytest -m "gpu and not triton": the native CUDA kernels (and the torch
#                          backend on cuda), TF32 off (tests/conftest.py)
#   3 triton    150 / 150  pytest -m "gpu and triton" with FASTOPS_TRITON_AUTOTUNE=0 (one config per
#                          kernel; --full: the whole sweep)
#   4 sanitize   90 / 100  compute-sanitizer on scripts/gpu_sanitize.py, our kernels only
#                          (--kernel-name kns=...): memcheck with PYTORCH_NO_CUDA_MEMORY_CACHING=1, then
#                          racecheck on --quick shapes (--full: + synccheck and initcheck)
#   5 bench     rest       python -m bench --quick --device cuda (--full: without --quick); the copy
#                          bandwidth and matmul ceilings are measured in the same run
# pytest runs with pytest-xdist (-n 8) and pytest-timeout when they are importable.
#
# $OUT (default ./gpu-out) receives, after every stage: stages.txt (stage, rc, seconds; rc 124 = timed
# out, "skip" = not run), suite.log (every command and its output, in order), failures.txt (failed
# tests and sanitizer reports, grepped from the log), and bench/<device>-<date>.{json,csv,png}: six
# files, within the eight the device tool brings back. Exit status: 0 when every stage passed.
# Environment: OUT, PYTHON (default python3; --dry-run: .venv/bin/python when there),
# GPU_SUITE_BUDGET, STAGES (a subset, e.g. STAGES="build native"), FASTOPS_TEST_SEED.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=quick
DRY=0
for arg in "$@"; do
  case $arg in
    --full) MODE=full ;;
    --dry-run) DRY=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "gpu_suite.sh: unknown argument $arg (--full, --dry-run, --help)" >&2
      exit 2
      ;;
  esac
done

OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=python3
  [[ $DRY -eq 1 && -x .venv/bin/python ]] && PYTHON=$PWD/.venv/bin/python
fi
STAGES=${STAGES:-build native triton sanitize bench}
LOG=$OUT/suite.log
SUMMARY=$OUT/stages.txt
FAILURES=$OUT/failures.txt
: >"$LOG"
printf '%-10s %-5s %s\n' stage rc seconds >"$SUMMARY"
: >"$FAILURES"

if [[ $MODE == full ]]; then
  BUDGET=${GPU_SUITE_BUDGET:-580}
  CORE_DEADLINE=$((BUDGET - 80))
  declare -A CAP=([build]=150 [native]=100 [triton]=150 [sanitize]=100)
else
  BUDGET=${GPU_SUITE_BUDGET:-450}
  CORE_DEADLINE=440
  declare -A CAP=([build]=150 [native]=100 [triton]=150 [sanitize]=90)
fi
T0=$SECONDS
status=0

export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} # scripts/gpu_sanitize.py imports fastops from here
# One seed for every pytest process (xdist workers must collect the same tests); printed in the log.
export FASTOPS_TEST_SEED=${FASTOPS_TEST_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
NPROC=$(nproc 2>/dev/null || echo 4)
export MAX_JOBS=${MAX_JOBS:-$NPROC}

log() { echo "$*" | tee -a "$LOG"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
# Seconds left before deadline $1 (relative to the start). A dry run counts each stage as taking
# its whole cap, so the timeouts it prints are the ones a run that uses every cap would get.
DRY_T=0
left() {
  if ((DRY)); then
    echo $(($1 - DRY_T))
  else
    echo $((T0 + $1 - SECONDS))
  fi
}
record() { printf '%-10s %-5s %s\n' "$1" "$2" "$3" >>"$SUMMARY"; }

# run_cmd NAME TIMEOUT CMD...: the command under `timeout`, its output appended to suite.log; returns its rc.
run_cmd() {
  local name=$1 limit=$2
  shift 2
  log "== $name (timeout ${limit}s): $(printf '%q ' "$@")"
  if [[ $DRY -eq 1 ]]; then
    log "   (dry run: not run)"
    return 0
  fi
  if ((limit < 5)); then
    log "== $name: no time left"
    return 124
  fi
  local rc=0
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG" || rc=$?
  log "== $name: exit $rc"
  return "$rc"
}

# stage NAME FUNCTION: run a stage, time it, record it in stages.txt, refresh failures.txt.
stage() {
  local name=$1 fn=$2
  if ! want "$name"; then
    record "$name" skip 0
    return 0
  fi
  local t=$SECONDS rc=0
  "$fn" || rc=$?
  record "$name" "$rc" $((SECONDS - t))
  ((DRY)) && [[ -n ${CAP[$name]:-} ]] && DRY_T=$((DRY_T + CAP[$name]))
  # Failed tests (pytest -rfE summary lines) and sanitizer reports, so far.
  grep -E '(^| )(FAILED|ERROR) |^=+ .*[0-9]+ (failed|errors?)[ ,]|^========= (Invalid|Race|Barrier|Uninitialized|ERROR SUMMARY|Error)|^FAIL |^Traceback|^== .*: (exit [1-9]|no time left)|Timeout' "$LOG" >"$FAILURES" || true
  [[ $rc -eq 0 ]] || status=1
  return 0
}

# A core stage's timeout: what is left of the core deadline less the caps of the stages after it
# (so time an earlier stage did not use flows on), at least its own cap, at most what is left.
stage_limit() {
  local name=$1 rest later=0 after=0 s limit
  rest=$(left "$CORE_DEADLINE")
  for s in build native triton sanitize; do
    ((after)) && want "$s" && later=$((later + CAP[$s]))
    [[ $s == "$name" ]] && after=1
  done
  limit=$((rest - later))
  ((limit < CAP[$name])) && limit=${CAP[$name]}
  ((limit > rest)) && limit=$rest
  echo "$limit"
}

# ---- environment -------------------------------------------------------------------------------
if [[ -z "${CUDA_HOME:-}" ]]; then
  nvcc_path=$(command -v nvcc 2>/dev/null || true)
  for c in /usr/local/cuda ${nvcc_path:+"$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")"}; do
    if [[ -x "$c/bin/nvcc" && -f "$c/include/cuda.h" ]]; then
      export CUDA_HOME=$c
      break
    fi
  done
fi
# The visible GPU's arch only (setup.py, torch's default otherwise: every visible device's arch).
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]] && command -v nvidia-smi >/dev/null 2>&1; then
  TORCH_CUDA_ARCH_LIST=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | sort -u | paste -sd';' || true)
  [[ -n $TORCH_CUDA_ARCH_LIST ]] && export TORCH_CUDA_ARCH_LIST
fi
SANITIZER=$(command -v compute-sanitizer 2>/dev/null || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
PYTEST_OPTS=(-p no:cacheprovider -rfE -v --durations=10)
if "$PYTHON" -c "import xdist" 2>/dev/null && [[ $DRY -eq 0 ]]; then
  PYTEST_OPTS+=(-n "${PYTEST_WORKERS:-8}")
fi
if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then
  PYTEST_OPTS+=(--timeout=60)
fi
{
  date -u
  echo "mode=$MODE dry_run=$DRY budget=${BUDGET}s core_deadline=${CORE_DEADLINE}s stages: $STAGES"
  nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  "$PYTHON" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'cuda available', torch.cuda.is_available())" 2>&1 || true
  echo "CUDA_HOME=${CUDA_HOME:-} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} MAX_JOBS=$MAX_JOBS FASTOPS_TEST_SEED=$FASTOPS_TEST_SEED"
  echo "compute-sanitizer: $SANITIZER"
  git log --oneline -1 2>/dev/null || true
} >>"$LOG" 2>&1
if [[ $DRY -eq 0 ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  log "no CUDA device visible: use --dry-run on a CPU machine"
  record cuda-check 1 0
  exit 1
fi

# ---- 1 build -----------------------------------------------------------------------------------
build() {
  if [[ $DRY -eq 1 ]]; then
    # What the device runs, printed; here: setup.py's choice of sources and archs for that command.
    run_cmd build "$(stage_limit build)" env FASTOPS_BUILD_CUDA=1 "$PYTHON" setup.py -q build_ext --inplace
    local rc=0
    log "== build check: setup.py's extension (no compile), CUDA_HOME=${CUDA_HOME:-none}"
    timeout 60 "$PYTHON" - >>"$LOG" 2>&1 <<'EOF' || rc=$?
import os, runpy, sys
import setuptools

captured = {}
setuptools.setup = lambda **kw: captured.update(kw)
sys.argv = ["setup.py", "--name"]
runpy.run_path("setup.py", run_name="__main__")
ext = captured["ext_modules"][0]
cu = [s for s in ext.sources if s.endswith(".cu")]
print(f"setup.py: {ext.name}, {len(ext.sources)} sources, {len(cu)} CUDA, "
      f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}")
assert ext.name == "fastops._C" and ext.sources
EOF
    log "== build check: exit $rc"
    "$PYTHON" -c "import fastops, pprint; pprint.pprint(fastops.backends())" >>"$LOG" 2>&1 || rc=1
    return "$rc"
  fi
  # No clean first: build_ext replaces fastops/_C*.so, build/temp* lets ninja skip unchanged sources
  # on a second call, and a failed build stops the run below, so a stale library is never tested.
  run_cmd build "$(stage_limit build)" env FASTOPS_BUILD_CUDA=1 "$PYTHON" setup.py -q build_ext --inplace || return $?
  # What built it, and whether a C++ argument error with a number in its message raises or kills
  # the process, on each device (on the first H100 run every such CUDA error was a SIGSEGV; the
  # messages are now built without ostream: csrc/fastops.h, fastops::msg). Logged, never fatal.
  {
    echo "== toolchain: CC=${CC:-} CXX=${CXX:-}"
    "${CXX:-c++}" --version 2>&1 | head -n 1
    nvcc --version 2>&1 | tail -n 1
    ldd fastops/_C*.so 2>&1 | grep -E 'stdc\+\+|gcc_s|libc10' || true
    for dev in cpu cuda; do
      timeout 60 "$PYTHON" -c "
import torch, fastops.functional as FF
x, w = torch.randn(2, 4, 5, 5, device='$dev'), torch.randn(3, 5, 3, 3, device='$dev')
try:
    FF.conv2d(x, w, backend='native')
except ValueError as e:
    print('$dev: a C++ argument error raised ValueError:', str(e)[:80])
"
      echo "== C++ error smoke on $dev: exit $? (139 or -11: the process crashed)"
    done
  } >>"$LOG" 2>&1
  # The native CUDA backend must be there, or stages 2 and 4 test nothing.
  run_cmd backends 30 "$PYTHON" -c "
import fastops, fastops.functional as FF, pprint, torch
pprint.pprint(fastops.backends())
x = torch.randn(4, 8, device='cuda')
y = FF.linear_relu(x, torch.randn(3, 8, device='cuda'), backend='native')
torch.cuda.synchronize()
print('native CUDA linear_relu ran:', tuple(y.shape))
"
}

# ---- 2, 3 tests --------------------------------------------------------------------------------
tests() { # tests NAME MARKEXPR [ENV=VAL...]
  local name=$1 mark=$2
  shift 2
  if [[ $DRY -eq 1 ]]; then
    run_cmd "$name" "$(stage_limit "$name")" env "$@" "$PYTHON" -m pytest -m "$mark" "${PYTEST_OPTS[@]}" tests
    local rc=0
    log "== $name collection: pytest --collect-only -m \"$mark\""
    timeout 120 env "$@" "$PYTHON" -m pytest --collect-only -q -m "$mark" -p no:cacheprovider tests >"$OUT/.collect" 2>&1 || rc=$?
    tail -n 3 "$OUT/.collect" | tee -a "$LOG"
    rm -f "$OUT/.collect"
    log "== $name collection: exit $rc"
    return "$rc"
  fi
  run_cmd "$name" "$(stage_limit "$name")" env "$@" "$PYTHON" -m pytest -m "$mark" "${PYTEST_OPTS[@]}" tests
}
native() { tests native "gpu and not triton" FASTOPS_TRITON_AUTOTUNE=1; }
triton_tests() {
  local autotune=0
  [[ $MODE == full ]] && autotune=1
  tests triton "gpu and triton" FASTOPS_TRITON_AUTOTUNE=$autotune
}

# ---- 4 sanitize --------------------------------------------------------------------------------
# Our kernels only (substring of the kernel's name): the sanitizers skip cuDNN/cuBLAS and torch's own.
# Every fastops CUDA / Triton kernel's name starts with its op's stem, and the stems are the op
# registry's (fastops.ops.OPS), so a new op is filtered in with no edit here. Read after the build.
SAN_FILTER=()
SAN_OPTS=(--error-exitcode 86 --report-api-errors no --print-limit 20)
san_filter() {
  local stems
  if stems=$("$PYTHON" -c "from fastops.ops import STEMS; print(' '.join(STEMS))" 2>>"$LOG") && [[ -n $stems ]]; then
    for stem in $stems; do SAN_FILTER+=(--kernel-name "kns=${stem}_"); done
  else
    log "the op registry could not be read: every kernel is checked (slower)"
  fi
}
sanitize() {
  san_filter
  if [[ $DRY -eq 1 ]]; then
    local limit
    limit=$(stage_limit sanitize)
    run_cmd sanitize-memcheck $((limit * 3 / 5)) env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck \
      "${SAN_OPTS[@]}" "${SAN_FILTER[@]}" "$PYTHON" scripts/gpu_sanitize.py
    run_cmd sanitize-racecheck $((limit - limit * 3 / 5)) "$SANITIZER" --tool racecheck "${SAN_OPTS[@]}" "${SAN_FILTER[@]}" \
      "$PYTHON" scripts/gpu_sanitize.py --quick
    local rc=0
    log "== sanitize: CPU smoke of the workload (python scripts/gpu_sanitize.py --device cpu --dtype float32 --quick)"
    "$PYTHON" scripts/gpu_sanitize.py --check-args >>"$LOG" 2>&1 || rc=$?
    timeout 120 "$PYTHON" scripts/gpu_sanitize.py --device cpu --dtype float32 --quick 2>&1 | tee -a "$LOG" || rc=$?
    log "== sanitize smoke: exit $rc"
    return "$rc"
  fi
  if [[ ! -x $SANITIZER ]]; then
    log "compute-sanitizer not found: the workload without it"
    run_cmd sanitize "$(stage_limit sanitize)" "$PYTHON" scripts/gpu_sanitize.py
    return 1 # not a sanitizer pass
  fi
  local rc=0 end
  end=$((SECONDS + $(stage_limit sanitize)))
  "$SANITIZER" --version 2>&1 | tail -n 1 | tee -a "$LOG"
  # --help goes to stderr in some versions (2025.3.1 on the H100 seemed to lack the option with
  # 2>/dev/null here, and every kernel was checked); the filter lines are logged either way.
  "$SANITIZER" --help 2>&1 | grep -iE -- '--kernel-(name|regex)' | tee -a "$LOG" || true
  if ! "$SANITIZER" --help 2>&1 | grep -q -- '--kernel-name'; then
    log "this compute-sanitizer has no --kernel-name: every kernel is checked (slower)"
    SAN_FILTER=()
  fi
  # No caching allocator: every tensor is its own cudaMalloc, so an out-of-bounds access lands
  # outside an allocation instead of in a neighbouring cached block.
  run_cmd sanitize-memcheck $(((end - SECONDS) * 3 / 5)) env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck \
    "${SAN_OPTS[@]}" "${SAN_FILTER[@]}" "$PYTHON" scripts/gpu_sanitize.py || rc=$?
  local tools=(racecheck)
  [[ $MODE == full ]] && tools+=(synccheck initcheck)
  for tool in "${tools[@]}"; do
    local quick=(--quick)
    [[ $MODE == full ]] && quick=()
    run_cmd "sanitize-$tool" $((end - SECONDS)) "$SANITIZER" --tool "$tool" "${SAN_OPTS[@]}" \
      "${SAN_FILTER[@]}" "$PYTHON" scripts/gpu_sanitize.py "${quick[@]}" || rc=$?
  done
  return "$rc"
}

# ---- 5 bench -----------------------------------------------------------------------------------
bench() {
  local quick=(--quick) limit
  [[ $MODE == full ]] && quick=()
  limit=$(left "$BUDGET")
  ((limit < 30)) && limit=30 # the ceilings and a few rows still fit
  if [[ $DRY -eq 1 ]]; then
    run_cmd bench "$limit" "$PYTHON" -m bench "${quick[@]}" --device cuda --out "$OUT/bench"
    log "== bench check: python -m bench --list"
    "$PYTHON" -m bench --list 2>&1 | tee -a "$LOG"
    return "${PIPESTATUS[0]}"
  fi
  run_cmd bench "$limit" "$PYTHON" -m bench "${quick[@]}" --device cuda --out "$OUT/bench"
}

stage build build
if [[ $DRY -eq 0 ]] && want build && ! grep -qE '^build +0 ' "$SUMMARY"; then
  log "build failed: the later stages need the extension; stopping"
  for s in native triton sanitize bench; do record "$s" skip 0; done
  exit 1
fi
stage native native
stage triton triton_tests
stage sanitize sanitize
stage bench bench
log "== done in $((SECONDS - T0)) s (mode $MODE$([[ $DRY -eq 1 ]] && echo ', dry run')); exit $status"
if [[ -s $FAILURES ]]; then
  echo "-- failures.txt (first 40 lines):"
  head -n 40 "$FAILURES"
fi
tee -a "$LOG" <"$SUMMARY"
exit $status
