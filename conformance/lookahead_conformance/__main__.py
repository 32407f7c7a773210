"""``python -m lookahead_conformance``: a backend × check table; exit 1 on any failure."""

from __future__ import annotations

import argparse
import json
import math
import sys

from .backends import load_backend, registered_backends
from .checks import CHECKS, CheckResult, run_check


def _cell(result: CheckResult) -> str:
    if not result.passed:
        return "FAIL"
    return "pass" if result.worst_eps == 0 else f"pass ({result.worst_eps:.1f} eps)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lookahead_conformance", description=__doc__)
    parser.add_argument("--backend", action="append", default=[],
                        help="registered name, 'all' (default) or 'module:attr'; repeatable")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    names = args.backend or ["all"]
    if "all" in names:
        names = sorted(registered_backends())

    rows: dict[str, dict[str, CheckResult] | str] = {}
    for name in names:
        backend = load_backend(name)
        reason = backend.skip_reason()
        rows[name] = reason if reason else {check: run_check(check, backend) for check in CHECKS}

    print("| backend | " + " | ".join(CHECKS) + " |")
    print("|---" * (len(CHECKS) + 1) + "|")
    failures = []
    for name, results in rows.items():
        if isinstance(results, str):
            print(f"| {name} | " + " | ".join(["skipped"] * len(CHECKS)) + f" |  ({results})")
            continue
        print(f"| {name} | " + " | ".join(_cell(r) for r in results.values()) + " |")
        failures += [f"{name}::{r.name}: {r.detail}" for r in results.values() if not r.passed]
    for line in failures:
        print("FAILED", line)

    if args.json:
        payload = {
            name: results if isinstance(results, str) else {
                r.name: {"passed": r.passed,
                         "worst_eps": None if math.isnan(r.worst_eps) else r.worst_eps,
                         "detail": r.detail}
                for r in results.values()
            }
            for name, results in rows.items()
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
