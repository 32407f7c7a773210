"""Certify backends and print the backend × check report (used by the CLI).

The report starts with one header line: the kit's version, its
`CHECKS_VERSION`, the seed and the number of drawn examples (what reproduces
the run), and the Python and NumPy versions. Then a Markdown table, one row
per backend (keyed by `Backend.name`), one column per check. A cell reads
``pass (0.8 eps)`` for a check with a tolerance (the worst error measured,
in eps of the dtype times the largest magnitude involved), ``pass (exact)``
for a bit-exact check, ``pass`` for a rule, ``FAIL (3/28 cases)`` (how many
of its cases failed, and the worst error where one was measured), ``n/a``
(the backend lacks an optional capability the check needs), ``skipped``
(the backend cannot run on this machine, or the check is on the skip list),
``xfail`` (a failure on the xfail list) or ``XPASS`` (a check on the xfail
list that passed: a failure, so that the list is kept current). Notes under
the table give every skip reason, every n/a reason and every failing case.

The skip and xfail lists (`read_list`) name a backend and a check per line,
``backend::check``; a line that matches no backend and check of the run is
an error (`unmatched_entries`), so a list cannot rot silently.
"""

from __future__ import annotations

import importlib
import math
import platform
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .checks import (
    CHECKS,
    CHECKS_VERSION,
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_SEED,
    FAIL,
    NOT_APPLICABLE,
    PASS,
    CheckResult,
    Settings,
    make_settings,
    run_check,
)
from .protocol import Backend
from .registry import BrokenBackend, load_backend
from .tools import require_tools

__all__ = [
    "BackendReport",
    "ListEntry",
    "XFAIL",
    "XPASS",
    "certify",
    "format_report",
    "header_line",
    "kit_version",
    "read_list",
    "report_json",
    "unmatched_entries",
]

RAN, SKIPPED, BROKEN = "ran", "skipped", "broken"
XFAIL, XPASS = "xfail", "xpass"
"""Statuses of a check on the xfail list: it failed as listed / it passed although listed."""


def kit_version() -> str:
    """The version of the installed kit (the ``lookahead-optimizer`` distribution)."""
    try:
        return version("lookahead-optimizer")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def header_line(settings: Settings) -> str:
    """What reproduces a run: the kit, the version of its checks, the seed and the examples."""
    return (f"lookahead_conformance {kit_version()}, checks version {CHECKS_VERSION}: "
            f"seed {settings.seed}, max examples {settings.max_examples}; "
            f"Python {platform.python_version()}, NumPy {np.__version__}")


# --- the skip and xfail lists ----------------------------------------------------------------


class ListEntry(NamedTuple):
    """One line of a skip or xfail list: ``backend::check  # reason``.

    Attributes:
        backend: a `Backend.name`.
        check: a key of `CHECKS`.
        where: ``FILE:LINE``, to name the line in messages.
        reason: the comment after ``#`` on the same line (may be empty).
        line: the line as written, without its comment.
    """

    backend: str
    check: str
    where: str
    reason: str
    line: str


