"""SGD and AdamW updates along a weighted sum of K gradient vectors, in one pass, one launch.

Each element's gradient ``d = sum_k weights[k] * grads[k]`` is formed in registers and used at
once, so the combined gradient is never written to memory. The arithmetic follows
``fastunlearn.reference.sgd_step_`` / ``adamw_step_`` (and so ``torch.optim``) operation by
operation, in fp32 (fp64 for fp64 parameters), with correctly rounded division and square root.
Scalars derived from the hyperparameters (``1 - beta2``, ``lr / bias_correction1``, ...) are
computed in double on the host, as the reference's Python floats are, and travel in a small device
tensor of the compute dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastunlearn import _backend
from fastunlearn.kernels import _support, _tables


@triton.jit
def _weighted_gradient(
    ptrs, num_shards, shard, first_row, w, k, idx, in_shard, K: tl.constexpr, ELEMENT: tl.constexpr, COMP: tl.constexpr
):
    base = tl.load(ptrs + (first_row + k).to(tl.int64) * num_shards + shard, mask=k < K, other=0)
    base = base.to(tl.pointer_type(ELEMENT))
    g = tl.load(base[:, None] + idx[None, :], mask=(k < K)[:, None] & in_shard[None, :], other=0.0).to(COMP)
    return tl.sum(w[:, None] * g, axis=0)


@triton.jit
def _div(a, b):
    # Triton's fp32 `/` and sqrt are approximate on GPUs; the reference rounds correctly.
    if a.dtype == tl.float32:
        return tl.div_rn(a, b)
    return a / b


@triton.jit
def _sqrt(a):
    if a.dtype == tl.float32:
        return tl.sqrt_rn(a)
    return tl.sqrt(a)


@triton.jit
def _row_pointer(ptrs, num_shards, shard, row, ELEMENT: tl.constexpr):
    return tl.load(ptrs + row * num_shards + shard).to(tl.pointer_type(ELEMENT))


@triton.jit
def _sgd_kernel(
    ptrs,
    sizes,
    chunks,
    weights,
    hyper,
    num_shards,
    num_chunks,
    num_programs,
    K: tl.constexpr,
    KP: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    FIRST_STEP: tl.constexpr,
    NESTEROV: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    ELEMENT: tl.constexpr,
    COMP: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    k = tl.arange(0, KP)
    lanes = tl.arange(0, BLOCK)
    w = tl.load(weights + k, mask=k < K, other=0.0).to(COMP)
    lr = tl.load(hyper + 0)
    momentum = tl.load(hyper + 1)
    one_minus_dampening = tl.load(hyper + 2)
    weight_decay = tl.load(hyper + 3)
    for chunk in range(pid, num_chunks, num_programs):
        shard = tl.load(chunks + chunk)
        start = tl.load(chunks + num_chunks + chunk)
        end = tl.minimum(start + CHUNK, tl.load(sizes + shard))
        p_ptr = _row_pointer(ptrs, num_shards, shard, 0, ELEMENT)
        buf_ptr = _row_pointer(ptrs, num_shards, shard, 1, ELEMENT)
        for offset in range(0, end - start, BLOCK):
            idx = start + offset + lanes
            in_shard = idx < end
            d = _weighted_gradient(ptrs, num_shards, shard, 2, w, k, idx, in_shard, K, ELEMENT, COMP)
            if MAXIMIZE:
                d = -d
            p = tl.load(p_ptr + idx, mask=in_shard, other=0.0).to(COMP)
            if HAS_WEIGHT_DECAY:
                d = d + weight_decay * p
            if HAS_MOMENTUM:
                if FIRST_STEP:
                    buf = d
                else:
                    old = tl.load(buf_ptr + idx, mask=in_shard, other=0.0).to(COMP)
                    buf = momentum * old + one_minus_dampening * d
                tl.store(buf_ptr + idx, buf.to(ELEMENT), mask=in_shard)
                if NESTEROV:
                    d = d + momentum * buf
                else:
                    d = buf
            tl.store(p_ptr + idx, (p - lr * d).to(ELEMENT), mask=in_shard)


@triton.jit
def _adamw_kernel(
    ptrs,
    sizes,
    chunks,
    weights,
    hyper,
    num_shards,
    num_chunks,
    num_programs,
    K: tl.constexpr,
    KP: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    ELEMENT: tl.constexpr,
    COMP: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    k = tl.arange(0, KP)
    lanes = tl.arange(0, BLOCK)
    w = tl.load(weights + k, mask=k < K, other=0.0).to(COMP)
    one_minus_beta1 = tl.load(hyper + 0)
    beta2 = tl.load(hyper + 1)
    one_minus_beta2 = tl.load(hyper + 2)
    eps = tl.load(hyper + 3)
    decay = tl.load(hyper + 4)
    step_size = tl.load(hyper + 5)
    bias_correction2_sqrt = tl.load(hyper + 6)
    for chunk in range(pid, num_chunks, num_programs):
        shard = tl.load(chunks + chunk)
        start = tl.load(chunks + num_chunks + chunk)
        end = tl.minimum(start + CHUNK, tl.load(sizes + shard))
        p_ptr = _row_pointer(ptrs, num_shards, shard, 0, ELEMENT)
        m_ptr = _row_pointer(ptrs, num_shards, shard, 1, ELEMENT)
        v_ptr = _row_pointer(ptrs, num_shards, shard, 2, ELEMENT)
        for offset in range(0, end - start, BLOCK):
            idx = start + offset + lanes
            in_shard = idx < end
            d = _weighted_gradient(ptrs, num_shards, shard, 3, w, k, idx, in_shard, K, ELEMENT, COMP)
            if MAXIMIZE:
                d = -d
            m = tl.load(m_ptr + idx, mask=in_shard, other=0.0).to(COMP)
            v = tl.load(v_ptr + idx, mask=in_shard, other=0.0).to(COMP)
            p = tl.load(p_ptr + idx, mask=in_shard, other=0.0).to(COMP)
            m = m + one_minus_beta1 * (d - m)
            v = beta2 * v + one_minus_beta2 * d * d
            denom = _div(_sqrt(v), bias_correction2_sqrt) + eps
            tl.store(m_ptr + idx, m.to(ELEMENT), mask=in_shard)
            tl.store(v_ptr + idx, v.to(ELEMENT), mask=in_shard)
            p = p * decay - step_size * _div(m, denom)
            tl.store(p_ptr + idx, p.to(ELEMENT), mask=in_shard)


def sgd_step_(
    params: list[Tensor],
    momentum_buffers: list[Tensor],
    weights: Tensor,
    grads: list[Tensor],
    num_vectors: int,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    maximize: bool,
    first_step: bool,
) -> None:
    """``torch.optim.SGD``'s update along ``sum_k weights[k] * grads[k]``; see ``reference.sgd_step_``."""
    state = [momentum_buffers] if momentum != 0 else [params]  # a placeholder row the kernel never reads
    launch = _Launch(params, state, weights, grads, num_vectors, [lr, momentum, 1 - dampening, weight_decay])
    launch.run(
        _sgd_kernel,
        HAS_MOMENTUM=momentum != 0,
        FIRST_STEP=first_step,
        NESTEROV=nesterov,
        HAS_WEIGHT_DECAY=weight_decay != 0,
        MAXIMIZE=maximize,
    )


