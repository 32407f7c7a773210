"""The paper's analysis as functions: Proposition 1, Lemma 1, Proposition 2.

Everything here is written against the Array API and works on NumPy,
array-api-strict, PyTorch, JAX and CuPy arrays. Equation numbers are the
paper's (see the Theory page of the documentation for the derivations and the
corrections to the slides' transcription).

- Proposition 1 (eq. 0.3): `optimal_alpha`, the α minimizing a quadratic on
  the line through θ_{t,0} and θ_{t,k}.
- The noisy quadratic model (NQM, eq. 0.6): L̂(x) = ½ Σᵢ aᵢ (xᵢ − cᵢ)² with
  cᵢ ~ N(0, σᵢ²) drawn afresh for every gradient, so the stochastic gradient is
  aᵢ(xᵢ − cᵢ). Every coordinate evolves independently; the functions take the
  curvatures aᵢ (``curvature``) and the noise variances σᵢ² (``noise_var``) as
  arrays of one shape and work element-wise.
    - `nqm_expected_loss` (eq. 0.7),
    - `nqm_sgd_moments` (eqs. 0.10, 0.11) and `nqm_lookahead_moments`
      (Lemma 1, eqs. 0.12, 0.13): exact moment recurrences,
    - `nqm_moment_trajectory`: the same at the resolution of single steps,
      for the fast and the slow weights,
    - `nqm_sgd_variance_fixed_point` (eqs. 0.8, 0.19),
      `nqm_lookahead_variance_fixed_point` (eqs. 0.9, 0.20) and
      `nqm_variance_ratio` (Proposition 2),
    - `nqm_outer_moments`, `nqm_outer_stationary_moments`,
      `nqm_outer_stationary_variance`, `nqm_outer_variance_ratio` and
      `nqm_outer_rate`: the same analysis when the sync is an outer SGD with
      heavy-ball or Nesterov momentum on the pseudo-gradient φ − θ_{t,k}
      (SNOO, DiLoCo's outer loop); μ = 0 and η = α is Lemma 1 again,
    - `nqm_simulate`: Monte Carlo with the library's own optimizers.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import array_api_compat
import numpy as np

from ._inner import InnerOptimizer
from ._lookahead import Lookahead
from ._validation import (
    check_alpha,
    check_arrays,
    check_k,
    check_matching,
    check_nonnegative,
    check_unit_interval,
)

__all__ = [
    "NQMMoments",
    "NQMOuterMoments",
    "NQMOuterRate",
    "nqm_expected_loss",
    "nqm_lookahead_moments",
    "nqm_lookahead_variance_fixed_point",
    "nqm_moment_trajectory",
    "nqm_outer_moments",
    "nqm_outer_rate",
    "nqm_outer_start",
    "nqm_outer_stationary_moments",
    "nqm_outer_stationary_variance",
    "nqm_outer_variance_ratio",
    "nqm_sgd_moments",
    "nqm_sgd_variance_fixed_point",
    "nqm_simulate",
    "nqm_variance_ratio",
    "optimal_alpha",
]

Array = Any


# --------------------------------------------------------------------------- checks


def _one_array(name: str, x: Any) -> tuple[Any, Array]:
    if not array_api_compat.is_array_api_obj(x):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    xp, (x,) = check_arrays(name, [x])
    return xp, x


def _same_as(name: str, x: Any, ref_name: str, ref: Array) -> Array:
    if not array_api_compat.is_array_api_obj(x):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    check_matching(name, [x], ref_name, [ref])
    return x


def _check_finite(xp: Any, name: str, x: Array) -> None:
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name} must be finite everywhere")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def _check_nqm(curvature: Any, noise_var: Any) -> tuple[Any, Array, Array]:
    """The NQM's aᵢ > 0 and σᵢ² >= 0: same library, shape and dtype, finite."""
    xp, curvature = _one_array("curvature", curvature)
    noise_var = _same_as("noise_var", noise_var, "curvature", curvature)
    _check_finite(xp, "curvature", curvature)
    _check_finite(xp, "noise_var", noise_var)
    if not bool(xp.all(curvature > 0)):
        raise ValueError("curvature must be > 0 everywhere (A is positive definite)")
    if not bool(xp.all(noise_var >= 0)):
        raise ValueError("noise_var must be >= 0 everywhere (σ² is a variance)")
    return xp, curvature, noise_var


def _check_moments(mean: Any, var: Any, curvature: Array) -> tuple[Array, Array]:
    mean = _same_as("mean", mean, "curvature", curvature)
    var = _same_as("var", var, "curvature", curvature)
    xp = array_api_compat.array_namespace(var)
    if not bool(xp.all(var >= 0)):
        raise ValueError("var must be >= 0 everywhere (a variance)")
    return mean, var


def _check_stable_lr(xp: Any, lr: Any, curvature: Array) -> tuple[float, Array]:
    """Proposition 2's hypothesis 0 < γaᵢ < 2; returns (γ, γa)."""
    lr = check_nonnegative("lr", lr)
    step = lr * curvature
    if lr == 0.0 or not bool(xp.all(step < 2.0)):
        raise ValueError(
            "lr must satisfy 0 < lr * curvature < 2 everywhere (Proposition 2: "
            f"0 < γ < 2 / max aᵢ), got lr={lr} and max lr * curvature = {float(xp.max(step))}"
        )
    return lr, step


def _check_positive_alpha(alpha: Any) -> float:
    alpha = check_alpha(alpha)
    if alpha == 0.0:
        raise ValueError(
            "alpha must be in (0, 1] for a fixed point: with alpha = 0 the slow weights "
            "never move and keep their initial variance (the recurrence is not a contraction)"
        )
    return alpha


# --------------------------------------------------------------------------- Proposition 1


