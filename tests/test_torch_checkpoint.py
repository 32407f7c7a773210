"""Checkpoints of ``lookahead_torch.Lookahead``: complete, bit-exact, all or nothing."""

from __future__ import annotations

import copy
import functools
import io

import pytest
from test_torch_support import (
    Problem,
    assert_bit_identical,
    assert_unchanged,
    bits,
    flat_slow,
    requires_cuda,
    snapshot,
)

torch = pytest.importorskip("torch", reason="torch not installed")

from lookahead_torch import Lookahead  # noqa: E402

K = 4
INNERS = {
    "sgd-momentum": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9),
    "adam": lambda groups: torch.optim.Adam(groups, lr=0.02),
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=0.02, weight_decay=0.1),
}


# How the sync is done: Algorithm 1's lerp with α, or an outer optimizer (SNOO/DiLoCo) whose
# state and hyperparameters the checkpoint must carry as well.
SYNCS = {
    "alpha": None,
    "outer-nesterov": functools.partial(torch.optim.SGD, lr=0.7, momentum=0.9, nesterov=True),
    "outer-adam": functools.partial(torch.optim.Adam, lr=0.05),
}


def _build(name, params, groups, sync="alpha", **options):
    outer = SYNCS[sync]
    if groups == 1:
        spec = [{"params": params}]
    else:  # two groups, the second with its own lr, k and α: off-boundary for one while on for the other
        spec = [{"params": params[:2]},
                {"params": params[2:], "lr": 0.01, "lookahead_k": 3,
                 **({"lookahead_alpha": 0.8} if outer is None else {})}]
    if outer is None:
        return Lookahead(INNERS[name](spec), k=K, alpha=0.5, **options)
    opt = Lookahead(INNERS[name](spec), k=K, outer=outer, **options)
    if groups == 2:  # the second outer group with its own learning rate (saved per group)
        opt.outer_optimizer.param_groups[1]["lr"] = 0.3
    return opt


def _save(opt, params) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": [p.detach() for p in params], "optimizer": opt.state_dict()}, buffer)
    return buffer.getvalue()


def _load(raw: bytes, opt, params, **kwargs) -> None:
    checkpoint = torch.load(io.BytesIO(raw), weights_only=True, **kwargs)
    with torch.no_grad():
        for p, value in zip(params, checkpoint["model"]):
            p.copy_(value)
    opt.load_state_dict(checkpoint["optimizer"])


