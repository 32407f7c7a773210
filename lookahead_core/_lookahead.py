"""Lookahead (Zhang, Lucas, Hinton, Ba, 2019), Algorithm 1, as pure functions.


    φ₀ ← θ₀
    for t = 1, 2, …:
        θ_{t,0} ← φ_{t-1}
        for i = 1..k:   θ_{t,i} ← θ_{t,i-1} + A(L, θ_{t,i-1}, d)      (eq. 0.2)
        φ_t ← φ_{t-1} + α (θ_{t,k} − φ_{t-1})                         (sync)

Unrolled, the slow weights are an exponential moving average of the fast
weights at the end of each inner loop (eq. 0.1), see `ema_closed_form`.

With an outer optimizer O (``outer=``), the sync is O's step on the
pseudo-gradient Δ = φ − θ_{t,k}, the "gradient" of the slow weights::

        Δ ← φ_{t-1} − θ_{t,k}
        φ_t ← φ_{t-1} + O(Δ, φ_{t-1})                                 (outer step)

Algorithm 1's sync is O = SGD with learning rate α and no momentum:
φ − αΔ = φ + α(θ_{t,k} − φ). SNOO and DiLoCo use SGD with Nesterov momentum.

Opt-in adaptive α (``alpha_mode="adaptive"``) replaces the fixed α of each
sync by a gradient-only estimate of Proposition 1's ``α*`` (eq. 0.3), see
`secant_alpha_terms` and `secant_alpha`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, overload

import array_api_compat

from ._cycle import ALPHA_MODES, check_count, plan_step
from ._inner import InnerOptimizer, _lerp, check_inner, check_inner_state
from ._validation import check_alpha, check_arrays, check_k, check_matching

__all__ = [
    "ALPHA_MODES",
    "AdaptiveLookaheadState",
    "check_alpha_mode",
    "DEFAULT_ALPHA",
    "Lookahead",
    "LookaheadState",
    "OuterLookaheadState",
    "check_alpha_or_outer",
    "check_outer",
    "outer_sync",
    "ema_closed_form",
    "lookahead",
    "secant_alpha",
    "secant_alpha_terms",
    "secant_products",
    "sync_slow",
]

Array = Any
Arrays = tuple[Array, ...]


class LookaheadState(NamedTuple):
    """State of `lookahead`.

    Attributes:
        slow: the slow weights φ, one array per parameter.
        inner: the inner optimizer's state.
        count: executed inner steps since the last sync, in ``[0, k)``
            (the position in the cycle; ``i`` of Algorithm 1 before the step).
    """

    slow: Arrays
    inner: Any
    count: int


class AdaptiveLookaheadState(NamedTuple):
    """State of `lookahead` with ``alpha_mode="adaptive"``.

    Attributes:
        slow: the slow weights φ, one array per parameter.
        inner: the inner optimizer's state.
        count: executed inner steps in the current cycle, in ``[0, k]``.
            ``count == k`` means the cycle's k inner steps are done and the
            sync is pending: the next ``step`` call receives ∇L(θ_{t,k}),
            estimates α from it and syncs, without an inner step.
        start_grads: ∇L(θ_{t,0}), a copy of the gradients the first inner
            step of the current cycle received (zeros before the first step).
            This is adaptive mode's one extra parameter-sized buffer.
        last_alpha: the α the most recent sync used (a Python float in
            ``[alpha_min, 1]``), ``None`` before the first sync.
    """

    slow: Arrays
    inner: Any
    count: int
    start_grads: Arrays
    last_alpha: float | None


class OuterLookaheadState(NamedTuple):
    """State of `lookahead` with an outer optimizer (``outer=``).

    Attributes:
        slow: the slow weights φ, one array per parameter.
        inner: the inner optimizer's state.
        count: executed inner steps since the last sync, in ``[0, k)``.
        outer: the outer optimizer's state (e.g. an `SGDState` whose momentum
            buffers are the outer momentum: one parameter-sized buffer each).
    """

    slow: Arrays
    inner: Any
    count: int
    outer: Any


AnyLookaheadState = LookaheadState | AdaptiveLookaheadState | OuterLookaheadState
"""`LookaheadState` (fixed α, the default), `AdaptiveLookaheadState` or `OuterLookaheadState`."""


class _DefaultAlpha(float):
    """The type of `DEFAULT_ALPHA`: 0.5, told apart from a 0.5 the caller passed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "0.5"


