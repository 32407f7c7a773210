"""``python -m lookahead_conformance``: certify backends and print the backend × check report.

Exit status: 0 when nothing failed (skipped backends and n/a checks are not
failures), 1 when any check failed or a backend could not be loaded, 2 on a
usage error, 69 (`lookahead_conformance.tools.EXIT_MISSING_TOOLS`) when the
kit's tools are not installed: then no check runs, and one line on stderr
says what to install.
"""

from __future__ import annotations

import argparse
import json
import sys

from .checks import CHECKS
from .registry import expand_backend_names, registered_backends
from .report import certify, format_report, report_json
from .tools import EXIT_MISSING_TOOLS, INSTALL_HINT, missing_tools_message

EXIT_STATUSES = f"""\
exit status:
  0   nothing failed (skipped backends and n/a checks are not failures)
  1   a check failed or a backend could not be loaded
  2   usage error
  {EXIT_MISSING_TOOLS}  the kit's tools are missing; no check ran: {INSTALL_HINT}
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lookahead_conformance",
        description="Certify Lookahead backends against eq. 0.1 and the reference implementation.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the table's lines
    )
    parser.add_argument(
        "--backend", action="append", default=[], metavar="NAME",
        help="a registered name, 'all' (the default) or 'module:attr'; repeatable",
    )
    parser.add_argument(
        "--check", action="append", default=[], metavar="CHECK", choices=list(CHECKS),
        help="run only this check (repeatable): " + ", ".join(CHECKS),
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    parser.add_argument("--list", action="store_true",
                        help="list the registered backends and the checks, then exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for name, backend in registered_backends().items():
            print(f"backend  {name}: {backend!r}")
        for check in CHECKS.values():
            print(f"check    {check.name}: {check.summary}")
        return 0
    missing = missing_tools_message()
    if missing is not None:  # before any check: a missing tool is no verdict on a backend
        print(missing, file=sys.stderr)
        return EXIT_MISSING_TOOLS
    names = expand_backend_names(args.backend or ["all"])
    checks = args.check or None
    try:
        reports = [certify(name, checks) for name in names]
    except ValueError as exc:
        parser.error(str(exc))
    print(format_report(reports, checks))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report_json(reports, checks), fh, indent=2)
            fh.write("\n")
    return 1 if any(r.failed for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
