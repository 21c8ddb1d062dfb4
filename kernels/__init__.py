"""Triton kernels of fastunlearn, shipped as ``fastunlearn.kernels`` (one module per op family).

The GPU backends are not part of this release yet: on CUDA tensors fastunlearn currently runs the
``torch`` backend. Nothing in this package is imported unless a Triton backend is requested.
"""
