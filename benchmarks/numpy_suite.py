"""NumPy rows: ``lookahead_numpy`` and the core on NumPy arrays.

- syncs: the adapter's blockwise sync (dense pairs with the difference held in
  place), the same adapter through the scratch-buffer kernel it used before
  (``blocks.lerp_and_reset_scratch``, the reference the fast path must beat),
  and the core's pure ``sync``, next to ``np.copyto`` of 2 × the parameter bytes;
- steps: the adapter against the core's inner optimizer applied in place
  (``θ += delta``, what the adapter does without Lookahead), the core's
  ``lookahead`` against the core's inner optimizer alone (new arrays).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import lookahead_core as lc
from lookahead_numpy import Lookahead
from lookahead_numpy import blocks

from .memory import numpy_call_bytes, state_bytes
from .results import NUMPY_OURS, Row, SetResult, sync_ratio_key
from .sets import ParamSet
from .steps import ALPHA, CORE_INNERS, K, LR, core_step_group, measure_steps
from .timing import Stats, interleaved, phase

__all__ = ["run_numpy"]


OURS = NUMPY_OURS
SCRATCH = "lookahead_numpy, scratch kernel (before)"
CORE = "core on NumPy"


class _InPlaceBare:
    """The core's inner optimizer applied in place: ``θ ← θ + delta``."""

    def __init__(self, inner: lc.InnerOptimizer, params: list[np.ndarray],
                 grads: list[np.ndarray]) -> None:
        self.inner, self.params, self.grads = inner, params, grads
        self.state = inner.init(params)

    def step(self) -> None:
        delta, self.state = self.inner.update(self.grads, self.state, self.params)
        for p, d in zip(self.params, delta):
            np.add(p, d, out=p)


def _sync_group(pset: ParamSet, host: list[np.ndarray], rounds: dict[str, Any],
                result: SetResult, rows: dict[str, Row]) -> None:
    params = [a.copy() for a in host]
    ours = Lookahead(params, lc.sgd(lr=LR), k=K, alpha=ALPHA)

    def scratch_sync() -> None:
        for pair in ours._pairs:
            blocks.lerp_and_reset_scratch(pair, ALPHA)

    core = lc.lookahead(lc.sgd(lr=LR), k=K, alpha=ALPHA)
    core_params = tuple(a.copy() for a in host)
    core_state = core.init(core_params)
    src = np.ones(2 * pset.numel, np.float32)
    dst = np.zeros_like(src)
    variants: dict[str, Callable[[], object]] = {
        OURS: ours.sync,
        SCRATCH: scratch_sync,
        CORE: lambda: core.sync(core_params, core_state),
        "np.copyto": lambda: np.copyto(dst, src),
    }
    times = interleaved(variants, rounds["sync"], best_of=rounds["best_of"],
                        budget=rounds.get("sync_budget"))
    result.copy_ms["NumPy"] = Stats.of(times["np.copyto"]).scaled(1e3)
    result.copy_gbs.setdefault(
        "np.copyto (NumPy group)",
        Stats.of([4 * pset.nbytes / t / 1e9 for t in times["np.copyto"]]))
    result.comparisons[sync_ratio_key("NumPy", SCRATCH, OURS)] = Stats.ratio(
        times[SCRATCH], times[OURS])
    for name in (OURS, SCRATCH, CORE):
        row = rows.setdefault(name, Row("NumPy", name))
        row.sync_ms = Stats.of(times[name]).scaled(1e3)
        row.efficiency = Stats.ratio(times["np.copyto"], times[name])
        row.sync_alloc = numpy_call_bytes(variants[name])
    rows[OURS].extra_state = state_bytes(ours, params) / pset.nbytes
    rows[OURS].note = "allocation: Python objects only (block views), no array"
    rows[SCRATCH].note = "sync only: the previous kernel, kept for strided parameters"
    rows[CORE].extra_state = (
        state_bytes(core_state, core_params) - state_bytes(core_state.inner, core_params)
    ) / pset.nbytes


def _step_group(host: list[np.ndarray], grads: list[np.ndarray], inner_name: str,
                rounds: dict[str, Any], rows: dict[str, Row]) -> Stats:
    """The adapter against the core's inner optimizer applied in place; returns the bare step, ms."""
    bare = _InPlaceBare(CORE_INNERS[inner_name](), [a.copy() for a in host], grads)
    ours_params = [a.copy() for a in host]
    ours = Lookahead(ours_params, CORE_INNERS[inner_name](), k=K, alpha=ALPHA)
    _, cycles = measure_steps("NumPy", {"bare": bare.step, OURS: lambda: ours.step(grads)},
                              {OURS: "bare"}, inner_name, rounds, rows)
    return Stats.of(cycles["bare"]).scaled(1e3 / K)


def run_numpy(pset: ParamSet, host: list[np.ndarray], grads_host: list[np.ndarray],
              rounds: dict[str, Any], result: SetResult) -> None:
    """All NumPy rows of one parameter set, appended to ``result``."""
    rows: dict[str, Row] = {}
    with phase("numpy syncs"):
        _sync_group(pset, host, rounds, result, rows)
    if rounds.get("numpy_steps", True):
        for inner_name in CORE_INNERS:
            with phase(f"numpy steps, {inner_name}"):
                result.bare_step_ms[f"NumPy {inner_name}"] = _step_group(
                    host, grads_host, inner_name, rounds, rows)
            if rounds.get("core_steps", True):
                with phase(f"core on NumPy steps, {inner_name}"):
                    core_step_group("NumPy", CORE, lambda: tuple(a.copy() for a in host), grads_host,
                                    inner_name, rounds, rows)
    for name in (OURS, CORE):
        if not rows[name].amortized:
            rows[name].note += ("; " if rows[name].note else "") + (
                "steps not measured on this set (time; a core step allocates several × P)")
    result.rows.extend(rows.values())
