"""Public ops: one Gram pass, a scalar stage on the device, one combine pass.

A *vector* is a sequence of per-parameter tensors (its shards), never flattened. Each function below
normalises its arguments and runs ``torch.ops.fastunlearn.<op>`` (csrc/library.cpp: schema, a
kernel per dispatch key, Meta shapes, the Gram's autograd formula), through the op's Python entry
point in ``fastunlearn._C`` for eager calls; ``torch.compile`` and ``torch.library.opcheck`` accept
every op. Every scalar result stays on the device: no op reads a value back to the host.

Conventions:

* Reductions over fp32/fp64 shards accumulate in fp64 and return the input dtype; over bf16/fp16
  they accumulate in and return fp32; shards of several dtypes meet in fp64.
* ``eps`` guards every division by a squared norm, so a zero retain gradient gives no NaN; a NaN or
  Inf in an input propagates to the result and to the returned stats.
* In-place ops (names ending in ``_``) check everything before writing anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from fastunlearn import _backend, _validate, distributed
from fastunlearn.weighting import DEFAULT_EPS, PCGrad, Projection, SpanComplement, Weighting

Vector = Sequence[Tensor]

_LISTS = (list, tuple)


_OPS: dict = {}


def _op(name: str):
    op = _OPS.get(name)
    if op is None:
        _backend.require_native()
        op = _OPS[name] = getattr(torch.ops.fastunlearn, name).default
    return op


def _flatten(vectors: Sequence[Vector], names=None) -> tuple[list[Tensor], int]:
    """K >= 1 vectors of n >= 1 shards each, flat and vector-major (vector k, shard i at k*n + i).
    Only the structure is checked here; the op checks every shard (csrc/common/validate.h)."""
    if type(vectors) not in _LISTS and (isinstance(vectors, Tensor) or not isinstance(vectors, Sequence)):
        raise TypeError("vectors must be a sequence of vectors (each a sequence of tensors)")
    if len(vectors) == 0:
        raise ValueError("vectors is empty: at least one vector is needed")
    flat: list[Tensor] = []
    n = -1
    for k, vector in enumerate(vectors):
        if type(vector) not in _LISTS:
            vector = _as_vector(vector, _name(names, k))
        if len(vector) == 0:
            raise ValueError(f"{_name(names, k)} has no shards")
        if n < 0:
            n = len(vector)
        elif len(vector) != n:
            raise ValueError(f"{_name(names, k)} has {len(vector)} shards but {_name(names, 0)} has {n}")
        flat += vector
    return flat, n


def _name(names, k: int) -> str:
    """How errors call vector k: ``names[k]``, or ``names(k)`` (formatted only when needed)."""
    if names is None:
        return f"vectors[{k}]"
    return names(k) if callable(names) else names[k]


def _as_vector(vector, what: str) -> list[Tensor]:
    if isinstance(vector, Tensor):
        raise TypeError(f"{what} is a Tensor; pass a vector as a list of shards, e.g. [t]")
    if not isinstance(vector, Sequence):
        raise TypeError(f"{what} must be a sequence of tensors, got {type(vector).__name__}")
    return list(vector)


def _call(op: str, *args, vectors=None, names=None):
    """Runs ``torch.ops.fastunlearn.<op>``; an argument the dispatcher cannot read (a shard that is
    not a tensor) is reported by argument name and shard, as every other bad input is."""
    try:
        return _op(op)(*args)
    except RuntimeError as error:
        if vectors is not None:
            for k, vector in enumerate(vectors):
                for i, shard in enumerate(vector):
                    if not isinstance(shard, Tensor):
                        raise TypeError(
                            f"{_name(names, k)} shard {i} is a {type(shard).__name__}, not a Tensor"
                        ) from None
        raise error


def _out_and_vectors(k: int) -> str:
    return "out" if k == 0 else f"vectors[{k - 1}]"


def _g_and_directions(k: int) -> str:
    return "g" if k == 0 else f"directions[{k - 1}]"


def _first_shard(vectors):
    try:
        return vectors[0][0]
    except (TypeError, IndexError, KeyError):
        return None


def _device(shard) -> torch.device:
    return shard.device if isinstance(shard, Tensor) else torch.device("cpu")


class ProjectionStats(NamedTuple):
    """What ``project_`` computed, as 0-d device tensors in the accumulation dtype."""

    dot: Tensor  #: g . r before the projection
    g_sq_norm: Tensor  #: |g|^2 before the projection
    r_sq_norm: Tensor  #: |r|^2
    coef: Tensor  #: c in g <- g - c r (0 where the mode did not project)


class PCGradStats(NamedTuple):
    """What ``pcgrad_`` computed, on the device in the accumulation dtype."""

    gram: Tensor  #: K x K dot products of the task gradients
    weights: Tensor  #: (K,) w with out = sum_k w_k g_k


def gram(vectors: Sequence[Vector], *, dtype: torch.dtype | None = None, backend: str = "auto", group=None) -> Tensor:
    """K x K matrix of pairwise dot products of K vectors, reading every shard once.

    Differentiable; fp32/fp64 inputs give the input dtype (accumulated in fp64), bf16/fp16 give fp32;
    shards of several dtypes (bf16 weights beside fp32 adapters) give fp64 if any is fp64, else fp32.
    Pass ``dtype=torch.float64`` to keep the full accumulator (e.g. to derive coefficients from it).
    DTensor shards (FSDP2) or plain shards with ``group=`` give the Gram of the whole, sharded
    vectors: one all-reduce of the K x K result per sharded mesh dimension (not differentiable).

    >>> import torch, fastunlearn as fu
    >>> g_f = [torch.ones(2, 3), torch.ones(4)]
    >>> g_r = [torch.zeros(2, 3), 2 * torch.ones(4)]
    >>> fu.gram([g_f, g_r])
    tensor([[10.,  8.],
            [ 8., 16.]])
    """
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype}")
    if distributed.needs_unwrap(vectors, group):
        return _sharded_gram(vectors, group, backend).to(dtype or _backend.result_dtype(vectors[0][0].dtype))
    first = _first_shard(vectors)
    if isinstance(first, Tensor):
        result = _backend.entry_point("gram", first, vectors, dtype, _backend.resolve(backend, first.device))
        if result is not NotImplemented:
            return result
    shards, _ = _flatten(vectors)
    name = _backend.resolve(backend, _device(shards[0]))
    return _call("gram", shards, len(vectors), dtype, name, vectors=vectors)


def _sharded_gram(vectors, group, backend: str) -> Tensor:
    """The reduced Gram of sharded vectors, in the accumulation dtype (local pass, then all-reduce)."""
    local, reduction = distributed.unwrap(vectors, group)
    return _reduced_gram(local, reduction, backend)


def _reduced_gram(local: list[list[Tensor]], reduction, backend: str) -> Tensor:
    """Gram of local shards in the accumulation dtype, summed over ranks by ``reduction`` (if any)."""
    with torch.no_grad():  # the all-reduce is not part of any autograd graph
        result = gram(local, dtype=_backend.accumulation_dtype(local[0][0].dtype), backend=backend)
    return reduction.all_reduce_(result) if reduction is not None else result


def dot(a: Vector, b: Vector, *, backend: str = "auto", group=None) -> Tensor:
    """Dot product of two vectors as a 0-d device tensor (one pass over both).

    >>> import torch, fastunlearn as fu
    >>> fu.dot([torch.ones(3)], [torch.arange(3.0)])
    tensor(3.)
    """
    return gram([a, b], backend=backend, group=group)[0, 1]


def sq_norm(a: Vector, *, backend: str = "auto", group=None) -> Tensor:
    """Squared Euclidean norm of a vector as a 0-d device tensor.

    >>> import torch, fastunlearn as fu
    >>> fu.sq_norm([torch.full((2, 2), 0.5), torch.ones(1)])
    tensor(2.)
    """
    return gram([a], backend=backend, group=group)[0, 0]


def combine_(out: Vector, weights: Tensor, vectors: Sequence[Vector], *, backend: str = "auto") -> Vector:
    """``out[i] = sum_k weights[k] * vectors[k][i]`` in one pass; returns ``out``.

    ``weights`` is a (K,) floating tensor on the vectors' device (values never leave it). ``out``
    may be one of ``vectors`` (an in-place update); any other shared element is an error.

    >>> import torch, fastunlearn as fu
    >>> g, r = [torch.ones(3)], [torch.arange(3.0)]
    >>> fu.combine_(g, torch.tensor([2.0, -1.0]), [g, r])
    [tensor([2., 1., 0.])]
    """
    if distributed.needs_unwrap(vectors, None) or distributed.needs_unwrap([out], None):
        local, _ = distributed.unwrap([out, *vectors])  # purely local: no collective
        combine_(local[0], weights, local[1:], backend=backend)
        return out
    first = _first_shard(vectors)
    if isinstance(first, Tensor) and isinstance(weights, Tensor):
        name = _backend.resolve(backend, first.device)
        if _backend.entry_point("combine_", first, out, weights, vectors, name) is not NotImplemented:
            return out
    shards, _ = _flatten(vectors)
    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a Tensor on {_device(shards[0])}, got {type(weights).__name__}")
    outs = out if type(out) in _LISTS else _as_vector(out, "out")
    name = _backend.resolve(backend, _device(shards[0]))
    _call("combine_", outs, weights, shards, len(vectors), name, vectors=[outs, *vectors], names=_out_and_vectors)
    return out


def aggregate_(
    out: Vector, vectors: Sequence[Vector], weighting: Weighting, *, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """The engine under every op that writes a gradient: the Gram pass over ``vectors``, the
    ``weighting`` on the K x K Gram, and the combine pass ``out = sum_k w_k vectors[k]``. Returns
    ``(gram, weights)`` in the accumulation dtype. ``out`` may be one of ``vectors``.

    A built-in weighting (``Projection``, ``SpanComplement``, ``PCGrad``) runs as one op with its
    scalar stage in C++ on CPU; any other :class:`~fastunlearn.Weighting` runs as a Gram op, its own
    ``__call__`` on the device, and a combine op.

    >>> import torch, fastunlearn as fu
    >>> g, r = [torch.tensor([1.0, 1.0])], [torch.tensor([1.0, 0.0])]
    >>> gram, weights = fu.aggregate_(g, [g, r], fu.Projection("always"))
    >>> g, weights
    ([tensor([0., 1.])], tensor([ 1., -1.], dtype=torch.float64))
    """
    if not isinstance(weighting, Weighting):
        raise TypeError(f"weighting must be a fastunlearn.Weighting, got {type(weighting).__name__}")
    first = _first_shard(vectors)
    if weighting.native is not None and isinstance(first, Tensor):
        name = _backend.resolve(backend, first.device)
        order = weighting.native_order()
        if order is not None:  # any integer order, moved to the vectors' device and checked there
            order = _checked_order(order, len(vectors), first.device, None)
        args = (out, vectors, weighting.native, weighting.eps, order, name)
        result = _backend.entry_point("aggregate_", first, *args)
        if result is not NotImplemented:
            return result
    shards, _ = _flatten(vectors)
    outs = out if type(out) in _LISTS else _as_vector(out, "out")
    name = _backend.resolve(backend, _device(shards[0]))
    k = len(vectors)
    if weighting.native is not None:
        order = weighting.native_order()
        if order is not None:
            order = _checked_order(order, k, _device(shards[0]), None)
        args = (outs, shards, k, weighting.native, weighting.eps, order, name)
        return tuple(_call("aggregate_", *args, vectors=[outs, *vectors], names=_out_and_vectors))
    # The weighting sees the full accumulator: fp64 if any shard accumulates in fp64.
    try:
        wide = any(_backend.accumulation_dtype(s.dtype) == torch.float64 for s in shards)
    except TypeError:  # a dtype the ops do not take: the gram op's check names the shard
        wide = True
    gram = _call("gram", shards, k, torch.float64 if wide else torch.float32, name, vectors=vectors)
    weights = weighting(gram)
    _call("combine_", outs, weights, shards, k, name, vectors=[outs, *vectors], names=_out_and_vectors)
    return gram, weights


def project_(
    g: Vector, r: Vector, *, mode: str = "always", eps: float = DEFAULT_EPS, backend: str = "auto", group=None
) -> ProjectionStats:
    """Removes from ``g``, in place, its component along ``r``: ``g <- g - c r``.

    ``c = (g.r) / (|r|^2 + eps)``, applied according to ``mode``:

    * ``"always"``: every call (Gradient Surgery's default).
    * ``"conflict"``: only where ``g.r < 0`` -- PCGrad's convention, both are *descent* directions.
    * ``"ascent_conflict"``: only where ``g.r > 0`` -- ``g`` is a forget gradient to be *ascended*
      while ``r`` is a retain gradient to be descended, so their updates ``+g`` and ``-r`` conflict
      exactly when the raw gradients point the same way.

    Two passes (Gram, then update), no host sync; returns the :class:`ProjectionStats` it used.
    (This is ``aggregate_(g, [g, r], Projection(mode, eps))``.)

    >>> import torch, fastunlearn as fu
    >>> g, r = [torch.tensor([1.0, 1.0])], [torch.tensor([1.0, 0.0])]
    >>> fu.project_(g, r).coef
    tensor(1., dtype=torch.float64)
    >>> g
    [tensor([0., 1.])]
    """
    _validate.check_choice(mode, _validate.MODES, "mode")
    eps = _validate.check_eps(eps)
    if distributed.needs_unwrap([g, r], group):
        (g_local, r_local), reduction = distributed.unwrap([g, r], group)
        gram = _reduced_gram([g_local, r_local], reduction, backend)
        weights = Projection(mode, eps)(gram)
        combine_(g_local, weights, [g_local, r_local], backend=backend)
        return ProjectionStats(gram[0, 1], gram[0, 0], gram[1, 1], -weights[1])
    first = _first_shard([g])
    if isinstance(first, Tensor):
        stats = _backend.entry_point("project_", first, g, r, mode, eps, _backend.resolve(backend, first.device))
        if stats is not NotImplemented:
            return ProjectionStats(*stats.unbind())
    shards, n = _flatten([g, r], names=("g", "r"))
    name = _backend.resolve(backend, _device(shards[0]))
    stats = _call("project_", shards[:n], shards[n:], mode, eps, name, vectors=[g, r], names=("g", "r"))
    return ProjectionStats(*stats.unbind())


def project_normal_(
    g: Vector, directions: Sequence[Vector], *, eps: float = DEFAULT_EPS, backend: str = "auto", group=None
) -> Tensor:
    """Removes from ``g``, in place, its component in the span of ``directions`` (m vectors).

    Finds ``alpha`` with ``sum_j alpha_j r_j`` the component of ``g`` in span(r_1..r_m) on the
    device (Gram-Schmidt on the m x m Gram, ``eps`` added to each squared norm) and applies
    ``g <- g - sum_j alpha_j r_j``; one Gram pass over ``[g, r_1..r_m]`` and one update pass. A
    direction already in the span of the earlier ones (repeated, scaled, zero, or within
    ``1000 * finfo.eps`` of it in squared norm, in the Gram's dtype) gets ``alpha_j = 0``. With one
    direction this is ``project_(g, r, mode="always")``. Returns ``alpha``.
    (This is ``aggregate_(g, [g, *directions], SpanComplement(eps))``.)

    >>> import torch, fastunlearn as fu
    >>> g = [torch.tensor([1.0, 2.0, 3.0])]
    >>> fu.project_normal_(g, [[torch.tensor([1.0, 0.0, 0.0])], [torch.tensor([0.0, 1.0, 0.0])]])
    tensor([1., 2.], dtype=torch.float64)
    >>> g
    [tensor([0., 0., 3.])]
    """
    if isinstance(directions, Tensor) or not isinstance(directions, Sequence) or not directions:
        raise ValueError("directions must be a non-empty sequence of vectors")
    eps = _validate.check_eps(eps)
    if distributed.needs_unwrap([g, *directions], group):
        local, reduction = distributed.unwrap([g, *directions], group)
        gram = _reduced_gram(local, reduction, backend)
        weights = SpanComplement(eps)(gram)
        combine_(local[0], weights, local, backend=backend)
        return -weights[1:]
    first = _first_shard([g])
    if isinstance(first, Tensor):
        alpha = _backend.entry_point(
            "project_normal_", first, g, directions, eps, _backend.resolve(backend, first.device)
        )
        if alpha is not NotImplemented:
            return alpha
    names = _g_and_directions
    shards, n = _flatten([g, *directions], names=names)
    name = _backend.resolve(backend, _device(shards[0]))
    return _call(
        "project_normal_", shards[:n], shards[n:], len(directions), eps, name, vectors=[g, *directions], names=names
    )


def pcgrad_order(
    num_vectors: int, *, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> Tensor:
    """A random projection order per task (row i: the order task i meets the others), made on the
    device (no host round trip). Pass a ``generator`` on that device for reproducible orders.

    >>> import torch, fastunlearn as fu
    >>> order = fu.pcgrad_order(3, generator=torch.Generator().manual_seed(0))
    >>> order.shape
    torch.Size([3, 3])
    >>> order.sort(dim=1).values  # every row is a permutation of the task indices
    tensor([[0, 1, 2],
            [0, 1, 2],
            [0, 1, 2]])
    >>> torch.equal(order, fu.pcgrad_order(3, generator=torch.Generator().manual_seed(0)))
    True
    """
    _validate.check_generator(generator)
    noise = torch.rand(num_vectors, num_vectors, device=device, generator=generator)
    return noise.argsort(dim=1)


def pcgrad_weights(
    gram: Tensor,
    *,
    reduction: str = "mean",
    order: Tensor | None = None,
    generator: torch.Generator | None = None,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Weights w with ``sum_k w_k g_k`` equal to PCGrad's merged gradient, from the K x K Gram only.

    Each task gradient g_i is projected, in ``order[i]`` (random when not given), onto the normal
    plane of every g_j it conflicts with (g_i^PC . g_j < 0), as in Yu et al. (2020) and the widely
    used PyTorch port; the projected gradients are then summed or averaged (``reduction``).

    >>> import torch, fastunlearn as fu
    >>> G = torch.tensor([[1.0, -1.0], [-1.0, 4.0]], dtype=torch.float64)
    >>> fu.pcgrad_weights(G, reduction="sum", order=torch.tensor([[0, 1], [1, 0]]))
    tensor([2.0000, 1.2500], dtype=torch.float64)
    """
    _validate.check_choice(reduction, _validate.REDUCTIONS, "reduction")
    eps = _validate.check_eps(eps)
    if not isinstance(gram, Tensor) or not gram.is_floating_point():
        raise TypeError(f"gram must be a floating-point tensor, got {getattr(gram, 'dtype', type(gram).__name__)}")
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"gram must be a non-empty square matrix, got shape {tuple(gram.shape)}")
    k = gram.shape[0]
    order = _checked_order(order, k, gram.device, generator)
    return PCGrad(order, reduction, eps)(gram)


def pcgrad_(
    out: Vector,
    vectors: Sequence[Vector],
    *,
    reduction: str = "mean",
    order: Tensor | None = None,
    generator: torch.Generator | None = None,
    eps: float = DEFAULT_EPS,
    backend: str = "auto",
    group=None,
) -> PCGradStats:
    """PCGrad over K task gradients into ``out``: Gram pass, weights on the device, combine pass.

    ``out`` may be one of ``vectors`` (e.g. write the result over the first task's gradient).

    >>> import torch, fastunlearn as fu
    >>> g1, g2 = [torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 2.0])]
    >>> out = [torch.empty(2)]
    >>> stats = fu.pcgrad_(out, [g1, g2], reduction="sum", order=torch.tensor([[0, 1], [1, 0]]))
    >>> out
    [tensor([0.8000, 2.4000])]
    """
    _validate.check_choice(reduction, _validate.REDUCTIONS, "reduction")
    eps = _validate.check_eps(eps)
    _validate.check_generator(generator)
    if distributed.needs_unwrap(vectors, group) or distributed.needs_unwrap([out], None):
        return _sharded_pcgrad_(out, vectors, reduction, order, generator, eps, backend, group)
    # Without an order the op draws one (pcgrad_order's draw) once its checks have passed. It checks
    # a CPU order's values itself; one that moves to the device is checked here.
    first = _first_shard(vectors)
    if isinstance(first, Tensor) and type(vectors) in _LISTS:
        device = first.device
        name = _backend.resolve(backend, device)
        if order is not None:
            order = _checked_order(order, len(vectors), device, None, values=device.type != "cpu")
        result = _backend.entry_point("pcgrad_", first, out, vectors, order, reduction, eps, name, generator)
        if result is not NotImplemented:
            return PCGradStats(*result)
    shards, _ = _flatten(vectors)
    outs = out if type(out) in _LISTS else _as_vector(out, "out")
    device = _device(shards[0])
    name = _backend.resolve(backend, device)
    if order is not None:
        order = _checked_order(order, len(vectors), device, None, values=device.type != "cpu")
    args = (outs, shards, len(vectors), order, reduction, eps, name, generator)
    return PCGradStats(*_call("pcgrad_", *args, vectors=[outs, *vectors], names=_out_and_vectors))


def _sharded_pcgrad_(out, vectors, reduction, order, generator, eps, backend, group) -> PCGradStats:
    if order is None and generator is None:
        raise ValueError("pcgrad_ on sharded vectors needs order= or a generator seeded alike on every rank")
    local, shard_reduction = distributed.unwrap([out, *vectors], group)
    gram = _reduced_gram(local[1:], shard_reduction, backend)
    weights = PCGrad(_checked_order(order, len(vectors), gram.device, generator), reduction, eps)(gram)
    combine_(local[0], weights, local[1:], backend=backend)
    return PCGradStats(gram, weights)


def _checked_order(
    order: Tensor | None, k: int, device: torch.device, generator: torch.Generator | None, values: bool = True
) -> Tensor:
    if order is None:
        return pcgrad_order(k, device=device, generator=generator)
    if not isinstance(order, Tensor) or order.dtype not in (torch.int32, torch.int64):
        raise TypeError("order must be an integer tensor of shape (K, K)")
    if tuple(order.shape) != (k, k):
        raise ValueError(f"order must have shape ({k}, {k}), got {tuple(order.shape)}")
    if order.device.type not in ("cpu", device.type):
        raise ValueError(f"order is on {order.device}, not on {device} where the weights are computed")
    # Checking the values needs them on the host: done for CPU orders only, never a device sync.
    permutations = torch.arange(k).expand(k, k)
    if values and order.device.type == "cpu" and not torch.equal(order.sort(dim=1).values.long(), permutations):
        raise ValueError("each row of order must be a permutation of 0..K-1")
    return order.to(device=device, dtype=torch.int64)
