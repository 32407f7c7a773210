"""Every fast path of the performance work equals its plain path.

- PyTorch: the cache-blocked CPU sync (`lookahead_torch._kernels.lerp_and_copy_blocked`,
  which `lerp_and_copy_` uses for same-dtype pairs on the CPU) against the unblocked
  ``_foreach_lerp_`` + ``_foreach_copy_``, and the mixed-dtype path with CPU-sized
  batches against a per-tensor upcast, bit for bit; the optimizer with parameters
  larger than a block against Algorithm 1 written with plain tensor operations.
- NumPy: the dense sync that holds ``θ − φ`` in place against the scratch-buffer
  kernel and against `lookahead_core.sync_slow`, bit for bit.
- The core: `lookahead_core.traceable.lookahead` against `lookahead_core.lookahead`,
  bit for bit when run eagerly; under ``jax.jit`` within the documented tolerance
  (XLA may fuse a multiply and an add into one FMA: a few units in the last place
  per step), and exact where the algorithm is exact (non-sync steps leave φ
  untouched; α = 0 and α = 1).

Each test needs only its own library: the PyTorch tests skip without torch, the
``jax.jit`` tests without jax, and the NumPy and core tests run with neither
(tests/test_skip_audit.py checks it).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from core_helpers import assert_bit_identical, to_numpy

import lookahead_core as lc
from lookahead_core import traceable
from lookahead_numpy import Lookahead as NumpyLookahead
from lookahead_numpy import blocks as _blocks

ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]


def _optional(name: str):
    """Module ``name``, or None where it cannot be imported (the tests that need it skip)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# Optional libraries, asked for per test: a module-level importorskip would skip every
# test of this file for want of one library, and these are the only tests that catch
# some kernel faults (a blocked sync that leaves the tail of a large parameter unsynced).
torch = _optional("torch")
jax = _optional("jax")
jnp = _optional("jax.numpy")
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")
needs_jax = pytest.mark.skipif(jax is None or jnp is None, reason="jax not installed")


def _special(rng: np.random.Generator, n: int) -> np.ndarray:
    """Normal values with signed zeros, infinities and NaN sprinkled in."""
    values = rng.standard_normal(n)
    if n >= 8:
        values[[0, 3, 5, 7]] = [0.0, -0.0, np.inf, np.nan]
    return values


# --- PyTorch: the cache-blocked CPU sync -------------------------------------------------

if torch is not None:
    from lookahead_torch import Lookahead as TorchLookahead
    from lookahead_torch import _inner_step, _kernels


def _torch_bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    int_dtype = getattr(torch, f"int{8 * a.element_size()}")  # same width: the bits as integers
    return a.dtype == b.dtype and a.shape == b.shape and bool(
        torch.equal(a.detach().view(int_dtype), b.detach().view(int_dtype)))


