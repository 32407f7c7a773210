"""Tests of the in-place NumPy adapter ``lookahead_numpy.Lookahead``.

Expected values come from the paper's Algorithm 1 worked by hand, from the
functional core ``lookahead_core.lookahead`` (the specification), or from the
inner optimizer run alone. Float comparisons are bit-exact on purpose: the
adapter performs the core's operations in the core's order, so a float64 (or
float32) trajectory must equal the core's exactly, which implies the 1e-12
relative agreement docs/design.md asks of backends ('Tolerances').
"""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import numpy as np
import pytest

import lookahead_core as lc
import lookahead_numpy.blocks as optimizer_module
from lookahead_numpy import Lookahead

# --- helpers ----------------------------------------------------------------------------


def same_bits(a: Any, b: Any) -> bool:
    """Equal shape, dtype and bytes (so -0.0 != 0.0 and NaN payloads count)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == np.longdouble:
        # x87 extended precision keeps garbage in its padding bytes: compare values and signs.
        return bool(np.array_equal(a, b, equal_nan=True)
                    and np.array_equal(np.signbit(a), np.signbit(b)))
    return a.tobytes() == b.tobytes()


def assert_all_same_bits(actual: Any, expected: Any) -> None:
    actual, expected = list(actual), list(expected)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert same_bits(a, e), f"entry {i} differs: {a!r} != {e!r}"


def inner_leaves(state: Any) -> dict[str, Any]:
    """The inner state's fields, copied: ints as is, arrays copied, None kept."""
    leaves = {}
    for name, value in zip(state._fields, state):
        if isinstance(value, tuple):
            leaves[name] = [np.array(a, copy=True) for a in value]
        else:
            leaves[name] = value
    return leaves


