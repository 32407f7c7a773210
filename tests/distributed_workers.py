"""The rank side of ``tests/test_distributed.py``: Lookahead under torch.distributed, on gloo.

`launch` starts ``world_size`` processes (``torch.multiprocessing``, spawn),
each running `rank_main`: it joins a gloo process group through a TCPStore that
the launcher serves on 127.0.0.1 only (a socket bound there, handed to the
store as ``master_listen_fd``), with gloo itself bound to the loopback interface
(``GLOO_SOCKET_IFNAME``). Then it runs the requested scenarios in order, each
saving what it measured to ``<outdir>/<scenario>.rank<r>.pt``; the test
process compares those records with references computed on its own, in one
process. Bounds: a collective or store request waits at most
``COLLECTIVE_TIMEOUT_S``, every rank exits by itself after ``timeout_s``
(``faulthandler`` dumps its stack and exits), and `launch` kills what is still
alive at its deadline.

The problem is shared with the test process: `make_model` (seeded, float64)
and `global_batch` (seeded per step); rank r trains on rows
``[r * B / W, (r + 1) * B / W)`` of each global batch.

Run by hand (two ranks, every scenario, records in a temporary folder):
``.venv/bin/python tests/distributed_workers.py``.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import os
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

WORLD_SIZE = 2
BATCH = 8  # global batch; each rank takes BATCH // world_size rows
IN_FEATURES, HIDDEN, OUT_FEATURES = 6, 5, 3  # 5 and 3 rows shard unevenly over 2 ranks
K, ALPHA, STEPS = 3, 0.5, 9  # three syncs
SAVE_AT = 4  # checkpoint one step into the second cycle (count 1)
MICRO = 3  # micro-batches per optimizer step in the accumulation scenarios
ACC_K, ACC_STEPS = 2, 6
SKIPPED_STEP = 4  # the GradScaler scenarios overflow at this step (DDP: rank 1's input; FSDP2: one shard)
NAN_STEP = 5  # the rollback scenario poisons one shard before this (sync) step
MEMORY_LAYERS, MEMORY_WIDTH = 4, 512  # the model of the per-rank memory measurement
COLLECTIVE_TIMEOUT_S = 30.0

SCENARIOS = (
    "meta",
    "ddp",
    "ddp_accumulate",
    "ddp_gradscaler",
    "fsdp2",
    "fsdp2_accumulate",
    "fsdp2_gradscaler",
    "fsdp2_switch",
    "fsdp2_slow_dtype",
    "fsdp2_pullback",
    "fsdp2_rollback",
    "fsdp2_memory",
    "fsdp2_dcp_sgd",
    "fsdp2_dcp_adamw",
    "fsdp2_dcp_from_one_rank",
    "zero",
    "ddp_outer",
    "fsdp2_outer",
)

# -- the problem (shared with the test process) ------------------------------------------


def make_model() -> torch.nn.Sequential:
    """The same float64 MLP in every process (seeded)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(IN_FEATURES, HIDDEN),
        torch.nn.Tanh(),
        torch.nn.Linear(HIDDEN, OUT_FEATURES),
    ).double()


