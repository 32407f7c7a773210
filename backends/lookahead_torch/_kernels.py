"""Every tensor operation of the adapter's sync and slow-weight swap, in one place.

A faster sync (such as the cache-blocked CPU path below; docs/performance.md,
'The fast paths') replaces the functions of this module and nothing else: the
optimizer hands them lists of tensors and a Python-float ``alpha`` and never
touches the slow weights itself.

The sync (Algorithm 1, docs/algorithm.md) on one (θ, φ) pair is

```text
φ ← lerp(φ, θ, α)      two-sided: φ + α(θ − φ) if α < 0.5 else θ − (1 − α)(θ − φ)
θ ← φ                  a copy: θ and φ never share memory
```

``torch.lerp`` computes exactly this two-sided formula (docs/design.md, 'The
two-sided lerp'), so the kernel is ``torch._foreach_lerp_(slow, fast, alpha)`` then
``torch._foreach_copy_(fast, slow)``, one multi-tensor launch each per
(device, dtype) bucket, in place, with no temporary tensor.

When the slow copy is wider than the parameter (``slow_dtype=torch.float32``
for float16/bfloat16 parameters) ``torch.lerp`` refuses mixed dtypes. The fast
weights are then upcast, exactly, chunk by chunk into a preallocated scratch
buffer (see `scratch_elements`) per device, the lerp runs in the
slow dtype on the slow copy, and the fast copy receives the value rounded to
nearest (``copy_``). No temporary the size of a parameter is made, except for a
parameter whose memory is not dense (a strided view), which goes through one
temporary of its own size. The scratch holds an eighth of those elements,
clamped to [`MIN_CHUNK_ELEMENTS`, `MAX_CHUNK_ELEMENTS`] (never more than there
are): few enough chunks per sync that launch and Python overhead stay small
next to the memory traffic, and at most 64 MiB (float32) per device.

On the CPU the sync is cache-blocked (`lerp_and_copy_blocked`): the pairs are
cut into pieces of `cpu_block_bytes` per tensor (an eighth of the machine's L2
cache, read once from the OS) and the lerp and the copy run
piece by piece, so the copy ``θ ← φ`` reads φ and writes θ while both are
still in the L2 cache. Memory then sees the minimum the sync needs, one read
and one write of θ and of φ (4 × the parameter bytes), where a lerp over whole
tensors followed by a copy over whole tensors reads φ twice, and writes θ
into lines it must first fetch (6 × the bytes once the weights exceed the
cache). Each element is computed by the same ``torch.lerp`` as the unblocked
kernel, so the results are bit for bit the same (``tests/test_fastpaths.py``);
see the Performance page for the measurements (1 thread, 100M float32: 0.94 of
the plain-copy bandwidth and 1.5 × the unblocked kernel on a quiet machine).
The mixed-dtype CPU path uses the same piece size for its batches (and its
scratch holds one piece) instead of `scratch_elements` (bfloat16 parameters, float32 slow copy, 1 thread: 1.09 ×
faster on ResNet-18 shapes, 1.32 × on 100M values).

On CUDA, dense pairs of float32, bfloat16 or float16 parameters (with slow
copies of their dtype or of float32) go through one fused Triton kernel
(`lookahead_torch._fused`): one pass that reads θ and φ once and writes both,
one launch for any number of tensors, the overflow repaired in registers (no
check before the lerp, no upcast scratch), the CPU path's bits. Where triton
is missing, and for other dtypes and strided tensors, the foreach path below
runs unblocked. The outer optimizers' ``Δ = φ − θ`` (`pseudo_gradients_`)
goes through the same kernel.

Overflow. ``θ − φ`` overflows when θ and φ are finite, near the largest value
of the dtype the lerp computes in, with opposite signs (float32, float64, and
bfloat16, whose range float32's barely exceeds), though the interpolated value
lies between them and is finite. There the sync gives the formula on θ/2 and
φ/2, doubled (exact at that magnitude, as `lookahead_core.lerp` does), and
torch's bits everywhere else. ``torch.lerp`` writes over φ and raises no flag
a caller could read, so what the repair needs must be known before it runs:
an overflow needs ``|φ| ≥`` `overflow_margin` (2¹⁰³ ≈ 1e31 in float32)
somewhere. Each sync therefore first reads every slow tensor once (`_stashes`:
on the CPU a NumPy reduction on the tensor's memory, which dispatches no
torch operator; on an accelerator one multi-tensor ``_foreach_norm`` and one
value read back). A tensor above the margin (or not finite) is copied before
its lerp, and after it the elements whose result is not finite while both
inputs are get the rescaled formula; no other tensor is touched again.
float16 pairs (computed in float32) and pairs whose slow copy is wide enough
(float16 into float32, float32 into float64) cannot overflow and are not
read. That read is the price (the Performance page has it): torch offers no
cheaper way to know, before φ is overwritten, that the lerp will not
overflow.
"""

from __future__ import annotations

import functools
import math
import time
import weakref
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from . import _fused

