"""The fast path for long shard lists: same bits as the ordinary route, and every input it does
not accept falls back to the ordinary route's error (or result) with nothing written."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same_bits, clone, make_vectors

import fastunlearn as fu
from fastunlearn import _fast

SHAPES = [(17,), (3, 5), (0,), (64,)] * 25  # 100 shards, over the fast path's threshold


@pytest.fixture
def ordinary_route(monkeypatch):
    """Run a call with the fast path switched off."""

    def run(fn):
        with monkeypatch.context() as m:
            m.setattr(_fast, "MIN_SHARDS", 10**9)
            return fn()

    return run


def test_the_fast_path_is_taken_for_long_lists(monkeypatch):
    calls = []
    original = _fast.gram
    monkeypatch.setattr(_fast, "gram", lambda vectors: calls.append(sum(map(len, vectors))) or original(vectors))
    fu.gram(make_vectors(SHAPES, 2))
    fu.gram(make_vectors(SHAPES[:8], 2))
    assert calls == [200]


def every_op(run, g, r, h):
    """Each in-place op once on fresh copies, through `run`; returns everything they produced."""
    a, b, h, out = clone(g), clone(r), clone(h), [torch.empty_like(s) for s in g]
    stats = run(lambda: fu.project_(a, b, mode="conflict"))
    run(lambda: fu.combine_(out, torch.tensor([0.5, -2.0, 1.0]), [a, b, h]))
    run(lambda: fu.combine_(h, torch.tensor([-1.5, 0.25]), (tuple(h), b)))  # in place, a tuple
    alpha = run(lambda: fu.project_normal_(b, [a, h]))
    pc = run(lambda: fu.pcgrad_(a, [a, b, h], order=torch.tensor([[1, 2, 0], [0, 2, 1], [2, 1, 0]])))
    return a, b, h, out, torch.stack(list(stats)), alpha, pc.weights


LAYOUTS = {
    "contiguous": dict(shapes=SHAPES),
    # Non-contiguous shards: the fast path hands the tensors to the layout-aware kernels.
    "transposed": dict(shapes=SHAPES, transposed=True),
    # More dimensions than the compact shape records hold inline.
    "six_dims": dict(shapes=[(1, 2, 1, 3, 1, 2), (2, 1, 1, 1, 1, 4)] * 40),
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_bits_as_the_ordinary_route(ordinary_route, dtype, layout):
    g, r, h = make_vectors(layout["shapes"], 3, dtype=dtype, transposed=layout.get("transposed", False))
    assert torch.equal(fu.gram([g, r, h]), ordinary_route(lambda: fu.gram([g, r, h])))
    fast = every_op(lambda f: f(), g, r, h)
    ordinary = every_op(ordinary_route, g, r, h)
    for x, y in zip(fast, ordinary):
        if isinstance(x, list):
            assert_same_bits(x, y)
        else:
            assert torch.equal(x, y)


def bad_calls():
    def vectors():
        return make_vectors(SHAPES, 2)

    def shape_mismatch():
        g, r = vectors()
        r[80] = torch.zeros(18)
        return lambda: fu.project_(g, r), g, ValueError

    def dtype_mismatch():
        g, r = vectors()
        r[50] = r[50].double()
        return lambda: fu.combine_(g, torch.tensor([1.0, 1.0]), [g, r]), g, TypeError

    def not_a_tensor():
        g, r = vectors()
        r[70] = [1.0]
        return lambda: fu.gram([g, r]), g, TypeError

    def overlapping_out():
        g, r = vectors()
        out = [torch.empty_like(s) for s in g]
        out[89] = g[85]  # same shape, another shard index: a real overlap
        return lambda: fu.combine_(out, torch.tensor([1.0, 1.0]), [g, r]), g, ValueError

    def partly_overlapping_out():
        buffer = torch.randn(100 * 64)
        g = list(buffer.split(64))
        r = make_vectors([(64,)] * 100, 1)[0]
        out = [torch.empty(64) for _ in g]
        out[7] = buffer[5 * 64 + 10 : 6 * 64 + 10]  # straddles g[5] and g[6]
        return lambda: fu.combine_(out, torch.tensor([1.0, 1.0]), [g, r]), g, ValueError

    def overlapping_out_in_any_order(name, order):
        def call():
            g, r = vectors()
            out = [torch.empty_like(s) for s in g]
            out[89] = g[85]
            g, r, out = ([x[i] for i in order] for x in (g, r, out))
            return lambda: fu.combine_(out, torch.tensor([1.0, 1.0]), [g, r]), g, ValueError

        call.__name__ = name
        return call

    # Spans are sorted by merging each list's address runs, or outright when there are many.
    shuffled = torch.randperm(100, generator=torch.Generator().manual_seed(0)).tolist()
    overlapping_out_reversed = overlapping_out_in_any_order("overlapping_out_reversed", range(99, -1, -1))
    overlapping_out_shuffled = overlapping_out_in_any_order("overlapping_out_shuffled", shuffled)
    in_runs = [*range(50, 100), *range(49, -1, -1)]
    overlapping_out_in_runs = overlapping_out_in_any_order("overlapping_out_in_runs", in_runs)

    def inference_out():
        with torch.inference_mode():
            g, r = vectors()
        return lambda: fu.combine_(g, torch.tensor([1.0, 1.0]), [g, r]), g, ValueError

    def wrong_weights():
        g, r = vectors()
        return lambda: fu.combine_(g, torch.tensor([1.0, 1.0, 1.0]), [g, r]), g, ValueError

    def meta_shard():
        g, r = vectors()
        r[10] = torch.empty(17, device="meta")
        return lambda: fu.project_(g, r), g, ValueError

    return [
        shape_mismatch,
        dtype_mismatch,
        not_a_tensor,
        overlapping_out,
        overlapping_out_reversed,
        overlapping_out_shuffled,
        overlapping_out_in_runs,
        partly_overlapping_out,
        inference_out,
        wrong_weights,
        meta_shard,
    ]


@pytest.mark.parametrize("make", bad_calls(), ids=lambda f: f.__name__)
def test_bad_input_gets_the_ordinary_error_and_nothing_is_written(make):
    call, written, error = make()
    before = clone(written)
    with pytest.raises(error):
        call()
    assert_same_bits(before, written)


def test_inputs_that_need_autograd_take_the_ordinary_route():
    g, r = make_vectors(SHAPES, 2)
    g = [s.requires_grad_() for s in g]
    fu.gram([g, r])[0, 1].backward()
    for grad, shard in zip((s.grad for s in g), r):
        torch.testing.assert_close(grad, shard)
    with pytest.raises(ValueError, match="requires grad"):
        fu.project_(g, r)
    with torch.no_grad():
        fu.project_(g, r)  # allowed outside grad mode, as on the ordinary route


def test_in_place_writes_bump_version_counters():
    g, r = make_vectors(SHAPES, 2)
    versions = [s._version for s in g]
    fu.project_(g, r)
    assert all(s._version > v for s, v in zip(g, versions))


def test_inference_tensors_are_updated_once_inside_inference_mode(ordinary_route):
    """Long enough lists that the intra-op threads read the metadata and bump the versions."""
    with torch.inference_mode():
        g, r = make_vectors([(3,)] * 3000, 2)
        expected, _ = make_vectors([(3,)] * 3000, 2)
        fu.combine_(g, torch.tensor([2.0, -1.0]), [g, r])
        ordinary_route(lambda: fu.combine_(expected, torch.tensor([2.0, -1.0]), [expected, r]))
    assert_same_bits(g, expected)


def test_vectors_of_different_lengths_are_an_error_not_a_split_of_the_total():
    a = [torch.ones(1) for _ in range(33)]
    b = [torch.full((1,), 2.0) for _ in range(31)]
    with pytest.raises(ValueError, match="31 shards"):
        fu.gram([a, b])
    out = [torch.zeros(1) for _ in range(32)]
    with pytest.raises(ValueError):
        fu.combine_(out, torch.tensor([1.0, 1.0]), [a, b])
    assert all(torch.equal(t, torch.zeros(1)) for t in out)
    with pytest.raises(ValueError, match="no shards"):
        fu.gram([a + b, []])


def test_tracing_sees_the_op_whatever_the_list_length():
    from torch.fx.experimental.proxy_tensor import make_fx

    g, r = make_vectors(SHAPES, 2)
    traced = make_fx(lambda g, r: fu.gram([g, r]), tracing_mode="real")(g, r)
    assert any("fastunlearn" in str(node.target) for node in traced.graph.nodes)
    h = [2 * s for s in r]
    torch.testing.assert_close(traced(g, h), fu.gram([g, h]))


def test_out_that_requires_grad_is_written_under_no_grad_like_the_ordinary_route(ordinary_route):
    g, r = make_vectors(SHAPES, 2)
    results = []
    for run in (lambda f: f(), ordinary_route):
        out = [torch.zeros_like(s).requires_grad_() for s in g]
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            stats = run(lambda: fu.pcgrad_(out, [g, r], generator=gen))  # noqa: B023
        results.append((stats.weights, gen.get_state()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("seed", range(6))
def test_overlaps_are_found_whatever_the_address_order(seed):
    """Views of shared buffers in runs of ascending and descending order, or shuffled: the C++ sweeps
    (the fast path's, and find_overlap behind the ordinary route) find a planted overlap and no other."""
    gen = torch.Generator().manual_seed(seed)
    n = 120
    buffers = [torch.randn(n * 8, generator=gen) for _ in range(3)]
    g, r, out = (list(b.split(8)) for b in buffers)
    cut = sorted(torch.randint(1, n, (3,), generator=gen).tolist())
    pieces = [list(range(a, b)) for a, b in zip([0, *cut], [*cut, n])]
    order = [i for k, p in enumerate(pieces) for i in (p[::-1] if k % 2 else p)]
    if seed % 3 == 2:
        order = torch.randperm(n, generator=gen).tolist()
    g, r, out = ([x[i] for i in order] for x in (g, r, out))
    weights = torch.tensor([1.0, -2.0])
    if seed % 2:
        i, j = torch.randint(0, n - 1, (2,), generator=gen).tolist()
        out[i] = buffers[0][j * 8 + 3 : j * 8 + 11]  # straddles g's shards j and j + 1
        assert torch.ops.fastunlearn_cpu.find_overlap(out, [*r, *g], n)
        before = [t.clone() for t in buffers]
        with pytest.raises(ValueError, match="overlap"):
            _fast._native().combine_vectors(out, weights, [r, g])
        assert all(torch.equal(a, b) for a, b in zip(before, buffers))
    else:
        assert not torch.ops.fastunlearn_cpu.find_overlap(out, [*r, *g], n)
        _fast._native().combine_vectors(out, weights, [r, g])
        expected = [a * 1.0 + b * -2.0 for a, b in zip(buffers[1].split(8), buffers[0].split(8))]
        assert_same_bits(list(buffers[2].split(8)), expected)


def test_tensors_whose_memory_is_not_their_value_take_the_ordinary_route():
    """Lazily negated views, zero tensors (no memory) and lazy copies as outputs: the dispatcher
    resolves them on the ordinary route; raw pointers would read the wrong sign, a null pointer, or
    write into the copy's source."""
    g, r = make_vectors(SHAPES, 2)
    negated = [torch._neg_view(s) for s in r]
    resolved = [s.resolve_neg() for s in negated]
    assert torch.equal(fu.gram([g, negated]), fu.gram([g, resolved]))
    zeros = [*r[:-1], torch._efficientzerotensor(r[-1].shape)]
    assert torch.equal(fu.gram([g, zeros]), fu.gram([g, [*r[:-1], torch.zeros_like(r[-1])]]))
    weights = torch.tensor([2.0, -1.0])
    sources = clone(g)
    out = [torch._lazy_clone(s) for s in sources]
    fu.combine_(out, weights, [g, negated])
    assert_same_bits(sources, g)
    assert_same_bits(out, fu.combine_([torch.empty_like(s) for s in g], weights, [g, resolved]))
    out = [torch._lazy_clone(s) for s in sources]
    fu.combine_(out, weights, [g, r])
    assert_same_bits(sources, g)
    assert_same_bits(out, fu.combine_([torch.empty_like(s) for s in g], weights, [g, r]))


def test_the_entry_points_check_vector_lengths_themselves():
    g, r = make_vectors(SHAPES, 2)
    with pytest.raises(ValueError, match="differ in length"):
        _fast._native().gram_vectors([g, r[:-2]])
    with pytest.raises(ValueError, match="differ in length"):
        _fast._native().combine_vectors(g[:-1], torch.tensor([1.0, 1.0]), [g[:-1], r])