def global_batch(step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s global batch (micro-batch ``micro``): inputs and targets."""
    gen = torch.Generator().manual_seed(1000 + 16 * step + micro)
    x = torch.randn(BATCH, IN_FEATURES, generator=gen, dtype=torch.float64)
    y = torch.randn(BATCH, OUT_FEATURES, generator=gen, dtype=torch.float64)
    return x, y


def rank_rows(t: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    per_rank = t.shape[0] // world_size
    return t[rank * per_rank : (rank + 1) * per_rank]


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(out, y)


OUTER_LR, OUTER_MOMENTUM = 0.7, 0.9  # the outer scenarios: DiLoCo's outer SGD with Nesterov momentum


def make_outer(groups: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=OUTER_LR, momentum=OUTER_MOMENTUM, nesterov=True)


INNER: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1),
    "sgd-nesterov": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda params: torch.optim.Adam(params, lr=0.05),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=0.01),
}

# -- helpers on the rank side -----------------------------------------------------------


def listening_sockets() -> list[str]:
    """``host:port`` of every TCP socket this process listens on (Linux /proc; elsewhere empty)."""
    if not os.path.isdir("/proc/self/fd"):
        return []
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = []
    for family in ("tcp", "tcp6"):
        path = f"/proc/self/net/{family}"
        if not os.path.exists(path):
            continue
        with open(path) as table:
            next(table)
            for line in table:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    found.append(_decode_address(fields[1]))
    return found


def _decode_address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        text = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four little-endian 32-bit words
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        text = socket.inet_ntop(socket.AF_INET6, words)
    return f"{text}:{int(port, 16)}"


def loopback_interface() -> str:
    names = [name for _, name in socket.if_nameindex()]
    for candidate in ("lo", "lo0"):
        if candidate in names:
            return candidate
    raise RuntimeError(f"no loopback interface among {names}")


class Ctx:
    """What a scenario gets: rank, world size, output folder, ``save``."""

    def __init__(self, rank: int, world_size: int, outdir: Path) -> None:
        self.rank = rank
        self.world_size = world_size
        self.outdir = outdir

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        return rank_rows(t, self.rank, self.world_size)

    def save(self, name: str, record: dict[str, Any]) -> None:
        path = self.outdir / f"{name}.rank{self.rank}.pt"
        torch.save(record, str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)  # a record exists only once complete


def clones(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


def full(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Full (unsharded) copies: ``full_tensor()`` of DTensors (a collective), clones of others."""
    from torch.distributed.tensor import DTensor

    return [t.full_tensor().detach().clone() if isinstance(t, DTensor) else t.detach().clone() for t in tensors]


def local_shards(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.to_local().detach().clone() for t in tensors]


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: each Linear is its own unit, the root another (the usual layout)."""
    from torch.distributed.fsdp import fully_shard

    for module in model:
        if isinstance(module, torch.nn.Linear):
            fully_shard(module)
    fully_shard(model)
    return model


class CollectiveCounter:
    """Collectives issued inside a with-block, counted two independent ways.

    ``dispatched``: c10d operations seen by ``CommDebugMode`` (a dispatch mode).
    ``sequence``: how far the default process group's sequence number moved
    (gloo numbers every collective it runs, whoever issued it).
    """

    def __enter__(self) -> CollectiveCounter:
        import torch.distributed as dist
        from torch.distributed.tensor.debug import CommDebugMode

        self._group = dist.group.WORLD
        self._mode = CommDebugMode()
        self._start = self._group._get_sequence_number_for_group()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
        self.sequence = self._group._get_sequence_number_for_group() - self._start
        self.dispatched = self._mode.get_total_counts()
        self.by_op = {str(op): n for op, n in self._mode.get_comm_counts().items()}


# -- scenarios --------------------------------------------------------------------------


def scenario_meta(ctx: Ctx) -> None:
    import torch.distributed as dist

    ctx.save("meta", {
        "listening": listening_sockets(),
        "world_size": dist.get_world_size(),
        "backend": dist.get_backend(),
        "torch": str(torch.__version__),
    })


def scenario_ddp(ctx: Ctx) -> None:
    """DDP around the model, Lookahead around SGD (Nesterov): fast and slow weights per step."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lookahead_torch import Lookahead

    model = DDP(make_model())
    opt = Lookahead(INNER["sgd-nesterov"](model.parameters()), k=K, alpha=ALPHA)
    fast, slow, counts = [], [], []
    for step in range(STEPS):
        x, y = global_batch(step)
        opt.zero_grad()
        loss_fn(model(ctx.rows(x)), ctx.rows(y)).backward()
        opt.step()
        fast.append(clones(model.parameters()))
        slow.append(clones(opt.slow[0]))
        counts.append(opt.counts[0])
    # Mid-cycle, through torch's own checkpoint helpers, into a fresh DDP run.
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    train(ctx, model, opt, range(STEPS, STEPS + 1))
    opt.zero_grad()
    saved = get_optimizer_state_dict(model, opt)
    fresh_model = DDP(make_model())
    fresh = Lookahead(INNER["sgd-nesterov"](fresh_model.parameters()), k=K, alpha=ALPHA)
    with torch.no_grad():
        for p, q in zip(fresh_model.parameters(), model.parameters()):
            p.copy_(q)
    set_optimizer_state_dict(fresh_model, fresh, saved)
    round_trip = {"saved": optimizer_snapshot(model, opt), "loaded": optimizer_snapshot(fresh_model, fresh)}
    ctx.save("ddp", {"fast": fast, "slow": slow, "counts": counts, "round_trip": round_trip})


def _accumulate(ctx: Ctx, model: torch.nn.Module, opt: Any, no_sync: Callable[[bool], Any]) -> dict[str, Any]:
    """MICRO micro-batches per optimizer step; the gradient sync only on the last one."""
    counts, syncs_seen = [], 0
    for step in range(ACC_STEPS):
        opt.zero_grad()
        for micro in range(MICRO):
            x, y = global_batch(step, micro)
            with no_sync(micro < MICRO - 1):
                (loss_fn(model(ctx.rows(x)), ctx.rows(y)) / MICRO).backward()
            counts.append(("micro", opt.counts[0]))  # a backward does not touch the schedule
        before = [s.clone() for s in local_shards_or_clones(opt.slow[0])]
        opt.step()
        after = local_shards_or_clones(opt.slow[0])
        syncs_seen += any(not torch.equal(a, b) for a, b in zip(before, after))
        counts.append(("step", opt.counts[0]))
    return {"counts": counts, "syncs": syncs_seen,
            "fast": full(list(model.parameters())), "slow": full(list(opt.slow[0]))}


def local_shards_or_clones(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    from torch.distributed.tensor import DTensor

    return [t.to_local().detach().clone() if isinstance(t, DTensor) else t.detach().clone() for t in tensors]


def scenario_ddp_accumulate(ctx: Ctx) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lookahead_torch import Lookahead

    model = DDP(make_model())
    opt = Lookahead(INNER["sgd-nesterov"](model.parameters()), k=ACC_K, alpha=ALPHA)

    def no_sync(skip: bool) -> Any:
        return model.no_sync() if skip else contextlib.nullcontext()

    ctx.save("ddp_accumulate", _accumulate(ctx, model, opt, no_sync))


def scenario_fsdp2_accumulate(ctx: Ctx) -> None:
    from lookahead_torch import Lookahead

    model = shard_model(make_model())
    opt = Lookahead(INNER["adamw"](model.parameters()), k=ACC_K, alpha=ALPHA)

    @contextlib.contextmanager
    def no_sync(skip: bool) -> Any:
        # FSDP2's no_sync: keep unsharded gradients, reduce-scatter on the last micro-batch.
        model.set_requires_gradient_sync(not skip)
        yield

    ctx.save("fsdp2_accumulate", _accumulate(ctx, model, opt, no_sync))


def _gradscaler_run(ctx: Ctx, model: torch.nn.Module, opt: Any, scaler: Any,
                    poison_input: bool, poison_gradient: Callable[[], None]) -> dict[str, Any]:
    counts, scales, collectives = [], [], []
    for step in range(STEPS):
        x, y = global_batch(step)
        x = ctx.rows(x)
        if step == SKIPPED_STEP and poison_input and ctx.rank == 1:
            x = x * float("inf")  # an overflow in rank 1's forward pass
        opt.zero_grad()
        scaler.scale(loss_fn(model(x), ctx.rows(y))).backward()
        if step == SKIPPED_STEP:
            poison_gradient()
        with CollectiveCounter() as stepping:
            scaler.step(opt)
            scaler.update()
        collectives.append(stepping.sequence)
        counts.append(opt.counts[0])
        scales.append(float(scaler.get_scale()))
    return {"counts": counts, "scales": scales, "collectives": collectives,
            "fast": full(list(model.parameters())), "slow": full(list(opt.slow[0]))}


def scenario_ddp_gradscaler(ctx: Ctx) -> None:
    """GradScaler -> Lookahead -> SGD under DDP; an overflow in rank 1's forward at one step.

    DDP all-reduces rank 1's non-finite gradient, so every rank finds it and skips.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lookahead_torch import Lookahead

    model = DDP(make_model())
    opt = Lookahead(INNER["sgd-nesterov"](model.parameters()), k=K, alpha=ALPHA)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    ctx.save("ddp_gradscaler", _gradscaler_run(ctx, model, opt, scaler, True, lambda: None))


def scenario_fsdp2_gradscaler(ctx: Ctx) -> None:
    """GradScaler -> Lookahead -> AdamW under FSDP2; an inf in one shard of one rank.

    After the reduce-scatter a non-finite gradient element lies in one rank's shard
    only; GradScaler's check on DTensor gradients all-reduces what it finds.
    """
    from lookahead_torch import Lookahead

    model = shard_model(make_model())
    opt = Lookahead(INNER["adamw"](model.parameters()), k=K, alpha=ALPHA)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def poison() -> None:
        if ctx.rank == 0:
            with torch.no_grad():
                model[2].bias.grad.to_local()[0] = float("inf")

    ctx.save("fsdp2_gradscaler", _gradscaler_run(ctx, model, opt, scaler, False, poison))


def scenario_fsdp2(ctx: Ctx) -> None:
    """FSDP2 + Lookahead(AdamW): sharded slow weights, collectives per phase, trajectory."""
    from torch.distributed.tensor import DTensor

    from lookahead_torch import Lookahead

    model = shard_model(make_model())
    params = list(model.parameters())
    opt = Lookahead(INNER["adamw"](params), k=K, alpha=ALPHA)
    slow = list(opt.slow[0])
    layout = [{
        "param_is_dtensor": isinstance(p, DTensor),
        "slow_is_dtensor": isinstance(s, DTensor),
        "same_placements": isinstance(s, DTensor) and s.placements == p.placements
        and s.device_mesh == p.device_mesh,
        "global_shape": tuple(p.shape),
        "local_shape": tuple(p.to_local().shape),
        "slow_local_shape": tuple(s.to_local().shape),
        "slow_bytes": s.to_local().untyped_storage().nbytes(),
        "full_bytes": p.numel() * p.element_size(),
    } for p, s in zip(params, slow)]
    phases: list[dict[str, Any]] = []
    fast_full, slow_full, fast_local, slow_local, counts = [], [], [], [], []
    for step in range(STEPS):
        x, y = global_batch(step)
        opt.zero_grad()
        with CollectiveCounter() as forward_backward:
            loss_fn(model(ctx.rows(x)), ctx.rows(y)).backward()
        is_sync = opt.counts[0] + 1 == K
        with CollectiveCounter() as optimizer_step:
            opt.step()
        phases.append({"step": step, "sync": is_sync,
                       "forward_backward": (forward_backward.dispatched, forward_backward.sequence),
                       "optimizer_step": (optimizer_step.dispatched, optimizer_step.sequence),
                       "forward_backward_ops": forward_backward.by_op})
        counts.append(opt.counts[0])
        fast_local.append(local_shards(params))
        slow_local.append(local_shards(opt.slow[0]))
        fast_full.append(full(params))  # collectives, outside the measured phases
        slow_full.append(full(list(opt.slow[0])))
    # One step into a new cycle (fast != slow): the slow-weight swap, then an explicit sync.
    opt.zero_grad()
    x, y = global_batch(STEPS)
    loss_fn(model(ctx.rows(x)), ctx.rows(y)).backward()
    opt.step()
    before_swap = {"fast": local_shards(params), "slow": local_shards(opt.slow[0])}
    with CollectiveCounter() as swap:
        with opt.slow_weights():
            inside_swap = local_shards(params)
    after_swap = local_shards(params)
    with CollectiveCounter() as export:
        exported = opt.slow_state_dict(model)
    exported_sharded = all(isinstance(value, DTensor) for value in exported.values())
    exported = {name: value.to_local().clone() for name, value in exported.items()}
    before_sync = {"fast": full(params), "slow": full(list(opt.slow[0]))}
    with CollectiveCounter() as explicit_sync:
        opt.sync()
    after_sync = {"fast": full(params), "slow": full(list(opt.slow[0]))}
    ctx.save("fsdp2", {
        "layout": layout, "phases": phases, "counts": counts,
        "fast_full": fast_full, "slow_full": slow_full,
        "fast_local": fast_local, "slow_local": slow_local,
        "swap": (swap.dispatched, swap.sequence), "before_swap": before_swap,
        "inside_swap": inside_swap, "after_swap": after_swap,
        "explicit_sync": (explicit_sync.dispatched, explicit_sync.sequence),
        "before_sync": before_sync, "after_sync": after_sync,
        "slow_state_dict": exported, "slow_state_dict_sharded": exported_sharded,
        "slow_state_dict_collectives": (export.dispatched, export.sequence),
        "names": [name for name, _ in model.named_parameters()],
    })


def scenario_fsdp2_switch(ctx: Ctx) -> None:
    """Lookahead built on the unsharded model, which is sharded afterwards.

    The steps of Accelerate's FSDP2 ``prepare(model, optimizer)``
    (``Accelerator._prepare_fsdp2``): the optimizer's parameters are replaced by
    placeholders in place, the model goes through ``fully_shard``, and each
    param group gets a new list with the sharded parameters.
    """
    from torch.distributed.tensor import DTensor

    from lookahead_torch import Lookahead

    model = make_model()
    names = [name for name, _ in model.named_parameters()]
    opt = Lookahead(INNER["adamw"](model.parameters()), k=K, alpha=ALPHA)
    for group in opt.param_groups:
        for i, p in enumerate(group["params"]):
            group["params"][i] = torch.empty(1, dtype=p.dtype, device=p.device)
    shard_model(model)
    sharded = dict(model.named_parameters())
    opt.param_groups[0]["params"] = [sharded[name] for name in names]
    fast, slow = [], []
    for step in range(STEPS):
        train(ctx, model, opt, range(step, step + 1))
        fast.append(full(list(model.parameters())))
        slow.append(full(list(opt.slow[0])))
    ctx.save("fsdp2_switch", {
        "fast": fast, "slow": slow, "counts": opt.counts,
        "slow_sharded_like_params": [
            isinstance(s, DTensor) and s.placements == p.placements and s.to_local().shape == p.to_local().shape
            for p, s in zip(model.parameters(), opt.slow[0])
        ],
        "slow_bytes": sum(s.to_local().untyped_storage().nbytes() for s in opt.slow[0]),
        "shard_bytes": sum(p.to_local().numel() * p.element_size() for p in model.parameters()),
    })


def scenario_fsdp2_slow_dtype(ctx: Ctx) -> None:
    """bfloat16 FSDP2 parameters with a float32 slow copy: sharded, synced shard by shard."""
    from torch.distributed.tensor import DTensor

    from lookahead_torch import Lookahead

    model = shard_model(make_model().to(torch.bfloat16))
    params = list(model.parameters())
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=K, alpha=ALPHA, slow_dtype=torch.float32)
    for step in range(K + 1):  # one sync, then one step into the next cycle
        x, y = global_batch(step)
        opt.zero_grad()
        loss_fn(model(ctx.rows(x).to(torch.bfloat16)), ctx.rows(y).to(torch.bfloat16)).backward()
        opt.step()
    before = {"fast": local_shards(params), "slow": local_shards(opt.slow[0])}
    with CollectiveCounter() as explicit_sync:
        opt.sync()
    ctx.save("fsdp2_slow_dtype", {
        "before": before,
        "after": {"fast": local_shards(params), "slow": local_shards(opt.slow[0])},
        "collectives": (explicit_sync.dispatched, explicit_sync.sequence),
        "slow_layout": [(isinstance(s, DTensor) and s.placements == p.placements, s.dtype, p.dtype)
                        for p, s in zip(params, opt.slow[0])],
    })


def scenario_fsdp2_pullback(ctx: Ctx) -> None:
    """pullback="pullback" with FSDP2: the slow momentum is sharded, the pullback runs on shards."""
    from torch.distributed.tensor import DTensor

    from lookahead_torch import Lookahead

    model = shard_model(make_model())
    params = list(model.parameters())
    opt = Lookahead(INNER["adamw"](params), k=K, alpha=ALPHA, pullback="pullback")
    train(ctx, model, opt, range(K + 1))  # one sync, then one step into the next cycle
    caches = opt._slots[0].momentum
    before = {"exp_avg": local_shards([opt.state[p]["exp_avg"] for p in params]),
              "cache": local_shards(caches)}
    with CollectiveCounter() as explicit_sync:
        opt.sync()
    ctx.save("fsdp2_pullback", {
        "before": before,
        "after": {"exp_avg": local_shards([opt.state[p]["exp_avg"] for p in params]),
                  "cache": local_shards(opt._slots[0].momentum)},
        "cache_sharded": [isinstance(c, DTensor) and c.placements == p.placements
                          and c.to_local().shape == p.to_local().shape for p, c in zip(params, caches)],
        "collectives": (explicit_sync.dispatched, explicit_sync.sequence),
    })


def scenario_fsdp2_rollback(ctx: Ctx) -> None:
    """nonfinite="rollback" with sharded parameters: a NaN in one rank's shard rolls back both."""
    from lookahead_torch import Lookahead

    model = shard_model(make_model())
    params = list(model.parameters())
    opt = Lookahead(INNER["adamw"](params), k=K, alpha=ALPHA, nonfinite="rollback")
    record: dict[str, Any] = {}
    for step in range(NAN_STEP + 1):
        x, y = global_batch(step)
        opt.zero_grad()
        loss_fn(model(ctx.rows(x)), ctx.rows(y)).backward()
        if step == NAN_STEP:
            record["slow_before"] = local_shards(opt.slow[0])
            if ctx.rank == 1:
                with torch.no_grad():
                    model[0].weight.to_local()[0, 0] = float("nan")
            with CollectiveCounter() as rollback_step:
                opt.step()
            record["collectives"] = (rollback_step.dispatched, rollback_step.sequence)
            record["collective_ops"] = rollback_step.by_op
        else:
            opt.step()
    record.update(rollbacks=opt.rollbacks, counts=opt.counts, fast=local_shards(params),
                  slow_after=local_shards(opt.slow[0]), inner_state_empty=len(opt.state) == 0)
    ctx.save("fsdp2_rollback", record)


def scenario_fsdp2_memory(ctx: Ctx) -> None:
    """Per-rank bytes of the slow weights of a larger FSDP2 model (no training)."""
    from lookahead_torch import Lookahead

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(MEMORY_WIDTH, MEMORY_WIDTH) for _ in range(MEMORY_LAYERS)])
    shard_model(model)
    params = list(model.parameters())
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=K, alpha=ALPHA)
    storages = {s.to_local().untyped_storage().data_ptr(): s.to_local().untyped_storage().nbytes()
                for s in opt.slow[0]}
    ctx.save("fsdp2_memory", {
        "params": sum(p.numel() for p in params),
        "full_bytes": sum(p.numel() * p.element_size() for p in params),
        "shard_bytes": sum(p.to_local().numel() * p.element_size() for p in params),
        "slow_bytes": sum(storages.values()),
        "slow_tensors": len(opt.slow[0]),
        "distinct_storages": len(storages),
    })


