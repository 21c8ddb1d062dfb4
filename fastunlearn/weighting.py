"""Weightings: the K x K scalar stage between the Gram pass and the combine pass.

Every op that writes a gradient is ``out = sum_k w_k g_k`` with ``w = weighting(G)`` and ``G`` the
Gram matrix of the K vectors (as in torchjd's aggregators). A weighting is a small typed object
whose ``__call__`` maps the Gram to the weights with device tensor math only (no host sync), so it
is differentiable and runs on any device. The built-in ones also carry a ``native`` name: the
engine (``fastunlearn.aggregate_``) then runs their scalar stage in C++ inside the op on CPU. A new
weighting is a subclass with ``__call__``; no kernel changes.

>>> import torch, fastunlearn as fu
>>> G = torch.tensor([[1.0, -1.0], [-1.0, 4.0]], dtype=torch.float64)
>>> fu.Projection("always")(G)  # g - (g.r / |r|^2) r
tensor([1.0000, 0.2500], dtype=torch.float64)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_EPS = 1e-20
MODES = ("always", "conflict", "ascent_conflict")
REDUCTIONS = ("sum", "mean")


class Weighting(abc.ABC):
    """Maps a K x K Gram matrix to K combine weights, on the Gram's device and in its dtype."""

    #: The name of the engine's C++ scalar stage for this weighting, or None (then ``__call__`` runs).
    native: str | None = None
    eps: float = DEFAULT_EPS

    @abc.abstractmethod
    def __call__(self, gram: Tensor) -> Tensor: ...

    def native_order(self) -> Tensor | None:
        """The integer tensor the native stage needs besides the Gram (PCGrad's order), if any."""
        return None


@dataclass(frozen=True)
class Projection(Weighting):
    """``g - c r`` over the vectors ``[g, r]``, ``c = (g.r) / (|r|^2 + eps)``, applied according to
    ``mode``: ``"always"``; ``"conflict"`` only where ``g.r < 0`` (PCGrad's convention: both are
    descent directions); ``"ascent_conflict"`` only where ``g.r > 0`` (``g`` ascended, ``r``
    descended). A NaN dot product projects, so the NaN shows in the result."""

    mode: str = "always"
    eps: float = DEFAULT_EPS

    @property
    def native(self) -> str:  # type: ignore[override]
        return self.mode

    def __call__(self, gram: Tensor) -> Tensor:
        if tuple(gram.shape) != (2, 2):
            raise ValueError(
                f"a projection weighting takes two vectors [g, r], got a Gram of shape {tuple(gram.shape)}"
            )
        dot, r_sq = gram[0, 1], gram[1, 1]
        coef = dot / (r_sq + self.eps)
        if self.mode != "always":
            conflict = dot < 0 if self.mode == "conflict" else dot > 0
            coef = torch.where(conflict | dot.isnan(), coef, torch.zeros_like(coef))
        return torch.stack([torch.ones_like(coef), -coef])


def dependence_tolerance(dtype: torch.dtype) -> float:
    """Fraction of a direction's squared norm below which its part outside the span is rounding."""
    return 1000 * torch.finfo(dtype).eps


@dataclass(frozen=True)
class SpanComplement(Weighting):
    """``g`` minus its component in the span of ``[r_1..r_m]``, over the vectors ``[g, r_1..r_m]``.

    Gram-Schmidt in Gram space: row j of ``basis`` holds the coefficients over R of u_j, r_j's part
    orthogonal to the earlier kept directions, so the u_j are exactly orthogonal and removing
    ``sum_j (g.u_j) / (|u_j|^2 + eps) u_j`` never overshoots (``eps`` only damps tiny directions). A
    direction whose orthogonal part keeps no more than ``dependence_tolerance`` of its squared norm
    lies in the span already (repeated, scaled, zero) and gets coefficient 0, where the normal
    equations would be singular. The choice is a ``torch.where``; nothing is written in place."""

    eps: float = DEFAULT_EPS
    native = "span"

    def __call__(self, gram: Tensor) -> Tensor:
        m = gram.shape[0] - 1
        if m < 1:
            raise ValueError("the span-complement weighting takes g and at least one direction")
        directions, along = gram[1:, 1:], gram[1:, 0]
        tolerance = dependence_tolerance(gram.dtype)
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
        alpha = basis.mT @ (basis @ along / (norms + self.eps))
        return torch.cat([torch.ones_like(alpha[:1]), -alpha])


@dataclass(frozen=True, eq=False)
class PCGrad(Weighting):
    """PCGrad's merged gradient (Yu et al., 2020), exact in Gram space.

    Row i of A holds g_i^PC = sum_k A[i, k] g_k, so g_i^PC . g_j = (A G)[i, j]. Step t projects every
    g_i^PC against its t-th partner ``order[i, t]`` at once (original partners, as in the reference
    implementation), only where their dot product is negative (or NaN, so that a NaN shows); the
    projected gradients are summed or averaged (``reduction``). ``order`` is a (K, K) integer tensor
    whose rows are permutations (see ``fastunlearn.pcgrad_order``)."""

    order: Tensor
    reduction: str = "mean"
    eps: float = DEFAULT_EPS

    @property
    def native(self) -> str:  # type: ignore[override]
        return f"pcgrad_{self.reduction}"

    def native_order(self) -> Tensor:
        return self.order

    def __call__(self, gram: Tensor) -> Tensor:
        k = gram.shape[0]
        order = self.order.to(device=gram.device, dtype=torch.int64)
        rows = torch.arange(k, device=gram.device)
        coeffs = torch.eye(k, dtype=gram.dtype, device=gram.device)
        sq_norms = gram.diagonal()
        for t in range(k):
            partner = order[:, t]
            dots = (coeffs @ gram)[rows, partner]
            project = (dots < 0) | dots.isnan()
            step = torch.where(project, dots / (sq_norms[partner] + self.eps), torch.zeros_like(dots))
            coeffs = coeffs.index_put((rows, partner), coeffs[rows, partner] - step)
        return coeffs.sum(0) if self.reduction == "sum" else coeffs.mean(0)


@dataclass(frozen=True)
class Fixed(Weighting):
    """Constant weights, whatever the Gram (gradient difference: ``(-forget_weight, retain_weight)``)."""

    weights: tuple[float, ...]

    def __call__(self, gram: Tensor) -> Tensor:
        if gram.shape[0] != len(self.weights):
            raise ValueError(f"{len(self.weights)} fixed weights for a Gram of {gram.shape[0]} vectors")
        return torch.tensor(self.weights, dtype=gram.dtype, device=gram.device)


@dataclass(frozen=True)
class Signed(Weighting):
    """``inner`` over the vectors ``s_k g_k``, as weights of the ``g_k``: ``w = s * inner(S G S)``.
    A task that ascends its loss (the forget task) descends along ``-g_f``: ``s = -1``."""

    inner: Weighting
    signs: tuple[float, ...]

    def __call__(self, gram: Tensor) -> Tensor:
        signs = torch.tensor(self.signs, dtype=gram.dtype, device=gram.device)
        return self.inner(signs[:, None] * gram * signs) * signs


def native_weights(name: str, gram: Tensor, eps: float, order: Tensor | None) -> Tensor:
    """The engine's scalar stage on devices without its C++ version: the definitions above."""
    if name in MODES:
        return Projection(name, eps)(gram)
    if name == "span":
        return SpanComplement(eps)(gram)
    return PCGrad(order, name.removeprefix("pcgrad_"), eps)(gram)
