"""The core refuses a state it cannot continue from, and changes nothing when it does.

``lookahead_core.lookahead(...).step`` (and the traceable variant, where the
count is a value it can read) refuses a ``state.count`` outside the cycle and
an inner state made by another inner optimizer: an Adam state handed to SGD,
an SGD state handed to Adam, a state with or without momentum or amsgrad
buffers that this optimizer does not have, buffers for another number of
parameters, a negative step count. Each error names ``state.count`` or
``state.inner``; the core is pure, so the arrays handed in are bit-identical
afterwards. `lookahead_core.check_inner_state` with ``values=True`` also reads
the arrays (for checkpoint loaders): a negative second moment is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import lookahead_core as lc
from lookahead_core import traceable

from core_helpers import assert_bit_identical


def make_params(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s) for s in [(3,), (2, 2), ()]][:n]


def grads_like(params: list[np.ndarray]) -> list[np.ndarray]:
    return [np.full_like(p, 0.5) for p in params]


def arrays_of(tree: Any) -> list[Any]:
    """Every array in a (nested) state, in order: what must come out bit-identical."""
    if isinstance(tree, np.ndarray):
        return [tree]
    if isinstance(tree, tuple):
        return [a for child in tree for a in arrays_of(child)]
    return []


def copies(arrays: list[Any]) -> list[np.ndarray]:
    return [np.array(a, copy=True) for a in arrays]


def stepped_state(opt: lc.Lookahead, params: list[np.ndarray], steps: int = 2) -> tuple[Any, Any]:
    state = opt.init(params)
    for _ in range(steps):
        params, state = opt.step(params, grads_like(params), state)
    return list(params), state


def assert_refused(opt: Any, params: list[Any], state: Any, error: type, message: str) -> None:
    """``opt.step`` raises ``error`` matching ``message``, with every input bit-identical."""
    grads = grads_like(params)
    before = copies(params) + copies(grads) + copies(arrays_of(state))
    with pytest.raises(error, match=message):
        opt.step(params, grads, state)
    assert_bit_identical(params + grads + arrays_of(state), before)


# --- state.count ------------------------------------------------------------------------


@pytest.mark.parametrize("count", [-5, -1, 4, 9])
def test_step_refuses_a_count_outside_the_cycle(count):
    opt = lc.lookahead(lc.sgd(lr=0.1, momentum=0.9), k=4, alpha=0.5)
    params, state = stepped_state(opt, make_params())
    bad = state._replace(count=count)
    assert_refused(opt, params, bad, ValueError, r"state.count must be in \[0, k\) = \[0, 4\)")


@pytest.mark.parametrize("count", [-1, 5])
def test_adaptive_step_refuses_a_count_outside_its_cycle(count):
    opt = lc.lookahead(lc.sgd(lr=0.1), k=4, alpha=0.5, alpha_mode="adaptive")
    params, state = stepped_state(opt, make_params())
    bad = state._replace(count=count)
    assert_refused(opt, params, bad, ValueError, r"state.count must be in \[0, k\] = \[0, 4\]")


def test_adaptive_step_accepts_the_pending_count_k():
    opt = lc.lookahead(lc.sgd(lr=0.1), k=2, alpha=0.5, alpha_mode="adaptive")
    params, state = stepped_state(opt, make_params(), steps=2)
    assert state.count == 2  # the sync is pending
    _, state = opt.step(params, grads_like(params), state)
    assert state.count == 0


def test_every_count_in_the_cycle_is_accepted():
    opt = lc.lookahead(lc.sgd(lr=0.1), k=3, alpha=0.5)
    params, state = stepped_state(opt, make_params(), steps=0)
    for count in range(3):
        opt.step(params, grads_like(params), state._replace(count=count))


# --- state.inner ------------------------------------------------------------------------


OTHER_STATES = [
    # (this optimizer, the optimizer that made the state, message)
    (lambda: lc.sgd(lr=0.1), lambda: lc.adam(), r"state.inner must be an SGDState.*got AdamState"),
    (lambda: lc.sgd(lr=0.1, momentum=0.9), lambda: lc.adam(amsgrad=True),
     r"state.inner must be an SGDState.*got AdamState"),
    (lambda: lc.adam(), lambda: lc.sgd(lr=0.1, momentum=0.9),
     r"state.inner must be an AdamState.*got SGDState"),
    (lambda: lc.adamw(), lambda: lc.sgd(lr=0.1), r"state.inner must be an AdamState.*got SGDState"),
    (lambda: lc.sgd(lr=0.1, momentum=0.9), lambda: lc.sgd(lr=0.1),
     r"state.inner.momentum_buffer must be a tuple of 3 arrays.*momentum=0.9.*got None"),
    (lambda: lc.sgd(lr=0.1), lambda: lc.sgd(lr=0.1, momentum=0.9),
     r"state.inner.momentum_buffer must be None.*momentum=0.0.*got a tuple"),
    (lambda: lc.adam(amsgrad=True), lambda: lc.adam(),
     r"state.inner.max_exp_avg_sq must be a tuple of 3 arrays.*amsgrad=True.*got None"),
    (lambda: lc.adam(), lambda: lc.adam(amsgrad=True),
     r"state.inner.max_exp_avg_sq must be None.*amsgrad=False.*got a tuple"),
]


@pytest.mark.parametrize("this, other, message", OTHER_STATES,
                         ids=["adam-into-sgd", "amsgrad-into-momentum", "momentum-into-adam",
                              "sgd-into-adamw", "plain-into-momentum", "momentum-into-plain",
                              "adam-into-amsgrad", "amsgrad-into-adam"])
def test_step_refuses_the_inner_state_of_another_optimizer(this, other, message):
    params = make_params()
    opt = lc.lookahead(this(), k=3, alpha=0.5)
    _, state = stepped_state(opt, params)
    _, foreign = stepped_state(lc.lookahead(other(), k=3, alpha=0.5), make_params())
    bad = state._replace(inner=foreign.inner)
    assert_refused(opt, params, bad, TypeError, message)


def test_step_refuses_inner_buffers_for_another_number_of_parameters():
    opt = lc.lookahead(lc.adam(), k=3, alpha=0.5)
    params, state = stepped_state(opt, make_params())
    inner = state.inner._replace(exp_avg=state.inner.exp_avg[:2])
    assert_refused(opt, params, state._replace(inner=inner), ValueError,
                   r"state.inner.exp_avg must be a tuple of 3 arrays, one per parameter, got 2")


@pytest.mark.parametrize("make", [lambda: lc.adam(), lambda: lc.sgd(lr=0.1, momentum=0.9)])
@pytest.mark.parametrize("step, error, message", [
    (-1, ValueError, r"state.inner.step must be an int >= 0.*got -1"),
    (2.0, TypeError, r"state.inner.step must be an int >= 0.*got 2.0"),
    (None, TypeError, r"state.inner.step must be an int >= 0.*got None"),
    (True, TypeError, r"state.inner.step must be an int >= 0.*got True"),
])
def test_step_refuses_a_bad_inner_step_count(make, step, error, message):
    opt = lc.lookahead(make(), k=3, alpha=0.5)
    params, state = stepped_state(opt, make_params())
    inner = state.inner._replace(step=step)
    assert_refused(opt, params, state._replace(inner=inner), error, message)


def test_an_adamw_state_continues_in_adam():
    # The same state type and layout: nothing tells them apart, and nothing breaks.
    params = make_params()
    _, state = stepped_state(lc.lookahead(lc.adamw(), k=3, alpha=0.5), params)
    opt = lc.lookahead(lc.adam(), k=3, alpha=0.5)
    opt.step(make_params(), grads_like(params), state)


@pytest.mark.parametrize("this, other, message", [
    (lambda: lc.adam(), lambda: lc.sgd(lr=0.1), r"state must be an AdamState.*got SGDState"),
    (lambda: lc.sgd(lr=0.1), lambda: lc.adam(), r"state must be an SGDState.*got AdamState"),
])
def test_the_inner_update_alone_refuses_another_optimizers_state(this, other, message):
    params = make_params()
    foreign = other().init(params)
    grads = grads_like(params)
    before = copies(params) + copies(grads) + copies(arrays_of(foreign))
    with pytest.raises(TypeError, match=message):
        this().update(grads, foreign, params)
    assert_bit_identical(params + grads + arrays_of(foreign), before)


def test_check_inner_state_reads_values_only_when_asked():
    params = make_params()
    inner = lc.adam(amsgrad=True)
    state = inner.init(params)
    v = list(state.exp_avg_sq)
    v[1] = np.array(v[1], copy=True)
    v[1][0, 1] = -1e-3
    bad = state._replace(exp_avg_sq=tuple(v))
    lc.check_inner_state(inner, bad, len(params), "inner")  # the layout is fine
    with pytest.raises(ValueError, match=r"inner.exp_avg_sq.1 must be >= 0.*got -0.001"):
        lc.check_inner_state(inner, bad, len(params), "inner", values=True)
    vmax = list(state.max_exp_avg_sq)
    vmax[2] = np.array(-np.inf)
    with pytest.raises(ValueError, match=r"inner.max_exp_avg_sq.2 must be >= 0.*got -inf"):
        lc.check_inner_state(inner, state._replace(max_exp_avg_sq=tuple(vmax)), 3, "inner",
                             values=True)
    # NaN and +inf are what a run that blew up holds: a faithful state, not refused here.
    v[1][0, 1] = np.nan
    v[0] = np.full(3, np.inf)
    lc.check_inner_state(inner, state._replace(exp_avg_sq=tuple(v)), 3, "inner", values=True)


def test_check_inner_state_passes_over_an_optimizer_without_a_check():
    inner = lc.InnerOptimizer(lambda params: None, lambda g, s, p: (g, s), "custom", {})
    assert inner.check_state is None
    lc.check_inner_state(inner, "anything", 3, "inner", values=True)


# --- the traceable variant ---------------------------------------------------------------


@pytest.mark.parametrize("count", [-1, 3, 7])
def test_traceable_step_refuses_a_numpy_count_outside_the_cycle(count):
    opt = traceable.lookahead(lc.sgd(lr=0.1, momentum=0.9), k=3, alpha=0.5)
    params, state = stepped_state(opt, make_params())
    bad = state._replace(count=np.asarray(count, dtype=np.int32))
    assert_refused(opt, params, bad, ValueError, r"state.count must be in \[0, k\) = \[0, 3\)")


def test_traceable_step_refuses_another_optimizers_inner_state():
    opt = traceable.lookahead(lc.sgd(lr=0.1), k=3, alpha=0.5)
    params, state = stepped_state(opt, make_params())
    foreign = lc.adam().init(params)
    assert_refused(opt, params, state._replace(inner=foreign), TypeError,
                   r"state.inner must be an SGDState.*got AdamState")


def test_traceable_under_jit_checks_the_inner_state_while_tracing():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    opt = traceable.lookahead(lc.sgd(lr=0.1), k=3, alpha=0.5, cond=jax.lax.cond)
    params = [jnp.ones(3)]
    state = opt.init(params)
    step = jax.jit(opt.step)
    params, state = step(params, [jnp.ones(3)], state)  # the traced count is not read
    foreign = lc.adam().init(params)
    with pytest.raises(TypeError, match=r"state.inner must be an SGDState"):
        step(params, [jnp.ones(3)], state._replace(inner=foreign))
