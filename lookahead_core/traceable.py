"""Lookahead for tracing compilers such as ``jax.jit``: the same Algorithm 1, traceable.

`lookahead_core.lookahead` keeps its position in the cycle as a Python ``int``
and decides in Python whether a step ends with the sync. A tracing compiler
sees neither: under ``jax.jit`` the count would be baked into the compiled
function (or the decision would fail on a traced value). Here the count is a
0-d integer array and the decision is made by a ``cond`` that the caller
supplies, the one backend hook::

    import jax, lookahead_core as lc
    from lookahead_core import traceable

    opt = traceable.lookahead(inner, k=5, alpha=0.5, cond=jax.lax.cond)
    step = jax.jit(opt.step, donate_argnums=(0, 2))

With an outer optimizer (``outer=``, as in `lookahead_core.lookahead`) the
sync branch is the outer step on the pseudo-gradient φ − θ instead; the
outer state is carried in a `TraceableOuterLookaheadState`.

With ``jax.lax.cond`` only the branch taken runs, so the k − 1 steps of a cycle
that do not end with the sync do no interpolation (eq. 0.2 only), and the
k-th step runs the sync (eq. 0.1's recursion) once. The default ``cond``,
`python_cond`, evaluates the predicate in Python, which makes the same
function usable eagerly on any Array API library; its results are bit for bit
those of `lookahead_core.lookahead` (``tests/test_fastpaths.py``).

The inner optimizer must be traceable too. This module imports no framework;
the core's `lookahead_core.sgd`, `lookahead_core.adam` and `lookahead_core.adamw`
trace as they are (under the compiler their step count becomes a 0-d array and
they branch with array operations; ``tests/test_core_jit.py``). A traceable optimizer with the same ``update(grads, state, params) -> (delta,
state)`` contract (an optax ``GradientTransformation``, for one) fits in an
`lookahead_core.InnerOptimizer`:
``InnerOptimizer(tx.init, tx.update, "optax.sgd", {})``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import array_api_compat

from ._cycle import check_count, completes_cycle
from ._inner import InnerOptimizer, check_inner, check_inner_state
from ._lookahead import (
    DEFAULT_ALPHA,
    Lookahead,
    check_alpha_or_outer,
    check_outer,
    check_state,
    inner_step,
    outer_sync,
    sync_slow,
)
from ._validation import check_alpha, check_arrays, check_k

__all__ = [
    "Cond",
    "TraceableLookaheadState",
    "TraceableOuterLookaheadState",
    "lookahead",
    "python_cond",
]

Array = Any
Arrays = tuple[Array, ...]

Cond = Callable[..., Any]
"""``cond(pred, true_fn, false_fn, *operands)``: ``jax.lax.cond``'s signature."""


class TraceableLookaheadState(NamedTuple):
    """State of the traceable `lookahead`.

    Attributes:
        slow: the slow weights φ, one array per parameter.
        inner: the inner optimizer's state.
        count: executed inner steps since the last sync, a 0-d ``int32``
            array in ``[0, k)`` on the parameters' device.
    """

    slow: Arrays
    inner: Any
    count: Array


class TraceableOuterLookaheadState(NamedTuple):
    """State of the traceable `lookahead` with an outer optimizer.

    Attributes:
        slow: the slow weights φ, one array per parameter.
        inner: the inner optimizer's state.
        count: executed inner steps since the last sync, a 0-d ``int32`` array.
        outer: the outer optimizer's state.
    """

    slow: Arrays
    inner: Any
    count: Array
    outer: Any


def _check_host_count(count: Any, k: int) -> None:
    """``state.count`` in ``[0, k)`` when reading it costs nothing: a Python int or a NumPy array.

    Under a tracing compiler the count is a traced array whose value does not
    exist yet, and on an accelerator reading it would wait for the device at
    every step; those counts are not checked (a count at or past k syncs at
    once, a negative one delays the sync).
    """
    if isinstance(count, numbers.Integral) or array_api_compat.is_numpy_array(count):
        check_count(count, k, name="state.count")


