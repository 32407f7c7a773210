"""The conformance checks: each certifies one rule of the paper or of DESIGN.md.

Every check takes a `lookahead_conformance.backends.Backend` and returns a
`CheckResult`. Errors are reported in units of ``finfo(dtype).eps``
relative to the largest magnitude involved, so one table reads the same for
float32 and float64. Tolerances grow with the number of roundings (syncs or
steps), never with a fudge for one backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from .backends import Backend, CoreBackend, InnerSpec

__all__ = ["CHECKS", "CheckResult", "run_check"]

SHAPES = ((7,), (3, 4), (2, 1, 3))


class CheckResult(NamedTuple):
    """Outcome of one check on one backend.

    Attributes:
        name: the check's name.
        passed: whether every case passed.
        worst_eps: the largest error seen, in units of eps of the dtype (0 for exact).
        detail: the first failure, or a summary.
    """

    name: str
    passed: bool
    worst_eps: float
    detail: str


class CheckFailure(AssertionError):
    """A rule was broken; the message says where."""


def _eps_error(actual: np.ndarray, expected: np.ndarray, dtype: str) -> float:
    """max |actual − expected| in units of eps·max(1, max|expected|)."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if not np.all(np.isfinite(actual)):
        return float("inf")
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    return float(np.max(np.abs(actual - expected), initial=0.0)) / (float(np.finfo(dtype).eps) * scale)


def _random_params(rng: np.random.Generator, dtype: str) -> list[np.ndarray]:
    return [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]


def _random_grads(rng: np.random.Generator, dtype: str) -> list[np.ndarray]:
    return [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]


def _require_dtype_kept(arrays: Sequence[np.ndarray], dtype: str, what: str) -> None:
    for i, a in enumerate(arrays):
        if a.dtype != np.dtype(dtype):
            raise CheckFailure(f"{what}[{i}] has dtype {a.dtype}, expected {dtype}")


def check_eq01_closed_form(backend: Backend) -> float:
    """eq. 0.1: φ_t = α Σ_j (1−α)^{t−j} θ_{j,k} + (1−α)^t φ₀.

    The fast weights just before each sync, θ_{j,k}, are rebuilt from the
    observed fast weights after k−1 steps and the last gradient (inner SGD,
    ``θ ← θ − lr·g``); eq. 0.1 is evaluated in float64 NumPy. Tolerance:
    8·(t+2) eps, one rounding per sync plus the reconstruction of θ_{j,k}.
    """
    worst = 0.0
    lr = 0.25
    for dtype in backend.dtypes:
        for seed, (k, alpha, syncs) in enumerate(
            [(1, 0.3, 6), (3, 0.5, 4), (5, 0.8, 3), (2, 0.0, 3), (4, 1.0, 3), (3, 0.37, 5)]
        ):
            rng = np.random.default_rng(seed)
            params = _random_params(rng, dtype)
            runner = backend.create(params, InnerSpec("sgd", {"lr": lr}), k, alpha)
            phi0 = [p.astype(np.float64) for p in params]
            before_syncs: list[list[np.ndarray]] = []
            for _ in range(syncs):
                for _ in range(k - 1):
                    runner.step(_random_grads(rng, dtype))
                last = runner.fast()
                grads = _random_grads(rng, dtype)
                before_syncs.append(
                    [f.astype(np.float64) - lr * g.astype(np.float64) for f, g in zip(last, grads)]
                )
                runner.step(grads)
            slow, fast = runner.slow(), runner.fast()
            _require_dtype_kept(slow, dtype, "slow")
            for i in range(len(params)):
                t = len(before_syncs)
                expected = (1.0 - alpha) ** t * phi0[i]
                for j, theta in enumerate(before_syncs, start=1):
                    expected = expected + alpha * (1.0 - alpha) ** (t - j) * theta[i]
                err = _eps_error(slow[i], expected, dtype)
                worst = max(worst, err)
                tol = 8.0 * (t + 2)
                if err > tol:
                    raise CheckFailure(
                        f"{dtype} k={k} alpha={alpha} after {t} syncs: slow[{i}] is "
                        f"{err:.1f} eps from eq. 0.1 (tolerance {tol:.0f} eps)"
                    )
                if not np.array_equal(fast[i], slow[i]):
                    raise CheckFailure(f"{dtype} k={k}: fast[{i}] != slow[{i}] right after a sync")
    return worst


