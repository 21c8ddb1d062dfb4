"""Metrics for image-to-image (I2I) models -- inpainting, outpainting, autoencoders -- per sample.

* :func:`reconstruction_errors` -- the mean squared error of each output against its true image,
  and :func:`psnr` of it (peak signal-to-noise ratio in dB, images in [0, ``peak``]).
* :func:`feature_distance` -- the cosine distance between an encoder's features of each output and
  of its true image: the CLIP distance of the I2I unlearning papers (Li et al., ICLR 2024), with any
  encoder in CLIP's place (the demo uses its own classifier's features).

The share of outputs a classifier still assigns to a forgotten class is
:func:`fastunlearn.eval.feature_ratio`; a membership attack on these per-sample values is
:func:`fastunlearn.eval.attack_audit`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def reconstruction_errors(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample mean squared error over every dimension but the first.

    >>> import torch
    >>> reconstruction_errors(torch.zeros(2, 4), torch.tensor([[0.0, 0, 0, 0], [1, 1, 0, 0]]))
    tensor([0.0000, 0.5000])
    """
    if outputs.shape != targets.shape:
        raise ValueError(f"outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} differ in shape")
    return (outputs.float() - targets.float()).pow(2).flatten(1).mean(1)


def psnr(errors: Tensor, peak: float = 1.0) -> Tensor:
    """``10 log10(peak^2 / mse)`` in dB, per sample (inf where the error is 0).

    >>> import torch
    >>> psnr(torch.tensor([0.01, 1e-4]))
    tensor([20., 40.])
    """
    return 10.0 * torch.log10(peak**2 / errors)


@torch.no_grad()
def feature_distance(encoder: Callable[[Tensor], Tensor], outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample ``1 - cos(encoder(output), encoder(target))``: 0 for outputs the encoder cannot
    tell from their true images, up to 2.

    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> feature_distance(lambda v: v, x, torch.tensor([[2.0, 0.0], [1.0, 0.0]]))
    tensor([0., 1.])
    """
    a, b = encoder(outputs).flatten(1).float(), encoder(targets).flatten(1).float()
    return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1)
