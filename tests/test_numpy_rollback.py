"""``nonfinite="rollback"`` in the in-place adapters, checked on NumPy.

The semantics are the PyTorch adapter's: at a sync (the k-th step of a cycle,
the estimate-and-sync call in adaptive mode, or an explicit ``sync()``), if
the fast weights or the inner state hold inf or NaN, θ ← φ replaces the sync,
the inner state restarts (``inner.init``), the cycle restarts and
``rollbacks`` counts it. Steps that do not sync do not look. The counter is
in the checkpoint, which loads all or nothing; a checkpoint without it (0.1.0)
loads with 0. Under rollback a checkpoint whose slow weights are not finite is
refused: every sync would roll back to them.

The base class is shared with the CuPy adapter; its GPU form of these tests
is ``tests/test_cupy_rollback.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lookahead_core as lc
import lookahead_inplace.base as base_module
from lookahead_numpy import Lookahead

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0_1_0"


# --- helpers ----------------------------------------------------------------------------


def same_bits(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def assert_all_same_bits(actual: Any, expected: Any) -> None:
    actual, expected = list(actual), list(expected)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert same_bits(a, e), f"entry {i} differs: {a!r} != {e!r}"


def inner_arrays(state: Any) -> list[np.ndarray]:
    return [np.array(a, copy=True) for field in state if isinstance(field, tuple) for a in field]


def snapshot(opt: Lookahead) -> dict[str, Any]:
    return {
        "params": [np.array(p, copy=True) for p in opt.params],
        "slow": [np.array(s, copy=True) for s in opt.slow],
        "inner_state": opt.inner_state,
        "inner": inner_arrays(opt.inner_state),
        "scalars": (opt.count, opt.k, opt.alpha, opt.rollbacks, opt.last_alpha, opt.nonfinite),
    }


def assert_unchanged(opt: Lookahead, before: dict[str, Any]) -> None:
    after = snapshot(opt)
    assert_all_same_bits(after["params"], before["params"])
    assert_all_same_bits(after["slow"], before["slow"])
    assert after["inner_state"] is before["inner_state"]
    assert_all_same_bits(after["inner"], before["inner"])
    assert after["scalars"] == before["scalars"]


def make_params(dtype: Any = np.float64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    strided = rng.standard_normal((6, 4)).astype(dtype)
    return [rng.standard_normal((3, 4)).astype(dtype), strided[::2, 1::2],
            np.asarray(rng.standard_normal(), dtype=dtype)]


def make_grads(params: Any, step: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng((seed, step))
    return [(0.5 * p + rng.standard_normal(p.shape)).astype(p.dtype) for p in params]


def poisoned(grads: list[np.ndarray], value: float = np.nan) -> list[np.ndarray]:
    grads = [g.copy() for g in grads]
    grads[0].flat[1] = value
    return grads


def is_fresh_inner_state(opt: Lookahead) -> bool:
    fresh = opt.inner.init(opt.params)
    if type(fresh) is not type(opt.inner_state) or fresh.step != opt.inner_state.step:
        return False
    return all(same_bits(a, b) for a, b in zip(inner_arrays(fresh), inner_arrays(opt.inner_state)))


# --- the constructor argument -----------------------------------------------------------


@pytest.mark.parametrize("value, error", [
    ("skip", ValueError), ("Rollback", ValueError), (1, TypeError), (True, TypeError),
])
def test_bad_nonfinite_is_rejected(value, error):
    with pytest.raises(error, match="nonfinite must be None or 'rollback'"):
        Lookahead(make_params(), lc.sgd(lr=0.1), nonfinite=value)


def test_nonfinite_defaults_to_none_the_paper():
    opt = Lookahead(make_params(), lc.sgd(lr=0.1))
    assert opt.nonfinite is None and opt.rollbacks == 0
    opt = Lookahead(make_params(), lc.sgd(lr=0.1), nonfinite="rollback")
    assert opt.nonfinite == "rollback" and opt.rollbacks == 0
    assert "nonfinite='rollback'" in repr(opt)


# --- rolling back -----------------------------------------------------------------------


def test_without_rollback_a_nan_gradient_poisons_the_slow_weights():
    params = make_params()
    opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=4, alpha=0.5)
    for step in range(4):
        grads = make_grads(params, step)
        opt.step(poisoned(grads) if step == 1 else grads)
    assert np.isnan(opt.slow[0]).any()  # the paper's algorithm: the run is lost


@pytest.mark.parametrize("bad_step", [0, 2, 3])  # first, middle, the syncing step itself
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_gradient_rolls_back_to_the_slow_weights(bad_step, value):
    params = make_params()
    opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=4, alpha=0.5, nonfinite="rollback")
    for step in range(4):  # a first cycle that syncs normally
        opt.step(make_grads(params, step))
    slow_before = [s.copy() for s in opt.slow]
    with np.errstate(over="ignore", invalid="ignore"):  # inf − inf in the inner step
        for step in range(4, 8):
            grads = make_grads(params, step)
            opt.step(poisoned(grads, value) if step == 4 + bad_step else grads)
    assert opt.rollbacks == 1
    assert opt.count == 0
    assert_all_same_bits(opt.slow, slow_before)      # the sync did not happen
    assert_all_same_bits(opt.params, slow_before)    # θ ← φ
    assert is_fresh_inner_state(opt)                 # the moments restart
    for step in range(8, 12):                        # and training goes on
        opt.step(make_grads(params, step))
    assert all(np.isfinite(p).all() for p in params) and opt.rollbacks == 1


def test_the_rolled_back_run_equals_a_fresh_run_from_the_slow_weights():
    params = make_params()
    opt = Lookahead(params, lc.adam(lr=0.01), k=3, alpha=0.5, nonfinite="rollback")
    for step in range(3):
        opt.step(make_grads(params, step))
    opt.step(poisoned(make_grads(params, 3)))
    for step in range(4, 6):
        opt.step(make_grads(params, step))
    slow = [s.copy() for s in opt.slow]
    for step in range(6, 13):
        opt.step(make_grads(params, step))

    fresh = [s.copy() for s in slow]
    reference = Lookahead(fresh, lc.adam(lr=0.01), k=3, alpha=0.5)
    for step in range(6, 13):
        reference.step(make_grads(fresh, step))
    assert_all_same_bits(params, fresh)
    assert_all_same_bits(opt.slow, reference.slow)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_a_non_finite_inner_state_rolls_back_though_the_weights_stay_finite(amsgrad):
    # One float32 gradient of 1e30: g² overflows, Adam's exp_avg_sq is inf, the
    # update of that coordinate is m/√inf = 0: θ stays finite and never moves again.
    params = [np.linspace(-1.0, 1.0, 8, dtype=np.float32)]
    grads = [np.full(8, 0.5, np.float32)]
    spike = [grads[0].copy()]
    spike[0][3] = np.float32(1e30)

    plain = Lookahead([params[0].copy()], lc.adam(lr=0.1, amsgrad=amsgrad), k=3, alpha=0.5)
    with np.errstate(over="ignore"):  # g·g overflows: the point of the test
        plain.step(spike)
    for _ in range(5):
        plain.step(grads)
    assert np.isinf(plain.inner_state.exp_avg_sq[0][3]) and np.isfinite(plain.params[0]).all()
    delta, _ = plain.inner.update(grads, plain.inner_state, plain.params)
    assert delta[0][3] == 0.0 and (delta[0] != 0.0).sum() == 7  # that coordinate is frozen

    opt = Lookahead(params, lc.adam(lr=0.1, amsgrad=amsgrad), k=3, alpha=0.5, nonfinite="rollback")
    slow_before = [s.copy() for s in opt.slow]
    with np.errstate(over="ignore"):
        opt.step(spike)
    opt.step(grads)
    assert opt.rollbacks == 0  # steps that do not sync do not look
    opt.step(grads)
    assert opt.rollbacks == 1 and opt.count == 0
    assert_all_same_bits(opt.params, slow_before)
    assert is_fresh_inner_state(opt)


def test_an_explicit_sync_rolls_back_too():
    params = make_params()
    opt = Lookahead(params, lc.sgd(lr=0.1), k=5, alpha=0.5, nonfinite="rollback")
    opt.step(make_grads(params, 0))
    opt.step(poisoned(make_grads(params, 1)))
    slow_before = [s.copy() for s in opt.slow]
    opt.sync()
    assert opt.rollbacks == 1 and opt.count == 0
    assert_all_same_bits(opt.params, slow_before)
    assert_all_same_bits(opt.slow, slow_before)
    opt.sync()  # finite now: an ordinary sync
    assert opt.rollbacks == 1


def test_adaptive_mode_rolls_back_at_the_estimate_call_and_keeps_last_alpha():
    params = make_params()
    opt = Lookahead(params, lc.sgd(lr=0.1), k=2, alpha=0.5, alpha_mode="adaptive",
                    nonfinite="rollback")
    for step in range(3):  # a whole cycle: 2 inner steps and the estimate-and-sync call
        opt.step(make_grads(params, step))
    last_alpha = opt.last_alpha
    assert last_alpha is not None
    slow_before = [s.copy() for s in opt.slow]
    opt.step(make_grads(params, 3))
    opt.step(poisoned(make_grads(params, 4)))
    assert opt.count == 2 and opt.rollbacks == 0
    opt.step(make_grads(params, 5))  # the estimate-and-sync call
    assert opt.rollbacks == 1 and opt.count == 0 and opt.last_alpha == last_alpha
    assert_all_same_bits(opt.params, slow_before)
    assert_all_same_bits(opt.slow, slow_before)
    for step in range(6, 9):  # the next cycle records its own ∇L(θ_{t,0}) and syncs
        opt.step(make_grads(params, step))
    assert opt.rollbacks == 1 and opt.last_alpha != last_alpha


@pytest.mark.parametrize("make", [
    lambda: lc.sgd(lr=0.05, momentum=0.9, nesterov=True),
    lambda: lc.adam(lr=1e-2, amsgrad=True),
])
@pytest.mark.parametrize("alpha_mode", ["fixed", "adaptive"])
def test_rollback_changes_nothing_while_everything_is_finite(make, alpha_mode):
    a, b = make_params(), make_params()
    paper = Lookahead(a, make(), k=3, alpha=0.6, alpha_mode=alpha_mode)
    guarded = Lookahead(b, make(), k=3, alpha=0.6, alpha_mode=alpha_mode, nonfinite="rollback")
    for step in range(11):
        paper.step(make_grads(a, step))
        guarded.step(make_grads(b, step))
    paper.sync()
    guarded.sync()
    assert_all_same_bits(b, a)
    assert_all_same_bits(guarded.slow, paper.slow)
    assert guarded.rollbacks == 0


def test_the_check_runs_at_syncs_only(monkeypatch):
    calls = []
    real = Lookahead._all_finite

    def counting(self, arrays):
        calls.append(len(arrays))
        return real(self, arrays)

    monkeypatch.setattr(Lookahead, "_all_finite", counting)
    params = make_params()
    opt = Lookahead(params, lc.adam(), k=4, alpha=0.5, nonfinite="rollback")
    for step in range(12):
        opt.step(make_grads(params, step))
    # Three syncs; each reads θ and Adam's two moments once (3 arrays each).
    assert calls == [9, 9, 9]
    paper = Lookahead(make_params(), lc.adam(), k=4, alpha=0.5)
    calls.clear()
    for step in range(8):
        paper.step(make_grads(paper.params, step))
    assert calls == []


def test_the_check_allocates_no_parameter_sized_temporary():
    import tracemalloc

    params = [np.ones(1 << 20), np.ones((1024, 1024), order="F")[:, ::2]]  # 8 MiB and 4 MiB
    opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=1, nonfinite="rollback")
    arrays = list(opt.params) + list(opt.inner_state.momentum_buffer)
    tracemalloc.start()
    assert opt._all_finite(arrays)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # isfinite(x).all() would hold 1 MiB; NumPy reduces a strided array through a 64 KiB buffer.
    assert peak < 96 * 1024, peak


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.longdouble])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, None])
def test_the_check_finds_any_non_finite_element(dtype, value):
    params = [np.zeros(0, dtype), np.linspace(-1, 1, 37).astype(dtype), np.asarray(2.0, dtype)]
    opt = Lookahead(params, lc.sgd(lr=0.1), nonfinite="rollback")
    assert opt._all_finite(params)
    if value is not None:
        for i in (1, 2):
            target = params[i].reshape(-1)
            for where in (0, target.size - 1):
                saved = target[where].copy()
                target[where] = value
                assert not opt._all_finite(params)
                target[where] = saved
    big = np.finfo(dtype).max
    assert opt._all_finite([np.array([big, -big], dtype)])  # finite extremes are finite


# --- checkpoints --------------------------------------------------------------------------


def rolled_back_optimizer() -> Lookahead:
    params = make_params()
    opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=3, alpha=0.5, nonfinite="rollback")
    for step in range(8):
        grads = make_grads(params, step)
        opt.step(poisoned(grads) if step in (1, 4) else grads)
    assert opt.rollbacks == 2
    return opt


def test_the_counter_round_trips_through_npz(tmp_path):
    opt = rolled_back_optimizer()
    sd = opt.state_dict()
    assert sd["rollbacks"] == 2 and type(sd["rollbacks"]) is int
    np.savez(tmp_path / "opt.npz", **sd)
    fresh = Lookahead(make_params(seed=5), lc.sgd(lr=0.1, momentum=0.9), k=3,
                      nonfinite="rollback")
    fresh.load_state_dict(np.load(tmp_path / "opt.npz"))
    assert fresh.rollbacks == 2
    assert_all_same_bits(fresh.slow, opt.slow)


def test_paper_mode_checkpoints_keep_the_0_1_0_layout():
    params = make_params()
    opt = Lookahead(params, lc.sgd(lr=0.1), k=3)
    opt.step(make_grads(params, 0))
    assert "rollbacks" not in opt.state_dict()


def test_a_checkpoint_without_the_counter_loads_with_zero():
    opt = rolled_back_optimizer()
    sd = opt.state_dict()
    del sd["rollbacks"]
    opt.load_state_dict(sd)
    assert opt.rollbacks == 0


def test_the_counter_of_a_rollback_run_survives_a_paper_mode_optimizer():
    sd = rolled_back_optimizer().state_dict()
    paper = Lookahead(make_params(), lc.sgd(lr=0.1, momentum=0.9), k=3)
    paper.load_state_dict(sd)
    assert paper.rollbacks == 2 and paper.state_dict()["rollbacks"] == 2


@pytest.mark.parametrize("name", ["numpy_sgd_momentum", "numpy_adam_adaptive"])
def test_a_0_1_0_checkpoint_resumes_bit_exactly_under_rollback(name):
    spec = importlib.util.spec_from_file_location("v0_1_0_generate", FIXTURES / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    params, template = gen.build_numpy(name)
    opt = Lookahead(params, template.inner, k=template.k, alpha=template.alpha,
                    alpha_mode=template.alpha_mode, nonfinite="rollback")
    opt.load_state_dict(np.load(FIXTURES / f"{name}.npz"))
    assert opt.rollbacks == 0
    for grads in gen.numpy_grads(name, gen.STEPS_AFTER, seed=2):
        opt.step(grads)
    expected = np.load(FIXTURES / f"{name}.expected.npz")
    for i, p in enumerate(params):
        assert same_bits(p, expected[f"params.{i}"])
    for i, s in enumerate(opt.slow):
        assert same_bits(s, expected[f"slow.{i}"])


@pytest.mark.parametrize("value, error, message", [
    (-1, ValueError, r"state_dict\['rollbacks'\] must be an int >= 0, got -1"),
    (1.5, TypeError, r"state_dict\['rollbacks'\] must be an int"),
    ("2", TypeError, r"state_dict\['rollbacks'\] must be an int"),
    (np.asarray(True), TypeError, r"state_dict\['rollbacks'\] must be an int"),
])
def test_a_bad_counter_is_refused_and_changes_nothing(value, error, message):
    source = rolled_back_optimizer()
    sd = {**source.state_dict(), "rollbacks": value}
    params = make_params(seed=3)
    opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=3, nonfinite="rollback")
    opt.step(make_grads(params, 0))
    before = snapshot(opt)
    with pytest.raises(error, match=message):
        opt.load_state_dict(sd)
    assert_unchanged(opt, before)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_under_rollback_non_finite_slow_weights_are_refused(value):
    sd = rolled_back_optimizer().state_dict(include_params=True)
    sd["slow.1"] = sd["slow.1"].copy()
    sd["slow.1"].flat[-1] = value
    params = make_params(seed=3)
    opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=3, nonfinite="rollback")
    opt.step(make_grads(params, 0))
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"state_dict\['slow.1'\] must be finite"):
        opt.load_state_dict(sd)
    assert_unchanged(opt, before)


def test_without_rollback_non_finite_slow_weights_load_and_poison_the_next_sync():
    sd = rolled_back_optimizer().state_dict()
    sd["slow.0"] = sd["slow.0"].copy()
    sd["slow.0"].flat[0] = np.nan
    params = make_params(seed=3)
    opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=3, alpha=1.0)
    opt.load_state_dict(sd)  # a faithful copy of what was saved
    assert np.isnan(opt.slow[0].flat[0])
    for step in range(3):
        opt.step(make_grads(params, step))
    assert np.isnan(params[0].flat[0])  # even α = 1 keeps the NaN: θ − 0·(θ − NaN)


def test_the_guard_is_exposed_on_the_base_class():
    # The CuPy adapter inherits all of this; only the finiteness test is its own.
    assert "_all_finite" in vars(base_module.InPlaceLookahead)
    assert "nonfinite" in vars(base_module.InPlaceLookahead)
