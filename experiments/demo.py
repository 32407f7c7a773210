"""Lookahead on handwritten digits: a small analogue of the paper's Table 1.

Zhang, Lucas, Hinton & Ba (2019), Table 1, compares SGD with Lookahead over SGD
on CIFAR. This script runs the same kind of comparison on the 8x8 digits that
scikit-learn ships (offline, 1,797 images), small enough to finish in a few
minutes on two CPU cores:

* one classifier, a 64-128-10 ReLU MLP with softmax cross-entropy and manual
  backpropagation, written once against the Array API (``array_namespace``);
* five optimizers, all from ``lookahead_core``'s functional API: SGD, Polyak
  momentum, Adam, Lookahead(SGD-momentum), Lookahead(Adam), with k=5, alpha=0.5;
* two learning-rate settings: a standard one, and a high one at which plain
  SGD-momentum is unstable;
* several seeds, and every installed Array API library (numpy, torch, jax,
  array_api_strict), all in float32, from the same data split, batch order and
  initial weights (drawn with NumPy from the seed and converted with
  ``xp.asarray``), so that numbers are comparable across libraries.

Outputs (default ``out/demo/``): ``results.md`` (the tables), ``results.json``
(every run), ``loss_curves.png`` (training loss, mean over seeds).

Run ``python experiments/demo.py`` (or ``make demo``); ``--help`` lists options.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

# One BLAS/OpenMP thread (and one Eigen thread for JAX), set before NumPy, torch and
# JAX load: they read these variables once, at import. The tables then do not depend
# on how many cores a machine has or how a library splits a product between threads;
# they still depend on the CPU family (docs/demo.md). Only when run as a script: an
# importer (tests/test_demo.py) keeps its environment. A value already set wins, and
# results.json records what was used.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"
if __name__ == "__main__":
    for _variable in THREAD_VARIABLES:
        os.environ.setdefault(_variable, "1")
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, [os.environ.get("XLA_FLAGS", ""), XLA_ONE_THREAD]))

import array_api_compat  # noqa: E402
import numpy as np  # noqa: E402

import lookahead_core as lc  # noqa: E402

Array = Any
Params = tuple[Array, ...]

ALL_LIBRARIES = ("numpy", "torch", "jax", "array_api_strict")
DTYPE = "float32"  # one dtype for every library: jax defaults to it, and it is fast
LOOKAHEAD_K = 5
LOOKAHEAD_ALPHA = 0.5
NUM_CLASSES = 10


# --------------------------------------------------------------------------- config


class LearningRates(NamedTuple):
    """One learning-rate setting: SGD-family and Adam-family rates."""

    name: str
    sgd: float
    adam: float


@dataclass(frozen=True)
class Config:
    """Everything that defines a demo run (recorded in the JSON)."""

    libraries: tuple[str, ...] = ALL_LIBRARIES
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 30
    batch_size: int = 64
    hidden: int = 128
    train_size: int = 1280  # a multiple of batch_size * k: every epoch ends on a sync
    lr_settings: tuple[LearningRates, ...] = (
        LearningRates("standard", sgd=0.05, adam=1e-3),
        LearningRates("high", sgd=0.5, adam=3e-2),
    )
    torch_threads: int = 1


QUICK = dict(seeds=(0,), epochs=2, hidden=16)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Digits:
    """The digits split, standardised with training statistics, as NumPy arrays."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load_digits_split(train_size: int, split_seed: int = 0) -> Digits:
    """Fixed stratified train/validation split of ``sklearn.datasets.load_digits``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, train_size=train_size, stratify=y, random_state=split_seed
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0.0] = 1.0  # constant border pixels: leave them at 0 rather than divide by 0
    return Digits(
        ((x_train - mean) / std).astype(DTYPE),
        y_train.astype(np.int64),
        ((x_val - mean) / std).astype(DTYPE),
        y_val.astype(np.int64),
    )


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Float one-hot rows; the loss is written with them so it needs no gather."""
    return np.eye(num_classes, dtype=DTYPE)[labels]


