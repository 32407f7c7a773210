"""Inner optimizers A of the paper, written once against the Array API.

Each optimizer is an `InnerOptimizer`: ``init(params) -> state`` and
``update(grads, state, params) -> (delta, state)``, so that the fast-weight
update is eq. 0.2 literally:

    θ_{t,i} = θ_{t,i-1} + A(L, θ_{t,i-1}, d),   A(...) = delta

The arithmetic follows ``torch.optim``'s single-tensor code path operation by
operation, so float64 trajectories agree with PyTorch to ~1e-12 relative.
Hyperparameters are coerced to Python floats at construction (see the algorithm page), so
they never change an array's dtype.

The step count is a Python ``int`` in eager use. A tracing compiler turns it
into a 0-d integer array (``jax.jit`` does so with every ``int`` in its
arguments); the optimizers then branch with array operations (``where``,
array powers for Adam's bias corrections) instead of Python ``if`` and
``math``, so they can be compiled, e.g. inside
`lookahead_core.traceable.lookahead`. The eager ``int`` path is unchanged.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import array_api_compat

from ._validation import check_arrays, check_matching, check_nonnegative, check_unit_interval

__all__ = [
    "AdamState",
    "InnerOptimizer",
    "SGDState",
    "adam",
    "adamw",
    "check_inner",
    "check_inner_state",
    "lerp",
    "sgd",
]

Array = Any
Arrays = tuple[Array, ...]


class InnerOptimizer(NamedTuple):
    """An inner optimizer A: a pair of pure functions plus its hyperparameters.

    Attributes:
        init: ``init(params) -> state``.
        update: ``update(grads, state, params) -> (delta, state)``; the new
            parameters are ``params[i] + delta[i]`` (eq. 0.2).
        name: short name, e.g. ``"sgd"``.
        hyperparams: the validated hyperparameters as Python scalars.
        check_state: ``check_state(state, n_params, name, values)`` raises
            ``TypeError``/``ValueError`` naming ``name`` if ``state`` is not a
            state this optimizer's ``init`` or ``update`` could have made for
            ``n_params`` parameters (another optimizer's, other buffers, a
            negative step count); with ``values`` it also reads the arrays
            (see `check_inner_state`). ``None`` (the default, e.g. for a
            wrapped optax transformation): the state is not checked.
    """

    init: Callable[[Sequence[Array]], Any]
    update: Callable[[Sequence[Array], Any, Sequence[Array]], tuple[Arrays, Any]]
    name: str
    hyperparams: dict[str, Any]
    check_state: Callable[[Any, int, str, bool], None] | None = None


def check_inner(inner: Any) -> InnerOptimizer:
    """Return ``inner`` if it is an `InnerOptimizer`, else raise ``TypeError`` naming it."""
    if not isinstance(inner, InnerOptimizer):
        raise TypeError(
            "inner must be an InnerOptimizer such as lookahead_core.sgd(...), "
            f"got {type(inner).__name__}"
        )
    return inner


def check_inner_state(
    inner: InnerOptimizer, state: Any, n_params: int, name: str = "state", *, values: bool = False
) -> None:
    """Raise if ``state`` cannot be ``inner``'s state for ``n_params`` parameters.

    Without ``values`` (what `lookahead_core.lookahead`'s step runs every call)
    only the structure is looked at, never an array's contents: the state's
    type (an `AdamState` is not an `SGDState`), which optional buffers it
    holds (momentum, amsgrad), how many arrays each holds, and a step count
    that Python holds (an ``int`` >= 0; a 0-d array, the traced count of a
    compiled step, is not read). Buffers of the right count but another
    shape or dtype are not detected here. With ``values`` (for checkpoint
    loaders; it reads every checked array, one device-to-host read each) also
    what would make the next step NaN: a negative second-moment estimate.
    NaN and inf, what a run that blew up holds, are not refused.

    A state of `adamw` continues in `adam` and the reverse: the same type and
    layout. Optimizers built without ``check_state`` pass unchecked.

    Args:
        inner: the inner optimizer.
        state: the state to check.
        n_params: how many parameters the state is for.
        name: how messages call the state, e.g. ``"state.inner"``; its fields
            are named ``name.field`` and their arrays ``name.field.i``.
        values: also read the arrays.

    Raises:
        TypeError: another type, a missing or extra buffer, a step count that is no int.
        ValueError: buffers for another number of parameters, a negative step
            count, with ``values`` a negative second moment.
    """
    if inner.check_state is not None:
        inner.check_state(state, n_params, name, values)


def _check_state_type(state: Any, state_type: type, name: str, optimizer: str) -> None:
    if not isinstance(state, state_type):
        raise TypeError(
            f"{name} must be an {state_type.__name__} (what {optimizer}(...).init returns), "
            f"got {type(state).__name__}"
        )


def _check_step_count(step: Any, name: str) -> None:
    """A Python (or NumPy) int step count must be >= 0; a 0-d integer array (traced) is not read."""
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        if step < 0:
            raise ValueError(
                f"{name}.step must be an int >= 0 (the number of updates taken), got {step}"
            )
        return
    if (
        getattr(step, "ndim", None) == 0
        and array_api_compat.is_array_api_obj(step)
        and array_api_compat.array_namespace(step).isdtype(step.dtype, "integral")
    ):
        return
    raise TypeError(
        f"{name}.step must be an int >= 0 (a 0-d integer array when traced), got {step!r}"
    )


def _check_buffers(
    buffers: Any, present: bool, n_params: int, where: str, why: str
) -> None:
    """A field of per-parameter arrays: ``None`` if the optimizer has none, else one per parameter."""
    if not present:
        if buffers is not None:
            raise TypeError(f"{where} must be None ({why}), got a {type(buffers).__name__}")
        return
    if not isinstance(buffers, (tuple, list)):
        got = "None" if buffers is None else f"a {type(buffers).__name__}"
        raise TypeError(
            f"{where} must be a tuple of {n_params} arrays, one per parameter ({why}), got {got}"
        )
    if len(buffers) != n_params:
        raise ValueError(
            f"{where} must be a tuple of {n_params} arrays, one per parameter, got {len(buffers)}"
        )


def _check_nonnegative_arrays(buffers: Sequence[Array], where: str, what: str) -> None:
    """No element below 0 (NaN is not below 0: a blown-up run's state passes)."""
    for i, v in enumerate(buffers):
        xp = array_api_compat.array_namespace(v)
        negative = v < 0
        if bool(xp.any(negative)):
            lowest = float(xp.min(xp.where(negative, v, xp.zeros_like(v))))
            raise ValueError(f"{where}.{i} must be >= 0 everywhere ({what}), got {lowest}")


class SGDState(NamedTuple):
    """State of `sgd`.

    Attributes:
        step: number of updates taken so far: a Python int, or a 0-d
            integer array when traced (see the module's docstring).
        momentum_buffer: one buffer per parameter, or ``None`` without momentum.
    """

    step: int
    momentum_buffer: Arrays | None


class AdamState(NamedTuple):
    """State of `adam` and `adamw` (PyTorch's names).

    Attributes:
        step: number of updates taken so far (bias corrections use it): a
            Python int, or a 0-d integer array when traced.
        exp_avg: first-moment estimates m.
        exp_avg_sq: second-moment estimates v.
        max_exp_avg_sq: running maxima of v with ``amsgrad``, else ``None``.
    """

    step: int
    exp_avg: Arrays
    exp_avg_sq: Arrays
    max_exp_avg_sq: Arrays | None


def lerp(start: Array, end: Array, weight: float) -> Array:
    """Two-sided linear interpolation ``start + weight * (end - start)``.

    Exact at both ends: ``weight == 0`` returns ``start`` and ``weight == 1``
    returns ``end`` bit for bit. This is ``torch.lerp``'s formula:

        start + w (end - start)          if w < 0.5
        end - (1 - w) (end - start)      otherwise

    It cannot overflow where ``start`` and ``end`` are finite: where
    ``end - start`` would (both near the largest value of the dtype, with
    opposite signs), the same formula runs on the halves and is doubled, which
    at that magnitude is exact: the formula's own result, finite, between the
    two. Everywhere else the result is the formula's, bit for bit.
    """
    return _lerp(array_api_compat.array_namespace(start, end), start, end, weight)


def _lerp(xp: Any, start: Array, end: Array, weight: float) -> Array:
    """`lerp` with the namespace already known (it runs per parameter per sync)."""
    if _is_numpy_backed(xp):
        return _lerp_numpy(xp, start, end, weight)
    result = _lerp_formula(xp, start, end, weight)
    if _known_all_finite(xp, result):
        return result
    return _repair_overflow(xp, start, end, weight)


def _lerp_formula(xp: Any, start: Array, end: Array, weight: float) -> Array:
    """The two-sided formula as it stands, which overflows where ``end - start`` does.

    Adam's first moment uses it directly, as ``torch.optim.Adam`` does: a
    gradient that large has already made the second moment inf.
    """
    diff = end - start
    if weight < 0.5:
        return xp.asarray(start + weight * diff)
    return xp.asarray(end - (1.0 - weight) * diff)


def _is_numpy_backed(xp: Any) -> bool:
    """NumPy or array-api-strict (NumPy underneath): both follow ``numpy.errstate``."""
    return (array_api_compat.is_numpy_namespace(xp)
            or array_api_compat.is_array_api_strict_namespace(xp))


def _lerp_numpy(xp: Any, start: Array, end: Array, weight: float) -> Array:
    """`_lerp` on NumPy, where the check is free.

    NumPy reads the processor's floating-point flags after every operation
    anyway; with ``over="raise"`` an overflow of ``end - start`` (the only
    operation of the formula that can overflow when both are finite) raises
    instead of warning. No extra pass, and no warning for an overflow that is
    repaired.
    """
    import numpy as np  # loaded already: the arrays are NumPy's

    try:
        with np.errstate(over="raise"):
            return _lerp_formula(xp, start, end, weight)
    except FloatingPointError:
        with np.errstate(over="ignore"):
            return _repair_overflow(xp, start, end, weight)


def _known_all_finite(xp: Any, x: Array) -> bool:
    """Whether every element of ``x`` is finite; ``False`` when the values cannot be
    read (a tracing compiler such as ``jax.jit`` holds them, or torch's data-less
    ``meta`` device), so that the repair is applied branch-free."""
    try:
        return bool(xp.all(xp.isfinite(x)))
    except (TypeError, RuntimeError):  # jax: TracerBoolConversionError; meta: RuntimeError
        return False


def _repair_overflow(xp: Any, start: Array, end: Array, weight: float) -> Array:
    """`_lerp_formula`, except where ``end - start`` overflows with both finite.

    There the formula runs on ``start / 2`` and ``end / 2`` and the result is
    doubled: both values are at least half an ulp of the largest finite value
    of the dtype, so halving and doubling are exact and every step rounds as in
    the formula itself; the result lies between the two and is finite.
    Elsewhere the formula runs on the inputs as they are, bit for bit. Each
    half of the computation sees zeros in place of the other half's elements,
    so it raises no inf or NaN of its own.
    """
    overflowed = ~xp.isfinite(end - start) & xp.isfinite(start) & xp.isfinite(end)
    zero = xp.zeros_like(start)
    result = _lerp_formula(
        xp, xp.where(overflowed, zero, start), xp.where(overflowed, zero, end), weight
    )
    rescaled = _lerp_formula(
        xp, xp.where(overflowed, start, zero) * 0.5, xp.where(overflowed, end, zero) * 0.5, weight
    )
    return xp.where(overflowed, rescaled * 2.0, result)


def _check_step_inputs(grads: Sequence[Array], params: Sequence[Array]) -> Any:
    xp, params = check_arrays("params", params)
    check_arrays("grads", grads)
    check_matching("grads", grads, "params", params)
    return xp


def _zeros_like(xp: Any, params: Sequence[Array]) -> Arrays:
    return tuple(xp.zeros_like(p) for p in params)


def _is_concrete_count(step: Any) -> bool:
    """A step count Python can branch on (an ``int``), not an array a compiler traces."""
    return isinstance(step, numbers.Integral)


def sgd(
    lr: float = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> InnerOptimizer:
    """Stochastic gradient descent with Polyak heavy-ball or Nesterov momentum.

    With ``g = ∇L + weight_decay·θ`` and, when ``momentum > 0``,
    ``b ← g`` on the first step and ``b ← momentum·b + (1 − dampening)·g`` after,
    the step direction is ``d = g + momentum·b`` (Nesterov) or ``d = b``
    (heavy ball), and ``delta = −lr·d``. These are ``torch.optim.SGD``'s
    conventions.

    Args:
        lr: learning rate, >= 0.
        momentum: momentum factor, in [0, 1).
        dampening: dampening of the gradient in the buffer, in [0, 1].
        weight_decay: L2 penalty added to the gradient, >= 0.
        nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
    """
    lr = check_nonnegative("lr", lr)
    momentum = check_unit_interval("momentum", momentum)
    dampening = check_nonnegative("dampening", dampening)
    if dampening > 1.0:
        raise ValueError(f"dampening must be in [0, 1], got {dampening}")
    weight_decay = check_nonnegative("weight_decay", weight_decay)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError(
            "nesterov=True needs momentum > 0 and dampening == 0, "
            f"got momentum={momentum}, dampening={dampening}"
        )

    def init(params: Sequence[Array]) -> SGDState:
        xp, params = check_arrays("params", params)
        return SGDState(0, _zeros_like(xp, params) if momentum > 0.0 else None)

    def check_state(state: Any, n_params: int, name: str, values: bool = False) -> None:
        _check_state_type(state, SGDState, name, "sgd")
        _check_step_count(state.step, name)
        _check_buffers(state.momentum_buffer, momentum > 0.0, n_params,
                       f"{name}.momentum_buffer", f"this sgd has momentum={momentum}")

    def update(
        grads: Sequence[Array], state: SGDState, params: Sequence[Array]
    ) -> tuple[Arrays, SGDState]:
        xp = _check_step_inputs(grads, params)
        check_state(state, len(params), "state")
        concrete = _is_concrete_count(state.step)
        first = state.step == 0
        deltas, buffers = [], []
        for i, (g, p) in enumerate(zip(grads, params)):
            if weight_decay != 0.0:
                g = g + weight_decay * p
            if momentum > 0.0:
                if concrete and first:
                    b = _copy(g)
                elif concrete:
                    b = xp.asarray(momentum * state.momentum_buffer[i] + (1.0 - dampening) * g)
                else:  # traced count: both branches as arrays, chosen per element
                    b = xp.where(
                        first, g, momentum * state.momentum_buffer[i] + (1.0 - dampening) * g
                    )
                buffers.append(b)
                g = g + momentum * b if nesterov else b
            deltas.append(xp.asarray(-lr * g))
        new_buffers = tuple(buffers) if momentum > 0.0 else None
        return tuple(deltas), SGDState(state.step + 1, new_buffers)

    return InnerOptimizer(
        init,
        update,
        "sgd",
        dict(lr=lr, momentum=momentum, dampening=dampening,
             weight_decay=weight_decay, nesterov=nesterov),
        check_state,
    )


def _copy(x: Array) -> Array:
    xp = array_api_compat.array_namespace(x)
    return xp.asarray(x, copy=True)


def _adam_scalars(
    lr: float, beta1: float, beta2: float, step: Any, sqrt: Callable[[Any], Any] = math.sqrt
) -> tuple[Any, Any]:
    """Adam's step size ``lr / (1 − β₁ˢ)`` and ``√(1 − β₂ˢ)`` at step count s.

    Python floats for an ``int`` s (torch.optim.Adam's single-tensor path), 0-d
    arrays for an array s (then ``sqrt`` is the namespace's).
    """
    bias_correction1 = 1.0 - beta1**step
    return lr / bias_correction1, sqrt(1.0 - beta2**step)


def _adam_family(
    name: str,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    decoupled: bool,
) -> InnerOptimizer:
    lr = check_nonnegative("lr", lr)
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    beta1 = check_unit_interval("betas[0]", betas[0])
    beta2 = check_unit_interval("betas[1]", betas[1])
    eps = check_nonnegative("eps", eps)
    weight_decay = check_nonnegative("weight_decay", weight_decay)
    if not isinstance(amsgrad, bool):
        raise TypeError(f"amsgrad must be a bool, got {type(amsgrad).__name__}")
    name_of_family = name  # "adam" or "adamw"; check_state's name is the state's

    def init(params: Sequence[Array]) -> AdamState:
        xp, params = check_arrays("params", params)
        return AdamState(
            0,
            _zeros_like(xp, params),
            _zeros_like(xp, params),
            _zeros_like(xp, params) if amsgrad else None,
        )

    def check_state(state: Any, n_params: int, name: str, values: bool = False) -> None:
        _check_state_type(state, AdamState, name, name_of_family)
        _check_step_count(state.step, name)
        for field in ("exp_avg", "exp_avg_sq"):
            _check_buffers(getattr(state, field), True, n_params, f"{name}.{field}",
                           f"{name_of_family} keeps one per parameter")
        _check_buffers(state.max_exp_avg_sq, amsgrad, n_params, f"{name}.max_exp_avg_sq",
                       f"this {name_of_family} has amsgrad={amsgrad}")
        if values:
            # v = β₂v + (1 − β₂)g² is never negative; a negative one makes √v NaN.
            squares = "a running average of squared gradients"
            _check_nonnegative_arrays(state.exp_avg_sq, f"{name}.exp_avg_sq", squares)
            if amsgrad:
                _check_nonnegative_arrays(state.max_exp_avg_sq, f"{name}.max_exp_avg_sq",
                                          f"the running maximum of {squares}")

    def update(
        grads: Sequence[Array], state: AdamState, params: Sequence[Array]
    ) -> tuple[Arrays, AdamState]:
        xp = _check_step_inputs(grads, params)
        check_state(state, len(params), "state")
        step = state.step + 1
        if _is_concrete_count(step):
            step_size, bias_correction2_sqrt = _adam_scalars(lr, beta1, beta2, step)
        deltas, ms, vs, vmaxs = [], [], [], []
        for i, (g, p) in enumerate(zip(grads, params)):
            if not _is_concrete_count(step):  # traced: 0-d arrays in the parameter's dtype
                step_size, bias_correction2_sqrt = _adam_scalars(
                    lr, beta1, beta2, xp.astype(step, p.dtype), xp.sqrt)
            if weight_decay != 0.0 and not decoupled:
                g = g + weight_decay * p
            m = _lerp_formula(xp, state.exp_avg[i], g, 1.0 - beta1)
            v = xp.asarray(beta2 * state.exp_avg_sq[i] + (1.0 - beta2) * g * g)
            ms.append(m)
            vs.append(v)
            if amsgrad:
                v = xp.asarray(xp.maximum(state.max_exp_avg_sq[i], v))
                vmaxs.append(v)
            denom = xp.sqrt(v) / bias_correction2_sqrt + eps
            delta = (-step_size * m) / denom
            if weight_decay != 0.0 and decoupled:
                delta = delta - (lr * weight_decay) * p
            deltas.append(xp.asarray(delta))
        return tuple(deltas), AdamState(
            step, tuple(ms), tuple(vs), tuple(vmaxs) if amsgrad else None
        )

    return InnerOptimizer(
        init,
        update,
        name,
        dict(lr=lr, betas=(beta1, beta2), eps=eps,
             weight_decay=weight_decay, amsgrad=amsgrad),
        check_state,
    )


def adam(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
) -> InnerOptimizer:
    """Adam (Kingma & Ba) with ``torch.optim.Adam``'s conventions.

    With ``g = ∇L + weight_decay·θ`` (L2), ``m ← lerp(m, g, 1 − β₁)``,
    ``v ← β₂ v + (1 − β₂) g²``, step count s:

        delta = −(lr / (1 − β₁ˢ)) · m / (√v / √(1 − β₂ˢ) + eps)

    ``amsgrad`` uses the running maximum of v in the denominator.
    """
    return _adam_family("adam", lr, betas, eps, weight_decay, amsgrad, decoupled=False)


def adamw(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
) -> InnerOptimizer:
    """AdamW (Loshchilov & Hutter): Adam with decoupled weight decay.

    As `adam` without the L2 term, plus ``−lr·weight_decay·θ`` in delta,
    following ``torch.optim.AdamW``.
    """
    return _adam_family("adamw", lr, betas, eps, weight_decay, amsgrad, decoupled=True)