DEFAULT_ALPHA: float = _DefaultAlpha(0.5)
"""The default ``alpha`` of `lookahead` and the adapters (0.5, the paper's).

A distinct object, so that `check_alpha_or_outer` can tell "not passed" from
an explicit ``alpha=0.5``: with an outer optimizer any explicit α is refused.
"""


def check_alpha_or_outer(alpha: Any, outer_given: bool, alpha_mode: Any = "fixed") -> None:
    """Refuse an explicit ``alpha`` or ``alpha_mode="adaptive"`` together with ``outer``.

    With an outer optimizer the sync is its step on Δ = φ − θ; Algorithm 1's
    α has no role there (outer SGD with ``lr=α`` and no momentum is that
    sync). Adapters call this so that every backend refuses the same calls.

    Raises:
        TypeError: ``alpha`` passed with ``outer``.
        ValueError: ``alpha_mode="adaptive"`` with ``outer`` (the adaptive
            estimate chooses α, which an outer optimizer does not have).
    """
    if not outer_given:
        return
    if alpha is not DEFAULT_ALPHA:
        raise TypeError(
            f"alpha and outer cannot both be given (got alpha={alpha!r}): with an outer "
            "optimizer the sync is its step on the pseudo-gradient phi - theta, and its "
            "learning rate plays alpha's role; outer SGD with lr=alpha and no momentum is "
            "Algorithm 1's sync"
        )
    if alpha_mode == "adaptive":
        raise ValueError(
            "alpha_mode='adaptive' estimates Algorithm 1's alpha, which an outer optimizer does "
            "not have; use alpha_mode='fixed' with outer"
        )


def check_outer(outer: Any) -> InnerOptimizer:
    """Return ``outer`` if it is an `InnerOptimizer`, else raise ``TypeError`` naming it."""
    if not isinstance(outer, InnerOptimizer):
        raise TypeError(
            "outer must be None or an InnerOptimizer of lookahead_core such as "
            f"lookahead_core.sgd(lr=0.7, momentum=0.9, nesterov=True), got {type(outer).__name__}"
        )
    return outer


class Lookahead(NamedTuple):
    """The optimizer returned by `lookahead`.

    Attributes:
        init: ``init(params) -> state``; φ₀ is a copy of θ₀. The state is a
            `LookaheadState`, or an `AdaptiveLookaheadState` in adaptive mode.
        step: ``step(params, grads, state) -> (params, state)``: one inner
            step (eq. 0.2), then a sync if it was the k-th of the cycle. In
            adaptive mode the sync is the separate call after the k-th step.
            A ``state.count`` outside ``[0, k)`` (``[0, k]`` adaptive) is a
            ``ValueError`` naming ``state.count``; an inner state the inner
            optimizer cannot have made (`check_inner_state`: an `AdamState`
            handed to `sgd`, a missing momentum buffer, a negative step
            count) a ``TypeError`` or ``ValueError`` naming ``state.inner``.
        sync: ``sync(params, state) -> (params, state)``: the outer update
            now with the fixed ``alpha``, whatever the position in the cycle.
        inner: the inner optimizer A.
        k: synchronization period.
        alpha: slow weights step size α; in adaptive mode the fallback α;
            ``None`` with an outer optimizer.
        alpha_mode: ``"fixed"`` (the paper) or ``"adaptive"``.
        alpha_min: lower end of the adaptive α range ``[alpha_min, 1]``
            (unused with a fixed α).
        outer: the outer optimizer O, or ``None`` (Algorithm 1's sync).
    """

    init: Callable[[Sequence[Array]], AnyLookaheadState]
    step: Callable[
        [Sequence[Array], Sequence[Array], AnyLookaheadState], tuple[Arrays, AnyLookaheadState]
    ]
    sync: Callable[[Sequence[Array], AnyLookaheadState], tuple[Arrays, AnyLookaheadState]]
    inner: InnerOptimizer
    k: int
    alpha: float | None
    alpha_mode: str = "fixed"
    alpha_min: float = 0.1
    outer: InnerOptimizer | None = None


