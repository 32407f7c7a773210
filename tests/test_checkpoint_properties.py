"""Corrupted checkpoints, at random, against every adapter: refused cleanly or loaded whole.

Hypothesis takes a valid ``state_dict`` of a trained optimizer and corrupts
it at a random place: a key dropped or added (at the top level, in a group,
in a parameter's entry), a value replaced by one of another type, a tensor
or array of the wrong shape or dtype, a scalar out of range or not finite,
or another optimizer's whole dict. Each corrupted dict must give

- either a ``TypeError`` or ``ValueError``, with the optimizer bit-identical
  afterwards (parameters, slow weights, inner state, groups, counts), or
- a load that resumes bit-exactly: the loaded optimizer's own checkpoint,
  loaded into a second optimizer, takes the same next steps, bit for bit,
  and every weight stays finite.

With ``LOOKAHEAD_PROPERTY_RESULTS=file.json`` the tally of what each adapter
did is merged into that file at the end (`property_tally`); the Guarantees
page quotes it. The CuPy case needs a CUDA device and is skipped without one.
"""

from __future__ import annotations

import copy
import math
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from property_tally import merge_tally  # noqa: E402

import lookahead_core as lc  # noqa: E402
import lookahead_cupy  # noqa: E402
from lookahead_numpy import Lookahead as NumpyLookahead  # noqa: E402

EXAMPLES = int(os.environ.get("LOOKAHEAD_PROPERTY_EXAMPLES", "150"))
TALLY: dict[str, Counter] = {}
GPU_REASON = lookahead_cupy.skip_reason()


# --- the adapters under test ------------------------------------------------------------------


class NumpyCase:
    """lookahead_numpy around the core's Adam (two parameters), mid-cycle."""

    name = "numpy"

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.params = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
        self.opt = NumpyLookahead(self.params, lc.adam(lr=0.01), k=3, alpha=0.5)
        self.train(4, seed=1)

    def train(self, steps: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            self.opt.step([rng.standard_normal(p.shape) for p in self.params])

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict(include_params=True)

    def load(self, sd: Any) -> None:
        self.opt.load_state_dict(sd)

    def snapshot(self) -> Any:
        return {"params": [p.copy() for p in self.params], "sd": copy.deepcopy(self.opt.state_dict())}

    def foreign(self) -> dict[str, Any]:
        params = [np.zeros((3, 2)), np.zeros(4)]
        return NumpyLookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=3).state_dict()

    def weights(self) -> list[Any]:
        return [p.copy() for p in self.params] + [np.array(s) for s in self.opt.slow]


class CupyCase(NumpyCase):
    """lookahead_cupy around the core's Adam (two parameters), mid-cycle; needs a CUDA device."""

    name = "cupy"

    def __init__(self) -> None:
        import cupy

        self.cupy = cupy
        rng = np.random.default_rng(0)
        self.params = [cupy.asarray(rng.standard_normal((3, 2))), cupy.asarray(rng.standard_normal(4))]
        self.opt = lookahead_cupy.Lookahead(self.params, lc.adam(lr=0.01), k=3, alpha=0.5)
        self.train(4, seed=1)

    def train(self, steps: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            self.opt.step([self.cupy.asarray(rng.standard_normal(p.shape)) for p in self.params])

    def snapshot(self) -> Any:
        return {"params": [self.cupy.asnumpy(p) for p in self.params],
                "sd": copy.deepcopy(self.opt.state_dict())}

    def foreign(self) -> dict[str, Any]:
        params = [self.cupy.zeros((3, 2)), self.cupy.zeros(4)]
        return lookahead_cupy.Lookahead(params, lc.sgd(lr=0.1, momentum=0.9), k=3).state_dict()

    def weights(self) -> list[Any]:
        return [self.cupy.asnumpy(p) for p in self.params] + [self.cupy.asnumpy(s) for s in self.opt.slow]


class TorchCase:
    """lookahead_torch around torch.optim.Adam, two param groups, mid-cycle."""

    name = "torch"

    def __init__(self) -> None:
        import torch

        from lookahead_torch import Lookahead

        self.torch = torch
        torch.manual_seed(0)
        self.params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
        inner = torch.optim.Adam([{"params": self.params[:1]},
                                  {"params": self.params[1:], "lookahead_k": 2}], lr=0.01)
        self.opt = Lookahead(inner, k=3, alpha=0.5)
        self.train(4, seed=1)

    def train(self, steps: int, seed: int) -> None:
        generator = self.torch.Generator().manual_seed(seed)
        for _ in range(steps):
            for p in self.params:
                p.grad = self.torch.randn(p.shape, generator=generator)
            self.opt.step()

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.opt.state_dict())

    def load(self, sd: Any) -> None:
        self.opt.load_state_dict(sd)

    def snapshot(self) -> Any:
        from test_torch_support import snapshot

        return snapshot(self.opt)

    def foreign(self) -> dict[str, Any]:
        torch = self.torch
        params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(4))]
        from lookahead_torch import Lookahead

        other = Lookahead(torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1,
                                          momentum=0.9), k=3)
        for p in params:
            p.grad = torch.ones_like(p)
        other.step()
        return copy.deepcopy(other.state_dict())

    def weights(self) -> list[Any]:
        return [p.detach().numpy().copy() for p in self.params] + [
            s.detach().numpy().copy() for group in self.opt.slow for s in group]


