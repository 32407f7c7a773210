"""The conformance checks: each certifies one rule of the paper or of docs/design.md.

Every check takes a `lookahead_conformance.protocol.Backend`, runs it on each
of its dtypes, and either returns (pass) or raises: `CheckFailure` (fail,
with where and by how much) or `NotApplicable` (the check needs an optional
runner capability the backend does not offer). `run_check` turns that into a
`CheckResult`.

Errors are measured in units of ``finfo(dtype).eps`` times the largest
magnitude involved, so one number reads the same for float32 and float64.
Only two checks have a tolerance (`check_eq01_closed_form`,
`check_reference`); it grows with the number of roundings (syncs, steps),
never with a fudge for one backend. All other checks are exact.

Everything is deterministic: fixed NumPy seeds, and hypothesis derandomized
without an example database, so a CI run is reproducible.
"""

from __future__ import annotations

import math
import numbers
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from .protocol import (
    Backend,
    InnerSpec,
    ReportsAliasing,
    ReportsDevice,
    ReportsMemory,
    Runner,
    SkipsSteps,
)
from .registry import BrokenBackend
from .tools import MissingToolError, is_kit_tool, missing_tools_message

__all__ = [
    "CHECKS",
    "EQ01_EPS_PER_SYNC",
    "EQ01_SUBNORMALS_PER_SYNC",
    "FAIL",
    "NOT_APPLICABLE",
    "PASS",
    "REFERENCE_EPS_PER_STEP",
    "Check",
    "CheckFailure",
    "CheckResult",
    "Eq01Case",
    "Eq01Expected",
    "NotApplicable",
    "Passed",
    "check_eq01_cases",
    "eq01_expected",
    "run_check",
]

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "n/a"

SHAPES = ((7,), (3, 4), (2, 1, 3))
"""Parameter shapes of the scripted cases: one model with three tensors."""

EQ01_EPS_PER_SYNC = 4.0
"""Tolerance of eq. 0.1 after t syncs: ``EQ01_EPS_PER_SYNC · (t + 1)`` eps (see `check_eq01_closed_form`)."""

EQ01_SUBNORMALS_PER_SYNC = 1.0
"""Floor of eq. 0.1's tolerance: ``EQ01_SUBNORMALS_PER_SYNC · (t + 1)`` smallest subnormals of the
dtype, added to the relative part (see `check_eq01_closed_form`)."""

REFERENCE_EPS_PER_STEP = 8.0
"""Tolerance against the reference: ``REFERENCE_EPS_PER_STEP · (steps + syncs)`` eps (see `check_reference`)."""

_NEVER = 10**9
"""A period k no run reaches: Lookahead that never syncs is its inner optimizer alone."""


class CheckResult(NamedTuple):
    """Outcome of one check on one backend.

    Attributes:
        name: the check's name (a key of `CHECKS`).
        status: ``"pass"``, ``"fail"`` or ``"n/a"`` (not applicable: the
            backend lacks a capability the check needs).
        worst_eps: the largest error measured, in units of eps of the dtype
            times the largest magnitude involved; ``None`` for a check that
            measures no error (exact, or a rule).
        detail: ``"ok"``, the first failure, or why the check does not apply.
    """

    name: str
    status: str
    worst_eps: float | None
    detail: str

    @property
    def passed(self) -> bool:
        """Whether the status is ``"pass"``."""
        return self.status == PASS


class CheckFailure(AssertionError):
    """A rule was broken; the message says where.

    Args:
        message: what failed, with the dtype, hyperparameters and step.
        worst_eps: the error that failed (or the worst seen before), if measured.
    """

    def __init__(self, message: str, worst_eps: float | None = None) -> None:
        super().__init__(message)
        self.worst_eps = worst_eps


class NotApplicable(Exception):
    """The check needs a runner capability this backend does not provide."""


class Passed(NamedTuple):
    """What a check returns when every case passed.

    Attributes:
        worst_eps: the largest error measured, in eps, or ``None`` when the
            check compares exactly or tests a rule.
        note: ``"ok"``, or what could not be checked on this backend.
    """

    worst_eps: float | None = None
    note: str = "ok"


# --- helpers ------------------------------------------------------------------------------


def _eps(dtype: Any) -> float:
    return float(np.finfo(np.dtype(dtype)).eps)


def _magnitude(*arrays: np.ndarray) -> float:
    """The largest |value| among ``arrays`` (at least the dtype's tiny, never 0)."""
    found = max((float(np.max(np.abs(a.astype(np.float64)), initial=0.0)) for a in arrays), default=0.0)
    return max(found, float(np.finfo(np.float64).tiny))


def _eps_error(actual: np.ndarray, expected: np.ndarray, dtype: Any, magnitude: float) -> float:
    """max |actual − expected| in units of ``eps(dtype) · magnitude``; inf if not finite."""
    actual = np.asarray(actual, dtype=np.float64)
    if not np.all(np.isfinite(actual)):
        return math.inf
    diff = float(np.max(np.abs(actual - np.asarray(expected, dtype=np.float64)), initial=0.0))
    return diff / (_eps(dtype) * magnitude)


def _random(rng: np.random.Generator, dtype: str, shapes: Sequence[tuple[int, ...]],
            scale: float = 1.0) -> list[np.ndarray]:
    return [np.asarray(rng.standard_normal(shape) * scale, dtype=dtype) for shape in shapes]


def _require_like(arrays: Sequence[np.ndarray], like: Sequence[np.ndarray], what: str) -> None:
    """Same count, and each with the shape and dtype of its reference."""
    if len(arrays) != len(like):
        raise CheckFailure(f"{what}: {len(arrays)} arrays, expected {len(like)}")
    for i, (a, ref) in enumerate(zip(arrays, like)):
        if not isinstance(a, np.ndarray):
            raise CheckFailure(f"{what}: array {i} is a {type(a).__name__}, expected a numpy.ndarray")
        if a.dtype != ref.dtype:
            raise CheckFailure(f"{what}: array {i} has dtype {a.dtype}, expected {ref.dtype}")
        if a.shape != ref.shape:
            raise CheckFailure(f"{what}: array {i} has shape {a.shape}, expected {ref.shape}")


