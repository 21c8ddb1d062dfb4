"""The GPU check: one prepared command that builds fastunlearn for the local GPU, runs its GPU tests,
measures both GPU backends and profiles an unlearning step, and writes one Markdown report and one
JSON into OUTDIR. It stops itself inside its time budget (default 450 s): a stage or case left out
for time is listed as skipped, never dropped.

    python benchmarks/gpu_check.py OUTDIR [--budget 450]      # on a CUDA machine (make gpu-check)
    python benchmarks/gpu_check.py OUTDIR --dry-run           # the same stages at tiny sizes on CPU

It needs only what a GPU image has (torch with CUDA, Triton, nvcc, pytest, numpy); pip is never
allowed to reach the network. Stages, each in its own process with its own time limit:

  environment  device, driver, torch, CUDA, Triton and nvcc versions
  build        pip install --no-build-isolation --no-deps --no-index -e . for the local GPU's
               architecture (TORCH_CUDA_ARCH_LIST from the device, MAX_JOBS = cores); then ldd
  test_gpu     tests/test_gpu.py: both GPU backends on CUDA tensors
  measure      every op x backend x size x dtype below, against the torch backend, torch.cat-flatten
               code and a device-to-device copy of one vector timed in the same run; one JSON line
               per case, so a stage cut short keeps what it measured
  profile      fastunlearn profile --compare: a Gradient Surgery step on the largest built-in model
  test_token_stats  tests/test_token_stats.py on CUDA tensors (torch and Triton backends)
  token_stats  benchmarks/token_stats.py --device cuda: Min-K%++ statistics at a 128k vocabulary,
               token_stats (Triton) against the materialised log_softmax path, time and peak memory
  test_triton  tests/test_triton.py on CUDA tensors (last: it repeats part of test_gpu.py)

Measured per case: device time (median of synchronised calls), host time per call (median of
unsynchronised calls, each after a synchronise: what the kernels hide behind), kernel launches
(torch.profiler, CUDA only), and the fraction of copy bandwidth: the op's minimum bytes per second
over the copy's (bytes read + written per second).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

OPS = ("gram K=2", "gram K=4", "gram K=8", "gram K=16", "dot", "combine_", "project_", "pcgrad_ K=2",
       "pcgrad_ K=4", "sgd_step", "adamw_step")  # fmt: skip
# Minimum bytes per element of one vector, in units of the element size (DESIGN.md's roofline).
MIN_BYTES = {"gram": lambda k: k, "dot": lambda k: 2, "combine_": lambda k: 3, "project_": lambda k: 5,
             "pcgrad_": lambda k: 2 * k + 1, "sgd_step": lambda k: 6, "adamw_step": lambda k: 8}  # fmt: skip


# --- the driver ----------------------------------------------------------------------------------


class Stages:
    """Runs stages in subprocesses against one deadline and records what each did."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.deadline, self.records = out, time.monotonic() + budget, []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, limit: float, command: list[str], env: dict | None = None) -> int | None:
        limit = min(limit, self.left() - 5)
        if limit < 10:
            self.records.append(dict(stage=name, status="skipped", reason="out of time", seconds=0.0))
            print(f"== {name}: skipped (out of time)", flush=True)
            return None
        start = time.monotonic()
        log = self.out / f"{name}.log"
        with log.open("w") as handle:
            try:
                rc = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                    timeout=limit).returncode  # fmt: skip
                # pytest's 5: every test skipped (test_gpu.py without a CUDA device)
                status = "ok" if rc == 0 else "no tests ran" if rc == 5 and "pytest" in command else f"failed (rc {rc})"
            except subprocess.TimeoutExpired:
                rc, status = None, f"stopped at its {limit:.0f} s limit"
        seconds = time.monotonic() - start
        self.records.append(dict(stage=name, status=status, seconds=round(seconds, 1), command=" ".join(command)))
        print(f"== {name}: {status} in {seconds:.0f} s", flush=True)
        print("\n".join(log.read_text(errors="replace").splitlines()[-15:]), flush=True)
        return rc

    def skip(self, name: str, reason: str) -> None:
        self.records.append(dict(stage=name, status="skipped", reason=reason, seconds=0.0))
        print(f"== {name}: skipped ({reason})", flush=True)


def command_output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc.__class__.__name__})"
    return (done.stdout.strip() or done.stderr.strip()).splitlines()[-1] if done.returncode == 0 else "unavailable"


