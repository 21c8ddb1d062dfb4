"""Per-token statistics of a language model's next-token distribution, never materialising it.

Membership-inference scores (LOSS, Min-K%, Min-K%++) and entropy need, for each token, a few
moments of ``log p`` over the whole vocabulary. The usual code builds ``log_softmax`` of the full
``[B, T, V]`` logits (at batch 8 x 2048 tokens and a 128k vocabulary: 2.1e9 elements). Here the
vocabulary is walked in chunks with an online softmax: a running maximum ``m`` and, relative to it,
``s = sum e^(z-m)``, ``a = sum e^(z-m) (z-m)`` and ``b = sum e^(z-m) (z-m)^2``, rescaled when the
maximum moves. Per token that gives

* ``logsumexp = m + log s`` and ``target_logprob = z_target - logsumexp``;
* ``mean_logprob = E_p[log p] = a/s - log s`` (``entropy`` is its negative);
* ``var_logprob = Var_p[log p] = b/s - (a/s)^2`` (Min-K%++'s variance);
* ``correct``: whether the (first) argmax is the target.

Memory beyond the inputs is ``O(rows_per_block x chunk_size)`` for the logits of one block and
``O(tokens)`` for the results. Logits are formed in fp32 (bf16/fp16 inputs included), summed in
fp32 within a chunk and in fp64 across chunks. A logit of -inf (a masked token) counts as
probability 0. Indices are int64 throughout, so ``tokens x vocabulary`` may pass 2^31.

>>> import torch, fastunlearn as fu
>>> logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])  # a uniform distribution over 4 tokens
>>> stats = fu.token_stats_from_logits(logits, torch.tensor([2]))
>>> round(float(stats.target_logprob), 4), round(float(stats.entropy), 4), float(stats.var_logprob)
(-1.3863, 1.3863, 0.0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

DEFAULT_CHUNK = 8192
DEFAULT_ROWS = 1024

__all__ = ["TokenStats", "token_stats", "token_stats_from_logits"]


class TokenStats(NamedTuple):
    """Per-token statistics, each shaped like the targets (float32; ``correct`` bool). Tokens whose
    target is ``ignore_index`` hold 0 (``correct`` False): use ``targets != ignore_index`` as mask."""

    target_logprob: Tensor
    logsumexp: Tensor
    mean_logprob: Tensor
    var_logprob: Tensor
    entropy: Tensor
    correct: Tensor


@torch.no_grad()
def token_stats(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int = DEFAULT_CHUNK,
    rows_per_block: int = DEFAULT_ROWS,
) -> TokenStats:
    """Statistics of ``softmax(hidden @ weight.T + bias)`` per token, for an LM head ``weight``
    ``[V, H]`` and ``hidden`` ``[..., H]`` with ``targets`` ``[...]`` (already aligned: the target
    of each row is the token that row predicts -- for a causal LM, ``hidden[:, :-1]`` with
    ``labels[:, 1:]``). The ``[..., V]`` logits are formed ``rows_per_block x chunk_size`` at a time.
    The statistics are measurements, not losses: no autograd graph is built (a graph would keep
    every chunk alive)."""
    if hidden.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}: need [..., H] and [V, H]")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    rows = hidden.reshape(-1, hidden.shape[-1])

    def logits(block: slice, start: int, stop: int) -> Tensor:
        z = rows[block].float() @ weight[start:stop].float().T
        return z if bias is None else z + bias[start:stop].float()

    return _stats(logits, rows.shape[0], weight.shape[0], targets, hidden.shape[:-1], ignore_index, chunk_size,
                  rows_per_block)  # fmt: skip


@torch.no_grad()
def token_stats_from_logits(
    logits: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    chunk_size: int = DEFAULT_CHUNK,
    rows_per_block: int = DEFAULT_ROWS,
) -> TokenStats:
    """The same statistics from logits ``[..., V]`` already computed (read a chunk at a time, in fp32)."""
    rows = logits.reshape(-1, logits.shape[-1])
    return _stats(
        # a copy: the pass works in place on the chunk
        lambda block, start, stop: rows[block, start:stop].to(torch.float32, copy=True), rows.shape[0],
        logits.shape[-1], targets,
        logits.shape[:-1], ignore_index, chunk_size, rows_per_block,
    )  # fmt: skip


def _stats(
    logits: Callable[[slice, int, int], Tensor],
    num_rows: int,
    vocab: int,
    targets: Tensor,
    shape: torch.Size,
    ignore_index: int,
    chunk_size: int,
    rows_per_block: int,
) -> TokenStats:
    if tuple(targets.shape) != tuple(shape):
        raise ValueError(f"targets {tuple(targets.shape)} must match the rows {tuple(shape)}")
    if targets.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"targets must be int32/int64 token ids, got {targets.dtype}")
    if chunk_size < 1 or rows_per_block < 1 or vocab < 1:
        raise ValueError("chunk_size, rows_per_block and the vocabulary size must be >= 1")
    flat = targets.reshape(-1).long()
    valid = flat != ignore_index
    # One host read per call: a target outside the vocabulary would otherwise read as probability 0.
    if bool((valid & ((flat < 0) | (flat >= vocab))).any()):
        raise ValueError(f"targets must be in [0, {vocab}) or ignore_index ({ignore_index})")
    out = torch.zeros(5, num_rows, dtype=torch.float64, device=flat.device)
    correct = torch.zeros(num_rows, dtype=torch.bool, device=flat.device)
    for first in range(0, num_rows, rows_per_block):
        block = slice(first, min(first + rows_per_block, num_rows))
        _block_stats(logits, block, vocab, flat[block], valid[block], chunk_size, out[:, block], correct[block])
    stats = [row.float().reshape(shape) for row in out]
    return TokenStats(*stats, correct.reshape(shape))


def _block_stats(logits, block, vocab, target, valid, chunk_size, out, correct) -> None:
    """One block of rows: an online pass over the vocabulary chunks; writes ``out`` [5, rows]."""
    m = s = a = b = best_index = picked = None
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    for start in range(0, vocab, chunk_size):
        stop = min(start + chunk_size, vocab)
        z = logits(block, start, stop)  # [rows, chunk] fp32
        chunk_max, chunk_arg = z.max(dim=1)
        chunk_max = chunk_max.double()
        in_chunk = (safe_target >= start) & (safe_target < stop)
        local = (safe_target - start).clamp(0, stop - start - 1)
        chunk_picked = z.gather(1, local[:, None])[:, 0].double()
        if m is None:
            m_new = chunk_max
            best_index = chunk_arg + start
            picked = torch.where(in_chunk, chunk_picked, torch.zeros_like(chunk_picked))
        else:
            m_new = torch.maximum(m, chunk_max)
            better = chunk_max > m  # strictly: the first maximum wins, as argmax's
            best_index = torch.where(better, chunk_arg + start, best_index)
            picked = torch.where(in_chunk, chunk_picked, picked)
        # Rows whose logits so far are all -inf (masked) shift by 0: their sums stay 0.
        shift = torch.where(torch.isneginf(m_new), 0.0, m_new)
        # y = z - shift <= 0, in z's buffer; a -inf logit (a masked token) becomes -1e30, whose
        # e^y is 0 and adds nothing (not 0 * inf = NaN) to the sums.
        y = z.sub_(shift.float()[:, None]).clamp_(min=-1e30)
        e = torch.exp(y)
        # Within a chunk the sums are fp32 (terms in [0, 1] times |y|); across chunks fp64.
        chunk_s = e.sum(1).double()
        chunk_a = e.mul_(y).sum(1).double()
        chunk_b = e.mul_(y).sum(1).double()
        if m is None:
            s, a, b = chunk_s, chunk_a, chunk_b
        else:
            # Old sums are relative to m; relative to m_new each (z - m) gains delta = m - m_new <= 0
            # (0 where nothing was summed yet, m possibly -inf).
            delta = torch.where(s > 0, m - shift, 0.0)
            scale = torch.exp(delta)
            s, a, b = (
                scale * s + chunk_s,
                scale * (a + delta * s) + chunk_a,
                scale * (b + 2 * delta * a + delta * delta * s) + chunk_b,
            )
        m = m_new
    log_s = torch.log(s)
    mean_shifted = a / s
    lse = m + log_s
    zero = torch.zeros_like(lse)
    out[0] = torch.where(valid, picked - lse, zero)
    out[1] = torch.where(valid, lse, zero)
    out[2] = torch.where(valid, mean_shifted - log_s, zero)
    out[3] = torch.where(valid, (b / s - mean_shifted * mean_shifted).clamp_min(0.0), zero)
    out[4] = torch.where(valid, log_s - mean_shifted, zero)
    correct.copy_(valid & (best_index == target))
