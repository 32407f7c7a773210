"""The checkpoint format of `Lookahead` and its all-or-nothing load.

Everything Lookahead holds travels inside the two parts of a ``torch.optim``
state dict, so that anything that carries an optimizer's ``state`` and
``param_groups`` carries Lookahead too: ``torch.save``/``torch.load``
(``weights_only=True``), ``torch.distributed.checkpoint.state_dict``'s
``get_optimizer_state_dict``/``set_optimizer_state_dict`` (which keep only
those two keys and re-key them by parameter name), Lightning, Accelerate:

- ``state[i]``: the inner state of parameter i plus ``"lookahead_slow"`` (φ,
  in the slow dtype) and each policy's buffer (``"lookahead_momentum"`` with
  ``pullback="pullback"``, ``"lookahead_start_grad"`` in adaptive mode);
- ``param_groups[g]``: the inner group, its ``"lookahead_k"`` and
  ``"lookahead_alpha"``, plus ``"lookahead_count"`` (the position in the
  cycle), ``"lookahead_rollbacks"`` and, in adaptive mode,
  ``"lookahead_last_alpha"`` and ``"lookahead_alpha_min"``.

Version 0.1.0 wrote a third key, ``"lookahead"``, with the defaults k and α,
the pullback mode and the rollback counter (``"format": 1``); such
checkpoints still load, with their section checked as before.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

import lookahead_core as lc

from . import _distributed, _outer
from ._checks import check_fallback, check_group_settings, group_alpha, group_k, renamed
from ._groups import SLOW_BUFFER, buffer_dtype
from ._inner_checks import (
    INNER_KEY,
    check_group_keys,
    check_inner_class,
    check_state_entries,
    check_state_value,
    inner_class_name,
    rehearse_setstate,
    rehearse_step,
)
from ._policies import ALPHA_MIN_KEY, LAST_ALPHA_KEY, MOMENTUM_BUFFER, START_GRAD_BUFFER

if TYPE_CHECKING:
    from ._optimizer import Lookahead

__all__ = ["LoadPlan", "commit_load", "pack_state_dict", "plan_load"]

COUNT_KEY = "lookahead_count"
ROLLBACKS_KEY = "lookahead_rollbacks"
LEGACY_SECTION = "lookahead"
_LEGACY_FORMAT = 1
_GROUP_SCALARS = (COUNT_KEY, ROLLBACKS_KEY, LAST_ALPHA_KEY, ALPHA_MIN_KEY, INNER_KEY)
_BUFFER_KEYS = (SLOW_BUFFER, MOMENTUM_BUFFER, START_GRAD_BUFFER)

# Per-parameter state entries of torch.optim.SGD/Adam/AdamW that have the parameter's shape.
_PARAM_SHAPED_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def pack_state_dict(opt: Lookahead) -> dict[str, Any]:
    """``{"state", "param_groups"}``: the inner optimizer's state dict with Lookahead's entries added.

    Never adds keys to the inner optimizer's live dicts; the tensors are the
    live ones, as in ``torch.optim``.
    """
    inner_sd = opt._inner.state_dict()
    current = opt._current_slow()
    state = dict(inner_sd["state"])
    packed_groups = []
    for g, packed in enumerate(inner_sd["param_groups"]):
        group = opt._slots[g]
        packed = dict(packed)
        packed[COUNT_KEY] = group.count
        packed[ROLLBACKS_KEY] = group.rollbacks
        packed[INNER_KEY] = inner_class_name(opt._inner)
        packed.update(opt._alpha_policy.group_scalars(group))
        for i, index in enumerate(packed["params"]):
            entry = dict(state.get(index, {}))
            for key, buffers in group.buffers.items():
                entry[key] = current[g][i] if key == SLOW_BUFFER else buffers[i]
            state[index] = entry
        packed_groups.append(packed)
    if opt._outer is not None:
        opt._outer.pack(opt._slots, packed_groups, state)
    return {"state": state, "param_groups": packed_groups}


@dataclass
class GroupLoad:
    """What a load sets in one group; ``buffers[key][i]`` is ``None`` where the plain-load rule applies."""

    count: int
    rollbacks: int
    last_alpha: float | None
    buffers: dict[str, list[torch.Tensor | None]]
    targets: dict[str, list[torch.Tensor]]


@dataclass
class LoadPlan:
    """A checked load: the inner optimizer's part, and Lookahead's, ready to commit."""

    inner: dict[str, Any]
    groups: list[GroupLoad]
    alpha_min: float
    defaults: tuple[int, float] | None  # the 0.1.0 section's k and α
    outer: _outer.OuterLoad | None = None


def plan_load(opt: Lookahead, sd: Mapping[str, Any]) -> LoadPlan:
    """Check ``sd`` completely and prepare what to load; change nothing."""
    extra = sorted(set(sd) - {"state", "param_groups", LEGACY_SECTION}, key=str)
    missing = [key for key in ("state", "param_groups") if key not in sd]
    if missing or extra:
        raise ValueError(
            "state_dict must have the keys 'state' and 'param_groups' (and 'lookahead' in a "
            f"checkpoint of version 0.1.0); missing {missing}, unexpected {extra}"
        )
    saved_state, saved_groups = sd["state"], sd["param_groups"]
    if not isinstance(saved_state, Mapping):
        raise TypeError(f"state_dict['state'] must be a dict, got {type(saved_state).__name__}")
    if not isinstance(saved_groups, (list, tuple)):
        raise TypeError(f"state_dict['param_groups'] must be a list, got {type(saved_groups).__name__}")
    groups = opt._inner.param_groups
    if len(saved_groups) != len(groups):
        raise ValueError(
            f"state_dict['param_groups'] has {len(saved_groups)} groups, this optimizer "
            f"has {len(groups)}"
        )
    for g, saved in enumerate(saved_groups):
        if not isinstance(saved, Mapping):
            raise TypeError(f"state_dict['param_groups'][{g}] must be a dict, got {type(saved).__name__}")
    legacy = sd.get(LEGACY_SECTION)
    section = _check_legacy_section(opt, legacy) if legacy is not None else None
    plain = section is None and not any(COUNT_KEY in saved for saved in saved_groups)
    if plain:
        _refuse_stripped_lookahead_groups(saved_groups)
    placeholder = _outer.check_outer_kind(opt._outer, saved_groups, saved_state, plain)

    index_of: dict[Any, tuple[int, int]] = {}
    inner_groups, loads, alpha_mins = [], [], []
    for g, (saved, group) in enumerate(zip(saved_groups, groups)):
        where = f"state_dict['param_groups'][{g}]"
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
        inner_group, load, alpha_min = _plan_group(opt, g, where, saved, group, plain, section)
        inner_groups.append(inner_group)
        loads.append(load)
        alpha_mins.append(alpha_min)
    if len(set(alpha_mins)) > 1:
        raise ValueError(
            f"state_dict['param_groups'] disagree on {ALPHA_MIN_KEY!r}: {alpha_mins}; it is "
            "one setting of the optimizer"
        )

    unknown = [pid for pid in saved_state if pid not in index_of]
    if unknown:
        raise ValueError(
            f"state_dict['state'] has entries for parameter ids {unknown[:8]} that no param group lists"
        )
    inner_state: dict[Any, dict[str, Any]] = {}
    for pid, (g, i) in index_of.items():
        param = groups[g]["params"][i]
        where = f"state_dict['state'][{pid!r}]"
        entry = saved_state.get(pid, {})
        if not isinstance(entry, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(entry).__name__}")
        _plan_buffers(opt, where, entry, param, i, loads[g], plain)
        inner_entry = _checked_inner_entry(opt, where, entry, param)
        if inner_entry:
            inner_state[pid] = inner_entry
    _rehearse_inner_load(opt, inner_groups, inner_state, index_of)
    outer = _outer.plan_outer_load(opt._outer, opt._slots, saved_groups, saved_state, index_of, plain,
                                   placeholder)

    _allocate_targets(opt, loads)
    alpha_min = alpha_mins[0] if alpha_mins else opt._alpha_policy.alpha_min
    defaults = None if section is None else (section["k"], section["alpha"])
    return LoadPlan({"state": inner_state, "param_groups": inner_groups}, loads, alpha_min, defaults,
                    outer)


def _rehearse_inner_load(
    opt: Lookahead, inner_groups: list[dict[str, Any]], inner_state: Mapping[Any, Any],
    index_of: Mapping[Any, tuple[int, int]],
) -> None:
    """The inner optimizer's own ``__setstate__`` on the checkpoint's part, then its group keys."""
    groups = opt._inner.param_groups
    live_groups = [{**saved, "params": group["params"]} for saved, group in zip(inner_groups, groups)]
    live_state = {groups[g]["params"][i]: inner_state[pid] for pid, (g, i) in index_of.items()
                  if pid in inner_state}
    names = {groups[g]["params"][i]: pid for pid, (g, i) in index_of.items()}
    for g, group in enumerate(groups):
        entries = {p: live_state.get(p, {}) for p in group["params"]}
        check_state_entries(lambda p: f"state_dict['state'][{names[p]!r}]", entries, opt._inner,
                            live_groups[g], opt._inner.state)
    rehearsed = rehearse_setstate(opt._inner, live_groups, live_state)
    if rehearsed is None:
        return
    for g, (after, group) in enumerate(zip(rehearsed, groups)):
        check_group_keys(f"state_dict['param_groups'][{g}]", after, group)
    rehearse_step(opt._inner, rehearsed)


def _plan_group(
    opt: Lookahead, g: int, where: str, saved: Mapping[str, Any], group: Mapping[str, Any],
    plain: bool, section: dict[str, Any] | None,
) -> tuple[dict[str, Any], GroupLoad, float]:
    """One saved group: its inner part, and its Lookahead scalars checked."""
    policy = opt._alpha_policy
    if plain:
        # A plain checkpoint has no opinion on Lookahead: keep this group's settings.
        default_k = group_k(f"param_groups[{g}]", group, opt._k)
        default_alpha = group_alpha(f"param_groups[{g}]", group, opt._alpha)
    elif section is not None:
        default_k, default_alpha = section["k"], section["alpha"]
    else:
        default_k, default_alpha = opt._k, opt._alpha
    if opt._outer is not None and "lookahead_alpha" in saved:
        raise ValueError(
            f"{where} has 'lookahead_alpha', but this optimizer has an outer optimizer (no alpha)"
        )
    k, alpha = check_group_settings(where, saved, default_k, default_alpha)
    check_inner_class(where, saved, opt._inner)
    inner_group = {key: value for key, value in saved.items()
                   if key not in _GROUP_SCALARS and not _outer.is_outer_key(key)}
    inner_group["lookahead_k"] = k
    if opt._outer is None:
        inner_group["lookahead_alpha"] = alpha
    buffers: dict[str, list[Any]] = {key: [] for key in opt._slots[g].buffers}
    if plain:
        policy.check_group_alpha(f"{where}['lookahead_alpha']", alpha)
        return inner_group, GroupLoad(0, 0, None, buffers, {}), policy.alpha_min

    scalars = saved if section is None else policy.legacy_scalars(saved, section)
    alpha_min, last_alpha = policy.load_group_scalars(where, scalars)
    policy.check_group_alpha(f"{where}['lookahead_alpha']", alpha, alpha_min)
    if COUNT_KEY not in saved:
        raise ValueError(f"{where} is missing {COUNT_KEY!r}")
    count_value = saved[COUNT_KEY]
    if isinstance(count_value, torch.Tensor) and count_value.numel() == 1:
        count_value = count_value.reshape(())
    count = lc.check_count(count_value, k, policy.mode, name=f"{where}[{COUNT_KEY!r}]")
    if section is not None:
        rollbacks = section["rollbacks"] if g == 0 else 0  # 0.1.0 counted them for all groups
    else:
        if ROLLBACKS_KEY not in saved:
            raise ValueError(f"{where} is missing {ROLLBACKS_KEY!r}")
        rollbacks = _check_rollbacks(f"{where}[{ROLLBACKS_KEY!r}]", saved[ROLLBACKS_KEY])
    return inner_group, GroupLoad(count, rollbacks, last_alpha, buffers, {}), alpha_min


def _refuse_stripped_lookahead_groups(saved_groups: Any) -> None:
    """A Lookahead's groups without their counts: not a plain checkpoint, a stripped one.

    The groups of a plain checkpoint (an optimizer that never had Lookahead)
    have no ``lookahead_k``. Groups that have it but no ``lookahead_count`` come
    from a Lookahead's inner optimizer (``opt.optimizer.state_dict()``) or were
    rebuilt from the live optimizer's keys, as
    ``torch.distributed.checkpoint``'s ``flatten_optimizer_state_dict=True``
    does, which also drops the slow weights. Loading either would restart
    the slow weights silently.
    """
    for g, saved in enumerate(saved_groups):
        if "lookahead_k" in saved or "lookahead_alpha" in saved:
            raise ValueError(
                f"state_dict['param_groups'][{g}] has Lookahead's 'lookahead_k' but no "
                f"{COUNT_KEY!r}: this is not Lookahead.state_dict() but a state dict without its "
                "slow weights and cycle position (the inner optimizer's own state_dict(), or "
                "torch.distributed.checkpoint with flatten_optimizer_state_dict=True, which "
                "rebuilds the entries from the live inner state); save opt.state_dict(), or "
                "use the default StateDictOptions"
            )


def _check_rollbacks(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{where} must be an int >= 0, got {value!r}")
    return int(value)


def _check_legacy_section(opt: Lookahead, section: Any) -> dict[str, Any]:
    """The ``"lookahead"`` section of a 0.1.0 checkpoint, checked: its k, α, α_min, rollbacks."""
    where = "state_dict['lookahead']"
    if not isinstance(section, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(section).__name__}")
    mode = opt._alpha_policy.mode
    saved_mode = section.get("alpha_mode", "fixed")
    if saved_mode != mode:
        raise ValueError(
            f"{where}['alpha_mode'] is {saved_mode!r} (a missing key means 'fixed'), but this "
            f"optimizer has alpha_mode={mode!r}"
        )
    expected = {"format", "k", "alpha", "pullback", "rollbacks"}
    if mode == "adaptive":
        expected |= {"alpha_mode", "alpha_min"}
    if set(section) != expected:
        raise ValueError(f"{where} must have the keys {sorted(expected)}, got {sorted(map(str, section))}")
    if section["format"] != _LEGACY_FORMAT:
        raise ValueError(f"{where}['format'] must be {_LEGACY_FORMAT}, got {section['format']!r}")
    k = renamed(f"{where}['k']", lc.check_k, section["k"])
    alpha = renamed(f"{where}['alpha']", lc.check_alpha, section["alpha"])
    alpha_min = opt._alpha_policy.alpha_min
    if mode == "adaptive":
        alpha_min = renamed(f"{where}['alpha_min']", lc.check_alpha, section["alpha_min"])
        check_fallback(f"{where}['alpha']", alpha, alpha_min)
    pullback = opt._inner_policy.pullback
    if section["pullback"] != pullback:
        raise ValueError(
            f"{where}['pullback'] is {section['pullback']!r}, but this optimizer has pullback={pullback!r}"
        )
    rollbacks = _check_rollbacks(f"{where}['rollbacks']", section["rollbacks"])
    return {"k": k, "alpha": alpha, "alpha_min": alpha_min, "rollbacks": rollbacks}


def _refusal(opt: Lookahead, key: str) -> str:
    """Why this optimizer has no buffer ``key``."""
    if key == MOMENTUM_BUFFER:
        return f"pullback={opt._inner_policy.pullback!r}"
    return f"alpha_mode={opt._alpha_policy.mode!r}"


def _plan_buffers(
    opt: Lookahead, where: str, entry: Mapping[str, Any], param: torch.Tensor, i: int,
    load: GroupLoad, plain: bool,
) -> None:
    """Check one parameter's Lookahead buffers in ``entry`` and add them to ``load``."""
    if plain:
        found = [key for key in _BUFFER_KEYS if key in entry]
        if found:
            raise ValueError(
                f"{where} has {found} but no param group has {COUNT_KEY!r}: the groups of a "
                "Lookahead checkpoint keep their position in the cycle there (a state dict "
                "whose groups were rebuilt from the live optimizer, as torch.distributed."
                "checkpoint's flatten_optimizer_state_dict=True does, loses it)"
            )
        for key, values in load.buffers.items():
            values.append(None)
        return
    for key in _BUFFER_KEYS:
        if key in entry and key not in load.buffers:
            raise ValueError(f"{where} has {key!r}, but this optimizer has {_refusal(opt, key)}")
    for key, values in load.buffers.items():
        if key not in entry:
            what = " (the slow weights)" if key == SLOW_BUFFER else ""
            raise ValueError(f"{where} is missing {key!r}{what}")
        name = f"{where}[{key!r}]"
        value = _checked_tensor(name, entry[key], param)
        if key == SLOW_BUFFER and opt._nonfinite == "rollback" and not _distributed.all_ranks_finite(
            _all_finite(value), [value]
        ):
            # Under rollback the run would return to these weights at every blow-up.
            raise ValueError(
                f"{name} holds inf or NaN; with nonfinite='rollback' the slow weights are what a "
                "rollback returns to, so they must be finite"
            )
        values.append(_distributed.as_param_layout(name, value, param))


