"""Flat, ``np.savez``-ready checkpoints of nested optimizer state.

An inner optimizer's state is a NamedTuple (``lookahead_core.SGDState``,
``AdamState``, ...) whose fields are ints, floats, arrays, ``None`` or tuples
of those. It is flattened to dotted keys (``inner.step``,
``inner.exp_avg.0``, ...); ``None`` fields produce no key. Loading walks the
optimizer's own current state as a template, so the expected keys, shapes and
dtypes come from the live optimizer, never from the file, and nothing is
specific to one inner optimizer.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "as_array",
    "as_float",
    "as_int",
    "as_str",
    "check_tree",
    "coerce_leaf",
    "flatten_tree",
    "unflatten_tree",
]

Leaf = Any  # int | float | np.ndarray


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_float(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not _is_int(value) and not isinstance(
        value, (bool, np.bool_)
    )


def check_tree(
    name: str, tree: Any, array_type: type = np.ndarray, library: str = "NumPy"
) -> None:
    """Raise ``TypeError`` if ``tree`` holds anything a checkpoint cannot represent.

    ``array_type`` is the adapter's array class (``numpy.ndarray``,
    ``cupy.ndarray``) and ``library`` its name, for the message.
    """
    if tree is None or _is_int(tree) or _is_float(tree) or isinstance(tree, array_type):
        return
    if isinstance(tree, (tuple, list)):
        for key, child in _children(name, tree):
            check_tree(key, child, array_type, library)
        return
    raise TypeError(
        f"{name} is a {type(tree).__name__}; the {library} adapter can checkpoint inner "
        f"states made of ints, floats, {library.lower()} arrays, None and (named) tuples "
        "of those"
    )


def _children(key: str, tree: tuple | list) -> list[tuple[str, Any]]:
    fields = getattr(tree, "_fields", None)  # a NamedTuple names its children
    names = fields if fields is not None else range(len(tree))
    return [(f"{key}.{name}", child) for name, child in zip(names, tree)]


def flatten_tree(key: str, tree: Any) -> dict[str, Leaf]:
    """Leaves of ``tree`` by dotted key, uncopied (``None`` gives no key)."""
    if tree is None:
        return {}
    if isinstance(tree, (tuple, list)):
        flat: dict[str, Leaf] = {}
        for child_key, child in _children(key, tree):
            flat.update(flatten_tree(child_key, child))
        return flat
    return {key: tree}


def unflatten_tree(key: str, template: Any, leaves: Mapping[str, Leaf]) -> Any:
    """Rebuild a tree shaped like ``template`` whose leaves are ``leaves[key]``."""
    if template is None:
        return None
    if isinstance(template, (tuple, list)):
        children = [unflatten_tree(k, child, leaves) for k, child in _children(key, template)]
        if hasattr(template, "_fields"):
            return type(template)(*children)
        return type(template)(children)
    return leaves[key]


def coerce_leaf(key: str, template: Leaf, value: Any, array_type: type = np.ndarray) -> Leaf:
    """Check a loaded ``value`` against the live ``template`` leaf; return a private copy.

    Ints and floats come back as Python scalars (``np.load`` gives 0-d arrays);
    arrays must match the template's shape and dtype exactly and come back as
    NumPy copies (a template of ``array_type`` has ``shape`` and a NumPy ``dtype``).
    """
    if isinstance(template, array_type):
        return as_array(key, value, template.shape, template.dtype)
    if _is_int(template):
        return as_int(key, value)
    return as_float(key, value)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"{value!r} of type {type(value).__name__}"


def _zero_d(value: Any) -> Any:
    """Unwrap a 0-d array (what ``np.load`` returns for a saved scalar)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    return value


def as_int(key: str, value: Any) -> int:
    """``state_dict[key]`` as a Python int (an int or a 0-d integer array)."""
    scalar = _zero_d(value)
    if not _is_int(scalar):
        raise TypeError(f"state_dict[{key!r}] must be an int, got {_describe(value)}")
    return int(scalar)


def as_float(key: str, value: Any) -> float:
    """``state_dict[key]`` as a Python float (a real number or a 0-d real array)."""
    scalar = _zero_d(value)
    if not (_is_int(scalar) or _is_float(scalar)):
        raise TypeError(f"state_dict[{key!r}] must be a real number, got {_describe(value)}")
    return float(scalar)


def as_str(key: str, value: Any) -> str:
    """``state_dict[key]`` as a Python str (a str or a 0-d string array)."""
    scalar = _zero_d(value)
    if not isinstance(scalar, str):
        raise TypeError(f"state_dict[{key!r}] must be a str, got {_describe(value)}")
    return str(scalar)


def as_array(
    key: str, value: Any, shape: tuple[int, ...], dtype: np.dtype, copy: bool = True
) -> np.ndarray:
    """``state_dict[key]``, which must be an ndarray of ``shape`` and ``dtype``.

    With ``copy`` (the default) the result is a private copy, so the caller's
    dict and the optimizer never share an array; without it the caller's array
    itself is returned, for callers that copy it into a buffer of their own.
    """
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"state_dict[{key!r}] must be a numpy.ndarray of shape {shape} and dtype "
            f"{dtype}, got {_describe(value)}"
        )
    if value.shape != shape:
        raise ValueError(f"state_dict[{key!r}] must have shape {shape}, got {value.shape}")
    if value.dtype != dtype:
        raise TypeError(f"state_dict[{key!r}] must have dtype {dtype}, got {value.dtype}")
    return np.array(value, copy=True) if copy else value
