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
from ._lookahead import Lookahead, check_state, inner_step, sync_slow
from ._validation import check_alpha, check_arrays, check_k

__all__ = ["Cond", "TraceableLookaheadState", "lookahead", "python_cond"]

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
    inner: InnerOptimizer, k: int = 5, alpha: float = 0.5, *, cond: Cond = python_cond
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
        alpha: slow weights step size, a finite real in [0, 1].
        cond: the conditional, ``cond(pred, true_fn, false_fn, *operands)``:
            ``jax.lax.cond`` under ``jax.jit``; the default `python_cond`
            for eager use.

    Returns:
        A `lookahead_core.Lookahead` whose ``init``, ``step`` and ``sync``
            use a `TraceableLookaheadState`. ``sync`` is unconditional.
            ``step`` refuses an inner state of another optimizer
            (`lookahead_core.check_inner_state`, also while tracing) and a
            count outside ``[0, k)`` held as a Python int or a NumPy array;
            a traced count has no value yet and one on an accelerator would
            cost a device synchronization per step, so those are not read.
    """
    check_inner(inner)
    k = check_k(k)
    alpha = check_alpha(alpha)
    if not callable(cond):
        raise TypeError(
            "cond must be callable as cond(pred, true_fn, false_fn, *operands), "
            f"e.g. jax.lax.cond, got {type(cond).__name__}"
        )

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
