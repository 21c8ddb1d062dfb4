"""UnlearnTrainer on a tiny random-init Llama with LoRA adapters, on CPU."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from fastunlearn import optim  # noqa: E402
from fastunlearn.integrations.transformers import (  # noqa: E402
    ForgetRetainCollator,
    ForgetRetainDataset,
    UnlearnTrainer,
    method_names,
)

VOCAB, LENGTH = 64, 12


def tiny_llama(seed: int = 0, lora: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    if lora:
        config = peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False)
        model = peft.get_peft_model(model, config)
    return model


class Tokens(torch.utils.data.Dataset):
    """Fixed-length random token sequences (every label counted, so per-sample means are exact)."""

    def __init__(self, n: int, seed: int) -> None:
        self.ids = torch.randint(0, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": self.ids[i]}


class Pairs(torch.utils.data.Dataset):
    """Paired samples in a fixed order (forget i with retain i)."""

    def __init__(self, n: int) -> None:
        self.forget, self.retain = Tokens(n, 1), Tokens(n, 2)

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, i: int) -> dict:
        return {"forget": self.forget[i], "retain": self.retain[i]}


def arguments(tmp_path, **overrides) -> transformers.TrainingArguments:
    values = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_grad_norm=0.5,
        learning_rate=1e-2, max_steps=2, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        disable_tqdm=True, lr_scheduler_type="constant", seed=0, data_seed=0,
    )  # fmt: skip
    values.update(overrides)
    return transformers.TrainingArguments(**values)


METHOD_ARGS = {
    "decouple_retain": {"threshold": 1e9, "max_steps": 1, "lr": 1e-2},
    "nabla_tau": {"val_loader": [{"input_ids": Tokens(4, 3).ids, "labels": Tokens(4, 3).ids}], "alpha0": 0.5},
}


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train(tmp_path, method, model=None, dataset=None, method_args=None, **overrides):
    model = model if model is not None else tiny_llama()
    trainer = UnlearnTrainer(
        model=model, args=arguments(tmp_path, **overrides), train_dataset=dataset or Pairs(8), method=method,
        method_args=method_args if method_args is not None else METHOD_ARGS.get(method, {}),
    )  # fmt: skip
    trainer.train()
    return trainer


@pytest.mark.parametrize("method", method_names())
def test_every_method_trains_with_accumulation_and_clipping(tmp_path, method):
    model = tiny_llama()
    before = trainable(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = train(tmp_path, method, model=model)
    assert isinstance(trainer.unlearning.optimizer, optim.FusedOptimizer)
    after = trainable(model)
    assert any(not torch.equal(before[n], after[n]) for n in before), "no adapter moved"
    assert all(torch.isfinite(p).all() for p in after.values())
    for name, p in model.named_parameters():  # the base model stays frozen
        if not p.requires_grad:
            assert torch.equal(p, frozen[name]), name
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    stat = "retain_loss" if method == "decouple_retain" else "forget_loss"
    assert math.isfinite(logs[-1][stat]) and math.isfinite(logs[-1]["grad_norm"])


@pytest.mark.parametrize("method", ["surgery", "gru", "grad_diff", "pcgrad"])
def test_two_micro_batches_of_two_equal_one_batch_of_four(tmp_path, method):
    """The window's gradients are accumulated before the projection: the same step as one batch."""
    args = {"pcgrad": {"generator": torch.Generator().manual_seed(0)}}.get(method, {})
    split = trainable(train(tmp_path, method, method_args=dict(args), max_steps=2).model)
    args = {"pcgrad": {"generator": torch.Generator().manual_seed(0)}}.get(method, {})
    whole = trainable(
        train(
            tmp_path, method, method_args=dict(args), max_steps=2, per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
        ).model
    )  # fmt: skip
    for name in split:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-5, atol=1e-6, msg=name)


def retain_gradient(model, batch) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(model(**batch).loss, params))


def test_surgery_with_sgd_moves_orthogonally_to_the_retain_gradient(tmp_path):
    model, pairs = tiny_llama(), Pairs(4)
    retain = ForgetRetainCollator()([pairs[i] for i in range(4)])["retain"]
    g_r = retain_gradient(model, retain)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    train(
        tmp_path, "surgery", model=model, dataset=pairs, optim="sgd", max_steps=1, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, max_grad_norm=0.0, learning_rate=1.0,
    )  # fmt: skip
    delta = [p.detach() - b for p, b in zip((p for p in model.parameters() if p.requires_grad), before)]
    dot = sum((g.double() * d.double()).sum() for g, d in zip(g_r, delta))
    norms = math.sqrt(sum(g.double().square().sum() for g in g_r)) * math.sqrt(
        sum(d.double().square().sum() for d in delta)
    )
    assert norms > 0
    assert abs(float(dot)) <= 1e-5 * norms


