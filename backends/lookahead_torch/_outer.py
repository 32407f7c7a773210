"""The outer optimizer (``outer=``): the sync as any torch optimizer's step on the pseudo-gradient.

With ``outer=factory`` the sync of a param group is no longer Algorithm 1's
lerp but the step of a second ``torch.optim`` optimizer O, built by the
adapter over the slow weights φ (one param group per inner group, same
order), on the pseudo-gradient Δ = φ − θ_{t,k} (the sign of torchft and
DiLoCo: Δ points from the fast weights back to the slow ones, as a gradient
points uphill)::

    Δ ← φ − θ                      written into φ.grad (the slow dtype)
    φ ← O.step()                   e.g. SGD(lr=0.7, momentum=0.9, nesterov=True)
    θ ← φ

Outer SGD with ``lr=α`` and no momentum is Algorithm 1's sync,
φ − αΔ = φ + α(θ − φ), up to rounding (a one-sided update where Algorithm 1
uses the two-sided lerp). Groups whose cycle does not end at this step keep
``φ.grad = None``, which every ``torch.optim`` optimizer skips, so groups with
other k or counts sync at other steps, each with its own outer param group.

Memory. Δ is computed into the parameters' own memory (θ is overwritten by
φ right after the outer step, so nothing reads it again): the sync allocates
nothing for same-dtype pairs. A parameter whose slow copy is wider
(``slow_dtype``) gets a temporary Δ of the slow dtype during the sync. The
outer optimizer's state (SGD momentum: one slow-sized buffer per parameter;
Adam: two) is persistent, laid out like the slow weights (a DTensor sharded
like them under FSDP2).

This module also holds the outer part of the checkpoint: the outer state of
parameter i is in ``state[i]`` under ``"lookahead_outer_<key>"``, the outer
group's hyperparameters in ``param_groups[g]`` under
``"lookahead_outer_<key>"``, the outer class in ``"lookahead_outer"``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from . import _distributed, _kernels
from ._inner_checks import (
    check_group_keys,
    check_state_entries,
    check_state_value,
    inner_class_name,
    load_all_or_nothing,
    rehearse_setstate,
    rehearse_step,
)

if TYPE_CHECKING:
    from ._groups import GroupState

__all__ = [
    "OUTER_CLASS_KEY",
    "OUTER_PREFIX",
    "PLACEHOLDER_KEY",
    "Outer",
    "OuterLoad",
    "build_outer",
    "check_outer_factory",
    "plan_outer_load",
]

OUTER_CLASS_KEY = "lookahead_outer"
OUTER_PREFIX = "lookahead_outer_"
PLACEHOLDER_KEY = "lookahead_outer_placeholder"

# Outer state entries that have the slow weights' shape (torch.optim.SGD, Adam, AdamW).
_PARAM_SHAPED_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def check_outer_factory(outer: Any) -> None:
    """``outer`` must be ``None`` or a callable (an optimizer class or a ``functools.partial``)."""
    if outer is None:
        return
    if isinstance(outer, torch.optim.Optimizer):
        raise TypeError(
            "outer must be a callable that builds a torch.optim.Optimizer from a list of param "
            "groups (e.g. functools.partial(torch.optim.SGD, lr=0.7, momentum=0.9, "
            f"nesterov=True)), got an optimizer instance ({type(outer).__name__}); Lookahead "
            "builds the outer optimizer itself, over the slow weights"
        )
    if not callable(outer):
        raise TypeError(
            "outer must be None or a callable that builds a torch.optim.Optimizer from a list "
            "of param groups, e.g. functools.partial(torch.optim.SGD, lr=0.7, momentum=0.9, "
            f"nesterov=True), got {type(outer).__name__}"
        )


def build_outer(factory: Callable[..., Any], groups: Sequence[GroupState]) -> Outer:
    """Call ``factory`` with one param group per inner group (the slow weights) and check the result.

    Raises:
        TypeError: ``factory`` did not return a ``torch.optim.Optimizer``.
        ValueError: the optimizer it returned is not over exactly those groups.
    """
    built = factory([{"params": list(group.slow)} for group in groups])
    if not isinstance(built, torch.optim.Optimizer):
        raise TypeError(
            "outer must return a torch.optim.Optimizer built over the param groups it is given, "
            f"got {type(built).__name__}"
        )
    _check_groups("outer", built, groups)
    for g, group in enumerate(built.param_groups):
        if "placeholder" in group:
            raise ValueError(
                f"outer's param_groups[{g}] has a key 'placeholder', which the checkpoint format "
                "reserves (lookahead_outer_placeholder)"
            )
    return Outer(built, [False] * len(groups))


def _check_groups(name: str, optimizer: torch.optim.Optimizer, groups: Sequence[GroupState]) -> None:
    outer_groups = optimizer.param_groups
    if len(outer_groups) != len(groups) or any(
        len(o["params"]) != len(group.slow) or any(a is not b for a, b in zip(o["params"], group.slow))
        for o, group in zip(outer_groups, groups)
    ):
        raise ValueError(
            f"{name} must build its optimizer over exactly the param groups it is given (the "
            f"slow weights, {len(groups)} group(s) in the inner optimizer's order), e.g. "
            "functools.partial(torch.optim.SGD, lr=0.7); its optimizer holds other parameters"
        )


@dataclass
class Outer:
    """The outer optimizer and, per group, whether its state is a placeholder.

    A placeholder is the state ``torch.distributed.checkpoint``'s initialization
    step creates (see `init_placeholders`): a template for a checkpoint to
    load into, not the state of a step. It is dropped at the group's next
    sync, so that a run that was merely asked for a state dict trains as one
    that was not.
    """

    optimizer: torch.optim.Optimizer
    placeholder: list[bool]

    def check(self, groups: Sequence[GroupState]) -> None:
        """The outer optimizer still holds one group per inner group, over the slow weights."""
        _check_groups("the outer optimizer", self.optimizer, groups)

    def add_group(self, group: GroupState) -> None:
        """A new inner group: a new outer group over its slow weights (the outer defaults)."""
        self.optimizer.add_param_group({"params": list(group.slow)})
        self.placeholder.append(False)

    def replace_slow(self, g: int, old: Sequence[torch.Tensor], new: Sequence[torch.Tensor]) -> None:
        """Group g's slow tensors were replaced (re-laid out): move its outer params and state.

        Each state tensor is laid out like its new slow tensor (a DTensor
        sharded alike; every rank keeps its own shard of a replicated tensor).
        """
        state = self.optimizer.state
        moved = {}
        for i, (o, n) in enumerate(zip(old, new)):
            if o in state:
                entry = {}
                for key, value in state.pop(o).items():
                    if isinstance(value, torch.Tensor) and value.shape == n.shape and key != "step":
                        value = _distributed.as_param_layout(f"outer state [{i}][{key!r}]", value, n)
                        if _distributed.local(value).device != _distributed.local(n).device:
                            value = value.to(n.device)
                    entry[key] = value
                moved[n] = entry
        self.optimizer.param_groups[g]["params"] = list(new)
        state.update(moved)

    @torch.no_grad()
    def sync_(self, due: Sequence[tuple[int, GroupState]]) -> None:
        """The outer step of the groups ``due`` (``(g, state)``; placement checked).

        Δ = φ − θ into φ.grad, ``O.step()``, ``θ ← φ``. If the outer step
        raises, the sync is abandoned: the groups' parameters are set to their
        slow weights as they are (the outer optimizer may have moved some)
        and the exception propagates.
        """
        slow = [s for _, group in due for s in group.slow]
        fast = [p.detach() for _, group in due for p in group.params]
        for g, group in due:
            if self.placeholder[g]:
                self._drop_state(group)
                self.placeholder[g] = False
        grads = _kernels.pseudo_gradients_(fast, slow)
        try:
            for s, grad in zip(slow, grads):
                s.grad = grad
            self.optimizer.step()
        finally:
            for s in slow:
                s.grad = None
            _kernels.copy_(_distributed.locals_(fast), _distributed.locals_(slow))

    def _drop_state(self, group: GroupState) -> None:
        for s in group.slow:
            self.optimizer.state.pop(s, None)

    def drop_state(self, groups: Sequence[GroupState]) -> None:
        """Restart the outer state of ``groups`` (a plain inner checkpoint was loaded)."""
        for group in groups:
            self._drop_state(group)

    @torch.no_grad()
    def init_placeholders(self, groups: Sequence[GroupState]) -> None:
        """``torch.distributed.checkpoint``'s initialization: create an empty outer state as a template.

        As torch does for the inner optimizer (``_init_optim_state``): one
        step with zero gradients and ``lr = 0`` in every group, which moves
        no slow weight. Only when the outer state is empty, and marked as a
        placeholder (see `Outer`).
        """
        if self.optimizer.state:
            return
        lrs = []
        for group in self.optimizer.param_groups:
            lrs.append(group.get("lr"))
            if "lr" in group:
                group["lr"] = torch.tensor(0.0) if isinstance(group["lr"], torch.Tensor) else 0.0
        slow = [s for group in groups for s in group.slow]
        try:
            for s in slow:
                s.grad = torch.zeros_like(s)
            self.optimizer.step()
        finally:
            for s in slow:
                s.grad = None
            for group, lr in zip(self.optimizer.param_groups, lrs):
                if "lr" in group:
                    group["lr"] = lr
        self.placeholder = [True] * len(self.placeholder)

    def group_tensors(self, group: GroupState) -> list[torch.Tensor]:
        """The floating tensors of the outer state of ``group``'s slow weights."""
        return [v for s in group.slow for v in self.optimizer.state.get(s, {}).values()
                if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())]

    def tensors(self) -> list[torch.Tensor]:
        """The outer state's floating tensors (what the outer optimizer adds to memory)."""
        return [v for entry in self.optimizer.state.values() for v in entry.values()
                if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())]

    # -- checkpoints ------------------------------------------------------------------------

    def pack(self, groups: Sequence[GroupState], packed_groups: list[dict[str, Any]],
             state: dict[Any, dict[str, Any]]) -> None:
        """Add the outer state and hyperparameters to a packed state dict (in place)."""
        self.check(groups)
        outer_sd = self.optimizer.state_dict()
        n = 0
        for g, (packed, outer_group) in enumerate(zip(packed_groups, outer_sd["param_groups"])):
            packed[OUTER_CLASS_KEY] = inner_class_name(self.optimizer)
            packed[PLACEHOLDER_KEY] = self.placeholder[g]
            for key, value in outer_group.items():
                if key != "params":
                    packed[OUTER_PREFIX + key] = value
            for i, index in enumerate(packed["params"]):
                entry = outer_sd["state"].get(n + i)
                if entry:
                    state[index] = {**state.get(index, {}),
                                    **{OUTER_PREFIX + key: value for key, value in entry.items()}}
            n += len(outer_group["params"])


