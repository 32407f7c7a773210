"""The core's outer-optimizer API: ``lc.lookahead(inner, k, outer=O)``.

The errors (alpha with outer, adaptive with outer, a bad outer, a bad
``state.outer``), ``sync()`` with an outer optimizer, `OuterLookaheadState`,
`outer_sync` against its definition written out here, and the default path
unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

import lookahead_core as lc


def test_default_path_is_unchanged():
    opt = lc.lookahead(lc.sgd(lr=0.1))
    assert opt.outer is None and opt.alpha == 0.5 and opt.k == 5
    state = opt.init([np.zeros(3)])
    assert type(state) is lc.LookaheadState
    assert type(lc.lookahead(lc.sgd(), 3, 0.5).init([np.zeros(2)])) is lc.LookaheadState
    assert type(lc.lookahead(lc.sgd(), 3, alpha_mode="adaptive").init([np.zeros(2)])) \
        is lc.AdaptiveLookaheadState


def test_default_alpha_is_told_apart_from_an_explicit_half():
    assert lc.DEFAULT_ALPHA == 0.5 and repr(lc.DEFAULT_ALPHA) == "0.5"
    lc.check_alpha_or_outer(lc.DEFAULT_ALPHA, True)  # not passed: fine
    lc.check_alpha_or_outer(0.5, False)  # no outer: anything goes
    with pytest.raises(TypeError, match=r"alpha and outer cannot both be given \(got alpha=0.5\)"):
        lc.check_alpha_or_outer(0.5, True)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(alpha=0.5), TypeError, "alpha and outer cannot both be given"),
    (dict(alpha=1.0), TypeError, "alpha and outer cannot both be given"),
    (dict(alpha_mode="adaptive"), ValueError, "alpha_mode='adaptive' estimates"),
])
def test_alpha_or_adaptive_with_outer_is_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        lc.lookahead(lc.sgd(lr=0.1), 3, outer=lc.sgd(lr=0.7), **kwargs)


@pytest.mark.parametrize("outer", ["sgd", lc.sgd, object(), (lambda p: p, lambda g, s, p: g)])
def test_a_bad_outer_is_a_type_error(outer):
    with pytest.raises(TypeError, match="outer must be None or an InnerOptimizer"):
        lc.lookahead(lc.sgd(lr=0.1), 3, outer=outer)
    with pytest.raises(TypeError, match="outer must be None or an InnerOptimizer"):
        lc.check_outer(outer)


def test_check_outer_returns_an_inner_optimizer():
    outer = lc.adam()
    assert lc.check_outer(outer) is outer


def test_outer_state_and_attributes():
    outer = lc.sgd(lr=0.7, momentum=0.9, nesterov=True)
    opt = lc.lookahead(lc.adam(lr=0.1), 4, outer=outer)
    assert opt.outer is outer and opt.alpha is None and opt.alpha_mode == "fixed"
    params = [np.arange(3.0), np.ones((2, 2))]
    state = opt.init(params)
    assert type(state) is lc.OuterLookaheadState
    assert state._fields == ("slow", "inner", "count", "outer")
    assert state.count == 0 and isinstance(state.outer, lc.SGDState) and state.outer.step == 0
    assert all(np.array_equal(s, p) and s is not p for s, p in zip(state.slow, params))
    assert all(not np.any(b) for b in state.outer.momentum_buffer)


def written_out_sync(fast, slow, buffers, lr, momentum, first):
    """Nesterov outer SGD at a sync, from its definition (torch.optim.SGD with grad = φ − θ)."""
    new_slow, new_buffers = [], []
    for f, s, b in zip(fast, slow, buffers):
        delta = s - f
        b = delta.copy() if first else momentum * b + delta
        new_buffers.append(b)
        new_slow.append(s - lr * (delta + momentum * b))
    return new_slow, new_buffers


def test_step_and_sync_follow_the_definition():
    lr, momentum, k = 0.7, 0.9, 3
    opt = lc.lookahead(lc.sgd(lr=0.1), k, outer=lc.sgd(lr=lr, momentum=momentum, nesterov=True))
    params = [np.array([1.0, -2.0, 0.5])]
    state = opt.init(params)
    slow, buffers, first = [params[0].copy()], [np.zeros(3)], True
    grads = [np.array([0.3, -0.1, 0.2])]
    for t in range(2 * k):
        params, state = opt.step(params, grads, state)
        if (t + 1) % k == 0:
            fast = [slow[0] - 0.1 * grads[0] * k]  # k plain SGD steps from φ
            slow, buffers = written_out_sync(fast, slow, buffers, lr, momentum, first)
            first = False
            np.testing.assert_allclose(state.slow[0], slow[0], rtol=1e-14, atol=1e-15)
            np.testing.assert_allclose(params[0], slow[0], rtol=1e-14, atol=1e-15)
            assert params[0] is not state.slow[0]
    assert state.outer.step == 2 and state.count == 0
    # An explicit sync mid-cycle: the outer step now, count 0, inner state untouched.
    params, state = opt.step(params, grads, state)
    inner = state.inner
    fast = [params[0].copy()]
    params, state = opt.sync(params, state)
    slow, buffers = written_out_sync(fast, slow, buffers, lr, momentum, False)
    np.testing.assert_allclose(state.slow[0], slow[0], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(state.outer.momentum_buffer[0], buffers[0], rtol=1e-14, atol=1e-15)
    assert state.count == 0 and state.outer.step == 3 and state.inner is inner


def test_outer_sync_is_pure_and_returns_copies():
    fast, slow = [np.array([1.0, 2.0])], [np.array([0.0, 0.0])]
    outer = lc.sgd(lr=0.5)
    new_fast, new_slow, new_state = lc.outer_sync(fast, slow, outer, outer.init(slow))
    np.testing.assert_array_equal(new_slow[0], [0.5, 1.0])  # φ − 0.5·(φ − θ)
    np.testing.assert_array_equal(new_fast[0], new_slow[0])
    assert new_fast[0] is not new_slow[0] and new_state.step == 1
    np.testing.assert_array_equal(fast[0], [1.0, 2.0])
    np.testing.assert_array_equal(slow[0], [0.0, 0.0])


@pytest.mark.parametrize("bad, error, message", [
    (lambda s: s._replace(outer=lc.AdamState(0, (), (), None)), TypeError,
     r"state.outer must be an SGDState"),
    (lambda s: s._replace(outer=lc.SGDState(0, None)), TypeError, r"state.outer.momentum_buffer"),
    (lambda s: s._replace(outer=lc.SGDState(-1, s.outer.momentum_buffer)), ValueError,
     r"state.outer.step must be an int >= 0"),
    (lambda s: lc.LookaheadState(s.slow, s.inner, s.count), TypeError,
     r"state must be an OuterLookaheadState \(lookahead with outer=\)"),
])
def test_a_bad_outer_state_is_refused_by_step_and_sync(bad, error, message):
    opt = lc.lookahead(lc.sgd(lr=0.1), 3, outer=lc.sgd(lr=0.7, momentum=0.9))
    params = [np.ones(2)]
    state = bad(opt.init(params))
    with pytest.raises(error, match=message):
        opt.step(params, [np.ones(2)], state)
    with pytest.raises(error, match=message):
        opt.sync(params, state)


def test_outer_sgd_with_lr_alpha_below_half_is_algorithm_1_bit_for_bit(rng):
    """φ + α(θ − φ) (the lerp's low side) and φ + (−α)(φ − θ) round alike."""
    params = [rng.standard_normal(50)]
    a = lc.lookahead(lc.sgd(lr=0.1), 2, 0.25)
    b = lc.lookahead(lc.sgd(lr=0.1), 2, outer=lc.sgd(lr=0.25))
    pa, sa = params, a.init(params)
    pb, sb = params, b.init(params)
    for _ in range(6):
        grads = [rng.standard_normal(50)]
        pa, sa = a.step(pa, grads, sa)
        pb, sb = b.step(pb, grads, sb)
    assert pa[0].tobytes() == pb[0].tobytes()
