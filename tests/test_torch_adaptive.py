"""Adaptive α (Proposition 1, eq. 0.3) in the PyTorch adapter: equal to the core, checkpointed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from core_helpers import run_core_adaptive, spd_quadratic

torch = pytest.importorskip("torch", reason="torch not installed")

import lookahead_core as lc  # noqa: E402
from lookahead_torch import Lookahead  # noqa: E402

# (core inner optimizer, torch.optim factory) with the same arithmetic.
INNERS = {
    "sgd": (lambda: lc.sgd(lr=0.05), lambda ps: torch.optim.SGD(ps, lr=0.05)),
    "momentum": (
        lambda: lc.sgd(lr=0.05, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    ),
    "adam": (lambda: lc.adam(lr=0.05), lambda ps: torch.optim.Adam(ps, lr=0.05, foreach=False)),
}


def _quadratic(seed: int):
    """`spd_quadratic` as float64 tensors."""
    return tuple(torch.from_numpy(x) for x in spd_quadratic(seed))


def _gradient(a, b, params):
    x = torch.cat([p.detach().reshape(-1).double() for p in params])
    g = a @ x - b
    return [g[:2].reshape(2), g[2:].reshape(2, 2)]


def _start():
    return [torch.ones(2, dtype=torch.float64), torch.full((2, 2), -0.5, dtype=torch.float64)]


def _make(inner_factory, k, **kw):
    params = [torch.nn.Parameter(t) for t in _start()]
    return params, Lookahead(inner_factory(params), k=k, alpha=0.5, alpha_mode="adaptive", **kw)


def _train(params, opt, a, b, steps, noise=None):
    alphas = []
    for _ in range(steps):
        for p, g in zip(params, _gradient(a, b, params)):
            p.grad = g if noise is None else g + noise(g.shape)
        opt.step()
        if opt.counts[0] == 0 and opt.last_alphas[0] is not None:
            alphas.append(opt.last_alphas[0])
    return alphas


@pytest.mark.parametrize("name", sorted(INNERS))
@pytest.mark.parametrize("k", [1, 3])
def test_adapter_equals_core(name, k):
    """Same trajectory, slow weights, count and α as `lc.lookahead(..., alpha_mode="adaptive")`."""
    a, b = _quadratic(0)
    steps = 5 * (k + 1) + 2  # several cycles, ending mid-cycle
    core_inner, torch_inner = INNERS[name]
    params, opt = _make(torch_inner, k)
    alphas = _train(params, opt, a, b, steps)
    core_params, state = run_core_adaptive(core_inner(), lambda ps: _gradient(a, b, ps), _start(), steps, k)
    # torch.optim's inner steps round differently from the core's (fused multiply-adds in
    # ``add_(..., alpha=-lr)``/``addcdiv_``: fixed mode shows the same 1e-16..1e-14 relative
    # gaps), so trajectories compare to 1e-12 relative; the estimate itself is bit-exact
    # (test_estimate_is_the_cores_bit_for_bit).
    rtol = 1e-12
    for p, c in zip(params, core_params):
        torch.testing.assert_close(p.detach(), c, rtol=rtol, atol=0.0)
    for s, c in zip(opt.slow[0], state.slow):
        torch.testing.assert_close(s, c, rtol=rtol, atol=0.0)
    assert opt.counts[0] == state.count
    assert opt.last_alphas[0] == pytest.approx(state.last_alpha, rel=rtol, abs=0.0)
    assert len(alphas) == steps // (k + 1) and all(0.1 <= x <= 1.0 for x in alphas)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_estimate_is_the_cores_bit_for_bit(dtype):
    """Same state in, same α out as `lc.secant_alpha(*lc.secant_alpha_terms(...))` (16-bit in float32)."""
    a, b = _quadratic(1)
    params = [torch.nn.Parameter(t.to(dtype)) for t in _start()]
    opt = Lookahead(torch.optim.SGD(params, lr=0.12), k=3, alpha=0.5, alpha_mode="adaptive",
                    alpha_min=0.0)
    phi = [p.detach().clone() for p in params]
    g0 = [g.to(dtype) for g in _gradient(a, b, params)]
    for _ in range(3):
        for p, g in zip(params, _gradient(a, b, params)):
            p.grad = g.to(dtype)
        opt.step()
    theta = [p.detach().clone() for p in params]
    gk = [g.to(dtype) for g in _gradient(a, b, params)]
    for p, g in zip(params, gk):
        p.grad = g
    opt.step()
    expected = lc.secant_alpha(*lc.secant_alpha_terms(phi, theta, g0, gk), 0.0, 0.5)
    assert 0.0 < expected < 1.0
    assert opt.last_alphas == (expected,)
    # The sync used it (torch.lerp, the formula the fixed-mode kernel uses).
    for p, s, t in zip(params, phi, theta):
        assert torch.equal(p.detach(), torch.lerp(s, t, expected))


def test_first_alpha_is_propositions_optimal_alpha():
    """Full-batch gradients on an exact quadratic: the estimated α is eq. 0.3's α*."""
    a, b = _quadratic(1)
    params, opt = _make(lambda ps: torch.optim.SGD(ps, lr=0.12), 4, alpha_min=0.0)
    theta0 = torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy()
    _train(params, opt, a, b, 4)
    thetak = torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy()
    assert opt.counts == (4,) and opt.last_alphas == (None,)  # the estimate call is pending
    _train(params, opt, a, b, 1)
    expected = lc.theory.optimal_alpha(theta0, thetak, a.numpy(), b.numpy())
    assert 0.0 < expected < 1.0  # lr 0.12 overshoots along the line: not clipped
    assert opt.last_alphas[0] == pytest.approx(float(expected), rel=1e-10)
    # ... and the sync used it: φ₁ = θ₀ + α*(θ_k − θ₀).
    phi = torch.cat([s.reshape(-1) for s in opt.slow[0]]).numpy()
    assert np.allclose(phi, theta0 + float(expected) * (thetak - theta0), rtol=1e-12, atol=1e-14)


