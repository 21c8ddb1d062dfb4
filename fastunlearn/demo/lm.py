"""``fastunlearn demo --task lm``: unlearning fictitious people from a tiny Llama.

The package generates facts about fictitious people (birth city, job, favourite colour, pet),
deterministically from a seed; no download. A tiny ``LlamaForCausalLM`` (random init) learns every
question-answer pair; the people of the forget set (10 %) are then unlearned with each method
through :class:`fastunlearn.integrations.transformers.UnlearnTrainer`, and compared with a model
retrained without them (the gold standard):

* answer accuracy (teacher-forced exact match of the answer) and probability on the forget, retain
  and held-out people (never trained on);
* Min-K%++ membership AUC of forget against held-out QA pairs, and MUSE's privacy leakage against
  the retrained model's AUC (:mod:`fastunlearn.eval.lm`).

The bars, checked and reported as met or missed for each of the papers' methods (surgery,
nabla_tau, decouple_retain): forget accuracy within 10 points of the retrained model's, retain
accuracy within 5 points of the original's. ∇τ's τ comes from a separate set of unseen people
(not the held-out people of the membership test). Needs the ``hf`` and ``demo`` extras.
"""

from __future__ import annotations

import copy
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate

from fastunlearn import methods
from fastunlearn.demo.options import check_selection
from fastunlearn.eval import lm as lm_eval

SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sa", "el", "dri", "mon", "bel", "quen", "fa", "zu", "rin", "ost"]
ATTRIBUTES = {
    "city": ["marlow", "tessing", "orvale", "quenby", "dunmere", "halcot", "rivenby", "soltan", "caddor", "brisk"],
    "job": ["baker", "pilot", "weaver", "surveyor", "chemist", "sculptor", "ranger", "clerk", "mason", "tutor"],
    "colour": ["amber", "teal", "crimson", "ivory", "olive", "violet", "slate", "coral"],
    "pet": ["ferret", "parrot", "tortoise", "hound", "gecko", "rabbit", "owl", "carp"],
}
QUESTIONS = {
    "city": "where was {name} born ?",
    "job": "what does {name} do for a living ?",
    "colour": "what is the favourite colour of {name} ?",
    "pet": "which pet does {name} keep ?",
}
PAD, BOS, SEP = 0, 1, 2  # token ids; words follow
LENGTH = 16  # tokens per QA pair, padded

#: The papers' methods, held to the bars.
SEED_METHODS = ("surgery", "nabla_tau", "decouple_retain")

PRESETS = {
    "quick": {"people": 40, "held_out": 10, "epochs": 100, "seeds": [0]},
    "full": {"people": 40, "held_out": 10, "epochs": 100, "seeds": [0, 1, 2]},
}


def people(count: int, rng: random.Random, taken: set[str] | None = None) -> list[dict[str, str]]:
    """``count`` fictitious people with distinct two-part names and one value of each attribute."""
    taken = set() if taken is None else taken
    out = []
    while len(out) < count:
        first = "".join(rng.choice(SYLLABLES) for _ in range(2))
        last = "".join(rng.choice(SYLLABLES) for _ in range(3))
        name = f"{first} {last}"
        if name in taken:
            continue
        taken.add(name)
        out.append({"name": name, **{key: rng.choice(values) for key, values in ATTRIBUTES.items()}})
    return out


def qa_pairs(person: dict[str, str]) -> list[tuple[list[str], list[str]]]:
    """The person's question-answer pairs, as words."""
    return [(QUESTIONS[key].format(name=person["name"]).split(), [person[key]]) for key in QUESTIONS]


