"""The sync cannot overflow where θ and φ are finite, in every implementation.

``θ − φ`` overflows when both are near the largest value of the dtype with
opposite signs (±6e4 in float16, ±3e38 in float32 and bfloat16), though the
interpolated value lies between them. Each implementation of the sync (the
core's `lookahead_core.lerp`, the NumPy adapter's blockwise kernels, the CuPy
kernels and their NumPy reference, the PyTorch adapter's kernels) must give
there the formula on θ/2 and φ/2, doubled (exact scaling at that magnitude),
and must stay bit for bit what it was everywhere else.

Two implementations written here serve as the expectation: `formula` (the
two-sided lerp with the rounding points of the core, NumPy and CuPy) and
`rescaled` (the same on the halves, doubled); exact values come from Python
fractions. PyTorch's lerp rounds once (a fused multiply-add on CPUs that have
one), so its expectation is ``torch.lerp`` itself, and its near-max results
are held to the documented per-sync bound of 2 eps M against the exact lerp.
"""

from __future__ import annotations

import importlib
from fractions import Fraction

import numpy as np
import pytest

import lookahead_core as lc
from lookahead_cupy import _kernels as cupy_kernels
from lookahead_numpy import Lookahead as NumpyLookahead
from lookahead_numpy import blocks

ALPHAS = [0.0, 0.1, 0.25, 0.4999999, 0.5, 0.75, 0.9, 1.0]
NUMPY_DTYPES = ["float16", "float32", "float64"]


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


torch = _optional("torch")
jax = _optional("jax")
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")
needs_jax = pytest.mark.skipif(jax is None, reason="jax not installed")


# --- the expectation -----------------------------------------------------------------------


def formula(phi: np.ndarray, theta: np.ndarray, alpha: float) -> np.ndarray:
    """The two-sided lerp as it stood, in the arrays' dtype: overflows with θ − φ."""
    phi, theta = np.asarray(phi), np.asarray(theta)
    with np.errstate(over="ignore", invalid="ignore"):
        diff = theta - phi
        if alpha < 0.5:
            return np.asarray(phi + alpha * diff)
        return np.asarray(theta - (1.0 - alpha) * diff)


def rescaled(phi: np.ndarray, theta: np.ndarray, alpha: float) -> np.ndarray:
    """`formula` on the halves, doubled: the formula's own result without the overflow."""
    return np.asarray(2.0 * formula(0.5 * np.asarray(phi), 0.5 * np.asarray(theta), alpha))


def expected(phi: np.ndarray, theta: np.ndarray, alpha: float) -> np.ndarray:
    """`formula` where it is finite or an input is not, `rescaled` where θ − φ overflowed."""
    plain = formula(phi, theta, alpha)
    overflowed = ~np.isfinite(plain) & np.isfinite(phi) & np.isfinite(theta)
    return np.where(overflowed, rescaled(phi, theta, alpha), plain)


def exact(phi: float, theta: float, alpha: float) -> Fraction:
    phi, theta = Fraction(float(phi)), Fraction(float(theta))
    return phi + Fraction(alpha) * (theta - phi)


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def exact_pairs(dtype) -> tuple[np.ndarray, np.ndarray]:
    """(φ, θ) with opposite signs whose difference overflows, and two that do not,
    chosen so that at every alpha of `EXACT_ALPHAS` the exact lerp is representable
    and every step of the rescaled formula is exact: the result must equal it."""
    info = np.finfo(dtype)
    big = float(info.max)
    top = 1.5 * 2.0 ** (info.maxexp - 1)  # 1.5 * 2**emax, representable
    phi = np.array([-big, big, -top, top, 1.0, 2.0], dtype=dtype)
    theta = np.array([big, -big, top, -top, -3.0, 6.0], dtype=dtype)
    return phi, theta


EXACT_ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]


