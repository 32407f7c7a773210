"""Argument and checkpoint checks of the PyTorch adapter.

Every check runs before anything is mutated and raises ``TypeError`` or
``ValueError`` whose message names the argument (or the checkpoint entry) and
the expected value. The core's `lookahead_core.check_k` and
`lookahead_core.check_alpha` are the rules for k and α everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

import lookahead_core as lc

from ._momentum import PULLBACK_MODES

__all__ = [
    "NONFINITE_MODES",
    "check_fallback",
    "check_group_settings",
    "check_nonfinite",
    "check_param",
    "check_pullback",
    "check_slow_dtype",
    "group_alpha",
    "group_k",
    "renamed",
]

NONFINITE_MODES = lc.NONFINITE_MODES
check_nonfinite = lc.check_nonfinite

T = TypeVar("T")


def renamed(name: str, check: Callable[[Any], T], value: Any) -> T:
    """Run ``check(value)`` and report errors under ``name`` instead of the check's own name."""
    try:
        return check(value)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        for own in ("alpha", "k"):
            if message.startswith(own + " "):
                message = message[len(own) + 1 :]
                break
        raise type(exc)(f"{name} {message}") from None


def check_fallback(name: str, alpha: float, alpha_min: float) -> float:
    """Adaptive mode: the fallback ``alpha`` (already checked in [0, 1]) must be >= ``alpha_min``."""
    if alpha < alpha_min:
        raise ValueError(
            f"{name} (the fallback of adaptive mode) must be in [alpha_min, 1] "
            f"= [{alpha_min}, 1], got {alpha}"
        )
    return alpha


def group_k(where: str, group: Mapping[str, Any], default: int) -> int:
    """The group's ``lookahead_k`` (or ``default``), checked."""
    if "lookahead_k" not in group:
        return default
    return renamed(f"{where}['lookahead_k']", lc.check_k, group["lookahead_k"])


def group_alpha(where: str, group: Mapping[str, Any], default: float) -> float:
    """The group's ``lookahead_alpha`` (or ``default``), checked and a Python float."""
    if "lookahead_alpha" not in group:
        return default
    return renamed(f"{where}['lookahead_alpha']", lc.check_alpha, group["lookahead_alpha"])


def check_group_settings(where: str, group: Any, k: int, alpha: float) -> tuple[int, float]:
    """Check a param group's per-group Lookahead settings; return its (k, α)."""
    if not isinstance(group, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(group).__name__}")
    return group_k(where, group, k), group_alpha(where, group, alpha)


def check_param(where: str, param: Any) -> None:
    """A parameter the sync can interpolate: a floating point or complex tensor."""
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"{where} must be a torch.Tensor, got {type(param).__name__}")
    if not (param.is_floating_point() or param.is_complex()):
        raise TypeError(
            f"{where} must have a floating point or complex dtype (Lookahead interpolates "
            f"it), got {param.dtype}"
        )
    if param.is_sparse or param.layout != torch.strided:
        raise TypeError(f"{where} must be a dense (strided) tensor, got layout {param.layout}")


def check_pullback(pullback: Any) -> str:
    """``pullback`` is one of ``"none"``, ``"reset"``, ``"pullback"``."""
    if not isinstance(pullback, str):
        raise TypeError(
            f"pullback must be one of {', '.join(map(repr, PULLBACK_MODES))}, "
            f"got {pullback!r} of type {type(pullback).__name__}"
        )
    if pullback not in PULLBACK_MODES:
        raise ValueError(
            f"pullback must be one of {', '.join(map(repr, PULLBACK_MODES))}, got {pullback!r}"
        )
    return pullback


def check_slow_dtype(slow_dtype: Any) -> torch.dtype | None:
    """``slow_dtype`` is ``None``, ``torch.float32`` or ``torch.float64``."""
    if slow_dtype is None:
        return None
    if not isinstance(slow_dtype, torch.dtype):
        raise TypeError(
            "slow_dtype must be None, torch.float32 or torch.float64, got "
            f"{slow_dtype!r} of type {type(slow_dtype).__name__}"
        )
    if slow_dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"slow_dtype must be None, torch.float32 or torch.float64, got {slow_dtype}"
        )
    return slow_dtype
