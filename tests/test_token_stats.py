"""token_stats on every backend against a float64 computation on the materialised logits."""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import pytest
import torch

import fastunlearn as fu
from fastunlearn import _backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NO_TRITON = importlib.util.find_spec("triton") is None
# Without a GPU, Triton runs under its interpreter: one launch per chunk and block of rows costs
# milliseconds there, so the Triton cases keep to a few launches.
BACKENDS = [
    "torch",
    pytest.param("cpp", marks=pytest.mark.skipif(DEVICE != "cpu", reason="the C++ kernels take CPU tensors")),
    pytest.param("triton", marks=pytest.mark.skipif(NO_TRITON, reason="Triton is not installed")),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def reference(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> dict[str, torch.Tensor]:
    """Straight from the definitions, on the full [N, V] float64 log-softmax."""
    logp = logits.double().log_softmax(-1)
    p = logp.exp()
    mean = (torch.where(p > 0, p * logp, 0.0)).sum(-1)
    var = torch.where(p > 0, p * (logp - mean[..., None]) ** 2, 0.0).sum(-1)
    valid = targets != ignore_index
    picked = logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0]
    zero = torch.zeros_like(mean)
    return {
        "target_logprob": torch.where(valid, picked, zero),
        "logsumexp": torch.where(valid, logits.double().logsumexp(-1), zero),
        "mean_logprob": torch.where(valid, mean, zero),
        "var_logprob": torch.where(valid, var, zero),
        "entropy": torch.where(valid, -mean, zero),
        "correct": valid & (logits.argmax(-1) == targets),
    }


def assert_matches(stats: fu.TokenStats, expected: dict[str, torch.Tensor], atol: float) -> None:
    for name, value in expected.items():
        got = getattr(stats, name).cpu()
        assert got.shape == value.shape, name
        if name == "correct":
            assert torch.equal(got, value)
        else:
            torch.testing.assert_close(got.double(), value, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("chunk_size,rows_per_block", [(1, 1), (7, 5), (97, 64), (1000, 3), (5000, 1000)])
def test_hidden_path_matches_the_materialised_float64_softmax(backend, chunk_size, rows_per_block):
    if backend == "triton" and DEVICE == "cpu" and chunk_size * rows_per_block < 1000:
        pytest.skip("hundreds of interpreted launches")
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(3, 11, 16, generator=gen, dtype=torch.float64), torch.randn(1000, 16, generator=gen)
    bias = torch.randn(1000, generator=gen)
    targets = torch.randint(0, 1000, (3, 11), generator=gen)
    targets[0, :4] = -100
    logits = hidden @ weight.double().T + bias.double()
    stats = fu.token_stats(
        hidden.float().to(DEVICE), weight.to(DEVICE), targets.to(DEVICE), bias=bias.to(DEVICE),
        chunk_size=chunk_size, rows_per_block=rows_per_block, backend=backend,
    )  # fmt: skip
    # fp32 logits from a length-16 dot product; the sums themselves accumulate in fp64
    assert_matches(stats, reference(logits, targets), atol=2e-5)


def test_logits_path_with_masked_vocabulary_and_ties(backend):
    logits = torch.tensor(
        [
            [1.0, 3.0, 3.0, -math.inf, 0.5],  # a tie for the max: the first index is the argmax
            [-math.inf, -math.inf, 2.0, 2.0, 2.0],  # masked tokens: probability 0
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    targets = torch.tensor([1, 3, 4])
    logits, targets = logits.to(DEVICE), targets.to(DEVICE)
    original = logits.clone()
    for chunk_size in (1, 2, 5):
        stats = fu.token_stats_from_logits(logits, targets, chunk_size=chunk_size, backend=backend)
        assert torch.equal(logits, original)  # the caller's logits are read, never written
        assert stats.correct.tolist() == [True, False, False]
        assert_matches(stats, reference(logits, targets), atol=1e-6)
    assert float(stats.var_logprob[2]) == 0.0 and math.isclose(float(stats.entropy[2]), math.log(5), rel_tol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_form_fp32_logits(backend, dtype):
    gen = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(20, 32, generator=gen).to(dtype), torch.randn(300, 32, generator=gen).to(dtype)
    targets = torch.randint(0, 300, (20,), generator=gen)
    stats = fu.token_stats(hidden.to(DEVICE), weight.to(DEVICE), targets.to(DEVICE), chunk_size=64, backend=backend)
    logits = hidden.double() @ weight.double().T  # the inputs' values, exactly
    assert stats.target_logprob.dtype == torch.float32
    assert_matches(stats, reference(logits, targets), atol=5e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_logits_of_every_dtype_and_layout_are_read_in_fp32(backend, dtype):
    """Logits in their own dtype, in a row-major and in a column-major layout, against the float64
    computation on their fp32 values (what every backend reads)."""
    gen = torch.Generator().manual_seed(4)
    logits = (4 * torch.randn(23, 700, generator=gen)).to(dtype)
    targets = torch.randint(0, 700, (23,), generator=gen)
    targets[3] = -100
    expected = reference(logits.float().double(), targets)
    column_major = logits.t().contiguous().t()
    for layout in (logits, column_major):
        stats = fu.token_stats_from_logits(layout.to(DEVICE), targets.to(DEVICE), chunk_size=300, backend=backend)
        # fp32 sums of up to 700 terms in [0, 1] (times |log p| <= ~40)
        assert_matches(stats, expected, atol=2e-5)


def test_large_logits_and_spread_keep_the_variance(backend):
    """Logits near 1e4 with a spread of a few units: the moments are taken relative to the running
    maximum, so nothing cancels at the logits' magnitude."""
    gen = torch.Generator().manual_seed(2)
    logits = (1e4 + 3 * torch.randn(4, 5000, generator=gen, dtype=torch.float64)).float()
    targets = torch.randint(0, 5000, (4,), generator=gen)
    stats = fu.token_stats_from_logits(logits.to(DEVICE), targets.to(DEVICE), chunk_size=1250, backend=backend)
    expected = reference(logits.double(), targets)
    torch.testing.assert_close(stats.var_logprob.cpu().double(), expected["var_logprob"], rtol=1e-5, atol=0)
    torch.testing.assert_close(stats.mean_logprob.cpu().double(), expected["mean_logprob"], rtol=1e-6, atol=0)


def test_bad_arguments():
    hidden, weight, targets = torch.zeros(2, 4), torch.zeros(10, 4), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="need \\[..., H\\] and \\[V, H\\]"):
        fu.token_stats(hidden, torch.zeros(10, 5), targets)
    with pytest.raises(ValueError, match="bias must have shape"):
        fu.token_stats(hidden, weight, targets, bias=torch.zeros(9))
    with pytest.raises(ValueError, match="targets"):
        fu.token_stats(hidden, weight, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="token ids"):
        fu.token_stats(hidden, weight, torch.zeros(2))
    with pytest.raises(ValueError, match="chunk_size"):
        fu.token_stats(hidden, weight, targets, chunk_size=0)
    for bad in (10, -1):  # past the vocabulary, or negative and not ignore_index
        with pytest.raises(ValueError, match="targets must be in \\[0, 10\\)"):
            fu.token_stats(hidden, weight, torch.tensor([0, bad]))


def test_a_rejected_chunk_leaves_the_state_and_its_version(backend):
    """The op under token_stats checks every argument before the state or its version moves."""
    state = torch.zeros(5, 3, dtype=torch.float64, device=DEVICE)
    state[0] = -math.inf
    best = torch.zeros(3, dtype=torch.long, device=DEVICE)
    logits, targets = torch.randn(3, 8, device=DEVICE), torch.tensor([1, 2, 3], device=DEVICE)
    before, versions = (state.clone(), best.clone()), (state._version, best._version)
    bad = [
        ((state[:4], best, logits, 0, targets), ValueError, "state must be a contiguous float64 \\[5, 3\\]"),
        ((state, best.int(), logits, 0, targets), ValueError, "best must be a contiguous int64"),
        ((state, best, logits, 0, targets.int()), ValueError, "targets must be an int64"),
        ((state, best, logits.long(), 0, targets), TypeError, "logits must be float64/float32/bfloat16/float16"),
        ((state, best, logits[0], 0, targets), ValueError, "must be \\[rows, chunk\\]"),
        ((state, best, logits, -1, targets), ValueError, "start must be >= 0"),
        ((state, best, state.t()[:, :2], 0, targets), RuntimeError, "refer to a single memory location"),
    ]
    for args, error, message in bad:
        with pytest.raises(error, match=message):
            torch.ops.fastunlearn.token_stats_update_(*args, backend)
        assert torch.equal(state, before[0]) and torch.equal(best, before[1])
        assert (state._version, best._version) == versions


def test_a_nan_logit_makes_its_row_nan(backend):
    """A diverged model's NaN logit is not read as probability 0 by any backend."""
    logits = torch.randn(3, 40)
    logits[1, 7] = float("nan")
    stats = fu.token_stats_from_logits(logits.to(DEVICE), torch.tensor([0, 1, 2], device=DEVICE), backend=backend)
    for name in ("logsumexp", "mean_logprob", "var_logprob", "entropy"):
        values = getattr(stats, name).cpu()
        assert values[1].isnan() and not values[[0, 2]].isnan().any(), name


def test_sparse_logits_are_refused():
    with pytest.raises(TypeError, match="dense tensors"):
        torch.ops.fastunlearn.token_stats_update_(
            torch.zeros(5, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.long),
            torch.eye(2).to_sparse(), 0, torch.zeros(2, dtype=torch.long), "torch",
        )  # fmt: skip


@pytest.mark.parametrize("triton", [True, False], ids=["triton", "no-triton"])
def test_auto_never_picks_the_cuda_backend_for_token_stats(monkeypatch, triton):
    """The CUDA kernels have no token_stats: where auto chooses them, Triton runs (the torch
    reference without Triton); naming ``cuda`` is kept for the op to refuse."""
    monkeypatch.setattr(_backend, "resolve", lambda requested, device: "cuda")
    lent = dataclasses.replace(_backend._BACKENDS["triton"], unavailable_reason=None if triton else "not installed")
    monkeypatch.setitem(_backend._BACKENDS, "triton", dataclasses.replace(lent, device_error=lambda device: None))
    expected = "triton" if triton else "torch"
    assert _backend.resolve_token_stats(None, torch.device("cuda")) == expected
    assert _backend.resolve_token_stats("auto", torch.device("cuda")) == expected
    assert _backend.resolve_token_stats("cuda", torch.device("cuda")) == "cuda"
    # The op's own "auto" (a direct torch.ops call) asks the same question of the Python resolver.
    assert _backend._resolve_for_op("cuda", "token_stats") == expected
    assert _backend._resolve_for_op("cuda", "") == "cuda"


def test_no_graph_is_built():
    hidden = torch.randn(3, 4, requires_grad=True)
    stats = fu.token_stats(hidden, torch.randn(9, 4), torch.tensor([1, 2, -100]))
    assert all(not value.requires_grad for value in stats)


@pytest.mark.slow
def test_tokens_times_vocabulary_past_2_to_the_31():
    """33 tokens x 2^26 vocabulary = 2.2e9 logits, never materialised: the logits of token i are
    c_i * v / V (one hidden unit, c_i = i / 4), so every statistic has a closed form to check."""
    vocab, tokens = 2**26, 33
    weight = (torch.arange(vocab, dtype=torch.float64) / vocab).float()[:, None]
    hidden = torch.arange(tokens, dtype=torch.float32)[:, None] / 4
    index = torch.arange(tokens)
    first_max = int(weight.argmax())  # fp32 rounds the last few v / V to one value: the first is the argmax
    targets = torch.where(index % 2 == 0, first_max, index)
    stats = fu.token_stats(hidden, weight, targets, chunk_size=2**16, rows_per_block=tokens)
    # sum_v exp(c v / V) = (e^c - 1) / (e^(c/V) - 1), V at c = 0
    c = hidden[:, 0].double()
    partition = torch.where(c > 0, torch.expm1(c) / torch.expm1(c / vocab).clamp_min(1e-300), float(vocab))
    expected = c * weight[targets, 0].double() - partition.log()
    torch.testing.assert_close(stats.target_logprob.double(), expected, rtol=0, atol=1e-4)
    assert torch.equal(stats.correct, (index % 2 == 0) & (index > 0))  # token 0: every logit 0, argmax 0
