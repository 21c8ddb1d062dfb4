"""Argument checks of the Python layer: choices and scalars that never reach a kernel. Every check
of the tensors themselves (shapes, dtypes, devices, overlap, writability) runs once, in C++, inside
the op (csrc/common/validate.h), before anything is written."""

from __future__ import annotations

import numbers

import torch

from fastunlearn.weighting import MODES, REDUCTIONS

__all__ = ["MODES", "REDUCTIONS", "check_choice", "check_eps", "check_generator"]


def check_eps(eps: float) -> float:
    """``eps`` as a float: a finite, non-negative real number."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (0 <= eps < float("inf")):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return float(eps)


def check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(map(repr, choices))}")
