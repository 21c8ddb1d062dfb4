"""Triton kernels of fastunlearn's ``triton`` backend, shipped as ``fastunlearn.kernels``.

One module per op family, each holding its kernel, its launcher and its launch configuration:
``gram`` (K x K dot products), ``combine`` (weighted sums into M outputs) and ``fused_step`` (SGD
and AdamW along a weighted sum of gradients). ``_tables`` turns shard lists into the device tables
the kernels walk. Nothing here is imported until a call resolves to the ``triton`` backend: on CUDA
tensors that is the default, and CPU tensors run under Triton's interpreter when TRITON_INTERPRET=1
was set before Triton was imported.
"""
