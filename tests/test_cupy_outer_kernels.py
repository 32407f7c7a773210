"""The CuPy outer-step kernels (``lookahead_cupy._outer_kernels``) checked without a GPU.

1. The kernels' own source (`outer_operation`), compiled for the host with g++
   inside CuPy's ElementwiseKernel loop, with host stand-ins for the PTX
   helpers (plain IEEE operations, ``-ffp-contract=off``; float16 through
   ``_Float16``), run over NumPy arrays: θ, φ and the outer buffers must equal
   `lookahead_core.outer_sync` on NumPy bit for bit, in float16, float32 and
   float64, for every variant, over several outer steps (the first, which
   copies the gradient into SGD's buffer, and later ones).
2. The CUDA source as CuPy generates it, compiled by NVRTC under CuPy's
   options and under ``--use_fast_math``: the PTX must hold exactly the
   variant's operations, rounded to nearest, with no ``.ftz`` and no ``fma``.

On a GPU, ``tests/test_cupy_outer.py`` runs the kernels on the device.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

import lookahead_core as lc
from lookahead_cupy import _kernels as K
from lookahead_cupy import _outer_kernels as O
from lookahead_inplace.outer import adam_scalars, buffer_fields, in_place_plan, sgd_scalars

DTYPES = ("float16", "float32", "float64")

OUTERS = {
    "sgd": lc.sgd(lr=0.7),
    "sgd-wd": lc.sgd(lr=0.5, weight_decay=0.1),
    "heavy-ball": lc.sgd(lr=0.7, momentum=0.9),
    "heavy-ball-damped-wd": lc.sgd(lr=0.3, momentum=0.5, dampening=0.25, weight_decay=0.05),
    "nesterov": lc.sgd(lr=0.7, momentum=0.9, nesterov=True),
    "nesterov-wd": lc.sgd(lr=0.7, momentum=0.6, nesterov=True, weight_decay=0.01),
    "adam": lc.adam(lr=0.1, eps=1e-3),
    "adam-l2": lc.adam(lr=0.05, betas=(0.3, 0.9), eps=1e-3, weight_decay=0.1),
    "adamw": lc.adamw(lr=0.1, eps=1e-3, weight_decay=0.1),
    "adamw-amsgrad": lc.adamw(lr=0.1, eps=1e-3, weight_decay=0.1, amsgrad=True),
    "adam-amsgrad-l2": lc.adam(lr=0.1, eps=1e-3, weight_decay=0.05, amsgrad=True),
}


def _variant(outer):
    plan = in_place_plan(outer)
    scalars = sgd_scalars(plan, 0) if outer.name == "sgd" else adam_scalars(plan, 0)
    return plan, O.outer_variant(plan, scalars)


def _scalars(plan, step):
    return sgd_scalars(plan, step) if isinstance(plan, type(in_place_plan(lc.sgd()))) \
        else adam_scalars(plan, step)


# --- 1. the source, compiled for the host --------------------------------------------------

_HOST_HELPERS = """
#include <cmath>
static inline {c} lookahead_sub(const {c} a, const {c} b) {{ return a - b; }}
static inline {c} lookahead_mul(const {c} a, const {c} b) {{ return a * b; }}
static inline {c} lookahead_add(const {c} a, const {c} b) {{ return a + b; }}
static inline {c} lookahead_div(const {c} a, const {c} b) {{ return a / b; }}
static inline {c} lookahead_sqrt(const {c} a) {{ return std::sqrt(a); }}
static inline {c} lookahead_max(const {c} a, const {c} b) {{ return (a > b || a != a) ? a : b; }}
"""

_HOST_ROUND = {
    "float16": "static inline float lookahead_round(const float v) "
               "{ return static_cast<float>(static_cast<_Float16>(v)); }\n",
    "float32": "static inline float lookahead_round(const float v) { return v; }\n",
    "float64": "static inline double lookahead_round(const double v) { return v; }\n",
}


def _function(dtype: str, name: str, variant: O.OuterVariant) -> str:
    """CuPy's ElementwiseKernel loop around `outer_operation`, as a host function."""
    c = {"float32": "float", "float64": "double"}[K.COMPUTE_DTYPES[dtype]]
    elem = {"float16": "float16", "float32": "float", "float64": "double"}[dtype]
    in_params, out_params = O.outer_params(dtype, variant)
    scalars = [p.split()[1] for p in in_params.split(", ")]
    outputs = [p.split()[1] for p in out_params.split(", ")]
    unpack = "".join(f"    const {c} {n} = scalars[{i}];\n" for i, n in enumerate(scalars[:-1]))
    unpack += f"    const int {scalars[-1]} = flag;\n"
    bind = "".join(f"        {elem} &{n} = arrays[{i}][_i];\n" for i, n in enumerate(outputs))
    return (
        f'extern "C" void host_outer_{name}(const {c}* scalars, const int flag, '
        f"{elem}** arrays, const long long _n) {{\n{unpack}"
        "    for (long long _i = 0; _i < _n; ++_i) {\n"
        f"{bind}{O.outer_operation(dtype, variant)}"
        "    }\n}\n"
    )


