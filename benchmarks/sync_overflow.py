"""What the overflow-safe sync costs: today's kernels against the ones before, side by side.

``python -m benchmarks.sync_overflow [--sets large transformer] [--rounds 9]``

For each parameter set (float32, `benchmarks.sets`) and each library, the
sync before the overflow repair (the NumPy adapter's dense kernel that held
``θ − φ`` in place; the PyTorch adapter's cache-blocked ``_foreach_lerp_`` +
``_foreach_copy_``, copied here as they were) and the adapter's sync now
(`lookahead_numpy.blocks.lerp_and_reset`, `lookahead_torch._kernels.lerp_and_copy_`),
one thread, pinned to one CPU, interleaved round by round (`benchmarks.timing`).
Each sample is the fastest of 3 calls; the ratio (now ÷ before) is formed round
by round. The numbers of the Performance page come from this script.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})

import argparse  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from .sets import SETS  # noqa: E402
from .timing import Stats, interleaved  # noqa: E402

ALPHA = 0.5


def _numpy_before(pair, alpha: float) -> None:
    """The NumPy adapter's dense sync before the repair: ``θ − φ`` over θ's or φ's block."""
    from lookahead_inplace import lerp_weights

    factor, low = lerp_weights(alpha)
    fast, slow, block = pair.fast, pair.slow, pair.block
    for start in range(0, fast.size, block):
        theta = fast[start : start + block]
        phi = slow[start : start + block]
        if low:
            np.subtract(theta, phi, out=theta)
            np.multiply(theta, factor, out=theta)
            np.add(phi, theta, out=phi)
        else:
            np.subtract(theta, phi, out=phi)
            np.multiply(phi, factor, out=phi)
            np.subtract(theta, phi, out=phi)
        np.copyto(theta, phi)


def _numpy_variants(host: list[np.ndarray]) -> dict[str, Callable[[], object]]:
    import lookahead_core as lc
    from lookahead_numpy import Lookahead
    from lookahead_numpy import blocks

    before = Lookahead([a.copy() for a in host], lc.sgd(lr=0.1), k=5, alpha=ALPHA)
    now = Lookahead([a.copy() for a in host], lc.sgd(lr=0.1), k=5, alpha=ALPHA)
    for opt in (before, now):
        for p in opt._params:
            p -= 0.5  # θ ≠ φ
    assert all(pair.fast.flags.c_contiguous for pair in now._pairs)

    def run_before() -> None:
        for pair in before._pairs:
            _numpy_before(pair, ALPHA)

    def run_now() -> None:  # as the adapter's sync does
        with blocks.overflow_checked():
            for pair in now._pairs:
                blocks.lerp_and_reset(pair, ALPHA)

    return {"before": run_before, "now": run_now}


def _torch_variants(host: list[np.ndarray]) -> dict[str, Callable[[], object]]:
    import torch

    from lookahead_torch import _kernels

    torch.set_num_threads(1)
    block = _kernels.CPU_BLOCK_BYTES // 4

    def tensors() -> tuple[list, list]:
        fast = [torch.from_numpy(a).clone() - 0.5 for a in host]  # torch-allocated, aligned
        return fast, [torch.from_numpy(a).clone() for a in host]

    fast_b, slow_b = tensors()
    fast_n, slow_n = tensors()

    def run_before() -> None:  # lerp_and_copy_blocked as it was
        batch_fast, batch_slow, used = [], [], 0
        for f, s in zip(fast_b, slow_b):
            pieces = zip(f.view(-1).split(block), s.view(-1).split(block)) if f.numel() > block \
                else ((f, s),)
            for pf, ps in pieces:
                if used and used + pf.numel() > block:
                    torch._foreach_lerp_(batch_slow, batch_fast, ALPHA)
                    torch._foreach_copy_(batch_fast, batch_slow)
                    batch_fast, batch_slow, used = [], [], 0
                batch_fast.append(pf)
                batch_slow.append(ps)
                used += pf.numel()
        if batch_fast:
            torch._foreach_lerp_(batch_slow, batch_fast, ALPHA)
            torch._foreach_copy_(batch_fast, batch_slow)

    def run_now() -> None:
        _kernels.lerp_and_copy_(fast_n, slow_n, ALPHA)

    with torch.no_grad():
        run_now()  # the first sync checks φ before the lerp; later ones after it (module docs)
    return {"before": run_before, "now": torch.no_grad()(run_now)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sync_overflow",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=["large", "transformer"], choices=list(SETS))
    parser.add_argument("--libraries", nargs="*", default=["numpy", "torch"],
                        choices=["numpy", "torch"])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, CPU {sorted(os.sched_getaffinity(0))}")
    print("| set | library | before, ms | now, ms | now ÷ before |")
    print("|---|---|---|---|---|")
    for name in args.sets:
        pset = SETS[name]
        host = pset.arrays(seed=0)
        for library in args.libraries:
            variants = (_numpy_variants if library == "numpy" else _torch_variants)(host)
            times = interleaved(variants, rounds=args.rounds, warmup=1, best_of=3)
            before = Stats.of(times["before"]).scaled(1e3)
            now = Stats.of(times["now"]).scaled(1e3)
            ratio = Stats.ratio(times["now"], times["before"])
            print(f"| {pset.label} | {library} | {before.fmt(1)} | {now.fmt(1)} | {ratio.fmt(3)} |",
                  flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
