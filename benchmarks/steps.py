"""Cycles of k = 5 steps of several optimizers, side by side (any library)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .results import Row
from .timing import MIN_ROUNDS, Stats

__all__ = ["K", "NEVER", "measure_steps", "repeat"]

K = 5
"""The synchronization period of every amortized measurement."""

NEVER = 10**9
"""A k no benchmark reaches: every step is a non-sync step."""


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
