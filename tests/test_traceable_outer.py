"""The traceable Lookahead with an outer optimizer: the core's outer loop, compilable.

Eagerly (`python_cond`) it must be `lookahead_core.lookahead(..., outer=O)` bit
for bit; under ``jax.jit`` (XLA may fuse and reorder) within a few float64
roundings of it, and with the same schedule.
"""

from __future__ import annotations

import numpy as np
import pytest

import lookahead_core as lc
from lookahead_core import traceable

OUTERS = {
    "sgd": lc.sgd(lr=0.5),
    "nesterov": lc.sgd(lr=0.7, momentum=0.9, nesterov=True),
    "heavy_ball_wd": lc.sgd(lr=0.7, momentum=0.5, weight_decay=1e-2),
    "adam": lc.adam(lr=0.05),
}


def _run(opt, params, grads):
    state = opt.init(params)
    out = []
    for g in grads:
        params, state = opt.step(params, g, state)
        out.append((params, state))
    return out


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", sorted(OUTERS))
def test_eager_equals_the_core_bit_for_bit(name, k):
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(5), rng.standard_normal((2, 3))]
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(4 * k + 2)]
    inner = lc.sgd(lr=0.1, momentum=0.9)
    core = _run(lc.lookahead(inner, k, outer=OUTERS[name]), params, grads)
    ours = _run(traceable.lookahead(inner, k, outer=OUTERS[name]), params, grads)
    for (p_core, s_core), (p_ours, s_ours) in zip(core, ours):
        assert int(s_ours.count) == s_core.count
        for a, b in zip(p_core + s_core.slow, p_ours + s_ours.slow):
            np.testing.assert_array_equal(a, b)


def test_alpha_with_outer_is_refused():
    with pytest.raises(TypeError, match="alpha and outer"):
        traceable.lookahead(lc.sgd(), 3, 0.5, outer=lc.sgd())
    with pytest.raises(TypeError, match="outer must be"):
        traceable.lookahead(lc.sgd(), 3, outer="sgd")


@pytest.mark.parametrize("name", sorted(OUTERS))
def test_jit_follows_the_eager_run(name):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(6)]
    grads = [[rng.standard_normal(6)] for _ in range(11)]
    inner = lc.sgd(lr=0.1, momentum=0.5)
    eager = _run(lc.lookahead(inner, 3, outer=OUTERS[name]), params, grads)
    opt = traceable.lookahead(inner, 3, outer=OUTERS[name], cond=jax.lax.cond)
    step = jax.jit(opt.step)
    p, state = [jnp.asarray(params[0])], opt.init([jnp.asarray(params[0])])
    for g, (p_eager, s_eager) in zip(grads, eager):
        p, state = step(p, [jnp.asarray(g[0])], state)
        assert int(state.count) == s_eager.count
        # A few float64 roundings per step, relative to the weights' size (XLA may reorder).
        scale = max(1.0, float(np.max(np.abs(p_eager[0]))))
        np.testing.assert_allclose(np.asarray(p[0]), p_eager[0], rtol=0, atol=1e-13 * scale)
        np.testing.assert_allclose(np.asarray(state.slow[0]), s_eager.slow[0], rtol=0,
                                   atol=1e-13 * scale)
