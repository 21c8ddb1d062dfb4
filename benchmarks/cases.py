"""Inputs and peer implementations shared by the benchmark suite and the README table.

Peers, on the same inputs:
  fastunlearn  -- the public ops (backend "cpp" on CPU)
  reference.py -- the same ops on the pure-PyTorch backend ("torch")
  cat          -- torch.cat-flatten code as public PCGrad / surgery implementations write it,
                  with their .item() reads: fastunlearn.flatten_reference (shared with the profiler,
                  the showcase and the demo), built on here for the ops only the benchmarks compare
  composition  -- the best pure-PyTorch composition: per-shard torch.dot, torch._foreach_* updates
  stacked      -- (pcgrad_ only) torchjd-style "stack then aggregate": the K flattened gradients
                  stacked into a K x N matrix J, Gram J @ J.T, PCGrad weights w, result w @ J

report.py and test_bench_ops.py use the K=2 pair builders; sweep.py uses the K-vector builders
(`make_vectors`, `llama_shapes`, `equal_shapes`, `peers`) and `min_bytes_per_element`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

import fastunlearn as fu
from fastunlearn import flatten_reference

# Bytes per element each op must move at the least, fp32 (DESIGN.md's roofline).
ROOFLINE_BYTES = {"gram": 8, "project_": 20, "pcgrad_": 20, "surgery_step": 32}

SHAPES = {
    # ~157M parameters in LLaMA-7B-like shards.
    "llama150m": [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096,)] * 8,
    "quick16m": [(2048, 2048)] * 3 + [(1024, 4096)] + [(4096,)] * 8,
}


def make_pair(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen) for s in shapes] for _ in range(2)]


def numel(vector):
    return sum(s.numel() for s in vector)


def cyclic_order(k: int) -> Tensor:
    """A fixed PCGrad order: task i meets i+1, i+2, ... (mod K), itself last. K=2: [[1, 0], [0, 1]]."""
    return torch.tensor([[(i + 1 + t) % k for t in range(k)] for i in range(k)])


_ORDER = cyclic_order(2)


# --- torch.cat-flatten peers (as public code writes them) ---------------------------------------


def cat_gram(g, r):
    return flatten_reference.gram([g, r])


def cat_project_(g, r):
    flatten_reference.project_(g, r)


def cat_pcgrad_(out, g, r):
    cat_pcgrad_k_(out, [g, r], _ORDER)


def cat_pcgrad_k_(out, vectors, order):
    """The public PyTorch PCGrad port: per task, project on each conflicting partner (a host read
    per `if d < 0`), in `order[i]`; then the mean of the projected gradients."""
    grads = [flatten_reference.flatten(v) for v in vectors]
    projected = []
    for i, g_i in enumerate(grads):
        g_i = g_i.clone()
        for j in order[i].tolist():
            d = torch.dot(g_i, grads[j])
            if d < 0:
                g_i -= d * grads[j] / grads[j].norm() ** 2
        projected.append(g_i)
    flatten_reference.unflatten_into(torch.stack(projected).mean(0), out)


# --- best pure-PyTorch composition ---------------------------------------------------------------


def _dots(a, b):
    return torch.stack([torch.dot(x.view(-1), y.view(-1)) for x, y in zip(a, b)]).sum()


def composition_gram(g, r):
    gg, gr, rr = _dots(g, g), _dots(g, r), _dots(r, r)
    return torch.stack([torch.stack([gg, gr]), torch.stack([gr, rr])])


def composition_project_(g, r):
    coef = _dots(g, r) / torch.stack(torch._foreach_norm(r)).square().sum()
    torch._foreach_sub_(g, torch._foreach_mul(r, coef))


def composition_pcgrad_(out, g, r):
    """PCGrad for two tasks (orders as in fused_pcgrad_), merged by mean, in closed form."""
    gr, gg, rr = _dots(g, r), _dots(g, g), _dots(r, r)
    conflict = (gr < 0).to(gr.dtype)
    w_g, w_r = 0.5 * (1 - conflict * gr / gg), 0.5 * (1 - conflict * gr / rr)
    merged = torch._foreach_mul(g, w_g)
    torch._foreach_add_(merged, torch._foreach_mul(r, w_r))
    torch._foreach_copy_(out, merged)


# --- fastunlearn --------------------------------------------------------------------------------


def fused_gram(g, r, backend="auto"):
    return fu.gram([g, r], backend=backend)


def fused_project_(g, r, backend="auto"):
    return fu.project_(g, r, backend=backend)


def fused_pcgrad_(out, g, r, backend="auto"):
    return fu.pcgrad_(out, [g, r], order=_ORDER, backend=backend)


# --- a Gradient Surgery update with SGD(momentum): the vector algebra and the optimizer step ------
# Minimum traffic: Gram reads g_f, g_r (8 B/element); the update reads g_f, g_r, param, momentum and
# writes param, momentum (24 B/element).

SURGERY_SGD = dict(lr=1e-3, momentum=0.9)


def surgery_params(shapes):
    return [torch.nn.Parameter(torch.randn(s)) for s in shapes]


def fused_surgery_step(opt, g, r, backend="auto"):
    """fastunlearn: Gram on the device, then the fused SGD step along -(g - c r)."""
    gram = fu.gram([g, r], dtype=torch.float64, backend=backend)
    coef = gram[0, 1] / (gram[1, 1] + fu.ops.DEFAULT_EPS)
    opt.step_combined(torch.stack([-torch.ones_like(coef), coef]), [g, r])


def unfused_surgery_step(opt, params, g, r):
    """fastunlearn's project_ into .grad, then torch.optim.SGD reads it back."""
    fu.project_(g, r)
    for p, gi in zip(params, g):
        p.grad = gi
    opt.step()  # a torch.optim.SGD with maximize=True: ascent along g - c r


