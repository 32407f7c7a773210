"""Shared fixtures for the test suite.

``xp`` runs a test once per array library (in the style of SciPy's ``xp``
fixture): NumPy, array-api-strict, PyTorch (CPU) and JAX. The fixture yields
the array-api-compat namespace of the library, so that tests use one portable
API (``xp.asarray``, ``xp.float64``, ...); a library that is not installed is
skipped with the reason "<lib> not installed".

Helpers that are plain functions (conversion to NumPy, memory sharing, ...)
live in ``tests/core_helpers.py``.
"""

from __future__ import annotations

import importlib

import pytest

# JAX computes in float32 unless float64 is enabled before the first array is
# created; the float64 comparisons (1e-12 relative) need it on every backend.
try:
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:  # pragma: no cover - jax is optional
    jax = None

# One intra-op thread: reductions and elementwise kernels then run in one fixed
# order, which the bit-exact comparisons against PyTorch rely on.
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is optional
    torch = None


@pytest.fixture(autouse=True)
def _torch_one_thread():
    """Every test starts with one torch thread, whatever a previous test set; restored after."""
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# name used in test ids -> module to import (the library itself, whose
# array-api-compat namespace is what the fixture yields)
XP_LIBRARIES = {
    "numpy": "numpy",
    "array_api_strict": "array_api_strict",
    "torch": "torch",
    "jax.numpy": "jax.numpy",
}


def _namespace(name: str):
    """Import library ``name`` and return its array-api-compat namespace, or skip."""
    try:
        lib = importlib.import_module(XP_LIBRARIES[name])
    except ImportError:
        pytest.skip(f"{name} not installed")
    import array_api_compat

    # The namespace of a real array of that library: array_api_compat.numpy for
    # NumPy, array_api_compat.torch for PyTorch, the library itself for
    # array-api-strict and jax.numpy.
    return array_api_compat.array_namespace(lib.asarray([0.0]))


@pytest.fixture(params=[pytest.param(name, id=name) for name in XP_LIBRARIES])
def xp(request):
    """The array-api-compat namespace of one array library (CPU)."""
    return _namespace(request.param)


@pytest.fixture
def rng():
    """A seeded NumPy generator: test data are reproducible run to run."""
    import numpy as np

    return np.random.default_rng(20190719)  # arXiv 1907.08610


# -- the terminal summary: skips grouped by reason ---------------------------------------


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _skips_by_reason(skipped_reports) -> list[tuple[str, int, int]]:
    """(reason, tests, modules) for each distinct skip reason, the most frequent first.

    A module (or class) skipped at collection is one report for all of its tests,
    which are not collected: it is counted apart, as a module, not as a test.
    """
    counts: dict[str, list[int]] = {}
    for report in skipped_reports:
        _, _, reason = report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        skipped_whole = isinstance(report, pytest.CollectReport)
        counts.setdefault(reason, [0, 0])[1 if skipped_whole else 0] += 1
    return sorted(((reason, tests, modules) for reason, (tests, modules) in counts.items()),
                  key=lambda row: (-(row[1] + row[2]), row[0]))


def pytest_terminal_summary(terminalreporter):
    """Print the skips grouped by reason: ``-ra`` lists them by location only."""
    rows = _skips_by_reason(terminalreporter.stats.get("skipped", []))
    if not rows:
        return
    terminalreporter.write_sep("=", "skips by reason")
    for reason, tests, modules in rows:
        what = [_plural(n, word) for n, word in ((tests, "test"), (modules, "module")) if n]
        terminalreporter.write_line(f"{', '.join(what)}: {reason}")
