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
if [[ -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cached_root=$(sed -n 's/^FASTOPS_TORCH_ROOT:INTERNAL=//p' "$BUILD_DIR/CMakeCache.txt")
  if [[ "$cached_root" != "$torch_root" ]]; then
    echo "cmake_test.sh: $BUILD_DIR/ was configured for ${cached_root:-another torch}; removing it"
    rm -rf "$BUILD_DIR"
  fi
fi
build_type=Release
[[ "${FASTOPS_DEBUG:-0}" == 1 ]] && build_type=Debug
generator=()
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]] && command -v ninja >/dev/null; then
  generator=(-G Ninja)
fi

echo "cmake_test.sh: torch $torch_desc ($PYTHON), FASTOPS_CUDA=$cuda, $build_type, $(cmake --version | head -n1)"
t0=$SECONDS
cmake -S . -B "$BUILD_DIR" ${generator[@]+"${generator[@]}"} \
  -DCMAKE_PREFIX_PATH="$torch_prefix" \
  -DFASTOPS_CUDA="$cuda" \
  -DFASTOPS_CPU_ISA="${FASTOPS_CPU_ISA:-AUTO}" \
  -DCMAKE_BUILD_TYPE="$build_type"
t1=$SECONDS
cmake --build "$BUILD_DIR" -j "$JOBS"
t2=$SECONDS
echo "cmake_test.sh: configure took $((t1 - t0)) s, build took $((t2 - t1)) s (-j $JOBS)"
ctest --test-dir "$BUILD_DIR" --output-on-failure
echo "cmake_test.sh: ctest took $((SECONDS - t2)) s; all passed"
