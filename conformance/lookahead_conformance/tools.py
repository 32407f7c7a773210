"""The tools the conformance kit needs beyond the library, checked before any check runs.

A plain ``pip install lookahead-optimizer`` brings the library and the kit's
code, but not its tools: hypothesis draws the cases of the
``eq01_closed_form`` check (and pytest runs the kit as tests). They come with
the ``conformance`` extra. Without them both runners stop before the first
check, with one line saying what to install and the exit status
`EXIT_MISSING_TOOLS`: a missing tool says nothing about a backend, so it must
never read as a failed check (exit status 1) or as a skipped backend.
"""

from __future__ import annotations

import importlib

__all__ = [
    "EXIT_MISSING_TOOLS",
    "INSTALL_HINT",
    "KIT_TOOLS",
    "MissingToolError",
    "is_kit_tool",
    "missing_tools_message",
    "require_tools",
]

KIT_TOOLS = ("hypothesis",)
"""What the checks import beyond the library's own dependencies. pytest is not
listed: only the pytest runner needs it, and there it is already running."""

INSTALL_HINT = "pip install 'lookahead-optimizer[conformance]'"

EXIT_MISSING_TOOLS = 69
"""Exit status of both runners when a tool is missing: ``EX_UNAVAILABLE`` of
``sysexits.h`` ("a support program does not exist"), outside the codes the
command line (0 to 2) and pytest (0 to 5) give to their own outcomes."""


class MissingToolError(ImportError):
    """The kit cannot run here: one of `KIT_TOOLS` does not import.

    Raised instead of reporting a result, because a missing tool is not a
    verdict on the backend.
    """


def missing_tools_message() -> str | None:
    """``None`` when every tool of `KIT_TOOLS` imports, else one line naming
    the missing ones and what to install."""
    problems = []
    for tool in KIT_TOOLS:
        try:
            importlib.import_module(tool)
        except ImportError as exc:  # not installed, or installed but broken
            problems.append(f"{tool} ({exc})")
    if not problems:
        return None
    return (f"lookahead_conformance cannot run its checks without {', '.join(problems)}: "
            f"{INSTALL_HINT}")


def require_tools() -> None:
    """Return when the kit can run here.

    Raises:
        MissingToolError: a tool of `KIT_TOOLS` does not import; the message
            says what to install.
    """
    message = missing_tools_message()
    if message is not None:
        raise MissingToolError(message)


def is_kit_tool(exc: ModuleNotFoundError) -> bool:
    """Whether ``exc`` is about one of `KIT_TOOLS` (or a module inside one)."""
    return (exc.name or "").partition(".")[0] in KIT_TOOLS
