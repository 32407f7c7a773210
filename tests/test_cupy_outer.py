"""``lookahead_cupy.Lookahead(..., outer=O)`` on a GPU, and what runs without one.

The kernels' source is checked on the host (bit for bit against the core) and
compiled by NVRTC in ``tests/test_cupy_outer_kernels.py``; the logic around
them (checkpoints, rollback, refusals) is the code the NumPy adapter shares,
tested in ``tests/test_numpy_outer.py``. Without a GPU: the outer arguments
are refused before any device call, and the CuPy adapter decides nothing of
its own. With a GPU (skipped elsewhere with the reason): trajectories equal
to the core on NumPy, bit for bit in float32 and float64 and float16, for
every layout; a checkpoint round trip; and no device allocation at a sync.
"""

from __future__ import annotations

import numpy as np
import pytest

import lookahead_core as lc
import lookahead_cupy
from lookahead_inplace import InPlaceLookahead

GPU_REASON = lookahead_cupy.skip_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None,
                               reason=GPU_REASON or "a CUDA device is present")

OUTERS = {
    "nesterov": lc.sgd(lr=0.7, momentum=0.9, nesterov=True),
    "heavy-ball-damped-wd": lc.sgd(lr=0.3, momentum=0.5, dampening=0.2, weight_decay=0.1),
    "sgd": lc.sgd(lr=0.7),
    "adam-l2": lc.adam(lr=0.05, betas=(0.3, 0.9), eps=1e-3, weight_decay=0.01),
    "adamw-amsgrad": lc.adamw(lr=0.1, amsgrad=True, weight_decay=0.1, eps=1e-3),
}


# --- without a GPU ----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(alpha=0.5, outer=lc.sgd(lr=0.7)), TypeError, "alpha and outer cannot both be given"),
    (dict(outer=lc.sgd(lr=0.7), alpha_mode="adaptive"), ValueError, "alpha_mode='adaptive'"),
    (dict(outer="sgd"), TypeError, "outer must be None or an InnerOptimizer"),
])
def test_bad_outer_arguments_are_refused_before_any_device_call(kwargs, error, message):
    pytest.importorskip("cupy", reason="cupy not installed")
    # NumPy parameters would be refused too: the outer checks come first.
    with pytest.raises(error, match=message):
        lookahead_cupy.Lookahead([np.zeros(3)], lc.sgd(lr=0.1), 3, **kwargs)


@pytest.mark.parametrize("name", [
    "_outer_sync", "_outer_sync_by_update", "_replace_outer_state", "_check_outer_name",
    "_checked_state", "_tree_is_finite", "outer", "outer_state",
])
def test_the_cupy_adapter_decides_nothing_of_its_own(name):
    assert getattr(lookahead_cupy.Lookahead, name) is getattr(InPlaceLookahead, name)


# --- on a GPU ---------------------------------------------------------------------------


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and \
        np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def host_and_device(cp, rng, dtype):
    """NumPy values and CuPy parameters holding them: C, strided, 0-d and F-ordered."""
    host = [rng.standard_normal((5, 7)), rng.standard_normal(100), np.asarray(rng.standard_normal()),
            rng.standard_normal((6, 4))]
    host = [h.astype(dtype) for h in host]
    device = [cp.asarray(host[0]), cp.zeros(300, dtype)[::3], cp.asarray(host[2]),
              cp.zeros((6, 4), dtype, order="F")]
    device[1][...] = cp.asarray(host[1])
    device[3][...] = cp.asarray(host[3])
    return host, device


@needs_gpu
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("name", sorted(OUTERS))
def test_trajectory_equals_the_core_bit_for_bit(name, dtype, rng):
    """The core on NumPy is the specification; the inner step runs on CuPy (the core's
    update through array-api-compat), where float32 subnormals flush: the values here stay
    far from them."""
    import cupy as cp

    outer = OUTERS[name]
    inner = lc.sgd(lr=0.05, momentum=0.9)
    host, params = host_and_device(cp, rng, dtype)
    opt = lookahead_cupy.Lookahead(params, inner, k=3, outer=outer)
    core = lc.lookahead(inner, k=3, outer=outer)
    state = core.init(host)
    for t in range(10):
        shift = float(np.sin(t))  # a Python float: the same weak scalar on both sides
        opt.step([2 * p + shift for p in params])
        host, state = core.step(host, [2 * p + shift for p in host], state)
        assert all(same_bits(p.get(), h) for p, h in zip(params, host)), t
    opt.sync()
    host, state = core.sync(host, state)
    assert all(same_bits(p.get(), h) for p, h in zip(params, host))
    assert all(same_bits(s.get(), h) for s, h in zip(opt.slow, state.slow))


@needs_gpu
def test_checkpoint_round_trip_with_outer(rng, tmp_path):
    import cupy as cp

    outer = OUTERS["adamw-amsgrad"]
    _, params = host_and_device(cp, rng, "float32")
    opt = lookahead_cupy.Lookahead(params, lc.adam(lr=0.01), 3, outer=outer)
    for t in range(4):
        opt.step([p * 0.5 + t for p in params])
    np.savez(tmp_path / "c.npz", **opt.state_dict(include_params=True))
    _, fresh = host_and_device(cp, rng, "float32")
    other = lookahead_cupy.Lookahead(fresh, lc.adam(lr=0.01), 3, outer=outer)
    other.load_state_dict(np.load(tmp_path / "c.npz"))
    for t in range(4, 9):
        opt.step([p * 0.5 + t for p in params])
        other.step([p * 0.5 + t for p in fresh])
    assert all(same_bits(a.get(), b.get()) for a, b in zip(params, fresh))
    plain = lookahead_cupy.Lookahead(host_and_device(cp, rng, "float32")[1], lc.adam(lr=0.01), 3)
    with pytest.raises(ValueError, match="outer=None"):
        plain.load_state_dict(opt.state_dict())


@needs_gpu
@pytest.mark.parametrize("name", ["nesterov", "adamw-amsgrad"])
def test_outer_sync_allocates_no_device_memory(name, rng):
    import cupy as cp

    _, params = host_and_device(cp, rng, "float32")
    opt = lookahead_cupy.Lookahead(params, lc.sgd(lr=0.1), 2, outer=OUTERS[name])
    opt.sync()  # compiles the kernel
    pool = cp.get_default_memory_pool()
    cp.cuda.Device().synchronize()
    before = pool.used_bytes()
    for _ in range(3):
        opt.sync()
    cp.cuda.Device().synchronize()
    assert pool.used_bytes() == before