def python_cond(pred: Any, true_fn: Callable[..., Any], false_fn: Callable[..., Any],
                *operands: Any) -> Any:
    """The eager ``cond``: ``true_fn(*operands)`` if ``bool(pred)`` else ``false_fn(*operands)``."""
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


def lookahead(
    inner: InnerOptimizer,
    k: int = 5,
    alpha: float = DEFAULT_ALPHA,
    *,
    outer: InnerOptimizer | None = None,
    cond: Cond = python_cond,
) -> Lookahead:
    """Lookahead (Algorithm 1) whose step can be traced and compiled as one function.

    The same arithmetic as `lookahead_core.lookahead` with a fixed α: each
    ``step`` is the inner step (eq. 0.2), then, when it is the k-th of the
    cycle, the sync ``φ ← φ + α(θ − φ)`` by two-sided lerp and ``θ ← φ``
    (eq. 0.1 unrolled). The difference is the state: the cycle position is a
    0-d array, and the step chooses between "sync" and "keep" with
    ``cond(completes_cycle(count, k), sync, keep, fast, slow, count + 1)``
    (`lookahead_core.completes_cycle`, the rule every backend follows).

    Args:
        inner: the inner optimizer A; traceable if the step is to be compiled.
        k: synchronization period, an ``int`` >= 1 (bool rejected).
        alpha: slow weights step size, a finite real in [0, 1], default 0.5;
            not with ``outer``.
        outer: ``None`` (Algorithm 1's sync) or a traceable outer optimizer
            O: the sync is then `lookahead_core.outer_sync`, O's step on
            Δ = φ − θ_{t,k} (see `lookahead_core.lookahead`). O's state must
            keep one structure across its steps (the core's `sgd` and `adam`
            do: their buffers exist from ``init`` on), since ``cond``'s two
            branches must return the same structure.
        cond: the conditional, ``cond(pred, true_fn, false_fn, *operands)``:
            ``jax.lax.cond`` under ``jax.jit``; the default `python_cond`
            for eager use.

    Returns:
        A `lookahead_core.Lookahead` whose ``init``, ``step`` and ``sync``
            use a `TraceableLookaheadState` (`TraceableOuterLookaheadState`
            with ``outer``). ``sync`` is unconditional.
            ``step`` refuses an inner state of another optimizer
            (`lookahead_core.check_inner_state`, also while tracing) and a
            count outside ``[0, k)`` held as a Python int or a NumPy array;
            a traced count has no value yet and one on an accelerator would
            cost a device synchronization per step, so those are not read.
    """
    check_inner(inner)
    k = check_k(k)
    check_alpha_or_outer(alpha, outer is not None)
    alpha = check_alpha(alpha)
    if not callable(cond):
        raise TypeError(
            "cond must be callable as cond(pred, true_fn, false_fn, *operands), "
            f"e.g. jax.lax.cond, got {type(cond).__name__}"
        )
    if outer is not None:
        return _outer_lookahead(inner, k, check_outer(outer), cond)

    def init(params: Sequence[Array]) -> TraceableLookaheadState:
        xp, params = check_arrays("params", params)
        count = xp.zeros((), dtype=xp.int32, device=array_api_compat.device(params[0]))
        return TraceableLookaheadState(
            tuple(xp.asarray(p, copy=True) for p in params), inner.init(params), count
        )

    def _sync(fast: Arrays, slow: Arrays, count: Array) -> tuple[Arrays, Arrays, Array]:
        new_fast, new_slow = sync_slow(fast, slow, alpha)
        xp = array_api_compat.array_namespace(count)
        return new_fast, new_slow, xp.zeros_like(count)

    def _keep(fast: Arrays, slow: Arrays, count: Array) -> tuple[Arrays, Arrays, Array]:
        return fast, slow, count

    def step(
        params: Sequence[Array], grads: Sequence[Array], state: TraceableLookaheadState
    ) -> tuple[Arrays, TraceableLookaheadState]:
        xp, params = check_arrays("params", params)
        check_state(params, state, TraceableLookaheadState)
        _check_host_count(state.count, k)
        check_inner_state(inner, state.inner, len(params), "state.inner")
        fast, inner_state = inner_step(xp, inner, params, grads, state.inner)
        due = completes_cycle(state.count, k)
        count = xp.asarray(state.count + 1)  # NumPy: 0-d + int is a scalar, keep an array
        fast, slow, count = cond(due, _sync, _keep, fast, tuple(state.slow), count)
        return tuple(fast), TraceableLookaheadState(tuple(slow), inner_state, count)

    def sync(
        params: Sequence[Array], state: TraceableLookaheadState
    ) -> tuple[Arrays, TraceableLookaheadState]:
        _, params = check_arrays("params", params)
        check_state(params, state, TraceableLookaheadState)
        fast, slow, count = _sync(params, tuple(state.slow), state.count)
        return fast, TraceableLookaheadState(slow, state.inner, count)

    return Lookahead(init, step, sync, inner, k, alpha)  # type: ignore[arg-type]


