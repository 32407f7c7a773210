"""What the optimizer needs to know about ``torch.distributed``, in one place.

- **DTensor parameters** (FSDP2's ``fully_shard``, tensor parallelism): the
  slow copy of a DTensor is a DTensor with the same device mesh and placements,
  so each rank holds one copy of its own shard only. The sync is elementwise
  and both tensors of a pair are sharded alike, so it runs on the local shards
  (`local`) with no communication; DTensor's dispatcher is never involved.
- **ZeroRedundancyOptimizer** as the inner optimizer: its per-parameter state
  lives in the local optimizer ``optimizer.optim``, not in ``optimizer.state``
  (see `inner_state_dicts`); ``overlap_with_ddp=True`` steps inside DDP's
  backward hook, where Lookahead cannot count executed steps (see `check_inner`).
- **torch.distributed.checkpoint**: ``get_optimizer_state_dict`` and
  ``set_optimizer_state_dict`` of ``torch.distributed.checkpoint.state_dict``
  initialize an optimizer whose state is empty by calling its ``step()`` with
  zero gradients and ``lr = 0``. That call is not a training step and must not
  advance the schedule (see `is_state_initialization`).

Nothing here imports ``torch.distributed``: a DTensor or a
ZeroRedundancyOptimizer can only exist once its module has been imported, so
the modules are looked up in ``sys.modules``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "all_ranks_finite",
    "as_param_layout",
    "check_inner",
    "dtensor_type",
    "inner_state_dicts",
    "is_dtensor",
    "is_state_initialization",
    "layout_mismatch",
    "local",
    "locals_",
    "same_layout",
    "zero_type",
]


def dtensor_type() -> type | None:
    """``DTensor`` if ``torch.distributed.tensor`` is loaded, else ``None`` (no parameter can be one)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def zero_type() -> type | None:
    module = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    return getattr(module, "ZeroRedundancyOptimizer", None)


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (an FSDP2 parameter, for one)."""
    dtensor = dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds: a DTensor's local shard (a view, no copy), else ``t`` itself.

    Not cached anywhere: FSDP2 may re-point a parameter's local tensor (at its
    lazy initialization, after ``module.to(...)``), so it is read at each use.
    """
    if is_dtensor(t):
        return t._local_tensor
    return t


