"""Long shard lists (80 to 10,000 shards) through the one route, ``torch.ops.fastunlearn``.

The default backend ("cpp") agrees with the pure-PyTorch reference (``backend="torch"``) within the
tolerances of tests/tolerances.py; every bad input is refused with its documented TypeError or
ValueError before anything is written or any version counter moves; grad mode, inference mode,
version counters, tracing and the overlap checks behave on long lists as on short ones.
"""

from __future__ import annotations

import pytest
import torch
from helpers import BACKENDS, abs_gram64, assert_same_bits, clone, flat64, gram64, make_vectors, numel
from tolerances import elementwise_tol, reduction_atol

import fastunlearn as fu
from fastunlearn import _backend

SHAPES = [(17,), (3, 5), (0,), (64,)] * 25  # 100 shards, zero-element ones among them
ORDER = torch.tensor([[1, 2, 0], [0, 2, 1], [2, 1, 0]])


def snapshot(tensors):
    """What `assert_untouched` compares with: a copy and the version of every tensor (inference
    tensors have no version counter, meta tensors no values)."""
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    copies = [None if t.is_meta else t.detach().clone() for t in tensors]
    versions = [None if t.is_inference() else t._version for t in tensors]
    return tensors, copies, versions


def assert_untouched(snap):
    tensors, copies, versions = snap
    for t, copy in zip(tensors, copies):
        if copy is not None:  # NaNs in uninitialised outputs compare equal
            torch.testing.assert_close(t.detach(), copy, rtol=0, atol=0, equal_nan=True)
    # A rejected call moves no version counter either: autograd would see the tensors as modified.
    assert [None if t.is_inference() else t._version for t in tensors] == versions


def vector_tol(dtype, num_terms, scale=8.0):
    """Two results each within `elementwise_tol` of the exact value are within twice it of each other."""
    tol = elementwise_tol(dtype, num_terms)
    return {"rtol": 2 * tol["rtol"], "atol": 2 * tol["atol"] * scale}


def every_op(g, r, h, **backend):
    """Each op once on the same inputs (fresh copies of what it writes). Returns the Gram-like
    results, the coefficients derived from them, and the written vectors with their term counts."""
    gram = fu.gram([g, r, h], **backend)
    a = clone(g)
    stats = fu.project_(a, r, mode="conflict", **backend)
    out = [torch.empty_like(s) for s in g]
    fu.combine_(out, torch.tensor([0.5, -2.0, 1.0]), [g, r, h], **backend)
    inplace = clone(h)
    fu.combine_(inplace, torch.tensor([-1.5, 0.25]), (tuple(inplace), r), **backend)  # in place, a tuple
    b = clone(r)
    alpha = fu.project_normal_(b, [g, h], **backend)
    p = clone(g)
    pc = fu.pcgrad_(p, [p, r, h], order=ORDER, **backend)
    grams = {"gram": gram, "dot": stats.dot, "g_sq_norm": stats.g_sq_norm, "r_sq_norm": stats.r_sq_norm}
    grams["pcgrad_gram"] = pc.gram
    coefs = {"coef": stats.coef, "alpha": alpha, "pcgrad_weights": pc.weights}
    vectors = {"project_": (a, 2), "combine_": (out, 3), "combine_in_place": (inplace, 2)}
    vectors |= {"project_normal_": (b, 3), "pcgrad_": (p, 3)}
    return grams, coefs, vectors


