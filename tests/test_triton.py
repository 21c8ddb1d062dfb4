"""The Triton backend against float64 and reference.py.

Without a GPU these run the kernels under Triton's interpreter on small CPU tensors, with the chunk
size cut to 256 elements so that short shards still span several chunks and every program of the
persistent grid strides over more than one. On a GPU they run compiled, on CUDA tensors.
"""

from __future__ import annotations

import pytest
import torch
from helpers import abs_gram64, clone, flat64, gram64, make_vectors, numel
from tolerances import elementwise_tol, triton_reduction_atol

import fastunlearn as fu
from fastunlearn import _backend, reference

pytest.importorskip("triton")

from fastunlearn.kernels import _support, _tables, combine, fused_step, gram  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL_CHUNK = 256

SHAPES = {
    "one": [(300,)],
    "odd": [(17,), (255,), (257,), (3, 5, 7), (1,)],
    "with_empty": [(0,), (129,), (0, 4), (600,), (1,)],
}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    if DEVICE == "cpu":
        monkeypatch.setattr(_tables, "CHUNK", SMALL_CHUNK)
    _tables.clear_cache()
    yield
    _tables.clear_cache()


def on_device(vectors):
    return [[s.to(DEVICE) for s in v] for v in vectors]


def assert_gram_close(result, vectors, dtype):
    atol = triton_reduction_atol(dtype, numel(vectors[0]), _tables.CHUNK, abs_gram64(vectors).max().item())
    torch.testing.assert_close(result.cpu().double(), gram64(vectors), rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_gram_matches_float64(dtype, shapes, k):
    vectors = on_device(make_vectors(shapes, k, dtype, seed=k))
    result = fu.gram(vectors, backend="triton")
    assert result.dtype == (dtype if dtype in (torch.float32, torch.float64) else torch.float32)
    assert torch.equal(result, result.mT)
    assert_gram_close(result, vectors, dtype)


@pytest.mark.parametrize("k", [17, 20])
def test_gram_beyond_sixteen_vectors_is_tiled(k):
    vectors = on_device(make_vectors([(40,), (300,)], k, torch.float32, seed=k))
    assert_gram_close(fu.gram(vectors, backend="triton"), vectors, torch.float32)


@pytest.mark.parametrize("num_shards", [1, 110, 771])
def test_long_shard_lists_fit_one_launch(num_shards):
    shapes = [(1 + (i * 7) % 13,) for i in range(num_shards)]
    vectors = on_device(make_vectors(shapes, 2, torch.float32, seed=num_shards))
    assert_gram_close(fu.gram(vectors, backend="triton"), vectors, torch.float32)


def test_transposed_and_strided_shards_pair_by_index():
    a = make_vectors([(33, 65), (17, 9)], 1, torch.float32, seed=1, transposed=True)[0]
    b = [torch.randn(33, 130)[:, ::2], torch.randn(9, 17).mT]
    vectors = on_device([a, b])
    assert_gram_close(fu.gram(vectors, backend="triton"), vectors, torch.float32)


def test_views_of_one_buffer_merge_into_one_table_row():
    buffers = [torch.randn(1000, device=DEVICE) for _ in range(3)]
    vectors = [list(buf.split([100, 0, 300, 600])) for buf in buffers]
    rows = [[s for s in v] for v in vectors]
    assert _tables.shard_table(rows).num_shards == 1
    assert_gram_close(fu.gram(vectors, backend="triton"), [[s.cpu() for s in v] for v in vectors], torch.float32)


def test_gram_is_deterministic():
    vectors = on_device(make_vectors(SHAPES["odd"], 3, torch.float32, seed=9))
    first = fu.gram(vectors, backend="triton")
    _tables.clear_cache()
    assert torch.equal(first, fu.gram(vectors, backend="triton"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("num_outs", [1, 3])
def test_combine_matches_float64(dtype, num_outs):
    k = 3
    vectors = on_device(make_vectors(SHAPES["with_empty"], k, dtype, seed=4))
    weights = torch.randn(num_outs, k, dtype=torch.float64, device=DEVICE)
    n = len(vectors[0])
    outs = [torch.full_like(s, float("nan")) for _ in range(num_outs) for s in vectors[0]]
    combine.combine_(outs, weights, [s for v in vectors for s in v], k)
    tol = elementwise_tol(dtype, k)
    for m in range(num_outs):
        expected = sum(weights[m, v].item() * flat64(vectors[v]).to(DEVICE) for v in range(k))
        torch.testing.assert_close(flat64(outs[m * n : (m + 1) * n]).to(DEVICE), expected, **tol)


@pytest.mark.parametrize("in_place", [False, True])
def test_combine_into_more_than_sixteen_outputs(in_place):
    k = 18
    vectors = on_device(make_vectors([(70,), (3, 5)], k, torch.float64, seed=14))
    expected_inputs = [flat64(v).to(DEVICE) for v in vectors]
    weights = torch.randn(k, k, dtype=torch.float64, device=DEVICE)
    flat = [s for v in vectors for s in v]
    # In place, output m is input m itself: groups after the first must still read the originals.
    outs = flat if in_place else [torch.empty_like(s) for s in flat]
    combine.combine_(outs, weights, flat, k)
    for m in range(k):
        expected = sum(weights[m, v] * expected_inputs[v] for v in range(k))
        torch.testing.assert_close(flat64(outs[2 * m : 2 * m + 2]).to(DEVICE), expected, rtol=1e-12, atol=1e-12)


def test_combine_in_place_and_into_a_strided_output():
    g, r = on_device(make_vectors([(20, 30), (257,)], 2, torch.float32, seed=5))
    expected = flat64(g).to(DEVICE) - 0.5 * flat64(r).to(DEVICE)
    g[0] = g[0].mT.contiguous().mT  # a transposed output: computed in a temporary, copied back
    fu.combine_(g, torch.tensor([1.0, -0.5], device=DEVICE), [g, r], backend="triton")
    torch.testing.assert_close(flat64(g).to(DEVICE), expected, **elementwise_tol(torch.float32, 2))


@pytest.mark.parametrize("mode", ["always", "conflict"])
def test_project_matches_torch_backend(mode):
    g, r = make_vectors(SHAPES["odd"], 2, torch.float32, seed=6)
    g_ref = clone(g)
    stats_ref = fu.project_(g_ref, r, mode=mode, backend="torch")
    g_dev, r_dev = on_device([g, r])
    stats = fu.project_(g_dev, r_dev, mode=mode, backend="triton")
    for got, want in zip(stats, stats_ref):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(flat64(g_dev).cpu(), flat64(g_ref), rtol=1e-5, atol=1e-5)


def test_project_normal_and_pcgrad_match_torch_backend():
    vectors = make_vectors(SHAPES["odd"], 4, torch.float64, seed=7)
    g_ref, g_dev = clone(vectors[0]), on_device([vectors[0]])[0]
    fu.project_normal_(g_ref, vectors[1:], backend="torch")
    fu.project_normal_(g_dev, on_device(vectors[1:]), backend="triton")
    torch.testing.assert_close(flat64(g_dev).cpu(), flat64(g_ref), rtol=1e-10, atol=1e-10)
    order = torch.tensor([[1, 2, 3, 0], [0, 2, 3, 1], [3, 0, 1, 2], [2, 1, 0, 3]])
    out_ref = [torch.empty_like(s) for s in vectors[0]]
    out_dev = [s.to(DEVICE) for s in out_ref]
    stats_ref = fu.pcgrad_(out_ref, vectors, order=order, backend="torch")
    stats = fu.pcgrad_(out_dev, on_device(vectors), order=order.to(DEVICE), backend="triton")
    torch.testing.assert_close(stats.weights.cpu(), stats_ref.weights, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(flat64(out_dev).cpu(), flat64(out_ref), rtol=1e-10, atol=1e-10)


def test_gram_backward_runs_on_triton():
    a = [t.requires_grad_() for t in on_device(make_vectors([(50,), (3, 4)], 1, torch.float64, seed=8))[0]]
    b = on_device(make_vectors([(50,), (3, 4)], 1, torch.float64, seed=9))[0]
    fu.dot(a, b, backend="triton").backward()
    for grad, expected in zip([t.grad for t in a], b):
        torch.testing.assert_close(grad, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(
    "momentum, nesterov, first_step", [(0.0, False, False), (0.9, False, True), (0.9, True, False)]
)
def test_fused_sgd_matches_reference(dtype, momentum, nesterov, first_step):
    shapes = SHAPES["odd"]
    params = on_device(make_vectors(shapes, 1, dtype, seed=10))[0]
    grads = [s for v in on_device(make_vectors(shapes, 2, dtype, seed=11)) for s in v]
    buffers = [torch.randn_like(p) for p in params]
    weights = torch.tensor([0.7, -1.3], device=DEVICE)
    expected_params, expected_buffers = clone(params), clone(buffers)
    args = (weights, grads, 2, 0.1, momentum, 0.1, nesterov, 0.01, True, first_step)
    reference.sgd_step_(expected_params, expected_buffers, *args)
    fused_step.sgd_step_(params, buffers, *args)
    tol = elementwise_tol(dtype, 4)
    torch.testing.assert_close(flat64(params), flat64(expected_params), **tol)
    torch.testing.assert_close(flat64(buffers), flat64(expected_buffers), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_fused_adamw_matches_reference(dtype):
    shapes = SHAPES["with_empty"]
    params = on_device(make_vectors(shapes, 1, dtype, seed=12))[0]
    grads = [s for v in on_device(make_vectors(shapes, 3, dtype, seed=13)) for s in v]
    avgs = [torch.randn_like(p) for p in params]
    sqs = [torch.rand_like(p) for p in params]
    weights = torch.tensor([1.0, -0.5, 0.25], device=DEVICE)
    expected = [clone(params), clone(avgs), clone(sqs)]
    args = (weights, grads, 3, 1e-2, 0.9, 0.999, 1e-8, 0.01, 4, False)
    reference.adamw_step_(*expected, *args)
    fused_step.adamw_step_(params, avgs, sqs, *args)
    tol = elementwise_tol(dtype, 8)
    for got, want in zip([params, avgs, sqs], expected):
        torch.testing.assert_close(flat64(got), flat64(want), **tol)


@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
def test_optimizer_takes_the_triton_backend(optimizer):
    torch.manual_seed(0)
    models = [torch.nn.Linear(6, 3).double().to(DEVICE) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    kwargs = {"lr": 0.1, "momentum": 0.9} if optimizer == "SGD" else {"lr": 0.01}
    opts = [
        getattr(fu.optim, optimizer)(m.parameters(), backend=b, **kwargs) for m, b in zip(models, ["torch", "triton"])
    ]
    x = torch.randn(5, 6, dtype=torch.float64, device=DEVICE)
    for _ in range(3):
        for model, opt in zip(models, opts):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(DEVICE != "cpu", reason="CPU tensors are the interpreter's case")
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        fu.gram([[torch.ones(3)]], backend="triton")
    monkeypatch.setattr(_support, "INTERPRETED", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        gram.gram([torch.ones(3)], 1)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "CPU tensors only" in _backend._triton_device_error(torch.device("cuda"))


def test_auto_takes_the_cuda_kernels_then_triton_on_cuda_and_never_triton_on_cpu():
    assert _backend._AUTO_ORDER["cuda"][:2] == ("cuda", "triton")
    assert "triton" not in _backend._AUTO_ORDER["cpu"]
    assert _backend.resolve("auto", torch.device("cpu")) in ("cpp", "torch")