def _torch_pairs(rng: np.random.Generator, dtype: torch.dtype) -> tuple[list, list]:
    """(fast, slow) of assorted sizes and layouts, fast ≠ slow, special values included."""
    def tensor(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.tensor(_special(rng, int(np.prod(shape))).reshape(shape)).to(dtype)

    fast = [
        tensor((1000,)),                       # many pieces with a small block
        tensor((7,)),                          # small: shares a batch
        tensor(()),                            # 0-d
        tensor((33, 31)),                      # not a multiple of any vector width
        tensor((4, 6, 5, 3)).to(memory_format=torch.channels_last),  # dense, permuted
        tensor((40, 30)).t(),                  # dense, transposed
        tensor((30, 40))[:, ::3],              # not dense: one piece of its own
        tensor((0, 5)),                        # empty
        tensor((513,)),
    ]
    slow = [f.clone(memory_format=torch.preserve_format) + 0.5 for f in fast]
    # One pair laid out differently from its slow copy: no matching flat views.
    fast.append(tensor((6, 7, 4, 5)).to(memory_format=torch.channels_last))
    slow.append(fast[-1].contiguous() - 0.25)
    return fast, slow


def _unblocked(fast: list, slow: list, alpha: float) -> None:
    fs = [f for f in fast if f.numel()]
    ss = [s for s in slow if s.numel()]
    torch._foreach_lerp_(ss, fs, alpha)
    torch._foreach_copy_(fs, ss)


@needs_torch
@pytest.mark.parametrize("block", [1, 100, 128, 1000, 1 << 16])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype_name", ["float32", "float64", "float16", "bfloat16"])
def test_torch_blocked_sync_equals_unblocked_bit_for_bit(block, alpha, dtype_name):
    dtype = getattr(torch, dtype_name)
    # Built twice from one seed: the same values in the same layouts (a clone of a
    # strided view would be contiguous, and torch's vector and scalar loops may differ
    # in the sign of a zero).
    fast, slow = _torch_pairs(np.random.default_rng(7), dtype)
    ref_fast, ref_slow = _torch_pairs(np.random.default_rng(7), dtype)
    _kernels.lerp_and_copy_blocked(fast, slow, alpha, block)
    _unblocked(ref_fast, ref_slow, alpha)
    for i, (a, b) in enumerate(zip(fast + slow, ref_fast + ref_slow)):
        assert _torch_bits_equal(a, b), f"tensor {i} differs (block {block}, alpha {alpha})"
    for f, s in zip(fast, slow):
        if f.numel():
            assert f.data_ptr() != s.data_ptr()


@needs_torch
def test_torch_default_cpu_sync_is_blocked_and_exact(rng):
    # Parameters of more than one CPU block: the default kernel cuts them into pieces.
    block = _kernels.cpu_block_bytes() // 4
    fast = [torch.tensor(_special(rng, n), dtype=torch.float32) for n in (3 * block + 5, 10, block)]
    slow = [f + 1.0 for f in fast]
    ref_fast, ref_slow = [f.clone() for f in fast], [s.clone() for s in slow]
    seen = []
    real = _kernels.lerp_and_copy_blocked

    def spy(*args):
        seen.append(args[-1])
        real(*args)

    _kernels.lerp_and_copy_blocked = spy
    try:
        _kernels.lerp_and_copy_(fast, slow, 0.3)
    finally:
        _kernels.lerp_and_copy_blocked = real
    # The first sync of a bucket times the first candidate piece size (BlockTuner).
    tuner = _kernels.BlockTuner(_kernels.cpu_block_bytes(), 4 * sum(f.numel() for f in fast))
    assert seen == [tuner.candidates[0] // 4]
    assert seen[0] < 3 * block + 5  # cut into pieces
    _unblocked(ref_fast, ref_slow, 0.3)
    for a, b in zip(fast + slow, ref_fast + ref_slow):
        assert _torch_bits_equal(a, b)


def _fake_cache_tree(root, entries) -> str:
    """A sysfs-like cache directory: ``entries`` of (level, type, size text)."""
    for i, (level, kind, size) in enumerate(entries):
        index = root / f"index{i}"
        index.mkdir()
        (index / "level").write_text(f"{level}\n")
        (index / "type").write_text(f"{kind}\n")
        (index / "size").write_text(f"{size}\n")
    return str(root)


@needs_torch
def test_torch_cpu_cache_sizes_are_read_from_sysfs(tmp_path):
    root = _fake_cache_tree(tmp_path, [(1, "Data", "48K"), (1, "Instruction", "32K"),
                                       (2, "Unified", "2048K"), (3, "Unified", "105M")])
    assert _kernels.cpu_cache_bytes(1, root) == 48 * 1024
    assert _kernels.cpu_cache_bytes(2, root) == 2 * 1024 * 1024
    assert _kernels.cpu_cache_bytes(3, root) == 105 * 1024 * 1024
    # The instruction cache is never taken for the data cache of its level.
    (tmp_path / "i").mkdir()
    listed_first = _fake_cache_tree(tmp_path / "i", [(1, "Instruction", "64K"), (1, "Data", "32K")])
    assert _kernels.cpu_cache_bytes(1, listed_first) == 32 * 1024


@needs_torch
def test_torch_cpu_block_follows_the_l2_size():
    # An eighth of the L2 per tensor (a piece of θ and one of φ: a quarter of it), clamped.
    assert _kernels.block_bytes_for_l2(2 * 1024 * 1024) == 256 * 1024  # the Xeon's 2 MiB
    assert _kernels.block_bytes_for_l2(1024 * 1024) == 128 * 1024     # AMD EPYC, 1 MiB
    assert _kernels.block_bytes_for_l2(64 * 1024) == 32 * 1024        # clamped below
    assert _kernels.block_bytes_for_l2(64 * 1024 * 1024) == 1024 * 1024  # and above
    assert _kernels.block_bytes_for_l2(None) == _kernels.CPU_BLOCK_BYTES  # unknown


@needs_torch
def test_torch_block_tuner_times_every_candidate_then_keeps_the_fastest():
    tuner = _kernels.BlockTuner(128 * 1024, 400 * 1024 * 1024)
    assert tuner.candidates == [128 * 1024, 256 * 1024, 512 * 1024, 400 * 1024 * 1024]
    assert len(tuner.candidates) * _kernels.TUNING_ROUNDS <= _kernels.tuning_syncs()
    seconds = {128 * 1024: 2.0, 256 * 1024: 1.5, 512 * 1024: 1.7, 400 * 1024 * 1024: 2.5}
    order = []
    for _ in range(_kernels.TUNING_ROUNDS * len(tuner.candidates)):
        assert tuner.choice is None
        block = tuner.next()
        order.append(block)
        tuner.record(block, seconds[block])
    assert order == tuner.candidates * _kernels.TUNING_ROUNDS  # each in turn
    assert tuner.choice == 256 * 1024 and tuner.next() == 256 * 1024
    tuner.record(256 * 1024, 99.0)  # kept for good
    assert tuner.next() == 256 * 1024
    # A bucket smaller than a piece has one candidate: the whole bucket, chosen at once.
    small = _kernels.BlockTuner(128 * 1024, 4096)
    assert small.candidates == [4096] and small.choice == 4096


@needs_torch
def test_torch_tuned_default_sync_is_exact_through_and_after_tuning():
    # Syncs while the tuner tries each piece size and after it chose: the same bits as
    # the unblocked pair every time.
    rng = np.random.default_rng(9)
    fast = [torch.tensor(_special(rng, n), dtype=torch.float32) for n in (70_001, 300, 40_000)]
    slow = [f * 0.5 + 1.0 for f in fast]
    ref_fast, ref_slow = [f.clone() for f in fast], [s.clone() for s in slow]
    for i in range(_kernels.tuning_syncs() + 2):
        alpha = (0.25, 0.75, 1.0)[i % 3]
        _kernels.lerp_and_copy_(fast, slow, alpha)
        _unblocked(ref_fast, ref_slow, alpha)
        for a, b in zip(fast + slow, ref_fast + ref_slow):
            assert _torch_bits_equal(a, b)
        for s in slow:  # keep the values moving, alike on both sides
            s.mul_(1.5)
        for s in ref_slow:
            s.mul_(1.5)


@needs_torch
def test_torch_set_cpu_block_bytes_checks_and_applies():
    default = _kernels.cpu_block_bytes()
    with pytest.raises(TypeError, match="block_bytes"):
        _kernels.set_cpu_block_bytes(4096.0)
    with pytest.raises(ValueError, match="block_bytes"):
        _kernels.set_cpu_block_bytes(16)
    assert _kernels.cpu_block_bytes() == default  # a refused value changes nothing
    try:
        _kernels.set_cpu_block_bytes(4096)
        assert _kernels.cpu_block_bytes() == 4096
    finally:
        _kernels.set_cpu_block_bytes(None)
    assert _kernels.cpu_block_bytes() == default


@needs_torch
@pytest.mark.parametrize("block_bytes", [2048, 4096, 12288, 65536, 1 << 20])
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_torch_default_sync_gives_the_same_bits_whatever_block_is_chosen(block_bytes, dtype_name):
    # The default CPU sync with the piece size fixed to each value, against the unblocked
    # pair: whichever size a machine picks, the results are the same bits.
    dtype = getattr(torch, dtype_name)
    def pairs() -> tuple[list, list]:
        # Built twice from one seed: the same values in the same layouts.
        fast, slow = _torch_pairs(np.random.default_rng(11), dtype)
        fast.append(torch.tensor(_special(np.random.default_rng(3), 70_001)).to(dtype))
        slow.append(fast[-1] * 0.5 + 1.0)
        return fast, slow

    for alpha in (0.25, 0.75, 1.0):
        fast, slow = pairs()
        ref_fast, ref_slow = pairs()
        try:
            _kernels.set_cpu_block_bytes(block_bytes)
            _kernels.lerp_and_copy_(fast, slow, alpha)
        finally:
            _kernels.set_cpu_block_bytes(None)
        _unblocked(ref_fast, ref_slow, alpha)
        for i, (a, b) in enumerate(zip(fast + slow, ref_fast + ref_slow)):
            assert _torch_bits_equal(a, b), f"tensor {i} differs ({block_bytes} B, alpha {alpha})"


@needs_torch
@pytest.mark.parametrize("alpha", [0.25, 0.75])
def test_torch_upcast_sync_in_cpu_batches_equals_per_tensor_upcast(rng, alpha):
    # bfloat16 parameters with a float32 slow copy, more elements than one CPU batch.
    sizes = (_kernels.cpu_block_bytes() // 4 * 2 + 3, 17, 1000)
    fast = [torch.tensor(rng.standard_normal(n), dtype=torch.bfloat16) for n in sizes]
    fast.append(torch.tensor(rng.standard_normal((40, 30)), dtype=torch.bfloat16)[:, ::2])
    slow = [f.to(torch.float32) + 0.1 for f in fast]
    ref_fast, ref_slow = [f.clone() for f in fast], [s.clone() for s in slow]
    scratch = _kernels.make_scratch(fast, slow)
    _kernels.lerp_and_copy_(fast, slow, alpha, scratch)
    for f, s in zip(ref_fast, ref_slow):
        s.lerp_(f.to(torch.float32), alpha)
        f.copy_(s)
    for a, b in zip(fast + slow, ref_fast + ref_slow):
        assert _torch_bits_equal(a, b)


@needs_torch
@pytest.mark.parametrize("inner", ["sgd-momentum", "adam"])
def test_torch_optimizer_with_multi_block_parameters_equals_algorithm_1(rng, inner):
    """The adapter on parameters larger than a CPU block against Algorithm 1 written out."""
    make = {"sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
            "adam": lambda ps: torch.optim.Adam(ps, lr=0.01)}[inner]
    init = [rng.standard_normal(n).astype(np.float32) for n in (200_003, 64, 70_000)]
    noise = [[rng.standard_normal(a.shape).astype(np.float32) for a in init] for _ in range(7)]
    params = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    ref = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    opt = TorchLookahead(make(params), k=3, alpha=0.6)
    ref_inner = make(ref)
    ref_slow = [p.detach().clone() for p in ref]
    for step, grads in enumerate(noise, start=1):
        for p, q, g in zip(params, ref, grads):
            p.grad = torch.tensor(g) + 0.5 * p.detach()
            q.grad = torch.tensor(g) + 0.5 * q.detach()
        opt.step()
        ref_inner.step()
        if step % 3 == 0:
            with torch.no_grad():
                for q, s in zip(ref, ref_slow):
                    s.lerp_(q, 0.6)
                    q.copy_(s)
    for a, b in zip(list(params) + list(opt.slow[0]), list(ref) + ref_slow):
        assert _torch_bits_equal(a, b)


# --- PyTorch: the inner step without torch's second step wrapper -------------------------

def _step_ranges(monkeypatch) -> list[str]:
    """Names of the ``record_function`` ranges torch's step wrappers open from now on."""
    names: list[str] = []
    real = torch.autograd.profiler.record_function

    def spy(name, *args, **kwargs):
        names.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(torch.autograd.profiler, "record_function", spy)
    return names


def _quadratic_run(make_inner, observe, steps: int = 11) -> list[torch.Tensor]:
    """θ, φ after ``steps`` Lookahead steps on a fixed quadratic; ``observe(inner)`` may add a hook."""
    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(n, generator=g)) for n in (5, 300, 1)]
    inner = make_inner(params)
    observe(inner)
    opt = TorchLookahead(inner, k=3, alpha=0.4)
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = sum(((p - 0.25) ** 2 * (i + 1)).sum() for i, p in enumerate(params))
            loss.backward()
            return loss
        opt.step(closure)
    return [p.detach().clone() for p in params] + [s.clone() for s in opt.slow[0]]


@needs_torch
@pytest.mark.parametrize("inner", ["sgd-momentum", "adam", "lbfgs"])
def test_torch_inner_step_without_wrapper_gives_the_same_bits(inner):
    make = {"sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
            "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
            "lbfgs": lambda ps: torch.optim.LBFGS(ps, lr=0.5, max_iter=3)}[inner]
    bypassed = _quadratic_run(make, lambda opt: None)
    # A hook on the inner optimizer makes the wrapper observable: the plain call.
    wrapped = _quadratic_run(make, lambda opt: opt.register_step_pre_hook(lambda *a: None))
    for a, b in zip(bypassed, wrapped):
        assert _torch_bits_equal(a, b)


@needs_torch
def test_torch_inner_wrapper_skipped_only_when_nothing_observes_it(monkeypatch):
    w = torch.nn.Parameter(torch.zeros(3))
    inner = torch.optim.SGD([w], lr=0.1)
    opt = TorchLookahead(inner, k=2)
    names = _step_ranges(monkeypatch)
    w.grad = torch.ones(3)
    opt.step()
    assert names == ["Optimizer.step#Lookahead.step"]
    assert _inner_step.unobserved_step_body(inner) is not None

    calls = []
    handle = inner.register_step_post_hook(lambda o, a, k: calls.append(o))
    names.clear()
    opt.step()
    assert names == ["Optimizer.step#Lookahead.step", "Optimizer.step#SGD.step"]
    assert calls == [inner]
    handle.remove()

    # A scheduler on the inner optimizer patches inner.step to notice the call.
    scheduler = torch.optim.lr_scheduler.StepLR(inner, step_size=1)
    assert _inner_step.unobserved_step_body(inner) is None
    names.clear()
    opt.step()
    assert "Optimizer.step#SGD.step" in names
    assert inner._opt_called
    scheduler.step()


@needs_torch
def test_torch_inner_wrapper_kept_for_profiler_and_global_hooks():
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    w = torch.nn.Parameter(torch.zeros(3))
    inner = torch.optim.Adam([w], lr=0.1)
    opt = TorchLookahead(inner, k=2)
    w.grad = torch.ones(3)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert _inner_step.unobserved_step_body(inner) is None
        opt.step()
    names = {event.name for event in prof.events()}
    assert {"Optimizer.step#Lookahead.step", "Optimizer.step#Adam.step"} <= names
    seen = []
    handle = register_optimizer_step_pre_hook(lambda o, a, k: seen.append(type(o).__name__))
    try:
        assert _inner_step.unobserved_step_body(inner) is None
        opt.step()
    finally:
        handle.remove()
    assert seen == ["Lookahead", "Adam"]


@needs_torch
def test_torch_inner_wrapper_kept_for_a_decorated_or_customised_step():
    import functools

    calls = []

    class Decorated(torch.optim.SGD):
        pass

    def counting(step):
        @functools.wraps(step)  # copies torch's `hooked` flag and sets __wrapped__
        def wrapper(*args, **kwargs):
            calls.append("decorated")
            return step(*args, **kwargs)
        return wrapper

    w = torch.nn.Parameter(torch.zeros(3))
    inner = Decorated([w], lr=0.1)
    Decorated.step = counting(Decorated.step)
    opt = TorchLookahead(inner, k=2)
    w.grad = torch.ones(3)
    assert _inner_step.unobserved_step_body(inner) is None
    opt.step()
    assert calls == ["decorated"]
    assert torch.equal(w.detach(), torch.full((3,), -0.1))

    class Traced(torch.optim.SGD):
        def _optimizer_step_code(self):
            calls.append("traced")

    inner = Traced([w], lr=0.1)
    opt = TorchLookahead(inner, k=5)
    assert _inner_step.unobserved_step_body(inner) is None
    opt.step()
    assert calls == ["decorated", "traced"]


# --- PyTorch: the placement check before a sync ------------------------------------------

@needs_torch
@pytest.mark.parametrize("change", [
    "dtype", "shape",
    pytest.param("device", marks=pytest.mark.skipif(
        torch is None or not torch.cuda.is_available(),
        reason="no CUDA device: a CPU parameter cannot be moved")),
])
def test_torch_placement_check_still_refuses_a_changed_parameter(change):
    params = [torch.nn.Parameter(torch.zeros(4, 3)) for _ in range(3)]
    opt = TorchLookahead(torch.optim.SGD(params, lr=0.1), k=1)
    before = [s.clone() for s in opt.slow[0]]
    with torch.no_grad():
        if change == "dtype":
            params[2].data = params[2].data.double()
        elif change == "shape":
            params[2].data = params[2].data.reshape(3, 4)
        else:
            params[2].data = params[2].data.to("cuda")
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match=r"param_groups\[0\]\['params'\]\[2\]"):
        opt.step()
    assert opt.counts == (0,)
    for a, b in zip(opt.slow[0], before):
        assert torch.equal(a, b)


