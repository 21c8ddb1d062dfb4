"""Where an unlearning step's time and memory go, and what the fused ops save.

``fastunlearn profile`` (or :func:`profile_unlearning`) runs N steps of a method on a model -- a
built-in decoder-only transformer whose size is a flag, or your own module -- and reports per phase
(forward/backward on the forget batch, forward/backward on the retain batch, vector algebra,
optimizer): the median and spread of its time, the bytes the vector algebra and the fused optimizer
must move and the GB/s they reached against a bandwidth proxy measured in the same run, host reads
of tensor values per step, and peak memory. ``compare=True`` runs the same steps with the reference
ops -- torch.cat flattening and ``.item()`` reads, as public unlearning code does it, followed by
``torch.optim`` -- and reports the speedups.

>>> from fastunlearn.profile import profile_unlearning
>>> report = profile_unlearning(size="tiny", steps=2, warmup=1, compare=True, progress=False)
>>> sorted(report.fused.phases)[:2]
['backward_forget', 'backward_retain']
>>> report.fused.host_reads_per_step, report.reference.host_reads_per_step
(0.0, 2.0)
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastunlearn as fu
from fastunlearn import methods
from fastunlearn._phases import PhaseTimer
from fastunlearn._timing import median_seconds

PHASES = ("forward_forget", "backward_forget", "forward_retain", "backward_retain", "vector_algebra", "optimizer")

# --------------------------------------------------------------------------------------------
# A decoder-only transformer of a chosen size (random init, no download)
# --------------------------------------------------------------------------------------------

#: name -> (width, layers, heads, vocabulary); parameters ~ 12 L d^2 + 2 V d
SIZES = {
    "tiny": (64, 2, 4, 512),
    "10m": (256, 8, 8, 8192),
    "100m": (768, 12, 12, 16384),
    "300m": (1024, 24, 16, 16384),
    "1b": (2048, 18, 16, 32000),
}


#: Positions the built-in transformer embeds: the longest ``seq_len`` it takes.
CONTEXT = 256


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).transpose(1, 3).unbind(2)
        attention = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attention.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class DecoderLM(nn.Module):
    """A GPT-style language model: token + position embeddings, pre-norm blocks, untied head."""

    def __init__(self, width: int, layers: int, heads: int, vocab_size: int, context: int = CONTEXT) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed, self.position = nn.Embedding(vocab_size, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab_size, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.position(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def next_token_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))


@dataclass
class ProfileTarget:
    """What the profiler unlearns: a model, its loss, and a batch factory (forget or retain)."""

    model: nn.Module
    loss_fn: methods.LossFn
    make_batch: Callable[[torch.Generator], Any]


def transformer_target(size: str = "10m", *, batch: int = 2, seq_len: int = 64, device="cpu", dtype=None):
    """The built-in target: :class:`DecoderLM` of ``size`` on random tokens."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not 1 <= seq_len <= CONTEXT:
        raise ValueError(f"seq_len must be between 1 and {CONTEXT} (the built-in transformer's context), got {seq_len}")
    width, layers, heads, vocab = SIZES[size]
    model = DecoderLM(width, layers, heads, vocab).to(device=device, dtype=dtype)

    def make_batch(generator: torch.Generator) -> Tensor:
        return torch.randint(0, vocab, (batch, seq_len + 1), generator=generator).to(device)

    return ProfileTarget(model, next_token_loss, make_batch)


def load_target(spec: str, **kwargs) -> ProfileTarget:
    """``"transformer"`` or ``"package.module:factory"``; the factory returns a :class:`ProfileTarget`."""
    if spec == "transformer":
        return transformer_target(**kwargs)
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"model {spec!r}: expected 'transformer' or 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model {spec!r}: cannot import {module_name!r} ({exc})") from exc
    if not hasattr(module, attr):
        raise ValueError(f"model {spec!r}: module {module_name!r} has no attribute {attr!r}")
    target = getattr(module, attr)()
    if not isinstance(target, ProfileTarget):
        raise TypeError(f"{spec} must return a fastunlearn.profile.ProfileTarget, got {type(target).__name__}")
    return target


# --------------------------------------------------------------------------------------------
# The reference ops (what public unlearning code does), as a method for the same harness
# --------------------------------------------------------------------------------------------


