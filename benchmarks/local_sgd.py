"""Local SGD / DiLoCo on gloo over loopback: wall time and bytes per step against DDP and torch's own.

``python -m benchmarks.local_sgd [--world 2 4] [--k 4 16] [--steps 64] [--rounds 5]``
(``make bench-local-sgd``; ``--quick`` for a smoke run).

For each world size W, W processes (spawned, one torch thread each, gloo bound
to 127.0.0.1) train the same MLP on the same data (each rank its own seeded
batches) with, in turn:

- ``DDP``: ``DistributedDataParallel`` around the model, ``torch.optim.SGD``
  (momentum 0.9): the gradients all-reduced at every step;
- ``PostLocalSGD``: torch's ``PostLocalSGDOptimizer`` around the same SGD with
  a ``PeriodicModelAverager(period=k, warmup_steps=0)``, the model not
  wrapped: the parameters averaged every k steps;
- ``Lookahead α=1``: ``Lookahead(SGD, k, alpha=1.0, process_group=WORLD)``,
  the same plain averaging every k steps (Local SGD);
- ``DiLoCo``: ``Lookahead(SGD, k, outer=SGD(lr=0.7, momentum=0.9,
  nesterov=True), process_group=WORLD)``: the averaging, then the outer step.

Bytes per step: what each rank hands to ``torch.distributed.all_reduce`` (and
``broadcast``), counted by wrapping them, over a counting pass of ``steps``
steps, divided by ``steps``; DDP's, by a communication hook on its buckets
during that pass. Wall time per step: rank 0's time for ``steps`` steps
(forward, backward, optimizer step; barriers before and after), the median
over ``rounds`` rounds, the methods interleaved round by round.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # one thread per process, inherited by the ranks

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WIDTH, DEPTH, IN, OUT, BATCH = 1024, 2, 784, 10, 32
METHODS = ("DDP", "PostLocalSGD", "Lookahead α=1", "DiLoCo")


def _model() -> Any:
    import torch

    torch.manual_seed(0)
    layers: list[Any] = []
    width = IN
    for _ in range(DEPTH):
        layers += [torch.nn.Linear(width, WIDTH), torch.nn.ReLU()]
        width = WIDTH
    layers.append(torch.nn.Linear(width, OUT))
    return torch.nn.Sequential(*layers)


def _batch(rank: int, step: int) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(10_000 * rank + step)
    return torch.randn(BATCH, IN, generator=gen), torch.randint(0, OUT, (BATCH,), generator=gen)


class _Counter:
    """Bytes handed to ``all_reduce``/``broadcast`` inside the block (the functions wrapped)."""

    def __init__(self) -> None:
        self.bytes = 0

    def __enter__(self) -> _Counter:
        import torch.distributed as dist

        self._saved = {name: getattr(dist, name) for name in ("all_reduce", "broadcast")}
        for name, original in self._saved.items():
            setattr(dist, name, self._wrap(original))
        return self

    def _wrap(self, original: Any) -> Any:
        @functools.wraps(original)
        def wrapper(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            self.bytes += tensor.numel() * tensor.element_size()
            return original(tensor, *args, **kwargs)
        return wrapper

    def __exit__(self, *exc: Any) -> None:
        import torch.distributed as dist

        for name, original in self._saved.items():
            setattr(dist, name, original)


def _build(method: str, k: int) -> tuple[Any, Any]:
    import torch
    import torch.distributed as dist

    from lookahead_torch import Lookahead

    model = _model()

    def sgd(params: Any) -> Any:
        return torch.optim.SGD(params, lr=0.01, momentum=0.9)

    if method == "DDP":
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model)
        return model, sgd(model.parameters())
    if method == "PostLocalSGD":
        from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
        from torch.distributed.optim import PostLocalSGDOptimizer

        return model, PostLocalSGDOptimizer(sgd(model.parameters()),
                                            PeriodicModelAverager(period=k, warmup_steps=0))
    if method == "Lookahead α=1":
        return model, Lookahead(sgd(model.parameters()), k=k, alpha=1.0, process_group=dist.group.WORLD)
    outer = functools.partial(torch.optim.SGD, lr=0.7, momentum=0.9, nesterov=True)
    return model, Lookahead(sgd(model.parameters()), k=k, outer=outer, process_group=dist.group.WORLD)


def _steps(model: Any, opt: Any, rank: int, start: int, steps: int) -> None:
    import torch

    for step in range(start, start + steps):
        x, y = _batch(rank, step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _ddp_counting_hook(counter: list[int]) -> Any:
    def hook(state, bucket):  # noqa: ANN001, ANN202 (DDP checks the annotations it finds)
        import torch.distributed as dist

        counter[0] += bucket.buffer().numel() * bucket.buffer().element_size()
        tensor = bucket.buffer().div_(dist.get_world_size())
        return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])
    return hook


def _rank_main(rank: int, world: int, port: int, ks: list[int], steps: int, rounds: int,
               out: str, deadline_s: float) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(deadline_s, exit=True)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=60)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    results: dict[str, Any] = {}
    try:
        for k in ks:
            runs = {}
            for method in METHODS:
                if method == "DDP" and k != ks[0]:
                    continue  # DDP has no k: measured once per world size
                model, opt = _build(method, k)
                _steps(model, opt, rank, 0, k)  # warm-up (and DDP's bucket rebuild)
                if method == "DDP":
                    bucket_bytes = [0]
                    counted = torch.nn.parallel.DistributedDataParallel(_model())
                    counted.register_comm_hook(None, _ddp_counting_hook(bucket_bytes))
                    _steps(counted, torch.optim.SGD(counted.parameters(), lr=0.01), rank, 0, steps)
                    sent = bucket_bytes[0]
                else:
                    with _Counter() as counter:
                        _steps(model, opt, rank, k, steps)
                    sent = counter.bytes
                runs[method] = {"model": model, "opt": opt, "bytes": sent / steps, "times": []}
            for round_ in range(rounds):
                for method, run in runs.items():
                    dist.barrier()
                    started = time.perf_counter()
                    _steps(run["model"], run["opt"], rank, (round_ + 2) * steps, steps)
                    dist.barrier()
                    run["times"].append((time.perf_counter() - started) / steps)
            results[k] = {m: {"bytes": r["bytes"], "times": r["times"]} for m, r in runs.items()}
        if rank == 0:
            torch.save({"results": results,
                        "params": sum(p.numel() for p in _model().parameters())}, out)
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    faulthandler.cancel_dump_traceback_later()


def run_world(world: int, ks: list[int], steps: int, rounds: int, deadline_s: float) -> dict[str, Any]:
    import tempfile

    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(world * 4)
    port = listener.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, world, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=deadline_s), master_listen_fd=listener.fileno())
    listener.detach()
    out = Path(tempfile.mkdtemp(prefix="bench-local-sgd-")) / "rank0.pt"
    context = mp.get_context("spawn")
    processes = [context.Process(target=_rank_main, args=(r, world, port, ks, steps, rounds, str(out), deadline_s),
                                 daemon=True) for r in range(world)]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join(deadline_s + 10)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        del store
    if not out.exists():
        raise RuntimeError(f"{world} ranks left no result (exit codes {[p.exitcode for p in processes]})")
    return torch.load(out, weights_only=True)


def _ms(times: list[float]) -> str:
    return f"{1e3 * statistics.median(times):.1f} ({1e3 * min(times):.1f}–{1e3 * max(times):.1f})"


def table(measured: dict[int, dict[str, Any]], ks: list[int], steps: int, rounds: int) -> str:
    params = next(iter(measured.values()))["params"]
    lines = [
        f"MLP {IN}-{WIDTH}x{DEPTH}-{OUT} ({params:,} float32 parameters, P = {4 * params / 2**20:.2f} MiB), "
        f"batch {BATCH} per rank, SGD (lr 0.01, momentum 0.9); median of {rounds} rounds of {steps} steps.",
        "",
        "| ranks | method | k | ms per step, median (min–max) | bytes per step per rank | ÷ DDP's bytes |",
        "|---|---|---|---|---|---|",
    ]
    for world, data in measured.items():
        results = data["results"]
        ddp = results[ks[0]]["DDP"]
        lines.append(f"| {world} | DDP | – | {_ms(ddp['times'])} | {ddp['bytes']:,.0f} | 1 |")
        for k in ks:
            for method in METHODS[1:]:
                r = results[k][method]
                ratio = f"1/{ddp['bytes'] / r['bytes']:.2f}" if r["bytes"] else "0"
                lines.append(f"| {world} | {method} | {k} | {_ms(r['times'])} | {r['bytes']:,.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.local_sgd", description=__doc__.splitlines()[0])
    parser.add_argument("--world", nargs="*", type=int, default=[2, 4])
    parser.add_argument("--k", nargs="*", type=int, default=[4, 16])
    parser.add_argument("--steps", type=int, default=64, help="steps per timed round (a multiple of every k)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 ranks, k 4, 8 steps, 1 round")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "local_sgd.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.world, args.k, args.steps, args.rounds = [2], [4], 8, 1
    if any(w < 1 for w in args.world) or any(k < 1 for k in args.k) or args.steps < 1 or args.rounds < 1:
        parser.error("--world, --k, --steps and --rounds must be >= 1")
    if any(args.steps % k for k in args.k):
        parser.error(f"--steps ({args.steps}) must be a multiple of every --k {args.k}")
    measured = {}
    for world in args.world:
        started = time.perf_counter()
        measured[world] = run_world(world, args.k, args.steps, args.rounds, deadline_s=1800.0)
        print(f"{world} ranks: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    text = table(measured, args.k, args.steps, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
