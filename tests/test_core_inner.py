"""The inner optimizers A against values derived by hand (Python floats).

Conventions (torch.optim's): with g' = g + wd·θ (L2),
  SGD:   b₁ = g'₁,  b_t = μ b_{t−1} + (1 − τ) g'_t;  d = b (heavy ball) or g' + μ b (Nesterov);
         delta = −lr·d
  Adam:  m_t = β₁ m_{t−1} + (1 − β₁) g',  v_t = β₂ v_{t−1} + (1 − β₂) g'²,
         delta = −lr/(1 − β₁ᵗ) · m_t / (√v_t/√(1 − β₂ᵗ) + ε)
  AdamW: Adam on g (no L2) plus −lr·wd·θ in delta.

The decimal literals below were worked out by hand; they are not exactly
representable in binary, so comparisons allow a few ulp (rtol = 8·eps).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from core_helpers import asarray, to_numpy

import lookahead_core as lc


def _steps(xp, inner, theta0, grads, dtype="float64"):
    """Run ``inner`` alone on one parameter; return [(delta, θ after), ...] as floats arrays."""
    params = [asarray(xp, theta0, dtype)]
    state = inner.init(params)
    out = []
    for g in grads:
        delta, state = inner.update([asarray(xp, g, dtype)], state, params)
        params = [params[0] + delta[0]]
        out.append((to_numpy(delta[0]).astype(np.float64), to_numpy(params[0]).astype(np.float64)))
    return out, state


def _close(actual, expected, dtype="float64"):
    rtol = 8 * float(np.finfo(dtype).eps)
    np.testing.assert_allclose(actual, np.asarray(expected, dtype=np.float64), rtol=rtol, atol=0)


# θ₀ = 1, g₁ = 0.5, g₂ = −0.25, lr = 0.1 for all SGD variants


def test_sgd_plain(xp):
    (d1, t1), (d2, t2) = _steps(xp, lc.sgd(lr=0.1), [1.0, -2.0], [[0.5, 4.0], [-0.25, 0.0]])[0]
    _close(d1, [-0.05, -0.4])
    _close(t1, [0.95, -2.4])
    _close(d2, [0.025, 0.0])
    _close(t2, [0.975, -2.4])


def test_sgd_momentum_dampening_weight_decay(xp):
    """μ = 0.9, τ = 0.5, wd = 0.1.

    step 1: g' = 0.5 + 0.1·1 = 0.6, b = 0.6 (no dampening on the first step),
            delta = −0.06, θ = 0.94
    step 2: g' = −0.25 + 0.1·0.94 = −0.156, b = 0.9·0.6 + 0.5·(−0.156) = 0.462,
            delta = −0.0462, θ = 0.8938
    """
    inner = lc.sgd(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1)
    (d1, t1), (d2, t2) = _steps(xp, inner, [1.0], [[0.5], [-0.25]])[0]
    _close(d1, [-0.06])
    _close(t1, [0.94])
    _close(d2, [-0.0462])
    _close(t2, [0.8938])


def test_sgd_heavy_ball_without_dampening(xp):
    """μ = 0.9: b₁ = 0.5, b₂ = 0.45 − 0.25 = 0.2, b₃ = 0.18 + 1 = 1.18."""
    inner = lc.sgd(lr=0.1, momentum=0.9)
    steps, state = _steps(xp, inner, [1.0], [[0.5], [-0.25], [1.0]])
    _close([d for d, _ in steps], [[-0.05], [-0.02], [-0.118]])
    _close(steps[-1][1], [1.0 - 0.05 - 0.02 - 0.118])
    _close(to_numpy(state.momentum_buffer[0]), [1.18])
    assert state.step == 3


def test_sgd_nesterov_weight_decay(xp):
    """μ = 0.9, wd = 0.1, Nesterov.

    step 1: g' = 0.6, b = 0.6, d = 0.6 + 0.9·0.6 = 1.14, delta = −0.114, θ = 0.886
    step 2: g' = −0.25 + 0.0886 = −0.1614, b = 0.54 − 0.1614 = 0.3786,
            d = −0.1614 + 0.9·0.3786 = 0.17934, delta = −0.017934, θ = 0.868066
    """
    inner = lc.sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    (d1, t1), (d2, t2) = _steps(xp, inner, [1.0], [[0.5], [-0.25]])[0]
    _close(d1, [-0.114])
    _close(t1, [0.886])
    _close(d2, [-0.017934])
    _close(t2, [0.868066])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_first_step_is_sign_times_lr(xp, dtype):
    """Step 1: m̂ = m/(1−β₁) = g and v̂ = v/(1−β₂) = g², so
    delta = −lr·g/(|g| + ε) = −lr·sign(g)·|g|/(|g| + ε), whatever β₁, β₂."""
    lr, eps = 0.01, 1e-8
    g = [0.5, -2.0, 1e-3, 0.0]
    for betas in [(0.9, 0.999), (0.5, 0.25)]:
        (d1, _), = _steps(xp, lc.adam(lr=lr, betas=betas, eps=eps), [1.0] * 4, [g], dtype)[0]
        expected = [-lr * math.copysign(1.0, x) * abs(x) / (abs(x) + eps) for x in g]
        _close(d1, expected, dtype)
    # with ε = 0 the first step is exactly −lr·sign(g) for g ≠ 0; with β = (½, ¾)
    # every intermediate is dyadic: m = g/2, v = g²/4, √v/√¼ = |g|, step size 2·lr
    inner = lc.adam(lr=0.25, betas=(0.5, 0.75), eps=0.0)
    (d1, _), = _steps(xp, inner, [1.0] * 3, [[0.5, -2.0, 0.125]], dtype)[0]
    np.testing.assert_array_equal(d1, [-0.25, 0.25, -0.25])


def test_adam_second_step_by_hand(xp):
    """β = (0.5, 0.75), ε = 0, lr = 0.1, g₁ = 1, g₂ = 3 (dyadic, so exact up to the √).

    m₁ = 0.5, v₁ = 0.25;  m₂ = 0.25 + 1.5 = 1.75, v₂ = 0.1875 + 2.25 = 2.4375
    delta₂ = −0.1/(1 − 0.25) · 1.75 / (√2.4375/√(1 − 0.5625))
           = −(0.1/0.75)·1.75·√0.4375/√2.4375
    """
    inner = lc.adam(lr=0.1, betas=(0.5, 0.75), eps=0.0)
    steps, state = _steps(xp, inner, [0.0], [[1.0], [3.0]])
    expected = -(0.1 / 0.75) * 1.75 * math.sqrt(0.4375) / math.sqrt(2.4375)
    _close(steps[1][0], [expected])
    _close(steps[1][1], [-0.1 + expected])
    np.testing.assert_array_equal(to_numpy(state.exp_avg[0]), [1.75])
    np.testing.assert_array_equal(to_numpy(state.exp_avg_sq[0]), [2.4375])
    assert state.step == 2 and state.max_exp_avg_sq is None


def test_adam_constant_gradient_moves_lr_per_step(xp):
    """With a constant g, m̂ = g and v̂ = g² at every step: delta = −lr·sign(g) (ε = 0).

    β = (½, ¾) and g = 0.375 keep the moments and the bias corrections exact in
    float64 for 20 steps (m_t = (1 − 2⁻ᵗ)·g, v_t = (4ᵗ − 3ᵗ)/4ᵗ·g², numerators
    < 2⁵³); only the two square roots, the quotient and lr/(1 − β₁ᵗ) round,
    so each delta is within a few eps of −lr. (With β₂ = 0.999 the rounding of
    β₂ᵗ is amplified by β₂ᵗ/(1 − β₂ᵗ) ≈ 500 at t = 2, an inherent conditioning
    of the bias correction, not an error of the implementation.)
    """
    lr, g = 0.01, 0.375
    inner = lc.adam(lr=lr, betas=(0.5, 0.75), eps=0.0)
    steps, state = _steps(xp, inner, [2.0, -2.0], [[g, -g]] * 20)
    for d, _ in steps:
        _close(d, [-lr, lr])
    np.testing.assert_array_equal(to_numpy(state.exp_avg[0]), [(1 - 2.0**-20) * g, -(1 - 2.0**-20) * g])
    # 20 additions to |θ| ≤ 2: ≤ 20 half-ulps of 2 plus the deltas' errors
    np.testing.assert_allclose(steps[-1][1], [2.0 - 20 * lr, -2.0 + 20 * lr], rtol=24 * 2.0**-52)


def test_amsgrad_keeps_the_largest_second_moment(xp):
    """β = (0.5, 0.75), ε = 0, lr = 0.1, g = (2, 0).

    step 2: m₂ = 0.5·1 = 0.5 (m₁ = 1), v₂ = 0.75·1 = 0.75 (v₁ = 0.25·4 = 1)
      Adam:    delta₂ = −(0.1/0.75)·0.5/(√0.75/√0.4375)
      AMSGrad: v̂ uses max(v₁, v₂) = 1: delta₂ = −(0.1/0.75)·0.5/(1/√0.4375)
    """
    plain, _ = _steps(xp, lc.adam(lr=0.1, betas=(0.5, 0.75), eps=0.0), [0.0], [[2.0], [0.0]])
    ams, state = _steps(xp, lc.adam(lr=0.1, betas=(0.5, 0.75), eps=0.0, amsgrad=True),
                        [0.0], [[2.0], [0.0]])
    _close(plain[0][0], [-0.1])
    _close(ams[0][0], [-0.1])
    _close(plain[1][0], [-(0.1 / 0.75) * 0.5 * math.sqrt(0.4375) / math.sqrt(0.75)])
    _close(ams[1][0], [-(0.1 / 0.75) * 0.5 * math.sqrt(0.4375) / 1.0])
    np.testing.assert_array_equal(to_numpy(state.exp_avg_sq[0]), [0.75])
    np.testing.assert_array_equal(to_numpy(state.max_exp_avg_sq[0]), [1.0])


def test_adam_l2_and_adamw_decoupled_decay(xp):
    """θ₀ = 2, g = 0.5, wd = 0.1, lr = 0.01, ε = 1e-8, first step.

    Adam (L2): g' = 0.5 + 0.2 = 0.7, delta = −0.01·0.7/(0.7 + ε)
    AdamW:     delta = −0.01·0.5/(0.5 + ε) − 0.01·0.1·2 = −0.01·0.5/(0.5+ε) − 0.002
    """
    eps = 1e-8
    (l2,), _ = _steps(xp, lc.adam(lr=0.01, weight_decay=0.1), [2.0], [[0.5]])
    (w,), _ = _steps(xp, lc.adamw(lr=0.01, weight_decay=0.1), [2.0], [[0.5]])
    _close(l2[0], [-0.01 * 0.7 / (0.7 + eps)])
    _close(w[0], [-0.01 * 0.5 / (0.5 + eps) - 0.002])
    # AdamW's default weight decay is 1e-2 and it does not touch the moments
    inner = lc.adamw(lr=0.01)
    assert inner.hyperparams["weight_decay"] == 0.01
    _, state = _steps(xp, inner, [2.0], [[0.5]])
    _close(to_numpy(state.exp_avg[0]), [0.1 * 0.5])
    _close(to_numpy(state.exp_avg_sq[0]), [(1 - 0.999) * 0.25])


def test_adamw_zero_gradient_is_pure_decay(xp):
    """g = 0, ε > 0: m = v = 0 so delta = −lr·wd·θ exactly: θ_t = θ₀ (1 − lr·wd)ᵗ."""
    steps, _ = _steps(xp, lc.adamw(lr=0.5, weight_decay=0.5), [8.0, -4.0], [[0.0, 0.0]] * 3)
    np.testing.assert_array_equal(steps[0][1], [6.0, -3.0])
    np.testing.assert_array_equal(steps[2][1], [8.0 * 0.75**3, -4.0 * 0.75**3])


# ------------------------------------------------------------------------- lerp


def test_lerp_branches_and_exact_ends(xp):
    s = asarray(xp, [1.0, 1e20, -3.0])
    e = asarray(xp, [3.0, 1.0, 5.0])
    # w < ½: s + w(e − s);  w ≥ ½: e − (1 − w)(e − s)
    np.testing.assert_array_equal(
        to_numpy(lc.lerp(s, e, 0.25)), [1.5, 1e20 + 0.25 * (1.0 - 1e20), -1.0]
    )
    np.testing.assert_array_equal(
        to_numpy(lc.lerp(s, e, 0.75)), [2.5, 1.0 - 0.25 * (1.0 - 1e20), 3.0]
    )
    # exact at both ends, where the one-sided s + w(e − s) is not: 1e20 + (1 − 1e20) = 0
    np.testing.assert_array_equal(to_numpy(lc.lerp(s, e, 1.0)), to_numpy(e))
    np.testing.assert_array_equal(to_numpy(lc.lerp(s, e, 0.0)), to_numpy(s))
    one_sided = to_numpy(s) + 1.0 * (to_numpy(e) - to_numpy(s))
    assert one_sided[1] != 1.0  # the end the two-sided formula fixes


def test_lerp_matches_torch_lerp():
    torch = pytest.importorskip("torch", reason="torch not installed")
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(1000, dtype=torch.float64, generator=gen)
    e = torch.randn(1000, dtype=torch.float64, generator=gen)
    for w in (0.0, 0.1, 0.4999, 0.5, 0.7, 1.0):
        ours = lc.lerp(s, e, w)
        ref = torch.lerp(s, e, w)
        # same formula; torch may fuse the multiply-add (FMA): one rounding apart
        # |values| < 8: one rounding is at most ulp(8)/2 = 2**-50
        assert torch.max(torch.abs(ours - ref)).item() <= 2.0**-50
    assert torch.equal(lc.lerp(s, e, 1.0), e) and torch.equal(lc.lerp(s, e, 0.0), s)
