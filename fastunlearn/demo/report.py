"""The demo's outputs: terminal tables, report.md and PNG figures."""

from __future__ import annotations

from pathlib import Path

import torch

CLASSIFIER_COLUMNS = [
    ("acc_forget", "forget acc"),
    ("acc_retain", "retain acc"),
    ("acc_test", "test acc"),
    ("acc_test_other", "test acc, other classes"),
    ("mia_loss", "MIA-L"),
    ("mia_entropy", "MIA-E"),
    ("mia_efficacy", "MIA efficacy"),
]
VAE_COLUMNS = [
    ("feature_ratio", "feature ratio"),
    ("frechet", "Fréchet dist."),
    ("elbo_forget", "ELBO forget"),
    ("elbo_retain", "ELBO retain"),
]
COST_COLUMNS = [
    ("seconds", "run s"),
    ("steps", "steps"),
    ("forward_forget_ms", "fwd forget ms/step"),
    ("backward_forget_ms", "bwd forget ms/step"),
    ("forward_retain_ms", "fwd retain ms/step"),
    ("backward_retain_ms", "bwd retain ms/step"),
    ("vector_algebra_ms", "vector algebra ms/step"),
    ("optimizer_ms", "optimizer ms/step"),
    ("reference_vector_algebra_ms", "reference algebra ms/step"),
]


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def table_rows(rows: dict, columns, retrain_gap: bool = False) -> list[list[str]]:
    out = []
    retrain = rows.get("Retrain", {})
    for name, metrics in rows.items():
        cells = [name]
        for key, _ in columns:
            value = metrics.get(key, metrics.get("cost", {}).get(key))
            cell = _cell(value)
            if retrain_gap and value is not None and key in retrain and name not in ("Retrain",):
                cell += f" ({value - retrain[key]:+.3f})"
            cells.append(cell)
        out.append(cells)
    return out


def _tables(run: dict):
    spec = run["forget"]
    yield f"Classifier, forget {spec} (gap to Retrain in brackets)", CLASSIFIER_COLUMNS, run["classifier"], True
    if "vae" in run:
        yield f"VAE, forget {spec}", VAE_COLUMNS, run["vae"], False
    cost_rows = {k: v for k, v in run["classifier"].items() if "cost" in v}
    yield f"Cost per method, classifier, forget {spec}", COST_COLUMNS, cost_rows, False


def print_tables(summary: dict, console) -> None:
    from rich.table import Table

    for run in summary["runs"]:
        for title, columns, rows, gaps in _tables(run):
            table = Table(title=title)
            table.add_column("method")
            for _, header in columns:
                table.add_column(header, justify="right")
            for cells in table_rows(rows, columns, gaps):
                table.add_row(*cells)
            console.print(table)
    console.print(f"demo finished in {summary['seconds']:.0f} s")


def markdown(summary: dict, figures: list[Path]) -> str:
    env = summary["environment"]
    lines = [
        "# fastunlearn demo report",
        "",
        f"Preset `{summary['config']['preset']}`, seed {summary['config']['seed']}; torch {env['torch']}, "
        f"fastunlearn {env['fastunlearn']}, {env['threads']} threads; {summary['seconds']:.0f} s in all.",
        "",
        "Accuracies are fractions; MIA-L/MIA-E are attack accuracies (0.5 = cannot tell forget from test; "
        "compare with Retrain); MIA efficacy is the share of forget samples an SVC attack calls non-members. "
        "The Fréchet distance uses the original classifier's 64-d features against held-out real digits of "
        "the other classes.",
    ]
    for run in summary["runs"]:
        for title, columns, rows, gaps in _tables(run):
            lines += ["", f"## {title}", "", "| method | " + " | ".join(h for _, h in columns) + " |"]
            lines.append("|---" * (len(columns) + 1) + "|")
            lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows, columns, gaps)]
    lines += ["", "## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures]
    return "\n".join(lines) + "\n"


def figures(runs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for run in runs:
        tag = run["forget"].replace(":", "_")
        paths.append(_metric_bars(plt, run, out / f"classifier_{tag}.png"))
        if "vae_samples" in run:
            paths.append(_sample_grids(plt, run, out / f"vae_samples_{tag}.png"))
    return paths


def _metric_bars(plt, run: dict, path: Path) -> Path:
    rows = run["classifier"]
    names = [n for n in rows if n != "Retrain"]
    keys = [("acc_forget", "forget acc"), ("acc_test", "test acc"), ("mia_loss", "MIA-L")]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.5), sharey=True)
    for ax, (key, label) in zip(axes, keys):
        ax.barh(names, [rows[n][key] for n in names], color="tab:blue")
        ax.axvline(rows["Retrain"][key], color="tab:red", linestyle="--", label="Retrain")
        ax.set_title(label)
        ax.set_xlim(0, 1)
    axes[0].invert_yaxis()
    axes[-1].legend(loc="lower right")
    fig.suptitle(f"Classifier, forget {run['forget']}: each method against the retrained model")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sample_grids(plt, run: dict, path: Path) -> Path:
    samples = run["vae_samples"]
    cols = 5
    rows = -(-len(samples) // cols)
    # constrained layout keeps each row's titles clear of the samples above them
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.2 * rows + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat[len(samples) :]:
        ax.axis("off")
    for ax, (name, images) in zip(axes.flat, samples.items()):
        # 8 x 8 tiles with a 1-pixel blank border each, so neighbouring digits stay apart
        tiles = torch.nn.functional.pad(images[:64].reshape(64, 8, 8), (1, 1, 1, 1))
        grid = tiles.reshape(8, 8, 10, 10).permute(0, 2, 1, 3).reshape(80, 80)
        ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1)
        ratio = run["vae"][name].get("feature_ratio")
        ax.set_title(f"{name}\nratio {ratio:.3f}" if ratio is not None else name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"VAE samples (64 each), forget {run['forget']}: ratio = share classified as the removed class")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
