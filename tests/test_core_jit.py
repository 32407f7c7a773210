"""The core's inner optimizers under ``jax.jit``.

``jax.jit`` turns the Python ``int`` step count of `lookahead_core.sgd` and
`lookahead_core.adam` into a traced 0-d array; the optimizers then branch
with array operations. The reference is the eager core on NumPy float64,
which ``tests/test_core_vs_torch.py`` checks against ``torch.optim``; the
compiled run must agree with it to 1e-12 relative to the model's largest
magnitude (the same measure and bound as there: XLA may fuse a multiply and
an add, so a few ulps per step differ, never more).

The eager ``lookahead_core.lookahead`` decides in Python when to sync and
cannot be compiled: under ``jax.jit`` it must say so and name
``lookahead_core.traceable`` instead of failing inside the compiler.
"""

from __future__ import annotations

import numpy as np
import pytest
from core_helpers import to_numpy

import lookahead_core as lc

jax = pytest.importorskip("jax", reason="jax not installed")
jnp = jax.numpy

SHAPES = [(4, 3), (5,), ()]
STEPS = 23  # 4 syncs with k = 5, then 3 steps into the next cycle
K = 5
TOL = 1e-12

# every branch of the inner optimizers' step: momentum's first step (b ← g) and
# later steps, dampening (which tells the two apart), Nesterov, L2 and decoupled
# decay, amsgrad
INNERS = {
    "sgd": lambda: lc.sgd(lr=0.05),
    "sgd-momentum": lambda: lc.sgd(lr=0.05, momentum=0.9),
    "sgd-dampening": lambda: lc.sgd(lr=0.05, momentum=0.8, dampening=0.3),
    "sgd-nesterov-weight-decay": lambda: lc.sgd(lr=0.05, momentum=0.9, nesterov=True,
                                                weight_decay=0.05),
    "adam": lambda: lc.adam(lr=0.02),
    "adam-betas-eps-l2": lambda: lc.adam(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    "adam-amsgrad": lambda: lc.adam(lr=0.02, amsgrad=True),
    "adamw-amsgrad": lambda: lc.adamw(lr=0.02, weight_decay=0.1, amsgrad=True),
}


def _problem(seed: int):
    """θ₀, the curvatures h of L(θ) = ½ Σ h θ², and the per-step gradient noise."""
    rng = np.random.default_rng(seed)
    theta0 = [rng.standard_normal(s) for s in SHAPES]
    curv = [rng.uniform(0.5, 2.0, s) for s in SHAPES]
    noise = [[0.3 * rng.standard_normal(s) for s in SHAPES] for _ in range(STEPS)]
    return theta0, curv, noise


def _grads(params, curv, noise):
    # depends on the current weights: a wrong step changes every later gradient
    return [h * p + n for p, h, n in zip(params, curv, noise)]


def _model_rel_err(actual, expected, theta0) -> float:
    scale = max([float(np.max(np.abs(to_numpy(e)))) for e in expected]
                + [float(np.max(np.abs(t))) for t in theta0])
    diff = max(float(np.max(np.abs(to_numpy(a) - to_numpy(e)), initial=0.0))
               for a, e in zip(actual, expected))
    return diff / scale


def _eager_numpy(make_inner, theta0, curv, noise, dtype=np.float64):
    opt = lc.lookahead(make_inner(), k=K, alpha=0.5)
    params = [np.array(t, dtype=dtype) for t in theta0]
    curv = [np.array(c, dtype=dtype) for c in curv]
    state = opt.init(params)
    for n in noise:
        params, state = opt.step(params, _grads(params, curv, [np.array(x, dtype) for x in n]),
                                 state)
    return params, state


def _compiled_jax(make_inner, theta0, curv, noise, dtype=jnp.float64):
    from lookahead_core import traceable

    opt = traceable.lookahead(make_inner(), k=K, alpha=0.5, cond=jax.lax.cond)
    step = jax.jit(opt.step)
    params = tuple(jnp.asarray(t, dtype=dtype) for t in theta0)
    curv = [jnp.asarray(c, dtype=dtype) for c in curv]
    state = opt.init(params)
    for n in noise:
        grads = tuple(_grads(params, curv, [jnp.asarray(x, dtype=dtype) for x in n]))
        params, state = step(params, grads, state)
    return params, state


@pytest.mark.parametrize("name", list(INNERS))
def test_inner_optimizer_compiles_inside_traceable_lookahead(name):
    """jit(traceable.lookahead(inner).step) follows the eager core (float64, 1e-12)."""
    theta0, curv, noise = _problem(seed=len(name))
    ref_params, ref_state = _eager_numpy(INNERS[name], theta0, curv, noise)
    params, state = _compiled_jax(INNERS[name], theta0, curv, noise)
    # the step count went through the compiler as an array and kept counting
    assert int(state.inner.step) == STEPS and int(state.count) == STEPS % K
    assert _model_rel_err(params, ref_params, theta0) <= TOL
    assert _model_rel_err(state.slow, ref_state.slow, theta0) <= TOL
    # the weights moved far, so the agreement is not that of two runs that stood still
    assert _model_rel_err(ref_params, theta0, theta0) > 1e-2


@pytest.mark.parametrize("name", ["sgd-dampening", "adam-amsgrad"])
def test_bare_update_compiles_and_steps_like_the_eager_one(name):
    """``jax.jit(lc.adam().update)`` (the optimizer alone): each of 3 steps as the eager update.

    The first step is where SGD's momentum buffer starts as the gradient itself and
    where Adam's bias corrections are largest; dampening 0.3 makes a buffer that
    started as 0.7·g instead visible.
    """
    inner = INNERS[name]()
    theta0, curv, noise = _problem(seed=7)
    update = jax.jit(inner.update)
    params_np = [np.array(t) for t in theta0]
    params_jx = tuple(jnp.asarray(t) for t in theta0)
    state_np, state_jx = inner.init(params_np), inner.init(params_jx)
    for n in noise[:3]:
        delta_np, state_np = inner.update(_grads(params_np, curv, n), state_np, params_np)
        delta_jx, state_jx = update(tuple(_grads(params_jx, [jnp.asarray(c) for c in curv],
                                                 [jnp.asarray(x) for x in n])),
                                    state_jx, params_jx)
        assert _model_rel_err(delta_jx, delta_np, delta_np) <= TOL
        params_np = [p + d for p, d in zip(params_np, delta_np)]
        params_jx = tuple(p + d for p, d in zip(params_jx, delta_jx))
    assert state_np.step == 3 and int(state_jx.step) == 3


@pytest.mark.parametrize("name", ["sgd-momentum", "adamw-amsgrad"])
def test_compiled_float32_stays_float32(name):
    """float32 in, float32 out: the traced bias corrections are taken in the parameters' dtype.

    Against the eager core on NumPy float32 (Python-float bias corrections):
    within float32 rounding, 1e-5 relative to the model after 23 steps.
    """
    theta0, curv, noise = _problem(seed=11)
    ref_params, _ = _eager_numpy(INNERS[name], theta0, curv, noise, dtype=np.float32)
    params, state = _compiled_jax(INNERS[name], theta0, curv, noise, dtype=jnp.float32)
    inner_arrays = [a for field in state.inner[1:] if field is not None for a in field]
    assert all(a.dtype == jnp.float32 for a in list(params) + list(state.slow) + inner_arrays)
    assert _model_rel_err(params, ref_params, theta0) <= 1e-5


@pytest.mark.parametrize("alpha_mode", ["fixed", "adaptive"])
def test_eager_lookahead_under_jit_names_the_traceable_module(alpha_mode):
    """The Python-decided sync cannot be traced: a TypeError that says what to use instead."""
    opt = lc.lookahead(lc.adam(lr=0.01), k=K, alpha=0.5, alpha_mode=alpha_mode)
    params = (jnp.ones(3),)
    state = opt.init(params)
    with pytest.raises(TypeError, match=r"state\.count must be a Python int.*"
                                        r"lookahead_core\.traceable\.lookahead"):
        jax.jit(opt.step)(params, (jnp.ones(3),), state)
    # eagerly the same objects still work
    new_params, new_state = opt.step(params, (jnp.ones(3),), state)
    assert new_state.count == 1 and float(new_params[0][0]) < 1.0