@needs_torch
def test_torch_placement_check_accepts_a_parameter_cast_to_its_wider_slow_dtype():
    p = torch.nn.Parameter(torch.zeros(8, dtype=torch.bfloat16))
    opt = TorchLookahead(torch.optim.SGD([p], lr=0.5), k=1, slow_dtype=torch.float32)
    p.grad = torch.ones_like(p)
    opt.step()
    assert opt.slow[0][0].dtype == torch.float32
    assert torch.equal(p.detach().float(), torch.full((8,), -0.25))


# --- NumPy: the dense sync with the difference held in place ----------------------------


def _numpy_params(rng: np.random.Generator, dtype: str) -> list[np.ndarray]:
    return [
        _special(rng, 1000).astype(dtype),
        _special(rng, 33 * 31).astype(dtype).reshape(33, 31),
        np.asfortranarray(_special(rng, 40 * 30).astype(dtype).reshape(40, 30)),
        np.array(_special(rng, 1)[0], dtype=dtype),
        _special(rng, 90).astype(dtype).reshape(30, 3)[::2],   # strided: the scratch path
        _special(rng, 50).astype(dtype)[::-1],                 # reversed: the scratch path
    ]


@pytest.mark.parametrize("block_bytes", [8, 96, 4096, _blocks.DEFAULT_BLOCK_BYTES])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_numpy_dense_sync_equals_scratch_kernel_and_core(rng, block_bytes, alpha, dtype):
    params = _numpy_params(rng, dtype)
    twin = [np.array(p, copy=True, order="K") for p in params]
    opt = NumpyLookahead(params, lc.sgd(lr=0.1), k=5, alpha=alpha, block_bytes=block_bytes)
    ref = NumpyLookahead(twin, lc.sgd(lr=0.1), k=5, alpha=alpha, block_bytes=block_bytes)
    with np.errstate(all="ignore"):
        for p, q in zip(params, twin):
            p -= 0.5  # θ ≠ φ
            q -= 0.5
        expected_fast, expected_slow = lc.sync_slow(
            [np.array(p, copy=True) for p in params], [np.array(s, copy=True) for s in opt.slow],
            alpha)
        dense = [pair.fast.flags.c_contiguous for pair in opt._pairs]
        assert dense == [True, True, True, True, False, False]
        opt.sync()
        for pair in ref._pairs:
            _blocks.lerp_and_reset_scratch(pair, alpha)
    assert_bit_identical(params, twin)
    assert_bit_identical(opt.slow, ref.slow)
    assert_bit_identical(params, expected_fast)
    assert_bit_identical(opt.slow, expected_slow)


