"""Param groups and placement: each group's Lookahead state, where its tensors live, and checks.

A `GroupState` holds, for one param group of the inner optimizer, the slow
weights φ and every other per-parameter buffer a policy asked for (keyed by
its checkpoint key), plus the group's position in the cycle. Buffers are
created eagerly when a group is adopted (φ₀ = θ at that moment) on each
parameter's device, in its layout (a DTensor's slow copy is a DTensor sharded
like it) and in its dtype, or in ``slow_dtype`` for the slow weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import _distributed
from ._checks import check_group_settings, check_param

__all__ = [
    "SLOW_BUFFER",
    "GroupState",
    "adopt_replaced_params",
    "check_group",
    "check_no_overlap",
    "check_placement",
    "local_pairs",
    "new_group_state",
    "slow_dtype_of",
]

SLOW_BUFFER = "lookahead_slow"


@dataclass
class GroupState:
    """Lookahead's state for one param group.

    Attributes:
        params: the group's ``params`` list when it was adopted (the same list
            object as ``group["params"]``, to notice a replaced list cheaply).
        buffers: per-parameter buffers by checkpoint key, each a list in
            parameter order: ``"lookahead_slow"`` (φ) always; a policy's own
            (``"lookahead_momentum"``, ``"lookahead_start_grad"``) when enabled.
        count: executed inner steps since the group's last sync (see
            `lookahead_core.plan_step`; in adaptive mode k means the estimate
            call is pending).
        last_alpha: adaptive mode: the α of the group's most recent sync, or ``None``.
        rollbacks: how many of the group's syncs ``nonfinite="rollback"`` replaced.
    """

    params: list[torch.Tensor]
    buffers: dict[str, list[torch.Tensor]]
    count: int = 0
    last_alpha: float | None = None
    rollbacks: int = 0

    @property
    def slow(self) -> list[torch.Tensor]:
        """The slow weights φ, one tensor per parameter."""
        return self.buffers[SLOW_BUFFER]

    @property
    def momentum(self) -> list[torch.Tensor] | None:
        """The slow copies of the inner momentum (``pullback="pullback"``), else ``None``."""
        return self.buffers.get("lookahead_momentum")

    @property
    def start_grads(self) -> list[torch.Tensor] | None:
        """Adaptive mode: ∇L(θ_{t,0}) of the current cycle, else ``None``."""
        return self.buffers.get("lookahead_start_grad")


def slow_dtype_of(param: torch.Tensor, slow_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of ``param``'s slow copy: ``slow_dtype`` for a narrower floating parameter."""
    if slow_dtype is not None and param.is_floating_point() and param.dtype.itemsize < slow_dtype.itemsize:
        return slow_dtype
    return param.dtype


def buffer_dtype(key: str, param: torch.Tensor, slow_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of ``param``'s buffer ``key``: the slow dtype for φ, the parameter's otherwise."""
    return slow_dtype_of(param, slow_dtype) if key == SLOW_BUFFER else param.dtype


def new_group_state(
    params: list[torch.Tensor], buffer_keys: Sequence[str], slow_dtype: torch.dtype | None,
    slow_device: torch.device | None = None,
) -> GroupState:
    """A group's state at adoption: φ₀ a copy of each parameter, the other buffers zero.

    With ``slow_device`` (the CPU), φ₀ is in pinned host memory (`_offload.host_copy`).
    """
    buffers: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        if slow_device is not None:
            from ._offload import host_copy

            buffers[SLOW_BUFFER] = [host_copy(p, slow_dtype_of(p, slow_dtype)) for p in params]
        else:
            buffers[SLOW_BUFFER] = [
                p.detach().to(dtype=slow_dtype_of(p, slow_dtype), memory_format=torch.preserve_format,
                              copy=True)
                for p in params
            ]
        for key in buffer_keys:
            buffers[key] = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
    return GroupState(params, buffers)


def check_group(where: str, group: Mapping[str, Any], k: int, alpha: float, alpha_policy: Any) -> None:
    """A group Lookahead can adopt: its settings, its parameters, and the α mode's own limits."""
    _, alpha_ = check_group_settings(where, group, k, alpha)
    alpha_policy.check_group_alpha(f"{where}['lookahead_alpha']", alpha_)
    seen: set[int] = set()
    for i, param in enumerate(group["params"]):
        check_param(f"{where}['params'][{i}]", param)
        if id(param) in seen:
            raise ValueError(
                f"{where}['params'][{i}] appears twice in the group; Lookahead would sync it twice"
            )
        seen.add(id(param))
        alpha_policy.check_param(f"{where}['params'][{i}]", param)


def _byte_extent(t: torch.Tensor) -> tuple[int, int]:
    """``[first, last + 1)`` byte addresses ``t`` can touch (its strides' hull)."""
    start = t.data_ptr()
    low = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if st < 0)
    high = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if st > 0)
    return start + low * t.element_size(), start + (high + 1) * t.element_size()


