"""Outer momentum on the noisy quadratic model: the recurrence, its fixed point, its rate.

Three independent checks of `theory.nqm_outer_*`:

* Lemma 1 and Proposition 2 again: with momentum 0 and outer learning rate α
  the outer step is Lookahead's sync, so every quantity must equal the
  existing Lookahead functions.
* A second derivation in this file: the outer step's update rule written out
  (b ← μb + Δ, d = b or Δ + μb, φ ← φ − ηd) and applied to basis vectors gives
  the 2×2 mean map and the noise vector numerically; second moments propagate
  as M S Mᵀ + s² u uᵀ, the fixed point is ``np.linalg.solve`` of the 3×3
  system, the rate ``np.linalg.eigvals``.
* Monte Carlo: a NumPy simulation of many independent chains (written here,
  not the library), and the library's own ``lookahead(sgd, k, outer=sgd(...))``
  through `theory.nqm_simulate`. From a fixed start every iterate is an affine
  function of Gaussian draws, so the sample mean has standard error √(v/n)
  and the sample variance √(2/(n − 1))·v; each comparison allows 5 standard
  errors (a correct formula fails one with probability < 1e-6), and the test
  checks that the alternatives (no momentum, the other kind of momentum) lie
  far outside that band.

Plus a case by hand: with k = 1 and η = 1 the outer step is SGD with
heavy-ball momentum on the NQM itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import lookahead_core as lc
from lookahead_core import theory

A = np.array([0.5, 2.0, 8.0, 15.0, 19.0])
S2 = np.array([0.5, 2.0, 0.25, 1.0, 3.0])
LR = 0.1  # γa = 0.05 … 1.9: slow, fast and oscillating coordinates
SE = 5.0  # standard errors allowed per Monte Carlo comparison


# --------------------------------------------------------------------------- oracle


def outer_step(phi, b, xi, g, eta, mu, nesterov):
    """The outer update as written: θ_k = (1 − g)φ + ξ, Δ = φ − θ_k, torch.optim.SGD's rule."""
    theta_k = (1.0 - g) * phi + xi
    delta = phi - theta_k
    b = mu * b + delta
    d = delta + mu * b if nesterov else b
    return phi - eta * d, b


def oracle_map(a, lr, k, eta, mu, nesterov):
    """(M, u, s²) per coordinate, M and u read off `outer_step` applied to unit inputs."""
    out = []
    for ai in np.atleast_1d(a):
        rho = 1.0 - lr * ai
        g = 1.0 - rho**k
        col_phi = outer_step(1.0, 0.0, 0.0, g, eta, mu, nesterov)
        col_b = outer_step(0.0, 1.0, 0.0, g, eta, mu, nesterov)
        u = outer_step(0.0, 0.0, 1.0, g, eta, mu, nesterov)
        geometric = sum(rho ** (2 * i) for i in range(k))
        out.append((np.array([col_phi, col_b]).T, np.array(u), geometric * (lr * ai) ** 2))
    return out


def oracle_moments(mean0, var0, a, s2, lr, k, eta, mu, nesterov, cycles):
    """E[φ], V[φ] after each cycle (rows 0..cycles) from the 2×2 covariance of (φ, b)."""
    means, variances = [], []
    for (M, u, inj), m0, v0, s2i in zip(oracle_map(a, lr, k, eta, mu, nesterov), mean0, var0, s2):
        m, P = np.array([m0, 0.0]), np.diag([v0, 0.0])
        rows = [(m[0], P[0, 0])]
        for _ in range(cycles):
            m, P = M @ m, M @ P @ M.T + inj * s2i * np.outer(u, u)
            rows.append((m[0], P[0, 0]))
        means.append([r[0] for r in rows])
        variances.append([r[1] for r in rows])
    return np.array(means).T, np.array(variances).T


