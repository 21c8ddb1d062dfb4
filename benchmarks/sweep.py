"""Sweeps every core op over size, shard count, K and dtype in one run; writes RESULTS-sweep.md,
sweep.json and sweep_gbs.png.

    python benchmarks/sweep.py [--quick] [--device cpu|cuda] [--repeats 5] [--out-dir benchmarks]
                               [--sweeps size shards k dtype] [--threads N]

What is measured: the wall time of one call of each op (fastunlearn, then its peers from cases.py:
reference.py, cat, composition, and for pcgrad_ the torchjd-style "stacked" peer), as the median of
`repeats` calls after one warm-up on the same inputs (fastunlearn._timing.median_seconds). On CUDA each
timed call ends with torch.cuda.synchronize(). The op's achieved bandwidth is its minimum bytes
(cases.min_bytes_per_element times the elements per vector) over the fastunlearn time. The bandwidth
proxy is torch.dot over one contiguous fp32 pair with as many bytes as one vector of the case,
measured in the same run right before the case; "fraction of proxy" is the op's GB/s over the
proxy's, "x roofline" its time over the time the proxy's bandwidth needs for the op's minimum bytes.
"vs <peer>" is the peer's time over fastunlearn's (a speedup).

Sweeps (full; --quick shrinks every size to at most 1e6 elements per vector):
  size    1e5 .. 2e8 elements per vector in LLaMA-like shard mixes, fp32, every core op (K=2, m=2)
  shards  1 / 100 / 1,000 / 10,000 equal shards at 1e7 elements, fp32: gram, project_, combine_
  k       K = 2, 4, 8, 16 at 1e7 elements, fp32: gram, combine_, pcgrad_
  dtype   fp32, bf16, fp64 at 1e7 elements: gram, project_
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import cases  # noqa: E402

import fastunlearn as fu  # noqa: E402
from fastunlearn import _backend  # noqa: E402
from fastunlearn._timing import median_seconds  # noqa: E402

PEER_COLUMNS = ("reference.py", "cat", "composition", "stacked")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclass(frozen=True)
class SweepSizes:
    """Elements per vector of each sweep."""

    sizes: tuple[int, ...]
    shard_total: int
    shard_counts: tuple[int, ...]
    k_total: int
    ks: tuple[int, ...]
    dtype_total: int
    dtypes: tuple[str, ...] = ("fp32", "bf16", "fp64")


FULL = SweepSizes(
    sizes=(10**5, 10**6, 10**7, 10**8, 2 * 10**8),
    shard_total=10**7,
    shard_counts=(1, 100, 1_000, 10_000),
    k_total=10**7,
    ks=(2, 4, 8, 16),
    dtype_total=10**7,
)
QUICK = SweepSizes(
    sizes=(10**4, 10**5, 10**6),
    shard_total=10**5,
    shard_counts=(1, 100, 1_000, 10_000),
    k_total=10**5,
    ks=(2, 4, 8, 16),
    dtype_total=10**5,
)


@dataclass(frozen=True)
class Group:
    """Ops measured on one set of inputs (built once, freed after): (op, K or m) pairs."""

    sweep: str
    case: str
    shapes: list[tuple[int, ...]]
    ops: list[tuple[str, int]]
    dtype: str = "fp32"


@dataclass
class Result:
    """One op in one case: the median seconds of fastunlearn and of each peer, and the proxy."""

    sweep: str
    case: str
    op: str
    numel: int
    shards: int
    k: int
    dtype: str
    bytes_per_element: float
    proxy_gbs: float
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def gbs(self) -> float:
        return self.bytes_per_element * self.numel / self.seconds["fastunlearn"] / 1e9

    @property
    def fraction_of_proxy(self) -> float:
        return self.gbs / self.proxy_gbs

    @property
    def x_roofline(self) -> float:
        """fastunlearn's time over the proxy-bandwidth time for the op's minimum bytes."""
        return self.proxy_gbs / self.gbs

    def speedup(self, peer: str) -> float | None:
        return self.seconds[peer] / self.seconds["fastunlearn"] if peer in self.seconds else None


# --- which cases ---------------------------------------------------------------------------------


def count_label(n: int) -> str:
    """1e4 -> '10k', 2e8 -> '200M'."""
    for unit, scale in (("M", 10**6), ("k", 10**3)):
        if n >= scale and n % scale == 0:
            return f"{n // scale:,}{unit}"
    return f"{n:,}"


def groups(sizes: SweepSizes, sweeps: list[str]) -> Iterator[Group]:
    """Every input set of the chosen sweeps, in measurement order."""
    if "size" in sweeps:
        ops = [(op, 2) for op in cases.CORE_OPS]
        for n in sizes.sizes:
            shapes = cases.llama_shapes(n)
            yield Group("size", f"{count_label(n)} ({len(shapes)} shards)", shapes, ops)
    if "shards" in sweeps:
        ops = [("gram", 2), ("project_", 2), ("combine_", 2)]
        for count in sizes.shard_counts:
            shapes = cases.equal_shapes(sizes.shard_total, count)
            label = f"{count:,} shard{'s' if count > 1 else ''} x {count_label(sizes.shard_total // count)}"
            yield Group("shards", label, shapes, ops)
    if "k" in sweeps:
        shapes = cases.llama_shapes(sizes.k_total)
        for k in sizes.ks:
            yield Group("k", f"K={k}", shapes, [("gram", k), ("combine_", k), ("pcgrad_", k)])
    if "dtype" in sweeps:
        shapes = cases.llama_shapes(sizes.dtype_total)
        for name in sizes.dtypes:
            yield Group("dtype", name, shapes, [("gram", 2), ("project_", 2)], dtype=name)


# --- timing --------------------------------------------------------------------------------------


def timed(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """`fn`, followed on CUDA by a synchronize so the wall time covers the kernels."""
    if device.type != "cuda":
        return fn

    def call() -> None:
        fn()
        torch.cuda.synchronize(device)

    return call


def proxy_gbs(nbytes: int, device: torch.device, repeats: int) -> float:
    """GB/s of torch.dot over one contiguous fp32 pair of `nbytes` bytes each."""
    n = max(1, nbytes // 4)
    seconds = median_seconds(timed(cases.bandwidth_proxy(n, device=device), device), repeats)
    return 8 * n / seconds / 1e9


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_group(group: Group, device: torch.device, repeats: int) -> list[Result]:
    """The proxy at the group's size, then every op of the group and its peers on shared inputs."""
    dtype = DTYPES[group.dtype]
    numel = sum(torch.Size(s).numel() for s in group.shapes)
    bandwidth = proxy_gbs(numel * dtype.itemsize, device, repeats)
    free_memory(device)
    num_vectors = max(cases.vectors_read(op, k) for op, k in group.ops)
    vectors = cases.make_vectors(group.shapes, num_vectors, dtype=dtype, device=device)
    out = [torch.empty_like(s) for s in vectors[0]]
    results = []
    for op, k in group.ops:
        impls = cases.peers(op, vectors, out, k)
        seconds = {name: median_seconds(timed(fn, device), repeats) for name, fn in impls.items()}
        bytes_per_element = cases.min_bytes_per_element(op, k, dtype)
        shards = len(group.shapes)
        row = (group.sweep, group.case, op, numel, shards, k, group.dtype, bytes_per_element, bandwidth, seconds)
        results.append(Result(*row))
        print(f"  {op:<16} {results[-1].gbs:8.1f} GB/s  (proxy {bandwidth:.1f})", flush=True)
    del vectors, out, impls
    free_memory(device)
    return results