def optimal_alpha(theta0: Array, thetak: Array, A: Array, b: Array) -> Array:
    """Proposition 1 (eq. 0.3): the best slow step size on a quadratic.

    For L(x) = ½xᵀAx − bᵀx, returns

        α* = argmin_α L(θ_{t,0} + α(θ_{t,k} − θ_{t,0}))
           = (θ_{t,0} − θ*)ᵀA(θ_{t,0} − θ_{t,k}) / (θ_{t,0} − θ_{t,k})ᵀA(θ_{t,0} − θ_{t,k}).

    The numerator is evaluated as ∇L(θ_{t,0})ᵀ(θ_{t,0} − θ_{t,k}) with
    ∇L(θ_{t,0}) = Aθ_{t,0} − b, which equals eq. 0.3's numerator when A is
    invertible (``b = Aθ*``) and needs neither ``A⁻¹`` nor ``θ*``: a singular A
    works as long as it is positive along the line. Only the symmetric part of
    a dense A enters L, so a non-symmetric A is read as ½(A + Aᵀ). ``α*`` is
    not clipped to [0, 1].

    Args:
        theta0: θ_{t,0}, a 1-D array of d entries.
        thetak: θ_{t,k}, like ``theta0``.
        A: the curvature, either a dense (d, d) matrix or its diagonal as a
            1-D array of d entries; same library and dtype as ``theta0``.
        b: the linear term, like ``theta0``.

    Returns:
        ``α*`` as a 0-d array in the namespace and dtype of ``theta0``.

    Raises:
        ValueError: ``thetak`` equals ``theta0`` (no direction), A is not
            positive along θ_{t,k} − θ_{t,0} (L has no minimum on the line),
            an input is not finite, or shapes disagree.
        TypeError: an input is not a real floating array of ``theta0``'s
            library and dtype.
    """
    xp, theta0 = _one_array("theta0", theta0)
    if theta0.ndim != 1:
        raise ValueError(f"theta0 must be 1-D, got shape {tuple(theta0.shape)}")
    thetak = _same_as("thetak", thetak, "theta0", theta0)
    b = _same_as("b", b, "theta0", theta0)
    if not array_api_compat.is_array_api_obj(A):
        raise TypeError(f"A must be an array, got {type(A).__name__}")
    (n,) = theta0.shape
    if tuple(A.shape) not in ((n,), (n, n)):
        raise ValueError(
            f"A must have shape ({n},) (its diagonal) or ({n}, {n}) (dense) for "
            f"theta0 of shape ({n},), got {tuple(A.shape)}"
        )
    # Library, dtype and device as theta0's (check_matching on A's first row or entry).
    check_matching("A", [A if A.ndim == 1 else A[0, ...]], "theta0", [theta0])
    for name, x in (("theta0", theta0), ("thetak", thetak), ("A", A), ("b", b)):
        _check_finite(xp, name, x)

    d = theta0 - thetak
    if A.ndim == 1:
        A_d, A_theta0 = A * d, A * theta0
    else:
        A_d = 0.5 * (A @ d + A.T @ d)
        A_theta0 = 0.5 * (A @ theta0 + A.T @ theta0)
    curvature = xp.sum(d * A_d)
    if not bool(xp.any(d != 0)):
        raise ValueError(
            "thetak must differ from theta0: the line θ_{t,0} + α(θ_{t,k} − θ_{t,0}) "
            "is a single point and α* is undefined"
        )
    if not bool(curvature > 0):
        raise ValueError(
            "A must be positive along thetak - theta0: (θ_{t,0} − θ_{t,k})ᵀA(θ_{t,0} − θ_{t,k}) = "
            f"{float(curvature)} <= 0, so L has no minimum on the line"
        )
    return xp.asarray(xp.sum((A_theta0 - b) * d) / curvature)


# --------------------------------------------------------------------------- NQM: helpers


def _one_plus_rho_power(xp: Any, step: Array, n: int) -> Array:
    """1 + ρⁿ for ρ = 1 − γa and 0 < γa < 2, without cancellation.

    With s = min(γa, 2 − γa) (exact: Sterbenz) |ρ| = 1 − s, so
    |ρ|ⁿ = exp(n·log1p(−s)). When ρⁿ < 0 (ρ < 0, n odd),
    1 + ρⁿ = 1 − |ρ|ⁿ = −expm1(n·log1p(−s)) keeps full relative accuracy
    as γa → 2, where the direct 1 + (1 − γa)ⁿ would cancel.
    """
    s = xp.minimum(step, 2.0 - step)
    zero_rho = s >= 1.0  # γa = 1: ρ = 0, log1p(−1) = −∞
    log_abs = n * xp.log1p(-xp.where(zero_rho, xp.zeros_like(s), s))
    magnitude = xp.where(zero_rho, xp.zeros_like(s), xp.exp(log_abs))
    if n % 2 == 0:
        return 1.0 + magnitude
    one_minus_magnitude = xp.where(zero_rho, xp.ones_like(s), -xp.expm1(log_abs))
    return xp.where(step > 1.0, one_minus_magnitude, 1.0 + magnitude)


# --------------------------------------------------------------------------- NQM: eq. 0.7


def nqm_expected_loss(mean: Array, var: Array, curvature: Array, noise_var: Array) -> Array:
    """Expected NQM loss of iterates with given means and variances (eq. 0.7).

        E[L̂(θ)] = ½ Σᵢ aᵢ (E[θᵢ]² + V[θᵢ] + σᵢ²)

    The expectation is over the iterate and over a fresh c ~ N(0, Σ),
    independent of it.

    Args:
        mean: E[θᵢ], shape ``(..., d)``.
        var: V[θᵢ], shape ``(..., d)`` like ``mean``, >= 0.
        curvature: aᵢ > 0, shape ``(d,)``.
        noise_var: σᵢ² >= 0, shape ``(d,)``.

    Returns:
        The expected loss, shape ``(...)`` (the sum runs over the last axis).
    """
    xp, curvature, noise_var = _check_nqm(curvature, noise_var)
    if curvature.ndim != 1:
        raise ValueError(f"curvature must be 1-D, got shape {tuple(curvature.shape)}")
    for name, x in (("mean", mean), ("var", var)):
        if not array_api_compat.is_array_api_obj(x):
            raise TypeError(f"{name} must be an array, got {type(x).__name__}")
        if x.ndim < 1 or tuple(x.shape)[-1:] != tuple(curvature.shape):
            raise ValueError(
                f"{name} must have shape (..., {curvature.shape[0]}) to match curvature, "
                f"got {tuple(x.shape)}"
            )
        check_matching(name, [x[(0,) * (x.ndim - 1) + (...,)]], "curvature", [curvature])
    if tuple(mean.shape) != tuple(var.shape):
        raise ValueError(f"var must have shape {tuple(mean.shape)} like mean, got {tuple(var.shape)}")
    if not bool(xp.all(var >= 0)):
        raise ValueError("var must be >= 0 everywhere (a variance)")
    return xp.asarray(0.5 * xp.sum(curvature * (mean * mean + var + noise_var), axis=-1))


