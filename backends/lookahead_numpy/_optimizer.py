"""The stateful, in-place Lookahead optimizer for NumPy arrays."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

import lookahead_core as lc

from ._blocks import DEFAULT_BLOCK_BYTES, lerp_and_reset, make_pairs, swap
from ._checkpoint import (
    as_array,
    as_float,
    as_int,
    as_str,
    check_tree,
    coerce_leaf,
    flatten_tree,
    unflatten_tree,
)
from ._checks import check_block_bytes, check_params

__all__ = ["Lookahead"]

_INNER_PREFIX = "inner"


def _read_only(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    views = []
    for array in arrays:
        view = array.view(np.ndarray)
        view.flags.writeable = False
        views.append(view)
    return tuple(views)


def _reraise_for_key(key: str, exc: TypeError | ValueError) -> TypeError | ValueError:
    return type(exc)(f"state_dict[{key!r}]: {exc}")


class Lookahead:
    """Lookahead (Zhang, Lucas, Hinton, Ba 2019, Algorithm 1) updating NumPy arrays in place.

    The caller's arrays are the fast weights θ. Each `step` applies the
    inner optimizer A in place (eq. 0.2):

    ```text
    θ ← θ + A(L, θ, d)
    ```

    and every k-th executed step ends with the sync, whose slow weights are the
    exponential moving average of eq. 0.1:

    ```text
    φ ← φ + α (θ − φ)      (two-sided lerp, exactly lookahead_core.lerp)
    θ ← φ                  (a copy: θ and φ never share memory)
    ```

    The slow weights start as a copy of the parameters taken here, at
    construction (φ₀ = θ₀). Results are bit-identical to the functional
    `lookahead_core.lookahead` on the same inputs.

    Args:
        params: list or tuple of writeable, real floating ``numpy.ndarray``; no
            two may share memory. They are updated in place by `step`
            and `sync`; the optimizer keeps references to them.
        inner: the inner optimizer A, e.g. ``lookahead_core.sgd(lr=0.1,
            momentum=0.9)`` or ``lookahead_core.adam(...)``.
        k: synchronization period, an ``int`` >= 1 (bool rejected).
        alpha: slow weights step size, a finite real in [0, 1]. ``alpha = 1``
            is the inner optimizer alone; ``alpha = 0`` resets θ to φ₀ every
            k steps.
        block_bytes: bytes per block of the sync and of the slow-weight swap
            (default 256 KiB). The scratch buffer, allocated here once per
            dtype, holds one block.

    Raises:
        TypeError: an argument of the wrong type (message names it).
        ValueError: an argument of the right type and a wrong value.

    Example:
        >>> import numpy as np, lookahead_core as lc
        >>> from lookahead_numpy import Lookahead
        >>> params = [np.zeros(3)]
        >>> opt = Lookahead(params, lc.sgd(lr=1.0), k=3, alpha=0.5)
        >>> for _ in range(6):
        ...     opt.step([-np.ones(3)])
        >>> params[0]
        array([3., 3., 3.])
    """

    def __init__(
        self,
        params: Sequence[np.ndarray],
        inner: lc.InnerOptimizer,
        k: int = 5,
        alpha: float = 0.5,
        *,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> None:
        if not isinstance(inner, lc.InnerOptimizer):
            raise TypeError(
                "inner must be an InnerOptimizer such as lookahead_core.sgd(...), "
                f"got {type(inner).__name__}"
            )
        k = lc.check_k(k)
        alpha = lc.check_alpha(alpha)
        block_bytes = check_block_bytes(block_bytes)
        params = check_params(params)
        inner_state = inner.init(params)
        check_tree(_INNER_PREFIX, inner_state)

        self._params = params
        self._fast = tuple(p.view(np.ndarray) for p in params)  # subclass-free, same memory
        self._inner = inner
        self._inner_state = inner_state
        self._k = k
        self._alpha = alpha
        self._count = 0
        self._swapped = False
        self._slow, self._pairs = make_pairs(params, block_bytes)
        self._slow_views = _read_only(self._slow)
        self._param_views = _read_only(params)

    # -- read-only attributes ----------------------------------------------------------

    @property
    def params(self) -> tuple[np.ndarray, ...]:
        """The caller's arrays, the fast weights θ (updated in place)."""
        return self._params

    @property
    def inner(self) -> lc.InnerOptimizer:
        """The inner optimizer A."""
        return self._inner

    @property
    def inner_state(self) -> Any:
        """The inner optimizer's state, the core's NamedTuple (e.g. ``SGDState``)."""
        return self._inner_state

    @property
    def k(self) -> int:
        """Synchronization period: a sync follows every k-th executed step."""
        return self._k

    @property
    def alpha(self) -> float:
        """Slow weights step size α of the sync."""
        return self._alpha

    @property
    def count(self) -> int:
        """Executed inner steps since the last sync, in ``[0, k)``."""
        return self._count

    @property
    def slow(self) -> tuple[np.ndarray, ...]:
        """Read-only views of the slow weights φ.

        Views of live state: they change at every sync and load; copy them to
        keep a snapshot. Inside `slow_weights` φ sits in the parameters,
        and these are views of the parameters.
        """
        return self._param_views if self._swapped else self._slow_views

    def __repr__(self) -> str:
        return (
            f"Lookahead(inner={self._inner.name!r}, k={self._k}, alpha={self._alpha}, "
            f"params={len(self._params)}, count={self._count})"
        )

    # -- the algorithm -----------------------------------------------------------------

    def step(self, grads: Sequence[np.ndarray]) -> None:
        """One inner step in place (eq. 0.2), then the sync if it was the k-th.

        ``θ ← θ + delta`` with ``delta`` from the inner optimizer's
        ``update(grads, state, params)``. A step that does not complete the
        cycle does nothing else.

        Args:
            grads: one array per parameter, with its shape and dtype.

        Raises:
            TypeError, ValueError: bad ``grads`` (nothing is changed).
            RuntimeError: called inside `slow_weights`.
        """
        self._refuse_while_swapped("step")
        # The core's update is pure and checks grads against params first, so
        # a bad input raises here with the parameters and state untouched.
        delta, self._inner_state = self._inner.update(grads, self._inner_state, self._params)
        for param, change in zip(self._fast, delta):
            np.add(param, change, out=param)
        self._count += 1
        if self._count == self._k:
            self._sync_now()

    def sync(self) -> None:
        """The outer update now: ``φ ← φ + α(θ − φ)``, then ``θ ← φ`` (eq. 0.1).

        Works whatever the position in the cycle and resets it (``count = 0``).
        Blockwise through the preallocated scratch: allocates no array memory.

        Raises:
            RuntimeError: called inside `slow_weights`.
        """
        self._refuse_while_swapped("sync")
        self._sync_now()

    def _sync_now(self) -> None:
        for pair in self._pairs:
            lerp_and_reset(pair, self._alpha)
        self._count = 0

    @contextlib.contextmanager
    def slow_weights(self) -> Iterator[tuple[np.ndarray, ...]]:
        """Context manager: the parameters hold φ inside, θ again after.

        The swap exchanges the contents of each parameter and its slow buffer
        in place, blockwise through the scratch buffer: no third copy of the
        weights. On exit (also on an exception) they are swapped back, bit for
        bit. Meant for evaluation: changes made to the parameters inside end
        up in φ. `state_dict` works inside; `step`, `sync`,
        `load_state_dict` and nesting raise ``RuntimeError``.

        Yields:
            The parameters (the caller's arrays), now holding φ.
        """
        self._refuse_while_swapped("slow_weights")
        self._swap_all()
        try:
            yield self._params
        finally:
            self._swap_all()

    def _swap_all(self) -> None:
        for pair in self._pairs:
            swap(pair)
        self._swapped = not self._swapped

    def _refuse_while_swapped(self, what: str) -> None:
        if self._swapped:
            raise RuntimeError(
                f"{what}() cannot run inside slow_weights(): the parameters hold the "
                "slow weights there; leave the with-block first"
            )

    # -- checkpoints -------------------------------------------------------------------

    def state_dict(self, include_params: bool = False) -> dict[str, Any]:
        """A flat checkpoint of the optimizer, ready for ``np.savez(file, **sd)``.

        Keys: ``k``, ``alpha``, ``count`` (Python scalars), ``inner_name`` (str),
        ``slow.<i>`` (φ, one array per parameter) and ``inner.<field>[.<i>]``
        (the inner optimizer's state; ``None`` fields give no key). Every array
        is a fresh copy. The parameters θ are not included unless
        ``include_params`` (then as ``params.<i>``): save them yourself, as with
        ``torch.optim``.

        Args:
            include_params: also store copies of the parameters.
        """
        fast, slow = (self._slow, self._params) if self._swapped else (self._params, self._slow)
        sd: dict[str, Any] = {
            "k": self._k,
            "alpha": self._alpha,
            "count": self._count,
            "inner_name": self._inner.name,
        }
        for i, array in enumerate(slow):
            sd[f"slow.{i}"] = np.array(array, copy=True)
        for key, leaf in flatten_tree(_INNER_PREFIX, self._inner_state).items():
            sd[key] = np.array(leaf, copy=True) if isinstance(leaf, np.ndarray) else leaf
        if include_params:
            for i, array in enumerate(fast):
                sd[f"params.{i}"] = np.array(array, copy=True)
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a checkpoint made by `state_dict`, all or nothing.

        Everything is checked before anything changes: the key set, the inner
        optimizer's name and state layout, every shape and dtype, ``k``,
        ``alpha`` and ``count``. On any error the optimizer (and the
        parameters) are left exactly as they were. The caller's mapping is
        never modified, and nothing it holds is shared afterwards. Accepts
        what ``np.load`` returns (0-d arrays for scalars and strings). ``k``
        and ``alpha`` from the checkpoint replace the optimizer's. When the
        ``params.<i>`` keys are present (``state_dict(include_params=True)``)
        the parameters are restored too, in place.

        Args:
            state_dict: a mapping such as ``opt.state_dict()`` or ``np.load(file)``.

        Raises:
            TypeError, ValueError: the checkpoint does not fit this optimizer.
            RuntimeError: called inside `slow_weights`.
        """
        self._refuse_while_swapped("load_state_dict")
        values = self._read_mapping(state_dict)
        self._check_inner_name(values)
        with_params = self._check_keys(values)

        k = as_int("k", values["k"])
        alpha = as_float("alpha", values["alpha"])
        count = as_int("count", values["count"])
        try:
            k = lc.check_k(k)
        except (TypeError, ValueError) as exc:
            raise _reraise_for_key("k", exc) from None
        try:
            alpha = lc.check_alpha(alpha)
        except (TypeError, ValueError) as exc:
            raise _reraise_for_key("alpha", exc) from None
        if not 0 <= count < k:
            raise ValueError(f"state_dict['count'] must be in [0, k) = [0, {k}), got {count}")

        slow = self._checked_arrays("slow", values)
        params = self._checked_arrays("params", values) if with_params else None
        template = flatten_tree(_INNER_PREFIX, self._inner_state)
        leaves = {key: coerce_leaf(key, leaf, values[key]) for key, leaf in template.items()}
        inner_state = unflatten_tree(_INNER_PREFIX, self._inner_state, leaves)

        # Everything is valid: commit. copyto keeps the buffers (and every view
        # of them, such as opt.slow and the block views) in place.
        for buffer, array in zip(self._slow, slow):
            np.copyto(buffer, array)
        if params is not None:
            for param, array in zip(self._fast, params):
                np.copyto(param, array)
        self._inner_state = inner_state
        self._k, self._alpha, self._count = k, alpha, count

    @staticmethod
    def _read_mapping(state_dict: Any) -> dict[str, Any]:
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                "state_dict must be a mapping such as opt.state_dict() or np.load(file), "
                f"got {type(state_dict).__name__}"
            )
        # One read per key: an np.load archive loads each array on access.
        values = {key: state_dict[key] for key in state_dict}
        for key in values:
            if not isinstance(key, str):
                raise TypeError(f"state_dict keys must be str, got {key!r}")
        return values

    def _check_inner_name(self, values: Mapping[str, Any]) -> None:
        if "inner_name" not in values:
            return  # reported with the other missing keys
        name = as_str("inner_name", values["inner_name"])
        if name != self._inner.name:
            raise ValueError(
                f"state_dict['inner_name'] is {name!r}, but this optimizer's inner "
                f"optimizer is {self._inner.name!r}"
            )

    def _check_keys(self, values: Mapping[str, Any]) -> bool:
        """Check the key set; return whether the optional ``params.<i>`` keys are present."""
        n = len(self._params)
        expected = {"k", "alpha", "count", "inner_name"}
        expected.update(f"slow.{i}" for i in range(n))
        expected.update(flatten_tree(_INNER_PREFIX, self._inner_state))
        param_keys = {f"params.{i}" for i in range(n)}
        with_params = any(key in values for key in param_keys)
        if with_params:
            expected |= param_keys
        missing = sorted(expected - values.keys())
        extra = sorted(values.keys() - expected)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing keys {_abbreviate(missing)}")
            if extra:
                parts.append(f"unexpected keys {_abbreviate(extra)}")
            raise ValueError(
                f"state_dict does not fit this optimizer ({self._inner.name!r}, "
                f"{n} parameters): {'; '.join(parts)}"
            )
        return with_params

    def _checked_arrays(self, prefix: str, values: Mapping[str, Any]) -> list[np.ndarray]:
        return [
            as_array(f"{prefix}.{i}", values[f"{prefix}.{i}"], p.shape, p.dtype, copy=False)
            for i, p in enumerate(self._params)
        ]


def _abbreviate(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(key) for key in keys[:limit])
    return f"[{shown}, ... ({len(keys)} in all)]" if len(keys) > limit else f"[{shown}]"
