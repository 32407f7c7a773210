"""The slow weights are the exponential moving average of eq. 0.1.

    φ_t = α Σ_{j=1..t} (1−α)^{t−j} θ_{j,k} + (1−α)^t φ₀

θ_{j,k} are the fast weights just before the j-th sync. They are recorded by
evaluating the inner step separately (the inner optimizer is pure, so calling
``inner.update`` on the same inputs gives the very arrays the core adds) at
every step that completes a cycle, and the slow weights after the run are
compared with both ``lc.ema_closed_form`` and an independent float64 NumPy
evaluation of eq. 0.1 (``core_helpers.eq_0_1_float64``).

Tolerance. Let M be the largest magnitude among φ₀ and the θ_{j,k}, and
eps = finfo(dtype).eps (= 2u, u the unit roundoff). One sync
``φ + α(θ − φ)`` (or ``θ − (1−α)(θ − φ)``) rounds the difference (|θ − φ| ≤ 2M:
error ≤ u·2M), the cast of α or 1−α to the dtype (≤ u·2M after the product),
the product (≤ u·2M) and the sum (≤ u·M): ≤ 3.5·eps·M per sync, and an
earlier sync's error is carried with weight (1−α) ≤ 1, so ≤ 3.5·eps·M·t after
t syncs. The closed form in the array dtype rounds each coefficient, each
product and each partial sum (all bounded by M since the weights sum to 1):
≤ 1.5·eps·M·(t+1); the float64 reference the same with the float64 eps. The
total is ≤ 5·eps·M·(t+1) (+ the same count of half-ulps of the smallest
subnormal for gradual underflow), so C = 8 bounds it with a margin without
hiding a wrong weight: a schedule or coefficient error moves φ by O(α·M).
"""

from __future__ import annotations

import numpy as np
import pytest
from core_helpers import asarray, eq_0_1_float64, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lookahead_core as lc

C = 8  # see the module docstring


def _tolerance(dtype, t, arrays):
    info = np.finfo(dtype)
    big = max([0.0] + [float(np.max(np.abs(to_numpy(a)))) for a in arrays if to_numpy(a).size])
    return C * float(info.eps) * (t + 1) * big + C * (t + 1) * float(info.smallest_subnormal)


def run_recording(opt, params, grads_seq, state=None):
    """Step the core over ``grads_seq``; return (params, state, fast weights before each sync).

    The fast weights before the j-th sync are ``params + delta`` of the step
    that completes the cycle, delta computed by the (pure) inner optimizer on
    the same inputs the core gets.
    """
    state = opt.init(params) if state is None else state
    before_syncs = []
    for grads in grads_seq:
        if state.count == opt.k - 1:
            delta, _ = opt.inner.update(grads, state.inner, params)
            before_syncs.append(tuple(p + d for p, d in zip(params, delta)))
        params, state = opt.step(params, grads, state)
    return params, state, before_syncs


def _check_against_eq_0_1(phi0, before_syncs, final_params, state, alpha, dtype, extra, xp):
    t = len(before_syncs)
    for i, phi0_i in enumerate(phi0):
        thetas = [b[i] for b in before_syncs]
        tol = _tolerance(dtype, t, [phi0_i, *thetas])
        closed = lc.ema_closed_form(phi0_i, thetas, alpha)
        reference = eq_0_1_float64(phi0_i, thetas, alpha)
        slow = to_numpy(state.slow[i])
        assert slow.dtype == np.dtype(dtype) and slow.shape == reference.shape
        assert to_numpy(closed).dtype == np.dtype(dtype)
        np.testing.assert_allclose(slow.astype(np.float64), reference, rtol=0, atol=tol)
        np.testing.assert_allclose(
            to_numpy(closed).astype(np.float64), reference, rtol=0, atol=tol
        )
        np.testing.assert_allclose(
            slow.astype(np.float64), to_numpy(closed).astype(np.float64), rtol=0, atol=tol
        )
        if t > 0 and extra == 0:
            # the run ended on a sync: θ ← φ, a copy with the same bits
            np.testing.assert_array_equal(to_numpy(final_params[i]), slow, strict=True)
    assert state.count == extra


INNER_CHOICES = [
    ("sgd", lambda: lc.sgd(lr=0.1)),
    ("sgd-momentum", lambda: lc.sgd(lr=0.05, momentum=0.9)),
    ("adam", lambda: lc.adam(lr=0.1)),
]


