"""Public ops: one Gram pass, a scalar stage on the device, one combine pass.

A *vector* is a sequence of per-parameter tensors (its shards), never flattened. Each op below is a
``torch.library`` custom op in the ``fastunlearn`` namespace (schema, fake implementation, and for
the reductions an autograd formula), so ``torch.compile`` and ``torch.library.opcheck`` accept it.
Every scalar result stays on the device: no op reads a value back to the host.

Conventions:

* Reductions over fp32/fp64 shards accumulate in fp64 and return the input dtype; over bf16/fp16
  they accumulate in and return fp32.
* ``eps`` guards every division by a squared norm, so a zero retain gradient gives no NaN; a NaN or
  Inf in an input propagates to the result and to the returned stats.
* In-place ops (names ending in ``_``) check everything before writing anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from fastunlearn import _backend, _fast, _validate, distributed
from fastunlearn.reference import accumulation_dtype

Vector = Sequence[Tensor]

DEFAULT_EPS = 1e-20


# --------------------------------------------------------------------------------------------
# torch.library registrations. Shards travel flat and vector-major (vector k, shard i at k*n+i).
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("fastunlearn::gram", mutates_args=())
def _gram(shards: list[Tensor], num_vectors: int, backend: str) -> Tensor:
    return _backend.get(backend).gram(shards, num_vectors)


@_gram.register_fake
def _(shards, num_vectors, backend):
    return shards[0].new_empty((num_vectors, num_vectors), dtype=accumulation_dtype(shards[0].dtype))


def _gram_setup_context(ctx, inputs, output):
    shards, num_vectors, backend = inputs
    ctx.num_vectors, ctx.backend = num_vectors, backend
    ctx.save_for_backward(*shards)


def _gram_backward(ctx, grad_gram):
    # d<v_a, v_b>/dv_k contributes (G_bar + G_bar^T)[k, :] . v: itself a combine pass.
    shards = list(ctx.saved_tensors)
    weights = grad_gram + grad_gram.mT
    return _combine(shards, weights, ctx.num_vectors, ctx.backend), None, None


_gram.register_autograd(_gram_backward, setup_context=_gram_setup_context)


@torch.library.custom_op("fastunlearn::combine", mutates_args=())
def _combine(shards: list[Tensor], weights: Tensor, num_vectors: int, backend: str) -> list[Tensor]:
    n = len(shards) // num_vectors
    outs = [torch.empty_like(shards[i]) for _ in range(weights.shape[0]) for i in range(n)]
    _backend.get(backend).combine_(outs, weights, shards, num_vectors)
    return outs


@_combine.register_fake
def _(shards, weights, num_vectors, backend):
    n = len(shards) // num_vectors
    return [torch.empty_like(shards[i]) for _ in range(weights.shape[0]) for i in range(n)]


@torch.library.custom_op("fastunlearn::combine_", mutates_args=("out",))
def _combine_(out: list[Tensor], weights: Tensor, shards: list[Tensor], num_vectors: int, backend: str) -> None:
    _validate.check_overlaps(out, shards, len(out))
    _backend.get(backend).combine_(out, weights.reshape(1, -1), shards, num_vectors)


@_combine_.register_fake
def _(out, weights, shards, num_vectors, backend):
    return None


def _projection_coefficient(gram: Tensor, mode: str, eps: float) -> Tensor:
    dot, r_sq = gram[0, 1], gram[1, 1]
    coef = dot / (r_sq + eps)
    if mode == "always":
        return coef
    conflict = dot < 0 if mode == "conflict" else dot > 0
    # A NaN dot compares false; keep its NaN coefficient so the damage shows in g.
    return torch.where(conflict | dot.isnan(), coef, torch.zeros_like(coef))


def _unit_minus(coefs: Tensor) -> Tensor:
    """The combine weights ``[1, -c_1, ..., -c_m]`` of ``g - sum_j c_j r_j``."""
    return torch.cat([torch.ones_like(coefs.reshape(-1)[:1]), -coefs.reshape(-1)])


@torch.library.custom_op("fastunlearn::project_", mutates_args=("g",))
def _project_(g: list[Tensor], r: list[Tensor], when: str, eps: float, backend: str) -> Tensor:
    # (`when` is `mode` of the public function: torch.library reserves the name `mode`.)
    _validate.check_overlaps(g, r, len(g), what="g", input_names=["r"])
    impl = _backend.get(backend)
    shards = [*g, *r]
    gram = impl.gram(shards, 2)
    coef = _projection_coefficient(gram, when, eps)
    impl.combine_(g, _unit_minus(coef).reshape(1, 2), shards, 2)
    return torch.stack([gram[0, 1], gram[0, 0], gram[1, 1], coef])


@_project_.register_fake
def _(g, r, when, eps, backend):
    return g[0].new_empty((4,), dtype=accumulation_dtype(g[0].dtype))


@torch.library.custom_op("fastunlearn::project_normal_", mutates_args=("g",))
def _project_normal_(
    g: list[Tensor], directions: list[Tensor], num_directions: int, eps: float, backend: str
) -> Tensor:
    _validate.check_overlaps(
        g, directions, len(g), what="g", input_names=[f"directions[{j}]" for j in range(num_directions)]
    )
    impl = _backend.get(backend)
    shards = [*g, *directions]
    gram = impl.gram(shards, num_directions + 1)
    coefs = _span_coefficients(gram, eps)
    impl.combine_(g, _unit_minus(coefs).reshape(1, -1), shards, num_directions + 1)
    return coefs


@_project_normal_.register_fake
def _(g, directions, num_directions, eps, backend):
    return g[0].new_empty((num_directions,), dtype=accumulation_dtype(g[0].dtype))


def _span_coefficients(gram: Tensor, eps: float) -> Tensor:
    """alpha with sum_j alpha_j r_j the component of g in span(R), from the Gram of [g, r_1..r_m].

    Gram-Schmidt in Gram space: row j of ``basis`` holds the coefficients over R of u_j, r_j's part
    orthogonal to the earlier kept directions, so the u_j are exactly orthogonal and removing
    ``sum_j (g.u_j) / (|u_j|^2 + eps) u_j`` never overshoots (``eps`` only damps tiny directions). A
    direction whose orthogonal part keeps no more than ``_dependence_tolerance`` of its squared norm
    lies in the span already (a repeated, scaled or zero direction) and gets alpha_j = 0, where the
    normal equations would be singular. Everything stays on the device: the choice is a
    ``torch.where``; no tensor is written in place, so the result is differentiable."""
    m = gram.shape[0] - 1
    directions, along = gram[1:, 1:], gram[1:, 0]
    tolerance = _dependence_tolerance(gram.dtype)
    identity = torch.eye(m, dtype=gram.dtype, device=gram.device)
    rows, squared_norms = [], []  # a dropped direction: a zero row and a placeholder norm of 1
    for j in range(m):
        row = identity[j]
        if rows:
            basis, norms = torch.stack(rows), torch.stack(squared_norms)
            row = row - (basis @ directions[:, j] / norms) @ basis
        squared_norm = row @ directions @ row
        kept = squared_norm > tolerance * directions[j, j]
        rows.append(torch.where(kept, row, torch.zeros_like(row)))
        squared_norms.append(torch.where(kept, squared_norm, torch.ones_like(squared_norm)))
    basis, norms = torch.stack(rows), torch.stack(squared_norms)
    return basis.mT @ (basis @ along / (norms + eps))


def _dependence_tolerance(dtype: torch.dtype) -> float:
    """Fraction of a direction's squared norm below which its part outside the span is rounding."""
    return 1000 * torch.finfo(dtype).eps


