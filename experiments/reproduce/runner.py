"""Run one or all experiments at a size, and write JSON, Markdown and PNG for each.

Command line (from the repository root)::

    python -m experiments.reproduce table1 --size full       # one experiment
    python -m experiments.reproduce all --size full          # all of them (make reproduce)
    python -m experiments.reproduce all --size quick --out out/reproduce-quick
    python -m experiments.reproduce snoo --size full         # SNOO beside LA(X) and X (not in "all")

Sizes: ``quick`` (the test suite's, a few minutes), ``full`` (``make reproduce``,
sized for about an hour on two idle CPU cores) and ``reduced`` (about half of
``full``: fewer epochs and tokens, the k × α grid and the learning-rate sweep on
digits instead of MNIST-5k), the one whose numbers the docs show because the
shared machine was too busy to finish ``full`` in time.

Outputs per experiment ``NAME`` under the output root (``docs`` for the full and
reduced sizes, ``out/reproduce-quick`` for the quick one): ``results/NAME.json`` (config,
environment, every run, summary), ``results/NAME.md`` (the table, beside the
paper's numbers where our copy has them) and ``assets/repro_NAME.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from . import figure9, figure10, lr_sweep, report, snoo, table1, table3

EXPERIMENTS: dict[str, ModuleType] = {
    "table1": table1,
    "table3": table3,
    "figure9": figure9,
    "figure10": figure10,
    "lr_sweep": lr_sweep,
}
"""The paper's experiments: what ``all`` runs (``make reproduce``)."""
EXTENSIONS: dict[str, ModuleType] = {"snoo": snoo}
"""Experiments beyond the paper, run only by name."""
SIZES = ("quick", "reduced", "full")
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_output(size: str) -> Path:
    """``docs`` for the full and reduced sizes (documented numbers), ``out/reproduce-quick`` for quick."""
    return REPO_ROOT / "out" / "reproduce-quick" if size == "quick" else REPO_ROOT / "docs"


def _without_nonfinite(value: Any) -> Any:
    """NaN/inf floats as ``None``, recursively (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nonfinite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nonfinite(item) for item in value]
    return value


class _Progress:
    """Makes the tqdm bar an experiment asks for, and closes it afterwards."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name, self.enabled, self.bar = name, enabled, None

    def __call__(self, total: int) -> Any:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=self.name, unit="run", disable=not self.enabled,
                        dynamic_ncols=True)
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_experiment(
    name: str,
    size: str = "quick",
    out: Path | None = None,
    *,
    progress: bool = True,
    threads: int = 1,
    config: Any = None,
) -> dict[str, Any]:
    """Run experiment ``name`` at ``size`` (or at an explicit ``config``); write outputs under ``out``.

    Args:
        name: a key of `EXPERIMENTS` or `EXTENSIONS`.
        size: ``"quick"`` or ``"full"``.
        out: output root (``None``: write nothing, only return the results).
        progress: show a tqdm bar.
        threads: ``torch.set_num_threads`` for the run (1: runs repeat bit for bit).
        config: overrides the size's config (tests use it to shrink runs further).

    Returns:
        The results as written to JSON.

    Raises:
        ValueError: unknown ``name`` or ``size``.
    """
    modules = {**EXPERIMENTS, **EXTENSIONS}
    if name not in modules:
        raise ValueError(f"name must be one of {sorted(modules)}, got {name!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    module = modules[name]
    config = module.SIZES[size] if config is None else config
    torch.set_num_threads(threads)
    bars = _Progress(name, progress)
    start = time.perf_counter()
    try:
        body = module.run(config, bars)
    finally:
        bars.close()
    results = _without_nonfinite({
        "experiment": name,
        "title": module.TITLE,
        "size": size,
        "command": f"python -m experiments.reproduce {name} --size {size}",
        "config": report.to_jsonable(config),
        "environment": report.environment(threads),
        "elapsed_s": round(time.perf_counter() - start, 1),
        **body,
    })
    # What markdown() and plot() see is exactly what the JSON holds.
    results = json.loads(json.dumps(results, allow_nan=False))
    if out is not None:
        paths = report.OutputPaths.under(Path(out), name)
        report.write_json(paths.json, results)
        paths.markdown.write_text(module.markdown(results), encoding="utf-8")
        module.plot(results, paths.figure)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.reproduce",
        description="Small-scale analogues of the Lookahead paper's experiments on offline data.",
    )
    parser.add_argument("experiments", nargs="+", choices=[*EXPERIMENTS, *EXTENSIONS, "all"],
                        help="which experiments to run ('all': every one of the paper's, in order; "
                             f"{', '.join(EXTENSIONS)} only by name)")
    parser.add_argument("--size", choices=SIZES, default="quick")
    parser.add_argument("--out", type=Path, default=None,
                        help="output root (default: docs for --size full, out/reproduce-quick otherwise)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: bit-for-bit repeatable runs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    names = list(EXPERIMENTS) if "all" in args.experiments else list(dict.fromkeys(args.experiments))
    out = args.out if args.out is not None else default_output(args.size)
    tables = []
    for name in names:
        results = run_experiment(name, args.size, out, progress=not args.no_progress, threads=args.threads)
        paths = report.OutputPaths.under(out, name)
        tables.append(paths.markdown.read_text(encoding="utf-8"))
        print(f"{name}: {results['elapsed_s']:.0f} s -> {paths.json}, {paths.markdown}, {paths.figure}",
              file=sys.stderr)
    if len(names) > 1:
        (out / "results" / "all.md").write_text("\n".join(tables), encoding="utf-8")
    return 0