class NumpyOuterCase(NumpyCase):
    """lookahead_numpy with an outer Nesterov optimizer (SNOO), after a sync: outer state held."""

    name = "numpy-outer"

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.params = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
        self.opt = NumpyLookahead(self.params, lc.adam(lr=0.01), k=3,
                                  outer=lc.sgd(lr=0.7, momentum=0.9, nesterov=True))
        self.train(4, seed=1)


class TorchOuterCase(TorchCase):
    """lookahead_torch with an outer torch.optim.SGD (Nesterov), two groups, after a sync."""

    name = "torch-outer"

    def __init__(self) -> None:
        import functools

        import torch

        from lookahead_torch import Lookahead

        self.torch = torch
        torch.manual_seed(0)
        self.params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
        inner = torch.optim.Adam([{"params": self.params[:1]},
                                  {"params": self.params[1:], "lookahead_k": 2}], lr=0.01)
        outer = functools.partial(torch.optim.SGD, lr=0.7, momentum=0.9, nesterov=True)
        self.opt = Lookahead(inner, k=3, outer=outer)
        self.train(4, seed=1)


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


CASES: dict[str, Callable[[], Any]] = {"numpy": NumpyCase, "cupy": CupyCase, "torch": TorchCase,
                                       "numpy-outer": NumpyOuterCase, "torch-outer": TorchOuterCase}
ADAPTERS = [
    pytest.param("numpy"),
    pytest.param("cupy", marks=pytest.mark.skipif(
        GPU_REASON is not None, reason=GPU_REASON or "a CUDA device is present")),
    pytest.param("torch", marks=pytest.mark.skipif(
        not _torch_available(), reason="torch not installed")),
    # With an outer optimizer its state is one more part of the checkpoint to corrupt.
    pytest.param("numpy-outer"),
    pytest.param("torch-outer", marks=pytest.mark.skipif(
        not _torch_available(), reason="torch not installed")),
]


# --- corruptions --------------------------------------------------------------------------------


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a node of a nested dict/list/tuple (the root excluded)."""
    out = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.append(prefix + (key,))
            out.extend(_paths(value, prefix + (key,)))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            out.append(prefix + (i,))
            out.extend(_paths(value, prefix + (i,)))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: Any, path: tuple, value: Any) -> Any:
    """``tree`` with the node at ``path`` replaced by ``value`` (tuples rebuilt; ``_DROP`` deletes)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, tuple):
        items = list(tree)
        items[head] = _set(items[head], rest, value)
        return tuple(items)
    if value is _DROP and not rest:
        del tree[head]
        return tree
    tree[head] = _set(tree[head], rest, value)
    return tree


