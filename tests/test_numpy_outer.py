"""``lookahead_numpy.Lookahead(..., outer=O)``: the sync as an outer optimizer's step.

At each sync Δ = φ − θ, φ ← φ + O.update(Δ, state, φ), θ ← φ. Checked against:

- the plain-Python oracle of ``tests/outer_oracle.py`` (torch.optim's SGD and
  Adam formulas on lists of floats), together with the pure core
  ``lc.lookahead(..., outer=O)``, to 1e-12 relative in float64, also across a
  checkpoint taken on and off a sync boundary;
- the core, bit for bit (the adapter runs the core's operations in the core's
  order; elementwise IEEE arithmetic does not depend on the blocks);
- Algorithm 1 (``outer=None``), which outer SGD with ``lr=α`` and no momentum
  equals up to rounding: a one-sided update against the two-sided lerp.

And: a sync allocates nothing for the core's sgd and adam (tracemalloc),
refused arguments and checkpoints change nothing, and the rollback policy.
"""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest

import lookahead_core as lc
from lookahead_numpy import Lookahead
from lookahead_inplace.checkpoint import flatten_tree
from outer_oracle import PlainAdam, PlainSGD, outer_trajectory, quadratic_gradients, relative_error

SHAPES = [(3,), (2, 2)]  # the oracle's flat vector, cut into two parameters
N = sum(int(np.prod(s)) for s in SHAPES)


def split(vector):
    out, start = [], 0
    for shape in SHAPES:
        size = int(np.prod(shape))
        out.append(np.array(vector[start : start + size], dtype=np.float64).reshape(shape))
        start += size
    return out


def flat(arrays):
    return [float(x) for a in arrays for x in np.asarray(a).reshape(-1)]


INNERS = {
    "sgd": (lambda: lc.sgd(lr=0.1, momentum=0.5), lambda: PlainSGD(lr=0.1, momentum=0.5)),
    "adam": (lambda: lc.adam(lr=0.05), lambda: PlainAdam(lr=0.05)),
}
OUTERS = {
    "sgd": (lambda: lc.sgd(lr=0.7), lambda: PlainSGD(lr=0.7)),
    "heavy-ball": (lambda: lc.sgd(lr=0.7, momentum=0.9), lambda: PlainSGD(lr=0.7, momentum=0.9)),
    "nesterov": (lambda: lc.sgd(lr=0.7, momentum=0.9, nesterov=True),
                 lambda: PlainSGD(lr=0.7, momentum=0.9, nesterov=True)),
    "adam": (lambda: lc.adam(lr=0.1), lambda: PlainAdam(lr=0.1)),
}


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and \
        np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def snapshot(opt):
    """Everything a refused call must leave as it was, as bytes and scalars."""
    def tree(prefix, state):
        return {k: (v.tobytes() if isinstance(v, np.ndarray) else v)
                for k, v in flatten_tree(prefix, state).items()}
    return (
        [p.tobytes() for p in opt.params], [s.tobytes() for s in opt.slow],
        tree("inner", opt.inner_state), tree("outer", opt.outer_state),
        opt.count, opt.k, opt.alpha, opt.rollbacks,
    )


# --- (a) the oracle ---------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("inner_name", sorted(INNERS))
@pytest.mark.parametrize("outer_name", sorted(OUTERS))
def test_adapter_and_core_follow_the_oracle(outer_name, inner_name, k):
    steps = 4 * k + 2  # four syncs and part of a fifth cycle
    theta0 = [0.3 * (-1) ** i + 0.1 * i for i in range(N)]
    make_inner, plain_inner = INNERS[inner_name]
    make_outer, plain_outer = OUTERS[outer_name]
    expected = outer_trajectory(theta0, quadratic_gradients(N, seed=7), plain_inner(),
                                plain_outer(), k, steps)
    gradient = quadratic_gradients(N, seed=7)  # same noise, drawn in the same order
    params = split(theta0)
    opt = Lookahead(params, make_inner(), k, outer=make_outer())
    core = lc.lookahead(make_inner(), k, outer=make_outer())
    core_params = split(theta0)
    state = core.init(core_params)
    for step, (theta, phi) in enumerate(expected):
        grads = split(gradient(step, flat(params)))
        assert flat(grads) == gradient(step, flat(core_params))  # the same θ, so the same ∇L
        opt.step(grads)
        core_params, state = core.step(core_params, grads, state)
        for got in (flat(params), flat(core_params)):
            assert relative_error(got, theta) <= 1e-12, (step, got, theta)
        for got in (flat(opt.slow), flat(state.slow)):
            assert relative_error(got, phi) <= 1e-12, step


