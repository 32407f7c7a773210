"""Proof that the checks can fail: toy backends with one known fault each.

`ToyBackend` is a small, correct, in-place NumPy Lookahead around the core's
inner optimizers, written independently of ``lookahead_numpy``. Each fault
reproduces a bug seen in a peer implementation (see docs/peers.md);
the tests assert that exactly the right checks fail, with the right message,
and that the toy without faults passes every check.
"""

from __future__ import annotations

import numpy as np
import pytest

import lookahead_core as lc
from lookahead_conformance import CHECKS, run_check
from lookahead_conformance.checks import FAIL, NOT_APPLICABLE, alpha_one_case, alpha_zero_case
from lookahead_conformance.protocol import InnerSpec, ReportsAliasing, SkipsSteps

ALL_CAPABILITIES = frozenset({"aliases", "extra_state_bytes", "step_skipped", "device"})

FAULTS = {
    "lazy": "timm: the slow buffer is created at the first sync, which is then a no-op",
    "early": "torch-optimizer: syncs at steps 1, k+1, 2k+1, ... instead of k, 2k, ...",
    "alias": "after a sync the fast weights are the slow buffers themselves (no copy)",
    "one_sided": "the sync computes φ + α(θ − φ) for every α, so α = 1 misses θ",
    "drop_count": "the checkpoint loses the position in the cycle",
    "skip_counts": "a skipped (GradScaler) step advances the schedule",
    "backup_copy": "keeps a second copy of the weights (a backup for evaluation)",
    "loose_validation": "torch-optimizer: accepts α > 1 and crashes with ZeroDivisionError at k = 0",
    "counts_rejected": "a rejected step has already advanced the cycle",
    "float64_slow": "keeps φ in float64 whatever the parameters' dtype",
}


class ToyRunner:
    """In-place Lookahead over NumPy arrays; ``faults`` switch on known bugs."""

    def __init__(self, params, inner: InnerSpec, k, alpha, faults: frozenset[str]):
        self.faults = faults
        if "loose_validation" in faults:
            self.k, self.alpha = k, alpha
            1 % k  # noqa: B018 - the step counter's modulo: ZeroDivisionError at k = 0
        else:
            self.k, self.alpha = lc.check_k(k), lc.check_alpha(alpha)
        self.inner = inner.build_core()
        self.params = [np.array(p, copy=True) for p in params]
        self.inner_state = self.inner.init(self.params)
        slow_dtype = (lambda p: np.float64) if "float64_slow" in faults else (lambda p: p.dtype)
        self.slow_ = None if "lazy" in faults else [p.astype(slow_dtype(p)) for p in self.params]
        self.backup = [p.copy() for p in self.params] if "backup_copy" in faults else []
        self.count = 0

    def step(self, grads):
        if "counts_rejected" in self.faults:
            self.count += 1
        delta, self.inner_state = self.inner.update(grads, self.inner_state, self.params)
        for p, d in zip(self.params, delta):
            p += d
        if "counts_rejected" not in self.faults:
            self.count += 1
        due = (self.count - 1) % self.k == 0 if "early" in self.faults else self.count % self.k == 0
        if due:
            self._sync()

    def _sync(self):
        if self.slow_ is None:
            self.slow_ = [p.copy() for p in self.params]
        for s, p in zip(self.slow_, self.params):
            if "one_sided" in self.faults:
                s += self.alpha * (p - s)
            else:
                s[...] = lc.lerp(s, p.astype(s.dtype), self.alpha)
        if "alias" in self.faults:
            self.params = self.slow_
        else:
            for s, p in zip(self.slow_, self.params):
                p[...] = s

    def fast(self):
        return [p.copy() for p in self.params]

    def slow(self):
        return [p.copy() for p in (self.params if self.slow_ is None else self.slow_)]

    def save(self):
        count = 0 if "drop_count" in self.faults else self.count
        slow = None if self.slow_ is None else [s.copy() for s in self.slow_]
        return self.fast(), slow, self.inner_state, count  # the core's inner state is immutable

    def restore(self, saved):
        fast, slow, self.inner_state, self.count = saved
        self.params = [f.copy() for f in fast]
        self.slow_ = None if slow is None else [s.copy() for s in slow]


class _Aliases:
    def aliases(self):
        slow = self.slow_ or []
        return any(np.shares_memory(p, s) for p in self.params for s in slow)


class _Memory:
    def extra_state_bytes(self):
        return sum(a.nbytes for a in (self.slow_ or []) + self.backup)


class _Skips:
    def step_skipped(self, grads):
        if "skip_counts" in self.faults:
            self.count += 1
            if self.count % self.k == 0:
                self._sync()


class _Device:
    def device(self):
        return "cpu"


_MIXINS = {"aliases": _Aliases, "extra_state_bytes": _Memory, "step_skipped": _Skips, "device": _Device}


class ToyBackend:
    """A backend of `ToyRunner`s with the given faults and optional capabilities."""

    dtypes = ("float32", "float64")

    def __init__(self, *faults: str, capabilities: frozenset[str] = ALL_CAPABILITIES):
        unknown = set(faults) - set(FAULTS)
        assert not unknown, unknown
        self.faults = frozenset(faults)
        self.name = "toy" + "".join(f"-{f}" for f in sorted(faults))
        mixins = tuple(_MIXINS[c] for c in sorted(capabilities))
        self._runner = type("ToyRunner", (*mixins, ToyRunner), {})

    def skip_reason(self):
        return None

    def namespace(self):
        import array_api_compat

        return array_api_compat.array_namespace(np.empty(0))

    def device(self):
        return "cpu"

    def from_numpy(self, array):
        return np.array(array, copy=True)

    def to_numpy(self, array):
        return np.array(array, copy=True)

    def create(self, params, inner, k, alpha):
        return self._runner(params, inner, k, alpha, self.faults)


