"""The fast path of long shard lists on the ``cpp`` backend.

With thousands of shards, per-tensor Python work (validation, the dispatcher's argument
conversion, the custom-op wrapper) costs more than reading the data. For eager calls on CPU tensors
the public ops first hand their lists to plain C++ entry points (csrc/fast_path.cpp) that unpack
them directly and check what ``fastunlearn._validate`` checks. Anything those entry points do not
accept -- bad input, tensors that need autograd, other devices -- returns None here, and the op
takes its ordinary route, which validates in Python and raises the usual error. Nothing is written
before every check of a call has passed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from fastunlearn import _backend

#: Below this many shards the dispatcher's fixed cost, not per-tensor work, dominates a call.
MIN_SHARDS = 64

_ERRORS = (TypeError, ValueError, RuntimeError, IndexError)


def _native():
    from fastunlearn import _C

    return _C


def eligible(vectors: Sequence, backend: str) -> bool:
    """Whether a call on ``vectors`` (K lists or tuples of tensors) may take the fast path."""
    if not _backend.native_available() or _traced():
        return False
    if type(vectors) not in (list, tuple) or not vectors:
        return False
    first = vectors[0]
    if type(first) not in (list, tuple) or not first or not isinstance(first[0], Tensor):
        return False
    if any(type(vector) not in (list, tuple) or len(vector) != len(first) for vector in vectors):
        return False
    if len(vectors) * len(first) < MIN_SHARDS:
        return False
    try:
        return _backend.resolve(backend, first[0].device) == "cpp"
    except _ERRORS:
        return False


def _traced() -> bool:
    """Whether something watches the dispatcher (compile, jit or make_fx tracing, a dispatch or
    torch-function mode such as a profiler): the plain C++ entry points would go unseen."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or _get_current_dispatch_mode() is not None
        or torch._C._is_torch_function_mode_enabled()
    )


def gram(vectors: Sequence[Sequence[Tensor]]) -> Tensor | None:
    """The Gram matrix in the accumulation dtype, or None where the ordinary route must decide."""
    try:
        return _native().gram_vectors(vectors)
    except _ERRORS:
        return None


def combine_(out: Sequence[Tensor], weights: Tensor, vectors: Sequence[Sequence[Tensor]]) -> bool:
    """``out = sum_k weights[k] vectors[k]``; False (nothing written) where the ordinary route must decide."""
    try:
        _native().combine_vectors(out, weights, vectors)
        return True
    except _ERRORS:
        return False


def gram_combine_(
    out: Sequence[Tensor], vectors: Sequence[Sequence[Tensor]], weights_of: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor] | None:
    """The Gram matrix G of ``vectors``, then ``out = sum_k w[k] vectors[k]`` with ``w = weights_of(G)``,
    reading each shard's metadata once: ``(G, w)``, or None (nothing written) where the ordinary
    route must decide. ``weights_of`` runs only once every check of both passes has passed."""
    try:
        return _native().gram_combine_vectors(out, vectors, weights_of)
    except _ERRORS:
        return None
