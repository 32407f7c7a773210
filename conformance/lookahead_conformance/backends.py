"""The kit's own backends: the functional core on each Array API library.

Each is registered under the entry-point group ``lookahead.backends`` in the
project's ``pyproject.toml``:

| name | what runs |
|---|---|
| ``core-numpy``, ``core-array-api-strict``, ``core-torch``, ``core-jax`` | the functional `lookahead_core.lookahead` on that library's arrays |

The adapters register their own backends (``numpy``, ``torch``,
``torch-cuda``, ``cupy``), each from a ``_conformance`` module of its package;
the kit imports no adapter. Nothing here imports an array library other than
NumPy before a backend is used, so every entry point loads on any machine.

The protocol and the registry live in `lookahead_conformance.protocol` and
`lookahead_conformance.registry`; their names are re-exported here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .protocol import Backend, InnerSpec, Runner, protocol_violations
from .registry import BrokenBackend, load_backend, registered_backends

__all__ = [
    "Backend",
    "BrokenBackend",
    "CoreBackend",
    "InnerSpec",
    "Runner",
    "load_backend",
    "protocol_violations",
    "registered_backends",
]


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < a[1] and b[0] < b[1] and a[0] < b[1] and b[0] < a[1]


def _device_of(devices: Sequence[str]) -> str:
    distinct = sorted(set(devices))
    return distinct[0] if len(distinct) == 1 else "mixed: " + ", ".join(distinct)


def _leaves(tree: Any) -> list[Any]:
    """The leaves of a state made of tuples and NamedTuples (``None`` has none)."""
    if tree is None:
        return []
    if isinstance(tree, tuple):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [tree]


# --- the core, on any Array API library -------------------------------------------------------


class _CoreRunner:
    """`lookahead_core.lookahead` driven through the `Runner` protocol.

    The core is pure: it never mutates an array, so holding the arrays is a checkpoint.
    """

    def __init__(self, backend: CoreBackend, params: Sequence[np.ndarray], opt: Any) -> None:
        self._backend = backend
        self._opt = opt
        self._params = tuple(backend.from_numpy(p) for p in params)
        self._state = opt.init(self._params)

    def step(self, grads: Sequence[np.ndarray]) -> None:
        native = tuple(self._backend.from_numpy(g) for g in grads)
        self._params, self._state = self._opt.step(self._params, native, self._state)

    def fast(self) -> list[np.ndarray]:
        return [self._backend.to_numpy(p) for p in self._params]

    def slow(self) -> list[np.ndarray]:
        return [self._backend.to_numpy(s) for s in self._state.slow]

    def save(self) -> Any:
        return self._params, self._state

    def restore(self, saved: Any) -> None:
        self._params, self._state = saved

    # capabilities
    def extra_state_bytes(self) -> int:
        # LookaheadState = (slow, inner, count): everything but the inner state; with an
        # outer optimizer its state too (OuterLookaheadState.outer).
        outer = getattr(self._state, "outer", None)
        outer_arrays = [a for a in _leaves(outer) if hasattr(a, "shape")]
        return sum(self._backend.to_numpy(s).nbytes for s in (*self._state.slow, *outer_arrays))

    def aliases(self) -> bool:
        extent = self._backend.memory_extent
        fast = [extent(p) for p in self._params]
        return any(_overlap(f, extent(s)) for f in fast for s in self._state.slow)

    def device(self) -> str:
        import array_api_compat

        arrays = (*self._params, *self._state.slow)
        return _device_of([str(array_api_compat.device(a)) for a in arrays])


class CoreBackend:
    """``lookahead_core`` running on one Array API library, on its default device.

    Args:
        name: registry name, e.g. ``"core-numpy"``.
        module: import name of the array library: ``"numpy"``, ``"array_api_strict"``,
            ``"torch"`` or ``"jax.numpy"``.
        dtypes: the floating dtypes to certify.
    """

    def __init__(self, name: str, module: str, dtypes: tuple[str, ...] = ("float32", "float64")):
        self.name = name
        self.module = module
        self.dtypes = dtypes

    def __repr__(self) -> str:
        return f"CoreBackend({self.name!r}, {self.module!r}, {self.dtypes!r})"

    def _lib(self) -> Any:
        lib = importlib.import_module(self.module)
        if self.module == "jax.numpy":
            import jax

            # float64 is off by default in JAX; without it float64 inputs become float32.
            jax.config.update("jax_enable_x64", True)
        return lib

    def skip_reason(self) -> str | None:
        try:
            self._lib()
        except ImportError as exc:
            return f"{self.module} not installed ({exc})"
        return None

    def namespace(self) -> Any:
        import array_api_compat

        if self.module == "numpy":
            return array_api_compat.array_namespace(np.empty(0))
        return array_api_compat.array_namespace(self._lib().asarray([0.0]))

    def device(self) -> str:
        import array_api_compat

        return str(array_api_compat.device(self.from_numpy(np.zeros(1))))

    def from_numpy(self, array: np.ndarray) -> Any:
        lib = self._lib()
        fresh = np.array(array, copy=True)  # never let the backend share the caller's memory
        if self.module == "torch":
            return lib.from_numpy(fresh)
        return lib.asarray(fresh)

    def to_numpy(self, array: Any) -> np.ndarray:
        if self.module == "torch":
            return array.detach().cpu().numpy().copy()
        if self.module == "array_api_strict":
            return np.from_dlpack(array).copy()  # it hides __array__ on purpose
        return np.array(array, copy=True)  # NumPy; JAX copies from any device

    def memory_extent(self, array: Any) -> tuple[int, int]:
        """The address range ``[start, end)`` of an array's buffer, on whatever device."""
        if self.module == "torch":
            storage = array.untyped_storage()
            return storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        if self.module == "jax.numpy":
            start = array.unsafe_buffer_pointer()
            return start, start + array.nbytes
        view = np.from_dlpack(array)  # NumPy, array-api-strict: host memory
        byte_bounds = getattr(getattr(np.lib, "array_utils", np), "byte_bounds")  # NumPy 2 / 1.26
        low, high = byte_bounds(view)
        return low, high

    def create(
        self, params: Sequence[np.ndarray], inner: InnerSpec, k: int, alpha: float
    ) -> Runner:
        import lookahead_core as lc

        opt = lc.lookahead(inner.build_core(), k=k, alpha=alpha)
        return _CoreRunner(self, params, opt)

    def create_outer(
        self, params: Sequence[np.ndarray], inner: InnerSpec, k: int, outer: InnerSpec
    ) -> Runner:
        """The core with ``outer`` as its outer optimizer (the ``outer`` capability)."""
        import lookahead_core as lc

        opt = lc.lookahead(inner.build_core(), k=k, outer=outer.build_core())
        return _CoreRunner(self, params, opt)


core_numpy = CoreBackend("core-numpy", "numpy")
core_array_api_strict = CoreBackend("core-array-api-strict", "array_api_strict")
core_torch = CoreBackend("core-torch", "torch")
core_jax = CoreBackend("core-jax", "jax.numpy")

