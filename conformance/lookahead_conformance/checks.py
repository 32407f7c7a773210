"""The conformance checks: each certifies one rule of the paper or of docs/design.md.

Every check takes a `lookahead_conformance.protocol.Backend` and the run's
`Settings`, runs its cases on each of the backend's dtypes, and either returns
`Passed` or raises: `CheckFailure` (fail, listing every failing case: where
and by how much) or `NotApplicable` (the check needs an optional runner
capability the backend does not offer). A failing case does not stop the
check: the next case runs, so that a report shows at once which cases fail
and which pass. `run_check` turns the outcome into a `CheckResult`.

Errors are measured in units of ``finfo(dtype).eps`` times the largest
magnitude involved, so one number reads the same for float32 and float64.
Only two checks have a tolerance (`check_eq01_closed_form`,
`check_reference`); it grows with the number of roundings (syncs, steps),
never with a fudge for one backend. All other checks are exact.

Everything is deterministic: the cases follow from the seed of `Settings`
(NumPy generators and hypothesis, without an example database), so a run is
reproducible. What the checks test is versioned by `CHECKS_VERSION`.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import traceback
from collections.abc import Callable, Iterator, Sequence
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
    SupportsOuter,
)
from .registry import BrokenBackend
from .tools import MissingToolError, is_kit_tool, missing_tools_message

__all__ = [
    "BAD_HYPERPARAMETERS",
    "BAD_INPUT_SHAPES",
    "CHECKS",
    "CHECKS_VERSION",
    "DEFAULT_MAX_EXAMPLES",
    "DEFAULT_SEED",
    "EQ01_EPS_PER_SYNC",
    "EQ01_SUBNORMALS_PER_SYNC",
    "FAIL",
    "NOT_APPLICABLE",
    "PASS",
    "OUTER_SPECS",
    "REFERENCE_EPS_PER_STEP",
    "Check",
    "CheckFailure",
    "CheckResult",
    "Eq01Case",
    "Eq01Expected",
    "NotApplicable",
    "Passed",
    "Settings",
    "bad_gradient_probes",
    "check_eq01_cases",
    "eq01_expected",
    "make_settings",
    "run_check",
]

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "n/a"

CHECKS_VERSION = 2
"""The version of what the checks test: their cases, rules and tolerances.

Bumped whenever a check, a case or a tolerance changes (not for prose or for
how results are printed), so that a report says which rules it applied and a
CI can pin them: ``--require-checks-version`` (command line) and
``--lookahead-require-checks-version`` (pytest) fail when the installed kit's
differs. docs/conformance.md lists what each version changed.

1. Every failing case reported; ``bad_input`` probes gradients that broadcast
   and gradients of another dtype (floats both ways, integers); cases drawn
   from the run's seed; eq. 0.1's tolerance with its floor of one smallest
   subnormal per sync.
