"""pytest plugin (entry point ``pytest11``): the conformance suite as tests.

    pytest --pyargs lookahead_conformance --lookahead-backend=numpy

``--lookahead-backend`` repeats; ``all`` (the default) selects every
registered backend and ``module:attr`` an unregistered one (imported from
the installed packages, the folders of ``--lookahead-path``, or the current
directory). Each check of `lookahead_conformance.checks.CHECKS` is one test
per backend, with the backend's `Backend.name` as the test id, also for
``module:attr``: ``test_schedule[numpy]``.

Outcomes: a backend that cannot run here (its `skip_reason`) is skipped with
the reason; a check that needs a capability the backend lacks is skipped as
"not applicable: ..."; a backend that cannot be loaded fails every check; a
failing check lists every failing case. ``--lookahead-xfail=FILE`` lists
known deviations, ``--lookahead-skip=FILE`` checks not to run, one
``backend::check`` per line, named as the failure text names them (``#``
starts a comment, which is the reason); xfails are strict, so a deviation
that gets fixed makes the run fail until its line is removed, and a line
that matches no backend and check of the run is a usage error naming it.
``--lookahead-seed`` and ``--lookahead-max-examples`` set the run's
`lookahead_conformance.checks.Settings`, printed after the collection
summary with the kit's checks version; ``--lookahead-require-checks-version``
stops the run unless the kit's `CHECKS_VERSION` is the one given.

The plugin only acts on tests that ask for the ``lookahead_backend``
fixture, so it is inert in every other test suite: it loads backends only
when a ``--lookahead-*`` option is given or conformance tests are
collected. It is loaded in every pytest session of an environment where the
package is installed, so it imports none of the kit's tools: only when the
collected tests ask for that fixture does it check them, and without them
it stops the session before the first test with one line saying what to
install and the exit status `lookahead_conformance.tools.EXIT_MISSING_TOOLS`
(69), which pytest gives to no outcome of its own.
"""

from __future__ import annotations

from typing import Any

import pytest

from .checks import CHECKS_VERSION, DEFAULT_MAX_EXAMPLES, DEFAULT_SEED, FAIL, NOT_APPLICABLE, Settings
from .checks import make_settings, run_check
from .registry import BrokenBackend, add_search_paths, registered_backends, select_backends
from .report import ListEntry, header_line, read_list, unmatched_entries
from .tools import EXIT_MISSING_TOOLS, missing_tools_message

_OPTIONS = ("lookahead_backend", "lookahead_xfail", "lookahead_skip", "lookahead_path",
            "lookahead_require_checks_version")


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
    group.addoption(
        "--lookahead-skip", default=None, metavar="FILE",
        help="checks not to run, one 'backend::check' per line; the comment is the reason",
    )
    group.addoption(
        "--lookahead-path", action="append", default=[], metavar="DIR",
        help="search DIR first for the module of a 'module:attr' backend; repeatable",
    )
    group.addoption(
        "--lookahead-seed", type=int, default=DEFAULT_SEED, metavar="N",
        help=f"seed of every drawn case, in [0, 2**32) (default {DEFAULT_SEED}: the kit's fixed cases)",
    )
    group.addoption(
        "--lookahead-max-examples", type=int, default=DEFAULT_MAX_EXAMPLES, metavar="N",
        help=f"eq. 0.1 cases drawn beyond the scripted ones (default {DEFAULT_MAX_EXAMPLES})",
    )
    group.addoption(
        "--lookahead-require-checks-version", type=int, default=None, metavar="N",
        help=f"stop unless the kit's checks are version N (this kit: {CHECKS_VERSION})",
    )


