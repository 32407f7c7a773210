"""Reproducible, pinnable reports: the seed, the number of drawn examples, the versions.

Both runners take a seed and a number of examples and print them in the
report's header; the JSON carries them with the kit's version, its
``CHECKS_VERSION``, and the Python and array-library versions, in the shape
of the JSON Schema published on the docs page (validated here by a few lines
of code: the project does not depend on ``jsonschema``). A CI pins the
checks with ``--require-checks-version``; ``CHECKS_VERSION`` is tied to the
code of the checks by a fingerprint, so a change that forgets to bump it
fails here.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from test_conformance_toys import LAZY, ToyBackend

import lookahead_conformance.checks as checks_module
from lookahead_conformance import CHECKS, CHECKS_VERSION, certify, load_backend, run_check
from lookahead_conformance.report import format_report, report_json

TESTS = Path(__file__).parent
DOCS_PAGE = TESTS.parent / "docs" / "conformance.md"

CHECKS_FINGERPRINTS = {
    1: "e0d5172b39df6570a6c4a848dcccfc3cace6ab66ef7edb973e8204b74a328e2d",
    2: "5e88b83aa6ba6b1106b3c7c1a036d22eff29cb06cc716a27c2f512c7808b6a16",
}
"""CHECKS_VERSION -> the fingerprint of checks.py's code (docstrings and comments left out)."""


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


# --- the JSON Schema of the docs page, and a validator for the part of JSON Schema it uses ---------


