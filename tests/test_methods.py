"""Unlearning methods: the update each one applies, its schedule, its stopping rule, and parity
between backends and between fused and torch.optim optimizers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import BACKENDS, flat64

import fastunlearn as fu
from fastunlearn import methods

NUM_CLASSES = 3


def tiny_model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, NUM_CLASSES)).to(dtype)


def batches(seed, count, size=12, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 5, generator=gen, dtype=dtype), torch.randint(0, NUM_CLASSES, (size,), generator=gen))
        for _ in range(count)
    ]


def grad_of(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(batch[0]), batch[1])
    return flat64(torch.autograd.grad(loss, params))


def flat_params(model):
    return flat64([p.detach() for p in model.parameters()])


def loss_of(model, batch):
    with torch.no_grad():
        return float(F.cross_entropy(model(batch[0]), batch[1]))


# --- gradient capture ---------------------------------------------------------------------------


def test_stash_accumulates_micro_batches_into_one_gradient():
    model = tiny_model()
    (batch,) = batches(3, 1, size=8)
    stash = methods.GradientStash(model.parameters())
    halves = [(batch[0][:4], batch[1][:4]), (batch[0][4:], batch[1][4:])]
    first = stash.capture("forget", F.cross_entropy(model(halves[0][0]), halves[0][1]) / 2)
    total = stash.capture("forget", F.cross_entropy(model(halves[1][0]), halves[1][1]) / 2, accumulate=True)
    assert total is first  # added in place
    torch.testing.assert_close(flat64(total), grad_of(model, batch), rtol=1e-12, atol=1e-14)
    assert all(model_param.grad is None for model_param in model.parameters())
    replaced = stash.capture("forget", F.cross_entropy(model(halves[0][0]), halves[0][1]))
    torch.testing.assert_close(flat64(replaced), grad_of(model, halves[0]))


class DictModel(torch.nn.Module):
    """A model as Hugging Face's behave: keyword inputs, an output with .loss (given labels) and .logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_model()

    def forward(self, inputs, labels=None):
        logits = self.net(inputs)
        return {"logits": logits, "loss": None if labels is None else F.cross_entropy(logits, labels)}


def dict_batches(seed, count):
    return [{"inputs": x, "labels": y} for x, y in batches(seed, count)]


def test_default_losses_take_dict_batches():
    model = DictModel()
    forget, retain = dict_batches(4, 2)
    method = methods.GradientSurgery(model, lr=0.1)
    stats = method.step(forget, retain)
    assert torch.isfinite(stats["forget_loss"])
    torch.testing.assert_close(stats["forget_loss"], F.cross_entropy(tiny_model()(forget["inputs"]), forget["labels"]))
    decouple = methods.DecoupleRetain(DictModel(), threshold=1e-6, max_steps=2, lr=0.1)
    history = decouple.run([forget], [retain])  # the output distance test reads the logits
    assert decouple.reached_threshold and history["phase"].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="returned no loss for a dict batch: put 'labels' in the batch"):
        method.step({"inputs": forget["inputs"]}, retain)
    with pytest.raises(TypeError, match="takes an \\(inputs, labels\\) pair or a dict"):
        method.step(forget["inputs"], retain)


def test_fused_optimizers_hold_frozen_parameters_and_skip_them():
    model = tiny_model()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    for opt in (fu.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), fu.optim.AdamW(model.parameters(), lr=0.1)):
        assert len(opt.params) == 3 and all(p.requires_grad for p in opt.params)
        method = methods.GradientSurgery(model, optimizer=opt)
        forget, retain = batches(5, 2)
        method.step(forget, retain)
        assert torch.equal(model[0].weight, frozen)
        assert model[0].weight not in opt.state
    with pytest.raises(ValueError, match="no trainable parameters"):
        fu.optim.SGD([model[0].weight], lr=0.1).step_combined(torch.ones(1, dtype=torch.float64), [[]])


