"""Table 1 analogue: final validation accuracy of a small CNN, five optimizers, two learning rates.

The paper's Table 1 is CIFAR-10/100; this is a small CNN (`models.SmallCNN`)
on the 8×8 digits and on MNIST-5k (real offline data, see `data`), with SGD,
Polyak (heavy-ball) momentum, Adam, LA(SGD) and LA(Adam), at a standard
learning rate and at a high one where plain SGD is unstable. Constant learning
rates, no augmentation, no weight decay. Lookahead: k = 5, α = 0.5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import data, optim, paper, report, training
from .optim import LearningRates

NAME = "table1"
TITLE = "Table 1 analogue: final validation accuracy"


@dataclass(frozen=True)
class ImageSetup:
    """One dataset's training setup."""

    dataset: str
    train_size: int
    channels: tuple[int, int]
    batch_size: int
    epochs: int
    lr_settings: tuple[LearningRates, ...]


DIGITS_LRS = (
    LearningRates("standard", sgd=0.1, polyak=0.01, adam=1e-3),
    LearningRates("high", sgd=1.0, polyak=0.1, adam=3e-2),
)
MNIST_LRS = (
    LearningRates("standard", sgd=0.1, polyak=0.01, adam=1e-3),
    LearningRates("high", sgd=0.7, polyak=0.07, adam=1e-2),
)
DIGITS_FULL = ImageSetup("digits", 1200, (16, 32), 32, 30, DIGITS_LRS)
DIGITS_QUICK = ImageSetup("digits", 1200, (16, 32), 32, 10, DIGITS_LRS)
MNIST_FULL = ImageSetup("mnist5k", 4000, (8, 16), 64, 10, MNIST_LRS)
DIGITS_REDUCED = ImageSetup("digits", 1200, (16, 32), 32, 20, DIGITS_LRS)
MNIST_REDUCED = ImageSetup("mnist5k", 4000, (8, 16), 64, 6, MNIST_LRS)


@dataclass(frozen=True)
class Config:
    setups: tuple[ImageSetup, ...]
    seeds: tuple[int, ...]
    optimizers: tuple[str, ...] = tuple(spec.key for spec in optim.ALL)
    k: int = 5
    alpha: float = 0.5


SIZES = {
    "quick": Config(setups=(DIGITS_QUICK,), seeds=(0, 1, 2)),
    "reduced": Config(setups=(DIGITS_REDUCED, MNIST_REDUCED), seeds=(0, 1, 2, 3, 4)),
    "full": Config(setups=(DIGITS_FULL, MNIST_FULL), seeds=(0, 1, 2, 3, 4)),
}



def run(config: Config, progress: Callable[[int], Any]) -> dict[str, Any]:
    """Train every (dataset, learning-rate setting, optimizer, seed); return runs and summary."""
    bar = progress(
        sum(len(s.lr_settings) for s in config.setups) * len(config.optimizers) * len(config.seeds)
    )
    runs, summary = [], []
    for setup in config.setups:
        images = data.load_images(setup.dataset, setup.train_size)
        for lrs in setup.lr_settings:
            for key in config.optimizers:
                spec = optim.BY_KEY[key]
                lr = lrs.for_inner(spec.inner)
                cell = []
                for seed in config.seeds:
                    bar.set_postfix_str(f"{setup.dataset} {lrs.name} {spec.label} seed {seed}")
                    result = training.train_classifier(
                        images, spec, lr, epochs=setup.epochs, batch_size=setup.batch_size,
                        seed=seed, channels=setup.channels, k=config.k, alpha=config.alpha,
                    )
                    cell.append(result)
                    runs.append(
                        {"dataset": setup.dataset, "lr_setting": lrs.name, "optimizer": key,
                         "lr": lr, "seed": seed, **result.to_dict()}
                    )
                    bar.update(1)
                acc = report.summarize(r.val_accuracy for r in cell)
                summary.append(
                    {"dataset": setup.dataset, "lr_setting": lrs.name, "optimizer": key, "lr": lr,
                     **report.summary_fields(acc), "diverged": sum(r.diverged for r in cell)}
                )
    return {"runs": runs, "summary": summary}


