"""fastunlearn: fused one-pass kernels for the gradient algebra of machine unlearning.

>>> import torch, fastunlearn as fu
>>> g_f = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
>>> g_r = [torch.tensor([1.0, 0.0]), torch.tensor([[0.0]])]
>>> fu.dot(g_f, g_r)
tensor(1.)
"""

from fastunlearn import methods, optim, weighting  # noqa: E402  (built on the ops above)
from fastunlearn._backend import backends, cpu_isa
from fastunlearn.ops import (
    PCGradStats,
    ProjectionStats,
    aggregate_,
    combine_,
    dot,
    gram,
    pcgrad_,
    pcgrad_order,
    pcgrad_weights,
    project_,
    project_normal_,
    sq_norm,
)
from fastunlearn.pcgrad import PCGrad  # noqa: E402
from fastunlearn.token_stats import TokenStats, token_stats, token_stats_from_logits
from fastunlearn.weighting import Projection, SpanComplement, Weighting  # noqa: E402  (PCGrad's: fu.weighting.PCGrad)

__version__ = "0.1.0"

# Submodules with heavier or optional dependencies load on first use: fu.eval (scikit-learn),
# fu.profile, fu.distributed, fu.demo.
_LAZY_SUBMODULES = ("demo", "distributed", "eval", "profile")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"fastunlearn.{name}")
    raise AttributeError(f"module 'fastunlearn' has no attribute {name!r}")


__all__ = [
    "PCGrad",
    "PCGradStats",
    "Projection",
    "ProjectionStats",
    "SpanComplement",
    "TokenStats",
    "Weighting",
    "aggregate_",
    "backends",
    "cpu_isa",
    "combine_",
    "dot",
    "gram",
    "methods",
    "optim",
    "pcgrad_",
    "pcgrad_order",
    "pcgrad_weights",
    "project_",
    "project_normal_",
    "sq_norm",
    "token_stats",
    "token_stats_from_logits",
    "weighting",
]