# --------------------------------------------------------------------------- NQM: recurrences


def nqm_sgd_moments(
    mean: Array, var: Array, curvature: Array, noise_var: Array, lr: float
) -> tuple[Array, Array]:
    """One SGD step on the NQM, in moments (eqs. 0.10, 0.11).

    x ← x − γ a (x − c) = (1 − γa) x + γ a c with c ~ N(0, σ²) independent of x:

        E[x'] = (1 − γa) E[x]                          (0.10)
        V[x'] = (1 − γa)² V[x] + γ² a² σ²              (0.11)

    Args:
        mean: E[x], shaped like ``curvature``.
        var: V[x] >= 0, shaped like ``curvature``.
        curvature: aᵢ > 0.
        noise_var: σᵢ² >= 0, shaped like ``curvature``.
        lr: γ >= 0 (any value: the recurrence holds whether or not it converges).

    Returns:
        ``(mean, var)`` after the step.
    """
    xp, curvature, noise_var = _check_nqm(curvature, noise_var)
    mean, var = _check_moments(mean, var, curvature)
    lr = check_nonnegative("lr", lr)
    rho = 1.0 - lr * curvature
    injected = (lr * curvature) ** 2 * noise_var
    return xp.asarray(rho * mean), xp.asarray(rho * rho * var + injected)


def nqm_lookahead_moments(
    mean: Array,
    var: Array,
    curvature: Array,
    noise_var: Array,
    lr: float,
    k: int,
    alpha: float,
) -> tuple[Array, Array]:
    """One outer step of Lookahead(SGD) on the NQM: Lemma 1 (eqs. 0.12, 0.13).

    From φ_t (mean, var) the inner loop gives θ_{t,k} = ρᵏ φ_t + (noise
    independent of φ_t) with ρ = 1 − γa, so cov(φ_t, θ_{t,k}) = ρᵏ V[φ_t]
    (eq. 0.17) and φ_{t+1} = (1 − α) φ_t + α θ_{t,k} has

        E[φ_{t+1}] = [1 − α + αρᵏ] E[φ_t]                                  (0.12)
        V[φ_{t+1}] = [1 − α + αρᵏ]² V[φ_t] + α² Σ_{i<k} ρ²ⁱ γ² a² σ²      (0.13)

    The sum is accumulated term by term, as written.

    Args:
        mean: E[φ_t], shaped like ``curvature``.
        var: V[φ_t] >= 0, shaped like ``curvature``.
        curvature: aᵢ > 0.
        noise_var: σᵢ² >= 0.
        lr: γ >= 0.
        k: synchronization period, an ``int`` >= 1.
        alpha: slow step size in [0, 1].

    Returns:
        ``(mean, var)`` of φ_{t+1}.
    """
    xp, curvature, noise_var = _check_nqm(curvature, noise_var)
    mean, var = _check_moments(mean, var, curvature)
    lr = check_nonnegative("lr", lr)
    k = check_k(k)
    alpha = check_alpha(alpha)
    rho = 1.0 - lr * curvature
    injected = (lr * curvature) ** 2 * noise_var
    noise = xp.zeros_like(var)
    for _ in range(k):  # Σ_{i<k} ρ²ⁱ γ²a²σ²: the inner loop's variance from V = 0
        noise = rho * rho * noise + injected
    contraction = (1.0 - alpha) + alpha * rho**k
    return (
        xp.asarray(contraction * mean),
        xp.asarray(contraction * contraction * var + alpha**2 * noise),
    )


class NQMMoments(NamedTuple):
    """Means and variances of the fast and slow weights after each step.

    Every field has shape ``(steps + 1, d)``: row s is after s steps (row 0 is
    the start). The slow weights are φ as it stands after step s, i.e. after
    the sync when s is a multiple of k; for SGD they equal the fast weights.

    Attributes:
        fast_mean: E[θ].
        fast_var: V[θ].
        slow_mean: E[φ].
        slow_var: V[φ].
    """

    fast_mean: Array
    fast_var: Array
    slow_mean: Array
    slow_var: Array


def nqm_moment_trajectory(
    mean0: Array,
    var0: Array,
    curvature: Array,
    noise_var: Array,
    lr: float,
    steps: int,
    k: int = 1,
    alpha: float = 1.0,
) -> NQMMoments:
    """Exact step-by-step moments of Lookahead(SGD) on the NQM.

    Tracks E and V of the fast weights θ and the slow weights φ and their
    covariance C = cov(φ, θ). An inner step is eqs. 0.10, 0.11 for θ, and
    C ← ρC because the fresh noise is independent of φ; the sync is eq. 0.15,

        V[φ'] = (1 − α)² V[φ] + α² V[θ] + 2α(1 − α) C,

    after which θ ← φ' (so V[θ] = C = V[φ']). After k inner steps C = ρᵏ V[φ]
    (eq. 0.17), so at the syncs this reproduces Lemma 1 (eqs. 0.12, 0.13).
    ``alpha = 1`` (any k) is plain SGD, the default.

    Args:
        mean0: E[θ₀], shaped like ``curvature``.
        var0: V[θ₀] >= 0 (usually zeros: a fixed start).
        curvature: aᵢ > 0.
        noise_var: σᵢ² >= 0.
        lr: γ >= 0.
        steps: number of inner steps, an ``int`` >= 0.
        k: synchronization period, an ``int`` >= 1.
        alpha: slow step size in [0, 1].

    Returns:
        `NQMMoments` with rows 0..steps.
    """
    xp, curvature, noise_var = _check_nqm(curvature, noise_var)
    mean0, var0 = _check_moments(mean0, var0, curvature)
    lr = check_nonnegative("lr", lr)
    steps = _check_int("steps", steps, 0)
    k = check_k(k)
    alpha = check_alpha(alpha)
    rho = 1.0 - lr * curvature
    injected = (lr * curvature) ** 2 * noise_var
    fast_mean, fast_var = mean0, var0
    slow_mean, slow_var, cov = mean0, var0, var0
    rows = [(fast_mean, fast_var, slow_mean, slow_var)]
    for s in range(1, steps + 1):
        fast_mean = rho * fast_mean
        fast_var = rho * rho * fast_var + injected
        cov = rho * cov
        if s % k == 0:
            slow_mean = (1.0 - alpha) * slow_mean + alpha * fast_mean
            slow_var = (
                (1.0 - alpha) ** 2 * slow_var
                + alpha**2 * fast_var
                + (2.0 * alpha * (1.0 - alpha)) * cov
            )
            fast_mean, fast_var, cov = slow_mean, slow_var, slow_var
        rows.append((fast_mean, fast_var, slow_mean, slow_var))
    return NQMMoments(*(xp.stack([xp.asarray(r[j]) for r in rows]) for j in range(4)))


