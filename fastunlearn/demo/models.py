"""The demo's small models: an MLP classifier and a VAE on 8x8 digits (64 inputs in [0, 1])."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Classifier(nn.Module):
    """64 -> 128 -> 64 -> 10 MLP; :meth:`features` is the 64-d layer used for Fréchet distances."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class VAE(nn.Module):
    """Gaussian latent (8-d), Bernoulli decoder; the loss is the negative ELBO per sample."""

    def __init__(self, latent: int = 8, hidden: int = 256, beta: float = 1.0) -> None:
        super().__init__()
        self.latent, self.beta = latent, beta
        self.encoder = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 64))

    def negative_elbo(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """Per-sample reconstruction (Bernoulli cross-entropy) + beta * KL, in nats."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        if noise is None:
            noise = torch.randn_like(mu)
        z = mu + (0.5 * logvar).exp() * noise
        recon = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        return recon + self.beta * kl

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.latent, generator=generator)
        return torch.sigmoid(self.decoder(z))


def vae_loss(model: VAE, batch) -> Tensor:
    """``loss_fn`` for fastunlearn.methods: the mean negative ELBO of a batch's inputs."""
    return model.negative_elbo(batch[0]).mean()