def locals_(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """`local` of each tensor (the DTensor type looked up once: this runs at every sync)."""
    dtensor = dtensor_type()
    if dtensor is None:
        return list(tensors)
    return [t._local_tensor if isinstance(t, dtensor) else t for t in tensors]


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are both plain, or both DTensors sharded alike (mesh, placements, shard shape)."""
    a_dt, b_dt = is_dtensor(a), is_dtensor(b)
    if a_dt != b_dt:
        return False
    if not a_dt:
        return True
    return (
        a.device_mesh == b.device_mesh
        and tuple(a.placements) == tuple(b.placements)
        and a._local_tensor.shape == b._local_tensor.shape
    )


def layout_mismatch(param: torch.Tensor, slow: torch.Tensor) -> str | None:
    """Why ``slow`` no longer fits ``param``'s sharding, or ``None`` if it does."""
    if same_layout(param, slow):
        return None
    if is_dtensor(param) and not is_dtensor(slow):
        return (
            "the parameter is now a DTensor and its slow copy is not: shard the model "
            "(fully_shard) before building the optimizer"
        )
    if is_dtensor(slow) and not is_dtensor(param):
        return "the slow copy is a DTensor and the parameter is not"
    return (
        f"the parameter is sharded as {tuple(param.placements)} on {param.device_mesh}, its "
        f"slow copy as {tuple(slow.placements)} on {slow.device_mesh}"
    )


def as_param_layout(where: str, value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A checkpoint tensor (of ``param``'s global shape) laid out like ``param``, for loading.

    - a DTensor parameter and a DTensor value on the same mesh: the value,
      redistributed to the parameter's placements if they differ;
    - a DTensor parameter and a plain (full) tensor, as in a full state dict:
      each rank keeps its own shard of it, without communication;
    - a plain parameter: a plain value as it is; a DTensor value is refused
      (resharding a checkpoint is ``torch.distributed.checkpoint``'s job).

    Raises:
        TypeError: a DTensor value for a plain parameter.
        ValueError: a DTensor value on another device mesh.
    """
    if not is_dtensor(param):
        if is_dtensor(value):
            raise TypeError(
                f"{where} is a DTensor (sharded) but the parameter is a plain tensor; load "
                "sharded checkpoints with lookahead_torch.distributed.set_optimizer_state_dict "
                "after torch.distributed.checkpoint.load, which reshards them"
            )
        return value
    if is_dtensor(value):
        if value.device_mesh != param.device_mesh:
            raise ValueError(
                f"{where} is sharded over {value.device_mesh}, the parameter over "
                f"{param.device_mesh}; load it through torch.distributed.checkpoint, which reshards"
            )
        if tuple(value.placements) != tuple(param.placements):
            value = value.redistribute(param.device_mesh, param.placements)
        return value
    from torch.distributed.tensor import distribute_tensor

    # src_data_rank=None: every rank holds the full tensor and keeps its own shard.
    return distribute_tensor(
        value.detach().to(device=param.device), param.device_mesh, param.placements, src_data_rank=None
    )


def all_ranks_finite(finite: bool, tensors: Sequence[torch.Tensor]) -> bool:
    """``finite`` agreed over every rank that holds a shard of one of ``tensors``.

    A group of DTensor parameters is finite only if every shard is: one
    all-reduce of a single integer per mesh dimension, so that all ranks roll
    back together or none does. Plain (replicated) parameters are identical on
    every rank already: no communication.
    """
    dtensor = dtensor_type()
    if dtensor is None:
        return finite
    meshes: list[Any] = []
    for t in tensors:
        # FSDP2 gives each fully_shard unit its own DeviceMesh object: compare by value.
        if isinstance(t, dtensor) and t.device_mesh not in meshes:
            meshes.append(t.device_mesh)
    if not meshes:
        return finite
    import torch.distributed as dist

    flag = None
    for mesh in meshes:
        if flag is None or flag.device.type != mesh.device_type:
            flag = torch.tensor([0 if finite else 1], dtype=torch.int32, device=mesh.device_type)
        for dim in range(mesh.ndim):
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=mesh.get_group(dim))
        finite = bool(flag.item() == 0)
    return finite


def inner_state_dicts(optimizer: torch.optim.Optimizer) -> list[Any]:
    """The per-parameter state mappings of ``optimizer`` that a state restart must clear.

    ``optimizer.state``, and for a ``ZeroRedundancyOptimizer`` also the state of
    its local optimizer ``optimizer.optim``, where the moments of this rank's
    partition live.
    """
    dicts = [optimizer.state]
    zero = zero_type()
    if zero is not None and isinstance(optimizer, zero) and hasattr(optimizer, "optim"):
        dicts.append(optimizer.optim.state)
    return dicts


def check_inner(optimizer: torch.optim.Optimizer) -> None:
    """Refuse inner optimizers whose executed steps Lookahead cannot see.

    Raises:
        ValueError: a ``ZeroRedundancyOptimizer`` with ``overlap_with_ddp=True``.
    """
    zero = zero_type()
    if zero is not None and isinstance(optimizer, zero) and getattr(optimizer, "_overlap_with_ddp", False):
        raise ValueError(
            "optimizer is a ZeroRedundancyOptimizer with overlap_with_ddp=True: it steps inside "
            "DDP's communication hook, not in optimizer.step(), so Lookahead cannot count its "
            "steps; use overlap_with_ddp=False"
        )


def is_state_initialization(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a ``step()`` now can only create ``optimizer``'s state, not move a weight.

    True when the inner state is empty, every param group that has an ``lr``
    has ``lr == 0``, and every parameter that requires a gradient has one that
    is all zeros (the others none). This is exactly the call by which
    ``torch.distributed.checkpoint.state_dict``'s ``get_optimizer_state_dict``
    / ``set_optimizer_state_dict`` initialize an optimizer whose state is
    empty (always so for SGD without momentum), recognised by what it does,
    not by who calls it: any number of wrappers (LR scheduler patches,
    decorators) may sit in between. Cheap on a training step: the gradients
    are only read when the state is empty and every ``lr`` is zero. Sharded
    gradients are judged over all ranks, so every rank decides alike.
    """
    if optimizer.state:
        return False
    for group in optimizer.param_groups:
        lr = group.get("lr")
        if isinstance(lr, torch.Tensor) and lr.device.type != "cpu":
            return False  # torch's initialization sets a CPU 0.0; reading this one would wait for the device
        if lr is not None and float(lr) != 0.0:
            return False
    grads, params = [], []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                if p.requires_grad:
                    return False
                continue
            grads.append(p.grad)
            params.append(p)
    if not grads:
        return False
    local_grads = [g for g in locals_(grads) if g.numel() > 0]
    nonzero = 0
    if local_grads:
        # One host sync for all of them: the count of nonzero entries.
        nonzero = int(torch.stack([torch.count_nonzero(g).to("cpu") for g in local_grads]).sum())
    return all_ranks_finite(nonzero == 0, params)