def test_stash_captures_each_gradient_and_restores_grad():
    model = tiny_model()
    model[0].bias.requires_grad_(False)  # frozen: never part of a vector
    forget, retain = batches(0, 2)
    sentinel = torch.full_like(model[2].bias, 7.0)
    model[2].bias.grad = sentinel
    stash = methods.GradientStash(model.parameters())
    g_f = stash.capture("forget", F.cross_entropy(model(forget[0]), forget[1]))
    g_r = stash.capture("retain", F.cross_entropy(model(retain[0]), retain[1]))
    assert len(g_f) == 3 and model[2].bias.grad is sentinel and model[0].bias.grad is None
    torch.testing.assert_close(flat64(g_f), grad_of(model, forget))
    torch.testing.assert_close(flat64(g_r), grad_of(model, retain))
    assert stash["forget"] is g_f


def test_stash_gives_exact_zeros_where_a_loss_does_not_reach():
    model = tiny_model()
    stash = methods.GradientStash(model.parameters())
    hidden = model[1](model[0](batches(0, 1)[0][0]))
    g = stash.capture("trunk", hidden.sum())
    assert stash.reached("trunk") == [True, True, False, False]
    assert all(torch.count_nonzero(s) == 0 for s in g[2:])


# --- Gradient Surgery ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_surgery_update_is_orthogonal_to_the_retain_gradient(backend):
    model = tiny_model()
    surgery = methods.GradientSurgery(model, lr=0.05, backend=backend)
    forget, retain = batches(1, 1)[0], batches(2, 1)[0]
    g_r = grad_of(model, retain)
    before = flat_params(model)
    stats = surgery.step(forget, retain)
    u = flat_params(model) - before  # = lr * (g_f - c g_r): an ascent step
    assert abs(float(g_r @ u)) <= 1e-10 * float(g_r.norm() * u.norm())
    assert float(grad_of(tiny_model(), forget) @ u) > 0  # the forget loss rises to first order
    assert abs(float(stats["retain_dot_update"])) <= 1e-10 * float(stats["retain_grad_norm"] * u.norm() / 0.05)


def test_surgery_raises_forget_loss_and_keeps_retain_loss():
    model = tiny_model(seed=3)
    forget, retain = batches(4, 1)[0], batches(5, 1, size=48)[0]
    surgery = methods.GradientSurgery(model, lr=0.02)
    f0, r0 = loss_of(model, forget), loss_of(model, retain)
    for _ in range(5):
        surgery.step(forget, retain)
    assert loss_of(model, forget) > f0 + 0.01
    assert abs(loss_of(model, retain) - r0) < 0.1 * (loss_of(model, forget) - f0)


def test_surgery_on_conflict_uses_the_ascent_sign_convention():
    forget, retain = batches(6, 1)[0], batches(7, 1)[0]
    model = tiny_model()
    dot = float(grad_of(model, forget) @ grad_of(model, retain))
    flipped = (retain[0], retain[1]), (forget[0], forget[1])
    for f, r in [(forget, retain), flipped]:
        stats = methods.GradientSurgery(tiny_model(), projection="on_conflict", lr=0.01).step(f, r)
        projected = float(stats["coef"]) != 0.0
        assert projected == (float(stats["dot"]) > 0)
    # With the "always" rule the coefficient is never zero for a non-orthogonal pair.
    assert float(methods.GradientSurgery(tiny_model(), lr=0.01).step(forget, retain)["coef"]) * dot > 0


def test_surgery_retain_weight_adds_retain_descent_and_never_is_plain_ascent():
    forget, retain = batches(8, 1)[0], batches(9, 1)[0]
    g_f, g_r = grad_of(tiny_model(), forget), grad_of(tiny_model(), retain)
    lr, lam = 0.1, 0.7
    for projection, weight in [("always", lam), ("never", 0.0)]:
        model = tiny_model()
        before = flat_params(model)
        stats = methods.GradientSurgery(model, projection=projection, retain_weight=weight, lr=lr).step(forget, retain)
        expected = lr * (g_f - (float(stats["coef"]) + weight) * g_r)
        torch.testing.assert_close(flat_params(model) - before, expected, rtol=1e-10, atol=1e-12)
    assert float(stats["coef"]) == 0.0


def test_surgery_with_several_retain_directions_is_orthogonal_to_each():
    model = tiny_model()
    forget, retain = batches(10, 1)[0], batches(11, 1, size=12)[0]
    parts = methods.split_batch(retain, 3)
    g_rs = [grad_of(model, part) for part in parts]
    before = flat_params(model)
    methods.GradientSurgery(model, retain_directions=3, lr=0.05).step(forget, retain)
    u = flat_params(model) - before
    for g in g_rs:
        assert abs(float(g @ u)) <= 1e-8 * float(g.norm() * u.norm())


