"""The PyTorch adapter's cache-blocked CPU sync at several piece sizes, side by side.

``python -m benchmarks.cpu_blocking [--sets large transformer] [--rounds 9] [--kib 64 128 256 512]``

One thread, pinned to one CPU; per round every piece size (and the unblocked
``_foreach_lerp_`` + ``_foreach_copy_`` pair, and ``np.copyto`` of the same
bytes) is timed once, fastest of 3 calls, in an order that rotates per round
(`benchmarks.timing.interleaved`). Prints the median [min–max] ms per
variant, the size `lookahead_torch._kernels.cpu_block_bytes` chose on this
machine, and the CPU model: the measurement behind ``CPU_BLOCK_L2_FRACTION``.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})

import argparse  # noqa: E402

import numpy as np  # noqa: E402

from .sets import SETS  # noqa: E402
from .suite import cpu_blocking, cpu_model  # noqa: E402
from .timing import Stats, interleaved  # noqa: E402

ALPHA = 0.5


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["large", "transformer"], choices=sorted(SETS))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--kib", nargs="+", type=int, default=[32, 64, 128, 256, 512, 1024])
    args = parser.parse_args(argv)

    import torch

    from lookahead_torch import _kernels

    torch.set_num_threads(1)
    print(f"CPU: {cpu_model()}; {cpu_blocking()}; load average {os.getloadavg()}")
    for name in args.sets:
        shapes = SETS[name].shapes
        fast = [torch.from_numpy(a) for a in SETS[name].arrays(0)]
        slow = [f + 0.25 for f in fast]
        nbytes = sum(f.numel() for f in fast) * 4
        src = np.ones(2 * nbytes // 4, np.float32)
        dst = np.empty_like(src)
        variants = {
            f"{kib} KiB": (lambda kib=kib: _kernels.lerp_and_copy_blocked(
                fast, slow, ALPHA, kib * 1024 // 4))
            for kib in args.kib
        }
        variants["default (lerp_and_copy_)"] = lambda: _kernels.lerp_and_copy_(fast, slow, ALPHA)

        def unblocked() -> None:
            torch._foreach_lerp_(slow, fast, ALPHA)
            torch._foreach_copy_(fast, slow)

        variants["unblocked foreach pair"] = unblocked
        variants["np.copyto of 2P"] = lambda: np.copyto(dst, src)
        results = interleaved(variants, rounds=args.rounds, best_of=3)
        print(f"\n{name} ({len(shapes)} tensors, P = {nbytes / 1e6:.1f} MB), load {os.getloadavg()}")
        for label, times in results.items():
            print(f"  {label:28s} {Stats.of(times).scaled(1e3).fmt(1)} ms")


if __name__ == "__main__":
    main()
