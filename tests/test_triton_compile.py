"""Every Triton kernel, in the configurations its launcher picks, compiles for sm_80 and sm_90.

This runs Triton's real GPU compiler (down to PTX and ptxas' cubin) on a machine without a GPU, so a
kernel that the interpreter accepts but the compiler rejects (shapes ``tl.dot`` refuses, types that
do not lower) fails here. The compiler needs the kernels without the interpreter, so it runs in a
subprocess with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastunlearn.kernels import combine, fused_step, gram

    POINTER = {"ptrs", "sizes", "chunks", "partials", "weights", "hyper"}

    def compile_all(fn, configs, target):
        for config in configs:
            names = fn.arg_names
            signature = {
                name: "constexpr" if name in config else ("*i64" if name in POINTER else "i64") for name in names
            }
            for name in ("partials", "weights", "hyper"):
                if name in signature:
                    signature[name] = "*fp64"
            kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=config), target=target)
            assert "cubin" in kernel.asm and kernel.asm["cubin"], (fn.__name__, config)

    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    gram_configs = [
        gram.launch_config(k, k, True, dtype) for k in (1, 2, 5, 16) for dtype in dtypes
    ] + [gram.launch_config(16, 4, False, torch.float32)]
    shapes = ((1, 1), (2, 1), (5, 1), (16, 16))
    combine_configs = [combine.launch_config(k, m, dtype) for k, m in shapes for dtype in dtypes]
    sgd_flags = [
        dict(HAS_MOMENTUM=m, FIRST_STEP=f, NESTEROV=n, HAS_WEIGHT_DECAY=True, MAXIMIZE=True)
        for m, f, n in ((False, False, False), (True, True, False), (True, False, True))
    ]
    for capability in (80, 90):
        target = GPUTarget("cuda", capability, 32)
        compile_all(gram._gram_partials_kernel, gram_configs, target)
        compile_all(combine._combine_kernel, combine_configs, target)
        for dtype in dtypes:
            base = fused_step.launch_config(2, dtype)
            compile_all(fused_step._sgd_kernel, [dict(base, **flags) for flags in sgd_flags], target)
            compile_all(fused_step._adamw_kernel, [dict(base, MAXIMIZE=False)], target)
    print("compiled")
    """
)


def test_every_kernel_compiles_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]