@pytest.mark.parametrize("save_at", ["on-boundary", "off-boundary"])
@pytest.mark.parametrize("inner_name", sorted(INNERS))
@pytest.mark.parametrize("outer_name", sorted(OUTERS))
def test_resume_mid_run_follows_the_oracle(outer_name, inner_name, save_at, tmp_path):
    k = 3
    steps = 5 * k
    cut = 2 * k if save_at == "on-boundary" else 2 * k + 1
    theta0 = [0.5 - 0.2 * i for i in range(N)]
    make_inner, plain_inner = INNERS[inner_name]
    make_outer, plain_outer = OUTERS[outer_name]
    expected = outer_trajectory(theta0, quadratic_gradients(N, seed=3), plain_inner(),
                                plain_outer(), k, steps)
    gradient = quadratic_gradients(N, seed=3)
    params = split(theta0)
    opt = Lookahead(params, make_inner(), k, outer=make_outer())
    for step in range(cut):
        opt.step(split(gradient(step, flat(params))))
    # Save through np.savez, then resume in a fresh optimizer on fresh arrays.
    file = tmp_path / "lookahead.npz"
    np.savez(file, **opt.state_dict(include_params=True))
    params = [np.zeros(shape) for shape in SHAPES]
    opt = Lookahead(params, make_inner(), k, outer=make_outer())
    opt.load_state_dict(np.load(file))
    assert opt.count == cut % k
    for step in range(cut, steps):
        opt.step(split(gradient(step, flat(params))))
        theta, phi = expected[step]
        assert relative_error(flat(params), theta) <= 1e-12, step
        assert relative_error(flat(opt.slow), phi) <= 1e-12, step


# --- (b) the core, bit for bit ----------------------------------------------------------

CORE_OUTERS = {
    "sgd": lc.sgd(lr=0.7),
    "sgd-wd": lc.sgd(lr=0.5, weight_decay=0.1),
    "heavy-ball-damped": lc.sgd(lr=0.3, momentum=0.5, dampening=0.2, weight_decay=0.1),
    "nesterov": lc.sgd(lr=0.7, momentum=0.9, nesterov=True),
    "adam": lc.adam(lr=0.1),
    "adam-l2": lc.adam(lr=0.05, betas=(0.3, 0.9), eps=1e-3, weight_decay=0.01),
    "adamw-amsgrad": lc.adamw(lr=0.1, amsgrad=True, weight_decay=0.1, eps=1e-3),
}


def layouts(rng, dtype):
    """C, strided, 0-d and F-ordered parameters, each the values of ``p0``."""
    p0 = [rng.standard_normal((5, 7)), rng.standard_normal(100), np.asarray(rng.standard_normal()),
          rng.standard_normal((6, 4))]
    p0 = [p.astype(dtype) for p in p0]
    params = [p0[0].copy(), np.zeros(300, dtype)[::3], p0[2].copy(),
              np.zeros((6, 4), dtype, order="F")]
    params[1][...] = p0[1]
    params[3][...] = p0[3]
    return p0, params


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("block_bytes", [64, 256 * 1024])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("outer_name", sorted(CORE_OUTERS))
def test_adapter_equals_the_core_bit_for_bit(outer_name, dtype, block_bytes, rng):
    outer = CORE_OUTERS[outer_name]
    inner = lc.adam(lr=0.05) if dtype != "float16" else lc.sgd(lr=0.05, momentum=0.9)
    p0, params = layouts(rng, dtype)
    opt = Lookahead(params, inner, k=3, outer=outer, block_bytes=block_bytes)
    core = lc.lookahead(inner, k=3, outer=outer)
    core_params = [p.copy() for p in p0]
    state = core.init(core_params)
    for t in range(14):
        opt.step([(2 * p + np.sin(t)).astype(dtype) for p in params])
        core_params, state = core.step(
            core_params, [(2 * p + np.sin(t)).astype(dtype) for p in core_params], state)
        assert all(same_bits(a, b) for a, b in zip(params, core_params)), t
        assert all(same_bits(a, b) for a, b in zip(opt.slow, state.slow)), t
    opt.sync()  # mid-cycle: the count is 2
    core_params, state = core.sync(core_params, state)
    assert all(same_bits(a, b) for a, b in zip(params, core_params))
    ours, theirs = flatten_tree("o", opt.outer_state), flatten_tree("o", state.outer)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert same_bits(ours[key], value) if isinstance(value, np.ndarray) else ours[key] == value


