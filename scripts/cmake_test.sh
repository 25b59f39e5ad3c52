#!/usr/bin/env bash
# Configure, build and test the CMake build of fastops (CMakeLists.txt): libfastops.so from csrc/
# plus the C++ cross-entropy test (tests/cpp/), run by ctest. From anywhere in a checkout:
#
#   PYTHON=.venv/bin/python bash scripts/cmake_test.sh
#
# Environment:
#   PYTHON                the python whose torch to build against (default python3)
#   FASTOPS_CUDA=0|1      force csrc/cuda/*.cu off / on (default: on when torch has CUDA and nvcc is
#                         found); setup.py's FASTOPS_BUILD_CUDA is taken when FASTOPS_CUDA is unset
#   FASTOPS_CPU_ISA=avx512|avx2|default   as setup.py (default: the best this machine has)
#   FASTOPS_DEBUG=1       Debug build (-O0 -g, -G for nvcc), as setup.py
#   TORCH_CUDA_ARCH_LIST  nvcc archs (default: the visible GPUs', else 9.0)
#   CUDA_HOME             the CUDA toolkit (default: the nvcc on PATH, else /usr/local/cuda)
#   JOBS                  parallel compile jobs (default 2)
#   CMAKE_CUDA_OBJECTS=all|one   with CUDA on: compile every csrc/cuda/*.cu into the library (all,
#                         the default), or (one) build and test the library CPU-only and, in a second
#                         build dir (build-cmake-cuda/), configure with CUDA and compile the smallest
#                         .cu only: the CMake + nvcc flags checked on one object. `make test` passes
#                         one, because its setup.py build has already compiled every .cu (the rest
#                         took 170 of the stage's 290 s on a 2-core CI machine).
# cmake (>= 3.22) and, optionally, ninja come from PATH or from the python's bin directory
# (`pip install cmake ninja` into the venv). Builds into build-cmake/, reused between runs (a
# different torch wipes it); compile_commands.json lands there too.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
BUILD_DIR=build-cmake
JOBS=${JOBS:-2}

if ! info=$("$PYTHON" -c 'import os, sys, torch
print(torch.utils.cmake_prefix_path)
print(os.path.realpath(os.path.dirname(torch.__file__)))
print(os.path.dirname(sys.executable))
print(torch.__version__, "CUDA", torch.version.cuda)'); then
  echo "cmake_test.sh: '$PYTHON' cannot import torch (set PYTHON=/path/to/venv/bin/python)" >&2
  exit 1
fi
{ read -r torch_prefix; read -r torch_root; read -r python_bin; read -r torch_desc; } <<<"$info"
export PATH="$PATH:$python_bin"
command -v cmake >/dev/null || { echo "cmake_test.sh: cmake not found (apt install cmake, or pip install cmake)" >&2; exit 1; }

case "${FASTOPS_CUDA:-${FASTOPS_BUILD_CUDA:-auto}}" in
  0 | OFF | off) cuda=OFF ;;
  1 | ON | on) cuda=ON ;;
  auto | AUTO | "") cuda=AUTO ;;
  *) echo "cmake_test.sh: FASTOPS_CUDA must be 0 or 1, got '${FASTOPS_CUDA:-${FASTOPS_BUILD_CUDA:-}}'" >&2; exit 1 ;;
esac

# A build dir configured against another torch keeps that torch's cached paths: start it afresh.
wipe_if_other_torch() { # build dir
  [[ -f "$1/CMakeCache.txt" ]] || return 0
  local cached_root
  cached_root=$(sed -n 's/^FASTOPS_TORCH_ROOT:INTERNAL=//p' "$1/CMakeCache.txt")
  if [[ "$cached_root" != "$torch_root" ]]; then
    echo "cmake_test.sh: $1/ was configured for ${cached_root:-another torch}; removing it"
    rm -rf "$1"
  fi
}
wipe_if_other_torch "$BUILD_DIR"
build_type=Release
[[ "${FASTOPS_DEBUG:-0}" == 1 ]] && build_type=Debug
generator=()
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]] && command -v ninja >/dev/null; then
  generator=(-G Ninja)
fi

configure() { # build dir, FASTOPS_CUDA, generator args...
  local dir=$1 cu=$2
  shift 2
  cmake -S . -B "$dir" "$@" \
    -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DFASTOPS_CUDA="$cu" \
    -DFASTOPS_CPU_ISA="${FASTOPS_CPU_ISA:-AUTO}" \
    -DCMAKE_BUILD_TYPE="$build_type"
}

objects=${CMAKE_CUDA_OBJECTS:-all}
[[ $objects == all || $objects == one ]] || { echo "cmake_test.sh: CMAKE_CUDA_OBJECTS must be all or one, got '$objects'" >&2; exit 1; }
if [[ $objects == one && $cuda != OFF ]]; then
  command -v ninja >/dev/null || { echo "cmake_test.sh: CMAKE_CUDA_OBJECTS=one needs ninja" >&2; exit 1; }
  probe_dir=build-cmake-cuda
  wipe_if_other_torch "$probe_dir"
  probe_gen=()
  [[ -f "$probe_dir/CMakeCache.txt" ]] || probe_gen=(-G Ninja)
  cu_src=$(ls -S csrc/cuda/*.cu | tail -n 1) # the smallest: the flags are what is checked
  echo "cmake_test.sh: CMAKE_CUDA_OBJECTS=one: configuring $probe_dir with FASTOPS_CUDA=$cuda, compiling $cu_src"
  t0=$SECONDS
  configure "$probe_dir" "$cuda" ${probe_gen[@]+"${probe_gen[@]}"}
  if ! grep -q "^FASTOPS_CUDA_ENABLED:INTERNAL=ON\$" "$probe_dir/CMakeCache.txt"; then
    if [[ $cuda == ON ]]; then
      echo "cmake_test.sh: FASTOPS_CUDA=ON but $probe_dir configured without CUDA" >&2
      exit 1
    fi
    echo "cmake_test.sh: CUDA not available to CMake here (torch without CUDA or no nvcc); nothing compiled"
  else
    # In the background: one nvcc job beside the CPU build's, on a machine with cores to spare for it.
    probe_log="$probe_dir/probe.log"
    ninja -C "$probe_dir" "CMakeFiles/fastops.dir/$cu_src.o" >"$probe_log" 2>&1 &
    probe_pid=$!
  fi
  cuda=OFF
fi

echo "cmake_test.sh: torch $torch_desc ($PYTHON), FASTOPS_CUDA=$cuda, $build_type, $(cmake --version | head -n1)"
t0=$SECONDS
configure "$BUILD_DIR" "$cuda" ${generator[@]+"${generator[@]}"}
t1=$SECONDS
cmake --build "$BUILD_DIR" -j "$JOBS"
t2=$SECONDS
echo "cmake_test.sh: configure took $((t1 - t0)) s, build took $((t2 - t1)) s (-j $JOBS)"
if [[ -n ${probe_pid:-} ]]; then
  if ! wait "$probe_pid"; then
    cat "$probe_log" >&2
    echo "cmake_test.sh: CMake's nvcc rule failed on $cu_src (log: $probe_log)" >&2
    exit 1
  fi
  echo "cmake_test.sh: $cu_src compiled by CMake's nvcc rule (done $((SECONDS - t1)) s after the configure)"
fi
ctest --test-dir "$BUILD_DIR" --output-on-failure
echo "cmake_test.sh: ctest took $((SECONDS - t2)) s; all passed"
