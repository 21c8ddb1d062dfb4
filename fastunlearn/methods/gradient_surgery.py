"""Gradient Surgery: ascend the forget loss inside the normal plane of the retain gradient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fastunlearn import _validate
from fastunlearn.methods._base import LossFn, StepStats, UnlearningMethod, pair_stats
from fastunlearn.weighting import DEFAULT_EPS, Projection, SpanComplement, Weighting

PROJECTIONS = ("always", "on_conflict", "never")


class GradientSurgery(UnlearningMethod):
    """Gradient Surgery for one-shot unlearning (Bae, Kim, Jung, Lim, arXiv 2307.04550, 2023).

    Known from the paper: gradient *ascent* on the forget loss, with the forget gradient projected
    onto the normal plane of the retain gradient. The rule itself is inferred (from the abstract and
    PCGrad)::

        u = g_f - c g_r,   c = (g_f . g_r) / (|g_r|^2 + eps),   theta <- theta + lr * u

    so to first order the retain loss does not move (g_r . u = 0) while the forget loss rises by
    ``lr |g_f|^2 (1 - cos^2)``. The optimizer receives the descent direction ``d = -u + retain_weight
    * g_r``. Options the paper leaves open (inferred, documented choices):

    * ``projection``: ``"always"`` (default; as the public reimplementation does), ``"on_conflict"``
      -- only when ascent on the forget loss would raise the retain loss, i.e. ``g_f . g_r > 0`` on
      raw gradients (the opposite sign of PCGrad's descent-descent test), or ``"never"`` (plain
      gradient ascent, for ablations).
    * ``retain_weight``: an added retain-descent term ``- retain_weight * g_r`` in ``u``.
    * ``retain_directions``: split each retain batch into m parts and project ``g_f`` onto the
      complement of span{g_r1..g_rm} through their m x m Gram matrix (as ``project_normal_``: a
      part whose gradient is already in the span of the others, e.g. a repeated batch, adds nothing).

    Each step is two forward/backward passes (forget, retain), one Gram pass over the gradients,
    and one fused optimizer step; nothing is read back to the host.

    >>> import torch, fastunlearn as fu
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    >>> surgery = fu.methods.GradientSurgery(model, lr=0.1)
    >>> stats = surgery.step((x[:4], y[:4]), (x[4:], y[4:]))
    >>> sorted(stats)[:3]
    ['coef', 'cosine', 'dot']
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        projection: str = "always",
        retain_weight: float = 0.0,
        retain_directions: int = 1,
        eps: float = DEFAULT_EPS,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float = 1e-3,
        loss_fn: LossFn | None = None,
        forget_loss_fn: LossFn | None = None,
        backend: str = "auto",
        micro_batches: int = 1,
        max_grad_norm: float | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        if projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {projection!r}; expected one of {PROJECTIONS}")
        if retain_directions < 1:
            raise ValueError(f"retain_directions must be >= 1, got {retain_directions}")
        if retain_directions > 1 and projection != "always":
            raise ValueError("several retain directions are projected out always; use projection='always'")
        kwargs = {} if loss_fn is None else {"loss_fn": loss_fn}
        super().__init__(
            model, optimizer=optimizer, lr=lr, forget_loss_fn=forget_loss_fn,
            backend=backend, micro_batches=micro_batches, max_grad_norm=max_grad_norm,
            grad_scaler=grad_scaler, skip_nonfinite=skip_nonfinite, **kwargs,
        )  # fmt: skip
        self.projection, self.retain_weight = projection, float(retain_weight)
        self.eps = _validate.check_eps(eps)
        self.retain_directions = retain_directions

    @property
    def weighting(self) -> SurgeryWeighting:
        """The step's weighting over ``[g_f, g_r1..g_rm]``."""
        return SurgeryWeighting(self.projection, self.retain_weight, self.retain_directions, self.eps)

    def step(self, forget_batch: Any, retain_batch: Any) -> StepStats:
        forget_loss, g_f = self.gradient("forget", self.forget_loss_fn, forget_batch)
        m = self.retain_directions
        retain_loss, g_rs = self.retain_gradients(retain_batch, m)
        weighting = self.weighting
        gram, _ = self.descend([g_f, *g_rs], weighting)
        with self.phase("vector_algebra"):
            coefs = weighting.coefficients(gram)  # for the stats: a few K x K ops

        # Stats of g_f against the mean retain gradient (the whole batch's, for equal parts).
        pair = torch.zeros(2, m + 1, dtype=gram.dtype, device=gram.device)
        pair[0, 0], pair[1, 1:] = 1.0, 1.0 / m
        stats = pair_stats(pair @ gram @ pair.mT, forget_loss, retain_loss)
        # g_r . u with u = g_f - sum_j coef_j g_rj: ~0 after an "always" projection.
        stats["retain_dot_update"] = pair[1] @ gram @ torch.cat([torch.ones_like(coefs[:1]), -coefs])
        if m == 1:
            stats["coef"] = coefs[0]
        else:
            stats["coefs"] = coefs
        return stats


@dataclass(frozen=True)
class SurgeryWeighting(Weighting):
    """Gradient Surgery's weights over ``[g_f, g_r1..g_rm]``: the descent direction
    ``d = -(g_f - sum_j c_j g_rj) + (retain_weight / m) sum_j g_rj``, with the c_j of ``projection``
    (see :class:`GradientSurgery`). Usable outside the method, e.g. with ``fu.aggregate_``."""

    projection: str = "always"
    retain_weight: float = 0.0
    directions: int = 1
    eps: float = DEFAULT_EPS

    def coefficients(self, gram: Tensor) -> Tensor:
        """The c_j: g_f's components along the retain directions that the projection removes."""
        if self.directions > 1:
            return -SpanComplement(self.eps)(gram)[1:]
        if self.projection == "never":
            return torch.zeros(1, dtype=gram.dtype, device=gram.device)
        mode = "always" if self.projection == "always" else "ascent_conflict"
        return -Projection(mode, self.eps)(gram)[1:]

    def __call__(self, gram: Tensor) -> Tensor:
        coefs = self.coefficients(gram)
        return torch.cat([-torch.ones_like(coefs[:1]), coefs + self.retain_weight / self.directions])
