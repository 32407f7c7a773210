"""Checkpoints written by version 0.1.0 load and train on exactly as 0.1.0 did.

The files in ``tests/fixtures/v0_1_0`` were written by 0.1.0's code (see its
``generate.py``): a checkpoint after 7 steps of each case, and where 0.1.0
went in 9 more steps after loading it. Here the current code loads the same
file into a fresh optimizer, takes the same 9 steps, and must end on the same
bits.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0_1_0"


def _generator():
    spec = importlib.util.spec_from_file_location("v0_1_0_generate", FIXTURES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


@pytest.mark.parametrize("name", gen.TORCH_CASES)
def test_torch_checkpoint_of_0_1_0_resumes_bit_exactly(name):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    params, opt, expected = gen.resume_torch(name)
    for p, want in zip(params, expected["params"]):
        assert torch.equal(p.detach(), want)
    slow = [s for group in opt.slow for s in group]
    assert len(slow) == len(expected["slow"])
    for s, want in zip(slow, expected["slow"]):
        assert s.dtype == want.dtype
        assert torch.equal(s, want)
    assert list(opt.counts) == expected["counts"]


def test_torch_rollback_counter_of_0_1_0_is_kept():
    torch = pytest.importorskip("torch")
    saved = torch.load(FIXTURES / "sgd_rollback.pt", weights_only=True)
    _, opt = gen.build_torch("sgd_rollback")
    opt.load_state_dict(saved["optimizer"])
    assert opt.rollbacks == 1


def test_torch_adaptive_last_alpha_of_0_1_0_is_kept():
    torch = pytest.importorskip("torch")
    saved = torch.load(FIXTURES / "sgd_adaptive.pt", weights_only=True)
    _, opt = gen.build_torch("sgd_adaptive")
    opt.load_state_dict(saved["optimizer"])
    want = [group["lookahead_last_alpha"] for group in saved["optimizer"]["param_groups"]]
    assert list(opt.last_alphas) == want
    assert want[0] is not None


@pytest.mark.parametrize("name", gen.NUMPY_CASES)
def test_numpy_checkpoint_of_0_1_0_resumes_bit_exactly(name):
    params, opt = gen.build_numpy(name)
    opt.load_state_dict(np.load(FIXTURES / f"{name}.npz"))
    for grads in gen.numpy_grads(name, gen.STEPS_AFTER, seed=2):
        opt.step(grads)
    expected = np.load(FIXTURES / f"{name}.expected.npz")
    for i, p in enumerate(params):
        np.testing.assert_array_equal(p, expected[f"params.{i}"], strict=True)
    for i, s in enumerate(opt.slow):
        np.testing.assert_array_equal(s, expected[f"slow.{i}"], strict=True)
    assert opt.count == int(expected["count"])
