"""The fused multi-tensor sync for CUDA tensors: one Triton kernel, one pass over θ and φ.

The foreach pair ``_foreach_lerp_(φ, θ, α)`` + ``_foreach_copy_(θ, φ)`` reads
φ twice and θ once and writes both, in two launches (and, for a slow copy
wider than the parameter, three per chunk of an upcast scratch; and before
any of them a ``_foreach_norm`` pass over φ to know whether the lerp could
overflow). This kernel reads θ and φ once and writes both once (4 × the
parameter bytes in float32), for any number of tensors in one launch, and
repairs an overflow of ``θ − φ`` in registers, as the CuPy kernels do.

What each element gets is the CPU path's result bit for bit
(`lookahead_torch._kernels.lerp_and_copy_`, ``torch.lerp``'s vector loop):

```text
w = float32(α)                           the weight, rounded once
d = θ − φ                                in float32 (16-bit values widened exactly)
s = fma(d, w, φ)        if |w| < 0.5     one rounding: torch's fmadd(w, d, φ)
  = fma(d, w − 1, θ)    otherwise        w − 1 exact for w in [0.5, 1]
s = 2·(the same on θ/2, φ/2)   where s is not finite while θ and φ are
φ ← s (rounded to φ's dtype); θ ← φ (rounded to θ's dtype, to nearest even)
```

The arithmetic is pinned so that the compiler cannot change it: the lerp is an
explicit ``tl.fma`` (``fma.rn.f32``: one rounding, as torch's CPU and CUDA lerp
round), the kernel is compiled with ``enable_fp_fusion=False`` so that no other
multiply and add is contracted, and Triton's NVIDIA backend marks no function
for flushing float32 subnormals (only libdevice calls, which the kernel makes
none of, follow ``enable_reflect_ftz``): subnormals are kept, as on the CPU.
Finiteness is read from the exponent bits. Under ``TRITON_INTERPRET=1`` the
same kernel runs on CPU tensors (Triton's interpreter implements ``tl.fma`` with
one rounding), which is how the tests prove its bits on machines without a GPU
(``tests/test_fused_sync.py``).

The sign of a zero: at α = 1 torch's scalar loop (the last ``n mod 16``
elements of a CPU tensor) and its CUDA kernel compute ``θ − d·(1 − w)``, the
vector loop ``d·(w − 1) + θ``; they differ only for θ = −0.0 and d > 0.
The kernel follows the vector loop.

Layout: a table of the tensors' places (element offsets from the launch's
first tensor, which is passed as a pointer argument so that the compiler knows
its alignment) and sizes, and one of tiles (tensor, first element); program i
syncs tile i, `BLOCK` elements. A whole tile is read and written without a
mask, 16 bytes per access where every address is a multiple of 16 (`ALIGNED`);
the last tile of a tensor is masked. The tables are built once per list of
tensors and kept (`_plan`, keyed by the addresses).
The same kernel computes the outer optimizers' pseudo-gradient
``θ ← φ − θ`` (``MODE=1``; `pseudo_gradients_`), also in one pass.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "BLOCK",
    "FUSED_DTYPES",
    "available",
    "lerp_and_copy_",
    "pseudo_gradients_",
    "supports",
    "unavailable_reason",
]

BLOCK = 4096
"""Elements per program (16 per thread with 8 warps)."""

NUM_WARPS = 8

FUSED_DTYPES = {
    # (θ dtype, φ dtype)
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16),
}
"""The (parameter, slow copy) dtype pairs the kernel syncs; others keep the foreach path."""

_REPAIR = {
    # Whether θ − φ can overflow for a finite pair (lookahead_torch._kernels.overflow_margin).
    (torch.float32, torch.float32): True,
    (torch.bfloat16, torch.float32): True,
    (torch.float16, torch.float32): False,
    (torch.bfloat16, torch.bfloat16): True,
    (torch.float16, torch.float16): False,
}

_PLANS: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, int]] = OrderedDict()
_MAX_PLANS = 32


def unavailable_reason() -> str | None:
    """Why the fused kernel cannot run here (``None`` if it can)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return "triton is not installed (it ships with PyTorch's CUDA builds)"
    if os.environ.get("LOOKAHEAD_NO_FUSED_SYNC", "") not in ("", "0"):
        return "LOOKAHEAD_NO_FUSED_SYNC is set"
    return None


def available() -> bool:
    return unavailable_reason() is None


def supports(fast: torch.Tensor, slow: torch.Tensor) -> bool:
    """Whether the sync sends the pair to the fused kernel: a CUDA pair of `FUSED_DTYPES`, both
    dense with the same layout. (The tests run the kernel on CPU tensors under Triton's
    interpreter by calling `lerp_and_copy_` directly.)"""
    if (fast.dtype, slow.dtype) not in FUSED_DTYPES or fast.device.type != "cuda":
        return False
    if fast.data_ptr() % fast.element_size() or slow.data_ptr() % slow.element_size():
        return False  # the kernel addresses elements from the first tensor of its launch
    return fast.device == slow.device and _flat_pair(fast, slow) is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def _flat_pair(f: torch.Tensor, s: torch.Tensor):
    from ._kernels import _matching_flat_views

    return _matching_flat_views(f, s)


_KERNELS: dict[bool, object] = {}


def _kernel():
    """The jitted kernel (`_fused_kernel`), for the current ``TRITON_INTERPRET`` setting."""
    import importlib

    interpret = _interpreting()
    kernel = _KERNELS.get(interpret)
    if kernel is None:
        from . import _fused_kernel

        module = _fused_kernel
        if _interpreted(module.sync_kernel) != interpret:  # executed under the other setting
            module = importlib.reload(module)
        kernel = _KERNELS[interpret] = module.sync_kernel
    return kernel


