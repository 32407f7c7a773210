"""The schedule of Algorithm 1 on exact trajectories, on every array library.

The inputs are chosen so that every value is a small dyadic rational: all
arithmetic is exact in float32 and float64, and the expected trajectories are
written out by hand, step by step.
"""

from __future__ import annotations

import numpy as np
import pytest
from core_helpers import asarray, assert_bit_identical, to_numpy

import lookahead_core as lc

# --------------------------------------------------------------------------
# θ ← θ + 1 per inner step: SGD with lr = 1 and gradient −1 (delta = −lr·g = +1).
# k = 3, α = 0.5, θ₀ = 0, six steps.
#
#   step  inner θ   sync?   φ                       θ after step   count
#    1     1        no      0                       1              1
#    2     2        no      0                       2              2
#    3     3        yes     0 + ½(3 − 0)   = 1.5    1.5            0
#    4     2.5      no      1.5                     2.5            1
#    5     3.5      no      1.5                     3.5            2
#    6     4.5      yes     1.5 + ½(4.5−1.5) = 3.0  3.0            0
# --------------------------------------------------------------------------
PAPER_FAST = [1.0, 2.0, 1.5, 2.5, 3.5, 3.0]
PAPER_SLOW = [0.0, 0.0, 1.5, 1.5, 1.5, 3.0]
PAPER_COUNT = [1, 2, 0, 1, 2, 0]

# timm 1.0: the slow buffer is created lazily at the first sync as a copy of
# the fast weights, so that sync is a no-op; syncs at steps 3 and 6.
#   steps 1-3: θ = 1, 2, 3; sync at 3: φ := 3, θ stays 3
#   steps 4-6: θ = 4, 5, 6; sync at 6: φ = 3 + ½(6 − 3) = 4.5, θ = 4.5
TIMM_FAST = [1.0, 2.0, 3.0, 4.0, 5.0, 4.5]
TIMM_SLOW = [None, None, 3.0, 3.0, 3.0, 4.5]

# torch-optimizer 0.3: syncs at steps 1, k+1, 2k+1, ... (counter checked
# before it is incremented); slow created at the first sync from the fast
# weights after step 1; the sync is θ ← αθ + (1−α)φ, then φ ← θ.
#   step 1: θ = 1, φ := 1, θ = ½·1 + ½·1 = 1, φ = 1
#   steps 2, 3: θ = 2, 3
#   step 4: θ = 4, θ = ½·4 + ½·1 = 2.5, φ = 2.5
#   steps 5, 6: θ = 3.5, 4.5
TORCH_OPTIMIZER_FAST = [1.0, 2.0, 3.0, 2.5, 3.5, 4.5]
TORCH_OPTIMIZER_SLOW = [1.0, 1.0, 1.0, 2.5, 2.5, 2.5]


def _plus_one_problem(xp, dtype="float64"):
    """Two parameters (0-d and a vector) and the constant gradient −1 for each."""
    params = [asarray(xp, 0.0, dtype), asarray(xp, [0.0, 10.0, -4.0], dtype)]
    grads = [asarray(xp, -1.0, dtype), asarray(xp, [-1.0, -1.0, -1.0], dtype)]
    # offset of each parameter's entries from the 0-based trajectory above
    offsets = [np.array(0.0), np.array([0.0, 10.0, -4.0])]
    return params, grads, offsets


def _timm_model(inner, k, alpha, params, grads, steps):
    """Test-only model of timm's Lookahead: lazy slow buffer (first sync a no-op)."""
    state = inner.init(params)
    slow = None
    fast_hist, slow_hist = [], []
    for step in range(1, steps + 1):
        delta, state = inner.update(grads, state, params)
        params = [p + d for p, d in zip(params, delta)]
        if step % k == 0:
            if slow is None:
                slow = [p * 1.0 for p in params]  # created from the fast weights
            slow = [s + alpha * (p - s) for s, p in zip(slow, params)]
            params = [s * 1.0 for s in slow]
        fast_hist.append(params)
        slow_hist.append(slow)
    return fast_hist, slow_hist