def check_schedule(backend: Backend) -> float:
    """Algorithm 1's schedule: φ₀ = θ₀ eagerly; a sync after exactly every k-th step.

    Inner step θ ← θ + 1 from θ₀ = 0 (SGD, lr = 1, gradient −1): every value is
    a dyadic rational, so the expected trajectory is exact. With k = 3,
    α = 0.5 six steps give θ = φ = 3.0 (a lazily initialised slow buffer gives
    4.5; syncing at steps 1, k+1, … gives 4.5 too).
    """
    for dtype in backend.dtypes:
        for k in (1, 2, 3, 5):
            alpha = 0.5
            params = [np.zeros(3, dtype=dtype)]
            runner = backend.create(params, InnerSpec("sgd", {"lr": 1.0}), k, alpha)
            if not np.array_equal(runner.slow()[0], params[0]):
                raise CheckFailure(f"k={k}: slow weights before any step are not θ₀")
            fast, slow = 0.0, 0.0
            for step in range(1, 3 * k + 2):
                runner.step([np.full(3, -1.0, dtype=dtype)])
                fast += 1.0
                if step % k == 0:
                    slow = slow + alpha * (fast - slow)
                    fast = slow
                got_fast, got_slow = runner.fast()[0], runner.slow()[0]
                if not (np.all(got_fast == fast) and np.all(got_slow == slow)):
                    raise CheckFailure(
                        f"{dtype} k={k} after step {step}: fast={got_fast[0]}, slow={got_slow[0]}; "
                        f"Algorithm 1 gives fast={fast}, slow={slow}"
                    )
    return 0.0