def _allocate_targets(opt: Lookahead, loads: list[GroupLoad]) -> None:
    """Buffers on each parameter's current device and dtype, allocated before anything changes.

    They differ from the current ones only for parameters moved or cast after
    construction (Accelerate's ``prepare()`` moves the model, then
    round-trips the state dict: φ follows). An allocation failure therefore
    also happens before the commit.
    """
    slow_device = opt.__dict__.get("_slow_device")
    for group, load in zip(opt._slots, loads):
        for key, current in group.buffers.items():
            load.targets[key] = [
                _buffer_for(buffer, p, buffer_dtype(key, p, opt._slow_dtype),
                            slow_device if key == SLOW_BUFFER else None)
                for buffer, p in zip(current, group.params)
            ]


def _checked_inner_entry(
    opt: Lookahead, where: str, entry: Mapping[str, Any], param: torch.Tensor
) -> dict[str, Any]:
    """The inner optimizer's part of a parameter's entry, checked, with private tensors.

    Tensors are copied (onto the parameter's device, except ``step``,
    which torch.optim keeps where it is), so the caller's dict is never
    shared; torch.optim then casts floating tensors to the parameter's dtype.
    """
    inner_state = opt._inner.state
    live = inner_state.get(param, {}) if param in inner_state else {}
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key in _BUFFER_KEYS or _outer.is_outer_key(key):
            continue  # Lookahead's own (the outer state: `_outer.plan_outer_load`)
        check_state_value(where, key, value)
        if isinstance(value, torch.Tensor):
            template = live.get(key)
            if key in _PARAM_SHAPED_KEYS:
                _checked_tensor(f"{where}[{key!r}]", value, param)
            elif isinstance(template, torch.Tensor) and value.shape != template.shape:
                raise ValueError(
                    f"{where}[{key!r}] must have shape {tuple(template.shape)}, got {tuple(value.shape)}"
                )
            value = value.detach().clone() if key == "step" else value.detach().to(
                device=param.device, copy=True
            )
        else:
            value = copy.deepcopy(value)
        out[key] = value
    return out


