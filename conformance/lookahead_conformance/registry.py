"""Finding backends: the ``lookahead.backends`` entry points, or ``module:attr``.

A backend's key everywhere (the report, the JSON, pytest's test ids, the
skip and xfail lists) is its `Backend.name`: an entry point must be named
as its backend, and a backend loaded as ``module:attr`` is keyed by its
name, not by that string. ``module:attr`` is imported as Python would from
the current directory (it is searched after the installed packages, also
under the ``pytest`` script, which does not put it on ``sys.path``), and from
the folders given to `add_search_paths` (``--path``).

A registered backend that cannot be loaded (its module fails to import, the
attribute is missing, it lacks part of the protocol, or two distributions
register the same name) becomes a `BrokenBackend`, which every runner reports
as a **failure**, never as a skip. A skip means "this backend cannot run on
this machine" and is the backend's own verdict, given by its `skip_reason`
(no GPU, library not installed); a broken plugin is a defect that a CI run
must not report as green.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import numpy as np

from .protocol import Backend, InnerSpec, Runner, protocol_violations

__all__ = [
    "ENTRY_POINT_GROUP",
    "BrokenBackend",
    "add_search_paths",
    "builtin_backend_names",
    "expand_backend_names",
    "load_backend",
    "registered_backends",
    "select_backends",
]

ENTRY_POINT_GROUP = "lookahead.backends"
"""The entry-point group a backend registers under."""

_OUR_DISTRIBUTION = "lookahead-optimizer"


class BrokenBackend:
    """Stands in for a backend that cannot be loaded; every check on it fails.

    Attributes:
        name: the name asked for.
        error: why it could not be loaded.
    """

    dtypes: tuple[str, ...] = ("float64",)

    def __init__(self, name: str, error: str) -> None:
        self.name = name
        self.error = error

    def __repr__(self) -> str:
        return f"BrokenBackend({self.name!r}, {self.error!r})"

    def skip_reason(self) -> str | None:
        return None  # broken is not the same as unavailable: it must show as a failure

    def namespace(self) -> Any:
        raise RuntimeError(self.error)

    def device(self) -> str:
        raise RuntimeError(self.error)

    def from_numpy(self, array: np.ndarray) -> Any:
        raise RuntimeError(self.error)

    def to_numpy(self, array: Any) -> np.ndarray:
        raise RuntimeError(self.error)

    def create(
        self, params: Sequence[np.ndarray], inner: InnerSpec, k: int, alpha: float
    ) -> Runner:
        raise RuntimeError(self.error)


def _as_backend(name: str, obj: Any, origin: str) -> Backend | BrokenBackend:
    """Instantiate a class, then check the protocol; a violation gives a `BrokenBackend`."""
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            return BrokenBackend(name, f"{origin}: {obj.__name__}() raised {exc!r}")
    missing = protocol_violations(obj)
    if missing:
        return BrokenBackend(
            name,
            f"{origin} does not implement the Backend protocol: missing {', '.join(missing)}",
        )
    return obj


def _load_entry_point(ep: EntryPoint) -> Backend | BrokenBackend:
    origin = f"entry point {ep.name} = {ep.value!r}"
    try:
        obj = ep.load()
    except Exception as exc:
        return BrokenBackend(
            ep.name,
            f"{origin} failed to load: {exc!r} (a backend's module must import without "
            "its array library and report a missing one through skip_reason())",
        )
    backend = _as_backend(ep.name, obj, origin)
    if not isinstance(backend, BrokenBackend) and backend.name != ep.name:
        # Two names for one backend would give two keys: `--backend` would take one, the
        # report, test ids and lists the other.
        return BrokenBackend(
            ep.name,
            f"{origin} is a backend named {backend.name!r}: register it under its name, "
            f"or name it {ep.name!r} (a backend's name is its key in reports, test ids and lists)",
        )
    return backend


def _entry_points() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "?"


def registered_backends() -> dict[str, Backend | BrokenBackend]:
    """Every backend registered under ``lookahead.backends``, by name, sorted.

    One broken plugin does not hide the others: it is returned as a
    `BrokenBackend` carrying the reason.
    """
    found: dict[str, Backend | BrokenBackend] = {}
    for name, eps in sorted(_entry_points().items()):
        if len(eps) > 1:
            owners = ", ".join(f"{_distribution(ep)} ({ep.value})" for ep in eps)
            found[name] = BrokenBackend(name, f"backend name {name!r} is registered twice: {owners}")
        else:
            found[name] = _load_entry_point(eps[0])
    return found


def expand_backend_names(names: Sequence[str]) -> list[str]:
    """``names`` with ``"all"`` replaced by every registered backend, each name once, in order."""
    expanded: list[str] = []
    for name in names:
        for one in (list(registered_backends()) if name == "all" else [name]):
            if one not in expanded:
                expanded.append(one)
    return expanded


def builtin_backend_names() -> list[str]:
    """Names registered by this project's own distribution (``lookahead-optimizer``)."""
    return sorted(
        name for name, eps in _entry_points().items()
        if any(_distribution(ep) == _OUR_DISTRIBUTION for ep in eps)
    )