def test_an_unknown_outer_optimizer_runs_through_its_update(rng):
    """Not the core's closures (here: wrapped): no in-place kernel, the same bits."""
    base = lc.sgd(lr=0.7, momentum=0.9, nesterov=True)
    wrapped = base._replace(init=lambda p: base.init(p),
                            update=lambda g, s, p: base.update(g, s, p), name="wrapped")
    p0, params = layouts(rng, "float64")
    opt = Lookahead(params, lc.sgd(lr=0.1), k=2, outer=wrapped)
    core = lc.lookahead(lc.sgd(lr=0.1), k=2, outer=base)
    core_params = [p.copy() for p in p0]
    state = core.init(core_params)
    for t in range(7):
        opt.step([p * 0.5 + 1.0 for p in params])
        core_params, state = core.step(core_params, [p * 0.5 + 1.0 for p in core_params], state)
        assert all(same_bits(a, b) for a, b in zip(params, core_params)), t
    sd = opt.state_dict()
    assert sd["outer_name"] == "wrapped" and sd["outer.step"] == 3


# --- (c) outer SGD(lr=α) is Algorithm 1 up to rounding ------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_outer_sgd_with_lr_alpha_is_algorithm_1_up_to_rounding(dtype, alpha, rng):
    """Not bits in general: φ − α(φ − θ) is one-sided, the lerp two-sided. With gradients that do not
    depend on θ (scripted), an error is not fed back; each sync rounds at most three times
    in either form (|θ − φ| ≤ 2M, weight ≤ 1), so the two differ by at most 4εM per sync
    plus the inner steps' roundings of the differing θ: 8(s + 1)εM over s syncs."""
    k, syncs = 4, 6
    p0 = [rng.standard_normal((20, 5)).astype(dtype)]
    grads = [[rng.standard_normal((20, 5)).astype(dtype)] for _ in range(k * syncs)]
    plain, outer = [p.copy() for p in p0], [p.copy() for p in p0]
    a = Lookahead(plain, lc.sgd(lr=0.1), k, alpha)
    b = Lookahead(outer, lc.sgd(lr=0.1), k, outer=lc.sgd(lr=alpha))
    eps = float(np.finfo(dtype).eps)
    for t, g in enumerate(grads):
        a.step(g)
        b.step(g)
        scale = max(float(np.max(np.abs(x))) for x in (plain[0], outer[0], *a.slow, *b.slow))
        s = (t + 1) // k
        assert float(np.max(np.abs(plain[0].astype(np.float64) - outer[0]))) <= \
            8 * (s + 1) * eps * scale, t
        if alpha < 0.5:
            # The lerp's low side, φ + α·(θ − φ), and φ + (−α)·(φ − θ) are the same roundings
            # (negation is exact): the same bits. Above 0.5 the lerp is θ − (1 − α)·(θ − φ).
            assert same_bits(plain[0], outer[0]), t


# --- (d) no allocation at a sync -----------------------------------------------------------


def traced_peak(fn):
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


def large_params():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1024, 1024)), rng.standard_normal(512 * 1024)]  # 12 MiB


@pytest.mark.parametrize("outer", [lc.sgd(lr=0.7, momentum=0.9, nesterov=True),
                                   lc.sgd(lr=0.7, momentum=0.9, dampening=0.1, weight_decay=0.1),
                                   lc.adam(lr=0.1, weight_decay=0.1),
                                   lc.adamw(lr=0.1, amsgrad=True)],
                         ids=["nesterov", "heavy-ball-wd", "adam-l2", "adamw-amsgrad"])
def test_outer_sync_allocates_nothing(outer):
    params = large_params()
    nbytes = sum(p.nbytes for p in params)
    opt = Lookahead(params, lc.sgd(lr=0.1), k=5, outer=outer)
    for step in range(3):  # the first sync (SGD's buffer copies Δ) and later ones
        for p in params:
            p += 1.0  # θ ≠ φ
        peak = traced_peak(opt.sync)
        assert peak < 16 * 1024, (step, peak)  # Python view objects; P is 12 MiB
        assert peak < nbytes / 500


def test_an_unknown_outer_optimizer_allocates():
    """What the guide says: an optimizer without an in-place kernel allocates Δ and its delta."""
    base = lc.sgd(lr=0.7, momentum=0.9)
    wrapped = base._replace(update=lambda g, s, p: base.update(g, s, p))
    params = large_params()
    opt = Lookahead(params, lc.sgd(lr=0.1), k=5, outer=wrapped)
    for p in params:
        p += 1.0
    assert traced_peak(opt.sync) > sum(p.nbytes for p in params)