def _require_equal(got: Sequence[np.ndarray], want: Sequence[np.ndarray], what: str) -> None:
    """Exact equality, value by value (±0 equal), with shapes and dtypes."""
    _require_like(got, want, what)
    for i, (g, w) in enumerate(zip(got, want)):
        if not np.array_equal(g, w):
            where = np.argwhere(g != w)
            first = tuple(int(j) for j in where[0]) if where.size else ()
            raise CheckFailure(
                f"{what}: array {i} at index {first} is {float(g[first])!r}, "
                f"expected {float(w[first])!r}"
            )


def _other_dtype(dtype: str) -> str:
    return "float32" if np.dtype(dtype) == np.float64 else "float64"


class _Worst:
    """The largest error seen so far; `record` fails beyond the tolerance."""

    def __init__(self) -> None:
        self.value = 0.0

    def record(self, err: float, tolerance: float, where: str) -> None:
        if err > tolerance or math.isnan(err):
            raise CheckFailure(f"{where} is {err:.3g} eps off (tolerance {tolerance:.3g} eps)", err)
        self.value = max(self.value, err)


# --- eq. 0.1 --------------------------------------------------------------------------------


class Eq01Case(NamedTuple):
    """One run of `check_eq01_closed_form`: inner SGD with learning rate ``lr``.

    Parameters and gradients are standard normal times ``scale``; a scale of
    the dtype's smallest subnormal gives inputs a few subnormal steps apart.
    """

    dtype: str
    k: int
    alpha: float
    shapes: tuple[tuple[int, ...], ...]
    syncs: int
    tail: int
    lr: float
    seed: int
    scale: float = 1.0


class Eq01Expected(NamedTuple):
    """eq. 0.1 for one parameter, in float64 scaled by ``2**shift`` (see `eq01_expected`).

    Attributes:
        value: φ_t by eq. 0.1, times ``2**shift``.
        magnitude: the largest |φ₀| or |θ_{j,k}|, times ``2**shift``.
        shift: the power of two that brings the inputs near 1, so that inputs
            subnormal in float64 are exact in the oracle.
    """

    value: np.ndarray
    magnitude: float
    shift: int


def eq01_expected(phi0: np.ndarray, fasts: Sequence[np.ndarray], grads: Sequence[np.ndarray],
                  lr: float, alpha: float) -> Eq01Expected:
    """eq. 0.1 for one parameter, from what a runner showed: φ₀ and, per sync, the fast
    weights one step before it and the last gradient (inner SGD: θ_{j,k} = θ_{j,k-1} − lr·g).

    Evaluated in float64 on the inputs scaled by a power of two that brings the
    largest near 1: exact scaling, so for inputs in float64's normal range the
    result is that of the unscaled formula, and float64 subnormals keep all their bits.
    """
    observed = [np.abs(phi0.astype(np.float64)), *(np.abs(f.astype(np.float64)) for f in fasts),
                *(abs(lr) * np.abs(g.astype(np.float64)) for g in grads)]
    largest = max((float(np.max(a, initial=0.0)) for a in observed), default=0.0)
    shift = -math.frexp(largest)[1] if math.isfinite(largest) else 0

    def scaled(a: np.ndarray) -> np.ndarray:
        return np.ldexp(a.astype(np.float64), shift)

    thetas = [scaled(f) - lr * scaled(g) for f, g in zip(fasts, grads)]
    t = len(thetas)
    start = scaled(phi0)
    value = (1.0 - alpha) ** t * start
    for j, theta in enumerate(thetas, start=1):
        value = value + alpha * (1.0 - alpha) ** (t - j) * theta
    return Eq01Expected(value, _magnitude(start, *thetas), shift)


def _eq01_tolerance_eps(dtype: str, syncs: int, expected: Eq01Expected) -> float:
    """The tolerance after ``syncs`` syncs, (t + 1)·(`EQ01_EPS_PER_SYNC`·eps·M +
    `EQ01_SUBNORMALS_PER_SYNC`·σ), in units of eps·M; σ, the smallest subnormal, scaled like M."""
    info = np.finfo(np.dtype(dtype))
    subnormal = float(np.ldexp(np.float64(info.smallest_subnormal), expected.shift))
    floor = EQ01_SUBNORMALS_PER_SYNC * subnormal / (float(info.eps) * expected.magnitude)
    return (syncs + 1) * (EQ01_EPS_PER_SYNC + floor)


_EQ01_SCRIPTED = (
    # (k, alpha, syncs, tail): k = 1, both lerp branches, both ends, partial last cycle
    (1, 0.3, 6, 0),
    (3, 0.5, 4, 2),
    (5, 0.8, 3, 4),
    (2, 0.0, 3, 1),
    (4, 1.0, 3, 0),
    (3, 0.37, 5, 1),
    (6, 0.999, 4, 5),
)