_DROP = object()


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or type(value).__name__ == "Tensor"


def _replacements(value: Any) -> list[Any]:
    """Values of another type, shape, dtype or range than ``value``."""
    out: list[Any] = ["x", None, [1, 2], -1, 1e300, math.nan, math.inf, True]
    if _is_array(value):
        arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        wrap = (lambda a: type(value)(a)) if not isinstance(value, np.ndarray) else (lambda a: a)
        try:
            import torch

            if isinstance(value, torch.Tensor):
                wrap = torch.as_tensor
        except ImportError:
            pass
        out += [
            wrap(np.zeros(arr.shape + (2,), dtype=arr.dtype)),          # another shape
            wrap(arr.reshape(-1)[:-1].copy()) if arr.size > 1 else wrap(np.zeros(3)),
            wrap(arr.astype(np.int64)),                                  # another dtype
            wrap(arr.astype(np.float32) if arr.dtype != np.float32 else arr.astype(np.float64)),
            wrap(np.full_like(arr, -1.0) if arr.dtype.kind == "f" else arr),  # out of range
            wrap(np.full_like(arr, np.nan) if arr.dtype.kind == "f" else arr),
        ]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out += [-value - 1, value * 1000 + 7, float(value) + 0.5]
    return out


@st.composite
def corruptions(draw: Any, sd: dict[str, Any], foreign: dict[str, Any]) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["drop", "extra", "replace", "foreign"]))
    if kind == "foreign":
        return "another optimizer's checkpoint", copy.deepcopy(foreign)
    sd = copy.deepcopy(sd)
    paths = [p for p in _paths(sd) if not (isinstance(_get(sd, p[:-1]) if p[:-1] else sd, tuple))]
    if kind == "extra":
        dicts = [()] + [p for p in _paths(sd) if isinstance(_get(sd, p), dict)]
        where = draw(st.sampled_from(dicts))
        key = draw(st.sampled_from(["bogus", 99, "lookahead_extra"]))
        _get(sd, where)[key] = draw(st.sampled_from([1, "x", None]))
        return f"an extra key {key!r} at {where or 'the top'}", sd
    path = draw(st.sampled_from(paths))
    if kind == "drop":
        parent = _get(sd, path[:-1])
        if isinstance(parent, list):
            parent.pop(path[-1])
        else:
            del parent[path[-1]]
        return f"{path} dropped", sd
    value = _get(sd, path)
    replacement = draw(st.sampled_from(_replacements(value)))
    return f"{path} replaced by a {type(replacement).__name__}", _set(sd, path, replacement)


def _equal(a: Any, b: Any) -> bool:
    if _is_array(a) or _is_array(b):
        if not (_is_array(a) and _is_array(b)):
            return False
        a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a)
        b = np.asarray(b.detach().cpu() if hasattr(b, "detach") else b)
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_corrupted_checkpoint_is_refused_cleanly_or_loads_whole(adapter):
    case = CASES[adapter]()
    good = case.state_dict()
    foreign = case.foreign()
    tally = TALLY.setdefault(adapter, Counter())

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(corruptions(good, foreign))
    def check(corruption: tuple[str, Any]) -> None:
        label, bad = corruption
        target = CASES[adapter]()
        before = target.snapshot()
        try:
            target.load(bad)
        except (TypeError, ValueError):
            assert _equal(target.snapshot(), before), f"{label}: refused, but the optimizer changed"
            tally["refused, unchanged"] += 1
            return
        # Accepted: it must resume bit-exactly from what it now holds. (Non-finite slow
        # weights load without nonfinite='rollback', as documented: bits are compared.)
        twin = CASES[adapter]()
        twin.load(target.state_dict())
        target.train(3, seed=7)
        twin.train(3, seed=7)
        assert _equal(target.weights(), twin.weights()), f"{label}: loaded but does not resume exactly"
        tally["loaded, resumes exactly"] += 1

    check()
    assert sum(tally.values()) >= EXAMPLES // 2


def teardown_module() -> None:
    merge_tally("corrupted checkpoints", TALLY)