# --------------------------------------------------------------------------- Proposition 2


def nqm_sgd_variance_fixed_point(curvature: Array, noise_var: Array, lr: float) -> Array:
    """``V*_SGD``, the fixed point of eq. 0.11 (eqs. 0.8, 0.19, corrected).

        V*_SGD = γ² a² σ² / (1 − (1 − γa)²) = γ a σ² / (2 − γa)

    The second form (1 − (1 − γa)² = γa(2 − γa)) is the one evaluated. The
    slides' eq. 0.8 shows Σ² where Σ (σ² per coordinate) belongs, and the
    first equation of 0.19 drops a γ (γA²Σ for γ²A²Σ).

    Args:
        curvature: aᵢ > 0.
        noise_var: σᵢ² >= 0.
        lr: γ with 0 < γaᵢ < 2 everywhere (Proposition 2's hypothesis).

    Returns:
        ``V*_SGD`` per coordinate.
    """
    xp, curvature, noise_var = _check_nqm(curvature, noise_var)
    _, step = _check_stable_lr(xp, lr, curvature)
    return xp.asarray(step * noise_var / (2.0 - step))


def nqm_variance_ratio(curvature: Array, lr: float, k: int, alpha: float) -> Array:
    """``V*_LA / V*_SGD`` per coordinate (Proposition 2, eq. 0.9).

    With ρ = 1 − γa, eq. 0.9's factor

        α²(1 − ρ²ᵏ) / [α²(1 − ρ²ᵏ) + 2α(1 − α)(1 − ρᵏ)]
          = α(1 + ρᵏ) / [α(1 + ρᵏ) + 2(1 − α)]

    (divide by α(1 − ρᵏ) > 0; 1 − ρ²ᵏ = (1 − ρᵏ)(1 + ρᵏ)). It is independent
    of σ², increasing in α, < 1 for α < 1 and exactly 1 at α = 1 (the second
    form keeps that exact in floating point). As k → ∞ it tends to α/(2 − α).
    1 + ρᵏ is computed through ``expm1``/``log1p``, accurate for γa near 2.

    Args:
        curvature: aᵢ > 0.
        lr: γ with 0 < γaᵢ < 2 everywhere.
        k: synchronization period, an ``int`` >= 1.
        alpha: slow step size in (0, 1].

    Returns:
        The ratio per coordinate, in (0, 1].
    """
    xp, curvature = _one_array("curvature", curvature)
    _check_nqm(curvature, xp.zeros_like(curvature))
    _, step = _check_stable_lr(xp, lr, curvature)
    k = check_k(k)
    alpha = _check_positive_alpha(alpha)
    one_plus = _one_plus_rho_power(xp, step, k)
    shrunk = alpha * one_plus
    return xp.asarray(shrunk / (shrunk + 2.0 * (1.0 - alpha)))


def nqm_lookahead_variance_fixed_point(
    curvature: Array, noise_var: Array, lr: float, k: int, alpha: float
) -> Array:
    """``V*_LA``, the fixed point of Lemma 1's eq. 0.13 (Proposition 2, eqs. 0.9, 0.20).

        V*_LA = α²(1 − ρ²ᵏ) / [α²(1 − ρ²ᵏ) + 2α(1 − α)(1 − ρᵏ)] · V*_SGD

    evaluated as `nqm_variance_ratio` times `nqm_sgd_variance_fixed_point`, so
    ``V*_LA <= V*_SGD`` holds in floating point too, with equality at α = 1 (or
    σ² = 0). The slides' eq. 0.20 writes ``(I − γA)^2 k`` for (I − γA)²ᵏ.

    Args:
        curvature: aᵢ > 0.
        noise_var: σᵢ² >= 0.
        lr: γ with 0 < γaᵢ < 2 everywhere.
        k: synchronization period, an ``int`` >= 1.
        alpha: slow step size in (0, 1] (α = 0 freezes φ: no fixed point).

    Returns:
        ``V*_LA`` per coordinate.
    """
    ratio = nqm_variance_ratio(curvature, lr, k, alpha)
    return nqm_sgd_variance_fixed_point(curvature, noise_var, lr) * ratio


# --------------------------------------------------------------------------- outer momentum


class NQMOuterMoments(NamedTuple):
    """Moments of the slow weights φ and the outer momentum buffer b, per coordinate.

    The state of `nqm_outer_moments` at the start of a cycle. Second moments
    are raw (not centred); ``slow_var`` gives V[φ] = E[φ²] − E[φ]². The
    centred covariance of (φ, b) follows the same map as the raw second
    moments, because the means follow the mean map and the noise has mean 0.

    Attributes:
        slow_mean: E[φ].
        buf_mean: E[b].
        slow_sq: E[φ²].
        cross: E[φ b].
        buf_sq: E[b²].
    """

    slow_mean: Array
    buf_mean: Array
    slow_sq: Array
    cross: Array
    buf_sq: Array

    @property
    def slow_var(self) -> Array:
        """V[φ] = E[φ²] − E[φ]² (loses relative accuracy when V[φ] ≪ E[φ]²)."""
        return self.slow_sq - self.slow_mean * self.slow_mean


