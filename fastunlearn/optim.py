"""SGD and AdamW whose update takes a weighted combination of gradient vectors, fused.

Parameters, state and gradients may be DTensors (FSDP2): the update is elementwise, so it runs on
the local shards.

Unlearning methods step along ``d = sum_k w_k g_k`` (e.g. ``-(g_f - c g_r)`` for Gradient Surgery,
with ``w`` computed on the device from a Gram matrix). The usual route writes ``d`` into ``.grad``
and lets ``torch.optim`` read it back; :meth:`FusedOptimizer.step_combined` forms ``d`` element by
element inside the update instead, so the combined gradient is never written to memory. The update
arithmetic is ``torch.optim.SGD``'s and ``torch.optim.AdamW``'s (``maximize`` included), and both
classes are ordinary ``torch.optim.Optimizer`` subclasses: param groups, ``state_dict`` and LR
schedulers work as usual, and :meth:`step` on ``.grad`` behaves like the torch optimizer.

>>> import torch, fastunlearn as fu
>>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
>>> opt = fu.optim.SGD([w], lr=0.5)
>>> g_f, g_r = [torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 1.0])]
>>> opt.step_combined(torch.tensor([1.0, -2.0]), [g_f, g_r])  # d = g_f - 2 g_r
>>> w.data
tensor([0.5000, 3.0000])
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from fastunlearn import _backend, distributed
from fastunlearn.distributed import is_dtensor

Vector = Sequence[Tensor]

__all__ = ["SGD", "AdamW", "FusedOptimizer"]


# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------


class FusedOptimizer(torch.optim.Optimizer, abc.ABC):
    """Base of the fused optimizers: :meth:`step` on ``.grad``, :meth:`step_combined` on K vectors."""

    backend: str

    def __init__(self, params, defaults: dict, backend: str) -> None:
        _backend.check_name(backend)
        super().__init__(params, defaults)
        self.backend = backend

    @property
    def params(self) -> list[Tensor]:
        """The trainable parameters (``requires_grad``), in param-group order: the shard order of
        ``step_combined``'s vectors. Frozen ones (a LoRA base) are held, as torch's optimizers hold
        them, and never updated."""
        return [p for params in self._trainable_groups() for p in params]

    def _trainable_groups(self) -> list[list[Tensor]]:
        return [[p for p in group["params"] if p.requires_grad] for group in self.param_groups]

    @torch.no_grad()
    def step(self, closure=None, *, weights: Tensor | None = None, vectors: Sequence[Vector] | None = None):
        """One update: from each parameter's ``.grad`` (those whose grad is None are skipped), or,
        given ``weights`` and ``vectors``, along their combination (see :meth:`step_combined`)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if (weights is None) != (vectors is None):
            raise ValueError("give both weights and vectors, or neither")
        if vectors is not None:
            params = self.params
            if not params:
                raise ValueError("the optimizer has no trainable parameters (every one has requires_grad=False)")
            grads = _checked_vectors(vectors, params)
            if not isinstance(weights, Tensor):
                raise TypeError(f"weights must be a Tensor on {params[0].device}, got {type(weights).__name__}")
            _check_step(params, grads, weights)
            self._update_groups(self._trainable_groups(), weights, grads)
            return loss
        with_grad = [[p for p in group["params"] if p.grad is not None] for group in self.param_groups]
        params = [p for group in with_grad for p in group]
        if params:
            grads = [[p.grad for p in params]]
            _check_step(params, grads, None)
            self._update_groups(with_grad, None, grads)
        return loss

    def step_combined(self, weights: Tensor, vectors: Sequence[Vector]) -> None:
        """One update along ``d = sum_k weights[k] * vectors[k]``, never materialising ``d``.

        ``vectors`` are K gradient vectors, each with one shard per parameter in :attr:`params`
        order (same shapes and dtypes); ``weights`` is a (K,) tensor on their device, read there,
        never by the host. Everything is checked before any parameter or state is written. (This is
        ``step(weights=..., vectors=...)``, so step hooks and LR schedulers see it as a step.)
        """
        self.step(weights=weights, vectors=vectors)

    def _update_groups(
        self, group_params: list[list[Tensor]], weights: Tensor | None, grads: list[list[Tensor]]
    ) -> None:
        """Updates every group along ``sum_k weights[k] * grads[k]`` (``weights=None``: the one
        gradient, with a unit weight on each bucket's own device)."""
        # Every bucket's backend is resolved (and may raise) before the first one is updated.
        plan, start = [], 0
        for group, params in zip(self.param_groups, group_params):
            stop = start + len(params)
            vectors = [vector[start:stop] for vector in grads]
            for index in _buckets(params, self._bucket_key):
                bucket = [params[i] for i in index]
                name = _backend.resolve(self.backend, bucket[0].device)
                local = to_local(bucket[:1])[0]
                if weights is not None and bucket[0].device != weights.device:
                    raise ValueError(
                        f"parameter {start + index[0]} is on {bucket[0].device} but the weights are on "
                        f"{weights.device}; step_combined takes the parameters of one device (one optimizer per device)"
                    )
                bucket_weights = torch.ones(1, dtype=local.dtype, device=local.device) if weights is None else weights
                plan.append((group, bucket, bucket_weights, [vector[i] for vector in vectors for i in index], name))
            start = stop
        for group, bucket, bucket_weights, bucket_grads, name in plan:
            self._apply(group, bucket, bucket_weights, bucket_grads, len(grads), name)

    def _bucket_key(self, p: Tensor) -> tuple:
        return (p.dtype, p.device)

    @abc.abstractmethod
    def _apply(self, group: dict, params: list[Tensor], weights: Tensor, grads: list[Tensor], k: int, name: str):
        """Updates one bucket of ``params`` (one dtype, device and state) with its kernel."""


