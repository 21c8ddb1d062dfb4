"""Sharded gradients: DTensor shards (FSDP2's ``fully_shard``, HSDP) and hand-sharded plain tensors.

Every reduction is computed on the local shards and then summed across ranks with ONE
``all_reduce`` of the small K x K result per *sharded* mesh dimension -- never over a replicated
dimension (HSDP's replicate dimension would multiply the result), never by gathering a gradient.
Updates (combine, projections, optimizer steps) are local. DDP gradients are replicated plain
tensors: the local result is already exact and no collective runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

try:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed support
    dist, DTensor = None, None


@dataclass(frozen=True)
class Reduction:
    """The process groups a local partial result is summed over, one collective each."""

    groups: tuple

    def all_reduce_(self, result: Tensor) -> Tensor:
        for group in self.groups:
            dist.all_reduce(result, op=dist.ReduceOp.SUM, group=group)
        return result


def is_dtensor(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def to_local(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The local shards of DTensors (views: writes land in the DTensor), plain tensors unchanged."""
    return [t.to_local() if is_dtensor(t) else t for t in tensors]


def unwrap(vectors: Sequence[Sequence[Tensor]], group=None) -> tuple[list[list[Tensor]], Reduction | None]:
    """Local shards of K vectors and how to reduce over ranks (None: the local result is exact).

    DTensor shards must all share one mesh and one placement (as FSDP2 and HSDP give them); a
    ``Partial`` placement (an unreduced gradient) is rejected. ``group`` is for plain tensors that
    the caller sharded by hand: their partial results are summed over it.
    """
    first = _first_tensor(vectors)
    if group is not None and dist is None:
        raise RuntimeError("group= needs torch.distributed")
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed.ProcessGroup, got {type(group).__name__}")
    if not is_dtensor(first):
        for k, vector in enumerate(vectors):
            for i, t in enumerate(vector):
                if is_dtensor(t):
                    raise TypeError(f"vectors[{k}] shard {i} is a DTensor but vectors[0] shard 0 is a plain tensor")
        return [list(v) for v in vectors], Reduction((group,)) if group is not None else None
    if group is not None:
        raise ValueError("group= is for plain tensors; DTensor shards carry their own mesh")
    mesh, placements = first.device_mesh, tuple(first.placements)
    local = []
    for k, vector in enumerate(vectors):
        shards = []
        for i, t in enumerate(vector):
            if not is_dtensor(t):
                raise TypeError(f"vectors[{k}] shard {i} is a plain tensor but vectors[0] shard 0 is a DTensor")
            if t.device_mesh != mesh:
                raise ValueError(f"vectors[{k}] shard {i} lives on mesh {t.device_mesh}, vectors[0] shard 0 on {mesh}")
            if tuple(t.placements) != placements:
                raise ValueError(
                    f"vectors[{k}] shard {i} has placements {t.placements} but vectors[0] shard 0 has {placements}; "
                    "call the op per group of identically placed shards"
                )
            shards.append(t.to_local())
        local.append(shards)
    if any(p.is_partial() for p in placements):
        raise ValueError(f"placements {placements} include Partial: reduce the gradients before using them")
    sharded = [d for d, p in enumerate(placements) if p.is_shard()]
    return local, Reduction(tuple(mesh.get_group(d) for d in sharded)) if sharded else None


def _first_tensor(vectors):
    try:
        return vectors[0][0]
    except (TypeError, IndexError, KeyError):
        return None


def needs_unwrap(vectors, group) -> bool:
    """Whether a call involves sharding at all (cheap: looks at the first shard only)."""
    return group is not None or is_dtensor(_first_tensor(vectors))
