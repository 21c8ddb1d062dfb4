"""What every unlearning method shares: gradient capture, the update, a runner, per-step stats."""

from __future__ import annotations

import abc
import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastunlearn import ops, optim
from fastunlearn._phases import PhaseTimer
from fastunlearn.methods._capture import GradientStash
from fastunlearn.methods._scaling import LossScaling
from fastunlearn.optim import FusedOptimizer
from fastunlearn.weighting import Weighting

#: ``loss_fn(model, batch) -> scalar tensor``: how a method turns a batch into a loss.
LossFn = Callable[[nn.Module, Any], Tensor]
#: Per-step statistics: tensors on the model's device (0-d, except GradientSurgery's per-direction
#: ``coefs``), never read back inside a step.
StepStats = dict[str, Tensor]


def cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    """The default loss. An ``(inputs, labels)`` pair gives the mean cross-entropy of
    ``model(inputs)`` against ``labels``; a dict batch (Hugging Face style: ``input_ids``,
    ``attention_mask``, ``labels``) is passed as keyword arguments and the model's own ``loss``
    returned. Anything else needs a ``loss_fn``."""
    if isinstance(batch, Mapping):
        loss = model_outputs(model, batch, "loss")
        if loss is None:
            raise ValueError(
                "the model returned no loss for a dict batch: put 'labels' in the batch, "
                "or pass loss_fn=(model, batch) -> loss"
            )
        return loss
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return F.cross_entropy(model(batch[0]), batch[1])
    raise TypeError(
        f"the default loss takes an (inputs, labels) pair or a dict of model keyword arguments, got a "
        f"{type(batch).__name__}; pass loss_fn=(model, batch) -> loss"
    )


def model_outputs(model: nn.Module, batch: Mapping, field: str) -> Any:
    """``model(**batch)``'s ``field`` (``loss``, ``logits``): the output is a Hugging Face
    ``ModelOutput``, a dict, or an object with that attribute; None where it has no such field."""
    output = model(**batch)
    if isinstance(output, Mapping):
        return output.get(field)
    return getattr(output, field, None)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the block (no dropout, no BatchNorm statistics updates), then restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class MicroBatches(list):
    """The micro-batches of one step, given already split (a gradient-accumulation window): a
    method runs forward + backward on each in turn, accumulates the gradients (each loss weighted
    by its share of the samples) and runs its vector algebra once, as for ``micro_batches``."""


def batch_size(batch: Any) -> int:
    """Samples in a batch: dim 0 of its first tensor (a tensor, or a tuple/list/dict of them)."""
    if isinstance(batch, MicroBatches):
        return sum(batch_size(part) for part in batch)
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        return batch_size(next(iter(batch.values())))
    if isinstance(batch, (tuple, list)) and batch:
        return batch_size(batch[0])
    raise TypeError(f"cannot tell the size of a batch of type {type(batch).__name__}")


def split_batch(batch: Any, parts: int) -> list[Any]:
    """Splits a batch (a tensor, or a tuple/list/mapping of tensors) into ``parts`` along dim 0.
    :class:`MicroBatches` are split as their concatenation would be, each part a
    :class:`MicroBatches` of the slices it spans."""
    if isinstance(batch, MicroBatches):
        sizes = [batch_size(micro) for micro in batch]
        bounds = [0, *itertools.accumulate(len(piece) for piece in torch.arange(sum(sizes)).tensor_split(parts))]
        if any(stop == start for start, stop in itertools.pairwise(bounds)):
            raise ValueError(f"a batch of {sum(sizes)} samples cannot be split into {parts} non-empty parts")
        starts = [0, *itertools.accumulate(sizes)]
        return [
            MicroBatches(
                _rows(micro, max(lo, first) - first, min(hi, first + size) - first)
                for micro, first, size in zip(batch, starts, sizes)
                if max(lo, first) < min(hi, first + size)
            )
            for lo, hi in itertools.pairwise(bounds)
        ]
    if isinstance(batch, Tensor):
        pieces = torch.tensor_split(batch, parts)
        if any(p.shape[0] == 0 for p in pieces):
            raise ValueError(f"a batch of {batch.shape[0]} samples cannot be split into {parts} non-empty parts")
        return list(pieces)
    if isinstance(batch, Mapping):  # a dict, or Hugging Face's BatchEncoding: the parts are dicts
        split = {key: split_batch(value, parts) for key, value in batch.items()}
        return [{key: split[key][j] for key in batch} for j in range(parts)]
    if isinstance(batch, (tuple, list)):
        columns = [split_batch(item, parts) for item in batch]
        return [type(batch)(column[j] for column in columns) for j in range(parts)]
    raise TypeError(f"cannot split a batch of type {type(batch).__name__}; use tensors, tuples, lists or dicts")


