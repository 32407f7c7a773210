"""What an adversarial run found in the PyTorch adapter, each case fixed: nothing half-loaded,
nothing of another optimizer, no shared memory, no non-finite state kept."""

from __future__ import annotations

import copy

import pytest
from test_torch_support import assert_unchanged, snapshot

torch = pytest.importorskip("torch", reason="torch not installed")

from lookahead_torch import Lookahead  # noqa: E402


def _adam(steps=5, **options):
    w = torch.nn.Parameter(torch.ones(3))
    opt = Lookahead(torch.optim.Adam([w], lr=0.1), k=4, **options)
    for _ in range(steps):
        w.grad = torch.ones(3)
        opt.step()
    return w, opt


def _sgd(steps=3, momentum=0.9):
    w = torch.nn.Parameter(torch.ones(3))
    opt = Lookahead(torch.optim.SGD([w], lr=0.1, momentum=momentum), k=4)
    for _ in range(steps):
        w.grad = torch.ones(3)
        opt.step()
    return w, opt


def _refused(opt, sd, error=(TypeError, ValueError), match=None):
    before = snapshot(opt)
    with pytest.raises(error, match=match):
        opt.load_state_dict(sd)
    assert_unchanged(before, opt)


# --- a refused load changes nothing, the inner half included --------------------------------


def test_a_step_the_inner_optimizer_cannot_convert_is_refused_before_the_load():
    w, opt = _adam()
    bad = copy.deepcopy(opt.state_dict())
    bad["state"][0]["step"] = "x"
    _refused(opt, bad, TypeError, r"\['step'\] must be a number >= 0")
    w.grad = torch.ones(3)
    opt.step()  # the optimizer still works


def test_an_inner_load_that_fails_after_torch_installed_the_state_is_undone():
    """The backstop: a post hook of the inner optimizer raises after torch replaced its state."""
    w, opt = _adam()
    good = copy.deepcopy(opt.state_dict())
    w.grad = torch.ones(3)
    opt.step()

    def refuse(optimizer):
        raise RuntimeError("the inner optimizer's post hook refuses")

    opt.optimizer.register_load_state_dict_post_hook(refuse)
    before = snapshot(opt)
    state_object = opt.optimizer.state
    with pytest.raises(RuntimeError, match="post hook refuses"):
        opt.load_state_dict(good)
    assert_unchanged(before, opt)
    assert opt.optimizer.state is state_object
    w.grad = torch.ones(3)
    opt.step()


def test_a_class_whose_setstate_refuses_the_checkpoint_is_asked_before_the_load():
    class Picky(torch.optim.SGD):
        def __setstate__(self, state):
            super().__setstate__(state)
            for group in self.param_groups:
                if group["lr"] > 1.0:
                    raise ValueError("lr above 1")

    w = torch.nn.Parameter(torch.ones(3))
    opt = Lookahead(Picky([w], lr=0.1, momentum=0.9), k=4)
    w.grad = torch.ones(3)
    opt.step()
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0]["lr"] = 2.0
    _refused(opt, bad, ValueError, r"the inner optimizer \(Picky\) refuses this checkpoint: ValueError: lr above 1")


# --- another optimizer's checkpoint, and values that break the next step -----------------------


def test_a_lookahead_checkpoint_of_another_inner_optimizer_is_refused():
    _, adam = _adam()
    _, sgd = _sgd()
    _refused(sgd, adam.state_dict(), ValueError,
             r"'lookahead_inner'\] is 'torch.optim.adam.Adam': a checkpoint of another inner optimizer")
    assert sgd.state_dict()["param_groups"][0]["lookahead_inner"] == "torch.optim.sgd.SGD"


def test_a_plain_checkpoint_of_another_optimizer_is_refused():
    w = torch.nn.Parameter(torch.ones(3))
    plain = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.ones(3)
    plain.step()
    _, sgd = _sgd()
    _refused(sgd, plain.state_dict(), ValueError, r"missing \['dampening', 'momentum'\]")


def test_a_plain_checkpoint_of_the_same_optimizer_still_loads():
    w = torch.nn.Parameter(torch.ones(3))
    plain = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    w.grad = torch.ones(3)
    plain.step()
    _, opt = _sgd()
    opt.load_state_dict(plain.state_dict())
    assert torch.equal(next(iter(opt.state.values()))["momentum_buffer"], plain.state[w]["momentum_buffer"])