def test_surgery_with_a_repeated_retain_part_stays_finite_and_orthogonal():
    # Two equal halves give two equal retain gradients: a singular Gram the projection must survive.
    model = tiny_model()
    forget, (x, y) = batches(12, 1)[0], batches(13, 1, size=6)[0]
    retain = (torch.cat([x, x]), torch.cat([y, y]))
    g_r = grad_of(model, (x, y))
    before = flat_params(model)
    stats = methods.GradientSurgery(model, retain_directions=2, lr=0.05).step(forget, retain)
    u = flat_params(model) - before
    assert torch.isfinite(u).all() and torch.isfinite(stats["coefs"]).all() and u.norm() > 0
    assert abs(float(g_r @ u)) <= 1e-8 * float(g_r.norm() * u.norm())


def test_run_history_keeps_per_direction_stats():
    method = methods.GradientSurgery(tiny_model(), retain_directions=2, lr=0.05)
    history = method.run(batches(14, 3), batches(15, 2), steps=3)
    assert history["coefs"].shape == (3, 2) and history["forget_loss"].shape == (3,)
    last = history.last()
    assert last["coefs"] == history["coefs"][-1].tolist() and isinstance(last["forget_loss"], float)


def test_surgery_rejects_bad_options():
    with pytest.raises(ValueError, match="projection"):
        methods.GradientSurgery(tiny_model(), projection="sometimes")
    with pytest.raises(ValueError, match="always"):
        methods.GradientSurgery(tiny_model(), projection="on_conflict", retain_directions=2)
    with pytest.raises(ValueError, match="fused optimizer"):
        model = tiny_model()
        methods.GradientSurgery(model, optimizer=fu.optim.SGD(list(model.parameters())[:2], lr=0.1))


# --- ∇τ -------------------------------------------------------------------------------------------


def test_nabla_tau_schedule_and_epoch_formula():
    assert methods.nabla_tau_epochs(100, 10) == 30
    assert methods.nabla_tau_epochs(7, 3) == 7  # int(7 / 6 * 6): ~three passes over the retain set
    assert methods.nabla_tau_epochs(1, 50) == 1
    assert [methods.alpha_schedule(0.25, e, 5) for e in range(5)] == pytest.approx([0.25, 0.2, 0.15, 0.1, 0.05])
    val = batches(12, 2)
    assert methods.NablaTau(tiny_model(), val, forget_fraction=0.03).alpha0 == pytest.approx(0.05)
    assert methods.NablaTau(tiny_model(), val, forget_fraction=0.3).alpha0 == pytest.approx(0.5)
    with pytest.raises(ValueError, match="exactly one"):
        methods.NablaTau(tiny_model(), val)


def test_nabla_tau_forget_weight_is_zero_once_forget_loss_reaches_tau():
    forget, retain = batches(13, 1)[0], batches(14, 1)[0]
    model = tiny_model()
    method = methods.NablaTau(model, batches(15, 2), alpha0=0.4, optimizer=fu.optim.SGD(model.parameters(), lr=0.1))
    method.tau = torch.tensor(loss_of(model, forget) - 0.5, dtype=torch.float64)  # forget loss above tau
    before = flat_params(model)
    stats = method.step(forget, retain)
    assert float(stats["forget_weight"]) == 0.0
    torch.testing.assert_close(flat_params(model) - before, -0.1 * 0.6 * grad_of(tiny_model(), retain))


@pytest.mark.parametrize("two_sided", [False, True])
def test_nabla_tau_two_gradient_step_equals_one_backward_of_its_loss(two_sided):
    forget, retain = batches(16, 1)[0], batches(17, 1)[0]
    model, reference = tiny_model(), tiny_model()
    method = methods.NablaTau(model, batches(18, 1), alpha0=0.3, two_sided=two_sided,
                              optimizer=fu.optim.SGD(model.parameters(), lr=0.1))  # fmt: skip
    tau = method.refresh_tau() + 0.5  # forget loss below tau: the ascent term is active
    method.tau = tau
    method.step(forget, retain)
    gap = tau - F.cross_entropy(reference(forget[0]), forget[1])
    term = gap**2 if two_sided else F.relu(gap) ** 2
    loss = 0.3 * term + 0.7 * F.cross_entropy(reference(retain[0]), retain[1])
    loss.backward()
    torch.optim.SGD(reference.parameters(), lr=0.1).step()
    torch.testing.assert_close(flat_params(model), flat_params(reference))


