"""The core against ``torch.optim`` wrapped by a plain-torch Lookahead (float64).

The reference is ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` (a second, independent
implementation of the inner optimizers) wrapped by a dozen lines of
test-only Lookahead written directly from Algorithm 1: an eager slow copy,
after every k-th step ``slow.lerp_(p, α)`` then ``p.copy_(slow)``.

The gradient depends on the current fast weights (a diagonal quadratic plus
seeded noise), so a wrong fast weight at any step changes every later gradient.
The core runs on torch float64 tensors and on NumPy float64 arrays; both must
agree with torch to 1e-12 relative to the largest magnitude (docs/design.md, 'Tolerances'). The
magnitude is taken over the whole model (all parameters, and θ₀): rounding
errors are absolute errors of the order eps·max|θ| committed on every array
along the way, and a parameter that converges near 0 (the 0-d one ends around
1e-5 for some seeds) would turn a 1e-17 absolute difference into a large
relative one under a per-array measure.
"""

from __future__ import annotations

import numpy as np
import pytest
from core_helpers import to_numpy

import lookahead_core as lc

torch = pytest.importorskip("torch", reason="torch not installed")

SHAPES = [(4, 3), (5,), ()]
STEPS = 43  # 8 syncs with k = 5, then 3 steps into the next cycle
K = 5
TOL = 1e-12

# (name, torch optimizer factory, core inner optimizer)
CONFIGS = [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.05), lambda: lc.sgd(lr=0.05)),
    ("sgd-momentum", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
     lambda: lc.sgd(lr=0.05, momentum=0.9)),
    ("sgd-dampening", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3),
     lambda: lc.sgd(lr=0.05, momentum=0.8, dampening=0.3)),
    ("sgd-nesterov", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
     lambda: lc.sgd(lr=0.05, momentum=0.9, nesterov=True)),
    ("sgd-weight-decay", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.05),
     lambda: lc.sgd(lr=0.05, momentum=0.9, weight_decay=0.05)),
    ("sgd-nesterov-weight-decay",
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05),
     lambda: lc.sgd(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.02), lambda: lc.adam(lr=0.02)),
    ("adam-betas-eps", lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.8, 0.99), eps=1e-6),
     lambda: lc.adam(lr=0.02, betas=(0.8, 0.99), eps=1e-6)),
    ("adam-l2", lambda p: torch.optim.Adam(p, lr=0.02, weight_decay=0.1),
     lambda: lc.adam(lr=0.02, weight_decay=0.1)),
    ("adam-amsgrad", lambda p: torch.optim.Adam(p, lr=0.02, amsgrad=True),
     lambda: lc.adam(lr=0.02, amsgrad=True)),
    ("adam-amsgrad-l2", lambda p: torch.optim.Adam(p, lr=0.02, amsgrad=True, weight_decay=0.1),
     lambda: lc.adam(lr=0.02, amsgrad=True, weight_decay=0.1)),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.1),
     lambda: lc.adamw(lr=0.02, weight_decay=0.1)),
    ("adamw-amsgrad", lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.1, amsgrad=True),
     lambda: lc.adamw(lr=0.02, weight_decay=0.1, amsgrad=True)),
]


def model_rel_err(actual, expected, theta0):
    """max_i max|actual_i − expected_i| / max(max_i max|expected_i|, max_i max|θ₀_i|)."""
    scale = max(
        [float(np.max(np.abs(to_numpy(e)))) for e in expected]
        + [float(np.max(np.abs(t))) for t in theta0]
    )
    diff = max(
        float(np.max(np.abs(to_numpy(a) - to_numpy(e)), initial=0.0))
        for a, e in zip(actual, expected)
    )
    return diff / scale


def _problem(seed):
    """θ₀, the curvatures h of L(θ) = ½ Σ h θ², and the per-step gradient noise."""
    rng = np.random.default_rng(seed)
    theta0 = [rng.standard_normal(s) for s in SHAPES]
    curv = [rng.uniform(0.5, 2.0, s) for s in SHAPES]
    noise = [[0.3 * rng.standard_normal(s) for s in SHAPES] for _ in range(STEPS)]
    return theta0, curv, noise