__all__ = [
    "CPU_BLOCK_BYTES",
    "CPU_BLOCK_L2_FRACTION",
    "MAX_CPU_BLOCK_BYTES",
    "MIN_CPU_BLOCK_BYTES",
    "MAX_CHUNK_ELEMENTS",
    "MIN_CHUNK_ELEMENTS",
    "PIECE_ALIGN",
    "all_finite",
    "block_bytes_for_l2",
    "cpu_block_bytes",
    "cpu_cache_bytes",
    "copy_",
    "flat_view",
    "lerp_and_copy_",
    "lerp_and_copy_blocked",
    "make_scratch",
    "overflow_margin",
    "pseudo_gradients_",
    "scratch_elements",
    "scratch_key",
    "set_cpu_block_bytes",
    "swap_",
    "unswap_",
]

MIN_CHUNK_ELEMENTS = 1 << 20
"""Smallest upcast scratch (when there are that many elements): 4 MiB in float32."""

MAX_CHUNK_ELEMENTS = 1 << 24
"""Largest upcast scratch: 64 MiB in float32.

Measured on an H200 (PyTorch 2.11): syncing 256M bfloat16 parameters with a
float32 slow copy took 10.9 ms through a 2²⁰-element scratch (256 chunks, each
three multi-tensor launches plus Python slicing) and 2.1 ms through a
2²⁴-element one; the same-dtype float32 sync of as many elements takes 1.5 ms."""


CPU_BLOCK_BYTES = 256 * 1024
"""Bytes per tensor of one piece of the cache-blocked CPU sync where the L2 size is unknown.

The piece size is otherwise `cpu_block_bytes`, derived from the machine's L2
cache. Measured (Xeon, 2 MiB L2, 1 thread, 100M float32 in 100 tensors):
64 KiB 99.8 ms, 128 KiB 89.7 ms, 256 KiB 88.4 ms, 512 KiB 91.4 ms, 1 MiB
101.7 ms per sync; unblocked ``_foreach_lerp_`` + ``_foreach_copy_`` 134.8 ms."""

CPU_BLOCK_L2_FRACTION = 8
"""A piece per tensor is this fraction of the L2 cache (see `cpu_block_bytes`)."""

MIN_CPU_BLOCK_BYTES = 32 * 1024
MAX_CPU_BLOCK_BYTES = 1024 * 1024

_cpu_block_override: int | None = None


