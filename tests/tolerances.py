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


# Significand bits (with the implicit one) and the smallest normal exponent (frexp's) of each dtype.
_SIGNIFICAND = {torch.float64: 53, torch.float32: 24, torch.bfloat16: 8, torch.float16: 11}
_MIN_EXPONENT = {torch.float64: -1021, torch.float32: -125, torch.bfloat16: -125, torch.float16: -13}


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` at each of `values` (float64)."""
    _, exponent = torch.frexp(values.abs())
    exponent = exponent.clamp(min=_MIN_EXPONENT[dtype])
    return torch.ldexp(torch.ones_like(values), exponent - _SIGNIFICAND[dtype])


def elementwise_bound(
    expected: torch.Tensor, magnitude: torch.Tensor, dtype: torch.dtype, num_terms: int
) -> torch.Tensor:
    """Per element, how far a weighted sum of `num_terms` inputs stored in `dtype` may land from its
    float64 value `expected`, where `magnitude` is the sum of the terms' magnitudes: each operation
    rounds once in the compute dtype (fp32 for bf16/fp16, never below), then the result rounds once
    into `dtype` (half an ulp of it). Arithmetic in bf16/fp16 itself misses this bound."""
    compute_eps = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    compute = 2 * num_terms * compute_eps * magnitude
    return compute + 0.5 * ulp(expected.abs() + compute, dtype)


def fp32_dot_bound(exact: float, scale: float, length: int) -> float:
    """How far an fp32 dot product of `length` terms may land from its exact value: fp64
    accumulation error on the terms' magnitudes (`scale` = sum |a_i b_i|), then one rounding to
    fp32 (at most an ulp of it). Accumulating in fp32 misses it wherever the sum cancels."""
    return 2.0**-53 * (math.sqrt(max(length, 1)) + 16) * scale + math.ulp(abs(exact)) * 2.0**29


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
