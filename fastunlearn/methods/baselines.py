"""The baselines every unlearning comparison needs, on the same machinery as the methods.

Each baseline is used like the other methods: build it on a model, call ``step(forget_batch,
retain_batch)`` in your own loop (or ``run(forget_loader, retain_loader)``), read the stats.

>>> import torch, fastunlearn as fu
>>> from fastunlearn.methods import Finetune, GradientAscent, GradientDifference, PCGradUnlearn, RandomLabel
>>> _ = torch.manual_seed(0)
>>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
>>> forget, retain = (x[:8], y[:8]), (x[8:], y[8:])
>>> ascent = GradientAscent(torch.nn.Linear(4, 3), lr=0.5)
>>> first = ascent.step(forget)["forget_loss"]
>>> ascent.step(forget)["forget_loss"] > first  # the forget loss goes up
tensor(True)
>>> for method in [
...     GradientDifference(torch.nn.Linear(4, 3), forget_weight=0.5),
...     Finetune(torch.nn.Linear(4, 3)),
...     RandomLabel(torch.nn.Linear(4, 3), num_classes=3),
...     PCGradUnlearn(torch.nn.Linear(4, 3), retain_tasks=2),
... ]:
...     stats = method.step(forget, retain)  # device tensors: losses, and g_f/g_r geometry where both are used
...     print(type(method).__name__, [name for name in sorted(stats) if name.endswith("loss")])
GradientDifference ['forget_loss', 'retain_loss']
Finetune ['retain_loss']
RandomLabel ['relabelled_forget_loss', 'retain_loss']
PCGradUnlearn ['forget_loss', 'retain_loss']
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from fastunlearn import _validate, optim
from fastunlearn.methods._base import LossFn, StepStats, UnlearningMethod, pair_stats
from fastunlearn.ops import DEFAULT_EPS, pcgrad_order
from fastunlearn.weighting import Fixed, PCGrad, Signed


class GradientAscent(UnlearningMethod):
    """Gradient ascent on the forget loss (NegGrad; e.g. Golatkar et al. 2020): ``d = -g_f``.

    The retain batch is ignored.
    """

    def step(self, forget_batch: Any, retain_batch: Any = None) -> StepStats:
        forget_loss, g_f = self.gradient("forget", self.forget_loss_fn, forget_batch)
        self.apply(-torch.ones(1, dtype=torch.float64, device=g_f[0].device), [g_f])
        return {"forget_loss": forget_loss}


class GradientDifference(UnlearningMethod):
    """Gradient difference / NegGrad+ : descend the retain loss while ascending the forget loss,
    ``d = retain_weight * g_r - forget_weight * g_f`` (the usual λ is ``forget_weight``)."""

    def __init__(self, model: nn.Module, *, forget_weight: float = 1.0, retain_weight: float = 1.0, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.forget_weight, self.retain_weight = float(forget_weight), float(retain_weight)

    def step(self, forget_batch: Any, retain_batch: Any) -> StepStats:
        forget_loss, g_f = self.gradient("forget", self.forget_loss_fn, forget_batch)
        retain_loss, g_r = self.gradient("retain", self.loss_fn, retain_batch)
        gram, _ = self.descend([g_f, g_r], Fixed((-self.forget_weight, self.retain_weight)))
        return pair_stats(gram, forget_loss, retain_loss)


class Finetune(UnlearningMethod):
    """Fine-tuning on the retain set only (catastrophic forgetting of D_f): ``d = g_r``.

    :meth:`run` makes one pass over the *retain* loader per epoch; the forget loader is unused.
    """

    def step(self, forget_batch: Any, retain_batch: Any) -> StepStats:
        retain_loss, g_r = self.gradient("retain", self.loss_fn, retain_batch)
        self.apply(torch.ones(1, dtype=torch.float64, device=g_r[0].device), [g_r])
        return {"retain_loss": retain_loss}

    def epoch_batches(self, forget_loader: Iterable, retain_loader: Iterable | None) -> Iterator[tuple[Any, Any]]:
        if retain_loader is None:
            raise ValueError("Finetune needs a retain loader")
        for batch in retain_loader:
            yield None, batch

    def run(self, forget_loader, retain_loader=None, *, epochs=1, steps=None, progress=False, log_every=10):
        # Progress and step counts follow the retain loader, the one an epoch walks.
        return super().run(retain_loader, retain_loader, epochs=epochs, steps=steps, progress=progress,
                           log_every=log_every)  # fmt: skip


class RandomLabel(UnlearningMethod):
    """Random labels: train the forget inputs towards labels drawn uniformly from the *other*
    classes (drawn on the device), plus the retain loss when ``with_retain`` (default).

    Batches are ``(inputs, labels, ...)``; ``loss_fn`` sees the relabelled forget batch.

    >>> import torch, fastunlearn as fu
    >>> method = fu.methods.RandomLabel(torch.nn.Linear(4, 3), num_classes=3)
    >>> labels = torch.tensor([0, 1, 2, 0, 1, 2])
    >>> _, new_labels = method.relabel((torch.zeros(6, 4), labels))
    >>> bool((new_labels != labels).all()), bool(((0 <= new_labels) & (new_labels < 3)).all())
    (True, True)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        with_retain: bool = True,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> None:
        if num_classes < 2:
            raise ValueError("RandomLabel needs num_classes >= 2")
        super().__init__(model, **kwargs)
        self.num_classes, self.with_retain, self.generator = num_classes, with_retain, generator

    def relabel(self, batch: Any) -> Any:
        """The batch with each label replaced by a different class, uniformly at random."""
        labels = batch[1]
        shift = torch.randint(1, self.num_classes, labels.shape, device=labels.device, generator=self.generator)
        return type(batch)([batch[0], (labels + shift) % self.num_classes, *batch[2:]])

    def step(self, forget_batch: Any, retain_batch: Any) -> StepStats:
        forget_loss, g_f = self.gradient("forget", self.forget_loss_fn, self.relabel(forget_batch))
        if not self.with_retain:
            self.apply(torch.ones(1, dtype=torch.float64, device=g_f[0].device), [g_f])
            return {"relabelled_forget_loss": forget_loss}
        retain_loss, g_r = self.gradient("retain", self.loss_fn, retain_batch)
        gram, _ = self.descend([g_f, g_r], Fixed((1.0, 1.0)))
        stats = pair_stats(gram, forget_loss, retain_loss)
        stats["relabelled_forget_loss"] = stats.pop("forget_loss")
        return stats


