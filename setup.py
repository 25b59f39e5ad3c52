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
                           compile and link, -O1 -g1; implies FASTOPS_BUILD_CUDA=0 and (unless set)
                           FASTOPS_CPU_ISA=default. Built out of tree by scripts/sanitize.sh (run
                           with libasan preloaded)

What the build records (fastops/_build_info.py, written next to the built fastops._C by build_ext):
the torch it compiled against, whether the CUDA kernels are in, and the source commit;
fastops/_build_check.py compares it with the torch that imports fastops. The wheel's metadata
pins the same torch (Requires-Dist: torch==<public version>), so pip keeps the two together.

The benchmark suite, the repository's bench/ folder, is installed as the package fastops._bench
(`python -m fastops.bench`, `fastops-bench`): no top-level package named `bench` goes into
site-packages.

Build isolation (plain `pip install .`): pip builds in a fresh environment without the torch the
extension must be compiled against; buildsupport/fastops_build_backend.py (this project's PEP 517
backend, setuptools' with one addition) puts the installing interpreter's torch on the build's path.
"""

from __future__ import annotations

import glob
import os
import shutil
import site
import subprocess
import sys

try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - exercised by a build in an environment without torch
    sys.exit(
        f"fastops compiles against the PyTorch it will run with, and {sys.executable} cannot import torch "
        "(neither in this build's environment nor, under pip's build isolation, in its own). Install "
        "torch first, then build against it:\n"
        "    pip install torch\n"
        "    pip install --no-build-isolation .        # or -e . for a development install"
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
    # Python's own CFLAGS, which torch's build puts first, carry -g: full debug info made every
    # object take 1.6x as long to compile (csrc/cpu/linear_relu.cpp: 31 s with -g, 19.5 s with -g0, 38 s
    # vs 22 s under the sanitizers with -g1). The later flag wins: none in a release build, line
    # tables only (-g1, all a sanitizer's stack trace reads) in a sanitized one, full in a debug one.
    if SANITIZE:
        cxx += ["-O0" if DEBUG else "-O1", "-g" if DEBUG else "-g1"]  # -O1: usable stack traces at a bearable speed
    else:
        cxx += ["-O0", "-g"] if DEBUG else ["-O3", "-g0"]
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


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _build_info(cuda_kernels: bool) -> str:
    """The text of fastops/_build_info.py for this build."""
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return (
        '"""Written by setup.py when fastops._C was built; read by fastops/_build_check.py."""\n\n'
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"TORCH_CUDA_VERSION = {torch.version.cuda!r}\n"
        f"CUDA_KERNELS = {cuda_kernels!r}\n"
        f"GIT_COMMIT = {_git('rev-parse', 'HEAD')!r}\n"
        f"GIT_DIRTY = {None if dirty is None else bool(dirty)!r}\n"
    )


class BuildExtWithInfo(BuildExtension):
    """torch's BuildExtension (ninja), then fastops/_build_info.py beside the built _C: in the
    source tree for --inplace and editable builds, in build_lib for wheels."""

    def run(self) -> None:
        super().run()
        ext = self.extensions[0]
        text = _build_info(any(s.endswith(".cu") for s in ext.sources))
        # get_ext_fullpath follows --inplace, which editable installs set too
        path = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_build_info.py")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


# The public version only: 2.14.1 is satisfied by 2.14.1+cu130 and 2.14.1+cpu alike (the CUDA-vs-CPU
# mismatch is _build_check's), and a wheel is never installed beside another torch release.
TORCH_PIN = f"torch=={torch.__version__.split('+')[0]}"

setup(
    # The bench/ folder is the package fastops._bench: `python -m bench` in a checkout,
    # `python -m fastops.bench` wherever fastops is installed, never a top-level `bench`.
    packages=find_packages(include=["fastops", "fastops.*"]) + ["fastops._bench"],
    package_dir={"fastops._bench": "bench"},
    install_requires=["numpy", TORCH_PIN],
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtWithInfo.with_options(use_ninja=True)},
)
