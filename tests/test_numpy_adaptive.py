"""Adaptive α (Proposition 1, eq. 0.3) in the NumPy adapter: equal to the core, checkpointed."""

from __future__ import annotations

import numpy as np
import pytest

import lookahead_core as lc
from core_helpers import run_core_adaptive, spd_quadratic
from lookahead_numpy import Lookahead

INNERS = {
    "sgd": lambda: lc.sgd(lr=0.05),
    "momentum": lambda: lc.sgd(lr=0.05, momentum=0.9),
    "adam": lambda: lc.adam(lr=0.05),
}


def _grads(a, b, params):
    x = np.concatenate([p.ravel() for p in params])
    g = a @ x - b
    return [g[:2].reshape(2), g[2:].reshape(2, 2)]


def _run_adapter(inner, a, b, steps, k, **kw):
    params = [np.ones(2), np.full((2, 2), -0.5)]
    opt = Lookahead(params, inner, k=k, alpha=0.5, alpha_mode="adaptive", **kw)
    alphas = []
    for _ in range(steps):
        opt.step(_grads(a, b, params))
        if opt.count == 0 and opt.last_alpha is not None:
            alphas.append(opt.last_alpha)
    return params, opt, alphas


@pytest.mark.parametrize("name", sorted(INNERS))
@pytest.mark.parametrize("k", [1, 3])
def test_adapter_equals_core_bit_for_bit(name, k):
    a, b = spd_quadratic(0)
    steps = 5 * (k + 1) + 2  # several cycles, ending mid-cycle
    params, opt, alphas = _run_adapter(INNERS[name](), a, b, steps, k)
    core_params, state = run_core_adaptive(
        INNERS[name](), lambda ps: _grads(a, b, ps), (np.ones(2), np.full((2, 2), -0.5)), steps, k)
    for p, c in zip(params, core_params):
        assert np.array_equal(p, c)
    for s, c in zip(opt.slow, state.slow):
        assert np.array_equal(s, c)
    assert opt.count == state.count
    assert opt.last_alpha == state.last_alpha
    assert len(alphas) == steps // (k + 1) and all(0.1 <= x <= 1.0 for x in alphas)


def test_first_alpha_is_propositions_optimal_alpha():
    """Full-batch gradients on an exact quadratic: the adapter's α is eq. 0.3's α*."""
    a, b = spd_quadratic(1)
    params = [np.ones(2), np.full((2, 2), -0.5)]
    opt = Lookahead(params, lc.sgd(lr=0.12), k=4, alpha=0.5, alpha_mode="adaptive",
                    alpha_min=0.0)
    theta0 = np.concatenate([p.ravel() for p in params])
    for _ in range(4):
        opt.step(_grads(a, b, params))
    thetak = np.concatenate([p.ravel() for p in params])
    opt.step(_grads(a, b, params))  # the estimate-and-sync call
    expected = lc.theory.optimal_alpha(theta0, thetak, a, b)
    assert 0.0 < expected < 1.0  # lr 0.12 overshoots along the line: α* ≈ 0.84, not clipped
    assert opt.last_alpha == pytest.approx(float(expected), rel=1e-10)


@pytest.mark.parametrize("pending", [False, True])
def test_checkpoint_round_trip_is_bit_exact(tmp_path, pending):
    a, b = spd_quadratic(2)
    k, n = 3, 2 * 4 + (3 if pending else 1)  # pending: count == k, the sync is due
    inner = INNERS["adam"]
    straight, _, _ = _run_adapter(inner(), a, b, 2 * n, k)

    params = [np.ones(2), np.full((2, 2), -0.5)]
    first = Lookahead(params, inner(), k=k, alpha=0.5, alpha_mode="adaptive")
    for _ in range(n):
        first.step(_grads(a, b, params))
    assert (first.count == k) is pending
    np.savez(tmp_path / "ckpt.npz", **first.state_dict(include_params=True))

    fresh = [np.zeros(2), np.zeros((2, 2))]
    resumed = Lookahead(fresh, inner(), k=k, alpha=0.5, alpha_mode="adaptive")
    resumed.load_state_dict(np.load(tmp_path / "ckpt.npz"))
    assert resumed.count == first.count and resumed.last_alpha == first.last_alpha
    for _ in range(n):
        resumed.step(_grads(a, b, fresh))
    for p, q in zip(fresh, straight):
        assert np.array_equal(p, q)


def test_fixed_and_adaptive_checkpoints_do_not_mix():
    params = [np.ones(3)]
    fixed = Lookahead(params, lc.sgd(lr=0.1), k=2)
    adaptive = Lookahead([np.ones(3)], lc.sgd(lr=0.1), k=2, alpha_mode="adaptive")
    before = adaptive.state_dict()
    with pytest.raises(ValueError, match="missing keys"):
        adaptive.load_state_dict(fixed.state_dict())
    with pytest.raises(ValueError, match="unexpected keys"):
        fixed.load_state_dict(adaptive.state_dict())
    after = adaptive.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        if isinstance(before[key], str):
            assert before[key] == after[key]
        else:
            assert np.array_equal(before[key], after[key], equal_nan=True), key


def test_bad_adaptive_checkpoint_values_change_nothing():
    opt = Lookahead([np.ones(3)], lc.sgd(lr=0.1), k=2, alpha_mode="adaptive")
    sd = opt.state_dict()
    for key, value, match in [("count", 3, r"\[0, k\] = \[0, 2\]"),
                              ("alpha_min", 0.9, "alpha_min"),
                              ("last_alpha", 1.5, "last_alpha"),
                              ("alpha_mode", "fixed", "alpha_mode")]:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict({**sd, key: value})
        assert opt.count == 0 and opt.alpha_min == 0.1 and opt.last_alpha is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [({"alpha_mode": "auto"}, ValueError, "alpha_mode must be one of"),
     ({"alpha_mode": 1}, TypeError, "alpha_mode must be one of"),
     ({"alpha_mode": "adaptive", "alpha_min": 0.6}, ValueError, r"\[alpha_min, 1\]"),
     ({"alpha_min": -0.1}, ValueError, "alpha_min must be in")],
)
def test_bad_mode_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Lookahead([np.ones(3)], lc.sgd(), k=2, alpha=0.5, **kwargs)


def test_bad_gradient_at_the_estimate_changes_nothing():
    params = [np.ones(3)]
    opt = Lookahead(params, lc.sgd(lr=0.1), k=1, alpha_mode="adaptive")
    opt.step([np.full(3, 0.5)])
    assert opt.count == 1
    before = (params[0].copy(), np.array(opt.slow[0]))
    with pytest.raises(ValueError, match="shape"):
        opt.step([np.ones(4)])
    assert opt.count == 1
    assert np.array_equal(params[0], before[0]) and np.array_equal(opt.slow[0], before[1])
