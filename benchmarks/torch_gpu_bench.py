"""The PyTorch adapter's sync on one CUDA GPU: the fused kernel, the foreach pair, the peers,
and ``slow_device="cpu"``.

Run by ``benchmarks/gpu_check.sh`` (or alone: ``python benchmarks/torch_gpu_bench.py``).
Needs torch with CUDA (and triton, which its CUDA builds ship); timm and
pytorch_optimizer rows appear where they are installed.

For each parameter set (float32 values; `benchmarks.sets`), CUDA-event times,
median of `REPEATS` syncs after `WARMUP` (min–max):

- ``torch copy_``: ``Tensor.copy_`` of 2 × the parameter bytes, the same 4 × bytes
  moved as a sync: the denominator of the efficiency;
- ``lookahead_torch (fused)``: `lookahead_torch.Lookahead.sync` (the fused Triton
  kernel, one launch per dtype bucket);
- ``foreach pair``: ``torch._foreach_lerp_`` + ``torch._foreach_copy_``, the
  adapter's kernel before the fused one (and without its overflow check);
- ``bf16 + f32 slow, fused`` / ``..., foreach upcast``: bfloat16 parameters with
  ``slow_dtype=torch.float32``, the fused kernel against the chunked upcast path;
- timm's and pytorch_optimizer's ``Lookahead`` sync (their own code, on CUDA);
- ``offload``: ``slow_device="cpu"``, the sync time, ``torch.cuda.max_memory_allocated``
  over construction and one sync with and without offload, the pinned host-to-device
  and device-to-host bandwidth (a 256 MiB ``copy_``), and the ratio of the sync time to
  the transfer floor ``P/B_h2d + P/B_d2h`` (target ≤ 1.2).

Efficiency = (4 × parameter bytes / sync time) ÷ the ``copy_`` bandwidth. Prints
markdown; exits 1 if a row that must exist could not be measured.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
from benchmarks.sets import SETS  # noqa: E402

REPEATS = 30
WARMUP = 3
ALPHA = 0.5


def cuda_time_us(torch, fn: Callable[[], object], repeats: int = REPEATS) -> tuple[float, float, float]:
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3)
    return statistics.median(times), min(times), max(times)


def pinned_bandwidth(torch, nbytes: int = 256 << 20) -> tuple[float, float]:
    """Host-to-device and device-to-host bandwidth (GB/s) of pinned memory, one ``copy_``."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    h2d = cuda_time_us(torch, lambda: dev.copy_(host, non_blocking=True), 10)[0]
    d2h = cuda_time_us(torch, lambda: host.copy_(dev, non_blocking=True), 10)[0]
    return nbytes / (h2d * 1e-6) / 1e9, nbytes / (d2h * 1e-6) / 1e9


