"""``fastunlearn demo``: every method on a digits classifier and a digits VAE, evaluated against
the retrained gold standard, with a table, results.json, a Markdown report and figures."""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch.utils.data import DataLoader, TensorDataset

import fastunlearn as fu
from fastunlearn import eval as ev
from fastunlearn import flatten_reference, methods
from fastunlearn._phases import PhaseTimer
from fastunlearn._timing import median_seconds
from fastunlearn.demo import report
from fastunlearn.demo.data import DigitSplits, digit_splits, parse_forget
from fastunlearn.demo.models import VAE, Classifier, vae_loss
from fastunlearn.demo.options import DigitsDemoConfig
from fastunlearn.demo.recipes import NEEDS_LABELS, RECIPES, Task

PRESETS = {
    # epochs of the original / retrained models; VAE samples drawn for the generative metrics
    "quick": {"classifier_epochs": 40, "vae_epochs": 150, "samples": 1000, "forgets": ["class:3", "random:0.15"]},
    "full": {
        "classifier_epochs": 40,
        "vae_epochs": 150,
        "samples": 2000,
        "forgets": ["class:3", "random:0.03", "random:0.15", "random:0.3"],
    },
}


@dataclass
class DemoConfig(DigitsDemoConfig):
    presets: ClassVar[dict] = PRESETS
    recipes: ClassVar[dict] = RECIPES
    out: Path = Path("fastunlearn-demo")


def classifier_task() -> Task:
    return Task("classifier", methods.cross_entropy, lambda m, b: m(b[0]), has_labels=True)


def vae_task() -> Task:
    def reconstruction_logits(model, batch):
        mu, _ = model.encoder(batch[0]).chunk(2, dim=1)
        return model.decoder(mu)

    return Task("vae", vae_loss, reconstruction_logits, has_labels=False)


def train_model(model, loader, epochs: int, loss_fn, seed: int):
    """How the demo trains its original and retrained models (Adam, lr 3e-3), seeded."""
    torch.manual_seed(seed)
    methods.train(model, loader, epochs=epochs, lr=3e-3, loss_fn=loss_fn)
    return model


def seeded(factory, seed: int):
    """A model built under ``seed``: the original and the retrained one start from the same weights."""
    torch.manual_seed(seed)
    return factory()


def _other_classes_test(splits: DigitSplits, removed: int | None) -> DataLoader:
    keep = splits.y["test"] != removed if removed is not None else torch.ones_like(splits.y["test"], dtype=torch.bool)
    return DataLoader(TensorDataset(splits.x["test"][keep], splits.y["test"][keep]), batch_size=256)


def evaluate_classifier(model, splits: DigitSplits, removed: int | None, seed: int) -> dict[str, float]:
    loaders = {name: splits.loader(name, 256) for name in ("forget", "retain", "test")}
    results = {f"acc_{k}": v for k, v in ev.accuracies(model, loaders).items()}
    results["acc_test_other"] = ev.accuracy(model, _other_classes_test(splits, removed))
    results.update(ev.membership_inference(model, loaders["forget"], loaders["retain"], loaders["test"], seed=seed))
    return results


def evaluate_vae(model, classifier, splits: DigitSplits, removed: int | None, samples: int, seed: int) -> dict:
    generated = model.sample(samples, torch.Generator().manual_seed(seed))
    real = torch.cat([splits.x["val"], splits.x["test"]])
    labels = torch.cat([splits.y["val"], splits.y["test"]])
    if removed is not None:
        real = real[labels != removed]
    torch.manual_seed(seed)
    with torch.no_grad():
        results = {
            "elbo_forget": float(-model.negative_elbo(splits.x["forget"]).mean()),
            "elbo_retain": float(-model.negative_elbo(splits.x["retain"]).mean()),
        }
    results["frechet"] = ev.sample_quality(classifier.features, generated, real)
    if removed is not None:
        results["feature_ratio"] = ev.feature_ratio(classifier, generated, removed)
    return results


def _reference_vector_algebra(g_f, g_r):
    """The same projection as public surgery code computes it: flatten, two .item() reads, unflatten.
    Out of place, so the timed repeats leave the method's captured gradients as they were."""
    flat_u = flatten_reference.projected(g_f, g_r, fu.ops.DEFAULT_EPS)
    return list(torch.split(flat_u, [s.numel() for s in g_f]))


def _reference_algebra_seconds(method) -> float:
    """Median time of the reference projection on the method's last captured gradients."""
    g_f, g_r = method.stash["forget"], method.stash["retain0"]
    return median_seconds(lambda: _reference_vector_algebra(g_f, g_r), repeats=21)


