"""Monte Carlo on the NQM with the library's own optimizers decides the formulas.

`theory.nqm_simulate` runs ``lc.sgd`` and ``lc.lookahead(lc.sgd(lr=γ), k, α)``
on many independent chains at once. Starting from a fixed θ₀, every iterate is
an affine function of Gaussian noise, hence exactly Gaussian; with n chains the
sample mean is N(μ, v/n) and (n − 1)·s²/v is χ²_{n−1}. The acceptance test
below uses non-asymptotic tail bounds for both,

    P(|mean − μ| ≥ t·√(v/n)) ≤ 2·exp(−t²/2)                 (Gaussian)
    P(χ²_ν − ν ≥ 2√(νx) + 2x) ≤ e⁻ˣ,  P(ν − χ²_ν ≥ 2√(νx)) ≤ e⁻ˣ   (Laurent–Massart),

with x = ln(2N/δ) and t = √(2x) for N comparisons: by the union bound a correct
implementation fails with probability at most δ = 1e-6 for any seed. With
n = 50 000 the variance band is about ±4 % and the mean band ±0.03 standard
deviations, so the slides' typos (a factor γ = 0.1 or Σ² for Σ) and wrong
factors of α are rejected by the same comparison, as the tests show.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import lookahead_core as lc
from core_helpers import asarray, to_numpy
from lookahead_core import theory

DELTA = 1e-6  # probability that a correct implementation fails one call of `agreement`
CHAINS = 50_000
STEPS = 60
THETA0 = np.array([2.0, -1.0, 0.5, 1.0])
A = np.array([0.5, 2.0, 8.0, 15.0])
S2 = np.array([0.5, 2.0, 0.25, 1.5])
LR = 0.1  # γa = 0.05, 0.2, 0.8, 1.5: slow, fast and oscillating coordinates
CONFIGS = {"sgd": (1, 1.0), "la-k5-a0.5": (5, 0.5), "la-k3-a0.8": (3, 0.8), "la-k1-a0.3": (1, 0.3)}


def agreement(sim: theory.NQMMoments, expected, n: int, delta: float = DELTA) -> list[str]:
    """Entries of ``sim`` outside the (1 − δ) acceptance bands around ``expected``.

    Entries with V = 0 (the start, and φ before the first sync) are
    deterministic and compared to rounding. Returns a list of human-readable
    violations; empty means the simulation agrees.
    """
    sim = [np.asarray(to_numpy(x), dtype=np.float64) for x in sim]
    expected = [np.asarray(x, dtype=np.float64) for x in expected]
    comparisons = 2 * sim[0].size * 2
    x = math.log(2.0 * comparisons / delta)
    t = math.sqrt(2.0 * x)
    nu = n - 1
    bad = []
    for label, (m_hat, v_hat, m, v) in {
        "fast": (sim[0], sim[1], expected[0], expected[1]),
        "slow": (sim[2], sim[3], expected[2], expected[3]),
    }.items():
        fixed = v == 0
        scale = 1e-12 * (1.0 + np.abs(m))
        random_v = np.where(fixed, 1.0, v)
        chi2 = nu * v_hat / random_v
        mean_ok = np.where(
            fixed, np.abs(m_hat - m) <= scale, np.abs(m_hat - m) <= t * np.sqrt(random_v / n)
        )
        var_ok = np.where(
            fixed,
            v_hat <= scale**2,
            (chi2 >= nu - 2 * math.sqrt(nu * x)) & (chi2 <= nu + 2 * math.sqrt(nu * x) + 2 * x),
        )
        for what, ok, got, want in (("mean", mean_ok, m_hat, m), ("var", var_ok, v_hat, v)):
            for s, i in zip(*np.nonzero(~ok)):
                bad.append(f"{label} {what} step {s} coord {i}: {got[s, i]:.6g} vs {want[s, i]:.6g}")
    return bad


def reference(k, alpha, lr=LR, *, injected=None, slow_weight=None, keep_cov=True):
    """A step-resolved moment recurrence in float64, with switches for wrong formulas."""
    injected = (lr * A) ** 2 * S2 if injected is None else injected
    w_theta = alpha**2 if slow_weight is None else slow_weight
    rho = 1.0 - lr * A
    mf, vf = THETA0.copy(), np.zeros_like(A)
    ms, vs, cov = mf.copy(), vf.copy(), vf.copy()
    rows = [(mf, vf, ms, vs)]
    for s in range(1, STEPS + 1):
        mf, vf, cov = rho * mf, rho**2 * vf + injected, rho * cov
        if s % k == 0:
            ms = (1 - alpha) * ms + alpha * mf
            vs = (1 - alpha) ** 2 * vs + w_theta * vf + (2 * alpha * (1 - alpha) * cov if keep_cov else 0.0)
            mf, vf, cov = ms, vs, vs
        rows.append((mf, vf, ms, vs))
    return tuple(np.array([r[j] for r in rows]) for j in range(4))


def optimizer_for(k, alpha):
    inner = lc.sgd(lr=LR)
    return inner if (k, alpha) == (1, 1.0) else lc.lookahead(inner, k=k, alpha=alpha)


@pytest.fixture(scope="module")
def simulations():
    return {
        name: theory.nqm_simulate(optimizer_for(k, a), THETA0, A, S2, STEPS, CHAINS, seed=i)
        for i, (name, (k, a)) in enumerate(CONFIGS.items())
    }


@pytest.mark.parametrize("name", CONFIGS)
def test_simulation_agrees_with_the_exact_recurrences(simulations, name):
    k, alpha = CONFIGS[name]
    expected = theory.nqm_moment_trajectory(THETA0, np.zeros_like(A), A, S2, LR, STEPS, k, alpha)
    assert agreement(simulations[name], expected, CHAINS) == []


@pytest.mark.parametrize("name", CONFIGS)
def test_the_reference_with_no_switch_is_the_library(name):
    k, alpha = CONFIGS[name]
    expected = theory.nqm_moment_trajectory(THETA0, np.zeros_like(A), A, S2, LR, STEPS, k, alpha)
    for r, e in zip(reference(k, alpha), expected):
        np.testing.assert_allclose(r, e, rtol=1e-13, atol=1e-300)


WRONG = {
    # eq. 0.19 as transcribed: γA²Σ, one γ dropped (10× too much noise at γ = 0.1)
    "eq-0.19-gamma-dropped": dict(injected=LR * A**2 * S2),
    # eq. 0.8 as transcribed: Σ² for Σ
    "eq-0.8-sigma-squared": dict(injected=(LR * A) ** 2 * S2**2),
    # the learning rate off by 10 %
    "gamma-10-percent-off": dict(lr=1.1 * LR),
}
WRONG_LOOKAHEAD = {
    # α instead of α² in front of V[θ_{t,k}] (eq. 0.13 / 0.15)
    "alpha-for-alpha-squared": lambda alpha: dict(slow_weight=alpha),
    # cov(φ_t, θ_{t,k}) = ρᵏV[φ_t] (eq. 0.17) forgotten
    "covariance-dropped": lambda alpha: dict(keep_cov=False),
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("wrong", WRONG)
def test_wrong_gamma_or_sigma_formulas_are_rejected(simulations, name, wrong):
    k, alpha = CONFIGS[name]
    assert len(agreement(simulations[name], reference(k, alpha, **WRONG[wrong]), CHAINS)) > 100


@pytest.mark.parametrize("name", ["la-k5-a0.5", "la-k3-a0.8", "la-k1-a0.3"])
@pytest.mark.parametrize("wrong", WRONG_LOOKAHEAD)
def test_wrong_alpha_formulas_are_rejected(simulations, name, wrong):
    k, alpha = CONFIGS[name]
    wrong_moments = reference(k, alpha, **WRONG_LOOKAHEAD[wrong](alpha))
    assert len(agreement(simulations[name], wrong_moments, CHAINS)) > 100


def test_stationary_variance_matches_proposition_2():
    """After 400 steps the transient is below 1e-8 relative; compare with V*_SGD and V*_LA."""
    n, steps, k, alpha = 20_000, 400, 5, 0.5
    got = {}
    for seed, (label, opt) in enumerate(
        [("sgd", lc.sgd(lr=LR)), ("la", lc.lookahead(lc.sgd(lr=LR), k=k, alpha=alpha))]
    ):
        sim = theory.nqm_simulate(opt, THETA0, A, S2, steps, n, seed=100 + seed)
        got[label] = to_numpy(sim.slow_var[-1])
    v_sgd = theory.nqm_sgd_variance_fixed_point(A, S2, LR)
    v_la = theory.nqm_lookahead_variance_fixed_point(A, S2, LR, k, alpha)
    nu, x = n - 1, math.log(2 * 2 * A.size / DELTA)
    for label, v in (("sgd", v_sgd), ("la", v_la)):
        chi2 = nu * got[label] / v
        assert np.all(chi2 >= nu - 2 * math.sqrt(nu * x)), label
        assert np.all(chi2 <= nu + 2 * math.sqrt(nu * x) + 2 * x), label
    # the same bands reject "Lookahead does not reduce the variance" (V*_LA = V*_SGD)
    assert np.all(nu * got["la"] / v_sgd < nu - 2 * math.sqrt(nu * x))


def test_float32_simulation_stays_float32():
    sim = theory.nqm_simulate(
        lc.lookahead(lc.sgd(lr=LR), k=2, alpha=0.5),
        THETA0.astype(np.float32), A.astype(np.float32), S2.astype(np.float32), 4, 10,
    )
    assert all(x.dtype == np.float32 and x.shape == (5, 4) for x in sim)


def test_sgd_slow_fields_repeat_the_fast_ones():
    sim = theory.nqm_simulate(lc.sgd(lr=LR), THETA0, A, S2, 5, 100)
    np.testing.assert_array_equal(sim.slow_mean, sim.fast_mean)
    np.testing.assert_array_equal(sim.slow_var, sim.fast_var)


def test_same_seed_same_numbers_every_library(xp):
    opt = lc.lookahead(lc.sgd(lr=LR), k=3, alpha=0.5)
    expected = theory.nqm_simulate(opt, THETA0, A, S2, 12, 500, seed=7)
    got = theory.nqm_simulate(opt, asarray(xp, THETA0), asarray(xp, A), asarray(xp, S2), 12, 500, seed=7)
    for g, e in zip(got, expected):
        assert g.dtype == xp.float64
        np.testing.assert_allclose(to_numpy(g), e, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(optimizer="sgd"), TypeError, "optimizer must be a Lookahead or an InnerOptimizer"),
        (dict(optimizer=lc.lookahead(lc.sgd(lr=0.1), alpha_mode="adaptive")), ValueError, "fixed alpha"),
        (dict(chains=1), ValueError, "chains must be an int >= 2"),
        (dict(steps=-1), ValueError, "steps"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(theta0=np.ones((2, 4))), ValueError, "theta0 must be 1-D"),
        (dict(curvature=np.ones(3)), ValueError, "curvature"),
        (dict(noise_var=-S2), ValueError, "noise_var must be >= 0"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(optimizer=lc.sgd(lr=LR), theta0=THETA0, curvature=A, noise_var=S2, steps=3, chains=10)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        theory.nqm_simulate(**args)