def check_no_overlap(named: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Refuse parameters whose memory overlaps (views of one tensor, such as ``base[:4]`` and ``base[2:]``).

    Each parameter gets its own slow copy; shared elements would have two,
    which diverge at the first sync, and the in-place swap of `slow_weights`
    could not restore θ. Compared by the hull of each tensor's bytes (views
    interleaved without sharing an element are refused too: rare, and the
    message says why). Tensors without memory (meta) are skipped.

    Args:
        named: ``(where, parameter)`` pairs; ``where`` names it in the message.

    Raises:
        ValueError: two of them overlap.
    """
    extents = []
    for where, param in named:
        local = _distributed.local(param)
        if local.numel() == 0 or local.device.type == "meta":
            continue
        if torch._debug_has_internal_overlap(local) == 1:  # 1: yes (0: no, 2: too hard to tell)
            raise ValueError(
                f"{where} overlaps itself (a stride of 0, as expand() makes): torch cannot "
                "write to it in place; pass a tensor whose elements have their own memory "
                "(e.g. .clone())"
            )
        first, end = _byte_extent(local)
        extents.append((str(local.device), first, end, where))
    extents.sort()
    for (device_a, _, end_a, where_a), (device_b, first_b, _, where_b) in zip(extents, extents[1:]):
        if device_a == device_b and first_b < end_a:
            raise ValueError(
                f"{where_a} and {where_b} share memory (views of one tensor?): each parameter "
                "needs its own slow copy, and shared elements would get two that diverge; "
                "make them separate tensors"
            )


def local_pairs(groups: Sequence[GroupState]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every (θ, φ) pair as the tensors this rank holds (a DTensor's local shard)."""
    fast: list[torch.Tensor] = []
    slow: list[torch.Tensor] = []
    for group in groups:
        fast.extend(_distributed.locals_(group.params))
        slow.extend(_distributed.locals_(group.slow))
    return fast, slow


def check_placement(g: int, group: GroupState, slow_dtype: torch.dtype | None,
                    slow_device: torch.device | None = None) -> None:
    """Refuse a parameter moved or cast after its slow copy was taken (before any change).

    Runs before every sync, over every parameter, so the usual case (a
    plain tensor of the slow copy's dtype, shape and device) is tested
    first with the fewest attribute reads: 200 parameters cost ~0.2 ms
    instead of ~0.65 ms (see the Performance page).
    """
    dtensor = _distributed.dtensor_type()
    for i, (p, s) in enumerate(zip(group.params, group.slow)):
        if (
            p.dtype is s.dtype
            and p.shape == s.shape
            and (p.device == s.device if slow_device is None else s.device == slow_device)
            and (dtensor is None or not (isinstance(p, dtensor) or isinstance(s, dtensor)))
        ):
            continue
        _check_pair_placement(g, i, p, s, slow_dtype, slow_device)


