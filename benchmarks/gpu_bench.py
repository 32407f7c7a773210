"""Sync bandwidth on one NVIDIA GPU: the fused CuPy sync against a plain copy and torch.

Run by ``benchmarks/gpu_check.sh`` (or alone: ``python benchmarks/gpu_bench.py``).
For each parameter set it times, on the GPU (CUDA events, median of many
repetitions after warm-up):

- ``copy``: ``cudaMemcpyAsync`` device to device of 2 × the parameter bytes:
  the same 4 × bytes moved (read + write) as a sync, the device's plain copy
  bandwidth, the denominator of the efficiency;
- ``cupy flat buffer``: `lookahead_cupy.Lookahead` over views of one flat
  buffer (`lookahead_cupy.flatten`), one launch, with each of the two kernels
  (the multi-tensor ``RawKernel``, the default, and the ``ElementwiseKernel``);
- ``cupy multi_tensor``: separate arrays, one multi-tensor launch;
- ``cupy elementwise``: separate arrays, one elementwise launch per tensor;
- ``torch foreach``: ``torch._foreach_lerp_(slow, fast, α)`` then
  ``torch._foreach_copy_(fast, slow)`` on the same shapes;
- ``torch copy_``: ``Tensor.copy_`` of 2 × the parameter bytes (a second
  measure of the copy bandwidth).

A sync's time includes the Python work and launch gaps between its kernels,
which is what a training loop pays. Efficiency = (4 × parameter bytes / sync
time) ÷ copy bandwidth of the same set. Prints one markdown table; exits 1 if
a method could not run (torch without CUDA, say).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPEATS = 50
WARMUP = 5


# The suite's parameter sets (shapes only: sets.py needs NumPy alone), also when this
# file runs as a script on a machine that has nothing but the working tree.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.sets import SETS  # noqa: E402


def gpu_median_us(fn: Callable[[], object]) -> tuple[float, float, float]:
    """Median, min and max GPU time of ``fn`` in microseconds (CuPy's event timer)."""
    from cupyx.profiler import benchmark

    result = benchmark(fn, n_repeat=REPEATS, n_warmup=WARMUP)
    times = np.asarray(result.gpu_times).ravel() * 1e6
    return float(np.median(times)), float(times.min()), float(times.max())


def torch_median_us(torch, fn: Callable[[], object]) -> tuple[float, float, float]:
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPEATS):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3)
    return statistics.median(times), min(times), max(times)


def measure_set(cupy, torch, torch_reason: str | None, set_name: str, host: list[np.ndarray],
                lines: list[str], failures: list[str]) -> None:
    """Append the rows of one parameter set to ``lines`` (device memory is freed on return)."""
    import lookahead_core as lc
    from lookahead_cupy import Lookahead, flatten

    alpha = 0.5
    nbytes = sum(a.nbytes for a in host)
    moved = 4 * nbytes
    label = f"| {set_name} | {len(host)} | {nbytes / 1e6:.1f} |"

    def row(method: str, launches: str, timing: tuple[float, float, float], copy_bw: float) -> None:
        median, low, high = timing
        bandwidth = moved / (median * 1e-6) / 1e9
        lines.append(f"{label} {method} | {launches} | {median:.1f} ({low:.1f}–{high:.1f}) | "
                     f"{bandwidth:.0f} | {bandwidth / copy_bw:.2f} |")

    # The plain copy of 2 × bytes: 4 × bytes moved, like a sync.
    src = cupy.empty(2 * nbytes, dtype=cupy.uint8)
    dst = cupy.empty_like(src)
    src.fill(1)
    copy_timing = gpu_median_us(lambda: dst.data.copy_from_device_async(src.data, 2 * nbytes))
    copy_bw = moved / (copy_timing[0] * 1e-6) / 1e9
    row("copy (cudaMemcpy D2D)", "1", copy_timing, copy_bw)
    src = dst = None

    def lookahead_row(method: str, params: list, kernel: str) -> None:
        opt = Lookahead(params, lc.sgd(lr=0.1), k=5, alpha=alpha, kernel=kernel)
        row(method, str(opt.sync_launches), gpu_median_us(opt.sync), copy_bw)

    flat_views = list(flatten([cupy.asarray(a) for a in host]).views)
    lookahead_row("cupy flat buffer, multi_tensor (auto)", flat_views, "multi_tensor")
    lookahead_row("cupy flat buffer, elementwise", flat_views, "elementwise")
    flat_views = None
    separate = [cupy.asarray(a) for a in host]
    lookahead_row("cupy multi_tensor", separate, "multi_tensor")
    lookahead_row("cupy elementwise", separate, "elementwise")
    separate = None
    cupy.get_default_memory_pool().free_all_blocks()

    if torch is None or torch_reason:
        lines.append(f"{label} torch | - | ({torch_reason}) | - | - |")
        failures.append(f"{set_name}: torch rows missing ({torch_reason})")
        return
    torch.cuda.set_device(cupy.cuda.Device().id)
    fast = [torch.from_numpy(a).cuda() for a in host]
    slow = [f.clone() for f in fast]

    def foreach_sync() -> None:
        torch._foreach_lerp_(slow, fast, alpha)
        torch._foreach_copy_(fast, slow)

    row("torch _foreach_lerp_ + _foreach_copy_", "-", torch_median_us(torch, foreach_sync), copy_bw)
    big_src = torch.empty(2 * nbytes, dtype=torch.uint8, device="cuda")
    big_dst = torch.empty_like(big_src)
    row("torch copy_ (2 × bytes)", "1", torch_median_us(torch, lambda: big_dst.copy_(big_src)),
        copy_bw)
    fast = slow = big_src = big_dst = None
    torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
    args = parser.parse_args(argv)

    import cupy

    from lookahead_cupy import skip_reason

    reason = skip_reason()
    if reason:
        print(f"gpu_bench: {reason}", file=sys.stderr)
        return 2
    try:
        import torch

        torch_reason = None if torch.cuda.is_available() else f"torch {torch.__version__} has no CUDA"
    except ImportError:
        torch, torch_reason = None, "torch not installed"

    device = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(device.id)
    lines = [
        f"GPU: {props['name'].decode()} (device {device.id}), driver "
        f"{cupy.cuda.runtime.driverGetVersion()}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}; "
        f"CuPy {cupy.__version__}; torch {getattr(torch, '__version__', '-')}; "
        f"NumPy {np.__version__}; Python {platform.python_version()}",
        f"dtype {args.dtype}; median of {REPEATS} syncs after {WARMUP} warm-ups (min–max); "
        "GB/s counts 4 × parameter bytes (θ and φ read and written); "
        "efficiency = that ÷ the copy bandwidth of the same set",
        "",
        "| set | tensors | MB | method | launches | µs per sync | GB/s | efficiency |",
        "|---|---:|---:|---|---:|---|---:|---:|",
    ]
    failures: list[str] = []
    rng = np.random.default_rng(0)
    for set_name in args.sets:
        host = [rng.standard_normal(s).astype(args.dtype) for s in SETS[set_name].shapes]
        measure_set(cupy, torch, torch_reason, set_name, host, lines, failures)

    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    for failure in failures:
        print(f"gpu_bench: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
