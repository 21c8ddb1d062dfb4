"""Min-K%++ statistics of an LM head: fastunlearn.token_stats against the materialised path and a
chunked pure-torch path, time and peak memory.

* ``materialised``: what membership-inference code does today -- the full ``[B, T, V]`` logits,
  their ``log_softmax``, ``p = exp``, then ``E_p[log p]``, ``Var_p[log p]`` and the target's log p;
* ``per_sequence``: the same, one sequence at a time (``[T, V]`` at once), a common way to fit memory;
* ``token_stats_torch``: :func:`fastunlearn.token_stats` on the torch backend, a chunked pure-torch
  path (the same chunks, each chunk's online softmax as about ten torch ops);
* ``token_stats``: :func:`fastunlearn.token_stats` on the default backend (C++ on CPU, Triton on
  CUDA);
* ``logits_only``: the ``[B, T, V]`` logits and nothing else -- the floor of any path that forms
  them (not a way to get the statistics).

With ``--from-logits`` the inputs are logits ``[B, T, V]`` already formed (``--hidden`` unused),
the paths ``materialised``, ``token_stats_torch`` and ``token_stats`` start from them
(:func:`fastunlearn.token_stats_from_logits`), and ``read_once`` (the row maxima: one read of the
logits) is the bandwidth floor. ``FASTUNLEARN_CPU_ISA`` picks the C++ kernel's ISA level.

Each runs in its own process on the same inputs (hidden ``[B, T, H]`` fp32, head ``[V, H]``), so
its peak memory above the inputs is its own (CPU: ``/proc/self/status`` VmHWM, reset through
``/proc/self/clear_refs``; CUDA: ``torch.cuda.max_memory_allocated``). Times are medians of
``--repeats`` calls after one warm-up (synchronised on CUDA); the script checks the paths agree.

    python benchmarks/token_stats.py [--batch 4] [--tokens 512] [--hidden 1024] [--vocab 32000] [--device cpu]
                                     [--from-logits]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import fastunlearn as fu
from fastunlearn.eval import lm


def inputs(args) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if args.from_logits:
        logits = 3 * torch.randn(args.batch, args.tokens, args.vocab, generator=gen)
        targets = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=gen)
        return logits.to(args.device), None, targets.to(args.device)
    hidden = torch.randn(args.batch, args.tokens, args.hidden, generator=gen)
    weight = torch.randn(args.vocab, args.hidden, generator=gen) / args.hidden**0.5
    targets = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=gen)
    return hidden.to(args.device), weight.to(args.device), targets.to(args.device)


def materialised(hidden, weight, targets):
    return lm.materialised_stats(hidden @ weight.T, targets)


def per_sequence(hidden, weight, targets):
    rows = [materialised(hidden[b], weight, targets[b]) for b in range(hidden.shape[0])]
    return tuple(torch.stack(column) for column in zip(*rows))


def fused(hidden, weight, targets, backend=None):
    stats = fu.token_stats(hidden, weight, targets, backend=backend)
    return stats.target_logprob, stats.mean_logprob, stats.var_logprob


def logits_only(hidden, weight, targets):
    return (hidden @ weight.T,)


def from_logits(logits, _, targets, backend=None):
    stats = fu.token_stats_from_logits(logits, targets, backend=backend)
    return stats.target_logprob, stats.mean_logprob, stats.var_logprob


PATHS = {
    "materialised": materialised,
    "per_sequence": per_sequence,
    "token_stats_torch": lambda *inputs: fused(*inputs, backend="torch"),
    "token_stats": fused,
    "logits_only": logits_only,
}
LOGITS_PATHS = {
    "materialised": lambda logits, _, targets: lm.materialised_stats(logits, targets),
    "token_stats_torch": lambda *inputs: from_logits(*inputs, backend="torch"),
    "token_stats": from_logits,
    "read_once": lambda logits, _, targets: (logits.amax(-1),),
}


def rss(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_one(args) -> None:
    hidden, weight, targets = inputs(args)
    fn = (LOGITS_PATHS if args.from_logits else PATHS)[args.run]
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # the peak resident size restarts from the current one
        before = rss("VmRSS")
    times, result = [], None
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        result = fn(hidden, weight, targets)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del result
    peak = (torch.cuda.max_memory_allocated() if cuda else rss("VmHWM")) - before
    result = [t.tolist() for t in fn(hidden[:1, :8], weight, targets[:1, :8])]  # hidden: the logits with --from-logits
    print(json.dumps({"seconds": statistics.median(times[1:]), "peak_bytes": peak, "sample": result}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--from-logits", action="store_true", help="start from logits [B, T, V] already formed")
    parser.add_argument("--run", choices=sorted({*PATHS, *LOGITS_PATHS}), help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/token-stats-cpu.md")
    args = parser.parse_args()
    if args.run:
        run_one(args)
        return
    methods = list(LOGITS_PATHS if args.from_logits else PATHS)
    results = {}
    for name in methods:
        command = [sys.executable, __file__, "--run", name] + [
            f"--{key}={getattr(args, key)}" for key in ("batch", "tokens", "hidden", "vocab", "repeats", "device")
        ]
        command += ["--from-logits"] if args.from_logits else []
        results[name] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    reference = torch.tensor(results["materialised"]["sample"])
    for name in methods[1:-1]:  # the same statistics, to fp32 rounding
        torch.testing.assert_close(torch.tensor(results[name]["sample"]), reference, rtol=1e-4, atol=1e-4)
    logits_bytes = args.batch * args.tokens * args.vocab * 4
    where = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"{torch.get_num_threads()} threads, CPU ISA level {fu.cpu_isa()}"
    )
    source = "from fp32 logits" if args.from_logits else f"H={args.hidden}"
    flag = " --from-logits" if args.from_logits else ""
    lines = [
        f"Min-K%++ statistics, B={args.batch} x T={args.tokens} tokens, {source}, V={args.vocab} "
        f"(fp32 logits {logits_bytes / 2**20:.0f} MiB), {where} (`python benchmarks/token_stats.py --batch "
        f"{args.batch} --tokens {args.tokens} --hidden {args.hidden} --vocab {args.vocab} --device {args.device}"
        f"{flag}`)",
        "",
        "| path | seconds | peak memory above the inputs (MiB) | time ratio to token_stats |",
        "|---|---|---|---|",
    ]
    for name in methods:
        seconds, peak = results[name]["seconds"], results[name]["peak_bytes"]
        ratio = seconds / results["token_stats"]["seconds"]
        lines.append(f"| {name} | {seconds:.3f} | {peak / 2**20:.0f} | {ratio:.2f} |")
    print("\n".join(lines))
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
