"""Features of ``lookahead_torch.Lookahead`` beyond the schedule: AMP, the float32 slow
copy, momentum handling, slow-weight evaluation, non-finite rollback, the sync
kernel's work, bad input, the conformance backends, and CUDA."""

from __future__ import annotations

import math

import pytest
from test_torch_support import (
    INNER,
    Problem,
    adapter_run,
    assert_bit_identical,
    assert_unchanged,
    bits,
    flat_slow,
    requires_cuda,
    snapshot,
)

torch = pytest.importorskip("torch", reason="torch not installed")

from lookahead_torch import Lookahead, _kernels  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


def _mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).to(dtype)


def _batch(step, dtype=torch.float32):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(8, 4, generator=g)
    return x.to(dtype), x.sum(1, keepdim=True).sin().to(dtype)


# --- GradScaler: skipped steps do not count -------------------------------------------------


def _amp_run(device, inf_at, fused=False, steps=11):
    model = _mlp().to(device)
    inner = torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused or None)
    opt = Lookahead(inner, k=3, alpha=0.5)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    executed = 0
    for step in range(steps):
        x, y = _batch(step)
        opt.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model(x.to(device)), y.to(device))).backward()
        if step in inf_at:
            next(model.parameters()).grad.view(-1)[0] = math.inf  # an overflow in the backward pass
            before = snapshot(opt)
        scaler.step(opt)
        scaler.update()
        if step in inf_at:
            assert_unchanged(before, opt)  # skipped: nothing moved, the count did not advance
        else:
            executed += 1
            assert opt.counts == (executed % 3,)
    return model, opt, scaler


@pytest.mark.parametrize("fused", [False, True])
def test_gradscaler_skipped_steps_do_not_advance_the_schedule(fused):
    """A forced inf makes GradScaler skip opt.step(); the run equals, bit for bit, a run
    without a scaler on the executed batches only (scales are powers of two, so scaling
    and unscaling the gradients is exact). Also with a fused inner Adam: the wrapper does
    not claim ``_step_supports_amp_scaling``, so GradScaler unscales and decides."""
    assert not getattr(Lookahead, "_step_supports_amp_scaling", False)
    skipped = {2, 3, 7}
    model, opt, scaler = _amp_run("cpu", inf_at=skipped, fused=fused)
    assert scaler.get_scale() == 2.0**10 / 2**len(skipped)  # one backoff per skip
    ref_model = _mlp()
    ref = Lookahead(torch.optim.Adam(ref_model.parameters(), lr=1e-2, fused=fused or None), k=3, alpha=0.5)
    for step in [s for s in range(11) if s not in skipped]:
        x, y = _batch(step)
        ref.zero_grad()
        torch.nn.functional.mse_loss(ref_model(x), y).backward()
        ref.step()
    assert_bit_identical(list(model.parameters()), list(ref_model.parameters()))
    assert_bit_identical(flat_slow(opt), flat_slow(ref))
    assert opt.counts == ref.counts == (8 % 3,)


# --- the float32 slow copy of bfloat16/float16 parameters -----------------------------------


def _mixed_reference(params, grads_per_step, k, alpha, lr):
    """Test-only: SGD on low-precision params, slow copy in float32, lerp in float32."""
    inner = torch.optim.SGD(params, lr=lr)
    slow = [p.detach().float() for p in params]
    for step, grads in enumerate(grads_per_step, start=1):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        inner.step()
        if step % k == 0:
            with torch.no_grad():
                for p, s in zip(params, slow):
                    s.lerp_(p.float(), alpha)
                    p.copy_(s)
    return slow