def initial_params(
    seed: int, n_in: int, hidden: int, n_out: int = NUM_CLASSES
) -> tuple[np.ndarray, ...]:
    """He-normal weights and zero biases, drawn with NumPy so every library starts equal."""
    rng = np.random.default_rng([seed, 0])
    w1 = rng.standard_normal((n_in, hidden)) * math.sqrt(2.0 / n_in)
    w2 = rng.standard_normal((hidden, n_out)) * math.sqrt(1.0 / hidden)
    return tuple(
        a.astype(DTYPE) for a in (w1, np.zeros(hidden), w2, np.zeros(n_out))
    )


def batch_orders(seed: int, n_train: int, epochs: int) -> list[np.ndarray]:
    """The per-epoch shuffles, drawn with NumPy so every library sees the same batches."""
    rng = np.random.default_rng([seed, 1])
    return [rng.permutation(n_train) for _ in range(epochs)]


# ---------------------------------------------------------------------------- model
# Written once against the Array API: the namespace comes from the arrays, so the
# same code runs on numpy, torch, jax (also under jax.jit) and array_api_strict.


def _hidden_layer(params: Sequence[Array], x: Array) -> tuple[Array, Array]:
    xp = array_api_compat.array_namespace(x, *params)
    w1, b1 = params[0], params[1]
    pre_activation = x @ w1 + b1
    active = pre_activation > 0
    return xp.where(active, pre_activation, xp.zeros_like(pre_activation)), active


def logits(params: Sequence[Array], x: Array) -> Array:
    """Forward pass of the MLP: ``relu(x W1 + b1) W2 + b2``."""
    hidden, _ = _hidden_layer(params, x)
    return hidden @ params[2] + params[3]


def loss_and_grads(params: Sequence[Array], x: Array, y_one_hot: Array) -> tuple[Array, Params]:
    """Mean softmax cross-entropy of a batch and its gradient, by manual backprop.

    Returns ``(loss, (dW1, db1, dW2, db2))``; ``loss`` is a 0-d array (no host
    transfer here, so jax can run asynchronously).
    """
    xp = array_api_compat.array_namespace(x, *params)
    n = x.shape[0]
    hidden, active = _hidden_layer(params, x)
    z = hidden @ params[2] + params[3]
    # log-softmax with the max subtracted: exp never overflows for finite z
    shifted = z - xp.max(z, axis=1, keepdims=True)
    log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
    loss = -xp.sum(y_one_hot * log_probs) / n
    d_logits = (xp.exp(log_probs) - y_one_hot) / n
    d_w2 = hidden.T @ d_logits
    d_b2 = xp.sum(d_logits, axis=0)
    d_hidden = d_logits @ params[2].T
    d_pre = xp.where(active, d_hidden, xp.zeros_like(d_hidden))
    d_w1 = x.T @ d_pre
    d_b1 = xp.sum(d_pre, axis=0)
    return loss, (d_w1, d_b1, d_w2, d_b2)


def accuracy(params: Sequence[Array], x: Array, labels: Array) -> float:
    """Fraction of correct argmax predictions (NaN logits give whatever argmax says)."""
    xp = array_api_compat.array_namespace(x, *params)
    correct = xp.argmax(logits(params, x), axis=1) == labels
    # int32 counts suffice (a few hundred samples) and exist in jax without x64
    return int(xp.sum(xp.astype(correct, xp.int32))) / labels.shape[0]


# ----------------------------------------------------------------------- optimizers


class PlainOptimizer(NamedTuple):
    """An inner optimizer A alone, with Lookahead's ``init``/``step`` shape.

    ``θ ← θ + A(...)`` is eq. 0.2 without the sync; wrapping in ``lookahead`` with
    α=1 would be the same maths but pay for a copy every k steps.
    """

    inner: lc.InnerOptimizer

    def init(self, params: Sequence[Array]) -> Any:
        return self.inner.init(params)

    def step(
        self, params: Sequence[Array], grads: Sequence[Array], state: Any
    ) -> tuple[Params, Any]:
        delta, state = self.inner.update(grads, state, params)
        return tuple(p + d for p, d in zip(params, delta)), state


