"""The optimizer's options as strategy objects: each option's behaviour lives here, once.

`Lookahead` asks its two policies what to do at the points of the cycle
where an option matters; it never branches on the option itself.

- **Inner-state policy** (``pullback`` and ``reset_inner_state``): what a sync
  does to the inner optimizer's state (`KeepInnerState`, `ResetMomentum`,
  `PullbackMomentum`, `RestartInnerState`).
- **α policy** (``alpha_mode``): where a sync's α comes from (`FixedAlpha`,
  `AdaptiveAlpha`); the schedule itself is `lookahead_core.plan_step`.

A policy that needs a parameter-sized buffer per parameter names it with
``buffer_key``, the key of that buffer in a checkpoint's ``state[i]``; the
group state allocates, relays, saves and loads such buffers without knowing
what they are for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

import lookahead_core as lc

from . import _distributed, _kernels
from ._checks import check_fallback
from ._momentum import momentum_key

if TYPE_CHECKING:
    from ._groups import GroupState

__all__ = [
    "AdaptiveAlpha",
    "FixedAlpha",
    "InnerStatePolicy",
    "KeepInnerState",
    "PullbackMomentum",
    "ResetMomentum",
    "RestartInnerState",
    "alpha_policy",
    "inner_state_policy",
    "restart_inner_state",
]

MOMENTUM_BUFFER = "lookahead_momentum"
START_GRAD_BUFFER = "lookahead_start_grad"
LAST_ALPHA_KEY = "lookahead_last_alpha"
ALPHA_MIN_KEY = "lookahead_alpha_min"


# -- what a sync does to the inner optimizer's state ------------------------------------


class InnerStatePolicy:
    """``pullback="none"`` and the base of the others: the paper leaves the inner state alone."""

    pullback = "none"
    reset_inner_state = False
    buffer_key: str | None = None

    def after_sync(
        self, inner: torch.optim.Optimizer, synced: Sequence[tuple[GroupState, float]],
        scratch: dict[Any, torch.Tensor],
    ) -> None:
        """Act on the inner state of the groups just synced (each with its α)."""

    def zero_buffers(self, group: GroupState) -> None:
        """After a rollback: the policy's own buffers of ``group`` restart (at zero)."""
        if self.buffer_key is not None:
            buffers = _distributed.locals_(group.buffers[self.buffer_key])
            with torch.no_grad():
                torch._foreach_zero_([b for b in buffers if b.numel() > 0])

    def plain_load_value(self, param: torch.Tensor, inner_state: Mapping[Any, Any]) -> torch.Tensor | None:
        """The buffer's value after loading a plain inner checkpoint (``None``: zeros)."""
        return None


class KeepInnerState(InnerStatePolicy):
    """``pullback="none"``: the paper (the inner state is not touched by a sync)."""


class RestartInnerState(InnerStatePolicy):
    """``reset_inner_state=True``: a sync drops the group's per-parameter inner state, as optax's ``reset_state``."""

    reset_inner_state = True

    def after_sync(self, inner, synced, scratch) -> None:
        restart_inner_state(inner, (group for group, _ in synced))


class ResetMomentum(InnerStatePolicy):
    """``pullback="reset"``: a sync zeroes the inner momentum in place."""

    pullback = "reset"

    def __init__(self, key: str) -> None:
        self.key = key

    def after_sync(self, inner, synced, scratch) -> None:
        for group, _ in synced:
            buffers, _ = _momenta(inner, group, self.key, None)
            with torch.no_grad():
                torch._foreach_zero_([b for b in buffers if b.numel() > 0])


class PullbackMomentum(InnerStatePolicy):
    """``pullback="pullback"``: the momentum is interpolated like the weights.

    ``m_slow ← lerp(m_slow, m, α)``, then ``m ← m_slow``, by the weights'
    kernel, toward a slow copy of the momentum (the ``"lookahead_momentum"``
    buffer, zero at the start: the momentum of the initial weights).
    """

    pullback = "pullback"
    buffer_key = MOMENTUM_BUFFER

    def __init__(self, key: str) -> None:
        self.key = key

    def after_sync(self, inner, synced, scratch) -> None:
        for group, alpha in synced:
            buffers, caches = _momenta(inner, group, self.key, group.buffers[MOMENTUM_BUFFER])
            if buffers:
                _kernels.lerp_and_copy_(buffers, caches, alpha, scratch)

    def plain_load_value(self, param, inner_state) -> torch.Tensor | None:
        loaded = inner_state[param].get(self.key) if param in inner_state else None
        return loaded if isinstance(loaded, torch.Tensor) else None