def near_max_pairs(rng: np.random.Generator, dtype, n: int = 257) -> tuple[np.ndarray, np.ndarray]:
    """Random (φ, θ) of opposite signs in [M/2, M]: most differences overflow."""
    big = float(np.finfo(dtype).max)
    phi = (rng.uniform(0.5, 1.0, n) * big).astype(dtype)
    theta = -(rng.uniform(0.5, 1.0, n) * big).astype(dtype)
    flip = rng.random(n) < 0.5
    phi[flip], theta[flip] = -phi[flip], -theta[flip]
    return phi, theta


def normal_pairs(rng: np.random.Generator, dtype, n: int = 1031) -> tuple[np.ndarray, np.ndarray]:
    """Random finite values of varied magnitudes, zeros of both signs, subnormals."""
    scale = 10.0 ** rng.integers(-4, 4, size=n)
    phi = (rng.standard_normal(n) * scale).astype(dtype)
    theta = (rng.standard_normal(n) * scale).astype(dtype)
    tiny = np.finfo(dtype).smallest_subnormal
    phi[:6] = np.array([0.0, -0.0, 1.0, tiny, -tiny, 3.0], dtype=dtype)
    theta[:6] = np.array([-0.0, 0.0, -1.0, -tiny, 2 * tiny, -0.0], dtype=dtype)
    return phi, theta


