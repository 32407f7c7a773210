"""Smoke test of experiments/demo.py and a gradient check of its Array API model.

The demo is a script, not a package, so it is loaded from its path.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest

DEMO_PATH = Path(__file__).resolve().parents[1] / "experiments" / "demo.py"


@pytest.fixture(scope="module")
def demo() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("lookahead_demo", DEMO_PATH)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is created
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_quick_run_writes_well_formed_outputs(demo: ModuleType, tmp_path: Path) -> None:
    payload = demo.main(
        ["--quick", "--libraries", "numpy", "--out", str(tmp_path), "--no-progress"]
    )

    results = json.loads((tmp_path / "results.json").read_text())
    assert results == json.loads(json.dumps(payload))
    assert set(results["optimizers"]) == {spec.key for spec in demo.OPTIMIZERS}
    settings = [r["name"] for r in results["config"]["lr_settings"]]
    expected = {
        (setting, spec.key, "numpy", seed)
        for setting in settings
        for spec in demo.OPTIMIZERS
        for seed in results["config"]["seeds"]
    }
    runs = {(r["lr_setting"], r["optimizer"], r["library"], r["seed"]) for r in results["runs"]}
    assert runs == expected
    for run in results["runs"]:
        assert 0.0 <= run["val_accuracy"] <= 1.0
        assert len(run["train_loss"]) <= results["config"]["epochs"]
        assert isinstance(run["diverged"], bool)
    for cell in results["summary"]:
        assert 0.0 <= cell["mean"] <= 1.0 and cell["std"] >= 0.0

    markdown = (tmp_path / "results.md").read_text()
    for spec in demo.OPTIMIZERS:
        assert spec.label in markdown
    assert "| numpy |" in markdown

    png = (tmp_path / "loss_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def _tiny_problem(
    rng: np.random.Generator,
) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    n_in, hidden, n_out, batch = 6, 5, 3, 4
    params = tuple(
        rng.standard_normal(shape)
        for shape in [(n_in, hidden), (hidden,), (hidden, n_out), (n_out,)]
    )
    x = rng.standard_normal((batch, n_in))
    y = np.eye(n_out)[rng.integers(0, n_out, size=batch)]
    return params, x, y


def test_model_gradient_matches_finite_differences(demo: ModuleType) -> None:
    params, x, y = _tiny_problem(np.random.default_rng(1234))
    _, grads = demo.loss_and_grads(params, x, y)
    h = 1e-6
    for index, (param, grad) in enumerate(zip(params, grads)):
        numeric = np.zeros_like(param)
        for position in np.ndindex(param.shape):
            shifted = [p.copy() for p in params]
            shifted[index][position] += h
            loss_plus = float(demo.loss_and_grads(shifted, x, y)[0])
            shifted[index][position] -= 2 * h
            loss_minus = float(demo.loss_and_grads(shifted, x, y)[0])
            numeric[position] = (loss_plus - loss_minus) / (2 * h)
        scale = np.linalg.norm(numeric) + np.linalg.norm(grad)
        relative = np.linalg.norm(numeric - grad) / scale
        assert grad.dtype == np.float64
        assert relative < 1e-6, f"parameter {index}: relative error {relative:.2e}"


def test_model_is_the_same_on_array_api_strict(demo: ModuleType) -> None:
    strict = pytest.importorskip("array_api_strict")
    params, x, y = _tiny_problem(np.random.default_rng(7))
    loss, grads = demo.loss_and_grads(params, x, y)
    loss_s, grads_s = demo.loss_and_grads(
        tuple(strict.asarray(p) for p in params), strict.asarray(x), strict.asarray(y)
    )
    assert math.isclose(float(loss_s), float(loss), rel_tol=1e-12)
    for g, g_s in zip(grads, grads_s):
        np.testing.assert_allclose(np.asarray(g_s), g, rtol=1e-12, atol=1e-15)


def test_divergence_is_reported_not_raised(demo: ModuleType) -> None:
    """An absurd learning rate overflows to inf/NaN: the run is marked, not crashed."""
    config = demo.Config(libraries=("numpy",), seeds=(0,), epochs=3, hidden=16)
    library = demo.load_library("numpy", config)
    data = demo.load_digits_split(config.train_size)
    demo.put_data(library, data)
    absurd = demo.OptimizerSpec(
        "sgd_momentum", "SGD + momentum 0.9", "sgd",
        lambda lr: demo.PlainOptimizer(demo.lc.sgd(lr=lr, momentum=0.9)),
    )
    rates = demo.LearningRates("absurd", sgd=1e30, adam=1.0)
    result = demo.train_run(library, absurd, rates, 0, config, data.x_train.shape[1])
    assert result.diverged and result.diverged_epoch == 1
    assert 0.0 <= result.val_accuracy <= 1.0
    json.dumps(demo.asdict(result), allow_nan=False)  # non-finite losses became None


def test_script_pins_one_blas_and_openmp_thread(demo: ModuleType, tmp_path: Path) -> None:
    """``make demo`` runs one thread per pool whatever the core count (set before NumPy loads).

    Without the pin, OpenBLAS and OpenMP start one thread per core (2 on the
    2-core reference machine), so on any machine with more than one core this
    fails if the variables are set too late or not at all.
    """
    env = {k: v for k, v in os.environ.items() if k not in demo.THREAD_VARIABLES}
    subprocess.run([sys.executable, str(DEMO_PATH), "--quick", "--libraries", "numpy",
                    "--out", str(tmp_path), "--no-progress"],
                   env=env, capture_output=True, text=True, timeout=600, check=True)
    platform = json.loads((tmp_path / "results.json").read_text())["platform"]
    assert platform["thread_variables"] == {v: "1" for v in demo.THREAD_VARIABLES}
    pools = platform["thread_pools"]
    assert any(pool["user_api"] == "blas" for pool in pools), pools  # NumPy's BLAS was seen
    assert all(pool["num_threads"] == 1 for pool in pools), pools
    assert platform["cpu"] in (tmp_path / "results.md").read_text()


def test_importing_the_demo_leaves_the_environment_alone() -> None:
    """Only the script pins threads: an importer's environment (this test process) is kept."""
    before = dict(os.environ)
    spec = importlib.util.spec_from_file_location("lookahead_demo_import_check", DEMO_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    assert dict(os.environ) == before
