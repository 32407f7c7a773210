"""Local SGD, Lookahead averaging and DiLoCo against DDP, 4 workers, at equal samples.

``python experiments/local_sgd.py [--size full|quick] [--out-json ...] [--png ...]``
(the Distributed page's table and figure; ``full`` takes about 10 minutes per task
on one CPU core, ``quick`` a few seconds; ``--tasks mnist5k --out-json a.json`` and
``--tasks shakespeare --out-json b.json`` in two processes, then
``--from-json a.json b.json``, use two cores).

Four workers, simulated in one process (4 model copies, each with its own
inner optimizer and its own quarter of every global batch; the same float32
arithmetic as ``Lookahead(..., process_group=...)`` on 4 ranks, whose sync the
tests check against the same simulation):

- ``DDP``: one model on the concatenated batch of the 4 workers (the gradient
  averaged every step, as DDP does, up to rounding);
- ``Local SGD``: every k steps θ ← the mean of the workers' θ (α = 1, torch's
  ``PostLocalSGDOptimizer``);
- ``Lookahead α=0.5``: φ ← lerp(φ, mean θ, 0.5), θ ← φ;
- ``DiLoCo``: Δ = φ − mean θ, then an outer SGD step on φ (lr 0.7, Nesterov
  momentum 0.9), θ ← φ;

for k ∈ {4, 16, 64}, the inner optimizer Adam on both tasks:

- MNIST-5k (4,000 training images, the small CNN of the Table 1 analogue, 8/16
  channels; Adam lr 1e-3): each worker a batch of 16, DDP 64; validation
  accuracy;
- Shakespeare characters (the Table 3 analogue's 1-layer LSTM, width 128,
  tied embeddings, dropout 0.1, bptt 64, gradient-norm clip 0.25; Adam lr 5e-3):
  16 streams of text, 4 per worker; bits per character on the first 20,000
  characters of each validation play.

Every run takes the same number of steps, a multiple of 64, so every k ends
on a sync and every method has seen the same samples; the reported model is
the synced one (θ = φ). Bytes: what one worker hands to all-reduce, per run:
DDP P per step, the others P per sync (float32: 4 bytes per parameter), as
counted in ``tests/test_local_sgd.py``.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORKERS = 4
METHODS = ("DDP", "Local SGD", "Lookahead α=0.5", "DiLoCo")
OUTER_LR, OUTER_MOMENTUM = 0.7, 0.9


@dataclass(frozen=True)
class Size:
    ks: tuple[int, ...]
    mnist_steps: int
    mnist_seeds: tuple[int, ...]
    text_steps: int
    text_seeds: tuple[int, ...]
    text_width: int
    text_eval_chars: int | None


SIZES = {
    "full": Size(ks=(4, 16, 64), mnist_steps=384, mnist_seeds=(0, 1, 2), text_steps=384,
                 text_seeds=(0, 1), text_width=128, text_eval_chars=20_000),
    "quick": Size(ks=(2, 4), mnist_steps=8, mnist_seeds=(0,), text_steps=8, text_seeds=(0,),
                  text_width=16, text_eval_chars=2000),
}


# -- the simulated workers ------------------------------------------------------------


class Workers:
    """N model copies with their own inner optimizers; the sync of each method, in plain torch."""

    def __init__(self, make_model: Any, make_inner: Any, method: str, k: int, n: int = WORKERS) -> None:
        import torch

        self.method, self.k, self.n = method, k, (1 if method == "DDP" else n)
        self.models = [make_model() for _ in range(self.n)]
        for m in self.models[1:]:
            m.load_state_dict(self.models[0].state_dict())  # the broadcast of θ₀
        self.inners = [make_inner(m.parameters()) for m in self.models]
        self.slow = [p.detach().clone() for p in self.models[0].parameters()]
        self.outer = None
        if method == "DiLoCo":
            self.outer = torch.optim.SGD(self.slow, lr=OUTER_LR, momentum=OUTER_MOMENTUM, nesterov=True)
        self.steps = 0
        self.syncs = 0

    def after_inner_steps(self) -> None:
        """Count a step of every worker; at a multiple of k, the method's sync."""
        import torch

        self.steps += 1
        if self.method == "DDP" or self.steps % self.k:
            return
        self.syncs += 1
        with torch.no_grad():
            per_worker = [list(m.parameters()) for m in self.models]
            mean = []
            for tensors in zip(*per_worker):
                total = tensors[0].detach().clone()
                for t in tensors[1:]:
                    total += t
                mean.append(total / self.n)
            if self.method == "Local SGD":
                for s, m in zip(self.slow, mean):
                    s.copy_(m)
            elif self.method == "Lookahead α=0.5":
                for s, m in zip(self.slow, mean):
                    s.lerp_(m, 0.5)
            else:  # DiLoCo: Δ = φ − θ̄ as the outer optimizer's gradient
                for s, m in zip(self.slow, mean):
                    s.grad = s - m
                self.outer.step()  # type: ignore[union-attr]
                for s in self.slow:
                    s.grad = None
            for params in per_worker:
                for p, s in zip(params, self.slow):
                    p.copy_(s)

    def bytes_sent(self) -> int:
        """Bytes one worker hands to all-reduce: P per step (DDP) or per sync."""
        p_bytes = sum(p.numel() * p.element_size() for p in self.models[0].parameters())
        return p_bytes * (self.steps if self.method == "DDP" else self.syncs)


