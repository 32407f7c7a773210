"""Lookahead under torch.distributed: DDP, FSDP2, DCP checkpoints, ZeroRedundancyOptimizer.

Two gloo ranks on 127.0.0.1 run every scenario of ``distributed_workers`` once
(a module fixture; 20 to 30 s here, bounded by ``LAUNCH_TIMEOUT_S``) and save
what they measured. The tests compare those records with expectations
computed in this process:

- `reference`: Algorithm 1 written in plain torch around a ``torch.optim``
  optimizer, one process, on the concatenated (global) batch. It shares no
  code with ``lookahead_torch``.
- Rank against rank: bit for bit.

Tolerance against the single-process reference. Data parallelism averages the
ranks' gradients, each the mean over half of the batch; the reference takes
the mean over the whole batch. Same terms, summed in another order: each
gradient element differs by a few ulps, and the difference is carried into
the weights at every step. In float64 the largest relative difference measured
over the 9 steps is 5.3e-16 (2.4 eps); the tests allow ``8 * steps * eps``
(1.6e-14) of each tensor's largest magnitude. Every other comparison
(rank against rank, checkpoint round trips, resumed against uninterrupted
runs, shards against gathered tensors) is exact.

Run alone: ``.venv/bin/python -m pytest tests/test_distributed.py -v``.
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch not installed")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo not available", allow_module_level=True)

import distributed_workers as W  # noqa: E402

from lookahead_torch import Lookahead  # noqa: E402
from lookahead_torch.distributed import get_optimizer_state_dict, set_optimizer_state_dict  # noqa: E402

LAUNCH_TIMEOUT_S = 75.0
EPS = torch.finfo(torch.float64).eps


# -- the records of the two ranks -------------------------------------------------------


class Records:
    def __init__(self, outdir: Path, exit_codes: dict[int, int | None],
                 one_rank_at_save: dict[str, Any]) -> None:
        self.outdir = outdir
        self.exit_codes = exit_codes
        self.one_rank_at_save = one_rank_at_save

    def __call__(self, name: str) -> list[dict[str, Any]]:
        """Both ranks' records of scenario ``name``; a failure report if one is missing."""
        records = []
        for rank in range(W.WORLD_SIZE):
            path = self.outdir / f"{name}.rank{rank}.pt"
            if not path.exists():
                pytest.fail(self._report(name, rank), pytrace=False)
            records.append(torch.load(path, weights_only=True))
        return records

    def _report(self, name: str, rank: int) -> str:
        lines = [f"scenario {name!r} left no record on rank {rank}"]
        for r in range(W.WORLD_SIZE):
            error = self.outdir / f"{name}.rank{r}.error"
            if error.exists():
                lines.append(f"--- rank {r} raised:\n{error.read_text()}")
        return "\n".join(lines) + "\n" + self.logs()

    def logs(self) -> str:
        """Exit codes and the end of each rank's log (timings per scenario, stacks of a timeout)."""
        lines = [f"exit codes {self.exit_codes} (None: killed at the deadline)"]
        for r in range(W.WORLD_SIZE):
            log = self.outdir / f"rank{r}.log"
            if log.exists():
                lines.append(f"--- rank {r} log (end):\n{log.read_text()[-3000:]}")
        return "\n".join(lines)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Records:
    outdir = tmp_path_factory.mktemp("distributed")
    one_rank_at_save = W.write_one_rank_checkpoint(outdir)  # for the 1 -> 2 ranks resume
    codes = W.launch(outdir, timeout_s=LAUNCH_TIMEOUT_S)
    return Records(outdir, codes, one_rank_at_save)


# -- the single-process reference (plain torch, no lookahead_torch) ---------------------


def reference(inner: str, steps: int, k: int, alpha: float,
              batch_of: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
              skip: Sequence[int] = (), reset_inner_state: bool = False) -> dict[str, list]:
    """Algorithm 1 around ``torch.optim`` in one process; fast and slow weights after each step.

    ``skip``: steps whose gradients are discarded (as ``GradScaler`` does);
    ``reset_inner_state``: the inner optimizer's state is cleared at each sync.
    """
    model = W.make_model()
    params = list(model.parameters())
    opt = W.INNER[inner](params)
    slow = [p.detach().clone() for p in params]  # φ₀ ← θ₀
    executed = 0
    fast_per_step, slow_per_step = [], []
    for step in range(steps):
        opt.zero_grad()
        x, y = batch_of(step)
        W.loss_fn(model(x), y).backward()
        if step not in skip:
            opt.step()
            executed += 1
            if executed % k == 0:
                with torch.no_grad():
                    for p, s in zip(params, slow):
                        s.lerp_(p, alpha)  # φ ← φ + α(θ − φ)
                        p.copy_(s)  # θ ← φ
                if reset_inner_state:
                    opt.state.clear()
        fast_per_step.append([p.detach().clone() for p in params])
        slow_per_step.append([s.clone() for s in slow])
    return {"fast": fast_per_step, "slow": slow_per_step}


