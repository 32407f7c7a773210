"""Blockwise, allocation-free kernels over (fast, slow) array pairs.

The NumPy adapter's array work. The module is importable by name so that
tests and benchmarks can run one kernel alone; the adapter's API is
``lookahead_numpy.Lookahead``.

The sync reads θ and φ once and writes both; done array-at-a-time with NumPy
expressions it would allocate a temporary as large as the parameter for
``θ − φ``. Here every parameter is cut into blocks of a few hundred KiB and
``θ − φ`` is held in place, in the block of θ or of φ that the formula no
longer needs (dense parameters), or goes through a scratch buffer allocated
once at construction (the others), so a sync allocates no array memory and
each block stays in cache between the operations that touch it.

Layout. Each slow buffer is allocated C-contiguous *in the parameter's memory
order* (axes sorted by decreasing stride, `lookahead_inplace.memory_order`),
and both are viewed through that transposition. When the parameter's memory
is dense (C- or F-contiguous, or any axis permutation of a contiguous array)
the pair is flattened to 1-D views and blocks are plain slices. Otherwise
(strided or reversed views) the pair stays n-dimensional and blocks are cut
along the leading axes: slower, but still correct and still allocation-free.
There, each θ block is first copied into a second, contiguous scratch block
and the arithmetic runs on contiguous operands only: a NumPy ufunc with a
non-contiguous n-d operand allocates an iterator buffer (64 KiB),
``np.copyto`` does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from lookahead_inplace import lerp_weights, memory_order

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "BlockPair",
    "lerp_and_reset",
    "lerp_and_reset_scratch",
    "make_pairs",
    "swap",
]

DEFAULT_BLOCK_BYTES = 256 * 1024
"""Bytes per block: the blocks of θ and φ (512 KiB) stay in a typical L2 cache.

Measured on a 16M-element float64 parameter: 256 KiB was the fastest of 32 KiB to 1 MiB
(37 ms per sync, against 206 ms for the allocating lerp-then-copy of the core). Again on
100M float32 in 100 tensors with the in-place difference (Xeon, 2 MiB L2): 64 KiB 106 ms,
128 KiB 101 ms, 256 KiB 99 ms, 512 KiB 103 ms."""


class BlockPair(NamedTuple):
    """One parameter's work views for the blockwise kernels.

    Attributes:
        fast: view of the caller's array θ (1-D when its memory is dense).
        slow: view of the slow buffer φ, same shape and element order as ``fast``.
        scratch: the 1-D scratch buffer shared by all parameters of this dtype.
        block: elements per block (never more than ``scratch.size``).
        fast_copy: a second scratch buffer like ``scratch`` that receives a
            contiguous copy of each θ block, or ``None`` when ``fast`` is 1-D
            and the arithmetic can read θ where it is.
    """

    fast: np.ndarray
    slow: np.ndarray
    scratch: np.ndarray
    block: int
    fast_copy: np.ndarray | None


def make_pairs(
    params: tuple[np.ndarray, ...], block_bytes: int
) -> tuple[tuple[np.ndarray, ...], tuple[BlockPair, ...]]:
    """Allocate the slow weights φ₀ = copy(θ₀) and the kernels' work views.

    Returns:
        ``(slow, pairs)``: ``slow[i]`` has ``params[i]``'s shape and dtype and
        holds a copy of it; ``pairs[i]`` views ``params[i]`` and ``slow[i]``.
    """
    block_of = {p.dtype: max(1, block_bytes // p.dtype.itemsize) for p in params}
    work = [_allocate_slow(p) for p in params]  # (fast_work, slow_work, slow) each

    def scratch_for(arrays: list[np.ndarray]) -> dict[np.dtype, np.ndarray]:
        size: dict[np.dtype, int] = {}
        for a in arrays:
            size[a.dtype] = max(size.get(a.dtype, 0), min(block_of[a.dtype], a.size))
        return {dtype: np.empty(n, dtype) for dtype, n in size.items()}

    scratch = scratch_for([fast for fast, _, _ in work])
    fast_copy = scratch_for([fast for fast, _, _ in work if fast.ndim > 1])

    pairs = tuple(
        BlockPair(fast, slow_work, scratch[fast.dtype], block_of[fast.dtype],
                  fast_copy.get(fast.dtype) if fast.ndim > 1 else None)
        for fast, slow_work, _ in work
    )
    return tuple(slow for _, _, slow in work), pairs


def _allocate_slow(param: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(fast_work, slow_work, slow)`` with ``slow`` a fresh copy of ``param``."""
    param = param.view(np.ndarray)  # subclasses (memmap, ...) add nothing to the arithmetic
    order = memory_order(param.strides)
    fast_work = param.transpose(order)
    slow_work = np.empty(fast_work.shape, param.dtype)  # C-contiguous: owns its memory
    np.copyto(slow_work, fast_work)
    slow = slow_work.transpose(np.argsort(order))  # back to param's axis order
    if fast_work.flags.c_contiguous:
        # reshape of a C-contiguous array is a view, never a copy.
        return fast_work.reshape(-1), slow_work.reshape(-1), slow
    return fast_work, slow_work, slow


