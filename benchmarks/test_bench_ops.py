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
