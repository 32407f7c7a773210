"""lookahead_conformance: certify a Lookahead backend against eq. 0.1 and the reference.

Two runners share one set of checks (`lookahead_conformance.checks`):

* ``pytest --pyargs lookahead_conformance --lookahead-backend=NAME``
* ``python -m lookahead_conformance [--backend NAME] [--json FILE]``

A backend implements `lookahead_conformance.backends.Backend` and is
registered under the entry-point group ``lookahead.backends``.
"""

from .backends import Backend, InnerSpec, Runner, load_backend, registered_backends
from .checks import CHECKS, CheckResult, run_check

__all__ = [
    "CHECKS",
    "Backend",
    "CheckResult",
    "InnerSpec",
    "Runner",
    "load_backend",
    "registered_backends",
    "run_check",
]
