"""∇τ: adaptive gradient ascent on the forget loss that switches itself off at a target loss τ."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fastunlearn import _validate, optim
from fastunlearn.methods._base import History, LossFn, StepStats, UnlearningMethod, batch_size, evaluating, pair_stats
from fastunlearn.weighting import DEFAULT_EPS, Projection, Weighting

PROJECTIONS = ("none", "always", "on_conflict")


def nabla_tau_epochs(retain_batches: int, forget_batches: int) -> int:
    """The authors' epoch count ``int(retain_batches / (2 * forget_batches) * 6)`` (about three
    passes over the retain set when each step draws one forget and one retain batch), at least 1.

    >>> nabla_tau_epochs(97, 3)
    97
    """
    if retain_batches < 1 or forget_batches < 1:
        raise ValueError("both loaders need at least one batch")
    return max(1, int(retain_batches / (2 * forget_batches) * 6))


def alpha_schedule(alpha0: float, epoch: int, epochs: int) -> float:
    """α for ``epoch`` (0-based): decayed linearly from ``alpha0`` towards 0 over ``epochs`` (0 past
    them).

    Inferred: the paper states a linear decay to 0 over the run; the per-epoch granularity is ours.

    >>> [alpha_schedule(0.5, e, 4) for e in range(5)]
    [0.5, 0.375, 0.25, 0.125, 0.0]
    """
    return alpha0 * max(0.0, 1.0 - epoch / epochs)


class NablaTau(UnlearningMethod):
    """∇τ (Trippa, Campagnano, Bucarelli, Tolomei, Silvestri, arXiv 2403.14339, 2024).

    Loss per step (known, from the authors' code)::

        L = α · ReLU(τ − L̄_f)² + (1 − α) · L̄_r

    whose gradient ``(1 − α) g_r − 2α (τ − L̄_f)₊ g_f`` ascends the forget loss only while it is
    below τ. Here g_f and g_r are kept apart and the update is one fused step with the device-side
    weights ``[−2α(τ − L̄_f)₊, 1 − α]``; that is the same gradient as one backward of L, and it also
    allows projecting g_f onto the normal plane of g_r first (``projection``: a Gradient Surgery
    hybrid the papers do not have; ``"on_conflict"`` projects when ``g_f · g_r > 0``).

    * τ: mean loss on ``val_loader``, recomputed every ``tau_refresh_every`` epochs (known: 5).
    * α₀ = 5/3 × ``forget_fraction`` (3 % → 0.05, 15 % → 0.25, 30 % → 0.5), or ``alpha0`` directly,
      decayed linearly to 0 over the epochs (:func:`alpha_schedule`).
    * ``two_sided=True``: the paper's text variant, ``α (τ − L̄_f)²`` without the ReLU (use it with
      ``alpha0=0.5``).
    * Optimizer (known): AdamW, lr 1e-3 (the text says 3e-4), LinearLR from 1.0 to 0.1 over the
      epochs; batch size 256 for both loaders. ``weight_decay`` is not stated: torch's 0.01.
    * Epochs (known): :func:`nabla_tau_epochs`; the retain iterator restarts so it never runs out.

    One Gram pass per step gives the logged dot/cosine of g_f and g_r (and the projection).

    >>> import torch, fastunlearn as fu
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    >>> nabla_tau = fu.methods.NablaTau(model, [(x[8:], y[8:])], alpha0=0.5, lr=0.1)
    >>> stats = nabla_tau.step((x[:4], y[:4]), (x[4:8], y[4:8]))  # the first step computes tau
    >>> round(stats["tau"].item(), 2)
    1.15
    >>> stats["forget_loss"] < stats["tau"], stats["forget_weight"] < 0  # below tau: ascend g_f
    (tensor(True), tensor(True))
    >>> stats["retain_weight"].item()  # 1 - alpha
    0.5
    """

    def __init__(
        self,
        model: nn.Module,
        val_loader: Iterable,
        *,
        forget_fraction: float | None = None,
        alpha0: float | None = None,
        two_sided: bool = False,
        tau_refresh_every: int = 5,
        projection: str = "none",
        eps: float = DEFAULT_EPS,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        lr_end_factor: float = 0.1,
        loss_fn: LossFn | None = None,
        forget_loss_fn: LossFn | None = None,
        backend: str = "auto",
        micro_batches: int = 1,
        max_grad_norm: float | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        if (forget_fraction is None) == (alpha0 is None):
            raise ValueError("give exactly one of forget_fraction (alpha0 = 5/3 * fraction) or alpha0")
        if alpha0 is None:
            if not 0.0 < forget_fraction < 1.0:
                raise ValueError(f"forget_fraction must be in (0, 1), got {forget_fraction}")
            alpha0 = 5.0 / 3.0 * forget_fraction
        if not 0.0 < alpha0 <= 1.0:
            raise ValueError(f"alpha0 must be in (0, 1], got {alpha0}")
        if projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {projection!r}; expected one of {PROJECTIONS}")
        if tau_refresh_every < 1:
            raise ValueError("tau_refresh_every must be >= 1")
        self.weight_decay = weight_decay
        kwargs = {} if loss_fn is None else {"loss_fn": loss_fn}
        super().__init__(
            model, optimizer=optimizer, lr=lr, forget_loss_fn=forget_loss_fn,
            backend=backend, micro_batches=micro_batches, max_grad_norm=max_grad_norm,
            grad_scaler=grad_scaler, skip_nonfinite=skip_nonfinite, **kwargs,
        )  # fmt: skip
        self.val_loader = val_loader
        self.alpha0 = self.alpha = float(alpha0)
        self.two_sided, self.tau_refresh_every = two_sided, tau_refresh_every
        self.projection, self.lr_end_factor = projection, lr_end_factor
        self.eps = _validate.check_eps(eps)
        self.tau: Tensor | None = None
        self.epochs: int | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def default_optimizer(self, lr: float) -> torch.optim.Optimizer:
        return optim.AdamW(self.params, lr=lr, weight_decay=self.weight_decay, backend=self.backend)

    @torch.no_grad()
    def refresh_tau(self) -> Tensor:
        """τ = the mean per-sample loss over the validation loader (eval mode), kept on the device."""
        # Timed (and its host reads counted) as a forward pass of the model, which it is.
        with evaluating(self.model), self.phase("forward_retain"):
            total, count = self._validation_loss()
        if total is None:
            raise ValueError("the validation loader yielded no batches")
        self.tau = total / count
        return self.tau

    def _validation_loss(self) -> tuple[Tensor | None, int]:
        """Sum of per-sample losses over the validation loader, and the number of samples."""
        total, count = None, 0
        for batch in self.val_loader:
            size = batch_size(batch)
            loss = self.loss_fn(self.model, batch).detach() * size
            total = loss if total is None else total + loss
            count += size
        return total, count

    def step(self, forget_batch: Any, retain_batch: Any) -> StepStats:
        if self.tau is None:
            self.refresh_tau()
        forget_loss, g_f = self.gradient("forget", self.forget_loss_fn, forget_batch)
        retain_loss, g_r = self.gradient("retain", self.loss_fn, retain_batch)
        gap = (self.tau - forget_loss).to(torch.float64)
        forget_weight = -2.0 * self.alpha * (gap if self.two_sided else gap.clamp_min(0.0))
        retain_weight = torch.full_like(forget_weight, 1.0 - self.alpha)
        weighting = NablaTauWeighting(forget_weight, retain_weight, self.projection, self.eps)
        gram, _ = self.descend([g_f, g_r], weighting)
        with self.phase("vector_algebra"):
            coef = weighting.coefficient(gram)  # for the stats
        stats = pair_stats(gram, forget_loss, retain_loss)
        stats.update(
            tau=self.tau.detach(), alpha=torch.full_like(forget_weight, self.alpha), forget_weight=forget_weight,
            retain_weight=retain_weight, coef=coef,
        )  # fmt: skip
        return stats

    def run(
        self,
        forget_loader: Iterable,
        retain_loader: Iterable | None = None,
        *,
        epochs: int | None = None,
        steps: int | None = None,
        progress: bool = False,
        log_every: int = 10,
    ) -> History:
        """The authors' schedule: ``epochs`` defaults to :func:`nabla_tau_epochs`; α decays and τ is
        refreshed per epoch; the optimizer gets a LinearLR(1.0 → ``lr_end_factor``) over this run."""
        if retain_loader is None:
            raise ValueError("NablaTau needs a retain loader")
        self.epochs = epochs or nabla_tau_epochs(len(retain_loader), len(forget_loader))
        self.scheduler = torch.optim.lr_scheduler.LinearLR(
            self.optimizer, start_factor=1.0, end_factor=self.lr_end_factor, total_iters=self.epochs
        )
        return super().run(
            forget_loader, retain_loader, epochs=self.epochs, steps=steps, progress=progress, log_every=log_every
        )

    def on_epoch_start(self, epoch: int) -> None:
        self.alpha = alpha_schedule(self.alpha0, epoch, self.epochs or 1)
        if epoch % self.tau_refresh_every == 0:
            self.refresh_tau()

    def on_epoch_end(self, epoch: int) -> None:
        if self.scheduler is not None:
            self.scheduler.step()


@dataclass(frozen=True, eq=False)
class NablaTauWeighting(Weighting):
    """∇τ's weights over ``[g_f, g_r]``: ``d = w_f (g_f - c g_r) + w_r g_r``, with the step's
    ``forget_weight`` w_f and ``retain_weight`` w_r (0-d tensors: w_f follows the forget loss's gap
    to τ) and ``c`` removing g_f's component along g_r as ``projection`` says (see :class:`NablaTau`)."""

    forget_weight: Tensor
    retain_weight: Tensor
    projection: str = "none"
    eps: float = DEFAULT_EPS

    def coefficient(self, gram: Tensor) -> Tensor:
        if self.projection == "none":
            return torch.zeros((), dtype=gram.dtype, device=gram.device)
        mode = "always" if self.projection == "always" else "ascent_conflict"
        return -Projection(mode, self.eps)(gram)[1]

    def __call__(self, gram: Tensor) -> Tensor:
        w_f, w_r = self.forget_weight.to(gram.dtype), self.retain_weight.to(gram.dtype)
        return torch.stack([w_f, w_r - w_f * self.coefficient(gram)])
