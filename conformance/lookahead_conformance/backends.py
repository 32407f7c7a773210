"""The ``Backend`` protocol and the built-in backends.

A backend tells the conformance checks how to build a Lookahead optimizer for
an inner-optimizer spec, step it with gradients given as NumPy arrays, and read
the fast and slow weights back as NumPy arrays. Everything crosses the
boundary as NumPy so that the checks (and the float64 oracle) are
backend-neutral.

Built-in backends register under the entry-point group ``lookahead.backends``;
a third party registers theirs the same way, or passes ``module:attr``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Backend",
    "CoreBackend",
    "InnerSpec",
    "NumpyAdapterBackend",
    "Runner",
    "load_backend",
    "registered_backends",
]

ENTRY_POINT_GROUP = "lookahead.backends"


class InnerSpec(NamedTuple):
    """An inner optimizer by name (``"sgd"``, ``"adam"``, ``"adamw"``) and hyperparameters.

    The names and hyperparameters are those of ``lookahead_core``'s
    constructors, which follow ``torch.optim``.
    """

    name: str
    hyperparams: dict[str, Any]

    def build_core(self) -> Any:
        """The ``lookahead_core`` inner optimizer for this spec."""
        import lookahead_core as lc

        return {"sgd": lc.sgd, "adam": lc.adam, "adamw": lc.adamw}[self.name](**self.hyperparams)


@runtime_checkable
class Runner(Protocol):
    """One optimizer instance of a backend, over one set of parameters."""

    def step(self, grads: Sequence[np.ndarray]) -> None:
        """One executed inner step with these gradients (then a sync every k-th)."""

    def fast(self) -> list[np.ndarray]:
        """The fast weights θ, as NumPy arrays of the parameters' dtype."""

    def slow(self) -> list[np.ndarray]:
        """The slow weights φ, as NumPy arrays of the parameters' dtype."""

    def save(self) -> Any:
        """A checkpoint of everything needed to resume (fast weights included)."""

    def restore(self, saved: Any) -> None:
        """Resume from `save`'s result (called on a freshly created runner)."""


@runtime_checkable
class Backend(Protocol):
    """What the conformance checks need to know about a backend."""

    name: str
    dtypes: tuple[str, ...]

    def skip_reason(self) -> str | None:
        """``None`` when usable here, else why not (e.g. ``"no CUDA device"``)."""

    def create(
        self, params: Sequence[np.ndarray], inner: InnerSpec, k: int, alpha: float
    ) -> Runner:
        """Build the optimizer over copies of ``params``; raise TypeError/ValueError on bad input."""


# --- the core, on any Array API namespace -------------------------------------------------


class _CoreRunner:
    def __init__(self, backend: CoreBackend, params: Sequence[np.ndarray], opt: Any) -> None:
        self._backend = backend
        self._opt = opt
        self._params = tuple(backend.from_numpy(p) for p in params)
        self._state = opt.init(self._params)

    def step(self, grads: Sequence[np.ndarray]) -> None:
        grads = tuple(self._backend.from_numpy(g) for g in grads)
        self._params, self._state = self._opt.step(self._params, grads, self._state)

    def fast(self) -> list[np.ndarray]:
        return [self._backend.to_numpy(p) for p in self._params]

    def slow(self) -> list[np.ndarray]:
        return [self._backend.to_numpy(s) for s in self._state.slow]

    def save(self) -> Any:
        # The core is pure: its arrays are never mutated, so holding them is a checkpoint.
        return self._params, self._state

    def restore(self, saved: Any) -> None:
        self._params, self._state = saved