2. The ``outer`` check (Lookahead with an outer optimizer; n/a for a backend
   without ``create_outer``); drawn cases follow the seed alone (no literals
   harvested from the caller's source, see `_without_local_constants`).
"""

DEFAULT_SEED = 0
"""The seed of a run that names none: the kit's fixed cases."""

DEFAULT_MAX_EXAMPLES = 25
"""How many eq. 0.1 cases hypothesis draws, beyond the scripted ones, unless told otherwise."""

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

_SEEDS = 2**32
"""Seeds are in ``[0, _SEEDS)``: what NumPy's and hypothesis's generators take alike."""


class Settings(NamedTuple):
    """How a run draws its cases; a report records them, so that it can be reproduced.

    Attributes:
        seed: an int in [0, 2**32). Every random case follows from it: the
            NumPy generators of the checks and hypothesis's draws for
            `check_eq01_closed_form`. The default, 0, keeps the fixed NumPy
            seeds the kit has always used.
        max_examples: how many cases hypothesis draws for
            `check_eq01_closed_form`, beyond the scripted ones (0: only those).
    """

    seed: int = DEFAULT_SEED
    max_examples: int = DEFAULT_MAX_EXAMPLES


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {bound}, got {value}")
    return value


def make_settings(seed: Any = DEFAULT_SEED, max_examples: Any = DEFAULT_MAX_EXAMPLES) -> Settings:
    """`Settings` from the runners' options, checked.

    Raises:
        TypeError: ``seed`` or ``max_examples`` is not an int (a bool is not).
        ValueError: ``seed`` is outside [0, 2**32), or ``max_examples`` is negative.
    """
    return Settings(_check_int("seed", seed, 0, _SEEDS), _check_int("max_examples", max_examples, 0))


def _rng(base: int, settings: Settings) -> np.random.Generator:
    """The NumPy generator of a check's cases: the check's fixed seed ``base``, mixed with the
    run's seed unless that is 0 (which keeps the cases the kit has always run)."""
    return np.random.default_rng(base if settings.seed == 0 else (base, settings.seed))


def _case_seed(index: int, settings: Settings) -> int:
    """The seed of the ``index``-th scripted eq. 0.1 case (``index`` itself under seed 0)."""
    if settings.seed == 0:
        return index
    return int(np.random.SeedSequence((index, settings.seed)).generate_state(1)[0])


class CheckResult(NamedTuple):
    """Outcome of one check on one backend.

    Attributes:
        name: the check's name (a key of `CHECKS`).
        status: ``"pass"``, ``"fail"`` or ``"n/a"`` (not applicable: the
            backend lacks a capability the check needs). The report adds
            ``"skipped"``, ``"xfail"`` and ``"xpass"`` for checks on a skip or
            xfail list (`lookahead_conformance.report`).
        worst_eps: the largest error measured, in units of eps of the dtype
            times the largest magnitude involved (for a failure: of the
            failing cases); ``None`` for a check that measures no error
            (exact, or a rule).
        detail: ``"ok"``; for a failure the first failing case, followed by
            the count when there are more; or why the check does not apply.
        failures: every failing case, in the order they ran, each saying
            which dtype, hyperparameters and step went wrong (empty unless
            the check failed).
        cases: how many cases ran (``None`` when the check could not start:
            a backend that failed to load, a crash outside any case).
    """

    name: str
    status: str
    worst_eps: float | None
    detail: str
    failures: tuple[str, ...] = ()
    cases: int | None = None

    @property
    def passed(self) -> bool:
        """Whether the status is ``"pass"``."""
        return self.status == PASS


class CheckFailure(AssertionError):
    """A rule was broken; the message says where.

    Args:
        message: what failed, with the dtype, hyperparameters and step.
        worst_eps: the error that failed (or the worst of the failing cases), if measured.
        failures: every failing case (default: ``message`` alone).
        cases: how many cases ran, if counted.
    """

    def __init__(self, message: str, worst_eps: float | None = None,
                 failures: Sequence[str] | None = None, cases: int | None = None) -> None:
        super().__init__(message)
        self.worst_eps = worst_eps
        self.failures = tuple(failures) if failures else (message,)
        self.cases = cases


class NotApplicable(Exception):
    """The check needs a runner capability this backend does not provide."""


class Passed(NamedTuple):
    """What a check returns when every case passed.

    Attributes:
        worst_eps: the largest error measured, in eps, or ``None`` when the
            check compares exactly or tests a rule.
        note: ``"ok"``, or what could not be checked on this backend.
        cases: how many cases ran.
    """

    worst_eps: float | None = None
    note: str = "ok"
    cases: int | None = None


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


def _where(exc: BaseException) -> str:
    """The innermost frame of a crash, to point a backend author at their code."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename}:{last.lineno} in {last.name})"


def _crash(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}{_where(exc)}"


def _summary(failures: Sequence[str], cases: int) -> str:
    """One line for a check's failures: the first, then how many more of how many cases."""
    if len(failures) == 1:
        return failures[0]
    return (f"{failures[0]} (and {len(failures) - 1} more: "
            f"{len(failures)} of {cases} cases fail)")


class _Tally:
    """The cases of one check, run one after another.

    A failing case is recorded with what went wrong and the next case runs,
    so that the report shows every failing case, not only the first. Within
    a case the first failure ends it: what follows would only repeat it
    (a wrong slow weight is wrong at every later step). A crash inside the
    backend fails its case like a broken rule; a missing capability
    (`NotApplicable`) or a missing tool of the kit ends the whole check.
    """

    def __init__(self) -> None:
        self.cases = 0
        self.failures: list[str] = []
        self.worst = 0.0  # the largest error of a comparison that passed
        self.failed_errors: list[float] = []

    @contextlib.contextmanager
    def case(self, label: str) -> Iterator[None]:
        self.cases += 1
        try:
            yield
        except CheckFailure as exc:
            self.failures.append(str(exc))
            if exc.worst_eps is not None:  # a NaN error counts as the worst possible
                self.failed_errors.append(math.inf if math.isnan(exc.worst_eps) else exc.worst_eps)
        except (NotApplicable, MissingToolError):
            raise
        except ModuleNotFoundError as exc:
            if is_kit_tool(exc):  # the kit's own tool is missing: no verdict on the backend
                raise
            self.failures.append(f"{_crash(exc)}; case: {label}")
        except Exception as exc:  # a crash is a failure of the backend, reported as such
            self.failures.append(f"{_crash(exc)}; case: {label}")

    def record(self, err: float, tolerance: float, where: str) -> None:
        """Keep the worst error; fail the case beyond the tolerance."""
        if err > tolerance or math.isnan(err):
            raise CheckFailure(f"{where} is {err:.3g} eps off (tolerance {tolerance:.3g} eps)", err)
        self.worst = max(self.worst, err)

    def outcome(self, measured: bool = False, note: str = "ok") -> Passed:
        """`Passed` with the count, or `CheckFailure` listing every failing case.

        ``measured``: the check measures errors (it reports its worst one).
        """
        if self.failures:
            worst = max(self.failed_errors) if measured and self.failed_errors else None
            raise CheckFailure(_summary(self.failures, self.cases), worst, self.failures, self.cases)
        return Passed(self.worst if measured else None, note, self.cases)


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


def _run_eq01_case(backend: Backend, case: Eq01Case, tally: _Tally, outer: bool = False) -> None:
    """One eq. 0.1 case; with ``outer``, α is the learning rate of an outer SGD (no momentum)."""
    dtype, k, alpha, lr = case.dtype, case.k, case.alpha, case.lr
    label = (f"{dtype} k={k} alpha={alpha!r} lr={lr} shapes={list(case.shapes)} "
             f"syncs={case.syncs} seed={case.seed}")
    if outer:
        label = f"outer SGD(lr=alpha) {label}"
    if case.scale != 1.0:
        label += f" scale={case.scale!r}"
    with tally.case(label):
        rng = np.random.default_rng(case.seed)
        params = _random(rng, dtype, case.shapes, case.scale)
        inner = InnerSpec("sgd", {"lr": lr})
        if outer:
            runner = backend.create_outer(params, inner, k, InnerSpec("sgd", {"lr": alpha}))
        else:
            runner = backend.create(params, inner, k, alpha)
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
                err = _eps_error(np.ldexp(slow[i].astype(np.float64), expected.shift),
                                 expected.value, dtype, expected.magnitude)
                tally.record(err, _eq01_tolerance_eps(dtype, t, expected),
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


def check_eq01_closed_form(backend: Backend, settings: Settings = Settings()) -> Passed:
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
    two-sided lerp, α = 0 and 1, a partial last cycle), then
    ``settings.max_examples`` (25 by default) drawn by hypothesis (k in 1..6,
    α in [0, 1], one to three shapes of rank 0 to 3, the dtype, 0 to 6 syncs,
    the learning rate) from ``settings.seed``. Every case runs, whatever
    failed before it (an α the backend refuses fails its own cases only).

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
    if settings.max_examples:
        import hypothesis  # noqa: F401 - a missing tool stops the check before its first case
    tally = _Tally()
    for dtype in backend.dtypes:
        for index, (k, alpha, syncs, tail) in enumerate(_EQ01_SCRIPTED):
            case = Eq01Case(dtype, k, alpha, SHAPES, syncs, tail, 0.25, _case_seed(index, settings))
            _run_eq01_case(backend, case, tally)
    if settings.max_examples:
        _draw_eq01_cases(backend, tally, settings)
    return tally.outcome(measured=True)


def _draw_eq01_cases(backend: Backend, tally: _Tally, settings: Settings) -> None:
    """Run ``settings.max_examples`` cases drawn by hypothesis from ``settings.seed``.

    Hypothesis only draws: a failing case is recorded in ``tally`` and never
    raised, so every example runs and nothing is shrunk.
    """
    from hypothesis import HealthCheck, Phase, Verbosity, given, seed
    from hypothesis import settings as hypothesis_settings

    def run(case: Eq01Case) -> None:
        _run_eq01_case(backend, case, tally)

    test = given(case=_eq01_strategy(backend.dtypes))(run)
    test = hypothesis_settings(
        max_examples=settings.max_examples, deadline=None, derandomize=False, database=None,
        phases=(Phase.generate,), suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet,
    )(test)
    with _without_local_constants():
        seed(settings.seed)(test)()


@contextlib.contextmanager
def _without_local_constants() -> Iterator[None]:
    """While drawing, no literals harvested from the caller's source code.

    Hypothesis (since 6.131) now and then draws a literal found in the
    source of any module loaded in the process that is not installed in
    site-packages: the backend under test, the caller's own code, whatever a
    test session imported before. The kit's cases would then depend on that
    code and on what ran earlier, not on the seed alone; a report could not
    be reproduced elsewhere. This empties that pool (and the cache built from
    it) for the draw. Its fixed pool of well-known edge values stays. A
    Hypothesis without the pool has nothing to empty.
    """
    try:
        from hypothesis.internal.conjecture import providers

        empty = providers.Constants()
        cache = providers.CONSTANTS_CACHE.cache
        getattr(providers, "_get_local_constants")
    except (ImportError, AttributeError):
        yield
        return
    from unittest import mock

    cache.clear()
    try:
        with mock.patch.object(providers, "_get_local_constants", lambda: empty):
            yield
    finally:
        cache.clear()


def check_eq01_cases(backend: Backend, cases: Sequence[Eq01Case]) -> Passed:
    """`check_eq01_closed_form`'s comparison, with its tolerance, on the given cases.

    For cases the check does not draw: subnormal inputs (``scale`` the
    dtype's smallest subnormal), which a backend that flushes subnormals to
    zero cannot pass. Runs every case, then raises `CheckFailure` listing
    each one off eq. 0.1, in order.
    """
    tally = _Tally()
    for case in cases:
        _run_eq01_case(backend, case, tally)
    return tally.outcome(measured=True)


# --- the schedule ---------------------------------------------------------------------------


def _require_no_aliasing(runner: Runner, where: str) -> None:
    if isinstance(runner, ReportsAliasing) and runner.aliases():
        raise CheckFailure(f"{where}: aliases() reports fast and slow weights sharing memory")


def check_schedule(backend: Backend, settings: Settings = Settings()) -> Passed:
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

    Cases: each dtype with k in {3, 1, 2, 5}.
    """
    tally = _Tally()
    for dtype in backend.dtypes:
        for k in (3, 1, 2, 5):
            with tally.case(f"{dtype} k={k} alpha=0.5"):
                _run_schedule_case(backend, dtype, k)
    return tally.outcome()


def _run_schedule_case(backend: Backend, dtype: str, k: int) -> None:
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


# --- agreement with the reference -----------------------------------------------------------

REFERENCE_SPECS = (
    InnerSpec("sgd", {"lr": 0.05}),
    InnerSpec("sgd", {"lr": 0.05, "momentum": 0.9}),
    InnerSpec("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    InnerSpec("adam", {"lr": 1e-2}),
)
"""SGD, Polyak (heavy-ball) momentum, Nesterov with weight decay, Adam."""


def check_reference(backend: Backend, settings: Settings = Settings()) -> Passed:
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

    Cases: each dtype, inner optimizer and α.
    """
    reference = _reference_backend()
    tally = _Tally()
    for dtype in backend.dtypes:
        for spec in REFERENCE_SPECS:
            for alpha in (0.3, 0.5, 0.8):
                label = f"{dtype} {spec.name} {spec.hyperparams} k=5 alpha={alpha}"
                with tally.case(label):
                    _run_reference_case(backend, reference, spec, dtype, alpha, tally, settings)
    return tally.outcome(measured=True)


def _run_reference_case(backend: Backend, reference: Backend, spec: InnerSpec, dtype: str,
                        alpha: float, tally: _Tally, settings: Settings) -> None:
    steps, k = 23, 5
    rng = _rng(7, settings)
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
        for what, got, want in (("fast", ours.fast(), want_fast), ("slow", ours.slow(), want_slow)):
            _require_like(got, params, f"{label}: {what} after step {step}")
            for i, (g, w) in enumerate(zip(got, want)):
                tally.record(_eps_error(g, w, dtype, magnitude), tolerance,
                             f"{label}: {what}[{i}] after step {step} vs the reference")


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


def check_edge_cases(backend: Backend, settings: Settings = Settings()) -> Passed:
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

    Cases: per dtype, the three runs at α = 1, the three at α = 0 and the
    k = 1 run. The crafted values are fixed; the random runs follow the seed.
    """
    momentum = InnerSpec("sgd", {"lr": 0.1, "momentum": 0.9})
    plain = InnerSpec("sgd", {"lr": 1.0})
    steps = 12
    tally = _Tally()
    for dtype in backend.dtypes:
        rng = _rng(3, settings)
        random_params = _random(rng, dtype, SHAPES)
        random_grads = [_random(rng, dtype, SHAPES) for _ in range(steps)]

        # α = 1: the inner optimizer alone.
        crafted_params, crafted_grads = alpha_one_case(dtype)
        for params, grads, spec, k in ((crafted_params, crafted_grads, plain, 2),
                                       (random_params, random_grads, momentum, 1),
                                       (random_params, random_grads, momentum, 2)):
            with tally.case(f"{dtype} alpha=1 k={k} {spec.hyperparams}"):
                _run_alpha_one_case(backend, dtype, params, grads, spec, k)

        # α = 0: φ frozen at φ₀, θ back to φ₀ at every sync.
        crafted_params, crafted_grads = alpha_zero_case(dtype)
        for params, grads, spec, k in ((crafted_params, crafted_grads, plain, 2),
                                       (random_params, random_grads, momentum, 1),
                                       (random_params, random_grads, momentum, 3)):
            with tally.case(f"{dtype} alpha=0 k={k} {spec.hyperparams}"):
                _run_alpha_zero_case(backend, dtype, params, grads, spec, k)

        # k = 1: every step is damped by α.
        with tally.case(f"{dtype} k=1 alpha=0.25"):
            damped = backend.create([np.zeros(2, dtype=dtype)], plain, 1, 0.25)
            for n in range(1, 6):
                damped.step([np.full(2, -1.0, dtype=dtype)])
                want = [np.full(2, 0.25 * n, dtype=dtype)]
                _require_equal(damped.fast(), want, f"{dtype} k=1 alpha=0.25 step {n}: fast")
                _require_equal(damped.slow(), want, f"{dtype} k=1 alpha=0.25 step {n}: slow")
    return tally.outcome()


def _run_alpha_one_case(backend: Backend, dtype: str, params: list[np.ndarray],
                        grads: list[list[np.ndarray]], spec: InnerSpec, k: int) -> None:
    synced = backend.create(params, spec, k, 1.0)
    alone = backend.create(params, spec, _NEVER, 1.0)
    for n, g in enumerate(grads, start=1):
        synced.step(g)
        alone.step(g)
        label = f"{dtype} alpha=1 k={k} {spec.hyperparams}, step {n}"
        _require_equal(synced.fast(), alone.fast(), f"{label}: fast vs the inner optimizer alone")
        if n % k == 0:
            _require_equal(synced.slow(), alone.fast(), f"{label}: slow after the sync (φ = θ)")


def _run_alpha_zero_case(backend: Backend, dtype: str, params: list[np.ndarray],
                         grads: list[list[np.ndarray]], spec: InnerSpec, k: int) -> None:
    frozen = backend.create(params, spec, k, 0.0)
    for n, g in enumerate(grads, start=1):
        frozen.step(g)
        label = f"{dtype} alpha=0 k={k} {spec.hyperparams}, step {n}"
        _require_equal(frozen.slow(), params, f"{label}: slow (must stay φ₀)")
        if n % k == 0:
            _require_equal(frozen.fast(), params, f"{label}: fast after the sync (reset to φ₀)")


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


def check_dtype_shape_device(backend: Backend, settings: Settings = Settings()) -> Passed:
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

    Cases: the conversions of each dtype, then each dtype alone and the mix.
    """
    tally = _Tally()
    for dtype in backend.dtypes:
        with tally.case(f"{dtype} conversions"):
            _check_conversion(backend, dtype)
    mixes = [[d] * len(_SHAPE_ZOO) for d in backend.dtypes]
    if len(backend.dtypes) > 1:
        mixes.append([backend.dtypes[i % len(backend.dtypes)] for i in range(len(_SHAPE_ZOO))])
    reported_device = []
    for dtypes in mixes:
        label = f"dtypes {sorted(set(dtypes))}"
        with tally.case(label):
            reported_device.append(_run_dtype_mix_case(backend, dtypes, label, settings))
    if not any(reported_device):
        return tally.outcome(note="ok (the runner has no device(): the device was checked on "
                                  "conversions only)")
    return tally.outcome()


def _run_dtype_mix_case(backend: Backend, dtypes: list[str], label: str, settings: Settings) -> bool:
    """One optimizer over `_SHAPE_ZOO` in ``dtypes``; whether the runner reported its device."""
    rng = _rng(11, settings)
    params = [np.asarray(rng.standard_normal(s), dtype=d) for s, d in zip(_SHAPE_ZOO, dtypes)]
    runner = backend.create(params, InnerSpec("adam", {"lr": 1e-3}), 2, 0.5)
    for step in range(4):
        if step:
            runner.step([np.asarray(rng.standard_normal(p.shape), dtype=p.dtype) for p in params])
        _require_like(runner.fast(), params, f"{label}: fast after {step} steps")
        _require_like(runner.slow(), params, f"{label}: slow after {step} steps")
        if isinstance(runner, ReportsDevice):
            where, want = runner.device(), backend.device()
            if where != want:
                raise CheckFailure(f"{label}: after {step} steps the weights are on {where}, "
                                   f"the backend's device is {want}")
    return isinstance(runner, ReportsDevice)


# --- state round trip -----------------------------------------------------------------------


def check_round_trip(backend: Backend, settings: Settings = Settings()) -> Passed:
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

    Cases: each dtype, inner optimizer and n.
    """
    k = 4
    tally = _Tally()
    for dtype in backend.dtypes:
        for spec in (InnerSpec("sgd", {"lr": 0.05}), InnerSpec("sgd", {"lr": 0.05, "momentum": 0.9}),
                     InnerSpec("adam", {"lr": 1e-2})):
            for n in (0, k - 1, k, k + 1, 2 * k - 1):
                label = f"{dtype} {spec.name} {spec.hyperparams} k={k}, saved after {n} steps"
                with tally.case(label):
                    _run_round_trip_case(backend, dtype, spec, k, n, label, settings)
    return tally.outcome()


def _run_round_trip_case(backend: Backend, dtype: str, spec: InnerSpec, k: int, n: int,
                         label: str, settings: Settings) -> None:
    alpha = 0.6
    rng = _rng(5, settings)
    params = _random(rng, dtype, SHAPES)
    grads = [_random(rng, dtype, SHAPES) for _ in range(n + k + 2)]
    _require_resumes(lambda: backend.create(params, spec, k, alpha), grads, n, label)


def _require_resumes(create: Callable[[], Runner], grads: Sequence[list[np.ndarray]], n: int,
                     label: str) -> None:
    """A runner saved after ``n`` of ``grads`` and restored into a fresh one (``create()``)
    goes on bit for bit like the saved one, which keeps stepping after saving."""
    first = create()
    for g in grads[:n]:
        first.step(g)
    saved = first.save()
    resumed = create()
    resumed.restore(saved)
    _require_equal(resumed.fast(), first.fast(), f"{label}: fast right after restore")
    _require_equal(resumed.slow(), first.slow(), f"{label}: slow right after restore")
    for m, g in enumerate(grads[n:], start=n + 1):
        first.step(g)
        resumed.step(g)
        _require_equal(resumed.fast(), first.fast(), f"{label}: fast after step {m}")
        _require_equal(resumed.slow(), first.slow(), f"{label}: slow after step {m}")


# --- bad input ------------------------------------------------------------------------------

BAD_HYPERPARAMETERS = (
    (0, 0.5), (-1, 0.5), (True, 0.5), (2.5, 0.5), (2.0, 0.5), ("3", 0.5), (None, 0.5),
    (3, -0.1), (3, 1.5), (3, math.nan), (3, math.inf), (3, True), (3, "0.5"), (3, None),
)
"""The (k, α) pairs `check_bad_input` offers to ``Backend.create``, every one to be refused.

The policy: k is an int >= 1 and α a finite real number in [0, 1], and a
value is never converted into one. So ``k=True`` is refused although
``True == 1`` (a bool is a flag, not a count: ``k=True`` is a typo for
something), as are ``k=2.0`` and ``k=2.5`` (a float is not a count, even a
whole one), ``k="3"`` and ``k=None``; ``α=True``, ``α="0.5"``, ``α=None``
(not real numbers), ``α=nan`` and ``α=inf`` (not finite), ``α=-0.1`` and
``α=1.5`` (outside [0, 1]). Any int and real types are accepted, NumPy's
included: ``numbers.Integral`` and ``numbers.Real``, as in ``lookahead_core``'s
``check_k`` and ``check_alpha``.
"""

BAD_INPUT_SHAPES = ((3,), (2, 3))
"""The parameters of `check_bad_input`: a vector and a matrix."""


def bad_gradient_probes(dtype: str) -> list[tuple[str, list[np.ndarray]]]:
    """The invalid gradient lists `check_bad_input` offers to ``Runner.step`` for parameters
    of `BAD_INPUT_SHAPES` in ``dtype``, each with what makes it invalid.

    The policy: one gradient per parameter, each of exactly its parameter's
    shape and dtype. Nothing is broadcast (a gradient of shape (1,), (3,) or
    () would silently spread over a (2, 3) parameter; a (2, 3) gradient
    would turn a (3,) parameter into a matrix in a functional
    implementation), reshaped (a (3, 2) gradient holds as many values as a
    (2, 3) parameter) or cast (a float16 gradient for a float32 parameter
    looks harmless but means the caller's mixed precision went wrong; a
    float64 one for a float32 parameter would lose bits; an integer one is no
    gradient). The dtype probes cover the two other floats of float16,
    float32 and float64, on one parameter and on all (an implementation that
    only checks that the gradients agree among themselves), and int64.
    """
    vector, matrix = BAD_INPUT_SHAPES
    name = np.dtype(dtype).name

    def ones(shape: tuple[int, ...], of: str = dtype) -> np.ndarray:
        return np.ones(shape, dtype=of)

    probes = [
        ("no gradients", []),
        ("one gradient for two parameters", [ones(vector)]),
        ("three gradients for two parameters", [ones(vector), ones(matrix), ones(vector)]),
        ("a gradient of shape (4,) for a (3,) parameter", [ones((4,)), ones(matrix)]),
        ("a gradient of shape (3, 2) for a (2, 3) parameter (as many values, transposed)",
         [ones(vector), ones((3, 2))]),
        ("a gradient of shape (1,) for a (2, 3) parameter (it broadcasts)", [ones(vector), ones((1,))]),
        ("a gradient of shape (3,) for a (2, 3) parameter (it broadcasts)", [ones(vector), ones((3,))]),
        ("a gradient of shape () for a (2, 3) parameter (it broadcasts)", [ones(vector), ones(())]),
        ("a gradient of shape (2, 3) for a (3,) parameter (the parameter would broadcast)",
         [ones(matrix), ones(matrix)]),
    ]
    for other in ("float16", "float32", "float64"):
        if other != name:
            probes.append((f"a {other} gradient for a {name} parameter", [ones(vector, other), ones(matrix)]))
            probes.append((f"{other} gradients for every {name} parameter",
                           [ones(vector, other), ones(matrix, other)]))
    probes.append((f"an int64 gradient for a {name} parameter", [ones(vector), ones(matrix, "int64")]))
    return probes


def check_bad_input(backend: Backend, settings: Settings = Settings()) -> Passed:
    """Bad input is rejected with TypeError/ValueError and changes nothing.

    The rule: docs/design.md, 'Errors'.

    Construction refuses every pair of `BAD_HYPERPARAMETERS`. A step refuses
    every gradient list of `bad_gradient_probes` (a wrong count, a wrong
    shape, one that would broadcast, another dtype), and leaves θ, φ, the
    position in the cycle and the inner optimizer's state untouched: a run
    interleaving the refused steps with seven good ones must give, bit for
    bit, the run with the good steps only (heavy-ball momentum, k = 3, so
    the refusals fall at every position of the cycle). Another exception
    than TypeError or ValueError fails, since callers catch those two.

    Cases: each dtype with each (k, α) pair, and with each gradient probe
    (a runner pair of its own, so that one probe the backend accepts fails
    alone).
    """
    spec = InnerSpec("sgd", {"lr": 0.1, "momentum": 0.9})
    tally = _Tally()
    for dtype in backend.dtypes:
        params = [np.ones(shape, dtype=dtype) for shape in BAD_INPUT_SHAPES]
        for k, alpha in BAD_HYPERPARAMETERS:
            with tally.case(f"{dtype} k={k!r} alpha={alpha!r}"):
                _require_refused_construction(backend, params, spec, k, alpha, dtype)
        rng = _rng(13, settings)
        good = [[np.asarray(rng.standard_normal(p.shape), dtype=dtype) for p in params] for _ in range(7)]
        for what, bad in bad_gradient_probes(dtype):
            with tally.case(f"{dtype}: {what}"):
                _require_refused_steps(backend, params, spec, good, what, bad, dtype)
    return tally.outcome()


def _require_refused_construction(backend: Backend, params: list[np.ndarray], spec: InnerSpec,
                                  k: Any, alpha: Any, dtype: str) -> None:
    try:
        backend.create(params, spec, k, alpha)
    except (TypeError, ValueError):
        return
    except Exception as exc:
        raise CheckFailure(f"{dtype}: k={k!r}, alpha={alpha!r} raised {type(exc).__name__}: {exc} "
                           "(expected TypeError or ValueError)") from exc
    raise CheckFailure(f"{dtype}: k={k!r}, alpha={alpha!r} was accepted")


def _require_refused_steps(backend: Backend, params: list[np.ndarray], spec: InnerSpec,
                           good: list[list[np.ndarray]], what: str, bad: list[np.ndarray],
                           dtype: str) -> None:
    """After each good step, offer ``bad``: refused, nothing changed, the run as without it."""
    clean = backend.create(params, spec, 3, 0.5)
    tested = backend.create(params, spec, 3, 0.5)
    for n, g in enumerate(good, start=1):
        clean.step(g)
        tested.step(g)
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
        _require_equal(tested.fast(), before_fast, f"{dtype}: fast after refusing {what}")
        _require_equal(tested.slow(), before_slow, f"{dtype}: slow after refusing {what}")
        label = f"{dtype}: after good step {n} and a refused step with {what}"
        _require_equal(tested.fast(), clean.fast(),
                       f"{label}, fast vs a run without them (cycle or inner state changed)")
        _require_equal(tested.slow(), clean.slow(),
                       f"{label}, slow vs a run without them (cycle or inner state changed)")


# --- one copy of memory -------------------------------------------------------------------


def check_memory(backend: Backend, settings: Settings = Settings()) -> Passed:
    """One extra copy of the parameters, no more, from construction on (the paper's memory claim).

    Needs the runner capability ``extra_state_bytes()``. It must equal the
    parameters' total bytes right after construction (φ₀ is allocated
    eagerly), after a step that ends no cycle, after a sync and after a
    restore into a fresh runner: a lazily created slow buffer reports 0 at
    first, a backup copy for evaluation reports twice as much.

    Cases: each dtype.
    """
    tally = _Tally()
    for dtype in backend.dtypes:
        with tally.case(dtype):
            _run_memory_case(backend, dtype, settings)
    return tally.outcome()


def _run_memory_case(backend: Backend, dtype: str, settings: Settings) -> None:
    rng = _rng(17, settings)
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


# --- skipped steps --------------------------------------------------------------------------


def check_skipped_steps(backend: Backend, settings: Settings = Settings()) -> Passed:
    """Skipped steps do not count: syncs follow every k-th *executed* step (Algorithm 1).

    Needs the runner capability ``step_skipped(grads)``, a step the inner
    optimizer skips as AMP's GradScaler does on inf/NaN gradients (the
    gradients offered here hold inf and NaN). Skips are interleaved with
    executed steps (before the first, mid-cycle, right before and right
    after a sync, twice in a row; k = 3, heavy-ball momentum). A skip must
    leave θ and φ unchanged, and after every executed step θ and φ must
    equal, bit for bit, a run without the skips.

    Cases: each dtype.
    """
    tally = _Tally()
    for dtype in backend.dtypes:
        with tally.case(dtype):
            _run_skipped_steps_case(backend, dtype, settings)
    return tally.outcome()


def _run_skipped_steps_case(backend: Backend, dtype: str, settings: Settings) -> None:
    spec = InnerSpec("sgd", {"lr": 0.1, "momentum": 0.9})
    k = 3
    plan = "s x x s x s x s s s s x x s s"  # x: a skipped step, s: an executed one
    rng = _rng(19, settings)
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


# --- outer optimizers -----------------------------------------------------------------------

OUTER_SPECS = (
    InnerSpec("sgd", {"lr": 0.7, "momentum": 0.9}),
    InnerSpec("sgd", {"lr": 0.7, "momentum": 0.9, "nesterov": True}),
    InnerSpec("sgd", {"lr": 0.7, "momentum": 0.5, "nesterov": True, "weight_decay": 1e-2}),
    InnerSpec("adam", {"lr": 0.05, "eps": 1e-2}),
)
"""Heavy ball, DiLoCo's Nesterov step, SNOO's (momentum 0.5, with weight decay), Adam.