def dcp_state(model: torch.nn.Module, opt: Any) -> dict[str, Any]:
    # torch's own helpers: Lookahead's checkpoint travels in 'state' and 'param_groups'.
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}


def dcp_load(model: torch.nn.Module, opt: Any, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = dcp_state(model, opt)  # the template dcp.load fills in place
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])


def optimizer_snapshot(model: torch.nn.Module, opt: Any) -> dict[str, Any]:
    """Everything the checkpoint must restore, full (gathered) and in a fixed order."""
    params = list(model.parameters())
    inner = []
    for p in params:
        entry = opt.state.get(p, {})
        inner.append({key: full([value])[0] if isinstance(value, torch.Tensor) else value
                      for key, value in sorted(entry.items())})
    snapshot = {
        "fast": full(params), "slow": full(list(opt.slow[0])), "inner": inner,
        "counts": opt.counts, "k": opt.k, "alpha": opt.alpha, "rollbacks": opt.rollbacks,
        "groups": [{key: value for key, value in group.items() if key != "params"}
                   for group in opt.param_groups],
    }
    outer = getattr(opt, "outer_optimizer", None)
    if outer is not None:  # the outer state, gathered, by slow-weight position
        snapshot["outer"] = [
            {key: full([value])[0] if isinstance(value, torch.Tensor) else value
             for key, value in sorted(outer.state.get(s, {}).items())}
            for s in opt.slow[0]
        ]
        snapshot["outer_groups"] = [{key: value for key, value in group.items() if key != "params"}
                                    for group in outer.param_groups]
    return snapshot


