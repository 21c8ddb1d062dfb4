"""GRU's vector algebra per optimizer step: OpenUnlearning's flattened host code against FastGRU.

Both take the same forget and retain gradients of a model (the forward/backward passes, which both
pay alike, are left out) and end with the parameters updated by SGD:

* ``openunlearning``: GRU's algebra as OpenUnlearning's trainer runs it
  (:func:`fastunlearn.flatten_reference.gru_direction`: both gradients concatenated and copied to
  the host, the retain average updated there, the dot products summed per parameter with one
  ``.item()`` each, the projection on the flat vector), the result sliced back into ``.grad`` and
  ``torch.optim.SGD.step()``;
* ``fastunlearn``: :class:`fastunlearn.methods.FastGRU`'s algebra -- ``combine_`` for the average,
  one Gram pass, the fused SGD step along the combination; nothing leaves the device.

Median wall time per step over interleaved rounds, and the ratio. Writes a markdown table.

    python benchmarks/gru_step.py [--params 10e6] [--shards 100] [--rounds 15] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import fastunlearn as fu
from fastunlearn import flatten_reference
from fastunlearn.weighting import Projection

GAMMA = 0.8


def model_params(total: float, shards: int) -> list[torch.nn.Parameter]:
    # Square-ish matrices plus a vector per layer, as a transformer's weights and norms.
    side = max(1, int((total / max(1, shards // 2)) ** 0.5))
    gen = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(side, side, generator=gen) if i % 2 == 0 else torch.randn(side, generator=gen))
        for i in range(shards)
    ]


class OpenUnlearningGRU:
    def __init__(self, params):
        self.params, self.previous = params, 0.0
        self.optimizer = torch.optim.SGD(params, lr=1e-4)

    def step(self, g_f, g_r):
        direction, self.previous = flatten_reference.gru_direction(g_f, g_r, self.previous, GAMMA)
        index = 0
        for p in self.params:
            p.grad = direction[index : index + p.numel()].view_as(p).to(p.device)
            index += p.numel()
        self.optimizer.step()


class FastGRUAlgebra:
    """FastGRU.step's algebra (fastunlearn/methods/gru.py) on given gradients."""

    def __init__(self, params):
        self.optimizer = fu.optim.SGD(params, lr=1e-4)
        self.average = None
        self.mix = torch.tensor([GAMMA, 1 - GAMMA], dtype=torch.float64)
        self.signs = torch.tensor([-1.0, 1.0], dtype=torch.float64)

    def step(self, g_f, g_r):
        if self.average is None:  # starts at 0, as OpenUnlearning's
            self.average = [torch.zeros_like(g) for g in g_r]
        fu.combine_(self.average, self.mix, [g_r, self.average])
        gram = fu.gram([g_f, self.average], dtype=torch.float64)
        coef = -Projection("conflict")(self.signs[:, None] * gram * self.signs)[1]
        self.optimizer.step_combined(torch.stack([-torch.ones_like(coef), -coef]), [g_f, self.average])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=10e6)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/gru-step-cpu.md")
    args = parser.parse_args()

    params = [model_params(args.params, args.shards) for _ in range(2)]
    gen = torch.Generator().manual_seed(1)
    gradients = []
    for _ in range(3):  # steps cycle through three gradient pairs, so the average changes direction
        g_f = [torch.randn(p.shape, generator=gen) for p in params[0]]
        # Correlated with g_f, so that ascent on the forget loss conflicts and the steps project.
        gradients.append((g_f, [0.5 * g + torch.randn(g.shape, generator=gen) for g in g_f]))
    runners = {"openunlearning": OpenUnlearningGRU(params[0]), "fastunlearn": FastGRUAlgebra(params[1])}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for step in range(args.rounds):
        g_f, g_r = gradients[step % len(gradients)]
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.step(g_f, g_r)
            times[name].append(time.perf_counter() - start)
    # Same gradients, same number of steps: both must have moved the parameters alike.
    for mine, theirs in zip(params[1], params[0]):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    medians = {name: statistics.median(values[2:]) for name, values in times.items()}  # 2 rounds of warm-up
    numel = sum(p.numel() for p in params[0])
    lines = [
        f"GRU's algebra per step, {numel / 1e6:.1f}M fp32 parameters in {args.shards} shards, "
        f"{torch.get_num_threads()} threads, CPU ISA level {fu.cpu_isa()} "
        f"(`python benchmarks/gru_step.py --params {args.params:g} --shards {args.shards}`)",
        "",
        "| algebra | ms per step | ratio to fastunlearn |",
        "|---|---|---|",
    ]
    for name, median in medians.items():
        lines.append(f"| {name} | {median * 1e3:.2f} | {median / medians['fastunlearn']:.2f} |")
    print("\n".join(lines))
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