class NQMOuterRate(NamedTuple):
    """How fast the mean of outer-momentum Lookahead contracts on the NQM.

    The mean map of one cycle has the characteristic polynomial
    λ² − T λ + D, with eigenvalues λ± = (T ± √(T² − 4D)) / 2.

    Attributes:
        per_cycle: the spectral radius max |λ±| of the mean map, per cycle.
        per_step: ``per_cycle ** (1 / k)``, per inner step (comparable with
            SGD's |1 − γa|).
        trace: T, the trace of the mean map.
        det: D, its determinant.
    """

    per_cycle: Array
    per_step: Array
    trace: Array
    det: Array


def _check_outer(outer_lr: Any, momentum: Any, nesterov: Any) -> tuple[float, float, bool]:
    """η > 0 finite, μ in [0, 1), ``nesterov`` a bool."""
    outer_lr = check_nonnegative("outer_lr", outer_lr)
    if outer_lr == 0.0:
        raise ValueError(
            "outer_lr must be > 0 (with outer_lr = 0 the slow weights never move), got 0.0"
        )
    momentum = check_unit_interval("momentum", momentum)
    if not isinstance(nesterov, bool):
        raise TypeError(
            f"nesterov must be a bool, got {nesterov!r} of type {type(nesterov).__name__}"
        )
    return outer_lr, momentum, nesterov


def _one_minus_rho_power(xp: Any, step: Array, n: int) -> Array:
    """g = 1 − ρⁿ for ρ = 1 − γa and 0 < γa < 2, without cancellation.

    The companion of `_one_plus_rho_power`: |ρ|ⁿ = exp(n·log1p(−s)) with
    s = min(γa, 2 − γa). When ρⁿ >= 0, 1 − ρⁿ = −expm1(n·log1p(−s)) keeps
    full relative accuracy as γa → 0 (where 1 − (1 − γa)ⁿ ≈ nγa would
    cancel); when ρⁿ < 0 it is 1 + |ρ|ⁿ.
    """
    s = xp.minimum(step, 2.0 - step)
    zero_rho = s >= 1.0
    log_abs = n * xp.log1p(-xp.where(zero_rho, xp.zeros_like(s), s))
    one_minus = xp.where(zero_rho, xp.ones_like(s), -xp.expm1(log_abs))
    if n % 2 == 0:
        return one_minus
    one_plus = xp.where(zero_rho, xp.ones_like(s), 1.0 + xp.exp(log_abs))
    return xp.where(step > 1.0, one_plus, one_minus)


def _outer_map(g: Array, outer_lr: float, momentum: float, nesterov: bool):
    """Entries of the mean map M = [[m11, m12], [m21, m22]] and the noise vector (u1, −1)."""
    G = outer_lr * g
    if nesterov:
        m11 = 1.0 - (1.0 + momentum) * G
        m12 = -outer_lr * momentum**2
        u1 = outer_lr * (1.0 + momentum)
    else:
        m11 = 1.0 - G
        m12 = -outer_lr * momentum
        u1 = outer_lr
    return m11, m12, g, momentum, u1


def nqm_outer_start(mean: Array, var: Array) -> NQMOuterMoments:
    """The state before the first sync: φ₀ with E[φ₀] = ``mean``, V[φ₀] = ``var``, b = 0.

    Starting the buffer at b = 0 reproduces ``torch.optim.SGD``'s first-step
    convention exactly: with dampening 0 its first sync sets b ← Δ, and the
    recurrence's b ← μ·0 + Δ is the same number. So no separate first-sync
    rule is needed (and the stationary quantities do not depend on the start
    at all).

    Args:
        mean: E[φ₀], a real floating array (one entry per NQM coordinate).
        var: V[φ₀] >= 0, like ``mean``.

    Returns:
        `NQMOuterMoments` with E[b] = E[φ₀b] = E[b²] = 0.
    """
    xp, mean = _one_array("mean", mean)
    var = _same_as("var", var, "mean", mean)
    if not bool(xp.all(var >= 0)):
        raise ValueError("var must be >= 0 everywhere (a variance)")
    zero = xp.zeros_like(mean)
    return NQMOuterMoments(mean, zero, var + mean * mean, zero, zero)


