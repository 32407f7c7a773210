"""An independent oracle for Lookahead with an outer optimizer (SNOO, DiLoCo), in plain Python.

Written from ``torch.optim.SGD``'s and ``torch.optim.Adam``'s documented
update rules, on Python lists of floats (float64), without NumPy, torch or
``lookahead_core``: the tests compare every backend's trajectory with this one.

The loop (one "cycle" of k inner steps, then the outer step)::

    θ ← φ
    k times:  θ ← inner.step(θ, ∇L(θ))
    Δ ← φ − θ                       (the pseudo-gradient)
    φ ← outer.step(φ, Δ)            (torch.optim's formulas, grad = Δ)
    θ ← φ
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

Vector = list[float]


@dataclass
class PlainSGD:
    """``torch.optim.SGD`` (momentum, dampening, weight decay, Nesterov) on one flat vector."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    buf: Vector | None = None

    def step(self, params: Vector, grads: Vector) -> Vector:
        g = [gi + self.weight_decay * pi for gi, pi in zip(grads, params)]
        if self.momentum != 0.0:
            if self.buf is None:
                self.buf = list(g)
            else:
                self.buf = [self.momentum * b + (1.0 - self.dampening) * gi
                            for b, gi in zip(self.buf, g)]
            if self.nesterov:
                g = [gi + self.momentum * b for gi, b in zip(g, self.buf)]
            else:
                g = list(self.buf)
        return [p - self.lr * gi for p, gi in zip(params, g)]


@dataclass
class PlainAdam:
    """``torch.optim.Adam`` (L2 weight decay, no amsgrad) on one flat vector."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    t: int = 0
    m: Vector = field(default_factory=list)
    v: Vector = field(default_factory=list)

    def step(self, params: Vector, grads: Vector) -> Vector:
        beta1, beta2 = self.betas
        if not self.m:
            self.m = [0.0] * len(params)
            self.v = [0.0] * len(params)
        self.t += 1
        g = [gi + self.weight_decay * pi for gi, pi in zip(grads, params)]
        self.m = [beta1 * m + (1.0 - beta1) * gi for m, gi in zip(self.m, g)]
        self.v = [beta2 * v + (1.0 - beta2) * gi * gi for v, gi in zip(self.v, g)]
        c1 = 1.0 - beta1 ** self.t
        c2 = 1.0 - beta2 ** self.t
        return [p - (self.lr / c1) * m / (math.sqrt(v) / math.sqrt(c2) + self.eps)
                for p, m, v in zip(params, self.m, self.v)]


def quadratic_gradients(n: int, seed: int) -> Callable[[int, Vector], Vector]:
    """∇L of a noisy diagonal quadratic ½Σ hᵢ(θᵢ − cᵢ)², noise drawn per step from ``seed``.

    Deterministic: the same (step, θ) gives the same gradient in every
    backend, so trajectories can be compared elementwise.
    """
    rng = random.Random(seed)
    curvature = [rng.uniform(0.2, 2.0) for _ in range(n)]
    centre = [rng.uniform(-1.0, 1.0) for _ in range(n)]
    noise: list[Vector] = []

    def gradient(step: int, theta: Vector) -> Vector:
        while len(noise) <= step:
            noise.append([rng.gauss(0.0, 0.1) for _ in range(n)])
        return [h * (x - c) + e for h, x, c, e in zip(curvature, theta, centre, noise[step])]

    return gradient


def outer_trajectory(
    theta0: Vector,
    gradient: Callable[[int, Vector], Vector],
    inner: PlainSGD | PlainAdam,
    outer: PlainSGD | PlainAdam,
    k: int,
    steps: int,
) -> list[tuple[Vector, Vector]]:
    """``(θ, φ)`` after each of ``steps`` inner steps (after the outer step when one follows)."""
    phi = list(theta0)
    theta = list(theta0)
    out = []
    for step in range(steps):
        theta = inner.step(theta, gradient(step, theta))
        if (step + 1) % k == 0:
            pseudo = [p - t for p, t in zip(phi, theta)]
            phi = outer.step(phi, pseudo)
            theta = list(phi)
        out.append((list(theta), list(phi)))
    return out


def relative_error(actual: Vector, expected: Vector) -> float:
    """max |a − e| / max |e| over the elements (normwise: an element passing zero is no outlier)."""
    scale = max(max(abs(e) for e in expected), 1e-300)
    return max(abs(a - e) for a, e in zip(actual, expected)) / scale