# --- output --------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def metadata(device: torch.device, repeats: int, command: str) -> dict:
    return {
        "device": device_name(device),
        "device_type": "GPU" if device.type == "cuda" else f"CPU, ISA level {fu.cpu_isa()}",
        "threads": torch.get_num_threads(),
        "backend": _backend.resolve("auto", device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "fastunlearn": fu.__version__,
        "repeats": repeats,
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def format_seconds(s: float) -> str:
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def table(results: list[Result], one_shard_column: bool = False) -> list[str]:
    """One Markdown table, rows grouped by op; peer columns only where some row has that peer."""
    peers = [p for p in PEER_COLUMNS if any(p in r.seconds for r in results)]
    header = ["op", "case", "fastunlearn time", "fastunlearn GB/s", "proxy GB/s", "fraction of proxy", "x roofline"]
    header += ["time / time of 1 shard"] if one_shard_column else []
    header += [f"vs {p}" for p in peers]
    one_shard = {r.op: r.seconds["fastunlearn"] for r in results if r.shards == 1}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ops = list(dict.fromkeys(r.op for r in results))
    for r in sorted(results, key=lambda r: ops.index(r.op)):
        op = r.op if r.op not in ("gram", "combine_", "pcgrad_") else f"{r.op} (K={r.k})"
        op = f"{r.op} (m={r.k})" if r.op == "project_normal_" else op
        cells = [op, r.case, format_seconds(r.seconds["fastunlearn"]), f"{r.gbs:.1f}", f"{r.proxy_gbs:.1f}"]
        cells += [f"{r.fraction_of_proxy:.2f}", f"{r.x_roofline:.2f}"]
        if one_shard_column:
            ratio = r.seconds["fastunlearn"] / one_shard[r.op] if r.op in one_shard else None
            cells.append("—" if ratio is None else f"{ratio:.2f}")
        cells += ["—" if r.speedup(p) is None else f"{r.speedup(p):.1f}x" for p in peers]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


SWEEP_TITLES = {
    "size": "Size: elements per vector in LLaMA-like shard mixes, fp32",
    "shards": "Shard count: equal shards at a fixed total, fp32, K=2",
    "k": "K: number of vectors at a fixed size (LLaMA-like mix), fp32",
    "dtype": "dtype: gram and project_ (K=2) at a fixed size (LLaMA-like mix)",
}


def markdown(results: list[Result], meta: dict) -> str:
    lines = [
        "# Benchmark sweep",
        "",
        f"Written by `{meta['command']}` on {meta['date']}.",
        "",
        f"Device: {meta['device']} ({meta['device_type']}), {meta['threads']} thread(s), backend "
        f"`{meta['backend']}`; torch {meta['torch']}, Python {meta['python']}, fastunlearn {meta['fastunlearn']}. "
        f"Median of {meta['repeats']} calls after one warm-up, inputs reused across calls.",
        "",
        "GB/s = the op's minimum bytes / fastunlearn's time. Minimum bytes per element (fp32, scaled by element "
        "size): gram 4K, dot 8, sq_norm 4, combine_ 4(K+1), project_ 20, project_normal_ 4(2m+3), pcgrad_ 8K+4. "
        "Proxy = torch.dot over one contiguous fp32 pair with the bytes of one vector, measured in the same run "
        "before each case. x roofline = time / (minimum bytes / proxy bandwidth). vs <peer> = peer time / "
        'fastunlearn time: reference.py = the same op with backend="torch"; cat = torch.cat-flatten code as '
        "public PCGrad/surgery code writes it; composition = per-shard torch.dot + torch._foreach_*; stacked = "
        "torchjd-style K x N stack, Gram J @ J.T, PCGrad weights, w @ J. Inputs: independent standard normals. "
        "Where the vectors fit in cache, the proxy and the ops alike measure cache rather than memory bandwidth, "
        "and fixed per-call costs dominate the smallest sizes.",
    ]
    for sweep, title in SWEEP_TITLES.items():
        rows = [r for r in results if r.sweep == sweep]
        if rows:
            lines += ["", f"## {title}", "", *table(rows, one_shard_column=sweep == "shards")]
    return "\n".join(lines) + "\n"


def plot(results: list[Result], meta: dict, path: Path) -> None:
    """GB/s vs elements per vector (log x) for every op of the size sweep, and the proxy line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.sweep == "size"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for op in dict.fromkeys(r.op for r in rows):
        points = sorted((r.numel, r.gbs) for r in rows if r.op == op)
        ax.plot(*zip(*points), marker="o", label=op)
    proxy = sorted({(r.numel, r.proxy_gbs) for r in rows if r.op == rows[0].op})
    if proxy:
        ax.plot(*zip(*proxy), "k--", linewidth=2, label="proxy (torch.dot, contiguous pair)")
    ax.set_xscale("log")
    ax.set_xlabel("elements per vector (LLaMA-like shards, fp32; K=2, m=2)")
    ax.set_ylabel("achieved GB/s (minimum bytes / time)")
    ax.set_title(f"fastunlearn ops, {meta['device']} ({meta['device_type']}, {meta['threads']} threads)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: list[Result], meta: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "RESULTS-sweep.md").write_text(markdown(results, meta))
    raw = [
        asdict(r) | {"gbs": r.gbs, "fraction_of_proxy": r.fraction_of_proxy, "x_roofline": r.x_roofline}
        for r in results
    ]
    (out_dir / "sweep.json").write_text(json.dumps({"meta": meta, "results": raw}, indent=1) + "\n")
    if any(r.sweep == "size" for r in results):
        plot(results, meta, out_dir / "sweep_gbs.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (at most 1e6 elements per vector)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent)
    parser.add_argument("--sweeps", nargs="+", choices=list(SWEEP_TITLES), default=list(SWEEP_TITLES))
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    device = torch.device(args.device)
    meta = metadata(device, args.repeats, "python benchmarks/sweep.py " + shlex.join(sys.argv[1:]))
    results = []
    for group in groups(QUICK if args.quick else FULL, args.sweeps):
        print(f"{group.sweep}: {group.case}" + ("" if group.sweep == "dtype" else f", {group.dtype}"), flush=True)
        results += measure_group(group, device, args.repeats)
    write_outputs(results, meta, args.out_dir)
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
