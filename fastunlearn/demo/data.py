"""scikit-learn's bundled digits (8x8 images, 1,797 samples): splits and forget sets, no download."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset


@dataclass
class DigitSplits:
    """Inputs in [0, 1] (64 features) and labels, split train/val/test; train = forget + retain."""

    x: dict[str, Tensor]
    y: dict[str, Tensor]
    forget_description: str

    def loader(self, name: str, batch_size: int = 64, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        dataset = TensorDataset(self.x[name], self.y[name])
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target, dtype=torch.int64)


def parse_forget(spec: str) -> tuple[str, float]:
    """``"class:3"`` -> ("class", 3); ``"random:0.15"`` -> ("random", 0.15)."""
    kind, _, value = spec.partition(":")
    if kind == "class" and value.isdigit() and 0 <= int(value) <= 9:
        return kind, int(value)
    if kind == "random":
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if 0.0 < fraction < 1.0:
            return kind, fraction
    raise ValueError(f"forget set {spec!r}: expected class:N (N in 0..9) or random:F (0 < F < 1)")


def digit_splits(forget: str = "class:3", *, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2):
    """Seeded train/val/test split of the digits, and the forget set drawn from train.

    ``forget="class:3"`` forgets every training 3; ``"random:0.15"`` a random 15 % of train. The
    rest of train is the retain set.
    """
    kind, value = parse_forget(forget)
    x, y = load_digits_tensors()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=gen)
    n_test, n_val = int(test_fraction * len(y)), int(val_fraction * len(y))
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    train = parts["train"]
    if kind == "class":
        is_forget = y[train] == value
    else:
        is_forget = torch.zeros(len(train), dtype=torch.bool)
        is_forget[torch.randperm(len(train), generator=gen)[: round(value * len(train))]] = True
    parts["forget"], parts["retain"] = train[is_forget], train[~is_forget]
    return DigitSplits({k: x[v] for k, v in parts.items()}, {k: y[v] for k, v in parts.items()}, forget)
