"""One vocabulary chunk of :func:`fastunlearn.token_stats`' online softmax: one program per row.

A program walks its row of the chunk twice in blocks (the maximum and its first index, then the
three exponential sums relative to the new running maximum), with fp32 lane sums that meet in
fp64, and rescales the row's fp64 state (``fastunlearn.reference.token_stats_update_`` is the
specification of the state and of every step).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from fastunlearn.kernels import _support

#: Columns a program reads at once.
BLOCK = 1024
#: The interpreter runs a block as numpy arrays: smaller ones keep the tests quick.
INTERPRETER_BLOCK = 64


@triton.jit
def _update_kernel(
    state,
    best,
    logits,
    targets,
    num_rows,
    width,
    start,
    row_stride,
    col_stride,
    target_stride,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits + row * row_stride
    lanes = tl.arange(0, BLOCK)

    # Per lane the first strictly larger logit, so the smallest index among the lanes holding the
    # maximum is the row's first maximum (0 where every logit is -inf, as torch.max).
    lane_max = tl.full([BLOCK], float("-inf"), tl.float32)
    lane_arg = tl.zeros([BLOCK], tl.int64)
    for offset in range(0, width, BLOCK):
        idx = offset + lanes
        z = tl.load(base + idx.to(tl.int64) * col_stride, mask=idx < width, other=float("-inf")).to(tl.float32)
        better = z > lane_max
        lane_arg = tl.where(better, idx, lane_arg)
        lane_max = tl.where(better, z, lane_max)
    chunk_max = tl.max(lane_max, axis=0)
    chunk_arg = tl.min(tl.where(lane_max == chunk_max, lane_arg, width), axis=0)
    chunk_arg = tl.where(chunk_arg == width, 0, chunk_arg)

    m = tl.load(state + row)
    s = tl.load(state + num_rows + row)
    a = tl.load(state + 2 * num_rows + row)
    b = tl.load(state + 3 * num_rows + row)
    wide_max = chunk_max.to(tl.float64)
    m_new = tl.maximum(m, wide_max)
    previous_best = tl.load(best + row)
    tl.store(best + row, tl.where(wide_max > m, start + chunk_arg, previous_best))
    target = tl.load(targets + row * target_stride)
    in_chunk = (target >= start) & (target < start + width)
    target_logit = tl.load(base + (target - start) * col_stride, mask=in_chunk, other=0.0).to(tl.float32)
    previous_pick = tl.load(state + 4 * num_rows + row)
    tl.store(state + 4 * num_rows + row, tl.where(in_chunk, target_logit.to(tl.float64), previous_pick))

    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    shift32 = shift.to(tl.float32)
    sum_s = tl.zeros([BLOCK], tl.float32)
    sum_a = tl.zeros([BLOCK], tl.float32)
    sum_b = tl.zeros([BLOCK], tl.float32)
    for offset in range(0, width, BLOCK):
        idx = offset + lanes
        z = tl.load(base + idx.to(tl.int64) * col_stride, mask=idx < width, other=float("-inf")).to(tl.float32)
        # A -inf logit becomes -1e30: its e^y is 0 and adds nothing (not 0 * inf = NaN).
        y = z - shift32
        y = tl.where(y < -1e30, -1e30, y)  # not tl.maximum: a NaN logit stays NaN, as in the reference
        e = tl.exp(y)
        ey = e * y
        sum_s += e
        sum_a += ey
        sum_b += ey * y
    chunk_s = tl.sum(sum_s.to(tl.float64), axis=0)
    chunk_a = tl.sum(sum_a.to(tl.float64), axis=0)
    chunk_b = tl.sum(sum_b.to(tl.float64), axis=0)
    # The old sums were relative to m; relative to m_new each exponent gains delta <= 0.
    delta = tl.where(s > 0, m - shift, 0.0)
    scale = tl.exp(delta)
    tl.store(state + 3 * num_rows + row, scale * (b + 2 * delta * a + delta * delta * s) + chunk_b)
    tl.store(state + 2 * num_rows + row, scale * (a + delta * s) + chunk_a)
    tl.store(state + num_rows + row, scale * s + chunk_s)
    tl.store(state + row, m_new)


def token_stats_update_(state: Tensor, best: Tensor, logits: Tensor, start: int, targets: Tensor) -> None:
    """``reference.token_stats_update_`` on one launch of ``N`` programs (validated by the op)."""
    _support.check_device(logits.device)
    num_rows, width = logits.shape
    if num_rows == 0 or width == 0:
        return
    block = INTERPRETER_BLOCK if _support.INTERPRETED else BLOCK
    _update_kernel[(num_rows,)](
        state,
        best,
        logits,
        targets,
        num_rows,
        width,
        start,
        logits.stride(0),
        logits.stride(1),
        targets.stride(0),
        BLOCK=block,
    )