def commit_load(opt: Lookahead, plan: LoadPlan) -> None:
    """Install what `plan_load` checked (after the inner optimizer loaded its part)."""
    inner_state = opt._inner.state
    with torch.no_grad():
        for group, load in zip(opt._slots, plan.groups):
            for key, targets in load.targets.items():
                for i, (target, value) in enumerate(zip(targets, load.buffers[key])):
                    p = group.params[i]
                    if value is None:  # a plain checkpoint: φ = θ now, the others by policy
                        if key == SLOW_BUFFER:
                            value = p.detach()
                        elif key == opt._inner_policy.buffer_key:
                            value = opt._inner_policy.plain_load_value(p, inner_state)
                    if value is None:
                        _distributed.local(target).zero_()
                    else:
                        # DTensors are laid out like the parameter (see plan_load): shard to shard.
                        _copy_into(target, value)
                group.buffers[key] = targets
            group.count = load.count
            group.rollbacks = load.rollbacks
            group.last_alpha = load.last_alpha
    if plan.defaults is not None:
        opt._k, opt._alpha = plan.defaults
    opt._alpha_policy.alpha_min = plan.alpha_min


def _copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst ← src``; shard to shard when both are DTensors sharded alike (no communication)."""
    if _distributed.same_layout(dst, src):
        _distributed.local(dst).copy_(_distributed.local(src))
    else:
        dst.copy_(src)


def _buffer_for(current: torch.Tensor, param: torch.Tensor, dtype: torch.dtype,
                host: torch.device | None = None) -> torch.Tensor:
    """``current`` if it fits ``param``'s device and shape in ``dtype``, else a new buffer that does.

    ``host``: the slow weights of ``slow_device="cpu"``, which belong in pinned host memory.
    """
    if host is not None:
        if current.device == host and current.dtype == dtype and current.shape == param.shape:
            return current
        from ._offload import host_copy

        return host_copy(param, dtype)
    if (
        current.device == param.device
        and current.dtype == dtype
        and current.shape == param.shape
        and _distributed.same_layout(current, param)
    ):
        return current
    return torch.empty_like(param, dtype=dtype, memory_format=torch.preserve_format)


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


def _all_finite(value: torch.Tensor) -> bool:
    local = _distributed.local(value)
    return local.numel() == 0 or bool(torch.isfinite(local).all())