def assert_inner_equal(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    for name, x, y in zip(a._fields, a, b):
        if x is None or isinstance(x, int):
            assert x == y, name
        else:
            assert_all_same_bits(x, y)


def snapshot(opt: Lookahead) -> dict[str, Any]:
    return {
        "params": [np.array(p, copy=True) for p in opt.params],
        "slow": [np.array(s, copy=True) for s in opt.slow],
        "inner_state": opt.inner_state,
        "inner": inner_leaves(opt.inner_state),
        "count": opt.count,
        "k": opt.k,
        "alpha": opt.alpha,
    }


def assert_unchanged(opt: Lookahead, before: dict[str, Any]) -> None:
    after = snapshot(opt)
    assert_all_same_bits(after["params"], before["params"])
    assert_all_same_bits(after["slow"], before["slow"])
    assert after["inner_state"] is before["inner_state"]
    for name, value in before["inner"].items():
        if isinstance(value, list):
            assert_all_same_bits(after["inner"][name], value)
        else:
            assert after["inner"][name] == value
    assert (after["count"], after["k"], after["alpha"]) == (
        before["count"], before["k"], before["alpha"],
    )


def copy_mapping(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def assert_mapping_unchanged(d: dict[str, Any], before: dict[str, Any]) -> None:
    assert list(d) == list(before)
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            assert same_bits(d[key], value), key
        else:
            assert type(d[key]) is type(value), key
            assert d[key] == value or (value != value and d[key] != d[key]), key  # NaN


INNERS = {
    "sgd": lambda: lc.sgd(lr=0.1),
    "sgd-momentum": lambda: lc.sgd(lr=0.05, momentum=0.9),
    "sgd-nesterov-wd": lambda: lc.sgd(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "sgd-dampening": lambda: lc.sgd(lr=0.05, momentum=0.8, dampening=0.3),
    "adam": lambda: lc.adam(lr=1e-2),
    "adam-amsgrad-wd": lambda: lc.adam(lr=1e-2, amsgrad=True, weight_decay=1e-2),
    "adamw": lambda: lc.adamw(lr=1e-2, weight_decay=0.1),
    "adamw-amsgrad": lambda: lc.adamw(lr=1e-2, amsgrad=True),
}


def make_params(dtype: Any, seed: int = 0) -> list[np.ndarray]:
    """Several shapes and memory layouts: C, F, 0-d, 3-d, strided and reversed views."""
    rng = np.random.default_rng(seed)
    strided_base = rng.standard_normal((10, 12)).astype(dtype)
    reversed_base = rng.standard_normal(17).astype(dtype)
    return [
        rng.standard_normal((3, 4)).astype(dtype),
        np.asfortranarray(rng.standard_normal((5, 3)).astype(dtype)),
        np.asarray(rng.standard_normal(), dtype=dtype),
        rng.standard_normal((2, 3, 4)).astype(dtype).transpose(2, 0, 1),
        strided_base[::2, 1::3],
        reversed_base[::-1],
    ]


def make_grads(params: Any, step: int, seed: int = 1) -> list[np.ndarray]:
    """Gradient of 0.5·c·θ² plus step-dependent noise: depends on the trajectory."""
    rng = np.random.default_rng((seed, step))
    return [
        (0.7 * p + rng.standard_normal(p.shape).astype(p.dtype)).astype(p.dtype)
        for p in params
    ]


# --- the paper's schedule, exact ---------------------------------------------------------


def test_paper_schedule_k3_alpha_half_ends_at_three():
    params = [np.zeros(4)]
    opt = Lookahead(params, lc.sgd(lr=1.0), k=3, alpha=0.5)
    fast, slow, counts = [], [], []
    for _ in range(6):
        opt.step([-np.ones(4)])  # θ ← θ + 1
        fast.append(params[0][0])
        slow.append(opt.slow[0][0])
        counts.append(opt.count)
    # φ₁ = 0 + 0.5·(3 − 0) = 1.5; θ restarts at 1.5; φ₂ = 1.5 + 0.5·(4.5 − 1.5) = 3.0.
    # timm (lazy slow init) and torch-optimizer (sync at 1, k+1, ...) end at 4.5.
    assert fast == [1.0, 2.0, 1.5, 2.5, 3.5, 3.0]
    assert slow == [0.0, 0.0, 1.5, 1.5, 1.5, 3.0]
    assert counts == [1, 2, 0, 1, 2, 0]
    assert np.all(params[0] == 3.0) and np.all(opt.slow[0] == 3.0)


def test_k1_alpha0_resets_to_theta0_every_step():
    theta0 = np.random.default_rng(3).standard_normal((4, 5))
    params = [theta0.copy()]
    opt = Lookahead(params, lc.adam(lr=0.1), k=1, alpha=0.0)
    for step in range(5):
        opt.step(make_grads(params, step))
        assert same_bits(params[0], theta0)
        assert same_bits(opt.slow[0], theta0)
        assert opt.count == 0
    assert opt.inner_state.step == 5  # the inner optimizer still advanced


def test_alpha0_freezes_slow_and_resets_fast_every_k_steps():
    theta0 = np.random.default_rng(4).standard_normal(6)
    params = [theta0.copy()]
    opt = Lookahead(params, lc.sgd(lr=1.0), k=3, alpha=0.0)
    for cycle in range(3):
        opt.step([-np.ones(6)])
        assert same_bits(params[0], theta0 + 1.0)
        opt.step([-np.ones(6)])
        assert same_bits(params[0], theta0 + 1.0 + 1.0)
        opt.step([-np.ones(6)])
        assert same_bits(params[0], theta0), cycle
        assert same_bits(opt.slow[0], theta0)


@pytest.mark.parametrize("name", ["sgd-nesterov-wd", "adam-amsgrad-wd"])
def test_alpha1_is_the_inner_optimizer_alone_bit_for_bit(name):
    params = make_params(np.float64)
    alone = [p.copy() for p in params]
    inner = INNERS[name]()
    opt = Lookahead(params, inner, k=2, alpha=1.0)
    state = inner.init(alone)
    for step in range(9):
        delta, state = inner.update(make_grads(alone, step), state, alone)
        alone = [p + d for p, d in zip(alone, delta)]
        opt.step(make_grads(params, step))
        assert_all_same_bits(params, alone)
        if opt.count == 0:  # a sync with α = 1 moves φ all the way to θ
            assert_all_same_bits(opt.slow, alone)
    assert opt.count == 1


# --- equality with the core --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(INNERS))
@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.8])  # both branches of the two-sided lerp
def test_trajectory_equals_core_exactly(name, alpha, dtype):
    k, steps = 3, 14
    params = make_params(dtype)
    core_params = [np.array(p, copy=True, order="C") for p in params]
    # 24 bytes per block: 3 float64 / 6 float32 elements, so every parameter but the
    # 0-d one is cut into several blocks and all the blocking paths run.
    opt = Lookahead(params, INNERS[name](), k=k, alpha=alpha, block_bytes=24)
    core = lc.lookahead(INNERS[name](), k=k, alpha=alpha)
    state = core.init(core_params)
    for step in range(steps):
        opt.step(make_grads(params, step))
        core_params, state = core.step(core_params, make_grads(core_params, step), state)
        assert_all_same_bits(params, core_params)
        assert_all_same_bits(opt.slow, state.slow)
        assert opt.count == state.count
    assert_inner_equal(opt.inner_state, state.inner)
    # An explicit sync mid-cycle (count == 2 after 14 steps) matches the core's sync.
    assert opt.count == 2
    opt.sync()
    core_params, state = core.sync(core_params, state)
    assert_all_same_bits(params, core_params)
    assert_all_same_bits(opt.slow, state.slow)
    assert opt.count == state.count == 0


@pytest.mark.parametrize(
    "dtype, name", [(np.float16, "sgd-momentum"), (np.longdouble, "adam-amsgrad-wd")]
)
def test_other_float_dtypes_equal_core_exactly(dtype, name):
    params = make_params(dtype)
    core_params = [np.array(p, copy=True) for p in params]
    opt = Lookahead(params, INNERS[name](), k=2, alpha=0.7, block_bytes=16)
    core = lc.lookahead(INNERS[name](), k=2, alpha=0.7)
    state = core.init(core_params)
    for step in range(5):
        opt.step(make_grads(params, step))
        core_params, state = core.step(core_params, make_grads(core_params, step), state)
    assert all(p.dtype == dtype for p in list(params) + list(opt.slow))
    assert_all_same_bits(params, core_params)
    assert_all_same_bits(opt.slow, state.slow)


def test_default_blocks_on_large_parameters_equal_core():
    rng = np.random.default_rng(5)
    # 300k float64 = 2.3 MiB, several 256 KiB blocks; F-order and strided layouts too.
    params = [
        rng.standard_normal(300_000),
        np.asfortranarray(rng.standard_normal((300, 400))),
        rng.standard_normal((400, 600))[::2, ::3],
        rng.standard_normal(200_001).astype(np.float32),
    ]
    core_params = [np.array(p, copy=True) for p in params]
    opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=2, alpha=0.6)
    core = lc.lookahead(lc.sgd(lr=0.1, momentum=0.9), k=2, alpha=0.6)
    state = core.init(core_params)
    for step in range(4):
        grads = [np.full_like(p, 0.25 * (step + 1)) + 0.5 * p for p in params]
        core_grads = [np.full_like(p, 0.25 * (step + 1)) + 0.5 * p for p in core_params]
        opt.step(grads)
        core_params, state = core.step(core_params, core_grads, state)
    assert_all_same_bits(params, core_params)
    assert_all_same_bits(opt.slow, state.slow)


