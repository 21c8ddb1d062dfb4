"""``fastunlearn.PCGrad`` against an independent, flatten-based model of the widely copied PCGrad wrapper.

The reference below backpropagates every task loss with ``retain_graph=True``, flattens the gradients
(and "this parameter got a gradient" masks) into one float64 vector per task, projects each task
gradient off the original gradients it conflicts with in an explicit order, and merges: ``mean`` (or
``sum``) over tasks where every task reached the element, ``sum`` elsewhere.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastunlearn as fu

RTOL = 1e-5
ATOL_REL = 1e-5  # absolute tolerance, relative to the largest entry of the reference gradient


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------


def _optimizer_params(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def reference_task_grads(params, objectives):
    """Per task: flattened float64 gradient and flattened has-grad mask over ``params``."""
    grads, masks = [], []
    for obj in objectives:
        for p in params:
            p.grad = None
        obj.backward(retain_graph=True)
        grad, mask = [], []
        for p in params:
            if p.grad is None:
                grad.append(torch.zeros_like(p, dtype=torch.float64).flatten())
                mask.append(torch.zeros(p.numel(), dtype=torch.float64))
            else:
                grad.append(p.grad.detach().clone().to(torch.float64).flatten())
                mask.append(torch.ones(p.numel(), dtype=torch.float64))
        grads.append(torch.cat(grad))
        masks.append(torch.cat(mask))
    for p in params:
        p.grad = None
    return grads, masks


def reference_project(grads, order):
    """Each task gradient projected, in ``order[i]``, off the original gradients it conflicts with."""
    projected = []
    for i, g_i in enumerate(grads):
        pc = g_i.clone()
        for j in order[i].tolist():
            g_j = grads[j]
            d = torch.dot(pc, g_j)
            if d < 0:
                pc = pc - d / torch.dot(g_j, g_j) * g_j
        projected.append(pc)
    return projected


def reference_merge(projected, masks, reduction):
    stacked = torch.stack(projected)
    shared = torch.stack(masks).prod(0).bool()
    merged = torch.zeros_like(projected[0])
    if reduction == "mean":
        merged[shared] = stacked[:, shared].mean(0)
    else:
        merged[shared] = stacked[:, shared].sum(0)
    merged[~shared] = stacked[:, ~shared].sum(0)
    return merged


def unflatten(flat, params):
    out, start = [], 0
    for p in params:
        out.append(flat[start : start + p.numel()].view_as(p))
        start += p.numel()
    assert start == flat.numel()
    return out


def reference_pc_backward(optimizer, objectives, order, reduction):
    """The merged gradient the reference wrapper would write, per optimizer parameter (float64)."""
    params = _optimizer_params(optimizer)
    grads, masks = reference_task_grads(params, objectives)
    merged = reference_merge(reference_project(grads, order), masks, reduction)
    return unflatten(merged, params)


def assert_grads_match(params, expected):
    scale = max(e.abs().max().item() for e in expected)
    assert scale > 0
    for p, e in zip(params, expected):
        assert p.grad is not None
        assert p.grad.shape == p.shape and p.grad.dtype == p.dtype
        torch.testing.assert_close(p.grad.to(torch.float64), e, rtol=RTOL, atol=ATOL_REL * scale)


def random_order(k, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(k, generator=gen) for _ in range(k)])


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class MultiTask(nn.Module):
    """Shared trunk and shared layer, one head per task; all tasks from one forward pass."""

    def __init__(self, num_tasks, d_in=5, d_hidden=8, d_shared=4):
        super().__init__()
        self.trunk = nn.Linear(d_in, d_hidden)
        self.shared = nn.Linear(d_hidden, d_shared)
        self.heads = nn.ModuleList(nn.Linear(d_shared, 1) for _ in range(num_tasks))

    def forward(self, x):
        h = torch.tanh(self.shared(torch.tanh(self.trunk(x))))
        return [head(h).squeeze(-1) for head in self.heads]


def make_batch(num_tasks, seed, n=16, d_in=5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=gen)
    base = torch.randn(n, generator=gen)
    # Alternating-sign targets: the tasks pull the shared weights in conflicting directions.
    ys = [(-1) ** k * (2.0 + k) * base + 0.3 * torch.randn(n, generator=gen) for k in range(num_tasks)]
    return x, ys


def multitask_losses(model, x, ys):
    return [((out - y) ** 2).mean() for out, y in zip(model(x), ys)]


def has_conflict(gram):
    off = gram - torch.diag(gram.diagonal())
    return bool((off < 0).any())


# --------------------------------------------------------------------------------------------
# 1. Multi-task model, explicit orders
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("order_kind", ["identity", "reversed", "random0", "random1", "int32"])
def test_matches_reference_multitask(num_tasks, reduction, order_kind):
    torch.manual_seed(1)
    model = MultiTask(num_tasks)
    opt = fu.PCGrad(torch.optim.SGD(model.parameters(), lr=0.1), reduction=reduction)
    assert isinstance(opt.optimizer, torch.optim.SGD)
    k = num_tasks
    if order_kind == "identity":
        order = torch.arange(k).repeat(k, 1)
    elif order_kind == "reversed":
        order = torch.arange(k - 1, -1, -1).repeat(k, 1)
    elif order_kind == "int32":
        order = random_order(k, seed=7).to(torch.int32)
    else:
        order = random_order(k, seed=int(order_kind[-1]))
    for row in order:
        assert sorted(row.tolist()) == list(range(k))

    x, ys = make_batch(k, seed=1)
    losses = multitask_losses(model, x, ys)
    # The reference retains the graph, so the same losses are then fed to fastunlearn.
    expected = reference_pc_backward(opt.optimizer, losses, order, reduction)

    # Stale gradients must be replaced, not accumulated into.
    params = list(model.parameters())
    for p in params:
        p.grad = torch.full_like(p, 123.0)
    stats = opt.pc_backward(losses, order=order)

    assert has_conflict(stats.gram), "test setup must make at least one projection fire"
    assert_grads_match(params, expected)

    # The Gram is that of the raw task gradients, and the projections changed the result.
    grads, masks = reference_task_grads(params, multitask_losses(model, x, ys))
    rows = torch.stack(grads)
    torch.testing.assert_close(stats.gram, rows @ rows.T, rtol=1e-5, atol=1e-6 * rows.abs().max().item() ** 2)
    unprojected = reference_merge(grads, masks, reduction)
    merged = reference_merge(reference_project(grads, order), masks, reduction)
    assert not torch.allclose(unprojected, merged, rtol=1e-3, atol=1e-3 * merged.abs().max().item())


def test_repeated_calls_overwrite():
    """Each pc_backward writes a fresh merged gradient (no accumulation across calls)."""
    torch.manual_seed(3)
    model = MultiTask(3)
    opt = fu.PCGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    order = random_order(3, seed=11)
    x, ys = make_batch(3, seed=4)
    expected = reference_pc_backward(opt.optimizer, multitask_losses(model, x, ys), order, "mean")
    for _ in range(2):
        opt.pc_backward(multitask_losses(model, x, ys), order=order)
        assert_grads_match(list(model.parameters()), expected)


# --------------------------------------------------------------------------------------------
# 2. A parameter only some tasks reach
# --------------------------------------------------------------------------------------------


class PartialReach(nn.Module):
    """``aux`` is used only by task 0, ``unused`` by no task; ``trunk`` and ``head`` by all."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)
        self.aux = nn.Linear(6, 1)
        self.unused = nn.Linear(2, 2)

    def losses(self, x, ys):
        h = torch.tanh(self.trunk(x))
        out = self.head(h)
        losses = [((out[:, k] - y) ** 2).mean() for k, y in enumerate(ys)]
        losses[0] = losses[0] + (self.aux(h).squeeze(-1) ** 2).mean()
        return losses


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_partial_reach_merge(reduction):
    torch.manual_seed(1)
    model = PartialReach()
    opt = fu.PCGrad(torch.optim.SGD(model.parameters(), lr=0.1), reduction=reduction)
    x, ys = make_batch(3, seed=2, d_in=4)
    order = random_order(3, seed=5)

    losses = model.losses(x, ys)
    expected = reference_pc_backward(opt.optimizer, losses, order, reduction)
    stats = opt.pc_backward(losses, order=order)
    params = list(model.parameters())
    assert_grads_match(params, expected)
    assert has_conflict(stats.gram)

    # A parameter no task reaches gets a zero gradient, as in the reference.
    for p in model.unused.parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0

    # Wrong merge (mean over tasks everywhere) would differ on the parameters task 0 alone reaches.
    grads, _ = reference_task_grads(params, model.losses(x, ys))
    naive = unflatten(torch.stack(reference_project(grads, order)).mean(0), params)
    aux_index = [i for i, p in enumerate(params) if any(p is q for q in model.aux.parameters())]
    assert aux_index
    for i in aux_index:
        if reduction == "mean":
            assert not torch.allclose(naive[i], expected[i], rtol=1e-3, atol=1e-6)
            torch.testing.assert_close(naive[i] * 3, expected[i])
        else:
            torch.testing.assert_close(naive[i] * 3, expected[i])