# The toys have no outer optimizer (no create_outer): the outer check's faults are
# tests/test_conformance_outer.py's.
RUNNER_CHECKS = [name for name in CHECKS if name != "outer"]


def _failures(backend) -> dict[str, str]:
    results = {name: run_check(name, backend) for name in RUNNER_CHECKS}
    assert not [r for r in results.values() if r.status == NOT_APPLICABLE], "toys have every capability"
    return {name: r.detail for name, r in results.items() if r.status == FAIL}


def test_correct_toy_passes_every_check():
    """The toy without faults passes all checks, so each failure below is its fault's doing."""
    assert _failures(ToyBackend()) == {}


@pytest.mark.parametrize(
    ("fault", "primary", "message", "also"),
    [
        ("lazy", "schedule", "the slow weights follow the fast weights on step 1, which ends no cycle",
         {"eq01_closed_form", "reference", "edge_cases", "memory"}),
        ("early", "schedule", "step 1 ends no cycle but the weights were synced",
         {"eq01_closed_form", "reference", "edge_cases"}),
        ("alias", "schedule", "after step 3: aliases() reports fast and slow weights sharing memory",
         {"eq01_closed_form", "reference", "edge_cases", "round_trip"}),
        ("one_sided", "edge_cases", "alpha=1 k=2 {'lr': 1.0}, step 2: fast vs the inner optimizer alone",
         set()),
        ("drop_count", "round_trip", "saved after 3 steps: fast after step 4", set()),
        ("skip_counts", "skipped_steps", "skipped step at position 3 (after 1 executed)", set()),
        ("backup_copy", "memory", "2 copies of the 100 parameter bytes", set()),
        ("loose_validation", "bad_input", "k=0, alpha=0.5 raised ZeroDivisionError", set()),
        ("counts_rejected", "bad_input", "vs a run without them (cycle or inner state changed)", set()),
        ("float64_slow", "dtype_shape_device", "slow after 0 steps: array 0 has dtype float64, expected float32",
         {"eq01_closed_form", "schedule", "reference", "edge_cases", "memory"}),
    ],
)
def test_the_right_check_fails(fault, primary, message, also):
    """Each fault fails the check that certifies the rule it breaks, with a message that
    says what went wrong, and no check unrelated to it (the other checks it fails see
    the same wrong numbers: a wrong slow weight also breaks eq. 0.1)."""
    failures = _failures(ToyBackend(fault))
    assert set(failures) == {primary} | also, failures
    assert message in failures[primary], failures[primary]


def test_aliasing_is_caught_without_the_capability():
    """Black box: with no aliases() the schedule check still sees φ move with θ."""
    backend = ToyBackend("alias", capabilities=ALL_CAPABILITIES - {"aliases"})
    runner = backend.create([np.zeros(3)], InnerSpec("sgd", {"lr": 1.0}), 2, 0.5)
    assert not isinstance(runner, ReportsAliasing)
    result = run_check("schedule", backend)
    assert result.status == FAIL
    assert "the slow weights follow the fast weights on step 4" in result.detail, result.detail
    assert "fast and slow share memory" in result.detail


def test_missing_capabilities_are_not_applicable():
    """Without the optional capabilities: n/a (not pass, not fail) for the checks that need them."""
    backend = ToyBackend("skip_counts", "backup_copy", capabilities=frozenset())
    assert not isinstance(backend.create([np.zeros(2)], InnerSpec("sgd", {"lr": 1.0}), 2, 0.5), SkipsSteps)
    results = {name: run_check(name, backend) for name in CHECKS}
    assert {n for n, r in results.items() if r.status == NOT_APPLICABLE} == {
        "memory", "skipped_steps", "outer"}
    assert results["outer"].detail == "not applicable: the backend has no create_outer()"
    assert results["memory"].detail == "not applicable: the runner has no extra_state_bytes()"
    assert results["skipped_steps"].detail == "not applicable: the runner has no step_skipped()"
    assert all(r.passed for n, r in results.items() if n not in {"memory", "skipped_steps", "outer"})
    note = results["dtype_shape_device"].detail
    assert note.startswith("ok (the runner has no device()"), note


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_edge_case_values_separate_the_lerps(dtype):
    """The α = 1 and α = 0 values make each one-sided lerp inexact, the two-sided one exact.

    Recomputes by hand what inner SGD (lr = 1) does to the crafted values,
    in the dtype, so that the edge-case check is known to catch a one-sided lerp.
    """
    (phi0,), ((g1,), (g2,)) = alpha_one_case(dtype)
    theta = (phi0 - g1).astype(dtype)
    assert np.all(theta == 0.5)  # the first step is exact by construction
    theta = (theta - g2).astype(dtype)
    one_sided = (phi0 + 1.0 * (theta - phi0)).astype(dtype)
    assert np.count_nonzero(one_sided != theta) >= 4
    assert np.array_equal(lc.lerp(phi0, theta, 1.0), theta)

    (phi0,), ((g1,), (g2,)) = alpha_zero_case(dtype)
    theta = ((phi0 - g1).astype(dtype) - g2).astype(dtype)
    other_sided = (theta - 1.0 * (theta - phi0)).astype(dtype)
    assert np.count_nonzero(other_sided != phi0) >= 4
    assert np.array_equal(lc.lerp(phi0, theta, 0.0), phi0)


# Importable as ``test_conformance_toys:LAZY`` etc. by the runners' own tests (with tests/ on the path).
CORRECT = ToyBackend()
LAZY = ToyBackend("lazy")