@dataclass
class OuterLoad:
    """A checked outer load: torch's state dict of the outer optimizer, or ``None`` (restart)."""

    state_dict: dict[str, Any] | None
    placeholder: list[bool]


def _outer_keys(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key[len(OUTER_PREFIX):]: value for key, value in mapping.items()
            if isinstance(key, str) and key.startswith(OUTER_PREFIX) and key != PLACEHOLDER_KEY}


def is_outer_key(key: Any) -> bool:
    """Whether a checkpoint key belongs to the outer optimizer."""
    return isinstance(key, str) and (key == OUTER_CLASS_KEY or key.startswith(OUTER_PREFIX))


def check_outer_kind(
    outer: Outer | None, saved_groups: Sequence[Mapping[str, Any]], saved_state: Mapping[Any, Any],
    plain: bool,
) -> list[bool] | None:
    """Whether the checkpoint was written with the same kind of outer optimizer as ``outer``.

    Runs first, so that a checkpoint of the other kind is named as such.

    Returns:
        Each group's placeholder flag (``None`` without an outer optimizer or
        for a plain inner checkpoint).

    Raises:
        ValueError, TypeError: outer entries in a checkpoint for an optimizer
            without ``outer``, none for one with it, another outer class.
    """
    if outer is None or plain:
        for g, saved in enumerate(saved_groups):
            found = sorted(key for key in saved if is_outer_key(key))
            if found:
                raise ValueError(
                    f"state_dict['param_groups'][{g}] has {found[:3]}: a checkpoint of a Lookahead "
                    f"with an outer optimizer ({saved.get(OUTER_CLASS_KEY)!r}), but this optimizer "
                    + ("has outer=None; build it with the same outer=" if outer is None else
                       "has no 'lookahead_count' in its groups (not a Lookahead checkpoint)")
                )
        for pid, entry in saved_state.items():
            found = sorted(key for key in entry if is_outer_key(key)) if isinstance(entry, Mapping) else []
            if found:
                raise ValueError(
                    f"state_dict['state'][{pid!r}] has {found[:3]} (outer optimizer state), but "
                    + ("this optimizer has outer=None" if outer is None else
                       "the param groups are not a Lookahead checkpoint's")
                )
        return None
    expected = inner_class_name(outer.optimizer)
    placeholder = []
    for g, saved in enumerate(saved_groups):
        where = f"state_dict['param_groups'][{g}]"
        if OUTER_CLASS_KEY not in saved:
            raise ValueError(
                f"{where} has no {OUTER_CLASS_KEY!r}: a checkpoint of a Lookahead without an outer "
                f"optimizer (Algorithm 1's sync), but this optimizer has outer={expected}"
            )
        if saved[OUTER_CLASS_KEY] != expected:
            raise ValueError(
                f"{where}[{OUTER_CLASS_KEY!r}] is {saved[OUTER_CLASS_KEY]!r}: a checkpoint of another "
                f"outer optimizer, this one is {expected}"
            )
        flag = saved.get(PLACEHOLDER_KEY, False)
        if not isinstance(flag, bool):
            raise TypeError(f"{where}[{PLACEHOLDER_KEY!r}] must be a bool, got {flag!r}")
        placeholder.append(flag)
    return placeholder


