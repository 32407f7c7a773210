"""The outer optimizer's step as one fused elementwise kernel per parameter.

With ``outer=O`` (the core's `lookahead_core.sgd`, `adam` or `adamw`) the
sync of `lookahead_cupy.Lookahead` is, for each element::

    g ← φ − θ                          (the pseudo-gradient Δ)
    O's update of its buffers and its delta d, from g and φ
    φ ← φ + d;  θ ← φ

one ``cupy.ElementwiseKernel`` launch per parameter that reads θ, φ and O's
buffers once and writes them once, with no temporary array. The operations
and their order are those of the core's ``update`` (see
`lookahead_inplace.outer` for the scalars, computed in Python double
precision as the core computes them), so the result is the core's on NumPy:

- float32 and float64: each operation one PTX instruction with
  round-to-nearest-even and no flush to zero (``sub.rn``, ``mul.rn``,
  ``add.rn``, ``div.rn``, ``sqrt.rn``, see `outer_helpers`), immune to the
  ``-ftz=true`` CuPy appends and to contraction into fused multiply-adds, as
  the sync's kernels (`lookahead_cupy._kernels`). Each scalar is passed in
  the parameter's dtype, as NumPy rounds a Python float against an array.
- float16: NumPy (and the core) compute float16 operations in float32 and
  round each result to float16; so does this kernel (``lookahead_round``
  after every operation: float32 is wide enough that rounding twice gives
  the correctly rounded float16 result), with every scalar rounded to
  float16 first.

Amsgrad's running maximum is NumPy's ``maximum``: the first operand where it
is larger or NaN, else the second (setp/selp in PTX, no flush to zero).

Variants are compiled separately, so a kernel has no branch on what its
optimizer lacks: SGD with or without weight decay, momentum and Nesterov;
Adam with or without an L2 term (Adam), a decoupled decay (AdamW) and
amsgrad. `outer_operation` returns the source, tested on the host and
compiled with NVRTC in ``tests/test_cupy_outer_kernels.py``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from lookahead_inplace.outer import AdamPlan, AdamScalars, SGDPlan, SGDScalars

from ._device import require_cupy
from ._kernels import (
    _CTYPES_OF_COMPUTE,
    _ELEMENTWISE_CTYPES,
    _PTX_TYPES,
    COMPUTE_DTYPES,
    NVRTC_OPTIONS,
    _check_dtype,
    arithmetic_helpers,
)

__all__ = [
    "OuterVariant",
    "outer_helpers",
    "outer_kernel",
    "outer_operation",
    "outer_params",
    "outer_scalar_values",
    "outer_variant",
]


class OuterVariant(NamedTuple):
    """Which kernel an outer step needs: the optimizer's kind and the terms it has.

    Attributes:
        kind: ``"sgd"`` or ``"adam"`` (adam and adamw).
        l2: an L2 term ``g + wd·φ`` (SGD's weight decay, Adam's).
        momentum: SGD: a momentum buffer.
        nesterov: SGD: Nesterov momentum.
        decoupled: AdamW's decoupled decay ``d − lr·wd·φ``.
        amsgrad: Adam: a third buffer, the running maximum of v.
    """

    kind: str
    l2: bool = False
    momentum: bool = False
    nesterov: bool = False
    decoupled: bool = False
    amsgrad: bool = False


def outer_variant(plan: SGDPlan | AdamPlan, scalars: SGDScalars | AdamScalars) -> OuterVariant:
    """The kernel variant of ``plan`` (the terms are decided as the core decides them)."""
    if isinstance(plan, SGDPlan):
        return OuterVariant("sgd", l2=plan.weight_decay != 0.0, momentum=plan.momentum > 0.0,
                            nesterov=plan.nesterov)
    return OuterVariant("adam", l2=scalars.l2 != 0.0, decoupled=scalars.decay is not None,
                        amsgrad=plan.amsgrad)


_SGD_SCALARS = ("neg_lr", "momentum", "one_minus_dampening", "weight_decay")
_ADAM_SCALARS = ("m_weight", "beta2", "one_minus_beta2", "neg_step_size",
                 "bias_correction2_sqrt", "eps", "l2", "decay")


def outer_params(dtype: str, variant: OuterVariant) -> tuple[str, str]:
    """``(in_params, out_params)`` of the kernel: scalars of the compute type, then
    θ, φ and O's buffers (outputs: bound as references, read and written in place)."""
    dtype = _check_dtype(dtype)
    compute = COMPUTE_DTYPES[dtype]
    if variant.kind == "sgd":
        scalars = [f"{compute} {name}" for name in _SGD_SCALARS] + ["int32 first"]
        buffers = ["buf"] if variant.momentum else []
    else:
        scalars = [f"{compute} {name}" for name in _ADAM_SCALARS] + ["int32 m_low"]
        buffers = ["m", "v"] + (["vmax"] if variant.amsgrad else [])
    outputs = [f"{dtype} {name}" for name in ["theta", "phi"] + buffers]
    return ", ".join(scalars), ", ".join(outputs)


