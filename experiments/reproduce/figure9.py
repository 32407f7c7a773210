"""Figure 9 analogue: robustness of LA(SGD) to k and α (final accuracy and training loss).

The paper's Figure 9 shows CIFAR-100 train loss and final test accuracy of
Lookahead over a grid of k and α. Here: the small CNN (`models.SmallCNN`),
LA(SGD) on every (k, α) of the grid, and plain SGD at the same learning rate as
the reference. Training loss is the full training set's mean cross-entropy at
the end, at the slow weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import data, optim, report, training

NAME = "figure9"
TITLE = "Figure 9 analogue: LA(SGD) over a grid of k and α"


@dataclass(frozen=True)
class Config:
    dataset: str
    train_size: int
    channels: tuple[int, int]
    batch_size: int
    epochs: int
    lr: float
    ks: tuple[int, ...]
    alphas: tuple[float, ...]
    seeds: tuple[int, ...]


SIZES = {
    "quick": Config("digits", 1200, (16, 32), 32, 8, 0.3, (5, 10), (0.5, 0.8), (0, 1)),
    "reduced": Config("digits", 1200, (16, 32), 32, 15, 0.3, (2, 5, 10, 20), (0.2, 0.5, 0.8), (0, 1, 2)),
    "full": Config("mnist5k", 4000, (8, 16), 64, 10, 0.3, (2, 5, 10, 20), (0.2, 0.5, 0.8), (0, 1, 2)),
}


def _record(cell: list[training.ClassifierRun]) -> dict[str, Any]:
    acc = report.summarize(r.val_accuracy for r in cell)
    loss = report.summarize(r.train_loss for r in cell)
    return {"acc_mean": acc.mean, "acc_std": acc.std, "loss_mean": loss.mean, "loss_std": loss.std,
            "n": acc.n, "diverged": sum(r.diverged for r in cell)}


def run(config: Config, progress: Callable[[int], Any]) -> dict[str, Any]:
    images = data.load_images(config.dataset, config.train_size)
    bar = progress((len(config.ks) * len(config.alphas) + 1) * len(config.seeds))
    runs, grid = [], []

    def train(spec: optim.OptimizerSpec, k: int, alpha: float) -> list[training.ClassifierRun]:
        cell = []
        for seed in config.seeds:
            bar.set_postfix_str(f"{spec.label} k {k} alpha {alpha:g} seed {seed}")
            result = training.train_classifier(
                images, spec, config.lr, epochs=config.epochs, batch_size=config.batch_size,
                seed=seed, channels=config.channels, k=k, alpha=alpha,
            )
            cell.append(result)
            runs.append({"optimizer": spec.key, "k": k if spec.lookahead else None,
                         "alpha": alpha if spec.lookahead else None, "seed": seed, **result.to_dict()})
            bar.update(1)
        return cell

    baseline = _record(train(optim.SGD, 1, 1.0))
    for k in config.ks:
        for alpha in config.alphas:
            grid.append({"k": k, "alpha": alpha, **_record(train(optim.LA_SGD, k, alpha))})
    return {"runs": runs, "grid": grid, "baseline": baseline}


def markdown(results: dict[str, Any]) -> str:
    config = results["config"]
    headers = ["k \\ α"] + [f"α = {a:g}" for a in config["alphas"]]

    def text(entry: dict[str, Any]) -> str:
        acc = report.stored_mean_pm_std(entry, 100.0, prefix="acc_")
        loss = report.stored_mean_pm_std(entry, 1.0, 4, prefix="loss_")
        mark = report.diverged_mark(entry["diverged"], len(config["seeds"]))
        return f"{acc}{mark}<br>loss {loss}"

    rows = []
    for k in config["ks"]:
        entries = {e["alpha"]: e for e in results["grid"] if e["k"] == k}
        rows.append([f"k = {k}"] + [text(entries[a]) for a in config["alphas"]])
    rows.append(["SGD (no Lookahead)", text(results["baseline"])] + [""] * (len(config["alphas"]) - 1))
    dataset = data.DATASET_LABELS[config["dataset"]]
    note = (
        f"Small CNN on {dataset}, {config['epochs']} epochs at constant learning rate {config['lr']:g}; "
        f"each cell: final validation accuracy (%) and final training loss (full training set, slow "
        f"weights), mean ± std over seeds {config['seeds']}. The paper's Figure 9 (CIFAR-100) is a plot; "
        "our copy has no numbers for it.\n"
    )
    return f"### {TITLE} ({results['size']} size)\n\n{note}\n" + report.markdown_table(headers, rows)


def plot(results: dict[str, Any], path: Path) -> None:
    import numpy as np

    config = results["config"]
    ks, alphas = config["ks"], config["alphas"]
    acc = np.full((len(ks), len(alphas)), np.nan)
    loss = np.full((len(ks), len(alphas)), np.nan)
    for e in results["grid"]:
        i, j = ks.index(e["k"]), alphas.index(e["alpha"])
        acc[i, j] = 100.0 * e["acc_mean"]
        loss[i, j] = np.nan if e["loss_mean"] is None else e["loss_mean"]
    figure, axes = report.new_figure(1, 2, (11.0, 4.0))
    base = results["baseline"]
    for ax, values, title, fmt, cmap in (
        (axes[0, 0], acc, f"final validation accuracy (%)\nSGD alone: {100 * base['acc_mean']:.2f}",
         "{:.2f}", "viridis"),
        (axes[0, 1], loss, f"final training loss\nSGD alone: {_number(base['loss_mean'])}",
         "{:.4f}", "viridis_r"),
    ):
        limits = {}
        if values is acc:  # a colour range of at least 5 points, so noise does not look like signal
            high = max(float(np.nanmax(values)), 100.0 * base["acc_mean"])
            low = min(float(np.nanmin(values)), 100.0 * base["acc_mean"], high - 5.0)
            limits = {"vmin": low, "vmax": high}
        image = ax.imshow(values, cmap=cmap, aspect="auto", **limits)
        figure.colorbar(image, ax=ax)
        ax.set_xticks(range(len(alphas)), [f"α={a:g}" for a in alphas])
        ax.set_yticks(range(len(ks)), [f"k={k}" for k in ks])
        for i in range(len(ks)):
            for j in range(len(alphas)):
                ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", color="w",
                        fontsize=9, path_effects=_outline())
        ax.set_title(title, fontsize=10)
    dataset = data.DATASET_LABELS[config["dataset"]]
    figure.suptitle(
        f"Figure 9 analogue: LA(SGD), small CNN on {dataset}, lr {config['lr']:g}, mean over seeds"
    )
    report.save_figure(figure, path)


def _number(value: float | None) -> str:
    return "not finite" if value is None else f"{value:.4f}"


def _outline() -> list[Any]:
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=2, foreground="black")]