def unlearn_one(name, original, splits, task, config, removed, classifier=None) -> tuple[dict, torch.nn.Module]:
    model = copy.deepcopy(original)
    torch.manual_seed(config.seed)
    method, run = RECIPES[name](model, splits, task, config.preset == "quick", config.seed)
    method.timer = PhaseTimer()
    start = time.perf_counter()
    history = run()
    seconds = time.perf_counter() - start
    steps = len(history)
    cost = {"seconds": seconds, "steps": steps, **{f"{k}_ms": 1e3 * v for k, v in method.timer.per_step(steps).items()}}
    if name.startswith("GradientSurgery") and "vector_algebra_ms" in cost:
        cost["reference_vector_algebra_ms"] = 1e3 * _reference_algebra_seconds(method)
    if task.kind == "classifier":
        metrics = evaluate_classifier(model, splits, removed, config.seed)
    else:
        metrics = evaluate_vae(model, classifier, splits, removed, config.settings["samples"], config.seed)
    return {**metrics, "cost": cost}, model


def run_forget_set(spec: str, config: DemoConfig, console) -> dict:
    kind, value = parse_forget(spec)
    removed = value if kind == "class" else None
    splits = digit_splits(spec, seed=config.seed)
    settings = config.settings
    results: dict = {"forget": spec, "sizes": {k: len(v) for k, v in splits.y.items()}}

    console.log(f"[{spec}] training the original and the retrained classifier")
    make_classifier = lambda: seeded(Classifier, config.seed)  # noqa: E731
    train_loader, retain_loader = (splits.loader(n, 64, shuffle=True, seed=config.seed) for n in ("train", "retain"))
    original = train_model(
        make_classifier(), train_loader, settings["classifier_epochs"], methods.cross_entropy, config.seed
    )
    retrained = train_model(
        make_classifier(), retain_loader, settings["classifier_epochs"], methods.cross_entropy, config.seed
    )
    classifier_rows = {
        "Original": evaluate_classifier(original, splits, removed, config.seed),
        "Retrain": evaluate_classifier(retrained, splits, removed, config.seed),
    }
    for name in _progress(config.methods, f"[{spec}] classifier", config.progress):
        classifier_rows[name], _ = unlearn_one(name, original, splits, classifier_task(), config, removed)
    results["classifier"] = classifier_rows

    if removed is None:
        return results  # the generative metrics are about a removed class
    console.log(f"[{spec}] training the original and the retrained VAE")
    make_vae = lambda: seeded(VAE, config.seed)  # noqa: E731
    vae = train_model(make_vae(), train_loader, settings["vae_epochs"], vae_loss, config.seed)
    vae_retrained = train_model(make_vae(), retain_loader, settings["vae_epochs"], vae_loss, config.seed)
    vae_rows = {
        "Original": evaluate_vae(vae, original, splits, removed, settings["samples"], config.seed),
        "Retrain": evaluate_vae(vae_retrained, original, splits, removed, settings["samples"], config.seed),
    }
    samples = {"Original": vae.sample(64, torch.Generator().manual_seed(7))}
    samples["Retrain"] = vae_retrained.sample(64, torch.Generator().manual_seed(7))
    vae_methods = [m for m in config.methods if m not in NEEDS_LABELS]
    for name in _progress(vae_methods, f"[{spec}] VAE", config.progress):
        vae_rows[name], model = unlearn_one(name, vae, splits, vae_task(), config, removed, classifier=original)
        samples[name] = model.sample(64, torch.Generator().manual_seed(7))
    results["vae"] = vae_rows
    results["vae_samples"] = samples
    return results


def _progress(items, description: str, enabled: bool):
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=description)


def environment() -> dict:
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fastunlearn": fu.__version__,
        "threads": torch.get_num_threads(),
        "backends": fu.backends(),
    }


def run_demo(config: DemoConfig) -> dict:
    """Runs the demo and writes results.json, report.md and the figures into ``config.out``."""
    from rich.console import Console

    console = Console(quiet=not config.progress)
    start = time.perf_counter()
    runs = [run_forget_set(spec, config, console) for spec in config.forgets]
    summary = {
        "config": {**asdict(config), "out": str(config.out)},
        "environment": environment(),
        "seconds": time.perf_counter() - start,
        "runs": [{k: v for k, v in run.items() if k != "vae_samples"} for run in runs],
    }
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "results.json").write_text(json.dumps(summary, indent=2))
    figures = report.figures(runs, config.out)
    (config.out / "report.md").write_text(report.markdown(summary, figures))
    report.print_tables(summary, _table_console())
    return summary


def _table_console():
    """A console for the result tables: the terminal's width, or room for every column when the
    output is a file or a pipe (rich would otherwise cut the tables to 80 columns); ``COLUMNS``
    sets the width either way."""
    from rich.console import Console

    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console()
    return Console(width=200)
