"""``Lookahead(..., process_group=...)``: Local SGD / DiLoCo data parallelism on gloo.

Launches of gloo ranks on 127.0.0.1 (``distributed_workers.launch``;
scenarios in ``local_sgd_workers``): the main one on two ranks (about 10 s
here), the failure one on two ranks (about 10 s; its process groups time out
after 3 s), and FSDP2 within replicas on four (2 replicas x 2 shards, about
16 s). The tests
compare the ranks' records with

- `simulate`: N workers written here in plain torch (no ``lookahead_torch``):
  each its own model copy and inner ``torch.optim`` optimizer on its rows of
  the batch, and every k steps the mean of the workers' weights, then
  Algorithm 1's lerp or a hand-written outer SGD with Nesterov momentum;
- each other: bit for bit (φ, and θ after a sync);
- DDP (k = 1, α = 1, plain SGD): to rounding (the mean of the workers'
  updated weights against the update with the mean gradient).

Tolerance against `simulate`: the same operations on the same rows, except
that the sum over the ranks is gloo's; ``8 * steps * eps`` of each tensor's
largest magnitude, as in ``test_distributed.py`` (measured here: exact for the
lerp configurations; 2.2e-16 for DiLoCo, whose outer step torch computes as
``p.add_(grad.add(buf, alpha=μ), alpha=-lr)``, fused differently from the
hand-written one).

Run alone: ``.venv/bin/python -m pytest tests/test_local_sgd.py -v``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch not installed")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo not available", allow_module_level=True)

import distributed_workers as W  # noqa: E402
import local_sgd_workers as L  # noqa: E402

from lookahead_torch import Lookahead  # noqa: E402

LAUNCH_TIMEOUT_S = 60.0
EPS64 = torch.finfo(torch.float64).eps
N = W.WORLD_SIZE


class Launch:
    def __init__(self, outdir: Path, codes: dict[int, int | None]) -> None:
        self.outdir = outdir
        self.codes = codes

    def __call__(self, name: str) -> list[dict[str, Any]]:
        records = []
        for rank in range(N):
            path = self.outdir / f"{name}.rank{rank}.pt"
            if not path.exists():
                errors = [p.read_text() for p in self.outdir.glob(f"*{name}.rank*.error")]
                logs = [p.read_text()[-3000:] for p in sorted(self.outdir.glob("rank*.log"))]
                pytest.fail(f"{name!r} left no record on rank {rank}; exit codes {self.codes}\n"
                            + "\n".join(errors + logs), pytrace=False)
            records.append(torch.load(path, weights_only=True))
        return records


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Launch:
    outdir = tmp_path_factory.mktemp("local_sgd")
    L.write_one_process_checkpoint(outdir)
    return Launch(outdir, W.launch(outdir, L.SCENARIOS, timeout_s=LAUNCH_TIMEOUT_S))


@pytest.fixture(scope="module")
def hsdp(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    outdir = tmp_path_factory.mktemp("local_sgd_hsdp")
    launch = Launch(outdir, W.launch(outdir, L.HSDP_SCENARIOS, world_size=L.HSDP_WORLD,
                                     timeout_s=LAUNCH_TIMEOUT_S))
    records = [torch.load(outdir / f"hsdp.rank{rank}.pt", weights_only=True)
               if (outdir / f"hsdp.rank{rank}.pt").exists() else launch("hsdp") for rank in range(L.HSDP_WORLD)]
    assert launch.codes == dict.fromkeys(range(L.HSDP_WORLD), 0)
    return records


@pytest.fixture(scope="module")
def failure(tmp_path_factory: pytest.TempPathFactory) -> Launch:
    outdir = tmp_path_factory.mktemp("local_sgd_failure")
    return Launch(outdir, W.launch(outdir, L.FAILURE_SCENARIOS, timeout_s=LAUNCH_TIMEOUT_S))


# -- the oracle: N workers in one process, plain torch -----------------------------------


def simulate(config: dict[str, Any], steps: range, n: int = N, start: dict[str, Any] | None = None,
             dtype: torch.dtype = torch.float64) -> dict[str, list]:
    """Local SGD / Lookahead averaging / DiLoCo with n workers; per step each worker's θ and φ.

    ``start``: resume from ``{"model", "inner": [per worker], "slow", "outer_momentum"}``.
    """
    models = [W.make_model().to(dtype) for _ in range(n)]
    opts = [W.INNER[config["inner"]](m.parameters()) for m in models]
    slow = [p.detach().clone() for p in models[0].parameters()]  # φ₀ ← θ₀
    momentum: list[torch.Tensor] | None = None
    if start is not None:
        for r, (m, o) in enumerate(zip(models, opts)):
            m.load_state_dict(start["model"])
            o.load_state_dict(start["inner"][r])
        slow = [s.clone() for s in start["slow"]]
        momentum = None if start.get("outer_momentum") is None else [b.clone() for b in start["outer_momentum"]]
    mu, lr = W.OUTER_MOMENTUM, W.OUTER_LR
    fast_per_step, slow_per_step = [], []
    executed = 0
    for step in steps:
        x, y = W.global_batch(step)
        for r, (m, o) in enumerate(zip(models, opts)):
            o.zero_grad()
            W.loss_fn(m(W.rank_rows(x, r, n).to(dtype)), W.rank_rows(y, r, n).to(dtype)).backward()
            o.step()
        executed += 1
        if executed % config["k"] == 0:
            with torch.no_grad():
                workers = [list(m.parameters()) for m in models]
                reduce_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
                mean = []
                for tensors in zip(*workers):
                    total = tensors[0].to(reduce_dtype).clone()
                    for t in tensors[1:]:
                        total += t.to(reduce_dtype)
                    mean.append((total / n).to(dtype))
                if config.get("outer"):
                    deltas = [s - m for s, m in zip(slow, mean)]  # Δ = φ − θ̄
                    if momentum is None:
                        momentum = [d.clone() for d in deltas]
                    else:
                        momentum = [mu * b + d for b, d in zip(momentum, deltas)]
                    slow = [s - lr * (d + mu * b) for s, d, b in zip(slow, deltas, momentum)]
                else:
                    slow = [torch.lerp(s, m, config["alpha"]) for s, m in zip(slow, mean)]
                for ps in workers:
                    for p, s in zip(ps, slow):
                        p.copy_(s)
        fast_per_step.append([[p.detach().clone() for p in m.parameters()] for m in models])
        slow_per_step.append([s.clone() for s in slow])
    return {"fast": fast_per_step, "slow": slow_per_step, "momentum": momentum}


def assert_close(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], steps: int,
                 eps: float = EPS64) -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape and a.dtype == e.dtype, i
        scale = max(float(e.detach().abs().max()), 1.0)
        error = float((a.detach().double() - e.detach().double()).abs().max())
        assert error <= 8 * steps * eps * scale, f"tensor {i}: {error:.3e} > {8 * steps * eps * scale:.3e}"


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(-1).view(torch.uint8)


def identical(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    """Bit for bit (same dtypes and shapes, same bytes)."""
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(_bits(x), _bits(y)) for x, y in zip(a, b))


def sync_steps(k: int, steps: int = L.STEPS) -> list[int]:
    return [s for s in range(steps) if (s + 1) % k == 0]


def param_bytes(dtype: torch.dtype = torch.float64) -> int:
    return sum(p.numel() for p in W.make_model().parameters()) * torch.empty((), dtype=dtype).element_size()


# -- every rank ran, on loopback only ----------------------------------------------------


def test_every_scenario_ran_on_both_ranks_and_they_exited_cleanly(ranks):
    for name in ("ddp_k1", "configs", "bf16", "rollback", "checkpoint", "from_one_process", "refusals",
                 "buckets"):
        ranks(name)
    assert ranks.codes == {0: 0, 1: 0}


def test_ranks_listen_on_loopback_only(ranks, hsdp):
    for record in ranks("ddp_k1") + hsdp:
        assert record["listening"], "no listening socket found (gloo listens for its peers)"
        assert all(address.startswith("127.0.0.1:") for address in record["listening"]), record["listening"]


# -- against DDP -------------------------------------------------------------------------


def test_k1_alpha1_sgd_equals_ddp_s_averaged_gradient_step_and_sends_the_same_bytes(ranks):
    records = ranks("ddp_k1")
    for rank in records:
        for ours, ddp in zip(rank["ours"], rank["ddp"]):
            assert_close(ours, ddp, steps=L.STEPS)
    for step in range(L.STEPS):  # replicas bit-identical after every step (each a sync)
        assert identical(records[0]["ours"][step], records[1]["ours"][step])
    p_bytes = records[0]["numel"] * 8
    for step, (ours, ddp) in enumerate(zip(records[0]["ours_wire"], records[0]["ddp_wire"])):
        assert ddp["bucket_bytes"] == p_bytes  # DDP: P bytes in one bucket at every step
        # (DDP's second iteration also rebuilds its buckets: two small collectives more, once)
        assert ddp["sequence"] == (3 if step == 1 else 1)
        assert ours["calls"] == [("all_reduce", p_bytes)] and ours["sequence"] == 1


# -- against the N-worker simulation -----------------------------------------------------


@pytest.mark.parametrize("name", list(L.CONFIGS))
def test_ranks_equal_a_simulation_of_n_workers_and_are_bit_identical_after_every_sync(ranks, name):
    config = L.CONFIGS[name]
    records = [r[name] for r in ranks("configs")]
    expected = simulate(config, range(L.STEPS))
    for rank, record in enumerate(records):
        # The construction broadcast rank 0's weights (rank 1 started perturbed).
        assert identical(record["initial"], list(W.make_model().parameters()))
        for step in range(L.STEPS):
            assert_close(record["fast"][step], expected["fast"][step][rank], steps=step + 1)
            assert_close(record["slow"][step], expected["slow"][step], steps=step + 1)
    syncs = sync_steps(config["k"])
    for step in range(L.STEPS):
        assert identical(records[0]["slow"][step], records[1]["slow"][step])
        if step in syncs:
            assert identical(records[0]["fast"][step], records[1]["fast"][step])
            assert identical(records[0]["fast"][step], records[0]["slow"][step])
        else:  # between syncs each rank trained on its own rows, without communication
            assert not identical(records[0]["fast"][step], records[1]["fast"][step])
    if config.get("outer"):
        assert identical(records[0]["outer_momentum"], records[1]["outer_momentum"])
        assert_close(records[0]["outer_momentum"], expected["momentum"], steps=L.STEPS)


@pytest.mark.parametrize("name", list(L.CONFIGS))
def test_one_all_reduce_of_p_bytes_per_sync_and_nothing_between(ranks, name):
    """Bytes per optimizer step: P/k, against DDP's P (test above); construction: one broadcast of P."""
    config = L.CONFIGS[name]
    p_bytes = param_bytes()
    for record in (r[name] for r in ranks("configs")):
        assert record["construction"]["calls"] == [("broadcast", p_bytes)]
        assert record["construction"]["sequence"] == 1
        for step, wire in enumerate(record["wire"]):
            if step in sync_steps(config["k"]):
                assert wire["calls"] == [("all_reduce", p_bytes)] and wire["sequence"] == 1
            else:
                assert wire["calls"] == [] and wire["sequence"] == 0
        total = sum(wire["bytes"] for wire in record["wire"])
        assert total == p_bytes * (L.STEPS // config["k"])  # P/k per step over whole cycles


def test_slow_weights_swap_holds_phi_identical_on_every_rank_without_communication(ranks):
    for name in L.CONFIGS:
        records = [r[name] for r in ranks("configs")]
        for step in range(L.STEPS):
            swapped = [record["swapped"][step] for record in records]
            assert all(int(s[-1]) == 0 for s in swapped)  # no collective, no wrapped call
            assert identical(swapped[0][:-1], records[0]["slow"][step])
            assert identical(swapped[0][:-1], swapped[1][:-1])


def test_bfloat16_parameters_are_averaged_in_float32_and_stay_identical(ranks):
    records = ranks("bf16")
    numel = records[0]["numel"]
    config = {"inner": "sgd", "k": 2, "alpha": L.ALPHA}
    expected = simulate(config, range(4), dtype=torch.bfloat16)
    for rank, record in enumerate(records):
        for step, wire in enumerate(record["wire"]):
            assert wire["calls"] == ([("all_reduce", 4 * numel)] if step in (1, 3) else [])
            eps = torch.finfo(torch.bfloat16).eps
            assert_close(record["fast"][step], expected["fast"][step][rank], steps=1, eps=eps)
            assert_close(record["slow"][step], expected["slow"][step], steps=1, eps=eps)
    for step in (1, 3):
        assert identical(records[0]["fast"][step], records[1]["fast"][step])
        assert identical(records[0]["slow"][step], records[1]["slow"][step])


def test_mixed_dtypes_in_small_buckets_average_to_the_mean_of_the_ranks(ranks):
    """Buckets of one reduce dtype, at most 256 B unless one tensor is larger: each parameter gets
    the mean of the two ranks' values, summed in float32 for 16-bit ones, rounded once."""
    records = ranks("buckets")
    values = [L.bucket_values(rank) for rank in range(N)]
    expected = []
    for (_, dtype), a, b in zip(L.BUCKET_SHAPES, *values):
        wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        expected.append(((a.to(wide) + b.to(wide)) / N).to(dtype))
    for record in records:
        assert identical(record["after"], expected)
        assert identical(record["slow"], expected)  # alpha = 1: φ is the mean too
        calls = record["wire"]["calls"]
        reduced = [n * (8 if dtype == torch.float64 else 4) for n, dtype in L.BUCKET_SHAPES]
        assert all(name == "all_reduce" for name, _ in calls)
        assert sum(size for _, size in calls) == sum(reduced)
        # float64: 400 B, then 320 B (each over 256 B alone); float32: 120 + 80 (bfloat16) + 40 B,
        # then float16's 256 B: four buckets, by hand, issued as they fill (full ones first)
        assert [size for _, size in calls] == [400, 240, 320, 256]
        assert record["wire"]["sequence"] == 4
        assert all(size <= max(L.SMALL_BUCKET_BYTES, max(reduced)) for _, size in calls)


def test_a_blow_up_on_one_rank_rolls_every_rank_back_in_the_same_all_reduce(ranks):
    records = ranks("rollback")
    for record in records:
        assert record["rollbacks"] == 1 and record["counts"] == (0,)
        assert identical(record["slow"], record["slow_before"])  # φ kept
        assert identical(record["fast"], record["slow"])  # θ ← φ
        assert record["momentum_empty"]  # the inner state restarted, on the healthy rank too
        assert record["sequence"][-1] == 1  # the agreement rode in the sync's all-reduce
    assert identical(records[0]["fast"], records[1]["fast"])


# -- checkpoints ---------------------------------------------------------------------------


def test_every_rank_saves_its_own_checkpoint_and_resumes_bit_exactly(ranks):
    for record in ranks("checkpoint"):
        assert record["counts_at_sync_file"] == 0
        for at in (L.SAVE_MID, L.SAVE_SYNC):
            resumed, uninterrupted = record["resumed"][at], record["uninterrupted"]
            assert resumed["counts"] == uninterrupted["counts"]
            assert identical(resumed["fast"], uninterrupted["fast"])
            assert identical(resumed["slow"], uninterrupted["slow"])
            for a, b in zip(resumed["outer"], uninterrupted["outer"]):
                assert a.keys() == b.keys()
                assert identical([v for v in a.values() if isinstance(v, torch.Tensor)],
                                 [v for v in b.values() if isinstance(v, torch.Tensor)])
            for a, b in zip(resumed["inner"], uninterrupted["inner"]):
                assert a.keys() == b.keys()
                assert identical([v for v in a.values() if isinstance(v, torch.Tensor)],
                                 [v for v in b.values() if isinstance(v, torch.Tensor)])


def test_checkpoints_of_different_steps_on_the_ranks_are_refused_on_every_rank(ranks):
    for record in ranks("checkpoint"):
        assert "loaded checkpoints at different points of the cycle" in record["mixed_error"]
        assert "from [0] to [1]" in record["mixed_error"]
        assert record["mixed_unchanged"]


def _start_from(saved: dict[str, Any], workers: int) -> dict[str, Any]:
    """A simulation's start from a Lookahead checkpoint: every worker takes the saved inner state."""
    optim = saved["optim"]
    inner_state = {i: {key: value for key, value in entry.items() if not key.startswith("lookahead_")}
                   for i, entry in optim["state"].items()}
    inner_groups = [{key: value for key, value in group.items() if not key.startswith("lookahead_")}
                    for group in optim["param_groups"]]
    order = optim["param_groups"][0]["params"]
    return {
        "model": saved["model"],
        "inner": [copy.deepcopy({"state": inner_state, "param_groups": inner_groups}) for _ in range(workers)],
        "slow": [optim["state"][i]["lookahead_slow"] for i in order],
        "outer_momentum": [optim["state"][i]["lookahead_outer_momentum_buffer"] for i in order],
    }


def test_a_checkpoint_of_two_ranks_resumes_in_one_process_after_a_sync(ranks):
    """2 -> 1 ranks, right after a sync (θ, φ and the outer state are the same on every rank; the
    inner state is rank 0's): the one process continues as a single worker."""
    ranks("checkpoint")
    saved = torch.load(ranks.outdir / f"local_sgd_at{L.SAVE_SYNC}.rank0.ckpt", weights_only=True)
    model = W.make_model()
    opt = Lookahead(W.INNER["adam"](model.parameters()), k=L.K, outer=W.make_outer)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optim"])
    expected = simulate(L.CONFIGS["diloco"], range(L.SAVE_SYNC, L.STEPS), n=1, start=_start_from(saved, 1))
    for i, step in enumerate(range(L.SAVE_SYNC, L.STEPS)):
        x, y = W.global_batch(step)
        opt.zero_grad()
        W.loss_fn(model(x), y).backward()
        opt.step()
        assert_close(list(model.parameters()), expected["fast"][i][0], steps=i + 1)
        assert_close(list(opt.slow[0]), expected["slow"][i], steps=i + 1)


def test_a_checkpoint_of_one_process_resumes_on_two_ranks(ranks):
    """1 -> 2 ranks: both load the same file (saved after a sync) and train as two workers from it."""
    records = ranks("from_one_process")
    saved = torch.load(ranks.outdir / "one_process.ckpt", weights_only=True)
    expected = simulate(L.CONFIGS["diloco"], range(L.SAVE_SYNC, L.STEPS), start=_start_from(saved, N))
    for rank, record in enumerate(records):
        for i in range(L.STEPS - L.SAVE_SYNC):
            assert_close(record["fast"][i], expected["fast"][i][rank], steps=i + 1)
            assert_close(record["slow"][i], expected["slow"][i], steps=i + 1)
    assert identical(records[0]["slow"][-1], records[1]["slow"][-1])


# -- FSDP2 within replicas (HSDP's layout) ------------------------------------------------


@pytest.mark.parametrize("name", ["lookahead", "diloco"])
def test_fsdp2_within_replicas_averages_shards_across_replicas_like_n_workers(hsdp, name):
    config = {"inner": "sgd-nesterov", "k": L.K, **({"outer": True} if name == "diloco" else {"alpha": L.ALPHA})}
    expected = simulate(config, range(L.STEPS))  # two workers: the two replicas, each on half the batch
    for record in hsdp:
        run = record[name]
        for step in range(L.STEPS):
            # FSDP2 averages the two quarters' gradients of a replica, the simulation takes the
            # half's mean gradient: the DDP tolerance.
            assert_close(run["fast"][step], expected["fast"][step][record["replica"]], steps=step + 1)
            assert_close(run["slow"][step], expected["slow"][step], steps=step + 1)
            # each rank all-reduces its own shard (P/2 here) once per sync, nothing between
            shard_bytes = run["local_numel"] * 8
            assert run["wire"][step] == ([("all_reduce", shard_bytes)] if step in sync_steps(L.K) else [])
    for step in range(L.STEPS):
        assert all(identical(hsdp[0][name]["slow"][step], r[name]["slow"][step]) for r in hsdp)
        if step in sync_steps(L.K):
            assert all(identical(hsdp[0][name]["fast"][step], r[name]["fast"][step]) for r in hsdp)
        else:
            assert not identical(hsdp[0][name]["fast"][step], hsdp[2][name]["fast"][step])


def test_fsdp2_within_replicas_rolls_back_on_all_ranks_when_one_shard_blows_up(hsdp):
    for record in hsdp:
        run = record["rollback"]
        assert run["rollbacks"] == 1
        assert identical(run["slow"][-1], record["rollback_slow_before"])
        assert identical(run["fast"][-1], run["slow"][-1])
        # one flag agreed within the replica's mesh, then the two flags in the averaging buffer
        assert run["wire"][-1] == [("all_reduce", 4), ("all_reduce", run["local_numel"] * 8 + 16)]


def test_a_mesh_sharing_ranks_with_process_group_is_refused(hsdp):
    for record in hsdp:
        assert "process_group shares ranks" in record["refused"]
        assert "mesh.get_group('replicate')" in record["refused"]


# -- failures ------------------------------------------------------------------------------


def test_a_rank_that_raises_in_its_inner_steps_leaves_the_other_with_a_clear_error(failure):
    """Stuck (alive, never reaching the sync): rank 0 times out after the group's timeout. Killed:
    rank 0 fails at once. Either way its weights are as before the sync."""
    records = failure("failure")
    assert failure.codes == {0: 0, 1: -9}  # rank 1 was killed in the second variant
    model = W.make_model()  # rank 0's own three inner steps, in plain torch
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(L.K):
        x, y = W.global_batch(step)
        opt.zero_grad()
        W.loss_fn(model(W.rank_rows(x, 0, N)), W.rank_rows(y, 0, N)).backward()
        opt.step()
    for variant, bound in (("stuck", (L.FAIL_TIMEOUT_S * 0.9, L.FAIL_TIMEOUT_S + 5.0)),
                           ("killed", (0.0, L.FAIL_TIMEOUT_S + 5.0))):
        rank0, rank1 = records[0][variant], records[1][variant]
        assert rank1["error"] == ("ValueError", "injected failure inside rank 1's inner steps")
        kind, message = rank0["error"]
        assert kind == "RuntimeError"
        assert "averaging of the fast weights at a sync failed on rank 0" in message
        assert "timeout" in message and "restart them all from the last checkpoint" in message
        assert bound[0] <= rank0["seconds"] <= bound[1], (variant, rank0["seconds"])
        assert identical(rank0["slow_after"], rank0["slow_before"])
        assert_close(rank0["fast_after"], list(model.parameters()), steps=L.K)
        assert rank0["counts"] == (L.K,)
    assert "Timed out" in records[0]["stuck"]["error"][1]


# -- argument checks -----------------------------------------------------------------------


def test_refusals_name_process_group_and_build_nothing_on_any_rank(ranks):
    expected = {
        "adaptive": ("ValueError", "alpha_mode='adaptive'"),
        "zero": ("ValueError", "ZeroRedundancyOptimizer"),
        "dtensor": ("ValueError", "process_group shares ranks"),
        "not_a_group": ("TypeError", "torch.distributed.ProcessGroup"),
        "bad_k": ("ValueError", "alpha must be in [0, 1]"),
        "not_a_member": ("ValueError", "does not include this rank"),
    }
    for rank, record in enumerate(ranks("refusals")):
        for case, (kind, words) in expected.items():
            if case == "not_a_member" and rank == 0:
                assert case not in record
                continue
            outcome = record[case]
            assert outcome["error"][0] == kind and words in outcome["error"][1], (case, outcome)
            if case != "bad_k":
                assert "process_group" in outcome["error"][1]
            assert outcome["wire"]["sequence"] == 0 and not outcome["wire"]["calls"]  # no broadcast
            assert outcome["unchanged"] and outcome["groups_clean"]


def test_process_group_type_and_initialization_are_checked_in_one_process():
    model = torch.nn.Linear(3, 2)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    assert Lookahead(inner, k=2).process_group is None
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad in ("world", 0, object()):
        with pytest.raises(TypeError, match="process_group must be None or a torch.distributed.ProcessGroup"):
            Lookahead(inner, process_group=bad)
    assert all("lookahead_k" not in group for group in inner.param_groups)
    if not torch.distributed.is_initialized():
        group = torch.distributed.ProcessGroup(torch.distributed.HashStore(), 0, 1)
        with pytest.raises(ValueError, match="process_group was given but torch.distributed is not initialized"):
            Lookahead(inner, process_group=group)
        assert all("lookahead_k" not in group for group in inner.param_groups)