class _Session:
    """What the options decided, kept on the config: the settings, the lists, the backends."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.settings = Settings()
        self.xfail: list[ListEntry] = []
        self.skip: list[ListEntry] = []
        self._backends: dict[str, Any] | None = None

    def backends(self) -> dict[str, Any]:
        """The selected backends by name (loaded once).

        Raises:
            pytest.UsageError: an unknown name, or two backends of one name.
        """
        if self._backends is None:
            specs = self.config.getoption("lookahead_backend") or ["all"]
            try:
                self._backends = {b.name: b for b in select_backends(specs)}
            except ValueError as exc:
                raise pytest.UsageError(f"--lookahead-backend: {exc}") from None
        return self._backends


_SESSION_KEY = pytest.StashKey[_Session]()
_ACTIVE: list[_Session] = []
"""The session of the running pytest (for `certify_check`, which the tests call bare)."""


def _read(config: Any, option: str) -> list[ListEntry]:
    path = config.getoption(option)
    if not path:
        return []
    try:
        return read_list(path)
    except ValueError as exc:
        raise pytest.UsageError(f"--{option.replace('_', '-')}: {exc}") from None


def pytest_configure(config: Any) -> None:
    """Check the options early, so that a mistake is a usage error (exit status 4)."""
    session = _Session(config)
    config.stash[_SESSION_KEY] = session
    _ACTIVE.append(session)
    try:
        session.settings = make_settings(config.getoption("lookahead_seed"),
                                         config.getoption("lookahead_max_examples"))
        add_search_paths(config.getoption("lookahead_path"))
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"lookahead_conformance: {exc}") from None
    required = config.getoption("lookahead_require_checks_version")
    if required is not None and required != CHECKS_VERSION:
        raise pytest.UsageError(
            f"--lookahead-require-checks-version={required}: this lookahead_conformance runs "
            f"checks version {CHECKS_VERSION} (see the table of check versions on the Certify page)"
        )
    session.xfail = _read(config, "lookahead_xfail")
    session.skip = _read(config, "lookahead_skip")
    for name in config.getoption("lookahead_backend"):
        if name != "all" and ":" not in name and name not in registered_backends():
            raise pytest.UsageError(
                f"--lookahead-backend: {name!r} is not registered ({', '.join(registered_backends())}); "
                "use a registered name, 'all' or 'module:attr'"
            )
    if any(config.getoption(option) for option in _OPTIONS):  # a conformance run: load now
        stale = unmatched_entries(session.skip + session.xfail, session.backends())
        if stale:
            raise pytest.UsageError("\n".join(stale))


def pytest_unconfigure(config: Any) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session in _ACTIVE:
        _ACTIVE.remove(session)


def pytest_generate_tests(metafunc: Any) -> None:
    if "lookahead_backend" not in metafunc.fixturenames:
        return
    session = metafunc.config.stash[_SESSION_KEY]
    check = metafunc.function.__name__.removeprefix("test_")
    xfail = {(e.backend, e.check): e for e in session.xfail}
    skip = {(e.backend, e.check): e for e in session.skip}
    params = []
    for name in session.backends():
        marks = []
        if (name, check) in skip:
            entry = skip[(name, check)]
            marks.append(pytest.mark.skip(reason=_listed(entry, "skip")))
        if (name, check) in xfail:
            entry = xfail[(name, check)]
            marks.append(pytest.mark.xfail(reason=_listed(entry, "xfail"), strict=True))
        params.append(pytest.param(name, id=name, marks=marks))
    metafunc.parametrize("lookahead_backend", params, indirect=True)


def _listed(entry: ListEntry, option: str) -> str:
    reason = f": {entry.reason}" if entry.reason else ""
    return f"listed in {entry.where} (--lookahead-{option}){reason}"


def pytest_report_collectionfinish(config: Any, items: Any) -> Any:
    """After 'collected N items': what reproduces the run (only in a conformance session)."""
    if any("lookahead_backend" in getattr(item, "fixturenames", ()) for item in items):
        return header_line(config.stash[_SESSION_KEY].settings)
    return None


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


@pytest.fixture
def lookahead_backend(request: Any) -> Any:
    """The backend under test; skipped with its reason where it cannot run here.

    A backend that failed to load is returned as a `BrokenBackend`, so that
    every check on it fails (it is not skipped: a broken plugin is a defect).
    """
    backend = request.config.stash[_SESSION_KEY].backends()[request.param]
    if not isinstance(backend, BrokenBackend):
        reason = backend.skip_reason()
        if reason:
            pytest.skip(f"{request.param}: {reason}")
    return backend


def certify_check(check: str, backend: Any) -> None:
    """Run one check in a test: fail listing every failing case, skip when not applicable.

    It runs with the session's ``--lookahead-seed`` and ``--lookahead-max-examples``.
    """
    settings = _ACTIVE[-1].settings if _ACTIVE else Settings()
    result = run_check(check, backend, seed=settings.seed, max_examples=settings.max_examples)
    if result.status == NOT_APPLICABLE:
        pytest.skip(f"{backend.name}::{check}: {result.detail}")
    if result.status == FAIL:
        pytest.fail(failure_text(backend.name, result), pytrace=False)


def failure_text(name: str, result: Any) -> str:
    """``name::check: the failure``, or with several failing cases the count and one per line."""
    key = f"{name}::{result.name}"
    if len(result.failures) <= 1:
        return f"{key}: {result.detail}"
    cases = f" of {result.cases}" if result.cases is not None else ""
    lines = [f"{key}: {len(result.failures)}{cases} cases fail:"]
    return "\n".join(lines + [f"  {failure}" for failure in result.failures])