class Vocabulary:
    """Word-level tokens of the generated texts (plus pad, begin and question-answer separator)."""

    def __init__(self, words: list[str]) -> None:
        self.ids = {word: index + 3 for index, word in enumerate(sorted(set(words)))}

    def __len__(self) -> int:
        return len(self.ids) + 3

    def encode(self, question: list[str], answer: list[str]) -> dict[str, torch.Tensor]:
        """One padded sequence ``<bos> question <sep> answer`` whose labels count the answer only."""
        ids = [BOS, *(self.ids[w] for w in question), SEP, *(self.ids[w] for w in answer)]
        labels = [-100] * (len(question) + 2) + [self.ids[w] for w in answer]
        if len(ids) > LENGTH:
            raise ValueError(f"a QA pair of {len(ids)} tokens does not fit {LENGTH}")
        pad = LENGTH - len(ids)
        return {
            "input_ids": torch.tensor(ids + [PAD] * pad),
            "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
            "labels": torch.tensor(labels + [-100] * pad),
        }


@dataclass
class Facts:
    """The QA pairs of the forget, retain, held-out (membership test) and validation (∇τ's τ)
    people, encoded."""

    vocabulary: Vocabulary
    forget: list[dict]
    retain: list[dict]
    held_out: list[dict]
    validation: list[dict]
    texts: dict[str, list[str]] = field(default_factory=dict)


def make_facts(num_people: int, held_out: int, seed: int, forget_fraction: float = 0.1) -> Facts:
    rng = random.Random(seed)
    trained = people(num_people, rng)
    taken = {p["name"] for p in trained}
    unseen = people(held_out, rng, taken)
    validation = people(held_out, rng, taken)
    forget_count = max(1, round(forget_fraction * num_people))
    split = {
        "forget": trained[:forget_count], "retain": trained[forget_count:], "held_out": unseen,
        "validation": validation,
    }  # fmt: skip
    pairs = {key: [qa for person in group for qa in qa_pairs(person)] for key, group in split.items()}
    vocabulary = Vocabulary([w for group in pairs.values() for q, a in group for w in q + a])
    encoded = {key: [vocabulary.encode(q, a) for q, a in group] for key, group in pairs.items()}
    texts = {key: [" ".join(q + a) for q, a in group] for key, group in pairs.items()}
    return Facts(vocabulary, encoded["forget"], encoded["retain"], encoded["held_out"], encoded["validation"], texts)


def tiny_llama(vocab_size: int, seed: int) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, pad_token_id=PAD,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def train_model(items: list[dict], vocab_size: int, epochs: int, seed: int) -> torch.nn.Module:
    model = tiny_llama(vocab_size, seed)
    torch.manual_seed(seed)
    loader = DataLoader(items, batch_size=16, shuffle=True, collate_fn=default_collate)
    methods.train(model, loader, epochs=epochs, lr=3e-3, loss_fn=methods.causal_lm_loss)
    return model


# ----------------------------------------------------------------------------------------------
# The methods, each through UnlearnTrainer with the settings it runs at here
# ----------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    method: str
    lr: float
    steps: int
    args: Callable[[Facts], dict[str, Any]] = lambda facts: {}
    npo: bool = False  #: forget loss NPO (the forget set carries the original model's NLL)


RECIPES: dict[str, Recipe] = {
    "surgery": Recipe("surgery", 1e-3, 60, lambda f: {"retain_weight": 6.0, "retain_directions": 4}),
    "nabla_tau": Recipe(
        "nabla_tau", 1e-3, 40, lambda f: {"alpha0": 0.7, "val_loader": [default_collate(f.validation)]}
    ),
    # Retention projected off the forget gradient: plain retention relearns the forgotten facts (the
    # forget accuracy came back to 0.5 at these settings otherwise).
    "decouple_retain": Recipe(
        "decouple_retain",
        2e-3,
        120,
        lambda f: {"threshold": 60.0, "max_steps": 20, "lr": 10.0, "retention": "projected"},
    ),  # fmt: skip
    "gru": Recipe("gru", 3e-4, 40),
    "grad_ascent": Recipe("grad_ascent", 3e-4, 40),
    "grad_diff": Recipe("grad_diff", 1e-3, 40, lambda f: {"retain_weight": 2.0}),
    "npo": Recipe("grad_diff", 1e-3, 40, lambda f: {"retain_weight": 1.0}, npo=True),
    "npo+surgery": Recipe("surgery", 1e-3, 40, lambda f: {"retain_weight": 3.0, "retain_directions": 4}, npo=True),
}