def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "threads": torch.get_num_threads(), "device_type": device}  # fmt: skip
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "not installed"
    sys.path.insert(0, str(Path(__file__).parent))
    from sweep import device_name

    env["device"] = device_name(torch.device(device))
    if device == "cuda":
        env["capability"] = "{}.{}".format(*torch.cuda.get_device_capability())
        env["driver"] = command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env["nvcc"] = command_output(["nvcc", "--version"])
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory for the report, the JSON and every stage's log")
    parser.add_argument("--dry-run", action="store_true", help="every stage at tiny sizes on CPU")
    parser.add_argument("--budget", type=float, help="seconds for the whole check (default 450; dry run 240)")
    parser.add_argument("--measure", metavar="JSONL", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        measure(args.measure, dry_run=args.dry_run, seconds=args.budget)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    stages = Stages(args.out, args.budget or (240 if args.dry_run else 450))
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    env = environment(device)
    py = sys.executable
    # The dry run checks the installed extension instead of building it again (make install built it).
    if args.dry_run:
        stages.run("build", 60, [py, "-c", "import fastunlearn as fu; print('extension loads; CPU ISA', fu.cpu_isa())"])
    else:
        build_env = dict(os.environ, TORCH_CUDA_ARCH_LIST=env["capability"], MAX_JOBS=str(os.cpu_count() or 4))
        pip = [py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-e", "."]
        stages.run("build", 240, pip, env=build_env)
    env["extension_links"] = linkage()
    test_env = dict(os.environ, TRITON_INTERPRET="1") if args.dry_run else None

    def tests(name: str) -> None:
        command = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", f"tests/{name}.py"]
        if args.dry_run and name == "test_triton":
            command += ["-k", "gram and not long"]  # the interpreter is slow: a sample checks the stage
        if args.dry_run and name == "test_token_stats":
            command += ["-k", "masked_vocabulary"]
        stages.run(name, 120, command, env=test_env)

    tests("test_gpu")
    jsonl = args.out / "measure.jsonl"
    jsonl.unlink(missing_ok=True)
    measure_env = dict(os.environ, TRITON_INTERPRET="1") if args.dry_run else None
    measure_limit = 60 if args.dry_run else 200
    stages.run("measure", measure_limit,
               [py, __file__, str(args.out), "--measure", str(jsonl), "--budget", str(measure_limit - 15)]
               + (["--dry-run"] if args.dry_run else []), env=measure_env)  # fmt: skip
    profile = [py, "-m", "fastunlearn", "profile", "--compare", "--device", device]
    profile += ["--json", str(args.out / "profile.json")]
    profile += ["--size", "tiny", "--steps", "1"] if args.dry_run else ["--size", "1b", "--steps", "3"]
    stages.run("profile", 90, profile)
    tests("test_token_stats")
    sizes = ["1", "16", "32", "1000"] if args.dry_run else ["4", "1024", "2048", "128256"]
    token_stats = [py, "benchmarks/token_stats.py", "--device", device, "--out", str(args.out / "token-stats.md")]
    token_stats += [f"--{key}={value}" for key, value in zip(("batch", "tokens", "hidden", "vocab"), sizes)]
    stages.run("token_stats", 90, token_stats, env=measure_env)
    tests("test_triton")  # last: the Triton kernels on CUDA tensors are also in test_gpu.py

    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    token_stats_table = args.out / "token-stats.md"
    report = dict(started=started, environment=env, stages=stages.records, cases=rows,
                  token_stats=token_stats_table.read_text() if token_stats_table.exists() else None)  # fmt: skip
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    print(f"wrote {args.out / 'report.md'} and report.json", flush=True)


def linkage() -> str:
    """How the built extension links libstdc++ (a static copy crashes on error messages). Asked in a
    fresh process: this one may predate the install the build stage made."""
    where = subprocess.run([sys.executable, "-c", "import fastunlearn._C as c; print(c.__file__)"], cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
    if where.returncode != 0 or shutil.which("ldd") is None:
        return "unknown (the extension does not load)" if where.returncode != 0 else "unknown (no ldd)"
    listed = subprocess.run(["ldd", where.stdout.strip()], capture_output=True, text=True).stdout
    return "shared libstdc++" if "libstdc++.so" in listed else "no shared libstdc++ (static?)"


# --- the report ------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# GPU check: {env['device']}",
        "",
        f"Started {report['started']}. torch {env['torch']} (CUDA {env['cuda']}), Triton {env['triton']}, "
        f"Python {env['python']}"
        + (f", driver {env['driver']}, nvcc: {env['nvcc']}" if "driver" in env else "")
        + f". Extension: {env['extension_links']}.",
        "",
        "| stage | status | wall s |",
        "|---|---|---|",
    ]
    for s in report["stages"]:
        status = s["status"] + (f": {s['reason']}" if "reason" in s else "")
        lines.append(f"| {s['stage']} | {status} | {s['seconds']} |")
    measured = [r for r in report["cases"] if "skipped" not in r]
    skipped = [r for r in report["cases"] if "skipped" in r]
    backends = list(dict.fromkeys(r["backend"] for r in measured))
    fused = [b for b in backends if b != "cat"]
    lines += [
        "",
        "Per backend: device time (median of synchronised calls) and, in brackets, the fraction of copy "
        "bandwidth: the op's minimum bytes per second over a device copy's (read + write) of one vector, timed "
        "in the same run. Host: microseconds one call holds the host (no synchronise). Launches: CUDA kernels per "
        "call (torch.profiler). `cat` is torch.cat-flatten code as public PCGrad/surgery code writes it.",
        "",
        "| op | dtype | elements | shards | copy GB/s | "
        + " | ".join(backends)
        + " | host us ("
        + " / ".join(fused)
        + ") | launches ("
        + " / ".join(fused)
        + ") |",
        "|---" * (5 + len(backends) + 2) + "|",
    ]
    groups: dict[tuple, dict[str, dict]] = {}
    for r in measured:
        groups.setdefault((r["op"], r["dtype"], r["numel"], r["shards"]), {})[r["backend"]] = r
    for (op, dtype, numel, shards), by_backend in groups.items():
        first = next(iter(by_backend.values()))
        cells = [op, dtype, f"{numel:.0e}", str(shards), f"{first['copy_gbs']:.0f}"]
        for b in backends:
            r = by_backend.get(b)
            cells.append("-" if r is None else f"{r['seconds'] * 1e3:.3f} ms ({r['fraction_of_copy']:.2f})")
        cells.append(" / ".join(f"{by_backend[b]['host_us']:.0f}" if b in by_backend else "-" for b in fused))
        launch_counts = [by_backend[b]["launches"] if b in by_backend else None for b in fused]
        cells.append(" / ".join("-" if count is None else str(count) for count in launch_counts))
        lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Skipped cases:", ""]
        lines += [f"- {r['op']} {r['dtype']} {r['numel']:.0e}: {r['skipped']}" for r in skipped]
    if report.get("token_stats"):
        lines += ["", "## token_stats", "", report["token_stats"].rstrip()]
    return "\n".join(lines) + "\n"


# --- the measure stage (its own process) -------------------------------------------------------------


def measure(path: Path, dry_run: bool, seconds: float | None) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import cases

    import fastunlearn as fu
    from fastunlearn import flatten_reference

    device = "cpu" if dry_run else "cuda"
    deadline = time.monotonic() + (seconds or 180)
    report = fu.backends()
    backends = [b for b in (("cpp", "triton", "torch") if dry_run else ("triton", "cuda", "torch"))
                if report[b].startswith("available")]  # fmt: skip
    sizes = (2_000,) if dry_run else (1_000_000, 100_000_000, 1_000_000_000)
    many_shards = (10, 1_000) if dry_run else (10_000, 100_000_000)  # (count, total elements)
    repeats = 2 if dry_run else 5

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn: Callable[[], object]) -> tuple[float, float]:
        """(device seconds, host seconds) per call: medians of synchronised and unsynchronised calls."""
        fn()
        sync()
        device_times, host_times = [], []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            host_times.append(time.perf_counter() - start)
            sync()
            device_times.append(time.perf_counter() - start)
        return sorted(device_times)[repeats // 2], sorted(host_times)[repeats // 2]

    def launches(fn: Callable[[], object]) -> int | None:
        if device != "cuda":
            return None
        from fastunlearn.profile.measure import count_kernel_launches

        return count_kernel_launches(fn)

    def case_inputs(op: str, k: int, dtype, numel: int, shards: int | None):
        shapes = cases.llama_shapes(numel) if shards is None else cases.equal_shapes(numel, shards)
        return cases.make_vectors(shapes, k, dtype=dtype, device=device)

    def calls(op: str, k: int, vectors, backend: str) -> Callable[[], object]:
        if op == "gram":
            return lambda: fu.gram(vectors, backend=backend)
        if op == "dot":
            return lambda: fu.dot(vectors[0], vectors[1], backend=backend)
        if op == "combine_":
            out = [torch.empty_like(t) for t in vectors[0]]
            w = torch.tensor([1.0, -0.5], device=device)
            return lambda: fu.combine_(out, w, vectors, backend=backend)
        if op == "project_":
            return lambda: fu.project_(vectors[0], vectors[1], backend=backend)
        if op == "pcgrad_":
            out = [torch.empty_like(t) for t in vectors[0]]
            order = cases.cyclic_order(k).to(device)
            return lambda: fu.pcgrad_(out, vectors, order=order, backend=backend)
        params = [torch.nn.Parameter(torch.zeros_like(t)) for t in vectors[0]]
        opt = (fu.optim.SGD(params, lr=1e-6, momentum=0.9, backend=backend) if op == "sgd_step"
               else fu.optim.AdamW(params, lr=1e-6, backend=backend))  # fmt: skip
        w = torch.tensor([1.0, -0.5], dtype=torch.float64, device=device)
        return lambda: opt.step_combined(w, vectors)

    def cat_peer(op: str, k: int, vectors) -> Callable[[], object] | None:
        if op == "gram":
            return lambda: flatten_reference.gram(vectors)
        if op == "project_":
            return lambda: flatten_reference.project_(vectors[0], vectors[1])
        if op == "pcgrad_" and k == 2:
            out = [torch.empty_like(t) for t in vectors[0]]
            return lambda: cases.cat_pcgrad_(out, vectors[0], vectors[1])
        return None

    # Largest last, so a cut leaves the common sizes measured; launches are counted where they are
    # cheapest to profile (a launch count does not depend on the size).
    grid = [(dtype, numel, None) for numel in sizes[:2] for dtype in (torch.float32, torch.bfloat16)]
    grid.append((torch.float32, many_shards[1], many_shards[0]))
    grid += [(dtype, numel, None) for numel in sizes[2:] for dtype in (torch.float32, torch.bfloat16)]
    with path.open("a") as sink:

        def emit(row: dict) -> None:
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            what = row.get("skipped") or (
                f"{row['backend']}: {row['seconds'] * 1e3:.3f} ms, {row['fraction_of_copy']:.2f} of copy"
            )
            print(f"{row['op']} {row['dtype']} {row['numel']:.0e} {row['shards']}: {what}", flush=True)

        for dtype, numel, shards in grid:
            dtype_name = str(dtype).removeprefix("torch.")
            copy_src = torch.randn(numel, device=device).to(dtype)
            copy_dst = torch.empty_like(copy_src)
            for label in OPS:
                op, _, k_text = label.partition(" K=")
                k = int(k_text) if k_text else 2
                base = dict(op=label, dtype=dtype_name, numel=numel, shards=shards or "llama")
                vector_bytes = numel * dtype.itemsize
                if numel >= 10**9 and (k > 2 or op in ("sgd_step", "adamw_step")):
                    emit(base | dict(skipped="memory: K vectors of 1e9 elements plus their peers' copies"))
                    continue
                if time.monotonic() > deadline:
                    emit(base | dict(skipped="out of time"))
                    continue
                try:
                    vectors = case_inputs(op, k, dtype, numel, shards)
                    copy_seconds, _ = timed(lambda dst=copy_dst, src=copy_src: dst.copy_(src))
                    copy_gbs = 2 * vector_bytes / copy_seconds / 1e9
                    min_bytes = MIN_BYTES[op](k) * vector_bytes
                    entries = [(b, calls(op, k, vectors, b)) for b in backends]
                    if numel < 10**9:
                        entries.append(("cat", cat_peer(op, k, vectors)))
                    for name, fn in entries:
                        if fn is None:
                            continue
                        seconds, host = timed(fn)
                        count = launches(fn) if numel == sizes[0] or shards is not None else None
                        fraction = min_bytes / seconds / 1e9 / copy_gbs
                        emit(base | dict(backend=name, seconds=seconds, host_us=host * 1e6, launches=count,
                                         copy_gbs=copy_gbs, fraction_of_copy=fraction))  # fmt: skip
                    del vectors, entries
                except torch.OutOfMemoryError as exc:
                    emit(base | dict(skipped=f"out of memory ({exc.__class__.__name__})"))
                if device == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
