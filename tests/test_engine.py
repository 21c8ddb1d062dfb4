"""The engine: Gram pass, weighting, combine pass, with built-in and user-written weightings, and
shards of mixed dtypes (bf16 weights beside fp32 adapters)."""

from __future__ import annotations

import pytest
import torch
from helpers import BACKENDS, flat64, gram64, make_vectors

import fastunlearn as fu


class HalfOfEach(fu.Weighting):
    """A user-written weighting: no native name, so the engine calls it on the device."""

    def __call__(self, gram):
        return torch.full((gram.shape[0],), 0.5, dtype=gram.dtype, device=gram.device)


def mixed(seed: int) -> list[list[torch.Tensor]]:
    """Two vectors whose shard 1 is bf16 and shard 2 fp64, the rest fp32, in every vector."""
    vectors = make_vectors([(33, 7), (300,), (5, 5), (1000,)], 2, torch.float32, seed=seed)
    for v in vectors:
        v[1], v[2] = v[1].bfloat16(), v[2].double()
    return vectors


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "weighting",
    [fu.Projection("always"), fu.Projection("conflict"), fu.SpanComplement(), HalfOfEach()],
    ids=["always", "conflict", "span", "custom"],
)
def test_aggregate_matches_its_weighting_on_the_float64_gram(backend, weighting):
    g, r = make_vectors([(40, 3), (17,)], 2, torch.float64, seed=5)
    expected_weights = weighting(gram64([g, r]))
    expected = [expected_weights[0] * a + expected_weights[1] * b for a, b in zip(g, r)]
    gram, weights = fu.aggregate_(g, [g, r], weighting, backend=backend)
    torch.testing.assert_close(gram, gram64(make_vectors([(40, 3), (17,)], 2, torch.float64, seed=5)))
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(g, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pcgrad_weighting_runs_natively_and_as_python(backend):
    vectors = make_vectors([(50,), (3, 3)], 3, torch.float64, seed=6)
    order = fu.pcgrad_order(3, generator=torch.Generator().manual_seed(1))
    out_native, out_python = [torch.zeros_like(s) for s in vectors[0]], [torch.zeros_like(s) for s in vectors[0]]
    native = fu.weighting.PCGrad(order, "sum")
    _, w_native = fu.aggregate_(out_native, vectors, native, backend=backend)

    class Unregistered(fu.weighting.PCGrad):
        native = None

    _, w_python = fu.aggregate_(out_python, vectors, Unregistered(order, "sum"), backend=backend)
    torch.testing.assert_close(w_native, w_python)
    torch.testing.assert_close(out_native, out_python)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtype_shards_meet_in_float64(backend):
    g, r = mixed(7)
    expected = gram64([g, r])
    gram = fu.gram([g, r], backend=backend)
    assert gram.dtype == torch.float64  # one shard is fp64
    # bf16 products are exact in fp32; the fp32 partial sums of its shard bound the error.
    torch.testing.assert_close(gram, expected, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_project_on_mixed_dtype_shards(backend):
    g, r = mixed(8)
    gram = gram64([g, r])
    coef = gram[0, 1] / gram[1, 1]
    expected = [(a.double() - coef * b.double()).to(a.dtype) for a, b in zip(g, r)]
    stats = fu.project_(g, r, backend=backend)
    torch.testing.assert_close(stats.coef, coef, rtol=1e-5, atol=0)
    for got, want in zip(g, expected):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-2 if got.dtype == torch.bfloat16 else 1e-5, atol=1e-2)
    # After the projection g is orthogonal to r up to the storage rounding of g's bf16 shard.
    assert abs(float(flat64(g) @ flat64(r))) < 0.2


def test_mixed_dtypes_without_fp64_return_fp32():
    a = [torch.ones(4, dtype=torch.bfloat16), torch.ones(3, dtype=torch.float32)]
    assert fu.sq_norm(a).dtype == torch.float32
    assert fu.sq_norm(a).item() == 7.0


def test_gram_of_mixed_dtypes_is_differentiable():
    a = [torch.randn(5, dtype=torch.float64, requires_grad=True), torch.randn(3, requires_grad=True)]
    fu.sq_norm(a).backward()
    torch.testing.assert_close(a[0].grad, 2 * a[0].detach())
    torch.testing.assert_close(a[1].grad, 2 * a[1].detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_weightings_refuse_the_wrong_number_of_vectors_before_writing(backend):
    g, r, h = make_vectors([(5,), (2, 2)], 3, torch.float32, seed=9)
    before = [s.clone() for s in g]
    versions = [s._version for s in g]
    with pytest.raises(ValueError, match="a projection weighting takes two vectors"):
        fu.aggregate_(g, [g, r, h], fu.Projection("always"), backend=backend)
    with pytest.raises(ValueError, match="a projection weighting takes two vectors"):
        fu.aggregate_(g, [g], fu.Projection("conflict"), backend=backend)
    with pytest.raises(ValueError, match="span-complement weighting takes g and at least one direction"):
        fu.aggregate_(g, [g], fu.SpanComplement(), backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(g, before)) and [s._version for s in g] == versions


def test_pcgrad_weighting_takes_any_integer_order_and_refuses_an_invalid_one():
    vectors = make_vectors([(7,)], 2, torch.float64, seed=10)
    out = [torch.zeros(7, dtype=torch.float64)]
    _, weights = fu.aggregate_(out, vectors, fu.weighting.PCGrad(torch.tensor([[1, 0], [0, 1]], dtype=torch.int32)))
    assert weights.dtype == torch.float64 and torch.isfinite(weights).all()
    with pytest.raises(ValueError, match="permutation"):
        fu.aggregate_(out, vectors, fu.weighting.PCGrad(torch.tensor([[0, 2], [1, 0]])))


def test_subclasses_with_torch_function_see_the_op():
    seen = []

    class Watched(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return super().__torch_function__(func, types, args, kwargs or {})

    a = [torch.randn(4).as_subclass(Watched)]
    fu.gram([a, a])
    assert any("fastunlearn" in name for name in seen), seen


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_a_nested_tensor_is_refused_by_layout():
    nested = torch.nested.nested_tensor([torch.randn(2), torch.randn(3)])
    with pytest.raises(TypeError, match="layout torch.jagged; fastunlearn ops take dense"):
        fu.gram([[torch.randn(4)], [nested]])


def test_method_weightings_are_the_methods_formulas():
    gen = torch.Generator().manual_seed(11)
    a = torch.randn(3, 6, dtype=torch.float64, generator=gen)
    gram = a @ a.T
    eps = fu.weighting.DEFAULT_EPS
    c = gram[0, 1] / (gram[1, 1] + eps)
    surgery = fu.methods.SurgeryWeighting("always", retain_weight=0.5)(gram[:2, :2])
    torch.testing.assert_close(surgery, torch.stack([-torch.ones_like(c), c + 0.5]), rtol=0, atol=0)
    w_f, w_r = torch.tensor(-0.3, dtype=torch.float64), torch.tensor(0.25, dtype=torch.float64)
    nabla = fu.methods.NablaTauWeighting(w_f, w_r, "always")(gram[:2, :2])
    torch.testing.assert_close(nabla, torch.stack([w_f, w_r - w_f * c]), rtol=0, atol=0)
    signs = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    order = fu.pcgrad_order(3, generator=torch.Generator().manual_seed(0))
    signed = fu.weighting.Signed(fu.weighting.PCGrad(order, "sum"), (-1.0, 1.0, 1.0))(gram)
    expected = fu.pcgrad_weights(signs[:, None] * gram * signs, reduction="sum", order=order) * signs
    torch.testing.assert_close(signed, expected, rtol=0, atol=0)
    torch.testing.assert_close(fu.weighting.Fixed((-1.0, 2.0))(gram[:2, :2]), torch.tensor([-1.0, 2.0]).double())
    with pytest.raises(ValueError, match="2 fixed weights for a Gram of 3 vectors"):
        fu.weighting.Fixed((-1.0, 2.0))(gram)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_methods_weighting_in_aggregate_gives_the_direction_its_step_takes(backend):
    # Gradient Surgery with plain SGD at lr 1 moves the parameters by -d; aggregate_ writes d.
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    method = fu.methods.GradientSurgery(model, lr=1.0, retain_weight=0.5, backend=backend)
    before = [p.detach().clone() for p in model.parameters()]
    forget, retain = (x[:8], y[:8]), (x[8:], y[8:])
    g_f = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x[:8]), y[:8]), list(model.parameters()))
    g_r = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x[8:]), y[8:]), list(model.parameters()))
    method.step(forget, retain)
    d = [torch.empty_like(g) for g in g_f]
    fu.aggregate_(d, [list(g_f), list(g_r)], method.weighting, backend=backend)
    for b, p, step in zip(before, model.parameters(), d):
        torch.testing.assert_close(b - p.detach(), step, rtol=1e-5, atol=1e-6)