class OptimizerSpec(NamedTuple):
    """A row of the table: a label, the lr family it takes, and a builder."""

    key: str
    label: str
    family: str  # "sgd" or "adam": which rate of a LearningRates it uses
    build: Callable[[float], Any]


def _lookahead(inner: lc.InnerOptimizer) -> lc.Lookahead:
    return lc.lookahead(inner, k=LOOKAHEAD_K, alpha=LOOKAHEAD_ALPHA)


OPTIMIZERS: tuple[OptimizerSpec, ...] = (
    OptimizerSpec("sgd", "SGD", "sgd", lambda lr: PlainOptimizer(lc.sgd(lr=lr))),
    OptimizerSpec(
        "sgd_momentum", "SGD + momentum 0.9", "sgd",
        lambda lr: PlainOptimizer(lc.sgd(lr=lr, momentum=0.9)),
    ),
    OptimizerSpec("adam", "Adam", "adam", lambda lr: PlainOptimizer(lc.adam(lr=lr))),
    OptimizerSpec(
        "lookahead_sgd_momentum", "Lookahead(SGD + momentum 0.9)", "sgd",
        lambda lr: _lookahead(lc.sgd(lr=lr, momentum=0.9)),
    ),
    OptimizerSpec(
        "lookahead_adam", "Lookahead(Adam)", "adam",
        lambda lr: _lookahead(lc.adam(lr=lr)),
    ),
)


def evaluation_weights(params: Params, state: Any) -> Params:
    """The weights to evaluate: Lookahead's slow weights φ, else the parameters."""
    return state.slow if isinstance(state, lc.LookaheadState) else params


# ------------------------------------------------------------------------ libraries


@dataclass
class Library:
    """One array library: its namespace, the (maybe compiled) gradient, and the data on it."""

    name: str
    xp: Any
    version: str
    loss_and_grads: Callable[[Params, Array, Array], tuple[Array, Params]]
    note: str = ""
    arrays: dict[str, Array] = field(default_factory=dict)

    def asarray(self, a: np.ndarray) -> Array:
        return self.xp.asarray(a)


