"""Test-session set-up. Without a GPU, the Triton kernels run under Triton's interpreter on CPU
tensors; it must be chosen before Triton is first imported, hence here."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
