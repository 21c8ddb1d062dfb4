"""Inputs and peer implementations shared by the benchmark suite and the README table.

Peers, on the same inputs:
  fastunlearn  -- the public ops (backend "cpp" on CPU)
  reference.py -- the same ops on the pure-PyTorch backend ("torch")
  cat          -- torch.cat-flatten code as public PCGrad / surgery implementations write it,
                  with their .item() reads
  composition  -- the best pure-PyTorch composition: per-shard torch.dot, torch._foreach_* updates
"""

from __future__ import annotations

import torch

import fastunlearn as fu

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


def _flat(vector):
    return torch.cat([s.reshape(-1) for s in vector])


def _unflatten_into(vector, flat):
    offset = 0
    for s in vector:
        s.copy_(flat[offset : offset + s.numel()].view_as(s))
        offset += s.numel()


# --- torch.cat-flatten peers (as public code writes them) ---------------------------------------


def cat_gram(g, r):
    rows = torch.stack([_flat(g), _flat(r)])
    return rows @ rows.T


def cat_project_(g, r):
    flat_g, flat_r = _flat(g), _flat(r)
    d = torch.dot(flat_g, flat_r).item()
    flat_g -= d / (flat_r.norm().item() ** 2) * flat_r
    _unflatten_into(g, flat_g)


def cat_pcgrad_(out, g, r):
    grads = [_flat(g), _flat(r)]
    projected = []
    for i, g_i in enumerate(grads):
        g_i = g_i.clone()
        for j in (1 - i, i):
            d = torch.dot(g_i, grads[j])
            if d < 0:
                g_i -= d * grads[j] / grads[j].norm() ** 2
        projected.append(g_i)
    _unflatten_into(out, torch.stack(projected).mean(0))


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


_ORDER = torch.tensor([[1, 0], [0, 1]])


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
    flat_g, flat_r = _flat(g), _flat(r)
    coef = torch.dot(flat_g, flat_r).item() / (flat_r.norm().item() ** 2)
    flat_u = flat_g - coef * flat_r
    offset = 0
    for p in params:
        p.grad = -flat_u[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    opt.step()


def bandwidth_proxy(n):
    """torch.dot over one contiguous pair of n fp32 elements (reads 8 bytes per element)."""
    a, b = torch.randn(n), torch.randn(n)
    return lambda: torch.dot(a, b)