Adam's ``eps = 0.01`` bounds how much its step can amplify the rounding of
Δ = φ − θ: the normalized step m̂/(√v̂ + eps) changes by at most 1/eps per
unit of Δ, so ``lr/eps = 5`` eps per eps of Δ. With eps = 1e-8 a coordinate
whose Δ is a few roundings wide could flip the sign of its step, and no
tolerance in eps would be honest."""


def _outer_gain(spec: InnerSpec) -> float:
    """How many eps of the weights one sync's roundings can become through ``spec``'s step.

    SGD: the pseudo-gradient's rounding reaches φ through lr·(1 + μ + μ² + …)
    (the momentum buffer carries it to later syncs), plus Nesterov's extra μ:
    at most lr·(1 + μ)/(1 − μ). Adam: lr/eps (see `OUTER_SPECS`).
    """
    hyper = spec.hyperparams
    if spec.name == "sgd":
        mu = float(hyper.get("momentum", 0.0))
        return float(hyper["lr"]) * (1.0 + mu) / (1.0 - mu)
    return float(hyper["lr"]) / float(hyper.get("eps", 1e-8))


def check_outer(backend: Backend, settings: Settings = Settings()) -> Passed:
    """Outer optimizers (SNOO, DiLoCo): outer SGD(lr = α) is eq. 0.1, others match the reference.

    Needs the backend capability ``create_outer`` (`SupportsOuter`): at each
    sync the outer optimizer steps the slow weights with the pseudo-gradient
    Δ = φ − θ_{t,k} as their gradient, then θ ← φ. Three parts, each dtype:

    1. Outer SGD with learning rate α and no momentum is Algorithm 1's sync
       φ − αΔ = φ + α(θ − φ): `check_eq01_closed_form`'s seven scripted
       cases, with its tolerance (this one-sided update rounds three times,
       as the lerp does).
    2. Heavy-ball, Nesterov and Adam outer steps (`OUTER_SPECS`) around
       inner SGD with momentum and inner Adam, k = 3, 14 steps (4 syncs and a
       partial cycle): θ and φ after every step against the reference,
       ``lookahead_core`` with the same outer optimizer on NumPy float64.
       Tolerance: `REFERENCE_EPS_PER_STEP` · (steps + syncs · (1 + G)) eps
       relative to the largest weight, where G is what the outer step can
       make of one sync's roundings (`_outer_gain`: lr·(1 + μ)/(1 − μ) for
       SGD, lr/eps for Adam).
    3. The outer state survives a checkpoint: saved after 2, 3 and 4 steps
       (k = 3: mid-cycle, on a sync, just after it) and restored into a fresh
       runner, the run goes on bit for bit as the uninterrupted one (Nesterov
       and Adam outer steps).
    """
    if not isinstance(backend, SupportsOuter):
        raise NotApplicable("the backend has no create_outer()")
    tally = _Tally()
    for dtype in backend.dtypes:
        for index, (k, alpha, syncs, tail) in enumerate(_EQ01_SCRIPTED):
            case = Eq01Case(dtype, k, alpha, SHAPES, syncs, tail, 0.25, _case_seed(index, settings))
            _run_eq01_case(backend, case, tally, outer=True)
    reference = _reference_backend()
    for dtype in backend.dtypes:
        for inner in (REFERENCE_SPECS[1], REFERENCE_SPECS[3]):
            for outer in OUTER_SPECS:
                label = (f"{dtype} inner {inner.name} {inner.hyperparams} outer {outer.name} "
                         f"{outer.hyperparams} k=3")
                with tally.case(label):
                    _run_outer_reference_case(backend, reference, inner, outer, dtype, label,
                                              tally, settings)
    for dtype in backend.dtypes:
        for outer in (OUTER_SPECS[1], OUTER_SPECS[3]):
            for n in (2, 3, 4):
                label = f"{dtype} outer {outer.name} {outer.hyperparams} k=3, saved after {n} steps"
                with tally.case(label):
                    _run_outer_round_trip_case(backend, dtype, outer, n, label, settings)
    return tally.outcome(measured=True)


def _run_outer_reference_case(backend: Backend, reference: Backend, inner: InnerSpec,
                              outer: InnerSpec, dtype: str, label: str, tally: _Tally,
                              settings: Settings) -> None:
    steps, k = 14, 3
    rng = _rng(23, settings)
    params = _random(rng, dtype, SHAPES)
    ours = backend.create_outer(params, inner, k, outer)
    ref = reference.create_outer([p.astype(np.float64) for p in params], inner, k, outer)
    gain = _outer_gain(outer)
    for step in range(1, steps + 1):
        grads = _random(rng, dtype, SHAPES)
        ours.step(grads)
        ref.step([g.astype(np.float64) for g in grads])
        want_fast, want_slow = ref.fast(), ref.slow()
        magnitude = _magnitude(*params, *want_fast, *want_slow)
        tolerance = REFERENCE_EPS_PER_STEP * (step + (step // k) * (1.0 + gain))
        for what, got, want in (("fast", ours.fast(), want_fast), ("slow", ours.slow(), want_slow)):
            _require_like(got, params, f"{label}: {what} after step {step}")
            for i, (g, w) in enumerate(zip(got, want)):
                tally.record(_eps_error(g, w, dtype, magnitude), tolerance,
                             f"{label}: {what}[{i}] after step {step} vs the reference")


def _run_outer_round_trip_case(backend: Backend, dtype: str, outer: InnerSpec, n: int,
                               label: str, settings: Settings) -> None:
    k = 3
    inner = REFERENCE_SPECS[1]
    rng = _rng(29, settings)
    params = _random(rng, dtype, SHAPES)
    grads = [_random(rng, dtype, SHAPES) for _ in range(n + 2 * k + 1)]
    _require_resumes(lambda: backend.create_outer(params, inner, k, outer), grads, n, label)


# --- the registry of checks and the runner --------------------------------------------------


class Check(NamedTuple):
    """A check and how to read its result.

    Attributes:
        name: short name, used in test ids, the report and the xfail and skip lists.
        function: ``function(backend, settings) -> Passed``; raises
            `CheckFailure` or `NotApplicable`.
        exact: whether the check compares bit for bit (the report says
            "pass (exact)"); the tolerance checks report their worst error instead.
        summary: one line: the rule and the paper equation it enforces.
    """

    name: str
    function: Callable[[Backend, Settings], Passed]
    exact: bool
    summary: str


def _check(name: str, function: Callable[[Backend, Settings], Passed], *, exact: bool = False) -> Check:
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
        _check("outer", check_outer),
    )
}
"""Every check, by name, in report order."""


def run_check(name: str, backend: Backend | BrokenBackend, *, seed: int = DEFAULT_SEED,
              max_examples: int = DEFAULT_MAX_EXAMPLES) -> CheckResult:
    """Run one check on one backend; failures become results, never exceptions.

    Every case of the check runs; the result lists each failing one. A crash
    inside the backend is a failure of the backend, reported with its type,
    message and innermost frame. A `BrokenBackend` fails every check with
    its load error.

    Args:
        name: a key of `CHECKS`.
        backend: the backend under test.
        seed: the seed of the run's `Settings`.
        max_examples: the number of drawn eq. 0.1 cases of the run's `Settings`.

    Raises:
        KeyError: ``name`` is not a check.
        TypeError, ValueError: a bad ``seed`` or ``max_examples`` (see `make_settings`).
        MissingToolError: a tool of the kit (`lookahead_conformance.tools.KIT_TOOLS`)
            is not installed; that is no result of the backend's.
    """
    check = CHECKS[name]
    settings = make_settings(seed, max_examples)
    if isinstance(backend, BrokenBackend):
        detail = f"backend failed to load: {backend.error}"
        return CheckResult(name, FAIL, None, detail, (detail,))
    try:
        outcome = check.function(backend, settings)
    except NotApplicable as exc:
        return CheckResult(name, NOT_APPLICABLE, None, f"not applicable: {exc}")
    except CheckFailure as exc:
        return CheckResult(name, FAIL, exc.worst_eps, str(exc), exc.failures, exc.cases)
    except ModuleNotFoundError as exc:
        if is_kit_tool(exc):  # the kit's own tool is missing: no verdict on the backend
            raise MissingToolError(missing_tools_message() or str(exc)) from exc
        return CheckResult(name, FAIL, None, _crash(exc), (_crash(exc),))
    except Exception as exc:  # a crash outside any case (in the check's own setup)
        return CheckResult(name, FAIL, None, _crash(exc), (_crash(exc),))
    return CheckResult(name, PASS, outcome.worst_eps, outcome.note, (), outcome.cases)
