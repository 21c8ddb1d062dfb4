"""Where an unlearning step's time and memory go, and what the fused ops save.

``fastunlearn profile`` (or :func:`profile_unlearning`) runs N steps of a method on a model -- a
built-in decoder-only transformer whose size is a flag, or your own module -- and reports per phase
(forward/backward on the forget batch, forward/backward on the retain batch, vector algebra,
optimizer): the median and spread of its time, the bytes the vector algebra and the fused optimizer
must move and the GB/s they reached against a bandwidth proxy measured in the same run, host reads
of tensor values per step, and peak memory. ``compare=True`` runs the same steps with the reference
ops -- torch.cat flattening and ``.item()`` reads, as public unlearning code does it
(:mod:`fastunlearn.flatten_reference`), followed by ``torch.optim`` -- and reports the speedups.

By job: ``targets`` (the built-in transformer and its sizes, user models, the methods stepped),
``measure`` (phase timing, host-read counting, the run loop) and ``report`` (the tables, the
command with its JSON output).

>>> from fastunlearn.profile import profile_unlearning
>>> report = profile_unlearning(size="tiny", steps=2, warmup=1, compare=True, progress=False)
>>> sorted(report.fused.phases)[:2]
['backward_forget', 'backward_retain']
>>> report.fused.host_reads_per_step, report.reference.host_reads_per_step
(0.0, 2.0)
"""

from fastunlearn._phases import PhaseTimer
from fastunlearn.profile.measure import (
    PHASES,
    PhaseStats,
    ProfileReport,
    RunStats,
    bandwidth_proxy_gbs,
    count_host_reads,
    count_kernel_launches,
    profile_unlearning,
)
from fastunlearn.profile.report import main, print_report
from fastunlearn.profile.targets import (
    CONTEXT,
    LLAMA_SIZES,
    METHODS,
    REFERENCES,
    SIZES,
    Block,
    DecoderLM,
    ProfileTarget,
    ReferenceGRU,
    ReferenceSurgery,
    llama_target,
    load_target,
    next_token_loss,
    transformer_target,
)

__all__ = [
    "CONTEXT",
    "LLAMA_SIZES",
    "METHODS",
    "PHASES",
    "SIZES",
    "Block",
    "DecoderLM",
    "PhaseStats",
    "PhaseTimer",
    "ProfileReport",
    "ProfileTarget",
    "REFERENCES",
    "ReferenceGRU",
    "ReferenceSurgery",
    "RunStats",
    "bandwidth_proxy_gbs",
    "count_host_reads",
    "count_kernel_launches",
    "llama_target",
    "load_target",
    "main",
    "next_token_loss",
    "print_report",
    "profile_unlearning",
    "transformer_target",
]
