"""The fused Triton sync (`lookahead_torch._fused`) gives the CPU path's bits.

Without a GPU the kernel runs on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, which implements ``tl.fma`` with one rounding) and is
compared bit for bit with `lookahead_torch._kernels.lerp_and_copy_` on the CPU
(``torch.lerp``'s vector loop: one fused multiply-add per element) and, for
the outer optimizers' Δ, with ``φ − θ``. The tests skip, saying why, where
triton is not installed. With a CUDA device (``benchmarks/gpu_check.sh``) the
compiled kernel is compared with the same CPU path: the GPU's bits must be
the CPU's.

Sizes are multiples of 64 where α = 1 is compared: torch's scalar loop over
the last ``n mod 16`` elements of a CPU tensor differs from its vector loop
(and from the kernel) in the sign of a zero there (θ = −0.0); see the
`lookahead_torch._fused` docstring.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lookahead_torch import _fused, _kernels  # noqa: E402

ALPHAS = [0.0, 0.1, 0.25, 0.4999999, 0.5, 0.75, 0.9, 1.0]
PAIRS = [("float32", "float32"), ("bfloat16", "float32"), ("float16", "float32"),
         ("bfloat16", "bfloat16"), ("float16", "float16")]


def _triton_or_skip():
    reason = _fused.unavailable_reason()
    if reason is not None:
        pytest.skip(f"the fused kernel cannot run here: {reason}")


@pytest.fixture
def interpret(monkeypatch):
    """Triton's interpreter for the test (the kernel module is re-executed under it)."""
    _triton_or_skip()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    yield
    _fused._KERNELS.pop(True, None)


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().view(getattr(torch, f"int{8 * t.element_size()}")).numpy()


