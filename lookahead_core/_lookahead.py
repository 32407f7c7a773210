"""Lookahead (Zhang, Lucas, Hinton, Ba, 2019), Algorithm 1, as pure functions.


    φ₀ ← θ₀
    for t = 1, 2, …:
        θ_{t,0} ← φ_{t-1}
        for i = 1..k:   θ_{t,i} ← θ_{t,i-1} + A(L, θ_{t,i-1}, d)      (eq. 0.2)
        φ_t ← φ_{t-1} + α (θ_{t,k} − φ_{t-1})                         (sync)

Unrolled, the slow weights are an exponential moving average of the fast
weights at the end of each inner loop (eq. 0.1), see `ema_closed_form`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import array_api_compat

from ._inner import InnerOptimizer, lerp
from ._validation import check_alpha, check_arrays, check_k, check_matching

__all__ = ["Lookahead", "LookaheadState", "ema_closed_form", "lookahead", "sync_slow"]

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


class Lookahead(NamedTuple):
    """The optimizer returned by `lookahead`.

    Attributes:
        init: ``init(params) -> LookaheadState``; φ₀ is a copy of θ₀.
        step: ``step(params, grads, state) -> (params, state)``: one inner
            step (eq. 0.2), then a sync if it was the k-th of the cycle.
        sync: ``sync(params, state) -> (params, state)``: the outer update
            now, whatever the position in the cycle.
        inner: the inner optimizer A.
        k: synchronization period.
        alpha: slow weights step size α.
    """

    init: Callable[[Sequence[Array]], LookaheadState]
    step: Callable[[Sequence[Array], Sequence[Array], LookaheadState], tuple[Arrays, LookaheadState]]
    sync: Callable[[Sequence[Array], LookaheadState], tuple[Arrays, LookaheadState]]
    inner: InnerOptimizer
    k: int
    alpha: float


def _copy(xp: Any, x: Array) -> Array:
    return xp.asarray(x, copy=True)


def sync_slow(
    fast: Sequence[Array], slow: Sequence[Array], alpha: float
) -> tuple[Arrays, Arrays]:
    """The outer update: ``φ ← φ + α(θ − φ)`` by two-sided lerp, then ``θ ← φ``.

    Returns ``(new_fast, new_slow)``; ``new_fast`` holds copies of ``new_slow``
    so the two never alias. ``alpha`` must be a validated Python float.
    """
    xp = array_api_compat.array_namespace(*slow)
    new_slow = tuple(lerp(s, f, alpha) for s, f in zip(slow, fast))
    return tuple(_copy(xp, s) for s in new_slow), new_slow


def lookahead(inner: InnerOptimizer, k: int = 5, alpha: float = 0.5) -> Lookahead:
    """Wrap an inner optimizer A in Lookahead (Algorithm 1).

    Args:
        inner: the inner optimizer, e.g. ``sgd(lr=0.1, momentum=0.9)``.
        k: synchronization period, an ``int`` >= 1 (bool rejected).
        alpha: slow weights step size, a finite real in [0, 1].
            ``alpha = 1`` is the inner optimizer alone, ``alpha = 0`` resets
            the fast weights to φ₀ every k steps.

    Returns:
        A `Lookahead` with pure ``init``, ``step`` and ``sync``. The inner
            optimizer's state is not touched by a sync.
    """
    if not isinstance(inner, InnerOptimizer):
        raise TypeError(
            "inner must be an InnerOptimizer such as lookahead_core.sgd(...), "
            f"got {type(inner).__name__}"
        )
    k = check_k(k)
    alpha = check_alpha(alpha)

    def init(params: Sequence[Array]) -> LookaheadState:
        xp, params = check_arrays("params", params)
        return LookaheadState(tuple(_copy(xp, p) for p in params), inner.init(params), 0)

    def _check_state(params: Sequence[Array], state: LookaheadState) -> None:
        if not isinstance(state, LookaheadState):
            raise TypeError(f"state must be a LookaheadState, got {type(state).__name__}")
        check_matching("params", params, "state.slow", state.slow)

    def step(
        params: Sequence[Array], grads: Sequence[Array], state: LookaheadState
    ) -> tuple[Arrays, LookaheadState]:
        xp, params = check_arrays("params", params)
        _check_state(params, state)
        delta, inner_state = inner.update(grads, state.inner, params)
        # asarray: NumPy turns 0-d arithmetic into scalars; arrays in, arrays out.
        fast = tuple(xp.asarray(p + d) for p, d in zip(params, delta))
        count = state.count + 1
        if count < k:
            return fast, LookaheadState(state.slow, inner_state, count)
        fast, slow = sync_slow(fast, state.slow, alpha)
        return fast, LookaheadState(slow, inner_state, 0)

    def sync(params: Sequence[Array], state: LookaheadState) -> tuple[Arrays, LookaheadState]:
        _, params = check_arrays("params", params)
        _check_state(params, state)
        fast, slow = sync_slow(params, state.slow, alpha)
        return fast, LookaheadState(slow, state.inner, 0)

    return Lookahead(init, step, sync, inner, k, alpha)


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
