"""Gram matrix of K shard-list vectors: one pass over every shard of every vector, one launch.

Two stages, no atomics, so the bits are the same on every run of a device model:

1. a persistent grid of programs strides over the chunk table; a program keeps each pair's products
   in fp32 lanes (fp64 for fp64 input) within a chunk, folds them into an fp64 running sum at the
   end of the chunk, and writes its K x K partial;
2. the partials are added in a fixed order.

Up to 16 vectors are reduced together (register blocked: element-wise products for K <= 4, an
ieee-precision ``tl.dot`` of the 16-row block beyond). More vectors are tiled into blocks of 16
and each pair of blocks is one more pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastunlearn import _backend
from fastunlearn.kernels import _support, _tables

#: Vectors reduced in one pass.
MAX_BLOCK_VECTORS = 16


@triton.jit
def _gram_partials_kernel(
    ptrs,
    sizes,
    chunks,
    partials,
    num_shards,
    num_chunks,
    num_programs,
    row0,
    col0,
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
    RP: tl.constexpr,
    CP: tl.constexpr,
    SAME: tl.constexpr,
    USE_DOT: tl.constexpr,
    ELEMENT: tl.constexpr,
    LANE: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    r = tl.arange(0, RP)
    c = tl.arange(0, CP)
    lanes = tl.arange(0, BLOCK)
    total = tl.zeros([RP, CP], dtype=tl.float64)
    for chunk in range(pid, num_chunks, num_programs):
        shard = tl.load(chunks + chunk)
        start = tl.load(chunks + num_chunks + chunk)
        end = tl.minimum(start + CHUNK, tl.load(sizes + shard))
        row_base = tl.load(ptrs + (row0 + r).to(tl.int64) * num_shards + shard, mask=r < ROWS, other=0)
        row_base = row_base.to(tl.pointer_type(ELEMENT))
        col_base = tl.load(ptrs + (col0 + c).to(tl.int64) * num_shards + shard, mask=c < COLS, other=0)
        col_base = col_base.to(tl.pointer_type(ELEMENT))
        if USE_DOT:
            acc = tl.zeros([RP, CP], dtype=tl.float32)
        else:
            acc = tl.zeros([RP, CP, BLOCK], dtype=LANE)
        for offset in range(0, end - start, BLOCK):
            idx = start + offset + lanes
            in_shard = idx < end
            x = tl.load(row_base[:, None] + idx[None, :], mask=(r < ROWS)[:, None] & in_shard[None, :], other=0.0)
            x = x.to(LANE)
            if SAME:
                y = x
            else:
                y = tl.load(col_base[:, None] + idx[None, :], mask=(c < COLS)[:, None] & in_shard[None, :], other=0.0)
                y = y.to(LANE)
            if USE_DOT:
                acc = tl.dot(x, tl.trans(y), acc, input_precision="ieee")
            else:
                acc += x[:, None, :] * y[None, :, :]
        if USE_DOT:
            total += acc.to(tl.float64)
        else:
            total += tl.sum(acc, axis=2).to(tl.float64)
    tl.store(partials + pid.to(tl.int64) * RP * CP + r[:, None] * CP + c[None, :], total)


def gram(shards: list[Tensor], num_vectors: int) -> Tensor:
    """K x K dot products of ``num_vectors`` vectors given flat and vector-major, in the
    accumulation dtype of ``fastunlearn.reference`` (fp64 for fp32/fp64 input, fp32 below)."""
    k = num_vectors
    n = len(shards) // k
    device, dtype = shards[0].device, shards[0].dtype
    _support.check_device(device)
    _, rows, _ = _tables.layouts(shards[:n], shards)
    table = _tables.shard_table([rows[v * n : (v + 1) * n] for v in range(k)])
    result = torch.zeros(k, k, dtype=torch.float64, device=device)
    blocks = range(0, k, MAX_BLOCK_VECTORS)
    for a in blocks:
        for b in blocks:
            if b >= a:
                block = _block_gram(table, a, b, min(MAX_BLOCK_VECTORS, k - a), min(MAX_BLOCK_VECTORS, k - b), dtype)
                result[a : a + block.shape[0], b : b + block.shape[1]] = block
    upper = result.triu()
    return (upper + upper.triu(1).mT).to(_backend.accumulation_dtype(dtype))


def _block_gram(table: _tables.ShardTable, row0: int, col0: int, num_rows: int, num_cols: int, dtype) -> Tensor:
    device = table.ptrs.device
    config = launch_config(num_rows, num_cols, row0 == col0, dtype)
    grid = _support.grid_size(device, table.num_chunks)
    partials = torch.empty(grid, config["RP"], config["CP"], dtype=torch.float64, device=device)
    _gram_partials_kernel[(grid,)](
        table.ptrs,
        table.sizes,
        table.chunks,
        partials,
        table.num_shards,
        table.num_chunks,
        grid,
        row0,
        col0,
        **config,
    )
    return partials.sum(0)[:num_rows, :num_cols]


def launch_config(num_rows: int, num_cols: int, same: bool, dtype: torch.dtype) -> dict:
    """The kernel's compile-time parameters for a block of the Gram matrix."""
    rp, cp = _support.next_power_of_2(num_rows), _support.next_power_of_2(num_cols)
    wide = dtype == torch.float64
    use_dot = not wide and max(rp, cp) >= 8
    if use_dot:
        rp = cp = MAX_BLOCK_VECTORS  # tl.dot needs at least 16 rows and columns
    return dict(
        ROWS=num_rows,
        COLS=num_cols,
        RP=rp,
        CP=cp,
        SAME=same,
        USE_DOT=use_dot,
        ELEMENT=_support.ELEMENT_TYPES[dtype],
        LANE=tl.float64 if wide else tl.float32,
        CHUNK=_tables.CHUNK,
        BLOCK=64 if use_dot else max(16, 2048 // (rp * cp) // (2 if wide else 1)),
    )