@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_slow_copy_for_low_precision_params(dtype, chunk, monkeypatch):
    """The sync runs in float32 on the float32 copy and rounds into the parameter: bit for
    bit the test-only reference, also when the upcast scratch (``chunk`` elements)
    is smaller than the tensors, so chunks straddle parameters."""
    if chunk is not None:
        monkeypatch.setattr(_kernels, "MIN_CHUNK_ELEMENTS", chunk)
        monkeypatch.setattr(_kernels, "MAX_CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    shapes = [(5, 3), (4,), (), (2, 3)]
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s).to(dtype) for s in shapes] for _ in range(10)]
    params = [torch.nn.Parameter(t.to(dtype)) for t in start]
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=2, alpha=0.3, slow_dtype=torch.float32)
    assert all(s.dtype == torch.float32 for s in flat_slow(opt))
    if chunk is not None:
        assert [t.numel() for t in opt._workspace_tensors()] == [chunk]
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        opt.step()
    ref_params = [torch.nn.Parameter(t.to(dtype)) for t in start]
    ref_slow = _mixed_reference(ref_params, grads, 2, 0.3, 0.1)
    assert all(p.dtype == dtype for p in params)
    assert_bit_identical(params, ref_params)
    assert_bit_identical(flat_slow(opt), ref_slow)


def test_float32_slow_copy_keeps_updates_a_bfloat16_copy_loses():
    """θ moves one bfloat16 ulp above φ = 1 each cycle (k = 1, α = 0.1): a bfloat16 φ
    rounds 1 + 0.1·2⁻⁷ back to 1 and never moves; the float32 φ accumulates, and the
    parameter follows once φ passes half an ulp."""
    def run(slow_dtype):
        w = torch.nn.Parameter(torch.ones(1, dtype=torch.bfloat16))
        opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=1, alpha=0.1, slow_dtype=slow_dtype)
        for _ in range(40):
            w.grad = torch.full((1,), -(2.0**-7), dtype=torch.bfloat16)
            opt.step()
        return w.item(), flat_slow(opt)[0].item()

    stuck_w, stuck_phi = run(None)
    assert (stuck_w, stuck_phi) == (1.0, 1.0)
    w, phi = run(torch.float32)
    assert phi > 1.0 + 2.0**-8 and w > 1.0


def test_scratch_size_is_an_eighth_clamped_to_the_chunk_bounds():
    mib = 1 << 20
    assert _kernels.scratch_elements(10) == 10  # fewer than the minimum: all of them
    assert _kernels.scratch_elements(3 * mib) == mib  # an eighth would be below the minimum
    assert _kernels.scratch_elements(64 * mib) == 8 * mib  # an eighth
    assert _kernels.scratch_elements(1024 * mib) == 16 * mib  # capped at 2**24 elements


def test_slow_dtype_leaves_wider_params_alone():
    a = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    c = torch.nn.Parameter(torch.zeros(3, dtype=torch.float32))
    opt = Lookahead(torch.optim.SGD([a, b, c], lr=0.1), slow_dtype=torch.float32)
    assert [s.dtype for s in flat_slow(opt)] == [torch.float32, torch.float64, torch.float32]
    assert [t.numel() for t in opt._workspace_tensors()] == [3]  # scratch for the one mixed pair
    opt64 = Lookahead(torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1), slow_dtype=torch.float64)
    assert flat_slow(opt64)[0].dtype == torch.float64


# --- the sync kernel: zero work off sync, in-place multi-tensor on sync --------------------


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _recorded(fn):
    with _Ops() as rec:
        fn()
    return [op for op in rec.ops if not op.startswith("_record_function")]


def test_non_sync_steps_do_no_lookahead_tensor_work_and_a_sync_is_two_foreach_calls_per_bucket():
    def make():
        params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2)),
                  torch.nn.Parameter(torch.randn(4, dtype=torch.float64))]
        return params, torch.optim.SGD(params, lr=0.1, momentum=0.9)

    params, inner = make()
    ref_params, ref_inner = make()
    opt = Lookahead(inner, k=3)
    for step in range(1, 7):
        for p, q in zip(params, ref_params):
            p.grad = torch.ones_like(p)
            q.grad = torch.ones_like(q)
        ops = _recorded(opt.step)
        bare = _recorded(ref_inner.step)
        if step % 3:
            assert ops == bare  # exactly the inner optimizer's work
        else:
            # two (device, dtype) buckets: float32 and float64; nothing allocated
            assert ops == bare + ["_foreach_lerp_", "_foreach_copy_"] * 2