def plan_outer_load(
    outer: Outer | None, groups: Sequence[GroupState], saved_groups: Sequence[Mapping[str, Any]],
    saved_state: Mapping[Any, Any], index_of: Mapping[Any, tuple[int, int]], plain: bool,
    placeholder: list[bool] | None,
) -> OuterLoad | None:
    """Check the outer part of a checkpoint (after `check_outer_kind`); change nothing.

    Returns:
        ``None`` without an outer optimizer; else what to load (a plain
        inner checkpoint restarts the outer state: ``state_dict`` ``None``).

    Raises:
        ValueError, TypeError: outer state the outer optimizer could not step with.
    """
    if outer is None:
        return None
    if plain or placeholder is None:
        return OuterLoad(None, [False] * len(groups))
    outer_groups = [_outer_keys(saved) for saved in saved_groups]
    # Outer parameter index n is (g, i) in order: one outer group per inner group.
    offsets = [0]
    for group in groups:
        offsets.append(offsets[-1] + len(group.slow))
    outer_state: dict[int, dict[str, Any]] = {}
    for pid, (g, i) in index_of.items():
        entry = saved_state.get(pid, {})
        if not isinstance(entry, Mapping):
            continue  # the inner plan reports it
        values = _outer_keys(entry)
        if values:
            where = f"state_dict['state'][{pid!r}]"
            outer_state[offsets[g] + i] = _checked_entry(where, values, groups[g].slow[i])
    for g, group in enumerate(groups):
        present = [offsets[g] + i in outer_state for i in range(len(group.slow))]
        if any(present) and not all(present):
            pid = next(pid for pid, (h, i) in index_of.items() if h == g and not present[i])
            raise ValueError(
                f"state_dict['state'][{pid!r}] has no outer state ('lookahead_outer_*') while other "
                f"parameters of param_groups[{g}] have: the outer optimizer steps a group's "
                "parameters together, so they have outer state all or none"
            )
    sd = {
        "state": outer_state,
        "param_groups": [{**group, "params": list(range(offsets[g], offsets[g + 1]))}
                         for g, group in enumerate(outer_groups)],
    }
    _rehearse(outer, groups, sd)
    return OuterLoad(sd, placeholder)


