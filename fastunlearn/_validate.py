"""Input checks shared by every op. They run before anything is written, name the offending
vector and shard, and raise ``TypeError`` (wrong kind of thing) or ``ValueError`` (wrong value)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MODES = ("always", "conflict", "ascent_conflict")
REDUCTIONS = ("sum", "mean")


def flatten_vectors(
    vectors: Sequence[Sequence[Tensor]], names: Sequence[str] | None = None
) -> tuple[list[Tensor], int]:
    """Checks K >= 1 vectors of n >= 1 matching shards; returns them flat (vector-major) and n.

    Errors call vector k ``names[k]`` (the caller's argument names), ``vectors[k]`` by default."""
    if isinstance(vectors, Tensor) or not isinstance(vectors, Sequence):
        raise TypeError("vectors must be a sequence of vectors (each a sequence of tensors)")
    if len(vectors) == 0:
        raise ValueError("vectors is empty: at least one vector is needed")
    names = vector_names(len(vectors), names)
    first = check_vector(vectors[0], names[0])
    flat = list(first)
    for k in range(1, len(vectors)):
        vector = check_vector(vectors[k], names[k])
        check_matches(vector, first, names[k], names[0])
        flat.extend(vector)
    return flat, len(first)


def vector_names(count: int, names: Sequence[str] | None = None) -> list[str]:
    return list(names) if names is not None else [f"vectors[{k}]" for k in range(count)]


def check_vector(vector: Sequence[Tensor], what: str) -> list[Tensor]:
    """One vector: a non-empty sequence of floating-point tensors of one dtype on one device."""
    if isinstance(vector, Tensor):
        raise TypeError(f"{what} is a Tensor; pass a vector as a list of shards, e.g. [t]")
    if not isinstance(vector, Sequence):
        raise TypeError(f"{what} must be a sequence of tensors, got {type(vector).__name__}")
    shards = list(vector)
    if not shards:
        raise ValueError(f"{what} has no shards")
    for i, shard in enumerate(shards):
        if not isinstance(shard, Tensor):
            raise TypeError(f"{what} shard {i} is a {type(shard).__name__}, not a Tensor")
    dtype, device = shards[0].dtype, shards[0].device
    _check_no_dtensor(shards, what)
    for i, shard in enumerate(shards):
        if shard.layout != torch.strided:
            raise TypeError(f"{what} shard {i} has layout {shard.layout}; fastunlearn ops take dense (strided) tensors")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{what} shard 0 has dtype {dtype}; fastunlearn ops take floating-point tensors")
    for i, shard in enumerate(shards):
        if shard.dtype != dtype:
            raise TypeError(f"{what} shard {i} has dtype {shard.dtype} but shard 0 has {dtype}")
        if shard.device != device:
            raise ValueError(f"{what} shard {i} is on {shard.device} but shard 0 is on {device}")
    return shards


def _check_no_dtensor(shards: list[Tensor], what: str) -> None:
    from fastunlearn.distributed import is_dtensor

    for i, shard in enumerate(shards):
        if is_dtensor(shard):
            raise TypeError(
                f"{what} shard {i} is a DTensor among plain tensors; pass every shard as a DTensor or as a local tensor"
            )


def check_matches(vector: list[Tensor], ref: list[Tensor], what: str, ref_what: str) -> None:
    """``vector`` pairs with ``ref`` shard by shard: same count, shapes, dtype and device."""
    if len(vector) != len(ref):
        raise ValueError(f"{what} has {len(vector)} shards but {ref_what} has {len(ref)}")
    if vector[0].dtype != ref[0].dtype:
        raise TypeError(f"{what} has dtype {vector[0].dtype} but {ref_what} has {ref[0].dtype}")
    if vector[0].device != ref[0].device:
        raise ValueError(f"{what} is on {vector[0].device} but {ref_what} is on {ref[0].device}")
    for i, (a, b) in enumerate(zip(vector, ref)):
        if a.shape != b.shape:
            raise ValueError(
                f"{what} shard {i} has shape {tuple(a.shape)} but {ref_what} shard {i} has {tuple(b.shape)}"
            )


def check_writable(outs: list[Tensor], what: str) -> None:
    """Outputs of an in-place op carry no autograd history that the write would corrupt, and are
    inference tensors only inside inference mode (torch's own rule for in-place updates; not
    checked under torch.compile, which cannot trace inference-mode queries)."""
    if not torch.compiler.is_compiling() and not torch.is_inference_mode_enabled():
        for i, t in enumerate(outs):
            if t.is_inference():
                raise ValueError(
                    f"{what} shard {i} is an inference tensor, which may only be updated in place inside "
                    "torch.inference_mode() (clone it first to get a normal tensor)"
                )
    if torch.is_grad_enabled():
        for i, t in enumerate(outs):
            if t.requires_grad:
                raise ValueError(
                    f"{what} shard {i} requires grad; in-place fastunlearn ops are not differentiable "
                    "(pass .grad tensors or detached copies, or call under torch.no_grad())"
                )


def check_not_differentiated(shards: list[Tensor], n: int, names: Sequence[str] | None = None) -> None:
    """In-place ops have no backward: with grad mode on, an input that requires grad would lose its
    graph without a word, so it is an error (names as in :func:`flatten_vectors`)."""
    if torch.is_grad_enabled():
        for s, t in enumerate(shards):
            if t.requires_grad:
                name = vector_names(len(shards) // n, names)[s // n]
                raise ValueError(
                    f"{name} shard {s % n} requires grad; in-place fastunlearn ops are not differentiable "
                    "(pass .grad tensors or detached copies, or call under torch.no_grad())"
                )


def check_weights(weights: Tensor, shape: tuple[int, ...], device: torch.device) -> None:
    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a Tensor on {device}, got {type(weights).__name__}")
    if weights.dtype not in FLOAT_DTYPES:
        raise TypeError(f"weights must be floating point, got {weights.dtype}")
    if tuple(weights.shape) != shape:
        raise ValueError(f"weights must have shape {shape} (one per vector), got {tuple(weights.shape)}")
    if weights.device != device:
        raise ValueError(f"weights are on {weights.device} but the vectors are on {device}")
    if weights.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "weights requires grad; combine_ is not differentiable (detach them or call under torch.no_grad())"
        )


def check_eps(eps: float) -> float:
    """``eps`` as a float: a finite, non-negative real number."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (0 <= eps < float("inf")):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return float(eps)


def check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(map(repr, choices))}")


def is_dense(t: Tensor) -> bool:
    """Whether ``t`` covers exactly ``numel`` consecutive elements (in any dimension order)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _native_overlap_check() -> bool:
    from fastunlearn import _backend

    return _backend.native_available()


def _span(t: Tensor) -> tuple[int, int]:
    start = t.data_ptr()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return start, start + (last + 1) * t.element_size()


def check_overlaps(
    outs: list[Tensor], shards: list[Tensor], n: int, what: str = "out", input_names: Sequence[str] | None = None
) -> None:
    """Rejects outputs that write an element twice or whose memory meets another output or an
    input other than themselves.

    An output may be exactly the input at the same shard index (an in-place update reads each
    element before writing it); any other overlap would make the result depend on the order in
    which the kernel visits memory. Errors call the outputs ``what`` and input vector k
    ``input_names[k]``. Runs on real tensors only (fake tensors have no memory). The C++
    sweep (metadata only, any device) answers first; the Python one below finds the same conflict
    and words the error, and is the fallback without the extension.
    """
    if _native_overlap_check() and not torch.compiler.is_compiling():
        if not torch.ops.fastunlearn_cpu.find_overlap(outs, shards, n):
            return
    for i, t in enumerate(outs):
        if t.numel() > 1 and torch._debug_has_internal_overlap(t) == 1:
            raise ValueError(f"{what} shard {i} has elements that share memory (e.g. an expand()ed view)")
    spans = []
    for s, t in enumerate(outs):
        if t.numel() and t.device.type != "meta":
            spans.append((*_span(t), True, s, t))
    for s, t in enumerate(shards):
        if t.numel() and t.device.type != "meta":
            spans.append((*_span(t), False, s, t))
    spans.sort(key=lambda span: span[0])
    active: list[tuple] = []
    for span in spans:
        active = [a for a in active if a[1] > span[0]]
        for other in active:
            if other[2] or span[2]:
                out, inp = (other, span) if other[2] else (span, other)
                if not _same_place(out, inp, n):
                    raise ValueError(_overlap_message(out, inp, n, what, vector_names(len(shards) // n, input_names)))
        active.append(span)


def _same_place(out: tuple, inp: tuple, n: int) -> bool:
    a, b = out[4], inp[4]
    return (
        not inp[2]
        and out[3] % n == inp[3] % n
        and a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
    )


def _overlap_message(out: tuple, other: tuple, n: int, what: str, input_names: list[str]) -> str:
    if other[2]:
        first, second = sorted((out[3] % n, other[3] % n))
        return f"{what} shard {first} and {what} shard {second} overlap in memory; outputs must not share memory"
    return (
        f"{what} shard {out[3] % n} overlaps {input_names[other[3] // n]} shard {other[3] % n} in memory; "
        "an output may only be the very same tensor as the input at its own shard index"
    )
