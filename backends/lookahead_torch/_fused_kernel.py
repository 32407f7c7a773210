"""The Triton source of the fused sync (`lookahead_torch._fused` documents and launches it).

Imported only when the kernel is first needed: ``triton.jit`` reads
``TRITON_INTERPRET`` when this module is executed (`_fused` reloads it when
that setting changed). Kept apart so that the adapter imports without triton.
"""

import triton
import triton.language as tl


@triton.jit
def _lerp(theta, phi, weight, LOW: tl.constexpr):
    # torch's lerp, one rounding: fma(d, w, φ) for |w| < 0.5, fma(d, w − 1, θ) otherwise
    # (the caller passes w − 1 then).
    diff = theta - phi
    if LOW:
        result = tl.fma(diff, weight, phi)
    else:
        result = tl.fma(diff, weight, theta)
    return result


@triton.jit
def _finite(x):
    # From the exponent bits: no floating-point comparison enters the kernel.
    return (x.to(tl.int32, bitcast=True) & 0x7F800000) != 0x7F800000


@triton.jit
def _widen(x, BF16: tl.constexpr):
    # To float32, exactly. bfloat16 arrives as its 16 bits (an int16 pointer): shifted
    # into the top of a float32, which is what a bfloat16 value is.
    if BF16:
        result = ((x.to(tl.int32) & 0xFFFF) << 16).to(tl.float32, bitcast=True)
    else:
        result = x.to(tl.float32)
    return result


@triton.jit
def _narrow(s, BF16: tl.constexpr, OUT: tl.constexpr):
    # From float32 to the stored dtype, to nearest even. bfloat16 is rounded on the bits
    # (the compiled cvt.rn.bf16.f32 would do the same, but Triton's interpreter truncates):
    # add 0x7FFF plus the lowest kept bit, keep the top 16 bits; NaN becomes 0xFFFF, as
    # torch's CPU conversion writes it.
    if BF16:
        bits = s.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(_finite(s) | ((bits & 0x007FFFFF) == 0), rounded, 0xFFFF)
        result = rounded.to(tl.int16)
    else:
        result = s.to(OUT)
    return result


@triton.jit
def _tile(tp, pp, idx, n, weight, THETA: tl.constexpr, PHI: tl.constexpr,
          THETA_BF16: tl.constexpr, PHI_BF16: tl.constexpr, SAME: tl.constexpr,
          LOW: tl.constexpr, REPAIR: tl.constexpr, MODE: tl.constexpr, MASKED: tl.constexpr):
    """One tile's elements ``idx`` (those below ``n`` when MASKED): see `sync_kernel`."""
    if MASKED:
        mask = idx < n
    else:
        mask = None
    th = _widen(tl.load(tp + idx, mask=mask), THETA_BF16)
    ph = _widen(tl.load(pp + idx, mask=mask), PHI_BF16)
    if MODE == 0:
        s = _lerp(th, ph, weight, LOW)
        if REPAIR:
            # θ − φ overflowed with both finite: the same operations on the halves
            # (exact scaling at that magnitude), doubled.
            overflowed = (~_finite(s)) & _finite(th) & _finite(ph)
            s = tl.where(overflowed, _lerp(th * 0.5, ph * 0.5, weight, LOW) * 2.0, s)
        new_phi = _narrow(s, PHI_BF16, PHI)
        tl.store(pp + idx, new_phi, mask=mask)
        if SAME:
            tl.store(tp + idx, new_phi, mask=mask)
        else:
            tl.store(tp + idx, _narrow(s, THETA_BF16, THETA), mask=mask)
    else:
        tl.store(tp + idx, _narrow(ph - th, THETA_BF16, THETA), mask=mask)


@triton.jit
def sync_kernel(theta_base, phi_base, theta_addr, phi_addr, numels, tile_tensor, tile_start, weight,
                THETA: tl.constexpr, PHI: tl.constexpr, THETA_BF16: tl.constexpr,
                PHI_BF16: tl.constexpr, SAME: tl.constexpr, LOW: tl.constexpr,
                REPAIR: tl.constexpr, MODE: tl.constexpr, BLOCK: tl.constexpr,
                ALIGNED: tl.constexpr, VEC_THETA: tl.constexpr, VEC_PHI: tl.constexpr):
    """Program i: the elements [start, start + BLOCK) of tensor tile_tensor[i].

    MODE 0: φ ← lerp(φ, θ, w) (repaired where θ − φ overflowed, if REPAIR), θ ← φ.
    MODE 1: θ ← φ − θ. THETA and PHI are the pointers' element types (int16 for
    bfloat16, which is converted on its bits); SAME: θ and φ share the dtype.
    θ ← φ rounds φ's float32 value s once, to θ's dtype: for a float32 φ that is
    rounding the stored φ; for a same-dtype pair it is the stored φ itself.
    """
    tile = tl.program_id(0)
    t = tl.load(tile_tensor + tile)
    start = tl.load(tile_start + tile)
    n = tl.load(numels + t)
    # Each tensor's place as an element offset from the launch's first tensor (a pointer
    # argument, whose alignment Triton knows): an address read from a table would tell
    # the compiler nothing, and every access would be 4 bytes wide.
    theta_off = tl.load(theta_addr + t)
    phi_off = tl.load(phi_addr + t)
    if ALIGNED:
        # Every offset is a multiple of 16 bytes (the launcher checks): the compiler may
        # then load and store 16 bytes per instruction.
        theta_off = tl.multiple_of(theta_off, VEC_THETA)
        phi_off = tl.multiple_of(phi_off, VEC_PHI)
    tp = theta_base + theta_off
    pp = phi_base + phi_off
    start = tl.multiple_of(start, BLOCK)  # tiles start at multiples of BLOCK
    idx = start + tl.arange(0, BLOCK).to(tl.int64)
    if start + BLOCK <= n:  # a whole tile: no mask, so the accesses can be 16 bytes wide
        _tile(tp, pp, idx, n, weight, THETA, PHI, THETA_BF16, PHI_BF16, SAME, LOW, REPAIR, MODE,
              False)
    else:
        _tile(tp, pp, idx, n, weight, THETA, PHI, THETA_BF16, PHI_BF16, SAME, LOW, REPAIR, MODE,
              True)