def test_mixed_dtype_sync_allocates_nothing():
    params = [torch.nn.Parameter(torch.randn(300, dtype=torch.bfloat16)) for _ in range(3)]
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=1, slow_dtype=torch.float32)
    for p in params:
        p.grad = torch.ones_like(p)
    inner_ops = _recorded(lambda: opt.optimizer.step())
    ops = _recorded(opt.step)[len(inner_ops):]
    assert {"_foreach_copy_", "_foreach_lerp_"} <= set(ops)
    allocating = {"empty", "empty_like", "zeros", "zeros_like", "clone", "_to_copy", "empty_strided"}
    assert not allocating & set(ops), ops


def test_slow_weights_swap_allocates_nothing():
    params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(2, 3, dtype=torch.float64))]
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=2)
    entered = []

    def swap():
        with opt.slow_weights():
            entered.append(True)

    ops = _recorded(swap)
    assert entered and set(ops) <= {"detach", "view", "bitwise_xor_"}, ops


# --- momentum at sync: pullback, reset, full inner-state reset ------------------------------


def _momentum_before_syncs(opt, key):
    """A post-hook on the inner optimizer: its momentum right after each inner step."""
    seen = []
    opt.optimizer.register_step_post_hook(
        lambda o, a, kw: seen.append([o.state[p][key].clone() for p in o.param_groups[0]["params"]]))
    return seen


@pytest.mark.parametrize("name, key", [("sgd-momentum", "momentum_buffer"), ("adam", "exp_avg")])
def test_pullback_interpolates_the_momentum_at_every_sync(name, key):
    """m ← lerp(m_slow, m, α), m_slow ← m (m_slow₀ = 0), at each of 4 syncs; the authors'
    code stops after the first sync (its m_slow aliases m), ours acts at the third too."""
    alpha, k = 0.3, 3
    problem = Problem(seed=11, steps=4 * k)
    params = problem.params()
    opt = Lookahead(INNER[name](params), k=k, alpha=alpha, pullback="pullback")
    before = _momentum_before_syncs(opt, key)
    m_slow = [torch.zeros_like(p) for p in params]
    for step in range(problem.steps):
        problem.set_grads(params, step)
        opt.step()
        if (step + 1) % k:
            continue
        m_before = before[-1]
        expected = [s.lerp(m, alpha) for s, m in zip(m_slow, m_before)]
        after = [opt.optimizer.state[p][key] for p in params]
        assert_bit_identical(after, expected)
        assert any(not torch.equal(a, m) for a, m in zip(after, m_before))  # it did act
        m_slow = [e.clone() for e in expected]


def test_pullback_leaves_adams_second_moment_and_step_alone():
    params = [torch.nn.Parameter(torch.randn(6, dtype=torch.float64))]
    opt = Lookahead(torch.optim.Adam(params, lr=0.1), k=2, alpha=0.5, pullback="pullback")
    seen = []
    opt.optimizer.register_step_post_hook(
        lambda o, a, kw: seen.append({k: v.clone() for k, v in o.state[params[0]].items()}))
    for _ in range(4):
        params[0].grad = torch.randn(6, dtype=torch.float64)
        opt.step()
    state = opt.optimizer.state[params[0]]
    assert torch.equal(state["exp_avg_sq"], seen[-1]["exp_avg_sq"])
    assert torch.equal(state["step"], seen[-1]["step"])
    assert not torch.equal(state["exp_avg"], seen[-1]["exp_avg"])


@pytest.mark.parametrize("name, key", [("sgd-momentum", "momentum_buffer"), ("adam", "exp_avg")])
def test_reset_zeroes_the_momentum_at_each_sync(name, key):
    problem = Problem(seed=12, steps=9)
    params = problem.params()
    opt = Lookahead(INNER[name](params), k=3, pullback="reset")
    before = _momentum_before_syncs(opt, "exp_avg_sq" if name == "adam" else key)
    buffers = None
    for step in range(problem.steps):
        problem.set_grads(params, step)
        opt.step()
        state = [opt.optimizer.state[p] for p in params]
        if (step + 1) % 3 == 0:
            assert all(torch.count_nonzero(s[key]) == 0 for s in state)
            if name == "adam":  # exp_avg_sq untouched
                assert_bit_identical([s["exp_avg_sq"] for s in state], before[-1])
            if buffers is not None:  # zeroed in place: the same tensors
                assert all(s[key] is b for s, b in zip(state, buffers))
            buffers = [s[key] for s in state]
        else:
            assert all(torch.count_nonzero(s[key]) > 0 for s in state if s[key].numel())