def _differing(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Indices where ``a`` and ``b`` differ: in the bits, or where ``b`` is NaN, in NaN-ness.

    A NaN's payload is not part of the contract: torch's own CPU and CUDA
    conversions write different NaN bits (bfloat16 0xFFFF on the CPU, 0x7FFF on CUDA).
    """
    assert a.dtype == b.dtype and a.shape == b.shape
    nan_a = torch.isnan(a.detach().cpu()).reshape(-1).numpy()
    nan_b = torch.isnan(b.detach().cpu()).reshape(-1).numpy()
    bits_differ = _bits(a.cpu()).reshape(-1) != _bits(b.cpu()).reshape(-1)
    return np.flatnonzero(np.where(nan_b, ~nan_a, bits_differ))


def _values(rng: np.random.Generator, n: int, fast_dtype: torch.dtype, slow_dtype: torch.dtype,
            near_max: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """θ (fast dtype) and φ (slow dtype): varied magnitudes, signed zeros, subnormals,
    inf and NaN, and (``near_max``) pairs of opposite signs near the largest value."""
    scale = 10.0 ** rng.integers(-3, 3, size=n)
    theta = rng.standard_normal(n) * scale
    phi = rng.standard_normal(n) * scale
    tiny = float(torch.finfo(slow_dtype).smallest_normal) / 4
    specials_t = [0.0, -0.0, 1.0, tiny, -tiny, np.inf, np.nan, 2.0, -np.inf, 5.0]
    specials_p = [-0.0, 0.0, -1.0, -tiny, 3 * tiny, 1.0, 1.0, np.nan, 2.0, np.inf]
    k = min(n, len(specials_t))
    theta[:k] = specials_t[:k]
    phi[:k] = specials_p[:k]
    if near_max:
        big = float(torch.finfo(fast_dtype).max)
        m = np.arange(len(specials_t), n, 3)
        sign = np.where(rng.random(len(m)) < 0.5, 1.0, -1.0)
        theta[m] = sign * rng.uniform(0.5, 1.0, len(m)) * big
        phi[m] = -sign * rng.uniform(0.5, 1.0, len(m)) * big
    with np.errstate(over="ignore"):
        t = torch.tensor(theta, dtype=torch.float64).to(fast_dtype)
        p = torch.tensor(phi, dtype=torch.float64).to(slow_dtype)
    return t, p


def _cases(seed: int, fast_dtype, slow_dtype, sizes) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    near_max = (fast_dtype, slow_dtype) != (torch.float16, torch.float16)
    pairs = [_values(rng, n, fast_dtype, slow_dtype, near_max) for n in sizes]
    return [t for t, _ in pairs], [p for _, p in pairs]


def _cpu_reference(fast, slow, alpha):
    fast = [f.clone() for f in fast]
    slow = [s.clone() for s in slow]
    _kernels.lerp_and_copy_(fast, slow, alpha, _kernels.make_scratch(fast, slow))
    return fast, slow


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_fused_sync_equals_the_cpu_path_bit_for_bit(interpret, pair, alpha):
    fast_dtype, slow_dtype = (getattr(torch, name) for name in pair)
    # Several tiles of one tensor, a tensor smaller than a tile, one of exactly one vector.
    fast, slow = _cases(1, fast_dtype, slow_dtype, (2 * _fused.BLOCK + 192, 640, 64))
    ref_fast, ref_slow = _cpu_reference(fast, slow, alpha)
    _fused.lerp_and_copy_(fast, slow, alpha)
    for i, (a, b) in enumerate(zip(fast + slow, ref_fast + ref_slow)):
        differ = _differing(a, b)
        assert differ.size == 0, f"tensor {i}: {differ.size} elements differ, first {differ[:5]}"
    # The sync's own contract, independently of the CPU path: θ and φ end equal
    # (θ is φ rounded to θ's dtype) and never share memory.
    for f, s in zip(fast, slow):
        assert f.data_ptr() != s.data_ptr()
        assert _differing(f, s.to(f.dtype)).size == 0


@pytest.mark.parametrize("alpha", [0.25, 0.75])
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_fused_sync_odd_sizes_and_layouts(interpret, pair, alpha):
    fast_dtype, slow_dtype = (getattr(torch, name) for name in pair)
    rng = np.random.default_rng(5)
    fast, slow = _cases(2, fast_dtype, slow_dtype, (_fused.BLOCK + 1, 7, 1, 33 * 31))
    # A dense permuted layout (channels_last), its slow copy laid out alike.
    t4, p4 = _values(rng, 4 * 6 * 5 * 3, fast_dtype, slow_dtype, near_max=False)
    fast.append(t4.view(4, 6, 5, 3).to(memory_format=torch.channels_last))
    slow.append(p4.view(4, 6, 5, 3).to(memory_format=torch.channels_last))
    ref_fast, ref_slow = _cpu_reference(fast, slow, alpha)
    _fused.lerp_and_copy_(fast, slow, alpha)
    for i, (a, b) in enumerate(zip(fast + slow, ref_fast + ref_slow)):
        assert _differing(a, b).size == 0, f"tensor {i} differs"


def test_fused_sync_repairs_the_overflow_exactly(interpret):
    # θ − φ overflows in float32; the exact lerp at these alphas is representable and
    # the rescaled formula's every step is exact: the result must be the exact value.
    big = float(torch.finfo(torch.float32).max)
    for alpha in (0.25, 0.5, 0.75):
        theta = torch.tensor([big, -big, 1.0] * 22, dtype=torch.float32)[:64]
        phi = torch.tensor([-big, big, 3.0] * 22, dtype=torch.float32)[:64]
        _fused.lerp_and_copy_([theta], [phi], alpha)
        from fractions import Fraction

        for i in range(3):
            t0, p0 = [big, -big, 1.0][i], [-big, big, 3.0][i]
            exact = Fraction(p0) + Fraction(alpha) * (Fraction(t0) - Fraction(p0))
            assert Fraction(float(phi[i])) == exact
        assert torch.isfinite(phi).all() and torch.equal(theta, phi)


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16", "float16"])
def test_fused_pseudo_gradient_is_phi_minus_theta(interpret, dtype_name):
    dtype = getattr(torch, dtype_name)
    fast, slow = _cases(3, dtype, dtype, (_fused.BLOCK + 64, 33))
    expected = [(s.to(torch.float32) - f.to(torch.float32)).to(dtype) for f, s in zip(fast, slow)]
    slow_before = [s.clone() for s in slow]
    _fused.pseudo_gradients_(fast, slow)
    for f, e, s, s0 in zip(fast, expected, slow, slow_before):
        assert _differing(f, e).size == 0
        assert np.array_equal(_bits(s), _bits(s0))  # φ untouched
    # And what the adapter's torch path computes (θ ← −θ, θ ← θ + φ) on the CPU:
    fast2, slow2 = _cases(3, dtype, dtype, (_fused.BLOCK + 64, 33))
    _kernels.pseudo_gradients_(fast2, slow2)
    for a, b in zip(fast, fast2):
        assert _differing(a, b).size == 0


def test_fused_kernel_tables_are_kept_per_tensor_list(interpret):
    fast, slow = _cases(4, torch.float32, torch.float32, (100, 300))
    _fused._PLANS.clear()
    _fused.lerp_and_copy_(fast, slow, 0.5)
    _fused.lerp_and_copy_(fast, slow, 0.25)
    assert len(_fused._PLANS) == 1
    (table, (tile_tensor, tile_start), count, aligned), = _fused._PLANS.values()
    assert count == 2 and tile_tensor.tolist() == [0, 1] and tile_start.tolist() == [0, 0]
    assert table[2].tolist() == [100, 300]
    assert table[0].tolist() == [0, (fast[1].data_ptr() - fast[0].data_ptr()) // 4]
    assert table[1].tolist() == [0, (slow[1].data_ptr() - slow[0].data_ptr()) // 4]
    assert aligned == all(t.data_ptr() % 16 == 0 for t in fast + slow)


def test_fused_sync_is_used_for_cuda_pairs_only():
    # On the CPU the adapter keeps its blocked path: the interpreter is for the tests.
    cpu = torch.zeros(4)
    assert not _fused.supports(cpu, cpu.clone())
    if torch.cuda.is_available() and _fused.available():
        gpu = torch.zeros(4, device="cuda")
        assert _fused.supports(gpu, gpu.clone())
        assert _fused.supports(gpu.to(torch.bfloat16), gpu.clone())
        assert not _fused.supports(gpu.double(), gpu.double())  # float64: foreach path
        assert not _fused.supports(torch.zeros(4, 6, device="cuda")[:, ::2],
                                   torch.zeros(4, 3, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the compiled "
                    "kernel's bits are checked by benchmarks/gpu_check.sh on a GPU")
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_fused_sync_on_cuda_equals_the_cpu_path(pair, alpha):
    _triton_or_skip()
    fast_dtype, slow_dtype = (getattr(torch, name) for name in pair)
    fast, slow = _cases(1, fast_dtype, slow_dtype, (2 * _fused.BLOCK + 192, 640, 64) + (64,) * 200)
    torch.set_num_threads(1)
    ref_fast, ref_slow = _cpu_reference(fast, slow, alpha)
    gpu_fast = [f.cuda() for f in fast]
    gpu_slow = [s.cuda() for s in slow]
    _kernels.lerp_and_copy_(gpu_fast, gpu_slow, alpha, _kernels.make_scratch(gpu_fast, gpu_slow))
    for i, (a, b) in enumerate(zip(gpu_fast + gpu_slow, ref_fast + ref_slow)):
        differ = _differing(a, b)
        assert differ.size == 0, f"tensor {i}: {differ.size} elements differ, first {differ[:5]}"


@pytest.mark.parametrize("pair, low, mode", [
    (("float32", "float32"), True, 0), (("float32", "float32"), False, 0),
    (("bfloat16", "float32"), False, 0), (("bfloat16", "bfloat16"), True, 0),
    (("float16", "float32"), True, 0), (("float32", "float32"), True, 1),
], ids=str)
def test_fused_kernel_compiles_for_an_h200_without_flush_or_contraction(pair, low, mode,
                                                                        monkeypatch):
    """The compiled kernel's arithmetic, read from its PTX (compiled ahead of time for
    sm_90, which needs Triton's bundled compiler and no GPU): the lerp is the explicit
    ``fma.rn.f32``, every other float32 operation rounds on its own (``.rn``: no
    contraction into an FMA the source did not ask for), and nothing flushes subnormals
    (``.ftz``)."""
    _triton_or_skip()
    import re

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import importlib

    from lookahead_torch import _fused_kernel

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    kernel = _fused_kernel.sync_kernel
    if _fused._interpreted(kernel):  # executed under the interpreter by an earlier test
        kernel = importlib.reload(_fused_kernel).sync_kernel
    fast_dtype, slow_dtype = (getattr(torch, name) for name in pair)
    pointer = {torch.float32: "fp32", torch.bfloat16: "i16", torch.float16: "fp16"}
    element = {torch.float32: tl.float32, torch.bfloat16: tl.int16, torch.float16: tl.float16}
    constants = {"THETA": element[fast_dtype], "PHI": element[slow_dtype],
                 "THETA_BF16": fast_dtype == torch.bfloat16, "PHI_BF16": slow_dtype == torch.bfloat16,
                 "SAME": fast_dtype == slow_dtype, "LOW": low,
                 "REPAIR": mode == 0 and _fused._REPAIR[(fast_dtype, slow_dtype)],
                 "MODE": mode, "BLOCK": _fused.BLOCK, "ALIGNED": True,
                 "VEC_THETA": 16 // fast_dtype.itemsize, "VEC_PHI": 16 // slow_dtype.itemsize}
    signature = {"theta_base": "*" + pointer[fast_dtype], "phi_base": "*" + pointer[slow_dtype],
                 "theta_addr": "*i64", "phi_addr": "*i64", "numels": "*i64", "tile_tensor": "*i32",
                 "tile_start": "*i64", "weight": "fp32", **{name: "constexpr" for name in constants}}
    aligned_pointers = {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}
    source = ASTSource(fn=kernel, signature=signature, attrs=aligned_pointers,
                       constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()})
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": _fused.NUM_WARPS, "enable_fp_fusion": False})
    except Exception as error:  # noqa: BLE001 - no NVIDIA backend or ptxas in this triton
        pytest.skip(f"triton cannot compile for sm_90 here: {type(error).__name__}: {error}")
    ptx = compiled.asm["ptx"]
    assert "cubin" in compiled.asm
    assert ".ftz" not in ptx
    # Whole tiles of aligned tensors move 16 bytes per access.
    assert re.search(r"\bld\.global(?:\.[a-z0-9]+)*\.v4\.b32", ptx)
    assert re.search(r"\bst\.global(?:\.[a-z0-9]+)*\.v[24]\.b(?:32|16)", ptx)
    fmas = set(re.findall(r"\b(?:fma|mad)\.[a-z0-9.]*f(?:16|32|64)\b", ptx))  # float only
    if mode == 0:
        assert fmas == {"fma.rn.f32"}  # the lerp's own FMA, nothing contracted
    else:
        assert fmas == set()  # Δ = φ − θ: one subtraction
    for op in re.findall(r"\b(?:add|sub|mul)\.[a-z0-9.]*f(?:32|16)\b", ptx):
        assert ".rn." in op, op  # rounded alone