def _checked_vectors(vectors: Sequence[Vector], params: list[Tensor]) -> list[list[Tensor]]:
    """K gradient vectors of one shard per parameter. Each shard's pairing with its parameter (shape,
    dtype, device, dense layout) is checked with the rest of the step (``_check_step``); DTensor
    shards are also checked here for their placement, which only Python sees."""
    if isinstance(vectors, Tensor) or not isinstance(vectors, Sequence) or not vectors:
        raise TypeError("vectors must be a non-empty sequence of gradient vectors (each a sequence of tensors)")
    checked = []
    for k, vector in enumerate(vectors):
        if isinstance(vector, Tensor) or not isinstance(vector, Sequence):
            raise TypeError(f"vectors[{k}] must be a sequence of tensors, one per parameter")
        if len(vector) != len(params):
            raise ValueError(f"vectors[{k}] has {len(vector)} shards but the optimizer has {len(params)} parameters")
        checked.append(list(vector))
    if is_dtensor(params[0]) or any(is_dtensor(vector[0]) for vector in checked):
        for k, vector in enumerate(checked):
            for i, (g, p) in enumerate(zip(vector, params)):
                if not _same_sharding(g, p):
                    raise ValueError(f"vectors[{k}] shard {i} is {_describe(g)} but parameter {i} is {_describe(p)}")
    return checked


def _check_step(params: list[Tensor], grads: list[list[Tensor]], weights: Tensor | None) -> None:
    """Weights, writable parameters and no shared memory (csrc/common/validate.h), for every bucket
    before the first is written."""
    _backend.require_native()
    flat = to_local([g for vector in grads for g in vector])
    try:
        torch.ops.fastunlearn.check_step(to_local(params), flat, len(grads), weights)
    except RuntimeError:  # the dispatcher could not read the lists: name the shard that is no tensor
        for k, vector in enumerate(grads):
            for i, g in enumerate(vector):
                if not isinstance(g, Tensor):
                    raise TypeError(f"vectors[{k}] shard {i} is a {type(g).__name__}, not a Tensor") from None
        raise


def to_local(tensors: list[Tensor]) -> list[Tensor]:
    """Local shards of DTensors; a list of plain tensors (every shard plain, as the first) as it is."""
    return distributed.to_local(tensors) if tensors and is_dtensor(tensors[0]) else tensors