def _blocks(
    fast: np.ndarray, slow: np.ndarray, block: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Matching views of ``fast`` and ``slow`` of at most ``block`` elements each."""
    if fast.size <= block:
        yield fast, slow
        return
    rows = fast.shape[0]
    row_size = fast.size // rows
    if row_size <= block:
        step = block // row_size
        for start in range(0, rows, step):
            yield fast[start : start + step], slow[start : start + step]
    else:
        for row in range(rows):
            yield from _blocks(fast[row], slow[row], block)


def lerp_and_reset(pair: BlockPair, alpha: float) -> None:
    """The sync on one parameter: ``φ ← lerp(φ, θ, α)``, then ``θ ← φ``, in place.

    The operations and their order are those of `lookahead_core.lerp`
    (``diff = θ − φ``; ``φ + α·diff`` if α < 0.5 else ``θ − (1 − α)·diff``), so
    the result is bit-identical to `lookahead_core.sync_slow`.
    ``alpha`` must be a validated Python float: a NumPy scalar could change the
    computation dtype.
    """
    if pair.fast.flags.c_contiguous:
        _lerp_and_reset_dense(pair.fast, pair.slow, pair.block, alpha)
    else:
        lerp_and_reset_scratch(pair, alpha)


def lerp_and_reset_scratch(pair: BlockPair, alpha: float) -> None:
    """`lerp_and_reset` through the scratch buffer: any pair, dense or strided.

    ``θ − φ`` goes to ``pair.scratch``; a θ block that is not contiguous is
    first copied to ``pair.fast_copy``. The path of strided parameters, and the
    reference the dense path is measured and tested against.
    """
    factor, low_weight = lerp_weights(alpha)
    for fast, slow in _blocks(pair.fast, pair.slow, pair.block):
        diff = pair.scratch[: fast.size].reshape(fast.shape)
        theta = fast
        if pair.fast_copy is not None:
            theta = pair.fast_copy[: fast.size].reshape(fast.shape)
            np.copyto(theta, fast)
        np.subtract(theta, slow, out=diff)
        np.multiply(diff, factor, out=diff)
        if low_weight:
            np.add(slow, diff, out=slow)
        else:
            np.subtract(theta, diff, out=slow)
        np.copyto(fast, slow)


def _lerp_and_reset_dense(fast: np.ndarray, slow: np.ndarray, block: int, alpha: float) -> None:
    """`lerp_and_reset` on flat, contiguous θ and φ, with ``θ − φ`` held in place.

    Per block, ``diff = θ − φ`` is written over the block of the buffer the
    formula no longer needs (θ when α < 0.5: ``φ + α·diff``; φ otherwise:
    ``θ − (1 − α)·diff``), and θ gets φ's final value last. No scratch: a
    block touches two buffers instead of three, and the sync went from 0.59 to
    0.76 of the plain-copy bandwidth on 100M float32 (1.2 × faster than the
    scratch kernel, side by side; see the Performance page). The arithmetic
    is the same operations in the same order as the scratch path, so the
    results are bit for bit the same (``tests/test_fastpaths.py``). Until a
    block's four operations are done its θ (α < 0.5) or φ holds the
    difference: like any in-place sync, an interrupted one leaves the pair
    unusable.
    """
    factor, low_weight = lerp_weights(alpha)
    for start in range(0, fast.size, block):
        theta = fast[start : start + block]
        phi = slow[start : start + block]
        if low_weight:
            np.subtract(theta, phi, out=theta)
            np.multiply(theta, factor, out=theta)
            np.add(phi, theta, out=phi)
        else:
            np.subtract(theta, phi, out=phi)
            np.multiply(phi, factor, out=phi)
            np.subtract(theta, phi, out=phi)
        np.copyto(theta, phi)


def swap(pair: BlockPair) -> None:
    """Exchange the contents of θ and φ in place, bit for bit, through the scratch."""
    for fast, slow in _blocks(pair.fast, pair.slow, pair.block):
        held = pair.scratch[: fast.size].reshape(fast.shape)
        np.copyto(held, fast)
        np.copyto(fast, slow)
        np.copyto(slow, held)