def test_noisy_problem_stays_in_range():
    a, b = _quadratic(3)
    gen = torch.Generator().manual_seed(0)
    params, opt = _make(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), 5, alpha_min=0.2)
    alphas = _train(params, opt, a, b, 60 * 6,
                    noise=lambda shape: 3.0 * torch.randn(shape, generator=gen, dtype=torch.float64))
    assert len(alphas) == 60
    assert all(0.2 <= x <= 1.0 for x in alphas)
    assert len({round(x, 12) for x in alphas}) > 10  # really estimated, not the fallback


def test_groups_estimate_separately_with_their_own_k():
    """Two groups, k = 2 and k = 3: each gets its own α, the other keeps stepping."""
    a, b = _quadratic(1)
    params = [torch.nn.Parameter(t) for t in _start()]
    inner = torch.optim.SGD([{"params": [params[0]], "lookahead_k": 2},
                             {"params": [params[1]], "lookahead_k": 3}], lr=0.12)
    opt = Lookahead(inner, alpha=0.5, alpha_mode="adaptive")
    counts, synced = [], 0
    for _ in range(12):
        before = [p.detach().clone() for p in params]
        phi = [s.clone() for group in opt.slow for s in group]
        for p, g in zip(params, _gradient(a, b, params)):
            p.grad = g
        opt.step()
        counts.append(opt.counts)
        for g, p in enumerate(params):
            if opt.counts[g] == 0:
                # The estimate call: no inner step for this group, only its own-α sync.
                assert torch.equal(p.detach(), torch.lerp(phi[g], before[g], opt.last_alphas[g]))
                assert p.grad is not None  # hidden from the inner step, then restored
                synced += 1
            else:
                assert not torch.equal(p.detach(), before[g])  # an inner step
    assert counts[:7] == [(1, 1), (2, 2), (0, 3), (1, 0), (2, 1), (0, 2), (1, 3)]
    assert synced == 4 + 3 and opt.last_alphas[0] != opt.last_alphas[1]


def _snapshot(opt, params):
    return ([p.detach().clone() for p in params], opt.counts, opt.last_alphas,
            [s.clone() for g in opt.slow for s in g])