def test_nabla_tau_run_refreshes_tau_decays_alpha_and_lr():
    model = tiny_model()
    method = methods.NablaTau(model, batches(19, 2), alpha0=0.5, lr=1e-3)
    refreshed = []
    original = method.refresh_tau
    method.refresh_tau = lambda: refreshed.append(method.alpha) or original()
    history = method.run(batches(20, 2), batches(21, 3), epochs=11)
    assert len(refreshed) == 3  # epochs 0, 5, 10
    assert len(history) == 22 and history["alpha"][0] == 0.5 and history["alpha"][-1] == pytest.approx(0.5 / 11)
    assert method.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


# --- Decoupling + retention -----------------------------------------------------------------------


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_decouple_clipping_bounds_every_step(noise):
    model = tiny_model()
    method = methods.DecoupleRetain(model, threshold=1e9, max_steps=6, clip_norm=0.05, noise_multiplier=noise,
                                    lr=0.1, generator=torch.Generator().manual_seed(0))  # fmt: skip
    forget = batches(22, 2)
    for batch in forget * 3:
        grad_norm = float(grad_of(model, batch).norm())
        before = flat_params(model)
        stats = method.step(batch)
        assert float(stats["clipped_norm"]) <= 0.05 * (1 + 1e-9)
        assert float(stats["grad_norm"]) == pytest.approx(grad_norm)
        if noise == 0.0:
            assert float((flat_params(model) - before).norm()) <= 0.1 * 0.05 * (1 + 1e-9)
    assert method.guarantee_knobs()["steps_taken"] == 6
    assert method.guarantee_knobs()["noise_std"] == pytest.approx(noise * 0.05)


def test_decouple_stops_at_threshold_or_at_max_steps():
    forget, retain = batches(23, 2), batches(24, 3)
    far = methods.DecoupleRetain(tiny_model(), threshold=1e9, max_steps=4, clip_norm=1.0, lr=0.5)
    history = far.run(forget, retain, retain_epochs=1)
    assert far.steps_taken == 4 and not far.reached_threshold
    assert (history["phase"] == 1).sum() == 4 and (history["phase"] == 2).sum() == 3

    near = methods.DecoupleRetain(tiny_model(), threshold=0.05, max_steps=200, clip_norm=0.1, lr=0.05)
    history = near.run(forget, None)
    assert near.reached_threshold and near.steps_taken < 200
    assert float(history["output_distance"][-1]) >= 0.05 > float(history["output_distance"][-2])


def test_decouple_projected_retention_does_not_descend_the_forget_loss():
    """retention="projected": the retain gradient loses its component along the forget gradient
    where the two agree (g_r . g_f > 0), so the step is orthogonal to g_f; where they disagree it
    is the plain retain step."""
    for forget_seed in range(40, 60):
        forget, retain = batches(forget_seed, 1)[0], batches(61, 1)[0]
        g_f, g_r = grad_of(tiny_model(), forget), grad_of(tiny_model(), retain)
        if float(g_f @ g_r) > 0:
            break
    assert float(g_f @ g_r) > 0  # a forget batch whose gradient agrees with the retain one
    for retention, expected in (("projected", g_r - (g_r @ g_f) / (g_f @ g_f) * g_f), ("plain", g_r)):
        model = tiny_model()
        method = methods.DecoupleRetain(model, threshold=1.0, retention=retention,
                                        retain_optimizer=fu.optim.SGD(model.parameters(), lr=0.1))  # fmt: skip
        before = flat_params(model)
        method.retain_step(retain, forget)
        step = before - flat_params(model)
        torch.testing.assert_close(step, 0.1 * expected, rtol=1e-9, atol=1e-12)
    assert abs(float(step @ g_f)) > 1e-6 and abs(float((0.1 * (g_r - (g_r @ g_f) / (g_f @ g_f) * g_f)) @ g_f)) < 1e-12
    with pytest.raises(ValueError, match="needs a forget batch"):
        methods.DecoupleRetain(tiny_model(), threshold=1.0, retention="projected").retain_step(retain)
    with pytest.raises(ValueError, match="retention must be one of"):
        methods.DecoupleRetain(tiny_model(), threshold=1.0, retention="distilled")


