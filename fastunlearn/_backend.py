"""Which backend runs a call: ``cpp`` (C++ CPU kernels), ``cuda`` (CUDA kernels), ``triton``
(``fastunlearn.kernels``) or ``torch`` (``fastunlearn.reference``, the specification).

Every op runs through ``torch.ops.fastunlearn`` (csrc/library.cpp); this module picks the backend
name the op is given, and registers the two backends written in Python with the extension.
``backend="auto"`` picks the fastest one available for the tensors' device; the environment
variable ``FASTUNLEARN_BACKEND`` overrides ``auto``. Naming a backend that cannot run is an error,
never a silent fallback.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastunlearn import reference, weighting

try:
    from fastunlearn import _C  # registers torch.ops.fastunlearn

    _CPP_ERROR: str | None = None
except ImportError as exc:  # a source checkout without a build, or an incompatible torch
    _C = None
    _CPP_ERROR = f"the C++ extension fastunlearn._C did not load ({exc})"

ENV_VAR = "FASTUNLEARN_BACKEND"


@dataclass(frozen=True, eq=False)  # compared by identity (the auto cache below)
class Backend:
    name: str
    gram: Callable | None
    combine_: Callable | None
    sgd_step_: Callable | None
    adamw_step_: Callable | None
    token_stats_update_: Callable | None
    devices: tuple[str, ...]
    unavailable_reason: str | None = None
    #: Why the backend cannot take tensors on a device it otherwise runs on (None: it can).
    device_error: Callable[[torch.device], str | None] = lambda device: None


# Triton is imported on first use only: `import fastunlearn` stays fast and never needs it.
def _triton_gram(shards, num_vectors):
    from fastunlearn.kernels import gram

    return gram.gram(shards, num_vectors)


def _triton_combine_(outs, weights, shards, num_vectors):
    from fastunlearn.kernels import combine

    combine.combine_(outs, weights, shards, num_vectors)


def _triton_sgd_step_(*args):
    from fastunlearn.kernels import fused_step

    fused_step.sgd_step_(*args)


def _triton_adamw_step_(*args):
    from fastunlearn.kernels import fused_step

    fused_step.adamw_step_(*args)


def _triton_token_stats_update_(*args):
    from fastunlearn.kernels import token_stats

    token_stats.token_stats_update_(*args)


def _triton_unavailable() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install 'fastunlearn[triton]')"
    return None


def _triton_device_error(device: torch.device) -> str | None:
    """CPU tensors run under Triton's interpreter, which must be chosen before Triton is imported;
    the interpreter cannot run on CUDA tensors (it reads the shard tables' addresses on the host)."""
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if device.type != "cpu":
        return "under TRITON_INTERPRET=1 the triton backend takes CPU tensors only" if interpreting else None
    if not interpreting:
        return "the triton backend takes CPU tensors only under TRITON_INTERPRET=1 (set before Triton is imported)"
    kernels = sys.modules.get("fastunlearn.kernels._support")
    if kernels is not None and not kernels.INTERPRETED:
        return "the triton kernels were compiled before TRITON_INTERPRET=1 was set; set it before the first call"
    return None


def _cuda_unavailable() -> str | None:
    if _CPP_ERROR is not None:
        return _CPP_ERROR
    if not _C.has_cuda():
        return "fastunlearn._C was built without its CUDA kernels (a CPU-only torch, or no nvcc at build time)"
    return None


_BACKENDS: dict[str, Backend] = {
    "torch": Backend(
        "torch",
        reference.gram,
        reference.combine_,
        reference.sgd_step_,
        reference.adamw_step_,
        reference.token_stats_update_,
        devices=("*",),
    ),
    "cpp": Backend("cpp", None, None, None, None, None, devices=("cpu",), unavailable_reason=_CPP_ERROR),
    "triton": Backend(
        "triton",
        _triton_gram,
        _triton_combine_,
        _triton_sgd_step_,
        _triton_adamw_step_,
        _triton_token_stats_update_,
        devices=("cuda", "cpu"),
        unavailable_reason=_triton_unavailable(),
        device_error=_triton_device_error,
    ),
    "cuda": Backend("cuda", None, None, None, None, None, devices=("cuda",), unavailable_reason=_cuda_unavailable()),
}

# Preference order of ``auto`` per device type.
# On CUDA the C++ route goes first where it was built: its launchers and shard tables are C++ and
# its engine is three launches (Gram partials, the scalar stage, the combine), where the Triton
# launchers are Python and its scalar stage a chain of torch ops (benchmarks/results/gpu-h200.md:
# project_ 15 launches and ~50x a _foreach_add_ on the Triton route).
_AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "torch")}


def backends() -> dict[str, str]:
    """Every backend and whether it can run here: ``"available"`` or the reason it cannot. The
    ``cpp`` backend names the ISA level its kernels run at, e.g. ``"available (avx2)"``.

    >>> import fastunlearn as fu
    >>> fu.backends()["torch"]
    'available'
    """
    report = {name: b.unavailable_reason or "available" for name, b in _BACKENDS.items()}
    if _CPP_ERROR is None:
        report["cpp"] = f"available ({_C.cpu_isa()})"
    return report


def cpu_isa() -> str:
    """The ISA level the C++ CPU kernels run at: ``"avx512"``, ``"avx2"`` or ``"baseline"``.

    The best this CPU supports, unless ``FASTUNLEARN_CPU_ISA`` names one (read once, when the
    extension loads; an unknown level, or one this CPU lacks, fails ``import fastunlearn``). Every
    level gives the same bits; only the speed differs.

    >>> import fastunlearn as fu
    >>> fu.cpu_isa() in ("avx512", "avx2", "baseline")
    True
    """
    require_native()
    return _C.cpu_isa()