def _torch_optimizer_model(inner, k, alpha, params, grads, steps):
    """Test-only model of torch-optimizer's Lookahead: syncs at steps 1, k+1, 2k+1, ..."""
    state = inner.init(params)
    slow = None
    counter = 0
    fast_hist, slow_hist = [], []
    for _ in range(steps):
        delta, state = inner.update(grads, state, params)
        params = [p + d for p, d in zip(params, delta)]
        if counter == 0:
            if slow is None:
                slow = [p * 1.0 for p in params]
            params = [alpha * p + (1.0 - alpha) * s for p, s in zip(params, slow)]
            slow = [p * 1.0 for p in params]
        counter += 1
        if counter >= k:
            counter = 0
        fast_hist.append(params)
        slow_hist.append(slow)
    return fast_hist, slow_hist


def _assert_values(arrays, base_value, offsets):
    for a, off in zip(arrays, offsets):
        np.testing.assert_array_equal(to_numpy(a), base_value + off, strict=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_paper_schedule_plus_one_k3_alpha_half(xp, dtype):
    params, grads, offsets = _plus_one_problem(xp, dtype)
    opt = lc.lookahead(lc.sgd(lr=1.0), k=3, alpha=0.5)
    state = opt.init(params)
    _assert_values(state.slow, 0.0, offsets)
    assert state.count == 0
    for step in range(6):
        params, state = opt.step(params, grads, state)
        _assert_values(params, PAPER_FAST[step], offsets)
        _assert_values(state.slow, PAPER_SLOW[step], offsets)
        assert state.count == PAPER_COUNT[step], step
        assert state.inner.step == step + 1  # the sync does not touch the inner state
        for p in list(params) + list(state.slow):
            assert p.dtype == getattr(xp, dtype)
    # the end of Algorithm 1 after two outer iterations: θ = φ = 3.0
    _assert_values(params, 3.0, offsets)
    _assert_values(state.slow, 3.0, offsets)


def test_peer_schedules_give_4_5_and_differ_from_the_paper(xp):
    """timm's and torch-optimizer's schedules, modelled, end at 4.5 on the same input."""
    inner = lc.sgd(lr=1.0)
    params, grads, offsets = _plus_one_problem(xp)

    fast, slow = _timm_model(inner, 3, 0.5, params, grads, 6)
    for step in range(6):
        _assert_values(fast[step], TIMM_FAST[step], offsets)
        if TIMM_SLOW[step] is None:
            assert slow[step] is None
        else:
            _assert_values(slow[step], TIMM_SLOW[step], offsets)

    fast, slow = _torch_optimizer_model(inner, 3, 0.5, params, grads, 6)
    for step in range(6):
        _assert_values(fast[step], TORCH_OPTIMIZER_FAST[step], offsets)
        _assert_values(slow[step], TORCH_OPTIMIZER_SLOW[step], offsets)

    # the core, on the same input, is the paper (3.0), and neither peer
    opt = lc.lookahead(inner, k=3, alpha=0.5)
    state = opt.init(params)
    p = params
    for _ in range(6):
        p, state = opt.step(p, grads, state)
    assert float(to_numpy(p[0])) == 3.0
    assert TIMM_FAST[-1] == TORCH_OPTIMIZER_FAST[-1] == 4.5 != PAPER_FAST[-1]


def test_models_of_the_peers_reproduce_the_paper_only_when_they_should(xp):
    """Sanity check of the two models: with α = 1 every schedule is SGD alone (θ = 6)."""
    inner = lc.sgd(lr=1.0)
    params, grads, offsets = _plus_one_problem(xp)
    for model in (_timm_model, _torch_optimizer_model):
        fast, _ = model(inner, 3, 1.0, params, grads, 6)
        _assert_values(fast[-1], 6.0, offsets)


def test_k1_damps_every_step_plus_one(xp):
    """k = 1: φ_t = φ_{t−1} + α·A(φ_{t−1}); with A ≡ +1 and α = ¼, φ_t = t/4 = θ_t."""
    params, grads, offsets = _plus_one_problem(xp)
    opt = lc.lookahead(lc.sgd(lr=1.0), k=1, alpha=0.25)
    state = opt.init(params)
    for t in range(1, 9):
        params, state = opt.step(params, grads, state)
        _assert_values(params, t / 4, offsets)
        _assert_values(state.slow, t / 4, offsets)
        assert state.count == 0


def test_k1_with_momentum_keeps_the_inner_state(xp):
    """k = 1 with heavy-ball momentum 0.5, lr = 1, g = −1, α = ½.

    The buffer is untouched by the syncs: b_1 = 1, b_t = ½ b_{t−1} + 1, i.e.
    1, 1.5, 1.75, 1.875; the inner step is +b_t and each sync keeps half of it:
    φ_t = φ_{t−1} + ½ b_t = 0.5, 1.25, 2.125, 3.0625.
    """
    params, grads, offsets = _plus_one_problem(xp)
    opt = lc.lookahead(lc.sgd(lr=1.0, momentum=0.5), k=1, alpha=0.5)
    state = opt.init(params)
    buffers = [1.0, 1.5, 1.75, 1.875]
    phis = [0.5, 1.25, 2.125, 3.0625]
    for b, phi in zip(buffers, phis):
        params, state = opt.step(params, grads, state)
        _assert_values(params, phi, offsets)
        _assert_values(state.slow, phi, offsets)
        for buf in state.inner.momentum_buffer:
            # the buffer holds the gradient direction (−g scaled): b·(−1)
            assert np.all(to_numpy(buf) == -b)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_k1_random_is_damped_inner_step(xp, rng, dtype):
    """k = 1 on random data: φ_t = φ_{t−1} + α·delta_t, delta_t the inner step at φ_{t−1}.

    The reference applies the inner optimizer to φ and adds α·delta directly;
    the core forms lerp(φ, φ + delta, α). The two differ by rounding only:
    at most 4 roundings of quantities bounded by 2·max|·| per step, hence the
    tolerance 8·eps·t (relative to the largest magnitude).
    """
    alpha = 0.375
    inner = lc.adam(lr=0.05)
    shapes = [(4,), (2, 3)]
    params = [asarray(xp, rng.standard_normal(s), dtype) for s in shapes]
    opt = lc.lookahead(inner, k=1, alpha=alpha)
    state = opt.init(params)
    ref_phi, ref_state = list(params), inner.init(params)
    eps = float(np.finfo(dtype).eps)
    big = max(float(np.max(np.abs(to_numpy(p)))) for p in params)  # running max |φ|, |θ|
    for t in range(1, 11):
        grads = [asarray(xp, rng.standard_normal(s), dtype) for s in shapes]
        params, state = opt.step(params, grads, state)
        delta, ref_state = inner.update(grads, ref_state, ref_phi)
        fast = [phi + d for phi, d in zip(ref_phi, delta)]
        ref_phi = [phi + alpha * d for phi, d in zip(ref_phi, delta)]
        big = max([big] + [float(np.max(np.abs(to_numpy(a)))) for a in fast + ref_phi])
        for got, want in zip(state.slow, ref_phi):
            g, w = to_numpy(got).astype(np.float64), to_numpy(want).astype(np.float64)
            assert np.max(np.abs(g - w)) <= 8 * eps * t * big
        assert_bit_identical(params, state.slow)


INNERS = {
    "sgd": lambda: lc.sgd(lr=0.1),
    "sgd-momentum": lambda: lc.sgd(lr=0.1, momentum=0.9),
    "sgd-nesterov-wd": lambda: lc.sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda: lc.adam(lr=0.01),
    "adam-amsgrad": lambda: lc.adam(lr=0.01, amsgrad=True),
    "adamw": lambda: lc.adamw(lr=0.01, weight_decay=0.1),
}


def _random_run(xp, rng, dtype, shapes, steps):
    params = [asarray(xp, rng.standard_normal(s) + 0.5, dtype) for s in shapes]
    grads = [[asarray(xp, rng.standard_normal(s), dtype) for s in shapes] for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("inner_name", ["sgd-momentum", "adam", "adamw"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_alpha0_freezes_phi_and_resets_theta_every_k(xp, rng, inner_name, dtype):
    """α = 0: φ_t = φ₀ bit for bit, θ = φ₀ after each sync, inner state runs on."""
    k, steps = 3, 11
    inner = INNERS[inner_name]()
    shapes = [(5,), (2, 2), ()]
    phi0, grads = _random_run(xp, rng, dtype, shapes, steps)
    opt = lc.lookahead(inner, k=k, alpha=0.0)
    state = opt.init(phi0)
    params = phi0
    # reference: the inner optimizer alone, its parameters put back to φ₀ every
    # k steps, its state carried through
    ref_params, ref_state = phi0, inner.init(phi0)
    for step in range(1, steps + 1):
        params, state = opt.step(params, grads[step - 1], state)
        delta, ref_state = inner.update(grads[step - 1], ref_state, ref_params)
        ref_params = [p + d for p, d in zip(ref_params, delta)]
        if step % k == 0:
            ref_params = [xp.asarray(p, copy=True) for p in phi0]
            assert_bit_identical(params, phi0)
        assert_bit_identical(state.slow, phi0)
        assert_bit_identical(params, ref_params)
        for a, b in zip(state.inner[1:], ref_state[1:]):
            assert (a is None) == (b is None)
            if a is not None:
                assert_bit_identical(a, b)
    # the last sync was at step 9: θ has moved for two steps since
    assert state.count == 2


@pytest.mark.parametrize("inner_name", sorted(INNERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_alpha1_is_the_inner_optimizer_alone(xp, rng, inner_name, dtype):
    """α = 1: every sync is a no-op; the trajectory is bit-identical to A alone."""
    k, steps = 2, 9
    inner = INNERS[inner_name]()
    shapes = [(5,), (2, 3)]
    params, grads = _random_run(xp, rng, dtype, shapes, steps)
    opt = lc.lookahead(inner, k=k, alpha=1.0)
    state = opt.init(params)
    ref_params, ref_state = params, inner.init(params)
    for step in range(1, steps + 1):
        params, state = opt.step(params, grads[step - 1], state)
        delta, ref_state = inner.update(grads[step - 1], ref_state, ref_params)
        ref_params = [p + d for p, d in zip(ref_params, delta)]
        assert_bit_identical(params, ref_params)
        if step % k == 0:
            assert_bit_identical(state.slow, ref_params)
    assert state.inner.step == steps


def test_explicit_sync_mid_cycle(xp):
    """sync() is the outer update now: φ ← lerp(φ, θ, α), θ ← φ, count ← 0."""
    params, grads, offsets = _plus_one_problem(xp)
    opt = lc.lookahead(lc.sgd(lr=1.0), k=3, alpha=0.5)
    state = opt.init(params)
    params, state = opt.step(params, grads, state)  # θ = 1, count 1
    params, state = opt.sync(params, state)  # φ = ½, θ = ½
    _assert_values(params, 0.5, offsets)
    _assert_values(state.slow, 0.5, offsets)
    assert state.count == 0
    assert state.inner.step == 1
    # a full cycle of 3 again before the next sync: θ = 1.5, 2.5, 3.5 → φ = ½ + ½·3 = 2
    expected = [(1.5, 0.5), (2.5, 0.5), (2.0, 2.0)]
    for fast, slow in expected:
        params, state = opt.step(params, grads, state)
        _assert_values(params, fast, offsets)
        _assert_values(state.slow, slow, offsets)


def test_hyperparameters_are_python_scalars():
    """k and α are coerced at construction (NumPy scalars would promote float32 under NEP 50)."""
    opt = lc.lookahead(lc.sgd(lr=np.float64(0.5)), k=np.int64(3), alpha=np.float64(0.5))
    assert type(opt.k) is int and opt.k == 3
    assert type(opt.alpha) is float and opt.alpha == 0.5
    assert type(opt.inner.hyperparams["lr"]) is float
    params = [np.zeros(3, dtype=np.float32)]
    state = opt.init(params)
    grads = [np.full(3, -1.0, dtype=np.float32)]
    for _ in range(3):
        params, state = opt.step(params, grads, state)
    assert params[0].dtype == np.float32 and state.slow[0].dtype == np.float32
    np.testing.assert_array_equal(params[0], np.full(3, 0.75, dtype=np.float32))