@pytest.mark.parametrize("sync", list(SYNCS))
@pytest.mark.parametrize("saved_after", [0, K - 1, K, K + 1, 2 * K + 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("name", list(INNERS))
def test_bit_exact_resume_through_torch_save_and_load(name, groups, saved_after, sync):
    """Resume = uninterrupted run, bit for bit: on and off sync boundaries (both groups'
    k), 1 and 2 groups, SGD-momentum / Adam / AdamW, α or an outer optimizer, through
    torch.save/torch.load(weights_only)."""
    problem = Problem(seed=saved_after + 10 * groups, steps=saved_after + 9)
    straight_params = problem.params()
    straight = _build(name, straight_params, groups, sync)
    for step in range(problem.steps):
        problem.set_grads(straight_params, step)
        straight.step()

    first_params = problem.params()
    first = _build(name, first_params, groups, sync)
    for step in range(saved_after):
        problem.set_grads(first_params, step)
        first.step()
    raw = _save(first, first_params)

    resumed_params = Problem(seed=99, steps=1).params()  # other values: the checkpoint must set them
    resumed = _build(name, resumed_params, groups, sync)
    if SYNCS[sync] is not None and groups == 2:
        resumed.outer_optimizer.param_groups[1]["lr"] = 0.5  # the checkpoint must set it back
    _load(raw, resumed, resumed_params)
    assert resumed.counts == first.counts
    for step in range(saved_after, problem.steps):
        problem.set_grads(resumed_params, step)
        resumed.step()
    assert_bit_identical(resumed_params, straight_params)
    assert_bit_identical(flat_slow(resumed), flat_slow(straight))
    assert resumed.counts == straight.counts
    if SYNCS[sync] is not None:
        assert snapshot(resumed)["outer_state"].keys() == snapshot(straight)["outer_state"].keys()
        assert_unchanged({key: snapshot(straight)[key] for key in ("outer_state", "outer_groups")}, resumed)


def test_state_dict_layout():
    params = Problem(seed=1, steps=1).params()
    opt = _build("adam", params, 2, pullback="pullback")
    sd = opt.state_dict()
    # Everything is in the two parts torch's own checkpoint helpers carry.
    assert set(sd) == {"state", "param_groups"}
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    assert [(g["lookahead_k"], g["lookahead_alpha"], g["lookahead_count"], g["lookahead_rollbacks"])
            for g in sd["param_groups"]] == [(K, 0.5, 0, 0), (3, 0.8, 0, 0)]
    # the inner optimizer's live groups got no count
    assert all("lookahead_count" not in g for g in opt.optimizer.param_groups)
    for i, p in enumerate(params):
        assert set(sd["state"][i]) == {"lookahead_slow", "lookahead_momentum"}  # Adam's state is lazy
        assert torch.equal(sd["state"][i]["lookahead_slow"], p.detach())
    # the inner optimizer's own state dicts got no Lookahead keys
    assert all("lookahead_slow" not in s for s in opt.optimizer.state.values())


@pytest.mark.parametrize("sync", list(SYNCS))
def test_round_trip_right_after_construction_as_accelerate_does(sync):
    """Accelerate's prepare(): state_dict, move every tensor to the device, load_state_dict,
    before any step. Training afterwards is unchanged, bit for bit."""
    problem = Problem(seed=2, steps=11)
    plain_params = problem.params()
    plain = _build("adamw", plain_params, 2, sync)
    prepared_params = problem.params()
    prepared = _build("adamw", prepared_params, 2, sync)

    def move(obj):
        if isinstance(obj, torch.Tensor):
            return obj.to("cpu")
        if isinstance(obj, dict):
            return {k: move(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [move(v) for v in obj]
        return obj

    prepared.load_state_dict(move(prepared.state_dict()))
    for step in range(problem.steps):
        problem.set_grads(plain_params, step)
        problem.set_grads(prepared_params, step)
        plain.step()
        prepared.step()
    assert_bit_identical(prepared_params, plain_params)
    assert_bit_identical(flat_slow(prepared), flat_slow(plain))


@pytest.mark.parametrize("sync", list(SYNCS))
def test_load_never_mutates_or_shares_the_callers_dict(sync):
    problem = Problem(seed=3, steps=7)
    params = problem.params()
    policy = {"pullback": "pullback"} if SYNCS[sync] is None else {"pullback": "reset"}
    opt = _build("sgd-momentum", params, 1, sync, **policy)
    for step in range(6):
        problem.set_grads(params, step)
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    reference = copy.deepcopy(sd)
    other_params = problem.params()
    other = _build("sgd-momentum", other_params, 1, sync, **policy)
    other.load_state_dict(sd)
    for step in range(6):  # steps that update every tensor the optimizer holds
        problem.set_grads(other_params, step)
        other.step()

    def walk(a, b):
        if isinstance(a, torch.Tensor):
            assert bits(a) == bits(b)
        elif isinstance(a, dict):
            assert a.keys() == b.keys()
            for key in a:
                walk(a[key], b[key])
        elif isinstance(a, list):
            assert len(a) == len(b)
            for x, y in zip(a, b):
                walk(x, y)
        else:
            assert a == b

    walk(sd, reference)
    caller = {t.data_ptr() for entry in sd["state"].values() for t in entry.values()
              if isinstance(t, torch.Tensor)}
    held = {t.data_ptr() for t in flat_slow(other)}
    held |= {t.data_ptr() for s in other.optimizer.state.values() for t in s.values()
             if isinstance(t, torch.Tensor)}
    if other.outer_optimizer is not None:
        held |= {t.data_ptr() for s in other.outer_optimizer.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor)}
        assert any(key.startswith("lookahead_outer_") for entry in sd["state"].values() for key in entry)
    assert not caller & held


def _plain_sgd_run(problem, steps):
    params = problem.params()
    sgd = INNERS["sgd-momentum"]([{"params": params}])
    for step in range(steps):
        problem.set_grads(params, step)
        sgd.step()
    return [p.detach().clone() for p in params], copy.deepcopy(sgd.state_dict())


def test_plain_inner_checkpoint_loads_and_slow_weights_start_from_the_params():
    """A run without Lookahead saved its model and SGD state; resuming it with Lookahead
    starts the slow weights from the loaded params and keeps the inner momentum: from
    there on it is a fresh Lookahead around the loaded SGD."""
    problem = Problem(seed=4, steps=12)
    model_sd, plain_sd = _plain_sgd_run(problem, 5)

    params = problem.params()
    opt = _build("sgd-momentum", params, 1)
    opt.param_groups[0]["lookahead_k"] = 3  # a plain checkpoint keeps the group's settings
    with torch.no_grad():
        for p, value in zip(params, model_sd):
            p.copy_(value)
    opt.load_state_dict(plain_sd)
    assert_bit_identical(flat_slow(opt), model_sd)
    assert opt.counts == (0,)
    assert opt.param_groups[0]["lookahead_k"] == 3
    assert_bit_identical([opt.optimizer.state[p]["momentum_buffer"] for p in params],
                         [plain_sd["state"][i]["momentum_buffer"] for i in range(len(params))])

    expected_params = [v.clone().requires_grad_() for v in model_sd]
    expected_inner = INNERS["sgd-momentum"]([{"params": expected_params}])
    expected_inner.load_state_dict(plain_sd)
    expected = Lookahead(expected_inner, k=3, alpha=0.5)
    for step in range(5, 12):
        problem.set_grads(params, step)
        problem.set_grads(expected_params, step)
        opt.step()
        expected.step()
    assert_bit_identical(params, expected_params)
    assert_bit_identical(flat_slow(opt), flat_slow(expected))


def test_plain_inner_checkpoint_restarts_the_pullback_momentum_copy_from_the_loaded_momentum():
    problem = Problem(seed=4, steps=5)
    model_sd, plain_sd = _plain_sgd_run(problem, 5)
    params = problem.params()
    opt = _build("sgd-momentum", params, 1, pullback="pullback")
    opt.load_state_dict(plain_sd)
    saved = opt.state_dict()["state"]
    for i in range(len(params)):
        assert bits(saved[i]["lookahead_momentum"]) == bits(plain_sd["state"][i]["momentum_buffer"])
        assert torch.count_nonzero(saved[i]["lookahead_momentum"]) > 0


@pytest.mark.parametrize("sync", list(SYNCS))
def test_load_casts_to_each_parameters_dtype(sync):
    """A float64 checkpoint loads into a float32 model: values rounded, dtypes kept."""
    problem = Problem(seed=5, steps=K + 1)
    params64 = problem.params()
    opt64 = _build("adam", params64, 1, sync)
    for step in range(K + 1):  # a sync: the outer state exists
        problem.set_grads(params64, step)
        opt64.step()
    params32 = [torch.nn.Parameter(p.detach().float()) for p in params64]
    opt32 = _build("adam", params32, 1, sync)
    opt32.load_state_dict(opt64.state_dict())
    for s32, s64 in zip(flat_slow(opt32), flat_slow(opt64)):
        assert s32.dtype == torch.float32
        assert torch.equal(s32, s64.float())
    for p32, p64 in zip(params32, params64):
        assert opt32.optimizer.state[p32]["exp_avg"].dtype == torch.float32
        m32, m64 = opt32.optimizer.state[p32]["exp_avg"], opt64.optimizer.state[p64]["exp_avg"]
        assert torch.equal(m32, m64.float())
    if SYNCS[sync] is not None:
        key = "momentum_buffer" if sync == "outer-nesterov" else "exp_avg"
        for s32, s64 in zip(flat_slow(opt32), flat_slow(opt64)):
            o32, o64 = opt32.outer_optimizer.state[s32][key], opt64.outer_optimizer.state[s64][key]
            assert o32.dtype == torch.float32 and torch.equal(o32, o64.float())


@pytest.mark.parametrize("sync", list(SYNCS))
def test_slow_dtype_checkpoint_keeps_the_float32_copy(sync):
    sync_option = {"alpha": 0.5} if SYNCS[sync] is None else {"outer": SYNCS[sync]}
    params = [torch.nn.Parameter(torch.randn(5, dtype=torch.bfloat16))]
    opt = Lookahead(torch.optim.SGD(params, lr=0.01), k=2, slow_dtype=torch.float32, **sync_option)
    for _ in range(3):
        params[0].grad = torch.randn(5, dtype=torch.bfloat16)
        opt.step()
    raw = _save(opt, params)
    fresh = [torch.nn.Parameter(torch.zeros(5, dtype=torch.bfloat16))]
    loaded = Lookahead(torch.optim.SGD(fresh, lr=0.01), k=2, slow_dtype=torch.float32, **sync_option)
    _load(raw, loaded, fresh)
    assert flat_slow(loaded)[0].dtype == torch.float32
    assert_bit_identical(flat_slow(loaded), flat_slow(opt))
    if SYNCS[sync] is not None:
        (entry,) = loaded.outer_optimizer.state.values()
        assert all(v.dtype == torch.float32 for k, v in entry.items() if k != "step")
        assert_unchanged({"outer_state": snapshot(opt)["outer_state"]}, loaded)


# --- bad checkpoints: a clear error and nothing changed -------------------------------------


def _trained(pullback="none", sync="alpha"):
    problem = Problem(seed=6, steps=6)
    params = problem.params()
    opt = _build("adam", params, 2, sync, pullback=pullback)
    for step in range(6):
        problem.set_grads(params, step)
        opt.step()
    return opt


def _edit(path, value):
    """A function that returns a deep copy of a state dict with ``path`` set to ``value``."""
    def apply(sd):
        sd = copy.deepcopy(sd)
        node = sd
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value(node[path[-1]]) if callable(value) else value
        return sd
    return apply


_DELETE = object()


def _legacy(edit):
    """``edit`` applied to the state dict rewritten as version 0.1.0 wrote it (a "lookahead" section)."""
    def apply(sd):
        sd = copy.deepcopy(sd)
        rollbacks = sum(g.pop("lookahead_rollbacks") for g in sd["param_groups"])
        sd["lookahead"] = {"format": 1, "k": K, "alpha": 0.5, "pullback": "none", "rollbacks": rollbacks}
        return edit(sd)
    return apply

BAD_CHECKPOINTS = {
    "slow weights of the wrong shape": (
        _edit(("state", 1, "lookahead_slow"), lambda t: torch.zeros(7, dtype=t.dtype)),
        ValueError, r"\['lookahead_slow'\] must have the parameter's shape \(5,\)"),
    "slow weights of an integer dtype": (
        _edit(("state", 0, "lookahead_slow"), lambda t: t.long()),
        TypeError, "must have a floating point dtype"),
    "slow weights not a tensor": (
        _edit(("state", 2, "lookahead_slow"), [1.0, 2.0]), TypeError, "must be a torch.Tensor"),
    "slow weights missing": (
        _edit(("state", 3, "lookahead_slow"), _DELETE), ValueError, "missing 'lookahead_slow'"),
    "inner moment of the wrong shape": (
        _edit(("state", 0, "exp_avg"), lambda t: torch.zeros(3, 3, dtype=t.dtype)),
        ValueError, r"\['exp_avg'\] must have the parameter's shape \(4, 3\)"),
    "a group too many": (
        lambda sd: {**copy.deepcopy(sd), "param_groups": copy.deepcopy(sd["param_groups"]) * 2},
        ValueError, "has 4 groups, this optimizer has 2"),
    "a group with a parameter too few": (
        _edit(("param_groups", 1, "params"), [2]), ValueError, "has 1 parameters"),
    "a count outside [0, k)": (
        _edit(("param_groups", 0, "lookahead_count"), K), ValueError, r"must be an int in \[0, 4\)"),
    "a count of the wrong type": (
        _edit(("param_groups", 1, "lookahead_count"), 1.5), TypeError, "lookahead_count"),
    "a bad per-group k": (
        _edit(("param_groups", 1, "lookahead_k"), 0), ValueError, r"\['lookahead_k'\] must be an int >= 1"),
    "a bad per-group alpha": (
        _edit(("param_groups", 0, "lookahead_alpha"), 1.5),
        ValueError, r"\['lookahead_alpha'\] must be in \[0, 1\]"),
    "a bad default k (0.1.0 format)": (
        _legacy(_edit(("lookahead", "k"), True)), TypeError, r"\['lookahead'\]\['k'\] must be an int >= 1"),
    "a bad default alpha (0.1.0 format)": (
        _legacy(_edit(("lookahead", "alpha"), float("nan"))), ValueError, "must be finite"),
    "another pullback mode (0.1.0 format)": (
        _legacy(_edit(("lookahead", "pullback"), "reset")), ValueError, "pullback"),
    "an unknown format (0.1.0 format)": (
        _legacy(_edit(("lookahead", "format"), 2)), ValueError, r"\['format'\] must be 1"),
    "a negative rollback counter (0.1.0 format)": (
        _legacy(_edit(("lookahead", "rollbacks"), -1)), ValueError, "rollbacks"),
    "a negative rollback counter": (
        _edit(("param_groups", 1, "lookahead_rollbacks"), -1), ValueError, "lookahead_rollbacks"),
    "a rollback counter missing": (
        _edit(("param_groups", 0, "lookahead_rollbacks"), _DELETE), ValueError,
        "missing 'lookahead_rollbacks'"),
    "a count missing in one group": (
        _edit(("param_groups", 1, "lookahead_count"), _DELETE), ValueError, "missing 'lookahead_count'"),
    "an unexpected top-level key": (
        lambda sd: {**sd, "surprise": 1}, ValueError, "unexpected \\['surprise'\\]"),
    "no state key": (
        lambda sd: {k: v for k, v in sd.items() if k != "state"}, ValueError, "missing \\['state'\\]"),
    "state for an unknown parameter": (
        _edit(("state", 17), {"step": torch.tensor(1.0)}), ValueError, "parameter ids \\[17\\]"),
    "slow weights without the groups' counts": (
        lambda sd: {**sd, "param_groups": [{k: v for k, v in g.items() if k != "lookahead_count"}
                                           for g in sd["param_groups"]]},
        ValueError, "'lookahead_k' but no 'lookahead_count'"),
    "not a dict": (lambda sd: [sd], TypeError, "state_dict must be a dict"),
}


def _alpha_only(case: str) -> bool:
    """Cases about α or the 0.1.0 format, which a Lookahead with an outer optimizer never had."""
    return "alpha" in case or "0.1.0" in case


@pytest.mark.parametrize("case, sync", [(case, sync) for sync in SYNCS for case in BAD_CHECKPOINTS
                                         if SYNCS[sync] is None or not _alpha_only(case)])
def test_bad_checkpoint_is_rejected_and_changes_nothing(case, sync):
    make, error, message = BAD_CHECKPOINTS[case]
    good = _trained(sync=sync)
    bad = make(good.state_dict())
    opt = _trained(sync=sync)
    # move opt away from the checkpoint so a partial load would show
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    before = snapshot(opt)
    with pytest.raises(error, match=message):
        opt.load_state_dict(bad)
    assert_unchanged(before, opt)
    opt.load_state_dict(good.state_dict())  # and the good one still loads
    assert_bit_identical(flat_slow(opt), flat_slow(good))


def test_pullback_checkpoint_into_a_plain_lookahead_is_rejected():
    sd = _trained(pullback="pullback").state_dict()
    opt = _trained()
    before = snapshot(opt)
    with pytest.raises(ValueError, match="pullback"):
        opt.load_state_dict(sd)
    assert_unchanged(before, opt)


def test_an_inner_load_that_fails_leaves_lookahead_unchanged_too():
    """Lookahead commits its part only after the inner optimizer's load succeeded."""
    sd = _trained().state_dict()
    opt = _trained()
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()

    def refuse(optimizer, state_dict):
        raise ValueError("the inner optimizer refuses this checkpoint")

    opt.optimizer.register_load_state_dict_pre_hook(refuse)
    before = snapshot(opt)
    with pytest.raises(ValueError, match="refuses"):
        opt.load_state_dict(sd)
    assert_unchanged(before, opt)


# --- CUDA: device placement and map_location -----------------------------------------------


@requires_cuda
def test_cuda_slow_weights_live_on_the_parameters_device():
    params = Problem(seed=7, steps=1).params("cuda")
    opt = _build("adam", params, 2)
    assert all(s.device == p.device for s, p in zip(flat_slow(opt), params))


@requires_cuda
@pytest.mark.parametrize("sync", list(SYNCS))
@pytest.mark.parametrize("direction", ["cpu->cuda", "cuda->cpu"])
@pytest.mark.parametrize("map_location", [True, False])
def test_cuda_checkpoints_move_between_devices(direction, map_location, sync):
    """A checkpoint saved on one device resumes on the other, bit for bit against a run
    that stayed there, with or without ``map_location`` (load casts to each param's device)."""
    source, target = direction.split("->")
    problem = Problem(seed=8, steps=12)
    first_params = problem.params(source)
    first = _build("sgd-momentum", first_params, 2, sync)
    for step in range(5):
        problem.set_grads(first_params, step)
        first.step()
    raw = _save(first, first_params)
    resumed_params = problem.params(target)
    resumed = _build("sgd-momentum", resumed_params, 2, sync)
    _load(raw, resumed, resumed_params, **({"map_location": target} if map_location else {}))
    assert all(s.device == p.device for s, p in zip(flat_slow(resumed), resumed_params))
    state = resumed.optimizer.state[resumed_params[0]]["momentum_buffer"]
    assert state.device == resumed_params[0].device
    assert_bit_identical(flat_slow(resumed), flat_slow(first))
    if SYNCS[sync] is not None:
        outer_state = resumed.outer_optimizer.state
        assert outer_state and all(v.device == resumed_params[0].device for entry in outer_state.values()
                                   for key, v in entry.items() if key != "step")
        assert_unchanged({"outer_state": snapshot(first)["outer_state"]}, resumed)
