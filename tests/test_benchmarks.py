"""``python -m benchmarks`` (``make bench``) runs and reports what it measures.

A smoke test of the suite at its quick size on the transformer set, in a
subprocess (the suite pins its own process to one CPU and sets the thread
variables before the libraries load). No timing is asserted: only that every
backend's row is there, that the measurements the targets rest on come out
(bytes allocated at a sync, state bytes), and that the table and plot are
written.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import importlib.util

import pytest

pytest.importorskip("torch", reason="torch not installed")
pytest.importorskip("jax", reason="jax not installed")
pytest.importorskip("matplotlib", reason="matplotlib not installed")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--sets", "transformer",
         "--out", str(out / "perf.md"), "--png", str(out / "perf.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (out / "perf.md").read_text(), out / "perf.png"


def _row(text: str, library: str, backend: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0] == library and cells[1] == backend:
            return cells
    raise AssertionError(f"no row for {library} / {backend}")


def test_quick_suite_reports_every_backend_and_the_targets(quick_report):
    text, png = quick_report
    assert "#### Targets" in text
    assert "pinned to [" in text and "torch.get_num_threads() = 1" in text
    backends = [("PyTorch", "lookahead_torch"), ("NumPy", "lookahead_numpy"),
                ("PyTorch", "core on torch"), ("NumPy", "core on NumPy")]
    if importlib.util.find_spec("optax") is not None:
        backends.append(("JAX", "core traceable (jit)"))
    else:  # make test's environment: make bench adds optax, the JAX rows say why they are missing
        assert "(pip install jax optax)" in text
    for library, backend in backends:
        cells = _row(text, library, backend)
        # sync ms and efficiency are numbers with a [min–max] range
        assert re.fullmatch(r"[\d.]+ \[[\d.]+–[\d.]+\]", cells[2]), cells
        assert re.fullmatch(r"[\d.]+ \[[\d.]+–[\d.]+\]", cells[3]), cells
    torch_row = _row(text, "PyTorch", "lookahead_torch")
    assert torch_row[8] == "1.000"   # extra state: exactly one parameter copy
    assert torch_row[9] == "0 B"     # nothing allocated at a sync
    # the core allocates: its sync is the allocating reference (two parameter-sized arrays)
    assert _row(text, "PyTorch", "core on torch")[9].endswith("MB")
    assert re.search(r"\| PyTorch adapter: Python overhead per non-sync step ≤ 15 µs", text)
    assert png.stat().st_size > 10_000