def test_reset_inner_state_restarts_adam_at_each_sync():
    """optax's reset_state: right after a sync the next step is a fresh Adam's first step."""
    problem = Problem(seed=13, steps=7)
    params = problem.params()
    opt = Lookahead(INNER["adam"](params), k=3, alpha=0.5, reset_inner_state=True)
    for step in range(problem.steps):
        if step == 6:
            fresh_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
            fresh = INNER["adam"](fresh_params)
            problem.set_grads(fresh_params, step)
            fresh.step()
        problem.set_grads(params, step)
        opt.step()
        if (step + 1) % 3 == 0:
            assert all(p not in opt.optimizer.state for p in params)
    assert_bit_identical(params, fresh_params)


def test_pullback_without_a_mapping_is_a_clear_error():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="no mapping for RMSprop.*reset_inner_state=True"):
        Lookahead(torch.optim.RMSprop(params, lr=0.1), pullback="pullback")
    with pytest.raises(ValueError, match="every param group of this SGD has momentum=0"):
        Lookahead(torch.optim.SGD(params, lr=0.1), pullback="reset")
    # reset_inner_state works for any optimizer
    opt = Lookahead(torch.optim.RMSprop(params, lr=0.1), k=1, reset_inner_state=True)
    params[0].grad = torch.ones(2)
    opt.step()
    assert params[0] not in opt.optimizer.state


# --- complex parameters -------------------------------------------------------------------


def test_complex_parameters_sync_and_swap():
    z = torch.nn.Parameter(torch.tensor([1 + 2j, -3 + 0.5j], dtype=torch.complex128))
    opt = Lookahead(torch.optim.SGD([z], lr=1.0), k=2, alpha=0.25)
    for _ in range(2):
        z.grad = torch.tensor([1j, 2.0], dtype=torch.complex128)
        opt.step()
    expected = torch.tensor([1 + 2j, -3 + 0.5j], dtype=torch.complex128).lerp(
        torch.tensor([1 + 0j, -7 + 0.5j], dtype=torch.complex128), 0.25)
    assert torch.equal(z.detach(), expected)
    z.grad = torch.ones(2, dtype=torch.complex128)
    opt.step()
    fast = z.detach().clone()
    with opt.slow_weights():
        assert torch.equal(z.detach(), expected)
    assert torch.equal(z.detach(), fast)


# --- evaluation with the slow weights ------------------------------------------------------


def _trained_model(steps=7, **options):
    model = _mlp()
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, alpha=0.5, **options)
    for step in range(steps):
        x, y = _batch(step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model, opt


def test_slow_weights_swaps_in_place_and_back_bit_for_bit():
    model, opt = _trained_model()
    fast = [p.detach().clone() for p in model.parameters()]
    slow = [s.clone() for s in flat_slow(opt)]
    assert any(not torch.equal(f, s) for f, s in zip(fast, slow))  # mid-cycle: they differ
    pointers = [p.data_ptr() for p in model.parameters()]
    state = {k: v.clone() for k, v in opt.optimizer.state[next(model.parameters())].items()}
    x, _ = _batch(99)
    evaluated = _mlp()
    evaluated.load_state_dict(opt.slow_state_dict(model))
    with torch.no_grad():
        expected_out = evaluated(x)
    with opt.slow_weights() as swapped:
        assert list(swapped) == list(model.parameters())
        assert_bit_identical(list(model.parameters()), slow)
        assert [p.data_ptr() for p in model.parameters()] == pointers  # the same tensors, in place
        assert_bit_identical(flat_slow(opt), slow)  # opt.slow reports φ inside as well
        assert "lookahead_slow" in opt.state_dict()["state"][0]
        assert bits(opt.state_dict()["state"][0]["lookahead_slow"]) == bits(slow[0])
        with torch.no_grad():
            assert torch.equal(model(x), expected_out)
    assert_bit_identical(list(model.parameters()), fast)
    assert_bit_identical(flat_slow(opt), slow)
    p0 = next(model.parameters())
    assert all(torch.equal(opt.optimizer.state[p0][k], v) for k, v in state.items())


def test_slow_weights_restores_on_an_exception_and_refuses_what_would_break():
    model, opt = _trained_model()
    fast = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(KeyError):
        with opt.slow_weights():
            raise KeyError("evaluation failed")
    assert_bit_identical(list(model.parameters()), fast)
    sd = opt.state_dict()
    with opt.slow_weights():
        for what, call in [("step", opt.step), ("sync", opt.sync),
                           ("load_state_dict", lambda: opt.load_state_dict(sd)),
                           ("add_param_group",
                            lambda: opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))]}))]:
            pattern = f"{what}\\(\\) cannot run inside slow_weights"
            with pytest.raises(RuntimeError, match=pattern):
                call()
        with pytest.raises(RuntimeError, match="slow_weights"):
            with opt.slow_weights():
                pass
    assert_bit_identical(list(model.parameters()), fast)


