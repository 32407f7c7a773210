"""Memory layout and aliasing rules for any strided array.

An in-place adapter writes every element of a parameter once per sync, so a
parameter must not overlap itself and no two parameters may share memory; and
it lays each slow buffer out in its parameter's memory order so the pair can be
walked flat. All of this needs only what every strided array library exposes
(``shape``, ``strides`` in bytes, ``itemsize``, ``size``) plus the address of
the first element, which the adapter supplies (``array.__array_interface__``
for NumPy, ``array.data.ptr`` for CuPy). Nothing here imports an array library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "byte_extent",
    "check_no_self_overlap",
    "check_no_shared_memory",
    "memory_order",
]


def memory_order(strides: tuple[int, ...]) -> list[int]:
    """The axes sorted by decreasing ``|stride|``: the order the elements lie in memory.

    ``array.transpose(memory_order(array.strides))`` is C-contiguous exactly when
    the array's memory is dense (C- or F-contiguous, or any axis permutation of
    a contiguous array); then a buffer laid out C-contiguous in that order pairs
    its elements with the array's, element for element, in one flat walk.
    """
    return sorted(range(len(strides)), key=lambda axis: -abs(strides[axis]))


def byte_extent(array: Any, start: int) -> tuple[int, int]:
    """The half-open byte range ``[low, high)`` that ``array`` can touch.

    Args:
        array: any strided array (``shape``, ``strides`` in bytes, ``itemsize``).
        start: the address of its first element.
    """
    low = high = start
    for length, stride in zip(array.shape, array.strides):
        span = (length - 1) * stride
        if span < 0:  # a reversed axis reaches below the first element
            low += span
        else:
            high += span
    return low, high + array.itemsize


def check_no_self_overlap(name: str, array: Any, start: int) -> None:
    """Raise ``ValueError`` if two elements of ``array`` are the same memory.

    Args:
        name: the argument's name for the message, e.g. ``"params[0]"``.
        array: any strided array (``shape``, ``strides`` in bytes, ``itemsize``, ``size``).
        start: the address of its first element.
    """
    low, high = byte_extent(array, start)
    if array.size > 1 and high - low < array.size * array.itemsize:
        # Fewer bytes than elements: some elements are the same memory (e.g. a
        # broadcast view made writeable); an in-place step would update them twice.
        raise ValueError(
            f"{name} must not overlap itself, got strides {array.strides} "
            f"for shape {array.shape}"
        )


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
        (byte_extent(a, start_address(a)) + (i,) for i, a in enumerate(arrays) if a.size > 0),
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