class PCGradUnlearn(UnlearningMethod):
    """PCGrad (Yu et al. 2020) over the tasks "ascend the forget loss" and "descend the retain loss"
    (the retain batch split into ``retain_tasks`` parts gives more tasks): each task's descent
    direction is projected off the others it conflicts with, in a random order, then they are
    summed or averaged (``reduction``). Exact in Gram space: the task directions are ``-g_f`` and
    ``g_rj``, whose Gram matrix is the gradients' with the forget row and column negated.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        retain_tasks: int = 1,
        reduction: str = "mean",
        eps: float = DEFAULT_EPS,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> None:
        if retain_tasks < 1:
            raise ValueError("retain_tasks must be >= 1")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        super().__init__(model, **kwargs)
        self.retain_tasks, self.reduction, self.generator = retain_tasks, reduction, generator
        self.eps = _validate.check_eps(eps)

    def step(self, forget_batch: Any, retain_batch: Any) -> StepStats:
        forget_loss, g_f = self.gradient("forget", self.forget_loss_fn, forget_batch)
        m = self.retain_tasks
        retain_loss, g_rs = self.retain_gradients(retain_batch, m)
        # The task directions are -g_f and g_rj: PCGrad over them, as weights of the gradients.
        order = pcgrad_order(m + 1, device=g_f[0].device, generator=self.generator)
        tasks = Signed(PCGrad(order, self.reduction, self.eps), (-1.0,) + (1.0,) * m)
        gram, weights = self.descend([g_f, *g_rs], tasks)
        stats = pair_stats(gram[:2, :2], forget_loss, retain_loss)
        stats["task_weights"] = weights * torch.tensor(tasks.signs, dtype=weights.dtype, device=weights.device)
        return stats


def train(
    model: nn.Module,
    loader: Iterable,
    *,
    epochs: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    loss_fn: LossFn | None = None,
    progress: bool = False,
) -> Tensor:
    """Trains ``model`` on ``loader`` (plain descent, AdamW by default); returns per-step losses."""
    kwargs = {} if loss_fn is None else {"loss_fn": loss_fn}
    if optimizer is None:
        optimizer = optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    trainer = Finetune(model, optimizer=optimizer, **kwargs)
    return trainer.run(None, loader, epochs=epochs, progress=progress)["retain_loss"]


def retrain(model_factory, retain_loader: Iterable, **train_kwargs) -> nn.Module:
    """The gold standard: a fresh ``model_factory()`` trained on the retain set only (see :func:`train`)."""
    model = model_factory()
    train(model, retain_loader, **train_kwargs)
    return model
