"""``Lookahead``: a ``torch.optim.Optimizer`` that wraps any torch optimizer."""

from __future__ import annotations

import contextlib
import copy
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

import lookahead_core as lc

from . import _distributed, _kernels
from ._checks import (
    as_count,
    check_fallback,
    check_group_settings,
    check_nonfinite,
    check_param,
    check_pullback,
    check_slow_dtype,
    group_alpha,
    group_k,
    renamed,
)
from ._inner_step import inner_step
from ._momentum import momentum_key

__all__ = ["Lookahead"]

_FORMAT = 1
"""Version of the ``"lookahead"`` section of `Lookahead.state_dict`."""

_SLOW_KEY = "lookahead_slow"
_MOMENTUM_KEY = "lookahead_momentum"
_COUNT_KEY = "lookahead_count"
_START_GRAD_KEY = "lookahead_start_grad"
_LAST_ALPHA_KEY = "lookahead_last_alpha"

# torch.distributed.checkpoint.state_dict keeps only 'state' and 'param_groups'.
_NO_SECTION_HINT = (
    " (torch.distributed.checkpoint.state_dict drops it: use "
    "lookahead_torch.distributed.get_optimizer_state_dict / set_optimizer_state_dict)"
)

# Per-parameter state entries of torch.optim.SGD/Adam/AdamW that have the parameter's shape.
_PARAM_SHAPED_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


@dataclass
class _GroupSlots:
    """Lookahead's own state for one param group.

    Attributes:
        params: the group's ``params`` list when it was adopted (the same list
            object as ``group["params"]``, to notice a replaced list cheaply).
        slow: the slow weights φ, one tensor per parameter, same order.
        momentum: the slow copies of the inner momentum (``pullback="pullback"``), else ``None``.
        count: executed inner steps since this group's last sync; in adaptive
            mode ``count`` may equal k: the cycle's steps are done and the
            estimate call (which syncs) is pending.
        start_grads: adaptive mode: ∇L(θ_{t,0}), the gradients the cycle's first
            inner step received (the mode's one extra parameter-sized buffer),
            else ``None``.
        last_alpha: adaptive mode: the α of this group's most recent sync, or ``None``.
    """

    params: list[torch.Tensor]
    slow: list[torch.Tensor]
    momentum: list[torch.Tensor] | None
    count: int = 0
    start_grads: list[torch.Tensor] | None = None
    last_alpha: float | None = None