def _momenta(
    inner: torch.optim.Optimizer, group: GroupState, key: str, caches: list[torch.Tensor] | None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The group's existing momentum buffers (local shards) and, if given, their slow copies."""
    state = inner.state
    buffers, matched = [], []
    for i, p in enumerate(group.params):
        buffer = state[p].get(key) if p in state else None
        if isinstance(buffer, torch.Tensor):
            buffers.append(buffer)
            if caches is not None:
                matched.append(caches[i])
    return _distributed.locals_(buffers), _distributed.locals_(matched)


def restart_inner_state(inner: torch.optim.Optimizer, groups: Iterable[GroupState]) -> None:
    """Drop the per-parameter inner state of ``groups`` (torch.optim recreates it lazily).

    A ZeroRedundancyOptimizer keeps the state of this rank's partition in its
    local optimizer: both are cleared.
    """
    states = _distributed.inner_state_dicts(inner)
    for group in groups:
        for p in group.params:
            for state in states:
                state.pop(p, None)


def inner_state_policy(
    optimizer: torch.optim.Optimizer, pullback: str, reset_inner_state: bool
) -> InnerStatePolicy:
    """The policy of validated ``pullback`` and ``reset_inner_state`` for ``optimizer``.

    Raises:
        ValueError: both options at once, or a pullback mode with no
            momentum to act on in this inner optimizer.
    """
    if pullback != "none" and reset_inner_state:
        raise ValueError(
            f"pullback={pullback!r} and reset_inner_state=True cannot be combined: the "
            "state reset would discard what the pullback computes"
        )
    if reset_inner_state:
        return RestartInnerState()
    if pullback == "none":
        return KeepInnerState()
    key = momentum_key(optimizer)
    if key is None:
        raise ValueError(
            f"pullback={pullback!r} has no mapping for {type(optimizer).__name__}: it is "
            "defined for torch.optim.SGD (momentum_buffer) and torch.optim.Adam/AdamW "
            "(exp_avg); use pullback='none', or reset_inner_state=True to restart any "
            "optimizer's state at each sync"
        )
    if key == "momentum_buffer" and all(
        float(group.get("momentum", 0.0)) == 0.0 for group in optimizer.param_groups
    ):
        raise ValueError(
            f"pullback={pullback!r} needs momentum: every param group of this SGD has "
            "momentum=0, so there is no momentum_buffer to act on"
        )
    return PullbackMomentum(key) if pullback == "pullback" else ResetMomentum(key)


# -- where a sync's α comes from ----------------------------------------------------------


class FixedAlpha:
    """``alpha_mode="fixed"`` (the paper): each group syncs with its ``lookahead_alpha``."""

    mode = "fixed"
    buffer_key: str | None = None
    checkpoint_keys: tuple[str, ...] = ()

    def __init__(self, alpha_min: float) -> None:
        self.alpha_min = alpha_min  # validated in both modes, used only by AdaptiveAlpha

    def check_group_alpha(self, where: str, alpha: float, alpha_min: float | None = None) -> float:
        """A group's ``lookahead_alpha`` as this mode needs it (any α in [0, 1] when fixed)."""
        return alpha

    def check_param(self, where: str, param: torch.Tensor) -> None:
        """Parameters the mode supports (all of them with a fixed α)."""

    def record_sync(self, group: GroupState, alpha: float) -> None:
        """After a sync of ``group`` with ``alpha``: nothing to remember with a fixed α."""

    def record_start(self, groups: Sequence[GroupState]) -> None:
        """Nothing to record with a fixed α (`lookahead_core.plan_step` never asks)."""

    def estimate(self, groups: Sequence[GroupState], fallbacks: Sequence[float]) -> list[float]:
        raise NotImplementedError("a fixed α is never estimated")  # plan_step never asks

    def group_scalars(self, group: GroupState) -> dict[str, Any]:
        """This mode's per-group checkpoint scalars (none)."""
        return {}

    def legacy_scalars(self, saved: Mapping[str, Any], section: Mapping[str, Any]) -> Mapping[str, Any]:
        """A 0.1.0 group's scalars: 0.1.0 kept ``alpha_min`` in its section (adaptive mode only)."""
        return saved

    def load_group_scalars(self, where: str, saved: Mapping[str, Any]) -> tuple[float, float | None]:
        """``(alpha_min, last_alpha)`` of a saved group; a fixed-α checkpoint has neither."""
        for key in (LAST_ALPHA_KEY, ALPHA_MIN_KEY):
            if key in saved:
                raise ValueError(f"{where} has {key!r}, but this optimizer has alpha_mode='fixed'")
        return self.alpha_min, None

    def repr_fields(self, groups: Sequence[GroupState]) -> str:
        return ""


class AdaptiveAlpha(FixedAlpha):
    """``alpha_mode="adaptive"``: α of each scheduled sync is Proposition 1's α* (eq. 0.3), estimated.

    The cycle is k inner steps plus one estimate call (`lookahead_core.plan_step`);
    the first inner step records ∇L(θ_{t,0}) in the ``"lookahead_start_grad"``
    buffers, the estimate call reads ∇L(θ_{t,k}) from ``p.grad``.
    """

    mode = "adaptive"
    buffer_key = START_GRAD_BUFFER
    checkpoint_keys = (LAST_ALPHA_KEY, ALPHA_MIN_KEY)

    def check_group_alpha(self, where: str, alpha: float, alpha_min: float | None = None) -> float:
        """The fallback α must lie in ``[alpha_min, 1]`` (this optimizer's, or a checkpoint's)."""
        return check_fallback(where, alpha, self.alpha_min if alpha_min is None else alpha_min)

    def record_sync(self, group: GroupState, alpha: float) -> None:
        """The α of the group's latest sync, `last_alphas` and the checkpoint's ``lookahead_last_alpha``."""
        group.last_alpha = alpha

    def check_param(self, where: str, param: torch.Tensor) -> None:
        if _distributed.is_dtensor(param):
            raise NotImplementedError(
                f"{where} is a DTensor: alpha_mode='adaptive' does not support sharded parameters "
                "yet (the estimate's two sums would need an all-reduce over the mesh); use "
                "alpha_mode='fixed'"
            )
        if param.is_complex():
            raise ValueError(f"{where} is complex: alpha_mode='adaptive' needs real parameters")

    def record_start(self, groups: Sequence[GroupState]) -> None:
        """First inner step of a cycle: ∇L(θ_{t,0}) (``p.grad``, zero if ``None``) into the start buffers."""
        with torch.no_grad():
            for group in groups:
                for p, buffer in zip(group.params, group.buffers[START_GRAD_BUFFER]):
                    if p.grad is None:
                        buffer.zero_()
                    else:
                        buffer.copy_(p.grad)

    def estimate(self, groups: Sequence[GroupState], fallbacks: Sequence[float]) -> list[float]:
        """α of each group from its ``p.grad`` = ∇L(θ_{t,k}) (`lookahead_core.secant_alpha`).

        Each parameter's share comes from `lookahead_core.secant_products`
        (the core's formula and dtype rule) on the device; the shares of all
        groups reach the host at once (one sync) and are added in Python
        floats in parameter order. A parameter whose ``grad`` is ``None`` now
        contributes nothing.
        """
        terms: list[torch.Tensor] = []
        owners: list[int] = []
        with torch.no_grad():
            for g, group in enumerate(groups):
                start = group.buffers[START_GRAD_BUFFER]
                for p, phi, g0 in zip(group.params, group.slow, start):
                    if p.grad is None:
                        continue
                    terms.append(torch.stack(lc.secant_products(phi, p.detach(), g0, p.grad.detach())))
                    owners.append(g)
        sums = [[0.0, 0.0] for _ in groups]
        if terms:
            values = torch.stack([t.to(torch.float64) for t in terms]).tolist()
            for g, (numerator, denominator) in zip(owners, values):
                sums[g][0] += numerator
                sums[g][1] += denominator
        return [
            lc.secant_alpha(numerator, denominator, self.alpha_min, fallback)
            for (numerator, denominator), fallback in zip(sums, fallbacks)
        ]

    def group_scalars(self, group: GroupState) -> dict[str, Any]:
        return {LAST_ALPHA_KEY: group.last_alpha, ALPHA_MIN_KEY: self.alpha_min}

    def legacy_scalars(self, saved: Mapping[str, Any], section: Mapping[str, Any]) -> Mapping[str, Any]:
        return {ALPHA_MIN_KEY: section["alpha_min"], **saved}

    def load_group_scalars(self, where: str, saved: Mapping[str, Any]) -> tuple[float, float | None]:
        for key in self.checkpoint_keys:
            if key not in saved:
                raise ValueError(
                    f"{where} is missing {key!r}: a checkpoint of alpha_mode='fixed' does not "
                    "fit this optimizer (alpha_mode='adaptive')"
                )
        alpha_min = lc.check_alpha(saved[ALPHA_MIN_KEY], name=f"{where}[{ALPHA_MIN_KEY!r}]")
        last_alpha = saved[LAST_ALPHA_KEY]
        if isinstance(last_alpha, float) and last_alpha != last_alpha:
            raise ValueError(f"{where}[{LAST_ALPHA_KEY!r}] must be a float or None, got nan")
        return alpha_min, lc.check_last_alpha(last_alpha, alpha_min, name=f"{where}[{LAST_ALPHA_KEY!r}]")

    def repr_fields(self, groups: Sequence[GroupState]) -> str:
        last = [group.last_alpha for group in groups]
        return f"alpha_mode='adaptive', alpha_min={self.alpha_min}, last_alphas={last}, "


def alpha_policy(alpha_mode: str, alpha_min: float) -> FixedAlpha:
    """The policy of a validated ``alpha_mode``."""
    return AdaptiveAlpha(alpha_min) if alpha_mode == "adaptive" else FixedAlpha(alpha_min)
