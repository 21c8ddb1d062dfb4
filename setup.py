"""Builds fastunlearn._C: the C++ kernels of the `cpp` backend, and with a CUDA torch the `cuda` backend.

Run with ``pip install --no-build-isolation -e .`` so the extension compiles against the torch
already installed. Everything else about the package is declared in pyproject.toml.
"""

import glob
import os
import subprocess

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
# -fopenmp: at::parallel_for expands to an OpenMP region in the extension's own code.
# -ffp-contract=off: no FMA contraction, so every ISA clone of a kernel gives the same bits.
# -fno-math-errno: sqrt vectorises (no kernel reads errno; IEEE sqrt rounds alike either way).
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-std=c++17"]


def sources(*patterns: str) -> list[str]:
    return sorted(path for pattern in patterns for path in glob.glob(os.path.join("csrc", pattern)))


def with_cuda() -> bool:
    """CUDA kernels are built when torch has CUDA and nvcc is found (FASTUNLEARN_NO_CUDA=1 opts out)."""
    return torch.version.cuda is not None and CUDA_HOME is not None and os.environ.get("FASTUNLEARN_NO_CUDA") != "1"


def shared_libstdcxx() -> list[str]:
    """The compiler's shared libstdc++, named ahead of its own -lstdc++: where that resolves to the
    static archive (a toolchain without the libstdc++.so link, or -static-libstdc++), a static copy
    inside _C formats error messages with streams that a second, uninitialised libstdc++ owns
    (torch uses the shared one) and crashes there. Where it is shared anyway, this changes nothing."""
    try:
        found = subprocess.run([os.environ.get("CXX", "c++"), "-print-file-name=libstdc++.so.6"], capture_output=True, text=True)
    except OSError:
        return []
    path = found.stdout.strip()
    return [path] if os.path.isabs(path) and os.path.exists(path) else []


def extension():
    link_args = ["-fopenmp", *shared_libstdcxx()]
    common = dict(name="fastunlearn._C", include_dirs=[os.path.join(HERE, "csrc")], extra_link_args=link_args)
    cpu_sources = sources("*.cpp", "common/*.cpp", "cpu/*.cpp")
    if not with_cuda():
        return CppExtension(sources=cpu_sources, extra_compile_args=CXX_FLAGS, **common)
    return CUDAExtension(
        sources=cpu_sources + sources("cuda/*.cpp", "cuda/*.cu"),
        define_macros=[("FASTUNLEARN_WITH_CUDA", None)],
        # Target architectures follow TORCH_CUDA_ARCH_LIST (default: the GPUs of the build machine).
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", "-std=c++17"]},
        **common,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