def _same(x, y):
    assert x[1:3] == y[1:3]
    for u, v in zip(x[0] + x[3], y[0] + y[3]):
        assert torch.equal(u, v)


@pytest.mark.parametrize("pending", [False, True])
def test_checkpoint_round_trip_is_bit_exact(tmp_path, pending):
    a, b = _quadratic(2)
    k, n = 3, 2 * 4 + (3 if pending else 1)  # pending: count == k, the estimate call is due
    factory = INNERS["adam"][1]
    straight, opt = _make(factory, k)
    _train(straight, opt, a, b, 2 * n)

    params, first = _make(factory, k)
    _train(params, first, a, b, n)
    assert (first.counts[0] == k) is pending
    torch.save({"model": [p.detach() for p in params], "opt": first.state_dict()}, tmp_path / "c.pt")

    fresh, resumed = _make(factory, k)
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    with torch.no_grad():
        for p, v in zip(fresh, saved["model"]):
            p.copy_(v)
    resumed.load_state_dict(saved["opt"])
    assert resumed.counts == first.counts and resumed.last_alphas == first.last_alphas
    _train(fresh, resumed, a, b, n)
    for p, q in zip(fresh, straight):
        assert torch.equal(p, q)


def test_fixed_and_adaptive_checkpoints_do_not_mix():
    fixed_params = [torch.nn.Parameter(torch.ones(3))]
    fixed = Lookahead(torch.optim.SGD(fixed_params, lr=0.1), k=2)
    params = [torch.nn.Parameter(torch.ones(3))]
    adaptive = Lookahead(torch.optim.SGD(params, lr=0.1), k=2, alpha_mode="adaptive")
    with pytest.raises(ValueError, match="alpha_mode"):
        adaptive.load_state_dict(fixed.state_dict())
    with pytest.raises(ValueError, match="alpha_mode"):
        fixed.load_state_dict(adaptive.state_dict())
    assert "lookahead_alpha_min" not in fixed.state_dict()["param_groups"][0]  # fixed layout unchanged


def test_bad_adaptive_checkpoint_values_change_nothing():
    a, b = _quadratic(5)
    params, opt = _make(INNERS["momentum"][1], 2)
    _train(params, opt, a, b, 5)  # one cycle done, count 2 (pending)
    good = opt.state_dict()
    before = _snapshot(opt, params)
    bad_cases = []
    sd = {**good, "param_groups": [{**good["param_groups"][0], "lookahead_alpha_min": 0.9}]}
    bad_cases.append((sd, "alpha_min"))
    sd = {**good, "param_groups": [{**good["param_groups"][0], "lookahead_alpha_min": 1.5}]}
    bad_cases.append(
        (sd, r"^state_dict\['param_groups'\]\[0\]\['lookahead_alpha_min'\] must be in \[0, 1\], got 1.5$"))
    sd = {**good, "param_groups": [{**good["param_groups"][0], "lookahead_count": 3}]}
    bad_cases.append((sd, r"\[0, 2\]"))
    sd = {**good, "param_groups": [{**good["param_groups"][0], "lookahead_last_alpha": 1.5}]}
    bad_cases.append((sd, "lookahead_last_alpha"))
    state = {i: dict(e) for i, e in good["state"].items()}
    del state[1]["lookahead_start_grad"]
    bad_cases.append(({**good, "state": state}, "lookahead_start_grad"))
    state = {i: dict(e) for i, e in good["state"].items()}
    state[0]["lookahead_start_grad"] = torch.zeros(3, dtype=torch.float64)
    bad_cases.append(({**good, "state": state}, "shape"))
    for sd, match in bad_cases:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        _same(_snapshot(opt, params), before)
        assert opt.alpha_min == 0.1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [({"alpha_mode": "auto"}, ValueError, "alpha_mode must be one of"),
     ({"alpha_mode": 1}, TypeError, "alpha_mode must be one of"),
     ({"alpha_mode": "adaptive", "alpha_min": 0.6}, ValueError, r"\[alpha_min, 1\]"),
     ({"alpha_min": -0.1}, ValueError, "alpha_min must be in")],
)
def test_bad_mode_arguments(kwargs, error, match):
    w = torch.nn.Parameter(torch.ones(3))
    inner = torch.optim.SGD([w], lr=0.1)
    with pytest.raises(error, match=match):
        Lookahead(inner, k=2, alpha=0.5, **kwargs)
    assert all(not key.startswith("lookahead") for key in inner.param_groups[0])


