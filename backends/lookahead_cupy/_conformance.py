"""The ``cupy`` backend of the conformance kit (entry point ``lookahead.backends``).

Certifies `lookahead_cupy.Lookahead` on the current CUDA device. The module
imports without CuPy and without a GPU; `CupyBackend.skip_reason` says
``"cupy not installed"`` or ``"no CUDA device"`` there, and nothing else is
called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._device import require_cupy, skip_reason

__all__ = ["CupyBackend", "backend"]


class _CupyRunner:
    """One `lookahead_cupy.Lookahead` over device copies of the given parameters."""

    def __init__(self, params: Sequence[np.ndarray], inner: Any, k: int, alpha: float, kernel: str,
                 outer: Any = None):
        from ._optimizer import Lookahead

        self._cupy = require_cupy()
        self._params = [self._cupy.asarray(np.array(p, copy=True)) for p in params]
        if outer is None:
            self._opt = Lookahead(self._params, inner.build_core(), k=k, alpha=alpha, kernel=kernel)
        else:
            self._opt = Lookahead(self._params, inner.build_core(), k=k,
                                  outer=outer.build_core(), kernel=kernel)

    def step(self, grads: Sequence[np.ndarray]) -> None:
        self._opt.step([self._cupy.asarray(g) for g in grads])

    def fast(self) -> list[np.ndarray]:
        return [self._cupy.asnumpy(p) for p in self._params]

    def slow(self) -> list[np.ndarray]:
        return [self._cupy.asnumpy(s) for s in self._opt.slow]

    def save(self) -> Any:
        return [self._cupy.asnumpy(p) for p in self._params], self._opt.state_dict()

    def restore(self, saved: Any) -> None:
        params, state = saved
        for param, value in zip(self._params, params):
            param[...] = self._cupy.asarray(value)
        self._opt.load_state_dict(state)

    # -- optional capabilities ---------------------------------------------------------

    def extra_state_bytes(self) -> int:
        """The slow weights' bytes; the multi-tensor tables (32 bytes per parameter) are left out."""
        return self._opt.slow_nbytes

    def aliases(self) -> bool:
        """Whether any fast weight shares memory with any slow weight (exact for 0-d arrays,
        which ``cupy.shares_memory`` is not; see `lookahead_cupy._checks.shares_memory`)."""
        from ._checks import shares_memory

        return any(shares_memory(p, s) for p in self._params for s in self._opt.slow)

    def device(self) -> str:
        """The device of every fast and slow weight, or a description of the mismatch."""
        devices = {str(a.device) for a in (*self._params, *self._opt.slow)}
        return devices.pop() if len(devices) == 1 else f"several devices: {sorted(devices)}"


class CupyBackend:
    """``lookahead_cupy.Lookahead`` on the current CUDA device.

    Args:
        name: registry name.
        kernel: the adapter's ``kernel`` option (``"auto"``, ``"elementwise"``,
            ``"multi_tensor"``).
    """

    dtypes: tuple[str, ...] = ("float32", "float64")

    def __init__(self, name: str = "cupy", kernel: str = "auto") -> None:
        self.name = name
        self.kernel = kernel

    def skip_reason(self) -> str | None:
        return skip_reason()

    def namespace(self) -> Any:
        import array_api_compat

        return array_api_compat.array_namespace(require_cupy().empty(0))

    def device(self) -> str:
        return str(require_cupy().empty(0).device)

    def from_numpy(self, array: np.ndarray) -> Any:
        return require_cupy().asarray(np.array(array, copy=True))

    def to_numpy(self, array: Any) -> np.ndarray:
        return require_cupy().asnumpy(array)

    def create(self, params: Sequence[np.ndarray], inner: Any, k: int, alpha: float) -> _CupyRunner:
        return _CupyRunner(params, inner, k, alpha, self.kernel)

    def create_outer(self, params: Sequence[np.ndarray], inner: Any, k: int,
                     outer: Any) -> _CupyRunner:
        """`Lookahead` with the core's optimizer of ``outer`` as the outer optimizer."""
        return _CupyRunner(params, inner, k, 0.5, self.kernel, outer)


backend = CupyBackend()
