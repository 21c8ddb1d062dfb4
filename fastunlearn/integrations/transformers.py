"""fastunlearn's methods inside a Hugging Face ``transformers.Trainer`` (extra ``fastunlearn[hf]``).

:class:`UnlearnTrainer` takes batches of OpenUnlearning's shape, ``{"forget": {...}, "retain":
{...}}`` (each side the model's keyword arguments, ``labels`` included), and runs one unlearning
method per optimizer step:

* **gradient accumulation** -- the micro-batches of a ``gradient_accumulation_steps`` window are
  kept (their inputs only) until the window's last one; then the method runs forward + backward
  on each, accumulating the forget and retain gradients (each loss weighted by its share of the
  samples), and its vector algebra once: the projection is that of the whole window's gradients.
* ``max_grad_norm`` clips the combined update ``d = sum_k w_k g_k`` from the step's Gram
  (``|d|^2 = w^T G w``) before the optimizer; the Trainer's ``grad_norm`` column is ``|d|``.
* the optimizer: ``optim="adamw_torch_fused"`` (the default), ``"adamw_torch"`` or ``"sgd"`` becomes the fused
  :class:`fastunlearn.optim.AdamW`/``SGD`` with the Trainer's hyper-parameters and param groups,
  stepping along ``d`` without writing it; any other optimizer gets ``d`` through ``.grad``.
* bf16/fp16 autocast as the Trainer sets it up; with fp16's loss scaling the unscale is folded
  into the weights and a non-finite Gram skips the step and backs the scale off. Without a scaler a
  non-finite step is skipped as well (one bool read back per step).
* LoRA / PEFT (only trainable parameters are part of a gradient), gradient checkpointing,
  accelerate's DDP, and models sharded with FSDP2 at load time (``from_pretrained(...,
  distributed_config=...)``; the gradients stay DTensor shards). ``nabla_tau`` and
  ``decouple_retain`` run on one process (they decide from a rank's own losses).
* the method's stats (forget/retain loss, cosine, coefficient, ...) are summed on the device and
  logged, averaged, at ``logging_steps`` -- the only time they are read back. The Trainer's own
  ``loss`` column is the forget loss (the retain loss for methods without one).

>>> from fastunlearn.integrations.transformers import method_names
>>> method_names()
['decouple_retain', 'grad_ascent', 'grad_diff', 'gru', 'nabla_tau', 'pcgrad', 'surgery']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from torch.utils.data import Dataset

from fastunlearn import methods, optim
from fastunlearn.methods import MicroBatches, StepStats, UnlearningMethod

__all__ = ["ForgetRetainCollator", "ForgetRetainDataset", "UnlearnTrainer", "method_names"]

_SIDES = frozenset({"forget", "retain"})

_METHODS: dict[str, type[UnlearningMethod]] = {
    "surgery": methods.GradientSurgery,
    "gru": methods.FastGRU,
    "nabla_tau": methods.NablaTau,
    "decouple_retain": methods.DecoupleRetain,
    "grad_ascent": methods.GradientAscent,
    "grad_diff": methods.GradientDifference,
    "pcgrad": methods.PCGradUnlearn,
}


def method_names() -> list[str]:
    """The names ``UnlearnTrainer(method=...)`` takes."""
    return sorted(_METHODS)


class ForgetRetainDataset(Dataset):
    """Pairs two datasets: item ``i`` is ``{"forget": forget[i], "retain": retain[j]}`` with ``j``
    drawn at random, so an epoch is one pass over the forget set (``anchor="forget"``,
    OpenUnlearning's default) or over the retain set (``anchor="retain"``, the forget side then
    drawn). The draw uses torch's global generator, which the Trainer seeds and DataLoader workers
    re-seed per worker and epoch (a generator of its own would repeat in every worker)."""

    def __init__(self, forget: Dataset, retain: Dataset, *, anchor: str = "forget") -> None:
        if anchor not in ("forget", "retain"):
            raise ValueError(f"anchor must be 'forget' or 'retain', got {anchor!r}")
        if len(forget) == 0 or len(retain) == 0:
            raise ValueError("both the forget and the retain dataset need at least one sample")
        self.forget, self.retain, self.anchor = forget, retain, anchor

    def __len__(self) -> int:
        return len(self.forget if self.anchor == "forget" else self.retain)

    def __getitem__(self, index: int) -> dict[str, Any]:
        other = self.retain if self.anchor == "forget" else self.forget
        drawn = other[int(torch.randint(len(other), ()))]
        anchored = (self.forget if self.anchor == "forget" else self.retain)[index]
        if self.anchor == "forget":
            return {"forget": anchored, "retain": drawn}
        return {"forget": drawn, "retain": anchored}


class ForgetRetainCollator:
    """Collates ``{"forget": item, "retain": item}`` samples side by side with ``collate_fn``
    (``transformers.default_data_collator`` by default; pass a padding collator for ragged text).
    Unpaired samples (an evaluation dataset) are collated by ``collate_fn`` as they are."""

    def __init__(self, collate_fn: Callable[[list], Any] | None = None) -> None:
        self.collate_fn = collate_fn or transformers.default_data_collator

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not all(isinstance(sample, Mapping) and _SIDES <= sample.keys() for sample in samples):
            return self.collate_fn(samples)
        return {side: self.collate_fn([sample[side] for sample in samples]) for side in _SIDES}


# Methods whose step reads a scalar of the rank's own batches (not all-reduced by DDP).
_PER_RANK_DECISIONS = (methods.NablaTau, methods.DecoupleRetain)

_FUSED_OPTIMIZERS: dict[str, Callable[[transformers.TrainingArguments], tuple[type, dict]]] = {
    "adamw_torch": lambda args: (
        optim.AdamW,
        {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon},
    ),
    "sgd": lambda args: (optim.SGD, {"lr": args.learning_rate}),
}
_FUSED_OPTIMIZERS["adamw_torch_fused"] = _FUSED_OPTIMIZERS["adamw_torch"]


class UnlearnTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` whose every optimizer step is one step of a fastunlearn method.

    ``method``: a name from :func:`method_names` (``"surgery"`` is Gradient Surgery, ``"gru"``
    :class:`~fastunlearn.methods.FastGRU`, ...) or an :class:`~fastunlearn.methods.UnlearningMethod`
    subclass; ``method_args``: its keyword arguments (``loss_fn``/``forget_loss_fn`` included, e.g.
    an NPO loss; ``nabla_tau`` needs ``val_loader``). The method is built on the first step, on the
    Trainer's model, optimizer, ``max_grad_norm`` and loss scaler. Everything else -- data loading,
    schedulers, logging, checkpoints, evaluation on ordinary (unpaired) datasets -- is the Trainer's.

    ``train_dataset`` yields paired samples (:class:`ForgetRetainDataset`); the default collator is
    :class:`ForgetRetainCollator`.
    """

    def __init__(
        self,
        *args: Any,
        method: str | type[UnlearningMethod] = "surgery",
        method_args: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(method, str):
            if method not in _METHODS:
                raise ValueError(f"unknown method {method!r}; expected one of {method_names()}")
            method = _METHODS[method]
        elif not (isinstance(method, type) and issubclass(method, UnlearningMethod)):
            raise TypeError(f"method must be a name or an UnlearningMethod subclass, got {method!r}")
        kwargs.setdefault("data_collator", ForgetRetainCollator())
        super().__init__(*args, **kwargs)
        self.method_cls, self.method_args = method, dict(method_args or {})
        #: The unlearning method (built on the first training step).
        self.unlearning: UnlearningMethod | None = None
        self._window: list[tuple[Any, Any]] = []
        self._stat_sums: dict[str, Tensor] = {}
        self._stat_counts: dict[str, int] = {}
        self._epoch: int | None = None

    def _set_signature_columns_if_needed(self) -> None:
        # ``remove_unused_columns`` keeps only the model's argument names; the paired sides pass too.
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *sorted(_SIDES - set(self._signature_columns))]

    # -- optimizer -------------------------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        # torch's AdamW/SGD would get the update through .grad; the fused ones form it in the step.
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None:
            fused = _FUSED_OPTIMIZERS.get(getattr(self.args.optim, "value", str(self.args.optim)))
            if fused is not None:
                self.optimizer_cls_and_kwargs = fused(self.args)
        return super().create_optimizer(model)

    def _build_method(self, model: nn.Module) -> UnlearningMethod:
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # under accelerate's wrapper
        kwargs: dict[str, Any] = {
            "max_grad_norm": self.args.max_grad_norm if self.args.max_grad_norm else None,
            "grad_scaler": self.accelerator.scaler,
            "skip_nonfinite": True,
        }
        if self.accelerator.scaler is not None:
            # The method unscales through its weights; accelerate's step would look for it in .grad.
            self.optimizer.scaler = None
        if issubclass(self.method_cls, _PER_RANK_DECISIONS) and self.accelerator.num_processes > 1:
            raise ValueError(
                f"{self.method_cls.__name__} decides from each rank's own forget loss or outputs (its weight, "
                "its stopping test), so ranks given different batches would step apart; run it on one process"
            )
        if issubclass(self.method_cls, methods.DecoupleRetain):
            kwargs["retain_optimizer"] = optimizer  # phase 1 is the paper's clipped SGD ascent
        else:
            kwargs["optimizer"] = optimizer
        kwargs.update(self.method_args)
        method = self.method_cls(model, **kwargs)
        if isinstance(method, methods.NablaTau):  # its alpha decays over the run's epochs
            method.epochs = max(1, math.ceil(self.state.num_train_epochs))
        return method

    # -- one step --------------------------------------------------------------------------------

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Tensor | int | None = None
    ) -> Tensor:
        """Keeps the micro-batch; at the window's last one, runs the method's step on all of them."""
        if not isinstance(inputs, Mapping) or not {"forget", "retain"} <= inputs.keys():
            raise ValueError(
                "UnlearnTrainer takes batches {'forget': {...}, 'retain': {...}}; build the dataset with "
                "ForgetRetainDataset(forget, retain) (its collator is the default)"
            )
        model.train()
        inputs = self._prepare_inputs(inputs)
        self._window.append((inputs["forget"], inputs["retain"]))
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        window, self._window = self._window, []
        if self.unlearning is None:
            self.unlearning = self._build_method(model)
        self._start_epoch()
        skipped = self.unlearning.skipped_steps
        with self.compute_loss_context_manager():
            stats = self.unlearning.train_step(
                MicroBatches(forget for forget, _ in window), MicroBatches(retain for _, retain in window)
            )
        self._record(stats)
        if getattr(self.optimizer, "_is_overflow", None) is not None:
            # accelerate's flag behind optimizer_step_was_skipped: a skipped step holds the scheduler too.
            self.optimizer._is_overflow = self.unlearning.skipped_steps > skipped
        loss = stats["forget_loss"] if "forget_loss" in stats else stats["retain_loss"]
        return loss.detach().float().to(self.args.device)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint:
            raise ValueError(
                "resuming an unlearning run is not supported: the method's state (FastGRU's average, the "
                "tau of NablaTau, DecoupleRetain's phase) is not part of the Trainer's checkpoint"
            )
        self._window = []  # a run stopped inside a window leaves no micro-batch to the next one
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _start_epoch(self) -> None:
        epoch = int(self.state.epoch or 0)
        if epoch != self._epoch:
            if self._epoch is not None:
                self.unlearning.on_epoch_end(self._epoch)
            self.unlearning.on_epoch_start(epoch)
            self._epoch = epoch

    # The Trainer would clip and measure .grad, which the method never fills: the method clipped the
    # update from its Gram already, and its norm is the grad_norm to log (a device tensor, read at
    # logging_steps only).
    def _clip_grad_norm(self, model: nn.Module) -> Tensor | None:
        return self.unlearning.update_norm if self.unlearning is not None else None

    def _get_grad_norm(self, model: nn.Module, grad_norm: Tensor | None = None) -> Tensor | None:
        return grad_norm

    # -- logging ---------------------------------------------------------------------------------

    def _record(self, stats: StepStats) -> None:
        for key, value in stats.items():
            if isinstance(value, Tensor) and value.dim() == 0:
                value = value.detach().double()
                self._stat_sums[key] = self._stat_sums[key] + value if key in self._stat_sums else value
                self._stat_counts[key] = self._stat_counts.get(key, 0) + 1

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds the mean of each method stat over the steps that gave it since the last log (one read
        back for all of them); a stat named like a Trainer column (DecoupleRetain's ``grad_norm``)
        is logged as ``method_<name>``."""
        if self._stat_sums and "loss" in logs:
            keys = list(self._stat_sums)
            counts = torch.tensor([self._stat_counts[key] for key in keys], dtype=torch.float64)
            sums = torch.stack([self._stat_sums[key] for key in keys])
            means = (sums / counts.to(sums.device)).tolist()
            logs = {**logs, **{(f"method_{key}" if key in logs else key): m for key, m in zip(keys, means)}}
            if self.unlearning is not None and self.unlearning.skipped_steps:
                logs["skipped_steps"] = self.unlearning.skipped_steps
            self._stat_sums, self._stat_counts = {}, {}
        super().log(logs, *args, **kwargs)