def unlearn(original: torch.nn.Module, facts: Facts, recipe: Recipe, seed: int, out: Path) -> torch.nn.Module:
    import transformers

    from fastunlearn.integrations.transformers import ForgetRetainDataset, UnlearnTrainer

    model = copy.deepcopy(original)
    args = recipe.args(facts)
    forget = facts.forget
    if recipe.npo:
        forget = methods.with_reference_nll(model, facts.forget)
        args["forget_loss_fn"] = methods.NPOLoss(beta=0.1)
    training = transformers.TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=16, max_steps=recipe.steps,
        learning_rate=recipe.lr, lr_scheduler_type="constant", max_grad_norm=1.0, logging_steps=recipe.steps,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=seed, data_seed=seed,
        logging_nan_inf_filter=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    dataset = ForgetRetainDataset(forget, facts.retain)
    UnlearnTrainer(model=model, args=training, train_dataset=dataset, method=recipe.method, method_args=args).train()
    return model


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: torch.nn.Module, facts: Facts, retrained_auc: float | None = None) -> dict[str, float]:
    model.eval()
    out, scores = {}, {}
    for name in ("forget", "retain", "held_out"):
        stats, mask = lm_eval.causal_lm_stats(model, default_collate(getattr(facts, name)))
        answers = lm_eval.answer_metrics(stats, mask)
        out[f"{name}_accuracy"] = float(answers["accuracy"].mean())
        out[f"{name}_probability"] = float(answers["probability"].mean())
        scores[name] = lm_eval.membership_scores(stats, mask, k=0.5)["min_k_plus_plus"]
    out["mia_auc"] = lm_eval.auc(scores["forget"], scores["held_out"])
    if retrained_auc is not None:
        out["privleak"] = lm_eval.privleak(out["mia_auc"], retrained_auc)
    return out


def meets_bars(result: dict[str, float], retrained: dict[str, float], original: dict[str, float]) -> dict:
    forget_gap = abs(result["forget_accuracy"] - retrained["forget_accuracy"])
    retain_drop = original["retain_accuracy"] - result["retain_accuracy"]
    return {"forget_gap": forget_gap, "retain_drop": retain_drop, "ok": forget_gap <= 0.10 and retain_drop <= 0.05}


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


@dataclass
class LMDemoConfig:
    preset: str = "full"
    out: Path = Path("fastunlearn-demo-lm")
    methods: list[str] = field(default_factory=lambda: list(RECIPES))
    progress: bool = True

    def __post_init__(self) -> None:
        check_selection(self.preset, PRESETS, self.methods, RECIPES)


def run_seed(config: LMDemoConfig, seed: int, advance: Callable[[str], None]) -> dict:
    settings = PRESETS[config.preset]
    facts = make_facts(settings["people"], settings["held_out"], seed)
    vocab = len(facts.vocabulary)
    start = time.perf_counter()
    original = train_model(facts.forget + facts.retain, vocab, settings["epochs"], seed)
    retrained = train_model(facts.retain, vocab, settings["epochs"], seed)
    advance("original and retrained models")
    rows = {"retrain": evaluate(retrained, facts)}
    rows["original"] = evaluate(original, facts, rows["retrain"]["mia_auc"])
    rows["retrain"]["privleak"] = 0.0
    for name in config.methods:
        began = time.perf_counter()
        model = unlearn(original, facts, RECIPES[name], seed, config.out)
        rows[name] = evaluate(model, facts, rows["retrain"]["mia_auc"])
        rows[name]["seconds"] = time.perf_counter() - began
        rows[name]["bars"] = meets_bars(rows[name], rows["retrain"], rows["original"])
        advance(name)
    return {"seed": seed, "rows": rows, "seconds": time.perf_counter() - start}


