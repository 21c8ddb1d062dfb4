"""fastunlearn: fused one-pass kernels for the gradient algebra of machine unlearning.

>>> import torch, fastunlearn as fu
>>> g_f = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
>>> g_r = [torch.tensor([1.0, 0.0]), torch.tensor([[0.0]])]
>>> fu.dot(g_f, g_r)
tensor(1.)
"""

from fastunlearn._backend import backends
from fastunlearn.ops import (
    PCGradStats,
    ProjectionStats,
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

__version__ = "0.1.0"

__all__ = [
    "PCGradStats",
    "ProjectionStats",
    "backends",
    "combine_",
    "dot",
    "gram",
    "pcgrad_",
    "pcgrad_order",
    "pcgrad_weights",
    "project_",
    "project_normal_",
    "sq_norm",
]