# --- (e) refused arguments and checkpoints ---------------------------------------------------


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(alpha=0.5, outer=lc.sgd(lr=0.7)), TypeError, "alpha and outer cannot both be given"),
    (dict(alpha=0.3, outer=lc.sgd(lr=0.7)), TypeError, "alpha and outer cannot both be given"),
    (dict(outer=lc.sgd(lr=0.7), alpha_mode="adaptive"), ValueError, "alpha_mode='adaptive'"),
    (dict(outer="sgd"), TypeError, "outer must be None or an InnerOptimizer"),
    (dict(outer=lc.sgd), TypeError, "outer must be None or an InnerOptimizer"),
])
def test_bad_outer_arguments_are_refused_and_build_nothing(kwargs, error, message):
    params = [np.linspace(-1, 1, 6)]
    before = params[0].tobytes()
    with pytest.raises(error, match=message):
        Lookahead(params, lc.sgd(lr=0.1), 3, **kwargs)
    assert params[0].tobytes() == before
    with pytest.raises(error, match=message):  # the core refuses the same calls
        lc.lookahead(lc.sgd(lr=0.1), 3, **kwargs)


def test_defaults_and_attributes():
    params = [np.zeros(3)]
    plain = Lookahead(params, lc.sgd(lr=0.1))
    assert plain.alpha == 0.5 and type(plain.alpha) is float and plain.outer is None
    assert plain.outer_state is None and "alpha" in plain.state_dict()
    outer = lc.adam(lr=0.1)
    opt = Lookahead([np.zeros(3)], lc.sgd(lr=0.1), outer=outer)
    assert opt.alpha is None and opt.outer is outer
    assert isinstance(opt.outer_state, lc.AdamState) and opt.outer_state.step == 0
    assert "outer='adam'" in repr(opt)
    sd = opt.state_dict()
    assert "alpha" not in sd and sd["outer_name"] == "adam"
    assert {"outer.step", "outer.exp_avg.0", "outer.exp_avg_sq.0"} <= sd.keys()


def fitted(outer=lc.sgd(lr=0.7, momentum=0.9, nesterov=True), k=3, steps=4, **kwargs):
    params = [np.linspace(-1, 1, 6).reshape(2, 3), np.arange(4.0)]
    opt = Lookahead(params, lc.adam(lr=0.1), k, outer=outer, **kwargs)
    for t in range(steps):
        opt.step([p * 0.3 + t for p in params])
    return opt


def test_checkpoint_with_and_without_outer_do_not_mix():
    with_outer = fitted()
    plain_params = [np.zeros((2, 3)), np.zeros(4)]
    plain = Lookahead(plain_params, lc.adam(lr=0.1), 3)
    before = snapshot(plain)
    with pytest.raises(ValueError, match=r"state_dict\['outer\.momentum_buffer\.0'\].*outer=None|"
                                         r"state_dict\['outer_name'\].*outer=None"):
        plain.load_state_dict(with_outer.state_dict())
    assert snapshot(plain) == before
    before = snapshot(with_outer)
    with pytest.raises(ValueError, match=r"no 'outer_name'.*outer='sgd'"):
        with_outer.load_state_dict(plain.state_dict())
    assert snapshot(with_outer) == before
    other = Lookahead([np.zeros((2, 3)), np.zeros(4)], lc.adam(lr=0.1), 3, outer=lc.adam())
    with pytest.raises(ValueError, match=r"state_dict\['outer_name'\] is 'sgd'.*'adam'"):
        other.load_state_dict(with_outer.state_dict())


@pytest.mark.parametrize("corrupt, error, key", [
    (lambda sd: sd.pop("outer.momentum_buffer.1"), ValueError, "missing keys"),
    (lambda sd: sd.update({"outer.momentum_buffer.0": np.zeros(6)}), ValueError,
     r"state_dict\['outer.momentum_buffer.0'\] must have shape"),
    (lambda sd: sd.update({"outer.step": -1}), ValueError, r"state_dict\['outer.step'\]"),
    (lambda sd: sd.update({"outer.step": 1.5}), TypeError, r"state_dict\['outer.step'\]"),
    (lambda sd: sd.update({"alpha": 0.5}), ValueError, r"unexpected keys \['alpha'\]"),
])
def test_a_bad_outer_state_is_refused_and_changes_nothing(corrupt, error, key):
    source = fitted(steps=5)
    target = fitted(steps=2)
    sd = source.state_dict(include_params=True)
    corrupt(sd)
    before = snapshot(target)
    with pytest.raises(error, match=key):
        target.load_state_dict(sd)
    assert snapshot(target) == before


