"""Build fastops._C: csrc/cpu/*.cpp always, csrc/cuda/*.cu when torch has CUDA and nvcc exists.

Environment switches:
  FASTOPS_BUILD_CUDA=0|1   force the CUDA sources off / on (default: on when torch.version.cuda
                           is set and nvcc is found; no GPU is needed to compile)
  TORCH_CUDA_ARCH_LIST     the archs to compile for (default here: 9.0 when no GPU is visible)
  FASTOPS_DEBUG=1          -O0 -g (and -lineinfo -G for nvcc)
  FASTOPS_CPU_ISA=avx512|avx2|default
                           the at::vec instruction set for the C++ kernels (default: the best the
                           build machine has; the extension is built where it runs)
  FASTOPS_SANITIZE=1       AddressSanitizer + UndefinedBehaviorSanitizer on the C++ (CPU) sources,
                           compile and link, -O1 -g; implies FASTOPS_BUILD_CUDA=0 and (unless set)
                           FASTOPS_CPU_ISA=default. Built out of tree by scripts/sanitize.sh (run
                           with libasan preloaded)
"""

from __future__ import annotations

import glob
import os
import shutil
import site
import sys

try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - exercised by a plain `pip install .` without torch
    sys.exit(
        "fastops builds against the PyTorch you already have, so torch must be installed first:\n"
        "    pip install torch\n"
        "    pip install --no-build-isolation -e .\n"
        "(`--no-build-isolation` lets the build see that torch.)"
    )


def _find_cuda_home() -> str | None:
    """CUDA_HOME, else the toolkit that owns the nvcc on PATH, else /usr/local/cuda."""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env and os.path.exists(os.path.join(env, "bin", "nvcc")):
        return env
    nvcc = shutil.which("nvcc")
    if nvcc:
        # /usr/local/bin/nvcc is often a symlink into /usr/local/cuda/bin: resolve it, or torch
        # guesses /usr/local and the link fails on -lcudart.
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(root, "lib64")) or os.path.exists(os.path.join(root, "include", "cuda.h")):
            return root
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


CUDA_HOME = _find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME  # must precede the cpp_extension import, which reads it

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("FASTOPS_DEBUG", "0") == "1"
SANITIZE = os.environ.get("FASTOPS_SANITIZE", "0") == "1"
# Abort on the first report of either sanitizer (UBSan would otherwise print and carry on).
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]


def _want_cuda() -> bool:
    forced = os.environ.get("FASTOPS_BUILD_CUDA")
    if SANITIZE:
        # The sanitized build checks the C++ CPU kernels; nvcc device code is compute-sanitizer's job.
        if forced == "1":
            sys.exit("FASTOPS_SANITIZE=1 builds the C++ (CPU) sources only; unset FASTOPS_BUILD_CUDA or set it to 0")
        return False
    if forced is not None:
        if forced == "1" and (torch.version.cuda is None or CUDA_HOME is None):
            sys.exit("FASTOPS_BUILD_CUDA=1 but torch has no CUDA build or nvcc was not found (set CUDA_HOME)")
        return forced == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def _nvidia_wheel_includes() -> list[str]:
    """ATen's CUDA headers include cublas_v2.h, cusparse.h...: pip's CUDA torch keeps them in the
    nvidia-* wheels (site-packages/nvidia/cu13/include or nvidia/<lib>/include), not in CUDA_HOME."""
    dirs: list[str] = []
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        dirs += glob.glob(os.path.join(sp, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(sp, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def _cpu_isa_flags() -> list[str]:
    isa = os.environ.get("FASTOPS_CPU_ISA")
    if isa is None and SANITIZE:
        # at::vec's AVX2/AVX-512 partial loads and stores are masked intrinsics, which GCC's ASan does
        # not instrument (a planted one-past-the-end tail store went unreported); the DEFAULT
        # Vectorized<T> moves the same counts with memcpy and loops, which it checks.
        isa = "default"
    if isa is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
            if all(f" {f}" in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma")):
                isa = "avx512"
            elif " avx2" in flags and " fma" in flags:
                isa = "avx2"
            else:
                isa = "default"
        except OSError:
            isa = "default"
    if isa == "avx512":
        # The capability torch itself dispatches to on such CPUs (torch.backends.cpu.get_cpu_capability()).
        return ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
                "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if isa == "avx2":
        # at::vec picks its Vectorized<T> specialisation from CPU_CAPABILITY_*; the Sleef math
        # it calls is exported by libtorch_cpu.
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


def _extension():
    cxx = ["-std=c++20", "-fvisibility=hidden"]
    if SANITIZE:
        cxx += ["-O0" if DEBUG else "-O1", "-g"]  # -O1: usable stack traces at a bearable speed
    else:
        cxx += ["-O0", "-g"] if DEBUG else ["-O3"]
    cxx += _cpu_isa_flags()
    # at::parallel_for is a header template: without -fopenmp its `#pragma omp parallel` is compiled
    # out and every kernel runs on one thread (torch's own libgomp.so.1, already loaded, serves it).
    cxx += ["-fopenmp"]
    link = ["-fopenmp"]
    if SANITIZE:
        # -Wno-maybe-uninitialized: at -O1 with ASan, GCC 12 flags torch's at::vec headers by the page.
        cxx += SANITIZE_FLAGS + ["-Wno-maybe-uninitialized"]
        link += SANITIZE_FLAGS
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not _want_cuda():
        return CppExtension(
            "fastops._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx}, extra_link_args=link
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"  # else torch compiles every arch it knows
    nvcc = ["-std=c++20", "--expt-relaxed-constexpr", "-DFASTOPS_CUDA"]
    nvcc += ["-O0", "-g", "-G", "-lineinfo"] if DEBUG else ["-O3", "-lineinfo"]
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    return CUDAExtension(
        "fastops._C",
        sources,
        include_dirs=include_dirs + _nvidia_wheel_includes(),
        extra_compile_args={"cxx": cxx + ["-DFASTOPS_CUDA"], "nvcc": nvcc},
        extra_link_args=link,
    )


setup(
    name="fastops",
    packages=find_packages(include=["fastops", "fastops.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
