"""Checks on the arrays handed to the CuPy adapter.

The in-place memory rules of `lookahead_inplace.memory` apply unchanged
(they need only an address, the shape, the strides and the item size): a
parameter must not overlap itself and no two parameters may share memory,
since the sync writes each element once. CuPy arrays have no read-only flag, so there is no writeability
check.

Whether two arrays share memory is `shares_memory`, not ``cupy.shares_memory``
alone: CuPy 14's exact test is wrong for 0-d arrays (see there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lookahead_core as lc
from lookahead_inplace import byte_extent, check_no_self_overlap, check_no_shared_memory

from ._device import require_cupy
from ._kernels import SUPPORTED_DTYPES

__all__ = [
    "KERNEL_MODES",
    "check_cupy_arrays",
    "check_kernel_mode",
    "check_params",
    "shares_memory",
    "shares_memory_exactly",
]

KERNEL_MODES = ("auto", "elementwise", "multi_tensor")


def check_kernel_mode(kernel: Any) -> str:
    """Return ``kernel`` if it names a sync strategy, else raise."""
    if not isinstance(kernel, str):
        raise TypeError(
            f"kernel must be one of {KERNEL_MODES}, got {kernel!r} of type {type(kernel).__name__}"
        )
    if kernel not in KERNEL_MODES:
        raise ValueError(f"kernel must be one of {KERNEL_MODES}, got {kernel!r}")
    return kernel


def check_cupy_arrays(name: str, arrays: Any) -> tuple[Any, ...]:
    """Return ``arrays`` as a tuple of ``cupy.ndarray`` of a supported dtype on one device.

    Raises:
        ImportError: CuPy is not installed.
        TypeError: not a list/tuple of arrays, arrays of another library, or a
            dtype other than float16, float32 and float64.
        ValueError: empty, or arrays on several devices.
    """
    cupy = require_cupy()
    if isinstance(arrays, (list, tuple)):
        # Before the core's check, whose dtype test does not know bfloat16.
        for i, array in enumerate(arrays):
            if isinstance(array, cupy.ndarray) and array.dtype.name not in SUPPORTED_DTYPES:
                raise TypeError(
                    f"{name}[{i}] must have dtype float16, float32 or float64, got {array.dtype}"
                )
    _, arrays = lc.check_arrays(name, arrays)
    for i, array in enumerate(arrays):
        if not isinstance(array, cupy.ndarray):
            raise TypeError(
                f"{name}[{i}] must be a cupy.ndarray, got {type(array).__module__}."
                f"{type(array).__name__} (use the adapter of that library, or the "
                "functional lookahead_core.lookahead)"
            )
    return arrays


def check_params(params: Any) -> tuple[Any, ...]:
    """Return ``params`` as a tuple after checking they can be updated in place.

    Raises:
        ImportError: CuPy is not installed.
        TypeError: see `check_cupy_arrays`.
        ValueError: empty, on several devices, self-overlapping, or two
            parameters sharing memory.
    """
    arrays = check_cupy_arrays("params", params)
    for i, array in enumerate(arrays):
        check_no_self_overlap(f"params[{i}]", array, array.data.ptr)
    check_no_shared_memory(arrays, lambda array: array.data.ptr, shares_memory)
    return arrays


def shares_memory_exactly(
    a: Any,
    b: Any,
    start_address: Callable[[Any], int],
    library_test: Callable[[Any, Any], bool],
) -> bool:
    """Whether ``a`` and ``b`` have a byte in common; ``library_test``, made safe for 0-d arrays.

    Empty arrays and arrays whose byte ranges are disjoint share nothing, and
    are answered from their addresses, shapes and strides alone. Otherwise a
    0-d operand is viewed as shape ``(1,)`` (the same element, the same
    memory) before ``library_test`` answers.

    Args:
        a, b: strided arrays of one library (``size``, ``ndim``, ``shape``,
            ``strides`` in bytes, ``itemsize``, ``reshape``).
        start_address: the address of an array's first element.
        library_test: the library's exact test, e.g. ``cupy.shares_memory``.
    """
    if a.size == 0 or b.size == 0:
        return False
    a_low, a_high = byte_extent(a, start_address(a))
    b_low, b_high = byte_extent(b, start_address(b))
    if a_high <= b_low or b_high <= a_low:
        return False
    return bool(library_test(_at_least_1d(a), _at_least_1d(b)))


def _at_least_1d(array: Any) -> Any:
    return array.reshape(1) if array.ndim == 0 else array


def shares_memory(a: Any, b: Any) -> bool:
    """``cupy.shares_memory(a, b)``, exact for 0-d arrays too.

    CuPy 14's exact test lists the address of every element with an
    ``ElementwiseKernel`` whose body is ``out = &x`` for an *input* ``x``. For a
    0-d input, CuPy's ``CArray<T, 0>`` returns the element by value, so ``&x``
    is the address of a thread-local copy, the same in every launch: any two
    0-d arrays "share memory", and a 0-d view never shares with the array it
    views. Viewed as shape ``(1,)``, the same element gives its device address.
    """
    cupy = require_cupy()
    return shares_memory_exactly(a, b, lambda array: array.data.ptr, cupy.shares_memory)