# --------------------------------------------------------------------------------------------
# 3. Frozen parameter in the optimizer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_frozen_parameter_keeps_none(reduction):
    torch.manual_seed(2)
    model = MultiTask(3)
    model.trunk.bias.requires_grad_(False)
    model.heads[1].weight.requires_grad_(False)
    frozen = [model.trunk.bias, model.heads[1].weight]
    opt = fu.PCGrad(torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1), reduction=reduction)
    order = random_order(3, seed=9)
    x, ys = make_batch(3, seed=3)

    losses = multitask_losses(model, x, ys)
    expected = reference_pc_backward(opt.optimizer, losses, order, reduction)
    stats = opt.pc_backward(losses, order=order)
    assert has_conflict(stats.gram)

    params = _optimizer_params(opt.optimizer)
    trainable = [(p, e) for p, e in zip(params, expected) if p.requires_grad]
    assert len(trainable) == len(params) - 2
    assert_grads_match([p for p, _ in trainable], [e for _, e in trainable])
    for p, e in zip(params, expected):
        if not p.requires_grad:
            assert p.grad is None
            assert torch.count_nonzero(e) == 0  # the reference would hand it a zero gradient

    # With weight decay, frozen weights therefore do not move.
    before = [p.detach().clone() for p in frozen]
    opt.step()
    for p, b in zip(frozen, before):
        assert torch.equal(p, b)


