"""pytest-benchmark suite: each core op and its peers on the quick size (see cases.py)."""

from __future__ import annotations

import cases
import pytest
import torch

import fastunlearn as fu

PEERS = {
    "gram": {
        "fastunlearn": lambda g, r, out: cases.fused_gram(g, r),
        "reference.py": lambda g, r, out: cases.fused_gram(g, r, backend="torch"),
        "cat": lambda g, r, out: cases.cat_gram(g, r),
        "composition": lambda g, r, out: cases.composition_gram(g, r),
    },
    "project_": {
        "fastunlearn": lambda g, r, out: cases.fused_project_(g, r),
        "cat": lambda g, r, out: cases.cat_project_(g, r),
        "composition": lambda g, r, out: cases.composition_project_(g, r),
    },
    "pcgrad_": {
        "fastunlearn": lambda g, r, out: cases.fused_pcgrad_(out, g, r),
        "cat": lambda g, r, out: cases.cat_pcgrad_(out, g, r),
        "composition": lambda g, r, out: cases.composition_pcgrad_(out, g, r),
    },
}


@pytest.fixture(scope="module")
def pair():
    g, r = cases.make_pair(cases.SHAPES["quick16m"])
    return g, r, [torch.empty_like(s) for s in g]


@pytest.mark.parametrize("op,peer", [(op, peer) for op, peers in PEERS.items() for peer in peers])
def test_op(benchmark, pair, op, peer):
    benchmark.group = op
    g, r, out = pair
    benchmark(PEERS[op][peer], g, r, out)


def test_bandwidth_proxy(benchmark, pair):
    benchmark.group = "gram"
    benchmark(cases.bandwidth_proxy(cases.numel(pair[0])))


@pytest.fixture(scope="module")
def surgery_inputs():
    shapes = cases.SHAPES["quick16m"]
    g, r = cases.make_pair(shapes)
    return shapes, g, r


@pytest.mark.parametrize("peer", ["fastunlearn", "unfused", "cat"])
def test_surgery_step(benchmark, surgery_inputs, peer):
    benchmark.group = "surgery_step"
    shapes, g, r = surgery_inputs
    params = cases.surgery_params(shapes)
    if peer == "fastunlearn":
        opt = fu.optim.SGD(params, **cases.SURGERY_SGD)
        benchmark(cases.fused_surgery_step, opt, g, r)
    elif peer == "unfused":
        opt = torch.optim.SGD(params, maximize=True, **cases.SURGERY_SGD)
        benchmark(cases.unfused_surgery_step, opt, params, [s.clone() for s in g], r)
    else:
        opt = torch.optim.SGD(params, **cases.SURGERY_SGD)
        benchmark(cases.cat_surgery_step, opt, params, g, r)


# --- shard count and K at ~1e6 elements per vector (the sweep's case builders, see sweep.py) ------

SWEEP_TOTAL = 10**6
SWEEP_PEERS = ["fastunlearn", "cat", "composition"]


@pytest.mark.parametrize("peer", SWEEP_PEERS)
@pytest.mark.parametrize("count", [1, 1_000, 10_000])
def test_gram_shard_count(benchmark, count, peer):
    benchmark.group = f"gram, {count} shards"
    vectors = cases.make_vectors(cases.equal_shapes(SWEEP_TOTAL, count), 2)
    benchmark(cases.peers("gram", vectors)[peer])


@pytest.mark.parametrize("peer", SWEEP_PEERS)
@pytest.mark.parametrize("k", [2, 8, 16])
def test_gram_k(benchmark, k, peer):
    benchmark.group = f"gram, K={k}"
    vectors = cases.make_vectors(cases.llama_shapes(SWEEP_TOTAL), k)
    benchmark(cases.peers("gram", vectors, k=k)[peer])


@pytest.mark.parametrize("op,k", [(op, 2) for op in cases.CORE_OPS] + [("gram", 4), ("combine_", 4), ("pcgrad_", 4)])
def test_sweep_peers_agree(op, k):
    """Every peer the sweep times computes what fastunlearn computes (fp64, fresh inputs per peer)."""
    base = cases.make_vectors(cases.llama_shapes(10**4), cases.vectors_read(op, k), dtype=torch.float64)
    results = {}
    for name in cases.peers(op, base, [torch.empty_like(s) for s in base[0]], k):
        vectors = [[s.clone() for s in v] for v in base]
        out = [torch.zeros_like(s) for s in vectors[0]]
        value = cases.peers(op, vectors, out, k)[name]()
        written = out if op in ("combine_", "pcgrad_") else vectors[0]
        results[name] = torch.cat([s.reshape(-1) for s in written]) if op.endswith("_") else value
    for name, value in results.items():
        torch.testing.assert_close(value, results["fastunlearn"], msg=f"{op}: {name}")