def _harness_source(dtype: str) -> str:
    c = {"float32": "float", "float64": "double"}[K.COMPUTE_DTYPES[dtype]]
    head = "typedef _Float16 float16;\n" if dtype == "float16" else ""
    head += _HOST_HELPERS.format(c=c) + _HOST_ROUND[dtype]
    names = {name: _variant(outer)[1] for name, outer in OUTERS.items()}
    return head + "".join(_function(dtype, name.replace("-", "_"), variant)
                          for name, variant in names.items())


HOST_FLAGS = ("-std=c++17", "-O2", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wextra",
              "-Werror=conversion", "-shared", "-fPIC")


@pytest.fixture(scope="module")
def host_outer(tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++) to build the host harness")
    folder = tmp_path_factory.mktemp("host_outer")
    built = {}
    for dtype in DTYPES:
        source = folder / f"{dtype}.cpp"
        source.write_text(_harness_source(dtype))
        library = folder / f"{dtype}.so"
        result = subprocess.run([compiler, *HOST_FLAGS, "-o", str(library), str(source)],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{dtype} harness did not compile:\n{result.stderr}"
        built[dtype] = ctypes.CDLL(str(library))
    return built


def _run_host(lib, dtype, name, plan, scalars, theta, phi, buffers):
    values = O.outer_scalar_values(dtype, scalars)
    compute = np.dtype(K.COMPUTE_DTYPES[dtype])
    floats = np.array([float(v) for v in values[:-1]], dtype=compute)
    assert all(floats[i] == values[i] for i in range(len(floats)))  # held exactly
    arrays = [theta, phi, *buffers]
    pointers = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
    getattr(lib, f"host_outer_{name.replace('-', '_')}")(
        ctypes.c_void_p(floats.ctypes.data), ctypes.c_int(int(values[-1])), pointers,
        ctypes.c_longlong(theta.size))


def _values(rng, dtype, n=2053):
    """θ and φ with varied magnitudes and signs (and zeros), within what float16 holds."""
    top = 2 if dtype == "float16" else 4
    scale = 10.0 ** rng.integers(-3, top, size=n)
    phi = (rng.standard_normal(n) * scale).astype(dtype)
    theta = (phi.astype(np.float64) + rng.standard_normal(n) * scale * 0.1).astype(dtype)
    theta[:3] = phi[:3]  # Δ = 0
    phi[3:5] = np.array([0.0, -0.0], dtype)
    return theta, phi


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", sorted(OUTERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_outer_source_equals_the_core_bit_for_bit(host_outer, dtype, name, rng):
    outer = OUTERS[name]
    plan, _ = _variant(outer)
    fields = buffer_fields(plan)
    theta, phi = _values(rng, dtype)
    state = outer.init([phi])
    buffers = [np.zeros_like(phi) for _ in fields]
    for step in range(4):  # the first step (SGD's buffer copies Δ), then the recurrences
        expected_fast, expected_slow, state = lc.outer_sync([theta], [phi], outer, state)
        scalars = _scalars(plan, step)
        _run_host(host_outer[dtype], dtype, name, plan, scalars, theta, phi, buffers)
        assert same_bits(phi, np.asarray(expected_slow[0])), (step, name)
        assert same_bits(theta, np.asarray(expected_fast[0]))
        for field, buffer in zip(fields, buffers):
            assert same_bits(buffer, np.asarray(getattr(state, field)[0])), (step, field)
        # The next cycle's fast weights: φ moved by a fresh perturbation.
        theta = (phi.astype(np.float64) * (1.0 + 0.05 * rng.standard_normal(phi.size))).astype(dtype)


def test_amsgrad_maximum_is_numpys_on_special_values(host_outer):
    """``max(vmax, v)``: NaN in either propagates, ±0 and ties give the second operand."""
    outer = OUTERS["adamw-amsgrad"]
    plan, _ = _variant(outer)
    special = np.array([np.nan, 1.0, np.nan, 0.0, -0.0, 2.0, np.inf, 3.0, 5e-324, 0.0])
    for vmax0 in (special, special[::-1].copy()):
        theta, phi = np.full(10, 1.0), np.full(10, 2.0)
        m, v, vmax = np.zeros(10), np.zeros(10), vmax0.copy()
        state = lc.AdamState(0, (m.copy(),), (v.copy(),), (vmax0.copy(),))
        _, slow, new = lc.outer_sync([theta], [phi], outer, state)
        _run_host(host_outer["float64"], "float64", "adamw-amsgrad", plan, adam_scalars(plan, 0),
                  theta, phi, [m, v, vmax])
        assert same_bits(vmax, np.asarray(new.max_exp_avg_sq[0]))
        assert same_bits(phi, np.asarray(slow[0]))


def test_variants_and_parameters():
    assert _variant(OUTERS["nesterov-wd"])[1] == O.OuterVariant("sgd", l2=True, momentum=True,
                                                                nesterov=True)
    assert _variant(OUTERS["adamw-amsgrad"])[1] == O.OuterVariant("adam", decoupled=True,
                                                                  amsgrad=True)
    # adamw with no weight decay has no decoupled term (the core's test is wd != 0).
    assert _variant(lc.adamw(weight_decay=0.0))[1] == O.OuterVariant("adam")
    assert O.outer_params("float16", O.OuterVariant("sgd", momentum=True)) == (
        "float32 neg_lr, float32 momentum, float32 one_minus_dampening, float32 weight_decay, "
        "int32 first", "float16 theta, float16 phi, float16 buf")
    assert O.outer_params("float64", O.OuterVariant("adam", amsgrad=True))[1] == \
        "float64 theta, float64 phi, float64 m, float64 v, float64 vmax"
    # Scalars are rounded to the parameter's dtype first, as NumPy rounds a Python float.
    values = O.outer_scalar_values("float16", sgd_scalars(in_place_plan(lc.sgd(lr=0.1)), 0))
    assert values[0] == np.float32(np.float16(-0.1)) and values[0].dtype == np.float32
    assert O.outer_scalar_values("float64", sgd_scalars(in_place_plan(lc.sgd(lr=0.1)), 3))[0] \
        == -0.1


def test_cupy_parses_the_outer_kernel_parameters():
    cupy = pytest.importorskip("cupy", reason="cupy not installed")
    for name, outer in OUTERS.items():
        variant = _variant(outer)[1]
        kernel = cupy.ElementwiseKernel(*O.outer_params("float32", variant),
                                        O.outer_operation("float32", variant), "k")
        n_buffers = len(buffer_fields(in_place_plan(outer)))
        assert (kernel.nin, kernel.nout) == (5 if outer.name == "sgd" else 9, 2 + n_buffers)
        outputs = [p.name for p in kernel.params[kernel.nin : kernel.nin + kernel.nout]]
        assert outputs[:2] == ["theta", "phi"] and all(not p.is_const for p in
                                                       kernel.params[kernel.nin : kernel.nin + 2])


# --- 2. NVRTC, as CuPy compiles for the GPU -------------------------------------------------


def _expected_ops(dtype: str, variant: O.OuterVariant) -> set[str]:
    width = "f64" if dtype == "float64" else "f32"
    ops = {f"sub.rn.{width}", f"mul.rn.{width}", f"add.rn.{width}"}
    if variant.kind == "adam":
        ops |= {f"div.rn.{width}", f"sqrt.rn.{width}"}
    if variant.amsgrad:
        ops |= {f"setp.gt.{width}", f"setp.nan.{width}", f"selp.{width}"}
    if dtype == "float16":
        ops |= {"cvt.f32.f16", "cvt.rn.f16.f32"}
    return ops


@pytest.mark.parametrize("name", ["heavy-ball-damped-wd", "nesterov-wd", "adam-l2", "adamw-amsgrad"])
@pytest.mark.parametrize("options", ["cupy", "fast-math"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nvrtc_compiles_the_outer_kernels_exactly(dtype, options, name):
    from test_cupy_kernels import OPTION_SETS, _compile_ptx, _floating_point_ops, _nvrtc

    nvrtc = _nvrtc()
    import cupy
    import cupy._core.core as core

    variant = _variant(OUTERS[name])[1]
    try:
        from cupy._core import _carray, _kernel, _scalar

        def arg(kind, dtype_name, ndim=1):  # kinds: 1 ndarray, 2 indexer, 3 scalar
            kinds = {1: cupy.ndarray, 2: _carray.Indexer, 3: _scalar.CScalar}
            return _kernel._ArgInfo(kind, kinds[kind],
                                    None if dtype_name is None else np.dtype(dtype_name),
                                    ndim, True, True)

        in_params, out_params = O.outer_params(dtype, variant)
        kernel = cupy.ElementwiseKernel(in_params, out_params, O.outer_operation(dtype, variant),
                                        f"lookahead_outer_{dtype}", preamble=O.outer_helpers(dtype))
        n_scalars = len(in_params.split(", "))
        args = [arg(3, K.COMPUTE_DTYPES[dtype], 0)] * (n_scalars - 1) + [arg(3, "int32", 0)]
        args += [arg(1, dtype)] * len(out_params.split(", ")) + [arg(2, None)]
        source = _kernel._get_elementwise_kernel_code(
            tuple(args), _kernel._TypeMap(()), kernel.params, kernel.operation, kernel.name,
            kernel.preamble)
    except (AttributeError, ImportError, TypeError, ValueError) as exc:
        pytest.skip(f"CuPy {cupy.__version__}'s kernel code generator changed: {exc!r}")

    include = core._get_header_dir_path()
    dirs = [include] + [f"{include}/cupy/_cccl/{d}" for d in ("libcudacxx", "thrust", "cub")]
    if dtype == "float16":
        try:
            from cuda.pathfinder import find_nvidia_header_directory

            cudart = find_nvidia_header_directory("cudart")
        except Exception:  # noqa: BLE001
            cudart = None
        if cudart is None:
            pytest.skip("CUDA headers (cuda_fp16.h) not installed (pip install nvidia-cuda-runtime-cu12)")
        dirs.append(cudart)
    header = "".join(f"#include <cupy/{h}>\n"
                     for h in ("complex.cuh", "carray.cuh", "atomics.cuh", "math_constants.h"))
    ptx = _compile_ptx(nvrtc, header + source, dirs, OPTION_SETS[options])
    ops = _floating_point_ops(ptx)
    assert not any(".ftz" in op or op.startswith("fma") or "approx" in op for op in ops), ops
    assert ops == _expected_ops(dtype, variant)
