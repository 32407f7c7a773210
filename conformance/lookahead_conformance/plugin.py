"""pytest plugin (entry point ``pytest11``): ``--lookahead-backend`` and ``--lookahead-xfail``.

Run the suite on a backend with:

    pytest --pyargs lookahead_conformance --lookahead-backend=numpy

The option repeats; ``all`` selects every registered backend and ``module:attr``
an unregistered one. Without the option the suite runs on all registered
backends. The plugin is inert for test files that do not ask for the
``lookahead_backend`` fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .backends import load_backend, registered_backends


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("lookahead", "Lookahead conformance")
    group.addoption(
        "--lookahead-backend",
        action="append",
        default=[],
        metavar="NAME",
        help="backend to certify: a registered name, 'all', or 'module:attr' (repeatable)",
    )
    group.addoption(
        "--lookahead-xfail",
        default=None,
        metavar="FILE",
        help="file of known deviations, one 'backend::check' per line ('#' comments)",
    )


def _selected(config: Any) -> list[str]:
    names = config.getoption("lookahead_backend") or ["all"]
    if "all" in names:
        return sorted(registered_backends())
    return list(names)


def _xfails(config: Any) -> set[str]:
    path = config.getoption("lookahead_xfail")
    if not path:
        return set()
    lines = Path(path).read_text().splitlines()
    return {line.split("#", 1)[0].strip() for line in lines} - {""}


def pytest_generate_tests(metafunc: Any) -> None:
    if "lookahead_backend" not in metafunc.fixturenames:
        return
    xfails = _xfails(metafunc.config)
    check = metafunc.function.__name__.removeprefix("test_")
    params = []
    for name in _selected(metafunc.config):
        marks = []
        if f"{name}::{check}" in xfails:
            marks.append(pytest.mark.xfail(reason="listed in --lookahead-xfail", strict=True))
        params.append(pytest.param(name, id=name, marks=marks))
    metafunc.parametrize("lookahead_backend", params, indirect=True)


@pytest.fixture
def lookahead_backend(request: Any) -> Any:
    """The backend under test, skipped with its reason where it cannot run here."""
    backend = load_backend(request.param)
    reason = backend.skip_reason()
    if reason:
        pytest.skip(f"{request.param}: {reason}")
    return backend
