"""Blockwise, allocation-free kernels over (fast, slow) array pairs.

The NumPy adapter's array work. The module is importable by name so that
tests and benchmarks can run one kernel alone; the adapter's API is
``lookahead_numpy.Lookahead``.

The sync reads θ and φ once and writes both; done array-at-a-time with NumPy
expressions it would allocate a temporary as large as the parameter for
``θ − φ``. Here every parameter is cut into blocks of a few hundred KiB and
``θ − φ`` goes through a scratch block allocated once at construction, so a
sync allocates no array memory and each block stays in cache between the
operations that touch it.

Overflow. ``θ − φ`` is the one operation of the sync that can overflow when θ
and φ are finite (both near the largest value of the dtype, opposite signs),
though the interpolated value lies between them. The sync runs under
``numpy.errstate(over="raise")``: NumPy reads the processor's overflow flag
after every operation anyway, so a block whose difference overflowed raises
right after the subtraction, while θ and φ are still intact (the difference
went to the scratch, not over either of them), and only that block is
repaired, as `lookahead_core.lerp` does. The check itself is free; the
scratch block is what it costs (the difference used to be written over a
block of θ or φ, which loses an input before the overflow can be seen; see
the Performance page).

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

Outer optimizer. With ``outer=`` the sync is the outer optimizer's step on
Δ = φ − θ (`outer_step`), walked in the same blocks: Δ is written over the θ
block (the step ends with θ ← φ, so θ is free), the scratch block holds the
step's one temporary, and the outer optimizer's buffers (momentum, or Adam's
m and v) are laid out like φ (`align_outer_buffers`), so they are walked with
it. No array memory is allocated.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from lookahead_inplace import lerp_weights, memory_order
from lookahead_inplace.outer import AdamPlan, AdamScalars, SGDPlan, SGDScalars

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "BlockPair",
    "align_outer_buffers",
    "outer_step",
    "lerp_and_reset",
    "lerp_and_reset_scratch",
    "make_pairs",
    "overflow_checked",
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
    the result is bit-identical to `lookahead_core.sync_slow`, including
    where ``θ − φ`` overflows (see the module's docstring).
    ``alpha`` must be a validated Python float: a NumPy scalar could change the
    computation dtype.
    """
    sync = _lerp_and_reset_dense if pair.fast.flags.c_contiguous else _lerp_and_reset_blocks
    if _MODE.checked:
        sync(pair, alpha)
    else:
        with _overflow_raises():
            sync(pair, alpha)


def lerp_and_reset_scratch(pair: BlockPair, alpha: float) -> None:
    """`lerp_and_reset` through `_blocks`: any pair, dense or strided.

    A θ block that is not contiguous is first copied to ``pair.fast_copy``.
    The path of strided parameters, and the reference the dense path is tested
    against.
    """
    with _overflow_raises():
        _lerp_and_reset_blocks(pair, alpha)


class _Mode(threading.local):
    checked = False  # inside `overflow_checked` on this thread


_MODE = _Mode()


class overflow_checked:  # noqa: N801 - used like numpy.errstate
    """Context: the floating-point mode of the sync, entered once for many parameters.

    `lerp_and_reset` enters it on its own; ``numpy.errstate`` costs about
    1.5 µs, a tenth of the sync of a small parameter, so an adapter that syncs
    many parameters enters it once around all of them.
    """

    def __enter__(self) -> None:
        self._outer = _MODE.checked
        if not self._outer:
            self._errstate = _overflow_raises()
            self._errstate.__enter__()
            _MODE.checked = True

    def __exit__(self, *exc: object) -> None:
        if not self._outer:
            _MODE.checked = False
            self._errstate.__exit__(*exc)


def _lerp_and_reset_blocks(pair: BlockPair, alpha: float) -> None:
    factor, low_weight = lerp_weights(alpha)
    for fast, slow in _blocks(pair.fast, pair.slow, pair.block):
        diff = pair.scratch[: fast.size].reshape(fast.shape)
        theta = fast
        if pair.fast_copy is not None:
            theta = pair.fast_copy[: fast.size].reshape(fast.shape)
            np.copyto(theta, fast)
        _lerp_block(theta, slow, diff, factor, low_weight)
        np.copyto(fast, slow)


def _lerp_and_reset_dense(pair: BlockPair, alpha: float) -> None:
    """`lerp_and_reset` on flat, contiguous θ and φ: blocks are plain slices."""
    factor, low_weight = lerp_weights(alpha)
    fast, slow, block, scratch = pair.fast, pair.slow, pair.block, pair.scratch
    for start in range(0, fast.size, block):
        theta = fast[start : start + block]
        phi = slow[start : start + block]
        _lerp_block(theta, phi, scratch[: theta.size], factor, low_weight)
        np.copyto(theta, phi)