REFERENCE_SPECS = (
    InnerSpec("sgd", {"lr": 0.05}),
    InnerSpec("sgd", {"lr": 0.05, "momentum": 0.9}),
    InnerSpec("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    InnerSpec("adam", {"lr": 1e-2}),
)


def check_reference(backend: Backend) -> float:
    """Agreement with the reference: ``lookahead_core`` on NumPy float64.

    SGD, Polyak momentum, Nesterov and Adam inner optimizers, k = 5, α ∈ {0.5, 0.7}
    (both branches of the two-sided lerp), 23 steps. Tolerance 16 eps per step
    of the backend's dtype.
    """
    reference = CoreBackend("reference", "numpy", ("float64",))
    worst = 0.0
    steps = 23
    for dtype in backend.dtypes:
        for spec in REFERENCE_SPECS:
            for alpha in (0.5, 0.7):
                rng = np.random.default_rng(7)
                params = _random_params(rng, dtype)
                ours = backend.create(params, spec, 5, alpha)
                ref = reference.create([p.astype(np.float64) for p in params], spec, 5, alpha)
                for _ in range(steps):
                    grads = _random_grads(rng, dtype)
                    ours.step(grads)
                    ref.step([g.astype(np.float64) for g in grads])
                for what, got, want in (("fast", ours.fast(), ref.fast()), ("slow", ours.slow(), ref.slow())):
                    _require_dtype_kept(got, dtype, what)
                    for i, (g, w) in enumerate(zip(got, want)):
                        err = _eps_error(g, w, dtype)
                        worst = max(worst, err)
                        if err > 16.0 * steps:
                            raise CheckFailure(
                                f"{dtype} {spec.name} {spec.hyperparams} alpha={alpha}: {what}[{i}] "
                                f"is {err:.1f} eps from the reference (tolerance {16 * steps} eps)"
                            )
    return worst


def check_edge_cases(backend: Backend) -> float:
    """Exact edge cases: α = 0 freezes φ = φ₀ and resets θ to φ₀ every k steps;
    α = 1 is the inner optimizer alone, bit for bit; k = 1 damps every step.
    """
    spec = InnerSpec("sgd", {"lr": 0.1, "momentum": 0.9})
    steps = 12
    for dtype in backend.dtypes:
        rng = np.random.default_rng(3)
        params = _random_params(rng, dtype)
        grads = [_random_grads(rng, dtype) for _ in range(steps)]

        frozen = backend.create(params, spec, 3, 0.0)
        for n, g in enumerate(grads, start=1):
            frozen.step(g)
            for i, (s, p) in enumerate(zip(frozen.slow(), params)):
                if not np.array_equal(s, p):
                    raise CheckFailure(f"{dtype} alpha=0: slow[{i}] moved from φ₀ at step {n}")
            if n % 3 == 0:
                for i, (f, p) in enumerate(zip(frozen.fast(), params)):
                    if not np.array_equal(f, p):
                        raise CheckFailure(f"{dtype} alpha=0: fast[{i}] not reset to φ₀ at step {n}")

        synced = backend.create(params, spec, 2, 1.0)
        alone = backend.create(params, spec, 10 * steps, 1.0)  # never syncs within the run
        for n, g in enumerate(grads, start=1):
            synced.step(g)
            alone.step(g)
            for i, (a, b) in enumerate(zip(synced.fast(), alone.fast())):
                if not np.array_equal(a, b):
                    raise CheckFailure(
                        f"{dtype} alpha=1: fast[{i}] differs from the inner optimizer alone at step {n}"
                    )

        damped = backend.create([np.zeros(2, dtype=dtype)], InnerSpec("sgd", {"lr": 1.0}), 1, 0.25)
        for n in range(1, 6):
            damped.step([np.full(2, -1.0, dtype=dtype)])
            if not (np.all(damped.slow()[0] == 0.25 * n) and np.all(damped.fast()[0] == 0.25 * n)):
                raise CheckFailure(f"{dtype} k=1 alpha=0.25: after step {n} expected {0.25 * n}")
    return 0.0


def check_dtype_shape(backend: Backend) -> float:
    """Fast and slow weights keep each parameter's dtype and shape (DESIGN §4)."""
    for dtype in backend.dtypes:
        rng = np.random.default_rng(11)
        params = _random_params(rng, dtype)
        runner = backend.create(params, InnerSpec("adam", {"lr": 1e-3}), 2, 0.5)
        for _ in range(3):
            runner.step(_random_grads(rng, dtype))
        for what, arrays in (("fast", runner.fast()), ("slow", runner.slow())):
            _require_dtype_kept(arrays, dtype, what)
            for i, (a, p) in enumerate(zip(arrays, params)):
                if a.shape != p.shape:
                    raise CheckFailure(f"{what}[{i}] has shape {a.shape}, expected {p.shape}")
    return 0.0


def check_round_trip(backend: Backend) -> float:
    """State round trip: N steps, save, restore into a fresh optimizer, N more steps
    equals 2N uninterrupted steps bit for bit, N on and off a sync boundary."""
    k = 4
    for dtype in backend.dtypes:
        for spec in (InnerSpec("sgd", {"lr": 0.05}), InnerSpec("sgd", {"lr": 0.05, "momentum": 0.9}),
                     InnerSpec("adam", {"lr": 1e-2})):
            for n in (0, k, k + 1):
                rng = np.random.default_rng(5)
                params = _random_params(rng, dtype)
                grads = [_random_grads(rng, dtype) for _ in range(2 * n + 3)]
                straight = backend.create(params, spec, k, 0.6)
                for g in grads:
                    straight.step(g)
                first = backend.create(params, spec, k, 0.6)
                for g in grads[:n]:
                    first.step(g)
                resumed = backend.create(params, spec, k, 0.6)
                resumed.restore(first.save())
                for g in grads[n:]:
                    resumed.step(g)
                for what, a, b in (("fast", resumed.fast(), straight.fast()),
                                   ("slow", resumed.slow(), straight.slow())):
                    for i, (x, y) in enumerate(zip(a, b)):
                        if not np.array_equal(x, y):
                            raise CheckFailure(
                                f"{dtype} {spec.name}, saved after {n} steps: {what}[{i}] differs "
                                "from the uninterrupted run"
                            )
    return 0.0


def check_bad_input(backend: Backend) -> float:
    """Invalid k or α is a TypeError/ValueError at construction; a step with
    gradients of the wrong shape is rejected and changes nothing."""
    params = [np.ones(3), np.ones((2, 2))]
    spec = InnerSpec("sgd", {"lr": 0.1, "momentum": 0.9})
    for k, alpha in ((0, 0.5), (-1, 0.5), (True, 0.5), (2.5, 0.5), (3, -0.1), (3, 1.5),
                     (3, float("nan")), (3, float("inf"))):
        try:
            backend.create(params, spec, k, alpha)
        except (TypeError, ValueError):
            continue
        raise CheckFailure(f"k={k!r}, alpha={alpha!r} was accepted")
    runner = backend.create(params, spec, 2, 0.5)
    runner.step([np.full(3, 0.5), np.full((2, 2), 0.5)])
    before = (runner.fast(), runner.slow())
    for bad in ([np.ones(3)], [np.ones(4), np.ones((2, 2))], [np.ones(3), np.ones((2, 2), dtype=np.float32)]):
        try:
            runner.step(bad)
        except (TypeError, ValueError):
            pass
        else:
            raise CheckFailure(f"gradients of shapes {[b.shape for b in bad]} were accepted")
        after = (runner.fast(), runner.slow())
        for a, b in zip(before, after):
            if not all(np.array_equal(x, y) for x, y in zip(a, b)):
                raise CheckFailure("a rejected step changed the weights")
    # The rejected steps must not have advanced the cycle either: one more step syncs.
    runner.step([np.full(3, 0.5), np.full((2, 2), 0.5)])
    if not all(np.array_equal(f, s) for f, s in zip(runner.fast(), runner.slow())):
        raise CheckFailure("a rejected step advanced the sync schedule")
    return 0.0


CHECKS: dict[str, Callable[[Backend], float]] = {
    "eq01_closed_form": check_eq01_closed_form,
    "schedule": check_schedule,
    "reference": check_reference,
    "edge_cases": check_edge_cases,
    "dtype_shape": check_dtype_shape,
    "round_trip": check_round_trip,
    "bad_input": check_bad_input,
}


def run_check(name: str, backend: Backend) -> CheckResult:
    """Run one check; a failure becomes a result instead of an exception."""
    try:
        worst = CHECKS[name](backend)
    except CheckFailure as exc:
        return CheckResult(name, False, float("nan"), str(exc))
    except Exception as exc:  # a crash is a failure of the backend, reported as such
        return CheckResult(name, False, float("nan"), f"{type(exc).__name__}: {exc}")
    return CheckResult(name, True, worst, "ok")
