"""The flat-buffer mode: parameters as views of one contiguous buffer per dtype."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ._checks import check_cupy_arrays
from ._device import require_cupy
from ._layout import flat_layout

__all__ = ["FlatParams", "flatten"]


class FlatParams(NamedTuple):
    """The result of `flatten`.

    Attributes:
        buffers: one 1-D ``cupy.ndarray`` per dtype, by dtype name, holding the
            arrays back to back in the order given.
        views: one C-contiguous view of a buffer per input array, with its
            shape, dtype and values. Use them as your parameters.
    """

    buffers: dict[str, Any]
    views: tuple[Any, ...]


def flatten(arrays: Sequence[Any]) -> FlatParams:
    """Copy ``arrays`` into one contiguous buffer per dtype; return the buffers and views.

    `lookahead_cupy.Lookahead` notices parameters that lie back to back in
    one allocation and syncs each such run with one kernel launch, so a model
    whose parameters are these views costs one launch per dtype per sync
    instead of one per tensor (or one multi-tensor launch with a pointer
    table). The inputs are not modified; keep using the views. The layout
    (`lookahead_cupy.flat_layout`) has no padding between arrays.

    Args:
        arrays: list or tuple of ``cupy.ndarray`` (float16, float32, float64) on one device.

    Returns:
        `FlatParams` with the buffers and, in input order, the views.

    Example:
        >>> import cupy
        >>> from lookahead_cupy import flatten
        >>> flat = flatten([cupy.ones((2, 3)), cupy.zeros(4)])
        >>> flat.buffers["float64"].shape, flat.views[0].shape
        ((10,), (2, 3))
    """
    cupy = require_cupy()
    arrays = check_cupy_arrays("arrays", arrays)
    sizes, offsets = flat_layout([a.shape for a in arrays], [a.dtype.name for a in arrays])
    with cupy.cuda.Device(arrays[0].device.id):
        buffers = {dtype: cupy.empty(size, dtype=dtype) for dtype, size in sizes.items()}
        views = []
        for array, offset in zip(arrays, offsets):
            view = buffers[array.dtype.name][offset : offset + array.size].reshape(array.shape)
            view[...] = array
            views.append(view)
    return FlatParams(buffers, tuple(views))