def _outer_lookahead(inner: InnerOptimizer, k: int, outer: InnerOptimizer, cond: Cond) -> Lookahead:
    """The traceable `lookahead` with an outer optimizer: `outer_sync` in the sync branch."""

    def init(params: Sequence[Array]) -> TraceableOuterLookaheadState:
        xp, params = check_arrays("params", params)
        count = xp.zeros((), dtype=xp.int32, device=array_api_compat.device(params[0]))
        slow = tuple(xp.asarray(p, copy=True) for p in params)
        return TraceableOuterLookaheadState(slow, inner.init(params), count, outer.init(slow))

    def _sync(fast: Arrays, slow: Arrays, count: Array, outer_state: Any) -> tuple[Any, ...]:
        new_fast, new_slow, outer_state = outer_sync(fast, slow, outer, outer_state)
        xp = array_api_compat.array_namespace(count)
        return new_fast, new_slow, xp.zeros_like(count), outer_state

    def _keep(fast: Arrays, slow: Arrays, count: Array, outer_state: Any) -> tuple[Any, ...]:
        return fast, slow, count, outer_state

    def _check(params: Sequence[Array], state: Any) -> None:
        check_state(params, state, TraceableOuterLookaheadState)
        check_inner_state(outer, state.outer, len(params), "state.outer")

    def step(
        params: Sequence[Array], grads: Sequence[Array], state: TraceableOuterLookaheadState
    ) -> tuple[Arrays, TraceableOuterLookaheadState]:
        xp, params = check_arrays("params", params)
        _check(params, state)
        _check_host_count(state.count, k)
        check_inner_state(inner, state.inner, len(params), "state.inner")
        fast, inner_state = inner_step(xp, inner, params, grads, state.inner)
        due = completes_cycle(state.count, k)
        count = xp.asarray(state.count + 1)
        fast, slow, count, outer_state = cond(
            due, _sync, _keep, fast, tuple(state.slow), count, state.outer
        )
        return tuple(fast), TraceableOuterLookaheadState(
            tuple(slow), inner_state, count, outer_state
        )

    def sync(
        params: Sequence[Array], state: TraceableOuterLookaheadState
    ) -> tuple[Arrays, TraceableOuterLookaheadState]:
        _, params = check_arrays("params", params)
        _check(params, state)
        fast, slow, count, outer_state = _sync(params, tuple(state.slow), state.count, state.outer)
        return fast, TraceableOuterLookaheadState(slow, state.inner, count, outer_state)

    return Lookahead(init, step, sync, inner, k, None, "fixed", 0.1, outer)  # type: ignore[arg-type]
