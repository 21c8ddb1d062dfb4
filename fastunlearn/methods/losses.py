"""Forget losses for language models: NPO and SimNPO, in the form every method takes.

fastunlearn's methods *ascend* their ``forget_loss_fn`` (and FastGRU's default objective is that
ascent), so these return the negative of the papers' losses: ascending them is minimising NPO or
SimNPO. Batches are Hugging Face style dicts (``input_ids``, ``attention_mask``, ``labels`` with
-100 on tokens that do not count).

NPO needs the reference (original) model's sequence NLL of each forget sample. Rather than a second
live model in memory, :func:`with_reference_nll` computes it once, before unlearning, and stores it
in the dataset's items under ``"reference_nll"``, which the loss reads from the batch.

>>> import torch
>>> from fastunlearn.methods.losses import NPOLoss
>>> loss = NPOLoss(beta=0.1)
>>> nll, reference = torch.tensor([2.0, 3.0]), torch.tensor([2.0, 3.0])
>>> round(float(loss.from_nll(nll, reference)), 4)  # -(2/beta) log 2 at the reference: 2/0.1 * log(1/2)
-13.8629
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from fastunlearn.methods._base import evaluating, model_outputs

REFERENCE_KEY = "reference_nll"


#: The keys of a batch the losses here hand to the model; others (a dataset's ``index``, the
#: reference NLL) stay out of its keyword arguments.
MODEL_KEYS = ("input_ids", "attention_mask", "labels")


def _model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {key: batch[key] for key in MODEL_KEYS if key in batch}


def causal_lm_loss(model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
    """``model(input_ids, attention_mask, labels).loss``: the mean token NLL, ignoring any other
    key of the batch (OpenUnlearning's datasets add an ``index``)."""
    loss = model_outputs(model, _model_inputs(batch), "loss")
    if loss is None:
        raise ValueError("the model returned no loss; the batch needs 'labels'")
    return loss


def sequence_nll(model: nn.Module, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Per-sample summed next-token NLL of ``labels`` under ``model(**batch)`` (logits in fp32), and
    the number of tokens each sum counts (keys other than :data:`MODEL_KEYS` are left out)."""
    logits = model_outputs(model, _model_inputs(batch), "logits")
    if logits is None:
        raise ValueError("the model returned no logits; NPO/SimNPO need a causal LM output")
    labels = batch["labels"][..., 1:]
    per_token = F.cross_entropy(
        logits[..., :-1, :].float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
    return per_token.sum(-1), (labels != -100).sum(-1)


class NPOLoss:
    """Negative Preference Optimization (Zhang, Lin, Bai, Mei, arXiv 2404.05868, 2024), negated::

        (2 / beta) * mean_i log sigmoid(beta * (nll_i - reference_nll_i))

    NPO's loss is ``-(2/beta) log sigmoid(-beta log(p_theta / p_ref))`` with ``log(p_theta / p_ref)
    = reference_nll - nll`` (OpenUnlearning's ``compute_dpo_loss`` with losing samples only):
    ascending this raises the forget NLL, fast while it is near the reference, then saturating.
    Batches carry ``reference_nll`` (see :func:`with_reference_nll`)."""

    def __init__(self, beta: float = 0.1) -> None:
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = float(beta)

    def from_nll(self, nll: Tensor, reference: Tensor) -> Tensor:
        return F.logsigmoid(self.beta * (nll - reference.to(nll.dtype))).mean() * (2.0 / self.beta)

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
        if REFERENCE_KEY not in batch:
            raise ValueError(
                f"NPOLoss needs the reference model's NLL in each batch under {REFERENCE_KEY!r}: "
                "build the forget dataset with with_reference_nll(model, dataset) before unlearning"
            )
        nll, _ = sequence_nll(model, batch)
        return self.from_nll(nll, batch[REFERENCE_KEY])


class SimNPOLoss:
    """SimNPO (Fan, Liu, Lin, Jia, Zhang, Mei, Liu, arXiv 2410.07163, 2024), negated: NPO without a
    reference model, on the length-normalised NLL with a margin ``delta``::

        (2 / beta) * mean_i log sigmoid(beta * (nll_i / |y_i| - delta))

    with ``|y_i|`` the number of counted labels (as OpenUnlearning normalises)."""

    def __init__(self, beta: float = 1.0, delta: float = 0.0) -> None:
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta, self.delta = float(beta), float(delta)

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
        nll, _ = sequence_nll(model, batch)
        length = (batch["labels"] != -100).sum(-1).clamp_min(1)
        return F.logsigmoid(self.beta * (nll / length - self.delta)).mean() * (2.0 / self.beta)


class _WithReference(Dataset):
    def __init__(self, dataset: Dataset, reference: Tensor) -> None:
        self.dataset, self.reference = dataset, reference

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], REFERENCE_KEY: self.reference[index]}


@torch.no_grad()
def with_reference_nll(
    model: nn.Module,
    dataset: Dataset,
    *,
    collate_fn: Callable[[Sequence], Mapping[str, Tensor]] | None = None,
    batch_size: int = 8,
) -> Dataset:
    """``dataset`` whose items also hold ``reference_nll``: the sequence NLL of each item under
    ``model`` as it is now (eval mode), computed once in batches of ``batch_size``."""
    if collate_fn is None:
        from torch.utils.data import default_collate as collate_fn
    device = next(model.parameters()).device
    sums = []
    with evaluating(model):
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn):
            batch = {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}
            sums.append(sequence_nll(model, batch)[0].cpu())
    return _WithReference(dataset, torch.cat(sums) if sums else torch.zeros(0))
