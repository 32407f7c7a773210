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
  non-finite ``step``, a non-finite momentum or moment, a negative second moment.

`load_all_or_nothing` is the backstop: if the inner load raises anyway, the
inner optimizer's ``state`` and ``param_groups`` are put back.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from . import _distributed

__all__ = [
    "INNER_KEY",
    "check_group_keys",
    "check_inner_class",
    "check_state_value",
    "inner_class_name",
    "load_all_or_nothing",
    "rehearse_setstate",
]

INNER_KEY = "lookahead_inner"

_SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")
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
    momentum and moment tensors of SGD and Adam/AdamW must be finite, the
    second moments also >= 0 (Adam divides by their square root).
    """
    if key == "step":
        number = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        if isinstance(number, bool) or not isinstance(number, numbers.Real):
            raise TypeError(f"{where}[{key!r}] must be a number >= 0, got {value!r}")
        if not math.isfinite(float(number)) or float(number) < 0:
            raise ValueError(f"{where}[{key!r}] must be a finite number >= 0, got {number!r}")
        return
    if key not in _FIRST_MOMENTS + _SECOND_MOMENTS or not isinstance(value, torch.Tensor):
        return
    local = _distributed.local(value)
    if local.numel() == 0 or not (local.is_floating_point() or local.is_complex()):
        return
    if not bool(torch.isfinite(local).all()):
        raise ValueError(f"{where}[{key!r}] holds inf or NaN; the next step would spread it")
    if key in _SECOND_MOMENTS and bool((local < 0).any()):
        raise ValueError(
            f"{where}[{key!r}] holds negative values; a second moment is >= 0 (Adam takes its "
            "square root)"
        )


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
        return rehearse(groups, state)
    except Exception as exc:  # noqa: BLE001 - whatever the class raises, the load must not start
        raise ValueError(
            f"the inner optimizer ({cls.__name__}) refuses this checkpoint: "
            f"{type(exc).__name__}: {exc}"
        ) from None


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