def _interpreted(kernel) -> bool:
    return type(kernel).__name__ == "InterpretedFunction"


def _triton_dtype(dtype: torch.dtype):
    """The element type the kernel addresses ``dtype``'s memory as (bfloat16: its bits)."""
    import triton.language as tl

    return {torch.float32: tl.float32, torch.bfloat16: tl.int16, torch.float16: tl.float16}[dtype]


def _plan(fast: Sequence[torch.Tensor], slow: Sequence[torch.Tensor]):
    """Device tables for one list of flat pairs: addresses, sizes, tiles (kept per list)."""
    key = tuple((f.data_ptr(), s.data_ptr(), f.numel()) for f, s in zip(fast, slow))
    device = fast[0].device
    key = (device, *key)
    plan = _PLANS.get(key)
    if plan is not None:
        _PLANS.move_to_end(key)
        return plan
    numels = np.array([f.numel() for f in fast], dtype=np.int64)
    theta_ptrs = np.array([f.data_ptr() for f in fast], dtype=np.int64)
    phi_ptrs = np.array([s.data_ptr() for s in slow], dtype=np.int64)
    aligned = bool((theta_ptrs % 16 == 0).all() and (phi_ptrs % 16 == 0).all())
    # Element offsets from the first tensor (addresses are multiples of the element size).
    theta_off = (theta_ptrs - theta_ptrs[0]) // fast[0].element_size()
    phi_off = (phi_ptrs - phi_ptrs[0]) // slow[0].element_size()
    tiles_per = (numels + BLOCK - 1) // BLOCK
    tile_tensor = np.repeat(np.arange(len(fast), dtype=np.int32), tiles_per)
    first = np.concatenate([[0], np.cumsum(tiles_per)[:-1]])
    tile_start = (np.arange(int(tiles_per.sum()), dtype=np.int64) - np.repeat(first, tiles_per)) * BLOCK
    table = torch.tensor(np.stack([theta_off, phi_off, numels]), device=device)
    tiles = (torch.tensor(tile_tensor, device=device), torch.tensor(tile_start, device=device))
    plan = (table, tiles, len(tile_tensor), aligned)
    _PLANS[key] = plan
    if len(_PLANS) > _MAX_PLANS:
        _PLANS.popitem(last=False)
    return plan


def _launch(fast: Sequence[torch.Tensor], slow: Sequence[torch.Tensor], weight: float,
            low: bool, mode: int) -> None:
    flat = [_flat_pair(f, s) for f, s in zip(fast, slow) if f.numel() > 0]
    if not flat:
        return
    fs = [p[0] for p in flat]
    ss = [p[1] for p in flat]
    table, (tile_tensor, tile_start), count, aligned = _plan(fs, ss)
    pair = (fs[0].dtype, ss[0].dtype)
    # Under the interpreter the kernel's arithmetic is NumPy's, which warns where
    # θ − φ overflows or inf meets inf; the compiled kernel computes the same silently.
    with np.errstate(over="ignore", invalid="ignore"):
        _kernel()[(count,)](
            _as_stored(fs[0]), _as_stored(ss[0]), table[0], table[1], table[2], tile_tensor,
            tile_start, weight,
            THETA=_triton_dtype(pair[0]), PHI=_triton_dtype(pair[1]),
            THETA_BF16=pair[0] == torch.bfloat16, PHI_BF16=pair[1] == torch.bfloat16,
            SAME=pair[0] == pair[1], LOW=low,
            REPAIR=_REPAIR[pair] if mode == 0 else False, MODE=mode, BLOCK=BLOCK,
            ALIGNED=aligned, VEC_THETA=16 // fs[0].element_size(),
            VEC_PHI=16 // ss[0].element_size(),
            num_warps=NUM_WARPS, enable_fp_fusion=False,
        )


def _as_stored(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the kernel addresses it: bfloat16 as its 16 bits (`_triton_dtype`)."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def lerp_weight(alpha: float) -> tuple[float, bool]:
    """``(weight, low)`` for the kernel: torch's float32 weight ``w`` and ``|w| < 0.5``.

    ``low``: the kernel computes ``fma(d, w, φ)``; otherwise ``fma(d, w − 1, θ)``
    with ``w − 1`` formed here, exactly (both are float32 values and, for w in
    [0.5, 1], so is their difference).
    """
    w = float(np.float32(alpha))
    low = abs(w) < 0.5
    return (w if low else float(np.float32(w) - np.float32(1.0))), low


@torch.no_grad()
def lerp_and_copy_(fast: Sequence[torch.Tensor], slow: Sequence[torch.Tensor], alpha: float) -> None:
    """The sync of pairs that share (device, θ dtype, φ dtype), each `supports`-ed: one launch.

    ``φ ← lerp(φ, θ, α)``, ``θ ← φ`` (module docstring), the bits of
    `lookahead_torch._kernels.lerp_and_copy_` on the CPU.
    """
    weight, low = lerp_weight(alpha)
    _launch(fast, slow, weight, low, 0)


@torch.no_grad()
def pseudo_gradients_(fast: Sequence[torch.Tensor], slow: Sequence[torch.Tensor]) -> None:
    """``θ ← φ − θ`` for same-dtype pairs, one launch (the outer optimizers' Δ in θ's memory)."""
    _launch(fast, slow, 0.0, True, 1)