def measure_set(torch, name: str, lines: list[str], offload_lines: list[str],
                failures: list[str], bandwidth: tuple[float, float]) -> dict[str, float]:
    from benchmarks.torch_suite import load_peers
    from lookahead_torch import Lookahead

    shapes = SETS[name].shapes
    g = torch.Generator(device="cuda").manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, device="cuda", generator=g)) for s in shapes]
    nbytes = sum(p.numel() for p in params) * 4
    moved = 4 * nbytes
    label = f"| {name} | {len(shapes)} | {nbytes / 1e6:.1f} |"
    results: dict[str, float] = {}

    big_src = torch.empty(2 * nbytes, dtype=torch.uint8, device="cuda")
    big_dst = torch.empty_like(big_src)
    copy_t = cuda_time_us(torch, lambda: big_dst.copy_(big_src))
    copy_bw = moved / (copy_t[0] * 1e-6) / 1e9
    big_src = big_dst = None

    def row(method: str, timing: tuple[float, float, float]) -> None:
        median, low, high = timing
        bw = moved / (median * 1e-6) / 1e9
        results[method] = median
        lines.append(f"{label} {method} | {median:.1f} ({low:.1f}–{high:.1f}) | {bw:.0f} | "
                     f"{bw / copy_bw:.2f} |")

    row("torch copy_ (2 × bytes)", copy_t)
    for p in params:
        p.grad = torch.zeros_like(p)
    ours = Lookahead(torch.optim.SGD(params, lr=0.1), k=5, alpha=ALPHA)
    row("lookahead_torch (fused)", cuda_time_us(torch, ours.sync))
    fast = [p.detach() for p in params]
    slow = [s.clone() for s in ours.slow[0]]

    @torch.no_grad()
    def foreach_pair() -> None:
        torch._foreach_lerp_(slow, fast, ALPHA)
        torch._foreach_copy_(fast, slow)

    row("torch _foreach_lerp_ + _foreach_copy_", cuda_time_us(torch, foreach_pair))
    slow = None
    peers, missing = load_peers()
    for peer in peers:
        if peer.name.startswith("torch-optimizer"):
            continue
        opt = peer.make(torch.optim.SGD(params, lr=0.1))
        peer.sync(opt)
        row(f"{peer.name}", cuda_time_us(torch, lambda peer=peer, opt=opt: peer.sync(opt)))
        opt = None
    for peer, reason in missing.items():
        if peer != "torch-optimizer":
            lines.append(f"{label} {peer} | ({reason}) | - | - |")
    ours = None
    torch.cuda.empty_cache()

    # bfloat16 parameters with float32 slow weights: fused against the upcast path.
    from lookahead_torch import _kernels

    half = [p.detach().to(torch.bfloat16) for p in params]
    wide = [h.to(torch.float32) for h in half]
    row("bf16 + f32 slow, fused", cuda_time_us(
        torch, lambda: _kernels.lerp_and_copy_(half, wide, ALPHA, {})))
    scratch = {(half[0].device, torch.float32): torch.empty(
        _kernels.scratch_elements(sum(h.numel() for h in half)), device="cuda")}
    row("bf16 + f32 slow, foreach upcast", cuda_time_us(
        torch, lambda: _kernels._lerp_and_copy_upcast(half, wide, ALPHA, scratch[
            (half[0].device, torch.float32)])))
    half = wide = scratch = None
    params = None
    torch.cuda.empty_cache()

    # slow_device="cpu": memory and time.
    peaks = {}
    for slow_device in (None, "cpu"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ps = [torch.nn.Parameter(torch.randn(s, device="cuda", generator=g)) for s in shapes]
        for p in ps:
            p.grad = torch.zeros_like(p)
        grads = sum(p.numel() * 4 for p in ps)
        opt = Lookahead(torch.optim.SGD(ps, lr=0.1), k=5, alpha=ALPHA, slow_device=slow_device)
        opt.sync()
        torch.cuda.synchronize()
        peaks[slow_device] = torch.cuda.max_memory_allocated() - base - 2 * grads  # less θ and grads
        if slow_device == "cpu":
            t = cuda_time_us(torch, opt.sync, 10)
            floor_us = (nbytes / (bandwidth[0] * 1e9) + nbytes / (bandwidth[1] * 1e9)) * 1e6
            offload_lines.append(
                f"| {name} | {nbytes / 1e6:.1f} | {peaks[None] / 1e6:.1f} | {peaks['cpu'] / 1e6:.1f} | "
                f"{t[0] / 1e3:.2f} ({t[1] / 1e3:.2f}–{t[2] / 1e3:.2f}) | {floor_us / 1e3:.2f} | "
                f"{t[0] / floor_us:.2f} |")
        opt = ps = None
    torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch_gpu_bench: torch not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(f"torch_gpu_bench: no CUDA device (torch {torch.__version__})", file=sys.stderr)
        return 2
    from lookahead_torch import _fused

    reason = _fused.unavailable_reason()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "-"
    h2d, d2h = pinned_bandwidth(torch)
    lines = [
        f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
        f"triton {triton_version}; Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        f"fused kernel: {'used' if reason is None else 'NOT used: ' + reason}",
        f"median of {REPEATS} syncs after {WARMUP} warm-ups (min–max); GB/s counts 4 × parameter "
        "bytes; efficiency = that ÷ the torch copy_ bandwidth of the same set",
        "",
        "| set | tensors | MB | method | µs per sync | GB/s | efficiency |",
        "|---|---:|---:|---|---|---:|---:|",
    ]
    offload = [
        "",
        f"slow_device='cpu': pinned host→device {h2d:.1f} GB/s, device→host {d2h:.1f} GB/s; "
        "GPU memory = max_memory_allocated over construction and one sync, less θ and the "
        "gradients; floor = P/B_h2d + P/B_d2h (target: sync ≤ 1.2 × floor)",
        "",
        "| set | P MB | GPU MB, on device | GPU MB, offload | offload sync ms | floor ms | ratio |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    failures: list[str] = []
    targets = []
    for name in args.sets:
        r = measure_set(torch, name, lines, offload, failures, (h2d, d2h))
        copy_t = r["torch copy_ (2 × bytes)"]
        eff = copy_t / r["lookahead_torch (fused)"]
        speedup = r["torch _foreach_lerp_ + _foreach_copy_"] / r["lookahead_torch (fused)"]
        targets.append(f"- {name}: fused efficiency {eff:.2f} of copy_, "
                       f"{speedup:.2f} × the foreach pair")
    text = "\n".join(lines + offload + ["", "Targets (≥ 0.90 of copy_ on large, ≥ 0.80 on "
                                        "resnet18, ≥ 3 × the foreach pair on transformer):"]
                     + targets)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    for failure in failures:
        print(f"torch_gpu_bench: {failure}", file=sys.stderr)
    return 1 if failures or reason is not None else 0


if __name__ == "__main__":
    sys.exit(main())
