"""The built sdist and wheel, and the wheel installed as a user installs it.

The development environment's editable install hides packaging faults: it
imports the packages from the source tree (whatever ``package-dir`` says)
and reads the entry points from the tree's metadata, so a package or a
``py.typed`` left out of the wheel, a wrong ``backends/`` mapping, or an
entry point whose module imports PyTorch at load would pass every other
test. Here:

* the sdist is built from a copy of the files git would ship (tracked, plus
  untracked ones that are not ignored), so nothing ignored leaks in, and the
  wheel is built from the sdist (``python -m build``), so the sdist must be
  complete enough to build it;
* the wheel is installed into a fresh virtual environment (no system site
  packages, no user site, no ``PYTHONPATH``, run outside the repository),
  its dependencies from the package registry, first without extras: the
  conformance runners must stop there with one line naming the
  ``conformance`` extra and their own exit status; then with that extra
  only (no PyTorch): ``numpy`` and ``core-numpy`` must pass every check and
  every other backend must be reported as skipped, none as failed.

It needs the package registry, as ``make test`` and CI have it; without it
the test fails and says so. 20 s to a minute and a half on two cores,
depending on pip's cache and the machine's load; most of it is pip.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from lookahead_conformance import CHECKS, EXIT_MISSING_TOOLS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.1.0"
HINT = "pip install 'lookahead-optimizer[conformance]'"

PACKAGE_FOLDERS = {  # import name -> its folder in the repository
    "lookahead_core": "lookahead_core",
    "lookahead_inplace": "backends/lookahead_inplace",
    "lookahead_numpy": "backends/lookahead_numpy",
    "lookahead_torch": "backends/lookahead_torch",
    "lookahead_cupy": "backends/lookahead_cupy",
    "lookahead_conformance": "conformance/lookahead_conformance",
}
BACKENDS = {"numpy", "core-numpy", "core-array-api-strict", "core-torch", "core-jax",
            "torch", "torch-cuda", "cupy"}
CERTIFIED_HERE = {"numpy", "core-numpy"}  # all a plain install with the extra can run
LIBRARY_OF = {  # the array library a skipped backend must name as missing
    "core-array-api-strict": "array_api_strict", "core-torch": "torch", "core-jax": "jax",
    "torch": "torch", "torch-cuda": "torch", "cupy": "cupy",
}
RUNTIME_DEPENDENCIES = {"numpy", "array-api-compat"}


# --- running things -------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: int = 300) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(map(str, cmd))} ran over {timeout} s (is the package registry "
                    f"reachable?)\n{exc.stdout or ''}{exc.stderr or ''}", pytrace=False)


def _must(cmd: list[str], cwd: Path, what: str, env: dict[str, str] | None = None,
          registry: bool = True):
    """Run a step of the set-up; fail with its output (and the likely cause) if it fails."""
    proc = _run(cmd, cwd, env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        cause = (" It installs from the package registry: check that it is reachable (pip's "
                 "index, PIP_INDEX_URL, pip.conf).") if registry else ""
        pytest.fail(f"{what} failed (exit {proc.returncode}).{cause}\n"
                    f"$ {' '.join(map(str, cmd))}\n{tail}", pytrace=False)
    return proc


def _shipped_files() -> list[str]:
    """The files a commit of this working tree would hold: tracked plus untracked, not ignored."""
    proc = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT)
    assert proc.returncode == 0, f"the packaging test lists the files with git: {proc.stderr}"
    return sorted(name for name in set(proc.stdout.split("\0")) if name and (ROOT / name).is_file())


def _package_files(shipped: list[str]) -> dict[str, list[str]]:
    """Import name -> the package's files, relative to its folder (all must ship)."""
    files = {}
    for package, folder in PACKAGE_FOLDERS.items():
        files[package] = [name.removeprefix(folder + "/") for name in shipped
                          if name.startswith(folder + "/")]
        assert "__init__.py" in files[package] and "py.typed" in files[package], package
    return files


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """``(sdist, wheel, shipped files)``, built from a clean copy of the shipped files."""
    tmp = tmp_path_factory.mktemp("packaging")
    shipped = _shipped_files()
    source = tmp / "source"
    for name in shipped:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    out = tmp / "dist"
    # sdist first, then the wheel from the unpacked sdist: build's default.
    _must([sys.executable, "-m", "build", "--outdir", str(out), str(source)], tmp,
          "python -m build (it gets setuptools for its isolated build environment)")
    sdist = out / f"lookahead_optimizer-{VERSION}.tar.gz"
    wheel = out / f"lookahead_optimizer-{VERSION}-py3-none-any.whl"
    assert sorted(p.name for p in out.iterdir()) == sorted([sdist.name, wheel.name])
    return sdist, wheel, shipped


