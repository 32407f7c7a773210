"""A check reports every failing case, with a count; ``bad_input`` probes broadcasting and casting.

A maintainer must see at once which cases fail and which pass, without
writing variants of the backend: a check goes on after a failing case (a
hyperparameter the backend accepts, an α it refuses) and reports them all,
in the result, the report's notes and the JSON. The toys here differ from
the correct toy of ``test_conformance_toys.py`` in one way each.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_conformance_toys import ToyBackend, ToyRunner

from lookahead_conformance import CHECKS, certify, format_report, load_backend, run_check
from lookahead_conformance.checks import BAD_HYPERPARAMETERS, FAIL, PASS, bad_gradient_probes
from lookahead_conformance.report import report_json

def _bad_input_cases(dtypes) -> int:
    return sum(len(BAD_HYPERPARAMETERS) + len(bad_gradient_probes(d)) for d in dtypes)


LAX_ACCEPTED = ("k=True, alpha=0.5", "k=2.5, alpha=0.5", "k=2.0, alpha=0.5", "k='3', alpha=0.5",
                "k=3, alpha=True", "k=3, alpha='0.5'")


class LaxBackend(ToyBackend):
    """Converts k and α with int() and float() before checking their range (accepts True, '3')."""

    def __init__(self):
        super().__init__()
        self.name = "toy-lax"

    def create(self, params, inner, k, alpha):
        k, alpha = int(k), float(alpha)
        if k < 1 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"k={k}, alpha={alpha} out of range")
        return super().create(params, inner, k, alpha)


class RefusesAlphaZero(ToyBackend):
    """Rejects α = 0 (as if α had to be positive); correct otherwise."""

    def __init__(self):
        super().__init__()
        self.name = "toy-alpha-positive"

    def create(self, params, inner, k, alpha):
        if alpha == 0:
            raise ValueError("alpha must be > 0")
        return super().create(params, inner, k, alpha)


class AdaptingRunner(ToyRunner):
    """Broadcasts a gradient to its parameter's shape and casts it to its dtype unless that
    loses precision: an integer or a narrower float is accepted, a wider float refused."""

    def step(self, grads):
        if len(grads) != len(self.params):
            raise ValueError("one gradient per parameter")
        adapted = []
        for g, p in zip(grads, self.params):
            if np.issubdtype(g.dtype, np.floating) and g.dtype.itemsize > p.dtype.itemsize:
                raise TypeError(f"a {g.dtype} gradient would lose precision in {p.dtype}")
            adapted.append(np.broadcast_to(g, p.shape).astype(p.dtype))  # ValueError if it cannot
        super().step(adapted)


class AdaptingBackend(ToyBackend):
    def __init__(self, dtypes=("float32", "float64")):
        super().__init__()
        self.name = "toy-adapting"
        self.dtypes = dtypes

    def create(self, params, inner, k, alpha):
        return AdaptingRunner(params, inner, k, alpha, self.faults)


# --- every failing case, with a count ---------------------------------------------------------


def test_bad_input_reports_every_accepted_hyperparameter():
    result = run_check("bad_input", LaxBackend())
    assert result.status == FAIL
    assert len(result.failures) == 2 * len(LAX_ACCEPTED), result.failures  # per dtype
    for dtype in ("float32", "float64"):
        for accepted in LAX_ACCEPTED:
            assert f"{dtype}: {accepted} was accepted" in result.failures, (dtype, accepted, result.failures)
    assert result.cases == _bad_input_cases(("float32", "float64"))
    assert f"{len(result.failures)} of {result.cases} cases fail" in result.detail
    assert not [f for f in result.failures if "gradient" in f]  # the gradient probes still ran, passed


def test_eq01_goes_on_after_an_alpha_the_backend_refuses():
    result = run_check("eq01_closed_form", RefusesAlphaZero())
    assert result.status == FAIL
    assert result.cases == 2 * 7 + 25  # every scripted and drawn case ran
    assert 2 <= len(result.failures) < result.cases
    assert all("alpha=0.0 " in f and "ValueError: alpha must be > 0" in f for f in result.failures), \
        result.failures
    assert sum("float32 k=2 alpha=0.0" in f for f in result.failures) >= 1  # the scripted α = 0


def test_report_and_json_list_every_failing_case():
    report = certify(LaxBackend(), ["bad_input", "schedule"])
    failures = report.results["bad_input"].failures
    text = format_report([report])
    row = next(line for line in text.splitlines() if line.startswith("| toy-lax |"))
    assert f"| FAIL ({len(failures)}/{report.results['bad_input'].cases} cases) |" in row, row
    for failure in failures:
        assert f"FAILED   toy-lax::bad_input: {failure}" in text
    result = report_json([report])["backends"]["toy-lax"]["results"]["bad_input"]
    assert result["failures"] == list(failures)
    assert result["failed_cases"] == len(failures) and result["cases"] == report.results["bad_input"].cases
    passed = report_json([report])["backends"]["toy-lax"]["results"]["schedule"]
    assert passed["failures"] == [] and passed["failed_cases"] == 0 and passed["cases"] == 8


def test_a_passing_check_counts_its_cases():
    # The toy has no create_outer (the outer check's count: tests/test_conformance_outer.py).
    cases = {name: run_check(name, ToyBackend()).cases for name in CHECKS if name != "outer"}
    assert all(isinstance(n, int) and n > 0 for n in cases.values()), cases


# --- bad_input: broadcasting and casting ------------------------------------------------------


def test_bad_input_probes_broadcasting_gradients():
    result = run_check("bad_input", AdaptingBackend(dtypes=("float64",)))
    assert result.status == FAIL
    broadcast = [f for f in result.failures if "broadcasts" in f]
    assert any("shape (1,) for a (2, 3) parameter" in f for f in broadcast), result.failures
    assert any("shape (3,) for a (2, 3) parameter" in f for f in broadcast), result.failures
    assert not any("shape (4,)" in f for f in result.failures)  # that one cannot broadcast


@pytest.mark.parametrize(("dtypes", "accepted"), [
    (("float32",), "a float16 gradient for a float32 parameter"),
    (("float64",), "a float32 gradient for a float64 parameter"),
    (("float32", "float64"), "a float32 gradient for a float64 parameter"),
])
def test_bad_input_probes_mismatched_dtypes(dtypes, accepted):
    result = run_check("bad_input", AdaptingBackend(dtypes=dtypes))
    assert result.status == FAIL
    assert any(accepted in f and f.endswith("was accepted") for f in result.failures), result.failures
    assert any("int64 gradient" in f for f in result.failures), result.failures
    # the narrowing cast is refused, as it must be
    assert not any("float64 gradient for a float32" in f for f in result.failures), result.failures


def test_the_correct_toy_passes_every_probe():
    result = run_check("bad_input", ToyBackend())
    assert result.status == PASS, result.detail
    assert result.cases == _bad_input_cases(("float32", "float64"))


# --- drawn cases follow the seed alone ----------------------------------------------------------


def _drawn_cases(monkeypatch) -> list:
    from lookahead_conformance import checks

    seen = []
    monkeypatch.setattr(checks, "_run_eq01_case", lambda backend, case, tally: seen.append(case))
    checks._draw_eq01_cases(load_backend("core-numpy"), checks._Tally(), checks.Settings(seed=11))
    return seen


def test_drawn_cases_do_not_depend_on_the_callers_code(monkeypatch, tmp_path):
    """Hypothesis draws literals from the source of loaded non-site-packages modules; the
    kit's draws must not: the same seed gives the same cases whatever else is imported."""
    before = _drawn_cases(monkeypatch)
    # A module of the caller's (not under site-packages, not a test file) full of floats and
    # ints a drawn case could take: k, alpha, syncs, seeds.
    module = tmp_path / "callers_constants_mod.py"
    module.write_text("VALUES = [" + ", ".join(
        [repr(x) for x in (0.123456, 0.987654, 0.31415, 0.271828, 0.4242, 1e-05, 0.999)]
        + [str(n) for n in (2, 3, 4, 5, 6, 3141592, 2718281, 4242424242)]) + "]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("callers_constants_mod")
    after = _drawn_cases(monkeypatch)
    assert len(before) == len(after) > 0
    assert after == before