@torch.library.custom_op("fastunlearn::pcgrad_", mutates_args=("out",))
def _pcgrad_(
    out: list[Tensor], shards: list[Tensor], num_vectors: int, order: Tensor, reduction: str, eps: float, backend: str
) -> tuple[Tensor, Tensor]:
    _validate.check_overlaps(out, shards, len(out))
    impl = _backend.get(backend)
    gram = impl.gram(shards, num_vectors)
    weights = _pcgrad_weights(gram, order, reduction, eps)
    impl.combine_(out, weights.reshape(1, -1), shards, num_vectors)
    return gram, weights


@_pcgrad_.register_fake
def _(out, shards, num_vectors, order, reduction, eps, backend):
    acc = accumulation_dtype(shards[0].dtype)
    return (
        shards[0].new_empty((num_vectors, num_vectors), dtype=acc),
        shards[0].new_empty((num_vectors,), dtype=acc),
    )


def _pcgrad_weights(gram: Tensor, order: Tensor, reduction: str, eps: float) -> Tensor:
    """PCGrad's sequential projections, exact in Gram space.

    Row i of A holds g_i^PC = sum_k A[i, k] g_k, so g_i^PC . g_j = (A G)[i, j]. Step t projects
    every g_i^PC against its t-th partner order[i, t] at once (original, unprojected partners, as
    in the reference implementation), only where their dot product is negative.
    """
    k = gram.shape[0]
    rows = torch.arange(k, device=gram.device)
    coeffs = torch.eye(k, dtype=gram.dtype, device=gram.device)
    sq_norms = gram.diagonal()
    for t in range(k):
        partner = order[:, t]
        dots = (coeffs @ gram)[rows, partner]
        step = torch.where(dots < 0, dots / (sq_norms[partner] + eps), torch.zeros_like(dots))
        coeffs = coeffs.index_put((rows, partner), coeffs[rows, partner] - step)
    return coeffs.sum(0) if reduction == "sum" else coeffs.mean(0)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


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


