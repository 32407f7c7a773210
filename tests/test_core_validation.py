"""Every bad input is a TypeError or ValueError naming the argument (docs/design.md, 'Errors'),
raised before anything is computed; a rejected step leaves its inputs unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
from core_helpers import snapshot

import lookahead_core as lc


def _id(value):
    return value.__name__ if isinstance(value, type) else repr(value)


# ------------------------------------------------------------------ k and alpha


@pytest.mark.parametrize(
    "k, exc",
    [
        (0, ValueError),
        (-1, ValueError),
        (True, TypeError),
        (False, TypeError),
        (2.5, TypeError),
        (3.0, TypeError),
        ("3", TypeError),
        (None, TypeError),
        (np.float64(3.0), TypeError),
    ],
    ids=_id,
)
def test_bad_k(k, exc):
    with pytest.raises(exc, match=r"\bk must be an int >= 1"):
        lc.lookahead(lc.sgd(), k=k)
    with pytest.raises(exc, match=r"\bk must be an int >= 1"):
        lc.check_k(k)


@pytest.mark.parametrize("k", [np.int64(3), np.int32(3), np.uint8(3), 3], ids=repr)
def test_integer_like_k_is_coerced_to_python_int(k):
    opt = lc.lookahead(lc.sgd(), k=k, alpha=0.5)
    assert type(opt.k) is int and opt.k == 3
    assert type(lc.check_k(k)) is int


def test_torch_0d_k_and_alpha_are_rejected():
    torch = pytest.importorskip("torch", reason="torch not installed")
    with pytest.raises(TypeError, match=r"\bk\b"):
        lc.lookahead(lc.sgd(), k=torch.tensor(3))
    with pytest.raises(TypeError, match="alpha"):
        lc.lookahead(lc.sgd(), alpha=torch.tensor(0.5))
    with pytest.raises(TypeError, match="lr"):
        lc.sgd(lr=torch.tensor(0.1))


@pytest.mark.parametrize(
    "alpha, exc",
    [
        (-0.1, ValueError),
        (-1e-300, ValueError),
        (1.0000001, ValueError),
        (2, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (-math.inf, ValueError),
        (True, TypeError),
        ("0.5", TypeError),
        (None, TypeError),
        (0.5j, TypeError),
    ],
    ids=_id,
)
def test_bad_alpha(alpha, exc):
    with pytest.raises(exc, match="alpha"):
        lc.lookahead(lc.sgd(), alpha=alpha)


@pytest.mark.parametrize("alpha", [0, 1, 0.0, 1.0, 0.5, np.float32(0.25), np.float64(0.75)], ids=repr)
def test_good_alpha_is_a_python_float(alpha):
    opt = lc.lookahead(lc.sgd(), alpha=alpha)
    assert type(opt.alpha) is float and opt.alpha == float(alpha)


def test_inner_must_be_an_inner_optimizer():
    with pytest.raises(TypeError, match="inner"):
        lc.lookahead("sgd")
    with pytest.raises(TypeError, match="inner"):
        lc.lookahead(lambda g, s, p: (g, s))


# ------------------------------------------------------- inner hyperparameters

SGD_BAD = [
    (dict(lr=-0.1), ValueError, r"\blr\b"),
    (dict(lr=math.nan), ValueError, r"\blr\b"),
    (dict(lr=math.inf), ValueError, r"\blr\b"),
    (dict(lr=True), TypeError, r"\blr\b"),
    (dict(lr="0.1"), TypeError, r"\blr\b"),
    (dict(momentum=1.0), ValueError, "momentum"),
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(momentum=math.nan), ValueError, "momentum"),
    (dict(momentum=0.9, dampening=1.5), ValueError, "dampening"),
    (dict(momentum=0.9, dampening=-0.1), ValueError, "dampening"),
    (dict(weight_decay=-1e-4), ValueError, "weight_decay"),
    (dict(weight_decay=math.inf), ValueError, "weight_decay"),
    (dict(nesterov=True), ValueError, "nesterov"),
    (dict(nesterov=True, momentum=0.9, dampening=0.1), ValueError, "nesterov"),
    (dict(nesterov=1, momentum=0.9), TypeError, "nesterov"),
]


@pytest.mark.parametrize("kwargs, exc, match", SGD_BAD, ids=[repr(c[0]) for c in SGD_BAD])
def test_bad_sgd_hyperparameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        lc.sgd(**kwargs)


ADAM_BAD = [
    (dict(lr=-1e-3), ValueError, r"\blr\b"),
    (dict(lr=math.nan), ValueError, r"\blr\b"),
    (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    (dict(betas=(-0.1, 0.999)), ValueError, r"betas\[0\]"),
    (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    (dict(betas=(0.9, math.nan)), ValueError, r"betas\[1\]"),
    (dict(betas=(0.9, "0.999")), TypeError, r"betas\[1\]"),
    (dict(betas=(0.9,)), TypeError, "betas"),
    (dict(betas=(0.9, 0.99, 0.999)), TypeError, "betas"),
    (dict(betas=0.9), TypeError, "betas"),
    (dict(eps=-1e-8), ValueError, "eps"),
    (dict(eps=math.nan), ValueError, "eps"),
    (dict(weight_decay=-0.01), ValueError, "weight_decay"),
    (dict(amsgrad=1), TypeError, "amsgrad"),
]


@pytest.mark.parametrize("factory", [lc.adam, lc.adamw], ids=["adam", "adamw"])
@pytest.mark.parametrize("kwargs, exc, match", ADAM_BAD, ids=[repr(c[0]) for c in ADAM_BAD])
def test_bad_adam_hyperparameters(factory, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        factory(**kwargs)


def test_boundary_hyperparameters_are_accepted():
    lc.sgd(lr=0.0, momentum=0.0, dampening=1.0, weight_decay=0.0)
    lc.sgd(lr=1, momentum=0.99, nesterov=True)
    lc.adam(lr=0, betas=(0.0, 0.0), eps=0.0, weight_decay=0)
    lc.adamw(betas=[0.5, 0.5])
    opt = lc.sgd(lr=np.float32(0.5), momentum=np.float64(0.25))
    assert all(type(opt.hyperparams[n]) is float for n in ("lr", "momentum", "dampening"))


# ----------------------------------------------------------------------- params

OPTIMIZERS = {
    "sgd-momentum": lambda: lc.lookahead(lc.sgd(lr=0.1, momentum=0.9), k=2, alpha=0.5),
    "adam": lambda: lc.lookahead(lc.adam(lr=0.1), k=2, alpha=0.5),
}


def _bad_params():
    """(id, params, exception, regex) for init."""
    cases = [
        ("ndarray-not-a-list", np.ones(3), TypeError, "params must be a list or tuple"),
        ("generator", (a for a in [np.ones(3)]), TypeError, "params must be a list or tuple"),
        ("string", "abc", TypeError, "params must be a list or tuple"),
        ("dict", {"w": np.ones(3)}, TypeError, "params must be a list or tuple"),
        ("empty", [], ValueError, "params must hold at least one array"),
        ("int-dtype", [np.ones(2), np.arange(3)], TypeError, r"params\[1\].*real floating"),
        ("bool-dtype", [np.ones(2, dtype=bool)], TypeError, r"params\[0\].*real floating"),
        ("complex-dtype", [np.ones(2, dtype=np.complex128)], TypeError, r"params\[0\].*real floating"),
        ("python-float", [np.ones(2), 3.0], TypeError, r"params\[1\] must be an array"),
        ("nested-list", [[1.0, 2.0]], TypeError, r"params\[0\] must be an array"),
        ("None", [np.ones(2), None], TypeError, r"params\[1\] must be an array"),
    ]
    try:
        import torch
    except ImportError:
        return cases
    cases += [
        ("numpy-and-torch", [np.ones(2), torch.ones(2, dtype=torch.float64)], TypeError,
         "params must all come from one array library"),
        ("cpu-and-meta", [torch.ones(2, dtype=torch.float64),
                          torch.ones(2, dtype=torch.float64, device="meta")],
         ValueError, "params must all be on one device"),
        ("torch-int", [torch.arange(3)], TypeError, r"params\[0\].*real floating"),
    ]
    return cases


@pytest.mark.parametrize("make_opt", list(OPTIMIZERS.values()), ids=list(OPTIMIZERS))
@pytest.mark.parametrize("case", _bad_params(), ids=lambda c: c[0])
def test_bad_params_at_init(make_opt, case):
    _, params, exc, match = case
    with pytest.raises(exc, match=match):
        make_opt().init(params)


def _setup(make_opt, lib="numpy"):
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((3,)), rng.standard_normal((2, 2))]
    gvalues = [rng.standard_normal((3,)), rng.standard_normal((2, 2))]
    if lib == "torch":
        import torch

        params = [torch.tensor(v) for v in values]
        grads = [torch.tensor(v) for v in gvalues]
    else:
        params, grads = values, gvalues
    opt = make_opt()
    state = opt.init(params)
    # one successful step so that the inner state holds non-zero buffers
    params, state = opt.step(params, grads, state)
    return opt, list(params), grads, state


def _bad_steps(lib):
    """(id, mutate(params, grads, state) -> (params, grads, state), exception, regex)."""
    if lib == "torch":
        import torch

        f32 = lambda a: a.to(torch.float32)  # noqa: E731
        other_lib = lambda a: a.numpy()  # noqa: E731
        other_device = lambda a: torch.empty_like(a, device="meta")  # noqa: E731
        as_int = lambda a: a.to(torch.int64)  # noqa: E731
    else:
        f32 = lambda a: a.astype(np.float32)  # noqa: E731
        as_int = lambda a: a.astype(np.int64)  # noqa: E731
        other_device = None
        try:
            import torch

            other_lib = lambda a: torch.tensor(a)  # noqa: E731
        except ImportError:
            other_lib = None
    xp_ones = (lambda shape: np.ones(shape)) if lib == "numpy" else (
        lambda shape: __import__("torch").ones(shape, dtype=__import__("torch").float64))

    cases = [
        ("grads-too-few", lambda p, g, s: (p, g[:1], s), ValueError, "grads must hold 2 arrays"),
        ("grads-too-many", lambda p, g, s: (p, g + [g[0]], s), ValueError, "grads must hold 2 arrays"),
        ("grads-shape", lambda p, g, s: (p, [g[0], xp_ones((4,))], s), ValueError,
         r"grads\[1\] must have shape"),
        ("grads-dtype", lambda p, g, s: (p, [f32(g[0]), f32(g[1])], s), TypeError,
         r"grads\[0\] must have dtype"),
        ("grads-int", lambda p, g, s: (p, [as_int(g[0]), g[1]], s), TypeError,
         r"grads\[0\].*real floating"),
        ("grads-not-a-list", lambda p, g, s: (p, g[0], s), TypeError, "grads must be a list or tuple"),
        ("grads-non-array", lambda p, g, s: (p, [g[0], 1.0], s), TypeError, r"grads\[1\] must be an array"),
        ("params-shape-vs-state", lambda p, g, s: ([xp_ones((4,)), p[1]], [xp_ones((4,)), g[1]], s),
         ValueError, r"params\[0\] must have shape \(3,\) like state\.slow\[0\]"),
        ("params-count-vs-state", lambda p, g, s: (p[:1], g[:1], s), ValueError,
         "params must hold 2 arrays"),
        ("params-dtype-vs-state", lambda p, g, s: ([f32(a) for a in p], [f32(a) for a in g], s),
         TypeError, r"params\[0\] must have dtype"),
        ("state-not-a-state", lambda p, g, s: (p, g, tuple(s)), TypeError, "state must be a LookaheadState"),
        ("state-none", lambda p, g, s: (p, g, None), TypeError, "state must be a LookaheadState"),
    ]
    if other_lib is not None:
        cases += [
            ("grads-other-library", lambda p, g, s: (p, [other_lib(a) for a in g], s), TypeError,
             "grads must come from the same array library as params"),
            ("params-other-library-than-state",
             lambda p, g, s: ([other_lib(a) for a in p], [other_lib(a) for a in g], s),
             TypeError, "params must come from the same array library as state.slow"),
        ]
    if other_device is not None:
        cases += [
            ("grads-other-device", lambda p, g, s: (p, [other_device(a) for a in g], s), ValueError,
             r"grads\[0\] must be on device"),
            ("params-other-device-than-state",
             lambda p, g, s: ([other_device(a) for a in p], [other_device(a) for a in g], s),
             ValueError, r"params\[0\] must be on device"),
        ]
    return cases


def _step_cases():
    out = []
    libs = ["numpy"]
    try:
        import torch  # noqa: F401

        libs.append("torch")
    except ImportError:
        pass
    for lib in libs:
        for opt_name in OPTIMIZERS:
            for case in _bad_steps(lib):
                out.append(pytest.param(lib, opt_name, *case[1:], id=f"{lib}-{opt_name}-{case[0]}"))
    return out


@pytest.mark.parametrize("lib, opt_name, mutate, exc, match", _step_cases())
def test_rejected_step_names_the_argument_and_changes_nothing(lib, opt_name, mutate, exc, match):
    opt, params, grads, state = _setup(OPTIMIZERS[opt_name], lib)
    bad_params, bad_grads, bad_state = mutate(params, grads, state)
    before = snapshot((params, grads, state, bad_params, bad_grads, bad_state))
    with pytest.raises(exc, match=match):
        opt.step(bad_params, bad_grads, bad_state)
    assert snapshot((params, grads, state, bad_params, bad_grads, bad_state)) == before
    # the good inputs still step normally afterwards
    opt.step(params, grads, state)


def test_state_from_another_params_set_is_rejected_by_sync():
    opt = lc.lookahead(lc.sgd(lr=0.1), k=3)
    state = opt.init([np.zeros(3)])
    with pytest.raises(ValueError, match=r"params\[0\] must have shape"):
        opt.sync([np.zeros(4)], state)
    with pytest.raises(TypeError, match="state must be a LookaheadState"):
        opt.sync([np.zeros(3)], None)


def test_inner_update_validates_its_inputs():
    """The inner optimizers check their own inputs too (they are public)."""
    inner = lc.adam()
    params = [np.zeros(3)]
    state = inner.init(params)
    with pytest.raises(ValueError, match=r"grads\[0\] must have shape"):
        inner.update([np.zeros(2)], state, params)
    with pytest.raises(TypeError, match="params must be a list or tuple"):
        inner.update([np.zeros(3)], state, np.zeros(3))
    with pytest.raises(TypeError, match=r"params\[0\].*real floating"):
        lc.sgd().init([np.zeros(3, dtype=np.int32)])
