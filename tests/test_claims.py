"""The claim rules (experiments/reproduce/claims.py) and the robustness verdict, on hand-made results.

No training here: each rule is shown to hold on results that satisfy it and to
fail on results where the claim is false, so a claim test cannot pass vacuously.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # experiments/ is run from the repository root, not installed
    sys.path.insert(0, str(ROOT))

from experiments.reproduce import claims, robustness  # noqa: E402


def sweep(sgd_top: list[float], la_top: list[float], low: float = 0.98) -> dict:
    """A learning-rate sweep's results: rates 0.3 and 1.0, the given top-rate accuracies."""
    runs = []
    for key, top in (("sgd", sgd_top), ("la_sgd", la_top)):
        runs += [{"optimizer": key, "lr": 0.3, "seed": i, "val_accuracy": low} for i in range(len(top))]
        runs += [{"optimizer": key, "lr": 1.0, "seed": i, "val_accuracy": a} for i, a in enumerate(top)]
    return {"config": {"learning_rates": [0.3, 1.0]}, "runs": runs}


def verdicts(found: list[claims.Claim]) -> dict[str, bool]:
    return {c.name: c.holds for c in found}


def test_lr_sweep_rules_hold_on_the_measured_pattern() -> None:
    # 24 seeds as measured: SGD mostly at chance or partly trained, LA mostly trained
    sgd = [0.1] * 16 + [0.6] * 7 + [0.95]
    la = [0.97] * 18 + [0.1] * 3 + [0.7] * 3
    assert all(verdicts(claims.lr_sweep(sweep(sgd, la))).values())


def test_lr_sweep_rules_fail_when_lookahead_is_no_better_than_sgd() -> None:
    same = [0.1] * 16 + [0.6] * 8
    found = verdicts(claims.lr_sweep(sweep(same, same)))
    assert found["sgd fails at lr 1 (mean)"] and found["sgd fails at lr 1 (seeds)"]
    assert not found["la_sgd trains at lr 1 (seeds)"]
    assert not found["la_sgd ahead of sgd at lr 1"]


def test_lr_sweep_rules_fail_when_sgd_trains_at_the_top_rate() -> None:
    found = verdicts(claims.lr_sweep(sweep([0.97] * 24, [0.97] * 24)))
    assert not found["sgd fails at lr 1 (mean)"] and not found["sgd fails at lr 1 (seeds)"]
    assert not found["la_sgd ahead of sgd at lr 1"]
    found = verdicts(claims.lr_sweep(sweep([0.1] * 24, [0.97] * 24, low=0.5)))
    assert not found["sgd trains at lr 0.3"] and not found["la_sgd trains at lr 0.3"]


def test_thresholds_are_strict_where_stated() -> None:
    # exactly a third of LA's seeds trained holds (≥ 1/3); a quarter does not
    assert verdicts(claims.lr_sweep(sweep([0.1] * 3, [0.95, 0.1, 0.1])))["la_sgd trains at lr 1 (seeds)"]
    assert not verdicts(claims.lr_sweep(sweep([0.1] * 4, [0.95, 0.1, 0.1, 0.1])))[
        "la_sgd trains at lr 1 (seeds)"]
    assert claims.trained_fraction([0.9, 0.9000001]) == 0.5  # "trained" is strictly above 90 %
    with pytest.raises(ValueError, match="accuracies must not be empty"):
        claims.trained_fraction([])


def test_figure9_rules() -> None:
    def results(means: list[float], baseline: float = 0.97, diverged: int = 0) -> dict:
        grid = [{"acc_mean": m, "diverged": diverged} for m in means]
        return {"grid": grid, "baseline": {"acc_mean": baseline}}

    assert all(verdicts(claims.figure9(results([0.975, 0.978, 0.980, 0.972]))).values())
    spread = verdicts(claims.figure9(results([0.96, 0.99])))
    assert not spread["insensitive to k and α"] and spread["every (k, α) cell trains"]
    frozen = verdicts(claims.figure9(results([0.1, 0.1])))
    assert not frozen["every (k, α) cell trains"] and not frozen["no cell behind SGD alone"]
    assert not verdicts(claims.figure9(results([0.97], diverged=1)))["no (k, α) cell diverges"]


def test_figure10_and_table1_rules() -> None:
    def sawtooth(sync: float, before: float) -> dict:
        return {"runs": [{"statistics": {"sync": sync, "before_sync": before}}] * 3}

    assert claims.figure10(sawtooth(0.97, 0.96))[0].holds
    assert not claims.figure10(sawtooth(0.96, 0.96))[0].holds
    table = {"summary": [
        {"dataset": "digits", "lr_setting": "standard", "optimizer": "sgd", "mean": 0.97},
        {"dataset": "digits", "lr_setting": "standard", "optimizer": "adam", "mean": 0.5},
        {"dataset": "digits", "lr_setting": "high", "optimizer": "sgd", "mean": 0.1},
    ]}
    assert [c.holds for c in claims.table1(table)] == [True, False]  # the high row is not a claim


def test_table3_rules() -> None:
    pytest.importorskip("torch", reason="torch not installed")  # table3.cell's module trains LSTMs
    results = {
        "config": {"setups": [{"corpus": "shakespeare"}], "optimizers": ["sgd"]},
        "summary": [{"corpus": "shakespeare", "optimizer": "sgd", "diverged": 0, "val": {"mean": 4.0}}],
    }
    assert all(c.holds for c in claims.table3(results, {"shakespeare": (6.0, 4.5)}))
    found = verdicts(claims.table3(results, {"shakespeare": (6.0, 3.9)}))
    assert found["sgd beats uniform on shakespeare"] and not found["sgd beats unigram on shakespeare"]


def test_evaluate_rejects_unknown_experiments() -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        claims.evaluate("table2", {})


def claim(name: str, holds: bool) -> dict:
    return claims.Claim("x", name, holds, "", "")._asdict()


def test_robustness_verdict_flags_a_failed_claim_and_a_passing_broken_variant() -> None:
    ok = {"claims": [claim("a", True)], "outcomes": {"x": ["1"]}}
    bad = {"claims": [claim("a", False)], "outcomes": {"x": ["2"]}}
    assert robustness.verdict({"reference": ok, "init_ulp": ok, "broken_no_reset": bad}) == []
    problems = robustness.verdict({"init_ulp": bad, "broken_no_reset": ok})
    assert len(problems) == 2
    assert problems[0].startswith("init_ulp: claims failed") and "a broken Lookahead passed" in problems[1]
    # α ↦ 1 − α is the same algorithm at α = 0.5: passing every claim is expected
    assert robustness.verdict({"broken_alpha_flipped": ok}) == []
    assert robustness.changed_runs(ok, bad) == 1 and robustness.changed_runs(ok, ok) == 0
    table = robustness.markdown({"reference": ok, "broken_no_reset": bad})
    assert "| a | ✓ | ✗ |" in table and "| runs changed vs reference | 0 | 1 |" in table


def test_robustness_variants_cover_the_machine_and_the_faults() -> None:
    machine = [robustness.VARIANTS[n] for n in robustness.MACHINE_VARIANTS]
    assert any(v.env.get("ATEN_CPU_CAPABILITY") for v in machine)  # another vector code path
    assert any(not v.onednn for v in machine) and any(v.threads == 2 for v in machine)
    assert any(v.init_ulp for v in machine) and any("MKL_NUM_THREADS" in v.env for v in machine)
    assert set(robustness.BROKEN_VARIANTS) >= {"broken_no_reset", "broken_frozen_slow"}
    with pytest.raises(SystemExit):
        robustness.main(["--workers", "0"])