def cpu_cache_bytes(level: int, root: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """Size in bytes of CPU 0's data (or unified) cache of ``level``, or ``None`` if unknown.

    Read from Linux's sysfs (``index*/level``, ``type``, ``size`` such as
    ``1024K``); where that is missing, ``os.sysconf`` (glibc's
    ``SC_LEVEL{1,2,3}_..._CACHE_SIZE``, 0 when it does not know).
    """
    import os

    try:
        entries = sorted(os.listdir(root))
    except OSError:
        entries = []
    for entry in entries:
        if not entry.startswith("index"):
            continue
        path = os.path.join(root, entry)
        try:
            with open(os.path.join(path, "level")) as f:
                found = int(f.read().strip())
            with open(os.path.join(path, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(path, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        if found != level or kind == "Instruction" or not text:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        try:
            return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        except ValueError:
            continue
    names = {1: "SC_LEVEL1_DCACHE_SIZE", 2: "SC_LEVEL2_CACHE_SIZE", 3: "SC_LEVEL3_CACHE_SIZE"}
    try:
        size = os.sysconf(names[level])
    except (KeyError, ValueError, OSError):
        return None
    return size if size > 0 else None


def block_bytes_for_l2(l2_bytes: int | None) -> int:
    """The piece size (bytes per tensor) the blocked CPU sync uses with an L2 of ``l2_bytes``.

    ``l2_bytes / CPU_BLOCK_L2_FRACTION``, clamped to [`MIN_CPU_BLOCK_BYTES`,
    `MAX_CPU_BLOCK_BYTES`]; `CPU_BLOCK_BYTES` when the size is unknown.
    """
    if not l2_bytes:
        return CPU_BLOCK_BYTES
    return max(MIN_CPU_BLOCK_BYTES, min(MAX_CPU_BLOCK_BYTES, l2_bytes // CPU_BLOCK_L2_FRACTION))


@functools.lru_cache(maxsize=1)
def _cpu_block_from_cache() -> int:
    return block_bytes_for_l2(cpu_cache_bytes(2))


def cpu_block_bytes() -> int:
    """Bytes per tensor of one piece of the cache-blocked CPU sync on this machine.

    Chosen once from the L2 cache (`block_bytes_for_l2` of `cpu_cache_bytes`),
    unless `set_cpu_block_bytes` fixed it. Which size is chosen changes the
    speed only: the results are the same bits for every piece size
    (`lerp_and_copy_blocked`).
    """
    if _cpu_block_override is not None:
        return _cpu_block_override
    return _cpu_block_from_cache()


TUNING_ROUNDS = 2
"""Syncs each candidate piece size is timed for before a bucket keeps the fastest."""


class BlockTuner:
    """The piece size of one bucket of the blocked CPU sync, timed over its first syncs.

    Candidates (bytes per tensor): one, two and four times `cpu_block_bytes`
    and "unblocked" (one batch for the whole bucket: the plain foreach pair).
    A tuner is kept per bucket shape (dtype, number of tensors, elements), so
    every optimizer over the same parameters shares its choice.
    The first ``TUNING_ROUNDS × len(candidates)`` syncs cycle through them;
    then the one with the shortest time of its rounds is kept for good. Which
    one wins changes the speed only: every candidate gives the same bits.
    The L2 size sets where the cache effect lies; the cost of a ``_foreach``
    call per batch (which makes small pieces dear for models of many small
    tensors) and the machine's own mix of the two are what the timing adds.
    """

    __slots__ = ("candidates", "times", "choice", "calls")

    def __init__(self, block_bytes: int, total_bytes: int) -> None:
        sizes = [block_bytes, 2 * block_bytes, 4 * block_bytes]
        whole = max(total_bytes, PIECE_ALIGN * 8)
        self.candidates = sorted({size for size in sizes if size < whole} | {whole})
        self.times: dict[int, list[float]] = {c: [] for c in self.candidates}
        self.choice: int | None = self.candidates[0] if len(self.candidates) == 1 else None
        self.calls = 0

    def next(self) -> int:
        """The piece size for this sync (bytes per tensor)."""
        if self.choice is not None:
            return self.choice
        return self.candidates[self.calls % len(self.candidates)]

    def record(self, block_bytes: int, seconds: float) -> None:
        """The time of a sync with ``block_bytes``; decides once every candidate has its rounds."""
        if self.choice is not None:
            return
        self.times[block_bytes].append(seconds)
        self.calls += 1
        if all(len(t) >= TUNING_ROUNDS for t in self.times.values()):
            self.choice = min(self.candidates, key=lambda c: (min(self.times[c]), c))


_TUNERS: dict[tuple, BlockTuner] = {}


def tuning_syncs() -> int:
    """At most how many syncs of a bucket its `BlockTuner` times before it keeps a size."""
    return TUNING_ROUNDS * 4


def block_choices() -> dict[str, str]:
    """What the tuned buckets chose so far: ``{bucket: choice}``, for `make bench`'s report."""
    out = {}
    for (dtype, count, total), tuner in _TUNERS.items():
        label = f"{count} tensors, {total * dtype.itemsize / 1e6:.1f} MB {str(dtype).replace('torch.', '')}"
        if tuner.choice is None:
            out[label] = "still timing"
        elif tuner.choice == tuner.candidates[-1] and tuner.choice >= total * dtype.itemsize:
            out[label] = "unblocked (one batch)"
        else:
            out[label] = f"{tuner.choice // 1024} KiB pieces"
    return out


def _blocked_sync_tuned(fast: list[torch.Tensor], slow: list[torch.Tensor], alpha: float) -> None:
    """`lerp_and_copy_blocked` with this bucket's piece size (`BlockTuner`; fixed by
    `set_cpu_block_bytes`)."""
    itemsize = fast[0].element_size()
    if _cpu_block_override is not None:
        lerp_and_copy_blocked(fast, slow, alpha, _cpu_block_override // itemsize)
        return
    total = sum(f.numel() for f in fast)
    key = (fast[0].dtype, len(fast), total)
    tuner = _TUNERS.get(key)
    if tuner is None:
        if len(_TUNERS) >= 256:
            _TUNERS.clear()
        tuner = _TUNERS[key] = BlockTuner(cpu_block_bytes(), total * itemsize)
    block = tuner.next()
    if tuner.choice is not None:
        lerp_and_copy_blocked(fast, slow, alpha, block // itemsize)
        return
    start = time.perf_counter()
    lerp_and_copy_blocked(fast, slow, alpha, block // itemsize)
    tuner.record(block, time.perf_counter() - start)


def set_cpu_block_bytes(block_bytes: int | None) -> None:
    """Fix the piece size of the blocked CPU sync (bytes per tensor), or ``None`` for the default.

    Affects syncs from now on, and the upcast scratch of optimizers built
    (or whose parameters are re-adopted) afterwards.
    """
    global _cpu_block_override
    if block_bytes is not None:
        if isinstance(block_bytes, bool) or not isinstance(block_bytes, int):
            raise TypeError(f"block_bytes must be an int or None, got {type(block_bytes).__name__}")
        if block_bytes < PIECE_ALIGN * 8:
            raise ValueError(f"block_bytes must be at least {PIECE_ALIGN * 8}, got {block_bytes}")
    _cpu_block_override = block_bytes


PIECE_ALIGN = 64
"""Pieces of the blocked sync start at multiples of this many elements (see
`lerp_and_copy_blocked`): two AVX-512 vectors of 16-bit floats, a multiple of
every vector loop's stride."""


@functools.lru_cache(maxsize=1)
def _fused_available() -> bool:
    """Whether CUDA pairs go through the fused Triton kernel (`lookahead_torch._fused`)."""
    return _fused.available()


def scratch_elements(total: int) -> int:
    """Elements of the upcast scratch for ``total`` mixed-dtype elements on one device."""
    return min(total, max(MIN_CHUNK_ELEMENTS, min(MAX_CHUNK_ELEMENTS, total // 8)))

Tensors = Sequence[torch.Tensor]
ScratchKey = tuple[torch.device, torch.dtype]

_BITS_DTYPE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def scratch_key(slow: torch.Tensor) -> ScratchKey:
    """The scratch buffer a mixed-dtype pair with this slow tensor uses."""
    return slow.device, slow.dtype


def make_scratch(
    fast: Tensors, slow: Tensors
) -> dict[ScratchKey, torch.Tensor]:
    """Allocate the upcast scratch buffers the mixed-dtype pairs among (fast, slow) need.

    One 1-D buffer per (device, slow dtype) of `scratch_elements` of the
    elements of those pairs, on the CPU at most one cache-blocked piece
    (`cpu_block_bytes`); none at all when every pair shares its dtype.
    """
    totals: dict[ScratchKey, int] = {}
    for f, s in zip(fast, slow):
        if f.dtype != s.dtype and not (f.device.type == "cuda" and _fused_available()
                                       and _fused.supports(f, s)):
            key = scratch_key(s)
            totals[key] = totals.get(key, 0) + f.numel()
    scratch = {}
    for (device, dtype), n in totals.items():
        elements = scratch_elements(n)
        if device.type == "cpu":
            elements = min(elements, cpu_block_bytes() // dtype.itemsize)
        scratch[(device, dtype)] = torch.empty(max(elements, 1), dtype=dtype, device=device)
    return scratch


def _buckets(
    fast: Tensors, slow: Tensors
) -> dict[tuple[torch.device, torch.dtype, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Pairs grouped by (device, fast dtype, slow dtype): one multi-tensor launch each."""
    buckets: dict[
        tuple[torch.device, torch.dtype, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]
    ] = {}
    for f, s in zip(fast, slow):
        if f.numel() == 0:
            continue
        fs, ss = buckets.setdefault((f.device, f.dtype, s.dtype), ([], []))
        fs.append(f)
        ss.append(s)
    return buckets


def flat_view(t: torch.Tensor) -> torch.Tensor | None:
    """``t``'s elements as a 1-D view in memory order, or ``None`` if its memory is not dense.

    Any axis permutation of a contiguous tensor (``channels_last`` weights) is
    dense; a slice with gaps is not.
    """
    if t.is_contiguous():
        return t.view(-1)
    expected = 1
    for size, stride in sorted(
        ((size, stride) for size, stride in zip(t.shape, t.stride()) if size != 1),
        key=lambda pair: pair[1],
    ):
        if stride != expected:
            return None
        expected *= size
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def _matching_flat_views(
    f: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """1-D views of ``f`` and ``s`` whose i-th elements are the same index, or ``None``."""
    if f.is_contiguous() and s.is_contiguous():
        return f.view(-1), s.view(-1)
    if f.stride() != s.stride():
        return None
    flat_f, flat_s = flat_view(f), flat_view(s)
    if flat_f is None or flat_s is None:
        return None
    return flat_f, flat_s


@torch.no_grad()
def lerp_and_copy_(
    fast: Tensors,
    slow: Tensors,
    alpha: float,
    scratch: dict[ScratchKey, torch.Tensor] | None = None,
) -> None:
    """The sync on every pair: ``slow ← lerp(slow, fast, alpha)``, then ``fast ← slow``.

    Where ``fast − slow`` overflows with both finite, the lerp is the rescaled
    formula instead (see the module's docstring); everywhere else it is
    ``torch.lerp``'s, bit for bit.

    Args:
        fast: the fast tensors θ (parameters, detached), updated in place.
        slow: the slow tensors φ, one per fast tensor, same shape and device;
            the same dtype or a wider floating dtype.
        alpha: a validated Python float in [0, 1] (a tensor or NumPy scalar
            could change the computation's dtype).
        scratch: the buffers of `make_scratch`, needed when a pair mixes dtypes.
    """
    for (device, fast_dtype, slow_dtype), (fs, ss) in _buckets(fast, slow).items():
        if device.type == "cuda" and _fused_available():
            fused = [_fused.supports(f, s) for f, s in zip(fs, ss)]
            if any(fused):
                _fused.lerp_and_copy_([f for f, ok in zip(fs, fused) if ok],
                                      [s for s, ok in zip(ss, fused) if ok], alpha)
                fs = [f for f, ok in zip(fs, fused) if not ok]
                ss = [s for s, ok in zip(ss, fused) if not ok]
                if not fs:
                    continue
        if fast_dtype == slow_dtype:
            if device.type == "cpu":
                _blocked_sync_tuned(fs, ss, alpha)
            else:
                stashes = _stashes(fs, ss)
                torch._foreach_lerp_(ss, fs, alpha)
                _repair_overflows_(ss, fs, stashes, alpha)
                torch._foreach_copy_(fs, ss)
        else:
            if scratch is None or (device, slow_dtype) not in scratch:
                raise RuntimeError(f"no upcast scratch buffer for {slow_dtype} on {device}")
            _lerp_and_copy_upcast(fs, ss, alpha, scratch[(device, slow_dtype)])


@torch.no_grad()
def lerp_and_copy_blocked(
    fast: Tensors, slow: Tensors, alpha: float, block_elements: int
) -> None:
    """The sync of same-dtype pairs, piece by piece: `lerp_and_copy_` for the CPU cache.

    The pairs are cut into pieces of at most ``block_elements`` elements (a
    dense tensor into slices of its flat view; small tensors stay whole and
    share a batch up to that many elements), and each batch runs
    ``_foreach_lerp_(φ, θ, α)`` then ``_foreach_copy_(θ, φ)`` while it is in
    the cache. A tensor whose memory is not dense, or laid out differently from
    its slow copy, is one piece of its own. Tensors that fit in one batch
    together give exactly the two calls of the unblocked kernel. A pair whose
    lerp could overflow (module docstring) is repaired piece by piece between
    the two calls.

    Pieces start at multiples of `PIECE_ALIGN` elements: torch's CPU kernels
    compute the last ``n mod (vector width)`` elements of a tensor with scalar
    code, which can differ from the vector code in the sign of a zero (α = 1,
    θ = −0.0); cutting at multiples of every vector width keeps each element on
    the path it takes in the unblocked kernel, so the two agree bit for bit.

    Args:
        fast: the fast tensors θ, updated in place.
        slow: the slow tensors φ, same shape, dtype and device as ``fast``.
        alpha: a validated Python float in [0, 1].
        block_elements: elements per piece and per batch, rounded down to a
            multiple of `PIECE_ALIGN` (at least one).
    """
    block_elements = max(PIECE_ALIGN, block_elements - block_elements % PIECE_ALIGN)
    stashes = _stashes(fast, slow)
    batch_fast: list[torch.Tensor] = []
    batch_slow: list[torch.Tensor] = []
    batch_stash: list[torch.Tensor | None] = []

    def flush() -> None:
        torch._foreach_lerp_(batch_slow, batch_fast, alpha)
        _repair_overflows_(batch_slow, batch_fast, batch_stash, alpha)
        torch._foreach_copy_(batch_fast, batch_slow)
        batch_fast.clear()
        batch_slow.clear()
        batch_stash.clear()

    used = 0
    for f, s, stash in zip(fast, slow, stashes):
        n = f.numel()
        if n > block_elements and (flat := _matching_flat_views(f, s)) is not None:
            slow_pieces = flat[1].split(block_elements)
            pieces: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = zip(
                flat[0].split(block_elements), slow_pieces,
                _stash_pieces(stash, block_elements, len(slow_pieces)),
            )
        else:
            pieces = ((f, s, stash),)
        for piece_fast, piece_slow, piece_stash in pieces:
            size = piece_fast.numel()
            if used and used + size > block_elements:
                flush()
                used = 0
            batch_fast.append(piece_fast)
            batch_slow.append(piece_slow)
            batch_stash.append(piece_stash)
            used += size
    if batch_fast:
        flush()


def _lerp_and_copy_upcast(
    fast: list[torch.Tensor], slow: list[torch.Tensor], alpha: float, scratch: torch.Tensor
) -> None:
    """The sync for narrow fast / wide slow pairs, chunked through ``scratch``.

    Per batch of chunks (at most ``scratch.numel()`` elements in all): the
    fast chunks are upcast into the scratch (exact: every float16/bfloat16
    value is a float32 value), the slow chunks are lerped toward them in the
    slow dtype (and repaired where that overflowed, see the module's
    docstring), and the fast chunks receive the slow values rounded to nearest.
    """
    capacity = scratch.numel()
    stashes = _stashes(fast, slow)
    batch_fast: list[torch.Tensor] = []
    batch_slow: list[torch.Tensor] = []
    batch_stash: list[torch.Tensor | None] = []
    used = 0

    def flush() -> None:
        nonlocal used
        views, offset = [], 0
        for piece in batch_fast:
            views.append(scratch[offset : offset + piece.numel()])
            offset += piece.numel()
        torch._foreach_copy_(views, batch_fast)  # upcast θ, exact
        torch._foreach_lerp_(batch_slow, views, alpha)  # φ ← lerp(φ, θ, α) in the slow dtype
        _repair_overflows_(batch_slow, views, batch_stash, alpha)
        torch._foreach_copy_(batch_fast, batch_slow)  # θ ← φ, rounded to nearest
        batch_fast.clear()
        batch_slow.clear()
        batch_stash.clear()
        used = 0

    for f, s, stash in zip(fast, slow, stashes):
        flat = _matching_flat_views(f, s)
        if flat is None:
            # Not dense, or laid out differently from its slow copy: no flat views
            # with matching element order. One temporary of this parameter's size.
            theta = f.to(s.dtype)
            s.lerp_(theta, alpha)
            _repair_overflows_([s], [theta], [stash], alpha)
            f.copy_(s)
            continue
        flat_f, flat_s = flat
        flat_stash = None if stash is None else flat_view(stash)
        start, n = 0, flat_f.numel()
        while start < n:
            take = min(n - start, capacity - used)
            batch_fast.append(flat_f[start : start + take])
            batch_slow.append(flat_s[start : start + take])
            batch_stash.append(None if flat_stash is None else flat_stash[start : start + take])
            used += take
            start += take
            if used == capacity:
                flush()
    if batch_fast:
        flush()


# --- overflow of θ − φ ---------------------------------------------------------------------

_OPMATH = {torch.float16: torch.float32, torch.bfloat16: torch.float32}
"""The dtype torch's lerp computes a same-dtype pair of 16-bit floats in."""


def overflow_margin(fast_dtype: torch.dtype, slow_dtype: torch.dtype) -> float | None:
    """How large ``|φ|`` must be somewhere for ``θ − φ`` to overflow in the sync, or ``None``.

    The lerp computes in the slow dtype (float32 for 16-bit pairs). ``θ − φ``
    rounds to inf once ``|θ| + |φ|`` reaches the largest finite value plus half
    an ulp of it; with ``|θ|`` at most the fast dtype's largest value, that
    needs ``|φ| ≥`` the returned margin. ``None``: no finite pair of these
    dtypes overflows (float16, float16 into float32, float32 into float64).
    """
    compute = torch.finfo(_OPMATH.get(slow_dtype, slow_dtype))
    ulp = 2.0 ** (math.frexp(compute.max)[1] - 1) * compute.eps  # of the largest value
    overflow = int(compute.max) + int(ulp) // 2  # exact integers
    margin = overflow - int(torch.finfo(fast_dtype).max)
    return float(margin) if margin <= int(torch.finfo(slow_dtype).max) else None


def _stashes(fast: Sequence[torch.Tensor], slow: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """Before a sync: a copy of each slow tensor whose lerp could overflow, else ``None``.

    One read of every slow tensor, against `overflow_margin`; copies only
    where some ``|φ|`` is that large or not finite (the rare path). On the
    CPU the reads are NumPy reductions on the tensors' own memory, which
    dispatch no torch operator (a sync stays two ``_foreach`` calls per
    bucket); on an accelerator one multi-tensor reduction and one value read
    back.
    """
    if not slow:
        return []
    margin = overflow_margin(fast[0].dtype, slow[0].dtype)
    if margin is None:
        return [None] * len(slow)
    if slow[0].device.type == "cpu":
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum is an answer
            below = [_below_on_cpu(s, margin) for s in slow]
    else:
        # A 2-norm bounds every |φ|; where it overflows itself (values far below the
        # margin can make it inf) it errs on the side of a copy. NaN compares False.
        norms = torch._foreach_norm(list(slow), ord=2)
        if float(torch.stack(norms).max()) < margin:
            return [None] * len(slow)
        below = [float(norm) < margin for norm in norms]
    return [None if ok else s.clone(memory_format=torch.preserve_format)
            for s, ok in zip(slow, below)]


def _below_on_cpu(t: torch.Tensor, margin: float) -> bool:
    """Whether every ``|t| < margin`` (``False`` where t holds inf or NaN), read by NumPy.

    Call it under ``numpy.errstate(over="ignore", invalid="ignore")``."""
    if t.numel() == 0:
        return True
    layout = _NUMPY_LAYOUT.get(t.dtype)
    if layout is None:  # a dtype NumPy cannot read: torch's own reduction
        return bool(t.abs().max() < margin)
    values = _cached_numpy_view(t, layout)
    if t.dtype == torch.bfloat16:
        # NumPy has no bfloat16: its bits. |x| < 2**119, below the margin of every
        # bfloat16 pair, is an exponent field below 246, for either sign.
        limit = 246 << 7
        return bool(np.maximum.reduce(values.view(np.int16), axis=None) < limit
                    and np.maximum.reduce(values, axis=None) < 0x8000 | limit)
    if values.ndim == 1:
        # A finite sum of squares puts every |t| below 2**64 (float32) or 2**512
        # (float64), far below the margin; NumPy's dot is its fastest reduction.
        return math.isfinite(np.dot(values, values))
    low, high = np.minimum.reduce(values, axis=None), np.maximum.reduce(values, axis=None)
    return bool(max(-low, high) < margin)


_NUMPY_LAYOUT = {
    torch.float32: ("<f4", 1),
    torch.float64: ("<f8", 1),
    torch.complex64: ("<f4", 2),  # (real, imaginary) pairs
    torch.complex128: ("<f8", 2),
    torch.bfloat16: ("<u2", 1),
}
"""How NumPy reads the memory of a CPU tensor of each dtype: type string, values per element."""


class _Memory:
    __slots__ = ("__array_interface__",)


_VIEWS: dict[int, tuple[weakref.ref, tuple, np.ndarray]] = {}
"""NumPy views of the slow tensors, kept per tensor object between syncs (see `_cached_numpy_view`)."""


def _cached_numpy_view(t: torch.Tensor, layout: tuple[str, int]) -> np.ndarray:
    """`_numpy_view` of ``t``, made once per tensor and kept while the tensor lives.

    The slow tensors are the same objects at every sync; building a view costs
    about as much as reading a small tensor (~2 µs), so the check of a model
    of many small tensors would pay it for each at every sync. An entry is
    used only while its tensor object is alive (a weak reference, whose
    callback drops the entry) and still has the address, shape, strides and
    dtype the view was made for (so ``set_`` or ``resize_`` on it make a new one).
    """
    key = id(t)
    signature = (t.data_ptr(), t.shape, t.stride(), t.dtype)
    entry = _VIEWS.get(key)
    if entry is not None and entry[0]() is t and entry[1] == signature:
        return entry[2]
    view = _numpy_view(t, *layout)
    try:
        ref = weakref.ref(t, lambda _, key=key: _VIEWS.pop(key, None))
    except TypeError:  # not weak-referenceable: no caching
        return view
    _VIEWS[key] = (ref, signature, view)
    return view


def _numpy_view(t: torch.Tensor, typestr: str, per_element: int) -> np.ndarray:
    """A read-only NumPy view of a CPU tensor's memory, 1-D if the tensor is contiguous.

    Built from the pointer: ``Tensor.numpy()`` would dispatch a ``detach``, and
    the sync's check should add no torch operator to it (it stays two
    ``_foreach`` calls per bucket, ``tests/test_torch_features.py``).
    """
    memory = _Memory()
    if t.is_contiguous():
        shape: tuple[int, ...] = (t.numel() * per_element,)
        strides = None
    else:
        itemsize = int(typestr[2:])
        shape = tuple(t.shape) + ((per_element,) if per_element > 1 else ())
        strides = tuple(s * per_element * itemsize for s in t.stride()) + (
            (itemsize,) if per_element > 1 else ())
    memory.__array_interface__ = {"version": 3, "typestr": typestr, "shape": shape,
                                  "strides": strides, "data": (t.data_ptr(), True)}
    return np.asarray(memory)


def _stash_pieces(stash: torch.Tensor | None, block_elements: int,
                  count: int) -> Sequence[torch.Tensor | None]:
    """The ``count`` pieces of ``stash`` that match the slow tensor's flat pieces.

    A ``preserve_format`` copy of a dense tensor has its strides, so its flat
    view (`flat_view`) lists the elements in the same order.
    """
    if stash is None:
        return [None] * count
    flat = flat_view(stash)
    assert flat is not None, "a preserve_format copy of a dense tensor is dense"
    return flat.split(block_elements)


def _repair_overflows_(slow: Sequence[torch.Tensor], theta: Sequence[torch.Tensor],
                       stashes: Sequence[torch.Tensor | None], alpha: float) -> None:
    """After the lerp: the rescaled formula where a stashed pair overflowed."""
    for s, t, old in zip(slow, theta, stashes):
        if old is not None:
            _repair_overflow_(s, old, t.to(s.dtype), alpha)


def _repair_overflow_(slow: torch.Tensor, old: torch.Tensor, theta: torch.Tensor,
                      alpha: float) -> None:
    """``slow`` (the lerp of ``old`` toward ``theta``) where ``theta − old`` overflowed.

    Those elements are the non-finite results of finite inputs. They get
    ``2·lerp(old/2, θ/2, α)``: both inputs are at least the overflow margin
    there, so halving and doubling are exact and the formula rounds as it would
    without the overflow. Allocates (masks and gathers): the rare path.
    """
    overflowed = ~torch.isfinite(slow) & torch.isfinite(old) & torch.isfinite(theta)
    if bool(overflowed.any()):
        halves = old[overflowed] * 0.5, theta[overflowed] * 0.5
        slow[overflowed] = torch.lerp(*halves, alpha) * 2.0


@torch.no_grad()
def pseudo_gradients_(fast: Tensors, slow: Tensors) -> list[torch.Tensor]:
    """The outer optimizer's gradients Δ = φ − θ, one per pair, in each slow tensor's dtype.

    A same-dtype pair gets Δ in θ's own memory (``θ ← −θ``, then ``θ ← θ + φ``:
    the bits of ``φ − θ``, signed zeros included) and the returned tensor is
    ``fast[i]`` itself: θ is overwritten by φ after the outer step, so the
    sync allocates nothing. A pair whose slow copy is wider (``slow_dtype``)
    gets a new tensor of the slow dtype (θ upcast exactly, one rounding), and
    one whose slow copy is in host memory (``slow_device="cpu"``) a new host
    tensor: the outer optimizer then steps in host memory, where its state is.
    DTensors are computed on their local shards; the result is laid out like
    the slow tensor.

    Args:
        fast: θ, the parameters (detached; DTensors allowed), overwritten for same-dtype pairs.
        slow: φ, one per fast tensor.
    """
    out: list[torch.Tensor] = []
    same_fast: list[torch.Tensor] = []
    same_slow: list[torch.Tensor] = []
    for f, s in zip(fast, slow):
        if f.device != s.device:
            # Slow weights in host memory (slow_device="cpu"): Δ there too, beside φ
            # (θ brought over, upcast exactly where the slow dtype is wider).
            out.append(torch.sub(s, f.to(s.device)))
        elif f.dtype == s.dtype:
            out.append(f)
            local_f, local_s = _local(f), _local(s)
            if local_f.numel() > 0:
                same_fast.append(local_f)
                same_slow.append(local_s)
        else:
            out.append(torch.sub(s, f))  # promotes θ to the slow dtype exactly
    buckets: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for f, s in zip(same_fast, same_slow):
        fs, ss = buckets.setdefault((f.device, f.dtype), ([], []))
        fs.append(f)
        ss.append(s)
    for (device, _), (fs, ss) in buckets.items():
        if device.type == "cuda" and _fused_available():
            fused = [_fused.supports(f, s) for f, s in zip(fs, ss)]
            _fused.pseudo_gradients_([f for f, ok in zip(fs, fused) if ok],
                                     [s for s, ok in zip(ss, fused) if ok])
            fs = [f for f, ok in zip(fs, fused) if not ok]
            ss = [s for s, ok in zip(ss, fused) if not ok]
            if not fs:
                continue
        torch._foreach_neg_(fs)
        torch._foreach_add_(fs, ss)
    return out


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a view), or ``t``."""
    return t._local_tensor if hasattr(t, "_local_tensor") and hasattr(t, "device_mesh") else t


@torch.no_grad()
def copy_(dst: Tensors, src: Tensors) -> None:
    """``dst[i] ← src[i]`` for every pair (casting to ``dst``'s dtype, rounding to nearest)."""
    pairs = [(d, s) for d, s in zip(dst, src) if d.numel() > 0]
    by_device: dict[torch.device, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for d, s in pairs:
        ds, ss = by_device.setdefault(d.device, ([], []))
        ds.append(d)
        ss.append(s)
    for ds, ss in by_device.values():
        if any(d.device != s.device for d, s in zip(ds, ss)):  # slow_device="cpu"
            for d, s in zip(ds, ss):
                d.copy_(s, non_blocking=False)
        else:
            torch._foreach_copy_(ds, ss)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s memory reinterpreted as integers of the same width (complex: per real part)."""
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.view(_BITS_DTYPE[t.element_size()])


@torch.no_grad()
def swap_(fast: Tensors, slow: Tensors) -> list[torch.Tensor | None]:
    """Exchange the contents of each (fast, slow) pair in place; undo with `unswap_`.

    A same-dtype pair is swapped by three in-place XORs of its bits: no third
    copy, no scratch, and exact for every value (NaN payloads and signed zeros
    included). A pair with a wider slow dtype cannot hold both values in its
    two buffers: the fast values are stashed in a temporary of the parameter's
    size and dtype, and the parameter receives φ rounded to nearest; the slow
    copy is not changed. A pair whose slow copy is in host memory
    (``slow_device="cpu"``) is stashed in host memory the same way.

    Returns:
        The stash per pair (``None`` for a pair swapped in place), for `unswap_`.
    """
    stashes: list[torch.Tensor | None] = []
    for f, s in zip(fast, slow):
        if f.device != s.device:
            # Slow weights in host memory (slow_device="cpu"): θ is stashed there too,
            # so the GPU holds nothing extra.
            stashes.append(f.to(s.device, copy=True))
            f.copy_(s)
        elif f.dtype == s.dtype:
            a, b = _bits(f), _bits(s)
            a.bitwise_xor_(b)
            b.bitwise_xor_(a)
            a.bitwise_xor_(b)
            stashes.append(None)
        else:
            stashes.append(f.clone(memory_format=torch.preserve_format))
            f.copy_(s)
    return stashes


@torch.no_grad()
def unswap_(fast: Tensors, slow: Tensors, stashes: Sequence[torch.Tensor | None]) -> None:
    """Undo `swap_`: same-dtype pairs are swapped back, stashed fast values restored."""
    for f, s, stash in zip(fast, slow, stashes):
        if stash is None:
            a, b = _bits(f), _bits(s)
            a.bitwise_xor_(b)
            b.bitwise_xor_(a)
            a.bitwise_xor_(b)
        else:
            f.copy_(stash)


@torch.no_grad()
def all_finite(tensors: Tensors) -> bool:
    """Whether every element of every tensor is finite: one host sync per device.

    ``_foreach_norm`` with ``ord=inf`` is a max-abs reduction: inf or NaN
    anywhere makes it non-finite, and unlike a 2-norm it cannot overflow on
    large finite float16 values. No temporary of a parameter's size.
    """
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        if t.numel() > 0:
            by_device.setdefault(t.device, []).append(t)
    for ts in by_device.values():
        norms = torch._foreach_norm(ts, ord=math.inf)
        if not bool(torch.stack([n.isfinite() for n in norms]).all()):
            return False
    return True