# --- hot path: no work off the sync, no allocation in the sync ----------------------------


def test_non_sync_steps_do_no_lookahead_work(monkeypatch):
    calls = []
    real = optimizer_module.lerp_and_reset

    def counting(pair, alpha):
        calls.append(alpha)
        real(pair, alpha)

    monkeypatch.setattr(optimizer_module, "lerp_and_reset", counting)
    params = make_params(np.float64)
    opt = Lookahead(params, lc.sgd(lr=0.1), k=4, alpha=0.5)
    slow_before = [np.array(s, copy=True) for s in opt.slow]
    for step in range(3):
        opt.step(make_grads(params, step))
        assert calls == []
        assert_all_same_bits(opt.slow, slow_before)
    opt.step(make_grads(params, 3))
    assert len(calls) == len(params)  # one blockwise lerp per parameter, at the k-th step
    assert not same_bits(opt.slow[0], slow_before[0])


# The bound for the traced peak during a sync / a swap. A parameter below is 8 MiB and a
# block of the scratch 256 KiB: a parameter-sized temporary (what `phi + alpha*(theta -
# phi)` allocates) or even one block-sized temporary would exceed it by 30x or more.
# What remains are Python objects: the block views (~100-200 bytes each, freed block by
# block), the generators and ufunc call overhead. Measured: ~1 KiB.
PEAK_BOUND_BYTES = 8 * 1024


def large_params() -> list[np.ndarray]:
    rng = np.random.default_rng(6)
    return [
        rng.standard_normal(1_048_576),                     # 8 MiB, C-contiguous
        np.asfortranarray(rng.standard_normal((1024, 1024))),  # 8 MiB, F-contiguous
        rng.standard_normal((2048, 1024))[::2, ::2],        # 4 MiB of a strided view
        rng.standard_normal(1_048_576).astype(np.float32),  # 4 MiB, another dtype
        rng.standard_normal(1_048_576)[::-1],               # 8 MiB, reversed
    ]


def traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


def test_tracemalloc_sees_numpy_allocations():
    # The bound below is meaningful only if NumPy reports its data buffers.
    params = large_params()
    peak = traced_peak(lambda: lc.sync_slow(params, [p + 1.0 for p in params], 0.5))
    assert peak > 8 * 1024 * 1024


@pytest.mark.parametrize("alpha", [0.25, 0.75])
def test_sync_allocates_nothing(alpha):
    params = large_params()
    opt = Lookahead(params, lc.sgd(lr=0.1), k=5, alpha=alpha)
    for p in params:
        p += 1.0  # θ ≠ φ, so the sync has work to do
    expected_fast, expected_slow = lc.sync_slow(
        [np.array(p, copy=True) for p in params], [np.array(s, copy=True) for s in opt.slow], alpha
    )
    peak = traced_peak(opt.sync)
    assert peak < PEAK_BOUND_BYTES, f"sync peak {peak} bytes"
    assert_all_same_bits(params, expected_fast)
    assert_all_same_bits(opt.slow, expected_slow)


def test_slow_weights_swap_makes_no_third_copy():
    params = large_params()
    opt = Lookahead(params, lc.sgd(lr=0.1), k=5, alpha=0.5)
    for p in params:
        p += 1.0

    def enter_and_exit():
        with opt.slow_weights():
            pass

    peak = traced_peak(enter_and_exit)
    assert peak < PEAK_BOUND_BYTES, f"swap peak {peak} bytes"


def test_fast_and_slow_never_share_memory():
    params = make_params(np.float64)
    opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.5), k=2, alpha=1.0)
    for step in range(7):
        opt.step(make_grads(params, step))
        for i, p in enumerate(params):
            for s in opt.slow:
                assert not np.shares_memory(p, s), (step, i)
    opt.load_state_dict(opt.state_dict())
    with opt.slow_weights():
        pass
    for p in params:
        assert not any(np.shares_memory(p, s) for s in opt.slow)


# --- attributes --------------------------------------------------------------------------


def test_attributes_and_read_only_slow_views():
    params = [np.ones((2, 3)), np.zeros(3)]
    inner = lc.sgd(lr=0.1)
    opt = Lookahead(params, inner, k=7, alpha=0.25)
    assert opt.params[0] is params[0] and opt.params[1] is params[1]
    assert opt.inner is inner and opt.k == 7 and opt.alpha == 0.25 and opt.count == 0
    assert isinstance(opt.k, int) and type(opt.alpha) is float
    assert "sgd" in repr(opt) and "k=7" in repr(opt)
    assert not np.shares_memory(opt.slow[0], params[0])  # φ₀ is an eager copy
    with pytest.raises(ValueError):
        opt.slow[0][0, 0] = 5.0
    assert opt.slow[0][0, 0] == 1.0
    opt.step([np.ones((2, 3)), np.ones(3)])
    assert opt.step([np.ones((2, 3)), np.ones(3)]) is None
    assert opt.count == 2


def test_alpha_and_k_are_coerced_to_python_scalars():
    opt = Lookahead([np.zeros(2, np.float32)], lc.sgd(lr=1.0), k=np.int64(2), alpha=np.float64(0.5))
    assert type(opt.k) is int and type(opt.alpha) is float
    opt.step([-np.ones(2, np.float32)])
    opt.step([-np.ones(2, np.float32)])
    assert opt.params[0].dtype == np.float32 and opt.slow[0].dtype == np.float32
    assert np.all(opt.params[0] == 1.0)


def test_interleaved_views_that_share_no_element_are_accepted():
    base = np.zeros(10)
    params = [base[::2], base[1::2]]
    opt = Lookahead(params, lc.sgd(lr=1.0), k=2, alpha=0.5)
    opt.step([-np.ones(5), -2 * np.ones(5)])
    opt.step([-np.ones(5), -2 * np.ones(5)])
    assert np.array_equal(base, np.tile([1.0, 2.0], 5))


# --- bad inputs: the promised error, nothing changed -------------------------------------


def good_params() -> list[np.ndarray]:
    return [np.arange(6.0).reshape(2, 3), np.ones(3)]


@pytest.mark.parametrize(
    "k, error",
    [(0, ValueError), (-1, ValueError), (True, TypeError), (2.5, TypeError), ("3", TypeError)],
)
def test_bad_k_is_rejected(k, error):
    params = good_params()
    with pytest.raises(error, match="k must be an int >= 1"):
        Lookahead(params, lc.sgd(), k=k)
    assert_all_same_bits(params, good_params())


