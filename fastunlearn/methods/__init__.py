"""Unlearning methods built on the fused ops: each is a step function for your own loop and a runner.

Every method takes a model, loss functions ``loss_fn(model, batch) -> scalar`` (cross-entropy on
``(inputs, labels)`` batches by default) and an optimizer (a fused :mod:`fastunlearn.optim` one by
default), and returns per-step stats as device tensors (0-d, except the per-direction ``coefs`` of
GradientSurgery with several retain directions) -- no host sync inside a step.

>>> import torch, fastunlearn as fu
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Linear(4, 3)
>>> data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
>>> forget, retain = torch.utils.data.random_split(data, [8, 24])
>>> loader = lambda d: torch.utils.data.DataLoader(d, batch_size=8)
>>> history = fu.methods.GradientSurgery(model, lr=0.1).run(loader(forget), loader(retain), epochs=3)
>>> history["forget_loss"].shape
torch.Size([3])
"""

from fastunlearn.methods._base import (
    History,
    LossFn,
    MicroBatches,
    StepStats,
    UnlearningMethod,
    cross_entropy,
    split_batch,
)
from fastunlearn.methods._capture import GradientStash
from fastunlearn.methods.baselines import (
    Finetune,
    GradientAscent,
    GradientDifference,
    PCGradUnlearn,
    RandomLabel,
    retrain,
    train,
)
from fastunlearn.methods.decouple_retain import DecoupleRetain
from fastunlearn.methods.gradient_surgery import GradientSurgery, SurgeryWeighting
from fastunlearn.methods.gru import FastGRU
from fastunlearn.methods.losses import NPOLoss, SimNPOLoss, causal_lm_loss, with_reference_nll
from fastunlearn.methods.nabla_tau import NablaTau, NablaTauWeighting, alpha_schedule, nabla_tau_epochs

__all__ = [
    "DecoupleRetain",
    "FastGRU",
    "Finetune",
    "GradientAscent",
    "GradientDifference",
    "GradientStash",
    "GradientSurgery",
    "History",
    "LossFn",
    "MicroBatches",
    "NPOLoss",
    "NablaTau",
    "NablaTauWeighting",
    "PCGradUnlearn",
    "RandomLabel",
    "SimNPOLoss",
    "StepStats",
    "SurgeryWeighting",
    "UnlearningMethod",
    "alpha_schedule",
    "causal_lm_loss",
    "cross_entropy",
    "nabla_tau_epochs",
    "retrain",
    "split_batch",
    "train",
    "with_reference_nll",
]