def published_schema() -> dict:
    text = DOCS_PAGE.read_text(encoding="utf-8")
    blocks = re.findall(r'^```json title="report\.schema\.json"\n(.*?)^```$', text, re.M | re.S)
    assert len(blocks) == 1, f"expected one block titled report.schema.json in {DOCS_PAGE}"
    return json.loads(blocks[0])


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _has_type(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def schema_errors(value, schema: dict, where: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (type, enum, minimum, required, properties,
    additionalProperties, items, $ref to $defs); empty when it conforms."""
    if "$ref" in schema:
        return schema_errors(value, SCHEMA["$defs"][schema["$ref"].rpartition("/")[2]], where)
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_has_type(value, t) for t in types):
            return [f"{where}: {value!r} is not of type {' or '.join(types)}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and _has_type(value, "number") and value < schema["minimum"]:
        errors.append(f"{where}: {value!r} < {schema['minimum']}")
    if isinstance(value, dict):
        errors += [f"{where}: {key!r} is missing" for key in schema.get("required", ()) if key not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], f"{where}.{key}")
            elif extra is False:
                errors.append(f"{where}: {key!r} is not allowed")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


SCHEMA = published_schema() if DOCS_PAGE.exists() else {}


def test_the_validator_catches_what_it_claims():
    assert schema_errors({"a": 1}, {"type": "object", "required": ["b"]}) == ["$: 'b' is missing"]
    assert schema_errors(True, {"type": "integer"})  # a bool is no integer in JSON Schema
    assert schema_errors({"a": "x"}, {"type": "object", "additionalProperties": {"type": "integer"}})
    assert schema_errors(["x"], {"type": "array", "items": {"enum": ["y"]}})
    assert schema_errors(-1, {"type": "integer", "minimum": 0})
    assert schema_errors({"z": 1}, {"type": "object", "properties": {}, "additionalProperties": False})


class NoDevice(ToyBackend):
    def __init__(self):
        super().__init__()
        self.name = "toy-no-device"

    def skip_reason(self):
        return "no such device here"


def test_every_kind_of_result_fits_the_schema():
    """Passed, failed, not applicable, a skipped backend and a broken one."""
    reports = [certify(ToyBackend("skip_counts"), ["schedule", "skipped_steps", "memory"]),
               certify(ToyBackend(capabilities=frozenset()), ["memory"]),
               certify(LAZY, ["schedule"], seed=5, max_examples=3),
               certify(NoDevice(), ["schedule"]),
               certify("no_such_module_xyz:backend", ["schedule"])]
    for report in reports:
        data = report_json([report])
        assert schema_errors(data, SCHEMA) == [], report.name
    data = report_json([reports[2]])
    assert (data["seed"], data["max_examples"]) == (5, 3)
    assert data["backends"]["toy-lazy"]["library"] == {"name": "numpy", "version": np.__version__}
    assert report_json([reports[3]])["backends"]["toy-no-device"]["library"] is None  # not imported


def test_reports_of_different_settings_do_not_mix():
    with pytest.raises(ValueError, match="seed"):
        report_json([certify(LAZY, ["schedule"], seed=1), certify(LAZY, ["schedule"], seed=2)])


def test_cli_prints_and_writes_the_settings_and_versions(tmp_path):
    out = tmp_path / "report.json"
    proc = _run(["-m", "lookahead_conformance", "--backend", "core-numpy", "--check",
                 "eq01_closed_form", "--check", "schedule", "--seed", "3", "--max-examples", "5",
                 "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = proc.stdout.splitlines()[0]
    assert "seed 3, max examples 5" in header, header
    assert f"checks version {CHECKS_VERSION}" in header, header
    data = json.loads(out.read_text())
    assert schema_errors(data, SCHEMA) == []
    assert (data["seed"], data["max_examples"], data["checks_version"]) == (3, 5, CHECKS_VERSION)
    assert data["python_version"] == platform.python_version()
    assert data["numpy_version"] == np.__version__
    assert data["kit_version"] == version("lookahead-optimizer")
    backend = data["backends"]["core-numpy"]
    assert backend["library"] == {"name": "numpy", "version": np.__version__}
    assert backend["results"]["eq01_closed_form"]["cases"] == 2 * 7 + 5


def test_torch_backend_reports_the_torch_version():
    torch = pytest.importorskip("torch")
    report = certify("core-torch", ["schedule"])
    assert report_json([report])["backends"]["core-torch"]["library"] == {
        "name": "torch", "version": torch.__version__}


# --- the seed and the number of examples ------------------------------------------------------


class Recording(ToyBackend):
    """The correct toy, recording the parameters of every optimizer the checks create."""

    def __init__(self):
        super().__init__()
        self.created = []

    def create(self, params, inner, k, alpha):
        self.created.append((inner, k, alpha, [p.copy() for p in params]))
        return super().create(params, inner, k, alpha)


def _created(check: str, **settings) -> list:
    backend = Recording()
    result = run_check(check, backend, **settings)
    assert result.passed, result.detail
    return backend.created


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x[:3] == y[:3] and all(np.array_equal(p, q) for p, q in zip(x[3], y[3])) for x, y in zip(a, b))


@pytest.mark.parametrize("check", ["eq01_closed_form", "reference", "round_trip"])
def test_the_seed_decides_the_cases(check):
    first = _created(check, seed=4, max_examples=3)
    assert _same(first, _created(check, seed=4, max_examples=3))  # reproducible
    other = _created(check, seed=5, max_examples=3)
    assert not _same(first, other)  # and it is the seed's doing
    if check == "eq01_closed_form":  # the drawn cases too, not only the scripted ones' data
        assert not _same(first[-3:], other[-3:])


def test_seed_zero_is_the_kits_fixed_cases():
    """The default seed keeps the cases the kit always ran: the reference check's first
    parameters are those of its fixed NumPy seed."""
    inner, k, alpha, params = _created("reference")[0]
    rng = np.random.default_rng(7)
    assert np.array_equal(params[0], rng.standard_normal((7,)).astype("float32"))
    assert _same(_created("reference"), _created("reference", seed=0))


@pytest.mark.parametrize("examples", [0, 4])
def test_max_examples_is_the_number_of_drawn_cases(examples):
    result = run_check("eq01_closed_form", ToyBackend(), max_examples=examples)
    assert result.passed and result.cases == 2 * 7 + examples


@pytest.mark.parametrize(("settings", "error", "named"), [
    ({"seed": -1}, ValueError, "seed"), ({"seed": True}, TypeError, "seed"),
    ({"seed": 1.0}, TypeError, "seed"), ({"seed": 2**32}, ValueError, "seed"),
    ({"max_examples": -1}, ValueError, "max_examples"), ({"max_examples": "5"}, TypeError, "max_examples"),
])
def test_bad_settings_are_refused_by_name(settings, error, named):
    with pytest.raises(error, match=named):
        run_check("schedule", ToyBackend(), **settings)
    with pytest.raises(error, match=named):
        certify(ToyBackend(), ["schedule"], **settings)


# --- pinning the checks -----------------------------------------------------------------------


def test_cli_require_checks_version(tmp_path):
    base = ["-m", "lookahead_conformance", "--backend", "core-numpy", "--check", "schedule"]
    pinned = _run([*base, "--require-checks-version", str(CHECKS_VERSION)], tmp_path)
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    other = _run([*base, "--require-checks-version", str(CHECKS_VERSION + 1)], tmp_path)
    assert other.returncode == 2, other.stdout + other.stderr
    assert f"checks version {CHECKS_VERSION}" in other.stderr and str(CHECKS_VERSION + 1) in other.stderr
    assert other.stdout == ""  # no check ran
    bad = _run([*base, "--seed", "-1"], tmp_path)
    assert bad.returncode == 2 and "seed" in bad.stderr, bad.stderr


def test_plugin_settings_header_and_pin(tmp_path):
    base = ["-m", "pytest", "-p", "no:cacheprovider", "-q", "--pyargs", "lookahead_conformance",
            "--lookahead-backend=core-numpy", "-k", "eq01 or schedule"]
    proc = _run([*base, "--lookahead-seed=3", "--lookahead-max-examples=2",
                 f"--lookahead-require-checks-version={CHECKS_VERSION}"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"checks version {CHECKS_VERSION}" in proc.stdout and "seed 3, max examples 2" in proc.stdout
    other = _run([*base, f"--lookahead-require-checks-version={CHECKS_VERSION + 1}"], tmp_path)
    assert other.returncode == 4, other.stdout + other.stderr
    assert f"checks version {CHECKS_VERSION}" in other.stderr
    bad = _run([*base, "--lookahead-max-examples=-3"], tmp_path)
    assert bad.returncode == 4 and "max_examples" in bad.stderr, bad.stdout + bad.stderr


class _NoProse(ast.NodeTransformer):
    """Drops every statement that is a string alone: docstrings, attribute docstrings."""

    def visit_Expr(self, node: ast.Expr) -> ast.Expr | None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return None
        return node


def checks_fingerprint() -> str:
    """sha256 of checks.py's syntax tree without its prose: comments and docstrings may change
    freely, code may not without a new CHECKS_VERSION."""
    tree = _NoProse().visit(ast.parse(Path(checks_module.__file__).read_text(encoding="utf-8")))
    parts = []
    for node in ast.walk(tree):
        parts.append(type(node).__name__)
        for field in node._fields:
            value = getattr(node, field, None)
            if isinstance(value, (str, int, float, complex, bytes, bool)) or value is None:
                parts.append(f"{field}={value!r}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def test_checks_version_follows_the_code_of_the_checks():
    assert CHECKS_VERSION in CHECKS_FINGERPRINTS, "record the new version's fingerprint here"
    assert checks_fingerprint() == CHECKS_FINGERPRINTS[CHECKS_VERSION], (
        "the code of lookahead_conformance/checks.py changed: if a check or a tolerance changed, "
        "bump CHECKS_VERSION, add a row to the docs' table of check versions and record the "
        f"fingerprint {checks_fingerprint()} under it here; if no check changed (a refactoring), "
        "record the new fingerprint under the current version")


def test_docs_list_every_checks_version():
    text = DOCS_PAGE.read_text(encoding="utf-8")
    for version in range(1, CHECKS_VERSION + 1):
        assert re.search(rf"^\| {version} \|", text, re.M), f"no row for checks version {version}"