def _run_eq01_case(backend: Backend, case: Eq01Case, worst: _Worst) -> None:
    dtype, k, alpha, lr = case.dtype, case.k, case.alpha, case.lr
    label = (f"{dtype} k={k} alpha={alpha!r} lr={lr} shapes={list(case.shapes)} "
             f"syncs={case.syncs} seed={case.seed}")
    if case.scale != 1.0:
        label += f" scale={case.scale!r}"
    rng = np.random.default_rng(case.seed)
    params = _random(rng, dtype, case.shapes, case.scale)
    runner = backend.create(params, InnerSpec("sgd", {"lr": lr}), k, alpha)
    # Per sync, the fast weights one step before it and the last gradient: θ_{j,k} is
    # rebuilt from them (inner SGD), in float64, by `eq01_expected`.
    before_syncs: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
    slow = params
    for t in range(1, case.syncs + 1):
        for _ in range(k - 1):
            runner.step(_random(rng, dtype, case.shapes, case.scale))
        last_fast = runner.fast()
        grads = _random(rng, dtype, case.shapes, case.scale)
        runner.step(grads)
        before_syncs.append((last_fast, grads))
        fast, slow = runner.fast(), runner.slow()
        _require_like(slow, params, f"{label}: slow after sync {t}")
        _require_equal(fast, slow, f"{label}: fast (vs slow) right after sync {t}")
        for i in range(len(params)):
            expected = eq01_expected(params[i], [f[i] for f, _ in before_syncs],
                                     [g[i] for _, g in before_syncs], lr, alpha)
            err = _eps_error(np.ldexp(slow[i].astype(np.float64), expected.shift), expected.value,
                             dtype, expected.magnitude)
            worst.record(err, _eq01_tolerance_eps(dtype, t, expected),
                         f"{label}: slow[{i}] after sync {t} (eq. 0.1)")
    for n in range(1, case.tail % k + 1):
        runner.step(_random(rng, dtype, case.shapes, case.scale))
        _require_equal(runner.slow(), slow, f"{label}: slow after {n} non-sync steps")


def _eq01_strategy(dtypes: Sequence[str]) -> Any:
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import array_shapes

    shapes = st.lists(array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4),
                      min_size=1, max_size=3).map(tuple)
    return st.builds(
        Eq01Case,
        dtype=st.sampled_from(tuple(dtypes)),
        k=st.integers(1, 6),
        alpha=st.one_of(st.sampled_from((0.0, 0.5, 1.0)), st.floats(0.0, 1.0)),
        shapes=shapes,
        syncs=st.integers(0, 6),
        tail=st.integers(0, 5),
        lr=st.sampled_from((1.0, 0.25, 0.1, 0.03)),
        seed=st.integers(0, 2**32 - 1),
        scale=st.just(1.0),  # normal-range inputs: a backend may flush subnormals to zero
    )


def check_eq01_closed_form(backend: Backend) -> Passed:
    """eq. 0.1: the slow weights are the closed-form EMA of the fast weights before each sync.

    $$
    \\phi_t = \\alpha \\sum_{j=1}^{t} (1-\\alpha)^{t-j}\\, \\theta_{j,k} + (1-\\alpha)^t \\phi_0
    $$

    The fast weights just before the j-th sync, θ_{j,k}, are rebuilt in
    float64 from the fast weights observed one step earlier and the last
    gradient (inner SGD: θ ← θ − lr·g); eq. 0.1 is evaluated in float64 NumPy
    and compared with φ after *every* sync. After each sync θ must equal φ
    exactly, and steps that end no cycle must leave φ exactly as it is.

    Cases: seven scripted ones per dtype (k = 1, both branches of the
    two-sided lerp, α = 0 and 1, a partial last cycle), then 25 drawn by
    hypothesis (k in 1..6, α in [0, 1], one to three shapes of rank 0 to 3,
    the dtype, 0 to 6 syncs, the learning rate), derandomized.

    Tolerance after t syncs: (t + 1)·(`EQ01_EPS_PER_SYNC`·eps·M +
    `EQ01_SUBNORMALS_PER_SYNC`·σ), with M the largest |φ₀| or |θ_{j,k}| of
    that parameter and σ the dtype's smallest subnormal. Why 4: a sync rounds
    three times (θ − φ, the product by α or 1 − α, the sum), each by at most
    eps/2 of a value at most twice that magnitude, which is at most 2.5 eps
    per sync, and an earlier sync's error only shrinks (by 1 − α) after it;
    rebuilding θ_{j,k} (the inner step's rounding) adds at most 2 eps in all,
    and the float64 oracle about one eps of float64 per term. Why one σ: below
    the smallest normal the grid is σ apart, so a rounding is off by up to
    σ/2 whatever eps says; a sum or difference that lands there is exact, a
    product is not; a sync takes at most two products (αθ and (1 − α)φ), so
    at most σ per sync, and the inner step's product adds at most σ/2 in all.
    The floor matters only when a whole parameter is a few subnormal steps
    wide: φ₀ and θ one step apart with α = 0.5 put φ₁ half a step from the
    grid, 4·10⁶ eps relative in float32. The cases here are normal-range;
    `check_eq01_cases` runs others, such as subnormal ones.
    """
    from hypothesis import HealthCheck, Verbosity, example, given, settings

    worst = _Worst()

    def run(case: Eq01Case) -> None:
        _run_eq01_case(backend, case, worst)

    test = given(case=_eq01_strategy(backend.dtypes))(run)
    scripted = [Eq01Case(dtype, k, alpha, SHAPES, syncs, tail, 0.25, seed)
                for dtype in backend.dtypes
                for seed, (k, alpha, syncs, tail) in enumerate(_EQ01_SCRIPTED)]
    for case in reversed(scripted):  # the innermost @example runs last: keep the listed order
        test = example(case=case)(test)
    test = settings(
        max_examples=25, deadline=None, derandomize=True, database=None,
        report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )(test)
    test()
    return Passed(worst.value)


def check_eq01_cases(backend: Backend, cases: Sequence[Eq01Case]) -> Passed:
    """`check_eq01_closed_form`'s comparison, with its tolerance, on the given cases.

    For cases the check does not draw: subnormal inputs (``scale`` the
    dtype's smallest subnormal), which a backend that flushes subnormals to
    zero cannot pass. Raises `CheckFailure` at the first case off eq. 0.1.
    """
    worst = _Worst()
    for case in cases:
        _run_eq01_case(backend, case, worst)
    return Passed(worst.value)


