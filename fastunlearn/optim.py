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
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

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
        self.state = _CountedState(dict, self.state)

    def __getstate__(self) -> dict:
        # torch.optim pickles (and deep-copies) defaults, state and param groups only.
        return {**super().__getstate__(), "backend": self.backend}

    def __setstate__(self, state: dict) -> None:
        # load_state_dict (and unpickling) installs a plain defaultdict: counted from then on.
        super().__setstate__(state)
        if not isinstance(self.state, _CountedState):
            self.state = _CountedState(dict, self.state)

    def _states(self, position: int, params: list[Tensor]) -> list[dict]:
        """The state dicts of the ``params`` of group ``position``: those of the last step while the
        same parameters are stepped and no entry of :attr:`state` was added, replaced or removed
        (each lookup hashes a tensor in Python, which on 10,000 parameters costs a millisecond)."""
        state = self.state
        if not isinstance(state, _CountedState):  # replaced by the user: looked up every step
            return [state[p] for p in params]
        last = state.lookups.get(position)
        if last is not None and len(last[0]) == len(params) and all(map(operator.is_, last[0], params)):
            return last[1]
        states = [state[p] for p in params]
        state.lookups[position] = (params, states)
        return states

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
            groups = self._trainable_groups()
            params = groups[0] if len(groups) == 1 else [p for params in groups for p in params]
            if not params:
                raise ValueError("the optimizer has no trainable parameters (every one has requires_grad=False)")
            grads = _checked_vectors(vectors, params)
            if not isinstance(weights, Tensor):
                raise TypeError(f"weights must be a Tensor on {params[0].device}, got {type(weights).__name__}")
            self._update(groups, weights, grads)
            return loss
        with_grad = [[p for p in group["params"] if p.grad is not None] for group in self.param_groups]
        params = [p for group in with_grad for p in group]
        if params:
            self._update(with_grad, None, [[p.grad for p in params]])
        return loss

    def step_combined(self, weights: Tensor, vectors: Sequence[Vector]) -> None:
        """One update along ``d = sum_k weights[k] * vectors[k]``, never materialising ``d``.

        ``vectors`` are K gradient vectors, each with one shard per parameter in :attr:`params`
        order (same shapes and dtypes); ``weights`` is a (K,) tensor on their device, read there,
        never by the host. Everything is checked before any parameter or state is written. (This is
        ``step(weights=..., vectors=...)``, so step hooks and LR schedulers see it as a step.)
        """
        self.step(weights=weights, vectors=vectors)

    def _update(self, group_params: list[list[Tensor]], weights: Tensor | None, grads: list[list[Tensor]]) -> None:
        """Updates every group along ``sum_k weights[k] * grads[k]`` (``weights=None``: the one
        gradient, with a unit weight on each call's device).

        A step is one kernel call per group and state kind (AdamW's step count, whether SGD has
        its momentum buffers) and device; parameters of several dtypes share a call. The common
        step -- one group, one device, every parameter's state alike -- is one call, which checks
        everything itself; a step of several calls is checked whole before the first one."""
        total = sum(len(params) for params in group_params)
        calls, start = [], 0
        for position, (group, params) in enumerate(zip(self.param_groups, group_params)):
            if not params:
                continue
            stop = start + len(params)
            vectors = grads if stop - start == total else [vector[start:stop] for vector in grads]
            states = self._states(position, params)
            keys = self._state_keys(states)
            if keys.count(keys[0]) == len(keys):
                calls.append(_Call(group, params, states, vectors))
            else:
                calls.extend(_Call.part(group, params, states, vectors, index) for index in _index_groups(keys))
            start = stop
        if len(calls) == 1 and not (is_dtensor(calls[0].params[0]) or is_dtensor(calls[0].vectors[0][0])):
            launch = self._prepare(calls[0])
            if self._launch(launch, weights, entry=True):
                launch.commit()
                return
        _check_tensors(grads)
        launches = [self._prepare(part) for call in calls for part in call.by_device()]
        if len(launches) > 1:
            _check_step(launches, weights)
        for launch in launches:
            self._launch(launch, weights, entry=False)
            launch.commit()

    def _launch(self, launch: _Launch, weights: Tensor | None, entry: bool) -> bool:
        """Runs ``torch.ops.fastunlearn.<op>`` on one call (through its Python entry point where
        ``entry``); False, with nothing written, where the entry point does not take it."""
        call = launch.call
        first = call.params[0]
        name = _backend.resolve(self.backend, first.device)
        if weights is None:
            weights = torch.ones(1, dtype=first.dtype, device=first.device)
        op, states, scalars = launch.op, launch.states, launch.scalars
        if entry:
            result = _backend.entry_point(op, first, call.params, *states, weights, call.vectors, *scalars, name)
            return result is not NotImplemented
        _backend.require_native()
        flat = to_local([g for vector in call.vectors for g in vector])
        lists = [to_local(call.params), *(to_local(state) for state in states)]
        getattr(torch.ops.fastunlearn, op)(*lists, weights, flat, len(call.vectors), *scalars, name)
        return True

    @abc.abstractmethod
    def _state_keys(self, states: list[dict]) -> list:
        """Per parameter, what its state's kernel call depends on (parameters with equal keys share
        a call)."""

    @abc.abstractmethod
    def _prepare(self, call: _Call) -> _Launch:
        """One call's kernel, state lists (made where they do not exist yet) and scalars, and what
        to record in the state once the kernel has run."""


