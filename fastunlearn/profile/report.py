"""The profile's output: a table per run with the speedups and the profiler's own overhead, and the
``fastunlearn profile`` command that runs the profile and writes the JSON report."""

from __future__ import annotations

import json
import os

from fastunlearn.profile.measure import ProfileReport, profile_unlearning
from fastunlearn.profile.targets import BUILT_IN


def print_report(report: ProfileReport, console=None) -> None:
    """A rich table per run, then the speedups and the profiler's own overhead."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    runs = [("fastunlearn (fused)", report.fused)]
    if report.reference is not None:
        runs.append(("reference ops (cat + .item())", report.reference))
    c = report.config
    model = f"{c['model']} {c['size']}" if c["model"] in BUILT_IN else c["model"]
    if c.get("lora"):
        model += f" + LoRA r={c['lora']}"
    console.print(
        f"{c['method']} on {model} ({report.parameters / 1e6:.1f}M trained parameters), {c['steps']} steps, "
        f"device {c['device']}; "
        f"bandwidth proxy {report.bandwidth_proxy_gbs:.1f} GB/s"
    )
    for title, run in runs:
        table = Table(title=f"{title}: ms per step, memory moved and bandwidth")
        # Short headers keep the table whole in an 80-column terminal; the title says times are in ms.
        for header in ("phase", "median", "min", "max", "share", "MB", "GB/s", "x roofline"):
            table.add_column(header, justify="right" if header != "phase" else "left", no_wrap=header == "phase")
        for name, stats in run.phases.items():
            table.add_row(
                name, f"{stats.median_ms:.2f}", f"{stats.min_ms:.2f}", f"{stats.max_ms:.2f}",
                f"{stats.median_ms / run.step_median_ms:.0%}",
                f"{stats.bytes / 1e6:.0f}" if stats.bytes else "", f"{stats.gbs:.1f}" if stats.gbs else "",
                f"{stats.x_roofline:.2f}" if stats.x_roofline else "",
            )  # fmt: skip
        table.add_row("other", f"{run.other_ms:.2f}", "", "", f"{run.other_ms / run.step_median_ms:.0%}", "", "", "")
        table.add_row("step", f"{run.step_median_ms:.2f}", f"{run.step_min_ms:.2f}", f"{run.step_max_ms:.2f}", "")
        console.print(table)
        memory = f"peak RSS {run.peak_rss_mb:.0f} MB" + (
            f", peak device memory {run.peak_device_mb:.0f} MB" if run.peak_device_mb is not None else ""
        )
        console.print(
            f"host reads of tensor values per step: {run.host_reads_per_step:g} by the method, "
            f"{run.model_host_reads_per_step:g} in the model's forward/backward; {memory}"
        )
    for name, value in report.speedups.items():
        console.print(f"speedup of fastunlearn over the reference ops, {name}: {value:.2f}x")
    console.print(
        f"profiler overhead: profiled step {report.fused.step_median_ms:.2f} ms vs unprofiled "
        f"{report.unprofiled_step_median_ms:.2f} ms ({report.profile_overhead:+.1%})"
    )
    if report.lm_eval is not None:
        e = report.lm_eval
        memory = "".join(
            f", peak device memory {e[f'{name}_peak_device_mib']:.0f} MiB ({name})"
            for name in ("materialised", "token_stats")
            if f"{name}_peak_device_mib" in e
        )
        console.print(
            f"Min-K%++ statistics of one forget batch ({e['tokens']} tokens, vocabulary {e['vocab']}): "
            f"materialised log_softmax {e['materialised_ms']:.2f} ms, token_stats {e['token_stats_ms']:.2f} ms "
            f"({e['materialised_ms'] / e['token_stats_ms']:.2f}x; fp32 logits of {e['logits_mib']:.0f} MiB never "
            f"formed){memory}"
        )


def main(args) -> None:
    for path in (args.json, args.trace):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"cannot write {path}: its directory does not exist")
    report = profile_unlearning(
        args.model, size=args.size, method=args.method, steps=args.steps, warmup=args.warmup, compare=args.compare,
        batch=args.batch, seq_len=args.seq_len, device=args.device, seed=args.seed, trace=args.trace,
        lora=args.lora, eval_stats=args.eval,
    )  # fmt: skip
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