# --- the schedule ---------------------------------------------------------------------------


def _require_no_aliasing(runner: Runner, where: str) -> None:
    if isinstance(runner, ReportsAliasing) and runner.aliases():
        raise CheckFailure(f"{where}: aliases() reports fast and slow weights sharing memory")


def check_schedule(backend: Backend) -> Passed:
    """Algorithm 1's schedule: φ₀ = θ₀ eagerly, a sync after exactly every k-th step, no aliasing.

    Inner step θ ← θ + 1 from θ₀ = 0 (SGD, lr = 1, gradient −1), so every
    value is a dyadic rational and the expected trajectory is exact. With
    k = 3, α = 0.5, six steps give θ = φ = 3.0; a slow buffer created lazily
    at the first sync (timm) or syncs at steps 1, k+1, 2k+1, … (torch-optimizer)
    give 4.5. After each sync θ == φ.

    Fast and slow weights must never share memory: where the runner offers
    `aliases()` it must say ``False`` after construction and every step;
    in any case (black box) one step after construction and one step after
    each sync must move θ and leave φ where it was.
    """
    for dtype in backend.dtypes:
        for k in (3, 1, 2, 5):
            alpha = 0.5
            theta0 = np.zeros(3, dtype=dtype)
            runner = backend.create([theta0], InnerSpec("sgd", {"lr": 1.0}), k, alpha)
            label = f"{dtype} k={k} alpha={alpha}"
            _require_equal(runner.slow(), [theta0], f"{label}: slow before any step (φ₀ = θ₀)")
            _require_no_aliasing(runner, f"{label} after construction")
            fast, slow = 0.0, 0.0
            for step in range(1, 3 * k + 2):
                slow_before = runner.slow()
                runner.step([np.full(3, -1.0, dtype=dtype)])
                fast += 1.0
                synced = step % k == 0
                if synced:
                    slow = slow + alpha * (fast - slow)
                    fast = slow
                got_fast, got_slow = runner.fast(), runner.slow()
                _require_like(got_fast + got_slow, [theta0, theta0], f"{label}: weights")
                _require_no_aliasing(runner, f"{label} after step {step}")
                state = (f"fast={got_fast[0][0]}, slow={got_slow[0][0]}; "
                         f"Algorithm 1 gives fast={fast}, slow={slow}")
                if not synced and not np.array_equal(got_slow[0], slow_before[0]):
                    if np.all(got_fast[0] == fast) and np.array_equal(got_slow[0], got_fast[0]):
                        raise CheckFailure(
                            f"{label}: the slow weights follow the fast weights on step {step}, "
                            f"which ends no cycle ({state}): fast and slow share memory, or there "
                            "are no separate slow weights (φ₀ must be a copy of θ₀ made at "
                            "construction)"
                        )
                    raise CheckFailure(
                        f"{label}: step {step} ends no cycle but the weights were synced "
                        f"({state}); syncs must follow steps k, 2k, 3k, ..."
                    )
                if not (np.all(got_fast[0] == fast) and np.all(got_slow[0] == slow)):
                    due = "a sync is due" if synced else "no sync is due"
                    raise CheckFailure(f"{label} after step {step} ({due}): {state}")
    return Passed()


# --- agreement with the reference -----------------------------------------------------------

