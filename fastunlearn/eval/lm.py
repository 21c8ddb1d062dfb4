"""Language-model unlearning metrics on :func:`fastunlearn.token_stats`: membership scores, their
AUC and TPR at low FPR, privacy leakage against a retrained model, answer probability and accuracy.

Every score is oriented so that higher means "more likely a member (trained on)":

* ``loss`` -- minus the mean token NLL (Yeom, Giacomelli, Fredrikson, Jha, CSF 2018);
* ``zlib`` -- minus the ratio of the mean token NLL to the zlib-compressed length of the text in
  bytes (Carlini et al., USENIX Security 2021, "Extracting Training Data from Large Language
  Models"; needs the texts);
* ``min_k`` -- the mean log-probability of the ``k`` fraction of tokens with the lowest ones
  (Min-K%, Shi et al., ICLR 2024, "Detecting Pretraining Data from Large Language Models");
* ``min_k_plus_plus`` -- the same mean over the per-token ``(log p(x_t) - mu_t) / sigma_t``, with
  ``mu_t, sigma_t^2`` the mean and variance of ``log p`` under the model's next-token
  distribution (Min-K%++, Zhang et al., ICLR 2025).

Both Min-K scores take ``max(1, floor(k * n))`` of a sequence's ``n`` counted tokens.

>>> import torch
>>> from fastunlearn.eval import lm
>>> lm.auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 3.0]))  # P(member > non-member), ties half
0.875
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fastunlearn.token_stats import TokenStats, token_stats

__all__ = [
    "answer_metrics",
    "auc",
    "causal_lm_stats",
    "materialised_stats",
    "membership_scores",
    "privleak",
    "tpr_at_fpr",
]


@torch.no_grad()
def causal_lm_stats(model: nn.Module, batch: Mapping[str, Tensor], **kwargs: Any) -> tuple[TokenStats, Tensor]:
    """Token statistics of a Hugging Face causal LM on ``batch`` (``input_ids``, ``attention_mask``,
    ``labels`` with -100 on tokens that do not count): the decoder's last hidden states against the
    LM head's weight, never the ``[B, T, V]`` logits. Returns the stats of positions ``1..T-1``
    (each predicted from the one before) and their mask ``[B, T-1]``. The head must be a plain
    linear layer (no logit soft-capping or scaling, no adapter on it)."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask") if key in batch}
    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    labels = batch["labels"][:, 1:]
    stats = token_stats(hidden[:, :-1], head.weight, labels, bias=getattr(head, "bias", None), **kwargs)
    return stats, labels != kwargs.get("ignore_index", -100)


def materialised_stats(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """What membership-inference code does today, for comparison: the full ``log_softmax`` of
    ``[..., V]`` logits, then the target's log p, ``E_p[log p]`` and ``Var_p[log p]``."""
    logp = logits.float().log_softmax(-1)
    p = logp.exp()
    mean = (p * logp).sum(-1)
    return logp.gather(-1, targets[..., None])[..., 0], mean, (p * logp.square()).sum(-1) - mean.square()


def _lowest_k_mean(values: Tensor, mask: Tensor, k: float) -> Tensor:
    """Per row, the mean of the ``max(1, floor(k * n))`` smallest of the ``n`` masked values."""
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")
    counts = mask.sum(1)
    if bool((counts == 0).any()):
        raise ValueError("every sequence needs at least one counted token")
    ordered = torch.where(mask, values.double(), torch.inf).sort(1).values
    take = torch.clamp((counts.double() * k).floor().long(), min=1)
    chosen = torch.arange(values.shape[1], device=values.device)[None, :] < take[:, None]
    return torch.where(chosen, ordered, 0.0).sum(1) / take


def membership_scores(
    stats: TokenStats, mask: Tensor, *, k: float = 0.2, texts: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Per-sequence scores (``[B]``, float64, higher = member): ``loss``, ``min_k``,
    ``min_k_plus_plus`` and, given the ``texts``, ``zlib``."""
    mask = mask.bool()
    logp = stats.target_logprob.double()
    counts = mask.sum(1)
    nll = -torch.where(mask, logp, 0.0).sum(1) / counts  # _lowest_k_mean refuses rows without a token
    normalised = (logp - stats.mean_logprob.double()) / stats.var_logprob.double().clamp_min(1e-12).sqrt()
    scores = {
        "loss": -nll,
        "min_k": _lowest_k_mean(logp, mask, k),
        "min_k_plus_plus": _lowest_k_mean(normalised, mask, k),
    }
    if texts is not None:
        if len(texts) != len(nll):
            raise ValueError(f"{len(texts)} texts for {len(nll)} sequences")
        zlib_bytes = torch.tensor([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=torch.float64)
        scores["zlib"] = -nll / zlib_bytes.to(nll.device)
    return scores


def auc(members: Tensor, nonmembers: Tensor) -> float:
    """Area under the ROC curve of telling members (positives) from non-members by score: the
    probability that a member scores above a non-member, ties counted half (Mann-Whitney)."""
    x, y = members.double().flatten(), nonmembers.double().flatten()
    if not len(x) or not len(y):
        raise ValueError("need at least one member and one non-member score")
    greater = (x[:, None] > y[None, :]).double().mean()
    ties = (x[:, None] == y[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def tpr_at_fpr(members: Tensor, nonmembers: Tensor, fpr: float) -> float:
    """The largest true-positive rate of a threshold rule ``score >= t`` whose false-positive rate
    is at most ``fpr`` (as read off the ROC curve, without interpolation)."""
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    x, y = members.double().flatten(), nonmembers.double().flatten()
    if not len(x) or not len(y):
        raise ValueError("need at least one member and one non-member score")
    thresholds = torch.cat([torch.tensor([torch.inf], dtype=torch.float64), torch.cat([x, y]).unique()])
    tpr = (x[None, :] >= thresholds[:, None]).double().mean(1)
    false = (y[None, :] >= thresholds[:, None]).double().mean(1)
    return float(tpr[false <= fpr].max())


def privleak(auc_unlearned: float, auc_retrained: float) -> float:
    """MUSE's privacy leakage (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation"), in
    percent: ``(AUC_unlearned - AUC_retrained) / AUC_retrained * 100`` for the forget set against
    held-out data. 0 is a retrained model; positive means under-unlearned, negative over-unlearned."""
    return (auc_unlearned - auc_retrained) / auc_retrained * 100.0


def answer_metrics(stats: TokenStats, answer_mask: Tensor) -> dict[str, Tensor]:
    """On question-answer sequences, over the answer tokens (``answer_mask``, aligned with the
    stats): ``probability`` ``P(answer | question)^(1/|answer|)`` (TOFU's length-normalised
    probability), ``accuracy`` whether every answer token is the model's argmax (teacher-forced
    exact match) and ``token_accuracy`` the share that is; each ``[B]``."""
    mask = answer_mask.bool()
    counts = mask.sum(1)
    if bool((counts == 0).any()):
        raise ValueError("every sequence needs at least one answer token")
    mean_logp = torch.where(mask, stats.target_logprob.double(), 0.0).sum(1) / counts
    right = (stats.correct & mask).sum(1)
    return {"probability": mean_logp.exp(), "accuracy": (right == counts).double(), "token_accuracy": right / counts}
