"""Bad input: a clear TypeError/ValueError naming what differs, and every input left untouched."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import BACKENDS, assert_same_bits

import fastunlearn as fu


def fresh():
    gen = torch.Generator().manual_seed(0)
    g = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    r = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    return g, r


CASES = {
    "list_length": (ValueError, "has 1 shards", lambda g, r: fu.project_(g, r[:1])),
    "shape": (ValueError, "shard 1 has shape", lambda g, r: fu.project_(g, [r[0], r[1][:4]])),
    "dtype": (TypeError, "dtype", lambda g, r: fu.project_(g, [s.double() for s in r])),
    "integer": (TypeError, "floating-point", lambda g, r: fu.project_(g, [s.long() for s in r])),
    "device": (ValueError, "meta", lambda g, r: fu.project_(g, [r[0], r[1].to("meta")])),
    "empty_vector": (ValueError, "no shards", lambda g, r: fu.project_(g, [])),
    "no_vectors": (ValueError, "empty", lambda g, r: fu.combine_(g, torch.ones(0), [])),
    "k_zero_gram": (ValueError, "empty", lambda g, r: fu.gram([])),
    "tensor_as_vector": (TypeError, "list of shards", lambda g, r: fu.project_(g, r[1])),
    "not_a_tensor": (TypeError, "not a Tensor", lambda g, r: fu.project_(g, [r[0], 1.0])),
    "weights_length": (ValueError, r"shape \(2,\)", lambda g, r: fu.combine_(g, torch.ones(3), [g, r])),
    "weights_device": (ValueError, "weights are on", lambda g, r: fu.combine_(g, torch.ones(2, device="meta"), [g, r])),
    "weights_list": (TypeError, "weights must be a Tensor", lambda g, r: fu.combine_(g, [1.0, 2.0], [g, r])),
    "weights_int": (TypeError, "floating", lambda g, r: fu.combine_(g, torch.ones(2, dtype=torch.long), [g, r])),
    "out_overlaps_other_shard": (
        ValueError,
        "overlap",
        lambda g, r: fu.combine_([g[0], g[0].view(-1)[:5]], torch.ones(2), [g, r]),
    ),
    "out_partial_overlap": (
        ValueError,
        "overlaps",
        lambda g, r: fu.combine_([g[0], r[1][1:]], torch.ones(2), [[g[0], g[1][1:]], [r[0], r[1][:4]]]),
    ),
    "out_is_input_at_other_index": (ValueError, "overlaps", lambda g, r: fu.project_([g[1], r[1]], [r[1], g[1]])),
    "out_internal_overlap": (
        ValueError,
        "share memory",
        lambda g, r: fu.combine_([g[0], torch.zeros(1).expand(5)], torch.ones(1), [g]),
    ),
    "requires_grad": (ValueError, "requires grad", lambda g, r: fu.project_([g[0].requires_grad_(), g[1]], r)),
    "unknown_mode": (ValueError, "unknown mode", lambda g, r: fu.project_(g, r, mode="sometimes")),
    "unknown_backend": (ValueError, "unknown backend", lambda g, r: fu.project_(g, r, backend="fortran")),
    "unknown_reduction": (ValueError, "unknown reduction", lambda g, r: fu.pcgrad_(g, [g, r], reduction="max")),
    "order_shape": (
        ValueError,
        "order must have shape",
        lambda g, r: fu.pcgrad_(g, [g, r], order=torch.zeros(3, 3, dtype=torch.long)),
    ),
    "sparse_shard": (TypeError, "layout torch.sparse_coo", lambda g, r: fu.project_(g, [r[0].to_sparse(), r[1]])),
    "eps_none": (TypeError, "eps must be a float", lambda g, r: fu.project_(g, r, eps=None)),
    "eps_negative": (ValueError, "eps must be finite and >= 0", lambda g, r: fu.project_normal_(g, [r], eps=-1.0)),
    "eps_nan": (ValueError, "eps must be finite", lambda g, r: fu.pcgrad_(g, [g, r], eps=math.nan)),
    "generator_not_a_generator": (TypeError, "torch.Generator", lambda g, r: fu.pcgrad_(g, [g, r], generator=123)),
    "order_on_other_device": (
        ValueError,
        "order is on meta",
        lambda g, r: fu.pcgrad_(g, [g, r], order=torch.zeros(2, 2, dtype=torch.long, device="meta")),
    ),
    "integer_gram": (TypeError, "floating-point", lambda g, r: fu.pcgrad_weights(torch.ones(2, 2, dtype=torch.long))),
    "no_directions": (ValueError, "directions", lambda g, r: fu.project_normal_(g, [])),
    "group_not_a_process_group": (
        TypeError,
        "group must be a torch.distributed.ProcessGroup",
        lambda g, r: fu.gram([g, r], group="world"),
    ),
    "integer_result_dtype": (
        TypeError,
        "dtype must be a floating-point",
        lambda g, r: fu.gram([g, r], dtype=torch.int32),
    ),
    "weighting_not_a_weighting": (TypeError, "fastunlearn.Weighting", lambda g, r: fu.aggregate_(g, [g, r], "always")),
    "aggregate_overlap": (
        ValueError,
        r"out shard 1 overlaps vectors\[1\] shard 0",
        lambda g, r: fu.aggregate_([g[0], r[0].view(-1)[:5]], [g, r], fu.Projection("always")),
    ),
    "dtype_at_one_shard_index": (
        TypeError,
        r"r shard 1 has dtype torch.float64 but g shard 1 has torch.float32",
        lambda g, r: fu.project_(g, [r[0], r[1].double()]),
    ),
    "direction_shape": (ValueError, "shape", lambda g, r: fu.project_normal_(g, [r, [r[0], r[1][:2]]])),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_raises_before_writing(case):
    error, message, call = case
    g, r = fresh()
    g_before, r_before = [s.clone() for s in g], [s.clone() for s in r]
    versions = [s._version for s in [*g, *r]]
    with pytest.raises(error, match=message):
        call(g, r)
    assert_same_bits([s.detach() for s in g], g_before)
    assert_same_bits(r, r_before)
    # A rejected call moves no version counter either: autograd would see the tensors as modified.
    assert [s._version for s in [*g, *r]] == versions


def in_one_buffer():
    """g = (2x3, 5) in one buffer; ``clash`` is a 2x3 view over g shard 1, ``tail`` a separate (5,)."""
    base = torch.randn(20, generator=torch.Generator().manual_seed(1))
    g = [base[:6].view(2, 3), base[6:11]]
    return g, base[8:14].view(2, 3), torch.randn(5), torch.randn(2, 3)


OVERLAP_MESSAGES = {
    "combine_input": (
        r"out shard 1 overlaps vectors\[1\] shard 1 ",
        lambda g, clash, tail, other, b: fu.combine_(
            g, torch.ones(2), [[other, tail], [other, clash.view(-1)[:5]]], backend=b
        ),
    ),
    "combine_outputs": (
        r"out shard 0 and out shard 1 overlap in memory; outputs must not share memory",
        lambda g, clash, tail, other, b: fu.combine_(
            [g[1], clash.view(-1)[:5]], torch.ones(1), [[tail, tail]], backend=b
        ),
    ),
    "project_": (
        r"g shard 1 overlaps r shard 0 ",
        lambda g, clash, tail, other, b: fu.project_(g, [clash, tail], backend=b),
    ),
    "project_normal_": (
        r"g shard 1 overlaps directions\[1\] shard 0 ",
        lambda g, clash, tail, other, b: fu.project_normal_(g, [[other, tail], [clash, tail]], backend=b),
    ),
    "pcgrad_": (
        r"out shard 1 overlaps vectors\[0\] shard 0 ",
        lambda g, clash, tail, other, b: fu.pcgrad_(g, [[clash, tail], [other, tail]], backend=b),
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", OVERLAP_MESSAGES.values(), ids=OVERLAP_MESSAGES.keys())
def test_overlap_message_names_the_arguments_and_shards(backend, case):
    message, call = case
    with pytest.raises(ValueError, match=message):
        call(*in_one_buffer(), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_mismatch_names_the_arguments(backend):
    g, r = fresh()
    with pytest.raises(ValueError, match=r"directions\[1\] shard 1 has shape \(4,\) but g shard 1 has \(5,\)"):
        fu.project_normal_(g, [r, [r[0], r[1][:4]]], backend=backend)
    with pytest.raises(ValueError, match=r"r shard 1 has shape \(4,\) but g shard 1 has \(5,\)"):
        fu.project_(g, [r[0], r[1][:4]], backend=backend)


def test_in_place_is_allowed_under_no_grad():
    g, r = fresh()
    g[0].requires_grad_()
    with torch.no_grad():
        fu.project_(g, r)
    assert torch.dot(torch.cat([s.detach().reshape(-1) for s in g]), torch.cat([s.reshape(-1) for s in r])).abs() < 1e-5


def test_backend_environment_variable_is_named_in_its_error(monkeypatch):
    monkeypatch.setenv("FASTUNLEARN_BACKEND", "fortran")
    g, r = fresh()
    with pytest.raises(ValueError, match="FASTUNLEARN_BACKEND='fortran' names no backend"):
        fu.dot(g, r)


IN_PLACE_OPS = {
    "combine_": lambda out, a, b: fu.combine_(out, torch.ones(2), [a, b]),
    "project_": lambda out, a, b: fu.project_(out, b),
    "project_normal_": lambda out, a, b: fu.project_normal_(out, [a, b]),
    "pcgrad_": lambda out, a, b: fu.pcgrad_(out, [a, b]),
}


@pytest.mark.parametrize("shards", [2, 80], ids=["short", "long"])
@pytest.mark.parametrize("op", IN_PLACE_OPS.values(), ids=IN_PLACE_OPS.keys())
def test_in_place_ops_refuse_inputs_that_require_grad(op, shards):
    out, a, b = ([torch.randn(3) for _ in range(shards)] for _ in range(3))
    b[shards - 1].requires_grad_()
    before = [s.clone() for s in out]
    with pytest.raises(ValueError, match=f"shard {shards - 1} requires grad; in-place fastunlearn ops are not diff"):
        op(out, a, b)
    assert_same_bits(out, before)
    with torch.no_grad():
        op(out, a, b)
    assert not torch.equal(out[0], before[0])


@pytest.mark.parametrize("shards", [2, 80], ids=["short", "long"])
def test_combine_refuses_weights_that_require_grad(shards):
    out, a = [torch.zeros(3) for _ in range(shards)], [torch.ones(3) for _ in range(shards)]
    weights = torch.ones(1, requires_grad=True)
    with pytest.raises(ValueError, match="weights requires grad; combine_ is not differentiable"):
        fu.combine_(out, weights, [a])
    assert all(torch.equal(s, torch.zeros(3)) for s in out)
    with torch.no_grad():
        fu.combine_(out, weights, [a])
    assert all(torch.equal(s, torch.ones(3)) for s in out)


def test_pc_backward_names_a_loss_that_does_not_require_grad():
    model = torch.nn.Linear(3, 1)
    opt = fu.PCGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    loss = model(torch.ones(1, 3)).sum()
    with pytest.raises(ValueError, match=r"objectives\[1\] does not require grad"):
        opt.pc_backward([loss, loss.detach()])
    assert all(p.grad is None for p in model.parameters())


def test_pcgrad_weights_keep_a_nan_gram_visible():
    gram = torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]], dtype=torch.float64)
    weights = fu.pcgrad_weights(gram, order=torch.tensor([[0, 1], [1, 0]]))
    assert weights.isnan().any()
    g, r = [torch.tensor([1.0, float("nan")])], [torch.tensor([1.0, 0.0])]
    out = [torch.zeros(2)]
    stats = fu.pcgrad_(out, [g, r], order=torch.tensor([[0, 1], [1, 0]]))
    assert stats.weights.isnan().any() and out[0].isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejected_pcgrad_draws_no_random_order(backend):
    # Without order= the op draws one after its checks: a rejected call leaves every generator as it was.
    g, r = fresh()
    gen = torch.Generator().manual_seed(7)
    default_state, gen_state = torch.get_rng_state(), gen.get_state()
    for generator in (None, gen):
        with pytest.raises(ValueError, match="shard 1 has shape"):
            fu.pcgrad_(g, [g, [r[0], r[1][:4]]], generator=generator, backend=backend)
    assert torch.equal(torch.get_rng_state(), default_state) and torch.equal(gen.get_state(), gen_state)
    # An accepted call draws exactly pcgrad_order's order.
    out = [torch.empty_like(s) for s in g]
    expected = [torch.empty_like(s) for s in g]
    stats = fu.pcgrad_(out, [g, r], generator=gen, backend=backend)
    order = fu.pcgrad_order(2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(stats.weights, fu.pcgrad_(expected, [g, r], order=order, backend=backend).weights)
    assert_same_bits(out, expected)


def test_pcgrad_op_rejecting_its_backend_draws_no_random_order():
    g, r = fresh()
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    out = [torch.empty_like(s) for s in g]
    with pytest.raises(ValueError, match="unknown backend"):
        torch.ops.fastunlearn.pcgrad_(out, g + r, 2, None, "mean", 1e-20, "no-such-backend", gen)
    assert torch.equal(gen.get_state(), state)