def mixed_pairs(rng: np.random.Generator, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Normal values, overflowing pairs and infinities and NaN, interleaved."""
    phi, theta = normal_pairs(rng, dtype, 300)
    big_phi, big_theta = near_max_pairs(rng, dtype, 300)
    every_third = slice(0, None, 3)
    phi[every_third], theta[every_third] = big_phi[every_third], big_theta[every_third]
    phi[1:20:7], theta[2:20:7] = np.inf, -np.inf
    phi[5:40:11] = np.nan
    return phi, theta


def assert_within_bound(got, phi, theta, alpha, eps) -> None:
    """|got − exact lerp| ≤ 2 eps max(|φ|, |θ|): the per-sync bound (docs: Tolerances)."""
    for g, p, t in zip(np.asarray(got, dtype=np.float64).ravel(),
                       np.asarray(phi, dtype=np.float64).ravel(),
                       np.asarray(theta, dtype=np.float64).ravel()):
        assert np.isfinite(g), (p, t, alpha)
        error = abs(Fraction(float(g)) - exact(p, t, alpha))
        bound = 2 * Fraction(float(eps)) * Fraction(float(max(abs(p), abs(t))))
        assert error <= bound, (g, p, t, alpha)


# --- the core ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", EXACT_ALPHAS)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_core_lerp_near_max_is_the_exact_lerp(dtype, alpha):
    phi, theta = exact_pairs(dtype)
    got = lc.lerp(phi, theta, alpha)
    want = np.array([float(exact(p, t, alpha)) for p, t in zip(phi, theta)]).astype(dtype)
    assert same_bits(got, want)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_core_lerp_repairs_only_the_overflow_and_warns_nothing(dtype, alpha, rng):
    """Random near-max pairs are finite and the rescaled formula; normal values, infinities
    and NaN keep the formula's bits (NumPy's RuntimeWarnings are errors in this suite: an
    inf - inf there would fail the test as it fails the formula, so no inf meets an inf)."""
    phi, theta = near_max_pairs(rng, dtype)
    got = lc.lerp(phi, theta, alpha)
    assert np.all(np.isfinite(got))
    assert same_bits(got, expected(phi, theta, alpha))
    assert_within_bound(got, phi, theta, alpha, np.finfo(dtype).eps)
    phi, theta = normal_pairs(rng, dtype)
    assert same_bits(lc.lerp(phi, theta, alpha), formula(phi, theta, alpha))
    with np.errstate(invalid="ignore"):
        phi, theta = mixed_pairs(rng, dtype)
        assert same_bits(lc.lerp(phi, theta, alpha), expected(phi, theta, alpha))


def test_core_sync_slow_near_max_is_finite(rng):
    phi, theta = near_max_pairs(rng, np.float32)
    new_fast, new_slow = lc.sync_slow([theta], [phi], 0.5)
    assert np.all(np.isfinite(new_slow[0])) and same_bits(new_fast[0], new_slow[0])
    assert same_bits(new_slow[0], expected(phi, theta, 0.5))


def test_core_lerp_other_namespaces(rng):
    """array-api-strict (NumPy underneath) and torch through the generic path."""
    xs = pytest.importorskip("array_api_strict")
    phi, theta = near_max_pairs(rng, np.float32)
    got = lc.lerp(xs.asarray(phi), xs.asarray(theta), 0.3)
    assert same_bits(np.asarray(got), expected(phi, theta, 0.3))
    if torch is not None:
        got = lc.lerp(torch.from_numpy(phi), torch.from_numpy(theta), 0.7)
        assert same_bits(got.numpy(), expected(phi, theta, 0.7))
        phi, theta = normal_pairs(rng, np.float64)
        got = lc.lerp(torch.from_numpy(phi), torch.from_numpy(theta), 0.7)
        assert same_bits(got.numpy(), formula(phi, theta, 0.7))


@needs_jax
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.75, 1.0])
def test_core_lerp_under_jit_repairs_branch_free(alpha, rng):
    """Traced, the values cannot be read: the repair is computed and selected per element."""
    import jax.numpy as jnp

    phi, theta = exact_pairs(np.float32)
    got = np.asarray(jax.jit(lambda p, t: lc.lerp(p, t, alpha))(jnp.asarray(phi), jnp.asarray(theta)))
    assert np.all(np.isfinite(got))
    if alpha in EXACT_ALPHAS:
        want = np.array([float(exact(p, t, alpha)) for p, t in zip(phi, theta)], dtype=np.float32)
        assert same_bits(got, want)


# --- the NumPy adapter ---------------------------------------------------------------------


def _numpy_sync(phi: np.ndarray, theta: np.ndarray, alpha: float, block_bytes: int,
                strided: bool) -> tuple[np.ndarray, np.ndarray]:
    """One sync of the adapter with slow weights φ and fast weights θ; returns (θ, φ) after."""
    if strided:  # every other element of a wider array: the scratch (strided) path
        base = np.empty(2 * theta.size, dtype=theta.dtype)
        param = base[::2]
        param[...] = phi
    else:
        param = phi.copy()
    opt = NumpyLookahead([param], lc.sgd(lr=0.0), k=1, alpha=alpha, block_bytes=block_bytes)
    param[...] = theta  # φ₀ = the φ above; θ moved to the θ above
    assert (opt._pairs[0].fast.flags.c_contiguous) is (not strided)
    opt.sync()
    return np.array(param), np.array(opt.slow[0])


@pytest.mark.parametrize("strided", [False, True], ids=["dense", "strided"])
@pytest.mark.parametrize("block_bytes", [64, blocks.DEFAULT_BLOCK_BYTES])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_numpy_adapter_sync_near_max(dtype, alpha, block_bytes, strided, rng):
    phi, theta = near_max_pairs(rng, dtype)
    fast, slow = _numpy_sync(phi, theta, alpha, block_bytes, strided)
    assert same_bits(slow, expected(phi, theta, alpha)) and same_bits(fast, slow)
    assert np.all(np.isfinite(slow))


@pytest.mark.parametrize("alpha", EXACT_ALPHAS)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_numpy_adapter_sync_near_max_is_the_exact_lerp(dtype, alpha):
    phi, theta = exact_pairs(dtype)
    want = np.array([float(exact(p, t, alpha)) for p, t in zip(phi, theta)]).astype(dtype)
    for strided in (False, True):
        fast, slow = _numpy_sync(phi, theta, alpha, 64, strided)
        assert same_bits(slow, want) and same_bits(fast, want)


@pytest.mark.parametrize("strided", [False, True], ids=["dense", "strided"])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_numpy_adapter_sync_keeps_the_formula_elsewhere(dtype, alpha, strided, rng):
    phi, theta = normal_pairs(rng, dtype)
    fast, slow = _numpy_sync(phi, theta, alpha, 256, strided)
    assert same_bits(slow, formula(phi, theta, alpha)) and same_bits(fast, slow)
    with np.errstate(invalid="ignore"):
        phi, theta = mixed_pairs(rng, dtype)
        fast, slow = _numpy_sync(phi, theta, alpha, 256, strided)
    assert same_bits(slow, expected(phi, theta, alpha)) and same_bits(fast, slow)


def test_numpy_kernels_without_the_overflow_flag(monkeypatch, rng):
    """Where NumPy cannot see the processor's overflow flag, a sum per block finds it."""
    monkeypatch.setattr(blocks, "_FLAGS_WORK", False)
    with np.errstate(invalid="ignore"):
        phi, theta = mixed_pairs(rng, np.float32)
        fast, slow = _numpy_sync(phi, theta, 0.75, 256, strided=False)
    assert same_bits(slow, expected(phi, theta, 0.75))
    assert blocks._overflow_flag_raises()  # this machine does see it


