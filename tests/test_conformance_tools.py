"""The conformance kit without its tools: both runners stop before any check, saying what to install.

hypothesis is hidden from a subprocess by a package of that name first on
``PYTHONPATH`` whose import fails as a missing module does; hypothesis's own
pytest plugin is switched off there (``-p no:hypothesispytest``), as it would
be absent. The same paths on a real install without the extra are in
``test_packaging.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lookahead_conformance import EXIT_MISSING_TOOLS, MissingToolError

HINT = "pip install 'lookahead-optimizer[conformance]'"
PYTEST = ["-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-q"]


@pytest.fixture
def no_hypothesis(tmp_path):
    """``(env, cwd)`` for a subprocess in which ``import hypothesis`` fails as when not installed."""
    shim = tmp_path / "shim" / "hypothesis"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'hypothesis'\", name='hypothesis')\n",
        encoding="utf-8",
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim.parent), env.get("PYTHONPATH")]))
    cwd = tmp_path / "work"  # outside the repository: no conftest.py, no pytest settings of ours
    cwd.mkdir()
    return env, cwd


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


def _one_line_naming_the_extra(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "hypothesis" in lines[0] and lines[0].endswith(HINT), lines[0]
    return lines[0]


def test_exit_status_is_none_of_the_runners_own():
    assert EXIT_MISSING_TOOLS not in {0, 1, 2}  # the command line's
    assert EXIT_MISSING_TOOLS not in {int(code) for code in pytest.ExitCode}


def test_cli_stops_before_any_check_with_one_line_and_its_own_status(no_hypothesis):
    env, cwd = no_hypothesis
    json_file = cwd / "report.json"
    proc = _run(["-m", "lookahead_conformance", "--backend", "numpy", "--json", str(json_file)],
                env, cwd)
    assert proc.returncode == EXIT_MISSING_TOOLS, proc.stdout + proc.stderr
    assert proc.stdout == ""  # no report: no check ran, none FAILED
    _one_line_naming_the_extra(proc.stderr)
    assert not json_file.exists()


def test_cli_lists_and_documents_the_statuses_without_the_tools(no_hypothesis):
    env, cwd = no_hypothesis
    listed = _run(["-m", "lookahead_conformance", "--list"], env, cwd)
    assert listed.returncode == 0, listed.stderr
    assert "backend  numpy:" in listed.stdout and "check    eq01_closed_form:" in listed.stdout
    helped = _run(["-m", "lookahead_conformance", "--help"], env, cwd)
    assert helped.returncode == 0, helped.stderr
    statuses = helped.stdout.split("exit status:", 1)[1]
    for status in ("0", "1", "2", str(EXIT_MISSING_TOOLS)):
        assert f"\n  {status} " in statuses, helped.stdout
    assert HINT in statuses


def test_plugin_stops_a_conformance_session_before_the_first_test(no_hypothesis):
    env, cwd = no_hypothesis
    proc = _run([*PYTEST, "--pyargs", "lookahead_conformance", "--lookahead-backend=numpy"],
                env, cwd)
    assert proc.returncode == EXIT_MISSING_TOOLS, proc.stdout + proc.stderr
    assert "no tests ran" in proc.stdout
    assert not any(word in proc.stdout for word in ("passed", "failed", "FAILED", "error"))
    exits = [line for line in proc.stdout.splitlines() if "Exit:" in line]
    assert len(exits) == 1 and "hypothesis" in exits[0] and HINT in exits[0], proc.stdout


def test_plugin_leaves_other_sessions_alone(no_hypothesis):
    """Loaded in every session (entry point pytest11), it must neither fail nor import the tools."""
    env, cwd = no_hypothesis
    (cwd / "test_unrelated.py").write_text(
        "import sys\n\n\n"
        "def test_plugin_loaded_without_tools(pytestconfig):\n"
        "    assert pytestconfig.pluginmanager.hasplugin('lookahead_conformance')\n"
        "    assert 'hypothesis' not in sys.modules\n",
        encoding="utf-8",
    )
    proc = _run([*PYTEST, "test_unrelated.py"], env, cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    # Selecting the unrelated test of a session that also holds conformance checks runs it.
    proc = _run([*PYTEST, "--pyargs", "lookahead_conformance", "test_unrelated.py",
                 "-k", "unrelated"], env, cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_api_raises_instead_of_reporting_a_failure(no_hypothesis):
    env, cwd = no_hypothesis
    script = (
        "from lookahead_conformance import MissingToolError, certify, load_backend, run_check\n"
        "for call in (lambda: certify('numpy', ['schedule']),\n"
        "             lambda: run_check('eq01_closed_form', load_backend('numpy'))):\n"
        "    try:\n"
        "        call()\n"
        "    except MissingToolError as exc:\n"
        "        print(exc)\n"
        "    else:\n"
        "        print('no error')\n"
    )
    proc = _run(["-c", script], env, cwd)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(HINT in line for line in lines), proc.stdout


def test_missing_tool_error_is_an_import_error():
    assert issubclass(MissingToolError, ImportError)
