"""Where the slow weights go and which launches a sync makes: pure bookkeeping.

Nothing here touches a device; the functions take plain numbers (addresses,
sizes, dtype names), so they are tested on any machine.

The slow weights of one dtype live in **one** buffer. A parameter whose memory
is dense (contiguous in some axis order) gets a dense slice of it laid out in
the same memory order, so θ and φ pair up element for element in one flat
walk. Dense parameters that sit back to back in one allocation (the views of a
flat buffer, see `flat_layout`) form a *segment*: their slow slices are laid
out back to back too, and one flat launch syncs the whole segment. Parameters
that are not dense (strided or reversed views) are synced one at a time, with
their shape and strides.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import NamedTuple

__all__ = ["GroupPlan", "Segment", "TensorInfo", "chunk_starts", "flat_layout", "plan_layout"]


class TensorInfo(NamedTuple):
    """What the planner needs to know about one parameter.

    Attributes:
        dtype: the NumPy name of its dtype (``"float32"``).
        size: number of elements.
        itemsize: bytes per element.
        dense: whether its memory is one contiguous block (C-contiguous after
            sorting the axes by decreasing stride).
        address: address of its lowest byte (used when ``dense``).
        allocation: identity of the allocation its memory belongs to; only
            parameters of one allocation are joined into a segment.
    """

    dtype: str
    size: int
    itemsize: int
    dense: bool
    address: int
    allocation: Hashable


class Segment(NamedTuple):
    """Dense parameters back to back in memory, synced by one flat launch.

    Attributes:
        members: their indices in ``params``, in address order.
        size: elements in all.
        address: address of the first member's lowest byte.
        slow_offset: element offset of the segment in its dtype's slow buffer.
    """

    members: tuple[int, ...]
    size: int
    address: int
    slow_offset: int


class GroupPlan(NamedTuple):
    """The slow buffer and the launches of one dtype.

    Attributes:
        dtype: the NumPy name of the dtype.
        slow_size: elements of the slow buffer (the group's parameter elements).
        slow_offsets: parameter index -> element offset of its slow slice.
        segments: dense parameters, joined where adjacent (empty ones left out).
        strided: indices of the non-dense parameters, synced one at a time.
    """

    dtype: str
    slow_size: int
    slow_offsets: dict[int, int]
    segments: tuple[Segment, ...]
    strided: tuple[int, ...]


def plan_layout(tensors: Sequence[TensorInfo]) -> tuple[GroupPlan, ...]:
    """Group the parameters by dtype (first appearance order) and plan each group.

    Within a group the dense parameters are sorted by address, and a parameter
    joins the previous segment when it starts exactly where that one ends in
    the same allocation. Slow slices are assigned segment by segment in address
    order, then to the strided parameters in index order, so every segment's
    slow slices are contiguous too. Empty parameters get an offset and no work.
    """
    groups: dict[str, list[int]] = {}
    for index, info in enumerate(tensors):
        groups.setdefault(info.dtype, []).append(index)
    return tuple(_plan_group(dtype, indices, tensors) for dtype, indices in groups.items())


def _plan_group(dtype: str, indices: list[int], tensors: Sequence[TensorInfo]) -> GroupPlan:
    dense = sorted(
        (i for i in indices if tensors[i].dense and tensors[i].size > 0),
        key=lambda i: tensors[i].address,
    )
    runs: list[list[int]] = []
    for i in dense:
        if runs:
            last = tensors[runs[-1][-1]]
            end = last.address + last.size * last.itemsize
            if tensors[i].allocation == last.allocation and tensors[i].address == end:
                runs[-1].append(i)
                continue
        runs.append([i])

    offsets: dict[int, int] = {}
    segments = []
    offset = 0
    for run in runs:
        start = offset
        for i in run:
            offsets[i] = offset
            offset += tensors[i].size
        segments.append(Segment(tuple(run), offset - start, tensors[run[0]].address, start))
    strided = tuple(i for i in indices if not tensors[i].dense and tensors[i].size > 0)
    for i in strided:
        offsets[i] = offset
        offset += tensors[i].size
    for i in indices:  # empty parameters: a zero-length slice anywhere will do
        offsets.setdefault(i, offset)
    return GroupPlan(dtype, offset, offsets, tuple(segments), strided)


def flat_layout(
    shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str]
) -> tuple[dict[str, int], tuple[int, ...]]:
    """The layout of `lookahead_cupy.flatten`: one buffer per dtype, arrays back to back.

    Args:
        shapes: the arrays' shapes.
        dtypes: the NumPy names of their dtypes, one per shape.

    Returns:
        ``(sizes, offsets)``: elements of each dtype's buffer (in first
        appearance order) and each array's element offset in its buffer.
    """
    if len(shapes) != len(dtypes):
        raise ValueError(
            f"shapes and dtypes must have one entry per array, got {len(shapes)} and {len(dtypes)}"
        )
    sizes: dict[str, int] = {}
    offsets = []
    for shape, dtype in zip(shapes, dtypes):
        count = 1
        for length in shape:
            count *= int(length)
        offsets.append(sizes.get(dtype, 0))
        sizes[dtype] = sizes.get(dtype, 0) + count
    return sizes, tuple(offsets)


def chunk_starts(sizes: Sequence[int], chunk: int) -> tuple[tuple[int, ...], int]:
    """Block table of the multi-tensor kernel: tensor ``t`` gets blocks
    ``[first[t], first[t] + ceil(sizes[t] / chunk))``.

    Block ``b`` works on the tensor ``t`` with the largest ``first[t] <= b``
    (the kernel's binary search), elements ``[(b − first[t])·chunk,
    min((b − first[t] + 1)·chunk, sizes[t]))``.

    Args:
        sizes: elements per tensor, each >= 1 (the planner leaves empty ones out).
        chunk: elements per block, >= 1.

    Returns:
        ``(first, blocks)``: each tensor's first block and the number of blocks.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    first = []
    blocks = 0
    for size in sizes:
        if size < 1:
            raise ValueError(f"every size must be >= 1, got {size}")
        first.append(blocks)
        blocks += -(-size // chunk)
    return tuple(first), blocks
