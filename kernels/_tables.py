"""Shard lists as the Triton kernels see them: a table of base addresses and a table of chunks.

K vectors of n shards arrive flat and vector-major (``shards[k * n + i]``). A kernel reads shard i
of every vector as flat memory, so each shard index is computed in one dense layout: the layout of
its reference tensor (the first vector's for reductions, the first output's for writes). An input
in another layout is read through a dense copy in the reference layout, so elements always pair by
logical index, never by memory position.

Work is cut into chunks of at most ``CHUNK`` elements that never straddle a shard; a program of
the persistent grid takes chunks ``pid, pid + grid, ...``. Empty shards are dropped, and runs of
shards that sit back to back in memory in every vector (views of one flat gradient buffer) are
merged into one shard, so a flat-buffer gradient costs one table row however many parameters it
holds.

Tables are cached by their contents (addresses and sizes), so a training loop that reuses its
``.grad`` tensors uploads them once. They reach the device with a non-blocking copy: no host sync.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fastunlearn._validate import is_dense

#: Elements of one shard one chunk covers: a task of the persistent grid and one fp32 partial sum.
CHUNK = 1 << 14

_CACHE_SIZE = 64


@dataclass(frozen=True)
class ShardTable:
    """Device tables of one call: ``ptrs`` (rows x n int64 addresses), and per chunk its shard
    index and first element (``chunks``, 2 x C int64)."""

    ptrs: Tensor
    chunks: Tensor
    sizes: Tensor
    num_shards: int
    num_chunks: int


def dense_reference(t: Tensor) -> Tensor:
    """``t`` if it is dense, else an (unfilled) contiguous tensor of its shape to compute in."""
    return t if is_dense(t) else torch.empty(t.shape, dtype=t.dtype, device=t.device)


def same_dense_layout(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or not is_dense(a) or not is_dense(b):
        return False
    return all(size <= 1 or sa == sb for size, sa, sb in zip(a.shape, a.stride(), b.stride()))


def readable(shards: list[Tensor], refs: list[Tensor]) -> list[Tensor]:
    """Every shard as memory that pairs with ``refs[i % n]`` element by element (a copy if needed)."""
    n = len(refs)
    out = []
    for s, t in enumerate(shards):
        ref = refs[s % n]
        out.append(t if same_dense_layout(t, ref) else torch.empty_like(ref).copy_(t))
    return out


def _merged_runs(addresses: np.ndarray, sizes: np.ndarray, itemsize: int) -> tuple[np.ndarray, np.ndarray]:
    """Drops empty shards, then merges shard i+1 into shard i wherever, in every row, it starts
    where shard i ends."""
    nonempty = sizes > 0
    addresses, sizes = addresses[:, nonempty], sizes[nonempty]
    n = sizes.shape[0]
    if n <= 1:
        return addresses, sizes
    follows = np.all(addresses[:, 1:] == addresses[:, :-1] + sizes[:-1] * itemsize, axis=0)
    starts = np.flatnonzero(np.concatenate(([True], ~follows)))
    merged_sizes = np.add.reduceat(sizes, starts)
    return addresses[:, starts], merged_sizes


class _TableCache:
    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, ShardTable] = OrderedDict()

    def get(self, key: tuple, build) -> ShardTable:
        table = self._entries.get(key)
        if table is None:
            table = build()
            self._entries[key] = table
            if len(self._entries) > _CACHE_SIZE:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return table

    def clear(self) -> None:
        self._entries.clear()


_cache = _TableCache()


def clear_cache() -> None:
    """Drops every cached table (they hold only addresses, never references to the tensors)."""
    _cache.clear()


def shard_table(rows: list[list[Tensor]]) -> ShardTable:
    """Tables for rows of n shards each (inputs and outputs alike), paired by shard index.

    Every tensor must be dense and share its shard index's layout (see ``readable``); the table
    holds addresses only, so the caller keeps the tensors alive until the kernel has been queued.
    """
    first = rows[0]
    device = first[0].device
    sizes = tuple(t.numel() for t in first)
    addresses = tuple(tuple(t.data_ptr() for t in row) for row in rows)
    # A table is uploaded on the current stream; reusing it on another could race with the upload.
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream, first[0].element_size(), sizes, addresses)
    return _cache.get(key, lambda: _build(addresses, sizes, first[0].element_size(), device))


def _build(addresses: tuple, sizes: tuple, itemsize: int, device: torch.device) -> ShardTable:
    address_array = np.array(addresses, dtype=np.int64).reshape(len(addresses), len(sizes))
    size_array = np.array(sizes, dtype=np.int64)
    address_array, size_array = _merged_runs(address_array, size_array, itemsize)
    chunks_per_shard = -(-size_array // CHUNK)
    shard_of_chunk = np.repeat(np.arange(size_array.shape[0], dtype=np.int64), chunks_per_shard)
    first_chunk = np.concatenate(([0], np.cumsum(chunks_per_shard)[:-1]))
    start_of_chunk = (np.arange(shard_of_chunk.shape[0], dtype=np.int64) - first_chunk[shard_of_chunk]) * CHUNK
    host = np.concatenate((address_array.reshape(-1), size_array, shard_of_chunk, start_of_chunk))
    packed = to_device(torch.from_numpy(host), device)
    rows, n, c = address_array.shape[0], size_array.shape[0], shard_of_chunk.shape[0]
    return ShardTable(
        ptrs=packed[: rows * n],
        sizes=packed[rows * n : rows * n + n],
        chunks=packed[rows * n + n :].reshape(2, c),
        num_shards=n,
        num_chunks=c,
    )


def to_device(host: Tensor, device: torch.device) -> Tensor:
    # From pageable memory, a non-blocking copy is staged at once and never waits for the device.
    return host.to(device, non_blocking=True) if device.type != "cpu" else host
