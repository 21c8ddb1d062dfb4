"""The README's examples run as written."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def example(name: str) -> str:
    match = re.search(rf"<!-- example: {name} .*?-->\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README has no example {name!r}"
    return match.group(1)


def test_surgery_loop_example_runs_and_raises_the_forget_loss(capsys):
    source = example("surgery-loop")
    assert len(source.strip().splitlines()) <= 16
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(source, str(README), "exec"), namespace)
    log = namespace["log"]
    assert len(log) == 6 and "forget_loss" in capsys.readouterr().out
    # The loss on the same forget batch (index 0 of epochs 0 and 2) rises; each update stays off g_r.
    assert float(log[-2]["forget_loss"]) > float(log[0]["forget_loss"])
    assert all(abs(float(s["retain_dot_update"])) <= 1e-6 * float(s["retain_grad_norm"]) for s in log)


def test_custom_weighting_example_runs_and_averages(capsys):
    namespace: dict = {}
    exec(compile(example("custom-weighting"), str(README), "exec"), namespace)
    out = namespace["out"]
    assert torch.equal(out[0], torch.full((3,), 0.5)) and torch.equal(out[1], torch.full((2,), 1.5))
    assert torch.equal(namespace["weights"], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert "0.5000" in capsys.readouterr().out


if __name__ == "__main__":
    pytest.main([__file__])
