"""Cancellation, determinism across threads and calls, zero norms, NaN/Inf propagation."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import BACKENDS, SHAPE_SETS, assert_same_bits, clone, every_bit_pattern, flat64, make_vectors
from tolerances import elementwise_bound, fp32_dot_bound

import fastunlearn as fu


def cancelling_pair(n: int, seed: int = 0):
    """fp32 vectors of magnitude ~1e3 whose exact dot product is ~1e-6 of sum |a_i b_i|."""
    gen = torch.Generator().manual_seed(seed)
    a = (torch.rand(n, generator=gen) * 2e3 + 1e3).to(torch.float32)
    b = torch.randn(n, generator=gen).to(torch.float32) * 1e3
    a64, b64 = a.double(), b.double()
    # Nudge the last element so that the exact dot becomes tiny but non-zero.
    residual = torch.dot(a64[:-1], b64[:-1])
    b[-1] = (-residual / a64[-1]).to(torch.float32)
    return a, b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [100_003, pytest.param(10_000_000, marks=pytest.mark.slow)])
def test_fp32_cancellation(backend, n):
    a, b = cancelling_pair(n)
    exact = torch.dot(a.double(), b.double()).item()
    scale = torch.dot(a.double().abs(), b.double().abs()).item()
    assert abs(exact) < 1e-5 * scale  # the case really cancels
    bound = fp32_dot_bound(exact, scale, n)
    products = torch.nn.functional.pad(a * b, (0, -n % 16))  # fp32 accumulation in 16 lanes fails it
    assert abs(products.view(-1, 16).cumsum(0)[-1].sum().item() - exact) > 10 * bound
    result = fu.dot([a[: n // 3], a[n // 3 :]], [b[: n // 3], b[n // 3 :]], backend=backend)
    assert abs(result.item() - exact) <= bound
    others = [torch.randn(n, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    assert abs(fu.gram([[a], [b], *([o] for o in others)], backend=backend)[0, 1].item() - exact) <= bound  # K >= 5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_outputs_round_once(backend, dtype):
    """bf16/fp16 combines compute in fp32 and round once: every element within half an ulp of the
    storage dtype (plus the fp32 error) of the float64 value, which arithmetic in bf16/fp16 misses."""
    vectors = make_vectors(SHAPE_SETS["chunk_straddle"], 3, dtype, seed=12)
    weights = torch.tensor([0.3, -1.7, 2.9], dtype=torch.float64)
    expected = sum(w * flat64(v) for w, v in zip(weights, vectors))
    bound = elementwise_bound(expected, sum(w.abs() * flat64(v).abs() for w, v in zip(weights, vectors)), dtype, 3)
    out = [torch.empty_like(s) for s in vectors[0]]
    fu.combine_(out, weights, vectors, backend=backend)
    assert bool(((flat64(out) - expected).abs() <= bound).all())
    own_dtype = sum(w.to(dtype) * torch.cat([s.flatten() for s in v]) for w, v in zip(weights, vectors))
    assert ((own_dtype.double() - expected).abs() > bound).float().mean() > 0.1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_half_combine_is_fp32_arithmetic_rounded_once(dtype, k):
    """The cpp kernels compute sum_k w_k x_k in fp32, operation by operation, and round once to
    nearest even: bit for bit what the same fp32 arithmetic in torch gives, over every value of the
    dtype in the first vector, infinities included. A
    NaN becomes c10's: 0x7FC0 in bf16, sign | 0x7E00 in fp16, whatever its payload (torch's
    vectorised casts keep payloads, so those lanes are checked against c10's rule)."""
    vectors = make_vectors([(37,), (70_001,), (5, 3)], k, dtype, seed=13)
    vectors[0][1][:4] = torch.tensor([math.nan, -math.nan, math.inf, -math.inf])
    vectors[0][1].view(torch.int16)[4] = 0x7FC1 if dtype == torch.bfloat16 else 0x7E01  # a NaN with a payload
    vectors[0][1].view(torch.int16)[5 : 5 + 2**16] = every_bit_pattern()  # subnormals, and each conversion
    weights = torch.linspace(-1.25, 2.5, k, dtype=torch.float64)
    out = [torch.empty_like(s) for s in vectors[0]]
    fu.combine_(out, weights, vectors, backend="cpp")
    w = weights.float()
    for i, shard in enumerate(out):
        acc = w[0] * vectors[0][i].float()
        for j in range(1, k):
            acc = acc + w[j] * vectors[j][i].float()
        expected = acc.to(dtype)
        nan = expected.isnan()
        assert torch.equal(shard.isnan(), nan), i
        assert torch.equal(shard[~nan].view(torch.int16), expected[~nan].view(torch.int16)), i
        c10_nans = {0x7FC0} if dtype == torch.bfloat16 else {0x7E00, 0xFE00 - 0x10000}
        assert set(shard[nan].view(torch.int16).tolist()) <= c10_nans, i


@pytest.mark.parametrize("backend", BACKENDS)
def test_bit_identical_with_one_and_two_threads(backend):
    vectors = make_vectors([(300_001,), (7,), (150_000,)], 3, torch.float32, seed=2)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 1):
            torch.set_num_threads(t)
            g = clone(vectors[0])
            gram = fu.gram(vectors, backend=backend)
            stats = fu.project_(g, vectors[1], backend=backend)
            results.append((gram, stats.coef, g))
    finally:
        torch.set_num_threads(threads)
    for gram, coef, g in results[1:]:
        assert torch.equal(gram, results[0][0])
        assert torch.equal(coef, results[0][1])
        assert_same_bits(g, results[0][2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_calls_are_bit_identical(backend):
    vectors = make_vectors(SHAPE_SETS["chunk_straddle"], 5, torch.bfloat16, seed=4)
    first = fu.gram(vectors, backend=backend)
    for _ in range(3):
        assert torch.equal(fu.gram(vectors, backend=backend), first)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["always", "conflict", "ascent_conflict"])
def test_zero_retain_gradient_is_guarded(backend, mode):
    g = make_vectors(SHAPE_SETS["odd"], 1, torch.float32)[0]
    before = clone(g)
    r = [torch.zeros_like(s) for s in g]
    stats = fu.project_(g, r, mode=mode, backend=backend)
    assert torch.isfinite(stats.coef) and stats.coef == 0
    assert_same_bits(g, before)
    alpha = fu.project_normal_(g, [r, r], backend=backend)
    assert torch.isfinite(alpha).all()
    assert_same_bits(g, before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_and_inf_propagate(backend, bad):
    vectors = make_vectors(SHAPE_SETS["odd"], 2, torch.float32, seed=6)
    vectors[1][2][5] = bad
    assert not torch.isfinite(fu.gram(vectors, backend=backend)[1, 1])
    for mode in ("always", "conflict", "ascent_conflict"):
        g = clone(vectors[0])
        stats = fu.project_(g, vectors[1], mode=mode, backend=backend)
        assert not torch.isfinite(stats.coef) or not torch.isfinite(flat64(g)).all()
        assert not torch.isfinite(flat64(g)).all()
    out = clone(vectors[0])
    fu.pcgrad_(out, vectors, backend=backend)
    assert not torch.isfinite(flat64(out)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_element_shards_only(backend):
    a = [torch.zeros(0), torch.zeros(0, 3)]
    assert torch.equal(fu.gram([a, a], backend=backend), torch.zeros(2, 2))
    out = [torch.zeros(0), torch.zeros(0, 3)]
    fu.combine_(out, torch.tensor([1.0, 2.0]), [a, a], backend=backend)
    assert fu.project_(out, a, backend=backend).coef == 0