def adamw_step_(
    params: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    weights: Tensor,
    grads: list[Tensor],
    num_vectors: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    maximize: bool,
) -> None:
    """``torch.optim.AdamW``'s update along ``sum_k weights[k] * grads[k]``; see ``reference.adamw_step_``."""
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    hyper = [1 - beta1, beta2, 1 - beta2, eps, 1 - lr * weight_decay, lr / bias_correction1, bias_correction2_sqrt]
    launch = _Launch(params, [exp_avgs, exp_avg_sqs], weights, grads, num_vectors, hyper)
    launch.run(_adamw_kernel, MAXIMIZE=maximize)


class _Launch:
    """Tables and operands of one fused step: row 0 the parameters, then the state, then the K
    gradient vectors (read through copies in the parameters' layout where theirs differs)."""

    def __init__(self, params, state, weights, grads, num_vectors, hyper) -> None:
        device, dtype = params[0].device, params[0].dtype
        _support.check_device(device)
        comp = _backend.result_dtype(dtype)
        _, self.grads, _ = _tables.layouts(params, grads)
        n = len(params)
        rows = [params, *state] + [self.grads[v * n : (v + 1) * n] for v in range(num_vectors)]
        self.table = _tables.shard_table(rows)
        self.weights = weights.reshape(-1).to(comp).contiguous()
        self.hyper = _tables.to_device(torch.tensor(hyper, dtype=comp), device)
        self.k, self.dtype, self.device = num_vectors, dtype, device

    def run(self, kernel, **flags) -> None:
        grid = _support.grid_size(self.device, self.table.num_chunks)
        kernel[(grid,)](
            self.table.ptrs,
            self.table.sizes,
            self.table.chunks,
            self.weights,
            self.hyper,
            self.table.num_shards,
            self.table.num_chunks,
            grid,
            **launch_config(self.k, self.dtype),
            **flags,
        )


def launch_config(num_vectors: int, dtype: torch.dtype) -> dict:
    """The compile-time parameters both step kernels share (the rest are their flags)."""
    kp = _support.next_power_of_2(num_vectors)
    return dict(
        K=num_vectors,
        KP=kp,
        ELEMENT=_support.ELEMENT_TYPES[dtype],
        COMP=_support.compute_type(dtype),
        CHUNK=_tables.CHUNK,
        BLOCK=max(128, 2048 // kp),
    )