def test_slow_weights_with_a_float32_copy_of_bfloat16_params():
    w = torch.nn.Parameter(torch.randn(50).bfloat16())
    opt = Lookahead(torch.optim.SGD([w], lr=0.3), k=4, slow_dtype=torch.float32)
    for _ in range(6):
        w.grad = torch.randn(50).bfloat16()
        opt.step()
    fast = w.detach().clone()
    phi = flat_slow(opt)[0].clone()
    with opt.slow_weights():
        assert torch.equal(w.detach(), phi.bfloat16())  # φ rounded to the parameter's dtype
        assert bits(flat_slow(opt)[0]) == bits(phi)  # the exact float32 φ is kept
    assert bits(w) == bits(fast)


def test_sync_now_mid_cycle():
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=5, alpha=0.25)
    for _ in range(2):
        w.grad = -torch.ones(2, dtype=torch.float64)
        opt.step()
    opt.sync()
    assert w.tolist() == [0.5, 0.5] and flat_slow(opt)[0].tolist() == [0.5, 0.5]
    assert opt.counts == (0,)


def test_slow_state_dict_is_a_model_checkpoint_of_the_slow_weights():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.5), k=4)
    for step in range(3):
        opt.zero_grad()
        model(torch.randn(8, 3, generator=torch.Generator().manual_seed(step))).square().mean().backward()
        opt.step()
    exported = opt.slow_state_dict(model)
    assert exported.keys() == model.state_dict().keys()
    for (name, value), phi in zip(((n, v) for n, v in exported.items() if not n.startswith("1.running")
                                   and n != "1.num_batches_tracked"), flat_slow(opt)):
        assert torch.equal(value, phi), name
        assert value.data_ptr() != phi.data_ptr()  # a copy
    assert torch.equal(exported["1.running_mean"], model.state_dict()["1.running_mean"])
    assert exported["1.num_batches_tracked"].item() == 3
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    fresh.load_state_dict(exported)
    assert_bit_identical(list(fresh.parameters()), flat_slow(opt))
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        opt.slow_state_dict(model.state_dict())


# --- non-finite rollback ------------------------------------------------------------------


def _blow_up_run(nonfinite):
    params = [torch.nn.Parameter(torch.ones(3, dtype=torch.float64)),
              torch.nn.Parameter(torch.ones(2, dtype=torch.float64))]
    opt = Lookahead(torch.optim.SGD(params, lr=0.1, momentum=0.9), k=3, alpha=0.5, nonfinite=nonfinite)
    history = []
    for step in range(9):
        for p in params:
            p.grad = torch.ones_like(p)
        if step == 4:
            params[0].grad[1] = math.inf  # an overflow
        opt.step()
        history.append([p.detach().clone() for p in params])
        if step == 5:
            history.append([p in opt.optimizer.state for p in params])
    return params, opt, history