def _copy(xp: Any, x: Array) -> Array:
    return xp.asarray(x, copy=True)


def check_state(params: Sequence[Array], state: Any, state_type: type, hint: str = "") -> None:
    """``state`` must be a ``state_type`` whose slow weights match ``params`` (else raise)."""
    if not isinstance(state, state_type):
        article = "an" if state_type.__name__[0] in "AEIOU" else "a"
        raise TypeError(
            f"state must be {article} {state_type.__name__}{hint}, got {type(state).__name__}"
        )
    # The slow weights first: check_matching trusts its reference arrays.
    check_arrays("state.slow", state.slow)
    check_matching("params", params, "state.slow", state.slow)


def _check_python_count(count: Any) -> None:
    """``count`` must be an int: this Lookahead decides in Python when to sync.

    Under ``jax.jit`` (any tracing compiler) the count arrives as a traced
    array whose value is unknown while tracing; say where the traceable
    variant is instead of letting the compiler fail on ``if``.
    """
    if not isinstance(count, numbers.Integral):
        raise TypeError(
            "state.count must be a Python int (lookahead_core.lookahead decides in Python "
            f"when to sync), got {type(count).__name__}; to compile the step with jax.jit or "
            "another tracing compiler use lookahead_core.traceable.lookahead(inner, k, alpha, "
            "cond=jax.lax.cond)"
        )


def inner_step(
    xp: Any, inner: InnerOptimizer, params: Sequence[Array], grads: Sequence[Array], inner_state: Any
) -> tuple[Arrays, Any]:
    """One step of the inner optimizer (eq. 0.2): ``(θ + delta, new inner state)``."""
    delta, inner_state = inner.update(grads, inner_state, params)
    # asarray: NumPy turns 0-d arithmetic into scalars; arrays in, arrays out.
    return tuple(xp.asarray(p + d) for p, d in zip(params, delta)), inner_state


def sync_slow(
    fast: Sequence[Array], slow: Sequence[Array], alpha: float
) -> tuple[Arrays, Arrays]:
    """The outer update: ``φ ← φ + α(θ − φ)`` by two-sided lerp, then ``θ ← φ``.

    Returns ``(new_fast, new_slow)``; ``new_fast`` holds copies of ``new_slow``
    so the two never alias. ``alpha`` must be a validated Python float.
    """
    xp = array_api_compat.array_namespace(*slow)
    new_slow = tuple(_lerp(xp, s, f, alpha) for s, f in zip(slow, fast))
    return tuple(_copy(xp, s) for s in new_slow), new_slow


def outer_sync(
    fast: Sequence[Array], slow: Sequence[Array], outer: InnerOptimizer, outer_state: Any
) -> tuple[Arrays, Arrays, Any]:
    """The sync as an outer optimizer's step: Δ = φ − θ, ``φ ← φ + O(Δ, φ)``, then ``θ ← φ``.

    Δ is the pseudo-gradient: it points from the fast weights back to the
    slow ones, as a gradient points uphill, so outer SGD with learning rate α
    and no momentum gives φ − αΔ = φ + α(θ − φ), Algorithm 1's sync (up to
    rounding: this is a one-sided update, Algorithm 1 a two-sided lerp).

    Returns:
        ``(new_fast, new_slow, new_outer_state)``; ``new_fast`` holds copies of
        ``new_slow`` so the two never alias.
    """
    xp = array_api_compat.array_namespace(*slow)
    pseudo_grads = tuple(xp.asarray(s - f) for s, f in zip(slow, fast))
    delta, outer_state = outer.update(pseudo_grads, outer_state, slow)
    new_slow = tuple(xp.asarray(s + d) for s, d in zip(slow, delta))
    return tuple(_copy(xp, s) for s in new_slow), new_slow, outer_state