@pytest.mark.parametrize("change", ["unfreeze", "add_param_group"])
def test_trainable_set_read_at_each_call(change):
    w = nn.Parameter(torch.tensor([1.0, 1.0]), requires_grad=change != "unfreeze")
    other = nn.Parameter(torch.tensor([1.0]))
    opt = fu.PCGrad(torch.optim.SGD([other] + ([w] if change == "unfreeze" else []), lr=0.1), reduction="sum")
    if change == "unfreeze":
        w.requires_grad_(True)
    else:
        opt.optimizer.add_param_group({"params": [w]})
    order = torch.tensor([[0, 1], [1, 0]])
    opt.pc_backward([w[0] * 1.0, -w[0] + 2 * w[1]], order=order)  # gradients (1, 0) and (-1, 2): they conflict
    got = w.grad.clone()
    expected = reference_pc_backward(opt.optimizer, [w[0] * 1.0, -w[0] + 2 * w[1]], order, "sum")
    torch.testing.assert_close(expected[-1], torch.tensor([0.8, 2.4], dtype=torch.float64))
    torch.testing.assert_close(got.to(torch.float64), expected[-1])


# --------------------------------------------------------------------------------------------
# 4. step() and zero_grad()
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_step_matches_sgd_on_reference_grads(reduction):
    torch.manual_seed(4)
    model_fu = MultiTask(3)
    model_ref = copy.deepcopy(model_fu)
    sgd_kwargs = dict(lr=0.05, momentum=0.9, weight_decay=0.01)
    opt_fu = fu.PCGrad(torch.optim.SGD(model_fu.parameters(), **sgd_kwargs), reduction=reduction)
    opt_ref = torch.optim.SGD(model_ref.parameters(), **sgd_kwargs)
    x, ys = make_batch(3, seed=6)
    fired = False

    for it in range(4):
        order = random_order(3, seed=100 + it)

        opt_fu.zero_grad()
        assert all(p.grad is None for p in model_fu.parameters())
        stats = opt_fu.pc_backward(multitask_losses(model_fu, x, ys), order=order)
        fired |= has_conflict(stats.gram)
        opt_fu.step()

        opt_ref.zero_grad(set_to_none=True)
        merged = reference_pc_backward(opt_ref, multitask_losses(model_ref, x, ys), order, reduction)
        for p, g in zip(_optimizer_params(opt_ref), merged):
            p.grad = g.to(p.dtype)
        opt_ref.step()

    assert fired
    for p_fu, p_ref in zip(model_fu.parameters(), model_ref.parameters()):
        torch.testing.assert_close(p_fu, p_ref, rtol=1e-5, atol=1e-6)
    opt_fu.zero_grad()
    assert all(p.grad is None for p in model_fu.parameters())