def test_nonfinite_rollback_loses_k_steps_not_the_run():
    params, opt, history = _blow_up_run("rollback")
    assert opt.rollbacks == 1
    # at the sync after the blow-up (step 6) θ went back to φ of the sync at step 3
    assert not bool(torch.isfinite(history[4][0]).all())
    assert_bit_identical(history[5], history[2])
    assert history[6] == [False, False]  # the group's inner state (inf momentum) restarted
    assert all(bool(torch.isfinite(p).all()) for p in params)
    assert "rollback" in repr(opt)
    assert_bit_identical(flat_slow(opt), params)  # step 9 synced normally
    assert not torch.equal(params[0], history[2][0])


def test_without_rollback_a_blow_up_poisons_the_slow_weights():
    params, opt, _ = _blow_up_run(None)
    assert opt.rollbacks == 0
    assert not bool(torch.isfinite(flat_slow(opt)[0]).all())


def test_rollback_counter_is_checkpointed():
    _, opt, _ = _blow_up_run("rollback")
    sd = opt.state_dict()
    assert [g["lookahead_rollbacks"] for g in sd["param_groups"]] == [1]
    params = [torch.nn.Parameter(torch.ones(3, dtype=torch.float64)),
              torch.nn.Parameter(torch.ones(2, dtype=torch.float64))]
    other = Lookahead(torch.optim.SGD(params, lr=0.1, momentum=0.9), k=3, nonfinite="rollback")
    other.load_state_dict(sd)
    assert other.rollbacks == 1


# --- bad input: a clear error, nothing changed ----------------------------------------------

BAD_ARGUMENTS = [
    ({"k": 0}, ValueError, "k must be an int >= 1"),
    ({"k": -1}, ValueError, "k must be an int >= 1"),
    ({"k": True}, TypeError, "k must be an int >= 1"),
    ({"k": 2.5}, TypeError, "k must be an int >= 1"),
    ({"k": "3"}, TypeError, "k must be an int >= 1"),
    ({"alpha": -0.1}, ValueError, r"alpha must be in \[0, 1\]"),
    ({"alpha": 1.5}, ValueError, r"alpha must be in \[0, 1\]"),
    ({"alpha": math.nan}, ValueError, "alpha must be finite"),
    ({"alpha": math.inf}, ValueError, "alpha must be finite"),
    ({"alpha": True}, TypeError, "alpha must be a real number"),
    ({"alpha": torch.tensor(0.5)}, TypeError, "alpha must be a real number"),
    ({"pullback": "Pullback"}, ValueError, "pullback must be one of 'none', 'reset', 'pullback'"),
    ({"pullback": "momentum"}, ValueError, "pullback must be one of"),
    ({"pullback": None}, TypeError, "pullback must be one of"),
    ({"pullback": "reset", "reset_inner_state": True}, ValueError, "cannot be combined"),
    ({"reset_inner_state": 1}, TypeError, "reset_inner_state must be a bool"),
    ({"slow_dtype": torch.float16}, ValueError, "slow_dtype must be None, torch.float32 or torch.float64"),
    ({"slow_dtype": "float32"}, TypeError, "slow_dtype must be None"),
    ({"nonfinite": "skip"}, ValueError, "nonfinite must be None or 'rollback'"),
    ({"nonfinite": True}, TypeError, "nonfinite must be None or 'rollback'"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_ARGUMENTS, ids=[str(a[0]) for a in BAD_ARGUMENTS])
def test_bad_constructor_arguments(kwargs, error, message):
    params = [torch.nn.Parameter(torch.zeros(2))]
    inner = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    groups_before = [dict(g) for g in inner.param_groups]
    with pytest.raises(error, match=message):
        Lookahead(inner, **kwargs)
    assert [dict(g) for g in inner.param_groups] == groups_before  # the inner optimizer untouched


def test_bad_optimizer_and_bad_parameters():
    with pytest.raises(TypeError, match="got the class SGD"):
        Lookahead(torch.optim.SGD)
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer instance, got list"):
        Lookahead([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match="already a Lookahead"):
        Lookahead(Lookahead(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)))
    ints = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"\['params'\]\[0\] must have a floating point or complex dtype"):
        Lookahead(torch.optim.SGD([ints], lr=0.1))
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        inner = torch.optim.SGD([w, w], lr=0.1)
    with pytest.raises(ValueError, match="appears twice"):
        Lookahead(inner)
    bad_group = torch.optim.SGD([{"params": [w], "lookahead_k": 0}], lr=0.1)
    with pytest.raises(ValueError, match=r"optimizer.param_groups\[0\]\['lookahead_k'\] must be an int >= 1"):
        Lookahead(bad_group)
    assert "lookahead_alpha" not in bad_group.param_groups[0]


