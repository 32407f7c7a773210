"""Shared helpers of the ``test_torch_*`` files, and the tests that the helpers are right.

The second implementation every adapter trajectory is compared with is
`reference_run`: Algorithm 1 written directly in plain torch around a
``torch.optim`` optimizer (eager slow copy; after every k-th step
``slow.lerp_(p, α)`` then ``p.copy_(slow)``, one tensor at a time). It shares
no code with ``lookahead_torch``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed")

from lookahead_torch import Lookahead  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SHAPES = [(4, 3), (5,), (), (2, 3, 2)]

# name -> factory of the torch.optim inner optimizer over a list of params
INNER = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda p: torch.optim.Adam(p, lr=0.02),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.1),
}


class Problem:
    """A diagonal quadratic with seeded noise: the gradient depends on the current weights.

    ``grad_i = h_i ⊙ θ_i + noise_i[step]``, so a wrong fast weight at any step
    changes every later gradient.
    """

    def __init__(self, seed: int, steps: int, shapes: Sequence[tuple[int, ...]] = SHAPES,
                 dtype: torch.dtype = torch.float64) -> None:
        rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.theta0 = [rng.standard_normal(s) for s in shapes]
        self.curv = [rng.uniform(0.5, 2.0, s) for s in shapes]
        self.noise = [[0.3 * rng.standard_normal(s) for s in shapes] for _ in range(steps)]
        self.steps = steps

    def params(self, device: str = "cpu") -> list[torch.nn.Parameter]:
        return [torch.nn.Parameter(torch.tensor(t, dtype=self.dtype, device=device)) for t in self.theta0]

    def set_grads(self, params: Sequence[torch.Tensor], step: int) -> None:
        for p, h, n in zip(params, self.curv, self.noise[step]):
            hh = torch.tensor(h, dtype=p.dtype, device=p.device)
            p.grad = hh * p.detach() + torch.tensor(n, dtype=p.dtype, device=p.device)

    def grads_for(self, values: Sequence[Any], step: int, to: Callable[[np.ndarray], Any]) -> list[Any]:
        """The same gradients for arrays of another library (``to`` converts NumPy data)."""
        return [to(h) * v + to(n) for v, h, n in zip(values, self.curv, self.noise[step])]


def reference_run(make_inner: Callable, params: list[torch.Tensor], problem: Problem, k: int,
                  alpha: float, steps: int | None = None) -> list[torch.Tensor]:
    """Algorithm 1 in plain torch (test-only); returns the slow weights. Updates ``params``."""
    opt = make_inner(params)
    slow = [p.detach().clone() for p in params]  # φ₀ ← θ₀, eagerly
    for step in range(steps if steps is not None else problem.steps):
        problem.set_grads(params, step)
        opt.step()
        if (step + 1) % k == 0:
            with torch.no_grad():
                for p, s in zip(params, slow):
                    s.lerp_(p, alpha)  # φ ← φ + α(θ − φ)
                    p.copy_(s)  # θ ← φ
    return slow


def adapter_run(make_inner: Callable, params: list[torch.Tensor], problem: Problem, k: int,
                alpha: float, steps: int | None = None, **options: Any) -> Lookahead:
    """The same problem through ``lookahead_torch.Lookahead``; returns the optimizer."""
    opt = Lookahead(make_inner(params), k=k, alpha=alpha, **options)
    for step in range(steps if steps is not None else problem.steps):
        problem.set_grads(params, step)
        opt.step()
    return opt


def flat_slow(opt: Lookahead) -> list[torch.Tensor]:
    return [s for group in opt.slow for s in group]


def bits(t: torch.Tensor) -> bytes:
    """The raw bytes of ``t`` plus dtype and shape: equal bits means bit-identical."""
    t = t.detach().cpu().contiguous()
    raw = t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t
    return raw.numpy().tobytes() + repr((t.dtype, tuple(t.shape))).encode()


def assert_bit_identical(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert bits(a) == bits(e), f"tensor {i} differs:\n{a}\n{e}"


def model_rel_err(actual: Sequence[Any], expected: Sequence[Any], theta0: Sequence[np.ndarray]) -> float:
    """max |actual − expected| over all tensors / max(|expected|, |θ₀|) over all tensors."""
    def arr(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    scale = max([float(np.max(np.abs(arr(e)), initial=0.0)) for e in expected]
                + [float(np.max(np.abs(t), initial=0.0)) for t in theta0])
    diff = max(float(np.max(np.abs(arr(a) - arr(e)), initial=0.0)) for a, e in zip(actual, expected))
    return diff / scale


def _clone_tree(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_tree(v) for v in value)
    return copy.deepcopy(value)


def _tree_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and bits(a) == bits(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_tree_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_tree_equal(x, y) for x, y in zip(a, b))
    return a == b


def snapshot(opt: Lookahead) -> dict[str, Any]:
    """Everything observable about an optimizer and its parameters, deep-copied."""
    inner = opt.optimizer
    return {
        "params": [_clone_tree(p) for g in inner.param_groups for p in g["params"]],
        "slow": _clone_tree([list(g) for g in opt.slow]),
        "counts": opt.counts,
        "k": opt.k,
        "alpha": opt.alpha,
        "rollbacks": opt.rollbacks,
        "inner_state": _clone_tree({i: dict(inner.state[p]) for i, p in enumerate(
            p for g in inner.param_groups for p in g["params"]) if p in inner.state}),
        "groups": _clone_tree([{k: v for k, v in g.items() if k != "params"} for g in inner.param_groups]),
        **_outer_snapshot(opt),
    }


def _outer_snapshot(opt: Lookahead) -> dict[str, Any]:
    """The outer optimizer's state (by parameter position) and groups, if there is one."""
    outer = getattr(opt, "outer_optimizer", None)
    if outer is None:
        return {}
    slow = [s for g in outer.param_groups for s in g["params"]]
    return {
        "outer_state": _clone_tree({i: dict(outer.state[s]) for i, s in enumerate(slow) if s in outer.state}),
        "outer_groups": _clone_tree([{k: v for k, v in g.items() if k != "params"} for g in outer.param_groups]),
    }