def test_numpy_rollback_does_not_loop_on_a_near_max_sync(rng):
    """Before the repair the sync made φ = inf, and every later sync rolled back to it."""
    big = np.finfo(np.float32).max
    param = np.full(8, -big, dtype=np.float32)
    opt = NumpyLookahead([param], lc.sgd(lr=0.0), k=1, alpha=0.5, nonfinite="rollback")
    param[...] = big
    for _ in range(3):
        opt.step([np.zeros(8, dtype=np.float32)])
    assert opt.rollbacks == 0
    assert np.all(np.isfinite(param)) and np.all(param == 0.0)


# --- the CuPy kernels (NumPy reference, host-compiled source; device when present) --------


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cupy_reference_near_max(dtype, alpha, rng):
    """(float16 is computed in float32, where its difference cannot overflow.)"""
    phi, theta = near_max_pairs(rng, dtype)
    got = cupy_kernels.reference_sync(theta, phi, alpha)
    assert same_bits(got, expected(phi, theta, alpha))
    phi, theta = exact_pairs(dtype)
    if alpha in EXACT_ALPHAS:
        want = np.array([float(exact(p, t, alpha)) for p, t in zip(phi, theta)]).astype(dtype)
        assert same_bits(cupy_kernels.reference_sync(theta, phi, alpha), want)


def test_cupy_kernel_source_has_the_repair_for_wide_dtypes_only():
    for dtype in ("float32", "float64"):
        assert "lookahead_s.bits" in cupy_kernels.sync_operation(dtype)
        assert "lookahead_s.bits" in cupy_kernels.multi_tensor_body(dtype)
    assert cupy_kernels.repair_overflow("float16", "t", "p", "s") == ""


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """The CuPy kernels' source compiled for the host (tests/test_cupy_kernels.py's harness)."""
    harness = importlib.import_module("test_cupy_kernels")
    return harness.host_kernels.__wrapped__(tmp_path_factory)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cupy_kernel_source_near_max_matches_reference(host_kernels, dtype, alpha, rng):
    with np.errstate(invalid="ignore"):
        phi, theta = mixed_pairs(rng, dtype)
    want = expected(phi, theta, alpha)
    assert same_bits(cupy_kernels.reference_sync(theta, phi, alpha), want)
    t, p = theta.copy(), phi.copy()
    host_kernels[dtype].elementwise_sync(t, p, alpha)
    assert same_bits(p, want) and same_bits(t, want)
    t, p = [theta[:100].copy(), theta[100:].copy()], [phi[:100].copy(), phi[100:].copy()]
    host_kernels[dtype].multi_sync(t, p, alpha, 64, 32)
    assert same_bits(np.concatenate(p), want) and same_bits(np.concatenate(t), want)


def _cupy_device():
    import lookahead_cupy

    reason = lookahead_cupy.skip_reason()
    if reason is not None:
        pytest.skip(f"the CuPy kernels on a device need one: {reason}")
    return importlib.import_module("cupy")