def train(ctx: Ctx, model: torch.nn.Module, opt: Any, steps: range) -> None:
    for step in steps:
        x, y = global_batch(step)
        opt.zero_grad()
        loss_fn(model(ctx.rows(x)), ctx.rows(y)).backward()
        opt.step()


def _fsdp2_dcp(ctx: Ctx, inner: str, name: str, outer: bool = False) -> None:
    """Uninterrupted run; a run saved at SAVE_AT through DCP that continues; a resumed run."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from lookahead_torch import Lookahead

    def build() -> tuple[torch.nn.Module, Any]:
        model = shard_model(make_model())
        sync = {"outer": make_outer} if outer else {"alpha": ALPHA}
        return model, Lookahead(INNER[inner](model.parameters()), k=K, **sync)

    straight_model, straight = build()
    train(ctx, straight_model, straight, range(STEPS))

    saved_model, saved = build()
    train(ctx, saved_model, saved, range(SAVE_AT))
    # Gradients None, as after a loop that zeroes them after each step: with an empty
    # inner state (SGD) torch's state-dict functions then run their initialization step.
    saved.zero_grad()
    path = ctx.outdir / f"{name}.ckpt"
    at_save = optimizer_snapshot(saved_model, saved)
    dcp.save(dcp_state(saved_model, saved), checkpoint_id=str(path))
    after_save = optimizer_snapshot(saved_model, saved)  # saving must change nothing
    full_round_trip = _full_state_dict_round_trip(saved_model, saved, build) if inner == "adamw" or outer else None
    train(ctx, saved_model, saved, range(SAVE_AT, STEPS))

    dist.barrier()
    resumed_model, resumed = build()
    dcp_load(resumed_model, resumed, path)
    at_load = optimizer_snapshot(resumed_model, resumed)
    train(ctx, resumed_model, resumed, range(SAVE_AT, STEPS))
    ctx.save(name, {
        "path": str(path),
        "at_save": at_save, "after_save": after_save, "at_load": at_load,
        "straight": optimizer_snapshot(straight_model, straight),
        "saved_then_continued": optimizer_snapshot(saved_model, saved),
        "resumed": optimizer_snapshot(resumed_model, resumed),
        "full_round_trip": full_round_trip,
    })


def _full_state_dict_round_trip(model: torch.nn.Module, opt: Any, build: Callable[[], Any]) -> dict[str, Any]:
    """The full (unsharded) state dict path: gathered on every rank, loaded into a fresh run."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.tensor import DTensor

    options = StateDictOptions(full_state_dict=True)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = get_optimizer_state_dict(model, opt, options=options)
    slow_is_full = all(not isinstance(entry["lookahead_slow"], DTensor) for entry in optim_sd["state"].values())
    fresh_model, fresh = build()
    set_model_state_dict(fresh_model, model_sd, options=options)
    set_optimizer_state_dict(fresh_model, fresh, optim_sd, options=options)
    return {"slow_is_full": slow_is_full, "loaded": optimizer_snapshot(fresh_model, fresh)}


