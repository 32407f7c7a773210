"""The conformance kit: every built-in backend passes, the registry and both runners behave.

The suite runs here over every backend this project registers (the entry
points of the ``lookahead-optimizer`` distribution), so a backend that an
adapter registers later is certified by ``make test`` without an edit here.
Broken toy backends are in ``test_conformance_toys.py``; the third-party
package in ``test_conformance_outsider.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lookahead_conformance import (
    CHECKS,
    BrokenBackend,
    builtin_backend_names,
    certify,
    load_backend,
    protocol_violations,
    registered_backends,
    run_check,
)
from lookahead_conformance.checks import FAIL, NOT_APPLICABLE, PASS
from lookahead_conformance.protocol import InnerSpec, ReportsMemory, SkipsSteps, SupportsOuter

TESTS = Path(__file__).parent
CORE_AND_NUMPY = {"numpy", "core-numpy", "core-array-api-strict", "core-torch", "core-jax"}
CAPABILITY_OF = {"memory": ReportsMemory, "skipped_steps": SkipsSteps}


def _outcomes(stdout: str) -> dict[str, int]:
    """pytest's final counts, e.g. ``{"passed": 8, "skipped": 1}`` (deselected left out)."""
    summary = stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) ([a-z]+)", summary)}
    counts.pop("deselected", None)
    return counts


def _run(args: list[str], cwd: Path | None = None, extra_path: Path | None = None):
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


# --- every built-in backend passes ----------------------------------------------------------


def test_builtin_backends_are_registered():
    assert CORE_AND_NUMPY <= set(builtin_backend_names())
    assert set(builtin_backend_names()) <= set(registered_backends())


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("name", builtin_backend_names())
def test_builtin_backend_passes(name, check):
    """Each built-in backend passes each check; n/a only where the capability is really missing."""
    backend = load_backend(name)
    assert not isinstance(backend, BrokenBackend), backend.error
    reason = backend.skip_reason()
    if reason:
        pytest.skip(f"{name}: {reason}")
    result = run_check(check, backend)
    if result.status == NOT_APPLICABLE:
        if check == "outer":  # a capability of the backend, not of its runners
            assert not isinstance(backend, SupportsOuter), result.detail
            pytest.skip(f"{name}::{check}: {result.detail}")
        runner = backend.create([np.zeros(2)], InnerSpec("sgd", {"lr": 0.1}), 2, 0.5)
        assert not isinstance(runner, CAPABILITY_OF[check]), result.detail
        pytest.skip(f"{name}::{check}: {result.detail}")
    assert result.status == PASS, result.detail


def test_builtin_capabilities():
    """The core and the NumPy adapter report memory but have no skipped steps (nothing to skip)."""
    for name in sorted(CORE_AND_NUMPY):
        backend = load_backend(name)
        if backend.skip_reason():
            continue
        runner = backend.create([np.zeros(2)], InnerSpec("sgd", {"lr": 0.1}), 2, 0.5)
        assert isinstance(runner, ReportsMemory) and not isinstance(runner, SkipsSteps), name


def test_every_builtin_backend_offers_the_outer_capability():
    """Ours all run the outer check (a GPU backend skips for want of a device, never n/a)."""
    for name in builtin_backend_names():
        backend = load_backend(name)
        assert not isinstance(backend, BrokenBackend), backend.error
        assert isinstance(backend, SupportsOuter), name


def test_certify_and_tolerance_checks_report_their_worst_error():
    report = certify("core-numpy", ["eq01_closed_form", "reference", "schedule"])
    assert report.status == "ran" and not report.failed
    for name in ("eq01_closed_form", "reference"):
        worst = report.results[name].worst_eps
        assert worst is not None and 0.0 < worst < 8.0, (name, worst)  # tolerances start at 8 eps
    assert report.results["schedule"].worst_eps is None  # exact: no error to report


# --- the registry ---------------------------------------------------------------------------


def test_unknown_backend_name_is_a_value_error_listing_the_registered_ones():
    with pytest.raises(ValueError, match=r"registered name \(.*core-numpy.*got 'no-such-backend'"):
        load_backend("no-such-backend")


def test_unimportable_module_attr_is_a_broken_backend_that_fails_every_check():
    backend = load_backend("no_such_module_xyz:backend")
    assert isinstance(backend, BrokenBackend)
    assert "ModuleNotFoundError" in backend.error
    assert backend.skip_reason() is None  # broken is not "unavailable here"
    results = [run_check(name, backend) for name in CHECKS]
    assert all(r.status == FAIL and "failed to load" in r.detail for r in results)
    report = certify(backend)
    assert report.status == "broken" and report.failed


class _HalfBackend:
    name = "half"
    dtypes = ("float64", "int32")

    def skip_reason(self):
        return None

    def create(self, params, inner, k, alpha):
        raise NotImplementedError


HALF = _HalfBackend()


def test_protocol_violations_are_named():
    missing = protocol_violations(HALF)
    assert missing[:4] == ["namespace", "device", "from_numpy", "to_numpy"]
    assert "dtypes" in missing[4] and "int32" in missing[4]
    backend = load_backend(f"{__name__}:HALF")
    assert isinstance(backend, BrokenBackend)
    assert "does not implement the Backend protocol: missing namespace, device" in backend.error
    assert protocol_violations(load_backend("core-numpy")) == []