def test_clipped_update_norm_is_at_most_max_grad_norm(tmp_path):
    model = tiny_llama()
    before = trainable(model)
    trainer = train(
        tmp_path, "grad_diff", model=model, optim="sgd", max_steps=1, max_grad_norm=1e-3, learning_rate=1.0,
        per_device_train_batch_size=4, gradient_accumulation_steps=1,
    )  # fmt: skip
    after = trainable(model)
    norm = math.sqrt(sum(float((after[n].double() - before[n].double()).square().sum()) for n in before))
    assert float(trainer.unlearning.update_norm) > 1e-3  # the clip was active
    assert norm <= 1e-3 * (1 + 1e-5)
    assert norm == pytest.approx(1e-3, rel=1e-4)


def nan_forget_loss(model, batch):
    return model(**batch).loss * float("nan")


@pytest.mark.parametrize("method", ["surgery", "gru"])
def test_a_non_finite_loss_leaves_the_weights_untouched(tmp_path, method):
    model = tiny_llama()
    before = trainable(model)
    trainer = train(tmp_path, method, model=model, method_args={"forget_loss_fn": nan_forget_loss})
    after = trainable(model)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert trainer.unlearning.skipped_steps == 2
    assert all("exp_avg" not in state for state in trainer.unlearning.optimizer.state.values())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["skipped_steps"] for entry in logs] == [1, 2]
    assert trainer.lr_scheduler.last_epoch == 0  # a skipped step holds the schedule, as GradScaler's do


def test_stats_are_logged_at_logging_steps_only(tmp_path):
    trainer = train(tmp_path, "surgery", max_steps=4, logging_steps=2)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [2, 4]
    assert {"forget_loss", "retain_loss", "cosine", "coef", "retain_dot_update"} <= logs[0].keys()
    assert abs(logs[0]["retain_dot_update"]) < 1e-8


def test_full_model_bf16_with_fp32_norms(tmp_path):
    """A bf16 model whose RMSNorm weights are fp32: mixed shard dtypes in one gradient."""
    model = tiny_llama(lora=False).to(torch.bfloat16)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data = p.data.float()
    before = trainable(model)
    train(tmp_path, "surgery", model=model, bf16=True)
    after = trainable(model)
    assert {p.dtype for p in after.values()} == {torch.bfloat16, torch.float32}
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_bf16_base_with_fp32_lora_and_a_bf16_head(tmp_path):
    """peft keeps adapters in fp32 on a bf16 base; modules_to_save copies the bf16 head: one gradient
    of fp32 and bf16 shards."""
    torch.manual_seed(0)
    base = tiny_llama(lora=False).to(torch.bfloat16)
    config = peft.LoraConfig(
        r=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"], lora_dropout=0.0, init_lora_weights=False
    )
    model = peft.get_peft_model(base, config)
    before = trainable(model)
    assert {p.dtype for p in before.values()} == {torch.float32, torch.bfloat16}
    trainer = train(tmp_path, "gru", model=model, bf16=True)
    after = trainable(model)
    assert all(not torch.equal(before[n], after[n]) for n in before if "lm_head" in n)
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_" in n)
    assert trainer.unlearning.skipped_steps == 0


def test_gradient_checkpointing(tmp_path):
    plain = trainable(train(tmp_path, "surgery", model=tiny_llama(lora=False)).model)
    model = tiny_llama(lora=False)
    checkpointed = trainable(train(tmp_path, "surgery", model=model, gradient_checkpointing=True).model)
    assert model.is_gradient_checkpointing
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], rtol=1e-5, atol=1e-6, msg=name)


def test_torch_optimizer_gets_the_update_through_grad(tmp_path):
    model = tiny_llama()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = trainable(model)
    trainer = UnlearnTrainer(
        model=model, args=arguments(tmp_path), train_dataset=Pairs(8), method="surgery",
        optimizers=(optimizer, None),
    )  # fmt: skip
    trainer.train()
    assert trainer.unlearning.optimizer is optimizer
    assert any(not torch.equal(before[n], p) for n, p in trainable(model).items())
    assert all(p.grad is None for p in model.parameters())


