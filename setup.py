"""Builds fastunlearn._C, the C++ kernels of the `cpp` backend (and, with a CUDA torch, CUDA ones).

Run with ``pip install --no-build-isolation -e .`` so the extension compiles against the torch
already installed. Everything else about the package is declared in pyproject.toml.
"""

import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_extension() -> CppExtension:
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    return CppExtension(
        name="fastunlearn._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        # -fopenmp: at::parallel_for expands to an OpenMP region in the extension's own code.
        # -ffp-contract=off: no FMA contraction, so every ISA clone of a kernel gives the same bits.
        extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off", "-std=c++17"],
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[cpu_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
