"""Learning-rate robustness: final validation accuracy against learning rate, SGD and LA(SGD).

The paper reports that Lookahead trains its inner optimizer at higher learning
rates with little tuning (Section 5 and Figure 9's discussion). Here: the small
CNN (`models.SmallCNN`), plain SGD and Lookahead(SGD) (k = 5, α = 0.5), a
geometric grid of constant learning rates, several seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import data, optim, report, training

NAME = "lr_sweep"
TITLE = "Learning-rate robustness: SGD and LA(SGD)"


@dataclass(frozen=True)
class Config:
    dataset: str
    train_size: int
    channels: tuple[int, int]
    batch_size: int
    epochs: int
    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]
    optimizers: tuple[str, ...] = ("sgd", "la_sgd")
    k: int = 5
    alpha: float = 0.5


# The quick size is the one whose claims the tests check (`claims.lr_sweep`): 24 seeds,
# because at its top rate single runs are chaotic and only seed statistics hold on every
# machine; 10 epochs and rate 1.0 as Table 1's high digits cell, whose seeds 0-2 it repeats.
CLAIM_SEEDS = tuple(range(24))
SIZES = {
    "quick": Config("digits", 1200, (16, 32), 32, 10, (0.3, 1.0), CLAIM_SEEDS),
    "reduced": Config("digits", 1200, (16, 32), 32, 15, (0.1, 0.3, 0.5, 0.7, 1.0, 1.5), (0, 1, 2)),
    "full": Config(
        "mnist5k", 4000, (8, 16), 64, 10, (0.05, 0.1, 0.3, 0.5, 0.7, 1.0), (0, 1, 2)
    ),
}


def run(config: Config, progress: Callable[[int], Any]) -> dict[str, Any]:
    images = data.load_images(config.dataset, config.train_size)
    bar = progress(len(config.learning_rates) * len(config.optimizers) * len(config.seeds))
    runs, summary = [], []
    for lr in config.learning_rates:
        for key in config.optimizers:
            spec = optim.BY_KEY[key]
            cell = []
            for seed in config.seeds:
                bar.set_postfix_str(f"lr {lr:g} {spec.label} seed {seed}")
                result = training.train_classifier(
                    images, spec, lr, epochs=config.epochs, batch_size=config.batch_size,
                    seed=seed, channels=config.channels, k=config.k, alpha=config.alpha,
                )
                cell.append(result)
                runs.append({"optimizer": key, "lr": lr, "seed": seed, **result.to_dict()})
                bar.update(1)
            acc = report.summarize(r.val_accuracy for r in cell)
            summary.append({"optimizer": key, "lr": lr, **report.summary_fields(acc),
                            "diverged": sum(r.diverged for r in cell)})
    return {"runs": runs, "summary": summary}


def cell(results: dict[str, Any], optimizer: str, lr: float) -> dict[str, Any]:
    for entry in results["summary"]:
        if entry["optimizer"] == optimizer and entry["lr"] == lr:
            return entry
    raise KeyError((optimizer, lr))


def markdown(results: dict[str, Any]) -> str:
    config = results["config"]
    headers = ["learning rate"] + [optim.BY_KEY[key].label for key in config["optimizers"]]
    rows = []
    for lr in config["learning_rates"]:
        row = [f"{lr:g}"]
        for key in config["optimizers"]:
            entry = cell(results, key, lr)
            row.append(report.stored_mean_pm_std(entry, 100.0)
                       + report.diverged_mark(entry["diverged"], len(config["seeds"])))
        rows.append(row)
    dataset = data.DATASET_LABELS[config["dataset"]]
    note = (
        f"Final validation accuracy (%) of the small CNN on {dataset} after {config['epochs']} "
        f"epochs at a constant learning rate, mean ± std over seeds {config['seeds']}; "
        f"† = diverged runs (counted). LA(SGD): k = {config['k']}, α = {config['alpha']}, slow weights. "
        "The paper gives no numbers for this sweep.\n"
    )
    return f"### {TITLE} ({results['size']} size)\n\n{note}\n" + report.markdown_table(headers, rows)


def plot(results: dict[str, Any], path: Path) -> None:
    config = results["config"]
    figure, axes = report.new_figure(1, 1, (6.0, 4.0))
    ax = axes[0, 0]
    for key in config["optimizers"]:
        spec = optim.BY_KEY[key]
        entries = [cell(results, key, lr) for lr in config["learning_rates"]]
        lrs = [e["lr"] for e in entries]
        means = [100.0 * e["mean"] for e in entries]
        stds = [100.0 * e["std"] for e in entries]
        color = "tab:red" if spec.lookahead else "tab:blue"
        ax.errorbar(lrs, means, yerr=stds, marker="o", capsize=3, label=spec.label, color=color,
                    linestyle="-" if spec.lookahead else "--")
        seeds = [r for r in results["runs"] if r["optimizer"] == key]
        ax.scatter([r["lr"] for r in seeds], [100.0 * r["val_accuracy"] for r in seeds],
                   s=10, alpha=0.4, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (constant)")
    ax.set_ylabel("final validation accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    dataset = data.DATASET_LABELS[config["dataset"]]
    ax.set_title(f"LR sweep, small CNN on {dataset}: mean ± std, dots = seeds")
    report.save_figure(figure, path)