def oracle_stationary(a, s2, lr, k, eta, mu, nesterov):
    """(E[φ²], E[φb], E[b²]) solving S = M S Mᵀ + s² u uᵀ as a 3×3 linear system."""
    rows = []
    for (M, u, inj), s2i in zip(oracle_map(a, lr, k, eta, mu, nesterov), s2):
        (m11, m12), (m21, m22) = M
        K = np.array([
            [m11 * m11, 2 * m11 * m12, m12 * m12],
            [m11 * m21, m11 * m22 + m12 * m21, m12 * m22],
            [m21 * m21, 2 * m21 * m22, m22 * m22],
        ])
        w = inj * s2i * np.array([u[0] ** 2, u[0] * u[1], u[1] ** 2])
        rows.append(np.linalg.solve(np.eye(3) - K, w))
    return np.array(rows).T


def oracle_radius(a, lr, k, eta, mu, nesterov):
    return np.array([np.max(np.abs(np.linalg.eigvals(M))) for M, _, _ in
                     oracle_map(a, lr, k, eta, mu, nesterov)])


CASES = [  # (k, η, μ): DiLoCo-like, Lookahead-like, k = 1, strong momentum
    (5, 0.7, 0.5), (5, 0.7, 0.9), (1, 0.6, 0.3), (3, 0.5, 0.3), (20, 1.0, 0.8), (2, 0.9, 0.0),
]