def _result_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def gram(vectors: Sequence[Vector], *, dtype: torch.dtype | None = None, backend: str = "auto", group=None) -> Tensor:
    """K x K matrix of pairwise dot products of K vectors, reading every shard once.

    Differentiable; fp32/fp64 inputs give the input dtype (accumulated in fp64), bf16/fp16 give fp32.
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
    if distributed.needs_unwrap(vectors, group):
        return _sharded_gram(vectors, group, backend).to(dtype or _result_dtype(vectors[0][0].dtype))
    result = _fast.gram(vectors) if _fast.eligible(vectors, backend) else None
    if result is not None:
        return result.to(dtype or _result_dtype(vectors[0][0].dtype))
    shards, _ = _validate.flatten_vectors(vectors)
    name = _backend.resolve(backend, shards[0].device)
    return _gram(shards, len(vectors), name).to(dtype or _result_dtype(shards[0].dtype))


def _sharded_gram(vectors, group, backend: str) -> Tensor:
    """The reduced Gram of sharded vectors, in the accumulation dtype (local pass, then all-reduce)."""
    local, reduction = distributed.unwrap(vectors, group)
    return _reduced_gram(local, reduction, backend)


def _reduced_gram(local: list[list[Tensor]], reduction, backend: str) -> Tensor:
    """Gram of local shards in the accumulation dtype, summed over ranks by ``reduction`` (if any)."""
    with torch.no_grad():  # the all-reduce is not part of any autograd graph
        result = gram(local, dtype=accumulation_dtype(local[0][0].dtype), backend=backend)
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
    may be one of ``vectors`` (an in-place update); any other memory overlap is an error.

    >>> import torch, fastunlearn as fu
    >>> g, r = [torch.ones(3)], [torch.arange(3.0)]
    >>> fu.combine_(g, torch.tensor([2.0, -1.0]), [g, r])
    [tensor([2., 1., 0.])]
    """
    if distributed.needs_unwrap(vectors, None) or distributed.needs_unwrap([out], None):
        local, _ = distributed.unwrap([out, *vectors])  # purely local: no collective
        combine_(local[0], weights, local[1:], backend=backend)
        return out
    if _fast.eligible(vectors, backend) and _fast.combine_(out, weights, vectors):
        return out
    shards, n = _validate.flatten_vectors(vectors)
    out_shards = _validate.check_vector(out, "out")
    _validate.check_matches(out_shards, shards[:n], "out", "vectors[0]")
    _validate.check_weights(weights, (len(vectors),), shards[0].device)
    _validate.check_writable(out_shards, "out")
    _validate.check_not_differentiated(shards, n)
    name = _backend.resolve(backend, shards[0].device)
    _combine_(out_shards, weights, shards, len(vectors), name)
    return out


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
        _validate.check_writable(_validate.check_vector(g_local, "g"), "g")
        gram = _reduced_gram([g_local, r_local], reduction, backend)
        coef = _projection_coefficient(gram, mode, eps)
        combine_(g_local, _unit_minus(coef), [g_local, r_local], backend=backend)
        return ProjectionStats(gram[0, 1], gram[0, 0], gram[1, 1], coef)
    if _fast.eligible([g, r], backend):
        done = _fast.gram_combine_(g, [g, r], lambda gram: _unit_minus(_projection_coefficient(gram, mode, eps)))
        if done is not None:
            gram, weights = done
            return ProjectionStats(gram[0, 1], gram[0, 0], gram[1, 1], -weights[1])
    shards, n = _validate.flatten_vectors([g, r], names=["g", "r"])
    _validate.check_writable(shards[:n], "g")  # g's own requires-grad check
    _validate.check_not_differentiated(shards[n:], n, ["r"])
    name = _backend.resolve(backend, shards[0].device)
    return ProjectionStats(*_project_(shards[:n], shards[n:], mode, eps, name).unbind())


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
        _validate.check_writable(_validate.check_vector(local[0], "g"), "g")
        gram = _reduced_gram(local, reduction, backend)
        coefs = _span_coefficients(gram, eps)
        combine_(local[0], _unit_minus(coefs), local, backend=backend)
        return coefs
    if _fast.eligible([g, *directions], backend):
        done = _fast.gram_combine_(g, [g, *directions], lambda gram: _unit_minus(_span_coefficients(gram, eps)))
        if done is not None:
            return -done[1][1:]
    names = ["g", *(f"directions[{j}]" for j in range(len(directions)))]
    shards, n = _validate.flatten_vectors([g, *directions], names=names)
    _validate.check_writable(shards[:n], "g")  # g's own requires-grad check
    _validate.check_not_differentiated(shards[n:], n, names[1:])
    name = _backend.resolve(backend, shards[0].device)
    return _project_normal_(shards[:n], shards[n:], len(directions), eps, name)


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
    return _pcgrad_weights(gram, order, reduction, eps)


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
    if _fast.eligible(vectors, backend):

        def weights_of(gram: Tensor) -> Tensor:
            order_ = _checked_order(order, len(vectors), gram.device, generator)
            return _pcgrad_weights(gram, order_, reduction, eps)

        done = _fast.gram_combine_(out, vectors, weights_of)
        if done is not None:
            return PCGradStats(*done)
    shards, n = _validate.flatten_vectors(vectors)
    out_shards = _validate.check_vector(out, "out")
    _validate.check_matches(out_shards, shards[:n], "out", "vectors[0]")
    _validate.check_writable(out_shards, "out")
    _validate.check_not_differentiated(shards, n)
    device = shards[0].device
    name = _backend.resolve(backend, device)
    order = _checked_order(order, len(vectors), device, generator)
    return PCGradStats(*_pcgrad_(out_shards, shards, len(vectors), order, reduction, eps, name))


