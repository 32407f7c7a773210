"""Checks on the parameters handed to the NumPy adapter.

They add NumPy-specific rules to `lookahead_core.check_arrays`: the
adapter updates the caller's arrays in place, so every parameter must be a
writeable ``numpy.ndarray`` whose memory is its own. The memory rules are the
library-neutral ones of `lookahead_inplace.memory`, given NumPy's addresses
and ``numpy.shares_memory``.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

import lookahead_core as lc
from lookahead_inplace import check_no_self_overlap, check_no_shared_memory

__all__ = ["check_block_bytes", "check_params"]


def check_params(params: Any) -> tuple[np.ndarray, ...]:
    """Return ``params`` as a tuple after checking they can be updated in place.

    Raises:
        TypeError: not a list/tuple of real floating ``numpy.ndarray``.
        ValueError: empty, read-only, self-overlapping, or two parameters
            sharing memory.
    """
    _, arrays = lc.check_arrays("params", params)
    for i, array in enumerate(arrays):
        _check_one_param(f"params[{i}]", array)
    check_no_shared_memory(arrays, _start_address, np.shares_memory)
    return arrays


def check_block_bytes(block_bytes: Any) -> int:
    """Return ``block_bytes`` (the sync's block size in bytes) as an int >= 1."""
    if isinstance(block_bytes, bool) or not isinstance(block_bytes, numbers.Integral):
        raise TypeError(
            f"block_bytes must be an int >= 1, got {block_bytes!r} "
            f"of type {type(block_bytes).__name__}"
        )
    if block_bytes < 1:
        raise ValueError(f"block_bytes must be an int >= 1, got {block_bytes}")
    return int(block_bytes)


def _check_one_param(name: str, array: Any) -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray, got {type(array).__module__}."
            f"{type(array).__name__} (use the adapter of that library, or the "
            "functional lookahead_core.lookahead)"
        )
    if isinstance(array, np.ma.MaskedArray):
        # The mask would be silently ignored by the in-place arithmetic.
        raise TypeError(f"{name} must be a plain numpy.ndarray, got a masked array")
    if not array.flags.writeable:
        raise ValueError(
            f"{name} must be writeable (the adapter updates parameters in place), "
            "got a read-only array"
        )
    check_no_self_overlap(name, array, _start_address(array))


def _start_address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]