def test_bad_per_group_values_set_during_training_raise_at_step_and_change_nothing():
    problem = Problem(seed=14, steps=3)
    params = problem.params()
    opt = adapter_run(INNER["sgd-momentum"], params, problem, 4, 0.5, steps=2)
    for key, value, error in [("lookahead_k", 0, ValueError), ("lookahead_k", 2.0, TypeError),
                              ("lookahead_alpha", 2.0, ValueError), ("lookahead_alpha", "0.5", TypeError)]:
        good = opt.param_groups[0][key]
        opt.param_groups[0][key] = value
        problem.set_grads(params, 2)
        before = snapshot(opt)
        with pytest.raises(error, match=rf"param_groups\[0\]\['{key}'\]"):
            opt.step()
        assert_unchanged(before, opt)
        opt.param_groups[0][key] = good
    opt.step()
    assert opt.counts == (3,)


def test_bad_param_group_is_rejected_and_changes_nothing():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = Lookahead(torch.optim.SGD([w], lr=0.1), k=2)
    before = snapshot(opt)
    v = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"param_group\['lookahead_alpha'\] must be in \[0, 1\]"):
        opt.add_param_group({"params": [v], "lookahead_alpha": 2})
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [w]})
    with pytest.raises(ValueError, match="appears twice"), pytest.warns(UserWarning):
        opt.add_param_group({"params": [v, v]})
    assert len(opt.param_groups) == 1
    assert_unchanged(before, opt)


def test_a_parameter_cast_after_construction_is_a_clear_error_before_the_syncing_step():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = Lookahead(torch.optim.SGD([w], lr=0.1, momentum=0.9), k=2)
    w.grad = torch.ones(2)
    opt.step()  # not a sync step: no check, no cost
    w.data = w.data.double()  # what model.double() does to a Parameter
    w.grad = torch.ones(2, dtype=torch.float64)
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match="move or cast the model before building the optimizer"):
        opt.step()
    assert_unchanged(before, opt)  # raised before the inner step


def test_a_state_dict_round_trip_moves_lookahead_buffers_to_cast_parameters():
    """Accelerate's prepare() moves the model after the optimizer was built, then
    round-trips the optimizer's state dict: the slow weights (and the pullback copy)
    follow the parameters. Here the move is a cast to float64, on the CPU."""
    model = _mlp()
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=2, pullback="pullback")
    model.double()
    opt.load_state_dict(opt.state_dict())
    assert all(s.dtype == torch.float64 for s in flat_slow(opt))
    assert all(m.dtype == torch.float64 for m in opt._persistent_tensors())
    ref = _mlp().double()
    ref_opt = Lookahead(torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9), k=2, pullback="pullback")
    for step in range(5):
        x, y = _batch(step, torch.float64)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    assert_bit_identical(list(model.parameters()), list(ref.parameters()))
    assert_bit_identical(flat_slow(opt), flat_slow(ref_opt))


# --- the conformance kit's backends -------------------------------------------------------


def test_conformance_backend_torch_passes_every_check():
    from lookahead_conformance import CHECKS, load_backend, run_check

    backend = load_backend("torch")
    assert backend.skip_reason() is None
    for name in CHECKS:
        result = run_check(name, backend)
        assert result.passed, f"{name}: {result.detail}"


