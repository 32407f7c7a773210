"""The benchmark suite: every backend and installed peer, side by side, in one process.

For each parameter set (`sets.SETS`: ResNet-18-shaped, transformer-shaped,
and one larger than the L3 cache) and each library (PyTorch, NumPy, JAX; CuPy
when a CUDA device is present), it measures:

- the sync alone (median [min–max] ms), and its efficiency: the bytes a sync
  must move, 4 × P (read θ and φ, write both), per second, divided by the
  bandwidth of a plain copy of 2 × P bytes (``np.copyto``, read + write
  counted) timed in the same rounds;
- k = 5 consecutive steps, each timed (one sync among them) ÷ 5 bare steps:
  the amortized per-step cost; the fastest of the 5, a step that does not
  sync, ÷ the fastest of 5 bare steps;
- state beyond the bare inner optimizer's (÷ P), and bytes allocated during a sync.

Every comparison is interleaved round by round (`timing.interleaved`,
`steps.measure_steps`) and reported as the median [min–max] of per-round
ratios. Threads are pinned to 1 (torch, XLA, BLAS) before the libraries load
(``__main__.py``) and printed with the machine load.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import report
from .results import SetResult
from .sets import SETS

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent

# Per measurement: the most rounds and the seconds it may take (fewer rounds under load,
# at least timing.MIN_ROUNDS); syncs: how many back-to-back calls each sample is the
# fastest of. The core's own steps (slow: new arrays every step) get a few rounds.
_CACHED = {"sync": 40, "best_of": 3, "sync_budget": 6.0,
           "cycles": 20, "cycle_budget": 12.0, "core_cycles": 3}
ROUNDS = {
    "resnet18": dict(_CACHED),
    "transformer": dict(_CACHED),
    # Larger than the caches: what matters is the sync. Steps only for lookahead_torch
    # against bare torch.optim; the others would take minutes (the core allocates several
    # × 400 MB per step) and gigabytes.
    "large": {"sync": 12, "best_of": 2, "sync_budget": 25.0, "cycles": 3, "cycle_budget": 15.0,
              "step_peers": False, "noise_floor": False, "core_steps": False,
              "numpy_steps": False, "jax_steps": False},
}
QUICK = {"sync": 3, "best_of": 1, "cycles": 2, "core_cycles": 1}
OVERHEAD = {"tensors": 200, "size": 256, "rounds": 300}


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def cpu_blocking() -> str:
    """The piece size the PyTorch adapter's cache-blocked CPU sync chose here, and why."""
    try:
        from lookahead_torch import _kernels
    except ImportError:
        return "PyTorch CPU sync blocking: torch not installed"
    l2 = _kernels.cpu_cache_bytes(2)
    block = _kernels.cpu_block_bytes()
    source = (f"L2 {l2 // 1024} KiB / {_kernels.CPU_BLOCK_L2_FRACTION}" if l2
              else "L2 size unknown: the default")
    candidates = _kernels.BlockTuner(block, 1 << 40).candidates[:-1]
    line = (f"PyTorch CPU sync blocking: base piece {block // 1024} KiB per tensor ({source}); "
            f"each bucket times {', '.join(f'{c // 1024} KiB' for c in candidates)} and unblocked "
            f"over its first {_kernels.TUNING_ROUNDS} × {len(candidates) + 1} syncs and keeps the fastest "
            "(the sync table's timing starts after them)")
    chosen = _kernels.block_choices()
    if chosen:
        line += "; chosen: " + "; ".join(f"{bucket}: {choice}" for bucket, choice in sorted(chosen.items()))
    return line


