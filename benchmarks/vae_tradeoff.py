"""Forgetting against sample quality on the digits VAE (class 3): each seed method's main knob swept.

The demo's VAE and classifier are trained once (the demo's settings, seed 0); each point is one
unlearning run from that VAE, measured as the demo measures it: the feature ratio (share of 2,000
samples the classifier calls a 3) and the Fréchet distance in the classifier's features to held-out
real digits of the other classes. Knobs:

* GradientSurgery: AdamW steps (5, 10, 20, 40), and with the descent term its weight (0.5, 1, 2);
* NablaTau: α₀ (0.05, 0.1, 0.2, 0.4; the demo uses 5/3 x the forget fraction);
* DecoupleRetain: λ (20, 40, 60, 80), with plain and with projected retention (the demo's
  ``DecoupleRetain`` and ``DecoupleRetain/projected`` settings otherwise).

Writes a JSON of the points and a plot with the original and the retrained model marked and the
target region (ratio <= 2 %, Fréchet <= 1.5x the original's) shaded.

    python benchmarks/vae_tradeoff.py [--out benchmarks/results/vae-tradeoff]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from fastunlearn import methods, optim
from fastunlearn.demo import recipes
from fastunlearn.demo import run as demo
from fastunlearn.demo.data import digit_splits
from fastunlearn.demo.models import VAE, Classifier, vae_loss

SEED, SAMPLES, REMOVED = 0, 2000, 3


def sweeps(splits, task):
    forget = lambda: splits.loader("forget", recipes.BATCH, shuffle=True, seed=SEED)  # noqa: E731
    retain = lambda: splits.loader("retain", recipes.BATCH, shuffle=True, seed=SEED + 1)  # noqa: E731

    def surgery(steps, retain_weight=0.0):
        def run(model):
            method = methods.GradientSurgery(model, optimizer=recipes.adamw(model), loss_fn=vae_loss,
                                             retain_weight=retain_weight)  # fmt: skip
            method.run(forget(), retain(), steps=steps)

        return run

    def nabla_tau(alpha0):
        def run(model):
            method = methods.NablaTau(model, splits.loader("val", recipes.BATCH), alpha0=alpha0, loss_fn=vae_loss)
            method.run(forget(), retain())

        return run

    def decouple(threshold, retention):
        def run(model):
            projected = retention == "projected"
            method = methods.DecoupleRetain(
                model, threshold=threshold, max_steps=100, clip_norm=1.0, lr=0.1, retention=retention,
                retain_optimizer=optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0) if projected else None,
                retain_lr=1e-2, output_fn=task.output_fn, loss_fn=vae_loss,
            )  # fmt: skip
            method.run(forget(), splits.loader("retain", 64, shuffle=True, seed=SEED + 1),
                       retain_epochs=5 if projected else 2)  # fmt: skip

        return run

    return {
        "GradientSurgery (steps)": [(s, surgery(s)) for s in (5, 10, 20, 40)],
        "GradientSurgery + descent (weight)": [(w, surgery(20, w)) for w in (0.5, 1.0, 2.0)],
        "NablaTau (alpha0)": [(a, nabla_tau(a)) for a in (0.05, 0.1, 0.2, 0.4)],
        "DecoupleRetain, plain (lambda)": [(t, decouple(t, "plain")) for t in (20.0, 40.0, 60.0, 80.0)],
        "DecoupleRetain, projected (lambda)": [(t, decouple(t, "projected")) for t in (20.0, 40.0, 60.0, 80.0)],
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    original, retrain = result["Original"], result["Retrain"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.axhline(1.5 * original["frechet"], color="tab:green", linestyle=":", label="1.5x original Fréchet, 2 % of 3s")
    ax.axvline(2.0, color="tab:green", linestyle=":")
    for name, points in result["sweeps"].items():
        xs = [100 * p["feature_ratio"] for p in points]
        ys = [p["frechet"] for p in points]
        ax.plot(xs, ys, marker="o", label=name)
        for p, x, y in zip(points, xs, ys):
            ax.annotate(f"{p['knob']:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.scatter([100 * original["feature_ratio"]], [original["frechet"]], marker="*", s=150, color="k", label="Original")
    ax.scatter([100 * retrain["feature_ratio"]], [retrain["frechet"]], marker="P", s=120, color="tab:red",
               label="Retrain")  # fmt: skip
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("log")
    bottom = ax.get_ylim()[0]
    ax.fill_between([0.0, 2.0], bottom, 1.5 * original["frechet"], color="tab:green", alpha=0.08, label="target region")
    ax.set_ylim(bottom=bottom)
    ax.set_xlabel("feature ratio: samples the classifier calls a 3 (%)")
    ax.set_ylabel("Fréchet distance (classifier features)")
    ax.set_title("Digits VAE, forget class 3: forgetting against sample quality", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/vae-tradeoff", help="path prefix of the .json and .png")
    args = parser.parse_args()
    start = time.perf_counter()
    splits = digit_splits(f"class:{REMOVED}", seed=SEED)
    settings = demo.PRESETS["full"]
    train, retain = (splits.loader(n, 64, shuffle=True, seed=SEED) for n in ("train", "retain"))
    classifier = demo.train_model(demo.seeded(Classifier, SEED), train, settings["classifier_epochs"],
                             methods.cross_entropy, SEED)  # fmt: skip
    vae = demo.train_model(demo.seeded(VAE, SEED), train, settings["vae_epochs"], vae_loss, SEED)
    retrained = demo.train_model(demo.seeded(VAE, SEED), retain, settings["vae_epochs"], vae_loss, SEED)

    def measure(model) -> dict:
        return demo.evaluate_vae(model, classifier, splits, REMOVED, SAMPLES, SEED)

    result = {"Original": measure(vae), "Retrain": measure(retrained), "sweeps": {}}
    for name, points in sweeps(splits, demo.vae_task()).items():
        result["sweeps"][name] = []
        for knob, run in points:
            model = copy.deepcopy(vae)
            torch.manual_seed(SEED)
            run(model)
            result["sweeps"][name].append({"knob": knob, **measure(model)})
            row = result["sweeps"][name][-1]
            print(f"{name} {knob:g}: ratio {row['feature_ratio']:.3f} Fréchet {row['frechet']:.1f}", flush=True)
    result["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out}.json and {out}.png in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