def test_forget_retain_dataset_and_collator():
    forget, retain = Tokens(3, 1), Tokens(5, 2)
    data = ForgetRetainDataset(forget, retain)
    assert len(data) == 3 and len(ForgetRetainDataset(forget, retain, anchor="retain")) == 5
    item = data[1]
    assert torch.equal(item["forget"]["input_ids"], forget[1]["input_ids"])
    assert any(torch.equal(item["retain"]["input_ids"], retain[j]["input_ids"]) for j in range(5))
    batch = ForgetRetainCollator()([data[0], data[2]])
    assert batch["forget"]["input_ids"].shape == (2, LENGTH) and batch["retain"]["labels"].shape == (2, LENGTH)
    torch.manual_seed(0)
    first = [int(torch.argmax((data[0]["retain"]["input_ids"] == retain.ids).all(1).int())) for _ in range(20)]
    assert len(set(first)) > 1  # the retain side is drawn anew each time
    unpaired = ForgetRetainCollator()([forget[0], forget[1]])  # an evaluation dataset
    assert unpaired["input_ids"].shape == (2, LENGTH)
    with pytest.raises(ValueError, match="anchor"):
        ForgetRetainDataset(forget, retain, anchor="both")


def test_phase_stats_are_averaged_over_the_steps_that_gave_them(tmp_path):
    method_args = {"threshold": 1e9, "max_steps": 1, "lr": 1e-2}
    trainer = train(tmp_path, "decouple_retain", method_args=method_args, max_steps=3, logging_steps=3)
    (log,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert log["phase"] == pytest.approx(5 / 3)  # one phase-1 step, two phase-2 steps
    assert "method_grad_norm" in log and "output_distance" in log  # phase 1's own, not over 3 steps
    assert log["grad_norm"] == pytest.approx(float(trainer.unlearning.update_norm))


def test_evaluation_takes_an_ordinary_dataset(tmp_path):
    trainer = UnlearnTrainer(
        model=tiny_llama(), args=arguments(tmp_path), train_dataset=Pairs(8), eval_dataset=Tokens(4, 5),
        method="surgery",
    )  # fmt: skip
    assert math.isfinite(trainer.evaluate()["eval_loss"])


def test_resuming_is_refused(tmp_path):
    trainer = UnlearnTrainer(model=tiny_llama(), args=arguments(tmp_path), train_dataset=Pairs(8), method="gru")
    with pytest.raises(ValueError, match="resuming an unlearning run is not supported"):
        trainer.train(resume_from_checkpoint=True)


def test_bad_method_and_unpaired_batches(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'sugery'"):
        UnlearnTrainer(model=tiny_llama(), args=arguments(tmp_path), train_dataset=Pairs(4), method="sugery")
    trainer = UnlearnTrainer(
        model=tiny_llama(), args=arguments(tmp_path), train_dataset=Tokens(8, 1), method="surgery",
        data_collator=transformers.default_data_collator,
    )  # fmt: skip
    with pytest.raises(ValueError, match="ForgetRetainDataset"):
        trainer.train()


def ddp_worker(rank: int, world: int, out_dir: str, port: int) -> None:
    import os

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    import pathlib

    trainer = train(pathlib.Path(out_dir), "surgery", model=tiny_llama(), dataset=Pairs(16))
    if rank == 0:
        wrapper = type(trainer.model_wrapped).__name__
        torch.save({"params": trainer_params(trainer), "wrapper": wrapper}, f"{out_dir}/ddp.pt")
    torch.distributed.barrier()
    os._exit(0)  # skip gloo's teardown, whose threads can abort at exit


def trainer_params(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_ddp_through_accelerate_matches_one_process(tmp_path):
    """2 CPU processes (gloo), 2 samples each per micro-batch, against one process with 4."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(ddp_worker, args=(2, str(tmp_path), port), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt")
    assert ddp["wrapper"] == "DistributedDataParallel"
    one = train(tmp_path, "surgery", model=tiny_llama(), dataset=Pairs(16), per_device_train_batch_size=4)
    one = trainer_params(one)
    for name, value in one.items():
        torch.testing.assert_close(ddp["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)


# --- NPO / SimNPO forget losses ---------------------------------------------------------------------


def openunlearning_batch_nll(model, inputs):
    """OpenUnlearning's ``compute_batch_nll``: per-sequence summed NLL of the shifted labels."""
    logits = model(**inputs).logits[..., :-1, :].contiguous()
    labels = inputs["labels"][..., 1:].contiguous()
    return torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(logits.transpose(-1, -2), labels).sum(-1)


def test_npo_and_simnpo_are_the_negated_openunlearning_losses():
    from fastunlearn.methods import NPOLoss, SimNPOLoss, with_reference_nll

    reference_model, model = tiny_llama(lora=False), tiny_llama(seed=1, lora=False)
    data = Tokens(6, 4)  # the labels of odd rows mask their first three tokens
    items = [dict(data[i], labels=torch.where(torch.arange(LENGTH) < 3 * (i % 2), -100, data.ids[i])) for i in range(6)]
    with_reference = with_reference_nll(reference_model, items, batch_size=4)
    batch = torch.utils.data.default_collate([with_reference[i] for i in range(6)])
    inputs = {k: v for k, v in batch.items() if k != "reference_nll"}

    with torch.no_grad():
        nll_ref = openunlearning_batch_nll(reference_model, inputs)
    torch.testing.assert_close(batch["reference_nll"], nll_ref)
    beta = 0.3
    # OpenUnlearning's compute_dpo_loss(model, ref_model, win_inputs=None, lose_inputs=inputs, beta), as written.
    win_log_ratio = 0.0
    lose_log_ratio = -(openunlearning_batch_nll(model, inputs) - nll_ref)
    npo = -2 / beta * torch.nn.functional.logsigmoid(beta * (win_log_ratio - lose_log_ratio)).mean()
    torch.testing.assert_close(NPOLoss(beta)(model, batch), -npo)

    delta, mask = 0.5, inputs["labels"] != -100
    per_token = openunlearning_batch_nll(model, inputs) / mask.sum(-1) - delta
    simnpo = torch.nn.functional.logsigmoid(beta * per_token).mean() * 2 / beta
    torch.testing.assert_close(SimNPOLoss(beta, delta)(model, batch), simnpo)
    with pytest.raises(ValueError, match="with_reference_nll"):
        NPOLoss()(model, inputs)


def test_surgery_with_npo_through_the_trainer(tmp_path):
    from fastunlearn.methods import NPOLoss, with_reference_nll
    from fastunlearn.methods.losses import sequence_nll

    model, pairs = tiny_llama(), Pairs(8)
    pairs.forget = with_reference_nll(model, pairs.forget)
    loss = NPOLoss(0.1)
    trainer = train(tmp_path, "surgery", model=model, dataset=pairs, method_args={"forget_loss_fn": loss}, max_steps=4)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    # At the first step the model is the reference: every log-ratio is 0, the loss (2/beta) log(1/2).
    assert logs[0]["forget_loss"] == pytest.approx(20 * math.log(0.5), rel=1e-5)
    forget = torch.utils.data.default_collate([pairs.forget[i] for i in range(len(pairs))])
    with torch.no_grad():
        assert float(loss(model, forget)) > 20 * math.log(0.5)  # ascending it descended NPO's loss
        nll, _ = sequence_nll(model, forget)
    assert float(nll.mean()) > float(forget["reference_nll"].mean())  # the forget set became less likely


def fsdp2_worker(rank: int, world: int, out_dir: str, port: int) -> None:
    import os

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    import pathlib

    from torch.distributed.tensor import DTensor
    from transformers.distributed import DistributedConfig

    config = DistributedConfig(fsdp_size=world)
    model = transformers.LlamaForCausalLM.from_pretrained(f"{out_dir}/model", distributed_config=config)
    trainer = train(pathlib.Path(out_dir), "surgery", model=model, dataset=Pairs(16))
    params = {n: p.full_tensor() for n, p in trainer.model.named_parameters()}  # every rank joins the gathers
    if rank == 0:
        sharded = all(isinstance(p, DTensor) for p in trainer.unlearning.params)
        torch.save({"params": params, "sharded": sharded}, f"{out_dir}/fsdp2.pt")
    torch.distributed.barrier()
    os._exit(0)  # skip gloo's teardown, whose threads can abort at exit


def test_fsdp2_sharded_model_matches_one_process(tmp_path):
    """A model sharded with FSDP2 at load time (transformers' DistributedConfig; accelerate's own FSDP
    plugin needs a GPU-family device) over 2 CPU processes, against one process."""
    import socket

    import torch.multiprocessing as mp

    pytest.importorskip("transformers.distributed")
    tiny_llama(lora=False).save_pretrained(tmp_path / "model")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(fsdp2_worker, args=(2, str(tmp_path), port), nprocs=2, join=True)
    fsdp2 = torch.load(tmp_path / "fsdp2.pt")
    assert fsdp2["sharded"]  # the method's vectors were DTensor shards
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "model")
    one = trainer_params(train(tmp_path, "surgery", model=model, dataset=Pairs(16), per_device_train_batch_size=4))
    for name, value in one.items():
        torch.testing.assert_close(fsdp2["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)