def test_a_checkpoint_from_before_a_key_was_added_loads_when_the_class_defaults_it():
    """torch adds group keys over versions; a class's __setstate__ fills them in (Adam: 'decoupled_weight_decay')."""
    w, opt = _adam()
    sd = copy.deepcopy(opt.state_dict())
    defaulted = [key for key in ("maximize", "foreach", "capturable", "differentiable", "fused")
                 if key in sd["param_groups"][0]]
    assert defaulted
    for key in defaulted:
        del sd["param_groups"][0][key]
    opt.load_state_dict(sd)
    w.grad = torch.ones(3)
    opt.step()


@pytest.mark.parametrize(("edit", "error", "match"), [
    (lambda sd: sd["param_groups"][0].update(lr="0.1"), TypeError, r"\['lr'\] must be a number"),
    (lambda sd: sd["param_groups"][0].pop("momentum"), ValueError, r"missing \['momentum'\]"),
    (lambda sd: sd["param_groups"][0].update(nesterov="yes"), TypeError, r"\['nesterov'\] must be a bool"),
    (lambda sd: sd["state"][0].update(momentum_buffer="x"), TypeError, r"\['momentum_buffer'\] must be a torch.Tensor"),
])
def test_sgd_group_and_state_values_that_break_the_next_step_are_refused(edit, error, match):
    _, opt = _sgd()
    bad = copy.deepcopy(opt.state_dict())
    edit(bad)
    _refused(opt, bad, error, match)


@pytest.mark.parametrize(("edit", "error", "match"), [
    (lambda sd: sd["state"][0].update(step=torch.tensor(-1.0)), ValueError, "finite number >= 0, got -1.0"),
    (lambda sd: sd["state"][0].update(step=torch.tensor(float("inf"))), ValueError, "finite number >= 0"),
    (lambda sd: sd["state"][0]["exp_avg_sq"].__setitem__(0, -1.0), ValueError, "negative values"),
    (lambda sd: sd["state"][0].pop("exp_avg_sq"), ValueError, r"missing \['exp_avg_sq'\]"),
    (lambda sd: sd["param_groups"][0].update(betas=(0.9,)), TypeError, r"\['betas'\] must be a sequence of 2"),
])
def test_adam_values_that_break_the_next_step_are_refused(edit, error, match):
    _, opt = _adam()
    bad = copy.deepcopy(opt.state_dict())
    edit(bad)
    _refused(opt, bad, error, match)


def test_adam_step_minus_one_would_divide_by_zero():
    """Why the refusal matters: torch itself would load it and fail at the next step."""
    w = torch.nn.Parameter(torch.ones(3))
    plain = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.ones(3)
    plain.step()
    sd = copy.deepcopy(plain.state_dict())
    sd["state"][0]["step"] = torch.tensor(-1.0)
    plain.load_state_dict(sd)  # torch accepts it
    w.grad = torch.ones(3)
    with pytest.raises(ZeroDivisionError):
        plain.step()


# --- overlapping parameters -----------------------------------------------------------------


def test_overlapping_parameters_are_refused():
    base = torch.zeros(6)
    a, b = torch.nn.Parameter(base[:4]), torch.nn.Parameter(base[2:])
    with pytest.raises(ValueError, match=r"\[0\]\['params'\]\[0\] and .*\[1\] share memory"):
        Lookahead(torch.optim.SGD([a, b], lr=0.1))
    opt = Lookahead(torch.optim.SGD([a], lr=0.1))
    with pytest.raises(ValueError, match="share memory"):
        opt.add_param_group({"params": [b]})
    assert len(opt.param_groups) == 1 and len(opt.slow) == 1
    opt.optimizer.add_param_group({"params": [b]})  # behind Lookahead's back: refused at the next step
    with pytest.raises(ValueError, match="share memory"):
        opt.step()


def test_a_parameter_that_overlaps_itself_is_refused():
    p = torch.zeros(1).expand(3)  # a leaf with stride 0
    with pytest.raises(ValueError, match=r"\[0\]\['params'\]\[0\] overlaps itself"):
        Lookahead(torch.optim.SGD([p], lr=0.1), k=2)


