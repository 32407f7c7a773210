"""``nonfinite="rollback"`` and the load-time value checks in the CuPy adapter.

The CuPy adapter inherits both from `lookahead_inplace.InPlaceLookahead`; the
NumPy tests (``tests/test_numpy_rollback.py``,
``tests/test_numpy_checkpoint_values.py``) check their logic in full. Here,
without a GPU: the argument is checked before any device call, the CuPy
adapter overrides none of the methods that decide, and the finiteness check
uses only Array API calls (run on ``array_api_strict``, the strictest
namespace, it gives the answers NumPy gives), so the same function runs on
CuPy's namespace. With a GPU (skipped elsewhere with the reason): the same
behaviour on the device, and refused loads that change nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import lookahead_core as lc
import lookahead_cupy
from lookahead_inplace import InPlaceLookahead, all_finite

GPU_REASON = lookahead_cupy.skip_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None,
                               reason=GPU_REASON or "a CUDA device is present")
KERNELS = ("elementwise", "multi_tensor")


# --- without a GPU ----------------------------------------------------------------------


@pytest.mark.parametrize("value, error", [("skip", ValueError), (1, TypeError)])
def test_bad_nonfinite_is_rejected_before_any_device_call(value, error):
    pytest.importorskip("cupy", reason="cupy not installed")
    # NumPy parameters would be refused too: the argument's check comes first.
    with pytest.raises(error, match="nonfinite must be None or 'rollback'"):
        lookahead_cupy.Lookahead([np.zeros(3)], lc.sgd(), nonfinite=value)


DECIDING_METHODS = (
    "_sync_or_roll_back", "_state_is_finite", "_all_finite", "_roll_back", "_sync_now",
    "_check_inner_name", "_check_keys", "_checked_arrays", "_checked_inner_state", "state_dict",
)


@pytest.mark.parametrize("name", DECIDING_METHODS)
def test_the_cupy_adapter_decides_nothing_of_its_own(name):
    # The NumPy tests of these methods are the CuPy adapter's tests too.
    assert getattr(lookahead_cupy.Lookahead, name) is getattr(InPlaceLookahead, name)


def test_the_finiteness_check_needs_only_the_array_api():
    xp = pytest.importorskip("array_api_strict")
    arrays = [xp.asarray(np.linspace(-1, 1, 9, dtype=np.float32)),
              xp.asarray(np.zeros((0, 3))), xp.asarray(np.float64(2.0)),
              xp.asarray(np.full((2, 3), np.finfo(np.float64).max))]
    assert all_finite(xp, arrays) is True
    assert all_finite(xp, arrays[1:2]) is True  # only empty arrays
    for value in (np.nan, np.inf, -np.inf):
        for i, where in ((0, 4), (2, ()), (3, (1, 2))):
            host = np.array(arrays[i], copy=True)
            host[where] = value
            assert all_finite(xp, arrays[:i] + [xp.asarray(host)] + arrays[i + 1:]) is False


# --- on a GPU ---------------------------------------------------------------------------


@pytest.fixture
def cp():
    import cupy

    return cupy


def host_state(opt: Any) -> dict[str, Any]:
    """Everything the optimizer holds, on the host: the checkpoint with the parameters."""
    sd = opt.state_dict(include_params=True)
    return {**sd, "count": opt.count, "rollbacks": opt.rollbacks, "id": id(opt.inner_state)}


def assert_same_state(after: dict[str, Any], before: dict[str, Any]) -> None:
    assert after.keys() == before.keys()
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == after[key].dtype and value.tobytes() == after[key].tobytes(), key
        else:
            assert after[key] == value, key


def make_params(cp: Any, dtype: str = "float64") -> list[Any]:
    rng = np.random.default_rng(0)
    return [cp.asarray(rng.standard_normal((5, 7)).astype(dtype)),
            cp.asarray(rng.standard_normal((8, 9)).astype(dtype))[::2, 1::3],
            cp.asarray(rng.standard_normal(4099).astype(dtype))]


def make_grads(cp: Any, params: list[Any], step: int) -> list[Any]:
    rng = np.random.default_rng((1, step))
    return [cp.asarray((0.5 * cp.asnumpy(p) + rng.standard_normal(p.shape)).astype(p.dtype.name))
            for p in params]


def poisoned(grads: list[Any], value: float = float("nan")) -> list[Any]:
    grads = [g.copy() for g in grads]
    grads[2][17] = value
    return grads


def trained(cp: Any, inner: lc.InnerOptimizer, steps: int = 4, **kwargs: Any) -> Any:
    params = make_params(cp)
    opt = lookahead_cupy.Lookahead(params, inner, k=3, alpha=0.5, **kwargs)
    for step in range(steps):
        opt.step(make_grads(cp, params, step))
    return opt


@needs_gpu
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_a_nan_gradient_rolls_back_on_the_device(cp, kernel, dtype):
    params = make_params(cp, dtype)
    opt = lookahead_cupy.Lookahead(params, lc.sgd(lr=0.01, momentum=0.9), k=3, alpha=0.5,
                                   nonfinite="rollback", kernel=kernel)
    for step in range(3):
        opt.step(make_grads(cp, params, step))
    slow = [cp.asnumpy(s) for s in opt.slow]
    opt.step(poisoned(make_grads(cp, params, 3)))
    opt.step(make_grads(cp, params, 4))
    assert opt.rollbacks == 0
    opt.step(make_grads(cp, params, 5))
    assert opt.rollbacks == 1 and opt.count == 0 and opt.inner_state.step == 0
    for p, s, want in zip(params, opt.slow, slow):
        assert cp.asnumpy(p).tobytes() == want.tobytes()
        assert cp.asnumpy(s).tobytes() == want.tobytes()
    assert all(not cp.asnumpy(b).any() for b in opt.inner_state.momentum_buffer)


@needs_gpu
def test_a_non_finite_inner_state_rolls_back_on_the_device(cp):
    params = [cp.linspace(-1, 1, 8, dtype=cp.float32)]
    opt = lookahead_cupy.Lookahead(params, lc.adam(lr=0.1), k=2, nonfinite="rollback")
    slow = cp.asnumpy(opt.slow[0])
    spike = cp.full(8, 0.5, dtype=cp.float32)
    spike[3] = 1e30  # g² overflows to inf in float32; θ stays finite
    opt.step([spike])
    opt.step([cp.full(8, 0.5, dtype=cp.float32)])
    assert opt.rollbacks == 1
    assert cp.asnumpy(params[0]).tobytes() == slow.tobytes()


@needs_gpu
def test_an_explicit_sync_rolls_back_on_the_device(cp):
    opt = trained(cp, lc.sgd(lr=0.1), steps=1, nonfinite="rollback")
    opt.params[0][0, 0] = cp.inf
    slow = [cp.asnumpy(s) for s in opt.slow]
    opt.sync()
    assert opt.rollbacks == 1
    assert all(cp.asnumpy(p).tobytes() == s.tobytes() for p, s in zip(opt.params, slow))


@needs_gpu
def test_rollback_changes_nothing_while_everything_is_finite_on_the_device(cp):
    paper = trained(cp, lc.adam(lr=1e-2), steps=10)
    guarded = trained(cp, lc.adam(lr=1e-2), steps=10, nonfinite="rollback")
    for a, b in zip(paper.params + paper.slow, guarded.params + guarded.slow):
        assert cp.asnumpy(a).tobytes() == cp.asnumpy(b).tobytes()
    assert guarded.rollbacks == 0


@needs_gpu
def test_the_counter_round_trips_and_defaults_to_zero(cp):
    opt = trained(cp, lc.sgd(lr=0.1, momentum=0.9), steps=0, nonfinite="rollback")
    for step in range(3):
        grads = make_grads(cp, list(opt.params), step)
        opt.step(poisoned(grads) if step == 1 else grads)
    assert opt.rollbacks == 1
    sd = opt.state_dict()
    assert sd["rollbacks"] == 1
    other = trained(cp, lc.sgd(lr=0.1, momentum=0.9), nonfinite="rollback")
    other.load_state_dict(sd)
    assert other.rollbacks == 1
    del sd["rollbacks"]
    other.load_state_dict(sd)
    assert other.rollbacks == 0


def set_flat(sd: dict[str, Any], key: str, index: int, value: Any) -> dict[str, Any]:
    array = np.array(sd[key], copy=True)
    array.reshape(-1)[index] = value
    return {**sd, key: array}


@needs_gpu
@pytest.mark.parametrize("case", ["nan-slow", "negative-v", "negative-vmax", "negative-step",
                                  "bad-counter", "adam-into-sgd", "sgd-into-adam"])
def test_a_refused_load_changes_nothing_on_the_device(cp, case):
    inner = (lambda: lc.sgd(lr=0.1, momentum=0.9)) if case == "adam-into-sgd" else (
        lambda: lc.adam(lr=1e-2, amsgrad=True))
    source_inner = {"adam-into-sgd": lc.adam(), "sgd-into-adam": lc.sgd(lr=0.1)}.get(case, inner())
    sd = trained(cp, source_inner, steps=5, nonfinite="rollback").state_dict()
    sd, error, message = {
        "nan-slow": (set_flat(sd, "slow.2", 5, np.nan), ValueError, r"\['slow.2'\] must be finite"),
        "negative-v": (set_flat(sd, "inner.exp_avg_sq.0", 3, -1.0), ValueError,
                       r"\['inner.exp_avg_sq.0'\] must be >= 0"),
        "negative-vmax": (set_flat(sd, "inner.max_exp_avg_sq.1", 0, -1.0), ValueError,
                          r"\['inner.max_exp_avg_sq.1'\] must be >= 0"),
        "negative-step": ({**sd, "inner.step": -1}, ValueError, r"\['inner.step'\] must be an int"),
        "bad-counter": ({**sd, "rollbacks": -2}, ValueError,
                        r"\['rollbacks'\] must be an int >= 0"),
        "adam-into-sgd": (sd, ValueError, "'adam', but"),
        "sgd-into-adam": (sd, ValueError, "'sgd', but"),
    }[case]
    opt = trained(cp, inner(), steps=4, nonfinite="rollback")
    before = host_state(opt)
    with pytest.raises(error, match=message):
        opt.load_state_dict(sd)
    assert_same_state(host_state(opt), before)
