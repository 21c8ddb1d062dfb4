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


def test_trainer_recipe_runs_and_logs_the_method_stats(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    source = example("trainer-recipe")
    assert len(source.strip().splitlines()) <= 20
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(source, str(README), "exec"), namespace)
    trainer = namespace["trainer"]
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2  # 16 forget samples, batches of 4, 2 micro-batches per step
    assert {"cosine", "coef", "retain_loss", "grad_norm"} <= logs[-1].keys()
    assert abs(logs[-1]["retain_dot_update"]) < 1e-8


def test_openunlearning_handler_runs_as_openunlearning_builds_it(tmp_path, monkeypatch):
    """The handler, built the way OpenUnlearning's load_trainer builds every trainer, on batches
    whose items carry OpenUnlearning's extra ``index`` key."""
    import sys
    import types

    transformers = pytest.importorskip("transformers")
    from fastunlearn.integrations.transformers import ForgetRetainCollator, ForgetRetainDataset

    class FinetuneTrainer(transformers.Trainer):  # OpenUnlearning's base: takes its evaluators
        def __init__(self, evaluators=None, template_args=None, *args, **kwargs):
            self.evaluators, self.template_args = evaluators, template_args
            super().__init__(*args, **kwargs)

    package, base = types.ModuleType("trainer"), types.ModuleType("trainer.base")
    base.FinetuneTrainer = FinetuneTrainer
    monkeypatch.setitem(sys.modules, "trainer", package)
    monkeypatch.setitem(sys.modules, "trainer.base", base)
    namespace: dict = {}
    exec(compile(example("openunlearning-handler"), str(README), "exec"), namespace)

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 32, (24, 8), generator=torch.Generator().manual_seed(0))
    items = [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x, "index": i} for i, x in enumerate(ids)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2,
                                          report_to=[], save_strategy="no", use_cpu=True)  # fmt: skip
    before = [p.detach().clone() for p in model.parameters()]
    trainer = namespace["FastGRU"](
        model=model, train_dataset=ForgetRetainDataset(items[:8], items[8:]), eval_dataset=None, tokenizer=None,
        data_collator=ForgetRetainCollator(), args=args, evaluators=None, template_args=None, gamma_gru=0.7,
        forget_loss_type="GradAscent",
    )  # fmt: skip
    trainer.train()
    assert type(trainer.unlearning).__name__ == "FastGRU" and trainer.unlearning.gamma == 0.7
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(ValueError, match="NPO"):
        namespace["FastGRU"](model=model, args=args, forget_loss_type="NPO")


if __name__ == "__main__":
    pytest.main([__file__])