@st.composite
def lookahead_runs(draw):
    k = draw(st.integers(1, 6))
    alpha = draw(st.floats(0.0, 1.0))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n_syncs = draw(st.integers(0, 6))
    extra = draw(st.integers(0, k - 1))  # steps after the last sync: φ must not move
    name, make_inner = draw(st.sampled_from(INNER_CHOICES))
    shapes = draw(
        st.lists(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4),
                 min_size=1, max_size=3)
    )
    width = 32 if dtype == np.float32 else 64
    elements = st.floats(-100.0, 100.0, width=width, allow_subnormal=False)
    steps = n_syncs * k + extra
    phi0 = [draw(hnp.arrays(dtype, s, elements=elements)) for s in shapes]
    # one array per parameter holding all steps' gradients
    stacked = [draw(hnp.arrays(dtype, (steps, *s), elements=elements)) for s in shapes]
    grads_seq = [[g[i] for g in stacked] for i in range(steps)]
    return k, alpha, dtype, n_syncs, extra, name, make_inner(), phi0, grads_seq


@settings(max_examples=100, deadline=None)
@given(lookahead_runs())
def test_slow_weights_are_eq_0_1_numpy(run):
    k, alpha, dtype, n_syncs, extra, _, inner, phi0, grads_seq = run
    # grads_seq entries are views into a stacked array: pass copies so that
    # nothing the core gets aliases anything else
    grads_seq = [[np.array(g, copy=True) for g in grads] for grads in grads_seq]
    opt = lc.lookahead(inner, k=k, alpha=alpha)
    params, state, before = run_recording(opt, [p.copy() for p in phi0], grads_seq)
    assert len(before) == n_syncs
    _check_against_eq_0_1(phi0, before, params, state, alpha, dtype, extra, np)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k, alpha, n_syncs, extra", [(3, 0.3, 4, 2), (1, 0.8, 5, 0), (4, 0.5, 3, 1)])
def test_slow_weights_are_eq_0_1_every_xp(xp, rng, dtype, k, alpha, n_syncs, extra):
    shapes = [(), (3,), (2, 3)]
    phi0 = [asarray(xp, rng.standard_normal(s), dtype) for s in shapes]
    steps = n_syncs * k + extra
    grads_seq = [[asarray(xp, rng.standard_normal(s), dtype) for s in shapes] for _ in range(steps)]
    opt = lc.lookahead(lc.sgd(lr=0.1, momentum=0.9), k=k, alpha=alpha)
    params, state, before = run_recording(opt, phi0, grads_seq)
    assert len(before) == n_syncs
    _check_against_eq_0_1(phi0, before, params, state, alpha, dtype, extra, xp)


def test_recording_sees_distinct_cycles():
    """The recorded θ_{j,k} are really the per-cycle end points (not all the same)."""
    opt = lc.lookahead(lc.sgd(lr=1.0), k=3, alpha=0.5)
    grads = [[np.array([-1.0])]] * 6
    _, state, before = run_recording(opt, [np.array([0.0])], grads)
    # hand-derived (tests/test_core_schedule.py): θ_{1,3} = 3, θ_{2,3} = 4.5
    assert [float(b[0][0]) for b in before] == [3.0, 4.5]
    # eq. 0.1: ½(½·3 + 4.5) + ¼·0 = 3
    assert float(lc.ema_closed_form(np.array([0.0]), [b[0] for b in before], 0.5)[0]) == 3.0
    assert float(state.slow[0][0]) == 3.0


# ---------------------------------------------------------------- ema_closed_form


def test_ema_closed_form_no_syncs_is_a_copy_of_phi0(xp, rng):
    phi0 = asarray(xp, rng.standard_normal((2, 3)))
    for alpha in (0.0, 0.3, 1.0):
        out = lc.ema_closed_form(phi0, [], alpha)
        np.testing.assert_array_equal(to_numpy(out), to_numpy(phi0), strict=True)
        assert out is not phi0
    a = np.arange(3.0)
    out = lc.ema_closed_form(a, [], 0.5)
    assert not np.shares_memory(out, a)