def nqm_outer_moments(
    moments: NQMOuterMoments,
    curvature: Array,
    noise_var: Array,
    lr: float,
    k: int,
    outer_lr: float,
    momentum: float,
    nesterov: bool = False,
) -> NQMOuterMoments:
    """One cycle of Lookahead(SGD) with an outer SGD with momentum on the NQM.

    The outer step treats Δ = φ − θ_{t,k} as a gradient (Lookahead's sync is
    SGD with learning rate α on it): with outer learning rate η and momentum
    μ (``torch.optim.SGD``, dampening 0)

        b' = μ b + Δ
        d  = b'              (heavy ball)   or   Δ + μ b'   (Nesterov)
        φ' = φ − η d,   θ ← φ'.

    Per coordinate, k SGD steps from θ_{t,0} = φ give θ_{t,k} = ρᵏ φ + ξ with
    ρ = 1 − γa and ξ independent of (φ, b), E[ξ] = 0 and
    V[ξ] = s² = Σ_{i<k} ρ²ⁱ γ²a²σ² (the noise term of Lemma 1, eq. 0.13).
    With g = 1 − ρᵏ, Δ = g φ − ξ, so x = (φ, b) follows x' = M x + u ξ:

        heavy ball:  M = [[1 − ηg, −ημ ], [g, μ]],   u = (η, −1)
        Nesterov:    M = [[1 − η(1 + μ)g, −ημ²], [g, μ]],   u = (η(1 + μ), −1)

    and the moments follow E[x'] = M E[x], E[x'x'ᵀ] = M E[xxᵀ] Mᵀ + s² u uᵀ,
    i.e. with M = [[m₁₁, m₁₂], [m₂₁, m₂₂]] and u = (u₁, −1),

        E[φ'²]  = m₁₁² E[φ²] + 2 m₁₁m₁₂ E[φb] + m₁₂² E[b²] + s² u₁²
        E[φ'b'] = m₁₁m₂₁ E[φ²] + (m₁₁m₂₂ + m₁₂m₂₁) E[φb]
                  + m₁₂m₂₂ E[b²] − s² u₁
        E[b'²]  = m₂₁² E[φ²] + 2 m₂₁m₂₂ E[φb] + m₂₂² E[b²] + s².

    With μ = 0 and η = α both variants are Lemma 1 (eqs. 0.12, 0.13):
    m₁₁ = 1 − α + αρᵏ, m₁₂ = 0, u₁ = α. The first sync's b ← Δ of
    ``torch.optim.SGD`` is b ← μ·0 + Δ: start from b = 0 (`nqm_outer_start`).

    Args:
        moments: the `NQMOuterMoments` at the start of the cycle, each field
            shaped like ``curvature``.
        curvature: aᵢ > 0.
        noise_var: σᵢ² >= 0.
        lr: the inner learning rate γ >= 0.
        k: synchronization period, an ``int`` >= 1.
        outer_lr: η > 0.
        momentum: μ in [0, 1) (μ = 0 with Nesterov is allowed here, unlike
            in ``torch.optim.SGD``: it is the same map as heavy ball).
        nesterov: Nesterov (True) or heavy-ball (False) momentum.

    Returns:
        The `NQMOuterMoments` after the cycle's sync.
    """
    xp, curvature, noise_var = _check_nqm(curvature, noise_var)
    if not isinstance(moments, tuple) or len(moments) != 5:
        raise TypeError(
            "moments must be an NQMOuterMoments (slow_mean, buf_mean, slow_sq, cross, buf_sq), "
            f"got {type(moments).__name__}"
        )
    fields = NQMOuterMoments._fields
    state = [
        _same_as(f"moments.{name}", x, "curvature", curvature)
        for name, x in zip(fields, moments)
    ]
    m_phi, m_b, p, q, r = state
    for name, x in (("slow_sq", p), ("buf_sq", r)):
        if not bool(xp.all(x >= 0)):
            raise ValueError(f"moments.{name} must be >= 0 everywhere (a second moment)")
    lr = check_nonnegative("lr", lr)
    k = check_k(k)
    outer_lr, momentum, nesterov = _check_outer(outer_lr, momentum, nesterov)
    rho = 1.0 - lr * curvature
    injected = (lr * curvature) ** 2 * noise_var
    s2 = xp.zeros_like(curvature)
    for _ in range(k):  # Σ_{i<k} ρ²ⁱ γ²a²σ², as in Lemma 1
        s2 = rho * rho * s2 + injected
    g = 1.0 - rho**k
    m11, m12, m21, m22, u1 = _outer_map(g, outer_lr, momentum, nesterov)
    return NQMOuterMoments(
        xp.asarray(m11 * m_phi + m12 * m_b),
        xp.asarray(m21 * m_phi + m22 * m_b),
        xp.asarray(m11 * m11 * p + 2.0 * m11 * m12 * q + m12 * m12 * r + u1 * u1 * s2),
        xp.asarray(m11 * m21 * p + (m11 * m22 + m12 * m21) * q + m12 * m22 * r - u1 * s2),
        xp.asarray(m21 * m21 * p + 2.0 * m21 * m22 * q + m22 * m22 * r + s2),
    )


def _outer_g_and_check(curvature: Array, lr: Any, k: Any, outer_lr: Any, momentum: Any,
                       nesterov: Any) -> tuple[Any, Array, Array, int, float, float, bool]:
    xp, curvature = _one_array("curvature", curvature)
    _check_nqm(curvature, xp.zeros_like(curvature))
    _, step = _check_stable_lr(xp, lr, curvature)
    k = check_k(k)
    outer_lr, momentum, nesterov = _check_outer(outer_lr, momentum, nesterov)
    return xp, step, _one_minus_rho_power(xp, step, k), k, outer_lr, momentum, nesterov


def _outer_stationary_parts(xp: Any, step: Array, g: Array, outer_lr: float, momentum: float,
                            nesterov: bool) -> tuple[Array, Array, Array, Array]:
    """(E[φ²], E[φb], E[b²]) / V*_SGD at the fixed point and the stability mask."""
    G = outer_lr * g
    two_minus_g = 2.0 - g  # 1 + ρᵏ, in (0, 2)
    if nesterov:
        damp = 1.0 - momentum + momentum * G
        edge = 2.0 * (1.0 + momentum) - (1.0 + 2.0 * momentum) * G
        slow_num = (1.0 + momentum) + momentum * (1.0 + 2.0 * momentum) * G
        cross_num = outer_lr * (1.0 + 2.0 * momentum)
    else:
        damp = xp.full_like(g, 1.0 - momentum)
        edge = 2.0 * (1.0 + momentum) - G
        slow_num = xp.full_like(g, 1.0 + momentum)
        cross_num = outer_lr
    stable = (damp > 0) & (edge > 0)
    den = xp.where(stable, damp * edge, xp.ones_like(g))
    # s² = V*_SGD · (1 − ρ²ᵏ) = V*_SGD · g (2 − g): the factor g cancels in E[φ²]
    slow = outer_lr * two_minus_g * slow_num / den
    cross = -g * two_minus_g * cross_num / den  # b leans against φ: E[φb] < 0
    buf = 2.0 * g * two_minus_g / den
    return slow, cross, buf, stable


