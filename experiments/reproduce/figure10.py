"""Figure 10 analogue: accuracy after every one of 60 fast-weight updates, sync points marked.

The paper's Figure 10 plots test accuracy after each of 60 fast-weight updates
of Lookahead: the inner loop tends to lose accuracy and the interpolation
recovers it. Here: the small CNN (`models.SmallCNN`) is first trained with
LA(SGD) for a number of steps (a multiple of k, so the window starts right
after a sync); then for 60 more updates the validation accuracy is measured

* after every inner step, from a step post-hook on the inner optimizer (the
  fast weights θ_{t,i}; for i = k this is just before the sync), and
* after every sync (the new slow weights φ_t, which the fast weights restart from).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import data, optim, report, training

NAME = "figure10"
TITLE = "Figure 10 analogue: accuracy after every fast-weight update"


@dataclass(frozen=True)
class Config:
    dataset: str
    train_size: int
    channels: tuple[int, int]
    batch_size: int
    lr: float
    warmup_steps: int  # LA(SGD) steps before the recorded window; a multiple of k
    updates: int
    k: int
    alpha: float
    seeds: tuple[int, ...]


SIZES = {
    "quick": Config("digits", 1200, (16, 32), 32, 0.5, 200, 60, 5, 0.5, (0, 1, 2)),
    "reduced": Config("mnist5k", 4000, (8, 16), 64, 0.3, 310, 60, 5, 0.5, (0, 1, 2, 3, 4)),
    "full": Config("mnist5k", 4000, (8, 16), 64, 0.3, 620, 60, 5, 0.5, (0, 1, 2, 3, 4)),
}


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[torch.Tensor]:
    while True:
        yield from training.minibatches(n, batch_size, rng)


def record_window(images: data.ImageSplit, config: Config, seed: int) -> dict[str, Any]:
    """One seed: warm up, then the accuracy after every update of the window."""
    if config.warmup_steps % config.k or config.updates % config.k:
        raise ValueError("warmup_steps and updates must be multiples of k")
    model = training.new_classifier(images, config.channels, seed)
    lookahead = optim.build(optim.LA_SGD, model.parameters(), config.lr, k=config.k, alpha=config.alpha)
    batches = _batches(len(images.x_train), config.batch_size, np.random.default_rng([seed, 1]))

    def step() -> None:
        batch = next(batches)
        lookahead.zero_grad()
        nn.functional.cross_entropy(model(images.x_train[batch]), images.y_train[batch]).backward()
        lookahead.step()

    model.train()
    for _ in range(config.warmup_steps):
        step()

    def accuracy() -> float:
        return training.evaluate_classifier(model, images.x_val, images.y_val)[1]

    fast: list[float] = []
    handle = lookahead.optimizer.register_step_post_hook(lambda *_: fast.append(accuracy()))
    start = accuracy()  # φ: the window begins right after a sync
    slow: list[float] = []
    try:
        for update in range(1, config.updates + 1):
            step()
            if update % config.k == 0:
                slow.append(accuracy())
    finally:
        handle.remove()
    return {"seed": seed, "start": start, "fast": fast, "slow": slow}


def sawtooth_statistics(fast: list[float], slow: list[float], k: int) -> dict[str, float]:
    """Mean accuracy at the syncs (φ_t), just before them (θ_{t,k}) and over all fast points θ_{t,i}."""
    fast_array = np.asarray(fast).reshape(len(slow), k)
    return {
        "sync": float(np.mean(slow)),
        "before_sync": float(fast_array[:, -1].mean()),
        "fast": float(fast_array.mean()),
    }


def run(config: Config, progress: Callable[[int], Any]) -> dict[str, Any]:
    images = data.load_images(config.dataset, config.train_size)
    bar = progress(len(config.seeds))
    runs = []
    for seed in config.seeds:
        bar.set_postfix_str(f"seed {seed}")
        window = record_window(images, config, seed)
        window["statistics"] = sawtooth_statistics(window["fast"], window["slow"], config.k)
        runs.append(window)
        bar.update(1)
    summary = {}
    for key in ("sync", "before_sync", "fast"):
        s = report.summarize(r["statistics"][key] for r in runs)
        summary[key] = report.summary_fields(s)
    gap = report.summarize(r["statistics"]["sync"] - r["statistics"]["before_sync"] for r in runs)
    summary["sync_minus_before_sync"] = report.summary_fields(gap)
    summary["seeds_with_sync_above_before_sync"] = sum(
        r["statistics"]["sync"] > r["statistics"]["before_sync"] for r in runs
    )
    return {"runs": runs, "summary": summary}


def markdown(results: dict[str, Any]) -> str:
    config, summary = results["config"], results["summary"]

    def pct(key: str) -> str:
        return report.stored_mean_pm_std(summary[key], 100.0)

    rows = [
        ["slow weights φ_t, right after each sync", pct("sync")],
        ["fast weights θ_{t,k}, just before each sync", pct("before_sync")],
        ["all fast weights θ_{t,1..k}", pct("fast")],
        ["sync minus just-before-sync (points)", pct("sync_minus_before_sync")],
        ["seeds whose sync mean beats their before-sync mean",
         f"{summary['seeds_with_sync_above_before_sync']}/{len(config['seeds'])}"],
    ]
    dataset = data.DATASET_LABELS[config["dataset"]]
    note = (
        f"Small CNN on {dataset}: LA(SGD) (lr {config['lr']:g}, k = {config['k']}, α = {config['alpha']:g}) "
        f"trained for {config['warmup_steps']} steps, then validation accuracy (%) after each of "
        f"{config['updates']} updates; each seed's mean over the {config['updates'] // config['k']} cycles, "
        f"then mean ± std over seeds {config['seeds']}. The paper's Figure 10 is a plot; our copy has no "
        "numbers for it.\n"
    )
    return (
        f"### {TITLE} ({results['size']} size)\n\n{note}\n"
        + report.markdown_table(["validation accuracy (%)", "mean ± std over seeds"], rows)
    )


def plot(results: dict[str, Any], path: Path) -> None:
    config = results["config"]
    k, updates = config["k"], config["updates"]
    fast = 100.0 * np.array([r["fast"] for r in results["runs"]])
    slow = 100.0 * np.array([r["slow"] for r in results["runs"]])
    start = 100.0 * np.array([r["start"] for r in results["runs"]])
    # The trajectory as the model sees it: after update j the fast weights, except that at a
    # sync the weights jump from θ_{t,k} to φ_t at the same x (a vertical segment).
    xs, ys = [0.0], [start.mean()]
    for j in range(1, updates + 1):
        xs.append(j)
        ys.append(fast[:, j - 1].mean())
        if j % k == 0:
            xs.append(j)
            ys.append(slow[:, j // k - 1].mean())
    figure, axes = report.new_figure(1, 1, (8.0, 4.0))
    ax = axes[0, 0]
    ax.plot(xs, ys, "-", color="tab:blue", lw=1.2, label="mean over seeds")
    ax.fill_between(range(1, updates + 1), fast.mean(0) - fast.std(0), fast.mean(0) + fast.std(0),
                    color="tab:blue", alpha=0.12, label="fast weights ± std")
    sync_x = np.arange(k, updates + 1, k)
    ax.plot(sync_x, slow.mean(0), "o", color="tab:red", ms=5, label=r"after sync (slow weights $\phi_t$)")
    ax.plot(sync_x, fast[:, k - 1 :: k].mean(0), "v", color="tab:gray", ms=5,
            label=r"just before sync ($\theta_{t,k}$)")
    for x in sync_x:
        ax.axvline(x, color="tab:red", lw=0.5, alpha=0.3)
    ax.set_xlabel("fast-weight update")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    dataset = data.DATASET_LABELS[config["dataset"]]
    ax.set_title(f"Figure 10 analogue: LA(SGD) on {dataset}, lr {config['lr']:g}, k={k}, "
                 f"α={config['alpha']:g}, "
                 f"{len(results['runs'])} seeds")
    report.save_figure(figure, path)
