"""Markdown tables and the PNG of a benchmark run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from .results import (
    JAX_OURS,
    NUMPY_OURS,
    PEER_NAMES,
    TORCH_OURS,
    UNBLOCKED,
    Row,
    SetResult,
    noise_key,
    optax_key,
    sync_ratio_key,
)
from .steps import K
from .timing import Stats

__all__ = ["fmt_bytes", "markdown", "plot", "targets"]

INNER_NAMES = ("SGD-m", "Adam")


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    if n < 1024:
        return f"{n} B"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _stats(s: Stats | None, digits: int = 2) -> str:
    return "—" if s is None else s.fmt(digits)


def _row_cells(row: Row) -> list[str]:
    return [
        row.library,
        row.backend,
        _stats(row.sync_ms, 1 if (row.sync_ms and row.sync_ms.median >= 10) else 2),
        _stats(row.efficiency),
        *(_stats(row.nonsync.get(name)) for name in INNER_NAMES),
        *(_stats(row.amortized.get(name)) for name in INNER_NAMES),
        "—" if row.extra_state is None else f"{row.extra_state:.3f}",
        fmt_bytes(row.sync_alloc),
    ]


HEADER = ["library", "backend", "sync ms", "sync efficiency",
          "non-sync step ÷ bare, SGD-m", "non-sync ÷ bare, Adam",
          "k=5 per step ÷ bare, SGD-m", "k=5 ÷ bare, Adam",
          "extra state ÷ P", "allocated at sync"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def set_markdown(result: SetResult) -> str:
    pset = result.pset
    parts = [f"### {pset.label}: P = {pset.nbytes / 1e6:.1f} MB of float32"]
    copies = ", ".join(f"{name} {stats.fmt(1)} GB/s" for name, stats in result.copy_gbs.items())
    parts.append(f"Plain copy of 2 × P (read + write counted): {copies}. "
                 f"Load average before/after: {', '.join(_load(l) for l in result.load)}; "
                 f"{result.seconds:.0f} s.")
    parts.append(_table(HEADER, [_row_cells(row) for row in result.rows]))
    notes = [f"- {row.backend}: {row.note}" for row in result.rows if row.note]
    notes += [f"- {name}: skipped ({why})" for name, why in result.skipped.items()]
    if result.comparisons:
        notes.append("- side-by-side ratios (median [min–max] over rounds): " + "; ".join(
            f"{name} = {stats.fmt()}" for name, stats in result.comparisons.items()))
    if notes:
        parts.append("\n".join(notes))
    return "\n\n".join(parts)


FLOOR_BACKENDS = {"PyTorch": TORCH_OURS, "NumPy": NUMPY_OURS, "JAX": JAX_OURS}


def floors_markdown(results: Sequence[SetResult]) -> str:
    """Where the k = 5 per-step cost comes from, and the least it could be.

    With a non-sync step as fast as the bare one, k steps with one sync cost
    ``k·t_step + t_sync``: the ratio to bare is ``1 + t_sync / (k·t_step)``. The
    floor puts in the sync at the plain-copy bandwidth (the 4 × P bytes it must
    move, in the time ``np.copyto`` moves them).
    """
    lines = []
    for result in results:
        for key, step in result.bare_step_ms.items():
            library, inner = key.split(" ", 1)
            row = result.row(FLOOR_BACKENDS[library])
            copy = result.copy_ms.get(library)
            if row is None or row.sync_ms is None or copy is None:
                continue
            measured = row.amortized.get(inner)
            predicted = 1 + row.sync_ms.median / (K * step.median)
            floor = 1 + copy.median / (K * step.median)
            lines.append([result.pset.name, library, inner, f"{step.median:.1f}",
                          f"{row.sync_ms.median:.1f}", f"{predicted:.3f}",
                          "—" if measured is None else measured.fmt(),
                          f"{copy.median:.1f}", f"{floor:.3f}"])
    if not lines:
        return ""
    return "### Where the k = 5 cost comes from\n\n" + _table(
        ["set", "library", "inner", "bare step ms", "sync ms", "1 + sync ÷ (5 × step)",
         "measured k=5 ÷ bare", "copy of 4 × P ms", "floor: 1 + copy ÷ (5 × step)"], lines)


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def markdown(header: str, results: Sequence[SetResult], overhead: dict[str, Stats] | None,
             overhead_label: str, target_rows: Sequence[Sequence[str]], extra: str) -> str:
    parts = [header]
    parts.append("#### Targets\n\n" + _table(["target", "measured (median [min–max])", "met"],
                                             target_rows))
    for result in results:
        parts.append(set_markdown(result))
    floors = floors_markdown(results)
    if floors:
        parts.append(floors)
    if overhead is not None:
        parts.append(f"### Python overhead per non-sync step ({overhead_label})\n\n" + _table(
            ["wrapper", "µs per step over the bare optimizer"],
            [[name, stats.fmt(1)] for name, stats in overhead.items()]))
    if extra:
        parts.append(extra)
    return "\n\n".join(parts) + "\n"


def _find(results: Sequence[SetResult], set_name: str, backend: str) -> Row | None:
    for result in results:
        if result.pset.name == set_name:
            return result.row(backend)
    return None


def _comparison(results: Sequence[SetResult], set_name: str, key: str) -> Stats | None:
    for result in results:
        if result.pset.name == set_name:
            return result.comparisons.get(key)
    return None


def _noise(floor: Stats) -> float:
    """How far from 1 a ratio may lie and still be noise: what bare ÷ bare shows.

    The distance of its median from 1 plus its interquartile half-width.
    """
    return abs(floor.median - 1.0) + (floor.q3 - floor.q1) / 2


def _check(value: float | None, ok: bool) -> str:
    return "n/a" if value is None else ("yes" if ok else "**no**")


def targets(results: Sequence[SetResult], overhead: dict[str, Stats] | None) -> list[list[str]]:
    """The performance targets, each with its measurement and whether it is met.

    The Performance page (docs/performance.md, 'Targets') shows this table.
    """
    rows: list[list[str]] = []
    names = [r.pset.name for r in results]

    def add(target: str, stats: Stats | None, ok: bool | None, digits: int = 3) -> None:
        rows.append([target, "not measured" if stats is None else stats.fmt(digits),
                     "n/a" if ok is None else ("yes" if ok else "**no**")])

    torch_large = _find(results, "large", TORCH_OURS)
    if torch_large:
        eff = torch_large.efficiency
        add("PyTorch adapter: sync efficiency ≥ 0.75 (large)", eff,
            eff is not None and eff.median >= 0.75)
    speed = _comparison(results, "large", sync_ratio_key("PyTorch", UNBLOCKED, TORCH_OURS))
    if speed:
        add("PyTorch adapter: ≥ 1.5 × faster than _foreach_lerp_ + _foreach_copy_ (large)",
            speed, speed.median >= 1.5)
    for name in names:
        result = next(r for r in results if r.pset.name == name)
        for peer in PEER_NAMES:
            stats = result.comparisons.get(sync_ratio_key("PyTorch", peer, TORCH_OURS))
            if stats is not None:
                add(f"PyTorch adapter faster than {peer} at sync ({name}), ratio > 1",
                    stats, stats.median > 1.0)
    for name in names:
        row = _find(results, name, TORCH_OURS)
        if row is None:
            continue
        for inner, bound in (("SGD-m", 1.10), ("Adam", 1.03)):
            stats = row.amortized.get(inner)
            if stats is not None:
                add(f"PyTorch adapter: k=5 per step ≤ {bound:.2f} × bare {inner} ({name})",
                    stats, stats.median <= bound)
        for inner in INNER_NAMES:
            stats = row.nonsync.get(inner)
            floor = _comparison(results, name, noise_key(inner))
            if stats is not None and floor is not None:
                add(f"PyTorch adapter: non-sync step within noise of bare {inner} ({name}); "
                    f"noise: bare ÷ bare = {floor.fmt()}",
                    stats, abs(stats.median - 1.0) <= _noise(floor))
        rows.append([f"PyTorch adapter: zero bytes allocated at sync ({name})",
                     fmt_bytes(row.sync_alloc), _check(row.sync_alloc, row.sync_alloc == 0)])
        rows.append([f"PyTorch adapter: state exactly one parameter copy ({name})",
                     "—" if row.extra_state is None else f"{row.extra_state:.4f} × P",
                     _check(row.extra_state, row.extra_state == 1.0)])
    numpy_large = _find(results, "large", NUMPY_OURS)
    if numpy_large:
        eff = numpy_large.efficiency
        add("NumPy adapter: sync efficiency ≥ 0.65 (large)", eff,
            eff is not None and eff.median >= 0.65)
        rows.append(["NumPy adapter: no array allocated at sync (large; tracemalloc peak, "
                     "Python objects included)", fmt_bytes(numpy_large.sync_alloc),
                     _check(numpy_large.sync_alloc, (numpy_large.sync_alloc or 0) < 8192)])
    for name in names:
        row = _find(results, name, JAX_OURS)
        if row is None or not row.amortized:
            continue
        for inner in INNER_NAMES:
            stats = row.amortized.get(inner)
            if stats is not None:
                add(f"core on JAX (jit): per step ≤ 1.25 × optax {inner} ({name})",
                    stats, stats.median <= 1.25)
        result = next(r for r in results if r.pset.name == name)
        for inner in INNER_NAMES:
            ratio = result.comparisons.get(optax_key(inner))
            if ratio is not None:
                add(f"core on JAX (jit): ≥ 2 × faster than optax.lookahead, {inner} ({name})",
                    ratio, ratio.median >= 2.0)
    if overhead is not None and TORCH_OURS in overhead:
        stats = overhead[TORCH_OURS]
        add("PyTorch adapter: Python overhead per non-sync step ≤ 15 µs (200 small tensors)",
            stats, stats.median <= 15.0, digits=1)
    return rows


def plot(results: Sequence[SetResult], path: Path, title: str) -> None:
    """Two panels: sync efficiency per backend and set; k = 5 per-step cost ÷ bare.

    Bars are medians, whiskers the interquartile range over the rounds (the
    tables give min–max).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [r.pset for r in results]
    backends: list[str] = []
    for result in results:
        for row in result.rows:
            if row.efficiency is not None and row.backend not in backends:
                backends.append(row.backend)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6.5))
    width = 0.8 / max(1, len(backends))
    for i, backend in enumerate(backends):
        values, lows, highs = [], [], []
        for result in results:
            row = result.row(backend)
            stats = row.efficiency if row else None
            values.append(stats.median if stats else 0.0)
            lows.append(max(0.0, stats.median - stats.q1) if stats else 0.0)
            highs.append(max(0.0, stats.q3 - stats.median) if stats else 0.0)
        xs = [j + (i - (len(backends) - 1) / 2) * width for j in range(len(sets))]
        ax1.bar(xs, values, width, label=backend, yerr=[lows, highs], capsize=2)
    ax1.axhline(1.0, color="black", linewidth=0.8)
    ax1.set_xticks(range(len(sets)), [s.label.replace(" (", "\n(") for s in sets], fontsize=8)
    ax1.set_ylabel("sync efficiency: (4 × P / sync time) ÷ copy bandwidth")
    ax1.set_title("Sync efficiency (median, interquartile range)")
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)

    amortized: list[tuple[str, str, Stats]] = []
    for result in results:
        for row in result.rows:
            for inner, stats in row.amortized.items():
                amortized.append((f"{row.backend}\n{inner}", result.pset.name, stats))
    labels = sorted({label for label, _, _ in amortized}, key=lambda s: s.lower())
    width2 = 0.8 / max(1, len(sets))
    for j, pset in enumerate(sets):
        values, errs_low, errs_high = [], [], []
        for label in labels:
            stats = next((s for lab, name, s in amortized if lab == label and name == pset.name),
                         None)
            values.append(stats.median if stats else 0.0)
            errs_low.append(max(0.0, stats.median - stats.q1) if stats else 0.0)
            errs_high.append(max(0.0, stats.q3 - stats.median) if stats else 0.0)
        ys = [i + (j - (len(sets) - 1) / 2) * width2 for i in range(len(labels))]
        ax2.barh(ys, values, width2, label=pset.label, xerr=[errs_low, errs_high], capsize=2)
    ax2.axvline(1.0, color="black", linewidth=0.8)
    ax2.set_yticks(range(len(labels)), labels, fontsize=6)
    ax2.set_xlabel("time per step at k = 5 ÷ bare inner optimizer")
    ax2.set_title("Amortized per-step cost (median, interquartile range)")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
