"""``lookahead_torch.Lookahead`` against independent implementations.

- the plain-torch Algorithm 1 of `test_torch_support.reference_run` around the
  same ``torch.optim`` optimizer: bit for bit;
- the specification ``lookahead_core`` on torch tensors and the NumPy adapter
  ``lookahead_numpy`` (float64): to 1e-12 relative. Not bit for bit, and the
  reason is known: ``torch.lerp`` and ``torch.optim.SGD``'s
  ``add_(grad, alpha=-lr)`` evaluate ``w·x + y`` with one rounding (a fused
  multiply-add on CPUs with FMA and on CUDA), the core evaluates it as
  written with two; each sync or step differs by at most half an ulp;
- pytorch_optimizer's Lookahead (same schedule; it lerps from θ toward φ with
  weight 1 − α, the same value up to rounding): to 1e-12 relative;
- models of timm's and torch-optimizer's schedules: they differ from the paper's
  and ours, on the six-step example of docs/peers.md ('The schedule').
"""

from __future__ import annotations

import numpy as np
import pytest
from test_torch_support import (
    INNER,
    Problem,
    adapter_run,
    assert_bit_identical,
    flat_slow,
    model_rel_err,
    reference_run,
)

import lookahead_core as lc
import lookahead_numpy

torch = pytest.importorskip("torch", reason="torch not installed")

from lookahead_torch import Lookahead  # noqa: E402

STEPS = 43  # 8 syncs with k = 5, then 3 steps into the next cycle
K = 5
TOL = 1e-12

CORE = {
    "sgd": lambda: lc.sgd(lr=0.05),
    "sgd-momentum": lambda: lc.sgd(lr=0.05, momentum=0.9),
    "sgd-nesterov": lambda: lc.sgd(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda: lc.adam(lr=0.02),
    "adamw": lambda: lc.adamw(lr=0.02, weight_decay=0.1),
}


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("name", list(INNER))
def test_bit_identical_to_plain_torch_algorithm_1(name, alpha):
    problem = Problem(seed=len(name) * 100 + int(alpha * 10), steps=STEPS)
    ref_params = problem.params()
    ref_slow = reference_run(INNER[name], ref_params, problem, K, alpha)
    params = problem.params()
    opt = adapter_run(INNER[name], params, problem, K, alpha)
    assert opt.counts == (STEPS % K,)
    assert_bit_identical(params, ref_params)
    assert_bit_identical(flat_slow(opt), ref_slow)
    # the run moved far from θ₀ and φ lags θ: agreement is not trivial
    assert model_rel_err(ref_params, problem.theta0, problem.theta0) > 1e-2
    assert model_rel_err(ref_slow, ref_params, problem.theta0) > 1e-4


def _core_torch(name, problem, alpha):
    params = [torch.tensor(t) for t in problem.theta0]
    opt = lc.lookahead(CORE[name](), k=K, alpha=alpha)
    state = opt.init(params)
    for step in range(problem.steps):
        grads = problem.grads_for(params, step, torch.tensor)
        params, state = opt.step(params, grads, state)
    return params, state


def _numpy_adapter(name, problem, alpha):
    params = [np.array(t, dtype=np.float64) for t in problem.theta0]
    opt = lookahead_numpy.Lookahead(params, CORE[name](), k=K, alpha=alpha)
    for step in range(problem.steps):
        opt.step(problem.grads_for(params, step, np.asarray))
    return params, opt


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("name", ["sgd-momentum", "sgd-nesterov", "adam", "adamw"])
def test_float64_equals_core_on_torch_and_numpy_adapter(name, alpha):
    problem = Problem(seed=len(name) * 1000 + int(alpha * 10), steps=STEPS)
    params = problem.params()
    opt = adapter_run(INNER[name], params, problem, K, alpha)

    core_params, core_state = _core_torch(name, problem, alpha)
    assert core_state.count == opt.counts[0]
    assert model_rel_err(params, core_params, problem.theta0) <= TOL
    assert model_rel_err(flat_slow(opt), core_state.slow, problem.theta0) <= TOL

    np_params, np_opt = _numpy_adapter(name, problem, alpha)
    assert np_opt.count == opt.counts[0]
    assert model_rel_err(params, np_params, problem.theta0) <= TOL
    assert model_rel_err(flat_slow(opt), np_opt.slow, problem.theta0) <= TOL


def test_the_difference_to_the_core_is_rounding_in_the_fused_kernels():
    """Why the comparison with the core is 1e-12 and not bit for bit.

    ``torch.lerp`` rounds ``w·(end − start) + start`` once (fused multiply-add
    where the CPU has FMA); the core rounds the product and the sum separately.
    Either way the result is within one rounding of the operands' scale.
    """
    rng = np.random.default_rng(0)
    start = torch.tensor(rng.standard_normal(1000))
    end = torch.tensor(rng.standard_normal(1000))
    for weight in (0.3, 0.7):
        fused = start.clone().lerp_(end, weight)
        core = lc.lerp(start, end, weight)
        bound = torch.finfo(torch.float64).eps * (start.abs() + end.abs())
        assert torch.all((fused - core).abs() <= bound)


def test_detects_a_schedule_error():
    """The float64 comparison is sensitive: a Lookahead syncing one step late is far off."""
    problem = Problem(seed=7, steps=STEPS)
    params = problem.params()
    opt = adapter_run(INNER["sgd-momentum"], params, problem, K + 1, 0.5)
    core_params, core_state = _core_torch("sgd-momentum", problem, 0.5)
    assert model_rel_err(flat_slow(opt), core_state.slow, problem.theta0) > 1e-3


# --- the paper's schedule and its exact edge cases ----------------------------------------


def _unit_steps(opt, param, steps):
    """SGD with lr 1 and gradient −1: θ ← θ + 1 per executed step; returns (θ, φ) per step."""
    trace = []
    for _ in range(steps):
        param.grad = -torch.ones_like(param)
        opt.step()
        trace.append((param.item(), flat_slow(opt)[0].item()))
    return trace


def test_paper_schedule_example():
    """θ₀ = 0, +1 per step, k = 3, α = 0.5: the table of the PyTorch guide, ending at 3.0."""
    w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=3, alpha=0.5)
    assert flat_slow(opt)[0].item() == 0.0  # φ₀ = θ₀, eagerly
    assert _unit_steps(opt, w, 6) == [(1, 0), (2, 0), (1.5, 1.5), (2.5, 1.5), (3.5, 1.5), (3.0, 3.0)]