# --- baselines ------------------------------------------------------------------------------------


def test_baseline_updates():
    forget, retain = batches(25, 1)[0], batches(26, 1)[0]
    g_f, g_r = grad_of(tiny_model(), forget), grad_of(tiny_model(), retain)
    cases = [
        (methods.GradientAscent, {}, 0.1 * g_f),
        (methods.GradientDifference, {"forget_weight": 0.5}, -0.1 * (g_r - 0.5 * g_f)),
        (methods.Finetune, {}, -0.1 * g_r),
    ]
    for cls, kwargs, expected in cases:
        model = tiny_model()
        before = flat_params(model)
        cls(model, lr=0.1, **kwargs).step(forget, retain)
        torch.testing.assert_close(flat_params(model) - before, expected)


def test_random_label_draws_other_classes():
    method = methods.RandomLabel(tiny_model(), num_classes=NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    x, y = batches(27, 1, size=300)[0]
    relabelled = method.relabel((x, y))[1]
    assert not (relabelled == y).any() and set(relabelled.tolist()) == set(range(NUM_CLASSES))


def test_pcgrad_unlearn_matches_flatten_pcgrad_on_task_directions():
    forget, retain = batches(28, 1)[0], batches(29, 1)[0]
    model = tiny_model()
    tasks = [-grad_of(model, forget), grad_of(model, retain)]
    before = flat_params(model)
    methods.PCGradUnlearn(model, reduction="sum", lr=0.1).step(forget, retain)
    merged = []
    for i, g in enumerate(tasks):  # K = 2: each task meets the other (self-projection never fires)
        other = tasks[1 - i]
        d = g @ other
        merged.append(g - d / other.dot(other) * other if d < 0 else g)
    torch.testing.assert_close(flat_params(model) - before, -0.1 * (merged[0] + merged[1]))


def test_train_and_retrain_fit_the_data():
    data = [(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()) for x, _ in batches(30, 4, size=32)]
    losses = methods.train(tiny_model(), data, epochs=15, lr=1e-2)
    assert float(losses[-4:].mean()) < 0.7 * float(losses[:4].mean())
    model = methods.retrain(lambda: tiny_model(seed=9), data, epochs=1, lr=1e-2)
    assert isinstance(model, torch.nn.Module)


# --- backends, optimizers, no host sync ----------------------------------------------------------

ALL_METHODS = [
    (methods.GradientSurgery, {}),
    (methods.GradientSurgery, {"projection": "on_conflict", "retain_weight": 0.5}),
    (methods.NablaTau, {"alpha0": 0.5, "val_loader": batches(31, 2, dtype=torch.float32), "projection": "always"}),
    (methods.DecoupleRetain, {"threshold": 1e9, "max_steps": 4, "clip_norm": 0.5}),
    (methods.GradientAscent, {}),
    (methods.GradientDifference, {}),
    (methods.Finetune, {}),
    (methods.RandomLabel, {"num_classes": NUM_CLASSES, "generator": None}),
    (methods.PCGradUnlearn, {"retain_tasks": 2}),
    (methods.FastGRU, {"gamma": 0.7}),
]


def run_method(cls, kwargs, backend, dtype=torch.float32, optimizer=None):
    torch.manual_seed(0)
    model = tiny_model(dtype=dtype)
    kwargs = dict(kwargs)
    if optimizer is not None:
        kwargs["optimizer"] = optimizer(model)
    method = cls(model, backend=backend, **kwargs)
    torch.manual_seed(1)  # random labels and PCGrad orders
    forget, retain = batches(32, 2, dtype=dtype), batches(33, 3, dtype=dtype)
    if cls is methods.DecoupleRetain:
        method.run(forget, retain)
    else:
        method.run(forget, retain, epochs=2)
    return model


@pytest.mark.parametrize("cls,kwargs", ALL_METHODS, ids=lambda v: getattr(v, "__name__", ""))
def test_every_method_gives_the_same_parameters_on_both_backends(cls, kwargs):
    models = [run_method(cls, kwargs, backend) for backend in BACKENDS]
    torch.testing.assert_close(flat_params(models[0]), flat_params(models[1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,kwargs", ALL_METHODS[:3], ids=lambda v: getattr(v, "__name__", ""))
def test_fused_optimizer_matches_torch_optim(cls, kwargs):
    fused = run_method(cls, kwargs, "auto", optimizer=lambda m: fu.optim.AdamW(m.parameters(), lr=1e-2))
    plain = run_method(cls, kwargs, "auto", optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2))
    torch.testing.assert_close(flat_params(fused), flat_params(plain), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,kwargs", ALL_METHODS, ids=lambda v: getattr(v, "__name__", ""))
def test_steps_never_read_a_tensor_back(cls, kwargs, monkeypatch):
    model = tiny_model(dtype=torch.float32)
    method = cls(model, **kwargs)
    forget, retain = batches(34, 1, dtype=torch.float32)[0], batches(35, 1, dtype=torch.float32)[0]
    if cls is methods.NablaTau:
        method.refresh_tau()

    def forbidden(*args, **kwargs):
        raise AssertionError("host read of a tensor inside a step")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    stats = method.step(forget, retain)
    monkeypatch.undo()
    assert all(isinstance(v, torch.Tensor) for v in stats.values())


# --- gradient accumulation and clipping ---------------------------------------------------------


@pytest.mark.parametrize("cls,kwargs", ALL_METHODS, ids=lambda v: getattr(v, "__name__", ""))
def test_two_micro_batches_of_a_batch_step_as_the_whole_batch(cls, kwargs):
    """micro_batches=2 (batches of 12 in parts of 6) gives the parameters of one step per batch, to
    fp32 rounding, for every method."""
    whole = run_method(cls, kwargs, "auto")
    parts = run_method(cls, dict(kwargs, micro_batches=2), "auto")
    torch.testing.assert_close(flat_params(parts), flat_params(whole), rtol=1e-5, atol=1e-6)


def test_micro_batches_split_any_mapping_and_other_batches_need_no_size():
    """A UserDict batch (as Hugging Face's BatchEncoding) splits into dicts; without micro_batches a
    batch of any type reaches a custom loss_fn untouched."""
    from collections import UserDict

    forget, retain = (UserDict(b) for b in dict_batches(6, 2))
    whole, parts = DictModel(), DictModel()
    methods.GradientSurgery(whole, lr=0.1).step(forget, retain)
    methods.GradientSurgery(parts, lr=0.1, micro_batches=2).step(forget, retain)
    torch.testing.assert_close(flat_params(parts.net), flat_params(whole.net))

    class Opaque:  # no tensors to measure: only the loss_fn knows what it holds
        def __init__(self, batch):
            self.batch = batch

    def opaque_loss(model, batch):
        return F.cross_entropy(model(batch.batch[0]), batch.batch[1])

    method = methods.GradientSurgery(tiny_model(), lr=0.1, loss_fn=opaque_loss)
    forget_pair, retain_pair = batches(7, 2)
    assert torch.isfinite(method.step(Opaque(forget_pair), Opaque(retain_pair))["forget_loss"])


def test_max_grad_norm_clips_the_update_from_the_gram():
    forget, retain = batches(40, 2)
    updates = {}
    for clip in (None, 1e-3, 1e3):
        model = tiny_model()
        before = flat_params(model)
        sgd = torch.optim.SGD(model.parameters(), lr=1.0)
        method = methods.GradientSurgery(model, optimizer=sgd, max_grad_norm=clip)
        method.step(forget, retain)
        updates[clip] = flat_params(model) - before
    assert abs(float(updates[1e-3].norm()) - 1e-3) < 1e-9  # the surgery update (norm >> 1e-3) clipped to 1e-3
    torch.testing.assert_close(updates[1e-3] / 1e-3, updates[None] / updates[None].norm())  # same direction
    torch.testing.assert_close(updates[1e3], updates[None])  # under the bound: untouched
    with pytest.raises(ValueError, match="max_grad_norm must be > 0"):
        methods.GradientSurgery(tiny_model(), max_grad_norm=0.0)
    with pytest.raises(ValueError, match="micro_batches must be an int >= 1"):
        methods.GradientSurgery(tiny_model(), micro_batches=0)


# --- FastGRU --------------------------------------------------------------------------------------


def reference_gru(model, steps, gamma, lr):
    """OpenUnlearning's GRU algebra, written as it does it: gradients concatenated into flat vectors
    on the host, the retain average, a per-parameter dot product summed as Python floats, the
    projection only where the objective gradient and the average conflict, then ``.grad`` and SGD."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)
    previous, projected = 0.0, []

    def flat_gradient(loss):
        optimizer.zero_grad()
        loss.backward()
        return torch.cat([p.grad.detach().flatten() for p in params]).cpu()

    def total_dot(a, b):
        total, index = 0.0, 0
        for p in params:
            total += (a[index : index + p.numel()] * b[index : index + p.numel()]).sum().item()
            index += p.numel()
        return total

    for forget, retain in steps:
        objective = flat_gradient(-F.cross_entropy(model(forget[0]), forget[1]))
        average = gamma * flat_gradient(F.cross_entropy(model(retain[0]), retain[1])) + (1 - gamma) * previous
        previous = average
        dot = total_dot(objective, average)
        projected.append(dot < 0)
        if dot < 0:
            objective = objective - dot / total_dot(average, average) * average
        index = 0
        for p in params:
            p.grad = objective[index : index + p.numel()].view_as(p).clone()
            index += p.numel()
        optimizer.step()
    return projected


def test_fast_gru_matches_openunlearnings_gru():
    forget = batches(40, 6, dtype=torch.float32)
    # A retain set that disagrees with the forget set on half of the steps: some steps project.
    retain = [(x, (y + (i % 2)) % NUM_CLASSES) for i, (x, y) in enumerate(batches(41, 6, dtype=torch.float32))]
    steps = list(zip(forget, retain))
    reference = tiny_model(dtype=torch.float32)
    projected = reference_gru(reference, steps, gamma=0.8, lr=0.5)
    assert any(projected) and not all(projected)

    model = tiny_model(dtype=torch.float32)
    gru = methods.FastGRU(model, gamma=0.8, optimizer=fu.optim.SGD(model.parameters(), lr=0.5))
    stats = [gru.step(f, r) for f, r in steps]
    assert [bool(s["projected"]) for s in stats] == projected
    torch.testing.assert_close(flat_params(model), flat_params(reference), rtol=1e-6, atol=1e-7)


def test_fast_gru_descent_objective_and_bad_options():
    model = tiny_model()
    gru = methods.FastGRU(model, forget_objective="descent", gamma=1.0, lr=0.1)
    forget, retain = batches(42, 1)[0], batches(43, 1)[0]
    g_f, g_r = grad_of(model, forget), grad_of(model, retain)
    before = flat_params(model)
    stats = gru.step(forget, retain)
    d = g_f - float(stats["coef"]) * g_r  # descent on the forget loss, projected where g_f . g_r < 0
    torch.testing.assert_close(flat_params(model), before - 0.1 * d)
    assert (float(stats["coef"]) != 0) == bool(g_f @ g_r < 0)
    with pytest.raises(ValueError, match="gamma"):
        methods.FastGRU(model, gamma=1.5)
    with pytest.raises(ValueError, match="forget_objective"):
        methods.FastGRU(model, forget_objective="up")


# --- loss scaling, non-finite steps, accumulation windows, parameter order ----------------------


def test_grad_scaler_steps_as_unscaled_and_skips_non_finite_steps():
    forget, retain = batches(44, 3, dtype=torch.float32), batches(45, 3, dtype=torch.float32)
    plain = tiny_model(dtype=torch.float32)
    unscaled = methods.GradientSurgery(plain, lr=0.1, max_grad_norm=0.5)
    for f, r in zip(forget, retain):
        unscaled.step(f, r)

    scaled_model = tiny_model(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    scaled = methods.GradientSurgery(scaled_model, lr=0.1, max_grad_norm=0.5, grad_scaler=scaler)
    for f, r in zip(forget, retain):
        stats = scaled.step(f, r)
    torch.testing.assert_close(flat_params(scaled_model), flat_params(plain), rtol=1e-6, atol=1e-7)
    assert float(stats["forget_grad_norm"]) < 10  # stats are of the true (unscaled) gradients
    assert scaler.get_scale() == 2.0**13  # grown once, after two finite steps

    before = flat_params(scaled_model)
    inf_input = (forget[0][0] * float("inf"), forget[0][1])
    scaled.step(inf_input, retain[0])
    assert torch.equal(flat_params(scaled_model), before)
    assert scaled.skipped_steps == 1 and scaler.get_scale() == 2.0**12


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_decouple_retain_with_a_grad_scaler_steps_as_without(noise):
    forget = batches(52, 3, dtype=torch.float32)
    models = [tiny_model(dtype=torch.float32) for _ in range(2)]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for model, grad_scaler in zip(models, [None, scaler]):
        method = methods.DecoupleRetain(
            model, threshold=1e9, clip_norm=0.05, noise_multiplier=noise, lr=0.5, grad_scaler=grad_scaler,
            generator=torch.Generator().manual_seed(3), max_grad_norm=1e-9,  # phase 2 only
        )  # fmt: skip
        stats = [method.step(batch) for batch in forget]
        assert float(stats[0]["grad_norm"]) < 10 and float(stats[0]["clip_scale"]) < 1  # unscaled, clipping
    torch.testing.assert_close(flat_params(models[1]), flat_params(models[0]), rtol=1e-5, atol=1e-6)
    assert not torch.equal(flat_params(models[0]), flat_params(tiny_model(dtype=torch.float32)))


def test_skip_nonfinite_without_a_scaler_keeps_adamw_state():
    model = tiny_model(dtype=torch.float32)
    method = methods.GradientDifference(
        model, optimizer=fu.optim.AdamW(model.parameters(), lr=0.1), skip_nonfinite=True
    )
    forget, retain = batches(46, 1, dtype=torch.float32)[0], batches(47, 1, dtype=torch.float32)[0]
    method.step(forget, retain)
    state = {k: v.clone() for k, v in method.optimizer.state[method.params[0]].items() if torch.is_tensor(v)}
    before = flat_params(model)
    method.step((forget[0] * float("nan"), forget[1]), retain)
    assert torch.equal(flat_params(model), before) and method.skipped_steps == 1
    for key, value in state.items():
        assert torch.equal(method.optimizer.state[method.params[0]][key], value)
    assert method.optimizer.state[method.params[0]]["step"] == 1


@pytest.mark.parametrize("retain_directions", [1, 2, 3])  # 3: parts that span two micro-batches
def test_micro_batches_window_steps_as_the_concatenated_batch(retain_directions):
    forget, retain = batches(48, 2, size=6), batches(49, 2, size=6)
    joined = [tuple(torch.cat(column) for column in zip(*pair)) for pair in (forget, retain)]
    whole, window = tiny_model(), tiny_model()
    kwargs = {"lr": 0.1, "retain_directions": retain_directions}
    methods.GradientSurgery(whole, **kwargs).step(*joined)
    methods.GradientSurgery(window, **kwargs).step(methods.MicroBatches(forget), methods.MicroBatches(retain))
    torch.testing.assert_close(flat_params(window), flat_params(whole))


def test_fused_optimizer_param_groups_in_any_order():
    forget, retain = batches(50, 1)[0], batches(51, 1)[0]
    one_group, two_groups = tiny_model(), tiny_model()
    methods.GradientSurgery(one_group, optimizer=fu.optim.SGD(one_group.parameters(), lr=0.1)).step(forget, retain)
    params = list(two_groups.parameters())
    reordered = fu.optim.SGD([{"params": params[2:]}, {"params": params[:2], "lr": 0.1}], lr=0.1)
    method = methods.GradientSurgery(two_groups, optimizer=reordered)
    assert method.params[0] is params[2]
    method.step(forget, retain)
    torch.testing.assert_close(flat_params(two_groups), flat_params(one_group))
    with pytest.raises(ValueError, match="exactly the model's trainable parameters"):
        methods.GradientSurgery(two_groups, optimizer=fu.optim.SGD(params[:2], lr=0.1))
