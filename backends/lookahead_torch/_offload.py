"""``slow_device="cpu"``: the slow weights of CUDA parameters in pinned host memory.

Lookahead's state is read and written once every k steps, so it can live in
host memory at the cost of moving it over the host link once per sync: the
GPU then holds no slow copy at all (0 × P, where it held one parameter copy:
4 bytes per parameter in float32), plus one bounded staging buffer.

The sync streams each bucket of parameters in chunks (`sync_`):

```text
for each chunk i (buffer b = i mod 2, of the two halves of the staging buffer):
    copy stream:  wait until buffer b's previous chunk has left;  φ chunk host → staging[b]
    work stream:  wait for that copy;  fused lerp on (θ chunk, staging[b]), θ ← φ on the device;
                  staging[b] → φ chunk host;  mark buffer b free
```

so the host-to-device copy of chunk i + 1 overlaps the lerp and the
device-to-host copy of chunk i (the two directions use the GPU's two copy
engines). The lerp is the same kernel as without offload
(`lookahead_torch._kernels.lerp_and_copy_`: the fused Triton kernel on CUDA),
on pieces that start at multiples of `lookahead_torch._kernels.PIECE_ALIGN`
elements: the results are the same bits as ``slow_device=None``. The work
stream starts after the current stream's work (the training step that
produced θ), and the current stream waits for the work stream; the host
waits for the last device-to-host copy before `sync_` returns, so the slow
weights in host memory are complete whenever Python can see them
(``state_dict()``, ``slow_weights()``, a checkpoint).

The staging buffer holds `DEFAULT_STAGING_BYTES` (64 MiB) unless the
optimizer's ``offload_buffer_bytes`` says otherwise, in the slow dtype, two
halves of ``offload_buffer_bytes / 2``, allocated on each device once, at
the first sync (no larger than the parameters need). Smaller buffers cost more
chunks (one launch and two copies each); a chunk of 32 MiB keeps the link busy.

Without a CUDA device there is nothing to offload: the option is refused
(`check_offloadable`) with the reason, rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import _kernels

__all__ = [
    "DEFAULT_STAGING_BYTES",
    "MIN_STAGING_BYTES",
    "Stager",
    "check_offload_buffer_bytes",
    "check_offloadable",
    "check_slow_device",
    "host_copy",
]

DEFAULT_STAGING_BYTES = 64 * 1024 * 1024
"""The staging buffer's default size per device: two halves of 32 MiB."""

MIN_STAGING_BYTES = 2 * _kernels.PIECE_ALIGN * 8
"""Smallest staging buffer accepted: two halves of one aligned piece of float64."""


def check_slow_device(slow_device: Any) -> torch.device | None:
    """``None`` (the slow weights beside the parameters) or the CPU; anything else is refused."""
    if slow_device is None:
        return None
    if not isinstance(slow_device, (str, torch.device)):
        raise TypeError(
            f"slow_device must be None or 'cpu', got {type(slow_device).__name__}")
    try:
        device = torch.device(slow_device)
    except RuntimeError as error:
        raise ValueError(f"slow_device must be None or 'cpu', got {slow_device!r}") from error
    if device.type != "cpu" or device.index not in (None, 0):
        raise ValueError(
            f"slow_device must be None or 'cpu' (the slow weights in pinned host memory), "
            f"got {slow_device!r}")
    return torch.device("cpu")


def check_offload_buffer_bytes(value: Any, slow_device: torch.device | None) -> int:
    """The staging buffer size in bytes: a positive int, only meaningful with ``slow_device``."""
    if value is None:
        return DEFAULT_STAGING_BYTES
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"offload_buffer_bytes must be an int, got {type(value).__name__}")
    if value < MIN_STAGING_BYTES:
        raise ValueError(
            f"offload_buffer_bytes must be at least {MIN_STAGING_BYTES}, got {value}")
    if slow_device is None:
        raise ValueError("offload_buffer_bytes sizes the staging buffer of slow_device='cpu'; "
                         "without slow_device there is none: drop it or pass slow_device='cpu'")
    return value


def check_offloadable(where: str, params: Sequence[torch.Tensor]) -> None:
    """Refuse parameters whose slow weights cannot be offloaded (before anything changes).

    No CUDA device: refused, with the reason (the slow weights of CPU
    parameters are in host memory already; a silent no-op would hide that the
    run is not the one configured). CPU parameters, DTensors (a sharded
    model: not supported yet) and parameters whose memory is not dense are
    refused too.
    """
    if not torch.cuda.is_available():
        raise ValueError(
            "slow_device='cpu' keeps the slow weights of CUDA parameters in pinned host memory, "
            "and torch sees no CUDA device here (the slow weights of CPU parameters are in host "
            "memory already): drop slow_device, or run on a machine with a GPU")
    from . import _distributed

    for i, p in enumerate(params):
        if _distributed.is_dtensor(p):
            raise ValueError(f"{where}[{i}] is a DTensor: slow_device='cpu' does not support "
                             "sharded parameters yet; drop slow_device")
        if p.device.type != "cuda":
            raise ValueError(f"{where}[{i}] is on {p.device}: slow_device='cpu' offloads the slow "
                             "weights of CUDA parameters; move the model to the GPU first")
        if _kernels.flat_view(p) is None:
            raise ValueError(f"{where}[{i}]'s memory is not dense (a strided view): "
                             "slow_device='cpu' streams dense parameters only")


