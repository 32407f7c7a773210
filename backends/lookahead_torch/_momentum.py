"""What ``pullback`` acts on in each inner optimizer's state.

See docs/design.md, 'Inner state at a sync', for the rule this implements.

At a sync the weights jump back toward the slow weights; the inner optimizer's
momentum still points along the fast trajectory. The options:

- ``"none"`` (the paper): the inner state is left alone.
- ``"reset"``: the momentum is zeroed in place.
- ``"pullback"``: the momentum is interpolated like the weights, toward a
  slow copy of it kept by Lookahead: ``m_slow ← lerp(m_slow, m, α)``, then
  ``m ← m_slow`` (the same kernel as the weights; ``m_slow`` starts at zero,
  the momentum of the initial weights).

The momentum of each supported inner optimizer:

| inner optimizer | momentum (acted on) | left alone |
|---|---|---|
| ``torch.optim.SGD`` (``momentum > 0``) | ``momentum_buffer`` | |
| ``torch.optim.Adam``, ``AdamW`` | ``exp_avg`` (1st moment) | ``exp_avg_sq``, ``max_exp_avg_sq``, ``step`` |

Adam's second moment is left alone on purpose: it estimates the scale of the
gradients, which a sync does not change, and zeroing it would restart the
per-coordinate step sizes cold (bias correction uses ``step``, which is kept).
A full restart of the inner state is ``reset_inner_state=True`` instead, which
works for every optimizer that initializes its per-parameter state lazily (all
of ``torch.optim``). Subclasses of these optimizers share their mapping; any
other inner optimizer with ``pullback != "none"`` is a ``ValueError`` at
construction.
"""

from __future__ import annotations

import torch

__all__ = ["MOMENTUM_KEYS", "PULLBACK_MODES", "momentum_key"]

PULLBACK_MODES = ("none", "reset", "pullback")

MOMENTUM_KEYS: tuple[tuple[type[torch.optim.Optimizer], str], ...] = (
    (torch.optim.SGD, "momentum_buffer"),
    (torch.optim.Adam, "exp_avg"),  # AdamW derives from Adam in torch >= 2.6; listed for older torch
    (torch.optim.AdamW, "exp_avg"),
)


def momentum_key(optimizer: torch.optim.Optimizer) -> str | None:
    """The per-parameter state key holding ``optimizer``'s momentum, or ``None`` if unmapped."""
    for cls, key in MOMENTUM_KEYS:
        if isinstance(optimizer, cls):
            return key
    return None