# -- MNIST-5k ---------------------------------------------------------------------------


def run_mnist(method: str, k: int, seed: int, steps: int, images: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    from experiments.reproduce import training
    from experiments.reproduce.models import SmallCNN

    def make_model() -> Any:
        torch.manual_seed(seed)
        return SmallCNN(images.side, (8, 16))

    workers = Workers(make_model, lambda p: torch.optim.Adam(p, lr=1e-3), method, k)
    rng = np.random.default_rng([seed, 7])
    per_worker, n_train = 16, len(images.x_train)
    order: list[int] = []
    for model in workers.models:
        model.train()
    for _ in range(steps):
        if len(order) < WORKERS * per_worker:
            order += rng.permutation(n_train).tolist()
        batch, order = order[: WORKERS * per_worker], order[WORKERS * per_worker:]
        shards = [batch] if method == "DDP" else [batch[r * per_worker:(r + 1) * per_worker]
                                                 for r in range(WORKERS)]
        for model, inner, rows in zip(workers.models, workers.inners, shards):
            inner.zero_grad()
            torch.nn.functional.cross_entropy(model(images.x_train[rows]), images.y_train[rows]).backward()
            inner.step()
        workers.after_inner_steps()
    _, accuracy = training.evaluate_classifier(workers.models[0], images.x_val, images.y_val)
    return {"value": accuracy, "bytes": workers.bytes_sent(), "syncs": workers.syncs}


# -- Shakespeare characters ---------------------------------------------------------------


def run_text(method: str, k: int, seed: int, steps: int, corpus: Any, width: int) -> dict[str, Any]:
    import torch

    from experiments.reproduce import training
    from experiments.reproduce.models import LSTMLanguageModel

    streams_total, bptt, clip = 16, 64, 0.25
    vocabulary = len(corpus.vocabulary)

    def make_model() -> Any:
        torch.manual_seed(seed)
        return LSTMLanguageModel(vocabulary, width, dropout=0.1)

    workers = Workers(make_model, lambda p: torch.optim.Adam(p, lr=5e-3), method, k)
    streams = training.batchify(corpus.train, streams_total)
    windows = training.windows(streams, bptt)[:steps]
    if len(windows) < steps:
        raise ValueError(f"{len(windows)} windows of text for {steps} steps")
    per_worker = streams_total // WORKERS
    rows = [slice(0, streams_total)] if method == "DDP" else [
        slice(r * per_worker, (r + 1) * per_worker) for r in range(WORKERS)]
    states: list[Any] = [None] * len(workers.models)
    torch.manual_seed(seed + 1)  # dropout
    for model in workers.models:
        model.train()
    for inputs, targets in windows:
        for r, (model, inner, part) in enumerate(zip(workers.models, workers.inners, rows)):
            inner.zero_grad()
            logits, state = model(inputs[part], states[r])
            states[r] = (state[0].detach(), state[1].detach())
            torch.nn.functional.cross_entropy(logits.reshape(-1, vocabulary), targets[part].reshape(-1)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            inner.step()
        workers.after_inner_steps()
    nats = training.evaluate_language_model(workers.models[0], corpus.val, bptt=bptt)
    return {"value": nats / math.log(2.0), "bytes": workers.bytes_sent(), "syncs": workers.syncs}


# -- the grid -------------------------------------------------------------------------------


def grid(size: Size) -> list[tuple[str, int | None]]:
    return [("DDP", None)] + [(m, k) for k in size.ks for m in METHODS[1:]]


def run(size: Size, tasks: tuple[str, ...] = ("mnist5k", "shakespeare"),
        checkpoint: Path | None = None) -> dict[str, Any]:
    """Every (method, k) for one seed, then the next seed; ``checkpoint``: the runs so far, after each."""
    import torch

    from experiments.reproduce import data

    torch.set_num_threads(1)
    results: dict[str, Any] = {}

    def done(task: str, record: dict[str, Any]) -> None:
        results.setdefault(task, []).append(record)
        if checkpoint is not None:
            checkpoint.write_text(json.dumps({"runs": results}) + "\n", encoding="utf-8")

    if "mnist5k" in tasks:
        images = data.load_images("mnist5k", 4000)
        for seed in size.mnist_seeds:
            for m, k in grid(size):
                done("mnist5k", {"method": m, "k": k, "seed": seed,
                                 **run_mnist(m, k or 1, seed, size.mnist_steps, images)})
    if "shakespeare" in tasks:
        chars = size.text_steps * 16 * 64 + 16
        corpus = data.load_shakespeare(chars, size.text_eval_chars)
        for seed in size.text_seeds:
            for m, k in grid(size):
                done("shakespeare", {"method": m, "k": k, "seed": seed,
                                     **run_text(m, k or 1, seed, size.text_steps, corpus, size.text_width)})
    return results


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for task, runs in results.items():
        cells: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
        for r in runs:
            cells.setdefault((r["method"], r["k"]), []).append(r)
        for (method, k), cell in cells.items():
            values = [r["value"] for r in cell]
            rows.append({"task": task, "method": method, "k": k, "mean": statistics.fmean(values),
                         "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "seeds": len(values), "values": values, "bytes": cell[0]["bytes"]})
    return rows


def markdown(rows: list[dict[str, Any]], size_name: str) -> str:
    unit = {"mnist5k": "validation accuracy (%)", "shakespeare": "validation bits per character"}
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        scale = 100.0 if task == "mnist5k" else 1.0
        lines += [f"**{'MNIST-5k' if task == 'mnist5k' else 'Shakespeare'}** ({unit[task]}, mean ± sd over "
                  f"{task_rows[0]['seeds']} seeds; bytes: all-reduce payload per worker)", "",
                  "| method | k | " + unit[task] + " | MB sent per worker | ÷ DDP |", "|---|---|---|---|---|"]
        ddp_bytes = next(r["bytes"] for r in task_rows if r["method"] == "DDP")
        for r in task_rows:
            ratio = "1" if r["method"] == "DDP" else f"1/{ddp_bytes / r['bytes']:.0f}"
            lines.append(f"| {r['method']} | {r['k'] or '–'} | {scale * r['mean']:.{1 if scale > 1 else 3}f} ± "
                         f"{scale * r['sd']:.{1 if scale > 1 else 3}f} | {r['bytes'] / 1e6:.1f} | {ratio} |")
        lines.append("")
    lines.append(f"(size {size_name}: `python experiments/local_sgd.py --size {size_name}`)")
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.8))
    axes = [axes] if len(tasks) == 1 else list(axes)
    for ax, task in zip(axes, tasks):
        scale = 100.0 if task == "mnist5k" else 1.0
        task_rows = [r for r in rows if r["task"] == task]
        ddp = next(r for r in task_rows if r["method"] == "DDP")
        ax.axhline(scale * ddp["mean"], color="black", lw=1.2, label="DDP (every step)")
        ax.axhspan(scale * (ddp["mean"] - ddp["sd"]), scale * (ddp["mean"] + ddp["sd"]), color="0.85")
        for method, marker in zip(METHODS[1:], "os^"):
            cells = sorted((r for r in task_rows if r["method"] == method), key=lambda r: r["k"])
            ax.errorbar([r["k"] for r in cells], [scale * r["mean"] for r in cells],
                        yerr=[scale * r["sd"] for r in cells], marker=marker, capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ks = sorted({r["k"] for r in task_rows if r["k"]})
        ax.set_xticks(ks, [f"{k}\n(1/{k} bytes)" for k in ks])
        ax.set_xlabel("k (steps between syncs)")
        ax.set_ylabel("validation accuracy (%)" if task == "mnist5k" else "validation bits per character")
        ax.set_title("MNIST-5k, small CNN" if task == "mnist5k" else "Shakespeare characters, LSTM")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("4 workers, Adam inner, equal samples", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="full")
    parser.add_argument("--tasks", nargs="*", default=["mnist5k", "shakespeare"],
                        choices=["mnist5k", "shakespeare"])
    parser.add_argument("--out-json", type=Path, default=ROOT / "docs" / "results" / "local_sgd.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "assets" / "local_sgd.png")
    parser.add_argument("--from-json", nargs="*", type=Path, default=None,
                        help="combine the runs of earlier --out-json files (e.g. one task per process) "
                             "instead of training")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.from_json:
        results = {}
        for path in args.from_json:
            results.update(json.loads(path.read_text(encoding="utf-8"))["runs"])
    else:
        results = run(SIZES[args.size], tuple(args.tasks), checkpoint=args.out_json.with_suffix(".partial.json"))
    rows = summary(results)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps({"size": args.size, "runs": results, "summary": rows}, indent=1) + "\n",
                             encoding="utf-8")
    figure(rows, args.png)
    print(markdown(rows, args.size))
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