def test_bad_group_fallback_changes_nothing():
    a, b = _quadratic(6)
    params, opt = _make(INNERS["sgd"][1], 2, alpha_min=0.3)
    _train(params, opt, a, b, 2)
    before = _snapshot(opt, params)
    opt.param_groups[0]["lookahead_alpha"] = 0.2
    with pytest.raises(ValueError, match="lookahead_alpha"):
        opt.step()
    _same(_snapshot(opt, params), before)


def test_explicit_sync_uses_the_fixed_alpha():
    a, b = _quadratic(7)
    params, opt = _make(INNERS["sgd"][1], 3)
    _train(params, opt, a, b, 2)
    theta = [p.detach().clone() for p in params]
    phi = [s.clone() for s in opt.slow[0]]
    opt.sync()
    assert opt.counts == (0,) and opt.last_alphas == (0.5,)
    for p, t, s in zip(params, theta, phi):
        assert torch.equal(p.detach(), torch.lerp(s, t, 0.5))


def test_grad_scaler_skipped_estimate_call_is_retried():
    """A non-finite gradient makes GradScaler skip the call: the estimate waits for the next."""
    a, b = _quadratic(8)
    params, opt = _make(INNERS["sgd"][1], 2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    scaler.scale(torch.ones(()))  # sets the scale up, as scaling a loss does
    _train(params, opt, a, b, 2)
    assert opt.counts == (2,)
    for p, g in zip(params, _gradient(a, b, params)):
        p.grad = torch.full_like(g, float("inf"))
    scaler.step(opt)
    scaler.update()
    assert opt.counts == (2,) and opt.last_alphas == (None,)
    for p, g in zip(params, _gradient(a, b, params)):
        p.grad = g * scaler.get_scale()
    scaler.step(opt)
    assert opt.counts == (0,) and opt.last_alphas[0] is not None


def test_rollback_replaces_the_adaptive_sync():
    params, opt = _make(INNERS["sgd"][1], 1, nonfinite="rollback")
    for p in params:
        p.grad = torch.full_like(p, float("inf"))
    opt.step()  # θ is now non-finite
    opt.step()  # the estimate call: rolled back instead of synced
    assert opt.rollbacks == 1 and opt.counts == (0,) and opt.last_alphas == (None,)
    for p, s in zip(params, _start()):
        assert torch.equal(p.detach(), s)


def test_fixed_mode_is_unchanged():
    """Default arguments: no adaptive buffers, and the paper's schedule (sync at the k-th step)."""
    w = torch.nn.Parameter(torch.zeros(3))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=3, alpha=0.5)
    assert opt.alpha_mode == "fixed" and len(opt._persistent_tensors()) == 1
    for _ in range(3):
        w.grad = -torch.ones(3)
        opt.step()
    assert opt.counts == (0,) and torch.equal(w.detach(), torch.full((3,), 1.5))
    assert "lookahead_last_alpha" not in opt.state_dict()["param_groups"][0]


def test_deepcopy_keeps_the_pending_estimate():
    a, b = _quadratic(2)
    params, opt = _make(INNERS["momentum"][1], 3)
    _train(params, opt, a, b, 3)  # count == k: the estimate call is pending
    twin_params, twin = copy.deepcopy((params, opt))
    assert twin.alpha_mode == "adaptive" and twin.counts == (3,)
    _train(params, opt, a, b, 9)
    _train(twin_params, twin, a, b, 9)
    assert opt.last_alphas == twin.last_alphas and opt.last_alphas[0] is not None
    for p, q in zip(params, twin_params):
        assert torch.equal(p.detach(), q.detach())
