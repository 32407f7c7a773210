"""``Lookahead`` is a real ``torch.optim.Optimizer``: hooks, live views, schedulers,
closures, ``zero_grad``, ``add_param_group``, per-group k/α, pickling, ``repr``,
and a training loop on a ``torch.nn`` model."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
from test_torch_support import (
    INNER,
    Problem,
    adapter_run,
    assert_bit_identical,
    flat_slow,
    reference_run,
)

torch = pytest.importorskip("torch", reason="torch not installed")

from lookahead_torch import Lookahead  # noqa: E402


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _data(seed: int = 1, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, :1] * 0.7 - x[:, 1:2] * 0.3).sin()
    return x, y


# --- a real training loop ------------------------------------------------------------------


def _train(model, opt, steps, x, y, batch=16):
    losses = []
    for step in range(steps):
        i = (step * batch) % len(x)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[i : i + batch]), y[i : i + batch])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_loop_on_an_nn_model_matches_plain_torch_algorithm_1():
    """An MLP trained with Lookahead(Adam) is, bit for bit, the test-only Algorithm 1
    around Adam; and the loss goes down."""
    x, y = _data()
    model = _mlp()
    opt = Lookahead(torch.optim.Adam(model.parameters(), lr=1e-2), k=5, alpha=0.5)
    losses = _train(model, opt, 60, x, y)

    ref = _mlp()
    inner = torch.optim.Adam(ref.parameters(), lr=1e-2)
    slow = [p.detach().clone() for p in ref.parameters()]
    for step in range(60):
        i = (step * 16) % len(x)
        inner.zero_grad()
        torch.nn.functional.mse_loss(ref(x[i : i + 16]), y[i : i + 16]).backward()
        inner.step()
        if (step + 1) % 5 == 0:
            with torch.no_grad():
                for p, s in zip(ref.parameters(), slow):
                    s.lerp_(p, 0.5)
                    p.copy_(s)
    assert_bit_identical(list(model.parameters()), list(ref.parameters()))
    assert_bit_identical(flat_slow(opt), slow)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


# --- a torch.optim.Optimizer ---------------------------------------------------------------


def test_is_an_optimizer_with_live_views_of_the_inner_one():
    model = _mlp()
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = Lookahead(inner)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.optimizer is inner
    assert opt.param_groups is inner.param_groups
    assert opt.state is inner.state
    assert opt.defaults is inner.defaults
    # Optimizer.__init__ ran: the hook registries exist and are the wrapper's own
    assert opt._optimizer_step_pre_hooks is not inner._optimizer_step_pre_hooks
    # still live after the inner optimizer replaces its lists (torch.optim's load does)
    inner.load_state_dict(inner.state_dict())
    assert opt.param_groups is inner.param_groups
    assert opt.state is inner.state
    opt.param_groups[0]["lr"] = 0.5
    assert inner.param_groups[0]["lr"] == 0.5


def test_step_pre_and_post_hooks_on_the_wrapper():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=2)
    calls = []

    def pre(o, args, kwargs):
        calls.append(("pre", o is opt, w.tolist()))

    def post(o, args, kwargs):
        calls.append(("post", o is opt, w.tolist(), o.counts))

    handles = [opt.register_step_pre_hook(pre), opt.register_step_post_hook(post)]
    w.grad = -torch.ones(2)
    opt.step()
    assert calls == [("pre", True, [0.0, 0.0]), ("post", True, [1.0, 1.0], (1,))]
    for h in handles:
        h.remove()
    opt.step()
    assert len(calls) == 2


def test_a_step_pre_hook_can_replace_the_closure():
    w = torch.nn.Parameter(torch.zeros(()))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=3)

    def closure():
        w.grad = torch.tensor(-2.0)
        return "replaced"

    # args holds the optimizer itself; the hook keeps it and replaces the keyword arguments
    opt.register_step_pre_hook(lambda o, args, kwargs: (args, {"closure": closure}))
    assert opt.step() == "replaced"
    assert w.item() == 2.0


def test_global_optimizer_hooks_see_the_wrapper():
    from torch.optim.optimizer import register_optimizer_step_post_hook

    w = torch.nn.Parameter(torch.zeros(2))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0))
    seen = []
    handle = register_optimizer_step_post_hook(lambda o, a, k: seen.append(type(o).__name__))
    try:
        w.grad = torch.ones(2)
        opt.step()
    finally:
        handle.remove()
    assert seen == ["SGD", "Lookahead"]  # the inner step, then the wrapper's


def test_state_dict_hooks_and_load_state_dict_hooks_run():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0, momentum=0.9), k=2)
    events = []
    opt.register_state_dict_pre_hook(lambda o: events.append("sd-pre"))

    def sd_post(o, sd):
        events.append("sd-post")
        sd = dict(sd)
        sd["extra"] = "from a hook"
        return sd

    def load_pre(o, sd):
        events.append(("load-pre", sd.get("extra")))
        sd.pop("extra")  # a pre-hook may edit its copy of the dict

    opt.register_state_dict_post_hook(sd_post)
    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_post_hook(lambda o: events.append("load-post"))
    sd = opt.state_dict()
    assert sd["extra"] == "from a hook"
    opt.load_state_dict(sd)
    assert events == ["sd-pre", "sd-post", ("load-pre", "from a hook"), "load-post"]
    assert "extra" in sd  # the caller's dict was not touched


def test_step_passes_the_closure_and_returns_its_loss():
    model = _mlp()
    x, y = _data()
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=2)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert calls == [True]
    assert opt.counts == (1,)


def test_lbfgs_inner_optimizer_with_a_closure():
    """LBFGS calls the closure several times per step; one Lookahead step is one count."""
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0], dtype=torch.float64))
    opt = Lookahead(torch.optim.LBFGS([w], lr=1.0, max_iter=5), k=2, alpha=0.5)

    def closure():
        opt.zero_grad()
        loss = ((w - 1.0) ** 2).sum()
        loss.backward()
        return loss

    first = opt.step(closure)
    assert first.item() == pytest.approx(13.0)
    assert opt.counts == (1,)
    assert torch.allclose(w.detach(), torch.ones(2, dtype=torch.float64), atol=1e-6)  # converged
    opt.step(closure)
    assert opt.counts == (0,)
    # the sync: φ = θ₀ + 0.5 (θ − θ₀) with θ ≈ (1, 1) from θ₀ = (3, −2)
    assert w.tolist() == pytest.approx([2.0, -0.5], abs=1e-6)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_passes_set_to_none_through(set_to_none):
    w = torch.nn.Parameter(torch.zeros(3))
    inner = torch.optim.SGD([w], lr=0.1)
    calls = []
    original = inner.zero_grad
    inner.zero_grad = lambda set_to_none=True: (calls.append(set_to_none), original(set_to_none))
    opt = Lookahead(inner)
    w.grad = torch.ones(3)
    opt.zero_grad(set_to_none=set_to_none)
    assert calls == [set_to_none]
    if set_to_none:
        assert w.grad is None
    else:
        assert torch.equal(w.grad, torch.zeros(3))


def test_repr_shows_k_alpha_and_the_inner_optimizer():
    opt = Lookahead(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4), k=7, alpha=0.25)
    text = repr(opt)
    assert text.startswith("Lookahead(k=7, alpha=0.25, pullback='none'")
    assert "AdamW" in text and "lr: 0.0003" in text


# --- learning-rate schedulers --------------------------------------------------------------

SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=12),
    "ReduceLROnPlateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0),
}


def _scheduled_lrs(name, attach_to, steps, reload_at=None):
    """The lr each inner step actually read, with the scheduler on the wrapper or the inner."""
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    inner = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    opt = Lookahead(inner, k=3, alpha=0.5) if attach_to != "plain" else None
    target = {"wrapper": opt, "inner": inner, "plain": inner}[attach_to]
    scheduler = SCHEDULERS[name](target)
    used = []
    inner.register_step_pre_hook(lambda o, a, k: used.append((o.param_groups[0]["lr"],
                                                             o.param_groups[0]["momentum"])))
    for step in range(steps):
        if reload_at is not None and step == reload_at:
            # checkpoint round trip mid-run through torch.save: new group dicts
            buffer = io.BytesIO()
            torch.save((opt or inner).state_dict(), buffer)
            (opt or inner).load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
        w.grad = torch.ones(2, dtype=torch.float64)
        (opt or inner).step()
        if name == "ReduceLROnPlateau":
            scheduler.step(float(step))  # a loss that never improves
        else:
            scheduler.step()
    return used


@pytest.mark.parametrize("attach_to", ["wrapper", "inner"])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_schedulers_change_the_lr_the_inner_step_uses(name, attach_to):
    expected = _scheduled_lrs(name, "plain", 12)
    assert len({lr for lr, _ in expected}) > 2  # the schedule does change the lr
    assert _scheduled_lrs(name, attach_to, 12) == expected
    # ... also after a load_state_dict of the wrapper mid-run
    assert _scheduled_lrs(name, attach_to, 12, reload_at=5) == expected


def test_one_cycle_cycles_the_inner_momentum_through_the_wrapper():
    used = _scheduled_lrs("OneCycleLR", "wrapper", 12)
    momenta = [m for _, m in used]
    assert min(momenta) < 0.9 < max(momenta) + 1e-12  # OneCycleLR found 'momentum' in defaults


def test_scheduler_lr_moves_the_weights_by_exactly_lr():
    """The lr the scheduler sets is the one applied: with α = 1 (no-op syncs) and gradient 1,
    each step moves θ by −lr."""
    w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = Lookahead(torch.optim.SGD([w], lr=0.25), k=2, alpha=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    expected = 0.0
    for step in range(6):
        w.grad = torch.ones((), dtype=torch.float64)
        opt.step()
        expected -= 0.25 * 0.5**step
        assert w.item() == expected
        scheduler.step()


# --- param groups: add_param_group, per-group k and α -------------------------------------


def test_add_param_group_mid_training_creates_slow_copies_from_the_current_weights():
    problem = Problem(seed=5, steps=20, shapes=[(3,), (2, 2)])
    a, b = problem.params()
    opt = Lookahead(torch.optim.SGD([a], lr=0.1, momentum=0.9), k=4, alpha=0.5)
    ref_a = problem.params()[0]
    ref_opt = Lookahead(torch.optim.SGD([ref_a], lr=0.1, momentum=0.9), k=4, alpha=0.5)
    ref_b = problem.params()[1]
    ref_b_opt = None
    for step in range(problem.steps):
        if step == 7:
            opt.add_param_group({"params": [b], "lr": 0.05})
            assert_bit_identical(list(opt.slow[1]), [b.detach()])  # φ₀ of the new group = θ now
            assert opt.counts == (3, 0)
            ref_b_opt = Lookahead(torch.optim.SGD([ref_b], lr=0.05, momentum=0.9), k=4, alpha=0.5)
        problem.set_grads([a, b], step)
        problem.set_grads([ref_a, ref_b], step)
        opt.step()
        ref_opt.step()
        if ref_b_opt is not None:
            ref_b_opt.step()
    # groups are independent: each equals its own single-group Lookahead, bit for bit
    assert_bit_identical([a, b], [ref_a, ref_b])
    assert_bit_identical(flat_slow(opt), flat_slow(ref_opt) + flat_slow(ref_b_opt))
    assert opt.counts == (20 % 4, (20 - 7) % 4)


def test_a_group_added_to_the_inner_optimizer_directly_is_adopted_at_the_next_step():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.full((2,), 5.0))
    inner = torch.optim.SGD([a], lr=1.0)
    opt = Lookahead(inner, k=2, alpha=0.5)
    inner.add_param_group({"params": [b]})
    a.grad, b.grad = -torch.ones(2), -torch.ones(2)
    opt.step()
    assert opt.counts == (1, 1)
    assert flat_slow(opt)[1].tolist() == [5.0, 5.0]
    opt.step()
    assert b.tolist() == [6.0, 6.0]  # 5 + 0.5 * (7 − 5)


def test_per_group_k_and_alpha_equal_separate_optimizers():
    problem = Problem(seed=6, steps=25, shapes=[(3,), (4,)])
    a, b = problem.params()
    inner = torch.optim.SGD([{"params": [a], "lookahead_k": 2, "lookahead_alpha": 0.3},
                             {"params": [b]}], lr=0.1, momentum=0.9)
    opt = Lookahead(inner, k=3, alpha=0.8)
    assert [(g["lookahead_k"], g["lookahead_alpha"]) for g in opt.param_groups] == [(2, 0.3), (3, 0.8)]
    ra, rb = problem.params()
    slow_a = reference_run(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), [ra], _Sub(problem, 0), 2, 0.3)
    slow_b = reference_run(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), [rb], _Sub(problem, 1), 3, 0.8)
    for step in range(problem.steps):
        problem.set_grads([a, b], step)
        opt.step()
    assert_bit_identical([a, b], [ra, rb])
    assert_bit_identical(flat_slow(opt), slow_a + slow_b)


class _Sub(Problem):
    """One parameter of a Problem, as a Problem of its own."""

    def __init__(self, problem: Problem, index: int) -> None:
        self.dtype = problem.dtype
        self.theta0 = [problem.theta0[index]]
        self.curv = [problem.curv[index]]
        self.noise = [[n[index]] for n in problem.noise]
        self.steps = problem.steps


def test_per_group_k_and_alpha_can_change_during_training():
    w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=2, alpha=0.5)
    trace = []
    for step in range(1, 9):
        if step == 3:
            opt.param_groups[0]["lookahead_k"] = 3
            opt.param_groups[0]["lookahead_alpha"] = 1.0
        w.grad = -torch.ones((), dtype=torch.float64)
        opt.step()
        trace.append((w.item(), flat_slow(opt)[0].item()))
    # k=2, α=0.5 for steps 1-2 (sync at 2: φ = 1); then k=3, α=1: syncs at steps 5 and 8
    assert trace == [(1, 0), (1, 1), (2, 1), (3, 1), (4, 4), (5, 4), (6, 4), (7, 7)]


def test_lowering_k_below_the_count_syncs_at_the_next_step():
    w = torch.nn.Parameter(torch.zeros(()))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=5, alpha=0.5)
    for _ in range(3):
        w.grad = -torch.ones(())
        opt.step()
    opt.param_groups[0]["lookahead_k"] = 2
    w.grad = -torch.ones(())
    opt.step()
    assert opt.counts == (0,)
    assert w.item() == 2.0  # φ = 0 + 0.5 · 4


# --- pickle and deepcopy ---------------------------------------------------------------------


def _model_and_opt(seed=0, **options):
    model = _mlp(seed)
    opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=1e-2), k=3, alpha=0.6, **options)
    return model, opt


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_train_identically_and_independently(how):
    x, y = _data()
    model, opt = _model_and_opt(pullback="pullback")
    _train(model, opt, 7, x, y)  # mid-cycle, with inner state
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    assert opt2.counts == opt.counts == (1,)
    assert repr(opt2) == repr(opt)
    assert all(p2 is q for p2, q in zip(model2.parameters(), opt2.param_groups[0]["params"]))
    before = [p.detach().clone() for p in model.parameters()]
    before_slow = [s.clone() for s in flat_slow(opt)]

    _train(model2, opt2, 5, x, y)  # the copy trains ...
    assert_bit_identical(list(model.parameters()), before)  # ... the original does not move
    assert_bit_identical(flat_slow(opt), before_slow)

    _train(model, opt, 5, x, y)  # the same 5 steps on the original: identical results
    assert_bit_identical(list(model.parameters()), list(model2.parameters()))
    assert_bit_identical(flat_slow(opt), flat_slow(opt2))
    assert opt.counts == opt2.counts


def test_a_copy_works_with_hooks_and_schedulers_of_its_own():
    """Hooks and scheduler patches are not state: a copy starts without them, like torch.optim."""
    model, opt = _model_and_opt()
    opt.register_step_pre_hook(lambda *a: None)
    torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    clone = copy.deepcopy(opt)
    assert len(clone._optimizer_step_pre_hooks) == 0
    seen = []
    clone.register_step_post_hook(lambda o, a, k: seen.append(o.counts))
    scheduler = torch.optim.lr_scheduler.StepLR(clone, step_size=1, gamma=0.1)
    for p in clone.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    clone.step()
    scheduler.step()
    assert seen == [(1,)]
    assert clone.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_cannot_pickle_inside_slow_weights():
    model, opt = _model_and_opt()
    with opt.slow_weights():
        with pytest.raises(RuntimeError, match="slow_weights"):
            copy.deepcopy(opt)


def test_adapter_run_helper_is_exercised_with_options():
    """`adapter_run` passes options through (used by the side-by-side tests)."""
    problem = Problem(seed=9, steps=6, shapes=[(3,)])
    opt = adapter_run(INNER["sgd-momentum"], problem.params(), problem, 3, 0.5, pullback="reset")
    assert opt.pullback == "reset"
    assert torch.count_nonzero(opt.optimizer.state[opt.param_groups[0]["params"][0]]["momentum_buffer"]) == 0
