"""The in-place Lookahead, written once for every strided array library.

`InPlaceLookahead` holds what Algorithm 1 asks of an in-place adapter that does
not depend on the array library: the argument checks, the schedule (count,
sync every k-th executed step), the slow-weight swap context, and the flat,
all-or-nothing checkpoint. An adapter (``lookahead_numpy.Lookahead``,
``lookahead_cupy.Lookahead``) subclasses it and supplies the array operations
through the hooks below; the hooks see whole lists of arrays at a time, so the
per-step cost of the indirection is one method call, not one per parameter.

Hooks (each subclass implements all of them):

- ``_array_type``, ``_library``: the library's array class (the inner-state
  leaves a checkpoint holds) and its name for messages.
- ``_check_options(**options)``: validate the adapter's own keyword options.
- ``_check_params(params)``: validate the parameters; return them as a tuple.
- ``_setup(params, **options)``: allocate φ₀ = copy(θ₀) and the sync kernels'
  work state; return the slow weights, one array per parameter.
- ``_plain(param)``: the array the in-place arithmetic writes to.
- ``_apply(fast, delta)``: ``θ ← θ + delta`` in place, for every parameter.
- ``_lerp_and_reset(alpha)``: the sync on every parameter, ``φ ← lerp(φ, θ, α)``
  then ``θ ← φ``, in place.
- ``_swap()``: exchange the contents of θ and φ in place, for every parameter.
- ``_setup_outer(state)``: with an outer optimizer, prepare the in-place outer
  step for O's freshly initialized state (allocated on φ); return the state
  the optimizer keeps (the same arrays, or copies of them laid out as the
  adapter needs). The base class returns it unchanged.
- ``_outer_step(plan, scalars, buffers)``: the outer step on every parameter, in
  place, for the core's sgd, adam or adamw (see `lookahead_inplace.outer`):
  Δ = φ − θ, O's update of its buffers and of φ, then θ ← φ.
- ``_public_views(arrays)``: what the ``slow`` property hands out.
- ``_export(array)``: a fresh NumPy copy, for `state_dict`.
- ``_stage(array)``: a validated NumPy array of a checkpoint in the library's
  form, made before anything is committed (so a failure there changes nothing).
- ``_assign(target, staged)``: copy a staged array into ``target`` in place.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import array_api_compat
import numpy as np

import lookahead_core as lc

from .checkpoint import (
    as_array,
    as_float,
    as_int,
    as_str,
    check_tree,
    coerce_leaf,
    flatten_tree,
    unflatten_tree,
)
from .nonfinite import all_finite, check_nonfinite
from .outer import SGDPlan, adam_scalars, in_place_plan, outer_buffers, sgd_scalars

__all__ = ["InPlaceLookahead"]

_INNER_PREFIX = "inner"
_OUTER_PREFIX = "outer"
_OUTER_NAME_KEY = "outer_name"
_ROLLBACKS_KEY = "rollbacks"  # optional: 0.1.0 had no rollback, its checkpoints lack it


def _reraise_for_key(key: str, exc: TypeError | ValueError) -> TypeError | ValueError:
    return type(exc)(f"state_dict[{key!r}]: {exc}")


class InPlaceLookahead:
    """Lookahead (Algorithm 1) updating the caller's arrays in place; library-neutral.

    Not used directly: see ``lookahead_numpy.Lookahead`` and
    ``lookahead_cupy.Lookahead``, which document the arguments.
    """

    # Set by each adapter: its array type and the library's name in messages.
    _array_type: ClassVar[type]
    _library: ClassVar[str]

    def __init__(
        self,
        params: Sequence[Any],
        inner: lc.InnerOptimizer,
        k: int = 5,
        alpha: float = lc.DEFAULT_ALPHA,
        *,
        outer: lc.InnerOptimizer | None = None,
        alpha_mode: str = "fixed",
        alpha_min: float = 0.1,
        nonfinite: str | None = None,
        **options: Any,
    ) -> None:
        lc.check_inner(inner)
        k = lc.check_k(k)
        # As the core: alpha with outer is a TypeError, adaptive with outer a ValueError.
        lc.check_alpha_or_outer(alpha, outer is not None, alpha_mode)
        alpha, alpha_mode, alpha_min = lc.check_alpha_mode(alpha, alpha_mode, alpha_min)
        if outer is not None:
            lc.check_outer(outer)
        nonfinite = check_nonfinite(nonfinite)
        options = self._check_options(**options)
        params = self._check_params(params)
        inner_state = inner.init(params)
        check_tree(_INNER_PREFIX, inner_state, self._array_type, self._library)

        self._params = params
        self._fast = tuple(self._plain(p) for p in params)
        self._inner = inner
        self._inner_state = inner_state
        self._k = k
        self._alpha: float | None = None if outer is not None else alpha
        self._count = 0
        self._swapped = False
        self._alpha_mode = alpha_mode
        self._alpha_min = alpha_min
        self._nonfinite = nonfinite
        self._rollbacks = 0
        # Adaptive α: ∇L(θ_{t,0}) of the current cycle, the mode's one extra buffer.
        xp = array_api_compat.array_namespace(*params)
        self._xp = xp
        self._start_grads = (
            tuple(xp.zeros_like(p) for p in params) if alpha_mode == "adaptive" else None
        )
        self._last_alpha: float | None = None
        self._slow = self._setup(params, **options)
        self._slow_views = self._public_views(self._slow)
        self._param_views = self._public_views(params)
        # The outer optimizer O: its state is allocated here, once, on φ (as the core's init).
        self._outer = outer
        self._outer_plan = None if outer is None else in_place_plan(outer)
        self._outer_state: Any = None
        if outer is not None:
            outer_state = outer.init(self._slow)
            check_tree(_OUTER_PREFIX, outer_state, self._array_type, self._library)
            self._outer_state = self._setup_outer(outer_state)

    # -- hooks (see the module docstring) ----------------------------------------------

    def _check_options(self, **options: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _check_params(self, params: Any) -> tuple[Any, ...]:
        raise NotImplementedError

    def _setup(self, params: tuple[Any, ...], **options: Any) -> tuple[Any, ...]:
        raise NotImplementedError

    def _plain(self, param: Any) -> Any:
        raise NotImplementedError

    def _apply(self, fast: tuple[Any, ...], delta: Sequence[Any]) -> None:
        raise NotImplementedError

    def _lerp_and_reset(self, alpha: float) -> None:
        raise NotImplementedError

    def _swap(self) -> None:
        raise NotImplementedError

    def _setup_outer(self, state: Any) -> Any:
        return state

    def _outer_step(self, plan: Any, scalars: Any, buffers: tuple[tuple[Any, ...], ...]) -> None:
        raise NotImplementedError

    def _public_views(self, arrays: Sequence[Any]) -> tuple[Any, ...]:
        raise NotImplementedError

    def _export(self, array: Any) -> np.ndarray:
        raise NotImplementedError

    def _stage(self, array: np.ndarray) -> Any:
        raise NotImplementedError

    def _assign(self, target: Any, staged: Any) -> None:
        raise NotImplementedError

    # -- read-only attributes ----------------------------------------------------------

    @property
    def params(self) -> tuple[Any, ...]:
        """The caller's arrays, the fast weights θ (updated in place)."""
        return self._params

    @property
    def inner(self) -> lc.InnerOptimizer:
        """The inner optimizer A."""
        return self._inner

    @property
    def inner_state(self) -> Any:
        """The inner optimizer's state, the core's NamedTuple (e.g. ``SGDState``)."""
        return self._inner_state

    @property
    def k(self) -> int:
        """Synchronization period: a sync follows every k-th executed step."""
        return self._k

    @property
    def alpha(self) -> float | None:
        """Slow weights step size α of the sync; ``None`` with an outer optimizer."""
        return self._alpha

    @property
    def outer(self) -> lc.InnerOptimizer | None:
        """The outer optimizer O (``outer=``), or ``None``: Algorithm 1's sync."""
        return self._outer

    @property
    def outer_state(self) -> Any:
        """O's state, the core's NamedTuple (e.g. ``SGDState``), or ``None`` without O.

        With the core's sgd, adam or adamw its arrays are the buffers the outer
        step updates in place: live state, like `slow`.
        """
        return self._outer_state

    @property
    def count(self) -> int:
        """Executed inner steps since the last sync, in ``[0, k)``.

        In adaptive mode ``count == k`` means the next `step` estimates α and syncs.
        """
        return self._count

    @property
    def alpha_mode(self) -> str:
        """``"fixed"`` (the paper) or ``"adaptive"`` (see `lookahead_core.lookahead`)."""
        return self._alpha_mode

    @property
    def alpha_min(self) -> float:
        """Lower end of the adaptive α range ``[alpha_min, 1]``."""
        return self._alpha_min

    @property
    def last_alpha(self) -> float | None:
        """The α of the latest sync in adaptive mode (``None`` before the first)."""
        return self._last_alpha

    @property
    def nonfinite(self) -> str | None:
        """``None`` (the paper) or ``"rollback"``: what a sync does when something is inf or NaN."""
        return self._nonfinite

    @property
    def rollbacks(self) -> int:
        """How many syncs ``nonfinite="rollback"`` replaced by a rollback (kept in checkpoints)."""
        return self._rollbacks

    @property
    def slow(self) -> tuple[Any, ...]:
        """Views of the slow weights φ (read-only where the library allows it).

        Views of live state: they change at every sync and load; copy them to
        keep a snapshot. Inside `slow_weights` φ sits in the parameters,
        and these are views of the parameters.
        """
        return self._param_views if self._swapped else self._slow_views

    def __repr__(self) -> str:
        policy = "" if self._nonfinite is None else f", nonfinite={self._nonfinite!r}"
        sync = f"alpha={self._alpha}" if self._outer is None else f"outer={self._outer.name!r}"
        return (
            f"Lookahead(inner={self._inner.name!r}, k={self._k}, {sync}, "
            f"params={len(self._params)}, count={self._count}{policy})"
        )

    # -- the algorithm -----------------------------------------------------------------

    def step(self, grads: Sequence[Any]) -> None:
        """One inner step in place (eq. 0.2), then the sync if it was the k-th.

        ``θ ← θ + delta`` with ``delta`` from the inner optimizer's
        ``update(grads, state, params)``. A step that does not complete the
        cycle does nothing else.

        Args:
            grads: one array per parameter, with its shape and dtype.

        Raises:
            TypeError, ValueError: bad ``grads`` (nothing is changed).
            RuntimeError: called inside `slow_weights`.
        """
        self._refuse_while_swapped("step")
        plan = lc.plan_step(self._count, self._k, self._alpha_mode)
        alpha = self._alpha
        if plan.estimate:
            alpha = self._estimate_alpha(grads)
        if plan.inner:
            # The core's update is pure and checks grads against params first, so
            # a bad input raises here with the parameters and state untouched.
            delta, self._inner_state = self._inner.update(grads, self._inner_state, self._params)
            if plan.record_start:
                for buffer, grad in zip(self._start_grads, grads):  # grads = ∇L(θ_{t,0})
                    self._assign(buffer, grad)
            self._apply(self._fast, delta)
        if plan.sync and self._sync_or_roll_back(alpha) and self._alpha_mode == "adaptive":
            self._last_alpha = alpha
        self._count = plan.count

    def _estimate_alpha(self, grads: Sequence[Any]) -> float:
        """Adaptive mode, the call after the k-th step: α from ``grads`` = ∇L(θ_{t,k}).

        Proposition 1's α* (eq. 0.3) from gradients only, clipped to
        ``[alpha_min, 1]`` exactly as `lookahead_core.lookahead` does. The two
        inner products allocate temporaries (this mode is opt-in; the fixed-α
        sync allocates nothing).
        """
        # Checked as the caller named them (the estimate's own checks say "end_grads").
        lc.check_arrays("grads", grads)
        lc.check_matching("grads", grads, "params", self._params)
        numerator, denominator = lc.secant_alpha_terms(
            self._slow, self._fast, self._start_grads, grads
        )
        return lc.secant_alpha(numerator, denominator, self._alpha_min, self._alpha)

    def sync(self) -> None:
        """The outer update now: ``φ ← φ + α(θ − φ)``, then ``θ ← φ`` (eq. 0.1).

        With an outer optimizer O, O's step on Δ = φ − θ instead (see `step`).

        Works whatever the position in the cycle and resets it (``count = 0``).

        Raises:
            RuntimeError: called inside `slow_weights`.
        """
        self._refuse_while_swapped("sync")
        self._sync_now()

    def _sync_now(self) -> None:
        synced = self._sync_or_roll_back(self._alpha)
        self._count = 0
        if synced and self._alpha_mode == "adaptive":
            self._last_alpha = self._alpha  # an explicit sync uses the fixed α, as the core

    def _sync_or_roll_back(self, alpha: float | None) -> bool:
        """The sync with ``alpha`` (or O's step) or, under ``nonfinite="rollback"``, the
        rollback; True: synced.

        The caller restarts the cycle (count 0) either way.
        """
        if self._nonfinite == "rollback" and not self._state_is_finite():
            self._roll_back()
            return False
        if self._outer is None:
            self._lerp_and_reset(alpha)
        else:
            self._outer_sync()
        return True

    def _outer_sync(self) -> None:
        """O's step on Δ = φ − θ, ``φ ← φ + delta``, ``θ ← φ``: `lookahead_core.outer_sync` in place.

        The core's sgd, adam and adamw run as the adapter's in-place kernel
        (no temporary array); any other outer optimizer through its own
        ``update``, which allocates Δ, its delta and its new state.
        """
        plan, state = self._outer_plan, self._outer_state
        if plan is None:
            self._outer_sync_by_update()
            return
        if isinstance(plan, SGDPlan):
            scalars: Any = sgd_scalars(plan, state.step)
        else:
            scalars = adam_scalars(plan, state.step)
        self._outer_step(plan, scalars, outer_buffers(plan, state))
        self._outer_state = state._replace(step=state.step + 1)

    def _outer_sync_by_update(self) -> None:
        """`_outer_sync` for an outer optimizer without an in-place kernel: the core's operations."""
        xp = self._xp
        pseudo_grads = tuple(xp.asarray(s - f) for s, f in zip(self._slow, self._fast))
        delta, state = self._outer.update(pseudo_grads, self._outer_state, self._slow)
        # Checked before anything changes: φ + delta must stay in φ's buffers.
        lc.check_arrays("outer delta", delta)
        lc.check_matching("outer delta", delta, "params", self._params)
        check_tree(_OUTER_PREFIX, state, self._array_type, self._library)
        self._apply(self._slow, delta)  # φ ← φ + delta: the core's s + d, into φ
        for fast, slow in zip(self._fast, self._slow):
            self._assign(fast, slow)
        self._outer_state = state

    def _state_is_finite(self) -> bool:
        """No inf or NaN in θ, in the inner state or in the outer optimizer's state.

        φ is not read, as in the PyTorch adapter; under rollback a checkpoint
        with a non-finite φ is refused at load.
        """
        leaves = list(flatten_tree(_INNER_PREFIX, self._inner_state).values())
        leaves += list(flatten_tree(_OUTER_PREFIX, self._outer_state).values())
        arrays = list(self._fast) + [leaf for leaf in leaves if isinstance(leaf, self._array_type)]
        scalars = [leaf for leaf in leaves if isinstance(leaf, float)]
        return all(math.isfinite(x) for x in scalars) and self._all_finite(arrays)

    def _all_finite(self, arrays: Sequence[Any]) -> bool:
        """Whether ``arrays`` hold no inf or NaN: two reductions each, one host read in all."""
        return all_finite(self._xp, arrays)

    def _roll_back(self) -> None:
        """θ ← φ instead of the sync; the inner state restarts; counted in `rollbacks`.

        A blow-up nearly always poisons the inner optimizer's moments too, and
        one that leaves the weights finite (Adam's second moment overflowing
        to inf freezes a coordinate for good) poisons only them: both restart.
        ∇L(θ_{t,0}) of adaptive mode is not touched: the next cycle's first
        step records it anew.

        The outer step is skipped and O's state is left as it is: its
        momentum is the history of good cycles. Unless it holds inf or NaN
        itself (Adam's v overflowing on a huge Δ, a loaded checkpoint): then
        it restarts from ``outer.init``, or every later sync would roll back.
        """
        for fast, slow in zip(self._fast, self._slow):
            self._assign(fast, slow)
        self._inner_state = self._inner.init(self._params)
        if self._outer is not None and not self._tree_is_finite(self._outer_state):
            self._replace_outer_state(self._outer.init(self._slow))
        self._rollbacks += 1

    def _tree_is_finite(self, tree: Any) -> bool:
        leaves = list(flatten_tree(_OUTER_PREFIX, tree).values())
        arrays = [leaf for leaf in leaves if isinstance(leaf, self._array_type)]
        scalars = [leaf for leaf in leaves if isinstance(leaf, float)]
        return all(math.isfinite(x) for x in scalars) and self._all_finite(arrays)

    def _replace_outer_state(self, state: Any) -> None:
        """Make ``state`` (checked, in the library's form) O's state.

        With an in-place kernel its arrays are copied into the live buffers,
        which keep their layout; otherwise it replaces the state, as O's own
        ``update`` does at every sync.
        """
        if self._outer_plan is None:
            self._outer_state = state
            return
        live = flatten_tree(_OUTER_PREFIX, self._outer_state)
        new = flatten_tree(_OUTER_PREFIX, state)
        for key, leaf in live.items():
            if isinstance(leaf, self._array_type):
                self._assign(leaf, new[key])
        leaves = {key: leaf if isinstance(leaf, self._array_type) else new[key]
                  for key, leaf in live.items()}
        self._outer_state = unflatten_tree(_OUTER_PREFIX, self._outer_state, leaves)

    @contextlib.contextmanager
    def slow_weights(self) -> Iterator[tuple[Any, ...]]:
        """Context manager: the parameters hold φ inside, θ again after.

        The swap exchanges the contents of each parameter and its slow buffer
        in place: no third copy of the weights. On exit (also on an exception)
        they are swapped back, bit for bit. Meant for evaluation: changes made
        to the parameters inside end up in φ. `state_dict` works inside;
        `step`, `sync`, `load_state_dict` and nesting raise ``RuntimeError``.

        Yields:
            The parameters (the caller's arrays), now holding φ.
        """
        self._refuse_while_swapped("slow_weights")
        self._swap_all()
        try:
            yield self._params
        finally:
            self._swap_all()

    def _swap_all(self) -> None:
        self._swap()
        self._swapped = not self._swapped

    def _refuse_while_swapped(self, what: str) -> None:
        if self._swapped:
            raise RuntimeError(
                f"{what}() cannot run inside slow_weights(): the parameters hold the "
                "slow weights there; leave the with-block first"
            )

    # -- checkpoints -------------------------------------------------------------------

    def state_dict(self, include_params: bool = False) -> dict[str, Any]:
        """A flat checkpoint of the optimizer, ready for ``np.savez(file, **sd)``.

        Keys: ``k``, ``alpha``, ``count`` (Python scalars), ``inner_name`` (str),
        ``slow.<i>`` (φ, one array per parameter) and ``inner.<field>[.<i>]``
        (the inner optimizer's state; ``None`` fields give no key); with
        ``nonfinite="rollback"`` (or once a loaded checkpoint brought a count)
        ``rollbacks`` (int). With an outer optimizer O there is no ``alpha``;
        instead ``outer_name`` (str) and ``outer.<field>[.<i>]`` (O's state,
        e.g. ``outer.step`` and ``outer.momentum_buffer.<i>``). Every array
        is a fresh NumPy copy. The parameters θ are not included unless
        ``include_params`` (then as ``params.<i>``): save them yourself, as with
        ``torch.optim``.

        Args:
            include_params: also store copies of the parameters.
        """
        fast, slow = (self._slow, self._params) if self._swapped else (self._params, self._slow)
        sd: dict[str, Any] = {"k": self._k}
        if self._outer is None:
            sd["alpha"] = self._alpha
        sd["count"] = self._count
        sd["inner_name"] = self._inner.name
        if self._nonfinite == "rollback" or self._rollbacks:
            sd[_ROLLBACKS_KEY] = self._rollbacks
        for i, array in enumerate(slow):
            sd[f"slow.{i}"] = self._export(array)
        if self._alpha_mode == "adaptive":
            sd["alpha_mode"] = self._alpha_mode
            sd["alpha_min"] = self._alpha_min
            # NaN stands for "no sync yet": np.savez cannot store None without pickle.
            sd["last_alpha"] = float("nan") if self._last_alpha is None else self._last_alpha
            for i, array in enumerate(self._start_grads):
                sd[f"start_grads.{i}"] = self._export(array)
        for key, leaf in flatten_tree(_INNER_PREFIX, self._inner_state).items():
            sd[key] = self._export(leaf) if isinstance(leaf, self._array_type) else leaf
        if self._outer is not None:
            sd[_OUTER_NAME_KEY] = self._outer.name
            for key, leaf in flatten_tree(_OUTER_PREFIX, self._outer_state).items():
                sd[key] = self._export(leaf) if isinstance(leaf, self._array_type) else leaf
        if include_params:
            for i, array in enumerate(fast):
                sd[f"params.{i}"] = self._export(array)
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a checkpoint made by `state_dict`, all or nothing.

        Everything is checked before anything changes: the key set, the inner
        optimizer's name and state layout, every shape and dtype, ``k``,
        ``alpha`` and ``count``, values the next step could not continue from
        (a negative step count or second moment, see
        `lookahead_core.check_inner_state`) and, under
        ``nonfinite="rollback"``, that the slow weights are finite. On any
        error the optimizer (and the parameters) are left exactly as they
        were. The caller's mapping is never modified, and nothing it holds is
        shared afterwards. Accepts
        what ``np.load`` returns (0-d arrays for scalars and strings). ``k``
        and ``alpha`` from the checkpoint replace the optimizer's. When the
        ``params.<i>`` keys are present (``state_dict(include_params=True)``)
        the parameters are restored too, in place. ``rollbacks`` may be
        absent (a 0.1.0 checkpoint): the counter is then 0. A checkpoint
        saved with an outer optimizer loads only into an optimizer with one of
        the same name, and one saved without only into one without (a
        ``ValueError`` naming ``outer_name``); O's state is checked like the
        inner one and copied into O's buffers.

        Args:
            state_dict: a mapping such as ``opt.state_dict()`` or ``np.load(file)``.

        Raises:
            TypeError, ValueError: the checkpoint does not fit this optimizer.
            RuntimeError: called inside `slow_weights`.
        """
        self._refuse_while_swapped("load_state_dict")
        values = self._read_mapping(state_dict)
        self._check_inner_name(values)
        self._check_outer_name(values)
        with_params = self._check_keys(values)

        k = as_int("k", values["k"])
        alpha = None if self._outer is not None else as_float("alpha", values["alpha"])
        count = as_int("count", values["count"])
        try:
            k = lc.check_k(k)
        except (TypeError, ValueError) as exc:
            raise _reraise_for_key("k", exc) from None
        if alpha is not None:
            try:
                alpha = lc.check_alpha(alpha)
            except (TypeError, ValueError) as exc:
                raise _reraise_for_key("alpha", exc) from None
        adaptive = self._alpha_mode == "adaptive"
        if adaptive:
            mode = as_str("alpha_mode", values["alpha_mode"])
            if mode != "adaptive":
                raise ValueError(f"state_dict['alpha_mode'] must be 'adaptive', got {mode!r}")
            alpha_min = as_float("alpha_min", values["alpha_min"])
            try:
                alpha, _, alpha_min = lc.check_alpha_mode(alpha, mode, alpha_min)
            except (TypeError, ValueError) as exc:
                raise _reraise_for_key("alpha_min", exc) from None
            last_alpha = lc.check_last_alpha(
                as_float("last_alpha", values["last_alpha"]), alpha_min,
                name="state_dict['last_alpha'] (NaN: no sync yet)",
            )
        count = lc.check_count(count, k, self._alpha_mode, name="state_dict['count']")
        rollbacks = _check_rollbacks(values.get(_ROLLBACKS_KEY, 0))

        # Under rollback every sync would roll back to a non-finite φ: refuse it.
        slow = self._checked_arrays("slow", values, finite=self._nonfinite == "rollback")
        start_grads = self._checked_arrays("start_grads", values) if adaptive else None
        params = self._checked_arrays("params", values) if with_params else None
        inner_state = self._checked_inner_state(values)
        outer_state = None
        if self._outer is not None:
            outer_state = self._checked_state(
                _OUTER_PREFIX, self._outer, self._outer_state, values)

        # Everything is valid (and staged): commit. Copying in place keeps the
        # buffers, and every view of them such as opt.slow, where they are.
        for buffer, array in zip(self._slow, slow):
            self._assign(buffer, array)
        if params is not None:
            for param, array in zip(self._fast, params):
                self._assign(param, array)
        if start_grads is not None:
            for buffer, array in zip(self._start_grads, start_grads):
                self._assign(buffer, array)
            self._alpha_min = alpha_min
            self._last_alpha = last_alpha
        self._inner_state = inner_state
        if outer_state is not None:
            self._replace_outer_state(outer_state)
        self._k, self._alpha, self._count = k, alpha, count
        self._rollbacks = rollbacks

    def _checked_inner_state(self, values: Mapping[str, Any]) -> Any:
        """The checkpoint's inner state, checked on the host, then staged in the library's form."""
        return self._checked_state(_INNER_PREFIX, self._inner, self._inner_state, values)

    def _checked_state(
        self, prefix: str, optimizer: lc.InnerOptimizer, live: Any, values: Mapping[str, Any]
    ) -> Any:
        """The checkpoint's inner (or outer) state, checked on the host, then staged in the
        library's form; ``live`` is the optimizer's current state, the template."""
        template = flatten_tree(prefix, live)
        host = {key: coerce_leaf(key, leaf, values[key], self._array_type)
                for key, leaf in template.items()}
        checked = unflatten_tree(prefix, live, host)
        try:
            lc.check_inner_state(optimizer, checked, len(self._params), prefix, values=True)
        except (TypeError, ValueError) as exc:
            raise _reraise_for_path(prefix, exc) from None
        staged = {key: self._stage(value) if isinstance(template[key], self._array_type) else value
                  for key, value in host.items()}
        return unflatten_tree(prefix, live, staged)

    def _read_mapping(self, state_dict: Any) -> dict[str, Any]:
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                "state_dict must be a mapping such as opt.state_dict() or np.load(file), "
                f"got {type(state_dict).__name__}"
            )
        # One read per key: an np.load archive loads each array on access.
        values = {key: state_dict[key] for key in state_dict}
        for key in values:
            if not isinstance(key, str):
                raise TypeError(f"state_dict keys must be str, got {key!r}")
        return values

    def _check_inner_name(self, values: Mapping[str, Any]) -> None:
        if "inner_name" not in values:
            return  # reported with the other missing keys
        name = as_str("inner_name", values["inner_name"])
        if name != self._inner.name:
            raise ValueError(
                f"state_dict['inner_name'] is {name!r}, but this optimizer's inner "
                f"optimizer is {self._inner.name!r}"
            )

    def _check_outer_name(self, values: Mapping[str, Any]) -> None:
        """With O, the checkpoint must name O; without, it must hold no outer state."""
        if self._outer is None:
            found = sorted(key for key in values
                           if key == _OUTER_NAME_KEY or key.startswith(f"{_OUTER_PREFIX}."))
            if found:
                raise ValueError(
                    f"state_dict[{found[0]!r}]: the checkpoint holds an outer optimizer's "
                    "state, but this optimizer has outer=None; construct it with the outer "
                    "optimizer the checkpoint was saved with"
                )
            return
        if _OUTER_NAME_KEY not in values:
            raise ValueError(
                f"state_dict has no {_OUTER_NAME_KEY!r}: the checkpoint was saved without an "
                f"outer optimizer, but this optimizer has outer={self._outer.name!r}"
            )
        name = as_str(_OUTER_NAME_KEY, values[_OUTER_NAME_KEY])
        if name != self._outer.name:
            raise ValueError(
                f"state_dict[{_OUTER_NAME_KEY!r}] is {name!r}, but this optimizer's outer "
                f"optimizer is {self._outer.name!r}"
            )

    def _check_keys(self, values: Mapping[str, Any]) -> bool:
        """Check the key set; return whether the optional ``params.<i>`` keys are present."""
        n = len(self._params)
        expected = {"k", "count", "inner_name"}
        if self._outer is None:
            expected.add("alpha")
        else:
            expected.add(_OUTER_NAME_KEY)
            expected.update(flatten_tree(_OUTER_PREFIX, self._outer_state))
        expected.update(f"slow.{i}" for i in range(n))
        if self._alpha_mode == "adaptive":
            expected.update({"alpha_mode", "alpha_min", "last_alpha"})
            expected.update(f"start_grads.{i}" for i in range(n))
        expected.update(flatten_tree(_INNER_PREFIX, self._inner_state))
        param_keys = {f"params.{i}" for i in range(n)}
        with_params = any(key in values for key in param_keys)
        if with_params:
            expected |= param_keys
        missing = sorted(expected - values.keys())
        extra = sorted(values.keys() - expected - {_ROLLBACKS_KEY})
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing keys {_abbreviate(missing)}")
            if extra:
                parts.append(f"unexpected keys {_abbreviate(extra)}")
            raise ValueError(
                f"state_dict does not fit this optimizer ({self._inner.name!r}, "
                f"{n} parameters): {'; '.join(parts)}"
            )
        return with_params

    def _checked_arrays(
        self, prefix: str, values: Mapping[str, Any], finite: bool = False
    ) -> list[Any]:
        """``prefix.<i>`` for each parameter, checked on the host (finite if asked), then staged."""
        arrays = []
        for i, p in enumerate(self._params):
            key = f"{prefix}.{i}"
            array = as_array(key, values[key], p.shape, p.dtype, copy=False)
            if finite and not bool(np.isfinite(array).all()):
                raise ValueError(
                    f"state_dict[{key!r}] must be finite under nonfinite='rollback' (every sync "
                    "would roll back to it), got inf or NaN"
                )
            arrays.append(array)
        return [self._stage(array) for array in arrays]


def _check_rollbacks(value: Any) -> int:
    count = as_int(_ROLLBACKS_KEY, value)
    if count < 0:
        raise ValueError(f"state_dict[{_ROLLBACKS_KEY!r}] must be an int >= 0, got {count}")
    return count


def _reraise_for_path(prefix: str, exc: TypeError | ValueError) -> TypeError | ValueError:
    """The core's ``inner.exp_avg_sq.3 must ...`` as ``state_dict['inner.exp_avg_sq.3'] must ...``.

    `lookahead_core.check_inner_state` names a field's arrays ``name.field.i``,
    which with the name ``inner`` (``outer``) are the checkpoint's own keys.
    """
    path, _, rest = str(exc).partition(" ")
    if path.startswith(prefix):
        return type(exc)(f"state_dict[{path!r}] {rest}")
    return type(exc)(f"state_dict: {exc}")


def _abbreviate(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(key) for key in keys[:limit])
    return f"[{shown}, ... ({len(keys)} in all)]" if len(keys) > limit else f"[{shown}]"
