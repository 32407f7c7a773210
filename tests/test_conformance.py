"""The conformance kit certifies the built-in backends and rejects broken ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lookahead_core as lc
from lookahead_conformance import CHECKS, load_backend, registered_backends, run_check
from lookahead_conformance.backends import InnerSpec

BUILT_IN = ["numpy", "core-numpy", "core-array-api-strict", "core-torch", "core-jax"]


def test_builtin_backends_are_registered():
    assert set(BUILT_IN) <= set(registered_backends())


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("name", BUILT_IN)
def test_builtin_backend_passes(name, check):
    backend = load_backend(name)
    reason = backend.skip_reason()
    if reason:
        pytest.skip(reason)
    result = run_check(check, backend)
    assert result.passed, result.detail


class _ToyRunner:
    """A deliberately configurable NumPy Lookahead over plain SGD, to break rules on purpose."""

    def __init__(self, params, inner, k, alpha, *, lazy=False, early=False, forget_count=False):
        self.k, self.alpha, self.lr = k, alpha, inner.hyperparams["lr"]
        self.fast_ = [np.array(p, copy=True) for p in params]
        self.slow_ = None if lazy else [p.copy() for p in self.fast_]
        self.count = 0
        self.early, self.forget_count = early, forget_count

    def step(self, grads):
        for p, g in zip(self.fast_, grads):
            p -= self.lr * g
        self.count += 1
        due = (self.count - 1) % self.k == 0 if self.early else self.count % self.k == 0
        if due:
            if self.slow_ is None:  # timm: the first sync only creates the buffer
                self.slow_ = [p.copy() for p in self.fast_]
            for s, p in zip(self.slow_, self.fast_):
                s += self.alpha * (p - s)
                p[...] = s

    def fast(self):
        return [p.copy() for p in self.fast_]

    def slow(self):
        return [(s if s is not None else p).copy() for s, p in zip(self.slow_ or self.fast_, self.fast_)]

    def save(self):
        return self.fast(), self.slow(), (0 if self.forget_count else self.count)

    def restore(self, saved):
        fast, slow, self.count = saved
        self.fast_ = [f.copy() for f in fast]
        self.slow_ = [s.copy() for s in slow]


class _ToyBackend:
    dtypes = ("float64",)

    def __init__(self, name, **faults):
        self.name, self.faults = name, faults

    def skip_reason(self):
        return None

    def create(self, params, inner, k, alpha):
        if inner.name != "sgd" or inner.hyperparams.get("momentum", 0.0):
            # The toy only knows plain SGD; other specs fall back to the reference.
            return load_backend("core-numpy").create(params, inner, k, alpha)
        return _ToyRunner(params, inner, lc.check_k(k), lc.check_alpha(alpha), **self.faults)


@pytest.mark.parametrize(
    ("faults", "broken"),
    [
        ({"lazy": True}, {"schedule", "eq01_closed_form"}),
        ({"early": True}, {"schedule", "eq01_closed_form"}),
        ({"forget_count": True}, {"round_trip"}),
    ],
    ids=["timm-lazy-init", "sync-at-step-1", "checkpoint-drops-count"],
)
def test_checks_catch_broken_backends(faults, broken):
    backend = _ToyBackend("toy", **faults)
    failed = {name for name in CHECKS if not run_check(name, backend).passed}
    assert broken <= failed


def test_correct_toy_passes_the_checks_it_can():
    """The toy without faults passes, so the failures above come from the faults."""
    backend = _ToyBackend("toy")
    for name in ("schedule", "eq01_closed_form", "edge_cases", "round_trip", "bad_input"):
        result = run_check(name, backend)
        assert result.passed, (name, result.detail)


def test_inner_spec_builds_core_optimizers():
    assert InnerSpec("adam", {"lr": 0.1}).build_core().name == "adam"


def test_cli_prints_table_and_fails_on_failure(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lookahead_conformance", "--backend", "core-numpy", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| core-numpy |" in proc.stdout
    assert out.exists()

    bad = subprocess.run(
        [sys.executable, "-m", "lookahead_conformance", "--backend", f"{__name__}:LAZY"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent,  # makes this module importable
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"FAILED {__name__}:LAZY::schedule" in bad.stdout


LAZY = _ToyBackend("toy-lazy", lazy=True)
