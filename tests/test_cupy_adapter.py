"""Tests of ``lookahead_cupy.Lookahead`` on a CUDA device.

Every test here needs a GPU and is skipped elsewhere with the reason
"no CUDA device" (or "cupy not installed"); ``bash benchmarks/gpu_check.sh``
runs them on a GPU machine and fails if any is skipped for that reason.

Expected values come from the specification run on the same device
(`lookahead_core.lookahead` on CuPy arrays: float32 and float64 trajectories
must be equal bit for bit, since the kernels do the core's operations in the
core's order with no fused multiply-add; they contain no subnormals, which
CuPy's own float32 kernels flush to zero and the sync keeps), from
`lookahead_cupy.reference_sync` (NumPy: the kernels' arithmetic, float16,
subnormals, infinities and NaN included) and from the paper's schedule worked
by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import lookahead_core as lc
import lookahead_cupy
from lookahead_cupy import Lookahead, flatten, reference_sync

REASON = lookahead_cupy.skip_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "a CUDA device is present")

KERNELS = ("auto", "elementwise", "multi_tensor")
INNERS = {
    "sgd": lambda: lc.sgd(lr=0.05),
    "momentum": lambda: lc.sgd(lr=0.05, momentum=0.9),
    "nesterov": lambda: lc.sgd(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam": lambda: lc.adam(lr=1e-2),
}


@pytest.fixture
def cp():
    import cupy

    return cupy


def host(array: Any) -> np.ndarray:
    import cupy

    return cupy.asnumpy(array)


def same_bits(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Bits equal, except that any NaN equals any NaN (payloads differ between CPU and GPU)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b)) and same_bits(a[~nan], b[~nan]))


def disjoint_bytes(a: Any, b: Any) -> bool:
    """Whether no byte of ``a`` is a byte of ``b``, from their pointers, shapes and strides.

    Exact where ``cupy.shares_memory`` is not: CuPy 14 takes any two 0-d arrays
    for sharing memory (its kernel reads the address of a thread-local copy
    of a 0-d array's element; see ``lookahead_cupy._checks.shares_memory``).
    Disjoint byte ranges are more than not sharing an element, and what
    separate allocations give.
    """
    if a.size == 0 or b.size == 0:
        return True

    def byte_range(array: Any) -> tuple[int, int]:
        spans = [(length - 1) * stride for length, stride in zip(array.shape, array.strides)]
        low = array.data.ptr + sum(span for span in spans if span < 0)
        high = array.data.ptr + sum(span for span in spans if span > 0) + array.itemsize
        return low, high

    (a_low, a_high), (b_low, b_high) = byte_range(a), byte_range(b)
    return a_high <= b_low or b_high <= a_low


def device_params(cp: Any, rng: np.random.Generator, dtype: str) -> list[Any]:
    """Every layout the adapter handles: C- and F-contiguous, strided, reversed, 0-d, empty."""
    def normal(*shape):
        return cp.asarray(rng.standard_normal(shape).astype(dtype))

    return [
        normal(5, 7),                          # C-contiguous
        cp.asfortranarray(normal(6, 3)),       # F-contiguous: dense in another order
        normal(8, 9)[::2, 1::3],               # strided view: not dense
        normal(11)[::-1],                      # reversed view: not dense
        normal(),                              # 0-d
        cp.zeros((0, 4), dtype=dtype),         # empty
        normal(2, 3, 4).transpose(2, 0, 1),    # a permutation of a dense array
        normal(4099),                          # more than one chunk of the multi-tensor kernel
    ]


def random_grads(cp: Any, rng: np.random.Generator, params: list[Any]) -> list[Any]:
    return [cp.asarray(rng.standard_normal(p.shape).astype(p.dtype.name)) for p in params]


def assert_same_as_core(params: list[Any], opt: Any, core_params: Any, state: Any,
                        step: int) -> None:
    """θ and φ of the adapter equal the core's bit for bit after ``step`` steps."""
    for i, (ours, theirs) in enumerate(zip(params, core_params)):
        assert same_bits(host(ours), host(theirs)), f"fast[{i}] after step {step}"
    for i, (ours, theirs) in enumerate(zip(opt.slow, state.slow)):
        assert same_bits(host(ours), host(theirs)), f"slow[{i}] after step {step}"


# --- the specification, bit for bit ---------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 0.7])
@pytest.mark.parametrize("inner_name", sorted(INNERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_trajectory_equals_core_on_cupy_bit_for_bit(cp, rng, kernel, dtype, inner_name, alpha):
    params = device_params(cp, rng, dtype)
    core_params = [cp.array(p, copy=True) for p in params]
    opt = Lookahead(params, INNERS[inner_name](), k=3, alpha=alpha, kernel=kernel)
    spec = lc.lookahead(INNERS[inner_name](), k=3, alpha=alpha)
    state = spec.init(core_params)
    for step in range(1, 9):  # two syncs and two steps after
        grads = random_grads(cp, rng, params)
        opt.step(grads)
        core_params, state = spec.step(core_params, grads, state)
        assert_same_as_core(params, opt, core_params, state, step)
        assert opt.count == step % 3


@pytest.mark.parametrize("kernel", KERNELS)
def test_paper_schedule_k3_alpha_half_ends_at_three(cp, kernel):
    """θ ← θ + 1 per step from 0, k = 3, α = 0.5: six steps end at θ = φ = 3 (docs/peers.md)."""
    params = [cp.zeros(3), cp.zeros((2, 2), dtype=cp.float32)]
    opt = Lookahead(params, lc.sgd(lr=1.0), k=3, alpha=0.5, kernel=kernel)
    expected_fast = [1, 2, 1.5, 2.5, 3.5, 3]
    expected_slow = [0, 0, 1.5, 1.5, 1.5, 3]
    for fast, slow in zip(expected_fast, expected_slow):
        opt.step([-cp.ones(3), -cp.ones((2, 2), dtype=cp.float32)])
        for p, s in zip(params, opt.slow):
            assert np.all(host(p) == fast) and np.all(host(s) == slow)


# --- the kernels against the NumPy reference (float16 included) ------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_sync_kernels_equal_the_reference(cp, rng, kernel, dtype, alpha):
    params = device_params(cp, rng, dtype)
    opt = Lookahead(params, lc.sgd(lr=0.25), k=1000, alpha=alpha, kernel=kernel)
    for _ in range(3):
        opt.step(random_grads(cp, rng, params))
    theta0 = [host(p) for p in params]
    phi0 = [host(s) for s in opt.slow]
    opt.sync()
    for i, (t0, p0) in enumerate(zip(theta0, phi0)):
        expected = reference_sync(t0, p0, alpha)
        assert same_values(host(opt.slow[i]), expected), f"slow[{i}]"
        assert same_values(host(params[i]), expected), f"params[{i}]"


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_special_values_follow_the_reference(cp, kernel, dtype):
    """±0, subnormals, the largest finite values, ±inf and NaN: no flush to zero, the
    same overflow and NaN propagation as NumPy."""
    info = np.finfo(dtype)
    values = np.array([0.0, -0.0, info.smallest_subnormal, -info.smallest_subnormal,
                       info.tiny, info.max, -info.max, np.inf, -np.inf, np.nan, 1.0, -3.0],
                      dtype=dtype)
    theta0 = np.concatenate([values, np.roll(values, 3), values[::-1]])
    phi0 = np.concatenate([np.roll(values, 5), values, values])
    for alpha in (0.25, 0.75):
        theta = cp.asarray(theta0)
        other = cp.asarray(phi0[:7])  # a second tensor: the multi-tensor path
        opt = Lookahead([theta, other], lc.sgd(lr=0.0), k=1000, alpha=alpha, kernel=kernel)
        opt.load_state_dict({**opt.state_dict(), "slow.0": phi0, "slow.1": theta0[:7]})
        opt.sync()
        expected = reference_sync(theta0, phi0, alpha)
        assert same_values(host(theta), expected) and same_values(host(opt.slow[0]), expected)
        assert same_values(host(other), reference_sync(phi0[:7], theta0[:7], alpha))


# --- layouts and launches --------------------------------------------------------------------


def test_slow_weights_mirror_each_parameters_layout(cp, rng):
    params = device_params(cp, rng, "float32")
    opt = Lookahead(params, lc.sgd(), kernel="auto")
    for p, s in zip(params, opt.slow):
        assert s.shape == p.shape and s.dtype == p.dtype and s.device == p.device
        assert same_bits(host(s), host(p))  # φ₀ = θ₀
        assert disjoint_bytes(p, s)
    assert opt.slow[1].flags.f_contiguous  # an F-ordered parameter gets an F-ordered φ
    assert opt.slow_nbytes == sum(p.nbytes for p in params)


def test_launch_counts_per_kernel_mode(cp, rng):
    params = device_params(cp, rng, "float32")  # 5 dense non-empty, 2 strided, 1 empty
    assert Lookahead(params, lc.sgd(), kernel="elementwise").sync_launches == 5 + 2
    assert Lookahead(params, lc.sgd(), kernel="multi_tensor").sync_launches == 1 + 2
    assert Lookahead(params, lc.sgd(), kernel="auto").sync_launches == 1 + 2


def test_flat_buffer_views_sync_in_one_launch_per_dtype(cp, rng):
    arrays = [cp.asarray(rng.standard_normal(s).astype(d))
              for s, d in [((3, 4), "float32"), ((5,), "float64"), ((7, 2), "float32"),
                           ((), "float32"), ((9,), "float64")]]
    flat = flatten(arrays)
    assert set(flat.buffers) == {"float32", "float64"}
    assert flat.buffers["float32"].size == 12 + 14 + 1
    for view, array in zip(flat.views, arrays):
        assert view.shape == array.shape and view.dtype == array.dtype
        assert same_bits(host(view), host(array)) and disjoint_bytes(view, array)
    for kernel in KERNELS:
        fresh = flatten(arrays)
        opt = Lookahead(list(fresh.views), lc.sgd(lr=0.1), k=2, alpha=0.4, kernel=kernel)
        assert opt.sync_launches == 2, kernel
        separate = [cp.array(a, copy=True) for a in arrays]
        reference = Lookahead(separate, lc.sgd(lr=0.1), k=2, alpha=0.4, kernel="elementwise")
        for _ in range(5):
            grads = random_grads(cp, rng, separate)
            opt.step(grads)
            reference.step(grads)
        for a, b in zip(fresh.views, separate):
            assert same_bits(host(a), host(b))
        for a, b in zip(opt.slow, reference.slow):
            assert same_bits(host(a), host(b))


def test_flat_buffers_themselves_as_parameters(cp, rng):
    """The fastest form: the buffers are the parameters, so the inner step runs once per dtype."""
    # Quarters: every operation below is exact, so the expectation is too.
    arrays = [cp.asarray((rng.integers(-8, 8, size=s) / 4).astype("float32")) for s in [(3, 4), (5,)]]
    flat = flatten(arrays)
    buffers = list(flat.buffers.values())
    opt = Lookahead(buffers, lc.sgd(lr=0.5), k=1, alpha=0.5)
    assert opt.sync_launches == 1
    opt.step([cp.ones_like(b) for b in buffers])  # θ − 0.5, then halfway back: θ − 0.25
    for view, array in zip(flat.views, arrays):
        assert np.array_equal(host(view), host(array) - np.float32(0.25))


# --- the swap context, checkpoints, memory -------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_slow_weights_swaps_in_place_and_back(cp, rng, kernel):
    params = device_params(cp, rng, "float32")
    opt = Lookahead(params, lc.sgd(lr=0.1), k=4, alpha=0.5, kernel=kernel)
    for _ in range(5):
        opt.step(random_grads(cp, rng, params))  # count 1: θ ≠ φ
    theta = [host(p) for p in params]
    phi = [host(s) for s in opt.slow]
    with opt.slow_weights() as inside:
        assert inside is opt.params
        assert all(same_bits(host(p), f) for p, f in zip(params, phi))
        with pytest.raises(RuntimeError, match="step"):
            opt.step(random_grads(cp, rng, params))
    assert all(same_bits(host(p), t) for p, t in zip(params, theta))
    assert all(same_bits(host(s), f) for s, f in zip(opt.slow, phi))
    with pytest.raises(KeyError), opt.slow_weights():
        raise KeyError("evaluation failed")
    assert all(same_bits(host(p), t) for p, t in zip(params, theta))


@pytest.mark.parametrize("n", [0, 3, 4])
@pytest.mark.parametrize("inner_name", ["momentum", "adam"])
def test_round_trip_through_npz_is_bit_exact(cp, rng, tmp_path, inner_name, n):
    host_params = [rng.standard_normal(s).astype("float32") for s in [(4, 3), (7,)]]
    grads = [[rng.standard_normal(p.shape).astype("float32") for p in host_params]
             for _ in range(2 * n + 3)]
    straight_params = [cp.asarray(p) for p in host_params]
    straight = Lookahead(straight_params, INNERS[inner_name](), k=4, alpha=0.6)
    for g in grads:
        straight.step([cp.asarray(x) for x in g])
    first_params = [cp.asarray(p) for p in host_params]
    first = Lookahead(first_params, INNERS[inner_name](), k=4, alpha=0.6)
    for g in grads[:n]:
        first.step([cp.asarray(x) for x in g])
    np.savez(tmp_path / "ckpt.npz", **first.state_dict(include_params=True))
    resumed_params = [cp.zeros_like(p) for p in first_params]
    resumed = Lookahead(resumed_params, INNERS[inner_name](), k=4, alpha=0.6)
    with np.load(tmp_path / "ckpt.npz") as archive:
        resumed.load_state_dict(archive)
    for g in grads[n:]:
        resumed.step([cp.asarray(x) for x in g])
    for a, b in zip(resumed_params, straight_params):
        assert same_bits(host(a), host(b))
    for a, b in zip(resumed.slow, straight.slow):
        assert same_bits(host(a), host(b))


# --- adaptive α (Proposition 1, eq. 0.3) ---------------------------------------------------


def quadratic_grads(cp: Any, rng: np.random.Generator, params: list[Any], curvature: list[Any],
                    noise: float) -> list[Any]:
    """∇ of Σ ½ c (x − 1)² per parameter, plus Gaussian noise: a secant α* inside (0, 1)."""
    return [c * (p - 1.0) + noise * cp.asarray(rng.standard_normal(p.shape).astype(p.dtype.name))
            for p, c in zip(params, curvature)]


@pytest.mark.parametrize("inner_name", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_adaptive_trajectory_equals_core_on_cupy_bit_for_bit(cp, rng, kernel, inner_name):
    params = device_params(cp, rng, "float64")
    curvature = [cp.asarray(rng.uniform(0.5, 4.0, p.shape)) for p in params]
    core_params = [cp.array(p, copy=True) for p in params]
    opt = Lookahead(params, INNERS[inner_name](), k=3, alpha=0.5, alpha_mode="adaptive",
                    kernel=kernel)
    spec = lc.lookahead(INNERS[inner_name](), k=3, alpha=0.5, alpha_mode="adaptive")
    state = spec.init(core_params)
    alphas = []
    for step in range(1, 11):  # two cycles of k + 1 calls, and two steps into the third
        grads = quadratic_grads(cp, rng, params, curvature, noise=0.1)
        opt.step(grads)
        core_params, state = spec.step(core_params, grads, state)
        assert_same_as_core(params, opt, core_params, state, step)
        assert opt.count == state.count
        assert opt.last_alpha == state.last_alpha
        if step % 4 == 0:
            alphas.append(opt.last_alpha)
    assert len(alphas) == 2 and all(0.1 <= a <= 1.0 for a in alphas)


@pytest.mark.parametrize("pending", [False, True])
def test_adaptive_round_trip_through_npz_is_bit_exact(cp, rng, tmp_path, pending):
    host_params = [rng.standard_normal(s) for s in [(4, 3), (7,)]]
    curvature = [cp.asarray(rng.uniform(0.5, 4.0, p.shape)) for p in host_params]
    n = 2 * 4 + (3 if pending else 1)  # pending: count == k, the estimate-and-sync call is due

    def make(values):
        params = [cp.asarray(v) for v in values]
        return params, Lookahead(params, lc.adam(lr=0.05), k=3, alpha=0.5, alpha_mode="adaptive")

    grad_rng = np.random.default_rng(7)
    straight_params, straight = make(host_params)
    for _ in range(2 * n):
        straight.step(quadratic_grads(cp, grad_rng, straight_params, curvature, noise=0.1))
    grad_rng = np.random.default_rng(7)
    first_params, first = make(host_params)
    for _ in range(n):
        first.step(quadratic_grads(cp, grad_rng, first_params, curvature, noise=0.1))
    assert (first.count == 3) is pending
    np.savez(tmp_path / "ckpt.npz", **first.state_dict(include_params=True))
    resumed_params, resumed = make([np.zeros_like(p) for p in host_params])
    with np.load(tmp_path / "ckpt.npz") as archive:
        resumed.load_state_dict(archive)
    assert resumed.count == first.count and resumed.last_alpha == first.last_alpha
    for _ in range(n):
        resumed.step(quadratic_grads(cp, grad_rng, resumed_params, curvature, noise=0.1))
    for a, b in zip(resumed_params, straight_params):
        assert same_bits(host(a), host(b))
    for a, b in zip(resumed.slow, straight.slow):
        assert same_bits(host(a), host(b))


def test_state_dict_is_numpy_and_load_accepts_cupy_arrays(cp, rng):
    params = [cp.asarray(rng.standard_normal((3, 2))), cp.asarray(rng.standard_normal(4))]
    opt = Lookahead(params, lc.adam(lr=0.01), k=3, alpha=0.5)
    opt.step(random_grads(cp, rng, params))
    sd = opt.state_dict()
    arrays = {k: v for k, v in sd.items() if isinstance(v, np.ndarray)}
    assert set(arrays) >= {"slow.0", "slow.1", "inner.exp_avg.0", "inner.exp_avg_sq.1"}
    assert not any(isinstance(v, cp.ndarray) for v in sd.values())
    other = Lookahead([cp.zeros((3, 2)), cp.zeros(4)], lc.adam(lr=0.01), k=3, alpha=0.5)
    other.load_state_dict({k: cp.asarray(v) if isinstance(v, np.ndarray) else v
                           for k, v in sd.items()})
    assert other.count == 1
    for a, b in zip(other.slow, opt.slow):
        assert same_bits(host(a), host(b))
    assert same_bits(host(other.inner_state.exp_avg[0]), host(opt.inner_state.exp_avg[0]))


def test_bad_checkpoint_changes_nothing(cp, rng):
    params = [cp.asarray(rng.standard_normal((3, 2))), cp.asarray(rng.standard_normal(4))]
    opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=3, alpha=0.5)
    opt.step(random_grads(cp, rng, params))
    good = opt.state_dict(include_params=True)
    before = (opt.state_dict(include_params=True), opt.count)
    for key, bad, error in [("slow.1", np.zeros(5), ValueError),
                            ("inner.momentum_buffer.0", np.zeros((3, 2), np.float32), TypeError),
                            ("count", 3, ValueError)]:
        with pytest.raises(error):
            opt.load_state_dict({**good, key: bad})
        after = opt.state_dict(include_params=True)
        assert after.keys() == before[0].keys()
        for k, v in before[0].items():
            assert same_bits(after[k], v) if isinstance(v, np.ndarray) else after[k] == v
        assert opt.count == before[1]


@pytest.mark.parametrize("kernel", KERNELS)
def test_sync_and_swap_allocate_no_device_memory(cp, rng, kernel):
    params = device_params(cp, rng, "float32")
    opt = Lookahead(params, lc.sgd(lr=0.1), k=2, alpha=0.5, kernel=kernel)
    opt.sync()  # compiles the kernels
    with opt.slow_weights():
        pass
    pool = cp.get_default_memory_pool()
    cp.cuda.Device().synchronize()
    before = pool.used_bytes()
    for _ in range(3):
        opt.sync()
        with opt.slow_weights():
            pass
    cp.cuda.Device().synchronize()
    assert pool.used_bytes() == before


# --- bad input ------------------------------------------------------------------------------


def test_memory_sharing_parameters_are_rejected(cp):
    base = cp.zeros(10)
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        Lookahead([base[:6], base[4:]], lc.sgd())
    with pytest.raises(ValueError, match="overlap itself"):
        Lookahead([cp.lib.stride_tricks.as_strided(cp.zeros(3), shape=(4, 3), strides=(0, 8))],
                  lc.sgd())
    interleaved = Lookahead([base[::2], base[1::2]], lc.sgd(lr=1.0), k=1, alpha=1.0)
    interleaved.step([cp.ones(5), -cp.ones(5)])
    assert np.array_equal(host(base), np.tile([-1.0, 1.0], 5))


def test_memory_sharing_is_exact_for_0d_arrays(cp):
    """``cupy.shares_memory`` (CuPy 14) says any two 0-d arrays share memory and a 0-d
    view shares none with the array it views; the adapter's test is exact, so a 0-d
    view of another parameter is rejected and separate 0-d arrays are not."""
    from lookahead_cupy._checks import shares_memory

    base = cp.zeros(3)
    assert shares_memory(base, base[1]) and shares_memory(base[1], base)
    assert shares_memory(base[1], base[1:2].reshape(()))
    assert not shares_memory(base[0], base[1])
    assert not shares_memory(base[::2], base[1::2])
    assert not shares_memory(cp.zeros(()), cp.zeros(()))
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        Lookahead([base, base[1]], lc.sgd())
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        Lookahead([base[1], base[1:2].reshape(())], lc.sgd())
    scalars = [cp.zeros(()), cp.zeros(())]
    opt = Lookahead(scalars, lc.sgd(lr=1.0), k=1, alpha=0.5)
    opt.step([cp.ones(()), -cp.ones(())])
    assert host(scalars[0]) == -0.5 and host(scalars[1]) == 0.5
    assert all(disjoint_bytes(p, s) for p in scalars for s in opt.slow)


def test_mixed_libraries_and_bad_grads_are_rejected_and_change_nothing(cp, rng):
    with pytest.raises(TypeError, match="one array library"):
        Lookahead([cp.zeros(3), np.zeros(3)], lc.sgd())
    params = [cp.asarray(rng.standard_normal(3)), cp.asarray(rng.standard_normal((2, 2)))]
    opt = Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=2, alpha=0.5)
    opt.step(random_grads(cp, rng, params))
    before = [host(p) for p in params] + [host(s) for s in opt.slow]
    for bad in ([cp.ones(3)], [cp.ones(4), cp.ones((2, 2))],
                [cp.ones(3), cp.ones((2, 2), dtype=cp.float32)], [np.ones(3), np.ones((2, 2))]):
        with pytest.raises((TypeError, ValueError)):
            opt.step(bad)
        after = [host(p) for p in params] + [host(s) for s in opt.slow]
        assert all(same_bits(a, b) for a, b in zip(after, before))
    assert opt.count == 1


# --- the conformance kit on every kernel mode ----------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_conformance_checks_pass(kernel):
    from lookahead_conformance import CHECKS, run_check
    from lookahead_cupy._conformance import CupyBackend

    backend = CupyBackend(f"cupy-{kernel}", kernel)
    assert backend.skip_reason() is None
    for name in CHECKS:
        result = run_check(name, backend)
        status = getattr(result, "status", "pass" if result.passed else "fail")
        assert status != "fail", f"{name}: {result.detail}"
        if name in ("memory", "dtype_shape_device", "eq01_closed_form", "round_trip"):
            assert status == "pass", f"{name}: {result.detail}"