def test_disjoint_views_of_one_tensor_are_accepted_and_sync_independently():
    base = torch.zeros(6)
    a, b = torch.nn.Parameter(base[:2]), torch.nn.Parameter(base[2:])
    opt = Lookahead(torch.optim.SGD([a, b], lr=1.0), k=2, alpha=0.5)
    for _ in range(2):
        a.grad, b.grad = -torch.ones(2), -2 * torch.ones(4)
        opt.step()
    assert torch.equal(a.detach(), torch.ones(2)) and torch.equal(b.detach(), 2 * torch.ones(4))


# --- non-finite values under rollback ----------------------------------------------------------


def test_rollback_fires_when_the_inner_state_is_not_finite_although_the_weights_are():
    w = torch.nn.Parameter(torch.ones(3))
    opt = Lookahead(torch.optim.Adam([w], lr=0.1), k=2, nonfinite="rollback")
    w.grad = torch.tensor([1e30, 1.0, 1.0])  # exp_avg_sq = 1e-3 * 1e60 = inf in float32
    opt.step()
    assert torch.isinf(opt.state[w]["exp_avg_sq"][0]) and bool(torch.isfinite(w).all())
    w.grad = torch.ones(3)
    opt.step()  # the sync: rolled back
    assert opt.rollbacks == 1
    assert torch.equal(w.detach(), torch.ones(3)) and w not in opt.state  # θ = φ₀, state restarted
    for _ in range(2):
        w.grad = torch.ones(3)
        opt.step()
    assert bool((w.detach() < 1).all())  # every coordinate moves again


def test_under_rollback_a_checkpoint_with_non_finite_slow_weights_is_refused():
    _, opt = _adam(nonfinite="rollback")
    bad = copy.deepcopy(opt.state_dict())
    bad["state"][0]["lookahead_slow"][0] = float("nan")
    _refused(opt, bad, ValueError, r"\['lookahead_slow'\] holds inf or NaN; with nonfinite='rollback'")


def test_without_rollback_a_checkpoint_with_non_finite_slow_weights_loads_as_it_is():
    """The paper's behaviour: nothing is checked, the next sync spreads the NaN (documented)."""
    w, opt = _adam()
    bad = copy.deepcopy(opt.state_dict())
    bad["state"][0]["lookahead_slow"][0] = float("nan")
    opt.load_state_dict(bad)
    for _ in range(3):
        w.grad = torch.ones(3)
        opt.step()
    assert torch.isnan(w.detach()[0])


@pytest.mark.parametrize(("key", "value"), [
    ("capturable", True),        # saved on a GPU, loaded on the CPU: torch asserts at the step
    ("lr", None),
    ("betas", (1.0, 0.999)),     # bias correction 1 - 1**t = 0
    ("lr", 1e300),               # overflows the float32 parameters
])
def test_group_settings_the_next_step_cannot_take_are_refused(key, value):
    """A step of a throwaway Adam on one-element stand-ins rehearses the checkpoint's settings."""
    _, opt = _adam()
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0][key] = value
    _refused(opt, bad, ValueError, r"the inner optimizer \(Adam\) cannot step with this checkpoint's param_groups")


def test_the_step_rehearsal_fires_no_global_step_hook():
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    calls = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: calls.append(opt))
    try:
        _, opt = _adam(steps=0)
        sd = copy.deepcopy(opt.state_dict())
        opt.load_state_dict(sd)
    finally:
        handle.remove()
    assert calls == []


def test_non_finite_moments_load_as_they_are_and_rollback_then_recovers():
    """A checkpoint is a faithful copy of a run, also of one that blew up; rollback undoes it."""
    w, opt = _adam(steps=1, nonfinite="rollback")
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["exp_avg"][1] = float("inf")
    opt.load_state_dict(sd)
    assert torch.isinf(opt.state[w]["exp_avg"][1])
    for _ in range(3):  # count 1 -> the sync at the fourth step rolls back
        w.grad = torch.ones(3)
        opt.step()
    assert opt.rollbacks == 1 and bool(torch.isfinite(w).all())
