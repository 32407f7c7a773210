"""SNOO: Lookahead whose sync is an outer Nesterov step, beside the inner optimizer and LA(X).

SNOO (Kallusky et al., 2025, arXiv 2510.15830) keeps Lookahead's loop (k inner
steps of X from the slow weights, then a sync) but replaces the sync
φ ← φ + α(θ_{t,k} − φ) by one step of an outer optimizer on the
pseudo-gradient Δ = φ − θ_{t,k}: SGD with Nesterov momentum, learning rate
about 0.7 and momentum 0.5–0.9 (DiLoCo's outer step). Here it is
`lookahead_torch.Lookahead(X, k=k, outer=partial(torch.optim.SGD, lr, momentum,
nesterov=True))` (`optim.snoo`), compared at **equal inner steps** (the same
data, batches and number of gradient evaluations) with X alone and with
LA(X) (k = 5, α = 0.5, the paper's setting), on the tasks of the Table 3 and
Table 1 analogues (`table3`, `table1`), the same models and learning rates.

The protocol, in three stages, run by one command:

1. **Sweep** on one language-model task (Wikipedia words at the full size):
   every (outer lr, momentum, k) of the grid and the default, for each inner
   optimizer, with the inner optimizer alone and LA(X) as baselines.
2. **Selection**: per inner optimizer, the sweep setting with the lowest
   seed-mean final validation loss. The rule is in the code (`select`), so
   the rows of stage 3 are not picked by hand.
3. **Transfer**: the default setting (lr 0.7, momentum 0.9, k 5) and the
   selected one on the other language-model tasks (Shakespeare characters) and
   on the image tasks of the Table 1 analogue.

Every run is evaluated at its slow weights φ (Lookahead and SNOO return φ).
Besides the final numbers, the language models measure the validation loss
every ``eval_every`` steps and the classifiers their validation accuracy
after every epoch; **steps to target** is the first evaluated step at which
the seed-mean curve reaches the inner optimizer's own final seed-mean value
(its validation loss, or its accuracy), ``None`` if it never does
(`steps_to_target`).

Runs are independent and seeded, so ``workers`` processes (one torch thread
each) run them side by side with the same results as one process.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import data, optim, report, table1, table3, training
from .optim import OuterStep

NAME = "snoo"
TITLE = "SNOO: an outer Nesterov step"
DEFAULT_OUTER = OuterStep(0.7, 0.9, 5)  # DiLoCo's outer lr and momentum, Lookahead's k


@dataclass(frozen=True)
class Sweep:
    """The grid of outer steps: every (lr, momentum, k)."""

    lrs: tuple[float, ...]
    momenta: tuple[float, ...]
    ks: tuple[int, ...]

    def outer_steps(self) -> list[OuterStep]:
        return [OuterStep(lr, m, k) for lr in self.lrs for m in self.momenta for k in self.ks]


@dataclass(frozen=True)
class TextTask:
    """A Table 3 setup with the step interval of its validation curve."""

    setup: table3.TextSetup
    eval_every: int


@dataclass(frozen=True)
class Config:
    """What the experiment runs (see the module docstring for the stages).

    Attributes:
        sweep_task: the language-model task of the sweep (stage 1).
        text_tasks: further language-model tasks (stage 3).
        image_setups: classifier tasks (stage 3), every learning-rate setting of each.
        inners: the inner optimizers X (keys of `optim.INNERS`).
        sweep: the grid of outer steps.
        text_seeds, image_seeds: seeds of the language models and of the classifiers.
        default: the outer step always carried to stage 3.
        sweep_inners: the inner optimizers swept (``None``: all of ``inners``);
            the others run X, LA(X) and the default on the sweep task, and
            only the default is carried to stage 3.
        k, alpha: LA(X)'s settings (the paper's).
        workers: processes that run the runs (1: in this process).
    """

    sweep_task: TextTask
    text_tasks: tuple[TextTask, ...]
    image_setups: tuple[table1.ImageSetup, ...]
    inners: tuple[str, ...]
    sweep: Sweep
    text_seeds: tuple[int, ...]
    image_seeds: tuple[int, ...]
    default: OuterStep = DEFAULT_OUTER
    sweep_inners: tuple[str, ...] | None = None
    k: int = 5
    alpha: float = 0.5
    workers: int = 1


FULL_SWEEP = Sweep(lrs=(0.5, 0.7, 1.0), momenta=(0.5, 0.9), ks=(5, 20))


def _text(size: str, corpus: str, eval_every: int) -> TextTask:
    setup = next(s for s in table3.SIZES[size].setups if s.corpus == corpus)
    return TextTask(setup, eval_every)


SIZES = {
    # seconds: a code-path check (a test shrinks it further)
    "quick": Config(
        sweep_task=_text("quick", "wikipedia", 10),
        text_tasks=(_text("quick", "shakespeare", 20),),
        image_setups=(table1.ImageSetup("digits", 1200, (8, 16), 32, 3, table1.DIGITS_LRS[:1]),),
        inners=("adam",),
        sweep=Sweep(lrs=(0.7,), momenta=(0.5, 0.9), ks=(5,)),
        text_seeds=(0,),
        image_seeds=(0, 1),
    ),
    "reduced": Config(
        sweep_task=_text("reduced", "wikipedia", 20),
        text_tasks=(_text("reduced", "shakespeare", 200),),
        image_setups=(table1.DIGITS_REDUCED,),
        inners=("sgd", "adam"),
        sweep=Sweep(lrs=(0.7, 1.0), momenta=(0.5, 0.9), ks=(5, 20)),
        text_seeds=(0, 1),
        image_seeds=(0, 1, 2),
        workers=2,
    ),
    # about 2,600 CPU seconds (22 minutes on two idle cores): 34 Wikipedia runs (the grid
    # for Adam), 14 Shakespeare runs, 70 CNN runs on digits
    "full": Config(
        sweep_task=_text("full", "wikipedia", 80),
        text_tasks=(_text("full", "shakespeare", 200),),
        image_setups=(table1.DIGITS_FULL,),
        inners=("adam", "sgd"),
        sweep=FULL_SWEEP,
        text_seeds=(0, 1),
        image_seeds=(0, 1, 2, 3, 4),
        sweep_inners=("adam",),
        workers=2,
    ),
}


# ----------------------------------------------------------------------- the specs


LOOKAHEAD_INNERS = ("sgd", "adam")  # the inner optimizers with an LA(X) row in the paper's tables


def baselines(inner: str) -> tuple[optim.OptimizerSpec, optim.OptimizerSpec]:
    """X alone and LA(X), the specs of the Table 1 and Table 3 analogues.

    Raises:
        ValueError: ``inner`` has no LA(X) row there (not ``"sgd"`` or ``"adam"``).
    """
    if inner not in LOOKAHEAD_INNERS:
        raise ValueError(f"inner must be one of {LOOKAHEAD_INNERS}, got {inner!r}")
    return optim.BY_KEY[inner], optim.BY_KEY[f"la_{inner}"]


def spec_of(entry: dict[str, Any]) -> optim.OptimizerSpec:
    """The spec a run or summary entry of the results names (its inner and outer step)."""
    if entry["outer"] is None:
        alone, la = baselines(entry["inner"])
        return la if entry["lookahead"] else alone
    outer = entry["outer"]
    return optim.snoo(entry["inner"], outer["lr"], outer["momentum"], outer["k"])


def _describe(spec: optim.OptimizerSpec) -> dict[str, Any]:
    return {"optimizer": spec.key, "label": spec.label, "inner": spec.inner,
            "lookahead": spec.lookahead,
            "outer": None if spec.outer is None else spec.outer._asdict()}


# ---------------------------------------------------------------- steps to target


def steps_to_target(
    steps: Sequence[int], curves: Sequence[Sequence[float | None]], target: float, *,
    lower_is_better: bool = True,
) -> int | None:
    """The first of ``steps`` at which the mean over ``curves`` reaches ``target``.

    ``curves[i][j]`` is run i's value at ``steps[j]``. A missing value (``None``:
    not finite) makes the mean unreachable at that step for a loss (it counts
    as +∞) and counts as 0 for an accuracy. Reaching means ``mean ≤ target``
    for a loss, ``mean ≥ target`` for an accuracy.

    Raises:
        ValueError: no curves, or a curve whose length is not ``len(steps)``.
    """
    if not curves:
        raise ValueError("curves must not be empty")
    if any(len(c) != len(steps) for c in curves):
        raise ValueError(f"every curve must have len(steps) = {len(steps)} values")
    missing = math.inf if lower_is_better else 0.0
    for j, step in enumerate(steps):
        mean = statistics.fmean(missing if c[j] is None else c[j] for c in curves)
        if (mean <= target) if lower_is_better else (mean >= target):
            return step
    return None


# -------------------------------------------------------------------- the runs


@functools.lru_cache(maxsize=4)
def _corpus(setup: table3.TextSetup) -> data.TextCorpus:
    return table3.load(setup)


def _run_text(task: TextTask, spec: optim.OptimizerSpec, seed: int, k: int, alpha: float) -> dict[str, Any]:
    setup = task.setup
    corpus = _corpus(setup)
    lr = setup.lrs.for_inner(spec.inner)
    start = time.perf_counter()
    result = training.train_language_model(
        corpus, spec, lr, width=setup.width, layers=1, dropout=setup.dropout, epochs=setup.epochs,
        batch_size=setup.batch_size, bptt=setup.bptt, clip=setup.clip, seed=seed,
        train_eval_tokens=setup.train_eval_tokens, log_every=setup.log_every, k=k, alpha=alpha,
        eval_every=task.eval_every,
    )
    steps = setup.epochs * len(training.windows(training.batchify(corpus.train, setup.batch_size), setup.bptt))
    return {"task": setup.corpus, "lr": lr, "seed": seed, **_describe(spec), "steps": steps,
            "elapsed_s": round(time.perf_counter() - start, 1), **result.to_dict()}


def _run_image(setup: table1.ImageSetup, lr_setting: str, spec: optim.OptimizerSpec, seed: int,
               k: int, alpha: float) -> dict[str, Any]:
    images = data.load_images(setup.dataset, setup.train_size)
    lr = next(lrs for lrs in setup.lr_settings if lrs.name == lr_setting).for_inner(spec.inner)
    start = time.perf_counter()
    result = training.train_classifier(images, spec, lr, epochs=setup.epochs, batch_size=setup.batch_size,
                                       seed=seed, channels=setup.channels, k=k, alpha=alpha)
    return {"task": setup.dataset, "lr_setting": lr_setting, "lr": lr, "seed": seed, **_describe(spec),
            "steps_per_epoch": len(images.x_train) // setup.batch_size,
            "elapsed_s": round(time.perf_counter() - start, 1), **result.to_dict()}


def _job(args: tuple[Any, ...]) -> dict[str, Any]:
    kind, *rest = args
    return _run_text(*rest) if kind == "text" else _run_image(*rest)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class _Pool:
    """Runs jobs in order in this process (``workers == 1``) or in ``workers`` spawned processes."""

    def __init__(self, workers: int, bar: Any) -> None:
        import torch

        self.bar, self.executor = bar, None
        if workers > 1:
            import concurrent.futures
            import multiprocessing

            self.executor = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(torch.get_num_threads(),))

    def map(self, jobs: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        if self.executor is None:
            results = []
            for job in jobs:
                results.append(_job(job))
                self.bar.update(1)
            return results
        futures = [self.executor.submit(_job, job) for job in jobs]
        for future in futures:
            future.add_done_callback(lambda _f: self.bar.update(1))
        return [future.result() for future in futures]

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()


def _text_specs(config: Config, inner: str, outers: Sequence[OuterStep]) -> list[optim.OptimizerSpec]:
    return [*baselines(inner), *(optim.snoo(inner, o.lr, o.momentum, o.k) for o in outers)]


def select(summary: Sequence[dict[str, Any]], task: str, inner: str) -> OuterStep:
    """The sweep's outer step for ``inner``: the lowest seed-mean final validation loss on ``task``.

    Ties go to the earlier grid point. A setting whose runs all failed has no
    mean and is never selected.

    Raises:
        ValueError: no SNOO entry of ``inner`` on ``task`` has a finite mean.
    """
    candidates = [e for e in summary if e["task"] == task and e["inner"] == inner
                  and e["outer"] is not None and e["val_nats"]["n"] > 0]
    if not candidates:
        raise ValueError(f"no finite SNOO result for inner {inner!r} on {task!r}")
    best = min(candidates, key=lambda e: e["val_nats"]["mean"])  # min keeps the first of equals
    return OuterStep(**best["outer"])


def _text_summary(task: str, spec_runs: list[dict[str, Any]], targets: dict[str, float]) -> dict[str, Any]:
    first = spec_runs[0]
    entry = {key: first[key] for key in ("task", "optimizer", "label", "inner", "lookahead", "outer", "lr")}
    entry["unit"] = table3.UNITS[task]
    entry["seeds"] = [r["seed"] for r in spec_runs]
    entry["diverged"] = sum(r["diverged"] for r in spec_runs)
    entry["val_nats"] = report.summary_fields(report.summarize(r["val_nats"] for r in spec_runs))
    for split in ("train", "val", "test"):
        s = report.summarize(table3.in_unit(task, r[f"{split}_nats"]) for r in spec_runs)
        entry[split] = report.summary_fields(s)
    target = targets.get(first["inner"])
    entry["target_nats"] = target
    steps = [*first["val_curve_steps"], first["steps"]]
    curves = [[*r["val_curve_nats"], r["val_nats"]] if len(r["val_curve_nats"]) == len(steps) - 1
              else [None] * len(steps) for r in spec_runs]  # a diverged run stopped early
    entry["steps"] = first["steps"]
    entry["steps_to_target"] = None if target is None else steps_to_target(steps, curves, target)
    return entry


def _image_summary(spec_runs: list[dict[str, Any]], targets: dict[str, float], epochs: int) -> dict[str, Any]:
    first = spec_runs[0]
    entry = {key: first[key] for key in ("task", "lr_setting", "optimizer", "label", "inner", "lookahead",
                                         "outer", "lr")}
    entry["seeds"] = [r["seed"] for r in spec_runs]
    entry["diverged"] = sum(r["diverged"] for r in spec_runs)
    entry.update(report.summary_fields(report.summarize(r["val_accuracy"] for r in spec_runs)))
    target = targets.get(first["inner"])
    entry["target_accuracy"] = target
    # A run stopped at NaN keeps its last accuracy for the remaining epochs (as the figures do).
    curves = [c + [c[-1]] * (epochs - len(c)) for c in (r["epoch_val_accuracy"] for r in spec_runs)]
    steps = [epoch * first["steps_per_epoch"] for epoch in range(1, epochs + 1)]
    entry["steps_per_epoch"] = first["steps_per_epoch"]
    entry["steps_to_target"] = None if target is None else steps_to_target(
        steps, curves, target, lower_is_better=False)
    return entry


def _group(runs: list[dict[str, Any]], *fields: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(tuple(r[f] for f in fields), []).append(r)
    return groups


def _summarize_text(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    summary = []
    for (task,), task_runs in _group(runs, "task").items():
        targets = {}
        for (optimizer,), spec_runs in _group(task_runs, "optimizer").items():
            r = spec_runs[0]
            if not r["lookahead"]:
                mean = report.summarize(x["val_nats"] for x in spec_runs)
                targets[r["inner"]] = mean.mean if mean.n else None
        summary += [_text_summary(task, spec_runs, targets)
                    for spec_runs in _group(task_runs, "optimizer").values()]
    return summary


def _summarize_images(runs: list[dict[str, Any]], config: Config) -> list[dict[str, Any]]:
    epochs = {s.dataset: s.epochs for s in config.image_setups}
    summary = []
    for (task, _lr_setting), cell_runs in _group(runs, "task", "lr_setting").items():
        targets = {}
        for spec_runs in _group(cell_runs, "optimizer").values():
            if not spec_runs[0]["lookahead"]:
                targets[spec_runs[0]["inner"]] = report.summarize(x["val_accuracy"] for x in spec_runs).mean
        summary += [_image_summary(spec_runs, targets, epochs[task])
                    for spec_runs in _group(cell_runs, "optimizer").values()]
    return summary


def run(config: Config, progress: Callable[[int], Any]) -> dict[str, Any]:
    """The three stages; returns every run, the summaries, the selection and the timings."""
    # the default outer step always runs on the sweep task too (and may be selected)
    sweep_steps = list(dict.fromkeys([*config.sweep.outer_steps(), config.default]))
    swept = config.inners if config.sweep_inners is None else config.sweep_inners
    if not set(swept) <= set(config.inners):
        raise ValueError(f"sweep_inners must be among inners {config.inners}, got {swept}")
    sweep_jobs = [("text", config.sweep_task, spec, seed, config.k, config.alpha)
                  for inner in config.inners
                  for spec in _text_specs(config, inner, sweep_steps if inner in swept else [config.default])
                  for seed in config.text_seeds]
    bar = progress(len(sweep_jobs))
    pool = _Pool(config.workers, bar)
    timings = {}
    try:
        start = time.perf_counter()
        bar.set_postfix_str(f"sweep on {config.sweep_task.setup.corpus}")
        sweep_runs = pool.map(sweep_jobs)
        timings["sweep_s"] = round(time.perf_counter() - start, 1)
        sweep_summary = _summarize_text(sweep_runs)
        selected = {inner: select(sweep_summary, config.sweep_task.setup.corpus, inner)
                    for inner in swept}
        carried = {inner: list(dict.fromkeys([config.default, selected.get(inner, config.default)]))
                   for inner in config.inners}
        text_jobs = [("text", task, spec, seed, config.k, config.alpha)
                     for task in config.text_tasks for inner in config.inners
                     for spec in _text_specs(config, inner, carried[inner]) for seed in config.text_seeds]
        image_jobs = [("image", setup, lrs.name, spec, seed, config.k, config.alpha)
                      for setup in config.image_setups for lrs in setup.lr_settings
                      for inner in config.inners for spec in _text_specs(config, inner, carried[inner])
                      for seed in config.image_seeds]
        bar.total = len(sweep_jobs) + len(text_jobs) + len(image_jobs)
        bar.refresh()
        start = time.perf_counter()
        bar.set_postfix_str("transfer")
        transfer_runs = pool.map(text_jobs + image_jobs)
        timings["transfer_s"] = round(time.perf_counter() - start, 1)
    finally:
        pool.close()
    text_runs = sweep_runs + transfer_runs[: len(text_jobs)]
    image_runs = transfer_runs[len(text_jobs):]
    return {
        "runs": {"text": text_runs, "images": image_runs},
        "summary": {"text": _summarize_text(text_runs), "images": _summarize_images(image_runs, config)},
        "selected": {inner: step._asdict() for inner, step in selected.items()},
        "timings": timings,
    }


# ---------------------------------------------------------------- tables, figure


def _rows_of(config: dict[str, Any], selected: dict[str, Any], inner: str) -> list[optim.OptimizerSpec]:
    """X, LA(X), SNOO at the default outer step, SNOO at the selected one (once if they agree)."""
    default = OuterStep(**config["default"])
    outers = list(dict.fromkeys([default, OuterStep(**selected[inner]) if inner in selected else default]))
    return [*baselines(inner), *(optim.snoo(inner, o.lr, o.momentum, o.k) for o in outers)]


def _row_label(spec: optim.OptimizerSpec, config: dict[str, Any], selected: dict[str, Any]) -> str:
    if not spec.lookahead:
        return spec.label
    if spec.outer is None:
        return f"{spec.label} (k {config['k']}, α {config['alpha']:g})"
    notes = []
    if spec.outer == OuterStep(**config["default"]):
        notes.append("default")
    if spec.inner in selected and spec.outer == OuterStep(**selected[spec.inner]):
        notes.append("selected")
    return f"{spec.label} ({', '.join(notes)})" if notes else spec.label


def text_cell(results: dict[str, Any], task: str, optimizer: str) -> dict[str, Any]:
    for entry in results["summary"]["text"]:
        if (entry["task"], entry["optimizer"]) == (task, optimizer):
            return entry
    raise KeyError((task, optimizer))


def image_cell(results: dict[str, Any], task: str, lr_setting: str, optimizer: str) -> dict[str, Any]:
    for entry in results["summary"]["images"]:
        if (entry["task"], entry["lr_setting"], entry["optimizer"]) == (task, lr_setting, optimizer):
            return entry
    raise KeyError((task, lr_setting, optimizer))


def _steps(entry: dict[str, Any]) -> str:
    """``"240 of 416"``, or ``"> 416"`` when the target is not reached within the run."""
    reached = entry["steps_to_target"]
    return f"> {entry['steps']}" if reached is None else f"{reached} of {entry['steps']}"


TASK_LABELS = {"wikipedia": "Wikipedia words", "shakespeare": "Shakespeare chars", **data.DATASET_LABELS}


def markdown_sweep(results: dict[str, Any]) -> str:
    config, selected = results["config"], results["selected"]
    task = config["sweep_task"]["setup"]["corpus"]
    digits = 1 if task == "wikipedia" else 3
    unit = "ppl" if task == "wikipedia" else "bpc"
    headers = ["inner", "row", "outer lr", "momentum", "k", f"val {unit}", f"test {unit}",
               "steps to target"]
    rows = []
    for inner in config["inners"]:
        for entry in (e for e in results["summary"]["text"] if e["task"] == task and e["inner"] == inner):
            outer = entry["outer"]
            spec = spec_of(entry)
            chosen = inner in selected and outer is not None and OuterStep(**outer) == OuterStep(**selected[inner])
            name = ("SNOO" + (" (selected)" if chosen else "")) if outer else _row_label(spec, config, selected)
            rows.append([optim.INNER_LABELS[inner], name,
                         *(("–", "–", "–") if outer is None else
                           (f"{outer['lr']:g}", f"{outer['momentum']:g}", str(outer["k"]))),
                         report.stored_mean_pm_std(entry["val"], 1.0, digits),
                         report.stored_mean_pm_std(entry["test"], 1.0, digits)
                         + report.diverged_mark(entry["diverged"], len(entry["seeds"])),
                         _steps(entry)])
    return report.markdown_table(headers, rows)


def markdown_text(results: dict[str, Any]) -> str:
    config, selected = results["config"], results["selected"]
    tasks = [config["sweep_task"]["setup"]["corpus"], *(t["setup"]["corpus"] for t in config["text_tasks"])]
    headers = ["Optimizer"]
    for task in tasks:
        unit = "ppl" if task == "wikipedia" else "bpc"
        headers += [f"{TASK_LABELS[task]} val {unit}", f"test {unit}", "steps to target"]
    rows = []
    for inner in config["inners"]:
        for spec in _rows_of(config, selected, inner):
            row = [_row_label(spec, config, selected)]
            for task in tasks:
                digits = 1 if task == "wikipedia" else 3
                entry = text_cell(results, task, spec.key)
                row += [report.stored_mean_pm_std(entry["val"], 1.0, digits),
                        report.stored_mean_pm_std(entry["test"], 1.0, digits)
                        + report.diverged_mark(entry["diverged"], len(entry["seeds"])),
                        _steps(entry)]
            rows.append(row)
    return report.markdown_table(headers, rows)


def markdown_images(results: dict[str, Any]) -> str:
    config, selected = results["config"], results["selected"]
    columns = [(s["dataset"], lrs["name"], s["epochs"]) for s in config["image_setups"]
               for lrs in s["lr_settings"]]
    headers = ["Optimizer"]
    for dataset, name, _ in columns:
        headers += [f"{data.DATASET_LABELS[dataset]}, {name} lr", "epochs to target"]
    rows = []
    for inner in config["inners"]:
        for spec in _rows_of(config, selected, inner):
            row = [_row_label(spec, config, selected)]
            for dataset, name, epochs in columns:
                entry = image_cell(results, dataset, name, spec.key)
                reached = entry["steps_to_target"]
                row += [report.stored_mean_pm_std(entry, 100.0)
                        + report.diverged_mark(entry["diverged"], len(entry["seeds"])),
                        f"> {epochs}" if reached is None
                        else f"{reached // entry['steps_per_epoch']} of {epochs}"]
            rows.append(row)
    return report.markdown_table(headers, rows)


def markdown(results: dict[str, Any]) -> str:
    config = results["config"]
    sweep_task = TASK_LABELS[config["sweep_task"]["setup"]["corpus"]]
    d = config["default"]
    sw = config["sweep"]
    grid = (f"outer lr ∈ {{{', '.join(f'{x:g}' for x in sw['lrs'])}}} × momentum ∈ "
            f"{{{', '.join(f'{x:g}' for x in sw['momenta'])}}} × k ∈ {{{', '.join(map(str, sw['ks']))}}}")
    swept = config["inners"] if config["sweep_inners"] is None else config["sweep_inners"]
    swept_labels = ", ".join(optim.INNER_LABELS[i] for i in swept)
    unswept = [optim.INNER_LABELS[i] for i in config["inners"] if i not in swept]
    unswept_note = (f" {', '.join(unswept)}: not swept, the default only." if unswept else "")
    evals = "; ".join(f"{TASK_LABELS[t['setup']['corpus']]} every {t['eval_every']} steps"
                      for t in [config["sweep_task"], *config["text_tasks"]])
    note = (
        f"SNOO(X) = Lookahead around X whose sync is SGD with Nesterov momentum on Δ = φ − θ "
        f"(`lookahead_torch.Lookahead(X, k, outer=partial(torch.optim.SGD, lr, momentum, "
        f"nesterov=True))`); LA(X) = the paper's sync (k {config['k']}, α {config['alpha']:g}). "
        f"Equal inner steps: every row takes the same batches and the same number of steps of X, "
        f"at X's learning rate of the Table 1 / Table 3 analogues; every row is evaluated at its "
        f"slow weights. Mean ± std over seeds {tuple(config['text_seeds'])} (language models) and "
        f"{tuple(config['image_seeds'])} (CNNs). Default outer step: lr {d['lr']:g}, momentum "
        f"{d['momentum']:g}, k {d['k']}; selected: per swept inner optimizer ({swept_labels}), the "
        f"lowest seed-mean validation loss of the sweep on {sweep_task} ({grid}).{unswept_note} "
        f"Steps to target: the first "
        f"evaluated step at which the seed-mean validation loss (language models: {evals}, and "
        f"at the end) or accuracy (CNNs: after every epoch) reaches X alone's final seed-mean "
        f"value.\n"
    )
    return (
        f"### {TITLE} ({results['size']} size)\n\n{note}\n"
        f"#### Sweep on {sweep_task}\n\n{markdown_sweep(results)}\n"
        f"#### Language models (Table 3 analogue)\n\n{markdown_text(results)}\n"
        f"#### Small CNN (Table 1 analogue): final validation accuracy (%)\n\n{markdown_images(results)}"
    )


def plot(results: dict[str, Any], path: Path) -> None:
    """Validation loss against step (language models), mean over seeds, one panel per task × inner."""
    import numpy as np

    config, selected = results["config"], results["selected"]
    tasks = [config["sweep_task"]["setup"]["corpus"], *(t["setup"]["corpus"] for t in config["text_tasks"])]
    panels = [(task, inner) for task in tasks for inner in config["inners"]]
    cols = len(config["inners"])
    figure, axes = report.new_figure(len(tasks), cols, (5.5 * cols, 3.6 * len(tasks)))
    styles = ["--", "-", ":", "-."]
    for ax, (task, inner) in zip(axes.flat, panels):
        for style, spec in zip(styles, _rows_of(config, selected, inner)):
            runs = [r for r in results["runs"]["text"] if (r["task"], r["optimizer"]) == (task, spec.key)]
            steps = [*runs[0]["val_curve_steps"], runs[0]["steps"]]
            values = np.array([[np.nan if v is None else table3.in_unit(task, v)
                                for v in [*r["val_curve_nats"], r["val_nats"]]]
                               for r in runs if len(r["val_curve_nats"]) == len(steps) - 1])
            if len(values):
                ax.plot(steps, np.nanmean(values, axis=0), style, color=optim.COLORS[inner],
                        label=_row_label(spec, config, selected))
        ax.set_title(f"{TASK_LABELS[task]}, inner {optim.INNER_LABELS[inner]}")
        ax.set_xlabel("inner step")
        ax.set_ylabel(f"validation {table3.UNITS[task]} (slow weights)")
        if task == "wikipedia":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle("SNOO vs Lookahead vs the inner optimizer, equal inner steps, mean over seeds")
    report.save_figure(figure, path)
