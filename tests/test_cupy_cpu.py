"""``lookahead_cupy`` on a machine without a GPU: what must work there.

The package imports without CuPy and without a CUDA device; it says which one
is missing; arguments are rejected before any device is touched; the layout
planner (which decides the slow buffers and the launches) is pure arithmetic
on addresses and sizes; the conformance backend is registered and skips with
the reason; and ``benchmarks/gpu_check.sh`` refuses to run, quickly and loudly.
The kernels themselves are checked on the CPU in ``test_cupy_kernels.py``,
and on a GPU in ``test_cupy_adapter.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import lookahead_core as lc
import lookahead_cupy
from lookahead_cupy import _device, flat_layout
from lookahead_cupy._layout import TensorInfo, plan_layout

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120, check=False)


# --- importing, and telling what is missing ------------------------------------------------


def test_imports_without_cupy_and_says_how_to_install_it():
    result = run_python("""
        import sys
        sys.modules["cupy"] = None  # as if CuPy were not installed
        import numpy as np, lookahead_core as lc
        import lookahead_cupy
        from lookahead_cupy._conformance import backend
        assert lookahead_cupy.skip_reason() == "cupy not installed", lookahead_cupy.skip_reason()
        assert backend.skip_reason() == "cupy not installed"
        try:
            lookahead_cupy.Lookahead([np.zeros(3)], lc.sgd())
        except ImportError as exc:
            assert "pip install 'lookahead-optimizer[cupy]'" in str(exc), exc
        else:
            raise AssertionError("no ImportError")
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_does_not_import_cupy():
    result = run_python("""
        import sys, lookahead_cupy, lookahead_cupy._conformance
        print("cupy" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


class FakeRuntimeError(RuntimeError):
    pass


def fake_cupy(count=None, error=None):
    def get_device_count():
        if error is not None:
            raise error
        return count

    return SimpleNamespace(cuda=SimpleNamespace(runtime=SimpleNamespace(getDeviceCount=get_device_count)))


@pytest.mark.parametrize(
    "module, reason",
    [
        (fake_cupy(error=FakeRuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                                          "insufficient for CUDA runtime version")), "no CUDA device"),
        (fake_cupy(error=FakeRuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")),
         "no CUDA device"),
        (fake_cupy(error=OSError("libcuda.so.1: cannot open shared object file")), "no CUDA device"),
        (fake_cupy(count=0), "no CUDA device"),
        (fake_cupy(count=1), None),
        (fake_cupy(count=8), None),
    ],
    ids=["no-driver", "no-device", "broken-install", "zero-devices", "one", "eight"],
)
def test_skip_reason_reads_the_device_count(monkeypatch, module, reason):
    monkeypatch.setattr(_device, "_import_cupy", lambda: module)
    _device.cuda_status.cache_clear()
    try:
        status = _device.cuda_status()
        assert lookahead_cupy.skip_reason() == reason
        assert (status.devices > 0) == (reason is None)
        if reason:
            assert status.detail  # says what CuPy answered
    finally:
        _device.cuda_status.cache_clear()


def test_skip_reason_without_cupy(monkeypatch):
    def missing():
        raise ImportError("No module named 'cupy'")

    monkeypatch.setattr(_device, "_import_cupy", missing)
    _device.cuda_status.cache_clear()
    try:
        assert lookahead_cupy.skip_reason() == "cupy not installed"
    finally:
        _device.cuda_status.cache_clear()


def test_skip_reason_agrees_with_cuda_here():
    """On this machine, whatever it is: a reason exactly when CuPy cannot count a device."""
    try:
        import cupy
    except ImportError:
        assert lookahead_cupy.skip_reason() == "cupy not installed"
        return
    try:
        usable = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001
        usable = False
    assert lookahead_cupy.skip_reason() == (None if usable else "no CUDA device")


# --- arguments are checked before anything touches a device --------------------------------


@pytest.fixture
def with_cupy():
    return pytest.importorskip("cupy", reason="cupy not installed")


@pytest.mark.parametrize(
    "params, error, message",
    [
        ([np.zeros(3)], TypeError, r"params\[0\] must be a cupy.ndarray, got numpy.ndarray"),
        ((np.zeros(3), np.ones(2)), TypeError, r"params\[0\] must be a cupy.ndarray"),
        ([], ValueError, "at least one"),
        (np.zeros(3), TypeError, "params must be a list or tuple"),
        ([[0.0, 1.0]], TypeError, r"params\[0\] must be an array"),
        ([np.zeros(3, np.int32)], TypeError, r"params\[0\] must have a real floating"),
    ],
    ids=["numpy", "numpy-tuple", "empty", "bare-array", "list", "int"],
)
def test_bad_params_are_rejected_without_a_device(with_cupy, params, error, message):
    with pytest.raises(error, match=message):
        lookahead_cupy.Lookahead(params, lc.sgd(lr=0.1))


def test_torch_tensors_are_rejected_with_the_library_named(with_cupy):
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"params\[0\] must be a cupy.ndarray, got torch.Tensor"):
        lookahead_cupy.Lookahead([torch.zeros(3)], lc.sgd())


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(k=0), ValueError, "k must be an int >= 1"),
        (dict(k=True), TypeError, "k must be an int >= 1"),
        (dict(alpha=1.5), ValueError, r"alpha must be in \[0, 1\]"),
        (dict(alpha=float("nan")), ValueError, "alpha must be finite"),
        (dict(kernel="fused"), ValueError, "kernel must be one of"),
        (dict(kernel=1), TypeError, "kernel must be one of"),
        (dict(alpha_mode="auto"), ValueError, "alpha_mode must be one of"),
        (dict(alpha_mode=1), TypeError, "alpha_mode must be one of"),
        (dict(alpha_mode="adaptive", alpha_min=0.6), ValueError, r"\[alpha_min, 1\]"),
        (dict(alpha_min=-0.1), ValueError, "alpha_min must be in"),
    ],
)
def test_bad_hyperparameters_are_rejected_first(with_cupy, kwargs, error, message):
    # numpy params would be rejected too: these checks come before the parameters'.
    with pytest.raises(error, match=message):
        lookahead_cupy.Lookahead([np.zeros(3)], lc.sgd(), **kwargs)


def test_bad_inner_is_rejected_first(with_cupy):
    with pytest.raises(TypeError, match="inner must be an InnerOptimizer"):
        lookahead_cupy.Lookahead([np.zeros(3)], "sgd")


def test_flatten_rejects_numpy_arrays(with_cupy):
    with pytest.raises(TypeError, match=r"arrays\[0\] must be a cupy.ndarray"):
        lookahead_cupy.flatten([np.zeros(2), np.zeros(3)])
    with pytest.raises(ValueError, match="at least one"):
        lookahead_cupy.flatten([])


def test_memory_sharing_test_is_numpys_answer_and_views_0d_arrays_as_1d():
    """`shares_memory_exactly` on NumPy arrays, with NumPy's exact test as the library's:
    the same answer as ``numpy.shares_memory`` for every pair (0-d views, interleaved,
    reversed and empty ones included); the library's test is asked only about
    overlapping byte ranges, and never about a 0-d array (which CuPy 14 gets wrong)."""
    from lookahead_cupy._checks import shares_memory_exactly

    base = np.arange(12.0)
    grid = base.reshape(3, 4)

    def element(i):  # a 0-d view (base[i] would be a NumPy scalar, a copy)
        return base[i : i + 1].reshape(())

    arrays = [base, element(3), element(4), element(3), base[::2], base[1::2], base[::-1],
              grid[:, 1], grid[1], grid.T, np.zeros(()), np.zeros(3), base[5:5]]
    assert all(np.shares_memory(base, a) for a in arrays[:3])
    asked = []

    def library_test(a, b):
        asked.append((a.ndim, b.ndim))
        return np.shares_memory(a, b)

    def start(array):
        return array.__array_interface__["data"][0]

    for a in arrays:
        for b in arrays:
            assert shares_memory_exactly(a, b, start, library_test) == np.shares_memory(a, b)
    assert asked and all(ndim > 0 for pair in asked for ndim in pair)
    asked.clear()
    assert not shares_memory_exactly(element(3), element(4), start, library_test)  # adjacent
    assert not shares_memory_exactly(base[:3], np.zeros(3), start, library_test)
    assert asked == []


# --- the flat layout and the launch plan ----------------------------------------------------


def test_flat_layout_puts_arrays_back_to_back_per_dtype():
    sizes, offsets = flat_layout(
        [(2, 3), (4,), (), (0, 5), (3,), (2, 2)],
        ["float32", "float32", "float32", "float32", "float64", "float32"],
    )
    assert sizes == {"float32": 6 + 4 + 1 + 0 + 4, "float64": 3}
    assert offsets == (0, 6, 10, 11, 0, 11)
    with pytest.raises(ValueError, match="one entry per array"):
        flat_layout([(2,)], [])


def info(dtype="float32", size=4, address=0, allocation="a", dense=True, itemsize=4):
    return TensorInfo(dtype, size, itemsize, dense, address, allocation)


def test_views_of_one_flat_buffer_form_one_segment():
    """What `flatten` produces: one segment per dtype, whatever the parameter order."""
    sizes, offsets = flat_layout([(3,), (2, 2), (5,)], ["float32"] * 3)
    base = 1 << 20
    tensors = [info(size=n, address=base + 4 * off)
               for n, off in zip((3, 4, 5), offsets)]
    shuffled = [tensors[2], tensors[0], tensors[1]]
    (plan,) = plan_layout(shuffled)
    assert plan.slow_size == 12 and plan.strided == ()
    (segment,) = plan.segments
    assert segment.members == (1, 2, 0)  # address order
    assert segment.size == 12 and segment.address == base and segment.slow_offset == 0
    # Each parameter's slow slice sits where its memory sits in the segment.
    assert plan.slow_offsets == {1: 0, 2: 3, 0: 7}


def test_segments_need_adjacency_within_one_allocation():
    tensors = [
        info(size=4, address=1000, allocation="a"),
        info(size=4, address=1016, allocation="a"),   # right after the first
        info(size=4, address=1032, allocation="b"),   # adjacent, but another allocation
        info(size=4, address=1052, allocation="b"),   # a gap of 4 bytes
    ]
    (plan,) = plan_layout(tensors)
    assert [s.members for s in plan.segments] == [(0, 1), (2,), (3,)]
    assert [s.slow_offset for s in plan.segments] == [0, 8, 12]
    assert plan.slow_offsets == {0: 0, 1: 4, 2: 8, 3: 12}


def test_dtypes_get_separate_buffers_and_strided_ones_their_own_launch():
    tensors = [
        info("float32", 4, 100),
        info("float64", 3, 5000, itemsize=8),
        info("float32", 6, 200, dense=False),          # a strided view
        info("float32", 0, 116),                      # empty: no work, any offset
        info("float16", 2, 9000, itemsize=2),
        info("float32", 2, 116),                      # adjacent to the first
    ]
    plans = {p.dtype: p for p in plan_layout(tensors)}
    assert list(plans) == ["float32", "float64", "float16"]  # first-appearance order
    f32 = plans["float32"]
    assert [s.members for s in f32.segments] == [(0, 5)]
    assert f32.strided == (2,)
    assert f32.slow_size == 4 + 2 + 6
    assert f32.slow_offsets[0] == 0 and f32.slow_offsets[5] == 4 and f32.slow_offsets[2] == 6
    assert 3 in f32.slow_offsets  # the empty one has a (zero-length) slice
    assert plans["float64"].slow_size == 3 and plans["float16"].slow_size == 2


def test_every_slow_slice_is_disjoint_and_inside_its_buffer(rng):
    """A random mix: the slow slices tile each buffer exactly (one copy, no overlap)."""
    tensors, address = [], 1 << 16
    for _ in range(200):
        dtype = ["float32", "float64", "float16"][rng.integers(3)]
        itemsize = np.dtype(dtype).itemsize
        size = int(rng.integers(0, 50))
        gap = int(rng.integers(0, 2)) * itemsize
        tensors.append(TensorInfo(dtype, size, itemsize, bool(rng.integers(0, 4)), address + gap,
                                  int(rng.integers(0, 3))))
        address += gap + size * itemsize
    for plan in plan_layout(tensors):
        members = [i for i, t in enumerate(tensors) if t.dtype == plan.dtype]
        covered = np.zeros(plan.slow_size, dtype=int)
        for i in members:
            start = plan.slow_offsets[i]
            covered[start : start + tensors[i].size] += 1
        assert np.all(covered == 1)
        assert plan.slow_size == sum(tensors[i].size for i in members)
        for segment in plan.segments:
            offsets = [plan.slow_offsets[i] for i in segment.members]
            sizes = [tensors[i].size for i in segment.members]
            assert offsets[0] == segment.slow_offset
            assert all(o + n == o2 for o, n, o2 in zip(offsets, sizes, offsets[1:]))
            assert sum(sizes) == segment.size


# --- the conformance backend --------------------------------------------------------------


def test_conformance_backend_is_registered_and_skips_with_the_reason():
    from lookahead_conformance import load_backend, registered_backends

    assert "cupy" in registered_backends()
    backend = load_backend("cupy")
    assert backend.name == "cupy" and backend.dtypes == ("float32", "float64")
    assert backend.skip_reason() == lookahead_cupy.skip_reason()


# --- the GPU check script -------------------------------------------------------------------


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    result = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    return result.returncode == 0 and "GPU " in result.stdout


def _run_gpu_check(tmp_path: Path, path: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the script with this PATH and a stand-in for Python that records being called.

    Every set-up step (checking the Python version, making or choosing the
    environment, pip) starts with ``$PYTHON``, so an untouched record shows
    that the script stopped before setting anything up.
    """
    record = tmp_path / "python-was-called"
    fake_python = tmp_path / "fake-python"
    fake_python.write_text(f"#!/bin/sh\ntouch '{record}'\nexit 1\n")
    fake_python.chmod(0o755)
    env = {**os.environ, "PATH": path, "PYTHON": str(fake_python),
           "GPU_CHECK_VENV": str(tmp_path / "venv"), "GPU_CHECK_OUT": str(tmp_path / "out")}
    # The timeout only guards against a hang.
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    return result, record


@pytest.mark.skipif(_has_gpu(), reason="a GPU is present: the script would run the whole GPU check")
def test_gpu_check_fails_loudly_before_any_set_up_without_a_gpu(tmp_path):
    result, record = _run_gpu_check(tmp_path, os.environ.get("PATH", ""))
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
    assert not record.exists()
    assert not (tmp_path / "venv").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("smi_says", ["exit 9", "echo 'No devices were found'"],
                         ids=["driver-error", "no-devices"])
def test_gpu_check_does_not_trust_a_failing_nvidia_smi(tmp_path, smi_says):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\n{smi_says}\n")
    fake.chmod(0o755)
    result, record = _run_gpu_check(tmp_path, f"{fake.parent}:{os.environ.get('PATH', '')}")
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
    assert not record.exists()


def test_gpu_check_goes_on_to_set_up_when_a_gpu_is_listed(tmp_path):
    """The other side of the two tests above: with a GPU listed, the next thing the
    script does is call $PYTHON (here the stand-in, which fails, so it stops there)."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: Stand-in (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    result, record = _run_gpu_check(tmp_path, f"{fake.parent}:{os.environ.get('PATH', '')}")
    assert record.exists()
    assert result.returncode == 1
    assert "is not Python >= 3.10" in result.stderr


# --- the GPU benchmark's parameter sets -----------------------------------------------------


def _gpu_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_bench_parameter_sets_have_the_advertised_sizes():
    bench = _gpu_bench()
    counts = {name: (len(pset.shapes), sum(int(np.prod(s)) for s in pset.shapes))
              for name, pset in bench.SETS.items()}
    assert counts["resnet18"] == (62, 11_689_512)  # torchvision's ResNet-18
    assert counts["transformer"][0] == 200 and 3_000_000 < counts["transformer"][1] < 4_000_000
    assert counts["large"] == (100, 100_000_000)


def test_gpu_bench_says_no_cuda_device_without_one():
    if lookahead_cupy.skip_reason() is None:
        pytest.skip("a CUDA device is present: the benchmark would run")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert lookahead_cupy.skip_reason() in result.stderr
