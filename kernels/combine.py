"""Weighted sums of K shard-list vectors into M outputs: one pass, one launch per 16 outputs.

``outs[m * n + i] = sum_k weights[m, k] * shards[k * n + i]``, summed in input order in fp32 (fp64
for fp64 input) and rounded once into the output dtype. A program loads a block of every input before it
stores that block of any output, so an output may be the very tensor of an input at its own shard
index (the in-place projections rely on this).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastunlearn import _backend
from fastunlearn.kernels import _support, _tables


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
    M: tl.constexpr,
    MP: tl.constexpr,
    ELEMENT: tl.constexpr,
    COMP: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    m = tl.arange(0, MP)
    lanes = tl.arange(0, BLOCK)
    for chunk in range(pid, num_chunks, num_programs):
        shard = tl.load(chunks + chunk)
        start = tl.load(chunks + num_chunks + chunk)
        end = tl.minimum(start + CHUNK, tl.load(sizes + shard))
        out_base = tl.load(ptrs + (K + m).to(tl.int64) * num_shards + shard, mask=m < M, other=0)
        out_base = out_base.to(tl.pointer_type(ELEMENT))
        for offset in range(0, end - start, BLOCK):
            idx = start + offset + lanes
            in_shard = idx < end
            acc = tl.zeros([MP, BLOCK], dtype=COMP)
            # Inputs in order, one at a time: the reference's summation order, and registers for
            # M sums only, whatever K is.
            for v in tl.static_range(K):
                base = tl.load(ptrs + v * num_shards + shard).to(tl.pointer_type(ELEMENT))
                x = tl.load(base + idx, mask=in_shard, other=0.0).to(COMP)
                w = tl.load(weights + m * K + v, mask=m < M, other=0.0).to(COMP)
                acc += w[:, None] * x[None, :]
            tl.store(out_base[:, None] + idx[None, :], acc.to(ELEMENT), mask=(m < M)[:, None] & in_shard[None, :])


#: Outputs one pass writes; more are written group by group.
MAX_OUTS = 16


def combine_(outs: list[Tensor], weights: Tensor, shards: list[Tensor], num_vectors: int) -> None:
    """``outs[m * n + i] = sum_k weights[m, k] * shards[k * n + i]`` for an (M, K) ``weights``."""
    k = num_vectors
    n = len(shards) // k
    num_outs = len(outs) // n
    if num_outs == 0:
        return
    device, dtype = shards[0].device, shards[0].dtype
    _support.check_device(device)
    # Outputs outside their index's dense layout are computed into a temporary and copied back;
    # so are all outputs when a later group would read an input that an earlier one wrote.
    refs, inputs, targets = _tables.layouts(outs[:n], shards, outs)
    if num_outs > MAX_OUTS and _shares_memory(outs, inputs):
        targets = [torch.empty_like(refs[s % n]) for s in range(len(outs))]
    comp_weights = weights.to(_backend.result_dtype(dtype)).contiguous()
    for m0 in range(0, num_outs, MAX_OUTS):
        group = min(MAX_OUTS, num_outs - m0)
        table = _tables.shard_table(_rows(inputs, n) + _rows(targets[m0 * n : (m0 + group) * n], n))
        grid = _support.grid_size(device, table.num_chunks)
        _combine_kernel[(grid,)](
            table.ptrs,
            table.sizes,
            table.chunks,
            comp_weights[m0 : m0 + group].contiguous(),
            table.num_shards,
            table.num_chunks,
            grid,
            **launch_config(k, group, dtype),
        )
    for out, target in zip(outs, targets):
        if target is not out:
            out.copy_(target)


def launch_config(num_vectors: int, num_outs: int, dtype: torch.dtype) -> dict:
    """The kernel's compile-time parameters for M = ``num_outs`` (<= 16) sums of K = ``num_vectors`` vectors."""
    mp = _support.next_power_of_2(num_outs)
    return dict(
        K=num_vectors,
        M=num_outs,
        MP=mp,
        ELEMENT=_support.ELEMENT_TYPES[dtype],
        COMP=_support.compute_type(dtype),
        CHUNK=_tables.CHUNK,
        BLOCK=max(128, 2048 // mp),
    )


def _shares_memory(outs: list[Tensor], inputs: list[Tensor]) -> bool:
    addresses = {t.data_ptr() for t in inputs if t.numel()}
    return any(t.numel() and t.data_ptr() in addresses for t in outs)


def _rows(flat: list[Tensor], n: int) -> list[list[Tensor]]:
    return [flat[r : r + n] for r in range(0, len(flat), n)]
