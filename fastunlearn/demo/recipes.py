"""How the demo runs each method: optimizer, step budget and batches, the same for every forget set.

Budgets are fixed per method, not tuned per metric: the ascent-based methods get 20 steps of AdamW
(lr 1e-3) with the whole forget set (up to 256 samples) and 256 retain samples per step, so their
rows compare like with like. ∇τ runs the authors' schedule; Finetune a few epochs on the retain set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastunlearn import methods, optim
from fastunlearn.demo.data import DigitSplits

ASCENT_STEPS = 20
BATCH = 256


@dataclass
class Task:
    """One model to unlearn: its loss, what its outputs are, and whether labels mean classes."""

    kind: str  # "classifier" or "vae"
    loss_fn: methods.LossFn
    output_fn: Callable[[nn.Module, Any], torch.Tensor]
    has_labels: bool


def adamw(model: nn.Module) -> optim.AdamW:
    """The ascent methods' optimizer in the demo: AdamW, lr 1e-3, no weight decay."""
    return optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)


def _ascent_run(method: methods.UnlearningMethod, splits: DigitSplits, steps: int, seed: int):
    forget = splits.loader("forget", BATCH, shuffle=True, seed=seed)
    retain = splits.loader("retain", BATCH, shuffle=True, seed=seed + 1)
    return method.run(forget, retain, steps=steps)


def surgery(model, splits, task, quick, seed, **options):
    method = methods.GradientSurgery(model, optimizer=adamw(model), loss_fn=task.loss_fn, **options)
    return method, lambda: _ascent_run(method, splits, ASCENT_STEPS, seed)


def nabla_tau(model, splits, task, quick, seed):
    forget_fraction = len(splits.y["forget"]) / (len(splits.y["forget"]) + len(splits.y["retain"]))
    method = methods.NablaTau(model, splits.loader("val", BATCH), forget_fraction=forget_fraction, loss_fn=task.loss_fn)
    forget = splits.loader("forget", BATCH, shuffle=True, seed=seed)
    retain = splits.loader("retain", BATCH, shuffle=True, seed=seed + 1)
    return method, lambda: method.run(forget, retain)


def decouple_retain(model, splits, task, quick, seed):
    method = methods.DecoupleRetain(
        model, threshold=_decouple_threshold(task), max_steps=100, clip_norm=1.0, lr=0.1, retain_lr=1e-2,
        output_fn=task.output_fn, loss_fn=task.loss_fn,
    )  # fmt: skip
    forget = splits.loader("forget", BATCH, shuffle=True, seed=seed)
    retain = splits.loader("retain", 64, shuffle=True, seed=seed + 1)
    return method, lambda: method.run(forget, retain, retain_epochs=1 if quick else 2)


def decouple_projected(model, splits, task, quick, seed):
    """The preset that keeps the VAE's samples and removes the class: decoupling to λ = 20 (on the
    VAE the best point of benchmarks/vae_tradeoff.py's sweep), then retention that does not relearn
    the forget set (``retention="projected"``), 5 epochs of AdamW."""
    method = methods.DecoupleRetain(
        model, threshold=20.0, max_steps=100, clip_norm=1.0, lr=0.1, retention="projected",
        retain_optimizer=optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0), output_fn=task.output_fn,
        loss_fn=task.loss_fn,
    )  # fmt: skip
    forget = splits.loader("forget", BATCH, shuffle=True, seed=seed)
    retain = splits.loader("retain", 64, shuffle=True, seed=seed + 1)
    return method, lambda: method.run(forget, retain, retain_epochs=5)


def _decouple_threshold(task: Task) -> float:
    # λ is a distance between outputs: logits for the classifier, reconstruction logits for the VAE.
    return 20.0 if task.kind == "classifier" else 40.0


def ascent_baseline(cls, **options):
    def make(model, splits, task, quick, seed):
        method = cls(model, optimizer=adamw(model), loss_fn=task.loss_fn, **options)
        return method, lambda: _ascent_run(method, splits, ASCENT_STEPS, seed)

    return make


def finetune(model, splits, task, quick, seed):
    method = methods.Finetune(model, optimizer=adamw(model), loss_fn=task.loss_fn)
    retain = splits.loader("retain", 64, shuffle=True, seed=seed + 1)
    return method, lambda: method.run(None, retain, epochs=2 if quick else 5)


def random_label(model, splits, task, quick, seed):
    generator = torch.Generator().manual_seed(seed)
    method = methods.RandomLabel(model, num_classes=10, generator=generator, optimizer=adamw(model))
    return method, lambda: _ascent_run(method, splits, ASCENT_STEPS, seed)


RECIPES: dict[str, Callable] = {
    "GradientSurgery": surgery,
    "GradientSurgery+descent": lambda *a: surgery(*a, retain_weight=1.0),
    "NablaTau": nabla_tau,
    "DecoupleRetain": decouple_retain,
    "DecoupleRetain/projected": decouple_projected,
    "GradientAscent": ascent_baseline(methods.GradientAscent),
    "GradientDifference": ascent_baseline(methods.GradientDifference),
    "PCGradUnlearn": ascent_baseline(methods.PCGradUnlearn, generator=None),
    "Finetune": finetune,
    "RandomLabel": random_label,
}
#: The seed methods (the three papers); the quality bars apply to them.
SEED_METHODS = ("GradientSurgery", "NablaTau", "DecoupleRetain")
#: Methods that need class labels (not run on the VAE).
NEEDS_LABELS = ("RandomLabel",)
