"""``Lookahead``: a ``torch.optim.Optimizer`` that wraps any torch optimizer.

This module holds the optimizer's construction, its step and sync, and the
checkpoint entry points. The rest lives by concern:

- `._groups`: each param group's Lookahead state, placement and structure checks;
- `._slow_weights`: evaluation with the slow weights (the swap, ``slow_state_dict``);
- `._policies`: the options as strategy objects (what a sync does to the
  inner state; where a sync's α comes from);
- `._checkpoint`: the checkpoint format and its all-or-nothing load;
- `._outer`: the outer optimizer (``outer=``), its sync and its part of the checkpoint;
- `._kernels`: every tensor operation of the sync and the swap;
- `._distributed`: DTensor, ZeroRedundancyOptimizer and checkpoint-helper specifics;
- `._averaging`: ``process_group=`` (Local SGD / DiLoCo), the collectives of the averaging sync;
- `._checks`: argument checks.

When a step does what is decided by `lookahead_core.plan_step`, the same
rule the core and the other adapters follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

import lookahead_core as lc

from . import _averaging, _checkpoint, _distributed, _groups, _kernels, _offload, _outer
from ._checks import (
    check_group_settings,
    check_nonfinite,
    check_pullback,
    check_slow_dtype,
    group_alpha,
    group_k,
)
from ._groups import GroupState
from ._inner_checks import load_all_or_nothing
from ._inner_step import inner_step
from ._policies import alpha_policy, inner_state_policy, restart_inner_state
from ._slow_weights import SlowWeightsMixin

__all__ = ["Lookahead"]


class Lookahead(SlowWeightsMixin, torch.optim.Optimizer):
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
    through ``torch.distributed.checkpoint`` with torch's own
    ``get_optimizer_state_dict`` and ``set_optimizer_state_dict``
    (``torch.distributed.checkpoint.state_dict``): everything Lookahead holds
    is in the checkpoint's ``state`` and ``param_groups``. With
    ``process_group`` (Local SGD, DiLoCo) the model is not wrapped in DDP:
    the ranks train apart and average their fast weights at each sync, one
    all-reduce every k steps instead of DDP's every step.

    Args:
        optimizer: the inner optimizer A, an instance of ``torch.optim.Optimizer``
            (SGD, Adam, AdamW, or any other). Build it on the model's final
            device and dtype; its parameters are the fast weights.
        k: synchronization period, an ``int`` >= 1 (bool rejected); the
            default of every group.
        alpha: slow weights step size, a finite real in [0, 1]; the default of
            every group. ``alpha = 1`` is the inner optimizer alone, ``alpha = 0``
            resets the parameters to φ₀ every k steps.
        outer: ``None`` (Algorithm 1's sync, the lerp with α), or a callable
            that builds a ``torch.optim.Optimizer`` from a list of param
            groups, e.g. ``functools.partial(torch.optim.SGD, lr=0.7,
            momentum=0.9, nesterov=True)`` (DiLoCo's outer step; SNOO's is
            the same with momentum ≈ 0.5). Lookahead builds this outer
            optimizer O over the slow weights, one param group per inner
            group in the same order (`outer_optimizer`), and each sync of a
            group is O's step on the pseudo-gradient Δ = φ − θ_{t,k}
            (written into φ.grad in the slow dtype), then θ ← φ. Outer SGD
            with ``lr=α`` and no momentum is Algorithm 1's sync up to
            rounding. ``alpha`` (and a group's ``lookahead_alpha``) cannot
            be given with ``outer`` (``TypeError``), nor
            ``alpha_mode="adaptive"`` or ``pullback="pullback"``
            (``ValueError``). O's state (e.g. its momentum, one slow-sized
            buffer per parameter) is checkpointed with Lookahead's.
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
        process_group: ``None`` (default: no communication, today's behaviour)
            or a ``torch.distributed.ProcessGroup`` (e.g.
            ``torch.distributed.group.WORLD``): Local SGD / DiLoCo data
            parallelism. The model is not wrapped in DDP; each rank takes its
            k inner steps on its own gradients with no communication, and at
            each sync of a group the fast weights are first averaged over the
            group's ranks (one bucketed all-reduce, P bytes, float32 for
            16-bit parameters), θ ← mean θ, then the sync above (lerp or outer
            step) runs identically on every rank: φ and θ leave every sync
            bit-identical on all ranks. At construction (and in
            ``add_param_group``) each group's parameters are broadcast from
            the process group's first rank, in place, before φ₀ is taken, so
            the ranks start identical (as DDP does). Every rank must build the
            optimizer and call `step`, `sync` and ``add_param_group``
            together. A collective that fails or outlasts the process group's
            timeout raises ``RuntimeError`` on the rank, leaving its weights
            as they were. Not with ``alpha_mode="adaptive"`` (each rank would
            estimate its own α), a ``ZeroRedundancyOptimizer`` inner (it
            communicates at every step): a ``ValueError``. DTensor parameters
            (FSDP2's ``fully_shard``) are averaged shard by shard, with
            ``fully_shard`` over a mesh within each replica and
            ``process_group`` across replicas (HSDP's layout: a mesh sharing
            another rank with ``process_group`` is a ``ValueError``). Module
            buffers (BatchNorm statistics) are not
            averaged. The Distributed page's "Local SGD and DiLoCo" section
            covers bytes, checkpoints and restarts.
        slow_device: ``None`` (φ beside each parameter) or ``"cpu"``: the slow
            weights of CUDA parameters (and an outer optimizer's state, which
            torch creates beside them) live in pinned host memory, and each
            sync streams them through a staging buffer on the GPU (chunked,
            double-buffered, on side streams; θ ← φ written on the device);
            the same results bit for bit. Refused (``ValueError``) where torch
            sees no CUDA device, for CPU parameters and for DTensors.
        offload_buffer_bytes: the staging buffer of ``slow_device="cpu"`` per
            device, in bytes (default 64 MiB, two halves); only with
            ``slow_device``.

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
        alpha: float = lc.DEFAULT_ALPHA,
        *,
        outer: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None,
        pullback: str = "none",
        reset_inner_state: bool = False,
        slow_dtype: torch.dtype | None = None,
        nonfinite: str | None = None,
        alpha_mode: str = "fixed",
        alpha_min: float = 0.1,
        process_group: Any = None,
        slow_device: str | torch.device | None = None,
        offload_buffer_bytes: int | None = None,
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
        _outer.check_outer_factory(outer)
        lc.check_alpha_or_outer(alpha, outer is not None, alpha_mode)
        alpha, alpha_mode, alpha_min = lc.check_alpha_mode(alpha, alpha_mode, alpha_min)
        pullback = check_pullback(pullback)
        if outer is not None and pullback == "pullback":
            raise ValueError(
                "pullback='pullback' interpolates the inner momentum with alpha, which an outer "
                "optimizer does not have; with outer use pullback='none', pullback='reset' or "
                "reset_inner_state=True"
            )
        if not isinstance(reset_inner_state, bool):
            raise TypeError(
                f"reset_inner_state must be a bool, got {type(reset_inner_state).__name__}"
            )
        slow_dtype = check_slow_dtype(slow_dtype)
        slow_device = _offload.check_slow_device(slow_device)
        offload_buffer_bytes = _offload.check_offload_buffer_bytes(offload_buffer_bytes, slow_device)
        if slow_device is not None and alpha_mode == "adaptive":
            raise ValueError("alpha_mode='adaptive' estimates alpha from the slow weights and the "
                             "gradients on the device at every sync; with slow_device='cpu' use "
                             "alpha_mode='fixed'")
        nonfinite = check_nonfinite(nonfinite)
        inner_policy = inner_state_policy(optimizer, pullback, reset_inner_state)
        _distributed.check_inner(optimizer)
        process_group = _averaging.check_process_group(process_group)
        if process_group is not None and slow_device is not None:
            raise ValueError(
                "process_group cannot be combined with slow_device='cpu' yet: the averaging "
                "sync and the streamed host sync have not been run together on a GPU; keep the "
                "slow weights on the device (slow_device=None) with process_group"
            )
        if process_group is not None:
            _check_averaging_combination(optimizer, alpha_mode)
            _averaging.check_params([p for group in optimizer.param_groups for p in group["params"]],
                                    process_group)
        policy = alpha_policy(alpha_mode, alpha_min)
        for g, group in enumerate(optimizer.param_groups):
            _groups.check_group(f"optimizer.param_groups[{g}]", group, k, alpha, policy)
            if outer is not None:
                _refuse_group_alpha(f"optimizer.param_groups[{g}]", group)
            if slow_device is not None:
                _offload.check_offloadable(f"optimizer.param_groups[{g}]['params']", group["params"])
        _groups.check_no_overlap(_named_params(optimizer.param_groups, "optimizer.param_groups"))

        # Plain attributes first: the property setters and add_param_group that
        # Optimizer.__init__ calls below read them.
        self._inner = optimizer
        self._k = k
        self._alpha = alpha
        self._inner_policy = inner_policy
        self._alpha_policy = policy
        self._slow_dtype = slow_dtype
        self._slow_device = slow_device
        self._stager = _offload.Stager(offload_buffer_bytes) if slow_device is not None else None
        self._nonfinite = nonfinite
        self._outer: _outer.Outer | None = None
        self._with_outer = outer is not None  # before the outer optimizer exists
        self._averaging = None if process_group is None else _averaging.Averaging(process_group)
        self._slots: list[GroupState] = []
        self._scratch: dict[_kernels.ScratchKey, torch.Tensor] = {}
        self._swapped: tuple[list[torch.Tensor], list[torch.Tensor], list[Any]] | None = None
        if self._averaging is not None:
            # Every rank starts from the first rank's weights (φ₀ included), as DDP does.
            every = [p for group in optimizer.param_groups for p in group["params"]]
            self._averaging.check_shards(every)
            self._averaging.broadcast_(every)
        self._constructing = True
        had_k = ["lookahead_k" in group for group in optimizer.param_groups]
        had_alpha = ["lookahead_alpha" in group for group in optimizer.param_groups]
        try:
            # Optimizer.__init__ sets defaults/state/param_groups (the setters keep
            # the inner's) and hands each of the inner's groups to add_param_group,
            # which adopts it: slow copies are created there, eagerly.
            super().__init__(optimizer.param_groups, optimizer.defaults)
            if outer is not None:
                self._outer = _outer.build_outer(outer, self._slots)
        except BaseException:
            # Leave the inner optimizer's groups as they were.
            for group, k_before, alpha_before in zip(optimizer.param_groups, had_k, had_alpha):
                if not k_before:
                    group.pop("lookahead_k", None)
                if not alpha_before:
                    group.pop("lookahead_alpha", None)
            raise
        finally:
            self._constructing = False
        self._refresh_scratch()

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
    def alpha(self) -> float | None:
        """Default slow step size α (a group's ``lookahead_alpha`` overrides it); ``None`` with ``outer``."""
        return None if self._with_outer else self._alpha

    @property
    def outer_optimizer(self) -> torch.optim.Optimizer | None:
        """The outer optimizer built by ``outer=`` over the slow weights (``None`` without one).

        One param group per inner param group, in the same order, holding the
        group's slow weights φ. Attach a learning-rate scheduler to it to
        drive the outer learning rate, e.g.
        ``torch.optim.lr_scheduler.StepLR(opt.outer_optimizer, step_size=10)``;
        its ``step()`` runs at each sync (not at every `step`).
        """
        return None if self._outer is None else self._outer.optimizer

    @property
    def process_group(self) -> Any:
        """The process group whose ranks' fast weights each sync averages (``None``: no averaging)."""
        return None if self._averaging is None else self._averaging.group

    @property
    def pullback(self) -> str:
        """What a sync does to the inner momentum: ``"none"``, ``"reset"`` or ``"pullback"``."""
        return self._inner_policy.pullback

    @property
    def alpha_mode(self) -> str:
        """``"fixed"`` (the paper) or ``"adaptive"`` (α estimated at each scheduled sync)."""
        return self._alpha_policy.mode

    @property
    def alpha_min(self) -> float:
        """Lower end of the adaptive α range ``[alpha_min, 1]`` (unused with a fixed α)."""
        return self._alpha_policy.alpha_min

    @property
    def last_alphas(self) -> tuple[float | None, ...]:
        """Adaptive mode: per group, the α of its most recent sync (``None`` before one)."""
        return tuple(group.last_alpha for group in self._slots)

    @property
    def counts(self) -> tuple[int, ...]:
        """Per group, the executed inner steps since its last sync."""
        return tuple(group.count for group in self._slots)

    @property
    def rollbacks(self) -> int:
        """How many group syncs ``nonfinite="rollback"`` replaced by a rollback."""
        return sum(group.rollbacks for group in self._slots)

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
            f"Lookahead(k={self._k}, {self._alpha_or_outer_repr()}, pullback={self.pullback!r}, "
            f"reset_inner_state={self._inner_policy.reset_inner_state}, slow_dtype={self._slow_dtype}, "
            f"nonfinite={self._nonfinite!r}, {self._alpha_policy.repr_fields(self._slots)}"
            f"counts={list(self.counts)},\n  inner={inner})"
        )

    def _alpha_or_outer_repr(self) -> str:
        if self._outer is None:
            return f"alpha={self._alpha}"
        lrs = [group.get("lr") for group in self._outer.optimizer.param_groups]
        return f"outer={type(self._outer.optimizer).__name__}(lr={lrs})"

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
        if self._averaging is not None and isinstance(param_group, Mapping):
            params = param_group.get("params")
            _averaging.check_params([params] if isinstance(params, torch.Tensor) else list(params or ()),
                                    self._averaging.group)
        if self._with_outer:
            _refuse_group_alpha(where, param_group)
        self._inner.add_param_group(param_group)
        added = self._inner.param_groups[-1]
        try:
            _groups.check_group(where, added, self._k, self._alpha, self._alpha_policy)
            _groups.check_no_overlap(_named_params(self._inner.param_groups))
            self._adopt_group(added)
        except BaseException:
            self._inner.param_groups.pop()
            raise

    def _adopt_group(self, group: dict[str, Any]) -> None:
        """Give ``group`` its Lookahead settings and slow copies (φ₀ = θ now)."""
        group.setdefault("lookahead_k", self._k)
        if not self._with_outer:  # with an outer optimizer there is no α
            group.setdefault("lookahead_alpha", self._alpha)
        keys = [policy.buffer_key for policy in (self._inner_policy, self._alpha_policy)]
        if self.__dict__.get("_slow_device") is not None:
            _offload.check_offloadable(f"param_groups[{len(self._slots)}]['params']", group["params"])
        if self._averaging is not None and not self._constructing:
            # Every rank starts the group from the first rank's weights (φ₀ included); the
            # constructor broadcasts all groups at once.
            self._averaging.check_shards(group["params"])
            self._averaging.broadcast_(group["params"])
        self._slots.append(
            _groups.new_group_state(group["params"], [key for key in keys if key], self._slow_dtype,
                                    self.__dict__.get("_slow_device"))
        )
        if not self._constructing:  # the constructor makes it once, for all groups
            if self._outer is not None:
                self._outer.add_group(self._slots[-1])
            self._refresh_scratch()

    def _refresh_scratch(self) -> None:
        self._scratch = _kernels.make_scratch(*_groups.local_pairs(self._slots))

    def _check_structure(self) -> None:
        """Adopt groups added to the inner optimizer directly; refuse changed groups.

        A group whose parameters were replaced by tensors holding the same
        values, at a cycle boundary, keeps its slow weights, laid out like the
        new parameters (`_groups.adopt_replaced_params`). Cheap on every step:
        list identity in the usual case.
        """
        groups = self._inner.param_groups
        if len(groups) < len(self._slots):
            raise RuntimeError(
                f"the inner optimizer has {len(groups)} param groups, Lookahead holds slow "
                f"weights for {len(self._slots)}: param groups cannot be removed"
            )
        for g, (group, state) in enumerate(zip(groups, self._slots)):
            params = group["params"]
            if params is state.params:
                continue
            if len(params) != len(state.params) or any(a is not b for a, b in zip(params, state.params)):
                old_slow = list(state.slow)
                _groups.adopt_replaced_params(g, state, params, self._slow_dtype, self._alpha_policy)
                if self._outer is not None:
                    self._outer.replace_slow(g, old_slow, state.slow)
                self._refresh_scratch()
            state.params = params
        for g in range(len(self._slots), len(groups)):
            # Added with inner.add_param_group: no step has touched it yet, so φ₀ = θ now.
            _groups.check_group(f"param_groups[{g}]", groups[g], self._k, self._alpha, self._alpha_policy)
            if self._outer is not None:
                _refuse_group_alpha(f"param_groups[{g}]", groups[g])
            _groups.check_no_overlap(_named_params(groups[: g + 1]))
            self._adopt_group(groups[g])

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
            if self._outer is not None:
                _refuse_group_alpha(f"param_groups[{g}]", group)
                schedule.append((k, self._alpha))
                continue
            if type(alpha) is not float or not 0.0 <= alpha <= 1.0:
                alpha = group_alpha(f"param_groups[{g}]", group, self._alpha)
            self._alpha_policy.check_group_alpha(f"param_groups[{g}]['lookahead_alpha']", alpha)
            schedule.append((k, alpha))
        return schedule

    def _check_placement(self, groups: list[int]) -> None:
        for g in groups:
            _groups.check_placement(g, self._slots[g], self._slow_dtype, self._slow_device)

    # -- the algorithm --------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One call of the cycle for every group (`lookahead_core.plan_step`): inner step, sync.

        With a fixed α every call is an inner step (eq. 0.2), followed by the
        sync of every group whose cycle it completes. In adaptive mode a
        group whose k inner steps are done is at its estimate call instead:
        α comes from its ``p.grad`` = ∇L(θ_{t,k}) and it syncs, while the
        inner optimizer does not see it (its gradients are hidden during the
        inner step of the other groups, then restored).

        Only a step that reaches the inner optimizer counts. ``GradScaler``
        does not call ``step`` when it finds inf/NaN gradients, so a skipped
        AMP step does not advance the schedule. Neither does a step that
        cannot change any weight and only creates the inner state: ``lr = 0``
        in every group, every gradient zero and the inner state empty, which
        is how ``torch.distributed.checkpoint.state_dict`` initializes an
        optimizer it is asked to save or load.

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
        if _distributed.is_state_initialization(self._inner):
            # No weight can move: let the inner optimizer create its state, count nothing.
            if self._outer is not None:  # and the outer optimizer a template of its own
                self._outer.init_placeholders(self._slots)
            return inner_step(self._inner, closure)
        schedule = self._schedule()
        mode = self._alpha_policy.mode
        plans = [lc.plan_step(state.count, k, mode) for state, (k, _) in zip(self._slots, schedule)]
        syncing = [g for g, plan in enumerate(plans) if plan.sync]
        estimating = [g for g in syncing if plans[g].estimate]
        stepping = [g for g, plan in enumerate(plans) if plan.inner]
        self._check_placement(syncing)  # raises before anything changes
        loss = None
        if estimating and closure is not None:
            with torch.enable_grad():
                loss = closure()  # the gradients at θ_{t,k} the estimate reads
        alphas = [alpha for _, alpha in schedule]
        if estimating:
            estimates = self._alpha_policy.estimate(
                [self._slots[g] for g in estimating], [alphas[g] for g in estimating]
            )
            for g, alpha in zip(estimating, estimates):
                alphas[g] = alpha
        if stepping:
            self._alpha_policy.record_start([self._slots[g] for g in stepping if plans[g].record_start])
            loss = self._inner_step_hiding(estimating, closure)
        for g in stepping:
            self._slots[g].count += 1
        for g in self._sync_groups(syncing, alphas) if syncing else ():
            self._alpha_policy.record_sync(self._slots[g], alphas[g])
        return loss

    def _inner_step_hiding(self, hidden_groups: list[int], closure: Callable[[], Any] | None) -> Any:
        """The inner step with the gradients of ``hidden_groups`` set to ``None`` (torch.optim skips them)."""
        if not hidden_groups:
            return inner_step(self._inner, closure)
        hidden = [p for g in hidden_groups for p in self._slots[g].params]
        stashed = [p.grad for p in hidden]
        inner_closure = closure
        if closure is not None:

            def inner_closure() -> Any:
                result = closure()
                for p in hidden:
                    p.grad = None
                return result

        try:
            for p in hidden:
                p.grad = None
            return inner_step(self._inner, inner_closure)
        finally:
            for p, grad in zip(hidden, stashed):
                p.grad = grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The inner optimizer's ``zero_grad(set_to_none=...)``."""
        self._inner.zero_grad(set_to_none=set_to_none)

    def sync(self) -> None:
        """The outer update of every group now (``φ ← lerp(φ, θ, α)``, ``θ ← φ``; with ``outer``, its step).

        Whatever the position in the cycle; every group's cycle restarts, with
        its fixed ``lookahead_alpha`` (also in adaptive mode). ``pullback``,
        ``reset_inner_state`` and ``nonfinite`` act as at a scheduled sync.

        Raises:
            RuntimeError: called inside `slow_weights`.
        """
        self._refuse_while_swapped("sync")
        self._check_structure()
        schedule = self._schedule()
        every = list(range(len(self._slots)))
        self._check_placement(every)
        alphas = [alpha for _, alpha in schedule]
        for g in self._sync_groups(every, alphas):
            self._alpha_policy.record_sync(self._slots[g], alphas[g])

    def _sync_groups(self, due: list[int], alphas: list[float]) -> list[int]:
        """The sync of groups ``due``, each with ``alphas[g]`` (placement already checked).

        Returns:
            The groups synced (``due`` less those ``nonfinite="rollback"`` rolled back).
        """
        if self._averaging is not None:
            due = self._average(due)
        elif self._nonfinite == "rollback":
            due = [g for g in due if not self._rolled_back(g)]
        if self._outer is not None:
            return self._outer_sync(due)
        by_alpha: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for g in due:
            # DTensor pairs are sharded alike: the elementwise sync runs on the local
            # shards, with no communication.
            fast, slow = by_alpha.setdefault(alphas[g], ([], []))
            fast.extend(_distributed.locals_(self._slots[g].params))
            slow.extend(_distributed.locals_(self._slots[g].slow))
        for alpha, (fast, slow) in by_alpha.items():
            if self._stager is not None:  # slow_device="cpu": streamed through the staging buffer
                self._stager.sync_(fast, slow, alpha)
            else:
                _kernels.lerp_and_copy_(fast, slow, alpha, self._scratch)
        self._inner_policy.after_sync(
            self._inner, [(self._slots[g], alphas[g]) for g in due], self._scratch
        )
        for g in due:
            self._slots[g].count = 0
        return due

    def _outer_sync(self, due: list[int]) -> list[int]:
        """The sync of groups ``due`` as the outer optimizer's step (see `_outer.Outer.sync_`)."""
        if due:
            try:
                self._outer.sync_([(g, self._slots[g]) for g in due])  # type: ignore[union-attr]
            finally:
                for g in due:  # also when the outer step raised: the cycle restarts from φ
                    self._slots[g].count = 0
            self._inner_policy.after_sync(self._inner, [(self._slots[g], self._alpha) for g in due],
                                          self._scratch)
        return due

    def _average(self, due: list[int]) -> list[int]:
        """``process_group``: θ ← the mean of θ over the ranks, for the groups ``due``.

        With ``nonfinite="rollback"`` each rank's finiteness of each group
        rides in the same all-reduce, so every rank rolls a group back when
        any rank found it not finite, and none otherwise.

        Returns:
            The groups to sync (``due`` less those rolled back).
        """
        rollback = self._nonfinite == "rollback"
        flags: list[float] = []
        if rollback:
            for g in due:
                finite, outer_finite = self._local_finiteness(g)
                params = self._slots[g].params  # sharded: agreed within the replica first
                finite = _distributed.all_ranks_finite(finite, params)
                outer_finite = self._outer is None or _distributed.all_ranks_finite(outer_finite, params)
                flags += [0.0 if finite else 1.0, 0.0 if outer_finite else 1.0]
        fast = [p for g in due for p in self._slots[g].params]
        agreed = self._averaging.average_(fast, flags)  # type: ignore[union-attr]
        if not rollback:
            return due
        kept = []
        for i, g in enumerate(due):
            if agreed[2 * i] > 0.0:
                self._roll_back(g, drop_outer=agreed[2 * i + 1] > 0.0)
            else:
                kept.append(g)
        return kept

    def _local_finiteness(self, g: int) -> tuple[bool, bool]:
        """Whether group g's fast weights, inner and outer state (this rank's) are finite; and its outer state alone."""
        state = self._slots[g]
        fast = _distributed.locals_(state.params)
        finite = _kernels.all_finite(fast) and _kernels.all_finite(self._inner_state_tensors(state))
        outer_finite = True
        if self._outer is not None:
            outer_finite = _kernels.all_finite(
                _distributed.locals_(self._outer.group_tensors(state)))
            finite = finite and outer_finite
        return finite, outer_finite

    def _roll_back(self, g: int, drop_outer: bool) -> None:
        """θ ← φ for group g, its inner state (and with ``drop_outer`` its outer state) restarted."""
        state = self._slots[g]
        if drop_outer and self._outer is not None:
            self._outer.drop_state([state])
        _kernels.copy_(_distributed.locals_(state.params), _distributed.locals_(state.slow))
        # A blow-up has nearly always poisoned the moments too: restart them.
        restart_inner_state(self._inner, [state])
        self._inner_policy.zero_buffers(state)
        state.count = 0
        state.rollbacks += 1

    def _rolled_back(self, g: int) -> bool:
        """``nonfinite="rollback"``: if group g's fast weights or inner state are not finite, θ ← φ.

        The inner state counts too: one huge gradient can make Adam's
        ``exp_avg_sq`` inf while the weights stay finite, and that coordinate
        would never move again. So does an outer optimizer's state: a rollback
        skips the outer step and keeps that state (the history of the good
        cycles) unless it is itself inf or NaN, which would poison every later
        sync; then it restarts too (as in the NumPy and CuPy adapters).
        """
        state = self._slots[g]
        finite, outer_finite = self._local_finiteness(g)
        # Sharded parameters: every rank must take the same decision.
        if _distributed.all_ranks_finite(finite, state.params):
            return False
        drop_outer = self._outer is not None and not _distributed.all_ranks_finite(outer_finite, state.params)
        self._roll_back(g, drop_outer)
        return True

    def _inner_state_tensors(self, state: GroupState) -> list[torch.Tensor]:
        """The floating tensors of the inner state of ``state``'s parameters (local shards)."""
        tensors = []
        for inner_state in _distributed.inner_state_dicts(self._inner):
            for p in state.params:
                for value in inner_state.get(p, {}).values() if p in inner_state else ():
                    if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
                        tensors.append(value)
        return _distributed.locals_(tensors)

    # -- checkpoints ----------------------------------------------------------------------

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's ``state_dict`` plus everything Lookahead holds, in its two parts.

        Layout (a ``torch.optim`` state dict, keyed by parameter index as the
        inner optimizer's, so (group, index) is ``param_groups[g]["params"][i]``):

        - ``state[i]``: the inner state of parameter i plus ``"lookahead_slow"``
          (φ, in the slow dtype) and, with ``pullback="pullback"``,
          ``"lookahead_momentum"``; in adaptive mode ``"lookahead_start_grad"``
          (∇L(θ_{t,0}));
        - ``param_groups[g]``: the inner group (with its ``"lookahead_k"`` and
          ``"lookahead_alpha"``) plus ``"lookahead_count"`` (the position in
          the cycle; in adaptive mode it may equal k: the estimate call is
          pending) and ``"lookahead_rollbacks"``; in adaptive mode also
          ``"lookahead_last_alpha"`` (a float or ``None``) and
          ``"lookahead_alpha_min"``.

        With ``outer``, ``state[i]`` also holds the outer optimizer's state of
        parameter i as ``"lookahead_outer_<key>"`` (e.g.
        ``"lookahead_outer_momentum_buffer"``), and ``param_groups[g]`` its
        group's hyperparameters as ``"lookahead_outer_<key>"`` (e.g.
        ``"lookahead_outer_lr"``), its class as ``"lookahead_outer"`` and
        ``"lookahead_outer_placeholder"``; there is no ``"lookahead_alpha"``.

        There is nothing else, so whatever carries an optimizer's ``state``
        and ``param_groups`` carries Lookahead: ``torch.distributed.checkpoint``'s
        ``get_optimizer_state_dict``/``set_optimizer_state_dict``,
        ``torch.load(weights_only=True)``, Lightning, Accelerate. As with
        ``torch.optim``, tensors are the live ones, not copies: serialize
        (``torch.save``) or clone before stepping again. Registered
        ``state_dict`` pre- and post-hooks run.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        if self._swapped is None:
            self._check_structure()
        state_dict = _checkpoint.pack_state_dict(self)
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a checkpoint of `state_dict`, or a plain inner-optimizer checkpoint.

        All or nothing: the structure, every ``lookahead_*`` entry (k, α,
        count, shapes and dtypes of the slow weights) and the shapes of the
        inner momentum/moment tensors are checked first; on any error the
        optimizer (and the parameters) are left exactly as they were. The
        caller's dict is never modified, and no tensor of it is shared with
        the optimizer afterwards. Tensors are cast to each parameter's device
        and dtype (slow weights to the slow dtype). Checkpoints of version
        0.1.0 (with a ``"lookahead"`` section) load too.

        A plain ``torch.optim`` checkpoint (no ``"lookahead_count"`` in its
        groups, e.g. ``inner.state_dict()`` of a run without Lookahead) loads
        the inner state; the slow weights then restart from the current
        parameters (load the model first), every cycle restarts, and a
        pullback momentum copy restarts from the loaded momentum.

        With ``process_group`` the load is a collective: the ranks agree, by
        one small all-reduce before anything is loaded, that their
        checkpoints are at the same point of every group's cycle.

        Raises:
            TypeError, ValueError: the checkpoint does not fit this optimizer
                (or, with ``process_group``, another rank's checkpoint is at
                another point of the cycle).
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
        plan = _checkpoint.plan_load(self, state_dict)
        if self._averaging is not None:  # every rank must resume at the same point of the cycle
            self._averaging.check_counts([load.count for load in plan.groups])
        with load_all_or_nothing(self._inner):  # a failure after torch installed the state
            self._inner.load_state_dict(plan.inner)
            if plan.outer is not None:
                _outer.commit_outer_load(self._outer, plan.outer, self._slots)  # type: ignore[arg-type]
        _checkpoint.commit_load(self, plan)
        self._refresh_scratch()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    # -- pickling and copying -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        if self._swapped is not None:
            raise RuntimeError(
                "a Lookahead optimizer cannot be pickled or copied inside slow_weights()"
            )
        if self._averaging is not None:
            raise TypeError(
                "a Lookahead with process_group cannot be pickled or copied (a process group "
                "cannot); save opt.state_dict() on every rank instead and build a new Lookahead "
                "with the process group to load it"
            )
        # Hooks, scheduler patches and scratch buffers are not state (torch.optim
        # drops hooks on pickling too); everything else is.
        return {
            "inner": self._inner,
            "k": self._k,
            "alpha": self._alpha,
            "inner_policy": self._inner_policy,
            "alpha_policy": self._alpha_policy,
            "slow_dtype": self._slow_dtype,
            "slow_device": self._slow_device,
            "offload_buffer_bytes": (self._stager.staging_bytes if self._stager is not None
                                     else None),
            "nonfinite": self._nonfinite,
            "slots": self._slots,
            "outer": self._outer,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._constructing = False
        self._inner = state["inner"]
        self._k = state["k"]
        self._alpha = state["alpha"]
        self._inner_policy = state["inner_policy"]
        self._alpha_policy = state["alpha_policy"]
        self._slow_dtype = state["slow_dtype"]
        self._slow_device = state.get("slow_device")
        self._stager = (_offload.Stager(state.get("offload_buffer_bytes")
                                        or _offload.DEFAULT_STAGING_BYTES)
                        if self._slow_device is not None else None)
        self._nonfinite = state["nonfinite"]
        self._slots = state["slots"]
        self._outer = state.get("outer")
        self._with_outer = self._outer is not None
        self._averaging = None
        self._swapped = None
        self._refresh_scratch()
        # torch's own: empty hook registries (hooks are not pickled) and the step wrapper.
        super().__setstate__({})
        self._warned_capturable_if_run_uncaptured = True

    # -- memory accounting ----------------------------------------------------------------

    def _persistent_tensors(self) -> list[torch.Tensor]:
        """The state Lookahead keeps beyond the inner optimizer's: φ and each policy's buffers.

        The upcast scratch of ``slow_dtype`` (bounded, holding nothing between
        syncs) is workspace: see `_workspace_tensors`.
        """
        tensors = [t for state in self._slots for buffers in state.buffers.values() for t in buffers]
        return tensors + (self._outer.tensors() if self._outer is not None else [])

    def _workspace_tensors(self) -> list[torch.Tensor]:
        """The upcast scratch buffers of the ``slow_dtype`` sync and the staging buffers of
        ``slow_device="cpu"`` (bounded sizes)."""
        staging = self._stager.buffers() if self.__dict__.get("_stager") is not None else []
        return list(self._scratch.values()) + staging


def _named_params(groups: list[dict[str, Any]], prefix: str = "param_groups") -> list[tuple[str, torch.Tensor]]:
    return [(f"{prefix}[{g}]['params'][{i}]", p) for g, group in enumerate(groups)
            for i, p in enumerate(group["params"])]


def _check_averaging_combination(optimizer: torch.optim.Optimizer, alpha_mode: str) -> None:
    """What ``process_group`` cannot be combined with (checked before anything is built)."""
    if alpha_mode == "adaptive":
        raise ValueError(
            "process_group cannot be combined with alpha_mode='adaptive': each rank would "
            "estimate its own alpha from its own gradients and the ranks would part; use a fixed "
            "alpha or outer="
        )
    zero = _distributed.zero_type()
    if zero is not None and isinstance(optimizer, zero):
        raise ValueError(
            "process_group cannot be combined with a ZeroRedundancyOptimizer inner optimizer: it "
            "broadcasts the parameters at every step, so the ranks never train apart; use a plain "
            "torch.optim optimizer on every rank"
        )


def _refuse_group_alpha(where: str, group: Any) -> None:
    """With an outer optimizer a param group has no α: its ``lookahead_alpha`` is refused."""
    if isinstance(group, Mapping) and "lookahead_alpha" in group:
        raise TypeError(
            f"{where}['lookahead_alpha'] cannot be set with outer: the sync is the outer "
            "optimizer's step, and its learning rate plays alpha's role (set it in "
            "opt.outer_optimizer.param_groups)"
        )
