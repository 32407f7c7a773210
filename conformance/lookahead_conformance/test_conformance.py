"""The conformance suite, one test per check; run with ``pytest --pyargs lookahead_conformance``."""

from __future__ import annotations

from lookahead_conformance.checks import CHECKS, run_check


def _certify(name: str, backend: object) -> None:
    result = run_check(name, backend)
    assert result.passed, f"{backend.name}: {result.detail}"


def test_eq01_closed_form(lookahead_backend):
    """eq. 0.1: slow weights are the EMA of the fast weights before each sync."""
    _certify("eq01_closed_form", lookahead_backend)


def test_schedule(lookahead_backend):
    """Algorithm 1: φ₀ = θ₀ eagerly, a sync after exactly every k-th step."""
    _certify("schedule", lookahead_backend)


def test_reference(lookahead_backend):
    """Agreement with lookahead_core on NumPy float64 for SGD, momentum, Nesterov, Adam."""
    _certify("reference", lookahead_backend)


def test_edge_cases(lookahead_backend):
    """k = 1, α = 0 and α = 1 exact."""
    _certify("edge_cases", lookahead_backend)


def test_dtype_shape(lookahead_backend):
    """dtype and shape preserved."""
    _certify("dtype_shape", lookahead_backend)


def test_round_trip(lookahead_backend):
    """State round trip bit-exact on and off a sync boundary."""
    _certify("round_trip", lookahead_backend)


def test_bad_input(lookahead_backend):
    """Bad k/α rejected; a rejected step changes nothing."""
    _certify("bad_input", lookahead_backend)


assert set(CHECKS) == {
    name.removeprefix("test_") for name in dir() if name.startswith("test_")
}, "every check needs its test"
