"""The fast path of long shard lists on the ``cpp`` backend.

With thousands of shards, per-tensor Python work (validation, the dispatcher's argument
conversion, the custom-op wrapper) costs more than reading the data. For eager calls on CPU tensors
the public ops first hand the flat list to plain C++ entry points (csrc/fast_path.cpp) that unpack
it directly and check what ``fastunlearn._validate`` checks. Anything those entry points do not
accept -- bad input, tensors that need autograd, other devices -- returns None here, and the op
takes its ordinary route, which validates in Python and raises the usual error. Nothing is written
before every check of a call has passed.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def flat_list(vectors: Sequence, backend: str) -> list[Tensor] | None:
    """The shards of ``vectors``, flat and vector-major, if the call may take the fast path."""
    if not _backend.native_available() or _traced():
        return None
    if type(vectors) not in (list, tuple) or not vectors:
        return None
    flat: list = []
    for vector in vectors:
        if type(vector) not in (list, tuple) or len(vector) != len(vectors[0]):
            return None
        flat.extend(vector)
    if len(flat) < MIN_SHARDS or not isinstance(flat[0], Tensor):
        return None
    try:
        if _backend.resolve(backend, flat[0].device) != "cpp":
            return None
    except _ERRORS:
        return None
    return flat


def _traced() -> bool:
    """Whether something watches the dispatcher (compile, jit or make_fx tracing, a dispatch or
    torch-function mode such as a profiler): the plain C++ entry points would go unseen."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or _get_current_dispatch_mode() is not None
        or torch._C._is_torch_function_mode_enabled()
    )


def gram(flat: list[Tensor], num_vectors: int) -> Tensor | None:
    """The Gram matrix in the accumulation dtype, or None where the ordinary route must decide."""
    try:
        return _native().gram_list(flat, num_vectors)
    except _ERRORS:
        return None


def combine_(out: Sequence[Tensor], weights: Tensor, flat: list[Tensor], num_vectors: int) -> bool:
    """``out = sum_k weights[k] vectors[k]``; False (nothing written) where the ordinary route must decide."""
    if type(out) not in (list, tuple):
        return False
    try:
        _native().combine_list(list(out), weights, flat, num_vectors)
        return True
    except _ERRORS:
        return False