def cat_surgery_step(opt, params, g, r):
    """Public surgery code: flatten, .item() the coefficient, unflatten into .grad, torch.optim step."""
    flat_u = flatten_reference.projected(g, r)
    offset = 0
    for p in params:
        p.grad = -flat_u[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    opt.step()


def bandwidth_proxy(n, device="cpu", dtype=torch.float32):
    """torch.dot over one contiguous pair of n elements (reads 2 * element size bytes per element)."""
    a, b = torch.randn(n, device=device, dtype=dtype), torch.randn(n, device=device, dtype=dtype)
    return lambda: torch.dot(a, b)


# --- K-vector cases for the sweep (benchmarks/sweep.py) ------------------------------------------

Vector = list[Tensor]

CORE_OPS = ("gram", "dot", "sq_norm", "combine_", "project_", "project_normal_", "pcgrad_")


def min_bytes_per_element(op: str, k: int = 2, dtype: torch.dtype = torch.float32) -> float:
    """Bytes per element of one vector that `op` must move at the least (DESIGN.md's roofline).

    fp32: gram 4K, dot 8, sq_norm 4, combine_ 4(K+1), project_ 20, project_normal_ 4(2m+3) with
    m = k directions (Gram over g and the m directions, then read them again and write g), pcgrad_
    8K+4 (Gram pass, then combine pass); scaled by element size for other dtypes.
    """
    fp32_bytes = {
        "gram": 4 * k,
        "dot": 8,
        "sq_norm": 4,
        "combine_": 4 * (k + 1),
        "project_": 20,
        "project_normal_": 4 * (2 * k + 3),
        "pcgrad_": 8 * k + 4,
    }[op]
    return fp32_bytes * torch.finfo(dtype).bits / 32


def vectors_read(op: str, k: int = 2) -> int:
    """How many input vectors the op's case uses (project_normal_: g and k directions)."""
    return {"dot": 2, "sq_norm": 1, "project_": 2, "project_normal_": k + 1}.get(op, k)


# LLaMA-7B-like layer shards: attention and MLP matrices, norm vectors (~157M elements).
LLAMA_MIX = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096,)] * 8


def llama_shapes(total: int) -> list[tuple[int, ...]]:
    """LLAMA_MIX scaled to `total` elements: the vectors' length by sqrt(total / 157M), the matrices'
    dimensions so they fill what the vectors leave, plus one 1-D shard holding the rest (at most 15
    shards, exactly `total` elements)."""
    vectors = [s for s in LLAMA_MIX if len(s) == 1]
    matrices = [s for s in LLAMA_MIX if len(s) == 2]
    length = max(1, int(vectors[0][0] * math.sqrt(total / sum(math.prod(s) for s in LLAMA_MIX))))
    room = total - length * len(vectors)
    if room < len(matrices):
        raise ValueError(f"total {total} is too small for the LLaMA mix")
    scale = math.sqrt(room / sum(math.prod(s) for s in matrices))
    shapes = [tuple(max(1, int(d * scale)) for d in s) for s in matrices] + [(length,)] * len(vectors)
    rest = total - sum(math.prod(s) for s in shapes)
    return shapes + [(rest,)] if rest else shapes


