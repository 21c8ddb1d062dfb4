"""The flatten-and-``.item()`` code that the fused ops replace, written the way public code writes it.

Public unlearning, Gradient Surgery and PCGrad code concatenates a gradient's per-parameter shards
with ``torch.cat``, reads the scalars it needs back to the host with ``.item()``, projects the flat
vector and copies it back into the shards. The profiler (``compare=True``), ``fastunlearn showcase``,
the demo's cost table and the benchmarks measure the fused ops against these functions. Keep them
as that code is written: extra copies and host reads included, because they are what is measured.

>>> import torch
>>> g = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
>>> r = [torch.tensor([1.0, 0.0]), torch.tensor([[0.0]])]
>>> gram([g, r])
tensor([[14.,  1.],
        [ 1.,  1.]])
>>> project_(g, r)  # g.r, read back before the projection
1.0
>>> g
[tensor([0., 2.]), tensor([[3.]])]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Vector = Sequence[Tensor]


def flatten(vector: Vector) -> Tensor:
    """The shards concatenated into one new 1-D tensor."""
    return torch.cat([s.reshape(-1) for s in vector])


def unflatten_into(flat: Tensor, shards: Vector) -> None:
    """Copies consecutive slices of ``flat`` back into ``shards``."""
    offset = 0
    for s in shards:
        s.copy_(flat[offset : offset + s.numel()].view_as(s))
        offset += s.numel()


def gram(vectors: Sequence[Vector]) -> Tensor:
    """The K x K Gram matrix of the flattened vectors, stacked into one K x N matrix first."""
    rows = torch.stack([flatten(v) for v in vectors])
    return rows @ rows.T


def _read_coefficient(flat_g: Tensor, flat_r: Tensor, eps: float) -> tuple[float, float]:
    # Two host reads, g.r first: on CUDA each is a synchronisation, which is part of what is measured.
    dot = torch.dot(flat_g, flat_r).item()
    return dot, dot / (flat_r.norm().item() ** 2 + eps)


def project_(g: Vector, r: Vector, eps: float = 0.0) -> float:
    """Removes from ``g`` (in place) its component along ``r``; returns g.r as read on the host."""
    flat_g, flat_r = flatten(g), flatten(r)
    dot, coef = _read_coefficient(flat_g, flat_r, eps)
    flat_g -= coef * flat_r
    unflatten_into(flat_g, g)
    return dot


def projected(g: Vector, r: Vector, eps: float = 0.0) -> Tensor:
    """``g`` minus its component along ``r``, as a new flat tensor; ``g`` is left as it was."""
    flat_g, flat_r = flatten(g), flatten(r)
    _, coef = _read_coefficient(flat_g, flat_r, eps)
    return flat_g - coef * flat_r


def _shard_dot(a: Tensor, b: Tensor, sizes: Sequence[int]) -> float:
    """Sum over the shards' slices of the flat vectors of their dot products, one ``.item()`` each."""
    total, offset = 0.0, 0
    for size in sizes:
        total += (a[offset : offset + size] * b[offset : offset + size]).sum().item()
        offset += size
    return total


def gru_direction(g_f: Vector, g_r: Vector, previous: Tensor | float, gamma: float) -> tuple[Tensor, Tensor]:
    """OpenUnlearning's GRU step (``trainer/unlearn/gru.py``): both gradients concatenated and
    moved to the host, the retain average ``gamma * g_r + (1 - gamma) * previous`` there, dot
    products summed per parameter with one ``.item()`` each, and the forget objective's gradient
    (gradient ascent: ``-g_f``) projected off the average where they conflict. Returns the flat
    descent direction (on the host) and the new average (``previous`` starts at 0.0). One
    difference: OpenUnlearning copies the two flat vectors back to the GPU for each dot product;
    here they are taken on the host (the same on a CPU; on a GPU this costs less than theirs)."""
    objective = torch.cat([-g.reshape(-1) for g in g_f]).to("cpu")
    average = gamma * torch.cat([g.reshape(-1) for g in g_r]).to("cpu") + (1 - gamma) * previous
    sizes = [g.numel() for g in g_f]
    dot = _shard_dot(objective, average, sizes)
    if dot < 0:
        objective = objective - dot / _shard_dot(average, average, sizes) * average
    return objective, average
