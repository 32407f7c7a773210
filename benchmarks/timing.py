"""Side-by-side timing: every variant once per round, medians and ranges over the rounds.

Ratios are formed round by round (variant time ÷ baseline time in the same
round) before taking the median, so a change of machine load between rounds
moves both terms of each ratio together. The order of the variants rotates
from round to round so that none always runs right after the same neighbour.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Stats", "interleaved", "phase"]


@contextlib.contextmanager
def phase(label: str) -> Iterator[None]:
    """Print ``label`` and, when done, the seconds it took, to stderr (progress of a run)."""
    print(f"    {label} ...", file=sys.stderr, flush=True, end="")
    start = time.perf_counter()
    yield
    print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Stats:
    """Median and range of repeated measurements."""

    median: float
    low: float
    high: float
    count: int
    q1: float = float("nan")
    q3: float = float("nan")

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
        return cls(statistics.median(values), min(values), max(values), len(values), q1, q3)

    @classmethod
    def ratio(cls, numerators: Sequence[float], denominators: Sequence[float]) -> Stats:
        """Round-by-round ratios."""
        return cls.of([n / d for n, d in zip(numerators, denominators)])

    @classmethod
    def difference(cls, minuends: Sequence[float], subtrahends: Sequence[float]) -> Stats:
        """Round-by-round differences."""
        return cls.of([a - b for a, b in zip(minuends, subtrahends)])

    def scaled(self, factor: float) -> Stats:
        return Stats(self.median * factor, self.low * factor, self.high * factor, self.count,
                     self.q1 * factor, self.q3 * factor)

    def fmt(self, digits: int = 2) -> str:
        """``median [low–high]``."""
        return f"{self.median:.{digits}f} [{self.low:.{digits}f}–{self.high:.{digits}f}]"


MIN_ROUNDS = 5


def interleaved(
    variants: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    best_of: int = 1,
    budget: float | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each variant, one sample per round, interleaved.

    In each round every variant runs ``best_of`` times back to back and its
    sample is the fastest of those calls: on a machine shared with other
    work, a preempted call only ever gets slower, so the fastest of a few is
    the closest to the variant's own cost. With a ``budget`` (seconds), the
    number of rounds is what fits in it by the last warm-up round's time,
    between `MIN_ROUNDS` and ``rounds``. Each callable must finish its work
    before it returns (block on asynchronous results itself).
    """
    names = list(variants)
    clock = time.perf_counter
    round_seconds = 0.0
    for _ in range(max(1, warmup)):
        start = clock()
        for name in names:
            variants[name]()
        round_seconds = clock() - start
    if budget is not None:
        fits = int(budget / max(round_seconds * best_of, 1e-9))
        rounds = max(min(rounds, fits), min(MIN_ROUNDS, rounds))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = variants[name]
            best = float("inf")
            for _ in range(best_of):
                start = clock()
                fn()
                best = min(best, clock() - start)
            times[name].append(best)
    return times
