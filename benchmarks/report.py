"""Measures every op against its peers and the bandwidth proxy in one run; writes RESULTS.md.

    python benchmarks/report.py [--size llama150m|quick16m] [--repeats 7]

Each figure is the median of `repeats` timed calls after one warm-up. Ratios, not lone times, are
what to compare across machines: "x roofline" is the op's time over the time the proxy's
bandwidth needs for the op's minimum bytes (DESIGN.md); "vs cat" and "vs composition" are speedups.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import cases  # noqa: E402

import fastunlearn as fu  # noqa: E402
from fastunlearn._timing import median_seconds  # noqa: E402


def measure(size: str, repeats: int) -> tuple[list[dict], float, int]:
    shapes = cases.SHAPES[size]
    g, r = cases.make_pair(shapes)
    out = [torch.empty_like(s) for s in g]
    n = cases.numel(g)
    proxy_s = median_seconds(cases.bandwidth_proxy(n), repeats)
    proxy_gbs = 8 * n / proxy_s / 1e9
    peers = {
        "gram": {
            "fastunlearn": lambda: cases.fused_gram(g, r),
            "reference.py": lambda: cases.fused_gram(g, r, backend="torch"),
            "cat": lambda: cases.cat_gram(g, r),
            "composition": lambda: cases.composition_gram(g, r),
        },
        "project_": {
            "fastunlearn": lambda: cases.fused_project_(g, r),
            "reference.py": lambda: cases.fused_project_(g, r, backend="torch"),
            "cat": lambda: cases.cat_project_(g, r),
            "composition": lambda: cases.composition_project_(g, r),
        },
        "pcgrad_": {
            "fastunlearn": lambda: cases.fused_pcgrad_(out, g, r),
            "reference.py": lambda: cases.fused_pcgrad_(out, g, r, backend="torch"),
            "cat": lambda: cases.cat_pcgrad_(out, g, r),
            "composition": lambda: cases.composition_pcgrad_(out, g, r),
        },
        "surgery_step": surgery_peers(shapes, g, r),
    }
    rows = []
    for op, impls in peers.items():
        seconds = {name: median_seconds(fn, repeats) for name, fn in impls.items()}
        ideal = cases.ROOFLINE_BYTES[op] * n / (proxy_gbs * 1e9)
        fused = seconds["fastunlearn"]
        rows.append(
            {
                "op": op,
                "gbs": cases.ROOFLINE_BYTES[op] * n / fused / 1e9,
                "x_roofline": fused / ideal,
                "vs_cat": seconds["cat"] / fused,
                "vs_composition": seconds["composition"] / fused,
                "vs_reference": seconds["reference.py"] / fused,
            }
        )
    return rows, proxy_gbs, n


def surgery_peers(shapes, g, r) -> dict:
    """A Gradient Surgery update with SGD(momentum=0.9), each peer on its own parameters."""
    fused = fu.optim.SGD(cases.surgery_params(shapes), **cases.SURGERY_SGD)
    on_torch = fu.optim.SGD(cases.surgery_params(shapes), backend="torch", **cases.SURGERY_SGD)
    cat_params, composed_params = cases.surgery_params(shapes), cases.surgery_params(shapes)
    cat_opt = torch.optim.SGD(cat_params, **cases.SURGERY_SGD)
    composed_opt = torch.optim.SGD(composed_params, maximize=True, **cases.SURGERY_SGD)

    def composed():
        cases.composition_project_(g, r)
        for p, gi in zip(composed_params, g):
            p.grad = gi
        composed_opt.step()

    return {
        "fastunlearn": lambda: cases.fused_surgery_step(fused, g, r),
        "reference.py": lambda: cases.fused_surgery_step(on_torch, g, r, backend="torch"),
        "cat": lambda: cases.cat_surgery_step(cat_opt, cat_params, g, r),
        "composition": composed,
    }


def markdown(rows, proxy_gbs, n, size, repeats) -> str:
    lines = [
        f"### CPU, {size} ({n / 1e6:.0f}M fp32 elements per vector, K=2)",
        "",
        "surgery_step = Gram + SGD(momentum 0.9) update along -(g_f - c g_r); its peers write the projected "
        "gradient to .grad and call torch.optim.SGD.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, fastunlearn {fu.__version__}, median of {repeats}. "
        f"Bandwidth proxy (torch.dot, one contiguous pair): {proxy_gbs:.1f} GB/s.",
        "",
        "| op | fastunlearn GB/s | fraction of proxy | x roofline | speedup vs cat | vs composition "
        "| vs reference.py |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['op']} | {row['gbs']:.1f} | {row['gbs'] / proxy_gbs:.2f} | {row['x_roofline']:.2f} | "
            f"{row['vs_cat']:.1f}x | {row['vs_composition']:.1f}x | {row['vs_reference']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--size", choices=sorted(cases.SHAPES), default="quick16m")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "RESULTS.md")
    args = parser.parse_args()
    rows, proxy_gbs, n = measure(args.size, args.repeats)
    table = markdown(rows, proxy_gbs, n, args.size, args.repeats)
    print(table)
    args.out.write_text("# Benchmark results\n\nWritten by `python benchmarks/report.py`.\n\n" + table)


if __name__ == "__main__":
    main()
