"""Checks on the arrays handed to the CuPy adapter.

The NumPy adapter's memory rules apply unchanged (they need only an address,
the shape, the strides and the item size): a parameter must not overlap
itself and no two parameters may share memory, since the sync writes each
element once. CuPy arrays have no read-only flag, so there is no writeability
check.
"""

from __future__ import annotations

from typing import Any

import lookahead_core as lc
from lookahead_numpy._checks import check_no_self_overlap, check_no_shared_memory

from ._device import require_cupy
from ._kernels import SUPPORTED_DTYPES

__all__ = ["KERNEL_MODES", "check_cupy_arrays", "check_kernel_mode", "check_params"]

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
    cupy = require_cupy()
    arrays = check_cupy_arrays("params", params)
    for i, array in enumerate(arrays):
        check_no_self_overlap(f"params[{i}]", array, array.data.ptr)
    check_no_shared_memory(arrays, lambda array: array.data.ptr, cupy.shares_memory)
    return arrays