def scenario_fsdp2_dcp_sgd(ctx: Ctx) -> None:
    # SGD without momentum has no state: every DCP state-dict call runs torch's
    # zero-gradient initialization step, which must not advance the schedule.
    _fsdp2_dcp(ctx, "sgd", "fsdp2_dcp_sgd")


def scenario_fsdp2_dcp_adamw(ctx: Ctx) -> None:
    _fsdp2_dcp(ctx, "adamw", "fsdp2_dcp_adamw")


def scenario_fsdp2_dcp_from_one_rank(ctx: Ctx) -> None:
    """Resume from the checkpoint `write_one_rank_checkpoint` wrote in one process (no sharding)."""
    from torch.distributed.tensor import DTensor

    from lookahead_torch import Lookahead

    model = shard_model(make_model())
    opt = Lookahead(INNER["adamw"](model.parameters()), k=K, alpha=ALPHA)
    dcp_load(model, opt, ctx.outdir / ONE_RANK_CHECKPOINT)
    at_load = optimizer_snapshot(model, opt)
    slow_is_sharded = all(
        isinstance(s, DTensor) and s.placements == p.placements and s.device_mesh == p.device_mesh
        for p, s in zip(model.parameters(), opt.slow[0])
    )
    train(ctx, model, opt, range(SAVE_AT, STEPS))
    ctx.save("fsdp2_dcp_from_one_rank", {
        "at_load": at_load, "resumed": optimizer_snapshot(model, opt),
        "slow_is_sharded": slow_is_sharded,
    })