def _rows(batch: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a batch (a tensor, or a tuple/list/mapping of tensors)."""
    if isinstance(batch, Tensor):
        return batch[start:stop]
    if isinstance(batch, Mapping):
        return {key: _rows(value, start, stop) for key, value in batch.items()}
    return type(batch)(_rows(item, start, stop) for item in batch)


class History(dict):
    """Stats of a run: name -> 1-D tensor over steps (on the model's device).

    Built with one ``torch.stack`` per stat at the end of a run. ``len(history)`` counts steps.
    """

    def __init__(self, steps: list[StepStats]) -> None:
        super().__init__()
        self.num_steps = len(steps)
        for key in dict.fromkeys(k for step in steps for k in step):
            values = [step[key] for step in steps if key in step]
            self[key] = torch.stack([v.detach().float() for v in values])

    def __len__(self) -> int:
        return self.num_steps

    def last(self) -> dict[str, float | list[float]]:
        """The final value of every stat, as a Python float (a list for a per-direction stat such as
        ``coefs``); reads them back, so call it outside a loop."""
        return {key: values[-1].tolist() for key, values in self.items() if len(values)}


def cycle(loader: Iterable) -> Iterator:
    """Endless batches, restarting ``loader`` (so a shuffling loader reshuffles) when it runs out."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the data loader yielded no batches")


class UnlearningMethod(abc.ABC):
    """Base class: a method holds a model, its optimizer and a :class:`GradientStash`.

    Use it either way:

    * ``stats = method.step(forget_batch, retain_batch)`` inside your own loop, or
    * ``history = method.run(forget_loader, retain_loader, epochs=...)``.

    The optimizer is a fused one (:mod:`fastunlearn.optim`, default) or any ``torch.optim``
    optimizer over the model's parameters: with a fused one the combined gradient is applied inside
    the update; with another, it is written over the forget gradient's buffer, handed to ``.grad``
    for ``optimizer.step()``, and ``.grad`` is restored afterwards.

    ``micro_batches`` splits every batch into that many parts along dim 0 and accumulates their
    gradients (each loss weighted by its share of the samples, exact for losses that average over
    samples) before the step's vector algebra, which runs once: one step of a large batch in the
    memory of a part. A :class:`MicroBatches` batch is taken as already split (a gradient
    accumulation window). ``max_grad_norm`` clips the update ``d = sum_k w_k g_k`` to that norm
    before the optimizer, from the step's Gram matrix (``|d|^2 = w^T G w``), on the device.

    ``grad_scaler`` (a ``torch.amp.GradScaler``, for fp16 autocast): every loss is scaled before
    its backward, the Gram is unscaled (so coefficients, clipping and stats see true gradients) and
    the unscale is folded into the update's weights -- no gradient is rewritten. A step whose Gram
    or weights are not finite is skipped (parameters and optimizer state untouched) and the scale
    backs off, as ``GradScaler.step``/``update`` do. ``skip_nonfinite=True`` skips such steps
    without a scaler (a NaN/inf loss then leaves the model as it was). Both read one bool back per
    step -- the skip is a host decision, as in ``GradScaler.step`` -- and count
    :attr:`skipped_steps`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float = 1e-3,
        loss_fn: LossFn = cross_entropy,
        forget_loss_fn: LossFn | None = None,
        backend: str = "auto",
        micro_batches: int = 1,
        max_grad_norm: float | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        if not isinstance(micro_batches, int) or micro_batches < 1:
            raise ValueError(f"micro_batches must be an int >= 1, got {micro_batches!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 (or None), got {max_grad_norm!r}")
        self.micro_batches, self.max_grad_norm = micro_batches, max_grad_norm
        self.model = model
        self.backend = backend
        trainable = [p for p in model.parameters() if p.requires_grad]
        if isinstance(optimizer, FusedOptimizer):
            # The fused step pairs shards with the optimizer's parameters: the vectors follow its
            # order (param groups, e.g. decay / no decay, reorder them).
            params = optimizer.params
            if len(params) != len(trainable) or {id(p) for p in params} != {id(p) for p in trainable}:
                raise ValueError("a fused optimizer must hold exactly the model's trainable parameters")
        else:
            params = trainable
        self.stash = GradientStash(params, backend=backend)
        self.params = self.stash.params
        self.optimizer = optimizer if optimizer is not None else self.default_optimizer(lr)
        self.scaling = LossScaling(grad_scaler, skip_nonfinite)
        self.loss_fn = loss_fn
        self.forget_loss_fn = forget_loss_fn or loss_fn
        #: The norm of the last update before clipping (0-d, device; set where ``max_grad_norm`` is).
        self.update_norm: Tensor | None = None
        #: Set a :class:`PhaseTimer` to time forward / backward / vector_algebra / optimizer phases.
        self.timer: PhaseTimer | None = None

    def default_optimizer(self, lr: float) -> torch.optim.Optimizer:
        return optim.SGD(self.params, lr=lr, backend=self.backend)

    # -- one step ------------------------------------------------------------------------------

    @abc.abstractmethod
    def step(self, forget_batch: Any, retain_batch: Any) -> StepStats:
        """One unlearning step; returns its stats as device tensors (see :data:`StepStats`)."""

    def train_step(self, forget_batch: Any, retain_batch: Any) -> StepStats:
        """One step driven by an outside training loop (e.g. the Hugging Face ``UnlearnTrainer``):
        :meth:`step`, unless a method has phases and picks the step here."""
        return self.step(forget_batch, retain_batch)

    def retain_gradients(self, retain_batch: Any, parts: int) -> tuple[Tensor, list[list[Tensor]]]:
        """The mean retain loss and one gradient per part of the batch (split along dim 0 if parts > 1)."""
        batches = [retain_batch] if parts == 1 else split_batch(retain_batch, parts)
        losses, gradients = [], []
        for j, part in enumerate(batches):
            loss, g = self.gradient(f"retain{j}", self.loss_fn, part)
            losses.append(loss)
            gradients.append(g)
        return torch.stack(losses).mean(), gradients

    def phase(self, name: str) -> contextlib.AbstractContextManager:
        """Charges the enclosed work to phase ``name`` of :attr:`timer` (a no-op without one)."""
        return self.timer.phase(name) if self.timer is not None else contextlib.nullcontext()

    def gradient(self, name: str, loss_fn: LossFn, batch: Any) -> tuple[Tensor, list[Tensor]]:
        """Forward + backward of ``loss_fn`` on ``batch`` (in ``micro_batches`` parts, accumulated);
        returns the detached loss and the gradient.

        Timed as ``forward_forget`` / ``backward_forget`` for the forget gradient and
        ``forward_retain`` / ``backward_retain`` for every other one.
        """
        side = "forget" if name == "forget" else "retain"
        parts = self._parts(batch)
        total = batch_size(batch) if len(parts) > 1 else 1
        losses = []
        for j, part in enumerate(parts):
            with self.phase(f"forward_{side}"):
                loss = loss_fn(self.model, part)
                if len(parts) > 1:
                    loss = loss * (batch_size(part) / total)
            with self.phase(f"backward_{side}"):
                vector = self.stash.capture(name, self.scaling.scale(loss), accumulate=j > 0)
            losses.append(loss.detach())
        return (losses[0] if len(losses) == 1 else torch.stack(losses).sum()), vector

    def descend(self, vectors: Sequence[Sequence[Tensor]], weighting: Weighting) -> tuple[Tensor, Tensor]:
        """One update through the engine: the vectors' Gram pass, ``weighting``'s K x K scalar stage
        on the device, and the combine pass inside the optimizer step (:meth:`apply`: clipping and
        loss scaling included). Returns the Gram matrix and the weights, for the step's stats."""
        gram = self.gram(vectors)
        with self.phase("vector_algebra"):
            weights = weighting(gram)
        self.apply(weights, vectors, gram)
        return gram, weights

    def apply(
        self, weights: Tensor, vectors: Sequence[Sequence[Tensor]], gram: Tensor | None = None, *, clip: bool = True
    ) -> None:
        """One optimizer step along the descent direction ``sum_k weights[k] * vectors[k]``, clipped
        to ``max_grad_norm`` if set and ``clip`` (``gram``: the vectors' Gram matrix, if the step
        has it). Every vector is at the step's loss scale (see ``grad_scaler``)."""
        clip = clip and self.max_grad_norm is not None
        if self.scaling.checks or clip:
            gram = gram if gram is not None else self.gram(vectors)
        if self.scaling.checks and self.scaling.skip(weights, gram):
            self.update_norm = torch.full((), float("nan"), dtype=gram.dtype, device=gram.device)
            return
        if clip:
            weights = self.clipped(weights, vectors, gram)
        with self.phase("optimizer"):
            self._apply(self.scaling.unscale(weights), vectors)
        if self.scaling.checks:
            self.scaling.stepped()

    def clipped(self, weights: Tensor, vectors: Sequence[Sequence[Tensor]], gram: Tensor | None = None) -> Tensor:
        """``weights`` scaled so that ``|sum_k w_k g_k| = sqrt(w^T G w)`` is at most ``max_grad_norm``."""
        gram = gram if gram is not None else self.gram(vectors)
        with self.phase("vector_algebra"):
            w = weights.to(gram.dtype)
            norm = (w @ gram @ w).clamp_min(0.0).sqrt()
            self.update_norm = norm
            return weights * (self.max_grad_norm / (norm + 1e-12)).clamp_max(1.0).to(weights.dtype)

    def _apply(self, weights: Tensor, vectors: Sequence[Sequence[Tensor]]) -> None:
        if isinstance(self.optimizer, FusedOptimizer):
            self.optimizer.step_combined(weights, vectors)
            return
        # The first vector's buffer becomes the combined gradient (combine_ may write over an input).
        out = vectors[0]
        ops.combine_(out, weights, vectors, backend=self.backend)
        saved = [p.grad for p in self.params]
        try:
            for p, g in zip(self.params, out):
                p.grad = g
            self.optimizer.step()
        finally:
            for p, g in zip(self.params, saved):
                p.grad = g

    def gram(self, vectors: Sequence[Sequence[Tensor]]) -> Tensor:
        """Gram matrix of gradient vectors in float64 (coefficients are derived from it)."""
        with self.phase("vector_algebra"):
            return self.scaling.unscale_gram(ops.gram(vectors, dtype=torch.float64, backend=self.backend))

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite Gram or weights (see ``grad_scaler``, ``skip_nonfinite``)."""
        return self.scaling.skipped_steps

    def _parts(self, batch: Any) -> list[Any]:
        """The micro-batches a batch is run in (see ``micro_batches`` and :class:`MicroBatches`)."""
        parts = list(batch) if isinstance(batch, MicroBatches) else [batch]
        if self.micro_batches > 1:
            parts = [piece for part in parts for piece in split_batch(part, self.micro_batches)]
        if not parts:
            raise ValueError("MicroBatches holds no batch")
        return parts

    # -- a whole run ---------------------------------------------------------------------------

    def run(
        self,
        forget_loader: Iterable,
        retain_loader: Iterable | None = None,
        *,
        epochs: int = 1,
        steps: int | None = None,
        progress: bool = False,
        log_every: int = 10,
    ) -> History:
        """Runs ``epochs`` passes over the forget loader (or exactly ``steps`` steps), drawing a
        retain batch per step from a restarting retain iterator. Returns the per-step stats.

        With ``progress=True`` a progress bar shows the latest losses; it reads them back from the
        device every ``log_every`` steps (the steps themselves never synchronise).
        """
        records: list[StepStats] = []
        total = steps if steps is not None else epochs * _length(forget_loader)
        with _Progress(type(self).__name__, total, progress, log_every) as bar:
            for epoch in itertools.count():
                if steps is None and epoch >= epochs:
                    break
                self.on_epoch_start(epoch)
                for forget_batch, retain_batch in self.epoch_batches(forget_loader, retain_loader):
                    if steps is not None and len(records) >= steps:
                        break
                    records.append(self.step(forget_batch, retain_batch))
                    bar.advance(records[-1])
                self.on_epoch_end(epoch)
                if steps is not None and len(records) >= steps:
                    break
        return History(records)

    def epoch_batches(self, forget_loader: Iterable, retain_loader: Iterable | None) -> Iterator[tuple[Any, Any]]:
        """(forget, retain) pairs for one epoch: one pass over the forget loader."""
        retain = self._retain_iter(retain_loader)
        for forget_batch in forget_loader:
            yield forget_batch, next(retain) if retain is not None else None

    def _retain_iter(self, retain_loader: Iterable | None) -> Iterator | None:
        if retain_loader is None:
            return None
        if getattr(self, "_retain_source", None) is not retain_loader:
            self._retain_source, self._retain_batches = retain_loader, cycle(retain_loader)
        return self._retain_batches

    def on_epoch_start(self, epoch: int) -> None:
        """Hook: called before each epoch of :meth:`run` (schedules, refreshed targets)."""
        return None

    def on_epoch_end(self, epoch: int) -> None:
        """Hook: called after each epoch of :meth:`run`."""
        return None


def _length(loader: Iterable) -> int:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError("pass steps= for a data loader without a length") from None


class _Progress:
    """A rich progress bar (when asked for) that shows the loss stats every ``log_every`` steps."""

    def __init__(self, name: str, total: int, enabled: bool, log_every: int) -> None:
        self.enabled, self.log_every, self.count = enabled, max(1, log_every), 0
        self.name, self.total = name, total

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import Progress

            self.progress = Progress(*Progress.get_default_columns(), "{task.fields[stats]}")
            self.progress.start()
            self.task = self.progress.add_task(self.name, total=self.total, stats="")
        return self

    def advance(self, stats: StepStats) -> None:
        self.count += 1
        if not self.enabled:
            return
        fields = {}
        if self.count % self.log_every == 0 or self.count == self.total:
            losses = {k: v for k, v in stats.items() if k.endswith("loss")}
            fields["stats"] = "  ".join(f"{k} {float(v):.4g}" for k, v in losses.items())
        self.progress.update(self.task, advance=1, **fields)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.stop()


def pair_stats(gram: Tensor, forget_loss: Tensor, retain_loss: Tensor) -> StepStats:
    """Losses and the geometry of g_f (row 0) against g_r (row 1) from their Gram matrix."""
    dot, f_sq, r_sq = gram[0, 1], gram[0, 0], gram[1, 1]
    return {
        "forget_loss": forget_loss,
        "retain_loss": retain_loss,
        "dot": dot,
        "cosine": dot / (f_sq * r_sq).sqrt().clamp_min(torch.finfo(gram.dtype).tiny),
        "forget_grad_norm": f_sq.sqrt(),
        "retain_grad_norm": r_sq.sqrt(),
    }