def _check_pair_placement(
    g: int, i: int, p: torch.Tensor, s: torch.Tensor, slow_dtype: torch.dtype | None,
    slow_device: torch.device | None = None,
) -> None:
    """`check_placement` of one pair: a wider slow copy, a DTensor, or an error."""
    moved = (p.device != s.device if slow_device is None
             else s.device != slow_device or p.device.type != "cuda")
    if moved or p.shape != s.shape or s.dtype != slow_dtype_of(p, slow_dtype):
        raise RuntimeError(
            f"param_groups[{g}]['params'][{i}] is now {p.dtype} {tuple(p.shape)} on "
            f"{p.device}, its slow copy {s.dtype} {tuple(s.shape)} on {s.device}: move "
            "or cast the model before building the optimizer"
        )
    mismatch = _distributed.layout_mismatch(p, s)
    if mismatch is not None:
        raise RuntimeError(f"param_groups[{g}]['params'][{i}]: {mismatch}")


def adopt_replaced_params(
    g: int, group: GroupState, params: list[Any], slow_dtype: torch.dtype | None, alpha_policy: Any
) -> None:
    """Keep group g's slow weights for parameters that replaced its own, or refuse.

    Sharding a model after its optimizer was built replaces each parameter
    by a DTensor (Accelerate's FSDP2 ``prepare()`` swaps the optimizer's
    parameters for the ``fully_shard`` ones). At a cycle boundary θ = φ, so
    a new parameter of the same shape and dtype holding exactly the values
    of its slow weights (in the parameter's dtype) is the same parameter laid
    out anew: its slow copy (and every other buffer) is carried over in the
    new layout, each rank keeping its own shard, without communication.
    Anything else is refused before anything changes.

    Raises:
        RuntimeError: mid-cycle, another number of parameters, another shape
            or dtype, other values, or a sharded slow copy for a plain
            parameter (unsharding is not supported).
    """
    where = f"param_groups[{g}]['params']"

    def refuse(reason: str) -> RuntimeError:
        return RuntimeError(
            f"{where} changed after Lookahead took its slow copies ({reason}); add "
            "parameters with add_param_group instead, or replace parameters only by "
            "tensors holding the same values, at a cycle boundary"
        )

    if group.count != 0:
        raise refuse(f"{group.count} steps into a cycle of this group")
    if len(params) != len(group.slow):
        raise refuse(f"{len(params)} parameters instead of {len(group.slow)}")
    moved: dict[str, list[torch.Tensor]] = {key: [] for key in group.buffers}
    with torch.no_grad():
        for i, (p, phi) in enumerate(zip(params, group.slow)):
            check_param(f"{where}[{i}]", p)
            alpha_policy.check_param(f"{where}[{i}]", p)
            if tuple(p.shape) != tuple(phi.shape) or slow_dtype_of(p, slow_dtype) != phi.dtype:
                raise refuse(
                    f"[{i}] is {p.dtype} {tuple(p.shape)}, its slow copy {phi.dtype} {tuple(phi.shape)}"
                )
            if _distributed.is_dtensor(phi) and (
                not _distributed.is_dtensor(p) or phi.device_mesh != p.device_mesh
            ):
                raise refuse(
                    f"[{i}]'s slow copy is sharded and the new parameter is not sharded over "
                    "the same device mesh"
                )
            for key, buffers in group.buffers.items():
                relaid = _distributed.as_param_layout(f"{where}[{i}]", buffers[i], p)
                if relaid.device != p.device:  # fully_shard moves a CPU model to the mesh's device
                    relaid = relaid.to(p.device)
                moved[key].append(relaid)
            if not torch.equal(
                _distributed.local(p).detach(), _distributed.local(moved[SLOW_BUFFER][i]).to(p.dtype)
            ):
                raise refuse(f"[{i}] holds other values than its slow weights")
    group.buffers = moved