# --------------------------------------------------------------------------- Lemma 1, Proposition 2


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("k, alpha", [(1, 0.5), (5, 0.5), (3, 0.8), (10, 0.2), (4, 1.0)])
def test_no_momentum_and_eta_alpha_is_lookahead(rng, nesterov, k, alpha):
    mean, var = rng.standard_normal(A.shape), rng.uniform(0.0, 2.0, A.shape)
    state = theory.nqm_outer_start(mean, var)
    m, v = mean, var
    for _ in range(6):
        state = theory.nqm_outer_moments(state, A, S2, LR, k, alpha, 0.0, nesterov)
        m, v = theory.nqm_lookahead_moments(m, v, A, S2, LR, k, alpha)
        np.testing.assert_allclose(state.slow_mean, m, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(state.slow_sq, v + m * m, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        theory.nqm_outer_stationary_variance(A, S2, LR, k, alpha, 0.0, nesterov),
        theory.nqm_lookahead_variance_fixed_point(A, S2, LR, k, alpha), rtol=1e-12)
    np.testing.assert_allclose(theory.nqm_outer_variance_ratio(A, LR, k, alpha, 0.0, nesterov),
                               theory.nqm_variance_ratio(A, LR, k, alpha), rtol=1e-12)
    rate = theory.nqm_outer_rate(A, LR, k, alpha, 0.0, nesterov)
    eq_0_12 = np.abs(1.0 - alpha + alpha * (1.0 - LR * A) ** k)
    np.testing.assert_allclose(rate.per_cycle, eq_0_12, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(rate.per_step, eq_0_12 ** (1.0 / k), rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- the second derivation


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("k, eta, mu", CASES)
def test_moments_equal_the_covariance_oracle(rng, nesterov, k, eta, mu):
    mean0, var0 = rng.standard_normal(A.shape), rng.uniform(0.0, 1.0, A.shape)
    cycles = 8
    want_mean, want_var = oracle_moments(mean0, var0, A, S2, LR, k, eta, mu, nesterov, cycles)
    state = theory.nqm_outer_start(mean0, var0)
    for t in range(1, cycles + 1):
        state = theory.nqm_outer_moments(state, A, S2, LR, k, eta, mu, nesterov)
        np.testing.assert_allclose(state.slow_mean, want_mean[t], rtol=1e-12, atol=1e-14)
        # the oracle is centred, the function raw: E[φ²] = V + E[φ]²
        np.testing.assert_allclose(state.slow_sq, want_var[t] + want_mean[t] ** 2,
                                   rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("k, eta, mu", CASES)
def test_stationary_moments_solve_the_3x3_system(nesterov, k, eta, mu):
    want = oracle_stationary(A, S2, LR, k, eta, mu, nesterov)
    stable = oracle_radius(A, LR, k, eta, mu, nesterov) < 1.0
    got = theory.nqm_outer_stationary_moments(A, S2, LR, k, eta, mu, nesterov)
    np.testing.assert_array_equal(got.slow_mean, 0.0)
    np.testing.assert_array_equal(got.buf_mean, 0.0)
    for field, expected, sign in zip(got[2:], want, (1.0, -1.0, 1.0)):
        np.testing.assert_allclose(field[stable], expected[stable], rtol=1e-10)
        np.testing.assert_array_equal(field[~stable], sign * math.inf)
    v_sgd = theory.nqm_sgd_variance_fixed_point(A, S2, LR)
    np.testing.assert_allclose(theory.nqm_outer_variance_ratio(A, LR, k, eta, mu, nesterov),
                               got.slow_sq / v_sgd, rtol=1e-13)
    np.testing.assert_array_equal(theory.nqm_outer_stationary_variance(A, S2, LR, k, eta, mu,
                                                                       nesterov), got.slow_sq)


def test_unstable_coordinates_are_inf_and_the_rate_says_so():
    # Nesterov, k = 1, η = 1, μ = 0.5 at γa = 1.9: G = 1.9 > 2(1 + μ)/(1 + 2μ) = 1.5
    rate = theory.nqm_outer_rate(A, LR, 1, 1.0, 0.5, True)
    ratio = theory.nqm_outer_variance_ratio(A, LR, 1, 1.0, 0.5, True)
    assert rate.per_cycle[-1] > 1.0 and ratio[-1] == math.inf
    # γa = 1.5 is on the edge, G = 1.5: radius 1 (an eigenvalue −1), no fixed point
    assert float(rate.per_cycle[3]) == pytest.approx(1.0, abs=1e-15) and ratio[3] == math.inf
    assert np.all(rate.per_cycle[:3] < 1.0) and np.all(np.isfinite(ratio[:3]))
    np.testing.assert_allclose(rate.per_cycle, oracle_radius(A, LR, 1, 1.0, 0.5, True), rtol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("k, eta, mu", CASES)
def test_fixed_point_is_the_limit_of_the_recurrence(nesterov, k, eta, mu):
    radius = oracle_radius(A, LR, k, eta, mu, nesterov)
    stable = radius < 1.0
    cycles = int(math.ceil(math.log(1e-14) / math.log(float(np.max(radius[stable])))))
    assert cycles < 2000  # keeps the test fast; the slowest case here needs ~650
    state = theory.nqm_outer_start(np.where(stable, 1.0, 0.0), np.zeros_like(A))
    a, s2 = A[stable], S2[stable]
    state = theory.NQMOuterMoments(*(x[stable] for x in state))
    for _ in range(cycles):
        state = theory.nqm_outer_moments(state, a, s2, LR, k, eta, mu, nesterov)
    fixed = theory.nqm_outer_stationary_moments(a, s2, LR, k, eta, mu, nesterov)
    for got, want in zip(state[2:], fixed[2:]):
        np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("k, eta, mu", CASES)
def test_rate_is_the_spectral_radius_and_the_means_obey_its_polynomial(rng, nesterov, k, eta, mu):
    rate = theory.nqm_outer_rate(A, LR, k, eta, mu, nesterov)
    # atol: at k = 20, γa = 0.8, η = 1 both eigenvalues are ~1e-7 (D ~ 1e-14 after a
    # cancellation in 1 − ηg); a rounding of 1e-16 in D moves them by ~1e-9, in both codes
    np.testing.assert_allclose(rate.per_cycle, oracle_radius(A, LR, k, eta, mu, nesterov),
                               rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(rate.per_step, rate.per_cycle ** (1.0 / k), rtol=1e-15)
    # Cayley–Hamilton: E[φ_{t+2}] = T E[φ_{t+1}] − D E[φ_t] for any start of (φ, b)
    state = theory.NQMOuterMoments(rng.standard_normal(A.shape), rng.standard_normal(A.shape),
                                   *(np.ones_like(A),) * 3)
    means = [state.slow_mean]
    for _ in range(4):
        state = theory.nqm_outer_moments(state, A, S2, LR, k, eta, mu, nesterov)
        means.append(state.slow_mean)
    for t in range(3):
        np.testing.assert_allclose(means[t + 2], rate.trace * means[t + 1] - rate.det * means[t],
                                   rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("k, eta, mu", [(5, 0.7, 0.5), (5, 0.7, 0.9), (1, 0.6, 0.3)])
def test_the_mean_decays_at_the_rate(nesterov, k, eta, mu):
    """max |E[φ_t]| / radiusᵗ over a window of cycles neither grows nor shrinks with t.

    (It tends to a constant; with a radius 3 % off it would change by 1.03⁸⁰ ≈ 10
    between the two windows.)"""
    a = A[:3]  # coordinates with radius >= 0.3, so E[φ_t] stays far from underflow
    radius = theory.nqm_outer_rate(a, LR, k, eta, mu, nesterov).per_cycle
    state = theory.nqm_outer_start(np.ones_like(a), np.zeros_like(a))
    scaled = []
    for t in range(1, 121):
        state = theory.nqm_outer_moments(state, a, S2[:3], LR, k, eta, mu, nesterov)
        scaled.append(np.abs(state.slow_mean) / radius**t)
    scaled = np.array(scaled)
    early, late = scaled[20:40].max(axis=0), scaled[100:120].max(axis=0)
    np.testing.assert_allclose(late / early, 1.0, atol=0.25)


def test_small_and_large_curvature_keep_full_precision():
    """γa → 0 and γa → 2: g = 1 − ρᵏ without cancellation (exact rationals as reference)."""
    from fractions import Fraction

    for step in (1e-9, 2.0 - 1e-9):
        for k, eta, mu, nesterov in [(1, 0.7, 0.9, False), (4, 0.7, 0.5, True), (3, 0.5, 0.0, True)]:
            rho_k = (1 - Fraction(step)) ** k
            g, two_minus_g = 1 - rho_k, 1 + rho_k
            G, m = Fraction(eta) * g, Fraction(mu)
            if nesterov:
                exact = (Fraction(eta) * two_minus_g * ((1 + m) + m * (1 + 2 * m) * G)
                         / ((1 - m + m * G) * (2 * (1 + m) - (1 + 2 * m) * G)))
            else:
                exact = Fraction(eta) * (1 + m) * two_minus_g / ((1 - m) * (2 * (1 + m) - G))
            got = float(theory.nqm_outer_variance_ratio(np.array([step]), 1.0, k, eta, mu,
                                                        nesterov)[0])
            assert got == pytest.approx(float(exact), rel=1e-13)


# --------------------------------------------------------------------------- by hand


def test_k1_eta1_is_heavy_ball_sgd_by_hand():
    """k = 1, η = 1: Δ = γ∇L̂(φ), so the outer step is SGD with heavy-ball momentum.

    On one coordinate with h = γa, x' = x − b', b' = μb + h x − h c. The
    stationary second moments p = E[x²], q = E[xb], r = E[b²] of
    x' = (1 − h)x − μb + hc, b' = hx + μb − hc solve, with s² = h²σ²,
        r = h²p + 2hμq + μ²r + s²,   q = (1 − h)h p + (μ(1 − h) − hμ) q − μ² r − s²,
        p = (1 − h)²p − 2(1 − h)μq + μ²r + s²;
    the known solution is p = hσ²(1 + μ) / [(1 − μ)(2(1 + μ) − h)]. At h = 0.5,
    μ = 0.5: p = 0.5·1.5 / (0.5·2.5) σ² = 0.6 σ² (SGD: h/(2 − h) σ² = σ²/3), and the
    mean map [[0.5, −0.5], [0.5, 0.5]] has eigenvalues (1 ± i)/2, radius √½.
    """
    a, s2 = np.array([1.0, 0.25]), np.array([2.0, 1.0])  # γ = 0.5: h = 0.5, 0.125
    v = theory.nqm_outer_stationary_variance(a, s2, 0.5, 1, 1.0, 0.5)
    h, mu = 0.5 * a, 0.5
    np.testing.assert_allclose(v, h * s2 * (1 + mu) / ((1 - mu) * (2 * (1 + mu) - h)), rtol=1e-14)
    assert float(v[0]) == pytest.approx(1.2, rel=1e-15)  # 0.6 σ² with σ² = 2
    assert float(theory.nqm_outer_variance_ratio(a, 0.5, 1, 1.0, 0.5)[0]) == pytest.approx(1.8)
    rate = theory.nqm_outer_rate(a, 0.5, 1, 1.0, 0.5)
    assert float(rate.per_cycle[0]) == pytest.approx(math.sqrt(0.5), rel=1e-15)
    assert (float(rate.trace[0]), float(rate.det[0])) == (1.0, 0.5)
    # one cycle from x = 1, b = 0, by hand: b' = h = 0.5, x' = 1 − 0.5 = 0.5; E[x'²] = 0.25 + h²σ²
    state = theory.nqm_outer_moments(theory.nqm_outer_start(np.ones(2), np.zeros(2)), a, s2, 0.5,
                                     1, 1.0, 0.5)
    assert (float(state.slow_mean[0]), float(state.buf_mean[0])) == (0.5, 0.5)
    assert float(state.slow_sq[0]) == 0.25 + 0.25 * 2.0
    assert float(state.cross[0]) == 0.25 - 0.25 * 2.0  # E[x'b'] = 0.5·0.5 − h²σ²


def test_sgd_with_momentum_zero_is_sgd():
    np.testing.assert_allclose(theory.nqm_outer_stationary_variance(A, S2, LR, 1, 1.0, 0.0),
                               theory.nqm_sgd_variance_fixed_point(A, S2, LR), rtol=1e-14)


# --------------------------------------------------------------------------- Monte Carlo

MC_A = np.array([0.5, 2.0, 8.0, 15.0])
MC_S2 = np.array([0.5, 2.0, 0.25, 1.5])
MC_THETA0 = np.array([2.0, -1.0, 0.5, 1.0])
MC_K, MC_ETA = 5, 0.7
MC_CONFIGS = [(0.5, True), (0.9, True), (0.9, False)]  # (μ, Nesterov)


def simulate(configs, cycles, chains, seed):
    """Plain NumPy: every config × coordinate × chain at once; E[φ], V[φ] after each cycle."""
    rng = np.random.default_rng(seed)
    mu = np.array([c[0] for c in configs])[:, None, None]
    nesterov = np.array([c[1] for c in configs])[:, None, None]
    a, sd = MC_A[None, :, None], np.sqrt(MC_S2)[None, :, None]
    phi = np.broadcast_to(MC_THETA0[None, :, None], (len(configs), len(MC_A), chains)).copy()
    b = np.zeros_like(phi)
    means, variances = [phi.mean(axis=2)], [phi.var(axis=2, ddof=1)]
    for _ in range(cycles):
        theta = phi.copy()
        for _ in range(MC_K):
            c = sd * rng.standard_normal(theta.shape)
            theta -= LR * a * (theta - c)
        delta = phi - theta
        b = mu * b + delta
        phi = phi - MC_ETA * np.where(nesterov, delta + mu * b, b)
        means.append(phi.mean(axis=2))
        variances.append(phi.var(axis=2, ddof=1))
    return np.array(means), np.array(variances)  # (cycles + 1, configs, d)


def theory_path(mu, nesterov, cycles):
    state = theory.nqm_outer_start(MC_THETA0, np.zeros_like(MC_THETA0))
    rows = [state]
    for _ in range(cycles):
        state = theory.nqm_outer_moments(state, MC_A, MC_S2, LR, MC_K, MC_ETA, mu, nesterov)
        rows.append(state)
    return (np.array([r.slow_mean for r in rows]),
            np.array([r.slow_sq - r.slow_mean**2 for r in rows]))


def within_band(m_hat, v_hat, m, v, n):
    mean_ok = np.abs(m_hat - m) <= SE * np.sqrt(v / n)
    var_ok = np.abs(v_hat - v) <= SE * math.sqrt(2.0 / (n - 1)) * v
    return mean_ok, var_ok


def test_monte_carlo_mean_decay_and_stationary_variance():
    cycles, chains = 150, 8000
    m_hat, v_hat = simulate(MC_CONFIGS, cycles, chains, seed=7)
    for j, (mu, nesterov) in enumerate(MC_CONFIGS):
        m, v = theory_path(mu, nesterov, cycles)
        # every cycle: the exact finite-time moments (the mean's decay included)
        mean_ok, var_ok = within_band(m_hat[1:, j], v_hat[1:, j], m[1:], v[1:], chains)
        assert mean_ok.all(), (mu, nesterov, np.argwhere(~mean_ok))
        assert var_ok.all(), (mu, nesterov, np.argwhere(~var_ok))
        # the last cycle is stationary: the transient left is far below the band
        v_star = theory.nqm_outer_stationary_variance(MC_A, MC_S2, LR, MC_K, MC_ETA, mu, nesterov)
        assert np.all(np.abs(v[-1] / v_star - 1) < 1e-3)
        _, var_ok = within_band(m_hat[-1, j], v_hat[-1, j], 0.0, v_star, chains)
        assert var_ok.all(), (mu, nesterov, v_hat[-1, j], v_star)
        # the band tells the alternatives apart: no momentum (Lookahead at α = η),
        # and the other kind of momentum, are outside it on some coordinate
        for other in (theory.nqm_lookahead_variance_fixed_point(MC_A, MC_S2, LR, MC_K, MC_ETA),
                      theory.nqm_outer_stationary_variance(MC_A, MC_S2, LR, MC_K, MC_ETA, mu,
                                                           not nesterov)):
            _, other_ok = within_band(m_hat[-1, j], v_hat[-1, j], 0.0, other, chains)
            assert not other_ok.all()


def test_library_outer_optimizer_matches_the_recurrence_from_b_zero():
    """lookahead(sgd, k, outer=sgd(momentum, nesterov)): torch's first-sync b ← Δ is b = 0."""
    cycles, chains = 30, 10000
    for mu, nesterov in ((0.9, True), (0.5, False)):
        opt = lc.lookahead(lc.sgd(lr=LR), k=MC_K,
                           outer=lc.sgd(lr=MC_ETA, momentum=mu, nesterov=nesterov))
        sim = theory.nqm_simulate(opt, MC_THETA0, MC_A, MC_S2, MC_K * cycles, chains, seed=11)
        m, v = theory_path(mu, nesterov, cycles)
        rows = slice(MC_K, None, MC_K)  # after each sync
        mean_ok, var_ok = within_band(np.asarray(sim.slow_mean[rows]),
                                      np.asarray(sim.slow_var[rows]), m[1:], v[1:], chains)
        assert mean_ok.all() and var_ok.all(), (mu, nesterov)
        # momentum 0 would put the means elsewhere after a few cycles
        m0, _ = theory_path(0.0, nesterov, cycles)
        assert np.any(np.abs(np.asarray(sim.slow_mean[rows]) - m0[1:])
                      > SE * np.sqrt(v[1:] / chains))


# --------------------------------------------------------------------------- bad input


START = theory.nqm_outer_start(np.ones_like(A), np.zeros_like(A))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: theory.nqm_outer_rate(A, LR, 5, 0.0, 0.5), ValueError, "outer_lr must be > 0"),
        (lambda: theory.nqm_outer_rate(A, LR, 5, -0.7, 0.5), ValueError, "outer_lr"),
        (lambda: theory.nqm_outer_rate(A, LR, 5, math.inf, 0.5), ValueError, "outer_lr must be finite"),
        (lambda: theory.nqm_outer_rate(A, LR, 5, "0.7", 0.5), TypeError, "outer_lr"),
        (lambda: theory.nqm_outer_rate(A, LR, 5, 0.7, 1.0), ValueError, r"momentum must be in \[0, 1\)"),
        (lambda: theory.nqm_outer_rate(A, LR, 5, 0.7, -0.1), ValueError, "momentum"),
        (lambda: theory.nqm_outer_rate(A, LR, 5, 0.7, True), TypeError, "momentum"),
        (lambda: theory.nqm_outer_rate(A, LR, 5, 0.7, 0.5, 1), TypeError, "nesterov must be a bool"),
        (lambda: theory.nqm_outer_rate(A, LR, 0, 0.7, 0.5), ValueError, "k must be an int >= 1"),
        (lambda: theory.nqm_outer_rate(A, LR, 2.0, 0.7, 0.5), TypeError, "k must be an int"),
        (lambda: theory.nqm_outer_rate(A, 0.2, 5, 0.7, 0.5), ValueError, "0 < lr"),
        (lambda: theory.nqm_outer_rate(list(A), LR, 5, 0.7, 0.5), TypeError, "curvature must be an array"),
        (lambda: theory.nqm_outer_variance_ratio(-A, LR, 5, 0.7, 0.5), ValueError, "curvature must be > 0"),
        (lambda: theory.nqm_outer_stationary_variance(A, -S2, LR, 5, 0.7, 0.5), ValueError, "noise_var"),
        (lambda: theory.nqm_outer_stationary_variance(A, S2[:2], LR, 5, 0.7, 0.5), ValueError, "noise_var"),
        (lambda: theory.nqm_outer_stationary_moments(A, S2.astype(np.float32), LR, 5, 0.7, 0.5),
         TypeError, "noise_var"),
        (lambda: theory.nqm_outer_moments(START, A, S2, -0.1, 5, 0.7, 0.5), ValueError, "lr must be >= 0"),
        (lambda: theory.nqm_outer_moments(START[:4], A, S2, LR, 5, 0.7, 0.5), TypeError, "moments must be"),
        (lambda: theory.nqm_outer_moments(START._replace(buf_sq=-S2), A, S2, LR, 5, 0.7, 0.5),
         ValueError, "moments.buf_sq must be >= 0"),
        (lambda: theory.nqm_outer_moments(START._replace(cross=A[:2]), A, S2, LR, 5, 0.7, 0.5),
         ValueError, "moments.cross"),
        (lambda: theory.nqm_outer_moments(START, A, S2, LR, 5, 0.7, 0.5, "yes"), TypeError, "nesterov"),
        (lambda: theory.nqm_outer_start(A, -S2), ValueError, "var must be >= 0"),
        (lambda: theory.nqm_outer_start(A, S2[:3]), ValueError, "var"),
        (lambda: theory.nqm_outer_start(1.0, S2), TypeError, "mean must be an array"),
        (lambda: theory.nqm_outer_rate(A, np.float64(LR), np.int64(5), np.float64(0.7), 0.5), None, None),
    ],
)
def test_bad_input(call, error, match):
    if error is None:  # NumPy scalars are accepted (coerced to Python numbers)
        call()
        return
    with pytest.raises(error, match=match):
        call()


def test_bad_input_leaves_the_state_untouched():
    state = theory.nqm_outer_start(np.ones_like(A), np.full_like(A, 0.5))
    before = [x.copy() for x in state]
    with pytest.raises(ValueError, match="momentum"):
        theory.nqm_outer_moments(state, A, S2, LR, 5, 0.7, 1.5)
    for x, y in zip(state, before):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- every library


def test_every_array_library(xp, rng):
    from core_helpers import asarray, to_numpy

    conv = lambda v: asarray(xp, v)  # noqa: E731
    a, s2 = conv(A), conv(S2)
    mean0, var0 = rng.standard_normal(A.shape), rng.uniform(0.0, 1.0, A.shape)
    pairs = []
    for nesterov in (False, True):
        args = (LR, 5, 0.7, 0.6, nesterov)
        pairs += [
            (theory.nqm_outer_variance_ratio(a, *args), theory.nqm_outer_variance_ratio(A, *args)),
            (theory.nqm_outer_stationary_variance(a, s2, *args),
             theory.nqm_outer_stationary_variance(A, S2, *args)),
        ]
        pairs += list(zip(theory.nqm_outer_rate(a, *args), theory.nqm_outer_rate(A, *args)))
        pairs += list(zip(theory.nqm_outer_stationary_moments(a, s2, *args),
                          theory.nqm_outer_stationary_moments(A, S2, *args)))
        got = theory.nqm_outer_moments(theory.nqm_outer_start(conv(mean0), conv(var0)), a, s2, *args)
        want = theory.nqm_outer_moments(theory.nqm_outer_start(mean0, var0), A, S2, *args)
        pairs += list(zip(got, want))
    for got, expected in pairs:
        assert got.dtype == xp.float64
        np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-12, atol=1e-300)
