"""The rank side of ``tests/test_local_sgd.py``: ``Lookahead(..., process_group=...)`` on gloo.

Launched by ``distributed_workers.launch`` (spawned processes, gloo bound to
127.0.0.1, a deadline on every rank) with scenario names
``"local_sgd_workers:<name>"``. The problem is ``distributed_workers``'
(seeded float64 MLP, seeded batches, rank r trains on its rows); each
scenario saves what it measured to ``<outdir>/<name>.rank<r>.pt``, and the
test process compares it with a simulation of the N workers it writes itself.

Counting communication: `Wire` wraps ``torch.distributed.all_reduce`` and
``broadcast`` (calls and bytes, by the tensors handed to them), and reads the
process group's own sequence number (every collective gloo runs, whoever
issued it) as a second, independent count. DDP's traffic is counted by a
communication hook on its buckets.
"""

from __future__ import annotations

import datetime
import functools
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

import distributed_workers as W

K, ALPHA, STEPS = 3, 0.5, 9  # three syncs
SAVE_MID, SAVE_SYNC = 4, 6  # a checkpoint at count 1, and one right after a sync (count 0)
FAIL_TIMEOUT_S = 3.0  # the process-group timeout of the failure scenario
FAIL_STEP = 1  # rank 1 raises inside its second inner step (the first cycle's sync is at step K - 1)
STUCK_S = 5.0  # how long the raising rank then stays alive without reaching the sync

SCENARIOS = tuple(f"local_sgd_workers:{name}" for name in (
    "ddp_k1", "configs", "bf16", "rollback", "checkpoint", "from_one_process", "refusals", "buckets",
))
BUCKET_SHAPES = ((50, torch.float64), (30, torch.float32), (20, torch.bfloat16), (40, torch.float64),
                 (10, torch.float32), (64, torch.float16))
SMALL_BUCKET_BYTES = 256
FAILURE_SCENARIOS = ("local_sgd_workers:failure",)
HSDP_SCENARIOS = ("local_sgd_workers:hsdp",)  # on 4 ranks: 2 replicas x 2 shards
HSDP_WORLD = 4