# --------------------------------------------------------------------------------------------
# 5. Random order from a seeded generator
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_seeded_generator_reproducible(reduction):
    k, seed = 3, 1234
    torch.manual_seed(5)
    model = MultiTask(k)
    x, ys = make_batch(k, seed=8)
    params = list(model.parameters())

    def run(num_calls):
        opt = fu.PCGrad(
            torch.optim.SGD(model.parameters(), lr=0.1),
            reduction=reduction,
            generator=torch.Generator().manual_seed(seed),
        )
        results = []
        for _ in range(num_calls):
            stats = opt.pc_backward(multitask_losses(model, x, ys))
            assert has_conflict(stats.gram)
            results.append([p.grad.clone() for p in params])
        return results

    first, second = run(2), run(2)
    for a, b in zip(first, second):
        for x_, y_ in zip(a, b):
            assert torch.equal(x_, y_)

    # The wrapper draws one order per call, exactly as pcgrad_order does from the same generator.
    ref_gen = torch.Generator().manual_seed(seed)
    opt_ref = torch.optim.SGD(model.parameters(), lr=0.1)
    orders = []
    for call in range(2):
        order = fu.pcgrad_order(k, generator=ref_gen)
        orders.append(order)
        expected = reference_pc_backward(opt_ref, multitask_losses(model, x, ys), order, reduction)
        for p, got in zip(params, first[call]):
            p.grad = got
        assert_grads_match(params, expected)

    # The test is sensitive to the order: some other order gives a different merged gradient.
    grads, masks = reference_task_grads(params, multitask_losses(model, x, ys))
    results = [reference_merge(reference_project(grads, o), masks, reduction) for o in orders]
    results += [reference_merge(reference_project(grads, random_order(k, s)), masks, reduction) for s in range(8)]
    assert any(not torch.allclose(results[0], r, rtol=1e-6, atol=1e-9) for r in results[1:])


# --------------------------------------------------------------------------------------------
# 6. Bad input
# --------------------------------------------------------------------------------------------


def test_bad_reduction():
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError):
        fu.PCGrad(torch.optim.SGD(model.parameters(), lr=0.1), reduction="max")


def test_empty_objectives():
    model = nn.Linear(2, 1)
    opt = fu.PCGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError):
        opt.pc_backward([])


def test_one_loss_tensor_instead_of_a_list():
    model = nn.Linear(2, 1)
    opt = fu.PCGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match=r"sequence of scalar losses"):
        opt.pc_backward(model(torch.ones(1, 2)).sum())
    assert all(p.grad is None for p in model.parameters())


def test_a_stacked_tensor_of_losses_is_a_sequence_of_them():
    torch.manual_seed(0)
    model, x = nn.Linear(2, 1), torch.randn(4, 2)
    opt = fu.PCGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    order = torch.tensor([[0, 1], [1, 0]])
    stats = opt.pc_backward(torch.stack([model(x).sum(), (model(x) ** 2).sum()]), order=order)
    stacked = [p.grad.clone() for p in model.parameters()]
    opt.zero_grad()
    expected = opt.pc_backward([model(x).sum(), (model(x) ** 2).sum()], order=order)
    assert torch.equal(stats.weights, expected.weights)
    assert all(torch.equal(a, p.grad) for a, p in zip(stacked, model.parameters()))


@pytest.mark.parametrize("order", [[[0, 0], [1, 1]], [[0, 2], [1, 0]]])
def test_order_that_is_not_a_permutation_is_rejected_before_any_grad_changes(order):
    w = nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = fu.PCGrad(torch.optim.SGD([w], lr=0.1))
    w.grad = torch.tensor([5.0, 5.0])
    with pytest.raises(ValueError, match="permutation"):
        opt.pc_backward([w[0] * 1.0, -w[0] + 2 * w[1]], order=torch.tensor(order))
    assert torch.equal(w.grad, torch.tensor([5.0, 5.0]))


def test_default_reduction_is_mean():
    torch.manual_seed(6)
    model = MultiTask(2)
    opt = fu.PCGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    order = random_order(2, seed=3)
    x, ys = make_batch(2, seed=10)
    losses = multitask_losses(model, x, ys)
    expected = reference_pc_backward(opt.optimizer, losses, order, "mean")
    opt.pc_backward(losses, order=order)
    assert_grads_match(list(model.parameters()), expected)