def _lerp_block(
    theta: np.ndarray, phi: np.ndarray, diff: np.ndarray, factor: float, low_weight: bool
) -> None:
    """``φ ← lerp(φ, θ, α)`` on one block of contiguous operands; ``diff`` is scratch.

    Called under `_overflow_raises` (`overflow_checked`): the subtraction raises
    if ``θ − φ`` overflowed anywhere in the block, before φ is written.
    """
    try:
        np.subtract(theta, phi, out=diff)
    except FloatingPointError:
        _lerp_block_repairing(theta, phi, factor, low_weight)
        return
    if not _FLAGS_WORK and not np.isfinite(np.add.reduce(diff, dtype=np.float64)):
        # No overflow flag on this platform: the sum of a block with an inf or NaN
        # is not finite (a false alarm only costs the repairing path).
        _lerp_block_repairing(theta, phi, factor, low_weight)
        return
    np.multiply(diff, factor, out=diff)
    if low_weight:
        np.add(phi, diff, out=phi)
    else:
        np.subtract(theta, diff, out=phi)


def _lerp_block_repairing(
    theta: np.ndarray, phi: np.ndarray, factor: float, low_weight: bool
) -> None:
    """`_lerp_block` where ``θ − φ`` overflowed somewhere: the rare path, which allocates.

    Where θ and φ are finite and their difference is not, the formula runs on
    θ/2 and φ/2 and the result is doubled (exact at that magnitude, as in
    `lookahead_core.lerp`); every other element gets the formula's own bits.
    """
    with np.errstate(over="ignore"):
        overflowed = ~np.isfinite(theta - phi) & np.isfinite(theta) & np.isfinite(phi)
        halves = 0.5 * theta[overflowed], 0.5 * phi[overflowed]
        rescaled = 2.0 * _formula(*halves, factor, low_weight)
        kept_theta = np.where(overflowed, 0, theta).astype(theta.dtype, copy=False)
        kept_phi = np.where(overflowed, 0, phi).astype(phi.dtype, copy=False)
        np.copyto(phi, _formula(kept_theta, kept_phi, factor, low_weight))
        phi[overflowed] = rescaled


def _formula(theta: np.ndarray, phi: np.ndarray, factor: float, low_weight: bool) -> np.ndarray:
    """The block operations of `_lerp_block` as expressions (new arrays, same roundings)."""
    diff = theta - phi
    return phi + diff * factor if low_weight else theta - diff * factor


def _overflow_raises() -> np.errstate:
    """The sync's floating-point mode: an overflow raises (see the module's docstring)."""
    return np.errstate(over="raise")


def _overflow_flag_raises() -> bool:
    """Whether NumPy sees the processor's overflow flag here (not on every platform)."""
    big = np.full(64, np.finfo(np.float32).max, dtype=np.float32)
    try:
        with np.errstate(over="raise"):
            np.subtract(big, -big)
    except FloatingPointError:
        return True
    return False


_FLAGS_WORK = _overflow_flag_raises()


def swap(pair: BlockPair) -> None:
    """Exchange the contents of θ and φ in place, bit for bit, through the scratch."""
    for fast, slow in _blocks(pair.fast, pair.slow, pair.block):
        held = pair.scratch[: fast.size].reshape(fast.shape)
        np.copyto(held, fast)
        np.copyto(fast, slow)
        np.copyto(slow, held)


# --- the outer optimizer's step --------------------------------------------------------------