def check_alpha_mode(alpha: Any, alpha_mode: Any, alpha_min: Any) -> tuple[float, str, float]:
    """Validate ``alpha``, ``alpha_mode`` and ``alpha_min`` together (as `lookahead` does).

    Adapters call this so that every backend accepts and rejects the same values.

    Returns:
        ``(alpha, alpha_mode, alpha_min)`` as Python ``float``, ``str``, ``float``.
    """
    alpha = check_alpha(alpha)
    if not isinstance(alpha_mode, str):
        raise TypeError(
            f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r} "
            f"of type {type(alpha_mode).__name__}"
        )
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")
    alpha_min = check_alpha(alpha_min, name="alpha_min")
    if alpha_mode == "adaptive" and alpha < alpha_min:
        raise ValueError(
            f"alpha (the fallback of adaptive mode) must be in [alpha_min, 1] = "
            f"[{alpha_min}, 1], got {alpha}"
        )
    return alpha, alpha_mode, alpha_min


@overload
def lookahead(
    inner: InnerOptimizer,
    k: int = 5,
    alpha: float = DEFAULT_ALPHA,
    *,
    alpha_mode: str = "fixed",
    alpha_min: float = 0.1,
) -> Lookahead: ...


@overload
def lookahead(inner: InnerOptimizer, k: int = 5, *, outer: InnerOptimizer) -> Lookahead: ...


