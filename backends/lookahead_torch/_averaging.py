"""``process_group=``: Local SGD / DiLoCo data parallelism, the fast weights averaged at each sync.

With ``Lookahead(inner, k, alpha | outer, process_group=G)`` the model is not
wrapped in DDP: each rank of G takes its k inner steps on its own gradients,
with no communication, and the ranks meet only at the sync of a group:

```text
θ ← (1/N) Σ_r θ_r                  one bucketed all-reduce over G (`Averaging.average_`)
φ ← lerp(φ, θ, α)  or  O.step()    Algorithm 1's sync, or the outer step on Δ = φ − θ
θ ← φ
```

The second and third lines are the adapter's usual sync, run on identical
inputs on every rank, so φ and θ leave each sync bit-identical on every rank
(see `Averaging.average_` for why the average is). With an outer SGD with
Nesterov momentum this is DiLoCo (Douillard et al. 2023); with α = 1 it is
Local SGD (torch's ``PostLocalSGDOptimizer``); with k = 1, α = 1 and plain SGD
it is DDP's averaged-gradient step up to rounding.

Bytes. One all-reduce of every parameter per sync: P bytes (4 per element
for 16-bit parameters, which are reduced in float32) every k steps, against
DDP's P bytes every step.

Construction. The ranks must start from the same weights: the parameters of
every group are broadcast from the group's first rank when Lookahead adopts
the group (as DDP broadcasts the module's state at its construction), before
φ₀ is taken. Every rank of G must therefore build the optimizer (and call
``add_param_group``, ``sync()`` and each ``step``) together.

FSDP2. A DTensor parameter is averaged shard by shard: ``fully_shard`` over a
mesh within each replica and ``process_group`` across replicas (HSDP's
layout, with the replicas' all-reduce every k steps instead of every step);
see `check_params`.

Failure. A collective that fails or times out (the process group's
``timeout``) raises a `RuntimeError` naming the cause; the rank's
parameters and slow weights are left as they were before the sync.

``torch.distributed`` is imported only when a process group is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import _distributed

__all__ = ["BUCKET_BYTES", "Averaging", "check_process_group"]

# Elements are packed into flat buffers of at most this many bytes (DDP's default bucket_cap_mb):
# one all-reduce per bucket, all in flight together.
BUCKET_BYTES = 25 * 1024 * 1024

_REDUCE_IN_FLOAT32 = (torch.float16, torch.bfloat16)


def check_process_group(process_group: Any) -> Any:
    """``process_group`` is ``None`` or a ``torch.distributed.ProcessGroup`` that this rank is in.

    Raises:
        TypeError: not a process group.
        ValueError: ``torch.distributed`` is not initialized, or this rank is not in the group.
    """
    if process_group is None:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise ValueError("process_group needs torch.distributed, which this build of torch lacks")
    if process_group is dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError(
            "process_group does not include this rank (torch.distributed.new_group returned "
            "GroupMember.NON_GROUP_MEMBER here): build the optimizer with process_group only on "
            "the ranks of the group"
        )
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            "process_group must be None or a torch.distributed.ProcessGroup (e.g. "
            "torch.distributed.group.WORLD or one from torch.distributed.new_group), got "
            f"{type(process_group).__name__}"
        )
    if not dist.is_initialized():
        raise ValueError(
            "process_group was given but torch.distributed is not initialized: call "
            "torch.distributed.init_process_group first"
        )
    if dist._rank_not_in_group(process_group):
        raise ValueError(
            f"process_group does not include this rank ({dist.get_rank()}): build the optimizer "
            "with process_group only on the ranks of the group"
        )
    return process_group


def check_params(params: Sequence[torch.Tensor], process_group: Any) -> None:
    """Refuse parameters the averaging does not support (before anything is built).

    Plain (replicated) tensors are averaged whole. A DTensor parameter
    (FSDP2's ``fully_shard``) is averaged shard by shard: each rank
    all-reduces its local shard with the ranks of ``process_group``, which
    must hold the same shard of other replicas. So the parameter's device
    mesh may share no rank but this one with ``process_group`` (shard within
    a replica, average across replicas, as HSDP lays it out); whether the
    replicas' shards match is checked at construction (`Averaging.check_shards`).

    Raises:
        ValueError: a DTensor whose mesh includes other ranks of ``process_group``.
    """
    dtensor = _distributed.dtensor_type()
    if dtensor is None or not any(isinstance(p, dtensor) for p in params):
        return
    import torch.distributed as dist

    here = dist.get_rank()
    replicas = set(dist.get_process_group_ranks(process_group))
    for i, p in enumerate(params):
        if not isinstance(p, dtensor):
            continue
        shared = (set(p.device_mesh.mesh.flatten().tolist()) & replicas) - {here}
        if shared:
            raise ValueError(
                f"process_group shares ranks {sorted(shared)} with the device mesh of parameter {i} "
                "(a DTensor, e.g. FSDP2's fully_shard): the averaging all-reduces each rank's "
                "shard with the ranks of process_group, so they must hold the same shard of other "
                "replicas. Supported: a model that is not sharded; or fully_shard over a mesh "
                "within each replica and process_group across replicas (e.g. mesh = "
                "init_device_mesh(device, (replicas, shards), mesh_dim_names=('replicate', "
                "'shard')); fully_shard(model, mesh=mesh['shard']); "
                "process_group=mesh.get_group('replicate'))"
            )


def _reduce_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in _REDUCE_IN_FLOAT32 else t.dtype


class Averaging:
    """The collectives of ``process_group=``: the broadcast of θ₀ and the average at each sync."""

    def __init__(self, process_group: Any) -> None:
        self.group = process_group

    @property
    def size(self) -> int:
        import torch.distributed as dist

        return dist.get_world_size(self.group)

    def _rank(self) -> int:
        import torch.distributed as dist

        return dist.get_rank(self.group)

    def _failed(self, what: str, unchanged: str, exc: BaseException) -> RuntimeError:
        return RuntimeError(
            f"Lookahead(process_group=...): {what} failed on rank {self._rank()} of a group of "
            f"{self.size}: a rank did not reach it within the process group's timeout, left the "
            f"group or failed ({type(exc).__name__}: {str(exc).strip()[:400]}). {unchanged} The "
            "process group cannot be trusted after this: end every rank and restart them all "
            "from the last checkpoint"
        )

    @torch.no_grad()
    def check_shards(self, params: Sequence[torch.Tensor]) -> None:
        """DTensor parameters: every rank of the group holds a local shard of the same shape.

        One small all-reduce (the shapes, negated for the minimum). Raises
        ``ValueError`` on every rank if the replicas are sharded differently.
        """
        import torch.distributed as dist

        shards = [p.to_local() for p in params if _distributed.is_dtensor(p)]
        if not shards:
            return
        sizes = torch.tensor([n for t in shards for n in t.shape], dtype=torch.int64)
        both = torch.cat([sizes, -sizes])
        try:
            dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group)
        except RuntimeError as exc:
            raise self._failed("the check of the shards' shapes", "No optimizer was built on this rank.",
                               exc) from exc
        if not torch.equal(both[: len(sizes)], -both[len(sizes):]):
            raise ValueError(
                "process_group: the ranks of the group hold shards of different shapes: each "
                "must hold the same shard of its own replica (fully_shard every replica alike, "
                "over a mesh of the same shape)"
            )

    @torch.no_grad()
    def check_counts(self, counts: Sequence[int]) -> None:
        """Every rank loads the same position in the cycle of each group (one small all-reduce).

        Raises:
            ValueError: on every rank, if the ranks' counts differ (checkpoints of different steps).
        """
        import torch.distributed as dist

        mine = torch.tensor(list(counts), dtype=torch.int64)
        both = torch.cat([mine, -mine])
        try:
            dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group)
        except RuntimeError as exc:
            raise self._failed("the agreement on the loaded checkpoint's counts",
                               "Nothing was loaded on this rank.", exc) from exc
        high, low = both[: len(counts)].tolist(), (-both[len(counts):]).tolist()
        if high != low:
            raise ValueError(
                "state_dict: the ranks of process_group loaded checkpoints at different points of "
                f"the cycle (lookahead_count per group: from {low} to {high}; this rank "
                f"{list(counts)}): load on every rank its file saved at the same step. Nothing "
                "was loaded"
            )

    @torch.no_grad()
    def broadcast_(self, params: Sequence[torch.Tensor]) -> None:
        """Every rank's ``params`` ← those of the group's first rank (in place, bucketed; local shards)."""
        import torch.distributed as dist

        params = _distributed.locals_(params)

        source = dist.get_global_rank(self.group, 0)
        try:
            for bucket in _buckets(params, same_dtype=True):
                flat = torch.cat([params[i].detach().reshape(-1) for i in bucket])
                dist.broadcast(flat, src=source, group=self.group)
                _unpack_(flat, [params[i] for i in bucket])
        except RuntimeError as exc:
            raise self._failed("the broadcast of the initial weights from the group's first rank",
                               "No optimizer was built on this rank (its parameters may hold some of the first "
                               "rank's values).", exc) from exc

    @torch.no_grad()
    def average_(self, fast: Sequence[torch.Tensor], flags: Sequence[float] = ()) -> list[float]:
        """θ ← the mean of θ over the group, for every tensor of ``fast``; ``flags`` summed over it.

        The tensors are packed into flat buffers of one dtype and device (at
        most `BUCKET_BYTES` each; 16-bit tensors upcast to float32), each
        buffer is summed by one all-reduce (all in flight together), divided
        by N and copied back (rounded once into a 16-bit parameter). ``flags``
        (small integers as floats, e.g. "my weights are not finite") ride in
        the first buffer, so agreeing on them costs no extra collective.

        Bit identity: the mean is computed from the all-reduced sum by the
        same operation on every rank, so it is identical wherever the sum is.
        gloo's and NCCL's all-reduce algorithms (ring: reduce-scatter then
        all-gather; tree: reduce then broadcast) reduce each element once,
        on one rank, and copy the result to the others, so every rank
        receives the same bits; DDP relies on the same property to keep its
        replicas identical. The tests check it bit for bit after every sync.

        If a collective fails nothing of ``fast`` has been written.

        Returns:
            ``flags`` summed over the ranks.

        Raises:
            RuntimeError: a collective failed or timed out (see `_failed`).
        """
        import torch.distributed as dist

        fast = _distributed.locals_(fast)
        if not fast:
            return list(flags)
        buckets = _buckets(fast, same_dtype=False)
        buffers = []
        for b, bucket in enumerate(buckets):
            dtype = _reduce_dtype(fast[bucket[0]])
            parts = [fast[i].detach().reshape(-1).to(dtype) for i in bucket]
            if b == 0 and flags:
                parts.append(torch.tensor(list(flags), dtype=dtype, device=parts[0].device))
            buffers.append(torch.cat(parts))
        try:
            works = [dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
                     for flat in buffers]
            for work in works:
                work.wait()
        except RuntimeError as exc:
            raise self._failed(
                "the averaging of the fast weights at a sync",
                "Nothing was changed on this rank: its parameters hold its own fast weights, its "
                "slow weights those of the last sync.", exc) from exc
        n = self.size
        summed_flags = [float(v) for v in buffers[0][buffers[0].numel() - len(flags):].tolist()] if flags else []
        for bucket, flat in zip(buckets, buffers):
            flat.div_(n)
            _unpack_(flat, [fast[i] for i in bucket])
        return summed_flags


def _buckets(tensors: Sequence[torch.Tensor], same_dtype: bool) -> list[list[int]]:
    """Indices of ``tensors`` in buckets of one (device, dtype) and at most `BUCKET_BYTES`, in order.

    ``same_dtype``: bucket by the tensors' own dtype (a broadcast copies bits);
    otherwise by the dtype they are reduced in.
    """
    open_: dict[tuple[Any, torch.dtype], list[int]] = {}
    sizes: dict[tuple[Any, torch.dtype], int] = {}
    done: list[list[int]] = []
    for i, t in enumerate(tensors):
        dtype = t.dtype if same_dtype else _reduce_dtype(t)
        key = (t.device, dtype)
        nbytes = t.numel() * torch.empty((), dtype=dtype).element_size()
        if key in open_ and sizes[key] + nbytes > BUCKET_BYTES:
            done.append(open_.pop(key))
            sizes[key] = 0
        open_.setdefault(key, []).append(i)
        sizes[key] = sizes.get(key, 0) + nbytes
    return done + list(open_.values())


def _unpack_(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        n = t.numel()
        t.detach().copy_(flat[offset : offset + n].view(t.shape))
        offset += n
