"""The optimizers compared, built with torch.optim and `lookahead_torch.Lookahead`.

Names follow the paper's tables. "SGD" is plain minibatch SGD; "Polyak" is
SGD with Polyak's heavy-ball momentum 0.9 (the protocol of these reproductions; the slides'
row is labelled only "POLYAK", see the Reproductions page); "LA(X)" is
Lookahead around X (the paper's sync, α = 0.5); "SNOO(X)" is Lookahead around X
whose sync is an outer optimizer's step instead: SGD with Nesterov momentum on
the pseudo-gradient Δ = φ − θ_{t,k} (`snoo`, `OuterStep`).
"""

from __future__ import annotations

import contextlib
import functools
import numbers
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch

from lookahead_torch import Lookahead

POLYAK_MOMENTUM = 0.9
INNERS = ("sgd", "polyak", "adam")
INNER_LABELS = {"sgd": "SGD", "polyak": "Polyak", "adam": "Adam"}


class OuterStep(NamedTuple):
    """SNOO's sync: outer SGD with Nesterov momentum on the pseudo-gradient Δ = φ − θ_{t,k}.

    At the k-th inner step of a cycle the slow weights take one step of
    ``torch.optim.SGD(lr=lr, momentum=momentum, nesterov=True)`` with Δ as
    their gradient, and the fast weights restart from them. Without momentum
    and with ``lr=α`` this would be the paper's sync φ ← φ + α(θ_{t,k} − φ)
    (eq. 0.1's recursion); SNOO and DiLoCo use ``lr ≈ 0.7`` and ``momentum``
    0.5–0.9 (torch's Nesterov SGD needs a momentum above 0).

    Attributes:
        lr: the outer learning rate.
        momentum: the outer (Nesterov) momentum.
        k: the synchronization period (inner steps per outer step).
    """

    lr: float
    momentum: float
    k: int


class OptimizerSpec(NamedTuple):
    """One row of a table.

    Attributes:
        key: short id used in JSON (``"la_sgd"``).
        label: the row label (``"LA(SGD)"``).
        inner: ``"sgd"``, ``"polyak"`` or ``"adam"``: which torch optimizer moves the fast weights.
        lookahead: whether it is wrapped in Lookahead.
        outer: ``None`` for the paper's sync (k and α from `build`'s
            arguments), else the outer step of SNOO with its own k.
    """

    key: str
    label: str
    inner: str
    lookahead: bool
    outer: OuterStep | None = None


SGD = OptimizerSpec("sgd", "SGD", "sgd", False)
POLYAK = OptimizerSpec("polyak", "Polyak", "polyak", False)
ADAM = OptimizerSpec("adam", "Adam", "adam", False)
LA_SGD = OptimizerSpec("la_sgd", "LA(SGD)", "sgd", True)
LA_ADAM = OptimizerSpec("la_adam", "LA(Adam)", "adam", True)
ALL = (SGD, POLYAK, ADAM, LA_SGD, LA_ADAM)
BY_KEY = {spec.key: spec for spec in ALL}
# One colour per inner optimizer in every figure: dashed alone, solid inside Lookahead.
COLORS = {"sgd": "tab:blue", "polyak": "tab:orange", "adam": "tab:green"}


def snoo(inner: str, lr: float = 0.7, momentum: float = 0.9, k: int = 5) -> OptimizerSpec:
    """The spec of SNOO(``inner``): Lookahead around ``inner`` with the outer step `OuterStep`.

    The key names every setting (``"snoo_adam_lr0.7_m0.9_k5"``), so the rows of
    a sweep never share one. The defaults: DiLoCo's outer lr and momentum, the paper's k.

    Raises:
        ValueError: ``inner`` not one of `INNERS`; ``lr`` not positive and
            finite; ``momentum`` outside ``(0, 1)``; ``k`` below 1.
        TypeError: ``lr`` or ``momentum`` not a real number, ``k`` not an int.
    """
    if inner not in INNERS:
        raise ValueError(f"inner must be one of {INNERS}, got {inner!r}")
    for name, value in (("lr", lr), ("momentum", momentum)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (0.0 < float(lr) < float("inf")):
        raise ValueError(f"lr must be positive and finite, got {lr!r}")
    if not (0.0 < float(momentum) < 1.0):  # torch's Nesterov SGD needs a momentum above 0
        raise ValueError(f"momentum must be in (0, 1), got {momentum!r}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    outer = OuterStep(float(lr), float(momentum), int(k))
    key = f"snoo_{inner}_lr{outer.lr:g}_m{outer.momentum:g}_k{outer.k}"
    label = f"SNOO({INNER_LABELS[inner]}) lr {outer.lr:g}, μ {outer.momentum:g}, k {outer.k}"
    return OptimizerSpec(key, label, inner, True, outer)


def line_style(spec: OptimizerSpec) -> dict[str, str]:
    """Matplotlib keyword arguments that draw ``spec`` the same way in every figure.

    Dashed: the inner optimizer alone; solid: Lookahead; dotted: SNOO.
    """
    style = "--" if not spec.lookahead else ("-" if spec.outer is None else ":")
    return {"color": COLORS[spec.inner], "linestyle": style}


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
    """The torch optimizer for ``spec`` at learning rate ``lr``.

    Lookahead takes ``k`` and ``alpha`` from here; SNOO (``spec.outer``) takes
    its k and outer step from the spec and has no α.
    """
    params = list(params)
    if spec.inner == "sgd":
        inner: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr)
    elif spec.inner == "polyak":
        inner = torch.optim.SGD(params, lr=lr, momentum=POLYAK_MOMENTUM)
    elif spec.inner == "adam":
        inner = torch.optim.Adam(params, lr=lr)
    else:
        raise ValueError(f"spec.inner must be 'sgd', 'polyak' or 'adam', got {spec.inner!r}")
    if not spec.lookahead:
        return inner
    if spec.outer is not None:
        outer = functools.partial(torch.optim.SGD, lr=spec.outer.lr, momentum=spec.outer.momentum,
                                  nesterov=True)
        return Lookahead(inner, k=spec.outer.k, outer=outer)
    return Lookahead(inner, k=k, alpha=alpha)


@contextlib.contextmanager
def evaluation_weights(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside, the model holds the weights to report: φ for Lookahead (the paper returns φ), else θ."""
    if isinstance(optimizer, Lookahead):
        with optimizer.slow_weights():
            yield
    else:
        yield