def test_conformance_runner_capabilities():
    import numpy as np
    from lookahead_torch._conformance import cpu_backend, cuda_backend

    assert cuda_backend.name == "torch-cuda"
    assert cuda_backend.skip_reason() == (None if torch.cuda.is_available() else "no CUDA device")
    spec = type("Spec", (), {"name": "sgd", "hyperparams": {"lr": 0.1, "momentum": 0.9}})()
    params = [np.ones(3, dtype=np.float32), np.zeros((2, 2), dtype=np.float32)]
    runner = cpu_backend.create(params, spec, 2, 0.5)
    assert runner.extra_state_bytes() == sum(p.nbytes for p in params)
    assert runner.aliases() is False and runner.device() == "cpu"
    runner.step_skipped([np.ones(3, np.float32), np.ones((2, 2), np.float32)])
    assert runner.optimizer.counts == (0,)
    runner.step([np.ones(3, np.float32), np.ones((2, 2), np.float32)])
    assert runner.optimizer.counts == (1,)


# --- CUDA ---------------------------------------------------------------------------------


@requires_cuda
def test_cuda_matches_cpu_and_keeps_everything_on_the_device():
    problem = Problem(seed=15, steps=23)
    cpu_params = problem.params()
    cpu = adapter_run(INNER["adam"], cpu_params, problem, 5, 0.5)
    cuda_params = problem.params("cuda")
    cuda = adapter_run(INNER["adam"], cuda_params, problem, 5, 0.5)
    assert all(s.is_cuda for s in flat_slow(cuda))
    assert all(t.is_cuda for s in cuda.optimizer.state.values() for k, t in s.items() if k != "step")
    for a, b in zip(cuda_params + flat_slow(cuda), cpu_params + flat_slow(cpu)):
        assert torch.allclose(a.cpu(), b, rtol=0, atol=1e-12)


@requires_cuda
def test_cuda_gradscaler_skip_and_bf16_slow_copy():
    _amp_run("cuda", inf_at={1, 4})
    torch.manual_seed(3)
    start = torch.randn(1000, device="cuda").bfloat16()
    grads = [[torch.randn(1000, device="cuda").bfloat16()] for _ in range(6)]
    w = torch.nn.Parameter(start.clone())
    opt = Lookahead(torch.optim.SGD([w], lr=0.1), k=2, alpha=0.3, slow_dtype=torch.float32)
    for g in grads:
        w.grad = g[0].clone()
        opt.step()
    ref_w = torch.nn.Parameter(start.clone())  # the reference on the same device: same inner kernels
    ref_slow = _mixed_reference([ref_w], grads, 2, 0.3, 0.1)
    assert flat_slow(opt)[0].is_cuda and flat_slow(opt)[0].dtype == torch.float32
    assert_bit_identical(flat_slow(opt), ref_slow)
    assert_bit_identical([w], [ref_w])
    with opt.slow_weights():
        assert torch.equal(w.detach(), flat_slow(opt)[0].bfloat16())


@requires_cuda
def test_cuda_accelerate_style_prepare_moves_the_slow_weights_to_the_device():
    """Optimizer built on the CPU, model moved to CUDA, state dict moved and loaded (what
    Accelerate's prepare() does): the run equals one built on CUDA from the start."""
    model = _mlp()
    opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=1e-2), k=3)
    model.cuda()

    def move(obj):
        if isinstance(obj, torch.Tensor):
            return obj.cuda()
        if isinstance(obj, dict):
            return {k: move(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [move(v) for v in obj]
        return obj

    opt.load_state_dict(move(opt.state_dict()))
    assert all(s.is_cuda for s in flat_slow(opt))
    ref = _mlp().cuda()
    ref_opt = Lookahead(torch.optim.AdamW(ref.parameters(), lr=1e-2), k=3)
    for step in range(7):
        x, y = _batch(step)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x.cuda()), y.cuda()).backward()
            o.step()
    assert_bit_identical(list(model.parameters()), list(ref.parameters()))
    assert_bit_identical(flat_slow(opt), flat_slow(ref_opt))


@requires_cuda
def test_cuda_conformance_backend_passes_every_check():
    from lookahead_conformance import CHECKS, load_backend, run_check

    backend = load_backend("torch-cuda")
    for name in CHECKS:
        result = run_check(name, backend)
        assert result.passed, f"{name}: {result.detail}"
