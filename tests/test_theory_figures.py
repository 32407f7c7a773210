"""Smoke test of experiments/theory_figures.py (``make figures``) in its quick mode.

The script is not a package, so it is loaded from its path. The agreement it
reports in quick mode (500 chains) is loose; the real comparisons between
simulation and theory are in test_theory_simulation.py.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "theory_figures.py"


def test_quick_run_writes_the_four_figures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("lookahead_theory_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    results = module.main(tmp_path, quick=True)

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["theory_nqm_loss.png", "theory_outer.png", "theory_trajectories.png",
                     "theory_variance_ratio.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(math.isfinite(v) for v in results.values())
    # 500 chains: a relative standard deviation of sqrt(2/500) = 6 %; a wrong
    # formula (a factor γ, α or Σ) would be off by far more than 50 %
    errors = [v for k, v in results.items() if "relative error" in k]
    assert len(errors) == 5 and max(errors) < 0.5
    # Figure 1 style, noisy gradients: Lookahead's slow weights end lower than SGD
    assert results["2-D quadratic (noisy): final loss SGD / slow weights"] > 1.0