@pytest.mark.parametrize(
    "alpha, error",
    [(-0.1, ValueError), (1.5, ValueError), (math.nan, ValueError),
     (math.inf, ValueError), (True, TypeError), ("0.5", TypeError)],
)
def test_bad_alpha_is_rejected(alpha, error):
    params = good_params()
    with pytest.raises(error, match="alpha"):
        Lookahead(params, lc.sgd(), alpha=alpha)
    assert_all_same_bits(params, good_params())


def torch_tensor_params() -> list[Any]:
    torch = pytest.importorskip("torch")
    return [torch.zeros(3, dtype=torch.float64)]


def read_only_params() -> list[np.ndarray]:
    a = np.zeros(3)
    a.flags.writeable = False
    return [np.zeros(2), a]


def aliasing_params() -> list[np.ndarray]:
    a = np.zeros(3)
    return [a, np.ones(2), a]


def overlapping_views() -> list[np.ndarray]:
    base = np.zeros(10)
    return [base[:6], base[4:]]


def self_overlapping() -> list[np.ndarray]:
    return [np.lib.stride_tricks.as_strided(np.zeros(3), shape=(4, 3), strides=(0, 8))]


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: np.zeros(3), TypeError, "params must be a list or tuple"),
        (lambda: (p for p in good_params()), TypeError, "params must be a list or tuple"),
        (lambda: [], ValueError, "at least one"),
        (lambda: [np.zeros(3, np.int64)], TypeError, r"params\[0\] must have a real floating"),
        (lambda: [np.zeros(2), np.zeros(3, np.complex128)], TypeError, r"params\[1\]"),
        (lambda: [[0.0, 1.0]], TypeError, r"params\[0\] must be an array"),
        (torch_tensor_params, TypeError, r"params\[0\] must be a numpy.ndarray"),
        (lambda: [np.ma.zeros(3)], TypeError, "masked"),
        (read_only_params, ValueError, r"params\[1\] must be writeable"),
        (aliasing_params, ValueError, r"params\[0\] and params\[2\] share memory"),
        (overlapping_views, ValueError, r"params\[0\] and params\[1\] share memory"),
        (self_overlapping, ValueError, "overlap itself"),
    ],
    ids=["ndarray", "generator", "empty", "int", "complex", "list", "torch", "masked",
         "read-only", "aliasing", "overlapping-views", "self-overlapping"],
)
def test_bad_params_are_rejected(make, error, message):
    params = make()
    numpy_only = isinstance(params, list) and all(isinstance(p, np.ndarray) for p in params)
    before = [np.array(p, copy=True) for p in params] if numpy_only else None
    with pytest.raises(error, match=message):
        Lookahead(params, lc.sgd(lr=0.1))
    if before is not None:
        assert_all_same_bits(params, before)


def test_bad_inner_and_block_bytes_are_rejected():
    with pytest.raises(TypeError, match="inner must be an InnerOptimizer"):
        Lookahead(good_params(), "sgd")
    with pytest.raises(ValueError, match="block_bytes"):
        Lookahead(good_params(), lc.sgd(), block_bytes=0)
    with pytest.raises(TypeError, match="block_bytes"):
        Lookahead(good_params(), lc.sgd(), block_bytes=1.5)


def stepped_optimizer(inner: Any = None, steps: int = 4, k: int = 3) -> Lookahead:
    params = make_params(np.float64)
    opt = Lookahead(params, inner or lc.sgd(lr=0.1, momentum=0.9), k=k, alpha=0.5)
    for step in range(steps):
        opt.step(make_grads(params, step))
    return opt


def array_api_strict_grads(params: Any) -> list[Any]:
    xp = pytest.importorskip("array_api_strict")
    return [xp.asarray(np.array(p, copy=True)) for p in params]