class Lookahead(torch.optim.Optimizer):
    """Lookahead (Zhang, Lucas, Hinton, Ba 2019, Algorithm 1) around any ``torch.optim.Optimizer``.

    The model's parameters are the fast weights θ; the inner optimizer A moves
    them (eq. 0.2). After every k-th executed inner step of a param group,
    that group's slow weights φ move toward them and the parameters restart
    from φ (the sync, whose result is the exponential moving average eq. 0.1):

    ```text
    θ ← θ + A(L, θ, d)                 (eq. 0.2, the inner optimizer's step)
    φ ← φ + α (θ − φ)                  (two-sided lerp, torch.lerp's formula)
    θ ← φ                              (a copy: θ and φ never share memory)
    ```

    φ₀ is a copy of each parameter taken here, at construction, on the
    parameter's device and in its dtype (or in ``slow_dtype``). Steps that do
    not complete a cycle do no Lookahead tensor work.

    The wrapper is a real ``torch.optim.Optimizer`` (``Optimizer.__init__`` runs),
    so step pre/post hooks, ``state_dict`` and ``load_state_dict`` hooks,
    ``isinstance`` checks, LR schedulers, ``GradScaler``, pickling and
    ``copy.deepcopy`` work. ``param_groups``, ``state`` and ``defaults`` are
    live views of the inner optimizer's: a scheduler attached to either
    object changes the learning rate the inner step uses.

    Per-group settings: a param group may carry ``lookahead_k`` and
    ``lookahead_alpha``; every group that does not gets them at construction
    (from ``k`` and ``alpha``; a group that already has them, set by you or by
    an earlier Lookahead around the same optimizer, keeps its values). They
    can be changed during training (``opt.param_groups[0]["lookahead_k"] = 10``);
    a new value is checked at the next `step`. Each group counts its executed
    steps and syncs when its count reaches its k.

    Distributed training: under DDP the parameters are replicated and every
    rank syncs identically, without communication. The slow copy of a DTensor
    parameter (FSDP2's ``fully_shard``) is a DTensor sharded like it, so each
    rank holds one copy of its own shard, and the sync runs on the local
    shards without communication. A ``ZeroRedundancyOptimizer`` works as the
    inner optimizer (the slow copy is then not partitioned). Checkpoints go
    through ``torch.distributed.checkpoint`` with
    `lookahead_torch.distributed.get_optimizer_state_dict` and
    `lookahead_torch.distributed.set_optimizer_state_dict`.

    Args:
        optimizer: the inner optimizer A, an instance of ``torch.optim.Optimizer``
            (SGD, Adam, AdamW, or any other). Build it on the model's final
            device and dtype; its parameters are the fast weights.
        k: synchronization period, an ``int`` >= 1 (bool rejected); the
            default of every group.
        alpha: slow weights step size, a finite real in [0, 1]; the default of
            every group. ``alpha = 1`` is the inner optimizer alone, ``alpha = 0``
            resets the parameters to φ₀ every k steps.
        pullback: what a sync does to the inner optimizer's momentum:
            ``"none"`` (the paper), ``"reset"`` (zeroed) or ``"pullback"``
            (interpolated like the weights). Mapped for SGD
            (``momentum_buffer``) and Adam/AdamW (``exp_avg``; ``exp_avg_sq``
            is left alone); any other inner optimizer is a ``ValueError``.
        reset_inner_state: restart the inner optimizer's per-parameter state
            (momentum, moments, step count) at each sync of a group, as optax's
            ``reset_state``. Cannot be combined with ``pullback``.
        slow_dtype: ``None`` (φ in each parameter's dtype) or ``torch.float32``
            / ``torch.float64``: parameters of a narrower floating dtype (e.g.
            float16/bfloat16 under ``slow_dtype=torch.float32``) keep their slow
            copy in ``slow_dtype``; the sync computes in it and rounds the
            result into the parameter.
        nonfinite: ``None`` (the paper) or ``"rollback"``: at a sync, a group
            whose fast weights hold inf or NaN is reset to its slow weights
            instead (the sync is skipped, its inner state restarts, and
            `rollbacks` counts it), so one blow-up loses k steps, not the run.
        alpha_mode: ``"fixed"`` (default, the paper) or ``"adaptive"``: each
            sync uses Proposition 1's α* (eq. 0.3) estimated from gradients
            (`lookahead_core.secant_alpha`), one α per param group, clipped to
            ``[alpha_min, 1]``; a group's ``lookahead_alpha`` is the fallback
            when the estimate is undefined. A cycle is then k inner steps plus
            one `step` call whose gradients (at θ_{t,k}) serve the estimate and
            the sync only. Costs one parameter-sized buffer (∇L(θ_{t,0})), one
            extra gradient per cycle and one host sync per estimate. Not
            supported for DTensor or complex parameters.
        alpha_min: lower end of the adaptive range, a finite real in [0, 1];
            validated in both modes, used only in adaptive mode.

    Raises:
        TypeError: an argument of the wrong type (the message names it).
        ValueError: an argument of the right type and a wrong value.

    Example:
        >>> import torch
        >>> from lookahead_torch import Lookahead
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=3, alpha=0.5)
        >>> for _ in range(6):
        ...     w.grad = -torch.ones(3)
        ...     opt.step()
        >>> w.detach()
        tensor([3., 3., 3.])
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        k: int = 5,
        alpha: float = 0.5,
        *,
        pullback: str = "none",
        reset_inner_state: bool = False,
        slow_dtype: torch.dtype | None = None,
        nonfinite: str | None = None,
        alpha_mode: str = "fixed",
        alpha_min: float = 0.1,
    ) -> None:
        if isinstance(optimizer, type):
            raise TypeError(
                "optimizer must be a torch.optim.Optimizer instance, got the class "
                f"{optimizer.__name__}; build it first, e.g. torch.optim.SGD(model.parameters(), lr=0.1)"
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer instance, got {type(optimizer).__name__}"
            )
        if isinstance(optimizer, Lookahead):
            # Both would keep their settings in the same param groups.
            raise ValueError(
                "optimizer is already a Lookahead; wrap its inner optimizer (.optimizer) instead"
            )
        k = lc.check_k(k)
        alpha, alpha_mode, alpha_min = lc.check_alpha_mode(alpha, alpha_mode, alpha_min)
        pullback = check_pullback(pullback)
        if not isinstance(reset_inner_state, bool):
            raise TypeError(
                f"reset_inner_state must be a bool, got {type(reset_inner_state).__name__}"
            )
        slow_dtype = check_slow_dtype(slow_dtype)
        nonfinite = check_nonfinite(nonfinite)
        if pullback != "none" and reset_inner_state:
            raise ValueError(
                f"pullback={pullback!r} and reset_inner_state=True cannot be combined: the "
                "state reset would discard what the pullback computes"
            )
        _distributed.check_inner(optimizer)
        key = momentum_key(optimizer) if pullback != "none" else None
        if pullback != "none":
            _check_momentum_mapping(optimizer, pullback, key)
        for g, group in enumerate(optimizer.param_groups):
            _check_group(f"optimizer.param_groups[{g}]", group, k, alpha, alpha_mode, alpha_min)

        # Plain attributes first: the property setters and add_param_group that
        # Optimizer.__init__ calls below read them.
        self._inner = optimizer
        self._k = k
        self._alpha = alpha
        self._pullback = pullback
        self._momentum_key = key
        self._reset_inner_state = reset_inner_state
        self._slow_dtype = slow_dtype
        self._nonfinite = nonfinite
        self._alpha_mode = alpha_mode
        self._alpha_min = alpha_min
        self._slots: list[_GroupSlots] = []
        self._scratch: dict[_kernels.ScratchKey, torch.Tensor] = {}
        self._rollbacks = 0
        self._swapped: tuple[list[torch.Tensor], list[torch.Tensor], list[Any]] | None = None
        self._constructing = True
        try:
            # Optimizer.__init__ sets defaults/state/param_groups (the setters keep
            # the inner's) and hands each of the inner's groups to add_param_group,
            # which adopts it: slow copies are created there, eagerly.
            super().__init__(optimizer.param_groups, optimizer.defaults)
        finally:
            self._constructing = False
        self._scratch = _kernels.make_scratch(*self._all_local_pairs())

    # -- live views of the inner optimizer ----------------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The inner optimizer's ``param_groups`` (the same list, live)."""
        return self._inner.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        if not self.__dict__.get("_constructing", False):
            self._inner.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        """The inner optimizer's per-parameter ``state`` (live)."""
        return self._inner.state

    @state.setter
    def state(self, value: Any) -> None:
        if not self.__dict__.get("_constructing", False):
            self._inner.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        """The inner optimizer's ``defaults`` (live)."""
        return self._inner.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        if not self.__dict__.get("_constructing", False):
            self._inner.defaults = value

    # -- read-only attributes -------------------------------------------------------------

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The inner optimizer A."""
        return self._inner

    @property
    def k(self) -> int:
        """Default synchronization period (a group's ``lookahead_k`` overrides it)."""
        return self._k

    @property
    def alpha(self) -> float:
        """Default slow step size α (a group's ``lookahead_alpha`` overrides it)."""
        return self._alpha

    @property
    def pullback(self) -> str:
        """What a sync does to the inner momentum: ``"none"``, ``"reset"`` or ``"pullback"``."""
        return self._pullback

    @property
    def alpha_mode(self) -> str:
        """``"fixed"`` (the paper) or ``"adaptive"`` (α estimated at each scheduled sync)."""
        return self._alpha_mode

    @property
    def alpha_min(self) -> float:
        """Lower end of the adaptive α range ``[alpha_min, 1]`` (unused with a fixed α)."""
        return self._alpha_min

    @property
    def last_alphas(self) -> tuple[float | None, ...]:
        """Adaptive mode: per group, the α of its most recent sync (``None`` before one)."""
        return tuple(slots.last_alpha for slots in self._slots)

    @property
    def counts(self) -> tuple[int, ...]:
        """Per group, the executed inner steps since its last sync."""
        return tuple(slots.count for slots in self._slots)

    @property
    def rollbacks(self) -> int:
        """How many group syncs ``nonfinite="rollback"`` replaced by a rollback."""
        return self._rollbacks

    @property
    def slow(self) -> tuple[tuple[torch.Tensor, ...], ...]:
        """The slow weights φ per group, one tensor per parameter (live; do not modify).

        They change at every sync and load; clone them to keep a snapshot.
        Inside `slow_weights` the parameters hold φ and are returned instead
        (for a ``slow_dtype`` copy, the exact slow tensor is returned).
        """
        return tuple(tuple(group) for group in self._current_slow())

    def __repr__(self) -> str:
        inner = repr(self._inner).replace("\n", "\n  ")
        return (
            f"Lookahead(k={self._k}, alpha={self._alpha}, pullback={self._pullback!r}, "
            f"reset_inner_state={self._reset_inner_state}, slow_dtype={self._slow_dtype}, "
            f"nonfinite={self._nonfinite!r}, {self._adaptive_repr()}counts={list(self.counts)},"
            f"\n  inner={inner})"
        )

    def _adaptive_repr(self) -> str:
        if self._alpha_mode == "fixed":
            return ""
        return (
            f"alpha_mode={self._alpha_mode!r}, alpha_min={self._alpha_min}, "
            f"last_alphas={list(self.last_alphas)}, "
        )

    # -- param groups ---------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group to the inner optimizer and create its slow copies now.

        The group may carry ``lookahead_k`` / ``lookahead_alpha``; otherwise it
        gets the defaults. Its cycle starts at this point: φ₀ of its parameters
        is their value now, and it syncs after its k-th executed step.

        Raises:
            TypeError, ValueError: what ``torch.optim.Optimizer.add_param_group``
                raises, a bad ``lookahead_k``/``lookahead_alpha``, a parameter
                that is not floating point, or a parameter listed twice. The
                optimizer is unchanged.
            RuntimeError: called inside `slow_weights`.
        """
        inner_groups = self._inner.param_groups
        if len(self._slots) < len(inner_groups) and param_group is inner_groups[len(self._slots)]:
            # Optimizer.__init__ hands over the inner optimizer's own groups: adopt them.
            self._adopt_group(param_group)
            return
        self._refuse_while_swapped("add_param_group")
        where = "param_group"
        check_group_settings(where, param_group, self._k, self._alpha)
        self._inner.add_param_group(param_group)
        added = self._inner.param_groups[-1]
        try:
            _check_group(where, added, self._k, self._alpha, self._alpha_mode, self._alpha_min)
            self._adopt_group(added)
        except BaseException:
            self._inner.param_groups.pop()
            raise

    def _adopt_group(self, group: dict[str, Any]) -> None:
        """Give ``group`` its Lookahead settings and slow copies (φ₀ = θ now)."""
        group.setdefault("lookahead_k", self._k)
        group.setdefault("lookahead_alpha", self._alpha)
        params = group["params"]
        with torch.no_grad():
            slow = [
                p.detach().to(dtype=self._slow_dtype_of(p), memory_format=torch.preserve_format, copy=True)
                for p in params
            ]
            momentum = (
                [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
                if self._pullback == "pullback"
                else None
            )
            start_grads = (
                [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
                if self._alpha_mode == "adaptive"
                else None
            )
        self._slots.append(_GroupSlots(params, slow, momentum, 0, start_grads))
        if not self._constructing:  # the constructor makes it once, for all groups
            self._scratch = _kernels.make_scratch(*self._all_local_pairs())

    def _slow_dtype_of(self, param: torch.Tensor) -> torch.dtype:
        wide = self._slow_dtype
        if wide is not None and param.is_floating_point() and param.dtype.itemsize < wide.itemsize:
            return wide
        return param.dtype

    def _all_local_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every (θ, φ) pair as the tensors this rank holds (a DTensor's local shard)."""
        fast: list[torch.Tensor] = []
        slow: list[torch.Tensor] = []
        for slots in self._slots:
            fast.extend(_distributed.locals_(slots.params))
            slow.extend(_distributed.locals_(slots.slow))
        return fast, slow

    def _check_structure(self) -> None:
        """Adopt groups added to the inner optimizer directly; refuse changed groups.

        A group whose parameters were replaced by tensors holding the same
        values, at a cycle boundary, keeps its slow weights, laid out like the
        new parameters (see `_adopt_replaced_params`). Cheap on every step:
        list identity in the usual case.
        """
        groups = self._inner.param_groups
        if len(groups) < len(self._slots):
            raise RuntimeError(
                f"the inner optimizer has {len(groups)} param groups, Lookahead holds slow "
                f"weights for {len(self._slots)}: param groups cannot be removed"
            )
        for g, (group, slots) in enumerate(zip(groups, self._slots)):
            params = group["params"]
            if params is slots.params:
                continue
            if len(params) != len(slots.params) or any(
                a is not b for a, b in zip(params, slots.params)
            ):
                self._adopt_replaced_params(g, params)
            slots.params = params
        for g in range(len(self._slots), len(groups)):
            # Added with inner.add_param_group: no step has touched it yet, so φ₀ = θ now.
            _check_group(
                f"param_groups[{g}]", groups[g], self._k, self._alpha, self._alpha_mode, self._alpha_min
            )
            self._adopt_group(groups[g])

    def _adopt_replaced_params(self, g: int, params: list[Any]) -> None:
        """Keep group g's slow weights for parameters that replaced its own, or refuse.

        Sharding a model after its optimizer was built replaces each parameter
        by a DTensor (Accelerate's FSDP2 ``prepare()`` swaps the optimizer's
        parameters for the ``fully_shard`` ones). At a cycle boundary θ = φ, so
        a new parameter of the same shape and dtype holding exactly the values
        of its slow weights (in the parameter's dtype) is the same parameter laid
        out anew: its slow copy (and pullback momentum copy) is carried over in
        the new layout, each rank keeping its own shard, without communication.
        Anything else is refused before anything changes.

        Raises:
            RuntimeError: mid-cycle, another number of parameters, another shape
                or dtype, other values, or a sharded slow copy for a plain
                parameter (unsharding is not supported).
        """
        slots = self._slots[g]
        where = f"param_groups[{g}]['params']"

        def refuse(reason: str) -> RuntimeError:
            return RuntimeError(
                f"{where} changed after Lookahead took its slow copies ({reason}); add "
                "parameters with add_param_group instead, or replace parameters only by "
                "tensors holding the same values, at a cycle boundary"
            )

        if slots.count != 0:
            raise refuse(f"{slots.count} steps into a cycle of this group")
        if len(params) != len(slots.slow):
            raise refuse(f"{len(params)} parameters instead of {len(slots.slow)}")
        slow, momentum = [], []
        with torch.no_grad():
            for i, (p, phi) in enumerate(zip(params, slots.slow)):
                check_param(f"{where}[{i}]", p)
                if self._alpha_mode == "adaptive":
                    _check_adaptive_param(f"{where}[{i}]", p)
                if tuple(p.shape) != tuple(phi.shape) or self._slow_dtype_of(p) != phi.dtype:
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
                relaid = _distributed.as_param_layout(f"{where}[{i}]", phi, p)
                if relaid.device != p.device:  # fully_shard moves a CPU model to the mesh's device
                    relaid = relaid.to(p.device)
                if not torch.equal(_distributed.local(p).detach(), _distributed.local(relaid).to(p.dtype)):
                    raise refuse(f"[{i}] holds other values than its slow weights")
                slow.append(relaid)
                if slots.momentum is not None:
                    moved = _distributed.as_param_layout(f"{where}[{i}]", slots.momentum[i], p)
                    momentum.append(moved if moved.device == p.device else moved.to(p.device))
        slots.slow = slow
        if slots.momentum is not None:
            slots.momentum = momentum
        if slots.start_grads is not None:  # mid-cycle is refused above: their values are stale
            slots.start_grads = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        self._scratch = _kernels.make_scratch(*self._all_local_pairs())

    def _schedule(self) -> list[tuple[int, float]]:
        """Each group's (k, α), checked: a bad value raises before anything changes."""
        schedule = []
        for g, group in enumerate(self._inner.param_groups):
            k = group.get("lookahead_k", self._k)
            alpha = group.get("lookahead_alpha", self._alpha)
            # Fast path for the values _adopt_group stores; anything else is checked
            # (and a NumPy or tensor scalar becomes a Python number).
            if type(k) is not int or k < 1:
                k = group_k(f"param_groups[{g}]", group, self._k)
            if type(alpha) is not float or not 0.0 <= alpha <= 1.0:
                alpha = group_alpha(f"param_groups[{g}]", group, self._alpha)
            if self._alpha_mode == "adaptive":
                check_fallback(f"param_groups[{g}]['lookahead_alpha']", alpha, self._alpha_min)
            schedule.append((k, alpha))
        return schedule

    # -- the algorithm --------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One inner step (eq. 0.2), then the sync of every group whose cycle it completes.

        Only a step that reaches the inner optimizer counts. ``GradScaler``
        does not call ``step`` when it finds inf/NaN gradients, so a skipped
        AMP step does not advance the schedule. The zero-gradient, ``lr = 0``
        step by which ``torch.distributed.checkpoint.state_dict`` initializes
        an empty optimizer state runs the inner step only: it does not count.

        Args:
            closure: passed to the inner optimizer's ``step`` (which
                re-evaluates the model with it, e.g. LBFGS).

        Returns:
            What the inner optimizer's ``step`` returns (the closure's loss).

        Raises:
            RuntimeError: called inside `slow_weights`.
            TypeError, ValueError: a group's ``lookahead_k``/``lookahead_alpha``
                was set to a bad value (nothing is changed).
        """
        self._refuse_while_swapped("step")
        self._check_structure()
        # torch's _init_optim_state steps only an optimizer whose state is empty.
        if not self._inner.state and _distributed.called_for_state_initialization():
            # torch.distributed.checkpoint creating the inner state with lr = 0 and zero
            # gradients: not a training step, so no count and no sync.
            return self._inner.step() if closure is None else self._inner.step(closure)
        schedule = self._schedule()
        if self._alpha_mode == "adaptive":
            return self._adaptive_step(closure, schedule)
        due = [g for g, slots in enumerate(self._slots) if slots.count + 1 >= schedule[g][0]]
        for g in due:  # only on sync steps; raises before the inner step changes anything
            self._check_placement(g)
        loss = inner_step(self._inner, closure)
        for slots in self._slots:
            slots.count += 1
        if due:
            self._sync_groups(due, schedule)
        return loss

    def _adaptive_step(
        self, closure: Callable[[], Any] | None, schedule: list[tuple[int, float]]
    ) -> Any:
        """`step` with ``alpha_mode="adaptive"``.

        A group whose count has reached its k is at its estimate call: its
        ``p.grad`` is ∇L(θ_{t,k}); α comes from it and the sync follows, and the
        inner optimizer does not see the group (its gradients are set to
        ``None`` during the inner step, so torch.optim skips its parameters,
        then restored). Every other group takes an inner step; one at count 0
        first copies its gradients, ∇L(θ_{t,0}), into its start buffers.
        """
        estimating = [g for g, slots in enumerate(self._slots) if slots.count >= schedule[g][0]]
        stepping = [g for g in range(len(self._slots)) if g not in estimating]
        for g in estimating:
            self._check_placement(g)
        loss = None
        if estimating and closure is not None:
            with torch.enable_grad():
                loss = closure()  # the gradients at θ_{t,k} the estimate reads
        alphas = self._estimate_alphas(estimating, schedule) if estimating else {}
        if stepping:
            with torch.no_grad():
                for g in stepping:
                    slots = self._slots[g]
                    if slots.count == 0 and slots.start_grads is not None:
                        for p, buffer in zip(slots.params, slots.start_grads):
                            if p.grad is None:
                                buffer.zero_()
                            else:
                                buffer.copy_(p.grad)
            hidden = [p for g in estimating for p in self._slots[g].params]
            stashed = [p.grad for p in hidden]
            inner_closure = closure
            if closure is not None and hidden:

                def inner_closure() -> Any:
                    result = closure()
                    for p in hidden:
                        p.grad = None
                    return result

            try:
                for p in hidden:
                    p.grad = None
                loss = inner_step(self._inner, inner_closure)
            finally:
                for p, grad in zip(hidden, stashed):
                    p.grad = grad
            for g in stepping:
                self._slots[g].count += 1
        if estimating:
            schedule = list(schedule)
            for g, alpha in alphas.items():
                schedule[g] = (schedule[g][0], alpha)
            for g in self._sync_groups(estimating, schedule):
                self._slots[g].last_alpha = alphas[g]
        return loss

    def _estimate_alphas(
        self, groups: list[int], schedule: list[tuple[int, float]]
    ) -> dict[int, float]:
        """Adaptive α of each group in ``groups`` (`lookahead_core.secant_alpha`, eq. 0.3).

        Per parameter with a gradient, with d = φ − θ: ``g₀·d`` and
        ``(g₀ − g)·d`` summed in the parameter's dtype (16-bit types in
        float32), as `lookahead_core.secant_alpha_terms`; then the per-parameter
        sums of all groups come to the host at once (one sync) and are added
        in Python floats, in parameter order. A parameter whose ``grad`` is
        ``None`` now contributes nothing.
        """
        terms: list[torch.Tensor] = []
        owners: list[int] = []
        with torch.no_grad():
            for g in groups:
                slots = self._slots[g]
                assert slots.start_grads is not None
                for p, phi, g0 in zip(slots.params, slots.slow, slots.start_grads):
                    if p.grad is None:
                        continue
                    theta, gk = p.detach(), p.grad.detach()
                    dtype = torch.promote_types(phi.dtype, theta.dtype)
                    if dtype.itemsize < 4:
                        dtype = torch.float32
                    phi_, theta_, g0_, gk_ = (t.to(dtype) for t in (phi, theta, g0, gk))
                    d = phi_ - theta_
                    terms.append(torch.stack([torch.sum(g0_ * d), torch.sum((g0_ - gk_) * d)]))
                    owners.append(g)
        sums = {g: [0.0, 0.0] for g in groups}
        if terms:
            values = torch.stack([t.to(torch.float64) for t in terms]).tolist()
            for g, (numerator, denominator) in zip(owners, values):
                sums[g][0] += numerator
                sums[g][1] += denominator
        return {
            g: lc.secant_alpha(sums[g][0], sums[g][1], self._alpha_min, schedule[g][1])
            for g in groups
        }

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The inner optimizer's ``zero_grad(set_to_none=...)``."""
        self._inner.zero_grad(set_to_none=set_to_none)

    def sync(self) -> None:
        """The outer update of every group now (``φ ← lerp(φ, θ, α)``, ``θ ← φ``).

        Whatever the position in the cycle; every group's cycle restarts.
        ``pullback``, ``reset_inner_state`` and ``nonfinite`` act as at a
        scheduled sync.

        Raises:
            RuntimeError: called inside `slow_weights`.
        """
        self._refuse_while_swapped("sync")
        self._check_structure()
        schedule = self._schedule()
        for g in range(len(self._slots)):
            self._check_placement(g)
        for g in self._sync_groups(list(range(len(self._slots))), schedule):
            if self._alpha_mode == "adaptive":
                self._slots[g].last_alpha = schedule[g][1]  # an explicit sync uses the fixed α

    def _sync_groups(self, due: list[int], schedule: list[tuple[int, float]]) -> list[int]:
        """The sync of groups ``due`` (their placement already checked).

        Returns:
            The groups synced (``due`` less those ``nonfinite="rollback"`` rolled back).
        """
        if self._nonfinite == "rollback":
            due = [g for g in due if not self._rolled_back(g)]
        by_alpha: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for g in due:
            # DTensor pairs are sharded alike: the elementwise sync runs on the local
            # shards, with no communication.
            fast, slow = by_alpha.setdefault(schedule[g][1], ([], []))
            fast.extend(_distributed.locals_(self._slots[g].params))
            slow.extend(_distributed.locals_(self._slots[g].slow))
        for alpha, (fast, slow) in by_alpha.items():
            _kernels.lerp_and_copy_(fast, slow, alpha, self._scratch)
        if self._pullback != "none":
            self._act_on_momentum(due, schedule)
        if self._reset_inner_state:
            self._restart_inner_state(due)
        for g in due:
            self._slots[g].count = 0
        return due

    def _rolled_back(self, g: int) -> bool:
        """``nonfinite="rollback"``: if group g's fast weights are not finite, θ ← φ."""
        slots = self._slots[g]
        fast = _distributed.locals_(slots.params)
        finite = _kernels.all_finite(fast)
        # Sharded parameters: every rank must take the same decision.
        if _distributed.all_ranks_finite(finite, slots.params):
            return False
        _kernels.copy_(fast, _distributed.locals_(slots.slow))
        # A blow-up has nearly always poisoned the moments too: restart them.
        self._restart_inner_state([g])
        if slots.momentum is not None:
            with torch.no_grad():
                torch._foreach_zero_([m for m in _distributed.locals_(slots.momentum) if m.numel() > 0])
        slots.count = 0
        self._rollbacks += 1
        return True

    def _act_on_momentum(self, due: list[int], schedule: list[tuple[int, float]]) -> None:
        key = self._momentum_key
        state = self._inner.state
        for g in due:
            slots = self._slots[g]
            buffers, caches = [], []
            for i, p in enumerate(slots.params):
                buffer = state[p].get(key) if p in state else None
                if isinstance(buffer, torch.Tensor):
                    buffers.append(buffer)
                    if slots.momentum is not None:
                        caches.append(slots.momentum[i])
            if not buffers:
                continue
            buffers, caches = _distributed.locals_(buffers), _distributed.locals_(caches)
            if self._pullback == "reset":
                with torch.no_grad():
                    torch._foreach_zero_([b for b in buffers if b.numel() > 0])
            else:
                _kernels.lerp_and_copy_(buffers, caches, schedule[g][1], self._scratch)

    def _restart_inner_state(self, groups: Iterable[int]) -> None:
        # A ZeroRedundancyOptimizer keeps the state of this rank's partition in its
        # local optimizer: clear both.
        states = _distributed.inner_state_dicts(self._inner)
        for g in groups:
            for p in self._slots[g].params:
                for state in states:
                    state.pop(p, None)

    # -- evaluation with the slow weights -------------------------------------------------

    @contextlib.contextmanager
    def slow_weights(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Context manager: the parameters hold φ inside, θ again after.

        Same-dtype parameters exchange contents with their slow copies in place
        (three XORs of the bits: no third copy, exact both ways). With a
        ``slow_dtype`` copy the parameter receives φ rounded to its dtype and
        its fast values wait in a temporary of the parameter's size. The
        parameters stay the same tensor objects, so the inner optimizer's
        state (keyed by parameter) is untouched. On exit, also on an
        exception, the parameters get θ back bit for bit.

        Meant for evaluation: do not modify the parameters inside (for
        same-dtype copies such changes end up in φ; with ``slow_dtype`` they
        are discarded). `state_dict` works inside; `step`, `sync`,
        `load_state_dict`, `add_param_group` and nesting raise ``RuntimeError``.

        Yields:
            All parameters, group by group, now holding φ.
        """
        self._refuse_while_swapped("slow_weights")
        self._check_structure()
        fast: list[torch.Tensor] = []
        slow: list[torch.Tensor] = []
        for g, slots in enumerate(self._slots):
            self._check_placement(g)
            fast.extend(_distributed.local(p.detach()) for p in slots.params)
            slow.extend(_distributed.locals_(slots.slow))
        stashes = _kernels.swap_(fast, slow)
        self._swapped = (fast, slow, stashes)
        try:
            yield tuple(p for slots in self._slots for p in slots.params)
        finally:
            _kernels.unswap_(fast, slow, stashes)
            self._swapped = None

    def _current_slow(self) -> list[list[torch.Tensor]]:
        """φ per group: the slow buffers, or the parameters that hold φ inside `slow_weights`."""
        if self._swapped is None:
            return [list(slots.slow) for slots in self._slots]
        return [
            [p if s.dtype == p.dtype else s for p, s in zip(slots.params, slots.slow)]
            for slots in self._slots
        ]

    def slow_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``module.state_dict()`` with the slow weights φ in place of the parameters.

        A plain model checkpoint of the slow weights, e.g. to save or export
        the model Lookahead is averaging toward: ``torch.save(opt.slow_state_dict(model), f)``
        and later ``model.load_state_dict(torch.load(f))``. Each φ is cloned
        and cast to its parameter's dtype; buffers (batch-norm statistics) and
        parameters this optimizer does not hold are cloned as they are.

        Args:
            module: the ``torch.nn.Module`` whose parameters this optimizer holds.

        Raises:
            TypeError: ``module`` is not a ``torch.nn.Module``.
        """
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        slow_of = {
            id(p): s
            for slots, current in zip(self._slots, self._current_slow())
            for p, s in zip(slots.params, current)
        }
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, value in module.state_dict(keep_vars=True).items():
                phi = slow_of.get(id(value))
                if phi is None:
                    out[name] = value.detach().clone()
                else:
                    out[name] = phi.detach().to(dtype=value.dtype, copy=True)
        return out

    def _check_placement(self, g: int) -> None:
        """Refuse a parameter moved or cast after its slow copy was taken (before any change).

        Runs before every sync, over every parameter, so the usual case (a
        plain tensor of the slow copy's dtype, shape and device) is tested
        first with the fewest attribute reads: 200 parameters cost ~0.2 ms
        instead of ~0.65 ms (see the Performance page).
        """
        slots = self._slots[g]
        dtensor = _distributed.dtensor_type()
        for i, (p, s) in enumerate(zip(slots.params, slots.slow)):
            if (
                p.dtype is s.dtype
                and p.shape == s.shape
                and p.device == s.device
                and (dtensor is None or not (isinstance(p, dtensor) or isinstance(s, dtensor)))
            ):
                continue
            self._check_pair_placement(g, i, p, s)

    def _check_pair_placement(self, g: int, i: int, p: torch.Tensor, s: torch.Tensor) -> None:
        """`_check_placement` of one pair: a wider slow copy, a DTensor, or an error."""
        if p.device != s.device or p.shape != s.shape or s.dtype != self._slow_dtype_of(p):
            raise RuntimeError(
                f"param_groups[{g}]['params'][{i}] is now {p.dtype} {tuple(p.shape)} on "
                f"{p.device}, its slow copy {s.dtype} {tuple(s.shape)} on {s.device}: move "
                "or cast the model before building the optimizer"
            )
        mismatch = _distributed.layout_mismatch(p, s)
        if mismatch is not None:
            raise RuntimeError(f"param_groups[{g}]['params'][{i}]: {mismatch}")

    def _refuse_while_swapped(self, what: str) -> None:
        if self._swapped is not None:
            raise RuntimeError(
                f"{what}() cannot run inside slow_weights(): the parameters hold the slow "
                "weights there; leave the with-block first"
            )

    # -- checkpoints ----------------------------------------------------------------------

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's ``state_dict`` plus everything Lookahead holds.

        Layout (a ``torch.optim`` state dict, keyed by parameter index as the
        inner optimizer's, so (group, index) is ``param_groups[g]["params"][i]``):

        - ``state[i]``: the inner state of parameter i plus ``"lookahead_slow"``
          (φ, in the slow dtype) and, with ``pullback="pullback"``,
          ``"lookahead_momentum"``;
        - ``param_groups[g]``: the inner group plus ``"lookahead_k"``,
          ``"lookahead_alpha"`` and ``"lookahead_count"`` (the position in
          the cycle);
        - ``"lookahead"``: ``{"format", "k", "alpha", "pullback", "rollbacks"}``.

        In adaptive mode also: ``state[i]["lookahead_start_grad"]`` (∇L(θ_{t,0})),
        ``param_groups[g]["lookahead_last_alpha"]`` (a float or ``None``), and
        ``"alpha_mode"``, ``"alpha_min"`` in the ``"lookahead"`` section; the
        count may equal k (the estimate call is pending).

        As with ``torch.optim``, tensors are the live ones, not copies:
        serialize (``torch.save``) or clone before stepping again. Registered
        ``state_dict`` pre- and post-hooks run.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        if self._swapped is None:
            self._check_structure()
        inner_sd = self._inner.state_dict()
        current = self._current_slow()
        state = dict(inner_sd["state"])
        packed_groups = []
        for g, packed in enumerate(inner_sd["param_groups"]):
            slots = self._slots[g]
            packed = dict(packed)
            packed[_COUNT_KEY] = slots.count
            if slots.start_grads is not None:
                packed[_LAST_ALPHA_KEY] = slots.last_alpha
            for i, index in enumerate(packed["params"]):
                entry = dict(state.get(index, {}))  # never add keys to the inner's live dicts
                entry[_SLOW_KEY] = current[g][i]
                if slots.momentum is not None:
                    entry[_MOMENTUM_KEY] = slots.momentum[i]
                if slots.start_grads is not None:
                    entry[_START_GRAD_KEY] = slots.start_grads[i]
                state[index] = entry
            packed_groups.append(packed)
        state_dict: dict[str, Any] = {
            "state": state,
            "param_groups": packed_groups,
            "lookahead": self._lookahead_section(),
        }
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def _lookahead_section(self) -> dict[str, Any]:
        """The ``"lookahead"`` section of `state_dict` (a new dict of Python scalars)."""
        section: dict[str, Any] = {
            "format": _FORMAT,
            "k": self._k,
            "alpha": self._alpha,
            "pullback": self._pullback,
            "rollbacks": self._rollbacks,
        }
        if self._alpha_mode == "adaptive":  # fixed-mode checkpoints keep their layout
            section["alpha_mode"] = self._alpha_mode
            section["alpha_min"] = self._alpha_min
        return section

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a checkpoint of `state_dict`, or a plain inner-optimizer checkpoint.

        All or nothing: the structure, every ``lookahead_*`` entry (k, α,
        count, shapes and dtypes of the slow weights) and the shapes of the
        inner momentum/moment tensors are checked first; on any error the
        optimizer (and the parameters) are left exactly as they were. The
        caller's dict is never modified, and no tensor of it is shared with
        the optimizer afterwards. Tensors are cast to each parameter's device
        and dtype (slow weights to the slow dtype).

        A plain ``torch.optim`` checkpoint (no ``"lookahead"`` section, e.g.
        ``inner.state_dict()`` of a run without Lookahead) loads the inner
        state; the slow weights then restart from the current parameters
        (load the model first), every cycle restarts, and a pullback momentum
        copy restarts from the loaded momentum.

        Raises:
            TypeError, ValueError: the checkpoint does not fit this optimizer.
            RuntimeError: called inside `slow_weights`.
        """
        self._refuse_while_swapped("load_state_dict")
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        state_dict = dict(state_dict)  # shallow copy, as torch.optim does, for the hooks
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._check_structure()
        plan = self._plan_load(state_dict)
        self._inner.load_state_dict(plan.inner)  # validates before it changes anything
        self._commit_load(plan)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _plan_load(self, sd: Mapping[str, Any]) -> _LoadPlan:
        """Check ``sd`` completely and prepare what to load; change nothing."""
        extra = sorted(set(sd) - {"state", "param_groups", "lookahead"}, key=str)
        missing = [key for key in ("state", "param_groups") if key not in sd]
        if missing or extra:
            raise ValueError(
                "state_dict must have the keys 'state', 'param_groups' (and 'lookahead' for a "
                f"Lookahead checkpoint); missing {missing}, unexpected {extra}"
            )
        saved_state, saved_groups = sd["state"], sd["param_groups"]
        if not isinstance(saved_state, Mapping):
            raise TypeError(f"state_dict['state'] must be a dict, got {type(saved_state).__name__}")
        if not isinstance(saved_groups, (list, tuple)):
            raise TypeError(
                f"state_dict['param_groups'] must be a list, got {type(saved_groups).__name__}"
            )
        groups = self._inner.param_groups
        if len(saved_groups) != len(groups):
            raise ValueError(
                f"state_dict['param_groups'] has {len(saved_groups)} groups, this optimizer "
                f"has {len(groups)}"
            )
        lookahead = sd.get("lookahead")
        plain = lookahead is None
        k, alpha, rollbacks = self._k, self._alpha, 0
        alpha_min = self._alpha_min
        adaptive = self._alpha_mode == "adaptive"
        if not plain:
            k, alpha, rollbacks, alpha_min = self._check_section(lookahead)

        index_of: dict[Any, tuple[int, int]] = {}
        inner_groups = []
        counts = []
        last_alphas: list[float | None] = []
        for g, (saved, group) in enumerate(zip(saved_groups, groups)):
            where = f"state_dict['param_groups'][{g}]"
            if not isinstance(saved, Mapping):
                raise TypeError(f"{where} must be a dict, got {type(saved).__name__}")
            ids = saved.get("params")
            if not isinstance(ids, (list, tuple)):
                raise TypeError(f"{where}['params'] must be a list of parameter ids")
            if len(ids) != len(group["params"]):
                raise ValueError(
                    f"{where} has {len(ids)} parameters, param_groups[{g}] of this optimizer "
                    f"has {len(group['params'])}"
                )
            for i, pid in enumerate(ids):
                if pid in index_of:
                    raise ValueError(f"{where}['params'] repeats parameter id {pid!r}")
                index_of[pid] = (g, i)
            if plain:
                # A plain checkpoint has no opinion on Lookahead: keep this group's settings.
                default_k = group_k(f"param_groups[{g}]", group, self._k)
                default_alpha = group_alpha(f"param_groups[{g}]", group, self._alpha)
            else:
                default_k, default_alpha = k, alpha
            group_k_, group_alpha_ = check_group_settings(where, saved, default_k, default_alpha)
            if adaptive:
                check_fallback(f"{where}['lookahead_alpha']", group_alpha_, alpha_min)
            last_alphas.append(
                None if plain or not adaptive else _checked_last_alpha(where, saved, alpha_min)
            )
            if not adaptive and _LAST_ALPHA_KEY in saved:
                raise ValueError(
                    f"{where} has {_LAST_ALPHA_KEY!r}, but this optimizer has alpha_mode='fixed'"
                )
            inner_group = {
                key: value for key, value in saved.items() if key not in (_COUNT_KEY, _LAST_ALPHA_KEY)
            }
            inner_group["lookahead_k"], inner_group["lookahead_alpha"] = group_k_, group_alpha_
            if plain:
                if _COUNT_KEY in saved:
                    raise ValueError(
                        f"{where} has {_COUNT_KEY!r} but the state_dict has no 'lookahead' section"
                        f"{_NO_SECTION_HINT}"
                    )
                counts.append(0)
            else:
                if _COUNT_KEY not in saved:
                    raise ValueError(f"{where} is missing {_COUNT_KEY!r}")
                counts.append(as_count(f"{where}[{_COUNT_KEY!r}]", saved[_COUNT_KEY], group_k_, adaptive))
            inner_groups.append(inner_group)

        unknown = [pid for pid in saved_state if pid not in index_of]
        if unknown:
            raise ValueError(
                f"state_dict['state'] has entries for parameter ids {unknown[:8]} that no "
                "param group lists"
            )
        inner_state: dict[Any, dict[str, Any]] = {}
        slow: dict[tuple[int, int], torch.Tensor] = {}
        momentum: dict[tuple[int, int], torch.Tensor] = {}
        start_grads: dict[tuple[int, int], torch.Tensor] = {}
        for pid, (g, i) in index_of.items():
            param = groups[g]["params"][i]
            where = f"state_dict['state'][{pid!r}]"
            entry = saved_state.get(pid, {})
            if not isinstance(entry, Mapping):
                raise TypeError(f"{where} must be a dict, got {type(entry).__name__}")
            if plain:
                found = [key for key in (_SLOW_KEY, _MOMENTUM_KEY, _START_GRAD_KEY) if key in entry]
                if found:
                    raise ValueError(
                        f"{where} has {found} but the state_dict has no 'lookahead' section"
                        f"{_NO_SECTION_HINT}"
                    )
            else:
                if _SLOW_KEY not in entry:
                    raise ValueError(f"{where} is missing {_SLOW_KEY!r} (the slow weights)")
                slow[(g, i)] = _distributed.as_param_layout(
                    f"{where}[{_SLOW_KEY!r}]",
                    _checked_tensor(f"{where}[{_SLOW_KEY!r}]", entry[_SLOW_KEY], param),
                    param,
                )
                if self._pullback == "pullback":
                    if _MOMENTUM_KEY not in entry:
                        raise ValueError(f"{where} is missing {_MOMENTUM_KEY!r}")
                    momentum[(g, i)] = _distributed.as_param_layout(
                        f"{where}[{_MOMENTUM_KEY!r}]",
                        _checked_tensor(f"{where}[{_MOMENTUM_KEY!r}]", entry[_MOMENTUM_KEY], param),
                        param,
                    )
                elif _MOMENTUM_KEY in entry:
                    raise ValueError(
                        f"{where} has {_MOMENTUM_KEY!r}, but this optimizer has "
                        f"pullback={self._pullback!r}"
                    )
                if adaptive:
                    if _START_GRAD_KEY not in entry:
                        raise ValueError(f"{where} is missing {_START_GRAD_KEY!r}")
                    start_grads[(g, i)] = _checked_tensor(
                        f"{where}[{_START_GRAD_KEY!r}]", entry[_START_GRAD_KEY], param
                    )
                elif _START_GRAD_KEY in entry:
                    raise ValueError(
                        f"{where} has {_START_GRAD_KEY!r}, but this optimizer has alpha_mode='fixed'"
                    )
            inner_entry = self._checked_inner_entry(where, entry, param)
            if inner_entry:
                inner_state[pid] = inner_entry

        inner_sd = {"state": inner_state, "param_groups": inner_groups}
        # Buffers on each parameter's current device and dtype, allocated now so that an
        # allocation failure also happens before anything changes. They differ from the
        # current ones only for parameters moved or cast after construction (Accelerate's
        # prepare() moves the model, then round-trips the state dict: φ follows).
        slow_buffers, momentum_buffers, start_buffers = {}, {}, {}
        for g, slots in enumerate(self._slots):
            for i, param in enumerate(slots.params):
                slow_buffers[(g, i)] = _buffer_for(slots.slow[i], param, self._slow_dtype_of(param))
                if slots.momentum is not None:
                    momentum_buffers[(g, i)] = _buffer_for(slots.momentum[i], param, param.dtype)
                if slots.start_grads is not None:
                    start_buffers[(g, i)] = _buffer_for(slots.start_grads[i], param, param.dtype)
        return _LoadPlan(inner_sd, plain, k, alpha, rollbacks, counts, slow, momentum,
                         slow_buffers, momentum_buffers, alpha_min, last_alphas, start_grads,
                         start_buffers)

    def _check_section(self, section: Any) -> tuple[int, float, int, float]:
        where = "state_dict['lookahead']"
        if not isinstance(section, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(section).__name__}")
        saved_mode = section.get("alpha_mode", "fixed")
        if saved_mode != self._alpha_mode:
            raise ValueError(
                f"{where}['alpha_mode'] is {saved_mode!r} (a missing key means 'fixed'), but this "
                f"optimizer has alpha_mode={self._alpha_mode!r}"
            )
        expected = {"format", "k", "alpha", "pullback", "rollbacks"}
        if self._alpha_mode == "adaptive":
            expected |= {"alpha_mode", "alpha_min"}
        if set(section) != expected:
            raise ValueError(
                f"{where} must have the keys {sorted(expected)}, got {sorted(map(str, section))}"
            )
        if section["format"] != _FORMAT:
            raise ValueError(f"{where}['format'] must be {_FORMAT}, got {section['format']!r}")
        k = renamed(f"{where}['k']", lc.check_k, section["k"])
        alpha = renamed(f"{where}['alpha']", lc.check_alpha, section["alpha"])
        alpha_min = self._alpha_min
        if self._alpha_mode == "adaptive":
            alpha_min = renamed(f"{where}['alpha_min']", lc.check_alpha, section["alpha_min"])
            check_fallback(f"{where}['alpha']", alpha, alpha_min)
        if section["pullback"] != self._pullback:
            raise ValueError(
                f"{where}['pullback'] is {section['pullback']!r}, but this optimizer has "
                f"pullback={self._pullback!r}"
            )
        rollbacks = section["rollbacks"]
        if isinstance(rollbacks, bool) or not isinstance(rollbacks, numbers.Integral) or rollbacks < 0:
            raise ValueError(f"{where}['rollbacks'] must be an int >= 0, got {rollbacks!r}")
        return k, alpha, int(rollbacks), alpha_min

    def _checked_inner_entry(
        self, where: str, entry: Mapping[str, Any], param: torch.Tensor
    ) -> dict[str, Any]:
        """The inner optimizer's part of a parameter's entry, checked, with private tensors.

        Tensors are copied (onto the parameter's device, except ``step``,
        which torch.optim keeps where it is), so the caller's dict is never
        shared; torch.optim then casts floating tensors to the parameter's dtype.
        """
        live = self._inner.state.get(param, {}) if param in self._inner.state else {}
        out: dict[str, Any] = {}
        for key, value in entry.items():
            if key in (_SLOW_KEY, _MOMENTUM_KEY, _START_GRAD_KEY):
                continue
            if isinstance(value, torch.Tensor):
                template = live.get(key)
                if key in _PARAM_SHAPED_KEYS:
                    _checked_tensor(f"{where}[{key!r}]", value, param)
                elif isinstance(template, torch.Tensor) and value.shape != template.shape:
                    raise ValueError(
                        f"{where}[{key!r}] must have shape {tuple(template.shape)}, got "
                        f"{tuple(value.shape)}"
                    )
                value = value.detach().clone() if key == "step" else value.detach().to(
                    device=param.device, copy=True
                )
            else:
                value = copy.deepcopy(value)
            out[key] = value
        return out

    def _commit_load(self, plan: _LoadPlan) -> None:
        """Install what `_plan_load` checked (after the inner optimizer loaded its part)."""
        state = self._inner.state
        with torch.no_grad():
            for g, slots in enumerate(self._slots):
                for i, p in enumerate(slots.params):
                    # DTensors: laid out like the parameter (see _plan_load), so shard to shard.
                    slots.slow[i] = plan.slow_buffers[(g, i)]
                    _copy_into(slots.slow[i], p.detach() if plan.plain else plan.slow[(g, i)])
                    if slots.momentum is None:
                        continue
                    slots.momentum[i] = plan.momentum_buffers[(g, i)]
                    if not plan.plain:
                        _copy_into(slots.momentum[i], plan.momentum[(g, i)])
                        continue
                    loaded = state[p].get(self._momentum_key) if p in state else None
                    if isinstance(loaded, torch.Tensor):
                        _copy_into(slots.momentum[i], loaded)
                    else:
                        _distributed.local(slots.momentum[i]).zero_()
                if slots.start_grads is not None:
                    slots.start_grads = [plan.start_buffers[(g, i)] for i in range(len(slots.params))]
                    for i, buffer in enumerate(slots.start_grads):
                        if plan.plain:
                            buffer.zero_()
                        else:
                            buffer.copy_(plan.start_grads[(g, i)])
                    slots.last_alpha = plan.last_alphas[g]
                slots.count = plan.counts[g]
        self._k, self._alpha, self._rollbacks = plan.k, plan.alpha, plan.rollbacks
        self._alpha_min = plan.alpha_min
        self._scratch = _kernels.make_scratch(*self._all_local_pairs())

    # -- pickling and copying -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        if self._swapped is not None:
            raise RuntimeError(
                "a Lookahead optimizer cannot be pickled or copied inside slow_weights()"
            )
        # Hooks, scheduler patches and scratch buffers are not state (torch.optim
        # drops hooks on pickling too); everything else is.
        return {
            "inner": self._inner,
            "k": self._k,
            "alpha": self._alpha,
            "pullback": self._pullback,
            "momentum_key": self._momentum_key,
            "reset_inner_state": self._reset_inner_state,
            "slow_dtype": self._slow_dtype,
            "nonfinite": self._nonfinite,
            "alpha_mode": self._alpha_mode,
            "alpha_min": self._alpha_min,
            "slots": self._slots,
            "rollbacks": self._rollbacks,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._constructing = False
        self._inner = state["inner"]
        self._k = state["k"]
        self._alpha = state["alpha"]
        self._pullback = state["pullback"]
        self._momentum_key = state["momentum_key"]
        self._reset_inner_state = state["reset_inner_state"]
        self._slow_dtype = state["slow_dtype"]
        self._nonfinite = state["nonfinite"]
        self._alpha_mode = state.get("alpha_mode", "fixed")
        self._alpha_min = state.get("alpha_min", 0.1)
        self._slots = state["slots"]
        self._rollbacks = state["rollbacks"]
        self._swapped = None
        self._scratch = _kernels.make_scratch(*self._all_local_pairs())
        # torch's own: empty hook registries (hooks are not pickled) and the step wrapper.
        super().__setstate__({})
        self._warned_capturable_if_run_uncaptured = True

    # -- memory accounting ----------------------------------------------------------------

    def _persistent_tensors(self) -> list[torch.Tensor]:
        """The state Lookahead keeps beyond the inner optimizer's: φ (and pullback momentum).

        The upcast scratch of ``slow_dtype`` (bounded, holding nothing between
        syncs) is workspace: see `_workspace_tensors`.
        """
        owned: list[torch.Tensor] = []
        for slots in self._slots:
            owned.extend(slots.slow)
            if slots.momentum is not None:
                owned.extend(slots.momentum)
            if slots.start_grads is not None:
                owned.extend(slots.start_grads)
        return owned

    def _workspace_tensors(self) -> list[torch.Tensor]:
        """The upcast scratch buffers of the ``slow_dtype`` sync (bounded size)."""
        return list(self._scratch.values())


@dataclass
class _LoadPlan:
    inner: dict[str, Any]
    plain: bool
    k: int
    alpha: float
    rollbacks: int
    counts: list[int]
    slow: dict[tuple[int, int], torch.Tensor]
    momentum: dict[tuple[int, int], torch.Tensor]
    slow_buffers: dict[tuple[int, int], torch.Tensor]
    momentum_buffers: dict[tuple[int, int], torch.Tensor]
    alpha_min: float
    last_alphas: list[float | None]
    start_grads: dict[tuple[int, int], torch.Tensor]
    start_buffers: dict[tuple[int, int], torch.Tensor]


def _copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst ← src``; shard to shard when both are DTensors sharded alike (no communication)."""
    if _distributed.same_layout(dst, src):
        _distributed.local(dst).copy_(_distributed.local(src))
    else:
        dst.copy_(src)


def _buffer_for(current: torch.Tensor, param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``current`` if it fits ``param``'s device and shape in ``dtype``, else a new buffer that does."""
    if (
        current.device == param.device
        and current.dtype == dtype
        and current.shape == param.shape
        and _distributed.same_layout(current, param)
    ):
        return current
    return torch.empty_like(param, dtype=dtype, memory_format=torch.preserve_format)


def _check_momentum_mapping(optimizer: torch.optim.Optimizer, pullback: str, key: str | None) -> None:
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


def _check_group(
    where: str, group: Mapping[str, Any], k: int, alpha: float, alpha_mode: str, alpha_min: float
) -> None:
    """A group Lookahead can adopt: its settings, its parameters, and in adaptive mode a
    fallback α in ``[alpha_min, 1]`` and real, non-DTensor parameters."""
    _, group_alpha_ = check_group_settings(where, group, k, alpha)
    adaptive = alpha_mode == "adaptive"
    if adaptive:
        check_fallback(f"{where}['lookahead_alpha']", group_alpha_, alpha_min)
    seen: set[int] = set()
    for i, param in enumerate(group["params"]):
        check_param(f"{where}['params'][{i}]", param)
        if id(param) in seen:
            raise ValueError(
                f"{where}['params'][{i}] appears twice in the group; Lookahead would sync it twice"
            )
        seen.add(id(param))
        if adaptive:
            _check_adaptive_param(f"{where}['params'][{i}]", param)


def _check_adaptive_param(where: str, param: torch.Tensor) -> None:
    if _distributed.is_dtensor(param):
        raise NotImplementedError(
            f"{where} is a DTensor: alpha_mode='adaptive' does not support sharded parameters "
            "yet (the estimate's two sums would need an all-reduce over the mesh); use "
            "alpha_mode='fixed'"
        )
    if param.is_complex():
        raise ValueError(f"{where} is complex: alpha_mode='adaptive' needs real parameters")


def _checked_last_alpha(where: str, saved: Mapping[str, Any], alpha_min: float) -> float | None:
    if _LAST_ALPHA_KEY not in saved:
        raise ValueError(f"{where} is missing {_LAST_ALPHA_KEY!r}")
    value = saved[_LAST_ALPHA_KEY]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}[{_LAST_ALPHA_KEY!r}] must be a float or None, got {value!r}")
    if not alpha_min <= float(value) <= 1.0:
        raise ValueError(
            f"{where}[{_LAST_ALPHA_KEY!r}] must be None or in [alpha_min, 1] = [{alpha_min}, 1], "
            f"got {value}"
        )
    return float(value)


def _checked_tensor(where: str, value: Any, param: torch.Tensor) -> torch.Tensor:
    """A checkpoint tensor that must have ``param``'s shape and a floating (or complex) dtype."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where} must be a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(
            f"{where} must have the parameter's shape {tuple(param.shape)}, got {tuple(value.shape)}"
        )
    kind_ok = value.is_complex() if param.is_complex() else value.is_floating_point()
    if not kind_ok:
        kind = "complex" if param.is_complex() else "floating point"
        raise TypeError(
            f"{where} must have a {kind} dtype like the parameter ({param.dtype}), got {value.dtype}"
        )
    return value
