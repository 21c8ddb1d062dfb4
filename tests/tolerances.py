"""Every tolerance the tests use, in one place.

Results are compared with a float64 computation on the same (rounded) inputs. A reduction of length
N accumulates relative error ~ eps_acc * sqrt(N) at worst with the kernels' lane/chunk structure;
the bound below is eps_acc * (N ** 0.5 + 16), scaled to the magnitude of |a|.|b|, plus the final
rounding to the result dtype. Elementwise results (combine, projections) round once per operation
in the compute dtype.
"""

from __future__ import annotations

import math

import torch

# Unit roundoff of the dtype results are *returned* in, and of the accumulation dtype.
_RESULT_EPS = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-24, torch.float16: 2.0**-24}
_ACC_EPS = {torch.float64: 2.0**-53, torch.float32: 2.0**-53, torch.bfloat16: 2.0**-24, torch.float16: 2.0**-24}
# Elementwise results are stored back in the input dtype.
_STORE_EPS = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def reduction_atol(dtype: torch.dtype, length: int, scale: float) -> float:
    """Absolute tolerance of a dot product of `length` terms whose |a_i b_i| sum to `scale`."""
    return scale * (_ACC_EPS[dtype] * (math.sqrt(max(length, 1)) + 16) + 4 * _RESULT_EPS[dtype])


def elementwise_tol(dtype: torch.dtype, num_terms: int) -> dict[str, float]:
    """rtol/atol for a weighted sum of `num_terms` inputs stored in `dtype` (relative to the terms)."""
    eps = _STORE_EPS[dtype]
    return {"rtol": 4 * num_terms * eps, "atol": 4 * num_terms * eps}


def triton_reduction_atol(dtype: torch.dtype, length: int, chunk: int, scale: float) -> float:
    """Like ``reduction_atol`` for the Triton Gram: within a chunk, products are summed in fp32 lanes
    (fp64 for fp64 input) and only chunk sums are added in fp64, so fp32 input sees fp32 error over
    at most ``chunk`` terms."""
    acc_eps = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    return scale * (acc_eps * (math.sqrt(max(min(length, chunk), 1)) + 16) + 4 * _RESULT_EPS[dtype])
