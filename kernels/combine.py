"""Weighted sums of K shard-list vectors into M outputs: one pass, one launch.

``outs[m * n + i] = sum_k weights[m, k] * shards[k * n + i]``, computed in fp32 (fp64 for fp64
input) and rounded once into the output dtype. A program loads a block of every input before it
stores that block of any output, so an output may be the very tensor of an input at its own shard
index (the in-place projections rely on this).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastunlearn.kernels import _support, _tables
from torch import Tensor


@triton.jit
def _combine_kernel(
    ptrs,
    sizes,
    chunks,
    weights,
    num_shards,
    num_chunks,
    num_programs,
    K: tl.constexpr,
    KP: tl.constexpr,
    M: tl.constexpr,
    MP: tl.constexpr,
    ELEMENT: tl.constexpr,
    COMP: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    k = tl.arange(0, KP)
    m = tl.arange(0, MP)
    lanes = tl.arange(0, BLOCK)
    w = tl.load(weights + m[:, None] * K + k[None, :], mask=(m < M)[:, None] & (k < K)[None, :], other=0.0)
    w = w.to(COMP)
    for chunk in range(pid, num_chunks, num_programs):
        shard = tl.load(chunks + chunk)
        start = tl.load(chunks + num_chunks + chunk)
        end = tl.minimum(start + CHUNK, tl.load(sizes + shard))
        in_base = tl.load(ptrs + k.to(tl.int64) * num_shards + shard, mask=k < K, other=0)
        in_base = in_base.to(tl.pointer_type(ELEMENT))
        out_base = tl.load(ptrs + (K + m).to(tl.int64) * num_shards + shard, mask=m < M, other=0)
        out_base = out_base.to(tl.pointer_type(ELEMENT))
        for offset in range(0, CHUNK, BLOCK):
            idx = start + offset + lanes
            in_shard = idx < end
            x = tl.load(in_base[:, None] + idx[None, :], mask=(k < K)[:, None] & in_shard[None, :], other=0.0)
            y = tl.sum(w[:, :, None] * x.to(COMP)[None, :, :], axis=1)
            tl.store(out_base[:, None] + idx[None, :], y.to(ELEMENT), mask=(m < M)[:, None] & in_shard[None, :])


def combine_(outs: list[Tensor], weights: Tensor, shards: list[Tensor], num_vectors: int) -> None:
    """``outs[m * n + i] = sum_k weights[m, k] * shards[k * n + i]`` for an (M, K) ``weights``."""
    k = num_vectors
    n = len(shards) // k
    num_outs = len(outs) // n
    device, dtype = shards[0].device, shards[0].dtype
    _support.check_device(device)
    refs = [_tables.dense_reference(t) for t in outs[:n]]
    inputs = _tables.readable(shards, refs)
    # Outputs outside their index's dense layout are computed into a temporary and copied back.
    targets = [
        t if _tables.same_dense_layout(t, refs[s % n]) else torch.empty_like(refs[s % n]) for s, t in enumerate(outs)
    ]
    table = _tables.shard_table(_rows(inputs, n) + _rows(targets, n))
    grid = _support.grid_size(device, table.num_chunks)
    _combine_kernel[(grid,)](
        table.ptrs,
        table.sizes,
        table.chunks,
        weights.to(_support.compute_dtype(dtype)).contiguous(),
        table.num_shards,
        table.num_chunks,
        grid,
        **launch_config(k, num_outs, dtype),
    )
    for out, target in zip(outs, targets):
        if target is not out:
            out.copy_(target)


def launch_config(num_vectors: int, num_outs: int, dtype: torch.dtype) -> dict:
    """The kernel's compile-time parameters for M = ``num_outs`` sums of K = ``num_vectors`` vectors."""
    kp, mp = _support.next_power_of_2(num_vectors), _support.next_power_of_2(num_outs)
    return dict(
        K=num_vectors,
        KP=kp,
        M=num_outs,
        MP=mp,
        ELEMENT=_support.ELEMENT_TYPES[dtype],
        COMP=_support.compute_type(dtype),
        CHUNK=_tables.CHUNK,
        BLOCK=max(64, 4096 // (kp * mp)),
    )


def _rows(flat: list[Tensor], n: int) -> list[list[Tensor]]:
    return [flat[r : r + n] for r in range(0, len(flat), n)]