def concatenated_micro_batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [W.global_batch(step, micro) for micro in range(W.MICRO)]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def assert_close(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], steps: int) -> None:
    """Within ``8 * steps * eps`` of each expected tensor's largest magnitude (module docstring)."""
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        scale = max(e.abs().max().item(), 1e-300)
        error = (a - e).abs().max().item()
        assert error <= 8 * steps * EPS * scale, f"tensor {i}: off by {error / scale:.2e} relative"


def assert_bit_identical(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == e.dtype and a.shape == e.shape, f"tensor {i}"
        assert torch.equal(a, e), f"tensor {i} differs by {(a - e).abs().max().item():.3e}"


def assert_snapshots_equal(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Two `distributed_workers.optimizer_snapshot`s: every tensor bit for bit, every value equal."""
    assert actual.keys() == expected.keys()
    assert_bit_identical(actual["fast"], expected["fast"])
    assert_bit_identical(actual["slow"], expected["slow"])
    assert len(actual["inner"]) == len(expected["inner"])
    for a, e in zip(actual["inner"], expected["inner"]):
        assert a.keys() == e.keys()
        for key in a:
            if isinstance(e[key], torch.Tensor):
                assert_bit_identical([a[key]], [e[key]])
            else:
                assert a[key] == e[key]
    for key in ("counts", "k", "alpha", "rollbacks", "groups"):
        assert actual[key] == expected[key], key
    assert len(actual.get("outer", [])) == len(expected.get("outer", []))
    for a, e in zip(actual.get("outer", []), expected.get("outer", [])):  # the outer state
        assert a.keys() == e.keys()
        for key in a:
            if isinstance(e[key], torch.Tensor):
                assert_bit_identical([a[key]], [e[key]])
            else:
                assert a[key] == e[key]
    assert actual.get("outer_groups") == expected.get("outer_groups")


def sync_steps(counts: Sequence[int]) -> list[int]:
    return [step for step, count in enumerate(counts) if count == 0]


# -- the launch itself ------------------------------------------------------------------


def test_every_rank_ran_every_scenario_and_exited_cleanly(ranks):
    assert ranks.exit_codes == {0: 0, 1: 0}, ranks.logs()
    for name in W.SCENARIOS:
        ranks(name)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/net (Linux)")
def test_ranks_listen_on_loopback_only(ranks):
    for rank, meta in enumerate(ranks("meta")):
        assert meta["backend"] == "gloo" and meta["world_size"] == 2
        assert meta["listening"], f"rank {rank} lists no listening socket: the check would be vacuous"
        assert all(address.startswith("127.0.0.1:") for address in meta["listening"]), meta["listening"]


# -- DDP --------------------------------------------------------------------------------


def test_ddp_ranks_hold_bit_identical_fast_and_slow_weights_over_several_syncs(ranks):
    rank0, rank1 = ranks("ddp")
    assert rank0["counts"] == rank1["counts"] == [1, 2, 0] * 3
    for step in range(W.STEPS):
        assert_bit_identical(rank1["fast"][step], rank0["fast"][step])
        assert_bit_identical(rank1["slow"][step], rank0["slow"][step])
    # the slow weights moved at the three syncs and only there
    previous = [p.detach() for p in W.make_model().parameters()]  # φ₀
    moved = []
    for step in range(W.STEPS):
        if any(not torch.equal(a, b) for a, b in zip(rank0["slow"][step], previous)):
            moved.append(step)
        previous = rank0["slow"][step]
    assert moved == sync_steps(rank0["counts"]) == [2, 5, 8]


def test_ddp_checkpoint_through_torch_s_own_helpers_is_bit_exact(ranks):
    for record in ranks("ddp"):
        saved, loaded = record["round_trip"]["saved"], record["round_trip"]["loaded"]
        assert saved["counts"] == ((W.STEPS + 1) % W.K,)  # mid-cycle
        assert saved["inner"][0]["momentum_buffer"] is not None
        assert_snapshots_equal(loaded, saved)


def test_ddp_equals_one_process_on_the_concatenated_batch(ranks):
    rank0, _ = ranks("ddp")
    expected = reference("sgd-nesterov", W.STEPS, W.K, W.ALPHA, W.global_batch)
    for step in range(W.STEPS):
        assert_close(rank0["fast"][step], expected["fast"][step], step + 1)
        assert_close(rank0["slow"][step], expected["slow"][step], step + 1)


# -- gradient accumulation and no_sync --------------------------------------------------


@pytest.mark.parametrize("name, inner", [("ddp_accumulate", "sgd-nesterov"), ("fsdp2_accumulate", "adamw")])
def test_accumulation_counts_optimizer_steps_not_micro_batches(ranks, name, inner):
    rank0, rank1 = ranks(name)
    expected_counts = []
    for step in range(W.ACC_STEPS):
        before = step % W.ACC_K
        expected_counts += [("micro", before)] * W.MICRO + [("step", (step + 1) % W.ACC_K)]
    assert rank0["counts"] == rank1["counts"] == expected_counts
    assert rank0["syncs"] == rank1["syncs"] == W.ACC_STEPS // W.ACC_K
    assert_bit_identical(rank1["fast"], rank0["fast"])
    assert_bit_identical(rank1["slow"], rank0["slow"])
    expected = reference(inner, W.ACC_STEPS, W.ACC_K, W.ALPHA, concatenated_micro_batches)
    assert_close(rank0["fast"], expected["fast"][-1], W.ACC_STEPS)
    assert_close(rank0["slow"], expected["slow"][-1], W.ACC_STEPS)


# -- GradScaler -------------------------------------------------------------------------


@pytest.mark.parametrize("name, inner", [("ddp_gradscaler", "sgd-nesterov"), ("fsdp2_gradscaler", "adamw")])
def test_a_skipped_amp_step_advances_no_rank_s_schedule(ranks, name, inner):
    rank0, rank1 = ranks(name)
    executed = [step for step in range(W.STEPS) if step != W.SKIPPED_STEP]
    expected_counts = [sum(1 for s in executed if s <= step) % W.K for step in range(W.STEPS)]
    assert rank0["counts"] == rank1["counts"] == expected_counts
    for record in (rank0, rank1):  # the scale was halved once, at the skipped step
        assert record["scales"][W.SKIPPED_STEP - 1] == 2 * record["scales"][W.SKIPPED_STEP] == 2.0**10
        # DDP: the all-reduce already spread the overflow, the scaler communicates nothing;
        # FSDP2: its check on DTensor gradients agrees over the mesh (one all-reduce per step)
        assert record["collectives"] == [0 if name == "ddp_gradscaler" else 1] * W.STEPS
    assert_bit_identical(rank1["fast"], rank0["fast"])
    expected = reference(inner, W.STEPS, W.K, W.ALPHA, W.global_batch, skip=[W.SKIPPED_STEP])
    assert_close(rank0["fast"], expected["fast"][-1], W.STEPS)
    assert_close(rank0["slow"], expected["slow"][-1], W.STEPS)


# -- FSDP2 ------------------------------------------------------------------------------


def test_fsdp2_slow_weights_are_dtensors_sharded_like_the_params(ranks):
    rank0, rank1 = ranks("fsdp2")
    for record in (rank0, rank1):
        for entry in record["layout"]:
            assert entry["param_is_dtensor"] and entry["slow_is_dtensor"] and entry["same_placements"]
            assert entry["slow_local_shape"] == entry["local_shape"]
            rows = entry["local_shape"][0] if entry["local_shape"] else 1
            row_bytes = entry["full_bytes"] // entry["global_shape"][0]
            assert entry["slow_bytes"] == rows * row_bytes  # one shard-sized copy
    for p0, p1 in zip(rank0["layout"], rank1["layout"]):
        # torch.chunk's split of dim 0: 5 rows -> 3 + 2, 3 rows -> 2 + 1
        assert p0["local_shape"][0] == -(-p0["global_shape"][0] // 2)
        assert p0["slow_bytes"] + p1["slow_bytes"] == p0["full_bytes"]


def test_fsdp2_memory_per_rank_is_the_shard_not_the_full_model(ranks):
    records = ranks("fsdp2_memory")
    width, layers = W.MEMORY_WIDTH, W.MEMORY_LAYERS
    params = layers * (width * width + width)
    for record in records:
        assert record["params"] == params and record["full_bytes"] == 4 * params
        assert record["slow_bytes"] == record["shard_bytes"] == record["full_bytes"] // 2
        assert record["distinct_storages"] == record["slow_tensors"] == 2 * layers


def test_fsdp2_optimizer_steps_syncs_and_swaps_issue_no_collective(ranks):
    for record in ranks("fsdp2"):
        syncs = [phase["step"] for phase in record["phases"] if phase["sync"]]
        assert syncs == [2, 5, 8]
        for phase in record["phases"]:
            # positive control: the counters see FSDP2's all-gathers and reduce-scatters
            assert phase["forward_backward"] == (6, 6), phase
            assert phase["forward_backward_ops"] == {"c10d._allgather_base_": 4, "c10d._reduce_scatter_base_": 2}
            assert phase["optimizer_step"] == (0, 0), phase  # AdamW step, and the sync on 3 of them
        assert record["explicit_sync"] == (0, 0)
        assert record["swap"] == (0, 0)


def test_fsdp2_equals_one_process_on_the_concatenated_batch(ranks):
    rank0, rank1 = ranks("fsdp2")
    assert rank0["counts"] == rank1["counts"] == [1, 2, 0] * 3
    expected = reference("adamw", W.STEPS, W.K, W.ALPHA, W.global_batch)
    for step in range(W.STEPS):
        assert_bit_identical(rank1["fast_full"][step], rank0["fast_full"][step])
        assert_bit_identical(rank1["slow_full"][step], rank0["slow_full"][step])
        # each rank's local shards are its rows of the gathered tensors
        for kind in ("fast", "slow"):
            gathered = [torch.cat([a, b]) for a, b in zip(rank0[f"{kind}_local"][step], rank1[f"{kind}_local"][step])]
            assert_bit_identical(gathered, rank0[f"{kind}_full"][step])
        assert_close(rank0["fast_full"][step], expected["fast"][step], step + 1)
        assert_close(rank0["slow_full"][step], expected["slow"][step], step + 1)


def test_fsdp2_slow_weight_swap_and_explicit_sync_work_on_the_shards(ranks):
    for record in ranks("fsdp2"):
        before = record["before_swap"]
        assert any(not torch.equal(f, s) for f, s in zip(before["fast"], before["slow"]))  # not vacuous
        assert_bit_identical(record["inside_swap"], before["slow"])
        assert_bit_identical(record["after_swap"], before["fast"])
        # slow_state_dict(model): the model's sharded state dict holding φ, built locally
        assert record["slow_state_dict_sharded"] and record["slow_state_dict_collectives"] == (0, 0)
        assert list(record["slow_state_dict"]) == record["names"]
        assert_bit_identical(list(record["slow_state_dict"].values()), before["slow"])
        before, after = record["before_sync"], record["after_sync"]
        expected_slow = [torch.lerp(s, f, W.ALPHA) for s, f in zip(before["slow"], before["fast"])]
        assert_bit_identical(after["slow"], expected_slow)
        assert_bit_identical(after["fast"], expected_slow)


def test_fsdp2_sharding_after_the_optimizer_was_built_keeps_and_shards_the_slow_weights(ranks):
    """Accelerate's FSDP2 prepare(): the optimizer's parameters swapped for the sharded ones."""
    rank0, rank1 = ranks("fsdp2_switch")
    expected = reference("adamw", W.STEPS, W.K, W.ALPHA, W.global_batch)
    for record in (rank0, rank1):
        assert all(record["slow_sharded_like_params"])
        assert record["slow_bytes"] == record["shard_bytes"]  # the full copies are gone
        assert record["counts"] == (W.STEPS % W.K,)
    for step in range(W.STEPS):
        assert_bit_identical(rank1["fast"][step], rank0["fast"][step])
        assert_close(rank0["fast"][step], expected["fast"][step], step + 1)
        assert_close(rank0["slow"][step], expected["slow"][step], step + 1)
    # and bit for bit the run whose optimizer was built after sharding
    built_after = ranks("fsdp2")[0]
    assert_bit_identical(rank0["fast"][-1], built_after["fast_full"][W.STEPS - 1])
    assert_bit_identical(rank0["slow"][-1], built_after["slow_full"][W.STEPS - 1])


def test_fsdp2_float32_slow_copy_of_bfloat16_shards(ranks):
    for record in ranks("fsdp2_slow_dtype"):
        assert record["slow_layout"] == [(True, torch.float32, torch.bfloat16)] * 4
        before, after = record["before"], record["after"]
        assert any(not torch.equal(f.float(), s) for f, s in zip(before["fast"], before["slow"]))
        # φ ← lerp(φ, θ upcast exactly, α) in float32; θ ← φ rounded to nearest
        expected = [torch.lerp(s, f.float(), W.ALPHA) for f, s in zip(before["fast"], before["slow"])]
        assert_bit_identical(after["slow"], expected)
        assert_bit_identical(after["fast"], [e.to(torch.bfloat16) for e in expected])
        assert record["collectives"] == (0, 0)


def test_fsdp2_pullback_momentum_is_sharded_and_pulled_back_on_the_shards(ranks):
    for record in ranks("fsdp2_pullback"):
        assert all(record["cache_sharded"])
        before, after = record["before"], record["after"]
        assert any(not torch.equal(m, c) for m, c in zip(before["exp_avg"], before["cache"]))
        expected = [torch.lerp(c, m, W.ALPHA) for m, c in zip(before["exp_avg"], before["cache"])]
        assert_bit_identical(after["cache"], expected)
        assert_bit_identical(after["exp_avg"], expected)
        assert record["collectives"] == (0, 0)


def test_fsdp2_nonfinite_rollback_is_taken_by_every_rank_together(ranks):
    rank0, rank1 = ranks("fsdp2_rollback")
    for record in (rank0, rank1):  # the NaN was only in rank 1's shard
        assert record["rollbacks"] == 1 and record["counts"] == (0,)
        assert_bit_identical(record["fast"], record["slow_before"])
        assert_bit_identical(record["slow_after"], record["slow_before"])
        assert record["inner_state_empty"]
        # the agreement: one all-reduce of one integer over the mesh, nothing else
        assert record["collectives"] == (1, 1) and record["collective_ops"] == {"c10d.allreduce_": 1}


# -- checkpoints through torch.distributed.checkpoint ----------------------------------


@pytest.mark.parametrize("name", ["fsdp2_dcp_sgd", "fsdp2_dcp_adamw"])
def test_dcp_round_trip_is_bit_exact_and_resumes_bit_exactly(ranks, name):
    for record in ranks(name):
        assert record["at_save"]["counts"] == (W.SAVE_AT % W.K,)
        assert_snapshots_equal(record["after_save"], record["at_save"])  # saving changed nothing
        assert_snapshots_equal(record["at_load"], record["at_save"])
        assert_snapshots_equal(record["saved_then_continued"], record["straight"])
        assert_snapshots_equal(record["resumed"], record["straight"])
    if name == "fsdp2_dcp_adamw":
        for record in ranks(name):
            assert "exp_avg" in record["at_save"]["inner"][0]
            # StateDictOptions(full_state_dict=True): full tensors out, sharded again on load.
            # torch's flattening on that path turns AdamW's betas tuple into a list.
            assert record["full_round_trip"]["slow_is_full"]
            loaded = record["full_round_trip"]["loaded"]
            loaded["groups"] = [{key: tuple(value) if isinstance(value, list) else value
                                 for key, value in group.items()} for group in loaded["groups"]]
            assert_snapshots_equal(loaded, record["at_save"])


def _plain_run_from(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a DCP checkpoint into a plain (unsharded) model in this process; train to the end."""
    model = W.make_model()
    opt = Lookahead(W.INNER["adamw"](model.parameters()), k=W.K, alpha=W.ALPHA)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        W.dcp_load(model, opt, path)
    at_load = W.optimizer_snapshot(model, opt)
    W.train(W.Ctx(0, 1, path.parent), model, opt, range(W.SAVE_AT, W.STEPS))
    return at_load, W.optimizer_snapshot(model, opt)


def test_dcp_checkpoint_of_two_ranks_resumes_in_one_process(ranks):
    rank0, _ = ranks("fsdp2_dcp_adamw")
    at_load, resumed = _plain_run_from(Path(rank0["path"]))
    assert_snapshots_equal(at_load, rank0["at_save"])  # resharded 2 -> 1, bit for bit
    expected = reference("adamw", W.STEPS, W.K, W.ALPHA, W.global_batch)
    assert_close(resumed["fast"], expected["fast"][-1], W.STEPS)
    assert_close(resumed["slow"], expected["slow"][-1], W.STEPS)
    assert resumed["counts"] == (W.STEPS % W.K,)


def test_dcp_checkpoint_of_one_process_resumes_on_two_ranks(ranks):
    rank0, rank1 = ranks("fsdp2_dcp_from_one_rank")
    for record in (rank0, rank1):
        assert record["slow_is_sharded"]
        assert_snapshots_equal(record["at_load"], ranks.one_rank_at_save)  # resharded 1 -> 2
    assert_snapshots_equal(rank1["resumed"], rank0["resumed"])
    expected = reference("adamw", W.STEPS, W.K, W.ALPHA, W.global_batch)
    assert_close(rank0["resumed"]["fast"], expected["fast"][-1], W.STEPS)
    assert_close(rank0["resumed"]["slow"], expected["slow"][-1], W.STEPS)


# -- ZeroRedundancyOptimizer as the inner optimizer ------------------------------------


def test_zero_redundancy_optimizer_as_inner_equals_one_process_adam(ranks):
    rank0, rank1 = ranks("zero")
    assert sorted(set(rank0["owned"])) == [0, 1]  # both ranks own part of the state
    for step in range(W.STEPS):
        assert_bit_identical(rank1["fast"][step], rank0["fast"][step])
        assert_bit_identical(rank1["slow"][step], rank0["slow"][step])
    expected = reference("adam", W.STEPS, W.K, W.ALPHA, W.global_batch)
    for step in range(W.STEPS):
        assert_close(rank0["fast"][step], expected["fast"][step], step + 1)
        assert_close(rank0["slow"][step], expected["slow"][step], step + 1)
    # the slow weights are not partitioned: every rank holds a full copy
    assert rank0["slow_bytes"] == rank1["slow_bytes"] == rank0["full_bytes"]


def test_zero_redundancy_optimizer_checkpoint_resumes_bit_exactly(ranks):
    rank0, rank1 = ranks("zero")
    assert "consolidate_state_dict" in rank1["unconsolidated_error"]
    for record in (rank0, rank1):
        assert record["counts_at_load"] == (W.SAVE_AT % W.K,)
        assert_bit_identical(record["slow_at_load"], record["slow_at_save"])
        assert_bit_identical(record["resumed_fast"], record["fast"][-1])
        assert_bit_identical(record["resumed_slow"], record["slow"][-1])


def test_zero_redundancy_optimizer_reset_inner_state_clears_the_local_state(ranks):
    rank0, rank1 = ranks("zero")
    expected = reference("adam", W.STEPS, W.K, W.ALPHA, W.global_batch, reset_inner_state=True)
    without_reset = reference("adam", W.STEPS, W.K, W.ALPHA, W.global_batch)
    assert_close(rank0["reset_fast"], expected["fast"][-1], W.STEPS)
    assert not torch.allclose(rank0["reset_fast"][0], without_reset["fast"][-1][0])  # it matters
    assert_bit_identical(rank1["reset_fast"], rank0["reset_fast"])
    assert rank0["reset_local_state_sizes"] == 0  # STEPS is a multiple of K: just reset


def test_zero_redundancy_optimizer_refusals_are_clear(ranks):
    for record in ranks("zero"):
        kind, message = record["errors"]["pullback"]
        assert kind == "ValueError" and "no mapping for ZeroRedundancyOptimizer" in message
        kind, message = record["errors"]["overlap_with_ddp"]
        assert kind == "ValueError" and "overlap_with_ddp=True" in message and "overlap_with_ddp=False" in message


# -- lookahead_torch.distributed in one process (no ranks needed) ----------------------


def _trained(inner: str = "sgd", steps: int = W.SAVE_AT) -> tuple[torch.nn.Module, Lookahead]:
    model = W.make_model()
    opt = Lookahead(W.INNER[inner](model.parameters()), k=W.K, alpha=W.ALPHA)
    W.train(W.Ctx(0, 1, Path(".")), model, opt, range(steps))
    return model, opt


def testdcp_state_initialization_step_is_not_a_training_step():
    """torch's get_optimizer_state_dict steps a stateless optimizer (SGD) with lr = 0: no count."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict as torch_get

    straight_model, straight = _trained(steps=W.STEPS)
    model, opt = _trained()
    opt.zero_grad()  # gradients None and no state: torch will step the optimizer
    for get in (torch_get, get_optimizer_state_dict):
        assert opt.state == {} and all(p.grad is None for p in model.parameters())
        get(model, opt)
        assert opt.counts == (W.SAVE_AT % W.K,)
    W.train(W.Ctx(0, 1, Path(".")), model, opt, range(W.SAVE_AT, W.STEPS))
    assert_bit_identical(list(model.parameters()), list(straight_model.parameters()))
    assert_bit_identical(list(opt.slow[0]), list(straight.slow[0]))


@pytest.mark.parametrize("helpers", ["torch", "lookahead_torch"])
def testdcp_state_dict_carries_lookahead_and_loads_all_or_nothing(helpers):
    """torch's own get/set_optimizer_state_dict carry everything (and this package's aliases)."""
    from torch.distributed.checkpoint import state_dict as torch_helpers

    get, set_ = ((torch_helpers.get_optimizer_state_dict, torch_helpers.set_optimizer_state_dict)
                 if helpers == "torch" else (get_optimizer_state_dict, set_optimizer_state_dict))
    model, opt = _trained("adamw")
    sd = get(model, opt)
    assert set(sd) == {"state", "param_groups"}
    assert set(sd["state"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert {"lookahead_slow", "exp_avg", "exp_avg_sq", "step"} <= set(sd["state"]["0.weight"])
    assert sd["param_groups"][0]["lookahead_count"] == W.SAVE_AT % W.K
    assert sd["param_groups"][0]["lookahead_k"] == W.K
    saved = copy.deepcopy(sd)

    fresh_model, fresh = _trained("adamw", steps=0)
    with torch.no_grad():
        for p, q in zip(fresh_model.parameters(), model.parameters()):
            p.copy_(q)
    set_(fresh_model, fresh, saved)
    assert fresh.counts == opt.counts
    assert_bit_identical(list(fresh.slow[0]), list(opt.slow[0]))
    for p, q in zip(fresh_model.parameters(), model.parameters()):
        assert_bit_identical([fresh.state[p]["exp_avg"]], [opt.state[q]["exp_avg"]])

    # a bad entry: refused, nothing changed
    other_model, other = _trained("adamw", steps=2)
    counts, slow = other.counts, [s.clone() for s in other.slow[0]]
    moments = [other.state[p]["exp_avg"].clone() for p in other_model.parameters()]
    bad = copy.deepcopy(saved)
    bad["param_groups"][0]["lookahead_k"] = 0
    with pytest.raises(ValueError, match=r"\['lookahead_k'\] must be an int >= 1"):
        set_(other_model, other, bad)
    assert other.counts == counts
    assert_bit_identical(list(other.slow[0]), slow)
    assert_bit_identical([other.state[p]["exp_avg"] for p in other_model.parameters()], moments)
    assert not other._optimizer_load_state_dict_pre_hooks


def test_dcp_state_dict_of_0_1_0_still_loads():
    """0.1.0's get_optimizer_state_dict added a 'lookahead' section and no rollback counts."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict as torch_get

    model, opt = _trained("adamw")
    legacy = copy.deepcopy(torch_get(model, opt))
    for group in legacy["param_groups"]:
        del group["lookahead_rollbacks"]
    legacy["lookahead"] = {"format": 1, "k": W.K, "alpha": W.ALPHA, "pullback": "none", "rollbacks": 0}
    fresh_model, fresh = _trained("adamw", steps=0)
    set_optimizer_state_dict(fresh_model, fresh, legacy)
    assert fresh.counts == opt.counts
    assert_bit_identical(list(fresh.slow[0]), list(opt.slow[0]))
    assert not fresh._optimizer_load_state_dict_pre_hooks  # the temporary hook is gone
    bad = {**legacy, "lookahead": {**legacy["lookahead"], "k": 0}}
    with pytest.raises(ValueError, match=r"\['lookahead'\]\['k'\] must be an int >= 1"):
        set_optimizer_state_dict(fresh_model, fresh, bad)
    with pytest.raises(TypeError, match=r"optim_state_dict\['lookahead'\] must be a dict"):
        set_optimizer_state_dict(fresh_model, fresh, {**legacy, "lookahead": 5})


def test_dcp_helpers_refuse_what_they_cannot_handle():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict as torch_get
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict as torch_set

    model, opt = _trained()
    with pytest.raises(TypeError, match="optimizer must be a lookahead_torch.Lookahead, got SGD"):
        get_optimizer_state_dict(model, opt.optimizer)
    flatten = StateDictOptions(flatten_optimizer_state_dict=True)
    with pytest.raises(ValueError, match="flatten_optimizer_state_dict must be False"):
        get_optimizer_state_dict(model, opt, options=flatten)
    # torch's own with flattening rebuilds the entries from the live inner state, without
    # the slow weights: the load refuses, naming the option, instead of restarting them.
    flat = torch_get(model, opt, options=flatten)
    counts, slow = opt.counts, [s.clone() for s in opt.slow[0]]
    with pytest.raises(ValueError, match="flatten_optimizer_state_dict"):
        torch_set(model, opt, flat, options=flatten)
    assert opt.counts == counts
    assert_bit_identical(list(opt.slow[0]), slow)


@pytest.mark.parametrize("wrappers", range(6))
def test_state_initialization_is_recognised_through_any_number_of_step_wrappers(wrappers):
    """An LR scheduler's patch and user decorators between torch's helper and step: no count."""
    import functools

    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict as torch_get

    model = W.make_model()
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=5, alpha=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=100)  # patches opt.step
    for _ in range(wrappers):
        inner = opt.step

        @functools.wraps(inner)
        def wrapped(*args, _inner=inner, **kwargs):
            return _inner(*args, **kwargs)

        opt.step = wrapped
    W.train(W.Ctx(0, 1, Path(".")), model, opt, range(3))
    scheduler.step()
    for _ in range(3):  # three saves, each of an empty (stateless SGD) state with no gradients
        opt.zero_grad()
        torch_get(model, opt)
    assert opt.counts == (3,)
    W.train(W.Ctx(0, 1, Path(".")), model, opt, range(3, 5))
    assert opt.counts == (0,)  # the fifth real step synced