def test_a_crash_inside_a_backend_is_a_failure_naming_its_frame():
    class Crashing(_HalfBackend):
        def namespace(self): ...
        def device(self): return "cpu"
        def from_numpy(self, a): return a
        def to_numpy(self, a): return a

    result = run_check("schedule", Crashing())
    assert result.status == FAIL
    assert result.detail.startswith("NotImplementedError")
    assert "test_conformance.py" in result.detail and "in create" in result.detail


# --- the CLI --------------------------------------------------------------------------------


def test_cli_reports_a_passing_backend_with_json(tmp_path):
    out = tmp_path / "report.json"
    proc = _run(["-m", "lookahead_conformance", "--backend", "core-numpy", "--json", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2] == "| backend | " + " | ".join(CHECKS) + " |"  # under the header line
    row = next(line for line in lines if line.startswith("| core-numpy |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells[list(CHECKS).index("schedule")] == "pass (exact)"
    assert cells[list(CHECKS).index("bad_input")] == "pass"
    assert cells[list(CHECKS).index("skipped_steps")] == "n/a"
    assert cells[list(CHECKS).index("eq01_closed_form")].endswith(" eps)")
    n = len(CHECKS)  # core-numpy runs every check but skipped_steps (nothing to skip)
    assert f"1 backends x {n} checks: {n - 1} passed, 0 failed, 1 not applicable" in proc.stdout
    data = json.loads(out.read_text())
    results = data["backends"]["core-numpy"]["results"]
    assert data["backends"]["core-numpy"]["status"] == "ran"
    assert {r["status"] for r in results.values()} == {"pass", "n/a"}
    assert results["skipped_steps"]["detail"] == "not applicable: the runner has no step_skipped()"
    assert isinstance(results["reference"]["worst_eps"], float)
    assert set(data["checks"]) == set(CHECKS)


def test_cli_fails_on_a_broken_backend_and_names_the_rule():
    proc = _run(["-m", "lookahead_conformance", "--backend", "test_conformance_toys:LAZY",
                 "--backend", "test_conformance_toys:CORRECT", "--check", "schedule",
                 "--check", "round_trip"], cwd=TESTS)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # Keyed by Backend.name (toy-lazy, toy), not by the module:attr given.
    assert "| toy-lazy | FAIL (8/8 cases) | pass (exact) |" in proc.stdout
    assert "| toy | pass (exact) | pass (exact) |" in proc.stdout
    assert "FAILED   toy-lazy::schedule: float32 k=3" in proc.stdout
    assert "2 backends x 2 checks: 3 passed, 1 failed" in proc.stdout


def test_cli_unloadable_backend_fails_and_unknown_name_is_a_usage_error():
    broken = _run(["-m", "lookahead_conformance", "--backend", "no_such_module_xyz:backend",
                   "--check", "schedule"])
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "| no_such_module_xyz:backend | FAIL |" in broken.stdout
    assert "FAILED   no_such_module_xyz:backend: could not be loaded" in broken.stdout

    unknown = _run(["-m", "lookahead_conformance", "--backend", "no-such-backend"])
    assert unknown.returncode == 2
    assert "got 'no-such-backend'" in unknown.stderr

    listed = _run(["-m", "lookahead_conformance", "--list"])
    assert listed.returncode == 0
    for name in CORE_AND_NUMPY:
        assert f"backend  {name}: " in listed.stdout
    for name in CHECKS:
        assert f"check    {name}: " in listed.stdout


# --- the pytest plugin ----------------------------------------------------------------------


def test_plugin_certifies_a_registered_backend():
    proc = _run(["-m", "pytest", "-p", "no:cacheprovider", "-q", "--pyargs", "lookahead_conformance",
                 "--lookahead-backend=core-numpy", "-rs"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _outcomes(proc.stdout) == {"passed": len(CHECKS) - 1, "skipped": 1}
    assert "core-numpy::skipped_steps: not applicable: the runner has no step_skipped()" in proc.stdout


def test_plugin_fails_a_broken_backend_unless_listed_as_a_known_deviation(tmp_path):
    base = ["-m", "pytest", "-p", "no:cacheprovider", "-q", "--pyargs", "lookahead_conformance",
            "--lookahead-backend=test_conformance_toys:LAZY", "-k", "schedule or round_trip"]
    failing = _run(base, cwd=tmp_path, extra_path=TESTS)
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "FAILED" in failing.stdout and "test_schedule[toy-lazy]" in failing.stdout
    assert _outcomes(failing.stdout) == {"failed": 1, "passed": 1}

    xfail = tmp_path / "known.txt"
    xfail.write_text("# timm-style lazy slow buffer\ntoy-lazy::schedule\n")
    known = _run([*base, f"--lookahead-xfail={xfail}"], cwd=tmp_path, extra_path=TESTS)
    assert known.returncode == 0, known.stdout + known.stderr
    assert _outcomes(known.stdout) == {"passed": 1, "xfailed": 1}

    # Strict: a listed deviation that passes fails the run, so the list stays current.
    xfail.write_text("toy-lazy::schedule\ntoy-lazy::round_trip\n")
    stale = _run([*base, f"--lookahead-xfail={xfail}"], cwd=tmp_path, extra_path=TESTS)
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert _outcomes(stale.stdout) == {"failed": 1, "xfailed": 1}
    assert "XPASS(strict)" in stale.stdout

    xfail.write_text("toy-lazy::no_such_check\n")
    bad = _run([*base, f"--lookahead-xfail={xfail}"], cwd=tmp_path, extra_path=TESTS)
    assert bad.returncode == 4, bad.stdout + bad.stderr  # pytest's usage error
    assert "is not 'backend::check'" in bad.stderr
