"""Several gradients of one model side by side, without ``retain_graph`` and without copies."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from fastunlearn import ops


class GradientStash:
    """Keeps the gradient of each named loss as a vector (one shard per trainable parameter).

    :meth:`capture` runs ``loss.backward()`` with every ``.grad`` cleared, so autograd hands its
    freshly computed gradient tensors to ``.grad`` without a copy; the stash then takes those tensors
    under ``name`` and puts back whatever ``.grad`` held before. Two losses from two forward passes
    (forget and retain batches) therefore never need ``retain_graph`` nor a copy of the gradient,
    and hooks that act on ``.grad`` during backward (DDP, FSDP2) work as usual.

    Only parameters with ``requires_grad`` count (frozen weights, e.g. a LoRA base, are never part of
    a vector). A trainable parameter that a loss does not reach gets an exact zero shard, so every
    vector has the same shards and the fused ops can pair them.

    >>> import torch
    >>> from fastunlearn.methods import GradientStash
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> stash = GradientStash(model.parameters())
    >>> g = stash.capture("forget", model(torch.tensor([[1.0, 2.0]])).sum())
    >>> g
    [tensor([[1., 2.]])]
    >>> model.weight.grad is None
    True
    """

    def __init__(self, params: Iterable[Tensor], *, backend: str = "auto") -> None:
        self.params = [p for p in params if p.requires_grad]
        self.backend = backend  # of the accumulation
        if not self.params:
            raise ValueError("no trainable parameters: every parameter has requires_grad=False")
        self._vectors: dict[str, list[Tensor]] = {}
        self._reached: dict[str, list[bool]] = {}

    def capture(self, name: str, loss: Tensor, *, retain_graph: bool = False, accumulate: bool = False) -> list[Tensor]:
        """Backpropagates ``loss`` and keeps the gradient under ``name`` (replacing the previous one).

        With ``accumulate=True`` the gradient is added to the one already kept under ``name`` (if
        any), in place: gradient accumulation over micro-batches, each loss weighted by the caller
        (by its share of the samples, for a loss that averages over them). ``retain_graph`` is only
        needed when several losses share one forward pass (multi-task).
        """
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss for {name!r} must be a scalar tensor")
        saved = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        try:
            loss.backward(retain_graph=retain_graph)
            reached = [p.grad is not None for p in self.params]
            vector = [p.grad if hit else torch.zeros_like(p) for p, hit in zip(self.params, reached)]
        finally:
            for p, grad in zip(self.params, saved):
                p.grad = grad
        if accumulate and name in self._vectors:
            kept = self._vectors[name]
            ones = torch.ones(2, device=kept[0].device)
            ops.combine_(kept, ones, [kept, vector], backend=self.backend)
            self._reached[name] = [a or b for a, b in zip(self._reached[name], reached)]
            return kept
        self._vectors[name] = vector
        self._reached[name] = reached
        return vector

    def reached(self, name: str) -> list[bool]:
        """Per parameter, whether the loss captured under ``name`` reached it (else its shard is zero)."""
        return self._reached[name]

    def __getitem__(self, name: str) -> list[Tensor]:
        return self._vectors[name]

    def __contains__(self, name: str) -> bool:
        return name in self._vectors

    def clear(self) -> None:
        """Drops every stored gradient (frees their memory)."""
        self._vectors.clear()
        self._reached.clear()
