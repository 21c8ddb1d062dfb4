"""Host time per call: every public op and each fused optimizer step on short and long shard lists,
as a ratio to ``torch._foreach_add_`` over the same list, timed in the same run (interleaved rounds,
medians). On a GPU (``--device cuda``) the calls are timed on the host without synchronising, which
is the host cost the kernels hide behind, and the kernel launches per op are counted.

    python benchmarks/overhead.py [--device cpu|cuda] [--shards 4 300 10000] [--calls 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import fastunlearn as fu

#: The bars of the engine issue on CPU: ratio to _foreach_add_ on 4 shards; 1.5 on longer lists.
SHORT_BARS = {"gram": 3, "dot": 3, "sq_norm": 3, "combine_": 3, "project_": 5, "pcgrad_ K=2": 8}
LONG_BAR = 1.5


def cases(n: int, device: str) -> dict[str, Callable[[], object]]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    vec = lambda: [torch.randn(8, generator=gen).to(device) for _ in range(n)]  # noqa: E731
    g, r, out = vec(), vec(), vec()
    w = torch.tensor([1.0, -0.5], device=device)
    order = torch.tensor([[0, 1], [1, 0]], device=device)
    params = [torch.nn.Parameter(s.clone()) for s in vec()]
    sgd = fu.optim.SGD(params, lr=1e-3, momentum=0.9)
    adamw = fu.optim.AdamW(params, lr=1e-3)
    # torch.optim's own multi-tensor steps on the same parameters: the host cost users already pay.
    peers = [torch.nn.Parameter(s.clone()) for s in vec()]
    for p, grad in zip(peers, g):
        p.grad = grad
    torch_sgd = torch.optim.SGD(peers, lr=1e-3, momentum=0.9, foreach=True)
    torch_adamw = torch.optim.AdamW(peers, lr=1e-3, foreach=True)
    return {
        "_foreach_add_": lambda: torch._foreach_add_(out, g),
        "gram": lambda: fu.gram([g, r]),
        "dot": lambda: fu.dot(g, r),
        "sq_norm": lambda: fu.sq_norm(g),
        "combine_": lambda: fu.combine_(out, w, [g, r]),
        "project_": lambda: fu.project_(g, r),
        "project_normal_ m=2": lambda: fu.project_normal_(g, [r, out]),
        "pcgrad_ K=2": lambda: fu.pcgrad_(out, [g, r], order=order),
        "SGD.step_combined": lambda: sgd.step_combined(w, [g, r]),
        "AdamW.step_combined": lambda: adamw.step_combined(w, [g, r]),
        "torch.optim.SGD.step (foreach)": torch_sgd.step,
        "torch.optim.AdamW.step (foreach)": torch_adamw.step,
    }


def host_seconds(fns: dict[str, Callable[[], object]], calls: int) -> dict[str, float]:
    """Median seconds per call; the cases take turns in rounds of 10 calls, so drift hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(max(1, calls // 10)):
            for name, fn in fns.items():
                start = time.perf_counter()
                for _ in range(10):
                    fn()
                samples[name].append((time.perf_counter() - start) / 10)
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shards", type=int, nargs="+", default=[4, 300, 10_000])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU ISA level {fu.cpu_isa()}, "
        f"device {args.device}, fastunlearn backends: "
        f"{', '.join(name for name, state in fu.backends().items() if state.startswith('available'))}"
    )
    table = {}
    for n in args.shards:
        fns = cases(n, args.device)
        calls = args.calls if n < 1000 else max(20, args.calls // 10)
        table[n] = host_seconds(fns, calls)
    header = "| op | " + " | ".join(f"{n} shards: µs (× foreach)" for n in args.shards) + " |"
    print(header)
    print("|" + "---|" * (len(args.shards) + 1))
    failed = []
    for name in table[args.shards[0]]:
        cells = []
        for n in args.shards:
            t, base = table[n][name], table[n]["_foreach_add_"]
            cells.append(f"{t * 1e6:.1f} ({t / base:.2f}×)")
            peer = name == "_foreach_add_" or name.startswith("torch.optim")
            bar = SHORT_BARS.get(name) if n <= 4 else (None if peer else LONG_BAR)
            if args.device == "cpu" and bar is not None and t / base > bar:
                failed.append(f"{name} at {n} shards: {t / base:.2f}× > {bar}×")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.device == "cuda":
        fns = cases(4, args.device)
        print("\nKernel launches per call (4 shards):")
        for name, fn in fns.items():
            print(f"  {name}: {fu.profile.count_kernel_launches(fn)}")
    print("\nBars (CPU): " + ("all hold" if not failed else "missed: " + "; ".join(failed)))


if __name__ == "__main__":
    main()
