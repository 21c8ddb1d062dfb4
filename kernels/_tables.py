"""Shard lists as the Triton kernels see them: a table of base addresses and a table of chunks,
built by the same C++ builder as the CUDA backend's (``torch.ops.fastunlearn.shard_table``).

K vectors of n shards arrive flat and vector-major (``shards[k * n + i]``). A kernel reads shard i
of every vector as flat memory, so each shard index is computed in one dense layout: the layout of
its reference tensor (the first vector's for reductions, the first output's for writes). An input
in another layout is read through a dense copy in the reference layout, so elements always pair by
logical index, never by memory position.

Work is cut into chunks of at most ``CHUNK`` elements that never straddle a shard; a program of
the persistent grid takes chunks ``pid, pid + grid, ...`` (csrc/common/shard_table.h has the rules:
empty shards dropped, back-to-back runs merged).

Tables are cached by their contents (addresses and sizes), so a training loop that reuses its
``.grad`` tensors uploads them once. They reach the device with a non-blocking copy: no host sync.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from fastunlearn import _C

#: Elements of one shard one chunk covers (csrc/common/chunking.h): a task of the persistent grid.
CHUNK = _C.TABLE_CHUNK

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


def layouts(
    refs: list[Tensor], inputs: list[Tensor], outputs: list[Tensor] = ()
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The layout policy of csrc/common/layouts.h, for n shard indices: the tensor each index is
    computed in (``refs[i]`` where it is dense, else a contiguous stand-in); ``inputs`` as memory
    that pairs with it element by element (a dense copy where theirs differs); and for ``outputs``
    the tensors to write (the output itself where it pairs, else a temporary the caller copies back)."""
    dense, pairs = _C.layout_pairs(list(refs), [*inputs, *outputs])
    refs = [t if d else torch.empty(t.shape, dtype=t.dtype, device=t.device) for t, d in zip(refs, dense)]
    n = len(refs)
    read = [t if p else torch.empty_like(refs[s % n]).copy_(t) for s, (t, p) in enumerate(zip(inputs, pairs))]
    out_pairs = pairs[len(inputs) :]
    written = [t if p else torch.empty_like(refs[s % n]) for s, (t, p) in enumerate(zip(outputs, out_pairs))]
    return refs, read, written


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
    key = (device, stream, first[0].element_size(), sizes, addresses, CHUNK)
    return _cache.get(key, lambda: _build(rows, device))


def _build(rows: list[list[Tensor]], device: torch.device) -> ShardTable:
    host, n, c = torch.ops.fastunlearn.shard_table([t for row in rows for t in row], len(rows), CHUNK)
    packed = to_device(host, device)
    rows = len(rows)
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