def native_available() -> bool:
    """Whether the C++ extension loaded: every op runs through it."""
    return _CPP_ERROR is None


def require_native() -> None:
    if _CPP_ERROR is not None:
        raise RuntimeError(f"fastunlearn ops need their C++ extension: {_CPP_ERROR}")


def extension():
    """fastunlearn._C, whose module functions are the ops' Python entry points."""
    require_native()
    return _C


_DTYPE_RULES: dict[tuple[str, torch.dtype], torch.dtype] = {}


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """What reductions over ``dtype`` accumulate in: fp64 for fp32/fp64 (their products are exact
    there), fp32 for bf16/fp16. The rule is the extension's (csrc/common/dtypes.h), written once."""
    return _dtype_rule("accumulation_dtype", dtype)


def result_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype``, but never below fp32: what gram, dot and sq_norm return, and what weighted sums
    are computed in (csrc/common/dtypes.h)."""
    return _dtype_rule("result_dtype", dtype)


def _dtype_rule(name: str, dtype: torch.dtype) -> torch.dtype:
    result = _DTYPE_RULES.get((name, dtype))
    if result is None:
        result = _DTYPE_RULES[name, dtype] = getattr(extension(), name)(dtype)
    return result


def entry_point(name: str, first, *args):
    """Op ``name`` through its Python entry point in fastunlearn._C (nested lists passed as they are,
    their tensors borrowed): NotImplemented where that does not apply -- under torch.compile or a
    torch-function mode, which must see ``torch.ops.fastunlearn.<op>``, or for arguments the entry
    point does not take, whose errors the ``torch.ops`` route words. ``first`` is the first shard."""
    if (
        not isinstance(first, torch.Tensor)
        or torch.compiler.is_compiling()
        or torch._C._is_torch_function_mode_enabled()
    ):
        return NotImplemented
    return getattr(extension(), name)(*args)


def check_name(name: str) -> None:
    """Raises ValueError unless ``name`` is ``"auto"`` or a known backend (available or not)."""
    if name != "auto" and name not in _BACKENDS:
        known = ", ".join(["auto", *_BACKENDS])
        raise ValueError(f"unknown backend {name!r}; expected one of: {known}")


# auto's choice on CPU tensors, kept with the candidates it weighed: valid while they are unchanged.
_auto_cpu: tuple[str, tuple[Backend, ...]] | None = None


def resolve(requested: str | None, device: torch.device) -> str:
    """The backend that runs a call on ``device``; raises if ``requested`` cannot."""
    global _auto_cpu
    name = requested or "auto"
    if name == "auto":
        name = os.environ.get(ENV_VAR) or "auto"
        if name == "auto" and device.type == "cpu":
            first, fallback = _AUTO_ORDER["cpu"]
            candidates = (_BACKENDS[first], _BACKENDS[fallback])
            if _auto_cpu is None or _auto_cpu[1] != candidates:
                _auto_cpu = (_auto(device), candidates)
            return _auto_cpu[0]
        if name != "auto" and name not in _BACKENDS:
            raise ValueError(f"{ENV_VAR}={name!r} names no backend; expected one of: {', '.join(['auto', *_BACKENDS])}")
    if name == "auto":
        return _auto(device)
    check_name(name)
    backend = _BACKENDS[name]
    if backend.unavailable_reason is not None:
        raise RuntimeError(f"backend {name!r} is unavailable: {backend.unavailable_reason}")
    if "*" not in backend.devices and device.type not in backend.devices:
        raise ValueError(f"backend {name!r} runs on {', '.join(backend.devices)} tensors, not on {device.type} tensors")
    error = backend.device_error(device)
    if error is not None:
        raise ValueError(error)
    return name


def resolve_token_stats(requested: str | None, device: torch.device) -> str:
    """The backend of :func:`fastunlearn.token_stats` on ``device``: as :func:`resolve`, except
    that the ``cuda`` backend has no token_stats kernel, so where ``auto`` would pick it (or
    ``FASTUNLEARN_BACKEND=cuda``, which is meant for every op) Triton runs, or the torch reference
    without Triton. ``backend="cuda"`` passed to token_stats itself is the op's error."""
    name = resolve(requested, device)
    if name != "cuda" or (requested or "auto") != "auto":
        return name
    triton = _BACKENDS["triton"]
    return "triton" if triton.unavailable_reason is None and triton.device_error(device) is None else "torch"


def _auto(device: torch.device) -> str:
    for candidate in _AUTO_ORDER.get(device.type, ("torch",)):
        backend = _BACKENDS[candidate]
        if backend.unavailable_reason is None and backend.device_error(device) is None:
            return candidate
    return "torch"


def _register() -> None:
    """Hands the Python-written backends, the ``auto`` resolver and the weightings to the extension."""
    for name in ("torch", "triton"):
        b = _BACKENDS[name]
        _C.register_backend(name, b.gram, b.combine_, b.sgd_step_, b.adamw_step_, b.token_stats_update_)
    _C.set_hooks(_resolve_for_op, weighting.native_weights)


def _resolve_for_op(device: str, op: str) -> str:
    """``auto`` for the op kernels (csrc/python_backend.cpp): token_stats has its own choice."""
    resolver = resolve_token_stats if op == "token_stats" else resolve
    return resolver("auto", torch.device(device))


if _C is not None:
    _register()
