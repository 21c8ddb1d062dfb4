"""``fastunlearn demo --task i2i``: unlearning an image-to-image (inpainting) model on the digits.

The setting of the Decoupling + Retention paper (Varshney & Torra, 2025) and of Li et al. (ICLR
2024), at the size of the bundled 8x8 digits: a small convolutional network sees a digit with its
right half masked (the masked pixels set to 0, plus the mask as a second channel) and generates
the whole image. The original model learns every training digit, the gold standard is retrained
without the forget set (a class, or a random subset), and each method unlearns from the original:

* the papers' methods with the I2I loss (the mean squared error of the generated image):
  DecoupleRetain (ascent until the outputs on the masked forget inputs moved by λ, then retention
  fine-tuning projected so that it does not relearn the forget samples -- ``retention=
  "projected"``; ``DecoupleRetain/plain`` is the paper's plain retention, which relearns them),
  Gradient Surgery, ∇τ;
* the I2I baselines of Li et al.: max-loss (gradient ascent), noisy label (forget targets replaced
  by uniform noise images), retain label (forget targets replaced by random retain images), random
  encoder (the encoder maps forget inputs to Gaussian noise and keeps the original's codes on retain
  inputs; the decoder is frozen); and the classifier demo's baselines with the I2I loss (gradient
  difference, PCGrad over ascent/descent, fine-tuning on the retain set).

Metrics (:mod:`fastunlearn.eval`): reconstruction error (MSE, PSNR) on forget / retain / test; the
cosine distance between the demo classifier's features of each output and of its true image
(the I2I papers' CLIP distance); the share of forget outputs the classifier calls the forgotten
class; and the attack audit -- a membership attack on the outputs (per sample: reconstruction
error, feature distance, the classifier's logits of the output), forget samples against unseen
samples of the same distribution, reported next to the retrained model's (the ideal).

The bars, for DecoupleRetain on class forgetting: the attack audit's accuracy within 0.1 of the
retrained model's, and the retain reconstruction error within 25 % of the original's.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from fastunlearn import eval as ev
from fastunlearn import methods, optim
from fastunlearn.demo.data import DigitSplits, digit_splits, parse_forget
from fastunlearn.demo.models import Classifier
from fastunlearn.demo.options import DigitsDemoConfig

PRESETS = {
    # 200 epochs: long enough that the original model memorises its training digits, so that the
    # attack audit has a membership signal to find (about 0.9 accuracy against the original).
    "quick": {"epochs": 200, "forgets": ["class:3"]},
    "full": {"epochs": 200, "forgets": ["class:3", "random:0.15"]},
}
#: The papers' methods; the bars apply to DecoupleRetain on class forgetting.
SEED_METHODS = ("DecoupleRetain", "GradientSurgery", "NablaTau")
BATCH = 128
ASCENT_STEPS = 20
RETAIN_EPOCHS = 30


# ----------------------------------------------------------------------------------------------
# The model and its data
# ----------------------------------------------------------------------------------------------


class Inpainter(nn.Module):
    """Masked digit and mask ``[n, 2, 8, 8]`` -> logits of the whole image ``[n, 1, 8, 8]``: a
    convolutional encoder to 64 x 4 x 4 codes, a transposed-convolution decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU()
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def generate(self, x: Tensor) -> Tensor:
        """Images in [0, 1]."""
        return torch.sigmoid(self(x))


def right_half_mask() -> Tensor:
    mask = torch.zeros(1, 8, 8)
    mask[..., 4:] = 1.0
    return mask


def masked_inputs(images: Tensor, mask: Tensor) -> Tensor:
    """Images ``[n, 64]`` -> ``[n, 2, 8, 8]``: the image with its masked pixels at 0, and the mask."""
    pictures = images.view(-1, 1, 8, 8)
    return torch.cat([pictures * (1 - mask), mask.expand_as(pictures)], dim=1)


def i2i_loss(model: nn.Module, batch) -> Tensor:
    """The I2I loss: mean squared error of the generated image against the target image."""
    return F.mse_loss(model.generate(batch[0]), batch[1])


def generated(model: nn.Module, batch) -> Tensor:
    """DecoupleRetain's output: the generated image, flattened (λ is a distance between images)."""
    return model.generate(batch[0]).flatten(1)


