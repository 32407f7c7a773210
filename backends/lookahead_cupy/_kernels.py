"""The fused sync and swap kernels, their CUDA source, and a NumPy reference.

The sync reads θ and φ once and writes both (4 × parameter bytes moved),
with the two-sided lerp (docs/design.md, 'The two-sided lerp': ``torch.lerp``'s formula, exact at
α = 0 and α = 1)::

    diff = θ − φ
    s    = φ + α·diff          if α < 0.5
         = θ − (1 − α)·diff    otherwise
    φ ← s;  θ ← φ

Two forms, chosen per dtype group by `lookahead_cupy.Lookahead`:

- a ``cupy.ElementwiseKernel`` per dtype, launched once per parameter (any
  strides) or once per *segment* of parameters that lie back to back in one
  buffer (the flat-buffer mode);
- a multi-tensor ``cupy.RawModule`` kernel per dtype that syncs any number of
  dense parameters in one launch, through a table of pointers and sizes.

Arithmetic. The weight (α or 1 − α, computed in Python double precision) is
passed as a scalar of the *compute type*: float32 for float16 and float32
parameters, float64 for float64. float16 values are widened to float32, the
lerp runs in float32, and the result is rounded to float16 once. For float32
and float64 the operations and their order are those of
`lookahead_core.lerp`, each one a PTX instruction with an explicit rounding
mode and no flush to zero (``sub.rn.f32``, ``mul.rn.f32``, ``add.rn.f32``, and
``.f64``; see `arithmetic_helpers`): each operation rounds once, subnormals
are kept, and the result equals NumPy's bit for bit. Plain C++ arithmetic
would not do: CuPy appends ``-ftz=true`` to the options of every kernel it
compiles (``cupy/cuda/compiler.py``; the last option wins), which flushes
float32 subnormals to zero, and NVRTC may contract ``φ + α·diff`` into a
fused multiply-add unless told ``--fmad=false``. Neither option alters an
explicit PTX instruction. `reference_sync` is the same arithmetic in NumPy;
the tests compare the kernels against it.

Overflow. In float32 and float64, ``θ − φ`` overflows when both are finite,
near the largest value, with opposite signs, though the interpolated value
lies between them. Each thread holds both inputs in registers, so the repair
costs nothing on the normal path: where the result is not finite while θ and
φ are, the same operations run on θ/2 and φ/2 and the result is doubled
(exact at that magnitude, as `lookahead_core.lerp` does). The finiteness tests
read the exponent bits as integers (`repair_overflow`), so no floating-point
instruction but the rounded ``sub``/``mul``/``add`` enters the kernels. float16
is computed in float32, where its difference cannot overflow: no repair there.

Kernel parameters use concrete types (``float32 weight``, ``float16 theta``),
never CuPy type placeholders: a placeholder ``T`` would take its type from
the arguments, and a Python float for α would then decide the precision.
θ and φ are *output* parameters of the ElementwiseKernel: CuPy binds output
parameters as non-const references, so the body reads and writes them in place.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from lookahead_inplace import lerp_weights

from ._device import require_cupy

__all__ = [
    "BATCH",
    "CHUNK",
    "COMPUTE_DTYPES",
    "NVRTC_OPTIONS",
    "SUPPORTED_DTYPES",
    "THREADS_PER_BLOCK",
    "arithmetic_helpers",
    "elementwise_swap_kernel",
    "elementwise_sync_kernel",
    "lerp_weights",
    "multi_tensor_body",
    "multi_tensor_functions",
    "multi_tensor_source",
    "reference_sync",
    "repair_overflow",
    "storage_helpers",
    "swap_operation",
    "swap_params",
    "sync_operation",
    "sync_params",
]

SUPPORTED_DTYPES = ("float16", "float32", "float64")
"""Parameter dtypes the kernels handle. (CuPy's Array API namespace, which the
core's inner optimizers go through, has no bfloat16.)"""

COMPUTE_DTYPES = {"float16": "float32", "float32": "float32", "float64": "float64"}
"""The dtype the lerp is computed in, and the weight's dtype, for each parameter dtype."""

# C++ names: CuPy's ElementwiseKernel calls float16 "float16" (its class in
# cupy/float16.cuh); the raw kernel keeps float16 as its 16 bits and converts
# with the PTX instructions cuda_fp16.h itself uses, so it needs no header.
_ELEMENTWISE_CTYPES = {"float16": "float16", "float32": "float", "float64": "double"}
_RAW_STORAGE = {"float16": "unsigned short", "float32": "float", "float64": "double"}
_CTYPES_OF_COMPUTE = {"float32": "float", "float64": "double"}
# PTX type suffix and inline-asm register constraint of each compute type.
_PTX_TYPES = {"float32": ("f32", "f"), "float64": ("f64", "d")}

NVRTC_OPTIONS = ("--fmad=false",)
"""No contraction into fused multiply-adds anywhere in the kernels (the lerp's own
operations are explicit PTX instructions, which no option changes; this keeps
any other floating-point code the compiler sees uncontracted too)."""

THREADS_PER_BLOCK = 256
CHUNK = 4096
"""Elements per block of the multi-tensor kernel (16 per thread)."""
BATCH = 4
"""Elements a thread of the multi-tensor kernel loads before it stores any."""


def _check_dtype(dtype: str) -> str:
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    return dtype


def reference_sync(theta: np.ndarray, phi: np.ndarray, alpha: float) -> np.ndarray:
    """What the sync kernels write to both θ and φ, computed in NumPy.

    The same branch structure, compute type and rounding points as the CUDA
    source: widen to the compute type, ``diff = θ − φ``, then ``φ + w·diff``
    or ``θ − w·diff`` with ``w`` a scalar of the compute type, rounded back to
    the parameter's dtype once. Inputs are not modified.
    """
    dtype = _check_dtype(np.dtype(theta.dtype).name)
    compute = np.dtype(COMPUTE_DTYPES[dtype]).type
    factor, low = lerp_weights(float(alpha))
    weight = compute(factor)
    t = theta.astype(compute)
    p = phi.astype(compute)

    def lerp(t: np.ndarray, p: np.ndarray) -> np.ndarray:
        diff = t - p
        return p + weight * diff if low else t - weight * diff

    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN propagate, as on the GPU
        result = lerp(t, p)
        if dtype != "float16":  # the kernels' repair (see the module's docstring)
            overflowed = ~np.isfinite(result) & np.isfinite(t) & np.isfinite(p)
            half = compute(0.5)
            result[overflowed] = compute(2) * lerp(half * t[overflowed], half * p[overflowed])
        return result.astype(dtype)


# --- ElementwiseKernel (one launch per parameter or per segment) -------------------------


def sync_params(dtype: str) -> tuple[str, str]:
    """``(in_params, out_params)`` of the ElementwiseKernel sync for ``dtype``."""
    dtype = _check_dtype(dtype)
    return (f"{COMPUTE_DTYPES[dtype]} weight, int32 low_weight", f"{dtype} theta, {dtype} phi")


def sync_operation(dtype: str) -> str:
    """The loop body of the ElementwiseKernel sync: one element of θ and φ.

    The arithmetic goes through `arithmetic_helpers` (the kernel's preamble),
    and the one narrowing, compute type to parameter dtype, is an explicit cast.
    """
    dtype = _check_dtype(dtype)
    c = _CTYPES_OF_COMPUTE[COMPUTE_DTYPES[dtype]]
    return (
        f"const {c} t = static_cast<{c}>(theta);\n"
        f"const {c} p = static_cast<{c}>(phi);\n"
        f"const {c} diff = lookahead_sub(t, p);\n"
        f"{c} s = low_weight ? lookahead_add(p, lookahead_mul(weight, diff))\n"
        f"                   : lookahead_sub(t, lookahead_mul(weight, diff));\n"
        f"{repair_overflow(dtype, 't', 'p', 's')}"
        f"phi = static_cast<{_ELEMENTWISE_CTYPES[dtype]}>(s);\n"
        "theta = phi;\n"
    )


_EXPONENT_BITS = {"float32": ("unsigned int", "0x7f800000u"),
                  "float64": ("unsigned long long", "0x7ff0000000000000ull")}


def repair_overflow(dtype: str, t: str, p: str, s: str, indent: str = "") -> str:
    """C++ statements that redo ``s`` (the lerp of ``p`` toward ``t``) where ``t − p`` overflowed.

    ``s`` not finite while ``t`` and ``p`` are: ``s ← 2·lerp(p/2, t/2)``, the
    same operations on the halves (exact scaling at that magnitude). Empty
    for float16, computed in float32, where the difference cannot overflow.
    Finiteness is read from the exponent bits as integers (a union, which g++
    and NVRTC both accept), so the kernels keep their three rounded
    floating-point instructions and no comparison of floats.
    """
    dtype = _check_dtype(dtype)
    if dtype == "float16":
        return ""
    c = _CTYPES_OF_COMPUTE[COMPUTE_DTYPES[dtype]]
    bits, exponent = _EXPONENT_BITS[dtype]
    lines = [
        "// t - p overflowed with both finite: the same operations on the halves, doubled.",
        f"union {{ {c} value; {bits} bits; }} lookahead_t, lookahead_p, lookahead_s;",
        f"lookahead_t.value = {t};",
        f"lookahead_p.value = {p};",
        f"lookahead_s.value = {s};",
        f"if ((lookahead_s.bits & {exponent}) == {exponent}"
        f" && (lookahead_t.bits & {exponent}) != {exponent}"
        f" && (lookahead_p.bits & {exponent}) != {exponent}) {{",
        f"    const {c} half_t = lookahead_mul({t}, static_cast<{c}>(0.5));",
        f"    const {c} half_p = lookahead_mul({p}, static_cast<{c}>(0.5));",
        f"    const {c} half_diff = lookahead_sub(half_t, half_p);",
        f"    const {c} half_s = low_weight"
        f" ? lookahead_add(half_p, lookahead_mul(weight, half_diff))",
        f"        : lookahead_sub(half_t, lookahead_mul(weight, half_diff));",
        f"    {s} = lookahead_mul(half_s, static_cast<{c}>(2));",
        "}",
    ]
    return "".join(f"{indent}{line}\n" for line in lines)


def swap_params(dtype: str) -> tuple[str, str]:
    """``(in_params, out_params)`` of the ElementwiseKernel swap: no inputs."""
    dtype = _check_dtype(dtype)
    return "", f"{dtype} theta, {dtype} phi"


def swap_operation(dtype: str) -> str:
    """The loop body of the ElementwiseKernel swap: exchange the bits of θ and φ."""
    ctype = _ELEMENTWISE_CTYPES[_check_dtype(dtype)]
    return f"const {ctype} held = theta;\ntheta = phi;\nphi = held;\n"


@functools.lru_cache(maxsize=None)
def elementwise_sync_kernel(dtype: str) -> Any:
    """The ``cupy.ElementwiseKernel`` sync for ``dtype`` (compiled at its first call).

    Call as ``kernel(weight, low, theta, phi)`` with ``weight`` a NumPy scalar
    of ``COMPUTE_DTYPES[dtype]`` and ``low`` a ``numpy.int32``.
    """
    cupy = require_cupy()
    in_params, out_params = sync_params(dtype)
    return cupy.ElementwiseKernel(
        in_params, out_params, sync_operation(dtype), f"lookahead_sync_{dtype}",
        preamble=arithmetic_helpers(dtype), options=NVRTC_OPTIONS, no_return=True,
    )


@functools.lru_cache(maxsize=None)
def elementwise_swap_kernel(dtype: str) -> Any:
    """The ``cupy.ElementwiseKernel`` swap for ``dtype``: call as ``kernel(theta, phi)``."""
    cupy = require_cupy()
    in_params, out_params = swap_params(dtype)
    return cupy.ElementwiseKernel(
        in_params, out_params, swap_operation(dtype), f"lookahead_swap_{dtype}",
        options=NVRTC_OPTIONS, no_return=True,
    )


# --- device functions shared by the kernels -----------------------------------------------


def arithmetic_helpers(dtype: str) -> str:
    """``lookahead_sub``, ``lookahead_mul`` and ``lookahead_add`` on the compute type (CUDA only).

    Each is one PTX instruction with round-to-nearest-even and no ``.ftz``
    (``sub.rn.f32``, ...): it rounds once, keeps subnormals, and is never fused
    with another (PTX treats instructions with an explicit rounding mode
    conservatively), whatever ``-ftz``, ``--fmad`` or ``--use_fast_math`` the
    module is compiled with. The tests compile these with NVRTC under CuPy's
    options and check the PTX.
    """
    suffix, constraint = _PTX_TYPES[COMPUTE_DTYPES[_check_dtype(dtype)]]
    c = _CTYPES_OF_COMPUTE[COMPUTE_DTYPES[dtype]]
    return "".join(
        f"__device__ __forceinline__ {c} lookahead_{name}(const {c} a, const {c} b) {{\n"
        f"    {c} result;\n"
        f'    asm("{name}.rn.{suffix} %0, %1, %2;" : "={constraint}"(result)'
        f' : "{constraint}"(a), "{constraint}"(b));\n'
        "    return result;\n"
        "}\n"
        for name in ("sub", "mul", "add")
    )


def storage_helpers(dtype: str) -> str:
    """``lookahead_load`` and ``lookahead_store``: storage type to compute type and back
    (CUDA only for float16; plain C++ otherwise)."""
    dtype = _check_dtype(dtype)
    if dtype == "float16":
        # The conversions cuda_fp16.h's __half2float / __float2half_rn compile to.
        return (
            "__device__ __forceinline__ float lookahead_load(const unsigned short bits) {\n"
            "    float value;\n"
            '    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));\n'
            "    return value;\n"
            "}\n"
            "__device__ __forceinline__ unsigned short lookahead_store(const float value) {\n"
            "    unsigned short bits;\n"
            '    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));\n'
            "    return bits;\n"
            "}\n"
        )
    c = _CTYPES_OF_COMPUTE[COMPUTE_DTYPES[dtype]]
    return (
        f"__device__ __forceinline__ {c} lookahead_load(const {c} value) {{ return value; }}\n"
        f"__device__ __forceinline__ {c} lookahead_store(const {c} value) {{ return value; }}\n"
    )


# --- multi-tensor RawModule (one launch per dtype) ----------------------------------------


def multi_tensor_body(dtype: str) -> str:
    """The multi-tensor sync and swap kernels for ``dtype``, without the helpers
    (`storage_helpers`, `arithmetic_helpers`).

    Block ``b`` finds its tensor ``t`` by binary search in ``first_block``
    (the last ``t`` with ``first_block[t] <= b``, see
    `lookahead_cupy._layout.chunk_starts`) and handles elements
    ``[(b − first_block[t])·chunk, min(… + chunk, sizes[t]))`` of it, its
    threads striding by ``blockDim.x`` (coalesced), `BATCH` elements per
    thread at a time: all their loads are issued before any store, so each
    thread keeps 2 × `BATCH` reads in flight whatever the compiler knows
    about aliasing (θ and φ come from pointer tables). Each element is read
    and written by exactly one thread, so the threads never communicate.
    """
    dtype = _check_dtype(dtype)
    s = _RAW_STORAGE[dtype]
    c = _CTYPES_OF_COMPUTE[COMPUTE_DTYPES[dtype]]
    locate = (
        "    const int block = static_cast<int>(blockIdx.x);\n"
        "    const int tensor = lookahead_tensor_of(first_block, n_tensors, block);\n"
        f"    {s}* __restrict__ theta = reinterpret_cast<{s}*>(theta_ptrs[tensor]);\n"
        f"    {s}* __restrict__ phi = reinterpret_cast<{s}*>(phi_ptrs[tensor]);\n"
        "    // Device memory: said so, since a function with inline PTX (the helpers) gets\n"
        "    // generic loads and stores for pointers read from a table otherwise.\n"
        "    __builtin_assume(__isGlobal(theta));\n"
        "    __builtin_assume(__isGlobal(phi));\n"
        "    const long long start = static_cast<long long>(block - first_block[tensor]) * chunk;\n"
        "    const long long stop = start + chunk < sizes[tensor] ? start + chunk : sizes[tensor];\n"
        "    const long long stride = static_cast<long long>(blockDim.x);\n"
    )
    u = BATCH
    # Thread x handles elements start + x + m·blockDim.x, m = 0, 1, ..., BATCH of them at a time.
    batch_loop = (
        f"    for (long long base = start + threadIdx.x; base < stop; base += {u} * stride) {{\n"
    )
    batch_each = (
        "        #pragma unroll\n"
        f"        for (int u = 0; u < {u}; ++u) {{\n"
        "            const long long i = base + u * stride;\n"
        "            if (i < stop) {\n"
    )
    table = (
        "    const unsigned long long* __restrict__ theta_ptrs,\n"
        "    const unsigned long long* __restrict__ phi_ptrs,\n"
        "    const long long* __restrict__ sizes,\n"
        "    const int* __restrict__ first_block,\n"
        "    const int n_tensors,\n"
        "    const long long chunk"
    )
    return (
        "__device__ __forceinline__ int lookahead_tensor_of(\n"
        "        const int* __restrict__ first_block, const int n_tensors, const int block) {\n"
        "    int lo = 0;\n"
        "    int hi = n_tensors;\n"
        "    while (hi - lo > 1) {\n"
        "        const int mid = lo + (hi - lo) / 2;\n"
        "        if (first_block[mid] <= block) {\n"
        "            lo = mid;\n"
        "        } else {\n"
        "            hi = mid;\n"
        "        }\n"
        "    }\n"
        "    return lo;\n"
        "}\n"
        "\n"
        f'extern "C" __global__ void lookahead_multi_sync_{dtype}(\n'
        f"{table},\n"
        f"    const {c} weight,\n"
        "    const int low_weight) {\n"
        f"{locate}"
        f"{batch_loop}"
        f"        {s} th[{u}] = {{}};\n"
        f"        {s} ph[{u}] = {{}};\n"
        "        // Every load first: the batch's reads are in flight together.\n"
        f"{batch_each}"
        "                th[u] = theta[i];\n"
        "                ph[u] = phi[i];\n"
        "            }\n"
        "        }\n"
        f"{batch_each}"
        f"                const {c} t = lookahead_load(th[u]);\n"
        f"                const {c} p = lookahead_load(ph[u]);\n"
        f"                const {c} diff = lookahead_sub(t, p);\n"
        f"                {c} lerped = low_weight\n"
        f"                    ? lookahead_add(p, lookahead_mul(weight, diff))\n"
        f"                    : lookahead_sub(t, lookahead_mul(weight, diff));\n"
        f"{repair_overflow(dtype, 't', 'p', 'lerped', indent=' ' * 16)}"
        f"                const {s} stored = lookahead_store(lerped);\n"
        "                phi[i] = stored;\n"
        "                theta[i] = stored;\n"
        "            }\n"
        "        }\n"
        "    }\n"
        "}\n"
        "\n"
        f'extern "C" __global__ void lookahead_multi_swap_{dtype}(\n'
        f"{table}) {{\n"
        f"{locate}"
        f"{batch_loop}"
        f"        {s} th[{u}] = {{}};\n"
        f"        {s} ph[{u}] = {{}};\n"
        f"{batch_each}"
        "                th[u] = theta[i];\n"
        "                ph[u] = phi[i];\n"
        "            }\n"
        "        }\n"
        f"{batch_each}"
        "                theta[i] = ph[u];\n"
        "                phi[i] = th[u];\n"
        "            }\n"
        "        }\n"
        "    }\n"
        "}\n"
    )


def multi_tensor_source(dtype: str) -> str:
    """The complete CUDA source of the multi-tensor module for ``dtype``."""
    return storage_helpers(dtype) + arithmetic_helpers(dtype) + "\n" + multi_tensor_body(dtype)


@functools.lru_cache(maxsize=None)
def multi_tensor_functions(dtype: str) -> tuple[Any, Any]:
    """``(sync, swap)`` ``cupy.RawKernel`` functions of the multi-tensor module for ``dtype``.

    Launch as ``sync((blocks,), (THREADS_PER_BLOCK,), (theta_ptrs, phi_ptrs,
    sizes, first_block, numpy.int32(n), numpy.int64(CHUNK), weight, low))``
    and ``swap`` with the first six arguments.
    """
    cupy = require_cupy()
    module = cupy.RawModule(code=multi_tensor_source(dtype), options=NVRTC_OPTIONS)
    return (
        module.get_function(f"lookahead_multi_sync_{dtype}"),
        module.get_function(f"lookahead_multi_swap_{dtype}"),
    )
