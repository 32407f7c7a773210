"""Proposition 1 (eq. 0.3): `lookahead_core.theory.optimal_alpha`.

Independent expectations: a golden-section search on the 1-D function
α ↦ L(θ₀ + α(θₖ − θ₀)), and the vertex of the parabola through three of its
values (exact for a quadratic), both computed here in float64 NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest

from core_helpers import asarray, to_numpy
from lookahead_core import theory

GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def quadratic(x: np.ndarray, A: np.ndarray, b: np.ndarray) -> float:
    A = np.diag(A) if A.ndim == 1 else A
    return float(0.5 * x @ A @ x - b @ x)


def line_loss(alpha: float, theta0, thetak, A, b) -> float:
    return quadratic(theta0 + alpha * (thetak - theta0), A, b)


def golden_section_minimum(f, low: float, high: float, tol: float = 1e-11) -> float:
    """Minimizer of a unimodal f on [low, high] by golden-section search."""
    a, b = low, high
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(d)
    return 0.5 * (a + b)


def parabola_vertex(f) -> float:
    """Vertex of the parabola through (0, f(0)), (1, f(1)), (2, f(2))."""
    f0, f1, f2 = f(0.0), f(1.0), f(2.0)
    curvature = f0 - 2.0 * f1 + f2  # = 2 × (coefficient of α²)
    slope0 = (-3.0 * f0 + 4.0 * f1 - f2) / 2.0  # derivative at α = 0
    return -slope0 / curvature


def random_spd(rng, n: int, condition: float) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eig = np.geomspace(1.0, condition, n)
    A = (q * eig) @ q.T
    return 0.5 * (A + A.T)


@pytest.mark.parametrize("form", ["dense", "diagonal"])
@pytest.mark.parametrize("trial", range(6))
def test_optimal_alpha_is_the_line_minimum(rng, form, trial):
    n = 7
    A = random_spd(rng, n, 30.0) if form == "dense" else rng.uniform(0.1, 5.0, n)
    b, theta0 = rng.standard_normal(n), rng.standard_normal(n)
    # thetak: a few gradient steps, as an inner loop would give (any point works)
    thetak = theta0 + rng.standard_normal(n) * 0.5
    f = lambda a: line_loss(a, theta0, thetak, A, b)  # noqa: E731

    alpha = float(theory.optimal_alpha(theta0, thetak, A, b))
    vertex = parabola_vertex(f)
    searched = golden_section_minimum(f, vertex - 10.0, vertex + 10.0)

    assert alpha == pytest.approx(vertex, rel=1e-9, abs=1e-9)
    # golden section locates a flat minimum to about sqrt(eps) relative
    assert alpha == pytest.approx(searched, rel=1e-6, abs=1e-6)
    # and it is a minimum: both neighbours are higher
    assert f(alpha) <= min(f(alpha - 1e-3), f(alpha + 1e-3))


def test_optimal_alpha_matches_eq_0_3_with_theta_star(rng):
    """The implementation uses ∇L(θ₀)ᵀ(θ₀ − θₖ); eq. 0.3 writes (θ₀ − θ*)ᵀA(θ₀ − θₖ)."""
    n = 5
    A = random_spd(rng, n, 10.0)
    b, theta0, thetak = (rng.standard_normal(n) for _ in range(3))
    theta_star = np.linalg.solve(A, b)
    d = theta0 - thetak
    eq_0_3 = (theta0 - theta_star) @ A @ d / (d @ A @ d)
    assert float(theory.optimal_alpha(theta0, thetak, A, b)) == pytest.approx(eq_0_3, rel=1e-12)


def test_diagonal_vector_equals_dense_diagonal_matrix(rng):
    n = 6
    a = rng.uniform(0.5, 3.0, n)
    b, theta0, thetak = (rng.standard_normal(n) for _ in range(3))
    from_vector = float(theory.optimal_alpha(theta0, thetak, a, b))
    from_matrix = float(theory.optimal_alpha(theta0, thetak, np.diag(a), b))
    assert from_vector == pytest.approx(from_matrix, rel=1e-14)


def test_known_value_by_hand():
    """1-D: L = ½·2x² − 1·x, θ* = 0.5; from 0 to 0.25 the best α is 2 (lands on θ*)."""
    one = lambda v: np.array([v])  # noqa: E731
    assert float(theory.optimal_alpha(one(0.0), one(0.25), one(2.0), one(1.0))) == 2.0
    # and from 0 to 1 it is 0.5
    assert float(theory.optimal_alpha(one(0.0), one(1.0), one(2.0), one(1.0))) == 0.5


def test_non_symmetric_matrix_reads_its_symmetric_part(rng):
    n = 4
    S = random_spd(rng, n, 5.0)
    skew = rng.standard_normal((n, n))
    skew = skew - skew.T
    b, theta0, thetak = (rng.standard_normal(n) for _ in range(3))
    assert float(theory.optimal_alpha(theta0, thetak, S + skew, b)) == pytest.approx(
        float(theory.optimal_alpha(theta0, thetak, S, b)), rel=1e-12
    )


def test_singular_A_positive_along_the_line():
    """θ* = A⁻¹b does not exist, α* does: L = ½x₀² − x₀ on the line x₁ = 0."""
    A = np.diag([1.0, 0.0])
    b = np.array([1.0, 0.0])
    alpha = theory.optimal_alpha(np.array([0.0, 0.0]), np.array([0.5, 0.0]), A, b)
    assert float(alpha) == 2.0


@pytest.mark.parametrize("scale", [2.0**-7, 0.5, 4.0, 3.7, 1e-3, 1e5])
@pytest.mark.parametrize("form", ["dense", "diagonal"])
def test_invariant_to_scaling_A_and_b_together(rng, scale, form):
    n = 6
    A = random_spd(rng, n, 20.0) if form == "dense" else rng.uniform(0.1, 5.0, n)
    b, theta0, thetak = (rng.standard_normal(n) for _ in range(3))
    base = float(theory.optimal_alpha(theta0, thetak, A, b))
    scaled = float(theory.optimal_alpha(theta0, thetak, scale * A, scale * b))
    if np.log2(scale) == round(np.log2(scale)):
        assert scaled == base  # a power of two scales exactly
    else:
        assert scaled == pytest.approx(base, rel=1e-13)


def test_degenerate_same_point_raises():
    theta = np.array([1.0, -2.0])
    with pytest.raises(ValueError, match="thetak must differ from theta0"):
        theory.optimal_alpha(theta, theta.copy(), np.array([1.0, 2.0]), np.zeros(2))


@pytest.mark.parametrize(
    "A",
    [
        np.diag([1.0, -1.0]),  # indefinite: dᵀAd = 0.25 − 1 < 0
        np.zeros((2, 2)),  # zero along every line
        np.array([[0.0, -1.0], [-1.0, 0.0]]),  # dense indefinite: dᵀAd = −1
    ],
    ids=["diagonal-indefinite", "zero", "dense-indefinite"],
)
def test_degenerate_curvature_raises(A):
    theta0, thetak = np.array([0.0, 0.0]), np.array([0.5, 1.0])
    with pytest.raises(ValueError, match="A must be positive along thetak - theta0"):
        theory.optimal_alpha(theta0, thetak, A, np.ones(2))


def test_zero_curvature_on_the_line_raises():
    A = np.diag([1.0, 0.0])
    with pytest.raises(ValueError, match="A must be positive along"):
        theory.optimal_alpha(np.zeros(2), np.array([0.0, 1.0]), A, np.ones(2))


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((np.zeros((2, 2)), np.ones((2, 2)), np.ones(2), np.ones(2)), ValueError, "theta0 must be 1-D"),
        ((np.zeros(2), np.ones(3), np.ones(2), np.ones(2)), ValueError, "thetak"),
        ((np.zeros(2), np.ones(2), np.ones(3), np.ones(2)), ValueError, r"A must have shape \(2,\)"),
        ((np.zeros(2), np.ones(2), np.ones((2, 3)), np.ones(2)), ValueError, "A must have shape"),
        ((np.zeros(2), np.ones(2), np.ones(2), np.ones(3)), ValueError, "b"),
        ((np.zeros(2), np.ones(2), np.ones(2, np.float32), np.ones(2)), TypeError, "A"),
        ((np.zeros(2), np.ones(2), [1.0, 1.0], np.ones(2)), TypeError, "A must be an array"),
        (([0.0, 0.0], np.ones(2), np.ones(2), np.ones(2)), TypeError, "theta0 must be an array"),
        ((np.zeros(2), np.array([np.nan, 1.0]), np.ones(2), np.ones(2)), ValueError, "thetak must be finite"),
        ((np.zeros(2, np.int64), np.ones(2), np.ones(2), np.ones(2)), TypeError, "real floating"),
    ],
)
def test_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        theory.optimal_alpha(*args)


@pytest.mark.parametrize("form", ["dense", "diagonal"])
def test_every_array_library(xp, rng, form):
    n = 5
    A = random_spd(rng, n, 10.0) if form == "dense" else rng.uniform(0.1, 5.0, n)
    b, theta0, thetak = (rng.standard_normal(n) for _ in range(3))
    expected = float(theory.optimal_alpha(theta0, thetak, A, b))
    got = theory.optimal_alpha(*(asarray(xp, v) for v in (theta0, thetak, A, b)))
    assert got.shape == ()
    assert float(to_numpy(got)) == pytest.approx(expected, rel=1e-12)
