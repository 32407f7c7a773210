"""No test is skipped for want of a library it does not use; skips are summed by reason.

An optional library (jax, torch, matplotlib) is hidden from a pytest run in a
subprocess, as if it were not installed: a ``sitecustomize`` module on
``PYTHONPATH`` makes the path finder blind to it, so ``import jax`` raises
``ModuleNotFoundError``, ``importlib.util.find_spec("jax")`` is None and its
distribution has no metadata, in that process and in its subprocesses.
``sys.modules["jax"] = None`` would not do: array-api-compat then finds the key
and fails on the None.

- tests/test_fastpaths.py, run with jax hidden and with torch hidden: exactly
  the tests that use the hidden library skip, every other test passes.
- The whole suite, collected with each library hidden: a module is skipped
  whole only where every one of its tests needs that library (the list below,
  checked by reading the modules).
- ``pytest_terminal_summary`` in conftest.py: a section "skips by reason" with
  one line per distinct reason, run on a small temporary test directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

# Each library with the top-level packages that go with it (jaxlib is jax's compiled half).
HIDDEN_PACKAGES = {"jax": ("jax", "jaxlib"), "torch": ("torch",), "matplotlib": ("matplotlib",)}

SITECUSTOMIZE = '''\
import sys
from importlib.machinery import PathFinder

HIDDEN = frozenset({hidden!r})


class _Hiding(PathFinder):
    """The standard path finder, except that the hidden packages are not there."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.partition(".")[0] in HIDDEN:
            return None
        return super().find_spec(fullname, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        return (d for d in super().find_distributions(*args, **kwargs)
                if (d.metadata["Name"] or "").lower() not in HIDDEN)


sys.meta_path[:] = [_Hiding if f is PathFinder else f for f in sys.meta_path]
'''

# Modules that may be skipped whole when the library is missing: every test in them
# drives that library (jax.jit, the PyTorch adapter, torch.distributed, the experiments,
# which are PyTorch programs). A module added here must be one whose every test needs it.
WHOLE_MODULE_SKIPS_ALLOWED = {
    "jax": {"test_core_jit.py"},  # every test compiles with jax.jit
    "matplotlib": set(),
    "torch": {
        "test_core_vs_torch.py", "test_distributed.py", "test_experiments.py",
        "test_claims_robustness.py", "test_fused_sync.py", "test_torch_offload.py",
        "test_torch_adaptive.py", "test_torch_api.py", "test_torch_checkpoint.py",
        "test_torch_features.py", "test_torch_frameworks.py", "test_torch_hardening.py",
        "test_torch_outer.py", "test_torch_reference.py",
        "test_torch_support.py", "test_snoo_experiment.py", "test_local_sgd.py",
    },
}


def _run_pytest(args: list[str], tmp_path: Path, hide: tuple[str, ...] | str = (),
                cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python -m pytest *args`` in a subprocess, with the libraries ``hide`` not importable."""
    env = dict(os.environ)
    hide = (hide,) if isinstance(hide, str) else hide
    if hide:
        site = tmp_path / f"hide-{'-'.join(hide)}"
        site.mkdir(parents=True, exist_ok=True)
        hidden = {package for library in hide for package in HIDDEN_PACKAGES[library]}
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(hidden=hidden),
                                               encoding="utf-8")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def fastpaths_ids(tmp_path_factory) -> list[str]:
    """Node ids of tests/test_fastpaths.py with every library there (collected once)."""
    proc = _run_pytest(["tests/test_fastpaths.py", "--collect-only", "-q"],
                       tmp_path_factory.mktemp("collect"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [line for line in proc.stdout.splitlines() if "::" in line]


def _outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """node id -> (outcome, skip reason) from a JUnit XML report."""
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        # classname "tests.test_fastpaths", name "test_x[param]": the node id again
        node = case.get("classname").replace(".", "/") + ".py::" + case.get("name")
        skipped = case.find("skipped")
        failed = case.find("failure") is not None or case.find("error") is not None
        if skipped is not None:
            outcomes[node] = ("skipped", skipped.get("message", ""))
        else:
            outcomes[node] = ("failed" if failed else "passed", "")
    return outcomes


def _needs_jax(node: str) -> bool:
    return "jax" in node or "under_jit" in node


def _needs_torch(node: str) -> bool:
    return "::test_torch_" in node or "[torch-" in node


@pytest.mark.parametrize("hide, needs", [("jax", _needs_jax), ("torch", _needs_torch)])
def test_fastpaths_skips_only_the_tests_that_need_the_missing_library(
        fastpaths_ids, tmp_path, hide, needs):
    every = fastpaths_ids
    uses_it = {node for node in every if needs(node)}
    assert 0 < len(uses_it) < len(every)  # some tests need it, some do not

    junit = tmp_path / "report.xml"
    proc = _run_pytest(["tests/test_fastpaths.py", "-q", f"--junitxml={junit}"], tmp_path, hide)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes = _outcomes(junit)

    assert sorted(outcomes) == sorted(every)  # nothing lost at collection
    for node in sorted(uses_it):
        outcome, reason = outcomes[node]
        assert outcome == "skipped" and f"{hide}" in reason and "not installed" in reason, node
    for node in sorted(set(every) - uses_it):
        outcome, reason = outcomes[node]
        # The one test that moves a parameter to a GPU is skipped on a CPU machine.
        cpu_only = outcome == "skipped" and reason.startswith("no CUDA device")
        assert outcome == "passed" or (cpu_only and "[device]" in node), (node, outcome, reason)
    passed = [node for node, (outcome, _) in outcomes.items() if outcome == "passed"]
    assert len(passed) >= len(every) - len(uses_it) - 1


def _whole_module_skips(stdout: str) -> dict[str, str]:
    """module file name -> reason, for each module skipped at collection (``-rs`` lines)."""
    skips = {}
    for match in re.finditer(r"^SKIPPED \[\d+\] (\S+?\.py):\d+: (.*)$", stdout, re.M):
        skips[Path(match.group(1)).name] = match.group(2)
    return skips


@pytest.mark.parametrize("hide", sorted(HIDDEN_PACKAGES))
def test_no_module_is_skipped_whole_for_a_library_some_of_its_tests_do_not_use(tmp_path, hide):
    # Collection only: a module-level skip acts at import, which collection runs. A
    # module that fails to import is an error, not a skip, and fails the run loudly.
    proc = _run_pytest(["tests", "--collect-only", "-q", "-rs", "--continue-on-collection-errors"],
                       tmp_path, hide)
    assert re.search(r"\d+ tests? collected", proc.stdout), proc.stdout[-3000:] + proc.stderr[-3000:]
    skipped = _whole_module_skips(proc.stdout)
    for module, reason in skipped.items():
        assert hide in reason, (module, reason)  # only the hidden library is missing
    assert set(skipped) <= WHOLE_MODULE_SKIPS_ALLOWED[hide], skipped
    # The modules this audit moved the skips out of are collected, their tests with them.
    assert not {"test_fastpaths.py", "test_benchmarks.py"} & set(skipped)


# -- the "skips by reason" section of the terminal summary --------------------------------

SKIPPING_TESTS = '''\
import pytest


def test_runs():
    assert True


@pytest.mark.parametrize("n", [1, 2, 3])
def test_needs_a_gpu(n):
    pytest.skip("no CUDA device")


@pytest.mark.skipif(True, reason="jax not installed")
def test_needs_jax():
    pass
'''

SKIPPED_MODULE = '''\
import pytest

pytest.skip("jax not installed", allow_module_level=True)


def test_never_collected():
    pass
'''


def _summary_section(stdout: str) -> list[str] | None:
    """The lines of the "skips by reason" section, or None if there is none."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"=+ skips by reason =+", line)]
    if not starts:
        return None
    assert len(starts) == 1
    section = []
    for line in lines[starts[0] + 1:]:
        if not re.match(r"\d+ (test|module)s?\b", line):  # the next section or the totals
            break
        section.append(line)
    return section


def test_terminal_summary_groups_skips_by_reason(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    # This suite's conftest.py itself, so that its hook is the one run.
    (project / "conftest.py").write_text((TESTS / "conftest.py").read_text(encoding="utf-8"))
    (project / "pytest.ini").write_text("[pytest]\n")  # the root: not this repository's settings
    (project / "test_skipping.py").write_text(SKIPPING_TESTS)
    (project / "test_skipped_module.py").write_text(SKIPPED_MODULE)

    # torch and jax hidden: the conftest's optional imports are then quick.
    proc = _run_pytest(["-q"], tmp_path, hide=("torch", "jax"), cwd=project)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "1 passed, 5 skipped" in proc.stdout
    assert _summary_section(proc.stdout) == [
        "3 tests: no CUDA device",
        "1 test, 1 module: jax not installed",
    ]

    # Without skips there is no section.
    proc = _run_pytest(["-q", "-k", "runs", "test_skipping.py"], tmp_path / "again",
                       hide=("torch", "jax"), cwd=project)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "1 passed" in proc.stdout
    assert _summary_section(proc.stdout) is None
