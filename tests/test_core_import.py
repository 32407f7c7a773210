"""``import lookahead_core`` in a fresh interpreter: its submodules and its promise.

Each check runs in a subprocess, so that no module another test imported
(NumPy, torch, ``lookahead_core.traceable``) is already loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FRAMEWORKS = ("numpy", "torch", "jax", "cupy", "array_api_strict")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_submodules_are_attributes_of_the_package():
    """``lc.traceable`` and ``lc.theory`` work without a ``from`` import, like ``lc.sgd``."""
    out = _run(
        "import lookahead_core as lc\n"
        "print(lc.traceable.__name__, lc.theory.__name__)\n"
        "print(callable(lc.traceable.lookahead), callable(lc.theory.nqm_expected_loss))\n"
        "print('traceable' in dir(lc), 'traceable' in lc.__all__)\n"
    )
    assert out.split() == ["lookahead_core.traceable", "lookahead_core.theory",
                           "True", "True", "True", "True"]


def test_star_import_and_from_import_reach_the_same_modules():
    out = _run(
        "from lookahead_core import *\n"
        "from lookahead_core import traceable as t\n"
        "import lookahead_core.theory as th\n"
        "print(traceable is t, theory is th)\n"
    )
    assert out.split() == ["True", "True"]


def test_an_unknown_name_is_still_an_attribute_error():
    out = _run(
        "import lookahead_core as lc\n"
        "try:\n"
        "    lc.tracable\n"
        "except AttributeError as e:\n"
        "    print(e)\n"
    )
    assert out.strip() == "module 'lookahead_core' has no attribute 'tracable'"


def test_import_loads_no_array_framework():
    """The package's promise: importing it loads no array library (submodules load on use)."""
    out = _run(
        "import sys, lookahead_core as lc\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
        "lc.traceable\n"  # imports only array_api_compat, which loads no framework either
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
        "lc.theory\n"  # the analysis computes on NumPy
        "print('numpy' in sys.modules)\n"
    )
    assert out.splitlines() == ["[]", "[]", "True"]
