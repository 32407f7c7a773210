"""Training and evaluation loops for the CNN classifier and the LSTM language model.

Every run is seeded: the seed fixes the initial weights (``torch.manual_seed``),
the batch order and the dropout masks, so a run repeats exactly with one
intra-op thread. Lookahead runs are evaluated at their slow weights φ
(`optim.evaluation_weights`), which is what the paper reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from . import optim
from .data import ImageSplit, TextCorpus
from .models import LSTMLanguageModel, SmallCNN

EVAL_BATCH = 1000


def finite_or_none(value: float) -> float | None:
    """``value`` if finite, else ``None`` (JSON has no inf/NaN)."""
    return float(value) if math.isfinite(value) else None


# ----------------------------------------------------------------------- classifier


@torch.no_grad()
def evaluate_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``.

    A row of non-finite logits counts as wrong (argmax of NaN would pick a class).
    """
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), EVAL_BATCH):
        logits = model(x[start : start + EVAL_BATCH])
        labels = y[start : start + EVAL_BATCH]
        loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        ok = torch.isfinite(logits).all(dim=1)
        correct += int(((logits.argmax(dim=1) == labels) & ok).sum())
    model.train(was_training)
    return loss_sum / len(x), correct / len(x)


def minibatches(n: int, batch_size: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """One epoch of index batches in a fresh random order (the last, partial batch dropped)."""
    order = torch.from_numpy(rng.permutation(n))
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def is_divergent(loss: float, initial_loss: float) -> bool:
    """An epoch's mean training loss that is not finite or above the untrained model's loss.

    Waiting for NaN is not enough: cross-entropy of an exploded ReLU net stays
    finite (10³ and more) while the model predicts one class.
    """
    return not math.isfinite(loss) or loss > initial_loss


@dataclass
class ClassifierRun:
    """Outcome of one classifier training run (serialised as is into the results JSON)."""

    val_accuracy: float
    train_loss: float | None  # full training set, evaluation weights, after the last epoch
    initial_train_loss: float
    epoch_train_loss: list[float | None] = field(default_factory=list)  # mean minibatch loss (θ)
    epoch_val_accuracy: list[float] = field(default_factory=list)  # evaluation weights
    diverged: bool = False
    diverged_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_classifier(data: ImageSplit, channels: tuple[int, int], seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(data.side, channels)


def train_classifier(
    data: ImageSplit,
    spec: optim.OptimizerSpec,
    lr: float,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    channels: tuple[int, int],
    k: int = 5,
    alpha: float = 0.5,
) -> ClassifierRun:
    """Train a fresh `SmallCNN` with ``spec`` at ``lr``; report at the evaluation weights."""
    model = new_classifier(data, channels, seed)
    optimizer = optim.build(spec, model.parameters(), lr, k=k, alpha=alpha)
    rng = np.random.default_rng([seed, 1])
    initial_loss, _ = evaluate_classifier(model, data.x_train, data.y_train)
    run = ClassifierRun(val_accuracy=0.0, train_loss=None, initial_train_loss=initial_loss)
    model.train()
    for epoch in range(1, epochs + 1):
        losses = []
        for batch in minibatches(len(data.x_train), batch_size, rng):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        epoch_loss = float(np.mean(losses))
        run.epoch_train_loss.append(finite_or_none(epoch_loss))
        with optim.evaluation_weights(optimizer):
            run.epoch_val_accuracy.append(evaluate_classifier(model, data.x_val, data.y_val)[1])
        if run.diverged_epoch is None and is_divergent(epoch_loss, initial_loss):
            run.diverged, run.diverged_epoch = True, epoch
        if not math.isfinite(epoch_loss):
            break  # NaN weights stay NaN: further epochs would only cost time
    with optim.evaluation_weights(optimizer):
        train_loss, _ = evaluate_classifier(model, data.x_train, data.y_train)
        _, run.val_accuracy = evaluate_classifier(model, data.x_val, data.y_val)
    run.train_loss = finite_or_none(train_loss)
    return run


# ------------------------------------------------------------------- language model


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``ids`` cut into ``batch_size`` contiguous streams, shape ``(batch_size, steps)``."""
    steps = len(ids) // batch_size
    if steps < 2:
        raise ValueError(f"{len(ids)} tokens are too few for {batch_size} streams")
    return ids[: steps * batch_size].view(batch_size, steps)


def windows(streams: torch.Tensor, bptt: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Truncated-BPTT windows ``(inputs, next tokens)`` over the streams, in order."""
    steps = streams.shape[1]
    out = []
    for start in range(0, steps - 1, bptt):
        length = min(bptt, steps - 1 - start)
        out.append((streams[:, start : start + length], streams[:, start + 1 : start + 1 + length]))
    return out


def _detach(state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return state[0].detach(), state[1].detach()


@torch.no_grad()
def evaluate_language_model(
    model: LSTMLanguageModel, ids: torch.Tensor, *, batch_size: int = 10, bptt: int = 100
) -> float:
    """Mean negative log-likelihood in nats per token (dropout off, state carried across windows)."""
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    for inputs, targets in windows(batchify(ids, batch_size), bptt):
        logits, state = model(inputs, state)
        total += float(
            nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
            )
        )
        count += targets.numel()
    model.train(was_training)
    return total / count


@dataclass
class LanguageModelRun:
    """Outcome of one language-model run; losses in nats per token (``None``: not finite)."""

    train_nats: float | None  # the train-evaluation slice, dropout off, evaluation weights
    val_nats: float | None
    test_nats: float | None
    curve_steps: list[int] = field(default_factory=list)
    curve_train_nats: list[float | None] = field(default_factory=list)  # running mean (θ, dropout)
    epoch_val_nats: list[float | None] = field(default_factory=list)
    diverged: bool = False
    # every ``eval_every`` steps (empty without it): validation loss at the evaluation weights
    val_curve_steps: list[int] = field(default_factory=list)
    val_curve_nats: list[float | None] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_language_model(
    corpus: TextCorpus,
    spec: optim.OptimizerSpec,
    lr: float,
    *,
    width: int,
    layers: int,
    dropout: float,
    epochs: int,
    batch_size: int,
    bptt: int,
    clip: float,
    seed: int,
    train_eval_tokens: int,
    log_every: int = 50,
    k: int = 5,
    alpha: float = 0.5,
    on_log: Callable[[int, float], None] | None = None,
    eval_every: int | None = None,
) -> LanguageModelRun:
    """Train a fresh `LSTMLanguageModel` on ``corpus.train``; evaluate train slice, val, test.

    With ``eval_every``, the validation loss is also measured (at the evaluation
    weights, dropout off) after every ``eval_every``-th step, into
    ``val_curve_steps`` / ``val_curve_nats``. The evaluation draws no random
    numbers, so it leaves the training trajectory bit for bit as without it.
    """
    if eval_every is not None and (
        isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1
    ):
        raise ValueError(f"eval_every must be None or an int >= 1, got {eval_every!r}")
    torch.manual_seed(seed)
    model = LSTMLanguageModel(len(corpus.vocabulary), width, layers, dropout)
    optimizer = optim.build(spec, model.parameters(), lr, k=k, alpha=alpha)
    streams = batchify(corpus.train, batch_size)
    run = LanguageModelRun(None, None, None)
    step, running, running_count = 0, 0.0, 0
    model.train()
    for _epoch in range(epochs):
        state = None
        for inputs, targets in windows(streams, bptt):
            optimizer.zero_grad()
            logits, state = model(inputs, state)
            state = _detach(state)
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            loss.backward()
            # Clip every optimizer alike (AWD-LSTM clips at 0.25); Adam is nearly scale-free anyway.
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            step += 1
            value = loss.item()
            if not math.isfinite(value):
                run.diverged = True
                break
            running += value
            running_count += 1
            if step % log_every == 0:
                run.curve_steps.append(step)
                run.curve_train_nats.append(running / running_count)
                if on_log is not None:
                    on_log(step, running / running_count)
                running, running_count = 0.0, 0
            if eval_every is not None and step % eval_every == 0:
                with optim.evaluation_weights(optimizer):
                    nats = evaluate_language_model(model, corpus.val, bptt=bptt)
                run.val_curve_steps.append(step)
                run.val_curve_nats.append(finite_or_none(nats))
        if run.diverged:
            break
        with optim.evaluation_weights(optimizer):
            run.epoch_val_nats.append(finite_or_none(evaluate_language_model(model, corpus.val, bptt=bptt)))
    with optim.evaluation_weights(optimizer):
        run.train_nats = finite_or_none(
            evaluate_language_model(model, corpus.train[:train_eval_tokens], bptt=bptt)
        )
        run.val_nats = finite_or_none(evaluate_language_model(model, corpus.val, bptt=bptt))
        run.test_nats = finite_or_none(evaluate_language_model(model, corpus.test, bptt=bptt))
    return run