@pytest.mark.parametrize("kernel", ["elementwise", "multi_tensor"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cupy_adapter_on_device_near_max(dtype, kernel, rng):
    cupy = _cupy_device()
    from lookahead_cupy import Lookahead as CupyLookahead

    with np.errstate(invalid="ignore"):
        phi, theta = mixed_pairs(rng, dtype)
    param = cupy.asarray(phi)
    opt = CupyLookahead([param], lc.sgd(lr=0.0), k=1, alpha=0.3, kernel=kernel)
    param[...] = cupy.asarray(theta)
    opt.sync()
    assert same_bits(cupy.asnumpy(opt.slow[0]), expected(phi, theta, 0.3))
    assert same_bits(cupy.asnumpy(param), expected(phi, theta, 0.3))


# --- the PyTorch adapter -------------------------------------------------------------------

TORCH_DTYPES = ["float32", "float64", "bfloat16"]


def _torch_near_max(rng, dtype_name: str, n: int = 3 * 4096 + 5):
    dtype = getattr(torch, dtype_name)
    big = float(torch.finfo(dtype).max)
    phi = torch.tensor(rng.uniform(0.5, 1.0, n) * big, dtype=torch.float64)
    theta = -torch.tensor(rng.uniform(0.5, 1.0, n) * big, dtype=torch.float64)
    flip = torch.from_numpy(rng.random(n) < 0.5)
    phi[flip], theta[flip] = -phi[flip], -theta[flip]
    return phi.to(dtype).clamp(-big, big), theta.to(dtype).clamp(-big, big)


def _torch_bits(t) -> bytes:
    t = t.detach().contiguous()
    return t.view(getattr(torch, f"int{8 * t.element_size()}")).numpy().tobytes()


def _torch_assert_near_max(theta0, phi0, fast, slow, alpha) -> None:
    assert _torch_bits(fast) == _torch_bits(slow)
    assert bool(torch.isfinite(slow).all())
    eps = torch.finfo(slow.dtype).eps
    assert_within_bound(slow.double().numpy(), phi0.double().numpy(), theta0.double().numpy(),
                        alpha, eps)


@needs_torch
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype_name", TORCH_DTYPES)
def test_torch_kernels_near_max(dtype_name, alpha, rng):
    from lookahead_torch import _kernels

    phi0, theta0 = _torch_near_max(rng, dtype_name)
    block = 1024  # several pieces, several batches
    for run in ("blocked", "default"):
        fast, slow = theta0.clone(), phi0.clone()
        if run == "blocked":
            _kernels.lerp_and_copy_blocked([fast], [slow], alpha, block)
        else:
            _kernels.lerp_and_copy_([fast], [slow], alpha)
        _torch_assert_near_max(theta0, phi0, fast, slow, alpha)


@needs_torch
@pytest.mark.parametrize("alpha", EXACT_ALPHAS)
@pytest.mark.parametrize("dtype_name", TORCH_DTYPES)
def test_torch_kernels_near_max_is_the_exact_lerp(dtype_name, alpha):
    from lookahead_torch import _kernels

    if dtype_name == "bfloat16":  # the pairs of bfloat16's own range, exactly representable
        big, top = float(torch.finfo(torch.bfloat16).max), 1.5 * 2.0 ** 127
        phi0 = torch.tensor([-big, big, -top, top], dtype=torch.bfloat16)
        theta0 = torch.tensor([big, -big, top, -top], dtype=torch.bfloat16)
    else:
        phi, theta = exact_pairs(getattr(np, dtype_name))
        phi0, theta0 = torch.from_numpy(phi), torch.from_numpy(theta)
    want = torch.tensor([float(exact(float(p), float(t), alpha)) for p, t in zip(phi0, theta0)],
                        dtype=torch.float64).to(phi0.dtype)
    fast, slow = theta0.clone(), phi0.clone()
    _kernels.lerp_and_copy_([fast], [slow], alpha)
    assert _torch_bits(slow) == _torch_bits(want) and _torch_bits(fast) == _torch_bits(want)


@needs_torch
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype_name", TORCH_DTYPES)
def test_torch_kernels_keep_torch_lerp_elsewhere(dtype_name, alpha, rng):
    """Normal values, and normal values in the same tensors as overflowing pairs and
    infinities: torch.lerp's bits wherever the difference does not overflow."""
    from lookahead_torch import _kernels

    dtype = getattr(torch, dtype_name)
    for mixed in (False, True):
        phi, theta = normal_pairs(rng, np.float64)
        phi0, theta0 = torch.from_numpy(phi).to(dtype), torch.from_numpy(theta).to(dtype)
        if mixed:  # every third pair near the maximum, some infinities and NaN
            big_phi, big_theta = _torch_near_max(rng, dtype_name, phi0.numel())
            phi0[::3], theta0[::3] = big_phi[::3], big_theta[::3]
            phi0[1:20:7], theta0[2:20:7] = float("inf"), float("-inf")
            phi0[5:40:11] = float("nan")
        reference = phi0.clone()
        torch._foreach_lerp_([reference], [theta0], alpha)  # today's kernel, unblocked
        fast, slow = theta0.clone(), phi0.clone()
        _kernels.lerp_and_copy_([fast], [slow], alpha)
        overflowed = ~torch.isfinite(reference) & torch.isfinite(phi0) & torch.isfinite(theta0)
        kept = ~overflowed
        assert _torch_bits(slow[kept]) == _torch_bits(reference[kept])
        assert _torch_bits(fast) == _torch_bits(slow)
        assert bool(torch.isfinite(slow[overflowed]).all())


@needs_torch
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_torch_upcast_sync_near_max(alpha, rng):
    """bfloat16 parameters with a float32 slow copy: the lerp runs in float32."""
    from lookahead_torch import _kernels

    phi_bf, theta0 = _torch_near_max(rng, "bfloat16")
    phi0 = phi_bf.float()
    phi0[::2] *= 0.9961  # slow values no bfloat16 holds (and within its range)
    for layout in ("dense", "strided"):
        fast, slow = theta0.clone(), phi0.clone()
        if layout == "strided":
            fast = torch.stack([theta0, theta0], 1)[:, 0]
            slow = torch.stack([phi0, phi0], 1)[:, 1]
        scratch = _kernels.make_scratch([fast], [slow])
        _kernels.lerp_and_copy_([fast], [slow], alpha, scratch)
        assert bool(torch.isfinite(slow).all()) and bool(torch.isfinite(fast).all())
        assert _torch_bits(fast) == _torch_bits(slow.to(torch.bfloat16))
        assert_within_bound(slow.double().numpy(), phi0.double().numpy(),
                            theta0.double().numpy(), alpha, torch.finfo(torch.float32).eps)


@needs_torch
def test_torch_margin_says_which_pairs_can_overflow():
    from lookahead_torch._kernels import overflow_margin

    f32, f64, bf16, f16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
    assert overflow_margin(f32, f32) == 2.0 ** 103  # half an ulp of float32's largest value
    assert overflow_margin(f64, f64) == 2.0 ** 970
    assert overflow_margin(bf16, bf16) == overflow_margin(bf16, f32) == 2.0 ** 120 - 2.0 ** 103
    assert overflow_margin(f16, f16) is None and overflow_margin(f16, f32) is None
    assert overflow_margin(f32, f64) is None


@needs_torch
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_torch_rollback_does_not_loop_on_a_near_max_sync(dtype_name):
    from lookahead_torch import Lookahead as TorchLookahead

    dtype = getattr(torch, dtype_name)
    big = float(torch.finfo(dtype).max)
    param = torch.nn.Parameter(torch.full((8,), -big, dtype=dtype))
    # lr > 0: a step with lr = 0, zero gradients and no state yet is not counted (torch's
    # distributed checkpoint helpers initialize an optimizer that way); the gradients are zero.
    opt = TorchLookahead(torch.optim.SGD([param], lr=0.1), k=1, alpha=0.5, nonfinite="rollback")
    with torch.no_grad():
        param.fill_(big)
    for _ in range(3):
        param.grad = torch.zeros_like(param)
        opt.step()
    assert opt.rollbacks == 0
    assert bool((param == 0).all()) and bool((opt.slow[0][0] == 0).all())
