"""GRU as OpenUnlearning runs it: the forget objective's gradient, projected off a running average of
the retain gradient only where the two conflict."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fastunlearn import _validate, ops
from fastunlearn.methods._base import StepStats, UnlearningMethod, pair_stats
from fastunlearn.weighting import DEFAULT_EPS, Projection, Signed

FORGET_OBJECTIVES = ("ascent", "descent")


class FastGRU(UnlearningMethod):
    """GRU (gradient rectification for unlearning), with OpenUnlearning's semantics
    (``trainer/unlearn/gru.py``) on the fused ops instead of flattened copies on the host.

    Per step, with ``o`` the gradient of the forget objective (``-g_f`` for ``forget_objective=
    "ascent"``, OpenUnlearning's ``GradAscent``; ``+g_f`` for ``"descent"``, a forget loss that is
    minimised, such as NPO) and ``r`` a running average of the retain gradient::

        r <- gamma * g_r + (1 - gamma) * r          (r starts at 0, as in OpenUnlearning)
        d = o - (o.r / |r|^2) r   if o.r < 0,  else  d = o

    and the optimizer descends along ``d``; the retain gradient steers the direction but is not
    added to it. The stats ``dot``, ``cosine`` and ``retain_grad_norm`` are of ``g_f`` against
    ``r``; ``coef`` is the projection's coefficient (0 where nothing conflicted), ``projected`` 1 or
    0. One Gram pass gives ``o.r`` and ``|r|^2`` (and the logged cosine); the average is kept as one
    more gradient-sized buffer on the device, updated in place by ``combine_``; nothing is read back.
    A skipped step (non-finite, see ``grad_scaler``) leaves the average unchanged.

    >>> import torch, fastunlearn as fu
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    >>> gru = fu.methods.FastGRU(model, gamma=0.8, lr=0.1)
    >>> stats = gru.step((x[:4], y[:4]), (x[4:], y[4:]))
    >>> sorted(stats)[:4]
    ['coef', 'cosine', 'dot', 'forget_grad_norm']
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        gamma: float = 0.8,
        forget_objective: str = "ascent",
        eps: float = DEFAULT_EPS,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: the options every method takes (:class:`UnlearningMethod`)."""
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if forget_objective not in FORGET_OBJECTIVES:
            raise ValueError(f"unknown forget_objective {forget_objective!r}; expected one of {FORGET_OBJECTIVES}")
        super().__init__(model, **kwargs)
        self.gamma = float(gamma)
        self.sign = -1.0 if forget_objective == "ascent" else 1.0
        self.eps = _validate.check_eps(eps)
        #: The running average of the retain gradient (None before the first step), at the loss
        #: scale ``_average_scale`` of the step that wrote it.
        self.retain_average: list[Tensor] | None = None
        self._average_scale: Tensor | None = None

    def step(self, forget_batch: Any, retain_batch: Any) -> StepStats:
        forget_loss, g_f = self.gradient("forget", self.forget_loss_fn, forget_batch)
        retain_loss, g_r = self.gradient("retain", self.loss_fn, retain_batch)
        with self.phase("vector_algebra"):
            # The new average is written over this step's retain gradient, which nothing else reads.
            # It is kept at the loss scale of its step (1 without a grad_scaler) and brought to
            # this step's scale, so that every vector of the step has one scale.
            device = g_r[0].device
            average, scale = g_r, self.scaling.current(torch.ones((), dtype=torch.float64, device=device))
            if self.retain_average is None:
                first = torch.full((1,), self.gamma, dtype=torch.float64, device=device)
                ops.combine_(average, first, [g_r], backend=self.backend)
            else:
                decay = (1.0 - self.gamma) * scale / self._average_scale
                mix = torch.stack([torch.full_like(scale, self.gamma), decay])
                ops.combine_(average, mix, [g_r, self.retain_average], backend=self.backend)
        skipped = self.skipped_steps
        # The forget task's direction is sign * g_f: projected off the average where they conflict.
        gram, weights = self.descend([g_f, average], Signed(Projection("conflict", self.eps), (self.sign, 1.0)))
        coef = -weights[1]
        if self.skipped_steps == skipped:
            self.retain_average, self._average_scale = average, scale
        stats = pair_stats(gram, forget_loss, retain_loss)
        stats.update(coef=coef, projected=(coef != 0).to(coef.dtype))
        return stats
