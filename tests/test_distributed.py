"""Ops and methods on FSDP2 / HSDP-sharded gradients, 2 CPU processes over gloo.

One spawn runs every scenario; each rank records what it measured, and the tests below assert on
those records: results equal the single-process ones on the full gradients, one all-reduce per
sharded mesh dimension, nothing gathered.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is needed", allow_module_level=True)

WORLD = 2


def model_factory():
    torch.manual_seed(0)
    # 7 and 3 rows split unevenly over 2 ranks; the 1-row layer leaves rank 1 an empty local shard.
    return torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)
    )


def batches(steps):
    gen = torch.Generator().manual_seed(1)
    return [
        tuple((torch.randn(8, 5, generator=gen), torch.randn(8, 1, generator=gen)) for _ in range(2))
        for _ in range(steps)
    ]


def mse(model, batch):
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1])


def full_gradients(model, batch):
    params = list(model.parameters())
    return list(torch.autograd.grad(mse(model, batch), params))


def count_all_reduces(monkeypatch_target, fn):
    calls = []
    original = monkeypatch_target.all_reduce

    def counting(tensor, *args, **kwargs):
        calls.append(tuple(tensor.shape))
        return original(tensor, *args, **kwargs)

    monkeypatch_target.all_reduce = counting
    try:
        result = fn()
    finally:
        monkeypatch_target.all_reduce = original
    return result, calls


def ops_on(grads_f, grads_r, fu):
    """Every op on (possibly sharded) vectors; returns plain results and the updated vectors."""
    order = torch.tensor([[1, 0], [0, 1]])
    g = [t.clone() for t in grads_f]
    g2 = [t.clone() for t in grads_f]
    out = [torch.empty_like(t) for t in grads_f]
    out2 = [torch.empty_like(t) for t in grads_f]
    results = {
        "gram": fu.gram([grads_f, grads_r]),
        "dot": fu.dot(grads_f, grads_r),
        "project": torch.stack(list(fu.project_(g, grads_r, mode="always"))),
        "alpha": fu.project_normal_(g2, [grads_r, grads_f]),
        "pcgrad": fu.pcgrad_(out, [grads_f, grads_r], order=order).weights,
    }
    fu.combine_(out2, torch.tensor([0.5, -1.5]), [grads_f, grads_r])
    return results, {"project": g, "project_normal": g2, "pcgrad": out, "combine": out2}


def full(vector):
    from fastunlearn.distributed import is_dtensor

    return [t.full_tensor() if is_dtensor(t) else t for t in vector]


def flat(vector):
    return torch.cat([t.reshape(-1) for t in vector]).tolist()


def bad_calls(fu, g_f, g_r, other_mesh=None) -> dict[str, str]:
    """The exception each misuse raises (its type name), or "none"."""
    local_r = [t.to_local() for t in g_r]
    calls = {
        "mixed_plain_and_dtensor": lambda: fu.gram([g_f, local_r]),
        "group_with_dtensor": lambda: fu.gram([g_f], group=dist.group.WORLD),
        "pcgrad_without_order": lambda: fu.pcgrad_([t.clone() for t in g_f], [g_f, g_r]),
    }
    if other_mesh is not None:
        calls["two_meshes"] = lambda: fu.dot(g_f, other_mesh)
    errors = {}
    for name, call in calls.items():
        try:
            call()
            errors[name] = "none"
        except (TypeError, ValueError) as exc:
            errors[name] = type(exc).__name__
    return errors


def worker(rank, out_dir, init_file):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import fastunlearn as fu

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    record = {}
    (forget, retain), *_ = batches(1)

    # Single-process reference on the full gradients.
    reference = model_factory()
    ref_results, ref_vectors = ops_on(full_gradients(reference, forget), full_gradients(reference, retain), fu)
    record["reference"] = {k: v.tolist() for k, v in ref_results.items()}
    record["reference_vectors"] = {k: flat(v) for k, v in ref_vectors.items()}

    keep = None
    for name, shape in (("fsdp", (WORLD,)), ("hsdp", (WORLD, 1))):
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=("shard",) if len(shape) == 1 else ("rep", "shard"))
        model = fully_shard(model_factory(), mesh=mesh)
        stash = fu.methods.GradientStash(model.parameters())
        g_f = stash.capture("forget", mse(model, forget))
        g_r = stash.capture("retain", mse(model, retain))
        (results, vectors), calls = count_all_reduces(dist, lambda: ops_on(g_f, g_r, fu))  # noqa: B023
        record[name] = {k: v.tolist() for k, v in results.items()}
        record[name + "_vectors"] = {k: flat(full(v)) for k, v in vectors.items()}
        record[name + "_all_reduces"] = calls
        record[name + "_local_numels"] = [t.to_local().numel() for t in g_f]
        record[name + "_placements"] = [type(p).__name__ for p in g_f[0].placements]
        record[name + "_errors"] = bad_calls(fu, g_f, g_r, other_mesh=keep if name == "hsdp" else None)
        keep = g_f  # the 1-D mesh's vector, to mix with the 2-D mesh's

    # Hand-sharded plain tensors with group=: each rank holds a slice of every parameter.
    full_f, full_r = full_gradients(reference, forget), full_gradients(reference, retain)
    mine = [[t.reshape(-1).tensor_split(WORLD)[rank] for t in v] for v in (full_f, full_r)]
    record["group_gram"] = fu.gram(mine, group=dist.group.WORLD).tolist()

    # Each method's steps on an FSDP2 model against the same steps in one process.
    steps = batches(3)
    methods = {
        "surgery": lambda m: fu.methods.GradientSurgery(
            m, optimizer=fu.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), loss_fn=mse
        ),
        "nabla_tau": lambda m: fu.methods.NablaTau(m, [steps[0][1]], alpha0=0.3, lr=1e-2, loss_fn=mse),
        "decouple": lambda m: fu.methods.DecoupleRetain(m, threshold=1e9, clip_norm=0.1, lr=0.1, loss_fn=mse),
        "pcgrad": lambda m: fu.methods.PCGradUnlearn(
            m, retain_tasks=2, generator=torch.Generator().manual_seed(3), lr=0.05, loss_fn=mse
        ),
    }
    for name, make in methods.items():
        plain = model_factory()
        sharded = fully_shard(model_factory(), mesh=init_device_mesh("cpu", (WORLD,)))
        for model in (plain, sharded):
            method = make(model)
            for forget_batch, retain_batch in steps:
                method.step(forget_batch, retain_batch)
        record[name + "_plain"] = flat([p.detach() for p in plain.parameters()])
        record[name + "_fsdp"] = flat(full([p.detach() for p in sharded.parameters()]))

    # The .grad route of the fused optimizer on DTensor params, and grads that do not pair with them.
    for name, model in (
        ("plain", model_factory()),
        ("fsdp", fully_shard(model_factory(), mesh=init_device_mesh("cpu", (WORLD,)))),
    ):
        opt = fu.optim.AdamW(model.parameters(), lr=0.05)
        mse(model, steps[0][0]).backward()
        opt.step()
        record["grad_step_" + name] = flat(full([p.detach() for p in model.parameters()]))
        if name == "fsdp":
            local = [p.grad.to_local() for p in model.parameters()]
            try:
                opt.step_combined(torch.ones(1), [local])
                record["local_grads_for_dtensor_params"] = "none"
            except ValueError:
                record["local_grads_for_dtensor_params"] = "ValueError"

    noisy_model = fully_shard(model_factory(), mesh=init_device_mesh("cpu", (WORLD,)))
    before = flat(full([p.detach() for p in noisy_model.parameters()]))
    noisy = fu.methods.DecoupleRetain(
        noisy_model, threshold=1e9, clip_norm=0.1, noise_multiplier=1.0, lr=0.1, loss_fn=mse
    )
    noisy.step(steps[0][0])
    record["noisy_change"] = (
        torch.tensor(flat(full([p.detach() for p in noisy_model.parameters()]))) - torch.tensor(before)
    ).tolist()

    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    dist.barrier()  # every rank has written its record
    # Leave without running gloo's teardown: its worker threads can abort the process at exit
    # (std::terminate on a joinable thread), which says nothing about the results above.
    os._exit(0)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp("distributed")
    mp.spawn(worker, args=(str(out_dir), str(out_dir / "init")), nprocs=WORLD, join=True)
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(WORLD)]


def close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("layout", ["fsdp", "hsdp"])
def test_ops_on_sharded_gradients_equal_the_single_process_result(records, layout):
    for record in records:
        for name, value in record["reference"].items():
            close(record[layout][name], value)
        for name, value in record["reference_vectors"].items():
            close(record[layout + "_vectors"][name], value)


def test_uneven_shards_leave_a_rank_with_an_empty_local_shard(records):
    sizes = [record["fsdp_local_numels"] for record in records]
    assert any(0 in s for s in sizes)  # the 1-row layer's bias on rank 1
    assert [a + b for a, b in zip(*sizes)] == [35, 7, 21, 3, 3, 1]


def test_one_all_reduce_per_sharded_mesh_dimension(records):
    for record in records:
        # gram, dot, project_, project_normal_, pcgrad_: one each; combine_ none
        assert len(record["fsdp_all_reduces"]) == 5
        assert record["hsdp_placements"] == ["Replicate", "Shard"]
        assert len(record["hsdp_all_reduces"]) == 5  # the replicate dimension is never reduced
        assert all(shape in ([2, 2], [3, 3]) for shape in record["fsdp_all_reduces"])  # K x K only


@pytest.mark.parametrize("method", ["surgery", "nabla_tau", "decouple", "pcgrad"])
def test_methods_on_fsdp2_match_one_process(records, method):
    for record in records:
        close(record[method + "_fsdp"], record[method + "_plain"])


def test_fused_optimizer_on_dtensor_params(records):
    for record in records:
        close(record["grad_step_fsdp"], record["grad_step_plain"])
        assert record["local_grads_for_dtensor_params"] == "ValueError"


def test_decouple_noise_on_dtensor_gradients(records):
    for record in records:
        change = torch.tensor(record["noisy_change"])
        # clipped ascent moves by at most lr * C = 0.01; noise of std lr * sigma * C = 0.01 per element
        assert change.isfinite().all() and 0.003 < change.std() < 0.03


def test_hand_sharded_plain_tensors_with_a_group(records):
    for record in records:
        close(record["group_gram"], record["reference"]["gram"])


def test_misuse_is_a_clear_error(records):
    for record in records:
        assert record["fsdp_errors"] == {
            "mixed_plain_and_dtensor": "TypeError",
            "group_with_dtensor": "ValueError",
            "pcgrad_without_order": "ValueError",
        }
        assert record["hsdp_errors"]["two_meshes"] == "ValueError"


def test_plain_shards_with_a_group_and_without_one():
    import fastunlearn as fu

    g, r = [torch.ones(3), torch.ones(2)], [torch.arange(3.0), torch.ones(2)]
    assert fu.dot(g, r) == 5.0  # DDP-style replicated gradients: local and exact, no collective
    with pytest.raises(TypeError, match="not a Tensor"):
        fu.dot(g, [r[0], object()])
