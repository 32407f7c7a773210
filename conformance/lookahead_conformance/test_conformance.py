"""The conformance suite, one test per check; run with ``pytest --pyargs lookahead_conformance``.

Each test certifies one rule on the backend given by ``--lookahead-backend``;
the rule and its tolerance are documented on the check in
`lookahead_conformance.checks`.
"""

from __future__ import annotations

from lookahead_conformance.checks import CHECKS
from lookahead_conformance.plugin import certify_check


def test_eq01_closed_form(lookahead_backend):
    """eq. 0.1: slow weights are the closed-form EMA of the fast weights before each sync."""
    certify_check("eq01_closed_form", lookahead_backend)


def test_schedule(lookahead_backend):
    """Algorithm 1: φ₀ = θ₀ eagerly, a sync after exactly every k-th step, no aliasing."""
    certify_check("schedule", lookahead_backend)


def test_reference(lookahead_backend):
    """Agreement with lookahead_core on NumPy float64: SGD, Polyak, Nesterov, Adam."""
    certify_check("reference", lookahead_backend)


def test_edge_cases(lookahead_backend):
    """k = 1, α = 0 and α = 1, bit for bit."""
    certify_check("edge_cases", lookahead_backend)


def test_dtype_shape_device(lookahead_backend):
    """Conversions and the optimizer keep dtype, shape and device."""
    certify_check("dtype_shape_device", lookahead_backend)


def test_round_trip(lookahead_backend):
    """State round trip bit-exact on and off a sync boundary."""
    certify_check("round_trip", lookahead_backend)


def test_bad_input(lookahead_backend):
    """Bad k, α and gradients rejected with TypeError/ValueError, nothing changed."""
    certify_check("bad_input", lookahead_backend)


def test_memory(lookahead_backend):
    """One extra copy of the parameters (needs extra_state_bytes())."""
    certify_check("memory", lookahead_backend)


def test_skipped_steps(lookahead_backend):
    """Skipped steps do not advance the schedule (needs step_skipped())."""
    certify_check("skipped_steps", lookahead_backend)


def test_outer(lookahead_backend):
    """Outer optimizers: outer SGD(lr = α) is eq. 0.1, others match the reference (needs create_outer())."""
    certify_check("outer", lookahead_backend)


assert set(CHECKS) == {
    name.removeprefix("test_") for name in dir() if name.startswith("test_")
}, "every check needs its test"