def torch_grads(params: Any) -> list[Any]:
    torch = pytest.importorskip("torch")
    return [torch.from_numpy(np.array(p, copy=True)) for p in params]


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda ps: [np.ones_like(p) for p in ps[:-1]], ValueError, "grads must hold 6 arrays"),
        (lambda ps: [np.ones_like(p) for p in ps] + [np.ones(2)], ValueError, "grads must hold"),
        (lambda ps: [np.ones((4, 3))] + [np.ones_like(p) for p in ps[1:]], ValueError,
         r"grads\[0\] must have shape \(3, 4\)"),
        (lambda ps: [np.ones_like(p) for p in ps[:-1]] + [np.ones(17, np.float32)], TypeError,
         r"grads\[5\] must have dtype float64"),
        (lambda ps: [np.ones(p.shape, np.int64) for p in ps], TypeError, "real floating"),
        (torch_grads, TypeError, "same array library"),
        (array_api_strict_grads, TypeError, "same array library"),
        (lambda ps: np.ones(3), TypeError, "grads must be a list or tuple"),
        (lambda ps: [p.tolist() for p in ps], TypeError, r"grads\[0\] must be an array"),
        (lambda ps: None, TypeError, "grads"),
    ],
    ids=["short", "long", "shape", "dtype", "int", "torch", "array-api-strict", "ndarray",
         "lists", "none"],
)
def test_bad_grads_change_nothing(make, error, message):
    opt = stepped_optimizer()  # count 1, momentum buffers set
    before = snapshot(opt)
    with pytest.raises(error, match=message):
        opt.step(make(opt.params))
    assert_unchanged(opt, before)


# --- checkpoints -------------------------------------------------------------------------


def save_and_load(sd: dict[str, Any], path: Any) -> Any:
    np.savez(path, **sd)
    return np.load(path)  # allow_pickle=False: the checkpoint needs no pickle


@pytest.mark.parametrize("inner_name", ["sgd-momentum", "adam-amsgrad-wd"])
@pytest.mark.parametrize("n", [3, 4, 0])  # on a sync boundary (k = 3), off it, right after init
def test_round_trip_through_npz_is_bit_exact(inner_name, n, tmp_path):
    k, alpha = 3, 0.6
    reference = make_params(np.float64)
    ref_opt = Lookahead(reference, INNERS[inner_name](), k=k, alpha=alpha)
    for step in range(2 * n + 2):
        ref_opt.step(make_grads(reference, step))

    params = make_params(np.float64)
    opt = Lookahead(params, INNERS[inner_name](), k=k, alpha=alpha)
    for step in range(n):
        opt.step(make_grads(params, step))
    np.savez(tmp_path / "params.npz", *params)  # the user saves the parameters
    loaded = save_and_load(opt.state_dict(), tmp_path / "opt.npz")

    # A fresh optimizer on fresh parameters, with other hyperparameters: load restores k, α.
    fresh = make_params(np.float64, seed=99)
    saved_params = np.load(tmp_path / "params.npz")
    for i, p in enumerate(fresh):
        np.copyto(p, saved_params[f"arr_{i}"])
    new_opt = Lookahead(fresh, INNERS[inner_name](), k=5, alpha=0.1)
    new_opt.load_state_dict(loaded)
    assert (new_opt.k, new_opt.alpha, new_opt.count) == (k, alpha, n % k)
    for step in range(n, 2 * n + 2):
        new_opt.step(make_grads(fresh, step))

    assert_all_same_bits(fresh, reference)
    assert_all_same_bits(new_opt.slow, ref_opt.slow)
    assert_inner_equal(new_opt.inner_state, ref_opt.inner_state)
    assert new_opt.count == ref_opt.count


def test_state_dict_contents_are_flat_plain_fresh_copies():
    opt = stepped_optimizer(lc.adam(lr=0.01, amsgrad=True), steps=4)
    sd = opt.state_dict()
    n = len(opt.params)
    expected_keys = {"k", "alpha", "count", "inner_name", "inner.step"}
    for field in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        expected_keys |= {f"inner.{field}.{i}" for i in range(n)}
    expected_keys |= {f"slow.{i}" for i in range(n)}
    assert set(sd) == expected_keys
    assert (sd["k"], sd["alpha"], sd["count"], sd["inner_name"], sd["inner.step"]) == (
        3, 0.5, 1, "adam", 4,
    )
    assert type(sd["k"]) is int and type(sd["alpha"]) is float and type(sd["count"]) is int
    live = list(opt.slow) + list(opt.params)
    for field in opt.inner_state:
        if isinstance(field, tuple):
            live += list(field)
    for key, value in sd.items():
        assert isinstance(value, (np.ndarray, int, float, str)), key
        if isinstance(value, np.ndarray):
            assert not any(np.shares_memory(value, a) for a in live), key
    assert_all_same_bits([sd[f"slow.{i}"] for i in range(n)], opt.slow)
    # Mutating the returned dict's arrays does not reach the optimizer.
    before = snapshot(opt)
    for value in sd.values():
        if isinstance(value, np.ndarray):
            value += 1.0
    assert_unchanged(opt, before)


