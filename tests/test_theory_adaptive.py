"""Adaptive α (``alpha_mode="adaptive"``): Proposition 1 from gradients alone.

The expectation is `theory.optimal_alpha` (tested against line searches in
test_theory_prop1.py) evaluated on the iterates the optimizer produces, clipped
to ``[alpha_min, 1]``; the sync is checked bit for bit against ``lc.lerp``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import lookahead_core as lc
from core_helpers import asarray, assert_bit_identical, snapshot, to_numpy
from lookahead_core import theory


def spd(rng, n=6, condition=50.0):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (q * np.geomspace(1.0, condition, n)) @ q.T
    return 0.5 * (A + A.T)


INNERS = {
    "sgd-near-2-over-L": lambda: lc.sgd(lr=1.9 / 50.0),
    "heavy-ball": lambda: lc.sgd(lr=0.01, momentum=0.9),
    "nesterov": lambda: lc.sgd(lr=0.02, momentum=0.9, nesterov=True),
    "adam": lambda: lc.adam(lr=0.3),
}


@pytest.mark.parametrize("name", INNERS)
@pytest.mark.parametrize("k", [1, 5])
def test_full_batch_quadratic_reproduces_optimal_alpha(rng, name, k):
    n, alpha_min = 6, 0.05
    A, b = spd(rng, n), rng.standard_normal(n)
    opt = lc.lookahead(INNERS[name](), k=k, alpha=0.5, alpha_mode="adaptive", alpha_min=alpha_min)
    params = (rng.standard_normal(n),)
    state = opt.init(params)
    seen, interior = 0, 0
    for _ in range(20 * (k + 1)):
        grads = (A @ params[0] - b,)  # full batch: the exact gradient at the current params
        if state.count < k:
            if state.count == 0:
                start = grads[0].copy()
            inner_step = state.inner.step
            params, state = opt.step(params, grads, state)
            assert state.inner.step == inner_step + 1
            continue
        # the sync call: grads = ∇L(θ_{t,k}); no inner step
        phi, theta_k = state.slow[0], params[0]
        star = float(theory.optimal_alpha(phi, theta_k, A, b))
        expected = min(max(star, alpha_min), 1.0)
        inner_before = snapshot(state.inner)
        np.testing.assert_array_equal(state.start_grads[0], start)
        params, state = opt.step(params, grads, state)
        assert state.count == 0
        assert snapshot(state.inner) == inner_before
        assert state.last_alpha == pytest.approx(expected, rel=1e-10)
        assert_bit_identical(state.slow, [lc.lerp(phi, theta_k, state.last_alpha)])
        assert_bit_identical(params, state.slow)
        assert params[0] is not state.slow[0]
        seen += 1
        interior += alpha_min < star < 1.0
    assert seen == 20
    if name != "sgd-near-2-over-L":
        assert interior >= 5  # the estimate, not only the clip, is exercised


def test_the_last_inner_gradient_would_not_do(rng):
    """Why the extra gradient: with ∇L(θ_{t,k-1}) (the k-th step's gradient) in place
    of ∇L(θ_{t,k}), the same comparison is off by far more than rounding."""
    n, k = 6, 5
    A, b = spd(rng, n), rng.standard_normal(n)
    inner = lc.sgd(lr=0.01, momentum=0.9)
    theta = rng.standard_normal(n)
    state = inner.init((theta,))
    for _ in range(3):
        phi = theta.copy()
        g0 = A @ phi - b
        for _ in range(k):
            last = A @ theta - b
            delta, state = inner.update((last,), state, (theta,))
            theta = theta + delta[0]
        num, den = lc.secant_alpha_terms((phi,), (theta,), (g0,), (last,))
        star = float(theory.optimal_alpha(phi, theta, A, b))
        assert abs(num / den - star) > 0.01 * abs(star)
        theta = phi + star * (theta - phi)


def test_clipping_to_the_range():
    """1-D L = ½x²: from φ = 1, θ_k = 1 − s gives α* = 1/s exactly."""
    opt = lc.lookahead(lc.sgd(lr=0.0), k=1, alpha=0.5, alpha_mode="adaptive", alpha_min=0.3)
    for shrink, expected in [(0.5, 1.0), (2.0, 0.5), (8.0, 0.3)]:
        state = opt.init((np.array([1.0]),))
        # an inner step that lands on 1 − shrink: feed a gradient to an lr = 0 SGD
        # and move the parameters by hand, as any inner optimizer could
        params, state = opt.step((np.array([1.0]),), (np.array([1.0]),), state)
        params = (np.array([1.0 - shrink]),)
        params, state = opt.step(params, (params[0].copy(),), state)
        assert state.last_alpha == expected


@pytest.mark.parametrize(
    "theta_k, end_grad, why",
    [
        (1.0, 1.0, "no movement: d = 0"),
        (2.0, -5.0, "negative curvature along the line"),
        (0.5, 0.5, "zero curvature: g_k = g_0"),
    ],
)
def test_undefined_estimate_falls_back_to_alpha(theta_k, end_grad, why):
    opt = lc.lookahead(lc.sgd(lr=0.0), k=1, alpha=0.4, alpha_mode="adaptive", alpha_min=0.1)
    state = opt.init((np.array([1.0]),))
    _, state = opt.step((np.array([1.0]),), (np.array([0.5]),), state)
    params, state = opt.step((np.array([theta_k]),), (np.array([end_grad]),), state)
    assert state.last_alpha == 0.4, why
    np.testing.assert_array_equal(state.slow[0], lc.lerp(np.array([1.0]), np.array([theta_k]), 0.4))


def test_noisy_problem_stays_in_range():
    """NQM with minibatch noise: every α in [alpha_min, 1], both ends reached."""
    rng = np.random.default_rng(5)
    a = np.geomspace(0.01, 1.0, 50)
    s2 = a.copy()
    alpha_min, k = 0.2, 5
    opt = lc.lookahead(lc.sgd(lr=1.0, momentum=0.5), k=k, alpha=0.5, alpha_mode="adaptive",
                       alpha_min=alpha_min)
    params = (np.full(50, 3.0),)
    state = opt.init(params)
    alphas = []
    for _ in range(300 * (k + 1)):
        c = np.sqrt(s2) * rng.standard_normal(50)
        params, state = opt.step(params, (a * (params[0] - c),), state)
        if state.count == 0:
            alphas.append(state.last_alpha)
    alphas = np.array(alphas)
    assert len(alphas) == 300
    assert np.all((alphas >= alpha_min) & (alphas <= 1.0))
    assert alphas.min() == alpha_min and alphas.max() == 1.0
    assert np.any((alphas > alpha_min) & (alphas < 1.0))
    assert np.all(np.isfinite(params[0]))


def test_default_mode_is_the_fixed_algorithm_bit_for_bit(rng):
    """Default and explicit ``alpha_mode="fixed"`` (any alpha_min) give the same bits,
    the same state type, and match Algorithm 1 written out here."""
    n, k, alpha = 4, 3, 0.5
    A, b = spd(rng, n, 10.0), rng.standard_normal(n)
    start = rng.standard_normal(n)
    runs = []
    for opt in (lc.lookahead(lc.sgd(lr=0.05, momentum=0.9), k=k, alpha=alpha),
                lc.lookahead(lc.sgd(lr=0.05, momentum=0.9), k=k, alpha=alpha,
                             alpha_mode="fixed", alpha_min=0.7)):
        assert opt.alpha_mode == "fixed"
        params = (start.copy(),)
        state = opt.init(params)
        assert type(state) is lc.LookaheadState and len(state) == 3
        trajectory = []
        for _ in range(12):
            params, state = opt.step(params, (A @ params[0] - b,), state)
            trajectory.append(params[0])
        runs.append(trajectory)
    assert_bit_identical(runs[0], runs[1])
    # Algorithm 1 by hand: heavy-ball SGD (torch conventions), sync every k steps
    theta, phi, buf = start.copy(), start.copy(), None
    for step in range(1, 13):
        g = A @ theta - b
        buf = g.copy() if buf is None else 0.9 * buf + g
        theta = theta + (-0.05 * buf)
        if step % k == 0:
            phi = theta - (1.0 - alpha) * (theta - phi)  # two-sided lerp, alpha >= 0.5
            theta = phi.copy()
        np.testing.assert_array_equal(runs[0][step - 1], theta)


def test_explicit_sync_uses_the_fallback_alpha():
    opt = lc.lookahead(lc.sgd(lr=0.1), k=4, alpha=0.25, alpha_mode="adaptive")
    state = opt.init((np.array([1.0, 2.0]),))
    params, state = opt.step((np.array([1.0, 2.0]),), (np.array([1.0, -1.0]),), state)
    params, state = opt.sync(params, state)
    assert state.count == 0 and state.last_alpha == 0.25
    np.testing.assert_array_equal(
        state.slow[0], lc.lerp(np.array([1.0, 2.0]), np.array([0.9, 2.1]), 0.25)
    )


def test_extra_memory_is_one_parameter_sized_buffer():
    opt = lc.lookahead(lc.sgd(lr=0.1), k=2, alpha_mode="adaptive")
    params = (np.ones((3, 2), np.float32), np.ones(5, np.float32))
    state = opt.init(params)
    assert type(state) is lc.AdaptiveLookaheadState
    assert [g.shape for g in state.start_grads] == [(3, 2), (5,)]
    assert all(g.dtype == np.float32 for g in state.start_grads)
    assert state.last_alpha is None and state.count == 0


def test_k_plus_one_calls_per_cycle_and_start_gradient_kept(rng):
    k = 3
    opt = lc.lookahead(lc.sgd(lr=0.1), k=k, alpha=0.5, alpha_mode="adaptive")
    params = (rng.standard_normal(4),)
    state = opt.init(params)
    counts, first = [], None
    for i in range(2 * (k + 1)):
        g = (rng.standard_normal(4),)
        if state.count == 0:
            first = g[0].copy()
        params, state = opt.step(params, g, state)
        counts.append(state.count)
        if 0 < state.count:
            np.testing.assert_array_equal(state.start_grads[0], first)
    assert counts == [1, 2, 3, 0, 1, 2, 3, 0]
    assert state.inner.step == 2 * k


def test_secant_terms_by_hand():
    slow = (np.array([1.0, 2.0]), np.array([[0.5]]))
    fast = (np.array([0.0, 1.0]), np.array([[1.5]]))
    g0 = (np.array([2.0, 1.0]), np.array([[1.0]]))
    gk = (np.array([1.0, 1.0]), np.array([[2.0]]))
    # d = (1, 1, −1); g₀ᵀd = 2 + 1 − 1 = 2; (g₀ − g_k)ᵀd = 1 + 0 + 1 = 2
    assert lc.secant_alpha_terms(slow, fast, g0, gk) == (2.0, 2.0)


@pytest.mark.parametrize(
    "num, den, expected",
    [(1.0, 2.0, 0.5), (3.0, 2.0, 1.0), (-1.0, 2.0, 0.1), (1.0, 0.0, 0.4), (1.0, -1.0, 0.4),
     (math.nan, 1.0, 0.4), (1.0, math.inf, 0.4), (1e300, 1e-300, 1.0)],
)
def test_secant_alpha_clips_and_falls_back(num, den, expected):
    assert lc.secant_alpha(num, den, alpha_min=0.1, fallback=0.4) == expected


def test_float16_terms_are_summed_in_float32():
    torch = pytest.importorskip("torch")
    n = 4096  # float16 products summed in float16 would lose the small terms
    slow = (torch.full((n,), 1.0, dtype=torch.float16),)
    fast = (torch.full((n,), 0.0, dtype=torch.float16),)
    g0 = (torch.full((n,), 0.25, dtype=torch.float16),)
    gk = (torch.full((n,), 0.125, dtype=torch.float16),)
    assert lc.secant_alpha_terms(slow, fast, g0, gk) == (n * 0.25, n * 0.125)


def test_every_array_library(xp, rng):
    n, k = 5, 3
    A, b = spd(rng, n, 20.0), rng.standard_normal(n)
    start = rng.standard_normal(n)
    results = []
    for lib in ("numpy", "xp"):
        conv = (lambda v: v) if lib == "numpy" else (lambda v: asarray(xp, v))
        A_, b_ = conv(A), conv(b)
        opt = lc.lookahead(lc.sgd(lr=0.01, momentum=0.9), k=k, alpha=0.5, alpha_mode="adaptive")
        params = (conv(start),)
        state = opt.init(params)
        alphas = []
        for _ in range(6 * (k + 1)):
            params, state = opt.step(params, (A_ @ params[0] - b_,), state)
            if state.count == 0:
                alphas.append(state.last_alpha)
        results.append((alphas, to_numpy(params[0])))
    assert all(isinstance(a, float) for a in results[1][0])
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(alpha_mode="auto"), ValueError, "alpha_mode must be one of"),
        (dict(alpha_mode=1), TypeError, "alpha_mode must be one of"),
        (dict(alpha_mode="adaptive", alpha_min=0.6), ValueError, r"alpha \(the fallback"),
        (dict(alpha_min=1.5), ValueError, "alpha_min must be in"),
        (dict(alpha_min=True), TypeError, "alpha_min"),
        (dict(alpha_min=math.nan), ValueError, "alpha_min must be finite"),
    ],
)
def test_bad_configuration(kwargs, error, match):
    with pytest.raises(error, match=match):
        lc.lookahead(lc.sgd(lr=0.1), k=2, alpha=0.5, **kwargs)


def test_bad_input_changes_nothing():
    adaptive = lc.lookahead(lc.sgd(lr=0.1), k=1, alpha_mode="adaptive")
    fixed = lc.lookahead(lc.sgd(lr=0.1), k=1)
    params = (np.ones(3),)
    a_state, f_state = adaptive.init(params), fixed.init(params)
    with pytest.raises(TypeError, match="AdaptiveLookaheadState"):
        adaptive.step(params, (np.ones(3),), f_state)
    with pytest.raises(TypeError, match="state must be a LookaheadState"):
        fixed.step(params, (np.ones(3),), a_state)
    params2, pending = adaptive.step(params, (np.ones(3),), a_state)
    before = snapshot(pending)
    # the sync call checks its gradient, naming what the caller passed
    with pytest.raises(ValueError, match=r"grads\[0\] must have shape"):
        adaptive.step(params2, (np.ones(4),), pending)
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        adaptive.step(params2, (np.ones(3, np.float32),), pending)
    assert snapshot(pending) == before
    with pytest.raises(TypeError, match="numerator"):
        lc.secant_alpha("1", 1.0, 0.1, 0.5)
    with pytest.raises(ValueError, match="fallback must be in"):
        lc.secant_alpha(1.0, 1.0, 0.5, 0.2)
