#!/usr/bin/env bash
# A non-editable install of this checkout into a fresh venv, used from a directory outside the
# repository: what a user who runs `pip install .` gets. Checks that
#   - plain `pip install <repo>` builds (pip's build isolation; the project's build backend lets the
#     build see the installed torch, so nothing large downloads; FASTOPS_INSTALL_ISOLATION=0 uses
#     --no-build-isolation instead, fully offline),
#   - the wheel pins the torch it was compiled against and records it in fastops/_build_info.py,
#   - no top-level `bench` package lands in site-packages; the suite is fastops._bench,
#   - `python -m fastops.bench` refuses (exit 3) when the native backend is missing,
#   - `python -m fastops.bench --quick` passes its checks, from outside the repository (by default
#     for cross_entropy and the model-level train_step, which imports fastops.demo and
#     fastops.testing from the install; INSTALL_CHECK_BENCH_ARGS= (empty) runs every module, as
#     `make bench-quick` does from the checkout),
#   - `python -m fastops.demo` runs from the installed package (INSTALL_CHECK_DEMO=0 skips it).
#
# The venv reuses $PYTHON's packages (torch, numpy, rich, pandas, matplotlib, scikit-learn) through
# a .pth line, and fastops is installed with --no-deps --ignore-installed so the base environment's
# own fastops (an editable install) is never touched. The extension is built CPU-only
# (FASTOPS_BUILD_CUDA=0, whatever the caller exported: .ci/run exports 1 for the main build) unless
# INSTALL_CHECK_BUILD_CUDA=1: the CUDA sources are compiled by the main build, and nvcc would take
# this check far past its few minutes.
#
#   PYTHON=.venv/bin/python bash scripts/install_check.sh        # WORK=/some/dir to keep the files
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
PYTHON=$(command -v "$PYTHON")
# An absolute path without resolving links (a venv's python is a link to the base interpreter): the
# Makefile passes .venv/bin/python, relative to the repository, and the checks below run elsewhere.
[[ $PYTHON == /* ]] || PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/fastops-install-check.XXXXXX")}
export FASTOPS_BUILD_CUDA=${INSTALL_CHECK_BUILD_CUDA:-0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
start=$SECONDS
say() { echo "install_check [$((SECONDS - start)) s]: $*"; }
mkdir -p "$WORK"
cd "$WORK" # outside the repository: neither its fastops/ nor its bench/ can shadow the install

say "venv in $WORK/venv, reusing the packages of $PYTHON"
rm -rf "$WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
VPY=$WORK/venv/bin/python
base_site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
venv_site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$base_site" >"$venv_site/_fastops_base_packages.pth"

iso=()
[[ ${FASTOPS_INSTALL_ISOLATION:-1} == 0 ]] && iso=(--no-build-isolation)
say "pip install ${iso[*]} $REPO (non-editable; FASTOPS_BUILD_CUDA=$FASTOPS_BUILD_CUDA, MAX_JOBS=$MAX_JOBS)"
"$VPY" -m pip install -q --disable-pip-version-check --no-deps --ignore-installed "${iso[@]}" "$REPO"

say "what was installed"
"$VPY" - "$venv_site" <<'PY'
import importlib.metadata as md
import importlib.util
import os
import sys

import torch

site = sys.argv[1]
import fastops
import fastops._bench
from fastops import _build_info

for mod in (fastops, fastops._bench):
    assert mod.__file__.startswith(site), f"{mod.__name__} imported from {mod.__file__}, not the venv"
assert not os.path.exists(os.path.join(site, "bench")), "a top-level bench package was installed"
assert importlib.util.find_spec("bench") is None, "a top-level `bench` is importable"
pin = f"torch=={torch.__version__.split('+')[0]}"
reqs = md.requires("fastops") or []
assert pin in [r.split(";")[0].replace(" ", "") for r in reqs], f"Requires-Dist lacks {pin}: {reqs}"
assert _build_info.TORCH_VERSION == torch.__version__, (_build_info.TORCH_VERSION, torch.__version__)
print(f"  fastops {md.version('fastops')} at {os.path.dirname(fastops.__file__)}")
print(f"  built against torch {_build_info.TORCH_VERSION}, CUDA kernels {_build_info.CUDA_KERNELS}; requires {reqs}")
print(f"  backends: native cpu {fastops.backends()['native']['cpu'][0]}")
PY

say "the fastops-bench and fastops-demo console scripts"
"$WORK/venv/bin/fastops-bench" --list
"$WORK/venv/bin/fastops-demo" --help >/dev/null

say "python -m fastops.bench must refuse when the native backend is missing"
so=$(ls "$venv_site"/fastops/_C*.so)
mv "$so" "$so.hidden"
rc=0
"$VPY" -m fastops.bench --quick --op adam --out "$WORK/refused" >"$WORK/refused.log" 2>&1 || rc=$?
mv "$so.hidden" "$so"
if [[ $rc != 3 || -e $WORK/refused ]]; then
  cat "$WORK/refused.log"
  echo "install_check: expected exit 3 and no results without fastops._C, got $rc" >&2
  exit 1
fi
grep -m1 "fastops native on" "$WORK/refused.log"

bench_args=${INSTALL_CHECK_BENCH_ARGS---op cross_entropy --op train_step}
say "python -m fastops.bench --quick $bench_args"
# shellcheck disable=SC2086  # a list of flags
"$VPY" -m fastops.bench --quick --out "$WORK/results" $bench_args >"$WORK/bench.log" 2>&1 || {
  tail -n 40 "$WORK/bench.log"
  echo "install_check: python -m fastops.bench --quick failed (log: $WORK/bench.log)" >&2
  exit 1
}
tail -n 1 "$WORK/bench.log"

if [[ ${INSTALL_CHECK_DEMO:-1} == 1 ]]; then
  say "python -m fastops.demo --epochs 6"
  # 6 epochs: both runs reach the demo's 95% test accuracy (tests/test_swap.py trains as long)
  "$VPY" -m fastops.demo --epochs 6 >"$WORK/demo.log" 2>&1 || {
    cat "$WORK/demo.log"
    echo "install_check: python -m fastops.demo failed (log: $WORK/demo.log)" >&2
    exit 1
  }
  tail -n 8 "$WORK/demo.log"
fi
say "passed"
