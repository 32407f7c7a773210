"""``python -m lookahead_conformance``: certify backends and print the backend × check report.

Exit status: 0 when nothing failed (skipped backends, n/a checks, listed
skips and expected failures are not failures), 1 when any check failed, a
check on the xfail list passed, or a backend could not be loaded, 2 on a
usage error (a line of a list that matches no backend and check among them,
a kit whose checks version is not the one required), 69
(`lookahead_conformance.tools.EXIT_MISSING_TOOLS`) when the kit's tools are
not installed: then no check runs, and one line on stderr says what to
install.
"""

from __future__ import annotations

import argparse
import json
import sys

from .checks import CHECKS, CHECKS_VERSION, DEFAULT_MAX_EXAMPLES, DEFAULT_SEED, make_settings
from .registry import add_search_paths, registered_backends, select_backends
from .report import certify, format_report, read_list, report_json, unmatched_entries
from .tools import EXIT_MISSING_TOOLS, INSTALL_HINT, missing_tools_message

EXIT_STATUSES = f"""\
exit status:
  0   nothing failed (skipped backends and n/a checks are not failures)
  1   a check failed (or passed against --xfail), or a backend could not be loaded
  2   usage error, a list line matching no backend and check, another checks version
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
        help="a registered name, 'all' (the default) or 'module:attr' (imported from the "
             "installed packages, --path, or the current directory); repeatable",
    )
    parser.add_argument(
        "--check", action="append", default=[], metavar="CHECK", choices=list(CHECKS),
        help="run only this check (repeatable): " + ", ".join(CHECKS),
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    parser.add_argument("--list", action="store_true",
                        help="list the registered backends and the checks, then exit")
    parser.add_argument("--path", action="append", default=[], metavar="DIR",
                        help="search DIR first for the module of a 'module:attr' backend; repeatable")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="N",
                        help=f"seed of every drawn case, in [0, 2**32) (default {DEFAULT_SEED}: "
                             "the kit's fixed cases)")
    parser.add_argument("--max-examples", type=int, default=DEFAULT_MAX_EXAMPLES, metavar="N",
                        help="eq. 0.1 cases drawn by hypothesis beyond the scripted ones "
                             f"(default {DEFAULT_MAX_EXAMPLES})")
    parser.add_argument("--require-checks-version", type=int, metavar="N",
                        help="stop with status 2 unless the kit's checks are version N "
                             f"(this kit: {CHECKS_VERSION})")
    parser.add_argument("--xfail", metavar="FILE",
                        help="known deviations, one 'backend::check' per line ('#' comments): "
                             "reported 'xfail'; one that passes fails the run")
    parser.add_argument("--skip", metavar="FILE",
                        help="checks not to run, one 'backend::check' per line; the comment "
                             "on the line is the reason")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        add_search_paths(args.path)
        settings = make_settings(args.seed, args.max_examples)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.require_checks_version is not None and args.require_checks_version != CHECKS_VERSION:
        parser.error(f"--require-checks-version {args.require_checks_version}: this kit runs "
                     f"checks version {CHECKS_VERSION} (see the table of check versions on the "
                     "Certify page; install the kit that runs the version you pinned, or pin this one)")
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
    checks = args.check or None
    try:
        backends = select_backends(args.backend or ["all"])
        skip = read_list(args.skip) if args.skip else []
        xfail = read_list(args.xfail) if args.xfail else []
    except ValueError as exc:
        parser.error(str(exc))
    stale = unmatched_entries(skip + xfail, [b.name for b in backends])
    if stale:
        parser.error("\n".join(stale))
    reports = [certify(backend, checks, seed=settings.seed, max_examples=settings.max_examples,
                       skip=skip, xfail=xfail)
               for backend in backends]
    print(format_report(reports, checks))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report_json(reports, checks), fh, indent=2)
            fh.write("\n")
    return 1 if any(r.failed for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
