"""Runs every CPU kernel family once, at one and at two threads, and prints one JSON object:
{"level": the ISA level in use, "digests": {case: sha256 of the result bytes}, "cancellation": ...}.

test_isa.py starts it under each FASTUNLEARN_CPU_ISA level and compares the levels' outputs.
"""

from __future__ import annotations

import hashlib
import json

import torch
from helpers import every_bit_pattern
from test_numerics import cancelling_pair

import fastunlearn as fu

SHAPES = [(37,), (1000,), (3, 77), (0,), (70_001,), (5,)]  # tails, an empty shard, a chunk straddle
DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}


def vectors(k: int, dtype: torch.dtype, seed: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen).to(dtype) for s in SHAPES] for _ in range(k)]


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def extreme_bf16() -> list[list[torch.Tensor]]:
    """bf16 products past fp32's range, into lane 0 (2^-127 then 2^128: inf unfused, finite fused)
    and lane 1 (2^-149 then 2^-150: a fused multiply-add rounds the sum once, differently)."""
    x, y = torch.ones(64), torch.ones(64)
    x[0], y[0], x[16], y[16] = 2.0**64, -(2.0**63), 2.0**64, 2.0**64
    x[1], y[1], x[17], y[17] = 2.0**-75, 2.0**-74, 2.0**-75, 2.0**-75
    return [[x.to(torch.bfloat16)], [y.to(torch.bfloat16)]]


def with_special_values(vector: list[torch.Tensor], dtype: torch.dtype) -> None:
    """NaNs (one with a payload), infinities: every level converts them alike."""
    vector[4][:4] = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf")])
    payload = {torch.bfloat16: 0x7FC1, torch.float16: 0x7E01}.get(dtype)
    if payload is not None:
        vector[4].view(torch.int16)[4] = payload


def copy(vector):
    return [t.clone() for t in vector]


def cases() -> dict[str, str]:
    out = {}
    out["gram/bf16/extreme"] = digest(fu.gram(extreme_bf16()))
    for name, dtype in DTYPES.items():
        for k in (1, 2, 3, 4, 5, 8, 9, 16):
            out[f"gram/{name}/K={k}"] = digest(fu.gram(vectors(k, dtype, seed=k)))
        for k in (1, 2, 3, 5):
            vs = vectors(k, dtype, seed=10 + k)
            target = [torch.empty_like(t) for t in vs[0]]
            fu.combine_(target, torch.linspace(-1.5, 2.0, k, dtype=torch.float64), vs)
            out[f"combine_/{name}/K={k}"] = digest(*target)
        if dtype.itemsize == 2:  # every value in and out of each level's conversions
            every = [every_bit_pattern().view(dtype)]
            # 1: each value back as it came (NaNs as c10's); 0.75: every rounding case, subnormal
            # results and underflow to zero among them.
            round_trips = [torch.empty_like(every[0]) for _ in range(2)]
            for weight, target in zip((1.0, 0.75), round_trips):
                fu.combine_([target], torch.tensor([weight], dtype=torch.float64), [every])
            small = [every[0][every[0].abs() < 2**-10]]  # subnormals and small normals: their products stay visible
            out[f"every value/{name}"] = digest(*round_trips, fu.gram([small, [small[0].flip(0)]]))
        special = vectors(2, dtype, seed=15)
        with_special_values(special[0], dtype)
        target = [torch.empty_like(t) for t in special[0]]
        fu.combine_(target, torch.tensor([0.5, -2.0], dtype=torch.float64), special)
        out[f"combine_/{name}/special"] = digest(*target)
        params = [torch.nn.Parameter(t.clone()) for t in special[1]]
        fu.optim.AdamW(params, lr=0.1).step_combined(torch.tensor([1.0, 1.0], dtype=torch.float64), special)
        out[f"adamw_step/{name}/special"] = digest(*params)
        g, r, d1, d2 = vectors(4, dtype, seed=20)
        projected = copy(g)
        stats = fu.project_(projected, r)
        out[f"project_/{name}"] = digest(*projected, stats.coef)
        normal = copy(g)
        fu.project_normal_(normal, [r, d1, d2])
        out[f"project_normal_/{name}"] = digest(*normal)
        merged = [torch.empty_like(t) for t in g]
        fu.pcgrad_(merged, [g, r, d1], order=torch.tensor([[1, 2, 0], [2, 0, 1], [0, 1, 2]]))
        out[f"pcgrad_/{name}"] = digest(*merged)
        for opt_name, make in (  # each of the steps' compiled variants (their switches)
            ("sgd", lambda p: fu.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
            ("sgd/plain", lambda p: fu.optim.SGD(p, lr=0.1)),
            ("sgd/nesterov", lambda p: fu.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
            ("sgd/dampening", lambda p: fu.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01,
                                                     maximize=True)),
            ("adamw", lambda p: fu.optim.AdamW(p, lr=0.1, weight_decay=0.01)),
            ("adamw/maximize", lambda p: fu.optim.AdamW(p, lr=0.1, maximize=True)),
        ):
            params = [torch.nn.Parameter(t.clone()) for t in d2]
            opt = make(params)
            for _ in range(2):
                opt.step_combined(torch.tensor([1.0, -0.5], dtype=torch.float64), [g, r])
            out[f"{opt_name}_step/{name}"] = digest(*params)
        out[f"token_stats/{name}"] = digest(*token_stats(dtype))
    return out


def token_stats(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Rows with masked logits, ties and an ignored target, over chunks with tails; enough rows for
    two threads to split them."""
    gen = torch.Generator().manual_seed(40)
    logits = (5 * torch.randn(400, 300, generator=gen)).to(dtype)
    logits[0, :] = -float("inf")
    logits[1, 7:] = -float("inf")
    logits[2, 10] = logits[2, 200] = 40.0
    targets = torch.randint(0, 300, (400,), generator=gen)
    targets[3] = -100
    return tuple(fu.token_stats_from_logits(logits, targets, chunk_size=130, backend="cpp"))


def cancellation() -> dict[str, str]:
    """The mid-size cancelling pair through the K = 2 and the K >= 5 Gram kernels, as float hex."""
    a, b = cancelling_pair(100_003, seed=3)
    a_parts, b_parts = list(a.split(40_000)), list(b.split(40_000))
    gen = torch.Generator().manual_seed(30)
    five = fu.gram([a_parts, b_parts, *(list(torch.randn(len(a), generator=gen).split(40_000)) for _ in range(3))])
    return {"dot": fu.dot(a_parts, b_parts).item().hex(), "gram5": five[0, 1].item().hex()}


def main() -> None:
    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results[threads] = cases()
    print(json.dumps({"level": fu.cpu_isa(), "digests": results, "cancellation": cancellation()}))


if __name__ == "__main__":
    main()
