"""The kit's ``outer`` check: it passes the core and fails outer loops that are wrong.

Each broken backend below is the core with one defect an outer-optimizer
implementation can have; the check must fail it, in the part that catches it.
"""

from __future__ import annotations

import numpy as np
import pytest

import lookahead_core as lc
from lookahead_conformance import run_check
from lookahead_conformance.backends import CoreBackend, _CoreRunner
from lookahead_conformance.checks import OUTER_SPECS, _outer_gain
from lookahead_conformance.protocol import SupportsOuter


class _WrappedOuterBackend(CoreBackend):
    """The core with ``outer`` replaced by ``wrap(outer)`` (a defect), or the runner's save broken."""

    def __init__(self, name, wrap=None, forget_outer_state=False):
        super().__init__(name, "numpy")
        self._wrap = wrap
        self._forget = forget_outer_state

    def create_outer(self, params, inner, k, outer):
        built = outer.build_core()
        if self._wrap is not None:
            built = self._wrap(built, outer)
        opt = lc.lookahead(inner.build_core(), k=k, outer=built)
        runner = _CoreRunner(self, params, opt)
        if self._forget:
            def save(runner=runner, opt=opt):
                params, state = runner._params, runner._state
                return params, state._replace(outer=opt.outer.init(state.slow))
            runner.save = save
        return runner


def _flipped_sign(outer, spec):
    """Δ = θ − φ instead of φ − θ: the outer step walks away from the fast weights."""
    def update(grads, state, params):
        return outer.update(tuple(-g for g in grads), state, params)
    return outer._replace(update=update)


def _no_momentum(outer, spec):
    """Drops the outer momentum (the hyperparameter is ignored)."""
    if spec.name != "sgd":
        return outer
    keep = {key: value for key, value in spec.hyperparams.items()
            if key not in ("momentum", "nesterov", "dampening")}
    return lc.sgd(**keep)


def _heavy_ball_for_nesterov(outer, spec):
    """Takes Nesterov's request as heavy ball."""
    if spec.name != "sgd" or not spec.hyperparams.get("nesterov"):
        return outer
    return lc.sgd(**{**spec.hyperparams, "nesterov": False})


def _one_ulp_high(outer, spec):
    """A plausible kernel that rounds its step up by one ulp each sync: within tolerance."""
    def update(grads, state, params):
        delta, state = outer.update(grads, state, params)
        return tuple(np.nextafter(d, np.inf) for d in delta), state
    return outer._replace(update=update)


def test_the_core_passes_on_every_array_library():
    for module in ("numpy", "array_api_strict"):
        result = run_check("outer", CoreBackend(f"core-{module}", module))
        assert result.status == "pass", result.detail
        # 7 eq. (0.1) cases, 2 inner x 4 outer reference cases, 2 x 3 round trips, per dtype.
        assert result.cases == 2 * (7 + 8 + 6)
        assert result.worst_eps is not None and result.worst_eps < 8.0


def test_a_backend_without_create_outer_is_not_applicable():
    class Plain:
        name, dtypes = "plain", ("float64",)
        create = CoreBackend.create
        skip_reason = CoreBackend.skip_reason

    backend = Plain()
    assert not isinstance(backend, SupportsOuter)
    result = run_check("outer", backend)
    assert result.status == "n/a" and "create_outer" in result.detail


@pytest.mark.parametrize("defect, parts", [
    (_flipped_sign, ("outer SGD(lr=alpha)", "vs the reference")),
    (_no_momentum, ("vs the reference",)),
    (_heavy_ball_for_nesterov, ("vs the reference",)),
])
def test_a_wrong_outer_step_fails(defect, parts):
    result = run_check("outer", _WrappedOuterBackend(defect.__name__, wrap=defect))
    assert result.status == "fail"
    for part in parts:
        assert any(part in failure for failure in result.failures), (part, result.failures[:3])


def test_an_outer_step_off_by_rounding_passes():
    result = run_check("outer", _WrappedOuterBackend("ulp", wrap=_one_ulp_high))
    assert result.status == "pass", result.detail


def test_a_checkpoint_that_drops_the_outer_state_fails():
    result = run_check("outer", _WrappedOuterBackend("forget", forget_outer_state=True))
    assert result.status == "fail"
    assert all("saved after" in failure for failure in result.failures)
    # Only the round trips fail: saved after 3 and 4 steps (k = 3: on and after the first
    # sync), for both dtypes and both outer optimizers. Saved after 2 steps, before any
    # sync, the outer state is still its initial one: nothing to lose.
    assert len(result.failures) == 2 * 2 * 2
    assert not any("saved after 2 steps" in failure for failure in result.failures)


def test_outer_gain_is_the_geometric_sum_of_the_momentum():
    sgd_heavy, sgd_nesterov, snoo, adam = OUTER_SPECS
    assert _outer_gain(sgd_heavy) == pytest.approx(0.7 * 1.9 / 0.1)
    assert _outer_gain(snoo) == pytest.approx(0.7 * 1.5 / 0.5)
    assert _outer_gain(adam) == pytest.approx(0.05 / 1e-2)
