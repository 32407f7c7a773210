"""Plain helper functions for the tests of ``lookahead_core`` (no fixtures here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy of ``x`` (any of the tested libraries), same dtype and shape."""
    if isinstance(x, (np.ndarray, np.generic)):
        # np.generic: NumPy turns the result of 0-d arithmetic into a scalar
        return np.array(x, copy=True)
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy().copy()
    # array-api-strict and JAX (CPU) both export through DLPack.
    return np.array(np.from_dlpack(x), copy=True)


def asarray(xp: Any, values: Any, dtype: str = "float64") -> Any:
    """``values`` (anything NumPy reads) as a fresh array of namespace ``xp``.

    ``dtype`` is a dtype name (``"float32"``, ``"float64"``, ...). The result
    never shares memory with ``values``.
    """
    a = np.array(values, dtype=np.dtype(dtype), copy=True)
    return xp.asarray(a, dtype=getattr(xp, dtype), copy=True)


def bits(x: Any) -> bytes:
    """The raw bytes of ``x``: equal bits means bit-identical arrays (signed zeros too).

    A torch tensor on the ``meta`` device has no data: its dtype and shape stand in.
    """
    if array_api_compat.is_torch_array(x) and x.device.type == "meta":
        return repr(("meta", x.dtype, tuple(x.shape))).encode()
    a = to_numpy(x)
    return np.ascontiguousarray(a).tobytes() + repr((a.dtype.str, a.shape)).encode()


def assert_bit_identical(actual: Sequence[Any], expected: Sequence[Any]) -> None:
    """Each pair of arrays has the same dtype, shape and bits."""
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert bits(a) == bits(e), f"entry {i} differs:\n{to_numpy(a)!r}\n{to_numpy(e)!r}"


def shares_memory(a: Any, b: Any) -> bool:
    """Whether two NumPy arrays or two torch tensors share memory.

    A NumPy scalar (what NumPy makes of 0-d arithmetic) owns its value: never shared.
    """
    if isinstance(a, np.generic) or isinstance(b, np.generic):
        return False
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.shares_memory(a, b))
    if array_api_compat.is_torch_array(a) and array_api_compat.is_torch_array(b):
        if a.numel() == 0 or b.numel() == 0:
            return False
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    raise TypeError(f"cannot inspect memory of {type(a).__name__} and {type(b).__name__}")


def snapshot(tree: Any) -> Any:
    """A deep NumPy copy of a (nested) tuple/list/NamedTuple of arrays and scalars."""
    if isinstance(tree, (tuple, list)):
        return type(tree)(*map(snapshot, tree)) if hasattr(tree, "_fields") else [
            snapshot(t) for t in tree
        ]
    if array_api_compat.is_array_api_obj(tree):
        return ("array", bits(tree))
    return tree


def eq_0_1_float64(phi0: Any, fast_before_syncs: Sequence[Any], alpha: float) -> np.ndarray:
    """Eq. 0.1 evaluated independently in float64 NumPy.

    φ_t = α Σ_{j=1..t} (1−α)^{t−j} θ_{j,k} + (1−α)^t φ₀, with all products and
    the sum formed in float64 regardless of the inputs' dtype.
    """
    phi0 = to_numpy(phi0).astype(np.float64)
    t = len(fast_before_syncs)
    if t == 0:
        return phi0
    thetas = np.stack([to_numpy(f).astype(np.float64) for f in fast_before_syncs])
    a = np.float64(alpha)
    weights = a * np.power(np.float64(1.0) - a, np.arange(t - 1, -1, -1, dtype=np.float64))
    weighted = np.tensordot(weights, thetas, axes=(0, 0))
    return weighted + np.power(np.float64(1.0) - a, t) * phi0


def spd_quadratic(seed: int, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``A`` and ``b`` of L(x) = ½ xᵀAx − bᵀx, A symmetric positive definite (float64)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n))
    return q @ q.T + n * np.eye(n), rng.standard_normal(n)


def run_core_adaptive(inner: Any, gradient: Any, start: Sequence[Any], steps: int,
                      k: int) -> tuple[Any, Any]:
    """``steps`` steps of `lookahead_core.lookahead` (α = 0.5, adaptive) from ``start``.

    ``gradient(params)`` gives the gradients at ``params``. Returns the final
    parameters and state.
    """
    import lookahead_core as lc

    opt = lc.lookahead(inner, k=k, alpha=0.5, alpha_mode="adaptive")
    params = tuple(start)
    state = opt.init(params)
    for _ in range(steps):
        params, state = opt.step(params, gradient(params), state)
    return params, state