@dataclass
class I2IData:
    """Per split: masked inputs ``[n, 2, 8, 8]``, true images ``[n, 1, 8, 8]`` and digit labels."""

    inputs: dict[str, Tensor]
    images: dict[str, Tensor]
    labels: dict[str, Tensor]
    removed: int | None

    @classmethod
    def from_splits(cls, splits: DigitSplits, removed: int | None) -> I2IData:
        mask = right_half_mask()
        inputs = {name: masked_inputs(x, mask) for name, x in splits.x.items()}
        return cls(inputs, {n: x.view(-1, 1, 8, 8) for n, x in splits.x.items()}, dict(splits.y), removed)

    def loader(self, name: str, *, targets: Tensor | None = None, shuffle: bool = False, seed: int = 0) -> DataLoader:
        dataset = TensorDataset(self.inputs[name], self.images[name] if targets is None else targets)
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, batch_size=BATCH, shuffle=shuffle, generator=generator)

    def unseen_like_forget(self) -> tuple[Tensor, Tensor]:
        """Inputs and images of never-trained samples from the forget set's distribution: the
        forgotten class's validation and test digits, or every validation and test digit."""
        inputs = torch.cat([self.inputs["val"], self.inputs["test"]])
        images = torch.cat([self.images["val"], self.images["test"]])
        if self.removed is None:
            return inputs, images
        keep = torch.cat([self.labels["val"], self.labels["test"]]) == self.removed
        return inputs[keep], images[keep]


def train(data: I2IData, names: tuple[str, ...], epochs: int, seed: int) -> Inpainter:
    torch.manual_seed(seed)
    model = Inpainter()
    dataset = TensorDataset(torch.cat([data.inputs[n] for n in names]), torch.cat([data.images[n] for n in names]))
    loader = DataLoader(dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    methods.train(model, loader, epochs=epochs, lr=3e-3, loss_fn=i2i_loss)
    return model


def train_classifier(data: I2IData, seed: int) -> Classifier:
    """The evaluation's encoder and judge: the demo's digit classifier on every training digit."""
    torch.manual_seed(seed)
    classifier = Classifier()
    names = ("forget", "retain")
    dataset = TensorDataset(
        torch.cat([data.images[n].flatten(1) for n in names]), torch.cat([data.labels[n] for n in names])
    )
    loader = DataLoader(dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    methods.train(classifier, loader, epochs=40, lr=3e-3, loss_fn=methods.cross_entropy)
    return classifier.eval()


# ----------------------------------------------------------------------------------------------
# The methods
# ----------------------------------------------------------------------------------------------


def _adamw(params) -> optim.AdamW:
    return optim.AdamW(params, lr=1e-3, weight_decay=0.0)


def _ascent(cls, **options):
    def run(model: Inpainter, data: I2IData, seed: int) -> None:
        method = cls(model, optimizer=_adamw(model.parameters()), loss_fn=i2i_loss, **options)
        forget = data.loader("forget", shuffle=True, seed=seed)
        method.run(forget, data.loader("retain", shuffle=True, seed=seed + 1), steps=ASCENT_STEPS)

    return run


def _decouple_retain(retention: str):
    def run(model: Inpainter, data: I2IData, seed: int) -> None:
        # λ: the mean L2 distance between the original's and the model's generated images on the
        # masked forget inputs (a digit's image has a norm of about 3). Retention: AdamW for
        # RETAIN_EPOCHS epochs -- long enough to bring the retain error back; "plain" retention
        # relearns the forget samples on the way, "projected" does not (DecoupleRetain's option).
        method = methods.DecoupleRetain(
            model, threshold=1.5, max_steps=100, clip_norm=1.0, lr=0.1, retention=retention,
            retain_optimizer=optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0), output_fn=generated,
            loss_fn=i2i_loss,
        )  # fmt: skip
        forget = data.loader("forget", shuffle=True, seed=seed)
        method.run(forget, data.loader("retain", shuffle=True, seed=seed + 1), retain_epochs=RETAIN_EPOCHS)

    return run


def nabla_tau(model: Inpainter, data: I2IData, seed: int) -> None:
    forget_fraction = len(data.labels["forget"]) / (len(data.labels["forget"]) + len(data.labels["retain"]))
    method = methods.NablaTau(model, data.loader("val"), forget_fraction=forget_fraction, loss_fn=i2i_loss)
    method.run(data.loader("forget", shuffle=True, seed=seed), data.loader("retain", shuffle=True, seed=seed + 1))


def _finetune(model: Inpainter, data: I2IData, seed: int) -> None:
    optimizer = _adamw(model.parameters())
    methods.Finetune(model, optimizer=optimizer, loss_fn=i2i_loss).run(
        None, data.loader("retain", shuffle=True, seed=seed + 1), epochs=RETAIN_EPOCHS
    )


def _relabelled(forget_targets: Callable[[I2IData, torch.Generator], Tensor]):
    """Li et al.'s label baselines: fine-tune on the forget inputs with replaced targets together
    with the retain set."""

    def run(model: Inpainter, data: I2IData, seed: int) -> None:
        targets = forget_targets(data, torch.Generator().manual_seed(seed))
        dataset = TensorDataset(
            torch.cat([data.inputs["forget"], data.inputs["retain"]]), torch.cat([targets, data.images["retain"]])
        )
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed))
        methods.Finetune(model, optimizer=_adamw(model.parameters()), loss_fn=i2i_loss).run(
            None, loader, epochs=RETAIN_EPOCHS
        )

    return run


