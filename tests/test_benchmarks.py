"""``python -m benchmarks`` (``make bench``) runs and reports what it measures.

A smoke test of the suite at its quick size on the transformer set, in a
subprocess (the suite pins its own process to one CPU and sets the thread
variables before the libraries load). No timing is asserted: only that every
backend's row is there, that the measurements the targets rest on come out
(bytes allocated at a sync, state bytes), that the table and plot are
written, and that the console carries no profiler chatter.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import importlib.util

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> tuple[str, Path, str]:
    """The Markdown, the figure's path, and everything printed (stdout, then stderr)."""
    # The suite needs torch (its PyTorch rows) and matplotlib (the figure); JAX is optional
    # (its rows say why they are missing); tests that do not run the suite need none of them.
    pytest.importorskip("torch", reason="torch not installed")
    pytest.importorskip("matplotlib", reason="matplotlib not installed")
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--sets", "transformer",
         "--out", str(out / "perf.md"), "--png", str(out / "perf.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (out / "perf.md").read_text(), out / "perf.png", proc.stdout + proc.stderr


# kineto's start/stop markers, as torch 2.13 prints them ("USDT:<date> <time> <pid>:<tid>
# SyncActivityProfilerHandler.cpp:52] profiler_start"); matched loosely so that a
# reworded marker from the same source is caught too.
KINETO_CHATTER = re.compile(r"USDT:|SyncActivityProfilerHandler|\] profiler_(start|stop)")


def test_quick_suite_prints_no_profiler_markers(quick_report):
    """The allocation counts run PyTorch's profiler once per variant; its markers stay off the console."""
    *_, console = quick_report
    assert "torch syncs ..." in console  # the progress lines are there, so stderr was captured
    chatter = [line for line in console.splitlines() if KINETO_CHATTER.search(line)]
    assert chatter == []


MARKER_FILTER_SCRIPT = """
import os, sys
from benchmarks.memory import profiler_markers_filtered
marker = b"USDT:2026-01-02 10:11:12 123:123 SyncActivityProfilerHandler.cpp:52] profiler_start\\n"
try:
    with profiler_markers_filtered():
        os.write(2, marker + b"ERROR: a real failure\\n" + marker.replace(b"start", b"stop"))
        print("from Python", file=sys.stderr)
        raise RuntimeError("boom")
except RuntimeError:
    pass
os.write(2, marker)
"""


def test_profiler_marker_filter_keeps_every_other_line():
    """Markers written at the file descriptor (as C++ does) are dropped, the rest is kept in order.

    An error line and Python's own stderr come through, also when the block raises;
    after the block, file descriptor 2 is the original again and nothing is filtered.
    """
    proc = subprocess.run([sys.executable, "-c", MARKER_FILTER_SCRIPT], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    marker = "USDT:2026-01-02 10:11:12 123:123 SyncActivityProfilerHandler.cpp:52] profiler_start\n"
    assert proc.stderr == "ERROR: a real failure\nfrom Python\n" + marker


def _row(text: str, library: str, backend: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0] == library and cells[1] == backend:
            return cells
    raise AssertionError(f"no row for {library} / {backend}")


def test_quick_suite_reports_every_backend_and_the_targets(quick_report):
    text, png, _ = quick_report
    assert "#### Targets" in text
    assert "pinned to [" in text and "torch.get_num_threads() = 1" in text
    backends = [("PyTorch", "lookahead_torch"), ("NumPy", "lookahead_numpy"),
                ("PyTorch", "core on torch"), ("NumPy", "core on NumPy")]
    if all(importlib.util.find_spec(name) is not None for name in ("jax", "optax")):
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