class ReferenceSurgery(methods.UnlearningMethod):
    """Gradient Surgery as public code writes it: flatten both gradients with ``torch.cat``, read
    the dot product and the squared norm back with ``.item()``, project, unflatten into ``.grad``,
    then ``torch.optim.SGD(maximize=True)``. Same captures and phases as the fused method."""

    def __init__(self, model: nn.Module, *, lr: float, momentum: float, loss_fn: methods.LossFn) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, maximize=True)
        super().__init__(model, optimizer=opt, loss_fn=loss_fn, backend="torch")

    def step(self, forget_batch: Any, retain_batch: Any) -> methods.StepStats:
        forget_loss, g_f = self.gradient("forget", self.forget_loss_fn, forget_batch)
        retain_loss, g_r = self.gradient("retain", self.loss_fn, retain_batch)
        with self.phase("vector_algebra"):
            flat_f = torch.cat([g.reshape(-1) for g in g_f])
            flat_r = torch.cat([g.reshape(-1) for g in g_r])
            coef = torch.dot(flat_f, flat_r).item() / (flat_r.norm().item() ** 2 + fu.ops.DEFAULT_EPS)
            flat_u = flat_f - coef * flat_r
            for p, u in zip(self.params, torch.split(flat_u, [p.numel() for p in self.params])):
                p.grad = u.view_as(p)
        with self.phase("optimizer"):
            self.optimizer.step()
        for p in self.params:
            p.grad = None
        return {"forget_loss": forget_loss, "retain_loss": retain_loss}


#: Methods the profiler runs; ``compare`` has a reference implementation for the first only.
METHODS = ("surgery", "gradient_difference", "pcgrad", "gradient_ascent")


def _method(name: str, model: nn.Module, target: ProfileTarget, lr: float, momentum: float, reference: bool):
    if reference:
        return ReferenceSurgery(model, lr=lr, momentum=momentum, loss_fn=target.loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]
    sgd = fu.optim.SGD(params, lr=lr, momentum=momentum)
    builders = {
        "surgery": lambda: methods.GradientSurgery(model, optimizer=sgd, loss_fn=target.loss_fn),
        "gradient_difference": lambda: methods.GradientDifference(model, optimizer=sgd, loss_fn=target.loss_fn),
        "pcgrad": lambda: methods.PCGradUnlearn(model, optimizer=sgd, loss_fn=target.loss_fn, retain_tasks=2),
        "gradient_ascent": lambda: methods.GradientAscent(model, optimizer=sgd, loss_fn=target.loss_fn),
    }
    return builders[name]()


