"""Argument checks shared by the core and the adapters.

Every check runs before any state is touched and raises ``TypeError`` or
``ValueError`` naming the offending argument and the expected value.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

import array_api_compat

__all__ = [
    "NONFINITE_MODES",
    "check_alpha",
    "check_arrays",
    "check_k",
    "check_matching",
    "check_nonfinite",
    "check_nonnegative",
    "check_unit_interval",
]


NONFINITE_MODES = (None, "rollback")
"""The adapters' ``nonfinite`` option: ``None`` (the paper, no check) or ``"rollback"``.

With ``"rollback"``, a sync that finds inf or NaN in a group's fast weights or
inner state sets θ ← φ instead, restarts the inner state and counts it. The
pure core has no such option (it returns whatever the arithmetic gives); every
in-place adapter checks the option with `check_nonfinite`, so they accept and
reject the same values.
"""


def check_nonfinite(nonfinite: Any) -> str | None:
    """Return ``nonfinite`` if it is ``None`` or ``"rollback"`` (see `NONFINITE_MODES`)."""
    if nonfinite is not None and not isinstance(nonfinite, str):
        raise TypeError(
            f"nonfinite must be None or 'rollback', got {nonfinite!r} of type "
            f"{type(nonfinite).__name__}"
        )
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"nonfinite must be None or 'rollback', got {nonfinite!r}")
    return nonfinite


def check_k(k: Any) -> int:
    """Return ``k`` as a Python ``int`` >= 1 (the synchronization period)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int >= 1, got {k!r} of type {type(k).__name__}")
    k = operator.index(k)
    if k < 1:
        raise ValueError(f"k must be an int >= 1, got {k}")
    return k


def _as_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number (Python float or int), "
            f"got {value!r} of type {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_alpha(alpha: Any, name: str = "alpha") -> float:
    """Return ``alpha`` as a Python ``float`` in [0, 1] (the slow step size)."""
    alpha = _as_real(name, alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {alpha}")
    return alpha


def check_nonnegative(name: str, value: Any) -> float:
    """Return ``value`` as a finite Python ``float`` >= 0."""
    value = _as_real(name, value)
    if value < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_unit_interval(name: str, value: Any) -> float:
    """Return ``value`` as a Python ``float`` in [0, 1) (a decay rate)."""
    value = _as_real(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def check_arrays(name: str, arrays: Any) -> tuple[Any, tuple[Any, ...]]:
    """Check a non-empty sequence of real floating arrays of one library and one device.

    Returns ``(xp, arrays_as_tuple)`` where ``xp`` is the array-api-compat namespace.
    """
    if not isinstance(arrays, Sequence) or isinstance(arrays, (str, bytes)):
        raise TypeError(
            f"{name} must be a list or tuple of arrays, got {type(arrays).__name__}"
        )
    arrays = tuple(arrays)
    if not arrays:
        raise ValueError(f"{name} must hold at least one array, got an empty sequence")
    for i, a in enumerate(arrays):
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(f"{name}[{i}] must be an array, got {type(a).__name__}")
    try:
        xp = array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        raise TypeError(f"{name} must all come from one array library: {exc}") from None
    for i, a in enumerate(arrays):
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(
                f"{name}[{i}] must have a real floating dtype, got {a.dtype}"
            )
    devices = [array_api_compat.device(a) for a in arrays]
    for i, d in enumerate(devices):
        if d != devices[0]:
            raise ValueError(
                f"{name} must all be on one device: {name}[0] is on {devices[0]}, "
                f"{name}[{i}] is on {d}"
            )
    return xp, arrays


def check_matching(
    name: str, arrays: Sequence[Any], ref_name: str, refs: Sequence[Any]
) -> None:
    """Check that ``arrays`` match ``refs`` in length, shape, dtype, library and device."""
    if len(arrays) != len(refs):
        raise ValueError(
            f"{name} must hold {len(refs)} arrays, one per entry of {ref_name}, "
            f"got {len(arrays)}"
        )
    for i, a in enumerate(arrays):
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(f"{name}[{i}] must be an array, got {type(a).__name__}")
    xp = array_api_compat.array_namespace(*refs)
    try:
        xa = array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        raise TypeError(f"{name} must all come from one array library: {exc}") from None
    if xa is not xp:
        raise TypeError(
            f"{name} must come from the same array library as {ref_name} "
            f"({xp.__name__}), got {xa.__name__}"
        )
    for i, (a, r) in enumerate(zip(arrays, refs)):
        if tuple(a.shape) != tuple(r.shape):
            raise ValueError(
                f"{name}[{i}] must have shape {tuple(r.shape)} like {ref_name}[{i}], "
                f"got {tuple(a.shape)}"
            )
        if a.dtype != r.dtype:
            raise TypeError(
                f"{name}[{i}] must have dtype {r.dtype} like {ref_name}[{i}], got {a.dtype}"
            )
        da, dr = array_api_compat.device(a), array_api_compat.device(r)
        if da != dr:
            raise ValueError(
                f"{name}[{i}] must be on device {dr} like {ref_name}[{i}], got {da}"
            )