def load_library(name: str, config: Config) -> Library:
    """Import one library and set it up; raises ImportError when it is not installed."""
    if name == "numpy":
        compat_numpy = importlib.import_module("array_api_compat.numpy")
        return Library(name, compat_numpy, np.__version__, loss_and_grads)
    if name == "torch":
        torch = importlib.import_module("torch")
        # The matrices are at most 64x128: a second thread costs more to wake than it
        # saves (measured on the 2-core reference machine: 2 threads were ~40x slower).
        torch.set_num_threads(config.torch_threads)
        return Library(
            name, importlib.import_module("array_api_compat.torch"), torch.__version__,
            loss_and_grads,
            note=f"torch.set_num_threads({config.torch_threads}), CPU",
        )
    if name == "jax":
        jax = importlib.import_module("jax")
        # Only the model is compiled: the optimizer step decides its sync in Python,
        # so it runs eagerly, as a user of the core would run it.
        return Library(
            name, importlib.import_module("jax.numpy"), jax.__version__,
            jax.jit(loss_and_grads), note="jax.jit on the model's loss and gradient only",
        )
    if name == "array_api_strict":
        strict = importlib.import_module("array_api_strict")
        return Library(name, strict, strict.__version__, loss_and_grads)
    raise ValueError(f"unknown library {name!r}; choose from {', '.join(ALL_LIBRARIES)}")


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else ``platform.processor()``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def thread_pools() -> list[dict[str, Any]]:
    """The BLAS and OpenMP pools loaded in this process: library, kernels, threads.

    OpenBLAS's ``architecture`` is the kernel family it chose for this CPU, one
    reason float32 results differ between machines. From threadpoolctl
    (scikit-learn's dependency); empty without it.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "num_threads")
    return [{key: pool.get(key) for key in keys} for pool in threadpool_info()]


def machine_line(cpu: str, pools: Sequence[dict[str, Any]], torch_threads: int | None) -> str:
    """One line naming the CPU and every thread pool, for the printout and results.md."""
    parts = [f"CPU {cpu}"]
    for pool in pools:
        kernels = f", {pool['architecture']} kernels" if pool.get("architecture") else ""
        parts.append(f"{pool['prefix']} ({pool['internal_api']}{kernels}): "
                     f"{pool['num_threads']} thread(s)")
    if torch_threads is not None:
        parts.append(f"torch: {torch_threads} thread(s)")
    return "; ".join(dict.fromkeys(parts))  # a library loaded twice (numpy's, scipy's) once


def load_libraries(names: Sequence[str], config: Config) -> tuple[list[Library], list[str]]:
    """The importable libraries among ``names``, and the names skipped."""
    loaded, skipped = [], []
    for name in names:
        try:
            loaded.append(load_library(name, config))
        except ImportError:
            skipped.append(name)
    return loaded, skipped


def put_data(library: Library, data: Digits) -> None:
    """Convert the split once per library (per-batch conversion would dominate)."""
    library.arrays = {
        "x_train": library.asarray(data.x_train),
        "y_train": library.asarray(one_hot(data.y_train)),
        "x_val": library.asarray(data.x_val),
        "y_val": library.asarray(data.y_val),
    }


# ------------------------------------------------------------------------- training


@dataclass
class RunResult:
    """One training run (library x lr setting x optimizer x seed)."""

    library: str
    lr_setting: str
    optimizer: str
    seed: int
    lr: float
    val_accuracy: float
    initial_loss: float  # training-set loss of the initial weights
    train_loss: list[float | None]  # epoch means; None where not finite
    diverged: bool
    diverged_epoch: int | None  # first epoch (1-based) whose loss broke the rule
    seconds: float


def is_divergent(loss: float, initial_loss: float) -> bool:
    """True for a non-finite loss or one above the untrained model's loss.

    Above its initial loss, training has made the model worse than not training
    at all. Waiting for NaN would miss most blow-ups: the log-sum-exp is stable,
    so the loss of an exploding ReLU net stays finite (1e8 and more) for long.
    """
    return not math.isfinite(loss) or loss > initial_loss


@contextlib.contextmanager
def quiet_overflow() -> Iterator[None]:
    """Silence NumPy's overflow/invalid warnings: divergence is detected, not warned about."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        yield


def train_one_epoch(
    library: Library, optimizer: Any, params: Params, state: Any,
    order: np.ndarray, batch_size: int,
) -> tuple[Params, Any, float]:
    """One pass over the shuffled training set; returns the mean batch loss."""
    xp = library.xp
    permutation = library.asarray(order)
    x_epoch = xp.take(library.arrays["x_train"], permutation, axis=0)
    y_epoch = xp.take(library.arrays["y_train"], permutation, axis=0)
    total, batches = None, 0
    for start in range(0, order.shape[0] - batch_size + 1, batch_size):
        x = x_epoch[start:start + batch_size, :]
        y = y_epoch[start:start + batch_size, :]
        loss, grads = library.loss_and_grads(params, x, y)
        params, state = optimizer.step(params, grads, state)
        # summed on the device and read once per epoch: one host sync per epoch
        total = loss if total is None else total + loss
        batches += 1
    return params, state, float(total) / batches


def train_run(
    library: Library, spec: OptimizerSpec, rates: LearningRates, seed: int,
    config: Config, n_features: int,
) -> RunResult:
    """Train from the seed's initial weights; stop early only once the loss is NaN/inf."""
    started = time.perf_counter()
    lr = rates.sgd if spec.family == "sgd" else rates.adam
    optimizer = spec.build(lr)
    params = tuple(library.asarray(a) for a in initial_params(seed, n_features, config.hidden))
    state = optimizer.init(params)
    initial_loss = float(
        library.loss_and_grads(params, library.arrays["x_train"], library.arrays["y_train"])[0]
    )
    losses: list[float] = []
    diverged_epoch = None
    with quiet_overflow():
        for epoch, order in enumerate(batch_orders(seed, config.train_size, config.epochs), 1):
            params, state, loss = train_one_epoch(
                library, optimizer, params, state, order, config.batch_size
            )
            losses.append(loss)
            if diverged_epoch is None and is_divergent(loss, initial_loss):
                diverged_epoch = epoch
            if not math.isfinite(loss):
                break  # NaN/inf weights stay NaN/inf: more epochs would only cost time
        acc = accuracy(
            evaluation_weights(params, state), library.arrays["x_val"], library.arrays["y_val"]
        )
    return RunResult(
        library.name, rates.name, spec.key, seed, lr, acc, initial_loss,
        [v if math.isfinite(v) else None for v in losses],
        diverged_epoch is not None, diverged_epoch, time.perf_counter() - started,
    )