def load_backend(spec: str) -> Backend | BrokenBackend:
    """A backend by registered name, or by ``module:attr`` for an unregistered one.

    ``module:attr`` may name a backend instance or a class with a no-argument
    constructor; the module is imported from the installed packages, the
    folders of `add_search_paths`, or the current directory. A backend that
    cannot be loaded is returned as a `BrokenBackend` named ``spec`` (a
    failure in every runner); one that loads is keyed by its own ``name``.

    Raises:
        ValueError: ``spec`` is neither a registered name nor ``module:attr``.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"backend must be a registered name or 'module:attr', got {spec!r}")
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            obj = _import_from_here(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            return BrokenBackend(spec, f"{spec!r} could not be imported: {exc!r}")
        return _as_backend(spec, obj, repr(spec))
    eps = _entry_points().get(spec)
    if not eps:
        known = ", ".join(sorted(_entry_points())) or "none"
        raise ValueError(
            f"backend must be a registered name ({known}), 'all', or 'module:attr', got {spec!r}"
        )
    if len(eps) > 1:
        return registered_backends()[spec]
    return _load_entry_point(eps[0])


def _import_from_here(module: str) -> Any:
    """``importlib.import_module``, with the current directory searched last.

    ``python -m`` puts the current directory first on ``sys.path``; the
    ``pytest`` script puts nothing there. Appending it makes ``module:attr``
    resolve from where the command runs in both, while an installed package
    of the same name still wins.
    """
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.append(here)
        importlib.invalidate_caches()
    return importlib.import_module(module)


def add_search_paths(folders: Sequence[str]) -> None:
    """Put ``folders`` first on ``sys.path`` (in the order given), for ``module:attr`` backends.

    Raises:
        ValueError: a folder does not exist.
    """
    folders = list(folders)
    if not folders:
        return
    for folder in reversed(folders):
        path = os.path.abspath(folder)
        if not os.path.isdir(path):
            raise ValueError(f"path must be an existing folder, got {folder!r}")
        if path not in sys.path:
            sys.path.insert(0, path)
    importlib.invalidate_caches()


def select_backends(specs: Sequence[str]) -> list[Backend | BrokenBackend]:
    """The backends of ``specs`` (names, ``"all"``, ``module:attr``), each once, in order.

    The same object named twice (an entry point and its ``module:attr``) is one backend.

    Raises:
        ValueError: a name is not registered (see `load_backend`), or two different
            backends have the same name: a name is their key in reports and lists.
    """
    chosen: dict[str, tuple[str, Backend | BrokenBackend]] = {}
    for spec in expand_backend_names(specs):
        backend = load_backend(spec)
        if backend.name in chosen:
            first_spec, first = chosen[backend.name]
            if first is backend:
                continue
            raise ValueError(
                f"two backends are named {backend.name!r}: {first_spec} and {spec}; a backend's "
                "name is its key in the report, the JSON and the lists, so each needs its own"
            )
        chosen[backend.name] = (spec, backend)
    return [backend for _, backend in chosen.values()]