def cell(results: dict[str, Any], dataset: str, lr_setting: str, optimizer: str) -> dict[str, Any]:
    """The summary entry of one table cell."""
    for entry in results["summary"]:
        if (entry["dataset"], entry["lr_setting"], entry["optimizer"]) == (dataset, lr_setting, optimizer):
            return entry
    raise KeyError((dataset, lr_setting, optimizer))


def markdown(results: dict[str, Any]) -> str:
    config = results["config"]
    columns = [
        (setup["dataset"], lrs["name"], lrs) for setup in config["setups"] for lrs in setup["lr_settings"]
    ]
    headers = ["Optimizer", "paper CIFAR-10", "paper CIFAR-100"] + [
        f"{data.DATASET_LABELS[d]}, {name} lr" for d, name, _ in columns
    ]
    rows = []
    for key in config["optimizers"]:
        spec = optim.BY_KEY[key]
        published = paper.TABLE1[key]
        row = [spec.label] + (
            [published["CIFAR-10"], published["CIFAR-100"]] if published else [paper.NOT_IN_COPY] * 2
        )
        for dataset, name, _lrs in columns:
            entry = cell(results, dataset, name, key)
            row.append(report.stored_mean_pm_std(entry, 100.0)
                       + report.diverged_mark(entry["diverged"], len(config["seeds"])))
        rows.append(row)
    lrs = "; ".join(
        f"{data.DATASET_LABELS[d]} {name}: SGD and LA(SGD) {lrs['sgd']:g}, Polyak {lrs['polyak']:g}, "
        f"Adam and LA(Adam) {lrs['adam']:g}" for d, name, lrs in columns
    )
    epochs = ", ".join(f"{data.DATASET_LABELS[s['dataset']]} {s['epochs']}" for s in config["setups"])
    note = (
        f"Final validation accuracy (%), mean ± std over seeds {config['seeds']}; "
        f"constant learning rates ({lrs}); epochs: {epochs}. "
        f"† = runs that diverged (an epoch's mean training loss not finite or above the untrained "
        f"loss; their accuracy is still counted). Lookahead k = {config['k']}, α = {config['alpha']}, "
        "evaluated at the slow weights. The paper's columns are CIFAR-10/100 as printed in our copy; "
        "its LOOKAHEAD row is shown beside LA(SGD).\n"
    )
    return f"### {TITLE} ({results['size']} size)\n\n{note}\n" + report.markdown_table(headers, rows)


def plot(results: dict[str, Any], path: Path) -> None:
    """Validation accuracy per epoch, mean ± std band over seeds, one panel per dataset × lr setting."""
    import numpy as np

    config = results["config"]
    panels = [(s, lrs["name"]) for s in config["setups"] for lrs in s["lr_settings"]]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    figure, axes = report.new_figure(rows, cols, (6.0 * cols, 3.6 * rows))
    for ax, (setup, lr_name) in zip(axes.flat, panels):
        for key in config["optimizers"]:
            spec = optim.BY_KEY[key]
            curves = [
                r["epoch_val_accuracy"] for r in results["runs"]
                if (r["dataset"], r["lr_setting"], r["optimizer"]) == (setup["dataset"], lr_name, key)
            ]
            epochs = setup["epochs"]
            # A run stopped early at NaN keeps its last accuracy for the remaining epochs.
            padded = np.array([c + [c[-1]] * (epochs - len(c)) for c in curves]) * 100.0
            mean, std = padded.mean(axis=0), padded.std(axis=0)
            x = np.arange(1, epochs + 1)
            ax.plot(x, mean, label=spec.label, **optim.line_style(spec))
            ax.fill_between(x, mean - std, mean + std, alpha=0.12, color=optim.COLORS[spec.inner])
        ax.set_title(f"{data.DATASET_LABELS[setup['dataset']]}, {lr_name} lr")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_ylim(*report.accuracy_limits(ax))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    figure.suptitle("Table 1 analogue: small CNN, mean ± std over seeds (not CIFAR)")
    report.save_figure(figure, path)