def lookahead(
    inner: InnerOptimizer,
    k: int = 5,
    alpha: float = DEFAULT_ALPHA,
    *,
    outer: InnerOptimizer | None = None,
    alpha_mode: str = "fixed",
    alpha_min: float = 0.1,
) -> Lookahead:
    """Wrap an inner optimizer A in Lookahead (Algorithm 1), or in an outer optimizer O.

    Two forms: ``lookahead(inner, k, alpha)`` (the paper) and
    ``lookahead(inner, k, outer=O)``, where each sync is O's step on the
    pseudo-gradient Δ = φ − θ_{t,k} (see `outer_sync`); passing ``alpha``
    too is a ``TypeError``.

    Args:
        inner: the inner optimizer, e.g. ``sgd(lr=0.1, momentum=0.9)``.
        k: synchronization period, an ``int`` >= 1 (bool rejected).
        alpha: slow weights step size, a finite real in [0, 1], default 0.5.
            ``alpha = 1`` is the inner optimizer alone, ``alpha = 0`` resets
            the fast weights to φ₀ every k steps. In adaptive mode, the α
            used when the estimate is undefined (must lie in ``[alpha_min, 1]``).
            Not with ``outer``.
        outer: ``None`` (Algorithm 1's sync, bit for bit as without this
            argument) or an `InnerOptimizer` of this package used as the
            outer optimizer O: ``sgd(lr=0.7, momentum=0.9, nesterov=True)``
            is DiLoCo's and SNOO's outer step, ``sgd(lr=alpha)`` Algorithm 1's
            up to rounding. At each sync O receives Δ = φ − θ_{t,k} as its
            gradients and φ as its parameters; φ ← φ + O's delta; θ ← φ.
            Its state (the outer momentum: one parameter-sized buffer per
            parameter for SGD with momentum, two for Adam) is the
            ``outer`` field of an `OuterLookaheadState`.
        alpha_mode: ``"fixed"`` (default, the paper's Algorithm 1) or
            ``"adaptive"``: each sync uses ``secant_alpha`` of
            ``secant_alpha_terms(φ, θ_{t,k}, ∇L(θ_{t,0}), ∇L(θ_{t,k}))``,
            Proposition 1's ``α*`` (eq. 0.3) estimated from gradients alone and
            clipped to ``[alpha_min, 1]``. A cycle then takes k + 1 ``step``
            calls: k inner steps, then one call whose gradient (at θ_{t,k})
            only serves the estimate and the sync. Cost: one extra gradient
            evaluation per cycle and one extra parameter-sized buffer
            (∇L(θ_{t,0})). Refused with ``outer`` (there is no α to estimate).
        alpha_min: lower end of the adaptive range, a finite real in [0, 1];
            the default 0.1 keeps the slow weights moving every cycle when a
            noisy estimate is small or negative. Validated in both modes,
            used only in adaptive mode.

    Returns:
        A `Lookahead` with pure ``init``, ``step`` and ``sync``. The inner
            optimizer's state is not touched by a sync.

    Raises:
        TypeError: a bad argument, or ``alpha`` together with ``outer``.
        ValueError: a value out of range, or ``alpha_mode="adaptive"`` with ``outer``.
    """
    check_inner(inner)
    k = check_k(k)
    check_alpha_or_outer(alpha, outer is not None, alpha_mode)
    alpha, alpha_mode, alpha_min = check_alpha_mode(alpha, alpha_mode, alpha_min)
    if outer is not None:
        return _outer_lookahead(inner, k, check_outer(outer), alpha_min)
    adaptive = alpha_mode == "adaptive"
    state_type = AdaptiveLookaheadState if adaptive else LookaheadState
    hint = " (alpha_mode='adaptive')" if adaptive else ""

    def init(params: Sequence[Array]) -> AnyLookaheadState:
        xp, params = check_arrays("params", params)
        slow = tuple(_copy(xp, p) for p in params)
        if adaptive:
            start_grads = tuple(xp.zeros_like(p) for p in params)
            return AdaptiveLookaheadState(slow, inner.init(params), 0, start_grads, None)
        return LookaheadState(slow, inner.init(params), 0)

    def step(
        params: Sequence[Array], grads: Sequence[Array], state: AnyLookaheadState
    ) -> tuple[Arrays, AnyLookaheadState]:
        xp, params = check_arrays("params", params)
        check_state(params, state, state_type, hint)
        _check_python_count(state.count)
        # A count outside the cycle would shift every later sync; a state of
        # another inner optimizer would fail (or run wrong) inside its update.
        check_count(state.count, k, alpha_mode, name="state.count")
        check_inner_state(inner, state.inner, len(params), "state.inner")
        plan = plan_step(state.count, k, alpha_mode)
        step_alpha = alpha
        if plan.estimate:
            # grads = ∇L(θ_{t,k}): α* of eq. 0.3 from gradients only. Checked here as
            # the caller named them (the estimate's own checks say "end_grads").
            check_arrays("grads", grads)
            check_matching("grads", grads, "params", params)
            numerator, denominator = secant_alpha_terms(
                state.slow, params, state.start_grads, grads
            )
            step_alpha = secant_alpha(numerator, denominator, alpha_min, alpha)
        fast, inner_state = params, state.inner
        if plan.inner:
            fast, inner_state = inner_step(xp, inner, params, grads, state.inner)
        slow = state.slow
        if plan.sync:
            fast, slow = sync_slow(fast, slow, step_alpha)
        if not adaptive:
            return fast, LookaheadState(slow, inner_state, plan.count)
        # First step of a cycle: params = θ_{t,0} = φ, grads = ∇L(θ_{t,0}).
        start_grads = (
            tuple(_copy(xp, g) for g in grads) if plan.record_start else state.start_grads
        )
        last_alpha = step_alpha if plan.sync else state.last_alpha
        return fast, AdaptiveLookaheadState(slow, inner_state, plan.count, start_grads, last_alpha)

    def sync(params: Sequence[Array], state: AnyLookaheadState) -> tuple[Arrays, AnyLookaheadState]:
        _, params = check_arrays("params", params)
        check_state(params, state, state_type, hint)
        # An explicit sync uses the fixed α, whatever the mode and the position.
        fast, slow = sync_slow(params, state.slow, alpha)
        if adaptive:
            return fast, AdaptiveLookaheadState(slow, state.inner, 0, state.start_grads, alpha)
        return fast, LookaheadState(slow, state.inner, 0)

    return Lookahead(init, step, sync, inner, k, alpha, alpha_mode, alpha_min)