def outer_scalar_values(dtype: str, scalars: SGDScalars | AdamScalars) -> tuple[Any, ...]:
    """The kernel's scalar arguments, in `outer_params`' order, as NumPy scalars.

    Each float is rounded to the parameter's dtype (what NumPy does to a Python
    float multiplied by an array), then held in the compute type.
    """
    storage = np.dtype(_check_dtype(dtype)).type
    compute = np.dtype(COMPUTE_DTYPES[dtype]).type

    def value(x: float | None) -> Any:
        return compute(storage(0.0 if x is None else x))

    if isinstance(scalars, SGDScalars):
        return tuple(value(getattr(scalars, n)) for n in _SGD_SCALARS) + (np.int32(scalars.first),)
    return tuple(value(getattr(scalars, n)) for n in _ADAM_SCALARS) + (np.int32(scalars.m_low),)


def outer_helpers(dtype: str) -> str:
    """`lookahead_cupy._kernels.arithmetic_helpers` plus ``lookahead_div``, ``lookahead_sqrt``,
    ``lookahead_max`` and ``lookahead_round`` on the compute type (CUDA only).

    ``div.rn``, ``sqrt.rn``: correctly rounded, no ``.ftz``. ``lookahead_max(a, b)``:
    ``a`` where ``a > b`` or ``a`` is NaN, else ``b`` (NumPy's ``maximum``).
    ``lookahead_round``: identity in float32 and float64; for float16
    parameters (computed in float32) the value rounded to float16 and back.
    """
    dtype = _check_dtype(dtype)
    compute = COMPUTE_DTYPES[dtype]
    suffix, r = _PTX_TYPES[compute]
    c = _CTYPES_OF_COMPUTE[compute]
    text = arithmetic_helpers(dtype)
    text += (
        f"__device__ __forceinline__ {c} lookahead_div(const {c} a, const {c} b) {{\n"
        f"    {c} result;\n"
        f'    asm("div.rn.{suffix} %0, %1, %2;" : "={r}"(result) : "{r}"(a), "{r}"(b));\n'
        "    return result;\n"
        "}\n"
        f"__device__ __forceinline__ {c} lookahead_sqrt(const {c} a) {{\n"
        f"    {c} result;\n"
        f'    asm("sqrt.rn.{suffix} %0, %1;" : "={r}"(result) : "{r}"(a));\n'
        "    return result;\n"
        "}\n"
        f"__device__ __forceinline__ {c} lookahead_max(const {c} a, const {c} b) {{\n"
        f"    {c} result;\n"
        '    asm("{\\n"\n'
        '        ".reg .pred lookahead_gt, lookahead_nan;\\n"\n'
        f'        "setp.gt.{suffix} lookahead_gt, %1, %2;\\n"\n'
        f'        "setp.nan.{suffix} lookahead_nan, %1, %1;\\n"\n'
        '        "or.pred lookahead_gt, lookahead_gt, lookahead_nan;\\n"\n'
        f'        "selp.{suffix} %0, %1, %2, lookahead_gt;\\n"\n'
        '        "}"\n'
        f'        : "={r}"(result) : "{r}"(a), "{r}"(b));\n'
        "    return result;\n"
        "}\n"
    )
    if dtype == "float16":
        text += (
            "__device__ __forceinline__ float lookahead_round(const float value) {\n"
            "    unsigned short bits;\n"
            "    float result;\n"
            '    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));\n'
            '    asm("cvt.f32.f16 %0, %1;" : "=f"(result) : "h"(bits));\n'
            "    return result;\n"
            "}\n"
        )
    else:
        text += f"__device__ __forceinline__ {c} lookahead_round(const {c} value) {{ return value; }}\n"
    return text