LAYOUTS = {
    "contiguous": dict(shapes=SHAPES),
    # Non-contiguous shards: the kernels walk them by their strides.
    "transposed": dict(shapes=SHAPES, transposed=True),
    # More dimensions than a compact shape record holds inline.
    "six_dims": dict(shapes=[(1, 2, 1, 3, 1, 2), (2, 1, 1, 1, 1, 4)] * 40),
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_backend_agrees_with_the_torch_reference(monkeypatch, dtype, layout):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    assert _backend.resolve("auto", torch.device("cpu")) == "cpp"
    g, r, h = make_vectors(layout["shapes"], 3, dtype=dtype, transposed=layout.get("transposed", False))
    assert layout.get("transposed", False) == (not g[1].is_contiguous())
    before = snapshot([*g, *r, *h])
    cpp = every_op(g, r, h)
    ref = every_op(g, r, h, backend="torch")
    assert_untouched(before)  # only the copies were written

    scale = abs_gram64([g, r, h]).max().item()
    gram_atol = 2 * reduction_atol(dtype, numel(g), scale)
    torch.testing.assert_close(cpp[0]["gram"].double(), gram64([g, r, h]), rtol=0, atol=gram_atol / 2)
    for name in cpp[0]:
        x, y = cpp[0][name], ref[0][name]
        assert x.dtype == y.dtype, name
        torch.testing.assert_close(x.double(), y.double(), rtol=0, atol=gram_atol, msg=name)
    for name in cpp[1]:
        x, y = cpp[1][name], ref[1][name]
        assert x.dtype == y.dtype, name
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-12, msg=name)
    for name in cpp[2]:
        (x, terms), (y, _) = cpp[2][name], ref[2][name]
        assert [s.stride() for s in x] == [s.stride() for s in y], name
        torch.testing.assert_close(flat64(x), flat64(y), **vector_tol(dtype, terms), msg=name)
    # The ops did something: the combine is not one of its inputs, the projection moved g.
    assert not torch.equal(flat64(cpp[2]["combine_"][0]), flat64(g))
    assert not torch.equal(flat64(cpp[2]["project_normal_"][0]), flat64(r))


def bad_calls():
    """Each returns (call, every tensor involved, error, message)."""

    def vectors():
        return make_vectors(SHAPES, 2)

    ones = torch.tensor([1.0, 1.0])

    def shape_mismatch():
        g, r = vectors()
        r[80] = torch.zeros(18)
        return lambda: fu.project_(g, r), [*g, *r], ValueError, r"r shard 80 has shape \(18,\) but g shard 80 has"

    def shape_mismatch_in_the_last_of_10000():
        g, r = make_vectors([(3,)] * 10_000, 2)
        r[-1] = torch.zeros(4)
        return lambda: fu.project_(g, r), [*g, *r], ValueError, "r shard 9999 has shape"

    def dtype_mismatch():
        g, r = vectors()
        r[50] = r[50].double()
        call = lambda: fu.combine_(g, ones, [g, r])  # noqa: E731
        return call, [*g, *r, ones], TypeError, r"vectors\[1\] shard 50 has dtype torch.float64"

    def conjugated_shard():
        g, r = vectors()
        r[28] = torch.randn(17, dtype=torch.complex64).conj()  # a lazily conjugated view
        assert r[28].is_conj()
        return lambda: fu.combine_(g, ones, [g, r]), [*g, *r, ones], TypeError, "shard 28 has dtype torch.complex64"

    def not_a_tensor():
        g, r = vectors()
        r[70] = [1.0]
        return lambda: fu.gram([g, r]), [*g, *r], TypeError, r"vectors\[1\] shard 70 is a list, not a Tensor"

    def overlapping_out():
        g, r = vectors()
        out = [torch.empty_like(s) for s in g]
        out[89] = g[85]  # same shape, another shard index: a real overlap
        call = lambda: fu.combine_(out, ones, [g, r])  # noqa: E731
        return call, [*out, *g, *r], ValueError, r"out shard 89 overlaps vectors\[0\] shard 85 in memory"

    def repeated_out():
        g, r = vectors()
        out = [torch.zeros_like(s) for s in g]
        out[3] = out[7]  # both (64,): one tensor written twice
        call = lambda: fu.combine_(out, ones, [g, r])  # noqa: E731
        return call, [*out, *g, *r], ValueError, "out shard 3 and out shard 7 overlap in memory"

    def partly_overlapping_out():
        buffer = torch.randn(100 * 64)
        g = list(buffer.split(64))
        r = make_vectors([(64,)] * 100, 1)[0]
        out = [torch.zeros(64) for _ in g]
        out[7] = buffer[5 * 64 + 10 : 6 * 64 + 10]  # straddles g[5] and g[6]
        call = lambda: fu.combine_(out, ones, [g, r])  # noqa: E731
        return call, [buffer, *out, *r], ValueError, r"out shard 7 overlaps vectors\[0\] shard [56] in memory"

    def overlapping_out_in_any_order(name, order):
        def make():
            g, r = vectors()
            out = [torch.empty_like(s) for s in g]
            out[89] = g[85]
            g, r, out = ([x[i] for i in order] for x in (g, r, out))
            call = lambda: fu.combine_(out, ones, [g, r])  # noqa: E731
            return call, [*out, *g, *r], ValueError, r"out shard \d+ overlaps vectors\[0\] shard \d+ in memory"

        make.__name__ = name
        return make

    # Address order reversed, shuffled, or in ascending and descending runs.
    shuffled = torch.randperm(100, generator=torch.Generator().manual_seed(0)).tolist()
    overlapping_out_reversed = overlapping_out_in_any_order("overlapping_out_reversed", range(99, -1, -1))
    overlapping_out_shuffled = overlapping_out_in_any_order("overlapping_out_shuffled", shuffled)
    in_runs = [*range(50, 100), *range(49, -1, -1)]
    overlapping_out_in_runs = overlapping_out_in_any_order("overlapping_out_in_runs", in_runs)

    def inference_out():
        with torch.inference_mode():
            g = vectors()[0]
        r = vectors()[1]
        call = lambda: fu.combine_(g, ones, [g, r])  # noqa: E731
        return call, [*g, *r, ones], ValueError, "out shard 0 is an inference tensor"

    def out_too_short():
        g, r = vectors()
        out = [torch.zeros_like(s) for s in g[:-1]]
        call = lambda: fu.combine_(out, ones, [g, r])  # noqa: E731
        return call, [*out, *g, *r], ValueError, r"out has 99 shards but vectors\[0\] has 100"

    def wrong_weights():
        g, r = vectors()
        weights = torch.tensor([1.0, 1.0, 1.0])
        call = lambda: fu.combine_(g, weights, [g, r])  # noqa: E731
        return call, [*g, *r, weights], ValueError, r"weights must have shape \(2,\)"

    def weights_require_grad():
        g, r = vectors()
        weights = torch.tensor([1.0, 1.0], requires_grad=True)
        call = lambda: fu.combine_(g, weights, [g, r])  # noqa: E731
        return call, [*g, *r, weights], ValueError, "weights requires grad"

    def input_requires_grad():
        g, r = vectors()
        r[99].requires_grad_()
        return lambda: fu.project_(g, r), [*g, *r], ValueError, "r shard 99 requires grad"

    def meta_shard():
        g, r = vectors()
        r[10] = torch.empty(17, device="meta")
        return lambda: fu.project_(g, r), [*g, *r], ValueError, "r shard 10 is on meta"

    return [
        shape_mismatch,
        shape_mismatch_in_the_last_of_10000,
        dtype_mismatch,
        conjugated_shard,
        not_a_tensor,
        overlapping_out,
        repeated_out,
        overlapping_out_reversed,
        overlapping_out_shuffled,
        overlapping_out_in_runs,
        partly_overlapping_out,
        inference_out,
        out_too_short,
        wrong_weights,
        weights_require_grad,
        input_requires_grad,
        meta_shard,
    ]