def _checked_entry(where: str, values: Mapping[str, Any], slow: torch.Tensor) -> dict[str, Any]:
    """One parameter's outer state, checked and copied into the slow weights' layout and device."""
    out = {}
    for key, value in values.items():
        name = f"{where}[{OUTER_PREFIX + key!r}]"
        try:
            check_state_value(where, key, value)
        except (TypeError, ValueError) as exc:
            raise type(exc)(str(exc).replace(f"{where}[{key!r}]", name)) from None
        if isinstance(value, torch.Tensor):
            if key in _PARAM_SHAPED_KEYS:
                if tuple(value.shape) != tuple(slow.shape):
                    raise ValueError(
                        f"{name} must have the parameter's shape {tuple(slow.shape)}, got {tuple(value.shape)}"
                    )
                if not (value.is_floating_point() or value.is_complex()):
                    raise TypeError(f"{name} must have a floating point dtype, got {value.dtype}")
            if key == "step":
                value = value.detach().clone()
            elif tuple(value.shape) == tuple(slow.shape):
                value = _distributed.as_param_layout(name, value, slow)
                value = value.detach().to(device=slow.device, copy=True)
            else:
                value = value.detach().to(device=slow.device, copy=True)
        else:
            value = copy.deepcopy(value)
        out[key] = value
    return out