class _Launch(NamedTuple):
    call: _Call
    op: str  #: the step op, e.g. "sgd_step_"
    states: list[list[Tensor]]  #: the op's state lists, as it takes them
    state_names: tuple[str, ...]  #: their names in errors (empty where a list is unused)
    scalars: tuple
    commit: Callable[[], None]  #: records new state in the optimizer's state dicts


class _CountedState(defaultdict):
    """torch.optim's per-parameter state (a ``defaultdict(dict)``) that keeps the optimizer's
    lookups of its entries (per param group: the parameters and their state dicts) until one of its
    entries is added, replaced or removed."""

    @property
    def lookups(self) -> dict[int, tuple[list[Tensor], list[dict]]]:
        # (In the instance dict, which pickling and copying leave out: a copy starts with none.)
        return self.__dict__.setdefault("lookups", {})

    def _changed(self) -> None:
        self.__dict__.pop("lookups", None)

    def __setitem__(self, key, value) -> None:
        self._changed()
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self._changed()
        super().__delitem__(key)

    def clear(self) -> None:
        self._changed()
        super().clear()

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def popitem(self):
        self._changed()
        return super().popitem()

    def setdefault(self, *args):
        self._changed()
        return super().setdefault(*args)

    def update(self, *args, **kwargs) -> None:
        self._changed()
        super().update(*args, **kwargs)

    def __ior__(self, other):
        self._changed()
        return super().__ior__(other)


class _Call:
    """The parameters one kernel call updates, their state dicts and their shards of each vector."""

    __slots__ = ("group", "params", "states", "vectors")

    def __init__(self, group: dict, params: list[Tensor], states: list[dict], vectors: list[list[Tensor]]) -> None:
        self.group, self.params, self.states, self.vectors = group, params, states, vectors

    @classmethod
    def part(cls, group: dict, params: list[Tensor], states: list[dict], vectors, index: list[int]) -> _Call:
        return cls(
            group, [params[i] for i in index], [states[i] for i in index], [[v[i] for i in index] for v in vectors]
        )

    def by_device(self) -> list[_Call]:
        """This call split by device (one part per device, in order of first appearance)."""
        devices = [p.device for p in self.params]
        if devices.count(devices[0]) == len(devices):
            return [self]
        return [
            _Call.part(self.group, self.params, self.states, self.vectors, index) for index in _index_groups(devices)
        ]