def align_outer_buffers(
    param: np.ndarray, pair: BlockPair, buffers: tuple[np.ndarray, ...]
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Lay the outer optimizer's buffers of one parameter out like its slow buffer.

    ``buffers`` are what ``outer.init`` allocated on φ (``zeros_like``, which
    keeps φ's memory order); one that is laid out otherwise is replaced by a
    copy that is.

    Returns:
        ``(buffers, works)``: the buffers (the given ones, or aligned copies)
        and their work views, element for element like ``pair.slow``.
    """
    order = memory_order(param.view(np.ndarray).strides)
    kept, works = [], []
    for buffer in buffers:
        work = buffer.transpose(order)
        if not work.flags.c_contiguous:
            aligned = np.empty(work.shape, buffer.dtype)
            np.copyto(aligned, work)
            work = aligned
            buffer = aligned.transpose(np.argsort(order))
        kept.append(buffer)
        works.append(work.reshape(-1) if pair.slow.ndim == 1 else work)
    return tuple(kept), tuple(works)


def outer_step(
    pair: BlockPair,
    works: tuple[np.ndarray, ...],
    plan: SGDPlan | AdamPlan,
    scalars: SGDScalars | AdamScalars,
) -> None:
    """The outer step on one parameter, in place: Δ = φ − θ, O's update, ``θ ← φ``.

    The array operations of `lookahead_core.sgd` or `lookahead_core.adam`'s
    ``update`` followed by `lookahead_core.outer_sync`'s ``φ + delta``, in the
    core's order, each one a ufunc with ``out=`` (Python-float scalars, so
    every operation runs in the parameter's dtype, as in the core): the result
    equals the core's bit for bit. ``works`` are the outer buffers' work views
    (`align_outer_buffers`). Floating-point warnings are off: inf and NaN
    propagate as in the core, and nothing raises halfway through a sync.
    """
    arrays = (pair.fast, pair.slow) + works
    with np.errstate(all="ignore"):
        for fast, slow, *buffers in _blocks_of(arrays, pair.block):
            tmp = pair.scratch[: fast.size].reshape(fast.shape)
            grad = fast
            if pair.fast_copy is not None:
                grad = pair.fast_copy[: fast.size].reshape(fast.shape)
                np.copyto(grad, fast)
            np.subtract(slow, grad, out=grad)  # Δ = φ − θ, over θ (or its contiguous copy)
            if isinstance(plan, SGDPlan):
                _sgd_block(grad, slow, buffers, tmp, plan, scalars)
            else:
                _adam_block(grad, slow, buffers, tmp, plan, scalars)
            np.add(slow, grad, out=slow)  # φ ← φ + delta
            np.copyto(fast, slow)  # θ ← φ


def _sgd_block(grad, phi, buffers, tmp, plan: SGDPlan, scalars: SGDScalars) -> None:
    """``grad`` ← delta of `lookahead_core.sgd` (``grad`` holds Δ; ``tmp`` is scratch)."""
    if scalars.weight_decay != 0.0:
        np.multiply(phi, scalars.weight_decay, out=tmp)
        np.add(grad, tmp, out=grad)  # g + wd·φ
    direction = grad
    if plan.momentum > 0.0:
        (buffer,) = buffers
        if scalars.first:
            np.copyto(buffer, grad)
        else:
            np.multiply(buffer, scalars.momentum, out=buffer)
            np.multiply(grad, scalars.one_minus_dampening, out=tmp)
            np.add(buffer, tmp, out=buffer)  # μ·b + (1 − dampening)·g
        if plan.nesterov:
            np.multiply(buffer, scalars.momentum, out=tmp)
            np.add(grad, tmp, out=grad)  # g + μ·b
        else:
            direction = buffer
    np.multiply(direction, scalars.neg_lr, out=grad)  # −lr·d


def _adam_block(grad, phi, buffers, tmp, plan: AdamPlan, scalars: AdamScalars) -> None:
    """``grad`` ← delta of `lookahead_core.adam`/`adamw` (``grad`` holds Δ; ``tmp`` is scratch)."""
    if scalars.l2 != 0.0:
        np.multiply(phi, scalars.l2, out=tmp)
        np.add(grad, tmp, out=grad)  # g + wd·φ
    m, v = buffers[0], buffers[1]
    np.subtract(grad, m, out=tmp)  # m ← lerp(m, g, 1 − β₁), the two-sided formula
    np.multiply(tmp, scalars.m_weight, out=tmp)
    if scalars.m_low:
        np.add(m, tmp, out=m)
    else:
        np.subtract(grad, tmp, out=m)
    np.multiply(v, scalars.beta2, out=v)  # v ← β₂·v + ((1 − β₂)·g)·g
    np.multiply(grad, scalars.one_minus_beta2, out=tmp)
    np.multiply(tmp, grad, out=tmp)
    np.add(v, tmp, out=v)
    if plan.amsgrad:
        np.maximum(buffers[2], v, out=buffers[2])
        v = buffers[2]
    np.sqrt(v, out=tmp)  # denom = √v / √(1 − β₂ˢ) + ε
    np.divide(tmp, scalars.bias_correction2_sqrt, out=tmp)
    np.add(tmp, scalars.eps, out=tmp)
    np.multiply(m, scalars.neg_step_size, out=grad)  # (−lr/(1 − β₁ˢ))·m / denom
    np.divide(grad, tmp, out=grad)
    if scalars.decay is not None:
        np.multiply(phi, scalars.decay, out=tmp)
        np.subtract(grad, tmp, out=grad)  # − (lr·wd)·φ


def _blocks_of(arrays: tuple[np.ndarray, ...], block: int) -> Iterator[tuple[np.ndarray, ...]]:
    """`_blocks` for any number of arrays of one shape: matching views of at most ``block``."""
    first = arrays[0]
    if first.size <= block:
        yield arrays
        return
    if first.ndim == 1:
        for start in range(0, first.size, block):
            yield tuple(a[start : start + block] for a in arrays)
        return
    rows = first.shape[0]
    row_size = first.size // rows
    if row_size <= block:
        step = block // row_size
        for start in range(0, rows, step):
            yield tuple(a[start : start + step] for a in arrays)
    else:
        for row in range(rows):
            yield from _blocks_of(tuple(a[row] for a in arrays), block)
