"""A stranger's backend, certified end to end through the entry-point registry.

The package is built from the two code blocks of the "Certify your backend"
page (docs/conformance.md), so the documented example is the tested one. It
is installed with pip, offline (``--no-index --no-build-isolation``, using the
setuptools of this environment), into a temporary ``--target`` folder that
the runners' subprocesses get on ``PYTHONPATH``: ``importlib.metadata`` then
discovers its entry points exactly as for a package installed in the
environment, while the shared virtual environment is never modified (nothing
to leak if the test is killed, and parallel test runs never see it). The
folder is deleted at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lookahead_conformance import CHECKS, registered_backends

DOCS_PAGE = Path(__file__).parents[1] / "docs" / "conformance.md"


def _code_block(title: str) -> str:
    """The fenced code block of the docs page whose title is ``title``."""
    text = DOCS_PAGE.read_text(encoding="utf-8")
    blocks = re.findall(r'^```\w+ title="' + re.escape(title) + r'"\n(.*?)^```$', text, re.M | re.S)
    assert len(blocks) == 1, f"expected one block titled {title!r} in {DOCS_PAGE}"
    return blocks[0]


def _outcomes(stdout: str) -> dict[str, int]:
    summary = stdout.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) ([a-z]+)", summary)}


@pytest.fixture
def installed_outsider(tmp_path):
    """Build and install the docs' package; yield the environment that sees it."""
    pytest.importorskip("setuptools", reason="building the package offline needs setuptools here")
    package = tmp_path / "my-lookahead"
    package.mkdir()
    (package / "my_lookahead.py").write_text(_code_block("my_lookahead.py"), encoding="utf-8")
    pyproject = _code_block("pyproject.toml")
    assert pyproject.rstrip().splitlines()[-2] == '[project.entry-points."lookahead.backends"]'
    # Two more entry points in the same table: one that cannot load, one name taken twice.
    pyproject += 'my-broken = "my_lookahead:no_such_backend"\nnumpy = "my_lookahead:backend"\n'
    (package / "pyproject.toml").write_text(pyproject, encoding="utf-8")

    site = tmp_path / "site"
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
             "--no-build-isolation", "--no-cache-dir", "--disable-pip-version-check",
             "--target", str(site), str(package)],
            check=True, capture_output=True, text=True, timeout=120,
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
        yield env, tmp_path
    finally:
        shutil.rmtree(site, ignore_errors=True)  # the uninstall


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


def test_outsider_backend_is_certified_by_both_runners(installed_outsider):
    env, cwd = installed_outsider
    assert "my-numpy" not in registered_backends()  # the test's own environment is untouched

    # CLI, all checks, with the JSON report.
    report = cwd / "report.json"
    cli = _run(["-m", "lookahead_conformance", "--backend", "my-numpy", "--json", str(report)], env, cwd)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    results = json.loads(report.read_text())["backends"]["my-numpy"]["results"]
    assert {name: r["status"] for name, r in results.items()} == {
        **{name: "pass" for name in CHECKS}, "skipped_steps": "n/a", "outer": "n/a"}

    # pytest plugin: the example and the broken entry point.
    tests = _run(["-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfs", "--pyargs",
                  "lookahead_conformance", "--lookahead-backend=my-numpy",
                  "--lookahead-backend=my-broken"], env, cwd)
    assert tests.returncode == 1, tests.stdout + tests.stderr
    n = len(CHECKS)  # the example has neither step_skipped() nor create_outer()
    assert _outcomes(tests.stdout) == {"passed": n - 2, "skipped": 2, "failed": n}
    assert "my-numpy::skipped_steps: not applicable: the runner has no step_skipped()" in tests.stdout
    failed = set(re.findall(r"^FAILED \S*::test_(\w+)\[my-broken\]", tests.stdout, re.M))
    assert failed == set(CHECKS), tests.stdout
    for name in CHECKS:
        assert f"my-broken::{name}: backend failed to load: entry point my-broken = " in tests.stdout


def test_outsider_appears_in_all_and_broken_plugins_fail(installed_outsider):
    env, cwd = installed_outsider
    cli = _run(["-m", "lookahead_conformance", "--check", "schedule"], env, cwd)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "| my-numpy | pass (exact) |" in cli.stdout
    assert "| my-broken | FAIL |" in cli.stdout
    assert "FAILED   my-broken: could not be loaded: entry point my-broken = " \
        "'my_lookahead:no_such_backend' failed to load: AttributeError" in cli.stdout
    # `numpy` is now registered by two distributions: neither silently wins.
    assert "| numpy | FAIL |" in cli.stdout
    assert "backend name 'numpy' is registered twice: " in cli.stdout
    assert "| core-numpy | pass (exact) |" in cli.stdout  # the others are unaffected


def test_docs_reports_show_the_current_checks():
    """The reports pasted on the page have the header the CLI prints today (no stale columns)."""
    text = DOCS_PAGE.read_text(encoding="utf-8")
    section = text[text.index("## The report on this machine"):]
    headers = re.findall(r"^\| backend \|.*\|$", section, re.M)
    assert len(headers) == 2
    assert headers[0] == "| backend | " + " | ".join(CHECKS) + " |"  # this machine: today's kit
    # An earlier run (the GPU one, labelled with its kit) may lack later checks, never show a
    # check that no longer exists or another order.
    columns = headers[1].strip("|").split("|")[1:]
    assert [c.strip() for c in columns] == list(CHECKS)[:len(columns)]