def _describe(t: Tensor) -> str:
    where = f" placed {tuple(t.placements)}" if is_dtensor(t) else ""
    return f"{tuple(t.shape)} {t.dtype} on {t.device}{where}"


def _same_sharding(g: Tensor, p: Tensor) -> bool:
    """A DTensor gradient is laid out like its DTensor parameter (so their local shards pair up)."""
    if is_dtensor(g) or is_dtensor(p):
        return is_dtensor(g) and is_dtensor(p) and g.device_mesh == p.device_mesh and g.placements == p.placements
    return True


def _buckets(params: list[Tensor], key) -> list[list[int]]:
    """Indices of params grouped so that one kernel call takes each group (one dtype, device, state)."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(key(p), []).append(i)
    return list(groups.values())


class SGD(FusedOptimizer):
    """``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay, ``maximize``), fused.

    >>> import torch, fastunlearn as fu
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = fu.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> model(torch.ones(2, 4)).sum().backward()
    >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        backend: str = "auto",
    ) -> None:
        _check_nonnegative(lr=lr, momentum=momentum, weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults, backend)

    def _bucket_key(self, p: Tensor) -> tuple:
        return (p.dtype, p.device, "momentum_buffer" in self.state[p])

    def _apply(self, group, params, weights, grads, k, name):
        momentum = group["momentum"]
        buffers, first_step = [], False
        if momentum != 0:
            first_step = "momentum_buffer" not in self.state[params[0]]
            buffers = [
                torch.zeros_like(p, memory_format=torch.preserve_format)
                if first_step
                else self.state[p]["momentum_buffer"]
                for p in params
            ]
        hyper = (float(group["lr"]), float(momentum), float(group["dampening"]), bool(group["nesterov"]))
        rest = (float(group["weight_decay"]), bool(group["maximize"]), first_step, name)
        torch.ops.fastunlearn.sgd_step_(to_local(params), to_local(buffers), weights, to_local(grads), k, *hyper, *rest)
        if first_step:
            for p, buffer in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buffer


class AdamW(FusedOptimizer):
    """``torch.optim.AdamW`` (decoupled weight decay, bias correction, ``maximize``; no amsgrad), fused.

    >>> import torch, fastunlearn as fu
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = fu.optim.AdamW(model.parameters(), lr=1e-3)
    >>> model(torch.ones(2, 4)).sum().backward()
    >>> opt.step()
    >>> opt.state[model.weight]["step"]
    1
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        maximize: bool = False,
        backend: str = "auto",
    ) -> None:
        _check_nonnegative(lr=lr, eps=eps, weight_decay=weight_decay)
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two values in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, backend)

    def _bucket_key(self, p: Tensor) -> tuple:
        # torch.optim keeps one step count per parameter; a bucket shares its bias correction.
        return (p.dtype, p.device, int(self.state[p].get("step", 0)))

    def _apply(self, group, params, weights, grads, k, name):
        # State is created and counted only once the update went through: a failed step loses nothing.
        if "exp_avg" in self.state[params[0]]:
            avgs = [self.state[p]["exp_avg"] for p in params]
            sqs = [self.state[p]["exp_avg_sq"] for p in params]
        else:
            avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
            sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        step = int(self.state[params[0]].get("step", 0)) + 1
        beta1, beta2 = group["betas"]
        hyper = (float(group["lr"]), float(beta1), float(beta2), float(group["eps"]), float(group["weight_decay"]))
        state = (to_local(params), to_local(avgs), to_local(sqs))
        maximize = bool(group["maximize"])
        torch.ops.fastunlearn.adamw_step_(*state, weights, to_local(grads), k, *hyper, step, maximize, name)
        for p, avg, sq in zip(params, avgs, sqs):
            self.state[p].update(step=step, exp_avg=avg, exp_avg_sq=sq)


def _check_nonnegative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0.0:
            raise ValueError(f"{name} must be >= 0, got {value}")