class Wire:
    """Collectives issued inside a with-block: wrapped calls with their bytes, and gloo's count."""

    def __enter__(self) -> Wire:
        import torch.distributed as dist

        self.calls: list[tuple[str, int]] = []
        self._saved = {name: getattr(dist, name) for name in ("all_reduce", "broadcast")}

        def counting(name: str, original: Any) -> Any:
            @functools.wraps(original)
            def wrapper(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                self.calls.append((name, tensor.numel() * tensor.element_size()))
                return original(tensor, *args, **kwargs)
            return wrapper

        for name, original in self._saved.items():
            setattr(dist, name, counting(name, original))
        self._group = dist.group.WORLD
        self._start = self._group._get_sequence_number_for_group()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch.distributed as dist

        for name, original in self._saved.items():
            setattr(dist, name, original)
        self.sequence = self._group._get_sequence_number_for_group() - self._start

    def record(self) -> dict[str, Any]:
        return {"calls": list(self.calls), "bytes": sum(n for _, n in self.calls), "sequence": self.sequence}


def world() -> Any:
    import torch.distributed as dist

    return dist.group.WORLD


def rank_model(ctx: W.Ctx, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """``make_model()``, perturbed on every rank but the first: the construction must broadcast."""
    model = W.make_model().to(dtype)
    if ctx.rank != 0:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.25 * (ctx.rank + 1))
    return model


def step_on(ctx: W.Ctx, model: torch.nn.Module, opt: Any, step: int) -> None:
    x, y = W.global_batch(step)
    dtype = next(model.parameters()).dtype
    opt.zero_grad()
    W.loss_fn(model(ctx.rows(x).to(dtype)), ctx.rows(y).to(dtype)).backward()
    opt.step()


CONFIGS: dict[str, dict[str, Any]] = {
    # name: inner, k, and alpha or outer (the test's simulation reads the same table)
    "lookahead": {"inner": "sgd-nesterov", "k": K, "alpha": ALPHA},
    "local_sgd": {"inner": "sgd", "k": 2, "alpha": 1.0},
    "diloco": {"inner": "adam", "k": K, "outer": True},
}


def build(model: torch.nn.Module, config: dict[str, Any], **options: Any) -> Any:
    from lookahead_torch import Lookahead

    sync = {"outer": W.make_outer} if config.get("outer") else {"alpha": config["alpha"]}
    return Lookahead(W.INNER[config["inner"]](model.parameters()), k=config["k"],
                     process_group=world(), **sync, **options)


# -- scenarios --------------------------------------------------------------------------


def scenario_ddp_k1(ctx: W.Ctx) -> None:
    """k = 1, alpha = 1, plain SGD with process_group against DDP's averaged-gradient step."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lookahead_torch import Lookahead

    ddp_bytes: list[int] = []

    def counting_hook(state, bucket):  # noqa: ANN001, ANN202 (DDP checks the annotations it finds)
        import torch.distributed as dist

        ddp_bytes.append(bucket.buffer().numel() * bucket.buffer().element_size())
        tensor = bucket.buffer().div_(dist.get_world_size())
        return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])

    ddp = DDP(W.make_model())
    ddp.register_comm_hook(None, counting_hook)
    ddp_opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    model = rank_model(ctx)
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=1, alpha=1.0, process_group=world())
    ours, theirs, ours_wire, ddp_wire = [], [], [], []
    for step in range(STEPS):
        with Wire() as wire:
            step_on(ctx, model, opt, step)
        ours.append(W.clones(model.parameters()))
        ours_wire.append(wire.record())
        ddp_bytes.clear()
        with Wire() as wire:
            step_on(ctx, ddp, ddp_opt, step)
        ddp_wire.append({**wire.record(), "bucket_bytes": sum(ddp_bytes)})
        theirs.append(W.clones(ddp.parameters()))
    ctx.save("ddp_k1", {"ours": ours, "ddp": theirs, "ours_wire": ours_wire, "ddp_wire": ddp_wire,
                        "numel": sum(p.numel() for p in model.parameters()),
                        "listening": W.listening_sockets()})


def scenario_configs(ctx: W.Ctx) -> None:
    """Each config of `CONFIGS`: ranks start apart, train on their rows; weights and wire per step."""
    record: dict[str, Any] = {}
    for name, config in CONFIGS.items():
        model = rank_model(ctx)
        with Wire() as construction:
            opt = build(model, config)
        initial = W.clones(model.parameters())
        fast, slow, wire, counts, swapped = [], [], [], [], []
        for step in range(STEPS):
            with Wire() as w:
                step_on(ctx, model, opt, step)
            fast.append(W.clones(model.parameters()))
            slow.append(W.clones(opt.slow[0]))
            wire.append(w.record())
            counts.append(opt.counts[0])
            with Wire() as w, opt.slow_weights():
                swapped.append(W.clones(model.parameters()))
            swapped[-1].append(torch.tensor(w.sequence + len(w.calls)))
        momentum = None
        if opt.outer_optimizer is not None:
            momentum = [opt.outer_optimizer.state[s]["momentum_buffer"].clone() for s in opt.slow[0]]
        record[name] = {"initial": initial, "construction": construction.record(), "fast": fast,
                        "slow": slow, "wire": wire, "counts": counts, "swapped": swapped,
                        "outer_momentum": momentum}
    ctx.save("configs", record)


def scenario_bf16(ctx: W.Ctx) -> None:
    """bfloat16 parameters: reduced in float32 (4 bytes per element on the wire), ranks identical."""
    model = rank_model(ctx, torch.bfloat16)
    opt = build(model, {"inner": "sgd", "k": 2, "alpha": ALPHA})
    fast, slow, wire = [], [], []
    for step in range(4):
        with Wire() as w:
            step_on(ctx, model, opt, step)
        fast.append(W.clones(model.parameters()))
        slow.append(W.clones(opt.slow[0]))
        wire.append(w.record())
    ctx.save("bf16", {"fast": fast, "slow": slow, "wire": wire,
                      "numel": sum(p.numel() for p in model.parameters())})


def scenario_rollback(ctx: W.Ctx) -> None:
    """nonfinite='rollback': rank 1 alone blows up before a sync; both ranks roll back together."""
    model = rank_model(ctx)
    opt = build(model, {"inner": "sgd-nesterov", "k": K, "alpha": ALPHA}, nonfinite="rollback")
    record: dict[str, Any] = {}
    for step in range(2 * K):
        if step == 2 * K - 1 and ctx.rank == 1:  # the second sync's step: poison rank 1's weights
            with torch.no_grad():
                next(model.parameters())[0, 0] = float("nan")
        if step == 2 * K - 1:
            record["slow_before"] = W.clones(opt.slow[0])
        with Wire() as w:
            step_on(ctx, model, opt, step)
        record.setdefault("sequence", []).append(w.sequence)
    record.update(fast=W.clones(model.parameters()), slow=W.clones(opt.slow[0]),
                  rollbacks=opt.rollbacks, counts=opt.counts,
                  momentum_empty=all(not opt.state.get(p) for p in model.parameters()))
    ctx.save("rollback", record)


def _snapshot(model: torch.nn.Module, opt: Any) -> dict[str, Any]:
    return W.optimizer_snapshot(model, opt)


def scenario_checkpoint(ctx: W.Ctx) -> None:
    """Every rank saves its own file (torch.save) mid-cycle and right after a sync; a fresh pair of
    optimizers built with the process group loads them and continues bit for bit."""
    config = CONFIGS["diloco"]
    model = rank_model(ctx)
    opt = build(model, config)
    paths = {}
    for step in range(STEPS):
        step_on(ctx, model, opt, step)
        if step + 1 in (SAVE_MID, SAVE_SYNC):
            path = ctx.outdir / f"local_sgd_at{step + 1}.rank{ctx.rank}.ckpt"
            torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, path)
            paths[step + 1] = path
    uninterrupted = _snapshot(model, opt)
    resumed = {}
    for at, path in paths.items():
        fresh_model = W.make_model()  # not perturbed: the loaded state must win
        fresh = build(fresh_model, config)
        saved = torch.load(path, weights_only=True)
        fresh_model.load_state_dict(saved["model"])
        fresh.load_state_dict(saved["optim"])
        for step in range(at, STEPS):
            step_on(ctx, fresh_model, fresh, step)
        resumed[at] = _snapshot(fresh_model, fresh)
    # Files of different steps on the two ranks: refused on both, nothing loaded.
    fresh_model = W.make_model()
    fresh = build(fresh_model, config)
    before = _snapshot(fresh_model, fresh)
    mixed = torch.load(paths[SAVE_MID if ctx.rank == 0 else SAVE_SYNC], weights_only=True)
    try:
        fresh.load_state_dict(mixed["optim"])
        mixed_error = None
    except ValueError as exc:
        mixed_error = str(exc)
    after = _snapshot(fresh_model, fresh)
    unchanged = (all(torch.equal(a, b) for a, b in zip(before["slow"], after["slow"]))
                 and before["counts"] == after["counts"] and not fresh.state)
    ctx.save("checkpoint", {"uninterrupted": uninterrupted, "resumed": resumed,
                            "mixed_error": mixed_error, "mixed_unchanged": unchanged,
                            "counts_at_sync_file": torch.load(paths[SAVE_SYNC], weights_only=True)
                            ["optim"]["param_groups"][0]["lookahead_count"]})


def scenario_from_one_process(ctx: W.Ctx) -> None:
    """1 -> 2 ranks: both ranks load the checkpoint of one process (no process group), then train
    as two workers from it."""
    config = CONFIGS["diloco"]
    saved = torch.load(ctx.outdir / "one_process.ckpt", weights_only=True)
    model = rank_model(ctx)
    opt = build(model, config)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optim"])
    fast, slow = [], []
    for step in range(SAVE_SYNC, STEPS):
        step_on(ctx, model, opt, step)
        fast.append(W.clones(model.parameters()))
        slow.append(W.clones(opt.slow[0]))
    ctx.save("from_one_process", {"fast": fast, "slow": slow})


def scenario_failure(ctx: W.Ctx) -> None:
    """A rank that raises during its inner steps: the other's sync ends with a clear error.

    Two process groups with a FAIL_TIMEOUT_S timeout. In the first, rank 1
    raises inside its second inner step and then stays alive for STUCK_S
    without reaching the sync (a rank stuck in its error handling); rank 0
    waits in the sync's all-reduce until the timeout. In the second, rank 1
    raises and its process is killed (SIGKILL), as a crash would.
    """
    import torch.distributed as dist

    from lookahead_torch import Lookahead

    record: dict[str, Any] = {}
    # Both groups are made up front, while every rank is healthy (joining one waits at most the timeout);
    # So are the optimizers (the construction broadcasts): then each variant's first collective is its sync.
    runs = {}
    for variant in ("stuck", "killed"):
        group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=FAIL_TIMEOUT_S))
        model = rank_model(ctx)
        runs[variant] = (model, Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=K, alpha=ALPHA,
                                          process_group=group))
    for variant, (model, opt) in runs.items():
        dist.barrier()  # the default group (30 s): both variants start together
        slow_before = W.clones(opt.slow[0])
        entry: dict[str, Any] = {}
        started = time.monotonic()
        try:
            for step in range(K):
                if ctx.rank == 1 and step == FAIL_STEP:
                    raise ValueError("injected failure inside rank 1's inner steps")
                step_on(ctx, model, opt, step)
            entry["error"] = None
        except Exception as exc:  # noqa: BLE001 (the record says what was raised)
            entry["error"] = (type(exc).__name__, str(exc))
        entry["seconds"] = time.monotonic() - started
        entry["slow_after"] = W.clones(opt.slow[0])
        entry["slow_before"] = slow_before
        entry["fast_after"] = W.clones(model.parameters())
        entry["counts"] = opt.counts
        record[variant] = entry
        if ctx.rank == 1:
            if variant == "stuck":
                time.sleep(STUCK_S)
            else:
                ctx.save("failure", record)
                os.kill(os.getpid(), signal.SIGKILL)
    ctx.save("failure", record)


def scenario_refusals(ctx: W.Ctx) -> None:
    """What process_group refuses, on live groups: the error, and that nothing was built or moved."""
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    from lookahead_torch import Lookahead

    only_rank0 = dist.new_group(ranks=[0])  # every rank must call new_group

    def attempt(make_inner: Any, **options: Any) -> dict[str, Any]:
        model = rank_model(ctx)
        before = W.clones(model.parameters())
        inner = make_inner(model)
        with Wire() as wire:
            try:
                Lookahead(inner, k=K, **options)
                error = None
            except (TypeError, ValueError) as exc:
                error = (type(exc).__name__, str(exc))
        return {"error": error, "wire": wire.record(),
                "unchanged": all(torch.equal(a, b) for a, b in zip(before, model.parameters())),
                "groups_clean": all("lookahead_k" not in g for g in inner.param_groups)}

    def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.1)

    def sharded(model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(W.shard_model(W.make_model()).parameters(), lr=0.1)

    record = {
        "adaptive": attempt(sgd, process_group=world(), alpha_mode="adaptive"),
        "zero": attempt(lambda m: ZeroRedundancyOptimizer(list(m.parameters()), torch.optim.SGD, lr=0.1),
                        process_group=world()),
        "dtensor": attempt(sharded, process_group=world()),
        "not_a_group": attempt(sgd, process_group="world"),
        "bad_k": attempt(sgd, process_group=world(), alpha=1.5),
    }
    if ctx.rank == 1:
        record["not_a_member"] = attempt(sgd, process_group=only_rank0)
    ctx.save("refusals", record)


def scenario_hsdp(ctx: W.Ctx) -> None:
    """FSDP2 within each replica, process_group across replicas, on a (replicate, shard) = (2, 2)
    mesh: rank 2r + s holds shard s of replica r and trains on quarter 2r + s of each batch, so
    replica r sees half r of it (FSDP2 averages its two quarters' gradients)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from lookahead_torch import Lookahead

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    replica = mesh.get_local_rank("replicate")
    record: dict[str, Any] = {"replica": replica}
    for name, options in (("lookahead", {"alpha": ALPHA}), ("diloco", {"outer": W.make_outer}),
                          ("rollback", {"alpha": ALPHA, "nonfinite": "rollback"})):
        model = W.make_model()
        if replica != 0:  # replicas start apart: the construction broadcasts replica 0's shards
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.25)
        for module in model:
            if isinstance(module, torch.nn.Linear):
                fully_shard(module, mesh=mesh["shard"])
        fully_shard(model, mesh=mesh["shard"])
        params = list(model.parameters())
        opt = Lookahead(W.INNER["sgd-nesterov"](params), k=K, process_group=mesh.get_group("replicate"),
                        **options)
        fast, slow, wire = [], [], []
        for step in range(2 * K if name == "rollback" else STEPS):
            x, y = W.global_batch(step)
            if name == "rollback" and step == 2 * K - 1:
                record["rollback_slow_before"] = W.full(list(opt.slow[0]))
                if ctx.rank == 3:  # one shard of one replica blows up before the second sync
                    with torch.no_grad():
                        params[0].to_local().view(-1)[0] = float("nan")
            opt.zero_grad()
            W.loss_fn(model(W.rank_rows(x, ctx.rank, HSDP_WORLD)), W.rank_rows(y, ctx.rank, HSDP_WORLD)).backward()
            with Wire() as w:
                opt.step()
            wire.append(w.calls)
            fast.append(W.full(params))
            slow.append(W.full(list(opt.slow[0])))
        record[name] = {"fast": fast, "slow": slow, "wire": wire, "rollbacks": opt.rollbacks,
                        "local_numel": sum(p.to_local().numel() for p in params)}
    # A mesh that shares ranks with process_group is refused before anything is built.
    model = W.shard_model(W.make_model())
    try:
        Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), process_group=world())
        record["refused"] = None
    except ValueError as exc:
        record["refused"] = str(exc)
    record["listening"] = W.listening_sockets()
    ctx.save("hsdp", record)


