"""The cycle rules of `lookahead_core` (plan_step, check_count, check_last_alpha) by hand."""

from __future__ import annotations

import numpy as np
import pytest

import lookahead_core as lc


def _run(k, alpha_mode, calls):
    count, plans = 0, []
    for _ in range(calls):
        plan = lc.plan_step(count, k, alpha_mode)
        plans.append(plan)
        count = plan.count
    return plans


def test_fixed_cycle_is_k_inner_steps_the_last_with_the_sync():
    plans = _run(3, "fixed", 7)
    assert [p.inner for p in plans] == [True] * 7
    assert [p.sync for p in plans] == [False, False, True, False, False, True, False]
    assert [p.count for p in plans] == [1, 2, 0, 1, 2, 0, 1]
    assert not any(p.estimate or p.record_start for p in plans)


def test_k_one_syncs_at_every_step():
    assert all(p.sync and p.count == 0 for p in _run(1, "fixed", 4))


def test_adaptive_cycle_is_k_inner_steps_then_one_estimate_call():
    plans = _run(2, "adaptive", 6)
    assert [p.inner for p in plans] == [True, True, False, True, True, False]
    assert [p.record_start for p in plans] == [True, False, False, True, False, False]
    assert [p.estimate for p in plans] == [False, False, True, False, False, True]
    assert [p.sync for p in plans] == [False, False, True, False, False, True]
    assert [p.count for p in plans] == [1, 2, 0, 1, 2, 0]


def test_a_count_past_a_lowered_k_syncs_at_the_next_step():
    assert lc.plan_step(7, 3).sync and lc.plan_step(7, 3).count == 0
    assert lc.plan_step(7, 3, "adaptive").estimate


def test_completes_cycle_works_on_0d_arrays():
    assert bool(lc.completes_cycle(np.asarray(2, dtype=np.int32), 3))
    assert not bool(lc.completes_cycle(np.asarray(1, dtype=np.int32), 3))


@pytest.mark.parametrize(("count", "k", "mode", "want"),
                         [(0, 3, "fixed", 0), (2, 3, "fixed", 2), (3, 3, "adaptive", 3),
                          (np.int64(1), 3, "fixed", 1), (np.asarray(2), 3, "fixed", 2)])
def test_check_count_accepts_the_cycle_s_range(count, k, mode, want):
    got = lc.check_count(count, k, mode)
    assert got == want and type(got) is int


@pytest.mark.parametrize(("count", "k", "mode", "error", "match"),
                         [(3, 3, "fixed", ValueError, r"\[0, k\) = \[0, 3\)"),
                          (-1, 3, "fixed", ValueError, "got -1"),
                          (4, 3, "adaptive", ValueError, r"\[0, k\] = \[0, 3\]"),
                          (True, 3, "fixed", TypeError, "must be an int"),
                          (1.0, 3, "fixed", TypeError, "must be an int"),
                          (np.asarray(1.0), 3, "fixed", TypeError, "must be an int")])
def test_check_count_refuses_outside_the_range(count, k, mode, error, match):
    with pytest.raises(error, match=match):
        lc.check_count(count, k, mode, name="state_dict['count']")


def test_check_last_alpha():
    assert lc.check_last_alpha(None, 0.1) is None
    assert lc.check_last_alpha(float("nan"), 0.1) is None
    assert lc.check_last_alpha(np.float64(0.5), 0.1) == 0.5
    with pytest.raises(ValueError, match=r"\[alpha_min, 1\] = \[0.2, 1\]"):
        lc.check_last_alpha(0.1, 0.2)
    with pytest.raises(TypeError, match="last_alpha"):
        lc.check_last_alpha("0.5", 0.1)
    with pytest.raises(TypeError, match="last_alpha"):
        lc.check_last_alpha(True, 0.1)


def test_secant_products_sum_to_secant_alpha_terms():
    rng = np.random.default_rng(0)
    arrays = [[rng.standard_normal(5) for _ in range(2)] for _ in range(4)]
    terms = lc.secant_alpha_terms(*arrays)
    shares = [lc.secant_products(*four) for four in zip(*arrays)]
    assert terms == (float(shares[0][0]) + float(shares[1][0]), float(shares[0][1]) + float(shares[1][1]))
    # Hand-derived on one coordinate: φ=1, θ=0, g₀=2, g_k=0.5: (2·1, 1.5·1).
    one = [np.asarray([v]) for v in (1.0, 0.0, 2.0, 0.5)]
    assert tuple(map(float, lc.secant_products(*one))) == (2.0, 1.5)


def test_secant_products_promote_16_bit_floats():
    half = [np.asarray([1.0], dtype=np.float16)] * 4
    assert all(x.dtype == np.float32 for x in lc.secant_products(*half))
