"""One key per backend: ``Backend.name``, in every runner, and lists that cannot rot.

A backend named as ``module:attr`` is still reported, keyed in the JSON,
identified in pytest's test ids and listed in the xfail and skip files under
its own ``name`` (the name pytest's failure text prints), so a line copied
from a failure message matches. A list line that matches no backend and
check of the run fails it, naming the line. ``module:attr`` resolves from the
current directory, as ``python -m`` does, also under the ``pytest`` script,
and from the folders of ``--path``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from test_conformance_toys import ToyBackend

from lookahead_conformance import BrokenBackend, certify, load_backend, protocol_violations
from lookahead_conformance import registry

TESTS = Path(__file__).parent
PYTEST = ["-m", "pytest", "-p", "no:cacheprovider", "-q", "-rsx", "--pyargs", "lookahead_conformance"]

SAME_NAME = ToyBackend()  # named "toy", like test_conformance_toys:CORRECT, but another object


def _run(args: list[str], cwd: Path, safe_path: bool = False) -> subprocess.CompletedProcess[str]:
    """``python [-P] args`` in ``cwd`` with tests/ on PYTHONPATH (for the toys' module).

    ``-P`` keeps Python from putting the current directory on ``sys.path``, as
    the ``pytest`` script does not, so the kit has to.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    python = [sys.executable, "-P"] if safe_path else [sys.executable]
    return subprocess.run([*python, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env)


def _outcomes(stdout: str) -> dict[str, int]:
    summary = stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) ([a-z]+)", summary)}
    counts.pop("deselected", None)
    return counts


# --- the report, the JSON and the API ---------------------------------------------------------


def test_cli_keys_a_module_attr_backend_by_its_name(tmp_path):
    out = tmp_path / "report.json"
    proc = _run(["-m", "lookahead_conformance", "--backend", "test_conformance_toys:LAZY",
                 "--backend", "test_conformance_toys:CORRECT", "--check", "schedule",
                 "--json", str(out)], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"^\| toy-lazy \| FAIL", proc.stdout, re.M), proc.stdout
    assert "| toy | pass (exact) |" in proc.stdout
    assert "FAILED   toy-lazy::schedule: float32 k=3" in proc.stdout
    assert "test_conformance_toys:" not in proc.stdout
    assert set(json.loads(out.read_text())["backends"]) == {"toy-lazy", "toy"}


def test_certify_by_module_attr_reports_the_name():
    assert certify("test_conformance_toys:LAZY", ["round_trip"]).name == "toy-lazy"


def test_an_unloadable_module_attr_keeps_the_spec_as_its_name():
    """Nothing else names it: the spec is the key (and the row) of a backend that never loaded."""
    assert certify("no_such_module_xyz:backend", ["schedule"]).name == "no_such_module_xyz:backend"


def test_two_backends_of_one_name_are_a_usage_error(tmp_path):
    proc = _run(["-m", "lookahead_conformance", "--backend", "test_conformance_toys:CORRECT",
                 "--backend", "test_conformance_keys:SAME_NAME", "--check", "schedule"], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "'toy'" in proc.stderr and "test_conformance_keys:SAME_NAME" in proc.stderr
    # The same object twice (an entry point and its module:attr) is one backend.
    same = _run(["-m", "lookahead_conformance", "--backend", "core-numpy", "--backend",
                 "lookahead_conformance.backends:core_numpy", "--check", "schedule"], tmp_path)
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.count("| core-numpy |") == 1


def test_an_entry_point_must_be_named_as_its_backend(monkeypatch):
    point = EntryPoint("my-toy", "test_conformance_toys:CORRECT", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: {"my-toy": [point]})
    backend = load_backend("my-toy")
    assert isinstance(backend, BrokenBackend)
    assert backend.name == "my-toy"
    assert "'toy'" in backend.error and "my-toy" in backend.error, backend.error


@pytest.mark.parametrize("name", [None, "", " toy", "toy\nx", "toy # x", 3])
def test_a_name_that_cannot_be_a_key_is_a_protocol_violation(name):
    backend = ToyBackend()
    backend.name = name
    problems = protocol_violations(backend)
    assert len(problems) == 1 and problems[0].startswith("name ("), problems


# --- the pytest plugin ------------------------------------------------------------------------


def test_plugin_ids_and_lists_use_the_name(tmp_path):
    base = [*PYTEST, "--lookahead-backend=test_conformance_toys:LAZY", "-k", "schedule or round_trip"]
    failing = _run(base, tmp_path)
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "test_schedule[toy-lazy]" in failing.stdout, failing.stdout
    assert "toy-lazy::schedule: " in failing.stdout

    known = tmp_path / "known.txt"
    known.write_text("toy-lazy::schedule  # lazy slow weights\n")
    xfailed = _run([*base, f"--lookahead-xfail={known}"], tmp_path)
    assert xfailed.returncode == 0, xfailed.stdout + xfailed.stderr
    assert _outcomes(xfailed.stdout) == {"passed": 1, "xfailed": 1}

    skipped = _run([*base, f"--lookahead-skip={known}"], tmp_path)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert _outcomes(skipped.stdout) == {"passed": 1, "skipped": 1}
    assert "lazy slow weights" in skipped.stdout  # the comment is the skip's reason


@pytest.mark.parametrize("option", ["xfail", "skip"])
def test_plugin_list_line_matching_nothing_fails_the_run(tmp_path, option):
    listed = tmp_path / "list.txt"
    listed.write_text("toy-lazy::schedule\n# copied from an old report:\n"
                      "test_conformance_toys:LAZY::schedule\n")
    proc = _run([*PYTEST, "--lookahead-backend=test_conformance_toys:LAZY",
                 f"--lookahead-{option}={listed}"], tmp_path)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    assert f"{listed}:3" in proc.stderr and "'test_conformance_toys:LAZY::schedule'" in proc.stderr
    assert "matches no backend and check" in proc.stderr and "toy-lazy" in proc.stderr


# --- the command line's lists -----------------------------------------------------------------


def test_cli_lists_known_deviations_and_skips(tmp_path):
    base = ["-m", "lookahead_conformance", "--backend", "test_conformance_toys:LAZY",
            "--check", "schedule", "--check", "round_trip"]
    listed = tmp_path / "list.txt"
    listed.write_text("toy-lazy::schedule  # timm-style lazy slow buffer\n")

    xfail = _run([*base, "--xfail", str(listed)], tmp_path)
    assert xfail.returncode == 0, xfail.stdout + xfail.stderr
    assert re.search(r"^\| toy-lazy \| xfail[^|]*\| pass \(exact\) \|$", xfail.stdout, re.M), xfail.stdout

    skip = _run([*base, "--skip", str(listed)], tmp_path)
    assert skip.returncode == 0, skip.stdout + skip.stderr
    assert "| toy-lazy | skipped | pass (exact) |" in skip.stdout
    assert "timm-style lazy slow buffer" in skip.stdout

    listed.write_text("toy-lazy::round_trip\n")  # passes: strict, the line must go
    xpass = _run([*base, "--xfail", str(listed)], tmp_path)
    assert xpass.returncode == 1, xpass.stdout + xpass.stderr
    assert "| XPASS |" in xpass.stdout and f"{listed}:1" in xpass.stdout

    listed.write_text("toy-lazy::schedule\nnumpy::schedule\n")  # numpy is not in this run
    stale = _run([*base, "--skip", str(listed)], tmp_path)
    assert stale.returncode == 2, stale.stdout + stale.stderr
    assert f"{listed}:2" in stale.stderr and "'numpy::schedule'" in stale.stderr


# --- module:attr from the current directory and from --path ------------------------------------

MODULE = ("from test_conformance_toys import ToyBackend\n\n"
          "backend = ToyBackend()\nbackend.name = 'from-{where}'\n")


def test_module_attr_resolves_from_the_current_directory(tmp_path):
    (tmp_path / "cwd_backend.py").write_text(MODULE.format(where="cwd"))
    cli = _run(["-m", "lookahead_conformance", "--backend", "cwd_backend:backend",
                "--check", "schedule"], tmp_path, safe_path=True)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "| from-cwd | pass (exact) |" in cli.stdout
    tests = _run([*PYTEST, "--lookahead-backend=cwd_backend:backend", "-k", "schedule"], tmp_path,
                 safe_path=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert _outcomes(tests.stdout) == {"passed": 1}


def test_path_option_adds_a_folder(tmp_path):
    elsewhere, work = tmp_path / "elsewhere", tmp_path / "work"
    elsewhere.mkdir()
    work.mkdir()
    (elsewhere / "far_backend.py").write_text(MODULE.format(where="path"))
    cli = _run(["-m", "lookahead_conformance", "--path", "../elsewhere", "--backend",
                "far_backend:backend", "--check", "schedule"], work, safe_path=True)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "| from-path | pass (exact) |" in cli.stdout
    tests = _run([*PYTEST, "--lookahead-path=../elsewhere", "--lookahead-backend=far_backend:backend",
                  "-k", "schedule"], work, safe_path=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert _outcomes(tests.stdout) == {"passed": 1}
