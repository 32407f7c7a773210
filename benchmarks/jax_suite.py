"""JAX rows: the core's traceable Lookahead under ``jax.jit`` and ``optax.lookahead``.

Every step function is jitted with its parameters and state donated (the
buffers are updated in place, as a training loop with donation does), around
the same optax inner transformation (``optax.sgd(momentum=0.9)`` or
``optax.adam``), which is the bare baseline:

- ``core traceable (jit)``: ``lookahead_core.traceable.lookahead(inner, cond=jax.lax.cond)``,
  the inner transformation wrapped in an ``InnerOptimizer``; its non-sync steps
  are measured with a k out of reach (a second compiled function);
- ``optax.lookahead``: optax's wrapper, which computes the interpolation at
  every step and masks it (``LookaheadParams`` carry fast and slow weights).

The sync is timed alone as the jitted ``sync`` of the traceable Lookahead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .memory import jax_call_bytes, state_bytes
from .results import JAX_OURS, OPTAX, Row, SetResult, optax_key
from .sets import ParamSet
from .steps import ALPHA, K, LR, measure_steps
from .timing import Stats, interleaved, phase

__all__ = ["run_jax"]


OURS = JAX_OURS


class _Runner:
    """A jitted, donating step and the (params, state) it carries from call to call."""

    def __init__(self, step: Callable[..., Any], params: Any, state: Any, grads: Any) -> None:
        import jax

        # Compiled once, ahead of time: the same executable runs and reports its memory.
        self.compiled = jax.jit(step, donate_argnums=(0, 2)).lower(params, grads, state).compile()
        self.params, self.state, self.grads = params, state, grads
        self._block = jax.block_until_ready

    def one(self) -> None:
        """One step, blocked on (as a loop that reads its loss is)."""
        self.params, self.state = self.compiled(self.params, self.grads, self.state)
        self._block((self.params, self.state))


def _inners() -> dict[str, Any]:
    import optax

    return {"SGD-m": optax.sgd(LR, momentum=0.9), "Adam": optax.adam(LR)}


def _copy_tree(tree: Any) -> Any:
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def _step_group(host: list[np.ndarray], grads_host: list[np.ndarray], inner_name: str,
                rounds: dict[str, Any], result: SetResult, rows: dict[str, Row],
                nbytes: int) -> None:
    import jax.numpy as jnp
    import optax

    import lookahead_core as lc
    from lookahead_core import traceable
    from jax import lax

    tx = _inners()[inner_name]
    inner = lc.InnerOptimizer(tx.init, tx.update, f"optax {inner_name}", {})
    grads = tuple(jnp.asarray(g) for g in grads_host)

    def fresh() -> tuple[Any, ...]:
        return tuple(jnp.asarray(a) for a in host)

    def bare_step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    ours = traceable.lookahead(inner, k=K, alpha=ALPHA, cond=lax.cond)
    la_tx = optax.lookahead(tx, sync_period=K, slow_step_size=ALPHA)

    def optax_step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        updates, state = la_tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    p = fresh()
    runners = {"bare": _Runner(bare_step, p, tx.init(p), grads)}
    p = fresh()
    runners[OURS] = _Runner(ours.step, p, ours.init(p), grads)
    lp = optax.LookaheadParams(fast=fresh(), slow=fresh())
    runners[OPTAX] = _Runner(optax_step, lp, la_tx.init(lp), grads)

    # Each step blocks on its result (timed one by one), as a loop that reads its loss does.
    _, cycles = measure_steps("JAX", {name: runner.one for name, runner in runners.items()},
                              {OURS: "bare", OPTAX: "bare"}, inner_name, rounds, rows)
    rows[OPTAX].note = "no separate sync: every step computes the interpolation and masks it"
    result.comparisons[optax_key(inner_name)] = Stats.ratio(
        cycles[OPTAX], cycles[OURS])
    result.bare_step_ms[f"JAX {inner_name}"] = Stats.of(cycles["bare"]).scaled(1e3 / K)
    if inner_name == "SGD-m":
        bare_total = state_bytes((runners["bare"].params, runners["bare"].state))
        rows[OURS].extra_state = (
            state_bytes((runners[OURS].params, runners[OURS].state)) - bare_total) / nbytes
        rows[OPTAX].extra_state = (
            state_bytes((runners[OPTAX].params, runners[OPTAX].state)) - bare_total) / nbytes
        # optax has no sync of its own: what one of its steps allocates beyond the bare step.
        step_bytes = {name: jax_call_bytes(runners[name].compiled) for name in ("bare", OPTAX)}
        rows[OPTAX].sync_alloc = step_bytes[OPTAX] - step_bytes["bare"]


def _sync_group(pset: ParamSet, host: list[np.ndarray], rounds: dict[str, Any],
                result: SetResult, rows: dict[str, Row]) -> None:
    import jax
    import jax.numpy as jnp

    import lookahead_core as lc
    from lookahead_core import traceable

    opt = traceable.lookahead(lc.sgd(lr=LR), k=K, alpha=ALPHA, cond=jax.lax.cond)
    holder = {"params": tuple(jnp.asarray(a) for a in host)}
    holder["state"] = opt.init(holder["params"])
    compiled = jax.jit(opt.sync, donate_argnums=(0, 1)).lower(
        holder["params"], holder["state"]).compile()

    def run() -> None:
        holder["params"], holder["state"] = compiled(holder["params"], holder["state"])
        jax.block_until_ready(holder["params"])

    src = np.ones(2 * pset.numel, np.float32)
    dst = np.zeros_like(src)
    times = interleaved({OURS: run, "np.copyto": lambda: np.copyto(dst, src)}, rounds["sync"],
                        best_of=rounds["best_of"], budget=rounds.get("sync_budget"))
    row = rows.setdefault(OURS, Row("JAX", OURS))
    row.sync_ms = Stats.of(times[OURS]).scaled(1e3)
    row.efficiency = Stats.ratio(times["np.copyto"], times[OURS])
    result.copy_ms["JAX"] = Stats.of(times["np.copyto"]).scaled(1e3)
    result.copy_gbs["np.copyto (JAX group)"] = Stats.of(
        [4 * pset.nbytes / t / 1e9 for t in times["np.copyto"]])
    row.sync_alloc = jax_call_bytes(compiled)


def run_jax(pset: ParamSet, host: list[np.ndarray], grads_host: list[np.ndarray],
            rounds: dict[str, Any], result: SetResult) -> None:
    """All JAX rows of one parameter set, appended to ``result`` (skipped if JAX or optax is missing)."""
    try:
        import jax  # noqa: F401
        import optax  # noqa: F401
    except ImportError as exc:
        result.skipped["JAX"] = f"{exc} (pip install jax optax)"
        return
    rows: dict[str, Row] = {}
    with phase("jax sync"):
        _sync_group(pset, host, rounds, result, rows)
    if rounds.get("jax_steps", True):
        for inner_name in ("SGD-m", "Adam"):
            with phase(f"jax steps (compile included), {inner_name}"):
                _step_group(host, grads_host, inner_name, rounds, result, rows, pset.nbytes)
    else:
        rows[OURS].note = "steps not measured on this set (time): sync only"
    result.rows.extend(rows.values())
