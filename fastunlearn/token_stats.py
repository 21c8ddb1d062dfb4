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

Each chunk of a block of rows is one call of ``torch.ops.fastunlearn.token_stats_update_``, on the
backend chosen as for every op (``backend=``, ``FASTUNLEARN_BACKEND``; ``auto``: the C++ kernel on
CPU, Triton on CUDA); ``fastunlearn.reference.token_stats_update_`` is its specification. The
C++ kernel reads a row of the chunk twice while it is in cache (the maximum, then the sums); the
torch reference makes about ten passes over the block.

>>> import torch, fastunlearn as fu
>>> logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])  # a uniform distribution over 4 tokens
>>> stats = fu.token_stats_from_logits(logits, torch.tensor([2]))
>>> round(float(stats.target_logprob), 4), round(float(stats.entropy), 4), float(stats.var_logprob)
(-1.3863, 1.3863, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from fastunlearn import _backend

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
    backend: str | None = None,
) -> TokenStats:
    """Statistics of ``softmax(hidden @ weight.T + bias)`` per token, for an LM head ``weight``
    ``[V, H]`` and ``hidden`` ``[..., H]`` with ``targets`` ``[...]`` (already aligned: the target
    of each row is the token that row predicts -- for a causal LM, ``hidden[:, :-1]`` with
    ``labels[:, 1:]``). The ``[..., V]`` logits are formed ``rows_per_block x chunk_size`` at a time.
    The statistics are measurements, not losses: no autograd graph is built (a graph would keep
    every chunk alive). ``backend`` picks the kernel of each chunk, as for every op (None: ``auto``)."""
    if hidden.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}: need [..., H] and [V, H]")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    rows = hidden.reshape(-1, hidden.shape[-1])

    def chunk(start: int, stop: int) -> Callable[[slice], Tensor]:
        # The head's chunk in fp32 once, for every block of rows (a bf16 head is not converted per block).
        w = weight[start:stop].float().T
        b = None if bias is None else bias[start:stop].float()
        return lambda block: rows[block].float() @ w if b is None else rows[block].float() @ w + b

    return _stats(chunk, rows.shape[0], weight.shape[0], targets, hidden.shape[:-1], ignore_index, chunk_size,
                  rows_per_block, backend)  # fmt: skip


@torch.no_grad()
def token_stats_from_logits(
    logits: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    chunk_size: int = DEFAULT_CHUNK,
    rows_per_block: int = DEFAULT_ROWS,
    backend: str | None = None,
) -> TokenStats:
    """The same statistics from logits ``[..., V]`` already computed (read a chunk at a time, in fp32)."""
    rows = logits.reshape(-1, logits.shape[-1])
    return _stats(
        lambda start, stop: lambda block: rows[block, start:stop], rows.shape[0], logits.shape[-1], targets,
        logits.shape[:-1], ignore_index, chunk_size, rows_per_block, backend,
    )  # fmt: skip


def _stats(
    chunk_logits: Callable[[int, int], Callable[[slice], Tensor]],
    num_rows: int,
    vocab: int,
    targets: Tensor,
    shape: torch.Size,
    ignore_index: int,
    chunk_size: int,
    rows_per_block: int,
    backend: str | None,
) -> TokenStats:
    if tuple(targets.shape) != tuple(shape):
        raise ValueError(f"targets {tuple(targets.shape)} must match the rows {tuple(shape)}")
    if targets.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"targets must be int32/int64 token ids, got {targets.dtype}")
    if chunk_size < 1 or rows_per_block < 1 or vocab < 1:
        raise ValueError("chunk_size, rows_per_block and the vocabulary size must be >= 1")
    device = targets.device
    name = _backend.resolve_token_stats(backend, device)
    _backend.require_native()
    flat = targets.reshape(-1).long()
    valid = flat != ignore_index
    # One host read per call: a target outside the vocabulary would otherwise read as probability 0.
    if bool((valid & ((flat < 0) | (flat >= vocab))).any()):
        raise ValueError(f"targets must be in [0, {vocab}) or ignore_index ({ignore_index})")
    # -1 is in no chunk: an ignored token picks no logit.
    picked_target = torch.where(valid, flat, -1)
    out = torch.zeros(5, num_rows, dtype=torch.float64, device=device)
    correct = torch.zeros(num_rows, dtype=torch.bool, device=device)
    update = torch.ops.fastunlearn.token_stats_update_
    blocks = [slice(first, min(first + rows_per_block, num_rows)) for first in range(0, num_rows, rows_per_block)]
    states = []
    for block in blocks:
        state = torch.zeros(5, block.stop - block.start, dtype=torch.float64, device=device)
        state[0] = -math.inf
        states.append((state, torch.zeros(block.stop - block.start, dtype=torch.int64, device=device)))
    # Chunk by chunk, each block of rows: a chunk's logits are formed rows_per_block x chunk_size at a time.
    for start in range(0, vocab, chunk_size):
        logits = chunk_logits(start, min(start + chunk_size, vocab))
        for block, (state, best) in zip(blocks, states):
            update(state, best, logits(block), start, picked_target[block], name)
    for block, (state, best) in zip(blocks, states):
        _finish(state, best, flat[block], valid[block], out[:, block], correct[block])
    stats = [row.float().reshape(shape) for row in out]
    return TokenStats(*stats, correct.reshape(shape))


def _finish(state: Tensor, best: Tensor, target: Tensor, valid: Tensor, out: Tensor, correct: Tensor) -> None:
    """The statistics of a block of rows from its online-softmax state; writes ``out`` [5, rows]."""
    m, s, a, b, picked = state
    log_s = torch.log(s)
    mean_shifted = a / s
    lse = m + log_s
    zero = torch.zeros_like(lse)
    out[0] = torch.where(valid, picked - lse, zero)
    out[1] = torch.where(valid, lse, zero)
    out[2] = torch.where(valid, mean_shifted - log_s, zero)
    out[3] = torch.where(valid, (b / s - mean_shifted * mean_shifted).clamp_min(0.0), zero)
    out[4] = torch.where(valid, log_s - mean_shifted, zero)
    correct.copy_(valid & (best == target))
