"""What every Triton kernel module shares: dtype maps, the persistent grid, interpreter detection."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

#: Whether the kernels were compiled for Triton's interpreter (TRITON_INTERPRET=1 at import time).
#: Only then do they accept CPU tensors.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

ELEMENT_TYPES = {
    torch.float64: tl.float64,
    torch.float32: tl.float32,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}

#: Programs per streaming multiprocessor of the persistent grid: enough loads in flight to cover
#: memory latency, few enough partial sums to add up afterwards.
PROGRAMS_PER_SM = 4

#: Grid of the interpreter, which runs programs one after another: small, but more than one, so
#: the chunk striding and the partial sums are exercised.
INTERPRETER_GRID = 3


def compute_type(dtype: torch.dtype):
    """Element-wise arithmetic runs in fp64 for fp64 tensors and in fp32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def check_device(device: torch.device) -> None:
    """Compiled kernels take CUDA tensors; interpreted ones CPU tensors only (the interpreter reads
    the shard tables' addresses on the host)."""
    if device.type == ("cpu" if INTERPRETED else "cuda"):
        return
    if INTERPRETED:
        raise ValueError("under TRITON_INTERPRET=1 the triton backend takes CPU tensors only")
    hint = " (CPU tensors need TRITON_INTERPRET=1 set before Triton is imported)" if device.type == "cpu" else ""
    raise ValueError(f"the triton backend runs on CUDA tensors, not on {device.type} tensors{hint}")


def grid_size(device: torch.device, num_chunks: int) -> int:
    """Persistent grid: a fixed number of programs per device, so results depend on the device
    model alone, never on timing."""
    programs = INTERPRETER_GRID if device.type == "cpu" else PROGRAMS_PER_SM * _sm_count(device.index)
    return max(1, min(programs, num_chunks))


@functools.cache
def _sm_count(index: int | None) -> int:
    return torch.cuda.get_device_properties(
        index if index is not None else torch.cuda.current_device()
    ).multi_processor_count


def next_power_of_2(k: int) -> int:
    return triton.next_power_of_2(k)
