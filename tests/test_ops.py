"""Every op against a float64 computation, on both CPU backends, all dtypes and shard layouts."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    BACKENDS,
    DTYPES,
    SHAPE_SETS,
    abs_gram64,
    clone,
    flat64,
    gram64,
    make_vectors,
    numel,
    pcgrad_flatten,
)
from tolerances import elementwise_bound, elementwise_tol, reduction_atol

import fastunlearn as fu


def assert_gram_close(result, vectors, dtype):
    expected = gram64(vectors)
    atol = reduction_atol(dtype, numel(vectors[0]), abs_gram64(vectors).max().item())
    torch.testing.assert_close(result.to(torch.float64), expected, rtol=0, atol=atol)


def assert_vector_close(result, expected_flat, dtype, num_terms, magnitude, extra=0.0):
    """`result` within elementwise_bound of the float64 value (plus `extra`, per element)."""
    error = (flat64(result) - expected_flat).abs()
    bound = elementwise_bound(expected_flat, magnitude, dtype, num_terms) + extra
    worst = int((error - bound).argmax())
    assert bool((error <= bound).all()), f"element {worst}: error {error[worst]:.3g} > bound {bound[worst]:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_gram_matches_float64(backend, dtype, shapes, k):
    vectors = make_vectors(shapes, k, dtype, seed=k)
    result = fu.gram(vectors, backend=backend)
    assert result.shape == (k, k)
    assert result.dtype == (dtype if dtype in (torch.float32, torch.float64) else torch.float32)
    assert_gram_close(result, vectors, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [4, 16])
def test_gram_thousand_shards(backend, k):
    shapes = [(1 + (i * 37) % 300,) for i in range(1000)]
    vectors = make_vectors(shapes, k, torch.float32, seed=3)
    assert_gram_close(fu.gram(vectors, backend=backend), vectors, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transposed_and_strided_shards_pair_by_index(backend, dtype):
    a = make_vectors([(33, 65), (17, 9)], 1, dtype, seed=1, transposed=True)[0]
    b = make_vectors([(33, 65), (17, 9)], 1, dtype, seed=2)[0]
    c = [torch.randn(33, 130).to(dtype)[:, ::2], torch.randn(9, 17).to(dtype).mT]
    vectors = [a, b, c]
    assert not a[0].is_contiguous() and not c[0].is_contiguous()
    assert_gram_close(fu.gram(vectors, backend=backend), vectors, dtype)

    out = [s.clone() for s in a]  # transposed layout kept by clone
    fu.combine_(out, torch.tensor([0.5, -2.0, 1.0]), vectors, backend=backend)
    expected = 0.5 * flat64(a) - 2.0 * flat64(b) + flat64(c)
    magnitude = 0.5 * flat64(a).abs() + 2.0 * flat64(b).abs() + flat64(c).abs()
    assert_vector_close(out, expected, dtype, 3, magnitude)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dot_and_sq_norm(backend):
    a, b = make_vectors(SHAPE_SETS["odd"], 2, torch.float64, seed=5)
    torch.testing.assert_close(fu.dot(a, b, backend=backend), torch.dot(flat64(a), flat64(b)))
    torch.testing.assert_close(fu.sq_norm(a, backend=backend), flat64(a).square().sum())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
def test_combine_matches_float64(backend, dtype, shapes):
    vectors = make_vectors(shapes, 3, dtype, seed=7)
    weights = torch.tensor([0.25, -1.5, 3.0])
    out = [torch.full_like(s, 99) for s in vectors[0]]
    result = fu.combine_(out, weights, vectors, backend=backend)
    assert result is out
    expected = sum(w * flat64(v) for w, v in zip(weights.double(), vectors))
    magnitude = sum(w.abs() * flat64(v).abs() for w, v in zip(weights.double(), vectors))
    assert_vector_close(out, expected, dtype, 3, magnitude)


@pytest.mark.parametrize("backend", BACKENDS)
def test_combine_in_place_over_an_input(backend):
    g, r = make_vectors(SHAPE_SETS["chunk_straddle"], 2, torch.float32, seed=8)
    expected = 2.0 * flat64(g) - 0.5 * flat64(r)
    magnitude = 2.0 * flat64(g).abs() + 0.5 * flat64(r).abs()
    fu.combine_(g, torch.tensor([2.0, -0.5], dtype=torch.float64), [g, r], backend=backend)
    assert_vector_close(g, expected, torch.float32, 2, magnitude)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["always", "conflict", "ascent_conflict"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_project_matches_float64(backend, dtype, mode, sign):
    g, r = make_vectors(SHAPE_SETS["odd"], 2, dtype, seed=11)
    g = [(s + sign * t).to(dtype) for s, t in zip(g, r)]  # make g.r clearly positive or negative
    g64, r64 = flat64(g), flat64(r)
    d = torch.dot(g64, r64)
    projects = {"always": True, "conflict": bool(d < 0), "ascent_conflict": bool(d > 0)}[mode]
    coef = d / r64.square().sum() if projects else torch.zeros((), dtype=torch.float64)
    stats = fu.project_(g, r, mode=mode, backend=backend)
    scale = abs_gram64([g, r]).max().item()
    atol = reduction_atol(dtype, g64.numel(), scale)
    torch.testing.assert_close(stats.dot.double(), d, rtol=0, atol=atol)
    torch.testing.assert_close(stats.g_sq_norm.double(), g64.square().sum(), rtol=0, atol=atol)
    torch.testing.assert_close(stats.r_sq_norm.double(), r64.square().sum(), rtol=0, atol=atol)
    torch.testing.assert_close(stats.coef.double(), coef, rtol=1e-5 if dtype != torch.float64 else 1e-12, atol=1e-12)
    # Judged given the op's own coefficient, whose error is bounded above.
    coef_error = (stats.coef.double() - coef).abs() * r64.abs()
    assert_vector_close(g, g64 - coef * r64, dtype, 2, g64.abs() + (coef * r64).abs(), extra=coef_error)
    if projects:  # the projected g is orthogonal to r
        assert abs(torch.dot(flat64(g), r64)) <= 8 * elementwise_tol(dtype, 2)["rtol"] * g64.norm() * r64.norm()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [1, 3])
def test_project_normal_removes_the_span(backend, m):
    vectors = make_vectors(SHAPE_SETS["with_empty"], m + 1, torch.float64, seed=13)
    g, directions = clone(vectors[0]), vectors[1:]
    R = torch.stack([flat64(d) for d in directions])
    g64 = flat64(g)
    alpha_expected = torch.linalg.solve(R @ R.T, R @ g64)
    alpha = fu.project_normal_(g, directions, backend=backend)
    torch.testing.assert_close(alpha, alpha_expected)
    torch.testing.assert_close(flat64(g), g64 - alpha_expected @ R)
    torch.testing.assert_close(R @ flat64(g), torch.zeros(m, dtype=torch.float64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["repeated", "scaled", "zero", "sum_of_two"])
def test_project_normal_with_dependent_directions_removes_the_span(backend, dtype, case):
    g, a, b = make_vectors(SHAPE_SETS["odd"], 3, dtype, seed=29)
    dependent = {
        "repeated": [s.clone() for s in a],
        "scaled": [-2.5 * s for s in a],
        "zero": [torch.zeros_like(s) for s in a],
        "sum_of_two": [x + y for x, y in zip(a, b)],
    }[case]
    directions = [a, b, dependent]
    R = torch.stack([flat64(d) for d in directions])
    g64 = flat64(g)
    # Projection onto the complement of span(a, b), from an independent basis.
    basis = torch.stack([flat64(a), flat64(b)])
    expected = g64 - torch.linalg.lstsq(basis.T, g64.unsqueeze(1)).solution.squeeze(1) @ basis
    alpha = fu.project_normal_(g, directions, backend=backend)
    assert torch.isfinite(alpha).all() and alpha[2] == 0
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(flat64(g), expected, rtol=tolerance, atol=tolerance * float(g64.abs().max()))
    residual = R @ flat64(g)
    assert residual.abs().max() <= tolerance * float(R.norm(dim=1).max() * g64.norm())


@pytest.mark.parametrize("backend", BACKENDS)
def test_project_normal_damps_a_tiny_direction_without_overshooting(backend):
    # eps comparable to a direction's squared norm shrinks its share; a repeat of its span adds nothing.
    a, b = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    g = [a + b]
    alpha = fu.project_normal_(g, [[1e-4 * a], [a.clone()]], eps=1e-8, backend=backend)
    assert alpha[1] == 0
    torch.testing.assert_close(g[0], torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64))


def test_span_coefficients_are_differentiable():
    directions = torch.randn(4, 9, dtype=torch.float64)
    gram = (directions @ directions.T).requires_grad_()
    assert torch.autograd.gradcheck(lambda gram: fu.SpanComplement(0.0)(gram), (gram,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_project_normal_with_one_direction_is_project(backend):
    g, r = make_vectors(SHAPE_SETS["odd"], 2, torch.float32, seed=17)
    g2 = clone(g)
    fu.project_(g, r, backend=backend)
    fu.project_normal_(g2, [r], backend=backend)
    torch.testing.assert_close(g2, g, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_pcgrad_matches_flatten_reference(backend, k, reduction):
    vectors = make_vectors(SHAPE_SETS["with_empty"], k, torch.float64, seed=19 + k)
    vectors[1] = [-0.8 * a + 0.3 * b for a, b in zip(vectors[0], vectors[1])]  # force conflicts
    order = fu.pcgrad_order(k, generator=torch.Generator().manual_seed(k))
    out = [torch.empty_like(s) for s in vectors[0]]
    stats = fu.pcgrad_(out, vectors, reduction=reduction, order=order, backend=backend)
    expected = pcgrad_flatten(vectors, order, reduction)
    torch.testing.assert_close(flat64(out), expected)
    torch.testing.assert_close(stats.gram, gram64(vectors))
    torch.testing.assert_close(stats.weights, fu.pcgrad_weights(stats.gram, reduction=reduction, order=order))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pcgrad_in_place_over_first_task(backend):
    vectors = make_vectors(SHAPE_SETS["odd"], 3, torch.float64, seed=23)
    order = fu.pcgrad_order(3, generator=torch.Generator().manual_seed(0))
    expected = pcgrad_flatten(vectors, order, "mean")
    fu.pcgrad_(vectors[0], vectors, order=order, backend=backend)
    torch.testing.assert_close(flat64(vectors[0]), expected)


def test_pcgrad_random_order_is_reproducible_with_a_generator():
    g = torch.randn(6, 6, dtype=torch.float64)
    gram = g @ g.T - 3.0
    w1 = fu.pcgrad_weights(gram, generator=torch.Generator().manual_seed(5))
    w2 = fu.pcgrad_weights(gram, generator=torch.Generator().manual_seed(5))
    assert torch.equal(w1, w2)
    order = fu.pcgrad_order(6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(order.sort(dim=1).values, torch.arange(6).expand(6, 6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree(backend):
    vectors = make_vectors(SHAPE_SETS["chunk_straddle"], 4, torch.float32, seed=29)
    torch.testing.assert_close(fu.gram(vectors, backend=backend), fu.gram(vectors, backend="torch"))
