"""``lookahead_torch.Lookahead(inner, k, outer=...)``: the sync as a torch optimizer's step.

Two independent expectations:

- `outer_oracle` (plain Python lists of floats, ``torch.optim``'s documented
  formulas): the trajectory in float64 agrees to 1e-12 relative, also across
  a checkpoint;
- a plain-torch loop written here (`reference_outer_run`): the inner
  optimizer for k steps, then ``φ.grad = φ − θ``, the outer optimizer's
  ``step()``, ``θ ← φ``, one tensor at a time, with its own ``torch.optim``
  instances. Same operations in the same order: bit for bit.
"""

from __future__ import annotations

import copy
import functools
import io
import pickle

import pytest
from outer_oracle import PlainAdam, PlainSGD, outer_trajectory, quadratic_gradients, relative_error
from test_torch_support import Problem, assert_bit_identical, assert_unchanged, bits, flat_slow, snapshot

torch = pytest.importorskip("torch", reason="torch not installed")

from lookahead_torch import Lookahead  # noqa: E402

SHAPES = [(3,), (2, 2)]  # 7 elements: the oracle's flat vector, cut into two tensors
N = 7
ORACLE_TOLERANCE = 1e-12


@pytest.fixture(autouse=True)
def _one_thread():
    """Exact comparisons: one thread, so no reduction order depends on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# name -> (torch factory over param groups, oracle instance)
OUTERS = {
    "sgd": (functools.partial(torch.optim.SGD, lr=0.7), lambda: PlainSGD(lr=0.7)),
    "heavy-ball": (functools.partial(torch.optim.SGD, lr=0.7, momentum=0.9),
                   lambda: PlainSGD(lr=0.7, momentum=0.9)),
    "nesterov": (functools.partial(torch.optim.SGD, lr=0.7, momentum=0.9, nesterov=True),
                 lambda: PlainSGD(lr=0.7, momentum=0.9, nesterov=True)),
    "adam": (functools.partial(torch.optim.Adam, lr=0.05), lambda: PlainAdam(lr=0.05)),
}
INNERS = {
    "sgd": (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), lambda: PlainSGD(lr=0.05, momentum=0.9)),
    "adam": (lambda p: torch.optim.Adam(p, lr=0.02), lambda: PlainAdam(lr=0.02)),
}


def _split(values: list[float]) -> list[torch.Tensor]:
    out, start = [], 0
    for shape in SHAPES:
        n = 1
        for d in shape:
            n *= d
        out.append(torch.tensor(values[start:start + n], dtype=torch.float64).reshape(shape))
        start += n
    return out


def _flat(tensors) -> list[float]:
    return [x for t in tensors for x in t.detach().reshape(-1).tolist()]


def _set_oracle_grads(params, gradient, step: int) -> None:
    for p, g in zip(params, _split(gradient(step, _flat(params)))):
        p.grad = g


def _model(theta0: list[float]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(t) for t in _split(theta0)]


def _theta0(seed: int) -> list[float]:
    import random

    rng = random.Random(1000 + seed)
    return [rng.uniform(-2.0, 2.0) for _ in range(N)]


def _build(inner: str, outer: str, params, k: int) -> Lookahead:
    return Lookahead(INNERS[inner][0](params), k=k, outer=OUTERS[outer][0])


def _save(opt, params) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": [p.detach() for p in params], "optimizer": opt.state_dict()}, buffer)
    return buffer.getvalue()


def _load(raw: bytes, opt, params) -> None:
    checkpoint = torch.load(io.BytesIO(raw), weights_only=True)
    with torch.no_grad():
        for p, value in zip(params, checkpoint["model"]):
            p.copy_(value)
    opt.load_state_dict(checkpoint["optimizer"])


# --- the oracle -------------------------------------------------------------------------------


def _oracle_errors(inner: str, outer: str, k: int, save_at: int | None = None) -> float:
    """The largest relative error of θ and φ against the oracle over the run (4 syncs and 2 steps)."""
    steps = 4 * k + 2
    seed = 7 * k + len(inner) + len(outer)
    theta0 = _theta0(seed)
    expected = outer_trajectory(theta0, quadratic_gradients(N, seed), INNERS[inner][1](),
                                OUTERS[outer][1](), k, steps)
    gradient = quadratic_gradients(N, seed)
    params = _model(theta0)
    opt = _build(inner, outer, params, k)
    worst = 0.0
    for step in range(steps):
        if step == save_at:
            raw = _save(opt, params)
            params = _model(_theta0(seed + 1))  # other values: the checkpoint must set them
            opt = _build(inner, outer, params, k)
            _load(raw, opt, params)
        _set_oracle_grads(params, gradient, step)
        opt.step()
        theta, phi = expected[step]
        worst = max(worst, relative_error(_flat(params), theta), relative_error(_flat(flat_slow(opt)), phi))
    return worst


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("outer", list(OUTERS))
@pytest.mark.parametrize("inner", list(INNERS))
def test_trajectory_agrees_with_the_plain_python_oracle(inner, outer, k):
    assert _oracle_errors(inner, outer, k) <= ORACLE_TOLERANCE


@pytest.mark.parametrize("where", ["on a sync", "mid-cycle"])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("outer", list(OUTERS))
@pytest.mark.parametrize("inner", list(INNERS))
def test_a_checkpoint_mid_run_keeps_the_oracle_s_trajectory(inner, outer, k, where):
    """Saved after 2k steps (on a sync) or 2k + 1 (k = 1: every step is a sync), loaded into a
    fresh model and optimizer: the run goes on as the oracle's, outer state and all."""
    save_at = 2 * k + (1 if where == "mid-cycle" else 0)
    assert _oracle_errors(inner, outer, k, save_at=save_at) <= ORACLE_TOLERANCE


