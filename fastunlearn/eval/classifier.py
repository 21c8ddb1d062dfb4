"""Accuracy of a classifier on the forget, retain and test sets, and the gap of each to retrain."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, labels, per-sample cross-entropy) over a loader of ``(inputs, labels)`` batches."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in loader:
        logits.append(model(batch[0]))
        labels.append(batch[1])
    model.train(was_training)
    logits, labels = torch.cat(logits), torch.cat(labels)
    return logits, labels, nn.functional.cross_entropy(logits.float(), labels, reduction="none")


def accuracy(model: nn.Module, loader: Iterable) -> float:
    """Fraction of correctly classified samples (a Python float: evaluation reads results back).

    >>> import torch
    >>> from fastunlearn.eval import accuracy
    >>> model = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2))
    >>> accuracy(model, [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))])
    0.5
    """
    logits, labels, _ = predict(model, loader)
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def accuracies(model: nn.Module, loaders: dict[str, Iterable]) -> dict[str, float]:
    """``accuracy`` on each named loader (e.g. forget, retain, test)."""
    return {name: accuracy(model, loader) for name, loader in loaders.items()}


def gaps(results: dict[str, float], retrained: dict[str, float]) -> dict[str, float]:
    """``results - retrained`` per key: how far an unlearned model is from the gold standard."""
    return {name: results[name] - retrained[name] for name in results if name in retrained}