def outer_operation(dtype: str, variant: OuterVariant) -> str:
    """The kernel's loop body for one element: the core's update in the core's order.

    Every operation is rounded to the parameter's dtype (`lookahead_round`,
    which is free in float32 and float64). Loads widen to the compute type;
    stores narrow a value that is already representable, so they are exact.
    """
    dtype = _check_dtype(dtype)
    c = _CTYPES_OF_COMPUTE[COMPUTE_DTYPES[dtype]]
    e = _ELEMENTWISE_CTYPES[dtype]

    def op(name: str, a: str, b: str | None = None) -> str:
        args = a if b is None else f"{a}, {b}"
        return f"lookahead_round(lookahead_{name}({args}))"

    lines = [
        f"const {c} t = static_cast<{c}>(theta);",
        f"const {c} p = static_cast<{c}>(phi);",
        f"{c} g = {op('sub', 'p', 't')};  // the pseudo-gradient φ − θ",
    ]
    if variant.kind == "sgd":
        if variant.l2:
            lines.append(f"g = {op('add', 'g', op('mul', 'p', 'weight_decay'))};")
        direction = "g"
        if variant.momentum:
            lines += [
                f"{c} b = g;",
                "if (!first) {",
                f"    b = {op('add', op('mul', f'static_cast<{c}>(buf)', 'momentum'), op('mul', 'g', 'one_minus_dampening'))};",
                "}",
                f"buf = static_cast<{e}>(b);",
            ]
            if variant.nesterov:
                lines.append(f"g = {op('add', 'g', op('mul', 'b', 'momentum'))};")
            else:
                direction = "b"
        lines.append(f"const {c} d = {op('mul', direction, 'neg_lr')};")
    else:
        if variant.l2:
            lines.append(f"g = {op('add', 'g', op('mul', 'p', 'l2'))};")
        lines += [
            f"const {c} m0 = static_cast<{c}>(m);",
            f"const {c} diff = {op('mul', op('sub', 'g', 'm0'), 'm_weight')};",
            f"const {c} m1 = m_low ? {op('add', 'm0', 'diff')} : {op('sub', 'g', 'diff')};",
            f"m = static_cast<{e}>(m1);",
            f"{c} v1 = {op('add', op('mul', f'static_cast<{c}>(v)', 'beta2'), op('mul', op('mul', 'g', 'one_minus_beta2'), 'g'))};",
            f"v = static_cast<{e}>(v1);",
        ]
        if variant.amsgrad:
            lines += [f"v1 = lookahead_max(static_cast<{c}>(vmax), v1);",
                      f"vmax = static_cast<{e}>(v1);"]
        lines += [
            f"const {c} denom = {op('add', op('div', op('sqrt', 'v1'), 'bias_correction2_sqrt'), 'eps')};",
            f"{c} d = {op('div', op('mul', 'm1', 'neg_step_size'), 'denom')};",
        ]
        if variant.decoupled:
            lines.append(f"d = {op('sub', 'd', op('mul', 'p', 'decay'))};")
    lines += [
        f"phi = static_cast<{e}>({op('add', 'p', 'd')});",
        "theta = phi;",
    ]
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def outer_kernel(dtype: str, variant: OuterVariant) -> Any:
    """The ``cupy.ElementwiseKernel`` of ``variant`` for ``dtype`` (compiled at its first call).

    Call as ``kernel(*outer_scalar_values(dtype, scalars), theta, phi, *buffers)``.
    """
    cupy = require_cupy()
    in_params, out_params = outer_params(dtype, variant)
    name = f"lookahead_outer_{variant.kind}_{dtype}_{''.join(str(int(f)) for f in variant[1:])}"
    return cupy.ElementwiseKernel(
        in_params, out_params, outer_operation(dtype, variant), name,
        preamble=outer_helpers(dtype), options=NVRTC_OPTIONS, no_return=True,
    )