def _outer_lookahead(
    inner: InnerOptimizer, k: int, outer: InnerOptimizer, alpha_min: float
) -> Lookahead:
    """`lookahead` with an outer optimizer: the same cycle, `outer_sync` as the sync."""
    hint = " (lookahead with outer=)"

    def init(params: Sequence[Array]) -> OuterLookaheadState:
        xp, params = check_arrays("params", params)
        slow = tuple(_copy(xp, p) for p in params)
        return OuterLookaheadState(slow, inner.init(params), 0, outer.init(slow))

    def _check(params: Sequence[Array], state: Any) -> None:
        check_state(params, state, OuterLookaheadState, hint)
        check_inner_state(outer, state.outer, len(params), "state.outer")

    def step(
        params: Sequence[Array], grads: Sequence[Array], state: OuterLookaheadState
    ) -> tuple[Arrays, OuterLookaheadState]:
        xp, params = check_arrays("params", params)
        _check(params, state)
        _check_python_count(state.count)
        check_count(state.count, k, name="state.count")
        check_inner_state(inner, state.inner, len(params), "state.inner")
        plan = plan_step(state.count, k)
        fast, inner_state = inner_step(xp, inner, params, grads, state.inner)
        slow, outer_state = state.slow, state.outer
        if plan.sync:
            fast, slow, outer_state = outer_sync(fast, slow, outer, outer_state)
        return fast, OuterLookaheadState(slow, inner_state, plan.count, outer_state)

    def sync(
        params: Sequence[Array], state: OuterLookaheadState
    ) -> tuple[Arrays, OuterLookaheadState]:
        _, params = check_arrays("params", params)
        _check(params, state)
        fast, slow, outer_state = outer_sync(params, state.slow, outer, state.outer)
        return fast, OuterLookaheadState(slow, state.inner, 0, outer_state)

    return Lookahead(init, step, sync, inner, k, None, "fixed", alpha_min, outer)


def _as_python_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number (Python float), "
            f"got {value!r} of type {type(value).__name__}"
        )
    return float(value)


def secant_alpha_terms(
    slow: Sequence[Array],
    fast: Sequence[Array],
    start_grads: Sequence[Array],
    end_grads: Sequence[Array],
) -> tuple[float, float]:
    """The two inner products of the gradient-only ``α*`` estimate (eq. 0.3).

    With θ_{t,0} = φ (``slow``), θ_{t,k} (``fast``), g₀ = ∇L(θ_{t,0}) and
    g_k = ∇L(θ_{t,k}), and d = θ_{t,0} − θ_{t,k} over all parameters at once:

        numerator   = g₀ᵀ d            = (θ_{t,0} − θ*)ᵀ A d
        denominator = (g₀ − g_k)ᵀ d    = dᵀ A d

    The equalities hold for L(x) = ½xᵀAx − bᵀx, where ``∇L(x) = A(x − θ*)``,
    so ``numerator / denominator`` is Proposition 1's ``α*`` without A or ``θ*``.
    Each array's products are summed in its own dtype (16-bit floats are
    promoted to float32 first) and the per-array sums in Python floats.

    Args:
        slow: θ_{t,0}, the slow weights before the sync.
        fast: θ_{t,k}, the fast weights at the end of the inner loop.
        start_grads: ∇L(θ_{t,0}).
        end_grads: ∇L(θ_{t,k}).

    Returns:
        ``(numerator, denominator)`` as Python floats.
    """
    xp, slow = check_arrays("slow", slow)
    for name, arrays in (("fast", fast), ("start_grads", start_grads), ("end_grads", end_grads)):
        check_arrays(name, arrays)
        check_matching(name, arrays, "slow", slow)
    numerator = 0.0
    denominator = 0.0
    for phi, theta, g0, gk in zip(slow, fast, start_grads, end_grads):
        array_numerator, array_denominator = secant_products(phi, theta, g0, gk)
        numerator += float(array_numerator)
        denominator += float(array_denominator)
    return numerator, denominator