# --- the core: the traceable Lookahead -------------------------------------------------

def _problem(xp, rng, steps: int, dtype: str = "float64"):
    shapes = [(3, 4), (5,), ()]
    params = [xp.asarray(np.asarray(rng.standard_normal(s), dtype=dtype)) for s in shapes]
    grads = [[xp.asarray(np.asarray(rng.standard_normal(s), dtype=dtype)) for s in shapes]
             for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("k, alpha", [(5, 0.3), (5, 0.7), (1, 0.5), (3, 0.0), (3, 1.0)])
def test_traceable_eager_equals_core_bit_for_bit(xp, rng, k, alpha):
    params, grads = _problem(xp, rng, steps=12)
    inner = lc.sgd(lr=0.1, momentum=0.9)
    plain, fast_path = lc.lookahead(inner, k=k, alpha=alpha), traceable.lookahead(inner, k, alpha)
    p, state = list(params), plain.init(params)
    q, tstate = list(params), fast_path.init(params)
    assert int(tstate.count) == 0 and str(tstate.count.dtype).endswith("int32")
    for step, g in enumerate(grads, start=1):
        p, state = plain.step(p, g, state)
        q, tstate = fast_path.step(q, g, tstate)
        assert int(tstate.count) == state.count == step % k
        assert_bit_identical(q, p)
        assert_bit_identical(tstate.slow, state.slow)
    p, state = plain.sync(p, state)
    q, tstate = fast_path.sync(q, tstate)
    assert_bit_identical(q, p)
    assert_bit_identical(tstate.slow, state.slow)
    assert int(tstate.count) == 0


def test_traceable_runs_the_sync_branch_only_on_kth_steps(rng):
    params, grads = _problem(np, rng, steps=7)
    taken = []

    def recording_cond(pred, true_fn, false_fn, *operands):
        taken.append(bool(pred))
        return traceable.python_cond(pred, true_fn, false_fn, *operands)

    opt = traceable.lookahead(lc.sgd(lr=0.1), k=3, alpha=0.5, cond=recording_cond)
    p, state = params, opt.init(params)
    for g in grads:
        previous = state.slow
        slow_before = [np.array(s, copy=True) for s in previous]
        p, state = opt.step(p, g, state)
        if not taken[-1]:  # the keep branch hands φ on untouched: the same arrays
            assert all(a is b for a, b in zip(state.slow, previous))
            assert_bit_identical(state.slow, slow_before)
        else:
            assert not any(a is b for a, b in zip(state.slow, previous))
    assert taken == [False, False, True, False, False, True, False]


def test_traceable_rejects_bad_arguments(rng):
    params, _ = _problem(np, rng, steps=0)
    with pytest.raises(TypeError, match="inner"):
        traceable.lookahead("sgd", k=2)
    with pytest.raises(ValueError, match="k"):
        traceable.lookahead(lc.sgd(), k=0)
    with pytest.raises(ValueError, match="alpha"):
        traceable.lookahead(lc.sgd(), alpha=1.5)
    with pytest.raises(TypeError, match="cond"):
        traceable.lookahead(lc.sgd(), cond=None)
    opt = traceable.lookahead(lc.sgd(lr=0.1), k=2)
    with pytest.raises(TypeError, match="TraceableLookaheadState"):
        opt.step(params, params, lc.lookahead(lc.sgd(), k=2).init(params))


def _heavy_ball(lr: float, momentum: float) -> lc.InnerOptimizer:
    """A traceable heavy-ball SGD (array state, no Python step count), for ``jax.jit``."""

    def init(params):
        return tuple(jnp.zeros_like(p) for p in params)

    def update(grads, state, params):
        buffers = tuple(momentum * b + g for b, g in zip(state, grads))
        return tuple(-lr * b for b in buffers), buffers

    return lc.InnerOptimizer(init, update, "heavy-ball", {"lr": lr, "momentum": momentum})


@needs_jax
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
def test_traceable_under_jit_matches_the_eager_core(rng, alpha):
    """Compiled with ``jax.lax.cond``: within 4 ulps per step of the eager specification."""
    k, steps = 4, 13
    params, grads = _problem(jnp, rng, steps=steps)
    inner = _heavy_ball(lr=0.1, momentum=0.9)
    plain = lc.lookahead(inner, k=k, alpha=alpha)
    compiled = traceable.lookahead(inner, k=k, alpha=alpha, cond=jax.lax.cond)
    step = jax.jit(compiled.step)
    p, state = list(params), plain.init(params)
    q, tstate = tuple(params), compiled.init(params)
    eps = float(np.finfo(np.float64).eps)
    for n, g in enumerate(grads, start=1):
        slow_before = [to_numpy(s) for s in tstate.slow]
        p, state = plain.step(p, g, state)
        q, tstate = step(q, tuple(g), tstate)
        assert int(tstate.count) == n % k
        if n % k:  # a non-sync step leaves φ exactly as it was
            assert_bit_identical(tstate.slow, slow_before)
        for a, b in zip(list(q) + list(tstate.slow), list(p) + list(state.slow)):
            a, b = to_numpy(a), to_numpy(b)
            np.testing.assert_allclose(a, b, rtol=4 * eps * n, atol=4 * eps * n * np.max(np.abs(b)))
        if alpha in (0.0, 1.0) and n % k == 0:
            # Exact ends of the two-sided lerp: φ ← φ (α = 0) or φ ← θ (α = 1), and θ ← φ.
            assert_bit_identical(q, tstate.slow)
    sync = jax.jit(compiled.sync)
    q, tstate = sync(q, tstate)
    assert int(tstate.count) == 0
    assert_bit_identical(q, tstate.slow)
