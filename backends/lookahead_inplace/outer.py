"""The outer optimizer of the in-place adapters: which ones run in place, and their scalars.

With ``outer=O`` the sync is O's step on the pseudo-gradient Δ = φ − θ
(`lookahead_core.outer_sync`)::

    Δ ← φ − θ
    φ ← φ + O.update(Δ, O_state, φ)
    θ ← φ

For the core's `lookahead_core.sgd`, `lookahead_core.adam` and
`lookahead_core.adamw` an adapter runs this step in place, with no temporary
array: Δ is written over θ (which the step overwrites with φ anyway), and O's
buffers (SGD's momentum buffer; Adam's m and v, and the running maximum of v
with ``amsgrad``) are the arrays of O's state, allocated once by ``O.init`` at
construction and updated in place. `in_place_plan` recognises those three
optimizers and reads their hyperparameters; `sgd_scalars` and `adam_scalars`
compute the Python floats their update multiplies by, with the core's
expressions, so that a kernel doing the core's array operations in the core's
order gets the core's bits. Any other `lookahead_core.InnerOptimizer` has no
plan (``None``): the adapter then calls its ``update`` (which allocates).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, NamedTuple

import lookahead_core as lc

__all__ = [
    "AdamPlan",
    "AdamScalars",
    "SGDPlan",
    "SGDScalars",
    "adam_scalars",
    "buffer_fields",
    "in_place_plan",
    "outer_buffers",
    "sgd_scalars",
]

_CORE_MODULE = "lookahead_core._inner"


class SGDPlan(NamedTuple):
    """`lookahead_core.sgd`'s hyperparameters, as its ``update`` holds them."""

    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool


class AdamPlan(NamedTuple):
    """`lookahead_core.adam`'s (``decoupled=False``) or `lookahead_core.adamw`'s hyperparameters."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    decoupled: bool


def in_place_plan(outer: lc.InnerOptimizer) -> SGDPlan | AdamPlan | None:
    """The in-place plan of ``outer`` if it is the core's sgd, adam or adamw, else ``None``.

    Recognised by its functions, not by its name (a user's optimizer may be
    called ``"sgd"``): ``init`` and ``update`` must be the closures that
    `lookahead_core.sgd` or `lookahead_core.adam`/`adamw` return, and the
    hyperparameters are read from ``update``'s closure, the values it
    computes with (the ``hyperparams`` dict is a copy a caller could edit).
    """
    update, init = outer.update, outer.init
    if getattr(update, "__module__", None) != _CORE_MODULE or \
            getattr(init, "__module__", None) != _CORE_MODULE:
        return None
    family = getattr(update, "__qualname__", "").partition(".<locals>.")[0]
    if getattr(init, "__qualname__", "") != f"{family}.<locals>.init":
        return None
    try:
        values = inspect.getclosurevars(update).nonlocals
        if family == "sgd":
            return SGDPlan(*(values[name] for name in SGDPlan._fields))
        if family == "_adam_family":
            return AdamPlan(*(values[name] for name in AdamPlan._fields))
    except (KeyError, TypeError, ValueError):  # another core version: run it as it is
        return None
    return None


class SGDScalars(NamedTuple):
    """The Python floats of one outer SGD step (see `sgd_scalars`).

    Attributes:
        neg_lr: ``−lr`` (delta = −lr·d).
        momentum: μ.
        one_minus_dampening: ``1 − dampening`` (the gradient's weight in the buffer).
        weight_decay: the L2 coefficient (``0.0``: no term).
        first: the buffer takes a copy of the gradient (the state's step count is 0).
    """

    neg_lr: float
    momentum: float
    one_minus_dampening: float
    weight_decay: float
    first: bool


def sgd_scalars(plan: SGDPlan, step: int) -> SGDScalars:
    """The scalars of the step that follows ``step`` updates, as `lookahead_core.sgd` computes them."""
    return SGDScalars(-plan.lr, plan.momentum, 1.0 - plan.dampening, plan.weight_decay, step == 0)


class AdamScalars(NamedTuple):
    """The Python floats of one outer Adam step (see `adam_scalars`).

    Attributes:
        m_weight: the weight of m's two-sided lerp toward g: ``1 − β₁`` when
            ``m_low`` (``m + w·(g − m)``), else ``1 − (1 − β₁)`` (``g − w·(g − m)``).
        m_low: which side of the lerp (``1 − β₁ < 0.5``).
        beta2: β₂.
        one_minus_beta2: ``1 − β₂``.
        neg_step_size: ``−lr / (1 − β₁ˢ)``.
        bias_correction2_sqrt: ``√(1 − β₂ˢ)``.
        eps: ε.
        l2: the L2 coefficient added to the gradient (Adam; ``0.0`` for AdamW).
        decay: ``lr·weight_decay``, subtracted times φ from delta (AdamW), or
            ``None``: no such term. As in the core, the term is there whenever
            the weight decay is nonzero, even if ``lr`` is 0 (``0·φ`` is NaN
            where φ is inf).
    """

    m_weight: float
    m_low: bool
    beta2: float
    one_minus_beta2: float
    neg_step_size: float
    bias_correction2_sqrt: float
    eps: float
    l2: float
    decay: float | None


def adam_scalars(plan: AdamPlan, step: int) -> AdamScalars:
    """The scalars of the step that follows ``step`` updates, with the core's expressions.

    ``step`` is the state's count before the step; the bias corrections use
    ``s = step + 1`` (`lookahead_core.adam`: ``lr / (1 − β₁ˢ)`` and
    ``√(1 − β₂ˢ)`` in Python double precision).
    """
    s = step + 1
    step_size = plan.lr / (1.0 - plan.beta1**s)
    bias_correction2_sqrt = math.sqrt(1.0 - plan.beta2**s)
    weight = 1.0 - plan.beta1
    low = weight < 0.5
    return AdamScalars(
        m_weight=weight if low else 1.0 - weight,
        m_low=low,
        beta2=plan.beta2,
        one_minus_beta2=1.0 - plan.beta2,
        neg_step_size=-step_size,
        bias_correction2_sqrt=bias_correction2_sqrt,
        eps=plan.eps,
        l2=0.0 if plan.decoupled else plan.weight_decay,
        decay=plan.lr * plan.weight_decay if plan.decoupled and plan.weight_decay != 0.0 else None,
    )


def buffer_fields(plan: SGDPlan | AdamPlan) -> tuple[str, ...]:
    """The fields of O's state that hold the buffers the in-place step updates.

    SGD: ``("momentum_buffer",)`` with momentum, ``()`` without. Adam:
    ``("exp_avg", "exp_avg_sq")``, plus ``"max_exp_avg_sq"`` with ``amsgrad``.
    """
    if isinstance(plan, SGDPlan):
        return ("momentum_buffer",) if plan.momentum > 0.0 else ()
    return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if plan.amsgrad else ())


def outer_buffers(plan: SGDPlan | AdamPlan, state: Any) -> tuple[tuple[Any, ...], ...]:
    """The buffers of `buffer_fields` in ``state``, field by field, one array per parameter."""
    return tuple(tuple(getattr(state, field)) for field in buffer_fields(plan))