def secant_products(phi: Array, theta: Array, g0: Array, gk: Array) -> tuple[Array, Array]:
    """One array's share of `secant_alpha_terms`: ``(g₀ᵀd, (g₀ − g_k)ᵀd)`` with d = φ − θ.

    Returned as two 0-d arrays on the arrays' device, so that an adapter can
    compute every array's share and bring them to the host at once. The
    products are computed in the promoted dtype of the four arrays, 16-bit
    floats promoted to float32 first; the arrays must share a namespace.
    """
    xp = array_api_compat.array_namespace(phi, theta, g0, gk)
    dtype = xp.result_type(phi, theta, g0, gk)
    if xp.finfo(dtype).bits < 32:
        dtype = xp.float32
    phi, theta, g0, gk = (xp.astype(x, dtype, copy=False) for x in (phi, theta, g0, gk))
    d = phi - theta
    return xp.sum(g0 * d), xp.sum((g0 - gk) * d)


def secant_alpha(
    numerator: float, denominator: float, alpha_min: float, fallback: float
) -> float:
    """Adaptive α: ``numerator / denominator`` clipped to ``[alpha_min, 1]``.

    The two numbers are those of `secant_alpha_terms`. When the estimate is
    undefined (``denominator <= 0``: no positive curvature along the line,
    e.g. θ_{t,k} = θ_{t,0} or gradient noise; or a non-finite input) the
    result is ``fallback``. Adapters compute the two sums with their own
    kernels and call this function, so every backend clips the same way.

    Args:
        numerator: g₀ᵀ(θ_{t,0} − θ_{t,k}).
        denominator: (g₀ − g_k)ᵀ(θ_{t,0} − θ_{t,k}).
        alpha_min: lower end of the range, in [0, 1].
        fallback: the α used when the estimate is undefined, in [alpha_min, 1].

    Returns:
        A Python float in ``[alpha_min, 1]``.
    """
    numerator = _as_python_real("numerator", numerator)
    denominator = _as_python_real("denominator", denominator)
    alpha_min = check_alpha(alpha_min, name="alpha_min")
    fallback = check_alpha(fallback, name="fallback")
    if fallback < alpha_min:
        raise ValueError(f"fallback must be in [alpha_min, 1] = [{alpha_min}, 1], got {fallback}")
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator <= 0.0:
        return fallback
    return min(max(numerator / denominator, alpha_min), 1.0)


def ema_closed_form(phi0: Array, fast_before_syncs: Sequence[Array], alpha: float) -> Array:
    """Slow weights after t syncs in closed form (eq. 0.1).

    $$
    \\phi_t = \\alpha \\sum_{j=1}^{t} (1-\\alpha)^{t-j} \\theta_{j,k} + (1-\\alpha)^t \\phi_0
    $$

    Args:
        phi0: the initial slow weights φ₀ (= θ₀), one array.
        fast_before_syncs: ``[θ_{1,k}, …, θ_{t,k}]``, the fast weights just
            before each of the t syncs, each shaped like ``phi0``.
        alpha: slow weights step size in [0, 1].

    Returns:
        φ_t, in the namespace and dtype of ``phi0``. With no syncs, a copy of φ₀.
    """
    alpha = check_alpha(alpha)
    xp, (phi0,) = check_arrays("phi0", [phi0])
    fast = list(fast_before_syncs)
    if fast:
        check_matching("fast_before_syncs", fast, "phi0", [phi0] * len(fast))
    t = len(fast)
    result = (1.0 - alpha) ** t * phi0
    for j, theta in enumerate(fast, start=1):
        result = result + (alpha * (1.0 - alpha) ** (t - j)) * theta
    return xp.asarray(result)