class CoreBackend:
    """``lookahead_core`` running on one array library.

    Args:
        name: registry name, e.g. ``"core-numpy"``.
        module: import name of the array library (``"numpy"``, ``"torch"``, ...).
        dtypes: the floating dtypes checked.
    """

    def __init__(self, name: str, module: str, dtypes: tuple[str, ...] = ("float32", "float64")):
        self.name = name
        self.module = module
        self.dtypes = dtypes

    def skip_reason(self) -> str | None:
        try:
            self._xp()
        except ImportError:
            return f"{self.module} not installed"
        return None

    def _xp(self) -> Any:
        mod = importlib.import_module(self.module)
        if self.module == "jax.numpy":
            import jax

            jax.config.update("jax_enable_x64", True)
        return mod

    def from_numpy(self, a: np.ndarray) -> Any:
        xp = self._xp()
        if self.module == "torch":
            return xp.from_numpy(np.array(a, copy=True))
        return xp.asarray(np.array(a, copy=True))

    def to_numpy(self, a: Any) -> np.ndarray:
        if self.module == "torch":
            return a.detach().cpu().numpy().copy()
        if self.module == "array_api_strict":
            return np.asarray(a._array).copy()  # array-api-strict hides __array__ on purpose
        return np.array(a, copy=True)

    def create(
        self, params: Sequence[np.ndarray], inner: InnerSpec, k: int, alpha: float
    ) -> Runner:
        import lookahead_core as lc

        opt = lc.lookahead(inner.build_core(), k=k, alpha=alpha)
        return _CoreRunner(self, params, opt)


# --- the NumPy adapter ----------------------------------------------------------------------


class _NumpyAdapterRunner:
    def __init__(self, params: Sequence[np.ndarray], inner: InnerSpec, k: int, alpha: float):
        from lookahead_numpy import Lookahead

        self._params = [np.array(p, copy=True) for p in params]
        self._opt = Lookahead(self._params, inner.build_core(), k=k, alpha=alpha)

    def step(self, grads: Sequence[np.ndarray]) -> None:
        self._opt.step(list(grads))

    def fast(self) -> list[np.ndarray]:
        return [p.copy() for p in self._params]

    def slow(self) -> list[np.ndarray]:
        return [np.array(s, copy=True) for s in self._opt.slow]

    def save(self) -> Any:
        return [p.copy() for p in self._params], self._opt.state_dict()

    def restore(self, saved: Any) -> None:
        params, state = saved
        for p, s in zip(self._params, params):
            np.copyto(p, s)
        self._opt.load_state_dict(state)


class NumpyAdapterBackend:
    """``lookahead_numpy.Lookahead``: in place on NumPy arrays."""

    name = "numpy"
    dtypes = ("float32", "float64")

    def skip_reason(self) -> str | None:
        try:
            import lookahead_numpy  # noqa: F401
        except ImportError as exc:
            return f"lookahead_numpy not importable: {exc}"
        return None

    def create(
        self, params: Sequence[np.ndarray], inner: InnerSpec, k: int, alpha: float
    ) -> Runner:
        return _NumpyAdapterRunner(params, inner, k, alpha)


numpy_adapter = NumpyAdapterBackend()
core_numpy = CoreBackend("core-numpy", "numpy")
core_array_api_strict = CoreBackend("core-array-api-strict", "array_api_strict")
core_torch = CoreBackend("core-torch", "torch")
core_jax = CoreBackend("core-jax", "jax.numpy")


# --- registry -------------------------------------------------------------------------------


def registered_backends() -> dict[str, Backend]:
    """All backends registered under the ``lookahead.backends`` entry-point group."""
    found: dict[str, Backend] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = ep.load()
        except Exception as exc:  # one broken plugin must not hide the others
            found[ep.name] = _Unloadable(ep.name, f"entry point {ep.value} failed to load: {exc!r}")
    return found


class _Unloadable:
    """Stands in for a registered backend whose entry point cannot be loaded."""

    dtypes: tuple[str, ...] = ()

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self._reason = reason

    def skip_reason(self) -> str | None:
        return self._reason

    def create(self, params: Sequence[np.ndarray], inner: InnerSpec, k: int, alpha: float) -> Runner:
        raise RuntimeError(self._reason)


def load_backend(spec: str) -> Backend:
    """A backend by registered name or by ``module:attr``."""
    if ":" in spec:
        module, _, attr = spec.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        backend = obj() if isinstance(obj, type) else obj
    else:
        registry = registered_backends()
        if spec not in registry:
            raise ValueError(
                f"--lookahead-backend must be a registered name ({', '.join(sorted(registry))}), "
                f"'all', or 'module:attr', got {spec!r}"
            )
        backend = registry[spec]
    if not isinstance(backend, Backend):
        raise TypeError(f"backend {spec!r} does not implement the Backend protocol")
    return backend
