"""The CPU kernels at every ISA level this machine supports, against memory bandwidth; writes
benchmarks/results/isa-<level>.md per level and one JSON (isa.json).

    python benchmarks/isa.py [--levels avx512 avx2 baseline] [--numel 30000000] [--repeats 5]
                             [--threads 2] [--dtypes fp32 fp64 bf16 fp16] [--out-dir benchmarks/results]

Each level runs in its own process under FASTUNLEARN_CPU_ISA=<level>, so a developer on an AVX-512
machine measures the AVX2 and baseline clones too; a level the CPU lacks is reported as skipped.

What is measured, per dtype, on one LLaMA-like shard mix of `numel` elements per vector (half
that for K = 8, a quarter for K = 16): gram for K = 1, 2, 3, 4, 8, 16, combine_ (K = 2, one
output), project_, and the fused SGD (momentum) and AdamW steps along a K = 2 combination. Time is
the median of `repeats` calls after a warm-up. The bandwidth proxy is torch.dot over one
contiguous fp32 pair, timed in turn with each op (proxy, op, proxy, op, ...: a slow spell of a
shared machine lands on both); "fraction of proxy" is the op's minimum bytes
per second over the proxy's bytes per second, "x roofline" its inverse (time over the time the
proxy's bandwidth needs for those bytes). Minimum bytes per element of one vector: gram K x size,
combine_ 3 x size, project_ 5 x size, SGD step (2 + 4) x size, AdamW step (2 + 6) x size.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import cases  # noqa: E402
from sweep import device_name  # noqa: E402

from fastunlearn._timing import paired_median_seconds  # noqa: E402

LEVELS = ("avx512", "avx2", "baseline")
DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}
GRAM_KS = (1, 2, 3, 4, 8, 16)


def cases_for(dtype: torch.dtype, numel: int):
    """(op, K, minimum bytes, timed callable) for every measured op at one dtype."""
    import fastunlearn as fu

    size = torch.finfo(dtype).bits // 8
    for k in GRAM_KS:
        n = numel // 2 if k == 8 else numel // 4 if k == 16 else numel
        vectors = cases.make_vectors(cases.llama_shapes(n), k, dtype=dtype)
        yield "gram", k, k * n * size, (lambda v=vectors: fu.gram(v))
        del vectors
    g, r = cases.make_vectors(cases.llama_shapes(numel), 2, dtype=dtype)
    out = [torch.empty_like(t) for t in g]
    weights = torch.tensor([1.0, -0.5], dtype=torch.float64)
    yield "combine_", 2, 3 * numel * size, lambda: fu.combine_(out, weights, [g, r])
    yield "project_", 2, 5 * numel * size, lambda: fu.project_(g, r)
    for name, make, per_element in (
        ("sgd_step", lambda p: fu.optim.SGD(p, lr=1e-6, momentum=0.9), 6),
        ("adamw_step", lambda p: fu.optim.AdamW(p, lr=1e-6), 8),
    ):
        params = [torch.nn.Parameter(torch.zeros_like(t)) for t in g]
        opt = make(params)
        step_weights = torch.tensor([1.0, -0.5], dtype=torch.float64)
        yield name, 2, per_element * numel * size, (lambda o=opt, w=step_weights: o.step_combined(w, [g, r]))
        del params, opt


def child(args: argparse.Namespace) -> None:
    """Measures every case at the level this process was started under; one JSON line per case."""
    import fastunlearn as fu

    torch.set_num_threads(args.threads)
    level = fu.cpu_isa()
    proxy = cases.bandwidth_proxy(args.numel)
    for dtype_name in args.dtypes:
        for op, k, nbytes, fn in cases_for(DTYPES[dtype_name], args.numel):
            proxy_seconds, seconds = paired_median_seconds([proxy, fn], args.repeats)
            proxy_gbs = 2 * 4 * args.numel / proxy_seconds / 1e9
            gbs = nbytes / seconds / 1e9
            row = dict(level=level, dtype=dtype_name, op=op, k=k, seconds=seconds, gbs=gbs, proxy_gbs=proxy_gbs)
            print(json.dumps(row), flush=True)


def run_level(level: str, args: argparse.Namespace) -> tuple[list[dict], str | None]:
    """The rows of one level, or the reason it was skipped."""
    command = [sys.executable, __file__, "--child", "--numel", str(args.numel), "--repeats", str(args.repeats)]
    command += ["--threads", str(args.threads), "--dtypes", *args.dtypes]
    env = dict(os.environ, FASTUNLEARN_CPU_ISA=level)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return [], reason
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")], None


def markdown(level: str, rows: list[dict], meta: dict) -> str:
    lines = [
        f"# CPU kernels at ISA level `{level}`",
        "",
        f"`{meta['command']}` on {meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}, "
        f"{meta['numel']:,} elements per vector (K = 8: half, K = 16: a quarter), LLaMA-like shard mix, "
        f"median of {meta['repeats']} calls. Proxy = torch.dot over one contiguous fp32 pair, timed in turn "
        "with each op. Fraction of proxy = (the op's minimum bytes / time) / proxy bandwidth; "
        "x roofline = its inverse.",
        "",
        "| op | dtype | time | GB/s | proxy GB/s | fraction of proxy | x roofline |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        op = f"{r['op']} (K={r['k']})" if r["op"] == "gram" else r["op"]
        fraction = r["gbs"] / r["proxy_gbs"]
        lines.append(
            f"| {op} | {r['dtype']} | {r['seconds'] * 1e3:.2f} ms | {r['gbs']:.1f} | {r['proxy_gbs']:.1f} | "
            f"{fraction:.2f} | {1 / fraction:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS))
    parser.add_argument("--numel", type=int, default=30_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    meta = dict(
        command="python benchmarks/isa.py " + shlex.join(sys.argv[1:]),
        cpu=device_name(torch.device("cpu")),
        threads=args.threads,
        torch=torch.__version__,
        numel=args.numel,
        repeats=args.repeats,
    )
    report: dict = dict(meta=meta, levels={})
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for level in args.levels:
        rows, skipped = run_level(level, args)
        if skipped is not None:
            print(f"{level}: skipped ({skipped})", flush=True)
            report["levels"][level] = dict(skipped=skipped)
            continue
        report["levels"][level] = dict(rows=rows)
        text = markdown(level, rows, meta)
        (args.out_dir / f"isa-{level}.md").write_text(text)
        print(text, flush=True)
    (args.out_dir / "isa.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