def test_a_real_step_with_zero_lr_and_nonzero_gradients_counts():
    model = W.make_model()
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.0), k=2, alpha=0.5)
    W.train(W.Ctx(0, 1, Path(".")), model, opt, range(1))
    assert opt.counts == (1,)


def test_replaced_parameters_keep_their_slow_weights_only_if_they_hold_the_same_values():
    """The single-process side of the parameter switch: equal values at a cycle boundary only."""
    model, opt = _trained("sgd-nesterov", steps=W.K)  # a cycle boundary: θ = φ
    slow = [s.clone() for s in opt.slow[0]]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    opt.param_groups[0]["params"] = copies
    opt.sync()  # adopts the copies; at a boundary the sync leaves θ = φ unchanged
    assert all(a is b for a, b in zip(opt._slots[0].params, copies))
    assert_bit_identical(list(opt.slow[0]), slow)

    for label, replace, message in [
        ("other values", lambda ps: [torch.nn.Parameter(p.detach() + 1) for p in ps], "holds other values"),
        ("other shapes", lambda ps: [torch.nn.Parameter(p.detach().reshape(-1)) for p in ps], "its slow copy"),
        ("fewer", lambda ps: list(ps)[:-1], "3 parameters instead of 4"),
    ]:
        current = list(opt.param_groups[0]["params"])
        opt.param_groups[0]["params"] = replace(current)
        with pytest.raises(RuntimeError, match=message):
            opt.step()
        assert_bit_identical(list(opt.slow[0]), slow), label
        opt.param_groups[0]["params"] = current

    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()  # one step into a cycle: θ ≠ φ, a replacement is refused
    opt.param_groups[0]["params"] = [torch.nn.Parameter(p.detach().clone()) for p in opt.param_groups[0]["params"]]
    with pytest.raises(RuntimeError, match="1 steps into a cycle"):
        opt.step()


