"""torch.library integration: opcheck, gradcheck, torch.compile, backend selection."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from helpers import BACKENDS, make_vectors

import fastunlearn as fu

OPS = torch.ops.fastunlearn


def shard_args(k=2, dtype=torch.float64, seed=0):
    vectors = make_vectors([(3, 4), (5,), (0,)], k, dtype, seed=seed)
    return [s for v in vectors for s in v]


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_every_op(backend):
    shards = shard_args(3)
    torch.library.opcheck(OPS.gram, (shards, 3, None, backend))
    torch.library.opcheck(OPS.gram, (shards, 3, torch.float64, backend))
    torch.library.opcheck(OPS.combine, (shards, torch.randn(2, 3, dtype=torch.float64), 3, backend))
    out = [torch.zeros_like(s) for s in shards[:3]]
    torch.library.opcheck(OPS.combine_, (out, torch.randn(3), shards, 3, backend))
    g, r = [s.clone() for s in shards[:3]], shards[3:6]
    for mode in ("always", "conflict", "ascent_conflict"):
        torch.library.opcheck(OPS.project_, ([s.clone() for s in g], r, mode, 1e-20, backend))
    torch.library.opcheck(OPS.project_normal_, ([s.clone() for s in g], shards[3:], 2, 1e-20, backend))
    order = fu.pcgrad_order(3, generator=torch.Generator().manual_seed(0))
    torch.library.opcheck(OPS.pcgrad_, ([torch.zeros_like(s) for s in g], shards, 3, order, "mean", 1e-20, backend))
    for weighting in ("span", "pcgrad_sum"):
        args = ([torch.zeros_like(s) for s in g], shards, 3, weighting, 1e-20, order, backend)
        torch.library.opcheck(OPS.aggregate_, args)
    torch.library.opcheck(
        OPS.aggregate_, ([torch.zeros_like(s) for s in g], shards[:6], 2, "always", 0.0, None, backend)
    )
    state = torch.zeros(5, 4, dtype=torch.float64)
    state[0] = float("-inf")
    logits, targets = torch.randn(4, 9), torch.tensor([0, 8, -1, 3])
    torch.library.opcheck(
        OPS.token_stats_update_, (state, torch.zeros(4, dtype=torch.long), logits, 2, targets, backend)
    )


def test_every_op_is_registered_per_dispatch_key():
    for op in (
        "gram",
        "combine",
        "combine_",
        "project_",
        "project_normal_",
        "pcgrad_",
        "aggregate_",
        "sgd_step_",
        "adamw_step_",
        "token_stats_update_",
    ):
        for key in ("CPU", "CUDA", "Meta", "Autograd"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastunlearn::{op}", key), (op, key)


def test_every_op_runs_on_meta_tensors():
    g, r = ([torch.empty(3, 4, device="meta"), torch.empty(5, device="meta")] for _ in range(2))
    assert fu.gram([g, r]).shape == (2, 2)
    assert fu.project_(g, r).coef.device.type == "meta"
    assert fu.pcgrad_(g, [g, r], order=torch.tensor([[0, 1], [1, 0]], device="meta")).weights.shape == (2,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reductions_pass_gradcheck(backend):
    shards = [s.requires_grad_() for s in shard_args(3, seed=1)]
    a, b, c = shards[:3], shards[3:6], shards[6:]
    assert torch.autograd.gradcheck(lambda *s: fu.gram([s[:3], s[3:6], s[6:]], backend=backend), shards)
    assert torch.autograd.gradcheck(lambda *s: fu.dot(s[:3], s[3:], backend=backend), a + b)
    assert torch.autograd.gradcheck(lambda *s: fu.sq_norm(s, backend=backend), c)


def test_gram_gradient_matches_autograd_through_cat():
    shards = [s.requires_grad_() for s in shard_args(2, dtype=torch.float32, seed=2)]
    weights = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])
    (fu.gram([shards[:3], shards[3:]]) * weights).sum().backward()
    ours = [s.grad.clone() for s in shards]
    for s in shards:
        s.grad = None
    flat = torch.stack([torch.cat([s.reshape(-1) for s in shards[:3]]), torch.cat([s.reshape(-1) for s in shards[3:]])])
    ((flat @ flat.T) * weights).sum().backward()
    for x, s in zip(ours, shards):
        torch.testing.assert_close(x, s.grad)


def test_compiles_without_graph_breaks():
    g, r = make_vectors([(8, 4), (16,)], 2, torch.float32, seed=3)

    @torch.compile(fullgraph=True, backend="eager")
    def surgery(g, r):
        stats = fu.project_(g, r)
        return stats.coef * 2, fu.gram([g, r])

    g_eager = [s.clone() for s in g]
    fu.project_(g_eager, r)
    coef, gram = surgery(g, r)
    torch.testing.assert_close(g, g_eager)
    assert abs(gram[0, 1]) < 1e-5


def test_backends_report_and_selection(monkeypatch):
    report = fu.backends()
    assert report["torch"] == "available"
    assert report["cpp"] == f"available ({fu.cpu_isa()})", report["cpp"]  # the extension is part of every install
    from fastunlearn import _backend

    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    assert _backend.resolve("auto", torch.device("cpu")) == "cpp"
    assert _backend.resolve("auto", torch.device("meta")) == "torch"
    monkeypatch.setenv(_backend.ENV_VAR, "torch")
    assert _backend.resolve("auto", torch.device("cpu")) == "torch"
    assert _backend.resolve("cpp", torch.device("cpu")) == "cpp"  # an explicit choice beats the variable
    with pytest.raises(ValueError, match="runs on cpu tensors"):
        _backend.resolve("cpp", torch.device("meta"))


def test_unavailable_backend_is_an_error(monkeypatch):
    from fastunlearn import _backend

    broken = _backend.Backend("cpp", None, None, None, None, None, ("cpu",), unavailable_reason="not built")
    monkeypatch.setitem(_backend._BACKENDS, "cpp", broken)
    with pytest.raises(RuntimeError, match="'cpp' is unavailable: not built"):
        fu.gram([[torch.ones(2)]], backend="cpp")
    assert _backend.resolve("auto", torch.device("cpu")) == "torch"


def test_optional_submodules_load_on_first_use():
    import fastunlearn as fu

    assert fu.eval.membership_inference is not None and fu.profile.profile_unlearning is not None
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        fu.no_such_thing  # noqa: B018


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("ldd") is None, reason="needs Linux and ldd")
def test_the_extension_links_the_shared_libstdcxx():
    """A static libstdc++ inside _C crashes on the first error message that formats a number."""
    from fastunlearn import _C

    linked = subprocess.run(["ldd", _C.__file__], capture_output=True, text=True).stdout
    assert "libstdc++.so" in linked, linked


def test_the_dtype_policy_comes_from_the_extension():
    # csrc/common/dtypes.h is the one copy; Python (ops, the torch reference, Triton launchers) asks it.
    from fastunlearn import _backend

    expected = {
        torch.float64: (torch.float64, torch.float64),
        torch.float32: (torch.float64, torch.float32),
        torch.bfloat16: (torch.float32, torch.float32),
        torch.float16: (torch.float32, torch.float32),
    }
    for dtype, (accumulation, result) in expected.items():
        assert _backend.accumulation_dtype(dtype) == accumulation and _backend.result_dtype(dtype) == result
    with pytest.raises(TypeError, match="got torch.int32"):
        _backend.accumulation_dtype(torch.int32)
