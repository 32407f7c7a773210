"""What the inner optimizer's part of a checkpoint may hold, checked before anything loads.

``torch.optim.Optimizer.load_state_dict`` checks only the number of groups and
of parameters: another optimizer's checkpoint, a group without ``momentum``,
a string ``lr`` or an Adam ``step`` of ``"x"`` load, and the failure comes at
the next step, or half-way through the load (``Adam.__setstate__`` raises
after the state was replaced). Lookahead loads all or nothing, so it checks
the inner part first:

- the inner optimizer's class, recorded in each group of a Lookahead
  checkpoint (``"lookahead_inner"``);
- the groups as the inner optimizer itself would accept them: its own
  ``__setstate__`` runs on a throwaway instance with the checkpoint's groups
  and state (no tensor is copied), which fills the keys that class defaults
  and raises on values it cannot convert; every key a live group has must
  then be there, with a value of the same kind;
- the values of the state that would break the next step: a negative or
  non-finite ``step``, a negative second moment.

`load_all_or_nothing` is the backstop: if the inner load raises anyway, the
inner optimizer's ``state`` and ``param_groups`` are put back.
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from . import _distributed

__all__ = [
    "INNER_KEY",
    "check_group_keys",
    "check_inner_class",
    "check_state_entries",
    "check_state_value",
    "inner_class_name",
    "load_all_or_nothing",
    "rehearse_setstate",
    "rehearse_step",
]

INNER_KEY = "lookahead_inner"

_SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_FIRST_MOMENTS = ("momentum_buffer", "exp_avg")


def inner_class_name(optimizer: torch.optim.Optimizer) -> str:
    """``module.QualName`` of the inner optimizer's class, as a checkpoint records it."""
    cls = type(optimizer)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_inner_class(where: str, saved: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """A Lookahead checkpoint's group must come from an inner optimizer of the same class."""
    if INNER_KEY not in saved:
        return  # plain checkpoints and 0.1.0's do not record it: the key check below still runs
    expected = inner_class_name(optimizer)
    if saved[INNER_KEY] != expected:
        raise ValueError(
            f"{where}[{INNER_KEY!r}] is {saved[INNER_KEY]!r}: a checkpoint of another inner "
            f"optimizer, this one is {expected}"
        )


def check_state_value(where: str, key: str, value: Any) -> None:
    """A value of the inner state that the next step could not survive is refused.

    ``step`` (a number or a one-element tensor) must be finite and >= 0; the
    second moments of Adam/AdamW must be >= 0 (Adam takes their square root).
    Non-finite moments load as they are (a faithful copy of a run that blew up).
    """
    if key == "step":
        number = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        if isinstance(number, bool) or not isinstance(number, numbers.Real):
            raise TypeError(f"{where}[{key!r}] must be a number >= 0, got {value!r}")
        # torch.optim keeps the step as a float32 tensor: it must stay finite there.
        if not 0.0 <= float(number) <= _FLOAT32_MAX:
            raise ValueError(f"{where}[{key!r}] must be a finite number >= 0, got {number!r}")
        return
    if key not in _FIRST_MOMENTS + _SECOND_MOMENTS or not isinstance(value, torch.Tensor):
        return
    local = _distributed.local(value)
    if local.numel() == 0 or not (local.is_floating_point() or local.is_complex()):
        return
    # inf/NaN load as they are: a checkpoint is a faithful copy of a run, also of one
    # that blew up (under nonfinite='rollback' the next sync rolls it back).
    if key in _SECOND_MOMENTS and bool((local < 0).any()):
        raise ValueError(
            f"{where}[{key!r}] holds negative values; a second moment is >= 0 (Adam takes its "
            "square root)"
        )


def required_state_keys(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> set[str] | None:
    """The keys a non-empty state entry of ``optimizer`` must have in ``group``, if known.

    Known for ``torch.optim.SGD`` (with momentum) and ``Adam``/``AdamW`` (and
    their subclasses); ``None`` for other optimizers, whose entries are then
    compared with the live state and with each other.
    """
    if isinstance(optimizer, torch.optim.Adam) or isinstance(optimizer, torch.optim.AdamW):
        keys = {"step", "exp_avg", "exp_avg_sq"}
        if group.get("amsgrad", False):
            keys.add("max_exp_avg_sq")
        return keys
    if isinstance(optimizer, torch.optim.SGD):
        return {"momentum_buffer"} if float(group.get("momentum", 0.0) or 0.0) != 0.0 else set()
    return None


def check_state_entries(
    where: str,
    entries: Mapping[Any, Mapping[str, Any]],
    optimizer: torch.optim.Optimizer,
    group: Mapping[str, Any],
    live: Mapping[Any, Mapping[str, Any]],
) -> None:
    """The inner part of each non-empty saved entry of one group has the keys the optimizer reads.

    ``entries`` maps each parameter to the inner part of its saved entry (as
    `where` names it), ``live`` to its live state, if any. A missing key is a
    ``KeyError`` at the next step, a value of another kind an ``AttributeError``.
    """
    required = required_state_keys(optimizer, group)
    nonempty = {p: entry for p, entry in entries.items() if entry}
    if required is None:
        templates = [set(live[p]) for p in nonempty if p in live and live[p]]
        union = set().union(*map(set, nonempty.values())) if nonempty else set()
        required = templates[0] if templates else union
    for p, entry in nonempty.items():
        missing = sorted(required - set(entry))
        if missing:
            raise ValueError(
                f"{where(p)} is missing {missing}; {type(optimizer).__name__}'s state of a parameter "
                f"has {sorted(required)}"
            )
        for key, value in entry.items():
            template = live.get(p, {}).get(key) if p in live else None
            expect_tensor = key in _FIRST_MOMENTS + _SECOND_MOMENTS or isinstance(template, torch.Tensor) and key != "step"
            if expect_tensor and not isinstance(value, torch.Tensor) and not (value is None and key == "momentum_buffer"):
                raise TypeError(f"{where(p)}[{key!r}] must be a torch.Tensor, got {type(value).__name__}")


def rehearse_setstate(
    optimizer: torch.optim.Optimizer,
    groups: Sequence[Mapping[str, Any]],
    state: Mapping[Any, Mapping[str, Any]],
) -> list[dict[str, Any]] | None:
    """The groups as ``type(optimizer).__setstate__`` leaves them, run on a throwaway instance.

    ``groups`` are the checkpoint's groups with their ``params`` replaced by
    the live parameters, ``state`` its entries keyed by live parameter. The
    entries are copied shallowly (a class may replace values, e.g. Adam turns
    a number ``step`` into a tensor); no tensor is copied or changed.

    Returns:
        The groups after ``__setstate__``, or ``None`` when the class cannot
        be rehearsed at all (its ``__setstate__`` fails on the optimizer's own
        current state too): then only the other checks apply.

    Raises:
        ValueError: ``__setstate__`` refuses the checkpoint's groups or state.
    """
    cls = type(optimizer)

    def rehearse(rehearsed_groups: Sequence[Mapping[str, Any]], rehearsed_state: Mapping[Any, Any]) -> list[dict[str, Any]]:
        dummy = cls.__new__(cls)
        cls.__setstate__(dummy, {
            "defaults": dict(optimizer.defaults),
            "state": {p: dict(entry) for p, entry in rehearsed_state.items()},
            "param_groups": [dict(group) for group in rehearsed_groups],
        })
        return dummy.param_groups

    try:
        rehearse(optimizer.param_groups, optimizer.state)
    except Exception:  # noqa: BLE001 - a class that needs more than its state: cannot rehearse
        return None
    try:
        after = rehearse(groups, state)
    except Exception as exc:  # noqa: BLE001 - whatever the class raises, the load must not start
        raise ValueError(
            f"the inner optimizer ({cls.__name__}) refuses this checkpoint: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return after


def rehearse_step(optimizer: torch.optim.Optimizer, groups: Sequence[Mapping[str, Any]]) -> None:
    """One step with ``groups``' settings on stand-ins must run (see `_steps_on_stand_ins`).

    Skipped for a class that cannot take that step with its own current
    groups either (one that needs a closure, such as LBFGS).

    Raises:
        ValueError: the step fails with the checkpoint's settings.
    """
    if _steps_on_stand_ins(optimizer, optimizer.param_groups) is not None:
        return
    try:
        _steps_on_stand_ins(optimizer, groups, strict=True)
    except Exception as exc:  # noqa: BLE001 - whatever the class raises, the load must not start
        raise ValueError(
            f"the inner optimizer ({type(optimizer).__name__}) cannot step with this checkpoint's "
            f"param_groups: {type(exc).__name__}: {exc}"
        ) from None


def _steps_on_stand_ins(
    optimizer: torch.optim.Optimizer, groups: Sequence[Mapping[str, Any]], strict: bool = False
) -> Exception | None:
    """One step of a throwaway ``type(optimizer)`` with ``groups``' settings on one-element stand-ins.

    Each parameter is replaced by a one-element zero tensor of its dtype and
    device with a zero gradient, and the state is empty: what fails here (an
    ``lr`` of ``None``, betas of 1, ``capturable=True`` on the CPU, an ``lr``
    that overflows the parameters' dtype) fails at the next real step. The
    class's step runs unwrapped, so no global step hook sees the rehearsal.

    Returns:
        ``None`` if the step ran; the exception otherwise (``strict``: raised).
    """
    cls = type(optimizer)
    stand_in_groups = []
    for group in groups:
        params = []
        for p in group["params"]:
            local = _distributed.local(p)
            stand_in = torch.zeros(1, dtype=local.dtype, device=local.device, requires_grad=True)
            stand_in.grad = torch.zeros_like(stand_in)
            params.append(stand_in)
        stand_in_groups.append({**group, "params": params})
    dummy = cls.__new__(cls)
    step = getattr(cls.step, "__wrapped__", cls.step)
    try:
        cls.__setstate__(dummy, {"defaults": dict(optimizer.defaults), "state": defaultdict(dict),
                                 "param_groups": stand_in_groups})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            step(dummy)
    except Exception as exc:  # noqa: BLE001 - reported or raised by the caller
        if strict:
            raise
        return exc
    return None


def check_group_keys(where: str, rehearsed: Mapping[str, Any], live: Mapping[str, Any]) -> None:
    """Every key of the live group is in the (rehearsed) saved group, with a value of its kind.

    A missing key would be a ``KeyError`` at the next step (a checkpoint of
    another optimizer: Adam's groups have no ``momentum``); a string ``lr`` a
    ``TypeError``. Extra keys are allowed (LR schedulers add ``initial_lr``).
    """
    missing = sorted(key for key in live if key not in rehearsed)
    if missing:
        raise ValueError(
            f"{where} is missing {missing}, which this inner optimizer's groups have: a "
            "checkpoint of another optimizer?"
        )
    for key, value in live.items():
        if key in ("params", "param_names"):
            continue
        saved = rehearsed[key]
        if not _same_kind(value, saved):
            raise TypeError(
                f"{where}[{key!r}] must be {_kind(value)} like this optimizer's, got {saved!r}"
            )


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, (numbers.Real, torch.Tensor)):
        return "a number"
    if isinstance(value, (tuple, list)):
        return f"a sequence of {len(value)}"
    return type(value).__name__


def _same_kind(live: Any, saved: Any) -> bool:
    if live is None or saved is None:
        return True  # None is a legitimate setting of many options (foreach, fused, ...)
    if isinstance(live, bool):
        return isinstance(saved, bool)
    if isinstance(live, (numbers.Real, torch.Tensor)):
        if isinstance(saved, torch.Tensor):
            return saved.numel() == 1
        return isinstance(saved, numbers.Real) and not isinstance(saved, bool)
    if isinstance(live, (tuple, list)):
        return isinstance(saved, (tuple, list)) and len(saved) == len(live) and all(
            _same_kind(a, b) for a, b in zip(live, saved)
        )
    return True


@contextlib.contextmanager
def load_all_or_nothing(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Put ``optimizer``'s ``state`` and ``param_groups`` back if the block raises.

    ``torch.optim.Optimizer.load_state_dict`` builds a new state mapping and
    new group dicts and then installs them: the old ones are untouched until
    then, so restoring the two references undoes a load that failed after
    installing them (in a subclass's ``__setstate__`` or a post hook).
    """
    saved = {key: optimizer.__dict__[key] for key in ("state", "param_groups") if key in optimizer.__dict__}
    try:
        yield
    except BaseException:
        optimizer.__dict__.update(saved)
        raise