def _rehearse(outer: Outer, groups: Sequence[GroupState], sd: Mapping[str, Any]) -> None:
    """The outer optimizer's own checks on the checkpoint's part, as for the inner optimizer."""
    optimizer = outer.optimizer
    slow = [s for group in groups for s in group.slow]
    live_groups = [{**saved, "params": list(group.slow)} for saved, group in zip(sd["param_groups"], groups)]
    live_state = {slow[n]: entry for n, entry in sd["state"].items()}
    names = {s: n for n, s in enumerate(slow)}

    def where(s: torch.Tensor) -> str:
        return f"the outer state of parameter {names[s]}"

    for g, group in enumerate(groups):
        entries = {s: live_state.get(s, {}) for s in group.slow}
        check_state_entries(where, entries, optimizer, live_groups[g], optimizer.state)
    rehearsed = rehearse_setstate(optimizer, live_groups, live_state)
    if rehearsed is None:
        return
    for g, (after, group) in enumerate(zip(rehearsed, optimizer.param_groups)):
        check_group_keys(f"state_dict['param_groups'][{g}] (the {OUTER_PREFIX}* keys)", after, group)
    rehearse_step(optimizer, rehearsed)


def commit_outer_load(outer: Outer, plan: OuterLoad, groups: Sequence[GroupState]) -> None:
    """Install a checked outer load (inside the inner load's all-or-nothing block)."""
    if plan.state_dict is None:
        outer.drop_state(groups)
    else:
        with load_all_or_nothing(outer.optimizer):
            outer.optimizer.load_state_dict(plan.state_dict)
    outer.placeholder = list(plan.placeholder)
