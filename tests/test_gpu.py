"""Both GPU backends on CUDA tensors against float64 and the torch backend (skipped without a GPU).

Besides the shard sets of the CPU tests: 10,000 small shards, bf16 gradients, the fused optimizers,
and (marked slow) one vector of more than 2**31 elements.
"""

from __future__ import annotations

import pytest
import torch
from helpers import abs_gram64, clone, flat64, gram64, make_vectors, numel
from tolerances import elementwise_tol, triton_reduction_atol

import fastunlearn as fu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device (the interpreter and compile tests cover the GPU code)", allow_module_level=True)

CHUNK = 1 << 14  # both GPU backends sum fp32 products over chunks of this many elements


def gpu_backends():
    found = fu.backends()
    return [
        pytest.param(name, marks=pytest.mark.skipif(found[name] != "available", reason=found[name]))
        for name in ("triton", "cuda")
    ]


def cuda(vectors):
    return [[s.cuda() for s in v] for v in vectors]


def assert_gram_close(result, vectors, dtype):
    cpu = [[s.cpu() for s in v] for v in vectors]
    atol = triton_reduction_atol(dtype, numel(cpu[0]), CHUNK, abs_gram64(cpu).max().item())
    torch.testing.assert_close(result.cpu().double(), gram64(cpu), rtol=0, atol=atol)


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("k", [1, 2, 5, 16, 20])
def test_gram(backend, dtype, k):
    shapes = [(0,), (17,), (3, 5, 7), (40000,), (CHUNK + 3,), (1,)]
    vectors = cuda(make_vectors(shapes, k, dtype, seed=k))
    result = fu.gram(vectors, backend=backend)
    assert torch.equal(result, result.mT)
    assert_gram_close(result, vectors, dtype)
    assert torch.equal(result, fu.gram(vectors, backend=backend))  # same bits on every call


@pytest.mark.parametrize("backend", gpu_backends())
def test_ten_thousand_small_shards(backend):
    vectors = cuda(make_vectors([(1 + i % 97,) for i in range(10_000)], 3, torch.float32, seed=1))
    assert_gram_close(fu.gram(vectors, backend=backend), vectors, torch.float32)
    g, r = clone(vectors[0]), vectors[1]
    stats = fu.project_(g, r, backend=backend)
    expected = flat64(vectors[0]) - stats.coef.double() * flat64(r)
    torch.testing.assert_close(flat64(g), expected, **elementwise_tol(torch.float32, 2))


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ops_match_torch_backend(backend, dtype):
    vectors = cuda(make_vectors([(300, 7), (1025,), (0,)], 4, dtype, seed=2))
    g_ref, g = clone(vectors[0]), clone(vectors[0])
    fu.project_normal_(g_ref, vectors[1:], backend="torch")
    fu.project_normal_(g, vectors[1:], backend=backend)
    torch.testing.assert_close(flat64(g), flat64(g_ref), **elementwise_tol(dtype, 8))
    order = fu.pcgrad_order(4, generator=torch.Generator().manual_seed(0)).cuda()
    out_ref, out = [torch.empty_like(s) for s in vectors[0]], [torch.empty_like(s) for s in vectors[0]]
    fu.pcgrad_(out_ref, vectors, order=order, backend="torch")
    fu.pcgrad_(out, vectors, order=order, backend=backend)
    torch.testing.assert_close(flat64(out), flat64(out_ref), **elementwise_tol(dtype, 8))


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
def test_fused_optimizers_match_torch_backend(backend, optimizer):
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 4)).cuda() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    kwargs = {"lr": 0.05, "momentum": 0.9, "nesterov": True} if optimizer == "SGD" else {"lr": 1e-3}
    make = getattr(fu.optim, optimizer)
    opts = [make(m.parameters(), backend=b, **kwargs) for m, b in zip(models, ["torch", backend])]
    x = torch.randn(16, 64, device="cuda")
    for _ in range(5):
        for model, opt in zip(models, opts):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", gpu_backends())
def test_vector_past_two_to_the_31_elements(backend):
    n = 2**31 + 2**20
    if torch.cuda.get_device_properties(0).total_memory < 4 * n * 2:
        pytest.skip("needs about 9 GB of GPU memory")
    a = torch.ones(n, dtype=torch.bfloat16, device="cuda")
    a[-(2**20) :] = 2.0
    expected = float(2**31 + 4 * 2**20)
    assert fu.sq_norm([a], backend=backend).item() == pytest.approx(expected, rel=1e-6)
    out = [torch.empty_like(a)]
    fu.combine_(out, torch.tensor([0.5], device="cuda"), [[a]], backend=backend)
    assert out[0][-1].item() == 1.0 and out[0][0].item() == 0.5


@pytest.mark.skipif(fu.backends()["cuda"] != "available", reason=fu.backends()["cuda"])
def test_the_engine_runs_in_a_few_launches_on_the_cuda_backend():
    # Gram partials, one finish block (the Gram and the weighting), the combine.
    g, r, h = cuda(make_vectors([(256, 64), (1000,), (3,)], 3, torch.float32, seed=31))
    assert fu.profile.count_kernel_launches(lambda: fu.project_(g, r, backend="cuda")) <= 3
    order = fu.pcgrad_order(3, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    out = [torch.empty_like(s) for s in g]
    assert fu.profile.count_kernel_launches(lambda: fu.pcgrad_(out, [g, r, h], order=order, backend="cuda")) <= 4
    # gram: partials, the finish block, and the cast of the fp64 accumulator to the fp32 result.
    assert fu.profile.count_kernel_launches(lambda: fu.gram([g, r], backend="cuda")) <= 3


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("weighting", ["always", "conflict", "span", "pcgrad"])
def test_the_scalar_stage_on_the_device_matches_the_cpu(backend, weighting):
    vectors = make_vectors([(300, 7), (33,)], 4 if weighting in ("span", "pcgrad") else 2, torch.float64, seed=32)
    order = torch.tensor([[1, 0, 3, 2], [3, 2, 0, 1], [0, 1, 2, 3], [2, 3, 1, 0]])
    make = {
        "always": lambda dev: fu.Projection("always"),
        "conflict": lambda dev: fu.Projection("conflict"),
        "span": lambda dev: fu.SpanComplement(),
        "pcgrad": lambda dev: fu.weighting.PCGrad(order.to(dev), "mean"),
    }[weighting]
    cpu_out, gpu_out = [torch.zeros_like(s) for s in vectors[0]], [torch.zeros_like(s).cuda() for s in vectors[0]]
    cpu_gram, cpu_w = fu.aggregate_(cpu_out, vectors, make("cpu"))
    gpu_gram, gpu_w = fu.aggregate_(gpu_out, cuda(vectors), make("cuda"), backend=backend)
    torch.testing.assert_close(gpu_gram.cpu(), cpu_gram, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gpu_w.cpu(), cpu_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close([s.cpu() for s in gpu_out], cpu_out, rtol=1e-10, atol=1e-12)
