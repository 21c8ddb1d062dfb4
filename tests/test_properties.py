"""Property-based tests: random shard lists, K, dtypes and weights against float64."""

from __future__ import annotations

import torch
from helpers import BACKENDS, abs_gram64, flat64, gram64, pcgrad_flatten
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import elementwise_tol, reduction_atol

import fastunlearn as fu

shapes = st.lists(st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple), min_size=1, max_size=6)


def build(shape_list, k, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shape_list] for _ in range(k)]


@settings(max_examples=60, deadline=None)
@given(
    shapes,
    st.integers(1, 6),
    st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    st.integers(0, 2**31),
    st.sampled_from(BACKENDS),
)
def test_gram_is_the_float64_gram(shape_list, k, dtype, seed, backend):
    vectors = build(shape_list, k, dtype, seed)
    result = fu.gram(vectors, backend=backend).double()
    length = sum(s.numel() for s in vectors[0])
    scale = abs_gram64(vectors).max().item() if length else 0.0
    torch.testing.assert_close(result, gram64(vectors), rtol=0, atol=reduction_atol(dtype, length, scale) + 1e-300)
    assert torch.equal(result, result.T)


@settings(max_examples=60, deadline=None)
@given(shapes, st.lists(st.floats(-4, 4), min_size=1, max_size=5), st.integers(0, 2**31), st.sampled_from(BACKENDS))
def test_combine_is_the_weighted_sum(shape_list, weights, seed, backend):
    vectors = build(shape_list, len(weights), torch.float32, seed)
    out = [torch.empty_like(s) for s in vectors[0]]
    fu.combine_(out, torch.tensor(weights, dtype=torch.float64), vectors, backend=backend)
    expected = sum(w * flat64(v) for w, v in zip(weights, vectors))
    tol = elementwise_tol(torch.float32, len(weights))
    torch.testing.assert_close(flat64(out), expected, rtol=tol["rtol"], atol=4 * tol["atol"] * len(weights))


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(2, 5), st.integers(0, 2**31), st.sampled_from(["sum", "mean"]))
def test_pcgrad_is_the_flatten_reference(shape_list, k, seed, reduction):
    vectors = build(shape_list, k, torch.float64, seed)
    order = fu.pcgrad_order(k, generator=torch.Generator().manual_seed(seed))
    out = [torch.empty_like(s) for s in vectors[0]]
    fu.pcgrad_(out, vectors, reduction=reduction, order=order)
    torch.testing.assert_close(flat64(out), pcgrad_flatten(vectors, order, reduction))
