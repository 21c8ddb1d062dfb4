"""A drop-in for the widely copied PyTorch PCGrad optimizer wrapper, on the fused ops."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fastunlearn import ops
from fastunlearn.methods._capture import GradientStash


class PCGrad:
    """Wraps an optimizer like the public PyTorch PCGrad port (``pc_backward`` / ``step`` /
    ``zero_grad``) and leaves the same ``.grad`` it would, with one Gram pass and one combine pass
    instead of flattened copies and a host sync per task pair.

    ``pc_backward(objectives)`` backpropagates each task loss, projects every task gradient off the
    task gradients it conflicts with (negative dot product) in a random order per task (drawn on
    the device; pass ``generator`` for reproducibility), and writes the merged gradient to ``.grad``:
    ``reduction="mean"`` averages over tasks on parameters every task reaches and sums elsewhere,
    ``"sum"`` sums everywhere -- as the reference does. One deliberate difference: parameters with
    ``requires_grad=False`` keep ``.grad = None`` (the reference hands them a zero gradient, so
    weight decay would move frozen weights).

    >>> import torch, fastunlearn as fu
    >>> w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    >>> opt = fu.PCGrad(torch.optim.SGD([w], lr=0.1), reduction="sum")
    >>> opt.zero_grad()
    >>> _ = opt.pc_backward([w[0] * 1.0, -w[0] + 2 * w[1]])  # gradients (1, 0) and (-1, 2)
    >>> w.grad
    tensor([0.8000, 2.4000])
    >>> opt.step()
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, reduction: str = "mean", *, generator=None, backend: str = "auto"
    ) -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self._optim, self._reduction = optimizer, reduction
        self.generator, self.backend = generator, backend

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._optim

    def zero_grad(self) -> None:
        """Clears the wrapped optimizer's gradients (``.grad = None``, as ``set_to_none=True``)."""
        self._optim.zero_grad(set_to_none=True)

    def step(self):
        """Steps the wrapped optimizer on the merged ``.grad`` that :meth:`pc_backward` left; returns its result."""
        return self._optim.step()

    def pc_backward(self, objectives: Sequence[Tensor], *, order: Tensor | None = None) -> ops.PCGradStats:
        """Sets ``.grad`` to the PCGrad-merged gradient of the task losses ``objectives``.

        ``order`` (K x K, row i: the order task i meets the tasks) replaces the random order.
        Returns the task Gram matrix and the task weights of the merged gradient. The trainable
        parameters are read from the optimizer at each call. Unlike the reference, the graph is
        freed after the last objective's backward (as a plain ``backward()`` would).
        """
        if (isinstance(objectives, Tensor) and objectives.dim() != 1) or not isinstance(objectives, (Tensor, Sequence)):
            raise TypeError(
                "objectives must be a sequence of scalar losses (or a 1-D tensor of them), e.g. [loss_a, loss_b]"
            )
        if len(objectives) == 0:
            raise ValueError("pc_backward needs at least one objective")
        for k, loss in enumerate(objectives):
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise TypeError(f"objectives[{k}] must be a scalar loss tensor, got {_describe(loss)}")
            if not loss.requires_grad:
                raise ValueError(
                    f"objectives[{k}] does not require grad: it was computed without autograd (under no_grad, "
                    "or from tensors that require no grad), so it has no gradient to project"
                )
        stash = GradientStash(p for group in self._optim.param_groups for p in group["params"])
        names = [f"task{k}" for k in range(len(objectives))]
        vectors = [
            stash.capture(name, loss, retain_graph=k < len(objectives) - 1)
            for k, (name, loss) in enumerate(zip(names, objectives))
        ]
        shared = [all(flags) for flags in zip(*(stash.reached(name) for name in names))]
        gram = ops.gram(vectors, dtype=torch.float64, backend=self.backend)
        weights = ops.pcgrad_weights(gram, reduction=self._reduction, order=order, generator=self.generator)
        summed = weights * len(vectors) if self._reduction == "mean" else weights
        # The merged gradient is written over the first task's gradient (combine_ may overwrite an input).
        for subset, w in ((shared, weights), ([not s for s in shared], summed)):
            index = [i for i, keep in enumerate(subset) if keep]
            if index:
                ops.combine_(
                    [vectors[0][i] for i in index], w, [[v[i] for i in index] for v in vectors], backend=self.backend
                )
        for p, g in zip(stash.params, vectors[0]):
            p.grad = g
        return ops.PCGradStats(gram, weights)


def _describe(value) -> str:
    return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
