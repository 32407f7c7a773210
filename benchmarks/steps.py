"""Cycles of k = 5 steps of several optimizers, side by side (any library)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lookahead_core as lc

from .results import Row
from .timing import MIN_ROUNDS, Stats

__all__ = ["ALPHA", "CORE_INNERS", "K", "LR", "NEVER", "core_step_group", "measure_steps", "repeat"]

K = 5
"""The synchronization period of every amortized measurement."""

NEVER = 10**9
"""A k no benchmark reaches: every step is a non-sync step."""

ALPHA = 0.5
"""α of every Lookahead measured."""

LR = 1e-4
"""Learning rate of every inner optimizer (small: the weights stay normal numbers)."""

CORE_INNERS: dict[str, Callable[[], lc.InnerOptimizer]] = {
    "SGD-m": lambda: lc.sgd(lr=LR, momentum=0.9),
    "Adam": lambda: lc.adam(lr=LR),
}
"""The core's inner optimizers, by the names the tables use."""


def repeat(step: Callable[[], object], times: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            step()
    return run


def measure_steps(library: str, steppers: dict[str, Callable[[], object]],
                  baselines: dict[str, str], inner_name: str, rounds: dict[str, Any],
                  rows: dict[str, Row]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Cycles of k = 5 steps of every stepper, each step timed, side by side; fills ``rows``.

    Every stepper runs with k = 5 (a bare one has no k). In each round each
    stepper takes 5 consecutive steps, timed one by one: the cycle (their sum)
    holds exactly one sync whatever the phase, and the fastest of the 5 is a
    non-sync step (the sync step is the slow one; for a bare optimizer it is
    the fastest of 5 plain steps). ``baselines[name]`` names the bare stepper
    ``name`` is compared with. Returns the per-round non-sync and cycle times.
    """
    for _ in range(K):  # warm-up: inner states exist, every wrapper has synced once
        for step in steppers.values():
            step()
    names = list(steppers)
    clock = time.perf_counter
    shift = 0

    def one_round() -> dict[str, list[float]]:
        samples = {}
        for name in names[shift:] + names[:shift]:
            step = steppers[name]
            times = []
            for _ in range(K):
                start = clock()
                step()
                times.append(clock() - start)
            samples[name] = times
        return samples

    nonsync: dict[str, list[float]] = {name: [] for name in names}
    cycle: dict[str, list[float]] = {name: [] for name in names}
    count, r = rounds["cycles"], 0
    while r < count:
        shift = r % len(names)
        start = clock()
        for name, times in one_round().items():
            nonsync[name].append(min(times))
            cycle[name].append(sum(times))
        if r == 0 and rounds.get("cycle_budget") is not None:  # the first round prices one
            fits = int(rounds["cycle_budget"] / max(clock() - start, 1e-9))
            count = max(min(count, fits), min(MIN_ROUNDS, count))
        r += 1
    for name, baseline in baselines.items():
        row = rows.setdefault(name, Row(library, name))
        row.nonsync[inner_name] = Stats.ratio(nonsync[name], nonsync[baseline])
        row.overhead_us[inner_name] = Stats.difference(nonsync[name], nonsync[baseline]).scaled(1e6)
        row.amortized[inner_name] = Stats.ratio(cycle[name], cycle[baseline])
    return nonsync, cycle


class _CoreBare:
    """The core's inner optimizer alone: ``θ ← θ + delta``, new arrays every step."""

    def __init__(self, inner: lc.InnerOptimizer, params: tuple[Any, ...], grads: Any) -> None:
        self.inner, self.params, self.grads = inner, params, grads
        self.state = inner.init(params)

    def step(self) -> None:
        delta, self.state = self.inner.update(self.grads, self.state, self.params)
        self.params = tuple(p + d for p, d in zip(self.params, delta))


class _CoreRunner:
    """The functional core's ``lookahead``, stepping its own tuple of parameters."""

    def __init__(self, inner: lc.InnerOptimizer, params: tuple[Any, ...], grads: Any) -> None:
        self.params, self.grads = params, grads
        self.opt = lc.lookahead(inner, k=K, alpha=ALPHA)
        self.state = self.opt.init(params)

    def step(self) -> None:
        self.params, self.state = self.opt.step(self.params, self.grads, self.state)


def core_step_group(library: str, label: str, fresh_params: Callable[[], tuple[Any, ...]],
                    grads: Any, inner_name: str, rounds: dict[str, Any],
                    rows: dict[str, Row]) -> None:
    """The core's ``lookahead`` (row ``label``) against its inner optimizer alone, in ``library``.

    ``fresh_params()`` gives a new copy of the starting parameters (each
    stepper owns one); the core returns new arrays every step.
    """
    bare = _CoreBare(CORE_INNERS[inner_name](), fresh_params(), grads)
    core = _CoreRunner(CORE_INNERS[inner_name](), fresh_params(), grads)
    core_rounds = {**rounds, "cycles": rounds["core_cycles"], "cycle_budget": None}
    measure_steps(library, {"core bare": bare.step, label: core.step}, {label: "core bare"},
                  inner_name, core_rounds, rows)
