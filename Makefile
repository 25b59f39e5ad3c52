# fastops: README's two commands live here.
#   make bench   set up, build, then the benchmark suite (python -m bench) and the digits training demo
#   make test    set up, build, lint, pytest (CPU; GPU tests run when a GPU is visible), CMake + ctest,
#                the C++ kernels' native tests under ASan + UBSan (make sanitize), and a --quick smoke
#                run of the benchmark suite (its checks must pass; no timing claims)
# Both do all set-up on a fresh machine: a venv in .venv with torch, then the extension.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CUDA build of torch, so the CUDA sources compile everywhere (no GPU needed to build).
TORCH_SPEC ?= torch==2.14.1
# torchvision must be the release built for that torch (0.29.1 <-> 2.14.1); scikit-learn carries the
# digits data set of the training demo; transformers builds the tiny causal LMs of tests/test_hf.py
# from configs (no downloads). They feed tests/test_swap.py, tests/test_hf.py, the examples and the demo.
MODEL_DEPS ?= torchvision==0.29.1 scikit-learn transformers==5.24.0
DEPS := numpy pytest pytest-xdist hypothesis expecttest ruff ninja matplotlib setuptools wheel rich pandas

# nvcc's toolkit, the archs to build when no GPU is visible, and the CUDA switch for both builds.
export CUDA_HOME ?= $(shell [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda)
export TORCH_CUDA_ARCH_LIST ?= 9.0

.PHONY: setup build test pytest ctest sanitize lint format bench bench-quick install-check gpu-dry-run clean

setup: $(VENV)/.deps-installed

$(VENV)/.deps-installed: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(DEPS)
	$(PY) -m pip install -q $(MODEL_DEPS) || echo "note: $(MODEL_DEPS) could not be installed; the model tests will skip"
	touch $@

build: setup
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import fastops, pprint; pprint.pprint(fastops.backends())"

lint: setup
	$(VENV)/bin/ruff check fastops tests bench buildsupport examples
	$(VENV)/bin/ruff format --check fastops tests bench buildsupport examples

# pytest-xdist: one worker per core, at most 4 (each worker's torch runs its own intra-op threads).
# worksteal: the Triton-interpreter gradchecks take up to a minute each, so idle workers take queued
# tests from busy ones instead of waiting out a fixed split. conftest.py gives every worker one seed.
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

pytest: build
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal

# CMAKE_CUDA_OBJECTS=one: the CMake library and ctest CPU-only, plus one .cu compiled by CMake's nvcc
# rule (its flags checked); setup.py's build (make build, before pytest in make test) compiles every
# .cu. `make ctest CMAKE_CUDA_OBJECTS=all` compiles them all in CMake too.
CMAKE_CUDA_OBJECTS ?= one

ctest: setup
	PYTHON=$(PY) CMAKE_CUDA_OBJECTS=$(CMAKE_CUDA_OBJECTS) bash scripts/cmake_test.sh

# The C++ CPU kernels built with ASan + UBSan (into build/sanitize; the editable build is untouched),
# running the native tests, the bad-input table and the native fuzz; any sanitizer report fails it.
sanitize: setup
	PYTHON=$(PY) bash scripts/sanitize.sh

test: lint pytest ctest sanitize bench-quick install-check gpu-dry-run

# scripts/gpu_suite.sh --dry-run: the GPU first-light script walked on this machine (every stage's
# command printed, setup.py's extension, GPU test collection, a CPU smoke of scripts/gpu_sanitize.py,
# the bench module list), so it cannot break unseen between GPU leases. Under 2 minutes.
gpu-dry-run: build
	OUT=build/gpu-dry-run PYTHON=$(PY) bash scripts/gpu_suite.sh --dry-run

bench: build
	$(PY) -m bench
	$(PY) -m fastops.demo

# A non-editable `pip install .` (build isolation, CPU-only build) into a fresh venv that reuses this
# venv's packages, checked from a directory outside the repo: the torch pin in the wheel metadata, no
# top-level `bench`, the console scripts, `python -m fastops.bench --quick` and the demo (scripts/install_check.sh).
install-check: setup
	PYTHON=$(PY) bash scripts/install_check.sh

bench-quick: build
	$(PY) -m bench --quick --out /tmp/fastops-bench-quick

format: setup
	$(VENV)/bin/ruff format fastops tests bench buildsupport examples
	$(VENV)/bin/ruff check --fix fastops tests bench buildsupport examples

clean:
	rm -rf build build-cmake build-cmake-cuda *.egg-info fastops/_C*.so
