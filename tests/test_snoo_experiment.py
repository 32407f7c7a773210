"""The SNOO experiment (experiments/reproduce/snoo.py): its optimizer specs, helpers and code path.

SNOO(X) is Lookahead around X whose sync is outer SGD with Nesterov momentum
on Δ = φ − θ. The spec is checked against a plain-Python simulation of that
loop; the steps-to-target and selection rules against hand-computed values;
and a tiny configuration of the whole experiment runs through the command
line, its baseline runs checked run for run against direct training calls.
The sizes' numbers (2 seeds) support no claim, so none is asserted here.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch not installed")  # every test here builds torch optimizers

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # experiments/ is run from the repository root, not installed
    sys.path.insert(0, str(ROOT))

from experiments.reproduce import data, optim, report, runner, snoo, table1, table3, training  # noqa: E402
from lookahead_torch import Lookahead  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"inner": "rmsprop"}, ValueError, "inner must be one of"),
        ({"lr": 0.0}, ValueError, "lr must be positive"),
        ({"lr": float("inf")}, ValueError, "lr must be positive"),
        ({"lr": "0.7"}, TypeError, "lr must be a real number"),
        ({"momentum": 0.0}, ValueError, r"momentum must be in \(0, 1\)"),
        ({"momentum": 1.0}, ValueError, r"momentum must be in \(0, 1\)"),
        ({"momentum": True}, TypeError, "momentum must be a real number"),
        ({"k": 0}, ValueError, "k must be >= 1"),
        ({"k": 5.0}, TypeError, "k must be an int"),
    ],
)
def test_snoo_spec_rejects_bad_settings(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        optim.snoo(**{"inner": "sgd", **kwargs})


def test_snoo_spec_names_every_setting() -> None:
    spec = optim.snoo("adam", 1, 0.5, 20)
    assert spec.key == "snoo_adam_lr1_m0.5_k20" and spec.label == "SNOO(Adam) lr 1, μ 0.5, k 20"
    assert spec.outer == optim.OuterStep(1.0, 0.5, 20) and type(spec.outer.lr) is float
    assert spec.lookahead and spec.inner == "adam"
    assert optim.line_style(spec)["linestyle"] == ":"  # dashed alone, solid LA(X), dotted SNOO
    assert snoo.DEFAULT_OUTER == optim.OuterStep(0.7, 0.9, 5)


def test_snoo_spec_builds_the_outer_nesterov_loop() -> None:
    """SNOO(SGD) on f(θ) = a θ²/2 against the loop written out in plain Python."""
    a, eta, lr, mu, k, theta0, steps = 0.8, 0.3, 0.7, 0.9, 3, 2.0, 11
    # plain Python: k SGD steps from φ, then Δ = φ − θ, b ← μ b + Δ, φ ← φ − lr (Δ + μ b), θ ← φ
    theta, phi, b, expected_theta, expected_phi = theta0, theta0, 0.0, [], []
    for step in range(1, steps + 1):
        theta -= eta * a * theta
        if step % k == 0:
            delta = phi - theta
            b = mu * b + delta
            phi -= lr * (delta + mu * b)
            theta = phi
        expected_theta.append(theta)
        expected_phi.append(phi)
    param = torch.nn.Parameter(torch.tensor([theta0], dtype=torch.float64))
    optimizer = optim.build(optim.snoo("sgd", lr, mu, k), [param], eta, k=99, alpha=0.1)
    assert isinstance(optimizer, Lookahead) and optimizer.k == k  # k from the spec, not from build
    for step in range(steps):
        optimizer.zero_grad()
        (0.5 * a * param.square()).sum().backward()
        optimizer.step()
        assert float(param.detach()) == pytest.approx(expected_theta[step], rel=1e-12, abs=1e-15)
        with optim.evaluation_weights(optimizer):  # evaluated at φ
            assert float(param.detach()) == pytest.approx(expected_phi[step], rel=1e-12, abs=1e-15)
    # the first outer step overshoots θ: φ goes past θ_{t,k} by μ Δ (Nesterov's first step)
    assert abs(expected_phi[k - 1] - theta0) > abs(theta0 * (1 - eta * a) ** k - theta0)


# ------------------------------------------------------------------- the helpers


def test_steps_to_target_by_hand() -> None:
    steps = [10, 20, 30]
    curves = [[5.0, 3.0, 1.0], [4.0, 2.0, 2.0]]  # means 4.5, 2.5, 1.5
    assert snoo.steps_to_target(steps, curves, 2.5) == 20  # reached exactly
    assert snoo.steps_to_target(steps, curves, 2.4) == 30
    assert snoo.steps_to_target(steps, curves, 1.0) is None
    assert snoo.steps_to_target(steps, [[5.0, None, 1.0], [4.0, 2.0, 2.0]], 3.0) == 30  # None: +inf
    accuracy = [[0.5, 0.9, 0.95], [0.7, None, 0.97]]  # means 0.6, 0.45 (None counts 0), 0.96
    assert snoo.steps_to_target(steps, accuracy, 0.6, lower_is_better=False) == 10
    assert snoo.steps_to_target(steps, accuracy, 0.7, lower_is_better=False) == 30
    with pytest.raises(ValueError, match="curves must not be empty"):
        snoo.steps_to_target(steps, [], 1.0)
    with pytest.raises(ValueError, match="len"):
        snoo.steps_to_target(steps, [[1.0, 2.0]], 1.0)


def _entry(inner: str, outer: tuple[float, float, int] | None, mean: float, n: int = 2) -> dict:
    return {"task": "wikipedia", "inner": inner, "val_nats": {"mean": mean, "std": 0.0, "n": n},
            "outer": None if outer is None else dict(zip(("lr", "momentum", "k"), outer))}


def test_select_takes_the_lowest_mean_and_the_first_of_equals() -> None:
    summary = [
        _entry("adam", None, 1.0),  # a baseline is never selected, even when it is lowest
        _entry("adam", (0.5, 0.5, 5), 4.2),
        _entry("adam", (0.7, 0.5, 5), 4.1),
        _entry("adam", (1.0, 0.5, 5), 4.1),
        _entry("adam", (1.0, 0.9, 5), math.nan, n=0),  # every seed failed
        _entry("sgd", (0.5, 0.9, 20), 3.0),
    ]
    assert snoo.select(summary, "wikipedia", "adam") == optim.OuterStep(0.7, 0.5, 5)
    assert snoo.select(summary, "wikipedia", "sgd") == optim.OuterStep(0.5, 0.9, 20)
    with pytest.raises(ValueError, match="no finite SNOO result"):
        snoo.select(summary, "shakespeare", "adam")


# ------------------------------------------------------------- the whole experiment

TINY_WORDS = table3.TextSetup("wikipedia", table3.WORD_LRS, width=16, dropout=0.1, epochs=1,
                              batch_size=8, bptt=20, clip=0.25, max_train_tokens=4_000,
                              max_eval_tokens=2_000, train_eval_tokens=2_000, vocabulary_size=300,
                              log_every=5)
TINY_CHARS = table3.TextSetup("shakespeare", table3.CHAR_LRS, width=16, dropout=0.1, epochs=1,
                              batch_size=8, bptt=20, clip=0.25, max_train_tokens=8_000,
                              max_eval_tokens=2_000, train_eval_tokens=2_000, log_every=5)
TINY_DIGITS = table1.ImageSetup("digits", 1200, (4, 8), 64, 2, table1.DIGITS_LRS)
TINY = snoo.Config(
    sweep_task=snoo.TextTask(TINY_WORDS, 5),
    text_tasks=(snoo.TextTask(TINY_CHARS, 10),),
    image_setups=(TINY_DIGITS,),
    inners=("sgd", "adam"),
    sweep=snoo.Sweep(lrs=(0.5,), momenta=(0.5,), ks=(5, 20)),
    text_seeds=(0,),
    image_seeds=(0, 1),
    sweep_inners=("sgd",),
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The tiny configuration through the command line (``snoo --size quick``), once."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("snoo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(snoo.SIZES, "quick", TINY)
        assert runner.main(["snoo", "--out", str(root), "--no-progress"]) == 0
    paths = report.OutputPaths.under(root, "snoo")
    return root, json.loads(paths.json.read_text(encoding="utf-8"))


def test_tiny_run_writes_every_output(tiny) -> None:
    root, results = tiny
    paths = report.OutputPaths.under(root, "snoo")
    assert results["experiment"] == "snoo" and results["environment"]["torch_threads"] == 1
    assert results["command"] == "python -m experiments.reproduce snoo --size quick"
    markdown = paths.markdown.read_text(encoding="utf-8")
    assert markdown.startswith(f"### {snoo.TITLE}") and markdown == snoo.markdown(results)
    assert "#### Sweep on Wikipedia words" in markdown and "SNOO(SGD) lr 0.7, μ 0.9, k 5 (default)" in markdown
    assert paths.figure.read_bytes().startswith(PNG_SIGNATURE)
    assert "snoo" not in runner.EXPERIMENTS  # "all" (make reproduce) stays the paper's experiments


def test_tiny_run_has_every_row_and_selects_by_the_rule(tiny) -> None:
    _, results = tiny
    text, images = results["runs"]["text"], results["runs"]["images"]
    # sweep: SGD, LA(SGD), the 2 grid settings and the default (not in this grid);
    # transfer: SGD, LA(SGD), the default and the selected setting (once if they agree)
    # Adam is not swept: Adam, LA(Adam) and the default only, everywhere.
    sweep_keys = ["sgd", "la_sgd", "snoo_sgd_lr0.5_m0.5_k5", "snoo_sgd_lr0.5_m0.5_k20",
                  "snoo_sgd_lr0.7_m0.9_k5"]
    adam_keys = ["adam", "la_adam", "snoo_adam_lr0.7_m0.9_k5"]
    assert [r["optimizer"] for r in text if r["task"] == "wikipedia"] == sweep_keys + adam_keys
    wiki = {e["optimizer"]: e for e in results["summary"]["text"] if e["task"] == "wikipedia"}
    chosen = min(sweep_keys[2:], key=lambda key: wiki[key]["val_nats"]["mean"])
    assert results["selected"] == {"sgd": wiki[chosen]["outer"]}
    transfer = list(dict.fromkeys(["sgd", "la_sgd", "snoo_sgd_lr0.7_m0.9_k5", chosen])) + adam_keys
    assert [r["optimizer"] for r in text if r["task"] == "shakespeare"] == transfer
    assert [(r["lr_setting"], r["optimizer"], r["seed"]) for r in images] == [
        (lr, key, seed) for lr in ("standard", "high") for key in transfer for seed in (0, 1)]
    assert "Adam: not swept, the default only." in snoo.markdown(results)
    # every SNOO run ran the adapter's outer step with its own k; the baselines did not
    for r in text + images:
        assert (r["outer"] is not None) == r["optimizer"].startswith("snoo_")


def test_tiny_baselines_are_the_table_runs_and_steps_to_target_follows_the_curves(tiny) -> None:
    _, results = tiny
    corpus = table3.load(TINY_WORDS)
    for key in ("sgd", "la_sgd"):
        run = next(r for r in results["runs"]["text"] if (r["task"], r["optimizer"]) == ("wikipedia", key))
        direct = training.train_language_model(
            corpus, optim.BY_KEY[key], 20.0, width=16, layers=1, dropout=0.1, epochs=1, batch_size=8,
            bptt=20, clip=0.25, seed=0, train_eval_tokens=2_000, log_every=5)
        # the periodic validation leaves the trajectory as it was: the same final numbers, bit for bit
        assert (run["val_nats"], run["test_nats"], run["train_nats"]) == (
            direct.val_nats, direct.test_nats, direct.train_nats)
        assert run["curve_train_nats"] == direct.curve_train_nats
        assert run["steps"] == len(training.windows(training.batchify(corpus.train, 8), 20))
        assert run["val_curve_steps"] == list(range(5, run["steps"] + 1, 5))
    wiki = [e for e in results["summary"]["text"] if e["task"] == "wikipedia"]
    targets = {key: next(e for e in wiki if e["optimizer"] == key)["val_nats"]["mean"]
               for key in ("sgd", "adam")}  # X alone's final loss is the target of X's rows
    for entry in wiki:
        run = next(r for r in results["runs"]["text"]
                   if (r["task"], r["optimizer"]) == ("wikipedia", entry["optimizer"]))
        target = targets[entry["inner"]]
        assert entry["target_nats"] == target
        values = [*run["val_curve_nats"], run["val_nats"]]
        steps = [*run["val_curve_steps"], run["steps"]]
        reached = [s for s, v in zip(steps, values) if v is not None and v <= target]
        assert entry["steps_to_target"] == (reached[0] if reached else None)
        assert entry["val"]["mean"] == pytest.approx(math.exp(run["val_nats"]))
    # the inner optimizer alone reaches its own final value at its last step at the latest
    assert next(e for e in wiki if e["optimizer"] == "sgd")["steps_to_target"] is not None
    # images: target = X alone's mean final accuracy; reached per epoch on the seed-mean curve
    images = data.load_images("digits", 1200)
    for entry in (e for e in results["summary"]["images"] if e["lr_setting"] == "standard"):
        runs = [r for r in results["runs"]["images"]
                if (r["lr_setting"], r["optimizer"]) == ("standard", entry["optimizer"])]
        alone = [r for r in results["runs"]["images"]
                 if (r["lr_setting"], r["optimizer"]) == ("standard", entry["inner"])]
        target = statistics.fmean(r["val_accuracy"] for r in alone)
        assert entry["steps_per_epoch"] == len(images.x_train) // 64
        means = [statistics.fmean(r["epoch_val_accuracy"][e] for r in runs) for e in range(2)]
        reached = [e + 1 for e, m in enumerate(means) if m >= target]
        assert entry["steps_to_target"] == (reached[0] * entry["steps_per_epoch"] if reached else None)
