"""Certify backends and print the backend × check report (used by the CLI).

The report is a Markdown table, one row per backend, one column per check.
A cell reads ``pass (0.8 eps)`` for a check with a tolerance (the worst
error measured, in eps of the dtype times the largest magnitude involved),
``pass (exact)`` for a bit-exact check, ``pass`` for a rule, ``FAIL``,
``n/a`` (the backend lacks an optional capability the check needs), or
``skipped`` (the backend cannot run on this machine). Notes under the table
give every skip reason, every n/a reason and every failure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from .checks import CHECKS, FAIL, NOT_APPLICABLE, PASS, CheckResult, run_check
from .protocol import Backend
from .registry import BrokenBackend, load_backend
from .tools import require_tools

__all__ = ["BackendReport", "certify", "format_report", "report_json"]

RAN, SKIPPED, BROKEN = "ran", "skipped", "broken"


class BackendReport(NamedTuple):
    """All results for one backend.

    Attributes:
        name: the backend's name (or the ``module:attr`` it was loaded from).
        status: ``"ran"``, ``"skipped"`` (its `skip_reason` said it cannot
            run here) or ``"broken"`` (it could not be loaded: every check fails).
        reason: the skip reason or the load error; ``None`` when it ran.
        results: check name -> `CheckResult` (empty when skipped).
    """

    name: str
    status: str
    reason: str | None
    results: dict[str, CheckResult]

    @property
    def failed(self) -> bool:
        """Whether any check failed (a broken backend always has)."""
        return any(r.status == FAIL for r in self.results.values())


def certify(backend: str | Backend | BrokenBackend, checks: Sequence[str] | None = None) -> BackendReport:
    """Run ``checks`` (default: all of `CHECKS`) on a backend given by name, ``module:attr`` or object.

    Raises:
        ValueError: an unknown backend name or check name.
        MissingToolError: a tool of the kit is not installed (before any check runs).
    """
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        raise ValueError(f"check must be one of {', '.join(CHECKS)}; got {', '.join(unknown)}")
    require_tools()
    label = backend if isinstance(backend, str) else getattr(backend, "name", repr(backend))
    if isinstance(backend, str):
        backend = load_backend(backend)
    if isinstance(backend, BrokenBackend):
        return BackendReport(label, BROKEN, backend.error, {c: run_check(c, backend) for c in names})
    try:
        reason = backend.skip_reason()
    except Exception as exc:  # a backend that cannot even say whether it runs is broken
        broken = BrokenBackend(label, f"skip_reason() raised {exc!r}")
        return BackendReport(label, BROKEN, broken.error, {c: run_check(c, broken) for c in names})
    if reason:
        return BackendReport(label, SKIPPED, str(reason), {})
    return BackendReport(label, RAN, None, {c: run_check(c, backend) for c in names})


def _eps(value: float) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.1f}" if value < 1000 else f"{value:.2g}"


def _cell(result: CheckResult) -> str:
    if result.status == NOT_APPLICABLE:
        return "n/a"
    word = "pass" if result.status == PASS else "FAIL"
    if result.worst_eps is not None:
        return f"{word} ({_eps(result.worst_eps)} eps)"
    if result.status == PASS and CHECKS[result.name].exact:
        return "pass (exact)"
    return word


def format_report(reports: Iterable[BackendReport], checks: Sequence[str] | None = None) -> str:
    """The Markdown table, then the notes (skips, n/a, failures), then a one-line summary."""
    reports = list(reports)
    names = list(CHECKS) if checks is None else list(checks)
    lines = ["| backend | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for report in reports:
        if report.status == SKIPPED:
            cells = ["skipped"] * len(names)
        else:
            cells = [_cell(report.results[c]) for c in names]
        lines.append(f"| {report.name} | " + " | ".join(cells) + " |")

    notes: list[str] = []
    not_applicable: dict[tuple[str, str], list[str]] = {}
    for report in reports:
        if report.status == SKIPPED:
            notes.append(f"skipped  {report.name}: {report.reason}")
        elif report.status == BROKEN:
            notes.append(f"FAILED   {report.name}: could not be loaded: {report.reason}")
            continue
        for result in report.results.values():
            if result.status == NOT_APPLICABLE:
                not_applicable.setdefault((result.name, result.detail), []).append(report.name)
            elif result.status == FAIL:
                notes.append(f"FAILED   {report.name}::{result.name}: {result.detail}")
            elif result.detail != "ok":
                notes.append(f"note     {report.name}::{result.name}: {result.detail}")
    for (check, detail), backends in not_applicable.items():
        notes.append(f"n/a      {check} on {', '.join(backends)}: {detail}")

    counts = {PASS: 0, FAIL: 0, NOT_APPLICABLE: 0}
    for report in reports:
        for result in report.results.values():
            counts[result.status] += 1
    skipped = sum(r.status == SKIPPED for r in reports)
    summary = (f"{len(reports)} backends x {len(names)} checks: {counts[PASS]} passed, "
               f"{counts[FAIL]} failed, {counts[NOT_APPLICABLE]} not applicable, "
               f"{skipped} backends skipped")
    return "\n".join(lines + [""] + notes + ([""] if notes else []) + [summary])


def report_json(reports: Iterable[BackendReport], checks: Sequence[str] | None = None) -> dict[str, Any]:
    """The results as JSON-ready data: the checks' rules, then per backend its status and results."""
    names = list(CHECKS) if checks is None else list(checks)
    return {
        "checks": {c: CHECKS[c].summary for c in names},
        "backends": {
            r.name: {
                "status": r.status,
                "reason": r.reason,
                "results": {
                    res.name: {"status": res.status, "worst_eps": _json_number(res.worst_eps),
                               "detail": res.detail}
                    for res in r.results.values()
                },
            }
            for r in reports
        },
    }


def _json_number(value: float | None) -> float | str | None:
    # JSON has no inf or nan; a non-finite error (a NaN weight) is written as a string.
    if value is None or math.isfinite(value):
        return value
    return str(value)