def torch_lookahead_reference(make_opt, theta0, curv, noise, k, alpha):
    """Algorithm 1 in plain torch around a torch.optim optimizer (test-only)."""
    params = [torch.tensor(t, dtype=torch.float64, requires_grad=True) for t in theta0]
    h = [torch.tensor(c, dtype=torch.float64) for c in curv]
    opt = make_opt(params)
    slow = [p.detach().clone() for p in params]  # φ₀ ← θ₀, eagerly
    for step in range(1, len(noise) + 1):
        for p, hp, n in zip(params, h, noise[step - 1]):
            p.grad = hp * p.detach() + torch.tensor(n, dtype=torch.float64)
        opt.step()
        if step % k == 0:
            with torch.no_grad():
                for p, s in zip(params, slow):
                    s.lerp_(p, alpha)  # φ ← φ + α(θ − φ)
                    p.copy_(s)  # θ ← φ
    return [p.detach() for p in params], slow


def core_run(xp_name, make_inner, theta0, curv, noise, k, alpha):
    """The same problem through lookahead_core on torch tensors or NumPy arrays."""
    if xp_name == "torch":
        conv = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    else:
        conv = lambda a: np.array(a, dtype=np.float64)  # noqa: E731
    params = [conv(t) for t in theta0]
    h = [conv(c) for c in curv]
    opt = lc.lookahead(make_inner(), k=k, alpha=alpha)
    state = opt.init(params)
    for step in range(len(noise)):
        grads = [hp * p + conv(n) for p, hp, n in zip(params, h, noise[step])]
        params, state = opt.step(params, grads, state)
    return params, state


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("name, make_torch, make_inner", CONFIGS, ids=[c[0] for c in CONFIGS])
@pytest.mark.parametrize("core_lib", ["torch", "numpy"])
def test_core_matches_torch_optim_lookahead(core_lib, name, make_torch, make_inner, alpha):
    theta0, curv, noise = _problem(seed=len(name) * 1000 + int(alpha * 10))
    ref_params, ref_slow = torch_lookahead_reference(make_torch, theta0, curv, noise, K, alpha)
    params, state = core_run(core_lib, make_inner, theta0, curv, noise, K, alpha)
    assert state.count == STEPS % K
    for i in range(len(SHAPES)):
        assert tuple(params[i].shape) == SHAPES[i]
        assert to_numpy(params[i]).dtype == np.float64
        assert to_numpy(state.slow[i]).dtype == np.float64
    err_fast = model_rel_err(params, ref_params, theta0)
    err_slow = model_rel_err(state.slow, ref_slow, theta0)
    assert err_fast <= TOL, err_fast
    assert err_slow <= TOL, err_slow
    # the run moved the weights far from θ₀ and the slow weights lag the fast ones,
    # so agreement is not trivial
    assert model_rel_err(ref_params, theta0, theta0) > 1e-2
    assert model_rel_err(ref_slow, ref_params, theta0) > 1e-4


def test_reference_detects_a_schedule_error():
    """The comparison is sensitive: syncing one step late is far beyond 1e-12."""
    theta0, curv, noise = _problem(seed=7)
    make_torch, make_inner = CONFIGS[1][1], CONFIGS[1][2]
    ref_params, ref_slow = torch_lookahead_reference(make_torch, theta0, curv, noise, K + 1, 0.5)
    params, state = core_run("torch", make_inner, theta0, curv, noise, K, 0.5)
    assert model_rel_err(state.slow, ref_slow, theta0) > 1e-3


def test_alpha1_matches_plain_torch_adam():
    """α = 1 is the inner optimizer alone: the core equals bare torch.optim.Adam."""
    theta0, curv, noise = _problem(seed=11)
    make_torch, make_inner = CONFIGS[6][1], CONFIGS[6][2]
    params = [torch.tensor(t, dtype=torch.float64, requires_grad=True) for t in theta0]
    h = [torch.tensor(c, dtype=torch.float64) for c in curv]
    opt = make_torch(params)
    for step in range(STEPS):
        for p, hp, n in zip(params, h, noise[step]):
            p.grad = hp * p.detach() + torch.tensor(n, dtype=torch.float64)
        opt.step()
    core_params, _ = core_run("numpy", make_inner, theta0, curv, noise, K, 1.0)
    assert model_rel_err(core_params, [p.detach() for p in params], theta0) <= TOL