def test_ema_closed_form_alpha1_is_the_last_theta(xp, rng):
    phi0 = asarray(xp, rng.standard_normal(4))
    thetas = [asarray(xp, rng.standard_normal(4)) for _ in range(5)]
    out = lc.ema_closed_form(phi0, thetas, 1.0)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(thetas[-1]), strict=True)


def test_ema_closed_form_alpha0_is_phi0(xp, rng):
    phi0 = asarray(xp, rng.standard_normal(4))
    thetas = [asarray(xp, rng.standard_normal(4)) for _ in range(5)]
    out = lc.ema_closed_form(phi0, thetas, 0.0)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(phi0), strict=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ema_closed_form_hand_values(xp, dtype):
    """α = ¼, φ₀ = 8, θ = (4, 0, 16): φ₃ = ¼(9/16·4 + ¾·0 + 16) + 27/64·8 = 4.5625 + 3.375 = 7.9375."""
    phi0 = asarray(xp, [8.0, -8.0], dtype)
    thetas = [asarray(xp, [4.0, -4.0], dtype), asarray(xp, [0.0, 0.0], dtype),
              asarray(xp, [16.0, -16.0], dtype)]
    expected = 0.25 * (9 / 16 * 4 + 3 / 4 * 0 + 16) + 27 / 64 * 8
    assert expected == 7.9375
    out = lc.ema_closed_form(phi0, thetas, 0.25)
    assert out.dtype == getattr(xp, dtype)
    np.testing.assert_array_equal(to_numpy(out), np.array([7.9375, -7.9375], dtype=dtype))


@pytest.mark.parametrize(
    "alpha, exc, match",
    [(-0.1, ValueError, "alpha"), (1.0000001, ValueError, "alpha"), (float("nan"), ValueError, "alpha"),
     (float("inf"), ValueError, "alpha"), (True, TypeError, "alpha"), ("0.5", TypeError, "alpha"),
     (None, TypeError, "alpha")],
)
def test_ema_closed_form_rejects_bad_alpha(alpha, exc, match):
    with pytest.raises(exc, match=match):
        lc.ema_closed_form(np.zeros(2), [np.ones(2)], alpha)


def test_ema_closed_form_rejects_bad_phi0():
    with pytest.raises(TypeError, match="phi0"):
        lc.ema_closed_form([0.0, 1.0], [np.ones(2)], 0.5)
    with pytest.raises(TypeError, match="phi0"):
        lc.ema_closed_form(np.zeros(2, dtype=np.int64), [np.ones(2, dtype=np.int64)], 0.5)
    with pytest.raises(TypeError, match="phi0"):
        lc.ema_closed_form(np.zeros(2, dtype=np.complex128), [np.ones(2)], 0.5)


def test_ema_closed_form_rejects_mismatched_thetas():
    phi0 = np.zeros(3)
    with pytest.raises(ValueError, match=r"fast_before_syncs\[1\].*shape"):
        lc.ema_closed_form(phi0, [np.ones(3), np.ones(4)], 0.5)
    with pytest.raises(TypeError, match=r"fast_before_syncs\[0\].*dtype"):
        lc.ema_closed_form(phi0, [np.ones(3, dtype=np.float32)], 0.5)
    torch = pytest.importorskip("torch", reason="torch not installed")
    with pytest.raises(TypeError, match="fast_before_syncs.*array library"):
        lc.ema_closed_form(phi0, [torch.ones(3, dtype=torch.float64)], 0.5)
    with pytest.raises(TypeError, match="fast_before_syncs.*array library"):
        lc.ema_closed_form(phi0, [np.ones(3), torch.ones(3, dtype=torch.float64)], 0.5)


@pytest.mark.parametrize(
    "thetas",
    [[np.ones(3), 1.0], [1.0], [[1.0, 2.0, 3.0]], [None]],
    ids=["array-and-float", "float", "list", "None"],
)
def test_ema_closed_form_rejects_non_array_thetas(thetas):
    """A non-array entry is a TypeError naming fast_before_syncs (docs/design.md, 'Errors').

    (Before ``check_matching`` checked its entries, ``[array, 1.0]`` raised
    AttributeError and the others array-api-compat's unnamed TypeError.)
    """
    with pytest.raises(TypeError, match="fast_before_syncs"):
        lc.ema_closed_form(np.zeros(3), thetas, 0.5)
