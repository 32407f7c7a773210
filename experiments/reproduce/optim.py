"""The optimizers compared, built with torch.optim and `lookahead_torch.Lookahead`.

Names follow the paper's tables. "SGD" is plain minibatch SGD; "Polyak" is
SGD with Polyak's heavy-ball momentum 0.9 (the protocol of these reproductions; the slides'
row is labelled only "POLYAK", see the Reproductions page); "LA(X)" is
Lookahead around X.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch

from lookahead_torch import Lookahead

POLYAK_MOMENTUM = 0.9


class OptimizerSpec(NamedTuple):
    """One row of a table.

    Attributes:
        key: short id used in JSON (``"la_sgd"``).
        label: the row label (``"LA(SGD)"``).
        inner: ``"sgd"``, ``"polyak"`` or ``"adam"``: which torch optimizer moves the fast weights.
        lookahead: whether it is wrapped in Lookahead.
    """

    key: str
    label: str
    inner: str
    lookahead: bool


SGD = OptimizerSpec("sgd", "SGD", "sgd", False)
POLYAK = OptimizerSpec("polyak", "Polyak", "polyak", False)
ADAM = OptimizerSpec("adam", "Adam", "adam", False)
LA_SGD = OptimizerSpec("la_sgd", "LA(SGD)", "sgd", True)
LA_ADAM = OptimizerSpec("la_adam", "LA(Adam)", "adam", True)
ALL = (SGD, POLYAK, ADAM, LA_SGD, LA_ADAM)
BY_KEY = {spec.key: spec for spec in ALL}
# One colour per inner optimizer in every figure: dashed alone, solid inside Lookahead.
COLORS = {"sgd": "tab:blue", "polyak": "tab:orange", "adam": "tab:green"}


def line_style(spec: OptimizerSpec) -> dict[str, str]:
    """Matplotlib keyword arguments that draw ``spec`` the same way in every figure."""
    return {"color": COLORS[spec.inner], "linestyle": "-" if spec.lookahead else "--"}


class LearningRates(NamedTuple):
    """One learning-rate setting, a rate per inner optimizer.

    Polyak's rate is SGD's times (1 − momentum) by default in the configs, so
    that its steady-state step ``lr / (1 − β)`` matches SGD's.
    """

    name: str
    sgd: float
    polyak: float
    adam: float

    def for_inner(self, inner: str) -> float:
        return float(getattr(self, inner))


def build(
    spec: OptimizerSpec,
    params: Iterable[torch.nn.Parameter],
    lr: float,
    *,
    k: int = 5,
    alpha: float = 0.5,
) -> torch.optim.Optimizer:
    """The torch optimizer for ``spec`` at learning rate ``lr`` (Lookahead with ``k``, ``alpha``)."""
    params = list(params)
    if spec.inner == "sgd":
        inner: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr)
    elif spec.inner == "polyak":
        inner = torch.optim.SGD(params, lr=lr, momentum=POLYAK_MOMENTUM)
    elif spec.inner == "adam":
        inner = torch.optim.Adam(params, lr=lr)
    else:
        raise ValueError(f"spec.inner must be 'sgd', 'polyak' or 'adam', got {spec.inner!r}")
    return Lookahead(inner, k=k, alpha=alpha) if spec.lookahead else inner


@contextlib.contextmanager
def evaluation_weights(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside, the model holds the weights to report: φ for Lookahead (the paper returns φ), else θ."""
    if isinstance(optimizer, Lookahead):
        with optimizer.slow_weights():
            yield
    else:
        yield
