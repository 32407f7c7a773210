"""A checkpoint whose values would break the next step is refused at load, changing nothing.

The in-place adapters (NumPy here; CuPy shares the load path, see
``tests/test_cupy_rollback.py``) already refuse a checkpoint of another shape,
dtype, key set or inner optimizer. These are values of the right type that no
run can produce and that would break what follows: a negative second moment
(√v is NaN at the next step), a negative step count (Adam divides by
1 − β₁⁰ = 0), non-finite or out-of-range scalars. A faithful copy of a run
that blew up (NaN or inf moments) still loads.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import lookahead_core as lc
from lookahead_numpy import Lookahead


def snapshot(opt: Lookahead) -> dict[str, Any]:
    arrays = list(opt.params) + list(opt.slow)
    arrays += [a for field in opt.inner_state if isinstance(field, tuple) for a in field]
    return {
        "bytes": [np.array(a, copy=True).tobytes() for a in arrays],
        "inner_state": opt.inner_state,
        "step": opt.inner_state.step,
        "scalars": (opt.count, opt.k, opt.alpha, opt.alpha_min, opt.last_alpha, opt.rollbacks),
    }


def assert_unchanged(opt: Lookahead, before: dict[str, Any]) -> None:
    after = snapshot(opt)
    assert after["bytes"] == before["bytes"]
    assert after["inner_state"] is before["inner_state"]
    assert after["step"] == before["step"]
    assert after["scalars"] == before["scalars"]


def make_params(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 4)), rng.standard_normal(5), np.asarray(rng.standard_normal())]


def trained(inner: lc.InnerOptimizer, seed: int = 0, steps: int = 5, **kwargs: Any) -> Lookahead:
    params = make_params(seed)
    opt = Lookahead(params, inner, k=3, alpha=0.5, **kwargs)
    rng = np.random.default_rng(seed + 100)
    for _ in range(steps):
        opt.step([rng.standard_normal(p.shape) for p in params])
    return opt


def changed(sd: dict[str, Any], key: str, edit: Any) -> dict[str, Any]:
    sd = dict(sd)
    if callable(edit):
        sd[key] = np.array(sd[key], copy=True)
        edit(sd[key])
    else:
        sd[key] = edit
    return sd


def set_flat(index: int, value: float) -> Any:
    def edit(array: np.ndarray) -> None:
        array.reshape(-1)[index] = value
    return edit


def refused(opt: Lookahead, sd: dict[str, Any], error: type, message: str) -> None:
    before = snapshot(opt)
    with pytest.raises(error, match=message):
        opt.load_state_dict(sd)
    assert_unchanged(opt, before)


@pytest.mark.parametrize("key, edit", [
    ("inner.exp_avg_sq.0", set_flat(5, -1e-12)),
    ("inner.exp_avg_sq.2", set_flat(0, -np.inf)),
    ("inner.max_exp_avg_sq.1", set_flat(4, -3.0)),
])
def test_a_negative_second_moment_is_refused(key, edit):
    sd = changed(trained(lc.adam(lr=0.01, amsgrad=True), seed=1).state_dict(), key, edit)
    opt = trained(lc.adam(lr=0.01, amsgrad=True))
    refused(opt, sd, ValueError, rf"state_dict\['{key}'\] must be >= 0 everywhere")


@pytest.mark.parametrize("make", [lambda: lc.adam(lr=0.01), lambda: lc.adamw(amsgrad=True),
                                  lambda: lc.sgd(lr=0.1, momentum=0.9), lambda: lc.sgd(lr=0.1)])
@pytest.mark.parametrize("step", [-1, -7, np.asarray(-2)])
def test_a_negative_step_count_is_refused(make, step):
    sd = changed(trained(make(), seed=1).state_dict(), "inner.step", step)
    refused(trained(make()), sd, ValueError,
            r"state_dict\['inner.step'\] must be an int >= 0 \(the number of updates taken\)")


@pytest.mark.parametrize("step", [2.5, 3.0, "3", np.asarray(3.0), None])
def test_a_step_count_that_is_not_an_int_is_refused(step):
    sd = changed(trained(lc.adam(), seed=1).state_dict(), "inner.step", step)
    refused(trained(lc.adam()), sd, TypeError, r"state_dict\['inner.step'\] must be an int")


@pytest.mark.parametrize("key, value, error, message", [
    ("alpha", math.inf, ValueError, r"alpha'\]: alpha must be finite"),
    ("alpha", -math.inf, ValueError, r"alpha'\]: alpha must be finite"),
    ("alpha", np.asarray(np.nan), ValueError, r"alpha'\]: alpha must be finite"),
    ("alpha_min", math.nan, ValueError, r"alpha_min must be finite"),
    ("alpha_min", math.inf, ValueError, r"alpha_min must be finite"),
    ("last_alpha", math.inf, ValueError, r"last_alpha'\] \(NaN: no sync yet\) must be None or in"),
    ("last_alpha", -math.inf, ValueError, r"last_alpha'\] \(NaN: no sync yet\) must be None or in"),
    ("k", np.asarray(np.inf), TypeError, r"\['k'\] must be an int"),
    ("count", np.asarray(np.nan), TypeError, r"\['count'\] must be an int"),
])
def test_non_finite_hyperparameters_of_the_checkpoint_are_refused(key, value, error, message):
    sd = changed(trained(lc.adam(), seed=1, alpha_mode="adaptive").state_dict(), key, value)
    refused(trained(lc.adam(), alpha_mode="adaptive"), sd, error, message)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_blown_up_but_faithful_inner_state_still_loads(value):
    # A run whose gradient was NaN or 1e30 holds exactly this; loading it is a faithful resume
    # (under nonfinite="rollback" the next sync rolls it back).
    sd = changed(trained(lc.adam(lr=0.01), seed=1).state_dict(), "inner.exp_avg_sq.1",
                 set_flat(2, value))
    opt = trained(lc.adam(lr=0.01))
    opt.load_state_dict(sd)
    assert same_value(opt.inner_state.exp_avg_sq[1][2], value)


def same_value(a: Any, b: float) -> bool:
    return bool(np.isnan(a)) if np.isnan(b) else a == b


def test_a_negative_zero_second_moment_loads():
    sd = changed(trained(lc.adam(), seed=1).state_dict(), "inner.exp_avg_sq.0", set_flat(0, -0.0))
    trained(lc.adam()).load_state_dict(sd)


@pytest.mark.parametrize("source, target, message", [
    (lambda: lc.adam(), lambda: lc.sgd(lr=0.1, momentum=0.9), "'adam', but"),
    (lambda: lc.sgd(lr=0.1), lambda: lc.adam(), "'sgd', but"),
])
def test_another_inner_optimizers_checkpoint_is_refused(source, target, message):
    # Already so before; kept here next to the value checks, with the rollback counter.
    sd = trained(source(), seed=1).state_dict()
    refused(trained(target(), nonfinite="rollback"), sd, ValueError, message)