def equal_shapes(total: int, count: int) -> list[tuple[int, ...]]:
    """`count` equal 1-D shards of `total // count` elements (total must divide evenly)."""
    if total % count:
        raise ValueError(f"{total} elements do not split into {count} equal shards")
    return [(total // count,)] * count


def make_vectors(shapes, k: int, dtype=torch.float32, device="cpu", seed: int = 0) -> list[Vector]:
    """`k` independent standard-normal vectors with these shard shapes (never all zero)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=dtype, device=device) for s in shapes] for _ in range(k)]


def composition_gram_k(vectors):
    """K(K+1)/2 pairwise per-shard torch.dot sums, mirrored into a K x K matrix (on the device)."""
    k = len(vectors)
    entries = {(i, j): _dots(vectors[i], vectors[j]) for i in range(k) for j in range(i, k)}
    return torch.stack([torch.stack([entries[min(i, j), max(i, j)] for j in range(k)]) for i in range(k)])


def cat_combine_(out, weights, vectors):
    flat = sum(w * flatten_reference.flatten(v) for w, v in zip(weights, vectors))
    flatten_reference.unflatten_into(flat, out)


def composition_combine_(out, weights, vectors):
    acc = torch._foreach_mul(vectors[0], weights[0])
    for w, v in zip(weights[1:], vectors[1:]):
        torch._foreach_add_(acc, torch._foreach_mul(v, w))
    torch._foreach_copy_(out, acc)


def cat_project_normal_(g, directions):
    """Flatten, solve (R R^T) alpha = R g, subtract alpha @ R, unflatten (no host read)."""
    flat_g, rows = flatten_reference.flatten(g), torch.stack([flatten_reference.flatten(d) for d in directions])
    alpha = torch.linalg.solve(rows @ rows.T, rows @ flat_g)
    flat_g -= alpha @ rows
    flatten_reference.unflatten_into(flat_g, g)


def composition_project_normal_(g, directions):
    rr = composition_gram_k(directions)
    rg = torch.stack([_dots(d, g) for d in directions])
    alpha = torch.linalg.solve(rr, rg)
    for a, d in zip(alpha, directions):
        torch._foreach_sub_(g, torch._foreach_mul(d, a))


def composition_pcgrad_k_(out, vectors, order):
    """K=2: the closed form above; otherwise pairwise Gram, fu.pcgrad_weights, _foreach combine."""
    if len(vectors) == 2 and torch.equal(order, _ORDER):
        return composition_pcgrad_(out, *vectors)
    composition_combine_(out, fu.pcgrad_weights(composition_gram_k(vectors), order=order), vectors)


def stacked_pcgrad_(out, vectors, order):
    """torchjd-style: J = stack of the K flattened gradients (K x N), Gram J @ J.T, PCGrad weights
    (mean reduction, as the other peers), result w @ J unflattened into out."""
    jac = torch.stack([flatten_reference.flatten(v) for v in vectors])
    weights = fu.pcgrad_weights(jac @ jac.T, order=order)
    flatten_reference.unflatten_into(weights.to(jac.dtype) @ jac, out)


def peers(op: str, vectors: Sequence[Vector], out: Vector | None = None, k: int = 2) -> dict[str, Callable[[], object]]:
    """Callables running `op` on these inputs: "fastunlearn" first, then every peer that exists.

    `vectors` holds at least `vectors_read(op, k)` vectors; in-place ops update vectors[0] (each call
    projects again, so the data stay non-zero) and combine_/pcgrad_ write `out` (needed for those two).
    """
    vs = list(vectors[: vectors_read(op, k)])
    a, b = vs[0], vs[-1]
    weights = torch.linspace(1.0, -0.5, len(vs), device=a[0].device)
    order = cyclic_order(len(vs))
    table = {
        "gram": {
            "fastunlearn": lambda: fu.gram(vs),
            "reference.py": lambda: fu.gram(vs, backend="torch"),
            "cat": lambda: flatten_reference.gram(vs),
            "composition": lambda: composition_gram_k(vs),
        },
        "dot": {
            "fastunlearn": lambda: fu.dot(a, b),
            "reference.py": lambda: fu.dot(a, b, backend="torch"),
            "cat": lambda: torch.dot(flatten_reference.flatten(a), flatten_reference.flatten(b)),
            "composition": lambda: _dots(a, b),
        },
        "sq_norm": {
            "fastunlearn": lambda: fu.sq_norm(a),
            "reference.py": lambda: fu.sq_norm(a, backend="torch"),
            "cat": lambda: flatten_reference.flatten(a).norm() ** 2,
            "composition": lambda: torch.stack(torch._foreach_norm(a)).square().sum(),
        },
        "combine_": {
            "fastunlearn": lambda: fu.combine_(out, weights, vs),
            "reference.py": lambda: fu.combine_(out, weights, vs, backend="torch"),
            "cat": lambda: cat_combine_(out, weights, vs),
            "composition": lambda: composition_combine_(out, weights, vs),
        },
        "project_": {
            "fastunlearn": lambda: fu.project_(a, b),
            "reference.py": lambda: fu.project_(a, b, backend="torch"),
            "cat": lambda: cat_project_(a, b),
            "composition": lambda: composition_project_(a, b),
        },
        "project_normal_": {
            "fastunlearn": lambda: fu.project_normal_(a, vs[1:]),
            "reference.py": lambda: fu.project_normal_(a, vs[1:], backend="torch"),
            "cat": lambda: cat_project_normal_(a, vs[1:]),
            "composition": lambda: composition_project_normal_(a, vs[1:]),
        },
        "pcgrad_": {
            "fastunlearn": lambda: fu.pcgrad_(out, vs, order=order),
            "reference.py": lambda: fu.pcgrad_(out, vs, order=order, backend="torch"),
            "cat": lambda: cat_pcgrad_k_(out, vs, order),
            "composition": lambda: composition_pcgrad_k_(out, vs, order),
            "stacked": lambda: stacked_pcgrad_(out, vs, order),
        },
    }
    return table[op]
