"""The ``numpy`` backend of the conformance kit (entry point ``lookahead.backends``).

Certifies `lookahead_numpy.Lookahead`, in place on NumPy arrays on the CPU. It
follows the kit's ``Backend`` / ``Runner`` protocol by duck typing, as the
PyTorch and CuPy adapters' backends do, so this module does not import the kit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["NumpyBackend", "backend"]


def _shares_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(a.size and b.size and np.shares_memory(a, b))


class _NumpyRunner:
    """One `lookahead_numpy.Lookahead` over fresh copies of the given parameters."""

    def __init__(self, params: Sequence[np.ndarray], inner: Any, k: int, alpha: float,
                 outer: Any = None) -> None:
        from ._optimizer import Lookahead

        self._params = [np.array(p, copy=True) for p in params]
        if outer is None:
            self._opt = Lookahead(self._params, inner.build_core(), k=k, alpha=alpha)
        else:
            self._opt = Lookahead(self._params, inner.build_core(), k=k, outer=outer.build_core())

    def step(self, grads: Sequence[np.ndarray]) -> None:
        self._opt.step(list(grads))

    def fast(self) -> list[np.ndarray]:
        return [p.copy() for p in self._params]

    def slow(self) -> list[np.ndarray]:
        return [np.array(s, copy=True) for s in self._opt.slow]

    def save(self) -> Any:
        return self._opt.state_dict(include_params=True)

    def restore(self, saved: Any) -> None:
        self._opt.load_state_dict(saved)

    # -- optional capabilities ---------------------------------------------------------

    def extra_state_bytes(self) -> int:
        # What the adapter persists beyond the inner optimizer: its checkpoint minus
        # the inner state. The sync's scratch block (at most 256 KiB per dtype, not
        # growing with the model, holding nothing between steps) is workspace, not state.
        return sum(
            value.nbytes for key, value in self._opt.state_dict().items()
            if isinstance(value, np.ndarray) and not key.startswith("inner.")
        )

    def aliases(self) -> bool:
        # Every pair, not only matching indices: slow[1] inside params[0] is aliasing too.
        return any(_shares_memory(p, s) for p in self._params for s in self._opt.slow)

    def device(self) -> str:
        return "cpu"


class NumpyBackend:
    """``lookahead_numpy.Lookahead``: in place on NumPy arrays."""

    name = "numpy"
    dtypes = ("float32", "float64")

    def __repr__(self) -> str:
        return "NumpyBackend()"

    def skip_reason(self) -> str | None:
        return None  # NumPy is a dependency of the package: always runnable

    def namespace(self) -> Any:
        import array_api_compat

        return array_api_compat.array_namespace(np.empty(0))

    def device(self) -> str:
        return "cpu"

    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def to_numpy(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def create(self, params: Sequence[np.ndarray], inner: Any, k: int, alpha: float) -> _NumpyRunner:
        return _NumpyRunner(params, inner, k, alpha)

    def create_outer(self, params: Sequence[np.ndarray], inner: Any, k: int,
                     outer: Any) -> _NumpyRunner:
        """`Lookahead` with the core's optimizer of ``outer`` as the outer optimizer."""
        return _NumpyRunner(params, inner, k, 0.5, outer)


backend = NumpyBackend()
