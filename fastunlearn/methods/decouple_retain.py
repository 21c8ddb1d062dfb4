"""Decoupling + knowledge retention: bounded, clipped gradient ascent until the forget outputs have
moved far enough, then fine-tuning on the retain set."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fastunlearn import optim
from fastunlearn.distributed import is_dtensor
from fastunlearn.methods._base import (
    History,
    LossFn,
    MicroBatches,
    StepStats,
    UnlearningMethod,
    _Progress,
    cycle,
    evaluating,
    model_outputs,
)
from fastunlearn.weighting import Projection

OutputFn = Callable[[nn.Module, Any], Tensor]


def model_output(model: nn.Module, batch: Any) -> Tensor:
    """The default output for the distance test: ``model(batch[0])`` (or ``model(batch)``); for a
    dict batch, the ``logits`` of ``model(**batch)``."""
    if isinstance(batch, Mapping):
        logits = model_outputs(model, batch, "logits")
        if logits is None:
            raise ValueError("the model returned no logits for a dict batch; pass output_fn=(model, batch) -> tensor")
        return logits
    return model(batch if isinstance(batch, Tensor) else batch[0])


#: Phase 2: plain fine-tuning on the retain set, or projected so that it does not relearn the forget set.
RETENTIONS = ("plain", "projected")


class DecoupleRetain(UnlearningMethod):
    """Decoupling and knowledge retention (Varshney & Torra, arXiv 2502.04260, 2025; no code published).

    Known: phase 1 ascends the loss on the forget samples until the model's outputs on (corrupted)
    forget inputs differ from the original model's by at least ``threshold`` (λ), for at most
    ``max_steps`` (T) steps; phase 2 fine-tunes on the retain samples. The paper states an
    (ε, δ)-unlearning guarantee for its gradient-ascent updates.

    Inferred, as documented options: every phase-1 step clips the forget gradient to norm
    ``clip_norm`` (C; the same coefficient as ``torch.nn.utils.clip_grad_norm_``), optionally adds
    Gaussian noise of std ``noise_multiplier * clip_norm`` (σC) per element, and moves by plain SGD
    with ``lr`` (η)::

        theta <- theta + η (min(1, C / (|g_f| + 1e-6)) g_f + σ C ξ),   ξ ~ N(0, I)

    fastunlearn does not turn these into an (ε, δ) figure -- no formula is stated where it could be
    cited -- and reports the knobs such a statement depends on: :meth:`guarantee_knobs`.

    The distance test caches the original outputs on the forget inputs once (:meth:`cache_reference`)
    and measures ``mean_x |h_theta0(x) - h_theta(x)|_2`` (per sample, outputs flattened). ``corrupt``
    maps a forget batch to its corrupted version before both are evaluated. Phase 2 uses
    ``retain_optimizer`` (default SGD, momentum 0.9, lr ``retain_lr``); ``max_grad_norm`` clips
    phase 2 only, phase 1 being bounded by ``clip_norm``.

    ``retention="projected"`` (an option of fastunlearn's, not the paper's): fine-tuning on the
    retain set can relearn the forget samples -- phase 1 moved the weights only a little away from
    a minimum that memorised them. Each phase-2 step then also takes the gradient of the task loss
    (``loss_fn``) on a forget batch and removes from the retain gradient its component along it
    where the two agree (``g_r . g_f > 0``: descending the retain loss would descend the forget
    loss too), the projection of :class:`fastunlearn.Projection` ``("ascent_conflict")``, before
    the retain optimizer sees it. With plain SGD the step is then orthogonal to ``g_f`` and, to
    first order, does not lower the forget loss; momentum and Adam transform the projected
    gradients (their state mixes steps, Adam rescales coordinates), so there it is a measured
    effect, not a bound (the demos: README).

    >>> import torch, fastunlearn as fu
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(4, 3)
    >>> data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)))
    >>> loader = lambda idx: torch.utils.data.DataLoader(torch.utils.data.Subset(data, idx), batch_size=4)
    >>> method = fu.methods.DecoupleRetain(model, threshold=1.0, max_steps=50, lr=0.5)
    >>> history = method.run(loader(range(4)), loader(range(4, 16)))
    >>> method.reached_threshold, method.steps_taken  # phase 1 stopped once the outputs moved by 1.0
    (True, 2)
    >>> history["phase"].tolist()  # 2 ascent steps, then one epoch of 3 retain batches
    [1.0, 1.0, 2.0, 2.0, 2.0]
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        threshold: float,
        max_steps: int = 100,
        clip_norm: float = 1.0,
        noise_multiplier: float = 0.0,
        lr: float = 1e-2,
        retain_optimizer: torch.optim.Optimizer | None = None,
        retain_lr: float = 1e-2,
        retention: str = "plain",
        output_fn: OutputFn = model_output,
        corrupt: Callable[[Any], Any] | None = None,
        generator: torch.Generator | None = None,
        loss_fn: LossFn | None = None,
        forget_loss_fn: LossFn | None = None,
        backend: str = "auto",
        micro_batches: int = 1,
        max_grad_norm: float | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if max_steps < 1 or not clip_norm > 0 or noise_multiplier < 0 or not lr > 0:
            raise ValueError("need max_steps >= 1, clip_norm > 0, noise_multiplier >= 0 and lr > 0")
        if retention not in RETENTIONS:
            raise ValueError(f"retention must be one of {RETENTIONS}, got {retention!r}")
        kwargs = {} if loss_fn is None else {"loss_fn": loss_fn}
        if isinstance(retain_optimizer, optim.FusedOptimizer):
            # Both phases step on the same vectors: phase 1's SGD takes the retain optimizer's order.
            kwargs["optimizer"] = optim.SGD(retain_optimizer.params, lr=lr, backend=backend)
        super().__init__(
            model, lr=lr, forget_loss_fn=forget_loss_fn,
            backend=backend, micro_batches=micro_batches, max_grad_norm=max_grad_norm,
            grad_scaler=grad_scaler, skip_nonfinite=skip_nonfinite, **kwargs,
        )  # fmt: skip
        self.threshold, self.max_steps, self.clip_norm = float(threshold), max_steps, float(clip_norm)
        self.noise_multiplier, self.lr = float(noise_multiplier), float(lr)
        self.retain_optimizer = retain_optimizer or optim.SGD(self.params, lr=retain_lr, momentum=0.9, backend=backend)
        self.output_fn, self.corrupt, self.generator = output_fn, corrupt, generator
        self.retention = retention
        self.reference: list[tuple[Any, Tensor]] | None = None
        self.steps_taken = 0
        self.reached_threshold = False

    @torch.no_grad()
    def cache_reference(self, forget_loader: Iterable) -> None:
        """Keeps the (corrupted) forget inputs and the current model's outputs on them."""
        self.reference = []
        with evaluating(self.model):
            for batch in forget_loader:
                batch = self.corrupt(batch) if self.corrupt is not None else batch
                self.reference.append((batch, self.output_fn(self.model, batch).detach()))
        if not self.reference:
            raise ValueError("the forget loader yielded no batches")

    @torch.no_grad()
    def output_distance(self) -> Tensor:
        """Mean per-sample L2 distance of the outputs from the cached original ones (0-d, device)."""
        if self.reference is None:
            raise RuntimeError("call cache_reference(forget_loader) first (run() does it)")
        total, count = None, 0
        with evaluating(self.model):
            for batch, original in self.reference:
                diff = (self.output_fn(self.model, batch) - original).flatten(1).float()
                dist = diff.norm(dim=1).sum()
                total = dist if total is None else total + dist
                count += diff.shape[0]
        return total / count

    def step(self, forget_batch: Any, retain_batch: Any = None) -> StepStats:
        """One phase-1 step (``retain_batch`` is ignored): clipped, optionally noisy, ascent."""
        forget_loss, g_f = self.gradient("forget", self.forget_loss_fn, forget_batch)
        gram = self.gram([g_f])  # of the unscaled gradient, under a grad_scaler too
        norm = gram[0, 0].clamp_min(0.0).sqrt()
        scale = (self.clip_norm / (norm + 1e-6)).clamp(max=1.0)
        # Phase 1 is bounded by clip_norm (the paper's C); max_grad_norm applies to phase 2.
        if self.noise_multiplier > 0:
            # The noise joins the gradient at the step's loss scale, so that one unscale fits both.
            loss_scale = self.scaling.current(torch.ones((), device=g_f[0].device))
            noise = [self._noise_like(g).mul_(loss_scale.to(g.dtype)) for g in g_f]
            sigma = torch.full_like(scale, self.noise_multiplier * self.clip_norm)
            self.apply(torch.stack([-scale, sigma]), [g_f, noise], clip=False)
        else:
            self.apply(-scale.reshape(1), [g_f], gram, clip=False)
        self.steps_taken += 1
        return {"forget_loss": forget_loss, "grad_norm": norm, "clip_scale": scale, "clipped_norm": scale * norm}

    def _noise_like(self, g: Tensor) -> Tensor:
        # DTensor gradients (FSDP2) draw sharded noise from DTensor's own generator state.
        if is_dtensor(g):
            return torch.randn_like(g)
        return torch.randn(g.shape, dtype=g.dtype, device=g.device, generator=self.generator)

    def train_step(self, forget_batch: Any, retain_batch: Any) -> StepStats:
        """For an outside loop: phase-1 steps until the output distance reaches ``threshold`` or
        ``max_steps`` (read back after every step), then phase-2 steps. Without a cached reference,
        the first forget batch is the one the distance is measured on."""
        if self.reference is None:
            self.cache_reference(list(forget_batch) if isinstance(forget_batch, MicroBatches) else [forget_batch])
        if self.reached_threshold or self.steps_taken >= self.max_steps:
            stats = self.retain_step(retain_batch, forget_batch)
            stats["phase"] = torch.full_like(stats["retain_loss"], 2.0)
            return stats
        stats = self.step(forget_batch)
        stats["phase"] = torch.ones_like(stats["forget_loss"])
        stats["output_distance"] = self.output_distance()
        self.reached_threshold = float(stats["output_distance"]) >= self.threshold
        return stats

    def retain_step(self, retain_batch: Any, forget_batch: Any = None) -> StepStats:
        """One phase-2 step: descent on the retain loss with ``retain_optimizer``; with
        ``retention="projected"``, projected off the forget batch's gradient where they agree."""
        retain_loss, g_r = self.gradient("retain", self.loss_fn, retain_batch)
        stats: StepStats = {"retain_loss": retain_loss}
        g_f = None
        if self.retention == "projected":
            if forget_batch is None:
                raise ValueError('retention="projected" needs a forget batch for every retain step')
            # The task loss on the forget batch (phase 1's forget_loss is forget_loss_fn's).
            stats["forget_task_loss"], g_f = self.gradient("forget", self.loss_fn, forget_batch)
        optimizer, self.optimizer = self.optimizer, self.retain_optimizer
        try:
            if g_f is not None:
                _, weights = self.descend([g_r, g_f], Projection("ascent_conflict"))
                stats["coef"] = -weights[1]
            else:
                self.apply(torch.ones(1, dtype=torch.float64, device=g_r[0].device), [g_r])
        finally:
            self.optimizer = optimizer
        return stats

    def run(
        self,
        forget_loader: Iterable,
        retain_loader: Iterable | None = None,
        *,
        retain_epochs: int = 1,
        check_every: int = 1,
        progress: bool = False,
        log_every: int = 10,
    ) -> History:
        """Phase 1 until the output distance reaches ``threshold`` or ``max_steps``, then
        ``retain_epochs`` passes of phase 2. The distance is read back every ``check_every`` steps
        (that decision needs the host); the stats of both phases are returned, with ``phase``."""
        if self.reference is None:
            self.cache_reference(forget_loader)
        records: list[StepStats] = []
        forget_batches = cycle(forget_loader)
        with _Progress("DecoupleRetain: decouple", self.max_steps, progress, log_every) as bar:
            for t in range(self.max_steps):
                stats = self.step(next(forget_batches))
                stats["phase"] = torch.ones_like(stats["forget_loss"])
                records.append(stats)
                bar.advance(stats)
                if (t + 1) % check_every == 0 or t + 1 == self.max_steps:
                    distance = self.output_distance()
                    stats["output_distance"] = distance
                    if float(distance) >= self.threshold:
                        self.reached_threshold = True
                        break
        if retain_loader is not None and retain_epochs > 0:
            total = retain_epochs * len(retain_loader)
            with _Progress("DecoupleRetain: retain", total, progress, log_every) as bar:
                for _ in range(retain_epochs):
                    for batch in retain_loader:
                        forget_batch = next(forget_batches) if self.retention == "projected" else None
                        stats = self.retain_step(batch, forget_batch)
                        stats["phase"] = torch.full_like(stats["retain_loss"], 2.0)
                        records.append(stats)
                        bar.advance(stats)
        return History(records)

    def guarantee_knobs(self) -> dict[str, float]:
        """The quantities an (ε, δ) statement for phase 1 depends on, as configured and as run."""
        return {
            "clip_norm": self.clip_norm,
            "max_steps": self.max_steps,
            "steps_taken": self.steps_taken,
            "noise_multiplier": self.noise_multiplier,
            "noise_std": self.noise_multiplier * self.clip_norm,
            "lr": self.lr,
        }