def machine() -> str:
    """The CPU, its caches, memory, OS, and library versions, as Markdown lines."""
    model = cpu_model()
    caches = []
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")) if base.exists() else []:
        level, kind = _read(f"{index}/level"), _read(f"{index}/type")
        if kind != "Instruction":
            caches.append(f"L{level} {_read(f'{index}/size')}")
    mem = next((line.split(":", 1)[1].strip() for line in _read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal")), "?")
    versions = [f"Python {platform.python_version()}", f"NumPy {np.__version__}"]
    for name, module in (("PyTorch", "torch"), ("JAX", "jax"), ("optax", "optax"),
                         ("timm", "timm"), ("torch-optimizer", "torch_optimizer"),
                         ("pytorch_optimizer", "pytorch_optimizer")):
        versions.append(f"{name} {_version(module)}")
    return "\n".join([
        f"- CPU: {model}; {os.cpu_count()} logical CPUs, this process pinned to "
        f"{sorted(os.sched_getaffinity(0))}; caches (per core for L1/L2): {', '.join(caches)}",
        f"- {cpu_blocking()}",
        f"- memory: {mem}; {platform.system()} {platform.release()}",
        f"- {'; '.join(versions)}",
    ])


def _version(module: str) -> str:
    from importlib import metadata

    names = {"torch_optimizer": "torch-optimizer", "pytorch_optimizer": "pytorch_optimizer"}
    try:
        return metadata.version(names.get(module, module))
    except metadata.PackageNotFoundError:
        return "not installed"


def threads() -> str:
    import torch

    return (f"torch.get_num_threads() = {torch.get_num_threads()}, "
            f"XLA_FLAGS = {os.environ.get('XLA_FLAGS', '')!r}, "
            f"OMP/MKL/OPENBLAS_NUM_THREADS = {os.environ.get('OMP_NUM_THREADS')}/"
            f"{os.environ.get('MKL_NUM_THREADS')}/{os.environ.get('OPENBLAS_NUM_THREADS')}")


def cupy_section() -> str:
    """The CuPy adapter's GPU table (``gpu_bench.py``), or why there is none."""
    try:
        from lookahead_cupy import skip_reason

        reason = skip_reason()
    except Exception as exc:  # noqa: BLE001 - any failure is a reason to skip
        reason = f"{type(exc).__name__}: {exc}"
    if reason is not None:
        return f"### CuPy\n\nSkipped: {reason} (the CuPy rows need a CUDA device; " \
               "`benchmarks/gpu_check.sh` runs them on one)."
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py")],
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        return f"### CuPy\n\n`gpu_bench.py` failed (exit {proc.returncode}):\n\n```\n" \
               f"{proc.stderr[-2000:]}\n```"
    return "### CuPy (GPU, `benchmarks/gpu_bench.py`)\n\n" + proc.stdout


def run_set(name: str, rounds: dict, libraries: Sequence[str]) -> SetResult:
    from . import jax_suite, numpy_suite, torch_suite

    pset = SETS[name]
    result = SetResult(pset)
    result.load.append(os.getloadavg())
    start = time.perf_counter()
    host = pset.arrays(seed=0, scale=0.05)
    grads = pset.arrays(seed=1, scale=0.01)
    runners = {"torch": torch_suite.run_torch, "numpy": numpy_suite.run_numpy,
               "jax": jax_suite.run_jax}
    for library in libraries:
        print(f"  {name}: {library} ...", file=sys.stderr, flush=True)
        runners[library](pset, host, grads, rounds, result)
        gc.collect()
    result.seconds = time.perf_counter() - start
    result.load.append(os.getloadavg())
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--libraries", nargs="*", default=["torch", "numpy", "jax"],
                        choices=["torch", "numpy", "jax"])
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds per measurement: checks that everything runs, no more")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "assets" / "perf_sync.png",
                        help="where to write the figure (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "perf.md",
                        help="also write the Markdown here (default: %(default)s)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    began = time.perf_counter()
    load_start = os.getloadavg()
    results = []
    for name in args.sets:
        rounds = dict(ROUNDS[name])
        if args.quick:
            rounds.update(QUICK)
        results.append(run_set(name, rounds, args.libraries))
    overhead = None
    if "torch" in args.libraries:
        from . import torch_suite

        print("  Python overhead ...", file=sys.stderr, flush=True)
        overhead = torch_suite.python_overhead(
            OVERHEAD["tensors"], OVERHEAD["size"], 20 if args.quick else OVERHEAD["rounds"])
    cupy = cupy_section()
    load_end = os.getloadavg()
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    header = "\n".join([
        f"## Benchmark run of {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `make bench` (`{command.strip()}`), {time.perf_counter() - began:.0f} s.",
        "",
        machine(),
        f"- threads: {threads()}",
        f"- load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in load_start)}, "
        f"at end {'/'.join(f'{x:.2f}' for x in load_end)}",
    ])
    overhead_label = (f"{OVERHEAD['tensors']} tensors of {OVERHEAD['size']} values, "
                      "no-op inner optimizer, µs")
    text = report.markdown(header, results, overhead, overhead_label,
                           report.targets(results, overhead), cupy)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        # The measurements themselves, to draw or tabulate again without rerunning.
        with open(args.out.with_suffix(".pkl"), "wb") as file:
            pickle.dump({"results": results, "overhead": overhead}, file)
    if args.png:
        report.plot(results, args.png,
                    f"{cpu_model()}, 1 thread on 1 pinned CPU, {time.strftime('%Y-%m-%d %H:%M')}; load average "
                    f"{load_start[0]:.1f} → {load_end[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"wrote {args.png}", file=sys.stderr)
    return 0