def _noise_targets(data: I2IData, generator: torch.Generator) -> Tensor:
    return torch.rand(data.images["forget"].shape, generator=generator)


def _retain_targets(data: I2IData, generator: torch.Generator) -> Tensor:
    pick = torch.randint(0, len(data.images["retain"]), (len(data.images["forget"]),), generator=generator)
    return data.images["retain"][pick]


def random_encoder(model: Inpainter, data: I2IData, seed: int) -> None:
    """Li et al.'s objective: encoder codes of forget inputs towards Gaussian noise, of retain inputs
    towards the original encoder's; only the encoder moves."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        codes = model.encoder(torch.cat([data.inputs["forget"], data.inputs["retain"]]))
    n_forget = len(data.inputs["forget"])
    codes[:n_forget] = torch.randn(codes[:n_forget].shape, generator=generator)
    dataset = TensorDataset(torch.cat([data.inputs["forget"], data.inputs["retain"]]), codes)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed))

    def code_loss(m: Inpainter, batch) -> Tensor:
        return F.mse_loss(m.encoder(batch[0]), batch[1])

    for p in model.decoder.parameters():
        p.requires_grad_(False)
    methods.Finetune(model, optimizer=_adamw(model.encoder.parameters()), loss_fn=code_loss).run(
        None, loader, epochs=RETAIN_EPOCHS
    )
    for p in model.decoder.parameters():
        p.requires_grad_(True)


RECIPES: dict[str, Callable[[Inpainter, I2IData, int], None]] = {
    "DecoupleRetain": _decouple_retain("projected"),
    "DecoupleRetain/plain": _decouple_retain("plain"),
    "GradientSurgery": _ascent(methods.GradientSurgery),
    "NablaTau": nabla_tau,
    "MaxLoss": _ascent(methods.GradientAscent),
    "GradientDifference": _ascent(methods.GradientDifference),
    "PCGradUnlearn": _ascent(methods.PCGradUnlearn, generator=None),
    "Finetune": _finetune,
    "NoisyLabel": _relabelled(_noise_targets),
    "RetainLabel": _relabelled(_retain_targets),
    "RandomEncoder": random_encoder,
}


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def per_sample(model: Inpainter, classifier: Classifier, inputs: Tensor, images: Tensor) -> dict[str, Tensor]:
    outputs = model.generate(inputs)
    return {
        "mse": ev.reconstruction_errors(outputs, images),
        "distance": ev.feature_distance(classifier.features, outputs.flatten(1), images.flatten(1)),
        "logits": classifier(outputs.flatten(1)),
    }


def attack_features(values: dict[str, Tensor]) -> Tensor:
    return torch.cat([values["mse"][:, None], values["distance"][:, None], values["logits"]], dim=1)


def evaluate(model: Inpainter, classifier: Classifier, data: I2IData, seed: int) -> dict[str, float]:
    model.eval()
    out = {}
    values = {}
    for name in ("forget", "retain", "test"):
        values[name] = per_sample(model, classifier, data.inputs[name], data.images[name])
        out[f"mse_{name}"] = float(values[name]["mse"].mean())
        out[f"psnr_{name}"] = float(ev.psnr(values[name]["mse"]).mean())
        out[f"distance_{name}"] = float(values[name]["distance"].mean())
    if data.removed is not None:
        out["class_share"] = float((values["forget"]["logits"].argmax(1) == data.removed).float().mean())
    unseen = per_sample(model, classifier, *data.unseen_like_forget())
    audit = ev.attack_audit(attack_features(values["forget"]).numpy(), attack_features(unseen).numpy(), seed=seed)
    out["audit_accuracy"], out["audit_auc"] = audit["accuracy"], audit["auc"]
    return out


def meets_bars(result: dict[str, float], retrained: dict[str, float], original: dict[str, float]) -> dict:
    audit_gap = abs(result["audit_accuracy"] - retrained["audit_accuracy"])
    retain_ratio = result["mse_retain"] / original["mse_retain"]
    return {"audit_gap": audit_gap, "retain_mse_ratio": retain_ratio, "ok": audit_gap <= 0.10 and retain_ratio <= 1.25}


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


@dataclass
class I2IDemoConfig(DigitsDemoConfig):
    presets: ClassVar[dict] = PRESETS
    recipes: ClassVar[dict] = RECIPES
    out: Path = Path("fastunlearn-demo-i2i")


def run_forget_set(spec: str, config: I2IDemoConfig, advance: Callable[[str], None]) -> dict:
    kind, value = parse_forget(spec)
    data = I2IData.from_splits(digit_splits(spec, seed=config.seed), value if kind == "class" else None)
    epochs = config.settings["epochs"]
    classifier = train_classifier(data, config.seed)
    original = train(data, ("forget", "retain"), epochs, config.seed)
    retrained = train(data, ("retain",), epochs, config.seed)
    advance(f"[{spec}] original and retrained models")
    rows = {"Original": evaluate(original, classifier, data, config.seed)}
    rows["Retrain"] = evaluate(retrained, classifier, data, config.seed)
    samples = sample_indices(data)
    grids = {"Original": grid_outputs(original, data, samples), "Retrain": grid_outputs(retrained, data, samples)}
    for name in config.methods:
        model = copy.deepcopy(original)
        torch.manual_seed(config.seed)
        start = time.perf_counter()
        RECIPES[name](model, data, config.seed)
        seconds = time.perf_counter() - start
        rows[name] = {**evaluate(model, classifier, data, config.seed), "seconds": seconds}
        rows[name]["bars"] = meets_bars(rows[name], rows["Retrain"], rows["Original"])
        grids[name] = grid_outputs(model, data, samples)
        advance(f"[{spec}] {name}")
    inputs = {split: data.inputs[split][index] for split, index in samples.items()}
    truth = {split: data.images[split][index] for split, index in samples.items()}
    return {"forget": spec, "rows": rows, "grid": {"inputs": inputs, "truth": truth, "outputs": grids}}


def sample_indices(data: I2IData, count: int = 4) -> dict[str, Tensor]:
    return {split: torch.arange(min(count, len(data.inputs[split]))) for split in ("forget", "retain")}


@torch.no_grad()
def grid_outputs(model: Inpainter, data: I2IData, samples: dict[str, Tensor]) -> dict[str, Tensor]:
    return {split: model.generate(data.inputs[split][index]) for split, index in samples.items()}


COLUMNS = (
    ("mse_forget", "forget MSE", "{:.4f}"),
    ("mse_retain", "retain MSE", "{:.4f}"),
    ("mse_test", "test MSE", "{:.4f}"),
    ("psnr_forget", "forget PSNR", "{:.1f}"),
    ("distance_forget", "forget feat. dist.", "{:.3f}"),
    ("distance_retain", "retain feat. dist.", "{:.3f}"),
    ("class_share", "forget called the class", "{:.1%}"),
    ("audit_accuracy", "audit acc", "{:.3f}"),
    ("audit_auc", "audit AUC", "{:.3f}"),
    ("seconds", "s", "{:.1f}"),
)


def markdown(runs: list[dict], config: I2IDemoConfig, seconds: float) -> str:
    lines = [
        "# fastunlearn demo: unlearning an inpainting model (digits, right half masked)",
        "",
        "Per-sample means. Feature distance: cosine distance between the demo classifier's features of the "
        "generated and the true image. Audit: a membership attack (logistic regression on reconstruction error, "
        "feature distance and the classifier's logits of the output; forget samples against unseen samples of "
        "the same distribution), held-out accuracy and AUC; ideal: Retrain's. Bars (DecoupleRetain, class "
        "forgetting): audit accuracy within 0.1 of Retrain's, retain MSE within 25% of Original's.",
    ]
    for run in runs:
        columns = [c for c in COLUMNS if any(c[0] in row for row in run["rows"].values())]
        lines += ["", f"## forget {run['forget']}", ""]
        lines.append("| model | " + " | ".join(title for _, title, _ in columns) + " | bars |")
        lines.append("|---" * (len(columns) + 2) + "|")
        for name, row in run["rows"].items():
            cells = [fmt.format(row[key]) if key in row else "" for key, _, fmt in columns]
            bars = row.get("bars")
            verdict = "" if bars is None else ("met" if bars["ok"] else "missed")
            if verdict and not (name == "DecoupleRetain" and run["forget"].startswith("class")):
                verdict = f"({verdict})"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    lines += ["", f"Total {seconds:.0f} s.", "", "![outputs](i2i_outputs.png)", "", "![metrics](i2i_metrics.png)"]
    return "\n".join(lines) + "\n"


def figures(runs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = runs[0]
    grid = run["grid"]
    models = list(grid["outputs"])
    columns = ["masked input", "true", *models]
    rows = [(split, i) for split in ("forget", "retain") for i in range(len(grid["inputs"][split]))]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.1 * len(columns), 1.15 * len(rows)))
    for r, (split, i) in enumerate(rows):
        masked = grid["inputs"][split][i, 0] + 0.5 * grid["inputs"][split][i, 1]  # the mask shown grey
        images = [masked, grid["truth"][split][i, 0], *(grid["outputs"][m][split][i, 0] for m in models)]
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image.numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=6, rotation=30)
        axes[r, 0].set_ylabel(split, fontsize=7)
    fig.suptitle(f"forget {run['forget']}: forget (top) and retain (bottom) samples", fontsize=8)
    fig.tight_layout()
    outputs_path = out / "i2i_outputs.png"
    fig.savefig(outputs_path, dpi=130)
    plt.close(fig)

    fig, axes = plt.subplots(len(runs), 3, figsize=(12, 3.2 * len(runs)), squeeze=False)
    for r, run in enumerate(runs):
        names = list(run["rows"])
        for c, (key, title) in enumerate(
            (("mse_forget", "forget MSE"), ("mse_retain", "retain MSE"), ("audit_accuracy", "audit accuracy"))
        ):
            ax = axes[r, c]
            ax.bar(range(len(names)), [run["rows"][n][key] for n in names], color="tab:blue")
            ax.axhline(run["rows"]["Retrain"][key], color="tab:green", linestyle="--", label="Retrain")
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"forget {run['forget']}: {title}", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    metrics_path = out / "i2i_metrics.png"
    fig.savefig(metrics_path, dpi=110)
    plt.close(fig)
    return [outputs_path, metrics_path]


def run_i2i_demo(config: I2IDemoConfig) -> dict:
    """Runs the demo and writes results.json, report.md and the figures into ``config.out``."""
    from rich.progress import Progress

    start = time.perf_counter()
    total = len(config.forgets) * (1 + len(config.methods))
    with Progress(disable=not config.progress) as progress:
        task = progress.add_task("i2i demo", total=total)
        runs = [
            run_forget_set(spec, config, lambda what: progress.update(task, advance=1, description=what))
            for spec in config.forgets
        ]
    seconds = time.perf_counter() - start
    config.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "config": {"preset": config.preset, "methods": config.methods, "forgets": config.forgets, "seed": config.seed},
        "seconds": seconds,
        "runs": [{"forget": run["forget"], "rows": run["rows"]} for run in runs],
    }
    (config.out / "results.json").write_text(json.dumps(summary, indent=2))
    figures(runs, config.out)
    text = markdown(runs, config, seconds)
    (config.out / "report.md").write_text(text)
    if config.progress:
        print(text)
    return summary