# --- what the sdist and the wheel hold ------------------------------------------------------


def test_sdist_holds_every_package_folder_and_the_project_files(dists):
    sdist, _, shipped = dists
    top = f"lookahead_optimizer-{VERSION}/"
    with tarfile.open(sdist) as tar:
        names = {m.name.removeprefix(top) for m in tar.getmembers() if m.isfile()}
    for package, files in _package_files(shipped).items():
        folder = PACKAGE_FOLDERS[package]
        missing = sorted(f"{folder}/{f}" for f in files if f"{folder}/{f}" not in names)
        assert not missing, f"the sdist lacks {missing}"
    assert {"README.md", "LICENSE", "pyproject.toml", "PKG-INFO"} <= names
    junk = sorted(n for n in names if "__pycache__" in n or n.endswith(".pyc")
                  or n.startswith((".venv/", "build/", "dist/", "site/")))
    assert not junk, f"the sdist holds build outputs: {junk[:10]}"


def _read_wheel(wheel: Path) -> tuple[set[str], str, str]:
    dist_info = f"lookahead_optimizer-{VERSION}.dist-info"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    return names, entry_points, metadata


def test_wheel_holds_the_packages_at_their_import_names_and_nothing_else(dists):
    _, wheel, shipped = dists
    names, _, _ = _read_wheel(wheel)
    for package, files in _package_files(shipped).items():
        missing = sorted(f"{package}/{f}" for f in files if f"{package}/{f}" not in names)
        assert not missing, f"the wheel lacks {missing}"
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == set(PACKAGE_FOLDERS) | {f"lookahead_optimizer-{VERSION}.dist-info"}
    assert any(re.fullmatch(r"lookahead_optimizer-[^/]+\.dist-info/(licenses/)?LICENSE", n)
               for n in names)


def test_wheel_entry_points_and_dependencies(dists):
    _, wheel, _ = dists
    names, entry_points, metadata = _read_wheel(wheel)
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # keep the names' case
    parser.read_string(entry_points)
    assert dict(parser["pytest11"]) == {"lookahead_conformance": "lookahead_conformance.plugin"}
    backends = dict(parser["lookahead.backends"])
    assert set(backends) == BACKENDS
    for name, value in {**backends, "pytest11": "lookahead_conformance.plugin"}.items():
        module = value.partition(":")[0]
        assert f"{module.replace('.', '/')}.py" in names, f"{name} = {value}: no such module"

    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, re.M)
    unconditional = {re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in requires if ";" not in r}
    assert unconditional == RUNTIME_DEPENDENCIES  # a plain install pulls no torch, no tools
    conformance = {re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in requires
                   if re.search(r"""extra\s*==\s*["']conformance["']""", r)}
    assert conformance == {"hypothesis", "pytest"}
    assert "conformance" in re.findall(r"^Provides-Extra: (.+)$", metadata, re.M)


# --- the wheel in a fresh virtual environment -----------------------------------------------


