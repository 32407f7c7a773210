"""The noisy quadratic model in closed form: eq. 0.7, eqs. 0.10-0.13, Proposition 2.

The oracle here is a second derivation: per coordinate, (φ, θ) is a linear
Gaussian system, so its 2×2 covariance propagates as M P Mᵀ + Q with an inner
step M = [[1, 0], [0, ρ]], Q = diag(0, γ²a²σ²) and a sync
M = [[1 − α, α], [1 − α, α]] (both rows become φ'). Fixed points are checked
against the slides' first form of eq. 0.20 (with the geometric sum written out)
and the corrected V*_SGD = γ²a²σ²/(1 − (1 − γa)²) (docs/theory.md), and against
the recurrences' limits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_helpers import asarray, to_numpy
from lookahead_core import theory


# --------------------------------------------------------------------------- oracles


def oracle_trajectory(mean0, var0, a, s2, lr, steps, k, alpha):
    """Step-resolved moments from the 2×2 covariance of (φ, θ), per coordinate."""
    rows = []
    for ai, s2i, m0, v0 in zip(a, s2, mean0, var0):
        rho = 1.0 - lr * ai
        mu = np.array([m0, m0])
        P = np.array([[v0, v0], [v0, v0]])
        inner = np.array([[1.0, 0.0], [0.0, rho]])
        Q = np.diag([0.0, (lr * ai) ** 2 * s2i])
        sync = np.array([[1.0 - alpha, alpha], [1.0 - alpha, alpha]])
        coord = [(mu[1], P[1, 1], mu[0], P[0, 0])]
        for s in range(1, steps + 1):
            mu, P = inner @ mu, inner @ P @ inner.T + Q
            if s % k == 0:
                mu, P = sync @ mu, sync @ P @ sync.T
            coord.append((mu[1], P[1, 1], mu[0], P[0, 0]))
        rows.append(coord)
    arr = np.array(rows)  # (d, steps + 1, 4)
    return tuple(arr[:, :, j].T for j in range(4))  # each (steps + 1, d)


def slides_v_la(a, s2, lr, k, alpha):
    """Eq. 0.20, first line: α² Σ_{i<k} ρ²ⁱ γ²a²σ² / (1 − [1 − α + αρᵏ]²)."""
    rho = 1.0 - lr * a
    geometric = sum(rho ** (2 * i) for i in range(k))
    return alpha**2 * geometric * (lr * a) ** 2 * s2 / (1.0 - (1.0 - alpha + alpha * rho**k) ** 2)


def design_v_sgd(a, s2, lr):
    return (lr * a) ** 2 * s2 / (1.0 - (1.0 - lr * a) ** 2)


A = np.array([0.5, 2.0, 8.0, 15.0, 19.0])
S2 = np.array([0.5, 2.0, 0.25, 1.0, 3.0])
LR = 0.1  # γa = 0.05 … 1.9: monotone and oscillating coordinates


# --------------------------------------------------------------------------- eq. 0.7


def test_expected_loss_by_hand():
    a, s2 = np.array([1.0, 2.0]), np.array([0.25, 1.0])
    mean, var = np.array([1.0, -1.0]), np.array([0.5, 0.0])
    # ½ (1·(1 + 0.5 + 0.25) + 2·(1 + 0 + 1)) = 2.875
    assert float(theory.nqm_expected_loss(mean, var, a, s2)) == 2.875


def test_expected_loss_over_a_trajectory_sums_the_last_axis(rng):
    mean, var = rng.standard_normal((4, 5)), rng.uniform(0, 1, (4, 5))
    got = theory.nqm_expected_loss(mean, var, A, S2)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, 0.5 * ((mean**2 + var + S2) * A).sum(axis=1), rtol=1e-15)


def test_expected_loss_is_the_mean_of_the_loss(rng):
    """Monte Carlo over θ ~ N(m, v) and c ~ N(0, σ²): within 6 standard errors."""
    n = 200_000
    mean, var = np.array([0.7, -0.2]), np.array([0.3, 0.05])
    a, s2 = np.array([1.5, 4.0]), np.array([0.2, 0.6])
    theta = mean + np.sqrt(var) * rng.standard_normal((n, 2))
    c = np.sqrt(s2) * rng.standard_normal((n, 2))
    samples = 0.5 * ((theta - c) ** 2 * a).sum(axis=1)
    expected = float(theory.nqm_expected_loss(mean, var, a, s2))
    assert abs(samples.mean() - expected) < 6.0 * samples.std() / math.sqrt(n)


# --------------------------------------------------------------------------- recurrences


def test_sgd_moments_one_step_by_hand():
    # a = 2, γ = 0.25: ρ = 0.5; E' = 0.5·3 = 1.5, V' = 0.5²·1 + 0.25²·2²·0.5 = 0.375
    mean, var = theory.nqm_sgd_moments(
        np.array([3.0]), np.array([1.0]), np.array([2.0]), np.array([0.5]), 0.25
    )
    assert (float(mean[0]), float(var[0])) == (1.5, 0.375)


@pytest.mark.parametrize("k, alpha", [(1, 0.5), (5, 0.5), (3, 0.8), (10, 0.2), (4, 1.0), (2, 0.0)])
def test_lemma_1_equals_the_covariance_oracle(rng, k, alpha):
    mean, var = rng.standard_normal(A.shape), rng.uniform(0.0, 2.0, A.shape)
    cycles = 6
    m, v = mean, var
    for _ in range(cycles):
        m, v = theory.nqm_lookahead_moments(m, v, A, S2, LR, k, alpha)
    # oracle starts with cov(φ, θ) = V; θ₀ = φ₀ is the same random variable
    _, _, slow_mean, slow_var = oracle_trajectory(mean, var, A, S2, LR, cycles * k, k, alpha)
    np.testing.assert_allclose(m, slow_mean[-1], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(v, slow_var[-1], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k, alpha", [(1, 0.5), (5, 0.5), (7, 0.3), (4, 1.0), (3, 0.0)])
def test_step_trajectory_equals_the_covariance_oracle(rng, k, alpha):
    mean0, var0 = rng.standard_normal(A.shape), np.zeros(A.shape)
    got = theory.nqm_moment_trajectory(mean0, var0, A, S2, LR, 40, k, alpha)
    expected = oracle_trajectory(mean0, var0, A, S2, LR, 40, k, alpha)
    for g, e in zip(got, expected):
        assert g.shape == (41, A.shape[0])
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-15)


def test_step_trajectory_alpha_one_is_sgd(rng):
    mean0 = rng.standard_normal(A.shape)
    la = theory.nqm_moment_trajectory(mean0, np.zeros_like(mean0), A, S2, LR, 30, 5, 1.0)
    m, v = mean0, np.zeros_like(mean0)
    for s in range(1, 31):
        m, v = theory.nqm_sgd_moments(m, v, A, S2, LR)
        np.testing.assert_allclose(la.fast_mean[s], m, rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(la.fast_var[s], v, rtol=1e-13, atol=1e-16)


def test_step_trajectory_at_syncs_is_lemma_1(rng):
    mean0, var0 = rng.standard_normal(A.shape), rng.uniform(0, 1, A.shape)
    k, alpha = 6, 0.4
    traj = theory.nqm_moment_trajectory(mean0, var0, A, S2, LR, 5 * k, k, alpha)
    m, v = mean0, var0
    for t in range(1, 6):
        m, v = theory.nqm_lookahead_moments(m, v, A, S2, LR, k, alpha)
        np.testing.assert_allclose(traj.slow_mean[t * k], m, rtol=1e-12, atol=1e-16)
        np.testing.assert_allclose(traj.slow_var[t * k], v, rtol=1e-12, atol=1e-16)
        np.testing.assert_array_equal(traj.fast_mean[t * k], traj.slow_mean[t * k])


# --------------------------------------------------------------------------- Proposition 2


def test_v_sgd_matches_design_formula():
    np.testing.assert_allclose(
        theory.nqm_sgd_variance_fixed_point(A, S2, LR), design_v_sgd(A, S2, LR), rtol=1e-13
    )


@pytest.mark.parametrize("k", [1, 2, 5, 10, 20])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.8, 1.0])
def test_v_la_matches_slides_first_form(k, alpha):
    np.testing.assert_allclose(
        theory.nqm_lookahead_variance_fixed_point(A, S2, LR, k, alpha),
        slides_v_la(A, S2, LR, k, alpha),
        rtol=1e-12,
    )


@pytest.mark.parametrize("k", [1, 5, 10, 20])
@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0])
def test_variance_ratio_matches_eq_0_9(k, alpha):
    rho = 1.0 - LR * A
    eq_0_9 = alpha**2 * (1 - rho ** (2 * k)) / (
        alpha**2 * (1 - rho ** (2 * k)) + 2 * alpha * (1 - alpha) * (1 - rho**k)
    )
    np.testing.assert_allclose(theory.nqm_variance_ratio(A, LR, k, alpha), eq_0_9, rtol=1e-12)


def test_fixed_points_are_the_limits_of_the_recurrences():
    m, v = np.ones_like(A), np.zeros_like(A)
    for _ in range(3000):  # |1 − γa| <= 0.95: 0.95³⁰⁰⁰ < 1e-66
        m, v = theory.nqm_sgd_moments(m, v, A, S2, LR)
    np.testing.assert_allclose(v, theory.nqm_sgd_variance_fixed_point(A, S2, LR), rtol=1e-13)
    assert np.all(np.abs(m) < 1e-60)
    for k, alpha in [(1, 0.5), (5, 0.5), (10, 0.2), (3, 1.0)]:
        m, v = np.ones_like(A), np.zeros_like(A)
        for _ in range(3000):
            m, v = theory.nqm_lookahead_moments(m, v, A, S2, LR, k, alpha)
        np.testing.assert_allclose(
            v, theory.nqm_lookahead_variance_fixed_point(A, S2, LR, k, alpha), rtol=1e-12
        )
        assert np.all(np.abs(m) < 1e-30)


def test_large_k_limit_is_alpha_over_two_minus_alpha():
    a = np.array([0.5, 1.0, 1.5])
    for alpha in (0.2, 0.5, 0.9):
        np.testing.assert_allclose(
            theory.nqm_variance_ratio(a, 0.5, 2000, alpha), alpha / (2 - alpha), rtol=1e-14
        )


def test_accurate_near_the_ends_of_the_stable_range():
    """γa → 0 and γa → 2: no cancellation in 1 ± ρᵏ (reference in exact rationals)."""
    from fractions import Fraction

    for step in (1e-9, 2.0 - 1e-9, 1.0):
        for k, alpha in [(1, 0.5), (3, 0.5), (4, 0.25)]:
            x = Fraction(step)
            rho_k = (1 - x) ** k
            exact = Fraction(alpha) * (1 + rho_k) / (Fraction(alpha) * (1 + rho_k) + 2 * (1 - Fraction(alpha)))
            got = float(theory.nqm_variance_ratio(np.array([step]), 1.0, k, alpha)[0])
            assert got == pytest.approx(float(exact), rel=1e-14)


# Hypothesis: V*_LA <= V*_SGD for α in (0, 1], k >= 1, 0 < γa < 2; equality exactly at α = 1.
steps_ = st.floats(min_value=1e-6, max_value=1.999, allow_nan=False)
alphas = st.floats(min_value=0.0, max_value=1.0, exclude_min=True)
ks = st.integers(min_value=1, max_value=500)
noise = st.one_of(st.just(0.0), st.floats(min_value=1e-100, max_value=1e100))


@settings(max_examples=300, deadline=None)
@given(step=steps_, curvature=st.floats(1e-3, 1e3), s2=noise, k=ks, alpha=alphas)
def test_lookahead_never_has_more_variance(step, curvature, s2, k, alpha):
    a, sigma2 = np.array([curvature]), np.array([s2])
    lr = step / curvature
    if lr * curvature >= 2.0:  # rounding at the edge
        return
    v_sgd = float(theory.nqm_sgd_variance_fixed_point(a, sigma2, lr)[0])
    v_la = float(theory.nqm_lookahead_variance_fixed_point(a, sigma2, lr, k, alpha)[0])
    assert 0.0 <= v_la <= v_sgd
    if alpha == 1.0 or s2 == 0.0:
        assert v_la == v_sgd
    elif alpha <= 1.0 - 1e-9:
        assert v_la < v_sgd  # strict: the ratio is at most 1/(1 + 1e-9)


@settings(max_examples=200, deadline=None)
@given(step=steps_, k=ks, a1=alphas, a2=alphas)
def test_ratio_increases_with_alpha(step, k, a1, a2):
    low, high = sorted((a1, a2))
    a = np.array([1.0])
    r_low = float(theory.nqm_variance_ratio(a, step, k, low)[0])
    r_high = float(theory.nqm_variance_ratio(a, step, k, high)[0])
    assert 0.0 <= r_low <= r_high <= 1.0  # r = 0 only when α·(1 + ρᵏ) underflows


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: theory.nqm_sgd_variance_fixed_point(A, S2, 2.0 / 19.0 * 1.01), ValueError, "0 < lr"),
        (lambda: theory.nqm_sgd_variance_fixed_point(A, S2, 0.0), ValueError, "0 < lr"),
        (lambda: theory.nqm_sgd_variance_fixed_point(A, S2, -0.1), ValueError, "lr must be >= 0"),
        (lambda: theory.nqm_sgd_variance_fixed_point(-A, S2, 0.1), ValueError, "curvature must be > 0"),
        (lambda: theory.nqm_sgd_variance_fixed_point(A, -S2, 0.1), ValueError, "noise_var must be >= 0"),
        (lambda: theory.nqm_sgd_variance_fixed_point(A, S2[:2], 0.1), ValueError, "noise_var"),
        (lambda: theory.nqm_sgd_variance_fixed_point(A, S2.astype(np.float32), 0.1), TypeError, "noise_var"),
        (lambda: theory.nqm_sgd_variance_fixed_point(A, S2, np.float64(0.1)), None, None),
        (lambda: theory.nqm_lookahead_variance_fixed_point(A, S2, 0.1, 5, 0.0), ValueError, r"alpha must be in \(0, 1\]"),
        (lambda: theory.nqm_lookahead_variance_fixed_point(A, S2, 0.1, 5, 1.5), ValueError, "alpha"),
        (lambda: theory.nqm_variance_ratio(A, 0.1, True, 0.5), TypeError, "k must be an int"),
        (lambda: theory.nqm_variance_ratio(A, 0.1, 0, 0.5), ValueError, "k must be an int >= 1"),
        (lambda: theory.nqm_variance_ratio(np.array([1.0, np.inf]), 0.1, 1, 0.5), ValueError, "finite"),
        (lambda: theory.nqm_sgd_moments(A, -S2, A, S2, 0.1), ValueError, "var must be >= 0"),
        (lambda: theory.nqm_sgd_moments(A, S2, A, S2, "0.1"), TypeError, "lr"),
        (lambda: theory.nqm_lookahead_moments(A, S2, A, S2, 0.1, 2.0, 0.5), TypeError, "k"),
        (lambda: theory.nqm_moment_trajectory(A, S2, A, S2, 0.1, -1), ValueError, "steps"),
        (lambda: theory.nqm_expected_loss(A[:2], S2[:2], A, S2), ValueError, "mean must have shape"),
        (lambda: theory.nqm_expected_loss(A, -S2, A, S2), ValueError, "var must be >= 0"),
        (lambda: theory.nqm_expected_loss(list(A), S2, A, S2), TypeError, "mean must be an array"),
    ],
)
def test_bad_input(call, error, match):
    if error is None:  # a NumPy scalar hyperparameter is accepted (coerced to float)
        call()
        return
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- every library


def test_every_array_library(xp, rng):
    mean0 = rng.standard_normal(A.shape)
    conv = lambda v: asarray(xp, v)  # noqa: E731
    a, s2, m0, v0 = conv(A), conv(S2), conv(mean0), conv(np.zeros_like(A))
    pairs = [
        (theory.nqm_sgd_variance_fixed_point(a, s2, LR), theory.nqm_sgd_variance_fixed_point(A, S2, LR)),
        (theory.nqm_lookahead_variance_fixed_point(a, s2, LR, 5, 0.5),
         theory.nqm_lookahead_variance_fixed_point(A, S2, LR, 5, 0.5)),
        (theory.nqm_variance_ratio(a, LR, 3, 0.7), theory.nqm_variance_ratio(A, LR, 3, 0.7)),
        (theory.nqm_expected_loss(m0, s2, a, s2), theory.nqm_expected_loss(mean0, S2, A, S2)),
    ]
    pairs += list(zip(theory.nqm_lookahead_moments(m0, s2, a, s2, LR, 4, 0.3),
                      theory.nqm_lookahead_moments(mean0, S2, A, S2, LR, 4, 0.3)))
    pairs += list(zip(theory.nqm_moment_trajectory(m0, v0, a, s2, LR, 12, 4, 0.3),
                      theory.nqm_moment_trajectory(mean0, np.zeros_like(A), A, S2, LR, 12, 4, 0.3)))
    for got, expected in pairs:
        assert got.dtype == xp.float64
        np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-12, atol=1e-300)