ONE_RANK_CHECKPOINT = "one_rank.ckpt"


def write_one_rank_checkpoint(outdir: Path) -> dict[str, Any]:
    """In this process, without torch.distributed: SAVE_AT steps of Lookahead(AdamW) on the
    full batches, saved through DCP for `scenario_fsdp2_dcp_from_one_rank`; returns the snapshot."""
    import torch.distributed.checkpoint as dcp

    from lookahead_torch import Lookahead

    model = make_model()
    opt = Lookahead(INNER["adamw"](model.parameters()), k=K, alpha=ALPHA)
    train(Ctx(0, 1, outdir), model, opt, range(SAVE_AT))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(dcp_state(model, opt), checkpoint_id=str(outdir / ONE_RANK_CHECKPOINT))
    return optimizer_snapshot(model, opt)


def scenario_zero(ctx: Ctx) -> None:
    """ZeroRedundancyOptimizer(Adam) as the inner optimizer, under DDP."""
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lookahead_torch import Lookahead

    def build(**options: Any) -> tuple[torch.nn.Module, Any]:
        model = DDP(make_model())
        zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.Adam, lr=0.05)
        return model, Lookahead(zero, k=K, alpha=ALPHA, **options)

    record: dict[str, Any] = {}
    model, opt = build()
    fast, slow = [], []
    for step in range(STEPS):
        train(ctx, model, opt, range(step, step + 1))
        fast.append(clones(model.parameters()))
        slow.append(clones(opt.slow[0]))
    record.update(fast=fast, slow=slow, counts=opt.counts,
                  owned=[opt.optimizer._param_to_rank[p] for p in model.parameters()],
                  slow_bytes=sum(s.untyped_storage().nbytes() for s in opt.slow[0]),
                  full_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))

    # Checkpoint: consolidate on rank 0; the other rank has no full state to give.
    resumed_model, resumed = build()
    saved_model, saved = build()
    train(ctx, saved_model, saved, range(SAVE_AT))
    saved.optimizer.consolidate_state_dict(to=0)
    path = ctx.outdir / "zero.pt"
    if ctx.rank == 0:
        torch.save(saved.state_dict(), path)
    else:
        try:
            saved.state_dict()
            record["unconsolidated_error"] = None
        except RuntimeError as exc:
            record["unconsolidated_error"] = str(exc)
    dist.barrier()
    resumed.load_state_dict(torch.load(path, weights_only=True))
    record["counts_at_load"] = resumed.counts
    record["slow_at_load"] = clones(resumed.slow[0])
    record["slow_at_save"] = clones(saved.slow[0])
    with torch.no_grad():
        for p, q in zip(resumed_model.parameters(), saved_model.parameters()):
            p.copy_(q)  # the model checkpoint (plain tensors under DDP)
    train(ctx, resumed_model, resumed, range(SAVE_AT, STEPS))
    record["resumed_fast"] = clones(resumed_model.parameters())
    record["resumed_slow"] = clones(resumed.slow[0])

    # reset_inner_state clears ZeRO's local state (where the moments live).
    reset_model, reset = build(reset_inner_state=True)
    train(ctx, reset_model, reset, range(STEPS))
    record["reset_fast"] = clones(reset_model.parameters())
    record["reset_local_state_sizes"] = len(reset.optimizer.optim.state)

    # What is refused, with which message.
    errors = {}
    for label, make in {
        "pullback": lambda: build(pullback="pullback"),
        "overlap_with_ddp": lambda: Lookahead(ZeroRedundancyOptimizer(
            list(make_model().parameters()), optimizer_class=torch.optim.SGD, lr=0.1,
            overlap_with_ddp=True)),
    }.items():
        try:
            make()
            errors[label] = None
        except (TypeError, ValueError) as exc:
            errors[label] = (type(exc).__name__, str(exc))
    record["errors"] = errors
    ctx.save("zero", record)


