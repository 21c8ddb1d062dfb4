"""Fused SGD/AdamW: parity with torch.optim on the unfused path, state handling, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import BACKENDS

import fastunlearn as fu

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
    dict(lr=0.05, momentum=0.5, dampening=0.3, maximize=True),
]
ADAMW_CONFIGS = [
    dict(lr=1e-2),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, maximize=True),
]
CASES = [(fu.optim.SGD, torch.optim.SGD, c) for c in SGD_CONFIGS] + [
    (fu.optim.AdamW, torch.optim.AdamW, c) for c in ADAMW_CONFIGS
]
# 20 steps of fp32 updates, each rounding a few times per element, relative to O(1) parameters.
FP32_TOL = dict(rtol=1e-5, atol=1e-5)


def small_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 33), torch.nn.Tanh(), torch.nn.Linear(33, 5)).to(dtype)


def gradient_pairs(model, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        tuple([torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in model.parameters()] for _ in range(2))
        for _ in range(steps)
    ]


def assert_params_close(a, b, **tol):
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused_cls,torch_cls,config", CASES)
def test_projected_step_matches_project_then_torch_optim(backend, fused_cls, torch_cls, config):
    fused, unfused = small_model(), small_model()
    fused_opt = fused_cls(fused.parameters(), backend=backend, **config)
    torch_opt = torch_cls(unfused.parameters(), **config)
    for g_f, g_r in gradient_pairs(fused, 20):
        # fused: coefficient from the Gram on the device, update along g_f - c g_r, never written out
        gram = fu.gram([g_f, g_r], dtype=torch.float64)
        coef = gram[0, 1] / (gram[1, 1] + fu.ops.DEFAULT_EPS)
        fused_opt.step_combined(torch.stack([torch.ones_like(coef), -coef]), [g_f, g_r])
        # unfused: project_ writes g_f - c g_r, torch.optim reads it from .grad
        projected = [g.clone() for g in g_f]
        fu.project_(projected, g_r, backend=backend)
        for p, g in zip(unfused.parameters(), projected):
            p.grad = g
        torch_opt.step()
    assert_params_close(fused, unfused, **FP32_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused_cls,torch_cls,config", CASES)
def test_step_on_grad_matches_torch_optim_and_skips_missing_grads(backend, fused_cls, torch_cls, config):
    fused, reference = small_model(torch.float64), small_model(torch.float64)
    fused_opt = fused_cls(fused.parameters(), backend=backend, **config)
    torch_opt = torch_cls(reference.parameters(), **config)
    for t, (g, _) in enumerate(gradient_pairs(fused, 8)):
        for model in (fused, reference):
            for i, (p, gi) in enumerate(zip(model.parameters(), g)):
                p.grad = None if (i == 1 and t % 3 == 0) else gi.clone()
        fused_opt.step()
        torch_opt.step()
    assert_params_close(fused, reference, rtol=1e-12, atol=1e-12)


def test_param_groups_keep_their_own_hyperparameters_and_schedulers_work():
    fused, reference = small_model(), small_model()

    def groups(model):
        first, second = list(model[0].parameters()), list(model[2].parameters())
        return [{"params": first}, {"params": second, "lr": 0.01, "momentum": 0.0}]

    fused_opt = fu.optim.SGD(groups(fused), lr=0.1, momentum=0.9)
    torch_opt = torch.optim.SGD(groups(reference), lr=0.1, momentum=0.9)
    schedulers = [torch.optim.lr_scheduler.LinearLR(o, 1.0, 0.1, total_iters=5) for o in (fused_opt, torch_opt)]
    for g, _ in gradient_pairs(fused, 6):
        fused_opt.step_combined(torch.ones(1), [g])
        for p, gi in zip(reference.parameters(), g):
            p.grad = gi
        torch_opt.step()
        for s in schedulers:
            s.step()
    assert fused_opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert_params_close(fused, reference, **FP32_TOL)


def test_backends_agree_on_bf16_params():
    models = [small_model(torch.bfloat16) for _ in BACKENDS]
    opts = [fu.optim.AdamW(m.parameters(), lr=1e-2, backend=b) for m, b in zip(models, BACKENDS)]
    for g_f, g_r in gradient_pairs(models[0], 5):
        for opt in opts:
            opt.step_combined(torch.tensor([1.0, -0.5]), [g_f, g_r])
    # Both compute in fp32 and round once per stored value: at most a bf16 ulp or two apart.
    assert_params_close(models[0], models[1], rtol=2**-7, atol=2**-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_with_other_strides_are_paired_by_index(backend):
    model = small_model(torch.float64)
    reference = copy.deepcopy(model)
    g = [
        torch.randn(p.shape[::-1], dtype=p.dtype).mT if p.dim() == 2 else torch.randn_like(p)
        for p in model.parameters()
    ]
    fu.optim.SGD(model.parameters(), lr=0.5, backend=backend).step_combined(torch.ones(1, dtype=torch.float64), [g])
    for p, q, gi in zip(model.parameters(), reference.parameters(), g):
        torch.testing.assert_close(p, q - 0.5 * gi, rtol=1e-14, atol=1e-14)


def test_non_dense_params_fall_back_and_stay_correct():
    base = torch.randn(6, 8, dtype=torch.float64)
    param = torch.nn.Parameter(base[:, ::2])  # a strided view: not dense
    expected = param.detach().clone()
    grad = torch.randn(6, 4, dtype=torch.float64)
    fu.optim.SGD([param], lr=0.25).step_combined(torch.ones(1, dtype=torch.float64), [[grad]])
    torch.testing.assert_close(param.detach(), expected - 0.25 * grad)


def snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    state = {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for p, s in opt.state.items()}
    return params, state


@pytest.mark.parametrize("make_opt", [lambda ps: fu.optim.SGD(ps, lr=0.1, momentum=0.9), fu.optim.AdamW])
def test_bad_input_raises_before_anything_changes(make_opt):
    model = small_model()
    opt = make_opt(model.parameters())
    g_f, g_r = gradient_pairs(model, 1)[0]
    opt.step_combined(torch.tensor([1.0, -1.0]), [g_f, g_r])  # state exists now
    before = snapshot(model, opt)
    bad_calls = [
        (ValueError, torch.tensor([1.0, -1.0]), [g_f, g_r[:-1]]),  # a shard missing
        (ValueError, torch.tensor([1.0, -1.0]), [g_f, [*g_r[:-1], g_r[-1].double()]]),  # dtype differs
        (ValueError, torch.tensor([1.0, -1.0]), [g_f, [*g_r[:-1], torch.zeros(2, 2)]]),  # shape differs
        (ValueError, torch.tensor([1.0]), [g_f, g_r]),  # one weight for two vectors
        (TypeError, torch.tensor([1, 2]), [g_f, g_r]),  # integer weights
        (TypeError, torch.tensor([1.0]), g_f),  # a vector, not a list of vectors
        (ValueError, torch.tensor([1.0]), [list(model.parameters())[::-1]]),  # shards out of order
    ]
    for error, weights, vectors in bad_calls:
        with pytest.raises(error):
            opt.step_combined(weights, vectors)
    with pytest.raises(ValueError, match="overlaps"):
        column = list(model.parameters())[0].detach()[:, 0]  # a view into parameter 0, given for parameter 1
        opt.step_combined(torch.ones(1), [[g_f[0], column, *g_f[2:]]])
    after = snapshot(model, opt)
    for a, b in zip(before[0], after[0]):
        assert torch.equal(a, b)
    for key, state in before[1].items():
        for name, value in state.items():
            other = after[1][key][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


@pytest.mark.parametrize("optimizer", [fu.optim.SGD, fu.optim.AdamW])
def test_inference_params_are_updated_only_inside_inference_mode(optimizer):
    with torch.inference_mode():
        params = [torch.ones(3), torch.ones(2, 2)]
        for p in params:
            p.grad = torch.full_like(p, 0.5)
    opt = optimizer(params, lr=0.1)
    with pytest.raises(ValueError, match="inference tensor"):
        opt.step()
    assert all(torch.equal(p, torch.ones_like(p)) for p in params)
    with torch.inference_mode():
        opt.step()
    assert all((p < 1).all() for p in params)


@pytest.mark.parametrize("optimizer", [fu.optim.SGD, fu.optim.AdamW])
def test_sparse_gradients_are_refused_before_any_update(optimizer):
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    before = embedding.weight.detach().clone()
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="layout torch.sparse_coo; fastunlearn.optim updates dense gradients only"):
        optimizer(embedding.parameters(), lr=0.1).step()
    assert torch.equal(embedding.weight.detach(), before)


@pytest.mark.parametrize("optimizer", [fu.optim.SGD, fu.optim.AdamW])
def test_parameters_on_two_devices(optimizer):
    # meta stands in for a second device: its bucket runs on meta tensors, nothing is computed there.
    on_cpu, elsewhere = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, device="meta"))
    on_cpu.grad, elsewhere.grad = torch.full((3,), 0.5), torch.full((2,), 0.5, device="meta")
    alone = torch.nn.Parameter(torch.ones(3))
    alone.grad = on_cpu.grad.clone()
    optimizer([on_cpu, elsewhere], lr=0.1).step()  # each bucket's unit weight on its own device
    optimizer([alone], lr=0.1).step()
    assert torch.equal(on_cpu.detach(), alone.detach())
    opt, before = optimizer([on_cpu, elsewhere], lr=0.1), on_cpu.detach().clone()
    with pytest.raises(ValueError, match="parameter 1 is on meta but the weights are on cpu"):
        opt.step_combined(torch.ones(1), [[on_cpu.grad, elsewhere.grad]])
    assert torch.equal(on_cpu.detach(), before) and not any(opt.state.values())


def test_bad_hyperparameters_and_backend_names():
    params = list(small_model().parameters())
    with pytest.raises(ValueError, match="lr"):
        fu.optim.SGD(params, lr=-1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        fu.optim.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        fu.optim.AdamW(params, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="unknown backend"):
        fu.optim.AdamW(params, backend="cuda-ish")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_step_ops_pass_opcheck(backend):
    params = [torch.randn(5, 3), torch.randn(4)]
    grads = [torch.randn_like(p) for p in params for _ in range(1)] * 2
    weights = torch.tensor([0.5, -1.0], dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.fastunlearn.sgd_step_.default,
        ([p.clone() for p in params], [torch.randn_like(p) for p in params], weights, grads, 2, 0.1, 0.9, 0.0, False,
         0.01, False, False, backend),
    )  # fmt: skip
    torch.library.opcheck(
        torch.ops.fastunlearn.adamw_step_.default,
        ([p.clone() for p in params], [torch.randn_like(p) for p in params], [torch.rand_like(p) for p in params],
         weights, grads, 2, 1e-2, 0.9, 0.999, 1e-8, 0.01, 3, True, backend),
    )  # fmt: skip


def test_state_that_no_longer_matches_its_param_falls_back_instead_of_half_stepping():
    first = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    second = torch.nn.Parameter(torch.randn(2, 3, 4, 5))
    reference = [first.detach().clone(), second.detach().clone()]
    opt = fu.optim.SGD([first, second], lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(t) for t in reference], lr=0.1, momentum=0.9)
    for step in range(2):
        if step == 1:
            second.data = second.data.to(memory_format=torch.channels_last)
        for p, q in zip([first, second], ref_opt.param_groups[0]["params"]):
            p.grad = torch.ones_like(p)
            q.grad = torch.ones_like(q)
        opt.step()
        ref_opt.step()
    for p, q in zip([first, second], ref_opt.param_groups[0]["params"]):
        torch.testing.assert_close(p.detach(), q.detach())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", [lambda ps, b: fu.optim.SGD(ps, lr=0.1, momentum=0.9, backend=b),
                                       lambda ps, b: fu.optim.AdamW(ps, lr=1e-2, backend=b)])  # fmt: skip
def test_parameters_of_several_dtypes_step_as_one_optimizer_per_dtype(backend, optimizer):
    # bf16 weights with fp32 adapters and an fp64 scale: one call, walked one dtype at a time.
    gen = torch.Generator().manual_seed(3)
    shapes = [((6, 4), torch.bfloat16), ((4,), torch.float32), ((6, 4), torch.bfloat16), ((3,), torch.float64)]
    mixed = [torch.nn.Parameter(torch.randn(s, generator=gen).to(d)) for s, d in shapes]
    alone = [torch.nn.Parameter(p.detach().clone()) for p in mixed]
    vectors = [[torch.randn(s, generator=gen).to(d) for s, d in shapes] for _ in range(2)]
    weights = torch.tensor([1.0, -0.5])
    opt = optimizer(mixed, backend)
    per_dtype = {d: optimizer([p for p, (_, e) in zip(alone, shapes) if e == d], backend) for _, d in shapes}
    for _ in range(2):
        opt.step_combined(weights, vectors)
        for d, o in per_dtype.items():
            o.step_combined(weights, [[g for g, (_, e) in zip(v, shapes) if e == d] for v in vectors])
    for p, q in zip(mixed, alone):
        assert p.dtype == q.dtype and torch.equal(p.detach(), q.detach())


def test_step_ops_check_everything_before_writing():
    # torch.ops.fastunlearn.*_step_ called directly: the op's own checks, ahead of any write or version bump.
    params = [torch.randn(4), torch.randn(2, 2)]
    grads = [torch.randn(4), torch.randn(2, 2)]
    buffers = [torch.zeros(4), torch.zeros(2, 2)]
    one = torch.ones(1)
    sgd = torch.ops.fastunlearn.sgd_step_
    adamw = torch.ops.fastunlearn.adamw_step_
    hyper = (0.1, 0.9, 0.0, False, 0.0, False, False)
    bad_calls = [
        ("overlaps", lambda: sgd(params, buffers, one, [grads[0], params[0].view(2, 2)], 1, *hyper)),
        ("momentum buffer 1 has shape", lambda: sgd(params, [buffers[0], torch.zeros(4)], one, grads, 1, *hyper)),
        ("weights must have shape", lambda: sgd(params, buffers, torch.ones(2), grads, 1, *hyper)),
        ("step count", lambda: adamw(params, buffers, buffers, one, grads, 1, 0.1, 0.9, 0.99, 1e-8, 0.0, 0, False)),
        ("1 exp_avg_sq tensors for 2",
         lambda: adamw(params, buffers, buffers[:1], one, grads, 1, 0.1, 0.9, 0.99, 1e-8, 0.0, 1, False)),
        ("at least one gradient vector", lambda: sgd(params, buffers, torch.ones(0), [], 0, *hyper)),
        ("unknown backend", lambda: sgd(params, buffers, one, grads, 1, *hyper, "no-such-backend")),
        ("runs on cuda tensors|unknown backend",
         lambda: adamw(params, buffers, buffers, one, grads, 1, 0.1, 0.9, 0.99, 1e-8, 0.0, 1, False, "cuda")),
    ]  # fmt: skip
    written = params + buffers
    before = [(t.clone(), t._version) for t in written]
    for match, call in bad_calls:
        with pytest.raises(ValueError, match=match):
            call()
    for t, (value, version) in zip(written, before):
        assert torch.equal(t, value) and t._version == version


def test_step_op_on_several_dtypes_matches_one_call_per_dtype():
    gen = torch.Generator().manual_seed(5)
    dtypes = [torch.float64, torch.float32, torch.bfloat16, torch.float32]
    params = [torch.randn(5, generator=gen).to(d) for d in dtypes]
    grads = [torch.randn(5, generator=gen).to(d) for d in dtypes * 2]
    weights = torch.tensor([0.5, -2.0])
    apart = [p.clone() for p in params]
    torch.ops.fastunlearn.adamw_step_(params, [p * 0 for p in params], [p * 0 for p in params], weights, grads, 2,
                                      1e-2, 0.9, 0.99, 1e-8, 0.1, 1, False)  # fmt: skip
    for i, p in enumerate(apart):
        torch.ops.fastunlearn.adamw_step_([p], [p * 0], [p * 0], weights, [grads[i], grads[i + 4]], 2, 1e-2, 0.9, 0.99,
                                          1e-8, 0.1, 1, False)  # fmt: skip
    for p, q in zip(params, apart):
        assert torch.equal(p, q)


@pytest.mark.parametrize("optimizer", [lambda ps: fu.optim.SGD(ps, lr=0.1, momentum=0.9), fu.optim.AdamW])
def test_state_replaced_between_steps_is_what_the_next_step_reads(optimizer):
    # A step reuses the last step's state lookups only while no entry of opt.state changed.
    model, fresh_model = small_model(), small_model()
    opt, fresh = optimizer(model.parameters()), optimizer(fresh_model.parameters())
    pairs = gradient_pairs(model, 3)
    weights = torch.tensor([1.0, -0.5])
    for g_f, g_r in pairs[:2]:
        opt.step_combined(weights, [g_f, g_r])
    first = next(model.parameters())
    opt.state[first] = {}  # restart one parameter's state, as a user resetting it would
    with torch.no_grad():
        next(fresh_model.parameters()).copy_(first)
    opt.step_combined(weights, list(pairs[2]))
    fresh.step_combined(weights, [[g[0]] + [torch.zeros_like(s) for s in g[1:]] for g in pairs[2]])
    assert torch.equal(first.detach(), next(fresh_model.parameters()).detach())
    assert opt.state[first] is not None and len(opt.state) == len(list(model.parameters()))


def test_copies_and_loaded_state_keep_the_backend_and_step_alike():
    model = small_model()
    opt = fu.optim.AdamW(model.parameters(), lr=1e-2, backend="torch")
    g_f, g_r = gradient_pairs(model, 1)[0]
    opt.step_combined(torch.tensor([1.0, -1.0]), [g_f, g_r])
    twin_model = copy.deepcopy(model)
    twin = fu.optim.AdamW(twin_model.parameters(), lr=1e-2, backend="torch")
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # (loaded tensors would be shared otherwise)
    clone = copy.deepcopy(opt)
    assert clone.backend == "torch"
    for o in (opt, twin):
        o.step_combined(torch.tensor([0.5, 1.0]), [g_f, g_r])
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q)


def test_a_step_of_several_calls_checks_every_call_before_the_first():
    # Two param groups are two calls; the second's state is broken: the first group is not stepped.
    first, second = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4))
    opt = fu.optim.SGD([{"params": [first]}, {"params": [second], "lr": 0.5}], lr=0.1, momentum=0.9)
    grads = [[torch.ones(3), torch.ones(4)]]
    opt.step_combined(torch.ones(1), grads)
    opt.state[second]["momentum_buffer"] = torch.zeros(5)
    before, version = first.detach().clone(), first._version
    with pytest.raises(ValueError, match="momentum buffer 0 has shape"):
        opt.step_combined(torch.ones(1), grads)
    assert torch.equal(first.detach(), before) and first._version == version