def _timm_model(k, alpha, steps):
    """timm's schedule (docs/peers.md): the slow buffer is created lazily at the first sync."""
    theta, slow = 0.0, None
    for step in range(1, steps + 1):
        theta += 1.0
        if step % k == 0:
            if slow is None:
                slow = theta  # created now: the first sync is a no-op
            slow = slow + alpha * (theta - slow)
            theta = slow
    return theta


def _torch_optimizer_model(k, alpha, steps):
    """torch-optimizer's schedule (docs/peers.md): syncs at steps 1, k+1, 2k+1, …, with the slow
    buffer created at the first of them from the fast weights of that moment."""
    theta, slow = 0.0, None
    for step in range(1, steps + 1):
        theta += 1.0
        if (step - 1) % k == 0:
            if slow is None:
                slow = theta
            slow = slow + alpha * (theta - slow)
            theta = slow
    return theta, slow


def test_timm_and_torch_optimizer_schedules_differ_from_ours():
    """On the example of docs/peers.md ours ends at 3.0 (the paper); timm's lazy slow buffer at 4.5,
    torch-optimizer's early syncs at 4.5 with slow 2.5. Why timm differs: its first
    sync has no φ₀ to move, so it skips one outer update and the fast weights
    run k steps further ahead."""
    w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=3, alpha=0.5)
    ours = _unit_steps(opt, w, 6)[-1][0]
    assert ours == 3.0
    assert _timm_model(3, 0.5, 6) == 4.5
    assert _torch_optimizer_model(3, 0.5, 6) == (4.5, 2.5)
    # On this linear example timm runs one cycle ahead: after 6 steps it is where we are after 9.
    assert _unit_steps(opt, w, 3)[-1][0] == _timm_model(3, 0.5, 6)


def test_alpha_one_is_the_inner_optimizer_alone_bit_for_bit():
    problem = Problem(seed=3, steps=20)
    alone = problem.params()
    inner = INNER["adam"](alone)
    for step in range(problem.steps):
        problem.set_grads(alone, step)
        inner.step()
    params = problem.params()
    adapter_run(INNER["adam"], params, problem, 2, 1.0)
    assert_bit_identical(params, alone)


def test_alpha_zero_freezes_slow_and_resets_fast_every_k_steps():
    problem = Problem(seed=4, steps=12)
    params = problem.params()
    theta0 = [p.detach().clone() for p in params]
    opt = Lookahead(INNER["sgd-momentum"](params), k=3, alpha=0.0)
    for step in range(problem.steps):
        problem.set_grads(params, step)
        opt.step()
        assert_bit_identical(flat_slow(opt), theta0)
        if (step + 1) % 3 == 0:
            assert_bit_identical(params, theta0)
        else:
            assert not all(torch.equal(p, t) for p, t in zip(params, theta0))


def test_k_one_damps_every_step():
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float32))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=1, alpha=0.25)
    for n in range(1, 6):
        w.grad = -torch.ones(2)
        opt.step()
        assert w.tolist() == [0.25 * n] * 2
        assert flat_slow(opt)[0].tolist() == [0.25 * n] * 2