# -- process management -----------------------------------------------------------------


def scenario(name: str) -> Callable[[Ctx], None]:
    """``scenario_<name>`` of this module, or ``scenario_<name>`` of ``module`` for ``"module:name"``."""
    if ":" in name:
        import importlib

        module, name = name.split(":", 1)
        return getattr(importlib.import_module(module), f"scenario_{name}")
    return globals()[f"scenario_{name}"]


def rank_main(rank: int, world_size: int, port: int, outdir: str, scenarios: Sequence[str],
              timeout_s: float) -> None:
    """Entry point of one rank (a spawned process)."""
    out = Path(outdir)
    log = open(out / f"rank{rank}.log", "w", buffering=1)  # noqa: SIM115 (lives as long as the process)
    os.dup2(log.fileno(), 2)
    os.dup2(log.fileno(), 1)
    faulthandler.dump_traceback_later(timeout_s, exit=True)  # the rank's own bound
    warnings.simplefilter("ignore")  # FSDP2's warnings about this toy model would fill the log
    os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()
    torch.set_num_threads(1)
    import torch.distributed as dist

    # Collectives wait at most COLLECTIVE_TIMEOUT_S: a rank whose peer died stops soon.
    timeout = datetime.timedelta(seconds=min(timeout_s, COLLECTIVE_TIMEOUT_S))
    store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
    ctx = Ctx(rank, world_size, out)
    try:
        for name in scenarios:
            started = time.perf_counter()
            try:
                scenario(name)(ctx)
            except BaseException:
                (out / f"{name}.rank{rank}.error").write_text(traceback.format_exc())
                raise
            print(f"{name}: {time.perf_counter() - started:.2f} s", flush=True)
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    faulthandler.cancel_dump_traceback_later()