def read_list(path: str | Path) -> list[ListEntry]:
    """The entries of a skip or xfail list: one ``backend::check`` per line, ``#`` comments.

    Raises:
        ValueError: the file cannot be read, or a line is not ``backend::check``
            with a known check (the message names the file and line).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line, _, comment = raw.partition("#")
        line = line.strip()
        if not line:
            continue
        backend, sep, check = line.rpartition("::")
        if not sep or not backend or check not in CHECKS:
            raise ValueError(f"{path}:{number}: {line!r} is not 'backend::check' with check one of "
                             f"{', '.join(CHECKS)}")
        entries.append(ListEntry(backend, check, f"{path}:{number}", comment.strip(), line))
    return entries


def unmatched_entries(entries: Iterable[ListEntry], backend_names: Iterable[str]) -> list[str]:
    """A message for each entry that names no backend of the run (its check is known).

    The run's pairs are every backend selected, skipped ones included, with
    every check, whichever checks were chosen to run: a line for a check left
    out by ``--check`` or ``-k`` still matches.
    """
    names = sorted(set(backend_names))
    return [f"{e.where}: {e.line!r} matches no backend and check of this run "
            f"(backends: {', '.join(names) or 'none'}); a backend is listed by its name, "
            "as the report prints it"
            for e in entries if e.backend not in names]


def _listed_for(entries: Iterable[ListEntry], name: str) -> dict[str, ListEntry]:
    return {e.check: e for e in entries if e.backend == name}


def _as_listed_skip(check: str, entry: ListEntry) -> CheckResult:
    detail = f"listed in {entry.where}" + (f": {entry.reason}" if entry.reason else "")
    return CheckResult(check, SKIPPED, None, detail)


def _as_listed_xfail(result: CheckResult, entry: ListEntry) -> CheckResult:
    if result.status == FAIL:
        return result._replace(status=XFAIL)
    if result.status == PASS:
        return result._replace(status=XPASS, detail=(
            f"listed in {entry.where} as a known deviation, but it passed: delete the line"))
    return result  # not applicable: neither


# --- certifying ------------------------------------------------------------------------------


class BackendReport(NamedTuple):
    """All results for one backend.

    Attributes:
        name: the backend's `Backend.name` (for one that could not be loaded,
            the name or ``module:attr`` it was asked for).
        status: ``"ran"``, ``"skipped"`` (its `skip_reason` said it cannot
            run here) or ``"broken"`` (it could not be loaded: every check fails).
        reason: the skip reason or the load error; ``None`` when it ran.
        results: check name -> `CheckResult` (empty when skipped).
        settings: the `Settings` the checks ran with.
        library: ``{"name": ..., "version": ...}`` of the backend's array
            library, ``None`` when it did not run or does not say.
    """

    name: str
    status: str
    reason: str | None
    results: dict[str, CheckResult]
    settings: Settings = Settings()
    library: dict[str, str | None] | None = None

    @property
    def failed(self) -> bool:
        """Whether any check failed, or passed against the xfail list (a broken backend always has)."""
        return any(r.status in (FAIL, XPASS) for r in self.results.values())


def _library(backend: Backend) -> dict[str, str | None] | None:
    """The array library of ``backend``'s namespace and its version; ``None`` if it cannot say.

    ``array_api_compat.numpy`` is NumPy, ``jax.numpy`` is JAX: the first
    package name that is not array-api-compat's.
    """
    try:
        module = backend.namespace().__name__
        parts = module.split(".")
        name = parts[1] if parts[0] == "array_api_compat" and len(parts) > 1 else parts[0]
        found = getattr(importlib.import_module(name), "__version__", None)
    except Exception:  # a broken namespace() fails the dtype_shape_device check, not the report
        return None
    if found is None:
        try:
            found = version(name)
        except PackageNotFoundError:
            found = None
    return {"name": name, "version": None if found is None else str(found)}


def certify(
    backend: str | Backend | BrokenBackend,
    checks: Sequence[str] | None = None,
    *,
    seed: int = DEFAULT_SEED,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    skip: Sequence[ListEntry] = (),
    xfail: Sequence[ListEntry] = (),
) -> BackendReport:
    """Run ``checks`` (default: all of `CHECKS`) on a backend given by name, ``module:attr`` or object.

    Args:
        backend: a registered name, ``module:attr``, or the backend itself.
        checks: names of `CHECKS`, in the order to run.
        seed: the seed of the run's `Settings` (see `make_settings`).
        max_examples: the number of drawn eq. 0.1 cases of the run's `Settings`.
        skip: list entries (`read_list`); those of this backend are not run
            and reported ``"skipped"`` with the line and its reason.
        xfail: list entries of known deviations; a failure of one of this
            backend's is reported ``"xfail"``, a pass ``"xpass"`` (a failure).

    Raises:
        ValueError: an unknown backend name or check name, a bad ``seed`` or ``max_examples``.
        TypeError: a ``seed`` or ``max_examples`` that is not an int.
        MissingToolError: a tool of the kit is not installed (before any check runs).
    """
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        raise ValueError(f"check must be one of {', '.join(CHECKS)}; got {', '.join(unknown)}")
    settings = make_settings(seed, max_examples)
    require_tools()
    if isinstance(backend, str):
        backend = load_backend(backend)
    label = getattr(backend, "name", None)
    if not isinstance(label, str):
        label = repr(backend)
    if not isinstance(backend, BrokenBackend):
        try:
            reason = backend.skip_reason()
        except Exception as exc:  # a backend that cannot even say whether it runs is broken
            backend = BrokenBackend(label, f"skip_reason() raised {exc!r}")
        else:
            if reason:
                return BackendReport(label, SKIPPED, str(reason), {}, settings)
    skipped, expected = _listed_for(skip, label), _listed_for(xfail, label)
    results = {}
    for check in names:
        if check in skipped:
            results[check] = _as_listed_skip(check, skipped[check])
            continue
        result = run_check(check, backend, seed=settings.seed, max_examples=settings.max_examples)
        results[check] = _as_listed_xfail(result, expected[check]) if check in expected else result
    if isinstance(backend, BrokenBackend):
        return BackendReport(label, BROKEN, backend.error, results, settings)
    return BackendReport(label, RAN, None, results, settings, _library(backend))


# --- the text report -------------------------------------------------------------------------


def _eps(value: float) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.1f}" if value < 1000 else f"{value:.2g}"


def _failure_cell(word: str, result: CheckResult) -> str:
    facts = []
    if result.cases is not None:
        facts.append(f"{len(result.failures)}/{result.cases} cases")
    if result.worst_eps is not None:
        facts.append(f"{_eps(result.worst_eps)} eps")
    return f"{word} ({', '.join(facts)})" if facts else word


def _cell(result: CheckResult) -> str:
    if result.status == NOT_APPLICABLE:
        return "n/a"
    if result.status == SKIPPED:
        return "skipped"
    if result.status == XPASS:
        return "XPASS"
    if result.status in (FAIL, XFAIL):
        return _failure_cell("FAIL" if result.status == FAIL else "xfail", result)
    if result.worst_eps is not None:
        return f"pass ({_eps(result.worst_eps)} eps)"
    if CHECKS[result.name].exact:
        return "pass (exact)"
    return "pass"


def _settings_of(reports: Sequence[BackendReport]) -> Settings:
    """The settings all ``reports`` ran with (the defaults for none).

    Raises:
        ValueError: the reports ran with different settings: one header cannot describe them.
    """
    found = {r.settings for r in reports}
    if len(found) > 1:
        runs = ", ".join(f"seed {s.seed} with max examples {s.max_examples}" for s in sorted(found))
        raise ValueError(f"the reports ran with different settings ({runs}); report each run apart")
    return found.pop() if found else make_settings()


def _checks_of(reports: Sequence[BackendReport], checks: Sequence[str] | None) -> list[str]:
    """``checks``, or by default the checks the reports ran (all of `CHECKS` if none did)."""
    if checks is not None:
        return list(checks)
    ran = [c for c in CHECKS if any(c in r.results for r in reports)]
    return ran or list(CHECKS)


def _notes(reports: Sequence[BackendReport]) -> list[str]:
    notes: list[str] = []
    not_applicable: dict[tuple[str, str], list[str]] = {}
    for report in reports:
        if report.status == SKIPPED:
            notes.append(f"skipped  {report.name}: {report.reason}")
        elif report.status == BROKEN:
            notes.append(f"FAILED   {report.name}: could not be loaded: {report.reason}")
            continue
        for result in report.results.values():
            key = f"{report.name}::{result.name}"
            if result.status == NOT_APPLICABLE:
                not_applicable.setdefault((result.name, result.detail), []).append(report.name)
            elif result.status == FAIL:
                notes += [f"FAILED   {key}: {failure}" for failure in result.failures]
            elif result.status == XFAIL:
                notes += [f"xfail    {key}: {failure}" for failure in result.failures]
            elif result.status == XPASS:
                notes.append(f"XPASS    {key}: {result.detail}")
            elif result.status == SKIPPED:
                notes.append(f"skipped  {key}: {result.detail}")
            elif result.detail != "ok":
                notes.append(f"note     {key}: {result.detail}")
    for (check, detail), backends in not_applicable.items():
        notes.append(f"n/a      {check} on {', '.join(backends)}: {detail}")
    return notes


def _summary(reports: Sequence[BackendReport], names: Sequence[str]) -> str:
    counts = {status: 0 for status in (PASS, FAIL, NOT_APPLICABLE, XFAIL, XPASS, SKIPPED)}
    for report in reports:
        for result in report.results.values():
            counts[result.status] += 1
    listed = [f"{counts[XFAIL]} xfailed"] if counts[XFAIL] else []
    listed += [f"{counts[XPASS]} xpassed"] if counts[XPASS] else []
    listed += [f"{counts[SKIPPED]} checks skipped (listed)"] if counts[SKIPPED] else []
    skipped = sum(r.status == SKIPPED for r in reports)
    return ", ".join([
        f"{len(reports)} backends x {len(names)} checks: {counts[PASS]} passed",
        f"{counts[FAIL]} failed", f"{counts[NOT_APPLICABLE]} not applicable", *listed,
        f"{skipped} backends skipped",
    ])


def format_report(reports: Iterable[BackendReport], checks: Sequence[str] | None = None) -> str:
    """The header line, the Markdown table, the notes (skips, n/a, every failing case), a summary.

    ``checks``: the columns; by default the checks the reports ran, in `CHECKS` order.

    Raises:
        ValueError: the reports ran with different `Settings`.
    """
    reports = list(reports)
    names = _checks_of(reports, checks)
    lines = [header_line(_settings_of(reports)), "",
             "| backend | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for report in reports:
        if report.status == SKIPPED:
            cells = ["skipped"] * len(names)
        else:
            cells = [_cell(report.results[c]) for c in names]
        lines.append(f"| {report.name} | " + " | ".join(cells) + " |")
    notes = _notes(reports)
    return "\n".join(lines + [""] + notes + ([""] if notes else []) + [_summary(reports, names)])


# --- the JSON report -------------------------------------------------------------------------


def report_json(reports: Iterable[BackendReport], checks: Sequence[str] | None = None) -> dict[str, Any]:
    """The results as JSON-ready data: what reproduces the run, the checks' rules, then per
    backend (by `Backend.name`) its status, array library and results. The shape is the
    JSON Schema published on the Certify page.

    Raises:
        ValueError: the reports ran with different `Settings`.
    """
    reports = list(reports)
    names = _checks_of(reports, checks)
    settings = _settings_of(reports)
    return {
        "kit_version": kit_version(),
        "checks_version": CHECKS_VERSION,
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "seed": settings.seed,
        "max_examples": settings.max_examples,
        "checks": {c: CHECKS[c].summary for c in names},
        "backends": {
            r.name: {
                "status": r.status,
                "reason": r.reason,
                "library": r.library,
                "results": {res.name: _result_json(res) for res in r.results.values()},
            }
            for r in reports
        },
    }


def _result_json(result: CheckResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "worst_eps": _json_number(result.worst_eps),
        "detail": result.detail,
        "cases": result.cases,
        "failed_cases": len(result.failures),
        "failures": list(result.failures),
    }


def _json_number(value: float | None) -> float | str | None:
    # JSON has no inf or nan; a non-finite error (a NaN weight) is written as a string.
    if value is None or math.isfinite(value):
        return value
    return str(value)
