"""Shard lists for the tests and the float64 computations they are compared with."""

from __future__ import annotations

import torch

BACKENDS = ["torch", "cpp"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# Shard shapes that exercise the chunk plan: one shard, odd sizes, zero-element shards.
SHAPE_SETS = {
    "one": [(1000,)],
    "odd": [(2**k + 17,) for k in range(4, 17, 3)] + [(3, 5, 7)],
    "with_empty": [(0,), (129,), (0, 4), (40000,), (1,)],
    "chunk_straddle": [(2**15 - 1,), (2,), (2**15 + 3,), (70000,)],
}


def make_vectors(shapes, k, dtype=torch.float32, seed=0, transposed=False):
    gen = torch.Generator().manual_seed(seed)
    vectors = []
    for _ in range(k):
        vector = []
        for shape in shapes:
            t = torch.randn(shape, generator=gen, dtype=torch.float64)
            if transposed and len(shape) == 2:
                t = torch.randn(shape[::-1], generator=gen, dtype=torch.float64).mT
            vector.append(t.to(dtype))
        vectors.append(vector)
    return vectors


def every_bit_pattern() -> torch.Tensor:
    """The 2^16 bit patterns of a 16-bit dtype, as int16 (view them as bf16 or fp16)."""
    return torch.arange(-(2**15), 2**15, dtype=torch.int16)


def flat64(vector):
    return torch.cat([s.reshape(-1).to(torch.float64) for s in vector]) if vector else torch.zeros(0)


def gram64(vectors):
    rows = torch.stack([flat64(v) for v in vectors])
    return rows @ rows.T


def abs_gram64(vectors):
    rows = torch.stack([flat64(v).abs() for v in vectors])
    return rows @ rows.T


def numel(vector):
    return sum(s.numel() for s in vector)


def clone(vector):
    return [s.clone() for s in vector]


def assert_same_bits(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y) and x.stride() == y.stride()


def pcgrad_flatten(grads, order, reduction):
    """PCGrad exactly as the widely copied PyTorch port writes it: flatten, then .item()-style
    Python loops, with the given per-task order. Used only as an independent oracle."""
    flat = [flat64(g) for g in grads]
    projected = []
    for i, g_i in enumerate(flat):
        g = g_i.clone()
        for j in order[i].tolist():
            d = torch.dot(g, flat[j])
            if d < 0:
                g = g - d * flat[j] / flat[j].norm() ** 2
        projected.append(g)
    stacked = torch.stack(projected)
    return stacked.sum(0) if reduction == "sum" else stacked.mean(0)


def quick_demo(task, out, figures):
    """Runs ``fastunlearn demo --task <task> --quick`` into ``out``; checks its report and that each
    of ``figures`` was drawn; returns results.json."""
    import json

    from fastunlearn.cli import main as cli_main

    cli_main(["demo", "--task", task, "--quick", "--out", str(out)])
    assert (out / "report.md").read_text().startswith("# fastunlearn demo")
    for figure in figures:
        assert (out / figure).stat().st_size > 0
    return json.loads((out / "results.json").read_text())
