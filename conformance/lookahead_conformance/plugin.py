"""pytest plugin (entry point ``pytest11``): the conformance suite as tests.

    pytest --pyargs lookahead_conformance --lookahead-backend=numpy

``--lookahead-backend`` repeats; ``all`` (the default) selects every
registered backend and ``module:attr`` an unregistered one. Each check of
`lookahead_conformance.checks.CHECKS` is one test per backend, with the
backend's name as the test id: ``test_schedule[numpy]``.

Outcomes: a backend that cannot run here (its `skip_reason`) is skipped with
the reason; a check that needs a capability the backend lacks is skipped as
"not applicable: ..."; a backend that cannot be loaded fails every check.
``--lookahead-xfail=FILE`` lists known deviations, one ``backend::check`` per
line (``#`` starts a comment); they are strict xfails, so a deviation that
gets fixed makes the run fail until its line is removed.

The plugin only acts on tests that ask for the ``lookahead_backend``
fixture, so it is inert in every other test suite. It is loaded in every
pytest session of an environment where the package is installed, so it
imports none of the kit's tools: only when the collected tests ask for that
fixture does it check them, and without them it stops the session before
the first test with one line saying what to install and the exit status
`lookahead_conformance.tools.EXIT_MISSING_TOOLS` (69), which pytest gives
to no outcome of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .checks import CHECKS, FAIL, NOT_APPLICABLE, run_check
from .registry import BrokenBackend, expand_backend_names, load_backend, registered_backends
from .tools import EXIT_MISSING_TOOLS, missing_tools_message


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("lookahead", "Lookahead conformance (lookahead_conformance)")
    group.addoption(
        "--lookahead-backend", action="append", default=[], metavar="NAME",
        help="backend to certify: a registered name, 'all' (default) or 'module:attr'; repeatable",
    )
    group.addoption(
        "--lookahead-xfail", default=None, metavar="FILE",
        help="known deviations, one 'backend::check' per line ('#' comments); strict xfails",
    )


def _selected(config: Any) -> list[str]:
    return expand_backend_names(config.getoption("lookahead_backend") or ["all"])


def _xfails(config: Any) -> set[str]:
    path = config.getoption("lookahead_xfail")
    if not path:
        return set()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise pytest.UsageError(f"--lookahead-xfail: cannot read {path}: {exc}") from None
    entries = {line.split("#", 1)[0].strip() for line in text.splitlines()} - {""}
    for entry in sorted(entries):
        backend, sep, check = entry.rpartition("::")
        if not sep or not backend or check not in CHECKS:
            raise pytest.UsageError(
                f"--lookahead-xfail: {path}: {entry!r} is not 'backend::check' with check one of "
                f"{', '.join(CHECKS)}"
            )
    return entries


_XFAIL_KEY = pytest.StashKey[set]()


def pytest_configure(config: Any) -> None:
    """Check the options early, so that a mistake is a usage error (exit status 4)."""
    config.stash[_XFAIL_KEY] = _xfails(config)
    for name in config.getoption("lookahead_backend"):
        if name != "all" and ":" not in name and name not in registered_backends():
            raise pytest.UsageError(
                f"--lookahead-backend: {name!r} is not registered ({', '.join(registered_backends())}); "
                "use a registered name, 'all' or 'module:attr'"
            )


def pytest_generate_tests(metafunc: Any) -> None:
    if "lookahead_backend" not in metafunc.fixturenames:
        return
    xfails = metafunc.config.stash[_XFAIL_KEY]
    check = metafunc.function.__name__.removeprefix("test_")
    params = []
    for name in _selected(metafunc.config):
        marks = []
        if f"{name}::{check}" in xfails:
            marks.append(pytest.mark.xfail(reason="known deviation (--lookahead-xfail)", strict=True))
        params.append(pytest.param(name, id=name, marks=marks))
    metafunc.parametrize("lookahead_backend", params, indirect=True)


def pytest_collection_finish(session: Any) -> None:
    """Stop before the first check when the kit's tools are missing.

    Only a session that is about to run conformance checks (tests asking for
    the ``lookahead_backend`` fixture, after deselection) needs them; any
    other session, or ``--collect-only``, is left alone.
    """
    if session.config.option.collectonly:
        return
    if not any("lookahead_backend" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    missing = missing_tools_message()
    if missing is not None:
        pytest.exit(missing, returncode=EXIT_MISSING_TOOLS)


def _load(config: Any, name: str) -> Any:
    cache = config.stash.setdefault(_CACHE_KEY, {})
    if name not in cache:
        cache[name] = load_backend(name)
    return cache[name]


_CACHE_KEY = pytest.StashKey[dict]()


@pytest.fixture
def lookahead_backend(request: Any) -> Any:
    """The backend under test; skipped with its reason where it cannot run here.

    A backend that failed to load is returned as a `BrokenBackend`, so that
    every check on it fails (it is not skipped: a broken plugin is a defect).
    """
    backend = _load(request.config, request.param)
    if not isinstance(backend, BrokenBackend):
        reason = backend.skip_reason()
        if reason:
            pytest.skip(f"{request.param}: {reason}")
    return backend


def certify_check(check: str, backend: Any) -> None:
    """Run one check in a test: fail with its detail, skip when not applicable."""
    result = run_check(check, backend)
    if result.status == NOT_APPLICABLE:
        pytest.skip(f"{backend.name}::{check}: {result.detail}")
    if result.status == FAIL:
        pytest.fail(f"{backend.name}::{check}: {result.detail}", pytrace=False)
