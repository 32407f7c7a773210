"""Checks on the parameters handed to the NumPy adapter.

They add NumPy-specific rules to `lookahead_core.check_arrays`: the
adapter updates the caller's arrays in place, so every parameter must be a
writeable ``numpy.ndarray`` whose memory is its own. The memory rules
(`check_no_self_overlap`, `check_no_shared_memory`) only need an array's start
address, shape, strides and item size, so the CuPy adapter uses them too.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import lookahead_core as lc

__all__ = [
    "check_block_bytes",
    "check_no_self_overlap",
    "check_no_shared_memory",
    "check_params",
]


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


def check_no_self_overlap(name: str, array: Any, start: int) -> None:
    """Raise ``ValueError`` if two elements of ``array`` are the same memory.

    Args:
        name: the argument's name for the message, e.g. ``"params[0]"``.
        array: any strided array (``shape``, ``strides`` in bytes, ``itemsize``, ``size``).
        start: the address of its first element.
    """
    low, high = _byte_extent(array, start)
    if array.size > 1 and high - low < array.size * array.itemsize:
        # Fewer bytes than elements: some elements are the same memory (e.g. a
        # broadcast view made writeable); an in-place step would update them twice.
        raise ValueError(
            f"{name} must not overlap itself, got strides {array.strides} "
            f"for shape {array.shape}"
        )


def _byte_extent(array: Any, start: int) -> tuple[int, int]:
    """The half-open byte range ``[low, high)`` that ``array`` can touch."""
    low = high = start
    for length, stride in zip(array.shape, array.strides):
        span = (length - 1) * stride
        if span < 0:
            low += span
        else:
            high += span
    return low, high + array.itemsize


def check_no_shared_memory(
    arrays: Sequence[Any],
    start_address: Callable[[Any], int],
    shares_memory: Callable[[Any, Any], bool],
) -> None:
    """Raise if two arrays share memory; ``O(n log n)`` when their byte ranges are disjoint.

    Sorting by start address and sweeping keeps the exact (and possibly costly)
    ``shares_memory`` test for pairs whose byte ranges overlap, such as
    interleaved views ``a[::2]`` and ``a[1::2]`` (allowed: no element in common).

    Args:
        arrays: the parameters, all of one library and device.
        start_address: the address of an array's first element.
        shares_memory: the library's exact test (``numpy.shares_memory``).
    """
    extents = sorted(
        (_byte_extent(a, start_address(a)) + (i,) for i, a in enumerate(arrays) if a.size > 0),
    )
    open_ranges: list[tuple[int, int]] = []  # (high, index) of ranges still open
    for low, high, index in extents:
        open_ranges = [(h, j) for h, j in open_ranges if h > low]
        for _, other in open_ranges:
            if shares_memory(arrays[other], arrays[index]):
                first, second = sorted((other, index))
                raise ValueError(
                    f"params[{first}] and params[{second}] share memory; every parameter "
                    "must own its memory (pass each array once, no overlapping views)"
                )
        open_ranges.append((high, index))