@pytest.mark.parametrize("make", bad_calls(), ids=lambda f: f.__name__)
def test_bad_input_is_refused_and_nothing_is_written(make):
    call, tensors, error, message = make()
    before = snapshot(tensors)
    with pytest.raises(error, match=message):
        call()
    assert_untouched(before)


def test_inputs_that_require_grad_are_refused_under_grad_mode_and_allowed_under_no_grad():
    g, r = make_vectors(SHAPES, 2)
    g = [s.requires_grad_() for s in g]
    fu.gram([g, r])[0, 1].backward()  # the Gram is differentiable on long lists too
    for grad, shard in zip((s.grad for s in g), r):
        torch.testing.assert_close(grad, shard)
    before = snapshot([*g, *r])
    with pytest.raises(ValueError, match="g shard 0 requires grad"):
        fu.project_(g, r)
    assert_untouched(before)
    original, versions = flat64(g).detach(), [s._version for s in g]
    expected = [s.detach().clone() for s in g]
    fu.project_(expected, r, backend="torch")
    with torch.no_grad():
        fu.project_(g, r)
    assert [s._version for s in g] == [v + 1 for v in versions]
    torch.testing.assert_close(flat64(g).detach(), flat64(expected), **vector_tol(torch.float32, 2))
    assert not torch.equal(flat64(g).detach(), original)


