"""Metrics for unlearning in generative models, computed with a separately trained classifier.

* :func:`feature_ratio` -- the share of generated samples that the classifier assigns to the
  removed class (the Gradient Surgery paper's metric; inferred definition). Lower is better.
* :func:`frechet_distance` -- a sample-quality score: the Fréchet distance between Gaussian fits of
  the classifier's features of generated and of held-out real samples (FID with the project's own
  classifier in place of Inception). Lower is better; it must not collapse while forgetting.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn


@torch.no_grad()
def feature_ratio(classifier: nn.Module, samples: Tensor, removed_class: int) -> float:
    """Fraction of ``samples`` that ``classifier`` labels ``removed_class``."""
    return float((classifier(samples).argmax(1) == removed_class).float().mean())


def _gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # A small ridge keeps the square root defined when samples collapse onto a subspace.
    cov = np.cov(features, rowvar=False) + 1e-6 * np.eye(features.shape[1])
    return features.mean(0), cov


def frechet_distance(features_a: Tensor | np.ndarray, features_b: Tensor | np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of two sets of feature rows; NaN
    where either holds a non-finite value.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(4000, 3))
    >>> round(frechet_distance(a, a + 1.0), 1)  # a shift by 1 in each of 3 dimensions
    3.0
    """
    from scipy import linalg

    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")  # a model that generates NaN/Inf (diverged): no distance to speak of
    mu_a, cov_a = _gaussian(a)
    mu_b, cov_b = _gaussian(b)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root))


@torch.no_grad()
def sample_quality(features: Callable[[Tensor], Tensor], samples: Tensor, real: Tensor) -> float:
    """Fréchet distance of ``features(samples)`` to ``features(real)``."""
    return frechet_distance(features(samples).cpu().numpy(), features(real).cpu().numpy())
