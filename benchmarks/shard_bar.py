"""The many-shards check: 10,000 separately allocated fp32 shards of 1,000 elements against one
10M-element shard, per op. Each round times both cases back to back and keeps their ratio; the
median ratio over the rounds is printed (with the spread of the rounds' ratios), so load on a
shared machine hits both sides alike.

    python benchmarks/shard_bar.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastunlearn as fu


def vector(separate: bool) -> list[torch.Tensor]:
    return [torch.randn(1000) for _ in range(10_000)] if separate else [torch.randn(10_000_000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    one = [vector(False) for _ in range(3)]
    many = [vector(True) for _ in range(3)]
    weights = torch.tensor([1.0, -0.5])
    ops = {
        "gram": lambda v: fu.gram([v[0], v[1]]),
        "project_": lambda v: fu.project_(v[0], v[1]),
        "combine_": lambda v: fu.combine_(v[2], weights, [v[0], v[1]]),
    }
    for name, op in ops.items():
        op(one), op(many)
        ratios, base = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            op(one)
            middle = time.perf_counter()
            op(many)
            ratios.append((time.perf_counter() - middle) / (middle - start))
            base.append(middle - start)
        deciles = statistics.quantiles(ratios, n=10)
        print(
            f"{name:9s} 10,000 x 1,000 / 1 x 10M = {statistics.median(ratios):.2f}x "
            f"(rounds' 10th-90th percentile {deciles[0]:.2f}-{deciles[-1]:.2f}x; "
            f"one 10M shard: {statistics.median(base) * 1e3:.2f} ms, {torch.get_num_threads()} threads)"
        )


if __name__ == "__main__":
    main()
