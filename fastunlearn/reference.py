"""Pure-PyTorch implementation of the two primitives every fastunlearn op is made of.

This module is the specification: the ``torch`` backend on any device (the op kernels call it
through a hook) and the oracle the tests compare the fused kernels against. It never reads a value
back to the host.

Shards arrive flat and vector-major: with K vectors of n shards, ``shards[k * n + i]`` is shard i
of vector k. Inputs are validated by the op that calls them (csrc/common/validate.h). The dtype
policy (what a reduction accumulates in) is the extension's, asked through ``fastunlearn._backend``,
so this module needs the built extension as every op does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastunlearn import _backend

# The dtype policy is the extension's (csrc/common/dtypes.h): reductions accumulate in
# _backend.accumulation_dtype, weighted sums are computed in _backend.result_dtype.


def gram(shards: list[Tensor], num_vectors: int) -> Tensor:
    """K x K matrix of pairwise dot products, in the accumulation dtype of the inputs."""
    k = num_vectors
    n = len(shards) // k
    acc = _backend.accumulation_dtype(shards[0].dtype)
    result = torch.zeros(k, k, dtype=acc, device=shards[0].device)
    for i in range(n):
        rows = torch.stack([shards[v * n + i].reshape(-1) for v in range(k)]).to(acc)
        result += rows @ rows.mT
    # A GEMM need not round (a, b) and (b, a) alike; mirror the upper triangle.
    return result.triu() + result.triu(1).mT


def combine_(outs: list[Tensor], weights: Tensor, shards: list[Tensor], num_vectors: int) -> None:
    """``outs[m * n + i] = sum_k weights[m, k] * shards[k * n + i]``.

    All M results of a shard index are computed before any of them is written, so an output may be
    the very tensor of one of the inputs at the same index.
    """
    k = num_vectors
    n = len(shards) // k
    num_outs = len(outs) // n
    comp = _backend.result_dtype(shards[0].dtype)
    w = weights.to(comp)
    for i in range(n):
        results = []
        for m in range(num_outs):
            acc = shards[i].to(comp) * w[m, 0]
            for v in range(1, k):
                acc = acc + shards[v * n + i].to(comp) * w[m, v]
            results.append(acc)
        for m, result in enumerate(results):
            outs[m * n + i].copy_(result)


def _weighted_gradient(weights: Tensor, grads: list[Tensor], num_vectors: int, i: int, comp: torch.dtype) -> Tensor:
    n = len(grads) // num_vectors
    w = weights.reshape(-1).to(comp)
    d = grads[i].to(comp) * w[0]
    for v in range(1, num_vectors):
        d = d + grads[v * n + i].to(comp) * w[v]
    return d


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
    """``torch.optim.SGD``'s update with gradient ``d = sum_k weights[k] * grads[k][i]`` per param."""
    for i, p in enumerate(params):
        comp = _backend.result_dtype(p.dtype)
        d = _weighted_gradient(weights, grads, num_vectors, i, comp)
        if maximize:
            d = -d
        if weight_decay != 0:
            d = d + weight_decay * p.to(comp)
        if momentum != 0:
            buf = d if first_step else momentum * momentum_buffers[i].to(comp) + (1 - dampening) * d
            momentum_buffers[i].copy_(buf)
            d = d + momentum * buf if nesterov else buf
        p.copy_(p.to(comp) - lr * d)


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
    """``torch.optim.AdamW``'s update (no amsgrad) with gradient ``d = sum_k weights[k] * grads[k][i]``."""
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    for i, p in enumerate(params):
        comp = _backend.result_dtype(p.dtype)
        d = _weighted_gradient(weights, grads, num_vectors, i, comp)
        if maximize:
            d = -d
        m = exp_avgs[i].to(comp)
        m = m + (1 - beta1) * (d - m)
        v = beta2 * exp_avg_sqs[i].to(comp) + (1 - beta2) * d * d
        denom = v.sqrt() / bias_correction2_sqrt + eps
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)
        p.copy_(p.to(comp) * (1 - lr * weight_decay) - (lr / bias_correction1) * (m / denom))


def token_stats_update_(state: Tensor, best: Tensor, logits: Tensor, start: int, targets: Tensor) -> None:
    """One vocabulary chunk of :func:`fastunlearn.token_stats`' online softmax over N rows.

    ``logits`` ``[N, C]`` are the columns ``start .. start + C - 1`` of each row, read in fp32.
    ``state`` ``[5, N]`` (fp64) holds per row the running maximum ``m`` and, relative to it,
    ``s = sum e^(z-m)``, ``a = sum e^(z-m) (z-m)``, ``b = sum e^(z-m) (z-m)^2``, then the target's
    logit (kept where the target, from ``targets`` ``[N]``, is outside the chunk); ``best`` ``[N]``
    (int64) the first argmax so far. A row starts from ``m = -inf``, everything else 0. Within a
    chunk the sums are fp32 (terms in [0, 1] times ``|z - m|``); across chunks fp64.
    """
    m, s, a, b, picked = state
    width = logits.shape[1]
    z = logits.float()
    chunk_max, chunk_arg = z.max(dim=1)
    chunk_max = chunk_max.double()
    in_chunk = (targets >= start) & (targets < start + width)
    local = (targets - start).clamp(0, width - 1)
    chunk_picked = z.gather(1, local[:, None])[:, 0].double()
    m_new = torch.maximum(m, chunk_max)
    better = chunk_max > m  # strictly: the first maximum wins, as argmax's
    best.copy_(torch.where(better, chunk_arg + start, best))
    picked.copy_(torch.where(in_chunk, chunk_picked, picked))
    # Rows whose logits so far are all -inf (masked) shift by 0: their sums stay 0.
    shift = torch.where(torch.isneginf(m_new), 0.0, m_new)
    # A -inf logit becomes -1e30, whose e^y is 0 and adds nothing (not 0 * inf = NaN).
    y = (z - shift.float()[:, None]).clamp_(min=-1e30)
    e = torch.exp(y)
    chunk_s = e.sum(1).double()
    chunk_a = e.mul_(y).sum(1).double()
    chunk_b = e.mul_(y).sum(1).double()
    # Old sums are relative to m; relative to m_new each (z - m) gains delta = m - m_new <= 0 (0 where
    # nothing was summed yet, m possibly -inf).
    delta = torch.where(s > 0, m - shift, 0.0)
    scale = torch.exp(delta)
    state[3] = scale * (b + 2 * delta * a + delta * delta * s) + chunk_b
    state[2] = scale * (a + delta * s) + chunk_a
    state[1] = scale * s + chunk_s
    state[0] = m_new