def run_all(
    config: Config, libraries: Sequence[Library], n_features: int, show_progress: bool = True
) -> list[RunResult]:
    """Every library x lr setting x optimizer x seed, under one tqdm bar."""
    from tqdm import tqdm

    jobs = [
        (library, rates, spec, seed)
        for library in libraries
        for rates in config.lr_settings
        for spec in OPTIMIZERS
        for seed in config.seeds
    ]
    results = []
    with tqdm(total=len(jobs), desc="demo", unit="run", disable=not show_progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for library, rates, spec, seed in jobs:
            bar.set_postfix_str(f"{library.name} {rates.name} {spec.key} seed {seed}")
            results.append(train_run(library, spec, rates, seed, config, n_features))
            bar.update()
    return results


# -------------------------------------------------------------------------- reports


class Cell(NamedTuple):
    """Mean and spread of the final validation accuracy over seeds."""

    mean: float
    std: float
    runs: int
    diverged: int


def summarise(results: Sequence[RunResult]) -> dict[tuple[str, str, str], Cell]:
    """(lr setting, optimizer, library) -> Cell; std is the sample std (ddof=1)."""
    groups: dict[tuple[str, str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.lr_setting, r.optimizer, r.library), []).append(r)
    cells = {}
    for key, runs in groups.items():
        accs = np.array([r.val_accuracy for r in runs])
        std = float(accs.std(ddof=1)) if len(accs) > 1 else 0.0
        cells[key] = Cell(float(accs.mean()), std, len(runs), sum(r.diverged for r in runs))
    return cells


def format_cell(cell: Cell | None) -> str:
    """``97.12 ± 0.35`` in percent, with ``†d/n`` when d of n seeds diverged."""
    if cell is None:
        return "–"
    text = f"{100 * cell.mean:.2f} ± {100 * cell.std:.2f}"
    if cell.diverged:
        text += f" †{cell.diverged}/{cell.runs}"
    return text


def table_markdown(
    cells: dict[tuple[str, str, str], Cell], rates: LearningRates, library_names: Sequence[str]
) -> str:
    """One Table-1-style markdown table: optimizers as rows, libraries as columns."""
    header = ["Optimizer", "lr", *library_names]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---", "---:"] + ["---:"] * len(library_names)) + "|",
    ]
    for spec in OPTIMIZERS:
        lr = rates.sgd if spec.family == "sgd" else rates.adam
        row = [spec.label, f"{lr:g}"]
        row += [format_cell(cells.get((rates.name, spec.key, name))) for name in library_names]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def tables_markdown(
    config: Config, results: Sequence[RunResult], library_names: Sequence[str]
) -> str:
    """All tables, one per lr setting, with the legend."""
    cells = summarise(results)
    parts = []
    for rates in config.lr_settings:
        parts.append(
            f"**{rates.name} learning rates** "
            f"(SGD family {rates.sgd:g}, Adam family {rates.adam:g})\n"
        )
        parts.append(table_markdown(cells, rates, library_names) + "\n")
    parts.append(
        f"Final validation accuracy (%), mean ± sample std over {len(config.seeds)} seed(s). "
        f"Lookahead: k={LOOKAHEAD_K}, α={LOOKAHEAD_ALPHA}, evaluated at its slow weights. "
        "†d/n: d of n seeds diverged (an epoch-mean training loss above the loss of "
        "the initial weights, or not finite); their accuracy is the "
        "diverged model's actual accuracy, included in the mean."
    )
    return "\n".join(parts)


