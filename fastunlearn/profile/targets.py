"""What the profiler steps: the built-in transformer and its sizes, a user's model by import path,
and the unlearning methods it runs on them (fused, or the reference ops for ``compare``)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastunlearn as fu
from fastunlearn import flatten_reference, methods

# --------------------------------------------------------------------------------------------
# A decoder-only transformer of a chosen size (random init, no download)
# --------------------------------------------------------------------------------------------

#: name -> (width, layers, heads, vocabulary); parameters ~ 12 L d^2 + 2 V d
SIZES = {
    "tiny": (64, 2, 4, 512),
    "10m": (256, 8, 8, 8192),
    "100m": (768, 12, 12, 16384),
    "300m": (1024, 24, 16, 16384),
    "1b": (2048, 18, 16, 32000),
}


#: Positions the built-in transformer embeds: the longest ``seq_len`` it takes.
CONTEXT = 256


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).transpose(1, 3).unbind(2)
        attention = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attention.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class DecoderLM(nn.Module):
    """A GPT-style language model: token + position embeddings, pre-norm blocks, untied head."""

    def __init__(self, width: int, layers: int, heads: int, vocab_size: int, context: int = CONTEXT) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed, self.position = nn.Embedding(vocab_size, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab_size, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.position(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def next_token_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))


@dataclass
class ProfileTarget:
    """What the profiler unlearns: a model, its loss, and a batch factory (forget or retain)."""

    model: nn.Module
    loss_fn: methods.LossFn
    make_batch: Callable[[torch.Generator], Any]
    #: For ``eval_stats``: a batch's last hidden states, the LM head's weight and the next-token targets
    #: (None: the model is no language model the profiler knows how to read).
    lm_head: Callable[[nn.Module, Any], tuple[Tensor, Tensor, Tensor]] | None = None


def transformer_target(size: str = "10m", *, batch: int = 2, seq_len: int = 64, device="cpu", dtype=None):
    """The built-in target: :class:`DecoderLM` of ``size`` on random tokens."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not 1 <= seq_len <= CONTEXT:
        raise ValueError(f"seq_len must be between 1 and {CONTEXT} (the built-in transformer's context), got {seq_len}")
    width, layers, heads, vocab = SIZES[size]
    model = DecoderLM(width, layers, heads, vocab).to(device=device, dtype=dtype)

    def make_batch(generator: torch.Generator) -> Tensor:
        return torch.randint(0, vocab, (batch, seq_len + 1), generator=generator).to(device)

    def lm_head(model: DecoderLM, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        inputs = tokens[:, :-1]
        x = model.embed(inputs) + model.position(torch.arange(inputs.shape[1], device=inputs.device))
        for block in model.blocks:
            x = block(x)
        return model.norm(x), model.head.weight, tokens[:, 1:]

    return ProfileTarget(model, next_token_loss, make_batch, lm_head)


#: name -> (hidden, layers, heads, key/value heads, MLP width, vocabulary) of a Llama (RMSNorm,
#: rotary positions, SwiGLU MLP, grouped-query attention, untied head); "1b" is TinyLlama's shape.
LLAMA_SIZES = {
    "tiny": (64, 2, 4, 2, 176, 512),
    "10m": (256, 6, 8, 4, 704, 8192),
    "100m": (768, 10, 12, 4, 2048, 32000),
    "1b": (2048, 22, 32, 4, 5632, 32000),
}


def llama_target(
    size: str = "10m", *, batch: int = 2, seq_len: int = 64, device="cpu", dtype=None, lora: int | None = None
) -> ProfileTarget:
    """A Hugging Face ``LlamaForCausalLM`` of ``size`` (random init, no download) on random tokens,
    with rank-``lora`` adapters on the attention projections (``peft``) if given; batches are dicts
    and the loss is the model's own (:func:`fastunlearn.methods.causal_lm_loss`)."""
    import transformers

    if size not in LLAMA_SIZES:
        raise ValueError(f"unknown size {size!r} for hf:llama; expected one of {', '.join(LLAMA_SIZES)}")
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be >= 1, got {batch} and {seq_len}")
    hidden, layers, heads, kv_heads, mlp, vocab = LLAMA_SIZES[size]
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max(2048, seq_len),
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).to(device=device, dtype=dtype)
    if lora is not None:
        import peft

        if lora < 1:
            raise ValueError(f"lora must be a rank >= 1, got {lora}")
        modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
        model = peft.get_peft_model(model, peft.LoraConfig(r=lora, target_modules=modules, lora_dropout=0.0))

    def make_batch(generator: torch.Generator) -> dict[str, Tensor]:
        ids = torch.randint(0, vocab, (batch, seq_len), generator=generator).to(device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def lm_head(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        hidden = model.get_decoder()(input_ids=batch["input_ids"], use_cache=False).last_hidden_state
        return hidden[:, :-1], model.get_output_embeddings().weight, batch["labels"][:, 1:]

    return ProfileTarget(model, methods.causal_lm_loss, make_batch, lm_head)


BUILT_IN = {"transformer": transformer_target, "hf:llama": llama_target}


def load_target(spec: str, **options) -> ProfileTarget:
    """A built-in target (``"transformer"``, ``"hf:llama"``) or a user's factory returning a
    :class:`ProfileTarget`: ``"package.module:factory"`` (the current directory is searched too, as
    ``python -m`` would) or ``"path/to/file.py:factory"``. ``options`` are the profiler's (``size``,
    ``batch``, ``seq_len``, ``device``, ``lora``); a factory gets those its signature names."""
    if spec in BUILT_IN:
        return BUILT_IN[spec](**options)
    source, _, attr = spec.rpartition(":")
    if not source or not attr:
        raise ValueError(
            f"model {spec!r}: expected 'transformer', 'hf:llama', 'package.module:factory' or 'file.py:factory'"
        )
    module = _import_file(spec, source) if source.endswith(".py") else _import_module(spec, source)
    if not hasattr(module, attr):
        raise ValueError(f"model {spec!r}: module {source!r} has no attribute {attr!r}")
    factory = getattr(module, attr)
    parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if options.get("lora") is not None and not (takes_any or "lora" in parameters):
        raise ValueError(f"model {spec!r}: lora was given but the factory takes no 'lora' argument")
    target = factory(**{k: v for k, v in options.items() if takes_any or k in parameters})
    if not isinstance(target, ProfileTarget):
        raise TypeError(f"{spec} must return a fastunlearn.profile.ProfileTarget, got {type(target).__name__}")
    return target


def _import_module(spec: str, name: str):
    # The console script does not put the current directory on sys.path as `python -m` does.
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ValueError(f"model {spec!r}: cannot import {name!r} ({exc})") from exc
    finally:
        if added:
            sys.path.remove(os.getcwd())


def _import_file(spec: str, path: str):
    if not os.path.isfile(path):
        raise ValueError(f"model {spec!r}: no file {path!r}")
    module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(module_spec)
    # Registered before it runs, as an import would (dataclasses and pickling look it up there).
    sys.modules[module_spec.name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_spec.name, None)
        raise ValueError(f"model {spec!r}: running {path!r} failed ({type(exc).__name__}: {exc})") from exc
    return module


# --------------------------------------------------------------------------------------------
# The methods: fastunlearn's, and the reference ops (what public unlearning code does) as a
# method for the same harness
# --------------------------------------------------------------------------------------------


class ReferenceSurgery(methods.UnlearningMethod):
    """Gradient Surgery as public code writes it: flatten both gradients with ``torch.cat``, read
    the dot product and the squared norm back with ``.item()``, project, unflatten into ``.grad``,
    then ``torch.optim.SGD(maximize=True)``. Same captures and phases as the fused method."""

    def __init__(self, model: nn.Module, *, lr: float, momentum: float, loss_fn: methods.LossFn) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, maximize=True)
        super().__init__(model, optimizer=opt, loss_fn=loss_fn, backend="torch")

    def step(self, forget_batch: Any, retain_batch: Any) -> methods.StepStats:
        forget_loss, g_f = self.gradient("forget", self.forget_loss_fn, forget_batch)
        retain_loss, g_r = self.gradient("retain", self.loss_fn, retain_batch)
        with self.phase("vector_algebra"):
            flat_u = flatten_reference.projected(g_f, g_r, fu.ops.DEFAULT_EPS)
            # Views of the flat update, not copies: public code hands them to the optimizer as they are.
            for p, u in zip(self.params, torch.split(flat_u, [p.numel() for p in self.params])):
                p.grad = u.view_as(p)
        with self.phase("optimizer"):
            self.optimizer.step()
        for p in self.params:
            p.grad = None
        return {"forget_loss": forget_loss, "retain_loss": retain_loss}


#: The retain average's weight (OpenUnlearning's default gamma_gru) for both GRU implementations.
GRU_GAMMA = 0.8


class ReferenceGRU(methods.UnlearningMethod):
    """OpenUnlearning's GRU algebra (:func:`fastunlearn.flatten_reference.gru_direction`: flatten,
    copy to the host, per-parameter ``.item()`` dots), its result unflattened into ``.grad``, then
    ``torch.optim.SGD``. Same captures and phases as :class:`fastunlearn.methods.FastGRU`."""

    def __init__(self, model: nn.Module, *, lr: float, momentum: float, loss_fn: methods.LossFn) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(model, optimizer=torch.optim.SGD(params, lr=lr, momentum=momentum), loss_fn=loss_fn)
        self.previous: Tensor | float = 0.0

    def step(self, forget_batch: Any, retain_batch: Any) -> methods.StepStats:
        forget_loss, g_f = self.gradient("forget", self.forget_loss_fn, forget_batch)
        retain_loss, g_r = self.gradient("retain", self.loss_fn, retain_batch)
        with self.phase("vector_algebra"):
            direction, self.previous = flatten_reference.gru_direction(g_f, g_r, self.previous, GRU_GAMMA)
            for p, d in zip(self.params, torch.split(direction, [p.numel() for p in self.params])):
                p.grad = d.view_as(p).to(p.device)
        with self.phase("optimizer"):
            self.optimizer.step()
        for p in self.params:
            p.grad = None
        return {"forget_loss": forget_loss, "retain_loss": retain_loss}


#: Methods the profiler runs.
METHODS = (
    "surgery", "gru", "gradient_difference", "pcgrad", "gradient_ascent", "nabla_tau", "decouple_retain",
)  # fmt: skip
#: The methods ``compare`` has a reference implementation of (the flatten + ``.item()`` code).
REFERENCES = {"surgery": ReferenceSurgery, "gru": ReferenceGRU}


def make_method(name: str, model: nn.Module, target: ProfileTarget, lr: float, momentum: float, reference: bool):
    """The method ``name`` (one of :data:`METHODS`) on ``model`` with fused SGD, or with
    ``reference`` its reference implementation (:data:`REFERENCES`)."""
    if reference:
        return REFERENCES[name](model, lr=lr, momentum=momentum, loss_fn=target.loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]
    sgd = fu.optim.SGD(params, lr=lr, momentum=momentum)
    common = {"optimizer": sgd, "loss_fn": target.loss_fn}
    builders = {
        "surgery": lambda: methods.GradientSurgery(model, **common),
        "gru": lambda: methods.FastGRU(model, gamma=GRU_GAMMA, **common),
        "gradient_difference": lambda: methods.GradientDifference(model, **common),
        "pcgrad": lambda: methods.PCGradUnlearn(model, retain_tasks=2, **common),
        "gradient_ascent": lambda: methods.GradientAscent(model, **common),
        # tau from one batch; then every step is the two-gradient update of the paper
        "nabla_tau": lambda: methods.NablaTau(
            model, [target.make_batch(torch.Generator().manual_seed(1))], alpha0=0.5, **common
        ),
        # phase 1 throughout (no threshold is reached): clipped ascent with its own plain SGD
        "decouple_retain": lambda: methods.DecoupleRetain(
            model, threshold=float("inf"), max_steps=2**62, lr=lr, loss_fn=target.loss_fn
        ),
    }
    return builders[name]()