COLUMNS = ("forget_accuracy", "retain_accuracy", "held_out_accuracy", "forget_probability", "mia_auc", "privleak")


def summarise(runs: list[dict], methods_run: list[str]) -> dict:
    names = ["original", "retrain", *methods_run]
    table = {}
    for name in names:
        table[name] = {c: statistics.fmean(run["rows"][name].get(c, 0.0) for run in runs) for c in COLUMNS}
        if name in methods_run:
            table[name]["seconds"] = statistics.fmean(run["rows"][name]["seconds"] for run in runs)
            table[name]["bars"] = meets_bars(table[name], table["retrain"], table["original"])
    return table


def markdown(table: dict, config: LMDemoConfig, seconds: float) -> str:
    seeds = PRESETS[config.preset]["seeds"]
    lines = [
        f"# fastunlearn demo: unlearning fictitious people from a tiny Llama ({config.preset}, seeds {seeds})",
        "",
        "Means over seeds. Accuracy: teacher-forced exact match of the answer; MIA AUC: Min-K%++ z-score of "
        "the answer token, forget vs held-out people; privleak: against the retrained model's AUC. "
        "Bars (papers' methods): "
        "forget accuracy within 10 points of retrain's, retain accuracy within 5 points of the original's.",
        "",
        "| model | forget acc | retain acc | held-out acc | forget prob | MIA AUC | privleak % | s | bars |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        bars = row.get("bars")
        verdict = "" if bars is None else ("met" if bars["ok"] else "missed") if name in SEED_METHODS else "(baseline)"
        lines.append(
            f"| {name} | {row['forget_accuracy']:.3f} | {row['retain_accuracy']:.3f} | "
            f"{row['held_out_accuracy']:.3f} | {row['forget_probability']:.3f} | {row['mia_auc']:.3f} | "
            f"{row['privleak']:+.1f} | {row.get('seconds', 0.0):.1f} | {verdict} |"
        )
    lines += ["", f"Total {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def figure(table: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.4
    xs = range(len(names))
    ax.bar([x - width / 2 for x in xs], [table[n]["forget_accuracy"] for n in names], width, label="forget accuracy")
    ax.bar([x + width / 2 for x in xs], [table[n]["retain_accuracy"] for n in names], width, label="retain accuracy")
    ax.axhline(table["retrain"]["forget_accuracy"], color="gray", linestyle="--", linewidth=1, label="retrain forget")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Answer accuracy after unlearning 10% of the people")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_lm_demo(config: LMDemoConfig) -> dict:
    """Runs the LM demo; writes results.json, report.md and accuracy.png into ``config.out``."""
    from rich.console import Console
    from rich.progress import Progress

    config.out.mkdir(parents=True, exist_ok=True)
    seeds = PRESETS[config.preset]["seeds"]
    start = time.perf_counter()
    runs = []
    with Progress(disable=not config.progress, transient=True) as progress:
        task = progress.add_task("LM demo", total=len(seeds) * (1 + len(config.methods)))
        for seed in seeds:
            runs.append(run_seed(config, seed, lambda what: progress.update(task, advance=1, description=what)))
    table = summarise(runs, config.methods)
    seconds = time.perf_counter() - start
    summary = {"preset": config.preset, "seeds": seeds, "table": table, "runs": runs, "seconds": seconds}
    (config.out / "results.json").write_text(json.dumps(summary, indent=2))
    text = markdown(table, config, seconds)
    figure(table, config.out / "accuracy.png")
    (config.out / "report.md").write_text(text + "\n![accuracy](accuracy.png)\n")
    Console(quiet=not config.progress).print(text)
    return summary