def nqm_outer_variance_ratio(
    curvature: Array, lr: float, k: int, outer_lr: float, momentum: float, nesterov: bool = False
) -> Array:
    """``V*_outer / V*_SGD`` per coordinate: the stationary variance of φ against SGD's.

    The fixed point of `nqm_outer_moments` (its means go to 0) solves
    S = M S Mᵀ + s² u uᵀ for the 2×2 second-moment matrix S of (φ, b), a
    3×3 linear system. Solved in closed form (G = ηg, g = 1 − ρᵏ, and
    s² = V*_SGD·(1 − ρ²ᵏ) = V*_SGD·g(2 − g)):

        heavy ball:  V*_outer / V*_SGD = η(1 + μ)(2 − g) / [(1 − μ)(2(1 + μ) − G)]
        Nesterov:    V*_outer / V*_SGD = η(2 − g)[(1 + μ) + μ(1 + 2μ)G]
                                         / [(1 − μ + μG)(2(1 + μ) − (1 + 2μ)G)]

    With μ = 0 and η = α both are Proposition 2's α(1 + ρᵏ) / [α(1 + ρᵏ) + 2(1 − α)]
    (eq. 0.9). The two factors of each denominator are positive exactly when
    the mean map is stable (spectral radius < 1, the Jury conditions of
    λ² − Tλ + D; see `nqm_outer_rate`); where it is not, the variance grows
    without bound and the ratio is ``inf``. k = 1, η = 1 is SGD with heavy-ball
    (or Nesterov) momentum μ on the NQM itself, whose known stationary
    variance γaσ²(1 + μ) / [(1 − μ)(2(1 + μ) − γa)] the first line gives.
    The fixed point does not depend on the start (nor on the first sync's
    b ← Δ convention). 1 ± ρᵏ are computed through ``expm1``/``log1p``.

    Args:
        curvature: aᵢ > 0.
        lr: γ with 0 < γaᵢ < 2 everywhere (Proposition 2's hypothesis).
        k: synchronization period, an ``int`` >= 1.
        outer_lr: η > 0.
        momentum: μ in [0, 1).
        nesterov: Nesterov (True) or heavy-ball (False) momentum.

    Returns:
        The ratio per coordinate, ``inf`` where the outer loop is unstable.
    """
    xp, step, g, k, outer_lr, momentum, nesterov = _outer_g_and_check(
        curvature, lr, k, outer_lr, momentum, nesterov)
    slow, _, _, stable = _outer_stationary_parts(xp, step, g, outer_lr, momentum, nesterov)
    return xp.asarray(xp.where(stable, slow, xp.full_like(slow, math.inf)))


def nqm_outer_stationary_moments(
    curvature: Array,
    noise_var: Array,
    lr: float,
    k: int,
    outer_lr: float,
    momentum: float,
    nesterov: bool = False,
) -> NQMOuterMoments:
    """The fixed point of `nqm_outer_moments`: means 0, stationary second moments.

    Solves the 3×3 system (E[φ²], E[φb], E[b²]) = K (E[φ²], E[φb], E[b²]) + s² w
    of `nqm_outer_moments` in closed form (G = ηg, g = 1 − ρᵏ, s² as there):

        heavy ball, with N = (1 − μ)(2(1 + μ) − G):
            E[φ²] = η(1 + μ) s² / (g N),   E[φb] = −η s² / N,   E[b²] = 2 s² / N
        Nesterov, with N = (1 − μ + μG)(2(1 + μ) − (1 + 2μ)G):
            E[φ²] = η[(1 + μ) + μ(1 + 2μ)G] s² / (g N),
            E[φb] = −η(1 + 2μ) s² / N,   E[b²] = 2 s² / N

    evaluated with s²/g = V*_SGD·(2 − g). K's eigenvalues are the products
    λᵢλⱼ of the mean map's (`nqm_outer_rate`), so the fixed point attracts
    exactly when the mean map's spectral radius is < 1, which is exactly when
    N > 0; elsewhere every second moment is ``inf`` (the variance diverges;
    E[φb] is −inf there, as it is negative at every stable fixed point).
    The start, and the first sync's b ← Δ, do not matter.

    Args:
        curvature: aᵢ > 0.
        noise_var: σᵢ² >= 0.
        lr: γ with 0 < γaᵢ < 2 everywhere.
        k: synchronization period, an ``int`` >= 1.
        outer_lr: η > 0.
        momentum: μ in [0, 1).
        nesterov: Nesterov (True) or heavy-ball (False) momentum.

    Returns:
        `NQMOuterMoments` with zero means; ``slow_sq`` is V*_outer.
    """
    xp, curvature, noise_var = _check_nqm(curvature, noise_var)
    _, step, g, k, outer_lr, momentum, nesterov = _outer_g_and_check(
        curvature, lr, k, outer_lr, momentum, nesterov)
    v_sgd = step * noise_var / (2.0 - step)
    parts = _outer_stationary_parts(xp, step, g, outer_lr, momentum, nesterov)
    stable = parts[3]
    inf = xp.full_like(v_sgd, math.inf)
    slow, cross, buf = (xp.asarray(xp.where(stable, x * v_sgd, sign * inf))
                        for x, sign in zip(parts[:3], (1.0, -1.0, 1.0)))
    zero = xp.zeros_like(v_sgd)
    return NQMOuterMoments(zero, zero, slow, cross, buf)


def nqm_outer_stationary_variance(
    curvature: Array,
    noise_var: Array,
    lr: float,
    k: int,
    outer_lr: float,
    momentum: float,
    nesterov: bool = False,
) -> Array:
    """``V*_outer``, the stationary variance of φ under an outer SGD with momentum.

    `nqm_outer_variance_ratio` times `nqm_sgd_variance_fixed_point`
    (the ``slow_sq`` field of `nqm_outer_stationary_moments`); ``inf`` where
    the outer loop is unstable. With μ = 0 and η = α it is
    `nqm_lookahead_variance_fixed_point`.

    Args:
        curvature: aᵢ > 0.
        noise_var: σᵢ² >= 0.
        lr: γ with 0 < γaᵢ < 2 everywhere.
        k: synchronization period, an ``int`` >= 1.
        outer_lr: η > 0.
        momentum: μ in [0, 1).
        nesterov: Nesterov (True) or heavy-ball (False) momentum.

    Returns:
        ``V*_outer`` per coordinate.
    """
    return nqm_outer_stationary_moments(
        curvature, noise_var, lr, k, outer_lr, momentum, nesterov).slow_sq