def _user_env(venv: Path) -> dict[str, str]:
    """The environment of a user of that venv: nothing of this repository or its venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV",
                        "PYTEST_ADDOPTS", "PYTEST_PLUGINS"}}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _outcomes(stdout: str) -> dict[str, int]:
    summary = stdout.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) ([a-z]+)", summary)}


def test_plain_install_asks_for_the_extra_then_certifies_numpy_with_it(dists, tmp_path):
    """One venv, in the order a user meets it: the bare wheel, pytest added, the extra added."""
    _, wheel, _ = dists
    venv, home = tmp_path / "venv", tmp_path / "home"
    home.mkdir()  # the working directory: outside the repository, so nothing of it is imported
    _must([sys.executable, "-m", "venv", str(venv)], home, "python -m venv", registry=False)
    env = _user_env(venv)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]

    # 1. A plain install: the library imports from the venv, and PyTorch is not there.
    _must([*pip, str(wheel)], home, "pip install of the wheel without extras", env)
    where = _run([python, "-c",
                  "import importlib.util, json, sys, sysconfig\n"
                  f"names = {sorted(PACKAGE_FOLDERS)!r}\n"
                  "files = {n: __import__(n).__file__ for n in names}\n"
                  "print(json.dumps([sysconfig.get_paths()['purelib'], files,\n"
                  "    [m for m in ('torch', 'hypothesis', 'pytest') if importlib.util.find_spec(m)]]))"],
                 home, env)
    assert where.returncode == 0, where.stderr
    purelib, files, present = json.loads(where.stdout)
    for name, file in files.items():
        assert Path(file).is_relative_to(purelib), f"{name} imported from {file}, not the venv"
    assert present == []

    # 2. Without the tools the command line stops before any check: one line, its own status.
    bare = _run([python, "-m", "lookahead_conformance", "--backend", "numpy",
                 "--backend", "core-numpy"], home, env)
    assert bare.returncode == EXIT_MISSING_TOOLS, bare.stdout + bare.stderr
    assert bare.stdout == ""
    assert len(bare.stderr.strip().splitlines()) == 1 and bare.stderr.strip().endswith(HINT), \
        bare.stderr

    # 3. With pytest but not hypothesis: the plugin spares other suites, stops the conformance one.
    _must([*pip, "pytest>=8"], home, "pip install pytest", env)
    (home / "test_mine.py").write_text("def test_mine():\n    assert True\n", encoding="utf-8")
    pytest_run = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    mine = _run([*pytest_run, "test_mine.py"], home, env)
    assert mine.returncode == 0 and _outcomes(mine.stdout) == {"passed": 1}, mine.stdout
    stopped = _run([*pytest_run, "--pyargs", "lookahead_conformance",
                    "--lookahead-backend=numpy"], home, env)
    assert stopped.returncode == EXIT_MISSING_TOOLS, stopped.stdout + stopped.stderr
    assert HINT in stopped.stdout and "passed" not in stopped.stdout

    # 4. With the conformance extra, still no PyTorch: numpy and core-numpy certified, the rest
    #    skipped for their missing library (their entry points load without it), none failed.
    _must([*pip, f"{wheel}[conformance]"], home, "pip install of the wheel's conformance extra",
          env)
    cli = _run([python, "-m", "lookahead_conformance", "--json", "report.json"], home, env)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    report = json.loads((home / "report.json").read_text(encoding="utf-8"))["backends"]
    assert set(report) == BACKENDS
    for name in CERTIFIED_HERE:
        statuses = {check: r["status"] for check, r in report[name]["results"].items()}
        assert statuses == {**dict.fromkeys(CHECKS, "pass"), "skipped_steps": "n/a"}, \
            f"{name}: {statuses}"
    for name in BACKENDS - CERTIFIED_HERE:
        assert report[name]["status"] == "skipped", f"{name}: {report[name]}"
        assert f"{LIBRARY_OF[name]}" in report[name]["reason"] and \
            "not installed" in report[name]["reason"], f"{name}: {report[name]['reason']}"
    assert "FAILED" not in cli.stdout

    # 5. The pytest runner from the installed wheel: its tests ship, torch skips itself.
    plugin = _run([*pytest_run, "--pyargs", "lookahead_conformance", "--lookahead-backend=numpy",
                   "--lookahead-backend=core-numpy", "--lookahead-backend=torch"], home, env)
    assert plugin.returncode == 0, plugin.stdout + plugin.stderr
    per_backend = len(CHECKS)
    assert _outcomes(plugin.stdout) == {"passed": 2 * (per_backend - 1),
                                        "skipped": 2 + per_backend}, plugin.stdout