def _index_groups(keys: list) -> list[list[int]]:
    """Indices grouped by equal key, in order of first appearance."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _checked_vectors(vectors: Sequence[Vector], params: list[Tensor]) -> list[list[Tensor]]:
    """K gradient vectors of one shard per parameter. Each shard's pairing with its parameter (shape,
    dtype, device, dense layout) is checked by the step's op with the rest of the step; DTensor
    shards are also checked here for their placement, which only Python sees."""
    if isinstance(vectors, Tensor) or not isinstance(vectors, Sequence) or not vectors:
        raise TypeError("vectors must be a non-empty sequence of gradient vectors (each a sequence of tensors)")
    checked = []
    for k, vector in enumerate(vectors):
        if isinstance(vector, Tensor) or not isinstance(vector, Sequence):
            raise TypeError(f"vectors[{k}] must be a sequence of tensors, one per parameter")
        if len(vector) != len(params):
            raise ValueError(f"vectors[{k}] has {len(vector)} shards but the optimizer has {len(params)} parameters")
        checked.append(vector if type(vector) in (list, tuple) else list(vector))
    if is_dtensor(params[0]) or any(is_dtensor(vector[0]) for vector in checked):
        for k, vector in enumerate(checked):
            for i, (g, p) in enumerate(zip(vector, params)):
                if not _same_sharding(g, p):
                    raise ValueError(f"vectors[{k}] shard {i} is {_describe(g)} but parameter {i} is {_describe(p)}")
    return checked


def _check_tensors(grads: list[list[Tensor]]) -> None:
    """Names a shard that is no tensor (the op's own error would only say its list is malformed)."""
    for k, vector in enumerate(grads):
        for i, g in enumerate(vector):
            if not isinstance(g, Tensor):
                raise TypeError(f"vectors[{k}] shard {i} is a {type(g).__name__}, not a Tensor")


def _check_step(launches: list[_Launch], weights: Tensor | None) -> None:
    """The checks of every call of a step, before the first is made (csrc/library.cpp,
    check_step): the whole step's parameters and gradients, then each call's state."""
    _backend.require_native()
    k = len(launches[0].call.vectors)
    params = to_local([p for launch in launches for p in launch.call.params])
    flat = to_local([g for v in range(k) for launch in launches for g in launch.call.vectors[v]])
    torch.ops.fastunlearn.check_step(params, flat, k, weights, [], [])
    for launch in launches:
        call = launch.call
        kept = [(state, name) for state, name in zip(launch.states, launch.state_names) if name]
        states = to_local([t for state, _ in kept for t in state])
        grads = to_local([g for vector in call.vectors for g in vector])
        names = [name for _, name in kept]
        torch.ops.fastunlearn.check_step(to_local(call.params), grads, k, weights, states, names)


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

    def _state_keys(self, states: list[dict]) -> list:
        return ["momentum_buffer" in state for state in states]

    def _prepare(self, call: _Call) -> _Launch:
        group, momentum = call.group, call.group["momentum"]
        buffers, first_step = [], False
        if momentum != 0:
            first_step = "momentum_buffer" not in call.states[0]
            if first_step:
                buffers = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in call.params]
            else:
                buffers = [state["momentum_buffer"] for state in call.states]
        scalars = (
            float(group["lr"]), float(momentum), float(group["dampening"]), bool(group["nesterov"]),
            float(group["weight_decay"]), bool(group["maximize"]), first_step,
        )  # fmt: skip

        def commit() -> None:
            if first_step:
                for state, buffer in zip(call.states, buffers):
                    state["momentum_buffer"] = buffer

        name = "momentum buffer" if momentum != 0 else ""
        return _Launch(call, "sgd_step_", [buffers], (name,), scalars, commit)


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

    def _state_keys(self, states: list[dict]) -> list:
        # torch.optim keeps one step count per parameter; a call shares its bias correction.
        # (a count loaded from torch.optim's state_dict is a 0-d tensor: compared by value)
        return [int(state.get("step", 0)) for state in states]

    def _prepare(self, call: _Call) -> _Launch:
        # State is created and counted only once the update went through: a failed step loses nothing.
        group, states = call.group, call.states
        fresh = "exp_avg" not in states[0]
        if fresh:
            avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in call.params]
            sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in call.params]
        else:
            avgs = [state["exp_avg"] for state in states]
            sqs = [state["exp_avg_sq"] for state in states]
        step = int(states[0].get("step", 0)) + 1
        beta1, beta2 = group["betas"]
        scalars = (
            float(group["lr"]), float(beta1), float(beta2), float(group["eps"]), float(group["weight_decay"]), step,
            bool(group["maximize"]),
        )  # fmt: skip

        def commit() -> None:
            if fresh:
                for state, avg, sq in zip(states, avgs, sqs):
                    state.update(step=step, exp_avg=avg, exp_avg_sq=sq)
            else:
                for state in states:
                    state["step"] = step

        return _Launch(call, "adamw_step_", [avgs, sqs], ("exp_avg", "exp_avg_sq"), scalars, commit)


def _check_nonnegative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0.0:
            raise ValueError(f"{name} must be >= 0, got {value}")