def test_gradient_none_at_a_sync_is_still_synced():
    """One rule for every parameter, with or without a gradient (docs/design.md)."""
    a = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = Lookahead(torch.optim.SGD([a, b], lr=1.0), k=2, alpha=0.5)
    a.grad = -torch.ones(2, dtype=torch.float64)
    b.grad = -torch.ones(2, dtype=torch.float64)
    opt.step()  # a = 1, b = 2
    b.grad = None  # b is not stepped by SGD, but is still synced with its φ = 1
    a.grad = -torch.ones(2, dtype=torch.float64)
    opt.step()  # a = 2 → φ_a = 1; b = 2 → φ_b = 1.5
    assert a.tolist() == [1.0, 1.0]
    assert b.tolist() == [1.5, 1.5]


# --- side by side with pytorch_optimizer ---------------------------------------------------


@pytest.mark.parametrize("alpha", [0.5, 0.8])
@pytest.mark.parametrize(
    "name, pullback",
    [("sgd-momentum", "none"), ("sgd-momentum", "reset"), ("sgd-momentum", "pullback"), ("adam", "none")],
)
def test_side_by_side_with_pytorch_optimizer(name, alpha, pullback):
    """pytorch_optimizer's Lookahead follows the paper's schedule: identical trajectories
    to 1e-12 in float64 (its lerp goes from θ toward φ with weight 1 − α). Its
    pullback and reset act on ``momentum_buffer`` only, so they are compared on SGD."""
    po = pytest.importorskip(
        "pytorch_optimizer", reason="pytorch_optimizer not installed (pip install pytorch-optimizer)"
    )
    problem = Problem(seed=int(alpha * 100) + len(name), steps=STEPS)
    theirs_params = problem.params()
    theirs = po.Lookahead(INNER[name](theirs_params), k=K, alpha=alpha, pullback_momentum=pullback)
    for step in range(problem.steps):
        problem.set_grads(theirs_params, step)
        theirs.step()
    params = problem.params()
    opt = adapter_run(INNER[name], params, problem, K, alpha, pullback=pullback)
    assert model_rel_err(params, theirs_params, problem.theta0) <= TOL
    theirs_slow = [theirs.state[p]["slow_params"] for p in theirs_params]
    assert model_rel_err(flat_slow(opt), theirs_slow, problem.theta0) <= TOL
    assert model_rel_err(params, problem.theta0, problem.theta0) > 1e-2
    if pullback != "none":
        ours_m = [opt.optimizer.state[p]["momentum_buffer"] for p in params]
        theirs_m = [theirs.optimizer.state[p]["momentum_buffer"] for p in theirs_params]
        assert model_rel_err(ours_m, theirs_m, [np.ones(1)]) <= TOL


def test_pytorch_optimizer_rejects_alpha_one_and_skips_params_without_gradient():
    """Two documented differences: its α range is [0, 1) and it syncs only parameters
    that have a gradient; ours accepts α = 1 and syncs every parameter."""
    po = pytest.importorskip(
        "pytorch_optimizer", reason="pytorch_optimizer not installed (pip install pytorch-optimizer)"
    )
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError):
        po.Lookahead(torch.optim.SGD([w], lr=1.0), k=2, alpha=1.0)
    Lookahead(torch.optim.SGD([w], lr=1.0), k=2, alpha=1.0)

    def run(make):
        a = torch.nn.Parameter(torch.zeros(2))
        b = torch.nn.Parameter(torch.ones(2))
        opt = make(torch.optim.SGD([a, b], lr=1.0))
        a.grad, b.grad = -torch.ones(2), -torch.ones(2)
        opt.step()
        b.grad = None
        a.grad = -torch.ones(2)
        opt.step()
        return b.tolist()

    assert run(lambda inner: Lookahead(inner, k=2, alpha=0.5)) == [1.5, 1.5]
    assert run(lambda inner: po.Lookahead(inner, k=2, alpha=0.5)) == [2.0, 2.0]


def test_pytorch_optimizer_cannot_be_deep_copied_ours_can():
    """pytorch_optimizer 4.1.0's custom ``__getstate__`` drops ``defaults``, which
    ``Optimizer.__setstate__`` needs: ``copy.deepcopy`` raises. Ours copies (the copy
    is tested to train identically in test_torch_api)."""
    import copy

    po = pytest.importorskip(
        "pytorch_optimizer", reason="pytorch_optimizer not installed (pip install pytorch-optimizer)"
    )
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(AttributeError, match="defaults"):
        copy.deepcopy(po.Lookahead(torch.optim.SGD([w], lr=0.1), k=2))
    clone = copy.deepcopy(Lookahead(torch.optim.SGD([w], lr=0.1), k=2))
    assert clone.k == 2 and clone.defaults["lr"] == 0.1