REFERENCE_SPECS = (
    InnerSpec("sgd", {"lr": 0.05}),
    InnerSpec("sgd", {"lr": 0.05, "momentum": 0.9}),
    InnerSpec("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    InnerSpec("adam", {"lr": 1e-2}),
)
"""SGD, Polyak (heavy-ball) momentum, Nesterov with weight decay, Adam."""


def check_reference(backend: Backend) -> Passed:
    """Agreement with the reference, ``lookahead_core`` on NumPy float64 (Algorithm 1, eq. 0.2).

    Inner optimizers: `REFERENCE_SPECS` (SGD, Polyak momentum, Nesterov,
    Adam, with ``torch.optim``'s arithmetic); k = 5, α in {0.3, 0.5, 0.8}
    (both branches of the two-sided lerp), 23 steps (4 syncs and a partial
    cycle) with the same gradients; θ and φ are compared after every step.

    Tolerance: `REFERENCE_EPS_PER_STEP` · (steps + syncs) eps of the
    backend's dtype, relative to the largest weight. The gradients are given,
    not computed from the weights, so rounding errors add up linearly and are
    never fed back. Per step: the inner update's own rounding (heavy-ball
    momentum carries a buffer's error for about 1/(1 − μ) = 10 steps, scaled
    by lr) and the addition to θ give a few eps; a sync at most 2.5 eps. 8
    per step leaves room for a different, equally valid order of operations
    (a fused or foreach kernel) and still puts float64 backends within
    about 5e-14 of the reference.
    """
    reference = _reference_backend()
    worst = _Worst()
    steps, k = 23, 5
    for dtype in backend.dtypes:
        for spec in REFERENCE_SPECS:
            for alpha in (0.3, 0.5, 0.8):
                rng = np.random.default_rng(7)
                params = _random(rng, dtype, SHAPES)
                ours = backend.create(params, spec, k, alpha)
                ref = reference.create([p.astype(np.float64) for p in params], spec, k, alpha)
                label = f"{dtype} {spec.name} {spec.hyperparams} k={k} alpha={alpha}"
                for step in range(1, steps + 1):
                    grads = _random(rng, dtype, SHAPES)
                    ours.step(grads)
                    ref.step([g.astype(np.float64) for g in grads])
                    want_fast, want_slow = ref.fast(), ref.slow()
                    magnitude = _magnitude(*params, *want_fast, *want_slow)
                    tolerance = REFERENCE_EPS_PER_STEP * (step + step // k)
                    for what, got, want in (("fast", ours.fast(), want_fast),
                                            ("slow", ours.slow(), want_slow)):
                        _require_like(got, params, f"{label}: {what} after step {step}")
                        for i, (g, w) in enumerate(zip(got, want)):
                            worst.record(_eps_error(g, w, dtype, magnitude), tolerance,
                                         f"{label}: {what}[{i}] after step {step} vs the reference")
    return Passed(worst.value)


def _reference_backend() -> Backend:
    from .backends import CoreBackend

    return CoreBackend("reference", "numpy", ("float64",))


# --- exact edge cases -----------------------------------------------------------------------


def _far(dt: np.dtype) -> Any:
    """2^10, or 2^(nmant/2 + 1) if smaller (float16: 64): far enough from 0.5 that a
    difference with it drops bits, near enough that its grid is at most 0.5."""
    return dt.type(min(1024.0, 2.0 ** (np.finfo(dt).nmant // 2 + 1)))


def alpha_one_case(dtype: str, seed: int = 0) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Parameters and two gradients (inner SGD, lr = 1) for the α = 1 edge case.

    φ₀ ≈ 1024 (64 in float16) and the first step brings θ to exactly 0.5
    (φ₀ − g is exact: the operands are within a factor of two); the second
    adds fine bits: θ = 0.5 + r. The one-sided lerp ``φ + 1·(θ − φ)`` rounds
    θ − φ ≈ −1024 to the coarse grid of 1024 and loses those bits, so it
    differs from θ, while the two-sided lerp returns θ exactly.
    """
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    phi0 = (_far(dt) + rng.uniform(0.0, 1.0, 8).astype(dt)).astype(dt)
    to_half = (phi0 - dt.type(0.5)).astype(dt)
    fine = (-rng.uniform(0.0, 0.25, 8)).astype(dt)
    return [phi0], [[to_half], [fine]]


def alpha_zero_case(dtype: str, seed: int = 0) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Parameters and two gradients (inner SGD, lr = 1) for the α = 0 edge case.

    φ₀ = 0.5 + r has fine bits and the first step takes θ near 1024 (64 in float16); the
    other one-sided lerp ``θ − 1·(θ − φ)`` loses φ₀'s fine bits in θ − φ and
    differs from φ₀, while the two-sided lerp returns φ₀ exactly.
    """
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    phi0 = (dt.type(0.5) + rng.uniform(0.0, 0.25, 8).astype(dt)).astype(dt)
    to_far = (phi0 - (_far(dt) + dt.type(0.25))).astype(dt)
    small = rng.standard_normal(8).astype(dt)
    return [phi0], [[to_far], [small]]


def check_edge_cases(backend: Backend) -> Passed:
    """Exact edge cases of Algorithm 1: α = 0, α = 1 and k = 1, bit for bit.

    - α = 1 is the inner optimizer alone: θ and φ equal, after every step, a
      run that never syncs. Values from `alpha_one_case` make the one-sided
      lerp ``φ + α(θ − φ)`` miss θ at α = 1; a momentum run on random
      values follows, with k = 1 and k = 2.
    - α = 0 freezes φ = φ₀ and resets θ to φ₀ at every sync: values from
      `alpha_zero_case` make ``θ − (1 − α)(θ − φ)`` miss φ₀; then a
      momentum run with k = 1 and k = 3.
    - k = 1 damps every step: θ₀ = 0, inner step +1, α = 0.25 gives
      θ = φ = 0.25·n after step n (dyadic, exact).
    """
    momentum = InnerSpec("sgd", {"lr": 0.1, "momentum": 0.9})
    plain = InnerSpec("sgd", {"lr": 1.0})
    steps = 12
    for dtype in backend.dtypes:
        rng = np.random.default_rng(3)
        random_params = _random(rng, dtype, SHAPES)
        random_grads = [_random(rng, dtype, SHAPES) for _ in range(steps)]

        # α = 1: the inner optimizer alone.
        crafted_params, crafted_grads = alpha_one_case(dtype)
        for params, grads, spec, k in ((crafted_params, crafted_grads, plain, 2),
                                       (random_params, random_grads, momentum, 1),
                                       (random_params, random_grads, momentum, 2)):
            synced = backend.create(params, spec, k, 1.0)
            alone = backend.create(params, spec, _NEVER, 1.0)
            for n, g in enumerate(grads, start=1):
                synced.step(g)
                alone.step(g)
                label = f"{dtype} alpha=1 k={k} {spec.hyperparams}, step {n}"
                _require_equal(synced.fast(), alone.fast(), f"{label}: fast vs the inner optimizer alone")
                if n % k == 0:
                    _require_equal(synced.slow(), alone.fast(), f"{label}: slow after the sync (φ = θ)")

        # α = 0: φ frozen at φ₀, θ back to φ₀ at every sync.
        crafted_params, crafted_grads = alpha_zero_case(dtype)
        for params, grads, spec, k in ((crafted_params, crafted_grads, plain, 2),
                                       (random_params, random_grads, momentum, 1),
                                       (random_params, random_grads, momentum, 3)):
            frozen = backend.create(params, spec, k, 0.0)
            for n, g in enumerate(grads, start=1):
                frozen.step(g)
                label = f"{dtype} alpha=0 k={k} {spec.hyperparams}, step {n}"
                _require_equal(frozen.slow(), params, f"{label}: slow (must stay φ₀)")
                if n % k == 0:
                    _require_equal(frozen.fast(), params, f"{label}: fast after the sync (reset to φ₀)")

        # k = 1: every step is damped by α.
        damped = backend.create([np.zeros(2, dtype=dtype)], plain, 1, 0.25)
        for n in range(1, 6):
            damped.step([np.full(2, -1.0, dtype=dtype)])
            want = [np.full(2, 0.25 * n, dtype=dtype)]
            _require_equal(damped.fast(), want, f"{dtype} k=1 alpha=0.25 step {n}: fast")
            _require_equal(damped.slow(), want, f"{dtype} k=1 alpha=0.25 step {n}: slow")
    return Passed()


# --- dtype, shape, device -------------------------------------------------------------------

_SHAPE_ZOO = ((), (7,), (3, 4), (2, 1, 3), (2, 0))
"""Shapes for `check_dtype_shape_device`: a scalar parameter and an empty one included."""


def _special_values(dtype: str) -> np.ndarray:
    info = np.finfo(np.dtype(dtype))
    values = [0.0, -0.0, 1.0, -1.5, float(info.tiny), float(info.smallest_subnormal),
              float(info.max), float(info.min), math.inf, -math.inf, float(info.eps), 0.1]
    return np.array(values, dtype=dtype).reshape(3, 4)


def _check_conversion(backend: Backend, dtype: str) -> None:
    import array_api_compat

    xp = backend.namespace()
    device = backend.device()
    if not isinstance(device, str):
        raise CheckFailure(f"backend.device() returned {device!r}, expected a str such as 'cpu'")
    for host in (_special_values(dtype), np.array(2.5, dtype=dtype), np.zeros((2, 0), dtype=dtype)):
        label = f"{dtype} conversion of a {host.shape} array"
        native = backend.from_numpy(host)
        got_xp = array_api_compat.array_namespace(native)
        if got_xp is not xp:
            raise CheckFailure(f"{label}: from_numpy gives an array of namespace "
                               f"{got_xp.__name__}, backend.namespace() is {xp.__name__}")
        if native.dtype != getattr(xp, dtype):
            raise CheckFailure(f"{label}: from_numpy gives dtype {native.dtype}, expected {dtype}")
        if tuple(native.shape) != host.shape:
            raise CheckFailure(f"{label}: from_numpy gives shape {tuple(native.shape)}")
        got_device = str(array_api_compat.device(native))
        if got_device != device:
            raise CheckFailure(f"{label}: from_numpy puts it on {got_device}, backend.device() "
                               f"is {device}")
        back = backend.to_numpy(native)
        _require_like([back], [host], f"{label}: to_numpy(from_numpy(a))")
        if back.tobytes() != np.ascontiguousarray(host).tobytes():
            raise CheckFailure(f"{label}: to_numpy(from_numpy(a)) changes the bits of {host!r}")


def check_dtype_shape_device(backend: Backend) -> Passed:
    """Dtype, shape and device are preserved.

    The rule: docs/design.md, 'Dtypes and devices'.

    The conversions first: ``to_numpy(from_numpy(a))`` returns ``a`` bit for
    bit (±0, subnormals, ±inf, the extremes; a scalar and an empty array),
    and ``from_numpy`` produces arrays of `Backend.namespace` with the
    dtype, shape and `Backend.device` asked for. Then the optimizer: over
    parameters of rank 0 to 3, one of them empty, and over a mix of dtypes
    where the backend has several, θ and φ keep each parameter's dtype and
    shape through steps and a sync (inner Adam), and stay on the backend's
    device where the runner reports `device()`.
    """
    reported_device = False
    for dtype in backend.dtypes:
        _check_conversion(backend, dtype)
    mixes = [[d] * len(_SHAPE_ZOO) for d in backend.dtypes]
    if len(backend.dtypes) > 1:
        mixes.append([backend.dtypes[i % len(backend.dtypes)] for i in range(len(_SHAPE_ZOO))])
    for dtypes in mixes:
        rng = np.random.default_rng(11)
        params = [np.asarray(rng.standard_normal(s), dtype=d) for s, d in zip(_SHAPE_ZOO, dtypes)]
        runner = backend.create(params, InnerSpec("adam", {"lr": 1e-3}), 2, 0.5)
        label = f"dtypes {sorted(set(dtypes))}"
        for step in range(4):
            if step:
                runner.step([np.asarray(rng.standard_normal(p.shape), dtype=p.dtype) for p in params])
            _require_like(runner.fast(), params, f"{label}: fast after {step} steps")
            _require_like(runner.slow(), params, f"{label}: slow after {step} steps")
            if isinstance(runner, ReportsDevice):
                reported_device = True
                where, want = runner.device(), backend.device()
                if where != want:
                    raise CheckFailure(f"{label}: after {step} steps the weights are on {where}, "
                                       f"the backend's device is {want}")
    if not reported_device:
        return Passed(None, "ok (the runner has no device(): the device was checked on conversions only)")
    return Passed()


# --- state round trip -----------------------------------------------------------------------


def check_round_trip(backend: Backend) -> Passed:
    """State round trip bit-exact, on and off a sync boundary.

    The rule: docs/design.md, 'Checkpoints'.

    Run A takes n steps, saves, and goes on; a fresh runner B restores A's
    checkpoint and takes the same further steps. θ and φ of B must equal A's
    bit for bit after every step. n in {0, 3, 4, 5, 7} with k = 4: right after
    construction, one step before a sync (the next step must sync), on the
    boundary, just after it, and before the second sync. A checkpoint that
    loses the position in the cycle, the inner state or the slow weights
    fails; so does one that still refers to A's live buffers, since A moves
    on after saving. Inner SGD, heavy ball and Adam.
    """
    k, alpha = 4, 0.6
    for dtype in backend.dtypes:
        for spec in (InnerSpec("sgd", {"lr": 0.05}), InnerSpec("sgd", {"lr": 0.05, "momentum": 0.9}),
                     InnerSpec("adam", {"lr": 1e-2})):
            for n in (0, k - 1, k, k + 1, 2 * k - 1):
                rng = np.random.default_rng(5)
                params = _random(rng, dtype, SHAPES)
                grads = [_random(rng, dtype, SHAPES) for _ in range(n + k + 2)]
                first = backend.create(params, spec, k, alpha)
                for g in grads[:n]:
                    first.step(g)
                saved = first.save()
                resumed = backend.create(params, spec, k, alpha)
                resumed.restore(saved)
                label = f"{dtype} {spec.name} {spec.hyperparams} k={k}, saved after {n} steps"
                _require_equal(resumed.fast(), first.fast(), f"{label}: fast right after restore")
                _require_equal(resumed.slow(), first.slow(), f"{label}: slow right after restore")
                for m, g in enumerate(grads[n:], start=n + 1):
                    first.step(g)
                    resumed.step(g)
                    _require_equal(resumed.fast(), first.fast(), f"{label}: fast after step {m}")
                    _require_equal(resumed.slow(), first.slow(), f"{label}: slow after step {m}")
    return Passed()


# --- bad input ------------------------------------------------------------------------------

_BAD_HYPERPARAMETERS = (
    (0, 0.5), (-1, 0.5), (True, 0.5), (2.5, 0.5), (2.0, 0.5), ("3", 0.5), (None, 0.5),
    (3, -0.1), (3, 1.5), (3, math.nan), (3, math.inf), (3, True), (3, "0.5"), (3, None),
)
"""(k, α) pairs a backend must reject: k an int >= 1 (not bool), α a finite real in [0, 1] (not bool)."""


def check_bad_input(backend: Backend) -> Passed:
    """Bad input is rejected with TypeError/ValueError and changes nothing.

    The rule: docs/design.md, 'Errors'.

    Construction rejects every pair of `_BAD_HYPERPARAMETERS`. A step with
    the wrong number of gradients, a wrong shape, or a gradient whose dtype
    differs from its parameter's is rejected, and leaves θ, φ, the position in
    the cycle and the inner optimizer's state untouched: interleaving rejected
    steps with good ones must give, bit for bit, the run with the good steps only
    (heavy-ball momentum, k = 3).
    """
    spec = InnerSpec("sgd", {"lr": 0.1, "momentum": 0.9})
    for dtype in backend.dtypes:
        params = [np.ones(3, dtype=dtype), np.ones((2, 2), dtype=dtype)]
        for k, alpha in _BAD_HYPERPARAMETERS:
            try:
                backend.create(params, spec, k, alpha)
            except (TypeError, ValueError):
                continue
            except Exception as exc:
                raise CheckFailure(f"k={k!r}, alpha={alpha!r} raised {type(exc).__name__}: {exc} "
                                   "(expected TypeError or ValueError)") from exc
            raise CheckFailure(f"k={k!r}, alpha={alpha!r} was accepted")

        other = _other_dtype(dtype)
        bad_grads = (
            ("one gradient for two parameters", [np.ones(3, dtype=dtype)]),
            ("three gradients for two parameters", [np.ones(3, dtype=dtype), np.ones((2, 2), dtype=dtype),
                                                    np.ones(3, dtype=dtype)]),
            ("a gradient of shape (4,) for a (3,) parameter", [np.ones(4, dtype=dtype),
                                                              np.ones((2, 2), dtype=dtype)]),
            ("a gradient of shape (4,) for a (2, 2) parameter", [np.ones(3, dtype=dtype),
                                                                np.ones(4, dtype=dtype)]),
            (f"a {other} gradient for a {dtype} parameter", [np.ones(3, dtype=dtype),
                                                             np.ones((2, 2), dtype=other)]),
        )
        rng = np.random.default_rng(13)
        good = [[np.asarray(rng.standard_normal(p.shape), dtype=dtype) for p in params] for _ in range(7)]
        clean = backend.create(params, spec, 3, 0.5)
        tested = backend.create(params, spec, 3, 0.5)
        for n, g in enumerate(good, start=1):
            clean.step(g)
            tested.step(g)
            for what, bad in bad_grads:
                before_fast, before_slow = tested.fast(), tested.slow()
                try:
                    tested.step(bad)
                except (TypeError, ValueError):
                    pass
                except Exception as exc:
                    raise CheckFailure(f"{dtype}: {what} raised {type(exc).__name__}: {exc} "
                                       "(expected TypeError or ValueError)") from exc
                else:
                    raise CheckFailure(f"{dtype}: a step with {what} was accepted")
                _require_equal(tested.fast(), before_fast, f"{dtype}: fast after rejecting {what}")
                _require_equal(tested.slow(), before_slow, f"{dtype}: slow after rejecting {what}")
            label = f"{dtype}: after good step {n} and rejected steps"
            _require_equal(tested.fast(), clean.fast(),
                           f"{label}, fast vs a run without them (cycle or inner state changed)")
            _require_equal(tested.slow(), clean.slow(),
                           f"{label}, slow vs a run without them (cycle or inner state changed)")
    return Passed()


# --- one copy of memory -------------------------------------------------------------------


def check_memory(backend: Backend) -> Passed:
    """One extra copy of the parameters, no more, from construction on (the paper's memory claim).

    Needs the runner capability ``extra_state_bytes()``. It must equal the
    parameters' total bytes right after construction (φ₀ is allocated
    eagerly), after a step that ends no cycle, after a sync and after a
    restore into a fresh runner: a lazily created slow buffer reports 0 at
    first, a backup copy for evaluation reports twice as much.
    """
    for dtype in backend.dtypes:
        rng = np.random.default_rng(17)
        params = _random(rng, dtype, SHAPES)
        one_copy = sum(p.nbytes for p in params)
        spec = InnerSpec("sgd", {"lr": 0.1, "momentum": 0.9})
        runner = backend.create(params, spec, 3, 0.5)
        if not isinstance(runner, ReportsMemory):
            raise NotApplicable("the runner has no extra_state_bytes()")

        def expect(r: Any, when: str) -> None:
            got = r.extra_state_bytes()
            if isinstance(got, bool) or not isinstance(got, numbers.Integral):
                raise CheckFailure(f"{dtype}: extra_state_bytes() {when} returned {got!r}, not an int")
            if int(got) != one_copy:
                copies = int(got) / one_copy
                raise CheckFailure(f"{dtype}: Lookahead holds {int(got)} bytes {when}, "
                                   f"{copies:.3g} copies of the {one_copy} parameter bytes (expected 1)")

        expect(runner, "after construction")
        runner.step(_random(rng, dtype, SHAPES))
        expect(runner, "after a step that ends no cycle")
        for _ in range(2):
            runner.step(_random(rng, dtype, SHAPES))
        expect(runner, "after a sync")
        restored = backend.create(params, spec, 3, 0.5)
        restored.restore(runner.save())
        expect(restored, "after a restore")
    return Passed()


# --- skipped steps --------------------------------------------------------------------------


def check_skipped_steps(backend: Backend) -> Passed:
    """Skipped steps do not count: syncs follow every k-th *executed* step (Algorithm 1).

    Needs the runner capability ``step_skipped(grads)``, a step the inner
    optimizer skips as AMP's GradScaler does on inf/NaN gradients (the
    gradients offered here hold inf and NaN). Skips are interleaved with
    executed steps (before the first, mid-cycle, right before and right
    after a sync, twice in a row; k = 3, heavy-ball momentum). A skip must
    leave θ and φ unchanged, and after every executed step θ and φ must
    equal, bit for bit, a run without the skips.
    """
    spec = InnerSpec("sgd", {"lr": 0.1, "momentum": 0.9})
    k = 3
    plan = "s x x s x s x s s s s x x s s"  # x: a skipped step, s: an executed one
    for dtype in backend.dtypes:
        rng = np.random.default_rng(19)
        params = _random(rng, dtype, SHAPES)
        tested = backend.create(params, spec, k, 0.5)
        if not isinstance(tested, SkipsSteps):
            raise NotApplicable("the runner has no step_skipped()")
        clean = backend.create(params, spec, k, 0.5)
        executed = 0
        for position, kind in enumerate(plan.split(), start=1):
            if kind == "x":
                bad = [np.where(rng.random(p.shape) < 0.5, np.inf, np.nan).astype(dtype) for p in params]
                before_fast, before_slow = tested.fast(), tested.slow()
                tested.step_skipped(bad)
                label = f"{dtype}: skipped step at position {position} (after {executed} executed)"
                _require_equal(tested.fast(), before_fast, f"{label}: fast")
                _require_equal(tested.slow(), before_slow, f"{label}: slow")
                continue
            grads = _random(rng, dtype, SHAPES)
            tested.step(grads)
            clean.step(grads)
            executed += 1
            label = f"{dtype}: executed step {executed} (position {position}) vs a run without skips"
            _require_equal(tested.fast(), clean.fast(), f"{label}: fast")
            _require_equal(tested.slow(), clean.slow(), f"{label}: slow")
    return Passed()


# --- the registry of checks and the runner --------------------------------------------------


class Check(NamedTuple):
    """A check and how to read its result.

    Attributes:
        name: short name, used in test ids, the report and the xfail file.
        function: ``function(backend) -> Passed``; raises `CheckFailure`
            or `NotApplicable`.
        exact: whether the check compares bit for bit (the report says
            "pass (exact)"); the tolerance checks report their worst error instead.
        summary: one line: the rule and the paper equation it enforces.
    """

    name: str
    function: Callable[[Backend], Passed]
    exact: bool
    summary: str


def _check(name: str, function: Callable[[Backend], Passed], *, exact: bool = False) -> Check:
    summary = (function.__doc__ or "").strip().splitlines()[0]
    return Check(name, function, exact, summary)


CHECKS: dict[str, Check] = {
    c.name: c for c in (
        _check("eq01_closed_form", check_eq01_closed_form),
        _check("schedule", check_schedule, exact=True),
        _check("reference", check_reference),
        _check("edge_cases", check_edge_cases, exact=True),
        _check("dtype_shape_device", check_dtype_shape_device, exact=True),
        _check("round_trip", check_round_trip, exact=True),
        _check("bad_input", check_bad_input),
        _check("memory", check_memory),
        _check("skipped_steps", check_skipped_steps, exact=True),
    )
}
"""Every check, by name, in report order."""


def _where(exc: BaseException) -> str:
    """The innermost frame of a crash, to point a backend author at their code."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename}:{last.lineno} in {last.name})"


def run_check(name: str, backend: Backend | BrokenBackend) -> CheckResult:
    """Run one check on one backend; failures become results, never exceptions.

    A crash inside the backend is a failure of the backend, reported with
    its type, message and innermost frame. A `BrokenBackend` fails every
    check with its load error.

    Raises:
        KeyError: ``name`` is not a check.
        MissingToolError: a tool of the kit (`lookahead_conformance.tools.KIT_TOOLS`)
            is not installed; that is no result of the backend's.
    """
    check = CHECKS[name]
    if isinstance(backend, BrokenBackend):
        return CheckResult(name, FAIL, None, f"backend failed to load: {backend.error}")
    try:
        outcome = check.function(backend)
    except NotApplicable as exc:
        return CheckResult(name, NOT_APPLICABLE, None, f"not applicable: {exc}")
    except CheckFailure as exc:
        return CheckResult(name, FAIL, exc.worst_eps, str(exc))
    except ModuleNotFoundError as exc:
        if is_kit_tool(exc):  # the kit's own tool is missing: no verdict on the backend
            raise MissingToolError(missing_tools_message() or str(exc)) from exc
        return CheckResult(name, FAIL, None, f"{type(exc).__name__}: {exc}{_where(exc)}")
    except Exception as exc:  # a crash is a failure of the backend, reported as such
        return CheckResult(name, FAIL, None, f"{type(exc).__name__}: {exc}{_where(exc)}")
    return CheckResult(name, PASS, outcome.worst_eps, outcome.note)