def scenario_buckets(ctx: W.Ctx) -> None:
    """Mixed dtypes in buckets of at most SMALL_BUCKET_BYTES: an explicit sync with alpha = 1 after
    each rank set its own values, so the result is the plain mean of the ranks' values."""
    from lookahead_torch import Lookahead, _averaging

    params = [torch.nn.Parameter(torch.zeros(n, dtype=dtype)) for n, dtype in BUCKET_SHAPES]
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=5, alpha=1.0, process_group=world())
    values = bucket_values(ctx.rank)
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    saved = _averaging.BUCKET_BYTES
    _averaging.BUCKET_BYTES = SMALL_BUCKET_BYTES
    try:
        with Wire() as wire:
            opt.sync()
    finally:
        _averaging.BUCKET_BYTES = saved
    ctx.save("buckets", {"after": W.clones(params), "slow": W.clones(opt.slow[0]), "wire": wire.record()})


def bucket_values(rank: int) -> list[torch.Tensor]:
    """Rank ``rank``'s values for the `scenario_buckets` parameters (seeded)."""
    gen = torch.Generator().manual_seed(500 + rank)
    return [torch.randn(n, generator=gen, dtype=torch.float64).to(dtype) for n, dtype in BUCKET_SHAPES]


def write_one_process_checkpoint(outdir: Path) -> dict[str, Any]:
    """The 1 -> 2 ranks source: one process, no process group, DiLoCo config, SAVE_SYNC steps on
    the whole batch; saved right after a sync. Returns the saved state."""
    from lookahead_torch import Lookahead

    torch.set_num_threads(1)
    config = CONFIGS["diloco"]
    model = W.make_model()
    opt = Lookahead(W.INNER[config["inner"]](model.parameters()), k=config["k"], outer=W.make_outer)
    for step in range(SAVE_SYNC):
        x, y = W.global_batch(step)
        opt.zero_grad()
        W.loss_fn(model(x), y).backward()
        opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    torch.save(state, outdir / "one_process.ckpt")
    return torch.load(outdir / "one_process.ckpt", weights_only=True)