def library_spread(results: Sequence[RunResult]) -> float:
    """Largest accuracy difference between libraries for one (setting, optimizer, seed).

    Runs that diverged in any library are left out: a blow-up amplifies float32
    rounding differences between libraries into unrelated trajectories.
    """
    by_run: dict[tuple[str, str, int], list[RunResult]] = {}
    for r in results:
        by_run.setdefault((r.lr_setting, r.optimizer, r.seed), []).append(r)
    spreads = [
        max(r.val_accuracy for r in runs) - min(r.val_accuracy for r in runs)
        for runs in by_run.values()
        if not any(r.diverged for r in runs)
    ]
    return max(spreads, default=0.0)


def mean_loss_curve(runs: Sequence[RunResult], epochs: int) -> np.ndarray:
    """Mean over seeds per epoch; NaN from the first epoch any seed was not finite."""
    curve = np.full(epochs, np.nan)
    for epoch in range(epochs):
        values = [r.train_loss[epoch] if epoch < len(r.train_loss) else None for r in runs]
        if all(v is not None for v in values):
            curve[epoch] = float(np.mean(values))
        else:
            break
    return curve


# An optimizer and its Lookahead version share a colour (dashed: alone, solid: wrapped).
CURVE_COLORS = {
    "sgd": "tab:gray",
    "sgd_momentum": "tab:blue",
    "lookahead_sgd_momentum": "tab:blue",
    "adam": "tab:orange",
    "lookahead_adam": "tab:orange",
}