def test_state_dict_without_momentum_has_no_buffer_keys():
    opt = Lookahead(good_params(), lc.sgd(lr=0.1), k=2)
    assert set(opt.state_dict()) == {"k", "alpha", "count", "inner_name", "inner.step",
                                     "slow.0", "slow.1"}


def test_include_params_restores_the_parameters_too(tmp_path):
    opt = stepped_optimizer(steps=4)
    sd = opt.state_dict(include_params=True)
    assert_all_same_bits([sd[f"params.{i}"] for i in range(len(opt.params))], opt.params)
    loaded = save_and_load(sd, tmp_path / "all.npz")
    other = stepped_optimizer(steps=2)
    other.load_state_dict(loaded)
    assert_all_same_bits(other.params, opt.params)
    assert_all_same_bits(other.slow, opt.slow)
    assert other.count == opt.count


def test_load_copies_so_the_callers_arrays_are_never_shared():
    source = stepped_optimizer(steps=4)
    sd = source.state_dict()
    opt = stepped_optimizer(steps=2)
    opt.load_state_dict(sd)
    before = snapshot(opt)
    for value in sd.values():
        if isinstance(value, np.ndarray):
            value *= 3.0
    assert_unchanged(opt, before)


def other_checkpoint(inner: Any = None, steps: int = 5) -> dict[str, Any]:
    """A valid checkpoint of a different trajectory: a partial load would show."""
    params = make_params(np.float64, seed=7)
    opt = Lookahead(params, inner or lc.sgd(lr=0.1, momentum=0.9), k=3, alpha=0.5)
    for step in range(steps):
        opt.step(make_grads(params, step, seed=8))
    return opt.state_dict()


def without(key):
    return lambda sd: {k: v for k, v in sd.items() if k != key}


def with_value(key, value):
    return lambda sd: {**sd, key: value(sd) if callable(value) else value}


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (without("slow.0"), ValueError, r"missing keys \['slow.0'\]"),
        (without("inner.momentum_buffer.5"), ValueError, "missing keys"),
        (without("count"), ValueError, r"missing keys \['count'\]"),
        (with_value("bogus", 1), ValueError, r"unexpected keys \['bogus'\]"),
        (with_value("slow.6", np.zeros(2)), ValueError, "unexpected keys"),
        (with_value("params.0", np.zeros((3, 4))), ValueError, r"missing keys \['params.1'"),
        (with_value("inner.momentum_buffer.5", np.zeros(16)), ValueError,
         r"state_dict\['inner.momentum_buffer.5'\] must have shape \(17,\)"),
        (with_value("slow.5", lambda sd: sd["slow.5"][:-1]), ValueError, "must have shape"),
        (with_value("inner.momentum_buffer.5", lambda sd: sd["inner.momentum_buffer.5"]
                    .astype(np.float32)), TypeError, "must have dtype float64"),
        (with_value("slow.0", lambda sd: sd["slow.0"].astype(np.float32)), TypeError, "dtype"),
        (with_value("slow.0", lambda sd: sd["slow.0"].tolist()), TypeError, "numpy.ndarray"),
        (with_value("count", 3), ValueError, r"count'\] must be in \[0, k\)"),
        (with_value("count", -1), ValueError, "count"),
        (with_value("count", 1.0), TypeError, r"count'\] must be an int"),
        (with_value("count", np.asarray(True)), TypeError, "must be an int"),
        (with_value("k", 0), ValueError, "k must be an int >= 1"),
        (with_value("k", True), TypeError, r"\['k'\] must be an int"),
        (with_value("k", 2.5), TypeError, r"\['k'\] must be an int"),
        (with_value("k", np.asarray(2)), ValueError, r"count'\] must be in \[0, k\) = \[0, 2\)"),
        (with_value("alpha", 1.5), ValueError, r"alpha'\]: alpha must be in \[0, 1\]"),
        (with_value("alpha", math.nan), ValueError, "finite"),
        (with_value("alpha", "0.5"), TypeError, "real number"),
        (with_value("inner.step", 2.0), TypeError, "inner.step"),
        (with_value("inner_name", "adam"), ValueError, "'adam', but this optimizer's inner"),
        (with_value("inner_name", 3), TypeError, "must be a str"),
    ],
    ids=["missing-slow", "missing-inner", "missing-count", "extra", "extra-slow",
         "partial-params", "inner-shape", "slow-shape", "inner-dtype", "slow-dtype",
         "slow-list", "count-k", "count-negative", "count-float", "count-bool", "k-zero",
         "k-bool", "k-float", "k-too-small-for-count", "alpha-large", "alpha-nan",
         "alpha-str", "step-float", "name", "name-type"],
)
def test_bad_checkpoint_changes_nothing(mutate, error, message):
    sd = mutate(other_checkpoint())  # count 2 there
    sd_before = copy_mapping(sd)
    opt = stepped_optimizer(steps=4)
    before = snapshot(opt)
    with pytest.raises(error, match=message):
        opt.load_state_dict(sd)
    assert_unchanged(opt, before)
    assert_mapping_unchanged(sd, sd_before)