def host_copy(p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """φ₀ for ``p`` in pinned host memory: a copy in ``dtype``, laid out like ``p``."""
    pinned = torch.cuda.is_available()
    out = torch.empty_strided(p.shape, p.stride(), dtype=dtype, device="cpu", pin_memory=pinned)
    out.copy_(p.detach())
    return out


class Stager:
    """The staging buffers and streams of the offloaded sync, per (device, slow dtype).

    Args:
        staging_bytes: the size of each device's buffer (two halves).
    """

    def __init__(self, staging_bytes: int = DEFAULT_STAGING_BYTES) -> None:
        self.staging_bytes = staging_bytes
        self._buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._streams: dict[torch.device, tuple[Any, Any]] = {}

    def buffers(self) -> list[torch.Tensor]:
        """The staging buffers allocated so far (workspace, not state)."""
        return list(self._buffers.values())

    def _halves(self, device: torch.device, dtype: torch.dtype,
                total: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The two halves for a bucket of ``total`` elements: each at most half the buffer,
        no larger than the bucket needs (kept, and grown for a larger bucket up to the limit)."""
        align = _kernels.PIECE_ALIGN
        limit = self.staging_bytes // 2 // dtype.itemsize
        limit -= limit % align
        want = min(limit, total + (-total) % align + align * 64)  # room for aligned pieces
        key = (device, dtype)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < 2 * want:
            buffer = None  # free the smaller one first
            self._buffers.pop(key, None)
            buffer = torch.empty(2 * want, dtype=dtype, device=device)
            self._buffers[key] = buffer
        half = buffer.numel() // 2
        return buffer[:half], buffer[half:]

    def _stream_pair(self, device: torch.device):
        if device.type != "cuda":
            return None, None
        if device not in self._streams:
            self._streams[device] = (torch.cuda.Stream(device), torch.cuda.Stream(device))
        return self._streams[device]

    @torch.no_grad()
    def sync_(self, fast: Sequence[torch.Tensor], slow: Sequence[torch.Tensor], alpha: float) -> None:
        """The sync of pairs (θ on the device, φ in host memory), streamed through the buffer."""
        buckets: dict[tuple[torch.device, torch.dtype], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for f, s in zip(fast, slow):
            if f.numel():
                buckets.setdefault((f.device, s.dtype), []).append((f, s))
        for (device, dtype), pairs in buckets.items():
            self._sync_bucket(device, dtype, pairs, alpha)

    def _chunks(self, pairs, capacity: int):
        """Lists of (θ piece, φ piece, offset in the buffer), at most ``capacity`` elements each."""
        chunk: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        used = 0
        for f, s in pairs:
            flat_f, flat_s = _kernels.flat_view(f), _kernels.flat_view(s)
            assert flat_f is not None and flat_s is not None, "checked at adoption"
            start, n = 0, flat_f.numel()
            while start < n:
                if capacity - used < _kernels.PIECE_ALIGN:
                    yield chunk
                    chunk, used = [], 0
                take = min(n - start, capacity - used)
                chunk.append((flat_f[start:start + take], flat_s[start:start + take], used))
                start += take
                used += take + (-take) % _kernels.PIECE_ALIGN  # next piece aligned
                if used >= capacity:
                    yield chunk
                    chunk, used = [], 0
        if chunk:
            yield chunk

    def _sync_bucket(self, device, dtype, pairs, alpha: float) -> None:
        halves = self._halves(device, dtype, sum(f.numel() for f, _ in pairs))
        copy_in, work = self._stream_pair(device)
        if copy_in is None:  # no streams (the CPU, in the tests): the same steps in order
            for chunk in self._chunks(pairs, halves[0].numel()):
                self._run_chunk(chunk, halves[0], alpha)
            return
        current = torch.cuda.current_stream(device)
        copy_in.wait_stream(current)  # θ is the training step's result
        work.wait_stream(current)
        free = [None, None]
        done = None
        for i, chunk in enumerate(self._chunks(pairs, halves[0].numel())):
            b = i % 2
            staging = halves[b]
            with torch.cuda.stream(copy_in):
                if free[b] is not None:
                    copy_in.wait_event(free[b])
                for _, s, offset in chunk:
                    staging[offset:offset + s.numel()].copy_(s, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(copy_in)
            with torch.cuda.stream(work):
                work.wait_event(ready)
                views = [staging[offset:offset + s.numel()] for _, s, offset in chunk]
                _kernels.lerp_and_copy_([f for f, _, _ in chunk], views, alpha,
                                        _kernels.make_scratch([f for f, _, _ in chunk], views))
                for (_, s, _), view in zip(chunk, views):
                    s.copy_(view, non_blocking=True)
                done = torch.cuda.Event()
                done.record(work)
                free[b] = done
        current.wait_stream(work)
        for stream in (copy_in, work):  # the buffers were used there
            for buffer in halves:
                buffer.record_stream(stream)
        if done is not None:
            done.synchronize()  # φ in host memory is complete when Python can read it

    @staticmethod
    def _run_chunk(chunk, staging: torch.Tensor, alpha: float) -> None:
        views = []
        for _, s, offset in chunk:
            view = staging[offset:offset + s.numel()]
            view.copy_(s)
            views.append(view)
        fast = [f for f, _, _ in chunk]
        _kernels.lerp_and_copy_(fast, views, alpha, _kernels.make_scratch(fast, views))
        for (_, s, _), view in zip(chunk, views):
            s.copy_(view)
