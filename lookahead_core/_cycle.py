"""The cycle of Algorithm 1, defined once: what each ``step`` call does, and what a checkpoint may say.

A Lookahead group counts the inner steps it has executed since its last sync,
``count``. Every backend (the pure `lookahead_core.lookahead`, the traceable
variant, the NumPy, CuPy and PyTorch adapters) asks `plan_step` what a call
does at that count and applies the answer with its own arrays; none of them
decides the schedule itself. Checkpoint loaders validate the schedule's
scalars with `check_count` and `check_last_alpha`.

With a fixed α (the paper), a cycle is k calls, each an inner step (eq. 0.2),
the k-th followed by the sync::

    count:   0      1     …   k-1
    call:  inner  inner   …  inner + sync   → count 0

With ``alpha_mode="adaptive"`` the sync needs ∇L(θ_{t,k}), which exists only
after the k-th inner step, so a cycle is k + 1 calls: the first records
∇L(θ_{t,0}), the (k+1)-th estimates α (eq. 0.3) and syncs without an inner
step::

    count:   0               1     …   k-1     k
    call:  record + inner  inner   …  inner   estimate + sync   → count 0

A new kind of outer step changes what the sync computes, not when it happens:
it needs a sync function in the core and a kernel in each adapter, and no
change here.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, NamedTuple

from ._validation import check_alpha

__all__ = [
    "ALPHA_MODES",
    "StepPlan",
    "check_count",
    "check_last_alpha",
    "completes_cycle",
    "count_limit",
    "plan_step",
]

ALPHA_MODES = ("fixed", "adaptive")
"""The values `lookahead_core.lookahead` accepts for ``alpha_mode``."""


class StepPlan(NamedTuple):
    """What one ``step`` call does (see `plan_step`).

    Attributes:
        inner: take an inner step (eq. 0.2) with this call's gradients.
        record_start: adaptive mode: before the inner step, copy this call's
            gradients, ∇L(θ_{t,0}), into the start buffers.
        estimate: adaptive mode: this call's gradients are ∇L(θ_{t,k}); estimate
            α from them (eq. 0.3) for the sync.
        sync: after the inner step (if any), sync: ``φ ← φ + α(θ − φ)``, ``θ ← φ``.
        count: the count after this call.
    """

    inner: bool
    record_start: bool
    estimate: bool
    sync: bool
    count: int


def completes_cycle(count: Any, k: int) -> Any:
    """Whether an inner step taken at ``count`` ends the cycle (fixed α): ``count + 1 >= k``.

    Works on a Python ``int`` and on a 0-d integer array alike, so the
    traceable variant decides with it under a tracing compiler (a count at or
    past k, from a lowered k, syncs at once).
    """
    return count + 1 >= k


def plan_step(count: int, k: int, alpha_mode: str = "fixed") -> StepPlan:
    """What a ``step`` call does for a group at position ``count`` of a cycle of period ``k``.

    A count at or past k with a fixed α (a group whose ``k`` was lowered
    mid-cycle) syncs at this step, as the k-th would.

    Args:
        count: executed inner steps since the group's last sync (an ``int`` >= 0).
        k: the group's synchronization period (an ``int`` >= 1).
        alpha_mode: ``"fixed"`` or ``"adaptive"``.

    Returns:
        A `StepPlan`.
    """
    if alpha_mode == "adaptive":
        if count >= k:
            return StepPlan(inner=False, record_start=False, estimate=True, sync=True, count=0)
        return StepPlan(inner=True, record_start=count == 0, estimate=False, sync=False,
                        count=count + 1)
    if completes_cycle(count, k):
        return StepPlan(inner=True, record_start=False, estimate=False, sync=True, count=0)
    return StepPlan(inner=True, record_start=False, estimate=False, sync=False, count=count + 1)


def count_limit(k: int, alpha_mode: str = "fixed") -> int:
    """The largest count a group may hold between calls: ``k - 1``, or ``k`` in adaptive mode.

    In adaptive mode ``count == k`` means the cycle's k inner steps are done
    and the estimate-and-sync call is pending.
    """
    return k if alpha_mode == "adaptive" else k - 1


def check_count(count: Any, k: int, alpha_mode: str = "fixed", name: str = "count") -> int:
    """A checkpoint's position in the cycle as a Python ``int`` in ``[0, count_limit(k)]``.

    Accepts Python and NumPy integers and 0-d integer arrays (what ``np.load``
    and ``torch.load`` return), not bools or floats.

    Raises:
        TypeError: not an integer.
        ValueError: outside ``[0, k)`` (``[0, k]`` in adaptive mode).
    """
    interval = f"[0, {k}]" if alpha_mode == "adaptive" else f"[0, {k})"
    value = _as_integer(count)
    if value is None:
        raise TypeError(f"{name} must be an int in {interval}, got {count!r}")
    if not 0 <= value <= count_limit(k, alpha_mode):
        symbolic = "[0, k]" if alpha_mode == "adaptive" else "[0, k)"
        pending = "; in adaptive mode count k means the sync is pending" if alpha_mode == "adaptive" else ""
        raise ValueError(
            f"{name} must be in {symbolic} = {interval} (the position in the cycle must be an "
            f"int in {interval}{pending}), got {value}"
        )
    return value


def check_last_alpha(value: Any, alpha_min: float, name: str = "last_alpha") -> float | None:
    """A checkpoint's α of the most recent adaptive sync: ``None`` or a float in ``[alpha_min, 1]``.

    ``None`` (or NaN, which stands for it where a format cannot store
    ``None``) means no sync has happened yet.

    Raises:
        TypeError: not a real number or ``None``.
        ValueError: outside ``[alpha_min, 1]``.
    """
    if value is None:
        return None
    if hasattr(value, "ndim") and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [alpha_min, 1] or None, got {value!r}")
    value = float(value)
    if math.isnan(value):
        return None
    alpha_min = check_alpha(alpha_min, name="alpha_min")
    if not alpha_min <= value <= 1.0:
        raise ValueError(
            f"{name} must be None or in [alpha_min, 1] = [{alpha_min}, 1], got {value}"
        )
    return value


def _as_integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return operator.index(value)
    # A 0-d integer array (np.load, a torch tensor): its one value.
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        item = value.item()
        if isinstance(item, numbers.Integral) and not isinstance(item, bool):
            return int(item)
    return None
