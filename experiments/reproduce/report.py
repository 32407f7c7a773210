"""Shared output helpers: seed statistics, Markdown tables, JSON, figure files, run environment."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch


class Summary(NamedTuple):
    """Mean and sample standard deviation (ddof = 1) over seeds; ``n`` values, ``missing`` not finite."""

    mean: float
    std: float
    n: int
    missing: int = 0


def summarize(values: Iterable[float | None]) -> Summary:
    """`Summary` of the finite values; ``None``/inf/NaN are counted in ``missing``.

    With one finite value the std is 0; with none the mean is NaN.
    """
    values = list(values)
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    missing = len(values) - len(finite)
    if not finite:
        return Summary(math.nan, math.nan, 0, missing)
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return Summary(statistics.fmean(finite), std, len(finite), missing)


def mean_pm_std(summary: Summary, scale: float = 1.0, digits: int = 2) -> str:
    """``"98.12 ± 0.31"`` (values times ``scale``); ``"–"`` when nothing was finite."""
    if summary.n == 0:
        return "–"
    return f"{summary.mean * scale:.{digits}f} ± {summary.std * scale:.{digits}f}"


def summary_fields(summary: Summary) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of ``summary``: how a results file stores it."""
    return {"mean": summary.mean, "std": summary.std, "n": summary.n}


def stored_mean_pm_std(entry: Mapping[str, Any], scale: float = 1.0, digits: int = 2,
                       prefix: str = "") -> str:
    """`mean_pm_std` of a summary stored as ``entry[prefix + "mean"]``, ``[prefix + "std"]``, ``["n"]``."""
    return mean_pm_std(
        Summary(entry[prefix + "mean"], entry[prefix + "std"], entry["n"]), scale, digits)


def diverged_mark(diverged: int, seeds: int) -> str:
    """``" († d/n)"`` when ``d`` of the ``n`` seeds diverged, else ``""``."""
    return f" († {diverged}/{seeds})" if diverged else ""


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub/MkDocs pipe table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def environment(threads: int) -> dict[str, Any]:
    """What the numbers were measured on (recorded in every results JSON)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
    }


class OutputPaths(NamedTuple):
    """Where an experiment writes: ``<root>/results/<name>.{json,md}``, ``<root>/assets/repro_<name>.png``."""

    json: Path
    markdown: Path
    figure: Path

    @classmethod
    def under(cls, root: Path, name: str) -> OutputPaths:
        return cls(
            root / "results" / f"{name}.json",
            root / "results" / f"{name}.md",
            root / "assets" / f"repro_{name}.png",
        )


def to_jsonable(value: Any) -> Any:
    """Dataclasses and NamedTuples as dicts, tuples as lists, recursively (for configs)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {name: to_jsonable(item) for name, item in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: every non-finite number must have been turned into null on purpose.
    path.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def new_figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=size, squeeze=False, constrained_layout=True)


def accuracy_limits(ax: Any) -> tuple[float, float]:
    """y-limits (percent) that show the spread of the plotted means, 100 on top."""
    lows = [min(line.get_ydata()) for line in ax.get_lines() if len(line.get_ydata())]
    low = min(lows) if lows else 0.0
    return max(0.0, 5.0 * math.floor(low / 5.0) - 5.0), 100.0


def save_figure(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