# -- outer optimizers (SNOO/DiLoCo's outer loop) ------------------------------------------


def reference_outer(inner: str, steps: int, k: int) -> dict[str, list]:
    """Lookahead with an outer SGD (Nesterov) in plain torch, one process, the global batch."""
    model = W.make_model()
    params = list(model.parameters())
    opt = W.INNER[inner](params)
    slow = [p.detach().clone() for p in params]
    outer = W.make_outer([{"params": slow}])
    fast_per_step, slow_per_step = [], []
    for step in range(steps):
        opt.zero_grad()
        x, y = W.global_batch(step)
        W.loss_fn(model(x), y).backward()
        opt.step()
        if (step + 1) % k == 0:
            with torch.no_grad():
                for p, s in zip(params, slow):
                    s.grad = s - p  # Δ = φ − θ
                outer.step()
                for p, s in zip(params, slow):
                    s.grad = None
                    p.copy_(s)
        fast_per_step.append([p.detach().clone() for p in params])
        slow_per_step.append([s.clone() for s in slow])
    return {"fast": fast_per_step, "slow": slow_per_step, "outer": outer, "slow_final": slow}


def test_ddp_with_an_outer_optimizer_keeps_ranks_identical_and_equals_one_process(ranks):
    records = ranks("ddp_outer")
    expected = reference_outer("sgd-nesterov", W.STEPS, W.K)
    for step in range(W.STEPS):
        assert_bit_identical(records[1]["fast"][step], records[0]["fast"][step])
        assert_bit_identical(records[1]["slow"][step], records[0]["slow"][step])
        assert_close(records[0]["fast"][step], expected["fast"][step], step + 1)
        assert_close(records[0]["slow"][step], expected["slow"][step], step + 1)
    assert_bit_identical(records[1]["outer_momentum"], records[0]["outer_momentum"])
    momentum = [expected["outer"].state[s]["momentum_buffer"] for s in expected["slow_final"]]
    assert_close(records[0]["outer_momentum"], momentum, W.STEPS)