def assert_unchanged(before: dict[str, Any], opt: Lookahead) -> None:
    after = snapshot(opt)
    for key in before:
        assert _tree_equal(before[key], after[key]), f"{key} changed"


# --- tests of the helpers ------------------------------------------------------------------


def test_reference_run_follows_the_paper_example():
    """θ ← θ + 1 per step (SGD, lr 1, gradient −1), k = 3, α = 0.5, six steps: θ = φ = 3.0."""

    class Constant(Problem):
        def set_grads(self, params, step):
            for p in params:
                p.grad = -torch.ones_like(p)

    problem = Constant(seed=0, steps=6, shapes=[(2,)])
    params = [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    slow = reference_run(lambda p: torch.optim.SGD(p, lr=1.0), params, problem, k=3, alpha=0.5)
    assert params[0].tolist() == [3.0, 3.0]
    assert slow[0].tolist() == [3.0, 3.0]


def test_snapshot_detects_a_change():
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = Lookahead(torch.optim.SGD(params, lr=0.1, momentum=0.9), k=2)
    before = snapshot(opt)
    assert_unchanged(before, opt)
    params[0].grad = torch.ones(3)
    opt.step()
    with pytest.raises(AssertionError, match="params changed"):
        assert_unchanged(before, opt)


def test_bits_tells_signed_zeros_and_dtypes_apart():
    assert bits(torch.tensor([0.0])) != bits(torch.tensor([-0.0]))
    assert bits(torch.tensor([1.0])) != bits(torch.tensor([1.0], dtype=torch.float64))
    assert bits(torch.tensor([1.0], dtype=torch.bfloat16)) == bits(torch.tensor([1.0], dtype=torch.bfloat16))