def nqm_outer_rate(
    curvature: Array, lr: float, k: int, outer_lr: float, momentum: float, nesterov: bool = False
) -> NQMOuterRate:
    """How fast E[φ] goes to 0: the spectral radius of the 2×2 mean map.

    The mean map of `nqm_outer_moments` has trace T and determinant D
    (G = ηg, g = 1 − ρᵏ):

        heavy ball:  T = 1 + μ − G,           D = μ
        Nesterov:    T = (1 + μ)(1 − G),      D = μ(1 − G)

    and eigenvalues λ± = (T ± √(T² − 4D)) / 2. The radius is
    (|T| + √(T² − 4D)) / 2 when T² >= 4D (real eigenvalues) and √D otherwise
    (a complex pair: E[φ] oscillates inside the envelope radiusᵗ). It is < 1
    exactly when 0 < G < 2(1 + μ) (heavy ball) or 0 < G < 2(1 + μ)/(1 + 2μ)
    (Nesterov), for 0 <= μ < 1. With μ = 0 and η = α it is Lemma 1's
    |1 − α + αρᵏ| (eq. 0.12). As a function of the means alone, E[φ] obeys
    E[φ_{t+2}] = T E[φ_{t+1}] − D E[φ_t] from the second cycle on.

    Args:
        curvature: aᵢ > 0.
        lr: γ with 0 < γaᵢ < 2 everywhere.
        k: synchronization period, an ``int`` >= 1.
        outer_lr: η > 0.
        momentum: μ in [0, 1).
        nesterov: Nesterov (True) or heavy-ball (False) momentum.

    Returns:
        `NQMOuterRate`: the radius per cycle and per inner step (radius^(1/k)),
        T and D.
    """
    xp, step, g, k, outer_lr, momentum, nesterov = _outer_g_and_check(
        curvature, lr, k, outer_lr, momentum, nesterov)
    G = outer_lr * g
    if nesterov:
        trace = (1.0 + momentum) * (1.0 - G)
        det = momentum * (1.0 - G)
    else:
        trace = 1.0 + momentum - G
        det = xp.full_like(g, momentum)
    disc = trace * trace - 4.0 * det
    real = disc >= 0
    root = xp.sqrt(xp.where(real, disc, xp.zeros_like(disc)))
    radius = xp.where(real, 0.5 * (xp.abs(trace) + root),
                      xp.sqrt(xp.where(real, xp.zeros_like(det), det)))
    return NQMOuterRate(xp.asarray(radius), xp.asarray(radius ** (1.0 / k)),
                        xp.asarray(trace), xp.asarray(det))


# --------------------------------------------------------------------------- Monte Carlo


def nqm_simulate(
    optimizer: Lookahead | InnerOptimizer,
    theta0: Array,
    curvature: Array,
    noise_var: Array,
    steps: int,
    chains: int,
    seed: int = 0,
) -> NQMMoments:
    """Monte Carlo on the NQM with the library's own optimizer, many chains at once.

    The parameter is one array of shape ``(d, chains)``: column j is an
    independent chain started at ``theta0``. Each step draws c ~ N(0, Σ) per
    chain and coordinate (NumPy's PCG64 with ``seed``, converted to the
    namespace, dtype and device of ``theta0``), passes the gradient
    a ⊙ (θ − c) to ``optimizer`` and records the sample mean and the unbiased
    sample variance over chains. Columns are independent chains only because
    the library's optimizers act element-wise; adaptive α, whose estimate sums
    over all entries, would couple them and is rejected.

    Args:
        optimizer: a fixed-α `Lookahead`, e.g. ``lookahead(sgd(lr=γ), k, α)``,
            one with an outer optimizer, e.g. ``lookahead(sgd(lr=γ), k,
            outer=sgd(lr=η, momentum=μ, nesterov=True))`` (compare with
            `nqm_outer_moments`), or an `InnerOptimizer` such as
            ``sgd(lr=γ)`` run alone.
        theta0: the common start, a 1-D array of d entries (deterministic,
            so V[θ₀] = 0).
        curvature: aᵢ > 0, like ``theta0``.
        noise_var: σᵢ² >= 0, like ``theta0``.
        steps: number of ``step`` calls, an ``int`` >= 0.
        chains: number of independent chains, an ``int`` >= 2.
        seed: seed of the noise, an ``int`` >= 0.

    Returns:
        `NQMMoments` of sample statistics, rows 0..steps. For an inner
        optimizer alone, the slow fields repeat the fast ones.
    """
    if not isinstance(optimizer, (Lookahead, InnerOptimizer)):
        raise TypeError(
            "optimizer must be a Lookahead or an InnerOptimizer, "
            f"got {type(optimizer).__name__}"
        )
    if isinstance(optimizer, Lookahead) and optimizer.alpha_mode != "fixed":
        raise ValueError(
            "optimizer must use a fixed alpha: adaptive alpha sums over all chains "
            f"and would couple them, got alpha_mode={optimizer.alpha_mode!r}"
        )
    xp, theta0 = _one_array("theta0", theta0)
    if theta0.ndim != 1:
        raise ValueError(f"theta0 must be 1-D, got shape {tuple(theta0.shape)}")
    _, curvature, noise_var = _check_nqm(
        _same_as("curvature", curvature, "theta0", theta0), noise_var
    )
    _check_finite(xp, "theta0", theta0)
    steps = _check_int("steps", steps, 0)
    chains = _check_int("chains", chains, 2)
    seed = _check_int("seed", seed, 0)

    device = array_api_compat.device(theta0)
    rng = np.random.default_rng(seed)
    d = theta0.shape[0]
    # Chains along the last, contiguous axis: the per-step reductions run ~10x faster.
    column = lambda x: xp.reshape(x, (d, 1))  # noqa: E731
    noise_std, a = column(xp.sqrt(noise_var)), column(curvature)
    params = (xp.zeros((d, chains), dtype=theta0.dtype, device=device) + column(theta0),)
    is_lookahead = isinstance(optimizer, Lookahead)
    state = optimizer.init(params)

    def moments(x: Array) -> tuple[Array, Array]:
        return xp.mean(x, axis=1), xp.var(x, axis=1, correction=1)

    fast = moments(params[0])
    rows = [fast + fast]
    for _ in range(steps):
        draws = rng.standard_normal((d, chains))
        c = xp.asarray(draws, dtype=theta0.dtype, device=device) * noise_std
        grads = (a * (params[0] - c),)
        if is_lookahead:
            params, state = optimizer.step(params, grads, state)
            fast = moments(params[0])
            # φ changes only at a sync (count back to 0); otherwise reuse its row
            rows.append(fast + (moments(state.slow[0]) if state.count == 0 else rows[-1][2:]))
        else:
            delta, state = optimizer.update(grads, state, params)
            params = (params[0] + delta[0],)
            fast = moments(params[0])
            rows.append(fast + fast)
    return NQMMoments(*(xp.stack([r[j] for r in rows]) for j in range(4)))