def test_the_oracle_comparison_can_fail():
    """A wrong sign of the pseudo-gradient is far outside the tolerance (so the tests above bind)."""
    seed, k, steps = 3, 3, 12
    theta0 = _theta0(seed)
    expected = outer_trajectory(theta0, quadratic_gradients(N, seed), INNERS["sgd"][1](),
                                PlainSGD(lr=0.7, momentum=0.9), k, steps)
    gradient = quadratic_gradients(N, seed)
    params = _model(theta0)
    opt = Lookahead(INNERS["sgd"][0](params), k=k,
                    outer=functools.partial(torch.optim.SGD, lr=0.7, momentum=0.9, maximize=True))
    for step in range(steps):
        _set_oracle_grads(params, gradient, step)
        opt.step()
    assert relative_error(_flat(params), expected[-1][0]) > 1e-2


# --- outer SGD(lr = α) is Algorithm 1 up to rounding ------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [0.5, 0.8, 0.25])
def test_outer_sgd_with_lr_alpha_is_algorithm_1_up_to_rounding(dtype, alpha):
    """φ − αΔ = φ + α(θ − φ): the same sync, computed one-sided instead of by the lerp.

    Each sync rounds at most three times either way (≤ 2 eps M apart, Tolerances on
    the Design page), and the gradients depend on the weights, so a difference
    propagates: the bound allows 8 eps M per step and per sync, M the largest weight.
    """
    k, steps = 3, 15
    problem = Problem(seed=11, steps=steps, shapes=[(4, 3), (5,)], dtype=dtype)
    params_alpha, params_outer = problem.params(), problem.params()
    plain = Lookahead(torch.optim.SGD(params_alpha, lr=0.05, momentum=0.9), k=k, alpha=alpha)
    outer = Lookahead(torch.optim.SGD(params_outer, lr=0.05, momentum=0.9), k=k,
                      outer=functools.partial(torch.optim.SGD, lr=alpha))
    eps = torch.finfo(dtype).eps
    for step in range(steps):
        problem.set_grads(params_alpha, step)
        problem.set_grads(params_outer, step)
        plain.step()
        outer.step()
        scale = max(float(t.detach().abs().max()) for t in [*params_alpha, *flat_slow(plain)])
        bound = 8 * (step + 1 + (step + 1) // k) * eps * scale
        for a, b in zip([*params_outer, *flat_slow(outer)], [*params_alpha, *flat_slow(plain)]):
            assert float((a.detach() - b.detach()).abs().max()) <= bound


# --- the plain-torch reference: any torch optimizer, bit for bit ------------------------------


def reference_outer_run(make_inner, make_outer, params, problem, k: int, steps: int,
                        slow_dtype=None, per_group_k=None):
    """Lookahead with an outer optimizer in plain torch (test-only). Updates ``params``.

    Returns (slow weights, the outer optimizer).
    """
    inner = make_inner(params)
    slow = [p.detach().to(slow_dtype or p.dtype, copy=True) for p in params]
    groups = [list(range(len(params)))] if per_group_k is None else per_group_k[0]
    ks = [k] if per_group_k is None else per_group_k[1]
    outer = make_outer([{"params": [slow[i] for i in idx]} for idx in groups])
    counts = [0] * len(groups)
    for step in range(steps):
        problem.set_grads(params, step)
        inner.step()
        due = []
        for g, idx in enumerate(groups):
            counts[g] += 1
            if counts[g] == ks[g]:
                counts[g] = 0
                due.extend(idx)
        if due:
            with torch.no_grad():
                for i in due:
                    slow[i].grad = slow[i] - params[i].detach().to(slow[i].dtype)  # Δ = φ − θ
                outer.step()
                for i in due:
                    slow[i].grad = None
                    params[i].copy_(slow[i])  # θ ← φ
    return slow, outer


SGD = torch.optim.SGD
ANY_OUTER = {
    "sgd-foreach": functools.partial(SGD, lr=0.7, foreach=True),
    "sgd-for-loop": functools.partial(SGD, lr=0.7, foreach=False),
    "heavy-ball-foreach": functools.partial(SGD, lr=0.7, momentum=0.9, foreach=True),
    "heavy-ball-for-loop": functools.partial(SGD, lr=0.7, momentum=0.9, dampening=0.1, foreach=False),
    "nesterov-foreach": functools.partial(SGD, lr=0.7, momentum=0.9, nesterov=True, foreach=True),
    "nesterov-for-loop": functools.partial(SGD, lr=0.7, momentum=0.5, nesterov=True, foreach=False),
    "nesterov-fused": functools.partial(SGD, lr=0.7, momentum=0.9, nesterov=True, fused=True),
    "adam-foreach": functools.partial(torch.optim.Adam, lr=0.05, foreach=True),
    "adam-for-loop": functools.partial(torch.optim.Adam, lr=0.05, foreach=False, amsgrad=True),
    "adam-fused": functools.partial(torch.optim.Adam, lr=0.05, fused=True),
    "adamw": functools.partial(torch.optim.AdamW, lr=0.05, weight_decay=0.1),
    "adamw-fused": functools.partial(torch.optim.AdamW, lr=0.05, weight_decay=0.1, fused=True),
    "rmsprop": functools.partial(torch.optim.RMSprop, lr=0.01),
}


@pytest.mark.parametrize("outer", list(ANY_OUTER))
def test_any_torch_optimizer_is_the_outer_step_bit_for_bit(outer):
    k, steps = 3, 14
    problem = Problem(seed=21, steps=steps)
    expected_params = problem.params()
    make_inner = lambda p: torch.optim.Adam(p, lr=0.02)  # noqa: E731
    slow, _ = reference_outer_run(make_inner, ANY_OUTER[outer], expected_params, problem, k, steps)
    params = problem.params()
    opt = Lookahead(make_inner(params), k=k, outer=ANY_OUTER[outer])
    for step in range(steps):
        problem.set_grads(params, step)
        opt.step()
    assert_bit_identical(params, expected_params)
    assert_bit_identical(flat_slow(opt), slow)
    assert all(s.grad is None for s in flat_slow(opt))  # no pseudo-gradient left behind


def test_groups_with_their_own_k_sync_at_their_own_steps_with_their_own_outer_group():
    """Group 0 (k = 2) and group 1 (k = 3, outer lr 0.3): at a sync of one group the other's
    slow weights have no gradient, and the outer optimizer leaves them and their state alone."""
    steps = 13
    problem = Problem(seed=22, steps=steps)
    make_outer = functools.partial(SGD, lr=0.7, momentum=0.9, nesterov=True)

    def make_outer_reference(groups):
        built = make_outer(groups)
        built.param_groups[1]["lr"] = 0.3
        return built

    expected_params = problem.params()
    slow, _ = reference_outer_run(lambda p: SGD(p, lr=0.05, momentum=0.9), make_outer_reference,
                                  expected_params, problem, 0, steps, per_group_k=([[0, 1], [2, 3]], [2, 3]))
    params = problem.params()
    opt = Lookahead(SGD([{"params": params[:2]}, {"params": params[2:], "lookahead_k": 3}],
                        lr=0.05, momentum=0.9), k=2, outer=make_outer)
    opt.outer_optimizer.param_groups[1]["lr"] = 0.3
    for step in range(steps):
        problem.set_grads(params, step)
        opt.step()
    assert_bit_identical(params, expected_params)
    assert_bit_identical(flat_slow(opt), slow)


def test_a_scheduler_drives_the_outer_learning_rate():
    """StepLR on opt.outer_optimizer, stepped after each sync: the oracle with the same lr per sync."""
    seed, k, steps = 5, 3, 15
    theta0 = _theta0(seed)
    gradient = quadratic_gradients(N, seed)
    inner_oracle, outer_oracle = PlainSGD(lr=0.05, momentum=0.9), PlainSGD(lr=0.7, momentum=0.9, nesterov=True)
    phi, theta = list(theta0), list(theta0)
    params = _model(theta0)
    opt = _build("sgd", "nesterov", params, k)
    scheduler = torch.optim.lr_scheduler.StepLR(opt.outer_optimizer, step_size=1, gamma=0.5)
    for step in range(steps):
        theta = inner_oracle.step(theta, gradient(step, theta))
        _set_oracle_grads(params, gradient, step)
        opt.step()
        if (step + 1) % k == 0:
            phi = outer_oracle.step(phi, [p - t for p, t in zip(phi, theta)])
            theta = list(phi)
            outer_oracle.lr *= 0.5
            scheduler.step()
        assert relative_error(_flat(params), theta) <= ORACLE_TOLERANCE
        assert relative_error(_flat(flat_slow(opt)), phi) <= ORACLE_TOLERANCE
    assert opt.outer_optimizer.param_groups[0]["lr"] == 0.7 * 0.5 ** (steps // k)
    assert opt.param_groups[0]["lr"] == 0.05  # the inner learning rate is the inner's own


# --- construction: what is accepted and what is refused -----------------------------------------


def _params():
    return [torch.nn.Parameter(torch.randn(3, dtype=torch.float64)), torch.nn.Parameter(torch.randn(2, 2))]


def test_the_outer_optimizer_is_built_over_the_slow_weights_one_group_per_inner_group():
    params = _params()
    inner = SGD([{"params": params[:1]}, {"params": params[1:], "lookahead_k": 2}], lr=0.1)
    opt = Lookahead(inner, k=3, outer=functools.partial(SGD, lr=0.7, momentum=0.9))
    assert isinstance(opt.outer_optimizer, SGD)
    assert [[s for s in g["params"]] for g in opt.outer_optimizer.param_groups] == [list(g) for g in opt.slow]
    assert all(a is b for g, s in zip(opt.outer_optimizer.param_groups, opt.slow) for a, b in zip(g["params"], s))
    assert opt.alpha is None
    assert all("lookahead_alpha" not in g for g in inner.param_groups)
    with pytest.raises(AttributeError):
        opt.outer_optimizer = SGD(params, lr=0.1)
    # a group added later gets an outer group with the outer defaults
    extra = torch.nn.Parameter(torch.randn(4))
    opt.add_param_group({"params": [extra]})
    assert len(opt.outer_optimizer.param_groups) == 3
    assert opt.outer_optimizer.param_groups[2]["params"][0] is opt.slow[2][0]
    assert opt.outer_optimizer.param_groups[2]["momentum"] == 0.9
    assert Lookahead(SGD(_params(), lr=0.1)).outer_optimizer is None


REFUSED = {
    "alpha and outer": (dict(alpha=0.5, outer=functools.partial(SGD, lr=0.7)), TypeError,
                        "alpha and outer cannot both be given"),
    "adaptive and outer": (dict(alpha_mode="adaptive", outer=functools.partial(SGD, lr=0.7)),
                           ValueError, "alpha_mode='adaptive'"),
    "pullback and outer": (dict(pullback="pullback", outer=functools.partial(SGD, lr=0.7)),
                           ValueError, "pullback='pullback' interpolates"),
    "an optimizer instance": (dict(outer=SGD([torch.zeros(1, requires_grad=True)], lr=0.1)),
                              TypeError, "outer must be a callable"),
    "not callable": (dict(outer=0.7), TypeError, "outer must be None or a callable"),
    "returns no optimizer": (dict(outer=lambda groups: groups), TypeError,
                             "outer must return a torch.optim.Optimizer"),
    "over other parameters": (dict(outer=lambda groups: SGD([torch.zeros(2, requires_grad=True)], lr=0.1)),
                              ValueError, "outer must build its optimizer over exactly"),
    "over one group only": (dict(outer=lambda groups: SGD(groups[:1], lr=0.1)), ValueError,
                            "over exactly the param groups"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_constructions_name_the_argument_and_change_nothing(case):
    options, error, message = REFUSED[case]
    params = _params()
    inner = SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1, momentum=0.9)
    before = copy.deepcopy(inner.param_groups)
    with pytest.raises(error, match=message):
        Lookahead(inner, k=3, **options)
    assert [{k: v for k, v in g.items() if k != "params"} for g in inner.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in before]


def test_a_group_alpha_is_refused_with_outer_at_construction_addition_and_step():
    params = _params()
    with pytest.raises(TypeError, match=r"\['lookahead_alpha'\] cannot be set with outer"):
        Lookahead(SGD([{"params": params, "lookahead_alpha": 0.5}], lr=0.1), outer=functools.partial(SGD, lr=0.7))
    opt = Lookahead(SGD(params, lr=0.1), k=2, outer=functools.partial(SGD, lr=0.7))
    with pytest.raises(TypeError, match="cannot be set with outer"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lookahead_alpha": 0.5})
    assert len(opt.param_groups) == 1 and len(opt.outer_optimizer.param_groups) == 1
    opt.param_groups[0]["lookahead_alpha"] = 0.5
    for p in params:
        p.grad = torch.ones_like(p)
    before = snapshot(opt)
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['lookahead_alpha'\] cannot be set"):
        opt.step()
    assert_unchanged(before, opt)


# --- combinations ------------------------------------------------------------------------------


def test_slow_weights_swap_with_outer():
    problem = Problem(seed=31, steps=5)
    params = problem.params()
    opt = Lookahead(SGD(params, lr=0.05), k=3, outer=OUTERS["nesterov"][0])
    for step in range(5):
        problem.set_grads(params, step)
        opt.step()
    fast = [p.detach().clone() for p in params]
    slow = [s.clone() for s in flat_slow(opt)]
    with opt.slow_weights():
        assert_bit_identical(params, slow)
        sd = opt.state_dict()
        assert_bit_identical([sd["state"][i]["lookahead_slow"] for i in range(len(params))], slow)
        assert all("lookahead_outer_momentum_buffer" in sd["state"][i] for i in range(len(params)))
    assert_bit_identical(params, fast)


@pytest.mark.parametrize("outer", ["nesterov", "adam"])
def test_a_rollback_skips_the_outer_step_and_leaves_its_state_alone(outer):
    problem = Problem(seed=32, steps=9)
    params = problem.params()
    opt = Lookahead(SGD(params, lr=0.05), k=3, outer=OUTERS[outer][0], nonfinite="rollback")
    for step in range(6):  # two syncs: the outer state exists
        problem.set_grads(params, step)
        opt.step()
    outer_before = snapshot(opt)["outer_state"]
    slow_before = [s.clone() for s in flat_slow(opt)]
    for step in range(6, 9):
        problem.set_grads(params, step)
        if step == 7:
            params[1].grad[0] = float("nan")
        opt.step()
    assert opt.rollbacks == 1
    assert snapshot(opt)["outer_state"].keys() == outer_before.keys()
    for i, entry in outer_before.items():
        for key, value in entry.items():
            assert bits(opt.outer_optimizer.state[flat_slow(opt)[i]][key]) == bits(value)
    assert_bit_identical(flat_slow(opt), slow_before)
    assert_bit_identical(params, slow_before)


def test_a_non_finite_outer_state_rolls_back_and_restarts():
    """Adam's second moment overflowed at the last sync (inf): φ and θ are still finite,
    but every later outer step would make φ NaN. The next sync rolls back and drops the
    outer state, which the next outer step builds again: the run goes on finite, exactly
    like a fresh outer Adam started from that φ."""
    problem = Problem(seed=34, steps=12)
    params = problem.params()
    opt = Lookahead(SGD(params, lr=0.05), k=3, outer=OUTERS["adam"][0], nonfinite="rollback")
    for step in range(3):  # one sync: the outer state exists
        problem.set_grads(params, step)
        opt.step()
    first = flat_slow(opt)[0]
    opt.outer_optimizer.state[first]["exp_avg_sq"][0] = float("inf")
    slow_before = [s.clone() for s in flat_slow(opt)]
    for step in range(3, 6):
        problem.set_grads(params, step)
        opt.step()
    assert opt.rollbacks == 1
    assert_bit_identical(flat_slow(opt), slow_before)  # no outer step with the poisoned state
    assert all(s not in opt.outer_optimizer.state for s in flat_slow(opt))  # restarted
    # From here on, a fresh outer Adam from φ: compare with one built now over clones.
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ref = Lookahead(SGD(ref_params, lr=0.05), k=3, outer=OUTERS["adam"][0])
    for step in range(6, 12):
        problem.set_grads(params, step)
        problem.set_grads(ref_params, step)
        opt.step()
        ref.step()
    assert all(torch.isfinite(p).all() for p in params)
    assert_bit_identical(params, [p.detach() for p in ref_params])
    assert opt.rollbacks == 1


@pytest.mark.parametrize("options", [dict(pullback="reset"), dict(reset_inner_state=True)])
def test_the_inner_state_policies_that_need_no_alpha_work_with_outer(options):
    """reset zeroes the inner momentum at each sync, reset_inner_state drops it: the same as a
    plain-torch loop doing that after each outer step."""
    k, steps = 3, 10
    problem = Problem(seed=33, steps=steps)
    params, expected = problem.params(), problem.params()
    opt = Lookahead(SGD(params, lr=0.05, momentum=0.9), k=k, outer=OUTERS["heavy-ball"][0], **options)
    inner = SGD(expected, lr=0.05, momentum=0.9)
    slow = [p.detach().clone() for p in expected]
    outer = OUTERS["heavy-ball"][0]([{"params": slow}])
    for step in range(steps):
        problem.set_grads(params, step)
        problem.set_grads(expected, step)
        opt.step()
        inner.step()
        if (step + 1) % k == 0:
            with torch.no_grad():
                for s, p in zip(slow, expected):
                    s.grad = s - p
                outer.step()
                for s, p in zip(slow, expected):
                    s.grad = None
                    p.copy_(s)
                    if options.get("pullback") == "reset":
                        inner.state[p]["momentum_buffer"].zero_()
                    else:
                        inner.state.pop(p)
    assert_bit_identical(params, expected)
    assert_bit_identical(flat_slow(opt), slow)


def test_slow_dtype_keeps_the_outer_state_in_the_slow_dtype():
    """bfloat16 parameters, float32 slow copy: Δ and the outer state are float32; bit for bit
    the plain-torch loop with a float32 slow copy (θ upcast exactly, rounded once into θ)."""
    k, steps = 2, 9
    problem = Problem(seed=34, steps=steps, dtype=torch.bfloat16)
    params, expected = problem.params(), problem.params()
    make_outer = OUTERS["nesterov"][0]
    opt = Lookahead(SGD(params, lr=0.05), k=k, outer=make_outer, slow_dtype=torch.float32)
    for step in range(steps):
        problem.set_grads(params, step)
        opt.step()
    slow, _ = reference_outer_run(lambda p: SGD(p, lr=0.05), make_outer, expected, problem, k, steps,
                                  slow_dtype=torch.float32)
    assert_bit_identical(params, expected)
    assert_bit_identical(flat_slow(opt), slow)
    assert all(entry["momentum_buffer"].dtype == torch.float32 for entry in opt.outer_optimizer.state.values())
    # memory: the slow copy and the outer momentum, both float32; no Δ buffer is kept
    assert sum(t.numel() * t.element_size() for t in opt._persistent_tensors()) == \
        2 * sum(p.numel() * 4 for p in params)


def test_the_sync_allocates_no_pseudo_gradient_for_same_dtype_pairs():
    """Δ lives in the parameters' memory during the outer step, and the parameters hold φ after."""
    params = [torch.nn.Parameter(torch.randn(6, dtype=torch.float64))]
    seen = []

    class Spy(SGD):
        def step(self, closure=None):
            seen.extend((s.grad.data_ptr(), s.grad.clone()) for g in self.param_groups for s in g["params"])
            return super().step(closure)

    opt = Lookahead(SGD(params, lr=0.1), k=1, outer=functools.partial(Spy, lr=0.5))
    theta_before, phi = params[0].detach().clone(), flat_slow(opt)[0].clone()
    params[0].grad = torch.ones(6, dtype=torch.float64)
    opt.step()
    theta = theta_before - 0.1
    (pointer, delta), = seen
    assert pointer == params[0].data_ptr()
    assert bits(delta) == bits(phi - theta)
    assert bits(params[0].detach()) == bits(flat_slow(opt)[0])
    assert flat_slow(opt)[0].grad is None


def test_an_outer_step_that_raises_abandons_the_sync_from_the_slow_weights():
    params = [torch.nn.Parameter(torch.randn(4, dtype=torch.float64))]

    class Broken(SGD):
        def step(self, closure=None):
            raise RuntimeError("the outer step failed")

    opt = Lookahead(SGD(params, lr=0.1), k=2, outer=functools.partial(Broken, lr=0.5))
    phi = flat_slow(opt)[0].clone()
    for step in range(2):
        params[0].grad = torch.ones(4, dtype=torch.float64)
        if step == 1:
            with pytest.raises(RuntimeError, match="the outer step failed"):
                opt.step()
        else:
            opt.step()
    assert bits(params[0].detach()) == bits(phi)
    assert opt.counts == (0,)
    assert flat_slow(opt)[0].grad is None


def test_pickle_and_deepcopy_keep_the_outer_optimizer_over_the_copied_slow_weights():
    problem = Problem(seed=35, steps=8)
    params = problem.params()
    opt = Lookahead(SGD(params, lr=0.05), k=3, outer=OUTERS["adam"][0])
    for step in range(4):
        problem.set_grads(params, step)
        opt.step()
    for copied in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        slow = flat_slow(copied)
        assert all(a is b for a, b in zip(copied.outer_optimizer.param_groups[0]["params"], slow))
        assert set(copied.outer_optimizer.state) == set(slow)
        copied_params = copied.param_groups[0]["params"]
        for step in range(4, 8):
            problem.set_grads(copied_params, step)
            copied.step()
    for step in range(4, 8):
        problem.set_grads(params, step)
        opt.step()
    assert_bit_identical(copied_params, params)
    assert_bit_identical(flat_slow(copied), flat_slow(opt))


# --- checkpoints of the outer optimizer: refused cleanly, or loaded whole ------------------------


def _trained_outer(outer="nesterov", sync_option=None, steps=7):
    problem = Problem(seed=36, steps=steps)
    params = problem.params()
    options = {"outer": OUTERS[outer][0]} if sync_option is None else sync_option
    opt = Lookahead(torch.optim.Adam([{"params": params[:2]}, {"params": params[2:], "lookahead_k": 3}],
                                     lr=0.02), k=2, **options)
    for step in range(steps):
        problem.set_grads(params, step)
        opt.step()
    return opt


def _edited(sd, path, value):
    sd = copy.deepcopy(sd)
    node = sd
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    return sd


BAD_OUTER_CHECKPOINTS = {
    "an outer checkpoint into a Lookahead without outer": (
        "nesterov", {"alpha": 0.5}, lambda sd: sd, ValueError, "has outer=None"),
    "a checkpoint without outer into a Lookahead with outer": (
        "nesterov", None, "alpha", ValueError, "without an outer optimizer"),
    "another outer class": ("nesterov", {"outer": OUTERS["adam"][0]}, lambda sd: sd, ValueError,
                            "another outer optimizer, this one is torch.optim.adam.Adam"),
    "outer momentum of the wrong shape": (
        "nesterov", None, lambda sd: _edited(sd, ("state", 0, "lookahead_outer_momentum_buffer"),
                                            lambda t: torch.zeros(7, dtype=t.dtype)),
        ValueError, r"\['lookahead_outer_momentum_buffer'\] must have the parameter's shape"),
    "outer momentum missing": (
        "nesterov", None, lambda sd: _edited(sd, ("state", 1, "lookahead_outer_momentum_buffer"), None),
        ValueError, "has no outer state"),
    "a negative outer second moment": (
        "adam", None, lambda sd: _edited(sd, ("state", 2, "lookahead_outer_exp_avg_sq"), lambda t: t - 1.0),
        ValueError, r"\['lookahead_outer_exp_avg_sq'\] holds negative values"),
    "an outer step of the wrong type": (
        "adam", None, lambda sd: _edited(sd, ("state", 0, "lookahead_outer_step"), "x"),
        TypeError, r"\['lookahead_outer_step'\] must be a number"),
    "an outer group without its momentum": (
        "nesterov", None, lambda sd: _edited(sd, ("param_groups", 1, "lookahead_outer_momentum"), None),
        ValueError, r"missing \['momentum'\]"),
    "an outer lr of the wrong kind": (
        "nesterov", None, lambda sd: _edited(sd, ("param_groups", 0, "lookahead_outer_lr"), "fast"),
        (TypeError, ValueError), "lr"),
    "a placeholder flag that is not a bool": (
        "nesterov", None, lambda sd: _edited(sd, ("param_groups", 0, "lookahead_outer_placeholder"), 1),
        TypeError, "must be a bool"),
    "a group alpha in an outer checkpoint": (
        "nesterov", None, lambda sd: _edited(sd, ("param_groups", 0, "lookahead_alpha"), 0.5),
        ValueError, "has 'lookahead_alpha'"),
}


@pytest.mark.parametrize("case", list(BAD_OUTER_CHECKPOINTS))
def test_a_bad_outer_checkpoint_is_refused_and_changes_nothing(case):
    outer, target_options, make, error, message = BAD_OUTER_CHECKPOINTS[case]
    if make == "alpha":
        bad = _trained_outer(sync_option={"alpha": 0.5}).state_dict()
    else:
        bad = make(_trained_outer(outer).state_dict())
    opt = _trained_outer(outer, target_options, steps=5)  # another position, so a partial load shows
    before = snapshot(opt)
    with pytest.raises(error, match=message):
        opt.load_state_dict(bad)
    assert_unchanged(before, opt)
    good = _trained_outer(outer, target_options)
    opt.load_state_dict(good.state_dict())  # and a good one still loads (the model is not in it)
    assert_unchanged({key: value for key, value in snapshot(good).items() if key != "params"}, opt)


def test_a_plain_inner_checkpoint_restarts_the_outer_state_and_keeps_its_hyperparameters():
    problem = Problem(seed=37, steps=6)
    params = problem.params()
    plain = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    for step in range(6):
        problem.set_grads(params, step)
        plain.step()
    opt = _trained_outer()
    opt2_params = problem.params()
    opt2 = Lookahead(torch.optim.SGD(opt2_params, lr=0.05, momentum=0.9), k=3, outer=OUTERS["nesterov"][0])
    for step in range(4):
        problem.set_grads(opt2_params, step)
        opt2.step()
    opt2.outer_optimizer.param_groups[0]["lr"] = 0.4
    assert opt2.outer_optimizer.state
    with torch.no_grad():
        for p, q in zip(opt2_params, params):
            p.copy_(q)
    opt2.load_state_dict(plain.state_dict())
    assert not opt2.outer_optimizer.state
    assert opt2.outer_optimizer.param_groups[0]["lr"] == 0.4
    assert opt2.counts == (0,)
    assert_bit_identical(flat_slow(opt2), params)
    assert opt  # the trained one is untouched by any of this


def test_the_state_initialization_step_makes_a_placeholder_that_the_first_sync_drops():
    """torch.distributed.checkpoint initializes an empty optimizer by a step with zero gradients and
    lr = 0; the outer optimizer gets a template of its state then (so that a checkpoint can be
    loaded into it), marked as a placeholder: saved and loaded with that mark, and dropped at the
    first sync, so the run trains as one that was never asked."""
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    k, steps = 3, 8
    problem = Problem(seed=38, steps=steps)
    plain_params, asked_params = problem.params(), problem.params()
    plain = Lookahead(torch.optim.SGD(plain_params, lr=0.05), k=k, outer=OUTERS["adam"][0])
    asked = Lookahead(torch.optim.SGD(asked_params, lr=0.05), k=k, outer=OUTERS["adam"][0])
    _init_optim_state(asked)
    assert asked.counts == (0,)
    assert_bit_identical(asked_params, plain_params)
    sd = asked.state_dict()
    assert sd["param_groups"][0]["lookahead_outer_placeholder"] is True
    assert all("lookahead_outer_exp_avg" in sd["state"][i] for i in range(len(asked_params)))
    resumed_params = problem.params()
    resumed = Lookahead(torch.optim.SGD(resumed_params, lr=0.05), k=k, outer=OUTERS["adam"][0])
    resumed.load_state_dict(copy.deepcopy(sd))
    for step in range(steps):
        for params, opt in ((plain_params, plain), (asked_params, asked), (resumed_params, resumed)):
            problem.set_grads(params, step)
            opt.step()
    assert_bit_identical(asked_params, plain_params)
    assert_bit_identical(resumed_params, plain_params)
    assert_bit_identical(flat_slow(resumed), flat_slow(plain))
    assert asked.state_dict()["param_groups"][0]["lookahead_outer_placeholder"] is False