def test_a_negative_outer_second_moment_is_refused():
    source = fitted(outer=lc.adam(lr=0.1), steps=4)
    target = fitted(outer=lc.adam(lr=0.1), steps=1)
    sd = source.state_dict()
    sd["outer.exp_avg_sq.1"] = sd["outer.exp_avg_sq.1"] - 1.0
    before = snapshot(target)
    with pytest.raises(ValueError, match=r"state_dict\['outer.exp_avg_sq.1'\] must be >= 0"):
        target.load_state_dict(sd)
    assert snapshot(target) == before


def test_load_copies_into_the_live_buffers():
    source = fitted(steps=5)
    target = fitted(steps=1)
    buffers = target.outer_state.momentum_buffer
    target.load_state_dict(source.state_dict(include_params=True))
    assert all(a is b for a, b in zip(target.outer_state.momentum_buffer, buffers))
    assert snapshot(target) == snapshot(source)


# --- sync(), slow_weights() and rollback with an outer optimizer -----------------------------


def test_sync_and_slow_weights_with_outer():
    opt = fitted(steps=4)  # count 1: mid-cycle
    core = lc.lookahead(lc.adam(lr=0.1), 3, outer=lc.sgd(lr=0.7, momentum=0.9, nesterov=True))
    params = [p.copy() for p in opt.params]
    state = lc.OuterLookaheadState(tuple(s.copy() for s in opt.slow), opt.inner_state, opt.count,
                                   lc.SGDState(opt.outer_state.step,
                                               tuple(b.copy() for b in opt.outer_state.momentum_buffer)))
    theta = [p.copy() for p in opt.params]
    with opt.slow_weights():
        assert all(same_bits(p, s) for p, s in zip(opt.params, state.slow))
        assert opt.state_dict()["outer.step"] == 1
    assert all(same_bits(p, t) for p, t in zip(opt.params, theta))
    opt.sync()
    params, state = core.sync(params, state)
    assert opt.count == 0 and opt.outer_state.step == 2
    assert all(same_bits(a, b) for a, b in zip(opt.params, params))
    assert all(same_bits(a, b) for a, b in zip(opt.outer_state.momentum_buffer,
                                                state.outer.momentum_buffer))


def test_rollback_skips_the_outer_step_and_keeps_its_state():
    opt = fitted(steps=4, nonfinite="rollback")  # one sync done, count 1
    slow = [s.copy() for s in opt.slow]
    outer_before = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                    for k, v in flatten_tree("outer", opt.outer_state).items()}
    opt.step([np.full((2, 3), np.nan), np.zeros(4)])
    opt.step([np.zeros((2, 3)), np.zeros(4)])  # the k-th step: rollback instead of the sync
    assert opt.rollbacks == 1 and opt.count == 0
    assert all(same_bits(p, s) for p, s in zip(opt.params, slow))
    assert all(same_bits(a, b) for a, b in zip(opt.slow, slow))
    after = flatten_tree("outer", opt.outer_state)
    assert after["outer.step"] == outer_before["outer.step"] == 1
    assert all(same_bits(after[k], v) for k, v in outer_before.items() if isinstance(v, np.ndarray))


def test_a_nonfinite_outer_state_rolls_back_and_restarts():
    opt = fitted(outer=lc.adam(lr=0.1), steps=3, nonfinite="rollback")  # one sync done
    slow = [s.copy() for s in opt.slow]
    opt.outer_state.exp_avg_sq[0][0, 1] = np.inf  # live buffers: as an overflow would leave it
    for _ in range(3):
        opt.step([np.zeros((2, 3)), np.zeros(4)])
    assert opt.rollbacks == 1
    assert all(same_bits(a, b) for a, b in zip(opt.slow, slow))
    assert opt.outer_state.step == 0
    assert all(not np.any(b) for b in opt.outer_state.exp_avg_sq + opt.outer_state.exp_avg)
    for _ in range(3):  # and the next cycle syncs again
        opt.step([np.ones((2, 3)), np.ones(4)])
    assert opt.rollbacks == 1 and opt.outer_state.step == 1


def test_outer_none_checkpoint_is_unchanged():
    """``outer=None``: the same keys as before outer optimizers existed."""
    opt = Lookahead([np.zeros(2)], lc.sgd(lr=0.1, momentum=0.9), 3, 0.5)
    assert list(opt.state_dict()) == ["k", "alpha", "count", "inner_name", "slow.0", "inner.step",
                                      "inner.momentum_buffer.0"]
    buffer = io.BytesIO()
    np.savez(buffer, **opt.state_dict())
    buffer.seek(0)
    opt.load_state_dict(np.load(buffer))