def _sharded_pcgrad_(out, vectors, reduction, order, generator, eps, backend, group) -> PCGradStats:
    if order is None and generator is None:
        raise ValueError("pcgrad_ on sharded vectors needs order= or a generator seeded alike on every rank")
    local, shard_reduction = distributed.unwrap([out, *vectors], group)
    _validate.check_writable(_validate.check_vector(local[0], "out"), "out")
    gram = _reduced_gram(local[1:], shard_reduction, backend)
    weights = _pcgrad_weights(gram, _checked_order(order, len(vectors), gram.device, generator), reduction, eps)
    combine_(local[0], weights, local[1:], backend=backend)
    return PCGradStats(gram, weights)


def _checked_order(order: Tensor | None, k: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    if order is None:
        return pcgrad_order(k, device=device, generator=generator)
    if not isinstance(order, Tensor) or order.dtype not in (torch.int32, torch.int64):
        raise TypeError("order must be an integer tensor of shape (K, K)")
    if tuple(order.shape) != (k, k):
        raise ValueError(f"order must have shape ({k}, {k}), got {tuple(order.shape)}")
    if order.device.type not in ("cpu", device.type):
        raise ValueError(f"order is on {order.device}, not on {device} where the weights are computed")
    # Checking the values needs them on the host: done for CPU orders only, never a device sync.
    if order.device.type == "cpu" and not torch.equal(order.sort(dim=1).values.long(), torch.arange(k).expand(k, k)):
        raise ValueError("each row of order must be a permutation of 0..K-1")
    return order.to(device=device, dtype=torch.int64)
