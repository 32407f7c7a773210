"""The core is pure: a step mutates none of its inputs, returns arrays that share
memory with none of them, fast and slow weights never alias, and dtype, shape and
device are preserved."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from core_helpers import asarray, shares_memory, snapshot, to_numpy

import lookahead_core as lc

INNERS = {
    "sgd": lambda: lc.sgd(lr=0.1),
    "sgd-momentum": lambda: lc.sgd(lr=0.1, momentum=0.9, dampening=0.1),
    "sgd-nesterov-wd": lambda: lc.sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda: lc.adam(lr=0.01),
    "adam-amsgrad-l2": lambda: lc.adam(lr=0.01, amsgrad=True, weight_decay=0.01),
    "adamw": lambda: lc.adamw(lr=0.01),
}

SHAPES = [(3,), (2, 2), (), (0,), (2, 0)]


def _libs():
    libs = ["numpy"]
    try:
        import torch  # noqa: F401

        libs.append("torch")
    except ImportError:
        pass
    return libs


def _namespace(lib):
    if lib == "torch":
        import torch

        return array_api_compat.array_namespace(torch.zeros(1))
    return array_api_compat.array_namespace(np.zeros(1))


def _arrays(tree):
    """All arrays in a nested tuple/list/NamedTuple."""
    if isinstance(tree, (tuple, list)):
        return [a for t in tree for a in _arrays(t)]
    if array_api_compat.is_array_api_obj(tree):
        return [tree]
    return []


def _nonempty(arrays):
    return [a for a in arrays if int(np.prod(tuple(a.shape))) > 0]


@pytest.mark.parametrize("inner_name", sorted(INNERS))
@pytest.mark.parametrize("lib", _libs())
def test_step_mutates_nothing_and_aliases_nothing(lib, inner_name, rng):
    xp = _namespace(lib)
    k = 2
    opt = lc.lookahead(INNERS[inner_name](), k=k, alpha=0.5)
    params = [asarray(xp, rng.standard_normal(s)) for s in SHAPES]
    init_input = snapshot(params)
    state = opt.init(params)
    assert snapshot(params) == init_input
    for slow, p in zip(_nonempty(state.slow), _nonempty(params)):
        assert not shares_memory(slow, p)
    for step in range(1, 6):
        grads = [asarray(xp, rng.standard_normal(s)) for s in SHAPES]
        before = snapshot((params, grads, state))
        new_params, new_state = opt.step(params, grads, state)
        # nothing the caller passed in changed
        assert snapshot((params, grads, state)) == before, step
        inputs = _nonempty(_arrays((params, grads, state)))
        carried = {id(a) for a in _arrays(state.slow)} if step % k else set()
        outputs = [a for a in _nonempty(_arrays((new_params, new_state))) if id(a) not in carried]
        # new arrays only: no output shares memory with any input ...
        for o in outputs:
            for i in inputs:
                assert not shares_memory(o, i), step
        # ... nor with another output (fast, slow and every buffer are distinct)
        for a in range(len(outputs)):
            for b in range(a + 1, len(outputs)):
                assert not shares_memory(outputs[a], outputs[b]), step
        # fast and slow never alias, on sync steps (θ ← φ is a copy) and between
        for f, s in zip(_nonempty(new_params), _nonempty(new_state.slow)):
            assert not shares_memory(f, s)
        if step % k == 0:
            assert snapshot(new_params) == snapshot(new_state.slow)
        params, state = new_params, new_state


@pytest.mark.parametrize("lib", _libs())
def test_explicit_sync_mutates_nothing_and_copies(lib, rng):
    xp = _namespace(lib)
    opt = lc.lookahead(lc.sgd(lr=0.1, momentum=0.5), k=4, alpha=0.5)
    params = [asarray(xp, rng.standard_normal(s)) for s in SHAPES]
    state = opt.init(params)
    params, state = opt.step(params, [asarray(xp, rng.standard_normal(s)) for s in SHAPES], state)
    before = snapshot((params, state))
    fast, new_state = opt.sync(params, state)
    assert snapshot((params, state)) == before
    assert new_state.inner is state.inner  # the sync leaves the inner state alone
    for f, s, p in zip(_nonempty(fast), _nonempty(new_state.slow), _nonempty(params)):
        assert not shares_memory(f, s)
        assert not shares_memory(f, p) and not shares_memory(s, p)


def test_momentum_buffer_does_not_alias_the_gradient():
    """First step: b ← g must be a copy, or an adapter zeroing grads in place wipes b."""
    opt = lc.sgd(lr=0.1, momentum=0.9)
    params = [np.ones(3)]
    grads = [np.full(3, 2.0)]
    _, state = opt.update(grads, opt.init(params), params)
    assert not np.shares_memory(state.momentum_buffer[0], grads[0])
    grads[0][...] = 0.0
    np.testing.assert_array_equal(state.momentum_buffer[0], np.full(3, 2.0))


# ---------------------------------------------------------------- dtype, shape, device


def _check_tree(tree, dtype, device):
    for a in _arrays(tree):
        assert a.dtype == dtype
        assert array_api_compat.device(a) == device


@pytest.mark.parametrize("inner_name", ["sgd-momentum", "adam-amsgrad-l2", "adamw"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_shape_device_preserved(xp, rng, inner_name, dtype):
    opt = lc.lookahead(INNERS[inner_name](), k=2, alpha=0.5)
    params = [asarray(xp, rng.standard_normal(s), dtype) for s in SHAPES]
    device = array_api_compat.device(params[0])
    want = getattr(xp, dtype)
    state = opt.init(params)
    _check_tree(state, want, device)
    for _ in range(3):
        grads = [asarray(xp, rng.standard_normal(s), dtype) for s in SHAPES]
        params, state = opt.step(params, grads, state)
        _check_tree((params, state), want, device)
        assert [tuple(p.shape) for p in params] == SHAPES
        assert [tuple(s.shape) for s in state.slow] == SHAPES
    params, state = opt.sync(params, state)
    _check_tree((params, state), want, device)


@pytest.mark.parametrize("inner_name", ["sgd-momentum", "adam", "adamw"])
@pytest.mark.parametrize("lib", _libs())
def test_float16_preserved(lib, inner_name):
    xp = _namespace(lib)
    opt = lc.lookahead(INNERS[inner_name](), k=2, alpha=0.5)
    # values of order 1 keep Adam's g² and √v inside float16's normal range
    params = [asarray(xp, [[0.5, -1.0], [1.5, 2.0]], "float16")]
    grads = [asarray(xp, [[0.25, -0.5], [1.0, 0.75]], "float16")]
    state = opt.init(params)
    for _ in range(4):
        params, state = opt.step(params, grads, state)
        _check_tree((params, state), xp.float16, array_api_compat.device(grads[0]))
    assert np.all(np.isfinite(to_numpy(params[0])))


def test_torch_meta_device_preserved():
    """The core never moves data: it runs on torch's data-less ``meta`` device."""
    torch = pytest.importorskip("torch", reason="torch not installed")
    meta = torch.device("meta")
    for inner_name in ("sgd-nesterov-wd", "adam-amsgrad-l2"):
        opt = lc.lookahead(INNERS[inner_name](), k=2, alpha=0.5)
        params = [torch.empty(3, 2, dtype=torch.float64, device=meta)]
        grads = [torch.empty(3, 2, dtype=torch.float64, device=meta)]
        state = opt.init(params)
        for _ in range(3):
            params, state = opt.step(params, grads, state)
            _check_tree((params, state), torch.float64, meta)


def test_numpy_0d_results_are_ndarrays():
    """Arrays in, arrays out: 0-d NumPy parameters give 0-d ndarrays, not NumPy scalars.

    Currently fails: NumPy turns the result of arithmetic on 0-d arrays into
    scalars (np.float64), and the core returns those as fast weights, slow
    weights and inner state, so the type of a parameter changes from
    ndarray to np.float64 after the first step (and flips between the two
    from step to step). A np.float64 is read-only and not an ndarray, so
    code that writes back into the returned arrays (``out[...] = ...``,
    ``np.copyto(out, ...)``) breaks.
    """
    opt = lc.lookahead(lc.adam(lr=0.1), k=2, alpha=0.5)
    params = [np.array(1.0), np.ones(2)]
    grads = [np.array(0.5), np.ones(2)]
    state = opt.init(params)
    for _ in range(3):
        params, state = opt.step(params, grads, state)
        for a in _arrays((params, state)):
            assert isinstance(a, np.ndarray), type(a)