def plot_loss_curves(
    config: Config, results: Sequence[RunResult], library_name: str, path: Path
) -> None:
    """Training loss (mean over seeds), one panel per lr setting, log-scale y."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = np.arange(1, config.epochs + 1)
    fig, axes = plt.subplots(
        1, len(config.lr_settings), figsize=(6 * len(config.lr_settings), 4.2), squeeze=False
    )
    for ax, rates in zip(axes[0], config.lr_settings):
        for spec in OPTIMIZERS:
            runs = [r for r in results if r.library == library_name
                    and r.lr_setting == rates.name and r.optimizer == spec.key]
            curve = mean_loss_curve(runs, config.epochs)
            lr = rates.sgd if spec.family == "sgd" else rates.adam
            label = f"{spec.label} (lr {lr:g})"
            if any(r.diverged for r in runs):
                label += " †diverged"
            style = "-" if spec.key.startswith("lookahead") else "--"
            (line,) = ax.plot(epochs, curve, style, label=label, linewidth=1.6,
                              color=CURVE_COLORS[spec.key])
            last = np.flatnonzero(np.isfinite(curve))
            if len(last) < config.epochs and len(last) > 0:  # loss became NaN/inf: mark where
                ax.plot(epochs[last[-1]], curve[last[-1]], "x",
                        color=line.get_color(), markersize=9)
        initial = [r.initial_loss for r in results if r.library == library_name]
        # the divergence threshold: a run above its initial loss counts as diverged
        ax.axhline(float(np.mean(initial)), color="grey", linewidth=0.8, linestyle=":")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (epoch mean)")
        ax.set_title(f"{rates.name} lr: SGD family {rates.sgd:g}, Adam family {rates.adam:g}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Digits MLP, {library_name}, mean over {len(config.seeds)} seed(s); "
        f"Lookahead k={LOOKAHEAD_K}, α={LOOKAHEAD_ALPHA}; dotted: loss at initialisation",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timing_lines(results: Sequence[RunResult], libraries: Sequence[Library]) -> list[str]:
    """Seconds spent training per library (the jax figure includes compilation)."""
    lines = []
    for library in libraries:
        seconds = sum(r.seconds for r in results if r.library == library.name)
        note = f" ({library.note})" if library.note else ""
        lines.append(f"{library.name} {library.version}: {seconds:.1f} s{note}")
    return lines


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Strict JSON (no NaN literals): non-finite numbers were turned into null before."""
    path.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Lookahead vs. SGD, momentum and Adam on sklearn digits, on every "
        "installed Array API library (a small analogue of the paper's Table 1).",
    )
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="output folder (default: out/demo)")
    parser.add_argument("--libraries", nargs="+", default=list(ALL_LIBRARIES),
                        choices=ALL_LIBRARIES, metavar="LIB",
                        help=f"libraries to try (default: all of {', '.join(ALL_LIBRARIES)}; "
                        "those not installed are skipped)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="number of seeds, 0..N-1 (default: 3; --quick: 1)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs (default: {Config.epochs}; "
                        f"--quick: {QUICK['epochs']})")
    parser.add_argument("--quick", action="store_true",
                        help="tiny configuration for smoke tests")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def config_from_args(args: argparse.Namespace) -> Config:
    config = Config(libraries=tuple(dict.fromkeys(args.libraries)))
    if args.quick:
        config = replace(config, **QUICK)
    if args.seeds is not None:
        config = replace(config, seeds=tuple(range(args.seeds)))
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    return config


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo; print and write the tables, JSON and plot. Returns the JSON payload."""
    wall_start = time.perf_counter()
    args = parse_args(argv)
    config = config_from_args(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    libraries, skipped = load_libraries(config.libraries, config)
    if not libraries:
        raise SystemExit("none of the requested libraries is installed")
    data = load_digits_split(config.train_size)
    for library in libraries:
        put_data(library, data)
    names = [library.name for library in libraries]
    cpu, pools = cpu_name(), thread_pools()
    torch_threads = config.torch_threads if "torch" in names else None
    machine = machine_line(cpu, pools, torch_threads)
    print(f"machine: {machine}")
    skipped_note = f"; skipped (not installed): {', '.join(skipped)}" if skipped else ""
    print(f"libraries: {', '.join(names)}{skipped_note}")
    print(
        f"digits: {data.x_train.shape[0]} train / {data.x_val.shape[0]} validation, "
        f"MLP 64-{config.hidden}-10 ReLU, {DTYPE}, batch {config.batch_size}, "
        f"{config.epochs} epochs, seeds {list(config.seeds)}"
    )

    results = run_all(config, libraries, data.x_train.shape[1], show_progress=not args.no_progress)
    tables = tables_markdown(config, results, names)
    timings = timing_lines(results, libraries)
    spread = library_spread(results)

    plot_path = out / "loss_curves.png"
    plot_loss_curves(config, results, names[0], plot_path)
    wall_seconds = time.perf_counter() - wall_start

    print()
    print(tables)
    print()
    print(
        "largest accuracy difference between libraries for the same run "
        f"(runs that diverged anywhere left out): {100 * spread:.2f} points"
    )
    print("training time per library: " + "; ".join(timings))
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {plot_path}")
    print(f"total wall time: {wall_seconds:.1f} s")

    payload = {
        "config": {**asdict(config), "lr_settings": [r._asdict() for r in config.lr_settings],
                   "dtype": DTYPE, "k": LOOKAHEAD_K, "alpha": LOOKAHEAD_ALPHA,
                   "divergence_rule": "epoch-mean training loss not finite or above initial_loss"},
        "libraries": {lib.name: {"version": lib.version, "note": lib.note} for lib in libraries},
        "skipped_libraries": skipped,
        "optimizers": {
            spec.key: {"label": spec.label, "lr_family": spec.family} for spec in OPTIMIZERS
        },
        "summary": [
            {"lr_setting": s, "optimizer": o, "library": lib, **cell._asdict()}
            for (s, o, lib), cell in summarise(results).items()
        ],
        "runs": [asdict(r) for r in results],
        "library_spread": spread,
        "wall_seconds": wall_seconds,
        "platform": {"python": platform.python_version(), "machine": platform.machine(),
                     "cpus": os.cpu_count(), "cpu": cpu,
                     "thread_variables": {v: os.environ.get(v) for v in THREAD_VARIABLES},
                     "thread_pools": pools, "torch_threads": torch_threads},
    }
    write_json(out / "results.json", payload)
    (out / "results.md").write_text(
        "# Lookahead demo results\n\n" + tables + "\n\n"
        + f"Machine: {machine}.\n\n"
        + f"Training time per library: {'; '.join(timings)}. "
        + f"Total wall time: {wall_seconds:.1f} s.\n\n![training loss](loss_curves.png)\n"
    )
    return payload


if __name__ == "__main__":
    main()