@pytest.mark.parametrize(
    "source, target, message",
    [
        (lambda: lc.adam(), lambda: lc.sgd(lr=0.1, momentum=0.9), "'adam', but"),
        (lambda: lc.adamw(), lambda: lc.adam(), "'adamw', but"),
        (lambda: lc.sgd(lr=0.1, momentum=0.9), lambda: lc.sgd(lr=0.1), "unexpected keys"),
        (lambda: lc.sgd(lr=0.1), lambda: lc.sgd(lr=0.1, momentum=0.9), "missing keys"),
        (lambda: lc.adam(amsgrad=True), lambda: lc.adam(), "unexpected keys"),
    ],
    ids=["adam-into-sgd", "adamw-into-adam", "momentum-into-plain", "plain-into-momentum",
         "amsgrad-into-adam"],
)
def test_checkpoint_of_another_inner_optimizer_changes_nothing(source, target, message):
    sd = other_checkpoint(source())
    sd_before = copy_mapping(sd)
    opt = stepped_optimizer(target(), steps=4)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)
    assert_unchanged(opt, before)
    assert_mapping_unchanged(sd, sd_before)


def test_checkpoint_for_other_parameters_changes_nothing():
    sd = Lookahead([np.zeros(3)], lc.sgd(lr=0.1, momentum=0.9)).state_dict()
    opt = stepped_optimizer(steps=4)
    before = snapshot(opt)
    with pytest.raises(ValueError, match="missing keys"):
        opt.load_state_dict(sd)
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        opt.load_state_dict([("k", 3)])
    assert_unchanged(opt, before)


# --- slow_weights ------------------------------------------------------------------------


def test_slow_weights_swaps_in_place_and_back():
    opt = stepped_optimizer(steps=4)  # count 1: θ ≠ φ
    theta = [np.array(p, copy=True) for p in opt.params]
    phi = [np.array(s, copy=True) for s in opt.slow]
    assert not same_bits(theta[0], phi[0])
    addresses = [p.__array_interface__["data"][0] for p in opt.params]
    with opt.slow_weights() as swapped:
        assert swapped is opt.params
        assert_all_same_bits(opt.params, phi)  # parameters hold φ ...
        assert_all_same_bits(opt.slow, phi)    # ... and opt.slow still means φ
        sd = opt.state_dict(include_params=True)
        assert_all_same_bits([sd[f"params.{i}"] for i in range(len(theta))], theta)  # buffer: θ
        assert_all_same_bits([sd[f"slow.{i}"] for i in range(len(phi))], phi)
    assert [p.__array_interface__["data"][0] for p in opt.params] == addresses  # in place
    assert_all_same_bits(opt.params, theta)
    assert_all_same_bits(opt.slow, phi)
    assert opt.count == 1


def test_slow_weights_restores_after_an_exception():
    opt = stepped_optimizer(steps=4)
    before = snapshot(opt)
    with pytest.raises(KeyError, match="evaluation failed"):
        with opt.slow_weights():
            raise KeyError("evaluation failed")
    assert_unchanged(opt, before)
    opt.step(make_grads(opt.params, 0))  # usable again
    assert opt.count == 2


def test_mutating_calls_inside_slow_weights_raise_and_change_nothing():
    opt = stepped_optimizer(steps=4)
    sd = opt.state_dict()
    before = snapshot(opt)
    with opt.slow_weights():
        inside = snapshot(opt)
        with pytest.raises(RuntimeError, match="step"):
            opt.step(make_grads(opt.params, 0))
        with pytest.raises(RuntimeError, match="sync"):
            opt.sync()
        with pytest.raises(RuntimeError, match="load_state_dict"):
            opt.load_state_dict(sd)
        with pytest.raises(RuntimeError, match="slow_weights"):
            with opt.slow_weights():
                pass
        assert_unchanged(opt, inside)
    assert_unchanged(opt, before)
