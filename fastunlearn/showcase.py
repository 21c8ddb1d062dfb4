"""A short tour of the ops: fused results next to the flatten-and-.item() code they replace.

Run with ``fastunlearn showcase`` (or ``make demo``).
"""

from __future__ import annotations

import torch

import fastunlearn as fu
from fastunlearn import flatten_reference
from fastunlearn._timing import median_seconds

# A small transformer-like gradient: a few large matrices and many small vectors.
SHAPES = [(1024, 1024)] * 4 + [(2816, 1024)] * 2 + [(1024,)] * 16


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    g_f = [torch.randn(s, generator=gen) for s in SHAPES]
    g_r = [0.5 * torch.randn(s, generator=gen) + 0.3 * f for s, f in zip(SHAPES, g_f)]
    n = sum(s.numel() for s in g_f)
    print(f"fastunlearn {fu.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"backends: {fu.backends()}")
    print(f"gradient: {len(SHAPES)} shards, {n / 1e6:.1f}M fp32 parameters per vector\n")

    G = fu.gram([g_f, g_r])
    cosine = G[0, 1] / (G[0, 0] * G[1, 1]).sqrt()
    print(f"gram([g_f, g_r]) =\n{G}\ncosine(g_f, g_r) = {cosine:.4f}\n")

    fused, flat = [s.clone() for s in g_f], [s.clone() for s in g_f]
    stats = fu.project_(fused, g_r)
    d_flat = flatten_reference.project_(flat, g_r)
    d64 = torch.dot(flatten_reference.flatten(g_f).double(), flatten_reference.flatten(g_r).double())
    print(f"project_: g.r  float64 {d64.item():.10g}  fused {stats.dot.item():.10g}  flatten code {d_flat:.10g}")
    print(
        f"          relative error of g.r: fused {abs(stats.dot.item() - d64.item()) / abs(d64.item()):.1e}, "
        f"flatten code (fp32 accumulation) {abs(d_flat - d64.item()) / abs(d64.item()):.1e}"
    )
    print(f"          g.r after projection: fused {fu.dot(fused, g_r):.3g}, flatten code {fu.dot(flat, g_r):.3g}\n")

    rows = [
        (
            "project_ (surgery step)",
            lambda: fu.project_([s.clone() for s in g_f], g_r),
            lambda: flatten_reference.project_([s.clone() for s in g_f], g_r),
        ),
    ]
    out = [torch.empty_like(s) for s in g_f]
    order = torch.tensor([[1, 0], [0, 1]])
    rows.append(
        (
            "gram (K=2)",
            lambda: fu.gram([g_f, g_r]),
            lambda: flatten_reference.gram([g_f, g_r]),
        )
    )
    rows.append(
        (
            "pcgrad_ (K=2)",
            lambda: fu.pcgrad_(out, [g_f, g_r], order=order),
            lambda: fu.pcgrad_(out, [g_f, g_r], order=order, backend="torch"),
        )
    )
    print(f"{'op':<26}{'fused ms':>10}{'reference ms':>14}{'speedup':>9}")
    for name, fused_fn, ref_fn in rows:
        t_fused, t_ref = 1e3 * median_seconds(fused_fn), 1e3 * median_seconds(ref_fn)
        print(f"{name:<26}{t_fused:>10.2f}{t_ref:>14.2f}{t_ref / t_fused:>8.1f}x")
    print("\n(references: flatten + .item() for project_ and gram; fastunlearn's torch backend for pcgrad_.")
    print(" The project_ timings include cloning g_f for both sides; see `make bench` for the full comparison.)")