def _check_options(method: str, compare: bool, steps: int, warmup: int, device: str) -> torch.device:
    """Everything that can be checked before a model is built, so a bad option fails at once."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if compare and method != "surgery":
        raise ValueError(f"compare=True has a reference implementation for method 'surgery' only, not {method!r}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    try:
        dev = torch.device(device)
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(f"device {device!r} cannot be used here: {exc}") from None
    return dev


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------

_HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@contextlib.contextmanager
def count_host_reads() -> Iterator[list[int]]:
    """Counts calls that read a tensor's values back to the host (``.item()``, ``bool(t)``, ...).

    On CUDA each is a device synchronisation; on CPU it is the same pattern, counted.
    """
    counter = [0]
    originals = {name: getattr(torch.Tensor, name) for name in _HOST_READS}

    def counting(original):
        def wrapper(*args, **kwargs):
            counter[0] += 1
            return original(*args, **kwargs)

        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(original))
    try:
        yield counter
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@dataclass
class PhaseStats:
    median_ms: float
    min_ms: float
    max_ms: float
    bytes: int | None = None  #: minimum bytes the phase must move (vector algebra, optimizer)
    gbs: float | None = None
    x_roofline: float | None = None  #: time / (bytes / bandwidth proxy)


@dataclass
class RunStats:
    """One run of N steps with one implementation (fused or reference)."""

    step_median_ms: float
    step_min_ms: float
    step_max_ms: float
    phases: dict[str, PhaseStats]
    other_ms: float  #: median step time not inside any phase (scalar stats, Python glue)
    host_reads_per_step: float
    peak_rss_mb: float
    peak_device_mb: float | None


@dataclass
class ProfileReport:
    config: dict
    environment: dict
    parameters: int
    bandwidth_proxy_gbs: float
    fused: RunStats
    reference: RunStats | None = None
    unprofiled_step_median_ms: float | None = None
    profile_overhead: float | None = None  #: profiled / unprofiled median step time - 1
    speedups: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _sync_for(device: torch.device) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.type == "cuda" else None


def bandwidth_proxy_gbs(numel: int, device: torch.device, repeats: int = 5) -> float:
    """torch.dot over one contiguous pair of ``numel`` fp32 elements: 8 bytes per element read."""
    a = torch.randn(numel, device=device)
    b = torch.randn(numel, device=device)
    sync = _sync_for(device) or (lambda: None)

    def run():
        torch.dot(a, b)
        sync()

    return 8 * numel / median_seconds(run, repeats) / 1e9


def _phase_bytes(method_name: str, numel: int, element: int) -> dict[str, int]:
    """Minimum bytes per phase. Fused surgery: the Gram reads g_f and g_r; the fused SGD step reads
    g_f, g_r, param, momentum and writes param, momentum. The reference moves more (cat copies)
    but is held to the same minimum, so "x roofline" compares like with like."""
    if method_name != "surgery":
        return {}
    return {"vector_algebra": 2 * numel * element, "optimizer": 6 * numel * element}


def _run_steps(method, target, steps, warmup, seed, label, progress, interleave_plain=False):
    """Runs warmup + steps instrumented steps (phase timer, host-read counter). With
    ``interleave_plain`` an uninstrumented step follows each instrumented one, on the same state and
    batches, so the profiler's own overhead is measured under the same conditions.
    Returns (instrumented step seconds, per-step phase seconds, host reads, plain step seconds)."""
    generator = torch.Generator().manual_seed(seed)
    batches = [(target.make_batch(generator), target.make_batch(generator)) for _ in range(steps + warmup)]
    device = next(target.model.parameters()).device
    sync = _sync_for(device) or (lambda: None)
    timer = PhaseTimer(sync=_sync_for(device))
    step_times, phase_times, plain_times, reads = [], [], [], 0
    total = (steps + warmup) * (2 if interleave_plain else 1)
    with _progress(label, total, progress) as advance:
        for i, (forget_batch, retain_batch) in enumerate(batches):
            method.timer = timer
            before = timer.snapshot()
            sync()
            with count_host_reads() as counter:
                start = time.perf_counter()
                method.step(forget_batch, retain_batch)
                sync()
                elapsed = time.perf_counter() - start
            after = timer.snapshot()
            advance()
            if i >= warmup:
                step_times.append(elapsed)
                phase_times.append({k: after[k] - before.get(k, 0.0) for k in after})
                reads += counter[0]
            if interleave_plain:
                method.timer = None
                sync()
                start = time.perf_counter()
                method.step(forget_batch, retain_batch)
                sync()
                if i >= warmup:
                    plain_times.append(time.perf_counter() - start)
                advance()
    method.timer = None
    return step_times, phase_times, reads, plain_times


@contextlib.contextmanager
def _progress(label: str, total: int, enabled: bool):
    if not enabled:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


def _summarise(step_times, phase_times, reads, phase_bytes, proxy_gbs, device) -> RunStats:
    phases = {}
    for name in PHASES:
        values = [p.get(name, 0.0) for p in phase_times]
        if not any(values):
            continue
        median = statistics.median(values)
        stats = PhaseStats(1e3 * median, 1e3 * min(values), 1e3 * max(values))
        if name in phase_bytes:
            stats.bytes = phase_bytes[name]
            stats.gbs = phase_bytes[name] / median / 1e9
            stats.x_roofline = median / (phase_bytes[name] / (proxy_gbs * 1e9))
        phases[name] = stats
    other = statistics.median(s - sum(p.values()) for s, p in zip(step_times, phase_times))
    peak_device = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return RunStats(
        step_median_ms=1e3 * statistics.median(step_times),
        step_min_ms=1e3 * min(step_times),
        step_max_ms=1e3 * max(step_times),
        phases=phases,
        other_ms=1e3 * other,
        host_reads_per_step=reads / len(step_times),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_device_mb=peak_device,
    )


def profile_unlearning(
    model: str = "transformer",
    *,
    size: str = "10m",
    method: str = "surgery",
    steps: int = 5,
    warmup: int = 1,
    compare: bool = False,
    lr: float = 1e-4,
    momentum: float = 0.9,
    batch: int = 2,
    seq_len: int = 64,
    device: str = "cpu",
    seed: int = 0,
    trace: str | None = None,
    progress: bool = True,
) -> ProfileReport:
    """Profiles ``steps`` unlearning steps (after ``warmup``) and returns a :class:`ProfileReport`.

    ``model`` is ``"transformer"`` (sized by ``size``: tiny, 10m, 100m, 300m, 1b) or an import path
    ``"package.module:factory"`` returning a :class:`ProfileTarget`. Every run starts from the
    same initial weights and sees the same batches. Each profiled fused step is followed by the same
    step without instrumentation; ``profile_overhead`` compares their medians. ``trace`` writes a
    torch.profiler Chrome trace of the fused steps to that path.
    """
    dev = _check_options(method, compare, steps, warmup, device)
    kwargs = {"size": size, "batch": batch, "seq_len": seq_len, "device": dev} if model == "transformer" else {}
    torch.manual_seed(seed)
    target = load_target(model, **kwargs)
    initial = {k: v.detach().clone() for k, v in target.model.state_dict().items()}
    params = [p for p in target.model.parameters() if p.requires_grad]
    numel = sum(p.numel() for p in params)
    proxy = bandwidth_proxy_gbs(numel, dev)
    phase_bytes = _phase_bytes(method, numel, params[0].element_size())

    def fresh_method(reference: bool):
        target.model.load_state_dict(initial)
        return _method(method, target.model, target, lr, momentum, reference)

    fused = fresh_method(False)
    with _trace(trace, dev):
        times, phases, reads, plain = _run_steps(fused, target, steps, warmup, seed, "fused", progress, True)
    report = ProfileReport(
        config=dict(
            model=model,
            size=size,
            method=method,
            steps=steps,
            warmup=warmup,
            lr=lr,
            momentum=momentum,
            batch=batch,
            seq_len=seq_len,
            device=device,
            seed=seed,
        ),  # fmt: skip
        environment=_environment(dev),
        parameters=numel,
        bandwidth_proxy_gbs=proxy,
        fused=_summarise(times, phases, reads, phase_bytes, proxy, dev),
        unprofiled_step_median_ms=1e3 * statistics.median(plain),
    )
    report.profile_overhead = report.fused.step_median_ms / report.unprofiled_step_median_ms - 1
    if compare:
        reference = fresh_method(True)
        times, phases, reads, _ = _run_steps(reference, target, steps, warmup, seed, "reference", progress)
        report.reference = _summarise(times, phases, reads, phase_bytes, proxy, dev)
        report.speedups = _speedups(report.fused, report.reference)
    return report


def _trace(path: str | None, device: torch.device):
    if path is None:
        return contextlib.nullcontext()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)

    @contextlib.contextmanager
    def export():
        with profiler:
            yield
        profiler.export_chrome_trace(path)

    return export()


def _speedups(fused: RunStats, reference: RunStats) -> dict[str, float]:
    out = {"step": reference.step_median_ms / fused.step_median_ms}
    for name in ("vector_algebra", "optimizer"):
        if name in fused.phases and name in reference.phases:
            out[name] = reference.phases[name].median_ms / fused.phases[name].median_ms
    if "vector_algebra" in fused.phases and "optimizer" in fused.phases:
        both = lambda run: run.phases["vector_algebra"].median_ms + run.phases["optimizer"].median_ms  # noqa: E731
        out["vector_algebra+optimizer"] = both(reference) / both(fused)
    return out


def _environment(device: torch.device) -> dict:
    env = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fastunlearn": fu.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def print_report(report: ProfileReport, console=None) -> None:
    """A rich table per run, then the speedups and the profiler's own overhead."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    runs = [("fastunlearn (fused)", report.fused)]
    if report.reference is not None:
        runs.append(("reference ops (cat + .item())", report.reference))
    c = report.config
    console.print(
        f"{c['method']} on {c['model']} {c['size'] if c['model'] == 'transformer' else ''} "
        f"({report.parameters / 1e6:.1f}M parameters), {c['steps']} steps, device {c['device']}; "
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
        console.print(f"host reads of tensor values per step: {run.host_reads_per_step:g}; {memory}")
    for name, value in report.speedups.items():
        console.print(f"speedup of fastunlearn over the reference ops, {name}: {value:.2f}x")
    console.print(
        f"profiler overhead: profiled step {report.fused.step_median_ms:.2f} ms vs unprofiled "
        f"{report.unprofiled_step_median_ms:.2f} ms ({report.profile_overhead:+.1%})"
    )


def main(args) -> None:
    for path in (args.json, args.trace):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"cannot write {path}: its directory does not exist")
    report = profile_unlearning(
        args.model, size=args.size, method=args.method, steps=args.steps, warmup=args.warmup, compare=args.compare,
        batch=args.batch, seq_len=args.seq_len, device=args.device, seed=args.seed, trace=args.trace,
    )  # fmt: skip
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
