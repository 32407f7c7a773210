"""The scalars of the two-sided lerp, shared by every in-place sync kernel."""

from __future__ import annotations

__all__ = ["lerp_weights"]


def lerp_weights(alpha: float) -> tuple[float, bool]:
    """``(weight, low)`` of the two-sided lerp: ``(α, True)`` if α < 0.5, else ``(1 − α, False)``.

    A kernel then computes ``diff = θ − φ`` and ``φ + weight·diff`` when ``low``,
    else ``θ − weight·diff``: the operations of `lookahead_core.lerp`, exact at
    α = 0 and α = 1. ``1 − α`` is computed here in double precision, as the core
    computes it (a GPU kernel rounds it to its compute type when it is passed).
    """
    low = alpha < 0.5
    return (alpha if low else 1.0 - alpha), low