def test_fsdp2_outer_state_is_sharded_like_the_slow_weights_and_the_step_communicates_nothing(ranks):
    records = ranks("fsdp2_outer")
    expected = reference_outer("sgd", W.STEPS, W.K)
    for record in records:
        for entry in record["layout"]:
            assert entry["momentum_is_dtensor"] and entry["same_placements"]
            assert entry["local_shape"] == entry["slow_local_shape"]
        assert all(phase["optimizer_step"] == (0, 0) for phase in record["phases"])  # the outer step too
        for step in range(W.STEPS):
            assert_close(record["fast_full"][step], expected["fast"][step], step + 1)
            assert_close(record["slow_full"][step], expected["slow"][step], step + 1)
    # the shards of the two ranks differ (the rows are split), the gathered weights agree
    assert_bit_identical(records[1]["slow_full"][-1], records[0]["slow_full"][-1])


def test_fsdp2_outer_dcp_round_trip_is_bit_exact_and_resumes_bit_exactly(ranks):
    for record in ranks("fsdp2_outer_dcp"):
        at_save = record["at_save"]
        assert at_save["counts"] == (W.SAVE_AT % W.K,)
        assert [sorted(entry) for entry in at_save["outer"]] == [["momentum_buffer"]] * 4
        assert_snapshots_equal(record["after_save"], at_save)  # saving changed nothing
        assert_snapshots_equal(record["at_load"], at_save)
        assert_snapshots_equal(record["saved_then_continued"], record["straight"])
        assert_snapshots_equal(record["resumed"], record["straight"])
        assert record["full_round_trip"]["slow_is_full"]
        assert_snapshots_equal(record["full_round_trip"]["loaded"], at_save)
