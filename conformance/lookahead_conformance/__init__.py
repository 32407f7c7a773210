"""lookahead_conformance: certify a Lookahead backend against eq. 0.1 and the reference.

A backend implements `lookahead_conformance.protocol.Backend` and registers
under the entry-point group ``lookahead.backends`` (or is named as
``module:attr``). Two runners share one set of checks
(`lookahead_conformance.checks`):

* ``pytest --pyargs lookahead_conformance --lookahead-backend=NAME``
* ``python -m lookahead_conformance [--backend NAME] [--json FILE]``

A backend's key in both is its `Backend.name`. A run is reproducible from
its seed and number of drawn examples, and `CHECKS_VERSION` says which
rules it applied.

Both need the kit's tools, installed by the ``conformance`` extra
(``pip install 'lookahead-optimizer[conformance]'``); without them they stop
before any check (`lookahead_conformance.tools`).
"""

from .checks import CHECKS, CHECKS_VERSION, CheckResult, Settings, run_check
from .protocol import Backend, InnerSpec, Runner, protocol_violations
from .registry import BrokenBackend, builtin_backend_names, load_backend, registered_backends
from .report import BackendReport, certify, format_report, report_json
from .tools import EXIT_MISSING_TOOLS, MissingToolError

__all__ = [
    "CHECKS",
    "CHECKS_VERSION",
    "Backend",
    "BackendReport",
    "BrokenBackend",
    "CheckResult",
    "EXIT_MISSING_TOOLS",
    "InnerSpec",
    "MissingToolError",
    "Runner",
    "Settings",
    "builtin_backend_names",
    "certify",
    "format_report",
    "load_backend",
    "protocol_violations",
    "registered_backends",
    "report_json",
    "run_check",
]