def launch(outdir: Path, scenarios: Sequence[str] = SCENARIOS, world_size: int = WORLD_SIZE,
           timeout_s: float = 75.0) -> dict[int, int | None]:
    """Run the scenarios on ``world_size`` spawned ranks; return each rank's exit code.

    The store listens on a socket bound to 127.0.0.1 (port chosen by the OS),
    so nothing binds to another interface and no port can be taken in between.
    Ranks still alive ``timeout_s + 10`` seconds after the start are killed
    (exit code ``None``).
    """
    import torch.distributed as dist
    import torch.multiprocessing as mp

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(world_size * 4)
    port = listener.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, world_size, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=timeout_s), master_listen_fd=listener.fileno())
    listener.detach()  # the store owns the socket now and closes it
    context = mp.get_context("spawn")
    processes = [
        context.Process(target=rank_main, args=(rank, world_size, port, str(outdir), tuple(scenarios), timeout_s),
                        daemon=True)
        for rank in range(world_size)
    ]
    deadline = time.monotonic() + timeout_s + 10.0
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5.0)
        del store
    return {rank: (None if process.is_alive() else process.exitcode) for rank, process in enumerate(processes)}


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="lookahead-dist-"))
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    write_one_rank_checkpoint(folder)
    codes = launch(folder)
    print(f"exit codes {codes} in {time.perf_counter() - started:.1f} s; records in {folder}")
    for rank in codes:
        print((folder / f"rank{rank}.log").read_text())


def scenario_ddp_outer(ctx: Ctx) -> None:
    """DDP, Lookahead(SGD Nesterov) with an outer SGD (Nesterov): every rank takes the same outer step."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lookahead_torch import Lookahead

    model = DDP(make_model())
    opt = Lookahead(INNER["sgd-nesterov"](model.parameters()), k=K, outer=make_outer)
    fast, slow = [], []
    for step in range(STEPS):
        x, y = global_batch(step)
        opt.zero_grad()
        loss_fn(model(ctx.rows(x)), ctx.rows(y)).backward()
        opt.step()
        fast.append(clones(model.parameters()))
        slow.append(clones(opt.slow[0]))
    momentum = [opt.outer_optimizer.state[s]["momentum_buffer"].clone() for s in opt.slow[0]]
    ctx.save("ddp_outer", {"fast": fast, "slow": slow, "outer_momentum": momentum})


def scenario_fsdp2_outer(ctx: Ctx) -> None:
    """FSDP2 + Lookahead(SGD) with an outer SGD (Nesterov): the outer momentum is sharded like the
    slow weights, the outer step issues no collective, and a DCP checkpoint (saved mid-cycle, after
    a sync) resumes bit for bit; SGD's empty inner state exercises DCP's initialization step."""
    from torch.distributed.tensor import DTensor

    from lookahead_torch import Lookahead

    model = shard_model(make_model())
    params = list(model.parameters())
    opt = Lookahead(INNER["sgd"](params), k=K, outer=make_outer)
    phases, slow_full, fast_full = [], [], []
    for step in range(STEPS):
        x, y = global_batch(step)
        opt.zero_grad()
        loss_fn(model(ctx.rows(x)), ctx.rows(y)).backward()
        with CollectiveCounter() as optimizer_step:
            opt.step()
        phases.append({"step": step, "optimizer_step": (optimizer_step.dispatched, optimizer_step.sequence)})
        fast_full.append(full(params))
        slow_full.append(full(list(opt.slow[0])))
    layout = []
    for p, s in zip(params, opt.slow[0]):
        m = opt.outer_optimizer.state[s]["momentum_buffer"]
        layout.append({
            "momentum_is_dtensor": isinstance(m, DTensor),
            "same_placements": isinstance(m, DTensor) and m.placements == s.placements
            and m.device_mesh == s.device_mesh,
            "local_shape": tuple(m.to_local().shape) if isinstance(m, DTensor) else None,
            "slow_local_shape": tuple(s.to_local().shape),
        })
    ctx.save("fsdp2_outer", {"phases": phases, "fast_full": fast_full, "slow_full": slow_full,
                             "layout": layout})
    _fsdp2_dcp(ctx, "sgd", "fsdp2_outer_dcp", outer=True)
