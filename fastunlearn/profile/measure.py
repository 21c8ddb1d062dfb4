"""The measurement: N instrumented steps of a method on a target, each phase timed, host reads of
tensor values counted, bytes and bandwidth set against a proxy measured in the same run."""

from __future__ import annotations

import collections
import contextlib
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch

import fastunlearn as fu
from fastunlearn._phases import PhaseTimer
from fastunlearn._timing import median_seconds
from fastunlearn.eval import lm as lm_eval
from fastunlearn.profile.targets import METHODS, REFERENCES, load_target, make_method

PHASES = ("forward_forget", "backward_forget", "forward_retain", "backward_retain", "vector_algebra", "optimizer")

_HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")
#: Phases that run the model's code (its host reads are the model's, not the method's).
_MODEL_PHASES = ("forward_", "backward_")


@contextlib.contextmanager
def count_host_reads(timer: PhaseTimer | None = None) -> Iterator[collections.Counter]:
    """Counts calls that read a tensor's values back to the host (``.item()``, ``bool(t)``, ...),
    per phase of ``timer`` running at the time (``None``: outside any phase, or no timer).

    On CUDA each is a device synchronisation; on CPU it is the same pattern, counted.
    """
    counter: collections.Counter = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in _HOST_READS}

    def counting(original):
        def wrapper(*args, **kwargs):
            counter[timer.current if timer is not None else None] += 1
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
    host_reads_per_step: float  #: in the method's own work: vector algebra, optimizer, between phases
    model_host_reads_per_step: float  #: in the forward and backward passes: the model's own code
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
    #: ``eval_stats``: Min-K%++ statistics of one forget batch, materialised log_softmax vs token_stats
    lm_eval: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def count_kernel_launches(fn: Callable[[], object]) -> int:
    """CUDA kernels one call of ``fn`` launches (copies and memsets are not kernels), by
    torch.profiler, after one warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(1 for e in kernels if not e.name.startswith(("Memcpy", "Memset")))


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
    if method_name == "surgery":
        return {"vector_algebra": 2 * numel * element, "optimizer": 6 * numel * element}
    if method_name == "gru":  # the average: reads g_r and itself, writes itself; then the Gram of g_f and it
        return {"vector_algebra": 5 * numel * element, "optimizer": 6 * numel * element}
    return {}


def _run_steps(method, target, steps, warmup, seed, label, progress, interleave_plain=False):
    """Runs warmup + steps instrumented steps (phase timer, host-read counter). With
    ``interleave_plain`` an uninstrumented step follows each instrumented one, on the same state and
    batches, so the profiler's own overhead is measured under the same conditions.
    Returns (instrumented step seconds, per-step phase seconds, host reads [the method's, the
    model's], plain step seconds)."""
    generator = torch.Generator().manual_seed(seed)
    batches = [(target.make_batch(generator), target.make_batch(generator)) for _ in range(steps + warmup)]
    device = next(target.model.parameters()).device
    sync = _sync_for(device) or (lambda: None)
    timer = PhaseTimer(sync=_sync_for(device))
    step_times, phase_times, plain_times, reads = [], [], [], [0, 0]  # the method's, the model's
    total = (steps + warmup) * (2 if interleave_plain else 1)
    with _progress(label, total, progress) as advance:
        for i, (forget_batch, retain_batch) in enumerate(batches):
            method.timer = timer
            before = timer.snapshot()
            sync()
            with count_host_reads(timer) as counter:
                start = time.perf_counter()
                method.step(forget_batch, retain_batch)
                sync()
                elapsed = time.perf_counter() - start
            after = timer.snapshot()
            advance()
            if i >= warmup:
                step_times.append(elapsed)
                phase_times.append({k: after[k] - before.get(k, 0.0) for k in after})
                model = sum(n for phase, n in counter.items() if phase and phase.startswith(_MODEL_PHASES))
                reads[0] += sum(counter.values()) - model
                reads[1] += model
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
        host_reads_per_step=reads[0] / len(step_times),
        model_host_reads_per_step=reads[1] / len(step_times),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_device_mb=peak_device,
    )


def _check_options(method: str, compare: bool, steps: int, warmup: int, device: str) -> torch.device:
    """Everything that can be checked before a model is built, so a bad option fails at once."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if compare and method not in REFERENCES:
        raise ValueError(f"compare=True has reference implementations for {', '.join(REFERENCES)} only, not {method!r}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    try:
        dev = torch.device(device)
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(f"device {device!r} cannot be used here: {exc}") from None
    return dev


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
    lora: int | None = None,
    eval_stats: bool = False,
) -> ProfileReport:
    """Profiles ``steps`` unlearning steps (after ``warmup``) and returns a :class:`ProfileReport`.

    ``model`` is ``"transformer"`` (sized by ``size``: tiny, 10m, 100m, 300m, 1b), ``"hf:llama"``
    (a Hugging Face Llama: tiny, 10m, 100m, 1b; ``lora`` = adapter rank) or a factory returning a
    :class:`ProfileTarget`, ``"package.module:factory"`` or ``"file.py:factory"``, which gets the
    options among ``size``, ``batch``, ``seq_len``, ``device``, ``lora`` that it names. Every run starts from the
    same initial weights and sees the same batches. Each profiled fused step is followed by the same
    step without instrumentation; ``profile_overhead`` compares their medians. ``trace`` writes a
    torch.profiler Chrome trace of the fused steps to that path. ``eval_stats`` also times the
    Min-K%++ statistics of one forget batch both ways: the materialised ``log_softmax`` of the logits, as
    membership-inference code computes them, and :func:`fastunlearn.token_stats`.
    """
    dev = _check_options(method, compare, steps, warmup, device)
    if lora is not None and model == "transformer":
        raise ValueError("lora applies to model 'hf:llama' (or a factory taking it), not the built-in transformer")
    kwargs = {"size": size, "batch": batch, "seq_len": seq_len, "device": dev}
    if lora is not None:
        kwargs["lora"] = lora
    torch.manual_seed(seed)
    target = load_target(model, **kwargs)
    if eval_stats and target.lm_head is None:
        raise ValueError(f"eval_stats needs a language model whose head the profiler reads; {model!r} has no lm_head")
    initial = {k: v.detach().clone() for k, v in target.model.state_dict().items()}
    params = [p for p in target.model.parameters() if p.requires_grad]
    numel = sum(p.numel() for p in params)
    proxy = bandwidth_proxy_gbs(numel, dev)
    phase_bytes = _phase_bytes(method, numel, params[0].element_size())

    def fresh_method(reference: bool):
        target.model.load_state_dict(initial)
        return make_method(method, target.model, target, lr, momentum, reference)

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
            lora=lora,
            eval_stats=eval_stats,
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
    if eval_stats:
        target.model.load_state_dict(initial)
        report.lm_eval = _lm_eval(target, seed, dev)
    return report


@torch.no_grad()
def _lm_eval(target, seed: int, device: torch.device, repeats: int = 3) -> dict:
    """Both ways of the Min-K%++ statistics on one forget batch's hidden states (computed once)."""
    hidden, weight, targets = target.lm_head(target.model, target.make_batch(torch.Generator().manual_seed(seed)))
    sync = _sync_for(device) or (lambda: None)
    paths = {
        "materialised": lambda: lm_eval.materialised_stats(hidden @ weight.T, targets),
        "token_stats": lambda: fu.token_stats(hidden, weight, targets),
    }
    out: dict = {"tokens": targets.numel(), "vocab": weight.shape[0]}
    out["logits_mib"] = targets.numel() * weight.shape[0] * 4 / 2**20
    for name, fn in paths.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        times = []
        for _ in range(repeats + 1):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        out[f"{name}_ms"] = 1e3 * statistics.median(times[1:])
        if device.type == "cuda":
            out[f"{name}_peak_device_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return out


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
        "cpu_isa": fu.cpu_isa(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env