def test_out_that_requires_grad_is_written_under_no_grad():
    g, r = make_vectors(SHAPES, 2)
    results = []
    for backend in ("auto", "torch"):
        out = [torch.zeros_like(s).requires_grad_() for s in g]
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            stats = fu.pcgrad_(out, [g, r], generator=gen, backend=backend)
        assert all(s._version == 1 for s in out)
        results.append((flat64(out), stats.weights, gen.get_state()))
    (out, weights, state), (ref_out, ref_weights, ref_state) = results
    assert torch.equal(state, ref_state)  # the same random order was drawn
    torch.testing.assert_close(weights, ref_weights, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(out, ref_out, **vector_tol(torch.float32, 2))
    assert out.abs().max() > 0


class Halves(fu.Weighting):
    """A weighting written in Python: aggregate_ runs it between a Gram op and a combine op."""

    def __call__(self, gram):
        return torch.full((gram.shape[0],), 0.5, dtype=gram.dtype)


IN_PLACE = {
    "combine_": lambda out, g, r, h, b: fu.combine_(out, torch.tensor([1.0, -0.5]), [g, r], backend=b),
    "combine_in_place": lambda out, g, r, h, b: fu.combine_(g, torch.tensor([1.0, -0.5]), [g, r], backend=b),
    "project_": lambda out, g, r, h, b: fu.project_(g, r, backend=b),
    "project_normal_": lambda out, g, r, h, b: fu.project_normal_(g, [r, h], backend=b),
    "pcgrad_": lambda out, g, r, h, b: fu.pcgrad_(out, [g, r, h], order=ORDER, backend=b),
    "pcgrad_over_first": lambda out, g, r, h, b: fu.pcgrad_(g, [g, r, h], order=ORDER, backend=b),
    "aggregate_native": lambda out, g, r, h, b: fu.aggregate_(out, [g, r, h], fu.SpanComplement(), backend=b),
    "aggregate_python": lambda out, g, r, h, b: fu.aggregate_(out, [g, r, h], Halves(), backend=b),
}
WRITES_G = ("combine_in_place", "project_", "project_normal_", "pcgrad_over_first")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", IN_PLACE, ids=IN_PLACE.keys())
def test_in_place_writes_bump_version_counters_exactly_once(op, backend):
    g, r, h = make_vectors(SHAPES, 3)
    out = [torch.zeros_like(s) for s in g]
    written = g if op in WRITES_G else out
    values = flat64(written)
    tensors = {"out": out, "g": g, "r": r, "h": h}
    versions = {name: [s._version for s in v] for name, v in tensors.items()}
    IN_PLACE[op](out, g, r, h, backend)
    for name, v in tensors.items():
        bump = 1 if v is written else 0
        assert [s._version for s in v] == [x + bump for x in versions[name]], name
    assert not torch.equal(flat64(written), values)


def test_inference_tensors_are_updated_once_inside_inference_mode():
    """Long enough lists that the intra-op threads read the metadata and write the shards."""
    weights = torch.tensor([2.0, -1.0])
    with torch.inference_mode():
        g, r = make_vectors([(3,)] * 3000, 2)
        original = clone(g)
        reference, one_thread = clone(g), clone(g)
        fu.combine_(g, weights, [g, r])
        fu.combine_(reference, weights, [reference, r], backend="torch")
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            fu.combine_(one_thread, weights, [one_thread, r])
        finally:
            torch.set_num_threads(threads)
    assert all(s.is_inference() for s in g)
    assert_same_bits(g, one_thread)
    torch.testing.assert_close(flat64(g), flat64(reference), **vector_tol(torch.float32, 2))
    # Applied exactly once: 2 g - r, not 2 (2 g - r) - r.
    expected = 2 * flat64(original) - flat64(r)
    torch.testing.assert_close(flat64(g), expected, **vector_tol(torch.float32, 2, scale=4.0))


def test_normal_tensors_are_updated_inside_inference_mode_with_one_version_bump():
    g, r = make_vectors([(3,)] * 3000, 2)
    expected = 2 * flat64(g) - flat64(r)
    versions = [s._version for s in g]
    with torch.inference_mode():
        fu.combine_(g, torch.tensor([2.0, -1.0]), [g, r])
    assert [s._version for s in g] == [v + 1 for v in versions]
    torch.testing.assert_close(flat64(g), expected, **vector_tol(torch.float32, 2, scale=4.0))


def test_vectors_of_different_lengths_are_an_error_not_a_split_of_the_total():
    a = [torch.ones(1) for _ in range(101)]
    b = [torch.full((1,), 2.0) for _ in range(99)]
    out = [torch.zeros(1) for _ in range(100)]
    before = snapshot([*a, *b, *out])
    with pytest.raises(ValueError, match=r"vectors\[1\] has 99 shards but vectors\[0\] has 101"):
        fu.gram([a, b])
    with pytest.raises(ValueError, match="has 99 shards"):
        fu.combine_(out, torch.tensor([1.0, 1.0]), [a, b])
    with pytest.raises(ValueError, match="r has 99 shards but g has 101"):
        fu.project_(a, b)
    with pytest.raises(ValueError, match=r"directions\[0\] has 99 shards but g has 101"):
        fu.project_normal_(a, [b])
    with pytest.raises(ValueError, match="has 99 shards"):
        fu.pcgrad_(out, [a, b], order=torch.tensor([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match=r"vectors\[1\] has no shards"):
        fu.gram([a + b, []])
    # The op itself: 201 shards do not make two vectors of one length.
    with pytest.raises(ValueError, match="201 shards do not split into 2 vectors"):
        torch.ops.fastunlearn.combine_(out, torch.tensor([1.0, 1.0]), [*a, *b, torch.ones(1)], 2)
    assert_untouched(before)


@pytest.mark.parametrize("n", [80, 1000])
def test_tracing_sees_the_op_whatever_the_list_length(n):
    from torch.fx.experimental.proxy_tensor import make_fx

    g, r = make_vectors(SHAPES[:4] * (n // 4), 2)
    traced = make_fx(lambda g, r: fu.gram([g, r]), tracing_mode="real")(g, r)
    assert any("fastunlearn" in str(node.target) for node in traced.graph.nodes)
    h = [2 * s for s in r]
    torch.testing.assert_close(traced(g, h), fu.gram([g, h]))
    # Fake tensors run the Meta kernels: the in-place op stays in the graph.
    traced = make_fx(lambda g, r: fu.project_(g, r).coef, tracing_mode="fake")(clone(g), r)
    assert any("fastunlearn.project_" in str(node.target) for node in traced.graph.nodes)


def test_compile_sees_the_op_on_a_long_list():
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    g, r = make_vectors(SHAPES, 2)

    @torch.compile(fullgraph=True, backend=record)
    def surgery(g, r):
        return fu.project_(g, r).coef, fu.gram([g, r])

    eager = clone(g)
    fu.project_(eager, r)
    coef, gram = surgery(g, r)
    assert len(graphs) == 1
    targets = [str(node.target) for node in graphs[0].graph.nodes]
    assert any("fastunlearn.project_" in t for t in targets) and any("fastunlearn.gram" in t for t in targets)
    assert_same_bits(g, eager)  # repeated calls of one kernel give the same bits
    assert abs(gram[0, 1]) < 1e-4 * gram[0, 0].sqrt() * gram[1, 1].sqrt()


@pytest.mark.parametrize("n", [120, 10_000])
@pytest.mark.parametrize("seed", range(6))
def test_overlaps_are_found_whatever_the_address_order(seed, n):
    """Views of shared buffers in runs of ascending and descending address order, or shuffled: a
    planted overlap is found, and without one the call runs and gives the right values."""
    gen = torch.Generator().manual_seed(seed)
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
        before = snapshot(buffers)
        with pytest.raises(ValueError, match=rf"out shard {i} overlaps vectors\[1\] shard \d+ in memory"):
            fu.combine_(out, weights, [r, g])
        assert_untouched(before)
    else:
        inputs = snapshot(buffers[:2])
        version = buffers[2]._version
        fu.combine_(out, weights, [r, g])
        expected = flat64([buffers[1]]) - 2 * flat64([buffers[0]])
        torch.testing.assert_close(flat64([buffers[2]]), expected, **vector_tol(torch.float32, 2, scale=4.0))
        assert buffers[2]._version == version + n  # one bump per output view, all on the buffer's counter
        assert_untouched(inputs)


def test_interleaved_column_views_sharing_no_element_are_accepted():
    a, b = torch.randn(4, 2), torch.randn(4, 2)
    c, d = torch.randn(4, 2), torch.randn(4, 2)
    buf = torch.zeros(4, 4)
    out = [buf[:, 0:2], buf[:, 2:4]]
    fu.combine_(out, torch.tensor([1.0, -2.0]), [[a, b], [c, d]])
    expected = torch.cat([a.double() - 2 * c.double(), b.double() - 2 * d.double()], dim=1)
    torch.testing.assert_close(buf.double(), expected, **vector_tol(torch.float32, 2, scale=4.0))

    # Sharing column 2: refused, nothing written, no version moved.
    a3, c3 = torch.randn(4, 3), torch.randn(4, 3)
    buf = torch.randn(4, 4)
    before = snapshot([buf, a3, b, c3, d])
    with pytest.raises(ValueError, match="overlap"):
        fu.combine_([buf[:, 0:3], buf[:, 2:4]], torch.tensor([1.0, -2.0]), [[a3, b], [c3, d]])
    assert_untouched(before)


def test_many_interleaved_column_views_sharing_no_element_are_accepted():
    """100 outputs, every one's address range overlapping every other's, no element shared."""
    vectors = make_vectors([(4, 2)] * 100, 2, seed=3)
    buf = torch.zeros(4, 200)
    out = [buf[:, 2 * i : 2 * i + 2] for i in range(100)]
    fu.combine_(out, torch.tensor([0.5, 3.0]), vectors)
    expected = 0.5 * flat64(vectors[0]) + 3.0 * flat64(vectors[1])
    torch.testing.assert_close(flat64(out), expected, **vector_tol(torch.float32, 2, scale=4.0))
    # One more output over column 101 of the last: refused, nothing written.
    before = snapshot([buf])
    out[40] = buf[:, 81:83]
    with pytest.raises(ValueError, match="out shard 40 and out shard 41 overlap in memory"):
        fu.combine_(out, torch.tensor([0.5, 3.0]), vectors)
    assert_untouched(before)


def test_column_views_of_different_widths_sharing_no_element_are_accepted():
    buf = torch.zeros(4, 4)
    a, b = torch.randn(4, 2), torch.randn(4, 1)
    fu.combine_([buf[:, 0:2], buf[:, 2:3]], torch.tensor([1.0]), [[a, b]])
    torch.testing.assert_close(buf, torch.cat([a, b, torch.zeros(4, 1)], dim=1))
    with pytest.raises(ValueError, match="out shard 0 and out shard 1 overlap"):
        fu.combine_([buf[:, 0:3], buf[:, 2:3]], torch.tensor([1.0]), [[torch.randn(4, 3), b]])


def test_tensors_whose_memory_is_not_their_value_give_the_right_results():
    """Lazily negated views, zero tensors (no memory) and lazy copies as outputs: a kernel reading raw
    memory would read the wrong sign, a null pointer, or write into the copy's source."""
    g, r = make_vectors(SHAPES, 2)
    negated = [torch._neg_view(s) for s in r]
    assert negated[0].is_neg()
    resolved = [s.resolve_neg() for s in negated]
    assert torch.equal(fu.gram([g, negated]), fu.gram([g, resolved]))
    assert torch.equal(fu.gram([g, negated])[0, 1], -fu.gram([g, r])[0, 1])

    zeros = [*r[:-1], torch._efficientzerotensor(r[-1].shape)]
    materialized = [*r[:-1], torch.zeros_like(r[-1])]
    assert torch.equal(fu.gram([g, zeros]), fu.gram([g, materialized]))
    weights = torch.tensor([2.0, -1.0])
    out = fu.combine_([torch.empty_like(s) for s in g], weights, [g, zeros])
    assert_same_bits(out, fu.combine_([torch.empty_like(s) for s in g], weights, [g, materialized]))
    assert torch.equal(out[-1], 2 * g[-1])

    sources = clone(g)
    out = [torch._lazy_clone(s) for s in sources]
    fu.combine_(out, weights, [g, negated])
    assert_same_bits(sources, g)  # the copies' source is untouched
    assert_same_bits(out, fu.combine_([torch.empty_like(s) for s in g], weights, [g, resolved]))
    out = [torch._lazy_clone(s) for s in sources]
    fu.combine_(out, weights, [g, r])
    assert_same_bits(sources, g)
    assert_same_bits(out, fu.combine_([torch.empty_like(s) for s in g], weights, [g, r]))

    # Negated views of the output itself as inputs: g <- 2 g - (-g) = 3 g.
    expected = 3 * flat64(g)
    fu.combine_(g, weights, [g, [torch._neg_view(s) for s in g]])
    torch.testing.assert_close(flat64(g), expected, **vector_tol(torch.float32, 2, scale=4.0))
