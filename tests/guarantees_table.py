"""The table of the Guarantees page: each class of input, what each adapter does with it.

`ROWS` lists the classes of input. Each `Row` has one function that runs its
case against an adapter (a `Subject`: the core, NumPy, CuPy or PyTorch, each
around Adam, k = 3, α = 0.5, one step into the cycle) and says what happened,
in the words of the table; and the outcome the page claims for each adapter.
``tests/test_guarantees.py`` runs every case, checks it against the claim,
renders the table (`render`) and compares it with the page. An outcome is
only ever one of the phrases below, and a refusal counts only if it is a
``TypeError`` or ``ValueError`` whose message names the argument or entry
and nothing observable changed.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from property_tally import host, same

import lookahead_core as lc

ADAPTERS = ("core", "numpy", "cupy", "torch")
TITLES = {"core": "core", "numpy": "NumPy", "cupy": "CuPy", "torch": "PyTorch"}
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0_1_0"

# The outcomes, as the table writes them.
REFUSED = "refused, nothing changed"  # a TypeError/ValueError naming it; the page says so
SPREADS = "the next sync spreads it into the slow weights"
ROLLED_BACK = "rolled back at the next sync"
KEPT_AS_IS = "loads as it is (a faithful copy)"
KEPT_SPREADS = "loads as it is; the next sync spreads it"
USED_SPREADS = "used as it is; the next sync spreads it"
NOT_LOOKED_AT = "not looked at: the sync goes ahead, the moment stays inf"
RESUMES_0_1_0 = "loads; resumes as 0.1.0 did, bit for bit"
CAST = "cast to the parameter's dtype, as torch.optim does; resumes bit-exactly"
TORCH_EXTRA = ("at the top level: " + REFUSED + "; in a group or a parameter's entry: kept, "
               "as torch.optim does; resumes bit-exactly")
PURE = "accepted: the core writes nothing in place"
NA_GRAD = "n/a: the gradients are `p.grad`, whose shape and dtype torch checks on assignment"
NA_ROLLBACK = "n/a: no `nonfinite` option"
NA_NAMEDTUPLE = "n/a: the state is a NamedTuple"
NA_FORMAT = "n/a: no checkpoint format (the caller keeps the state)"
NA_GROUPS = "n/a: no param groups"

SHAPES = ((3, 2), (4,))


def names(message: str, name: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(name)}(?!\w)", message) is not None


def initial_values() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape) for shape in SHAPES]


def gradients(step: int, dtype: Any) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]


# --- the adapters, behind one interface -------------------------------------------------------


class Subject:
    """One optimizer around Adam (k = 3, α = 0.5) over two parameters, one step into its cycle.

    ``dtype`` is the parameters' dtype; ``grads`` (NumPy arrays) are
    converted to the adapter's arrays. Host views (`params`, `slow`,
    `moments`) are NumPy copies.
    """

    adapter: str
    rollback = True  # has nonfinite="rollback"

    def __init__(self, nonfinite: str | None = None, dtype: Any = np.float64) -> None:
        self.dtype = dtype
        self.steps = 0
        self.build(nonfinite)
        self.step()

    def step(self, grads: list[np.ndarray] | None = None) -> None:
        self.apply(gradients(self.steps, self.dtype) if grads is None else grads)
        self.steps += 1

    def to_sync(self, grads: list[np.ndarray] | None = None) -> None:
        """Step until the cycle's sync has run; ``grads`` go to the first of these steps."""
        self.step(grads)
        while self.count() != 0:
            self.step()

    # Implemented by each adapter.
    def build(self, nonfinite: str | None) -> None: ...
    def apply(self, grads: list[np.ndarray]) -> None: ...
    def count(self) -> int: ...
    def params(self) -> list[np.ndarray]: ...
    def slow(self) -> list[np.ndarray]: ...
    def moments(self) -> list[np.ndarray]: ...
    def snapshot(self) -> Any: ...


class CoreSubject(Subject):
    adapter = "core"
    rollback = "nonfinite" in inspect.signature(lc.lookahead).parameters  # False: no such option

    def build(self, nonfinite: str | None) -> None:
        assert nonfinite is None
        self.la = lc.lookahead(lc.adam(lr=0.01), k=3, alpha=0.5)
        self.values = tuple(v.astype(self.dtype) for v in initial_values())
        self.state = self.la.init(self.values)

    def apply(self, grads: list[np.ndarray]) -> None:
        self.values, self.state = self.la.step(self.values, grads, self.state)

    def count(self) -> int:
        return self.state.count

    def params(self) -> list[np.ndarray]:
        return host(list(self.values))

    def slow(self) -> list[np.ndarray]:
        return host(list(self.state.slow))

    def moments(self) -> list[np.ndarray]:
        return host(list(self.state.inner.exp_avg) + list(self.state.inner.exp_avg_sq))

    def snapshot(self) -> Any:
        return host({"params": self.values, "state": self.state})


class InPlaceSubject(Subject):
    """The NumPy adapter (`CupySubject`: the CuPy one, another `lib` and class)."""

    adapter = "numpy"

    def lib(self) -> Any:
        return np

    def optimizer_class(self) -> Any:
        from lookahead_numpy import Lookahead

        return Lookahead

    def array(self, values: np.ndarray) -> Any:
        return self.lib().asarray(np.array(values, copy=True))

    def build(self, nonfinite: str | None, inner: Any = None) -> None:
        self.arrays = [self.array(v.astype(self.dtype)) for v in initial_values()]
        self.opt = self.optimizer_class()(self.arrays, inner or lc.adam(lr=0.01), k=3, alpha=0.5,
                                          nonfinite=nonfinite)

    def apply(self, grads: list[np.ndarray]) -> None:
        self.opt.step([self.array(g) for g in grads])

    def count(self) -> int:
        return self.opt.count

    def params(self) -> list[np.ndarray]:
        return host(list(self.arrays))

    def slow(self) -> list[np.ndarray]:
        return host(list(self.opt.slow))

    def moments(self) -> list[np.ndarray]:
        inner = self.opt.inner_state
        return host(list(inner.exp_avg) + list(inner.exp_avg_sq))

    def snapshot(self) -> Any:
        return host({"params": self.arrays, "sd": self.opt.state_dict(include_params=True),
                     "rollbacks": self.opt.rollbacks})

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict(include_params=True)

    def load(self, sd: Any) -> None:
        self.opt.load_state_dict(sd)

    def foreign(self) -> dict[str, Any]:
        other = type(self).__new__(type(self))
        other.dtype = self.dtype
        other.build(None, inner=lc.sgd(lr=0.1, momentum=0.9))
        return other.opt.state_dict()

    # Where each kind of corruption goes in the flat checkpoint.
    def corrupt(self, sd: dict[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
        """Corrupted copies of ``sd``: ``[(the name the refusal must give, the copy)]``."""
        def edited(**changes: Any) -> dict[str, Any]:
            out = copy.deepcopy(sd)
            for key, value in changes.items():
                key = key.replace("__", ".")
                if value is _DROP:
                    del out[key]
                else:
                    out[key] = value
            return out

        slow = sd["slow.0"]
        return {
            "missing": [("slow.0", edited(slow__0=_DROP)), ("count", edited(count=_DROP))],
            "type": [("slow.0", edited(slow__0="x")), ("count", edited(count="1")),
                     ("k", edited(k=3.0))],
            "shape": [("slow.0", edited(slow__0=np.zeros(slow.shape + (1,), slow.dtype))),
                      ("inner.exp_avg.1", edited(inner__exp_avg__1=np.zeros(5, slow.dtype)))],
            "dtype": [("slow.0", edited(slow__0=slow.astype(np.float32))),
                      ("inner.exp_avg_sq.0",
                       edited(inner__exp_avg_sq__0=sd["inner.exp_avg_sq.0"].astype(np.float32)))],
            "range": [("k", edited(k=0)), ("alpha", edited(alpha=1.5)), ("count", edited(count=7)),
                      ("inner.step", edited(inner__step=-1)),
                      ("inner.exp_avg_sq.0", edited(inner__exp_avg_sq__0=-sd["inner.exp_avg_sq.0"]))],
        }[kind]

    def extra(self, sd: dict[str, Any]) -> str:
        out = copy.deepcopy(sd)
        out["bogus"] = 1
        return REFUSED if refusal(self, lambda: self.load(out), "bogus") == REFUSED else "loads"

    def poison_slow(self, sd: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(sd)
        out["slow.0"] = out["slow.0"].copy()
        out["slow.0"][0, 0] = np.nan
        return out

    def poison_moment(self, sd: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(sd)
        out["inner.exp_avg_sq.0"] = out["inner.exp_avg_sq.0"].copy()
        out["inner.exp_avg_sq.0"][0, 0] = np.inf
        return out

    @property
    def rollbacks(self) -> int:
        return self.opt.rollbacks

    def resume_0_1_0(self) -> str:
        gen = _fixture_generator()
        name = "numpy_sgd_momentum"
        params, _ = gen.build_numpy(name)
        self.arrays = [self.array(p) for p in params]
        self.opt = self.optimizer_class()(self.arrays, lc.sgd(lr=0.1, momentum=0.9), k=5,
                                          alpha=0.5)
        self.load(dict(np.load(FIXTURES / f"{name}.npz")))
        for grads in gen.numpy_grads(name, gen.STEPS_AFTER, seed=2):
            self.opt.step([self.array(g) for g in grads])
        expected = np.load(FIXTURES / f"{name}.expected.npz")
        want = [expected[f"params.{i}"] for i in range(2)] + [expected[f"slow.{i}"] for i in range(2)]
        return RESUMES_0_1_0 if same(self.params() + self.slow(), want) else "resumes differently"


class CupySubject(InPlaceSubject):
    adapter = "cupy"

    def lib(self) -> Any:
        import cupy

        return cupy

    def optimizer_class(self) -> Any:
        from lookahead_cupy import Lookahead

        return Lookahead


class TorchSubject(Subject):
    adapter = "torch"

    def build(self, nonfinite: str | None, inner: Callable[[list[Any]], Any] | None = None) -> None:
        import torch

        from lookahead_torch import Lookahead

        self.torch = torch
        dtype = {np.float64: torch.float64, np.float32: torch.float32}[self.dtype]
        self.tensors = [torch.nn.Parameter(torch.tensor(v, dtype=dtype)) for v in initial_values()]
        make = inner or (lambda p: torch.optim.Adam(p, lr=0.01))
        self.opt = Lookahead(make(self.tensors), k=3, alpha=0.5, nonfinite=nonfinite)

    def apply(self, grads: list[np.ndarray]) -> None:
        for p, g in zip(self.tensors, grads):
            p.grad = self.torch.tensor(g, dtype=p.dtype)
        self.opt.step()

    def count(self) -> int:
        return self.opt.counts[0]

    def params(self) -> list[np.ndarray]:
        return host(list(self.tensors))

    def slow(self) -> list[np.ndarray]:
        return host([s for group in self.opt.slow for s in group])

    def moments(self) -> list[np.ndarray]:
        states = [self.opt.state[p] for p in self.tensors]
        return host([s["exp_avg"] for s in states if s] + [s["exp_avg_sq"] for s in states if s])

    def snapshot(self) -> Any:
        from test_torch_support import snapshot

        return host(snapshot(self.opt))

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.opt.state_dict())

    def load(self, sd: Any) -> None:
        self.opt.load_state_dict(sd)

    def foreign(self) -> dict[str, Any]:
        other = type(self).__new__(type(self))
        other.dtype = self.dtype
        other.build(None, inner=lambda p: other.torch.optim.SGD(p, lr=0.1, momentum=0.9))
        other.steps = 0
        other.step()
        return copy.deepcopy(other.opt.state_dict())

    def corrupt(self, sd: dict[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
        torch = self.torch

        def edited(where: Callable[[dict], dict], key: str, value: Any) -> dict[str, Any]:
            out = copy.deepcopy(sd)
            if value is _DROP:
                del where(out)[key]
            else:
                where(out)[key] = value
            return out

        state = lambda sd: sd["state"][0]  # noqa: E731
        group = lambda sd: sd["param_groups"][0]  # noqa: E731
        slow = sd["state"][0]["lookahead_slow"]
        return {
            "missing": [("lookahead_slow", edited(state, "lookahead_slow", _DROP)),
                        ("lookahead_count", edited(group, "lookahead_count", _DROP)),
                        ("lr", edited(group, "lr", _DROP)),
                        ("state", edited(lambda s: s, "state", _DROP))],
            "type": [("lookahead_slow", edited(state, "lookahead_slow", "x")),
                     ("lr", edited(group, "lr", "x")),
                     ("lookahead_count", edited(group, "lookahead_count", "1"))],
            "shape": [("lookahead_slow", edited(state, "lookahead_slow", torch.zeros(5))),
                      ("exp_avg", edited(state, "exp_avg", torch.zeros(5, dtype=slow.dtype)))],
            "range": [("lookahead_k", edited(group, "lookahead_k", 0)),
                      ("lookahead_alpha", edited(group, "lookahead_alpha", 1.5)),
                      ("lookahead_count", edited(group, "lookahead_count", 7)),
                      ("step", edited(state, "step", torch.tensor(-1.0))),
                      ("exp_avg_sq", edited(state, "exp_avg_sq", -sd["state"][0]["exp_avg_sq"]))],
        }[kind]

    def other_dtype(self, sd: dict[str, Any]) -> list[dict[str, Any]]:
        """The slow weights and a moment in float64 (the parameters are float32): exact casts back."""
        out = []
        for key in ("lookahead_slow", "exp_avg"):
            copied = copy.deepcopy(sd)
            copied["state"][0][key] = copied["state"][0][key].double()
            out.append(copied)
        return out

    def extra(self, sd: dict[str, Any]) -> str:
        top = copy.deepcopy(sd)
        top["bogus"] = 1
        if refusal(self, lambda: self.load(top), "bogus") != REFUSED:
            return "loads at the top level"
        for where in (lambda s: s["param_groups"][0], lambda s: s["state"][0]):
            copied = copy.deepcopy(sd)
            where(copied)["bogus"] = 1
            if resumes_like(type(self), copied, sd) != "resumes":
                return "an extra key in a group or entry: " + resumes_like(type(self), copied, sd)
            loaded = type(self)(dtype=self.dtype)
            loaded.load(copied)
            if "bogus" not in where(loaded.opt.state_dict()):
                return "an extra key in a group or entry: dropped"
        return TORCH_EXTRA

    def poison_slow(self, sd: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(sd)
        out["state"][0]["lookahead_slow"][0, 0] = float("nan")
        return out

    def poison_moment(self, sd: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(sd)
        out["state"][0]["exp_avg_sq"][0, 0] = float("inf")
        return out

    @property
    def rollbacks(self) -> int:
        return self.opt.rollbacks

    def resume_0_1_0(self) -> str:
        params, opt, expected = _fixture_generator().resume_torch("sgd_momentum")
        got = host(list(params) + [s for group in opt.slow for s in group])
        want = host(list(expected["params"]) + list(expected["slow"]))
        return RESUMES_0_1_0 if same(got, want) else "resumes differently"


SUBJECTS: dict[str, type[Subject]] = {
    "core": CoreSubject, "numpy": InPlaceSubject, "cupy": CupySubject, "torch": TorchSubject,
}
_DROP = object()


def _fixture_generator() -> Any:
    spec = importlib.util.spec_from_file_location("v0_1_0_generate", FIXTURES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- classifying what happened --------------------------------------------------------------


def refusal(subject: Subject, action: Callable[[], Any], name: str) -> str:
    """`REFUSED` if ``action`` raises TypeError/ValueError naming ``name`` and changes nothing."""
    before = subject.snapshot()
    try:
        action()
    except (TypeError, ValueError) as exc:
        if not names(str(exc), name):
            return f"{type(exc).__name__} not naming {name}: {exc}"
        if not same(subject.snapshot(), before):
            return f"refused ({name}), but something changed"
        return REFUSED
    except Exception as exc:  # noqa: BLE001 - the outcome is the table's cell
        return f"{type(exc).__name__}: {exc}"
    return f"accepted ({name})"


def all_refused(outcomes: list[str]) -> str:
    """`REFUSED` if every variant was refused, else the first other outcome."""
    return next((o for o in outcomes if o != REFUSED), REFUSED)


def resumes_like(kind: type[Subject], sd: dict[str, Any], reference: dict[str, Any]) -> str:
    """Whether loading ``sd`` trains on exactly as loading ``reference`` does."""
    a, b = kind(dtype=np.float32), kind(dtype=np.float32)
    try:
        a.load(sd)
    except (TypeError, ValueError) as exc:
        return f"refused: {exc}"
    b.load(reference)
    for _ in range(4):
        a.step()
        b.step()
    return "resumes" if same(a.params() + a.slow(), b.params() + b.slow()) else "resumes differently"


def finite(arrays: list[np.ndarray]) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


def rolled_back_or_spread(subject: Subject) -> str:
    """After a sync that met a non-finite value: did it roll back, or spread it into φ?"""
    if subject.rollback and subject.rollbacks == 1:
        if same(subject.params(), subject.slow()) and finite(subject.slow() + subject.moments()):
            return ROLLED_BACK
        return "counted a rollback, but θ ≠ φ or the state is not finite"
    return SPREADS if not finite(subject.slow()) else "the slow weights stayed finite"


# --- one function per row: what the adapter does -------------------------------------------


def bad_argument(kind: type[Subject]) -> str:
    subject = kind()
    cases: list[tuple[str, dict[str, Any]]] = [
        ("k", {"k": 0}), ("k", {"k": True}), ("alpha", {"alpha": float("nan")}),
        ("alpha", {"alpha": np.float64(1.5)}), ("alpha_mode", {"alpha_mode": "Fixed"}),
        ("alpha_min", {"alpha_min": -0.5}),
    ]
    if kind.rollback:
        cases += [("nonfinite", {"nonfinite": "skip"}), ("nonfinite", {"nonfinite": True})]
    if kind is TorchSubject:
        cases += [("pullback", {"pullback": None}), ("pullback", {"pullback": "momentum"})]
    return all_refused([refusal(subject, lambda a=arguments: construct(subject, a), name)
                        for name, arguments in cases])


def construct(subject: Subject, arguments: dict[str, Any]) -> Any:
    """A second optimizer over the subject's own parameters, with ``arguments``."""
    settings = {"k": 3, "alpha": 0.5, **arguments}
    if isinstance(subject, CoreSubject):
        return lc.lookahead(lc.adam(lr=0.01), **settings).init(subject.values)
    if isinstance(subject, TorchSubject):
        from lookahead_torch import Lookahead

        return Lookahead(subject.torch.optim.SGD(subject.tensors, lr=0.1), **settings)
    return subject.optimizer_class()(subject.arrays, lc.adam(lr=0.01), **settings)


def bad_outer(kind: type[Subject]) -> str:
    """`outer` with an explicit α, with adaptive α, or not an optimizer: refused at construction."""
    subject = kind()
    if isinstance(subject, TorchSubject):
        import functools

        good = functools.partial(subject.torch.optim.SGD, lr=0.7, momentum=0.9, nesterov=True)
        bad: Any = "SGD"
    else:
        good, bad = lc.sgd(lr=0.7, momentum=0.9, nesterov=True), "sgd"
    cases = [{"outer": good, "alpha": 0.5}, {"outer": good, "alpha_mode": "adaptive"},
             {"outer": bad}]
    return all_refused([refusal(subject, lambda a=arguments: build_outer(subject, a), "outer")
                        for arguments in cases])


def build_outer(subject: Subject, arguments: dict[str, Any]) -> Any:
    """A second optimizer over the subject's parameters with ``arguments`` (no default α)."""
    if isinstance(subject, CoreSubject):
        return lc.lookahead(lc.adam(lr=0.01), 3, **arguments).init(subject.values)
    if isinstance(subject, TorchSubject):
        from lookahead_torch import Lookahead

        return Lookahead(subject.torch.optim.SGD(subject.tensors, lr=0.1), k=3, **arguments)
    return subject.optimizer_class()(subject.arrays, lc.adam(lr=0.01), k=3, **arguments)


def outer_mismatch(kind: type[Subject]) -> str:
    """A state or checkpoint with an outer optimizer's state into an optimizer without one, and
    the reverse."""
    subject = kind()
    if isinstance(subject, CoreSubject):
        outer = lc.lookahead(lc.adam(lr=0.01), 3, outer=lc.sgd(lr=0.7, momentum=0.9))
        good = subject.state
        outcomes = []
        subject.state = outer.init(subject.values)  # OuterLookaheadState into plain Lookahead
        outcomes.append(refusal(subject, subject.step, "state"))
        subject.state = good
        plain_into_outer = lambda: outer.step(subject.values, gradients(0, subject.dtype), good)
        outcomes.append(refusal(subject, plain_into_outer, "state"))
        return all_refused(outcomes)
    if isinstance(subject, TorchSubject):
        import functools

        from lookahead_torch import Lookahead

        make_outer = functools.partial(subject.torch.optim.SGD, lr=0.7, momentum=0.9)
        other = [subject.torch.nn.Parameter(t.detach().clone()) for t in subject.tensors]
        with_outer = Lookahead(subject.torch.optim.Adam(other, lr=0.01), k=3, outer=make_outer)
        for p, g in zip(other, gradients(0, subject.dtype)):
            p.grad = subject.torch.tensor(g, dtype=p.dtype)
        for _ in range(3):
            with_outer.step()  # a sync: the outer momentum exists
        outer_sd = copy.deepcopy(with_outer.state_dict())
        plain_sd = subject.state_dict()
        outcomes = [refusal(subject, lambda: subject.load(outer_sd), "outer")]
        reverse = Subject.__new__(TorchSubject)
        reverse.opt, reverse.tensors, reverse.torch = with_outer, other, subject.torch
        outcomes.append(refusal(reverse, lambda: with_outer.load_state_dict(plain_sd), "outer"))
        return all_refused(outcomes)
    cls = subject.optimizer_class()
    arrays = [subject.array(a) for a in subject.params()]
    with_outer = cls(arrays, lc.adam(lr=0.01), k=3, outer=lc.sgd(lr=0.7, momentum=0.9))
    outer_sd = with_outer.state_dict()
    plain_sd = subject.state_dict()
    outcomes = [refusal(subject, lambda: subject.load(outer_sd), "outer")]
    reverse = Subject.__new__(type(subject))
    reverse.opt, reverse.arrays = with_outer, arrays
    outcomes.append(refusal(reverse, lambda: with_outer.load_state_dict(plain_sd), "outer"))
    return all_refused(outcomes)


def bad_gradient(kind: type[Subject]) -> str:
    subject = kind()
    if isinstance(subject, TorchSubject):
        try:
            subject.tensors[0].grad = subject.torch.zeros(5)
        except RuntimeError:
            return NA_GRAD
        return "torch took a gradient of another shape"
    good = lambda: gradients(0, np.float64)  # noqa: E731
    a = (lambda g: g) if isinstance(subject, CoreSubject) else subject.array
    shapes = [good()[0][:1], good()[1].reshape(2, 2)]
    variants = [None, good()[:1], good() + good()[:1], [a(good()[0]), a(shapes[1])],
                [a(good()[0]), a(good()[1].astype(np.float32))], [good()[0].tolist(), a(good()[1])],
                [a(good()[0]), None], "grads", a(good()[0])]
    step = subject.apply if isinstance(subject, CoreSubject) else subject.opt.step
    return all_refused([refusal(subject, lambda v=v: step(v), "grads") for v in variants])


def bad_params(kind: type[Subject]) -> str:
    subject = kind()
    if isinstance(subject, TorchSubject):
        torch = subject.torch
        from lookahead_torch import Lookahead

        variants = [[torch.zeros(3, dtype=torch.int64)], [torch.zeros(3).to_sparse()]]
        return all_refused([refusal(subject, lambda v=v: Lookahead(torch.optim.SGD(v, lr=0.1)),
                                    "params") for v in variants])
    if isinstance(subject, CoreSubject):
        a, init = np.asarray, lambda p: lc.lookahead(lc.adam()).init(p)
    else:
        a, init = subject.array, lambda p: subject.optimizer_class()(p, lc.adam())
    variants: list[Any] = [None, [], a(np.zeros(3)), [a(np.zeros(3, dtype=np.int64))],
                           [[1.0, 2.0]], [a(np.zeros(3)), None]]
    if isinstance(subject, InPlaceSubject) and subject.lib() is np:
        read_only = np.zeros(3)
        read_only.flags.writeable = False
        variants.append([read_only])
    return all_refused([refusal(subject, lambda v=v: init(v), "params") for v in variants])


def overlapping_params(kind: type[Subject]) -> str:
    subject = kind()
    if isinstance(subject, TorchSubject):
        torch = subject.torch
        from lookahead_torch import Lookahead

        base = torch.zeros(6)
        views = [torch.nn.Parameter(base[:4]), torch.nn.Parameter(base[2:])]
        return refusal(subject, lambda: Lookahead(torch.optim.SGD(views, lr=0.1)), "params")
    if isinstance(subject, CoreSubject):
        base = np.arange(6.0)
        views = [base[:4], base[2:]]
        la = lc.lookahead(lc.sgd(lr=0.1), k=1)
        la.step(views, [np.ones(4), np.ones(4)], la.init(views))
        return PURE if same(base, np.arange(6.0)) else "the core wrote into its input"
    base = subject.array(np.zeros(6))
    return refusal(subject, lambda: subject.optimizer_class()([base[:4], base[2:]], lc.adam()),
                   "params")


def bad_group_setting(kind: type[Subject]) -> str:
    if kind is not TorchSubject:
        return NA_GROUPS
    outcomes = []
    for key, value in (("lookahead_k", 0), ("lookahead_k", 2.0), ("lookahead_alpha", float("nan"))):
        subject = kind()
        subject.opt.param_groups[0][key] = value
        outcomes.append(refusal(subject, subject.step, key))
    return all_refused(outcomes)


def corrupted(kind: type[Subject], what: str) -> str:
    """A checkpoint with a corruption of kind ``what`` (the core: the state handed to step)."""
    subject = kind()
    if isinstance(subject, CoreSubject):
        return _core_state(subject, what)
    sd = subject.state_dict()
    return all_refused([refusal(subject, lambda c=c: subject.load(c), name)
                        for name, c in subject.corrupt(sd, what)])


def _core_state(subject: CoreSubject, what: str) -> str:
    state = subject.state
    variants = {
        "missing": None,
        "type": [state._replace(count="1"), tuple(state),
                 state._replace(slow=(state.slow[0].tolist(),) + state.slow[1:])],
        "shape": [state._replace(slow=(state.slow[0][:1],) + state.slow[1:])],
        "dtype": [state._replace(slow=(state.slow[0].astype(np.float32),) + state.slow[1:])],
        "range": [state._replace(count=3), state._replace(count=-1)],
    }[what]
    if variants is None:
        return NA_NAMEDTUPLE
    outcomes = []
    for bad in variants:
        subject.state = bad
        outcomes.append(refusal(subject, subject.step, "state"))
        subject.state = state
    return all_refused(outcomes)


def missing_key(kind: type[Subject]) -> str:
    return corrupted(kind, "missing")


def extra_key(kind: type[Subject]) -> str:
    if kind is CoreSubject:
        return NA_NAMEDTUPLE
    subject = kind(dtype=np.float32)
    return subject.extra(subject.state_dict())


def wrong_type(kind: type[Subject]) -> str:
    return corrupted(kind, "type")


def wrong_shape(kind: type[Subject]) -> str:
    return corrupted(kind, "shape")


def wrong_dtype(kind: type[Subject]) -> str:
    if kind is not TorchSubject:
        return corrupted(kind, "dtype")
    subject = kind(dtype=np.float32)
    sd = subject.state_dict()
    outcomes = {resumes_like(kind, other, sd) for other in subject.other_dtype(sd)}
    return CAST if outcomes == {"resumes"} else ", ".join(sorted(outcomes))


def out_of_range(kind: type[Subject]) -> str:
    return corrupted(kind, "range")


def another_optimizer(kind: type[Subject]) -> str:
    subject = kind()
    if isinstance(subject, CoreSubject):
        sgd_state = lc.sgd(lr=0.1, momentum=0.9).init(subject.values)
        good = subject.state
        subject.state = good._replace(inner=sgd_state)
        outcome = refusal(subject, subject.step, "state.inner")
        subject.state = good
        return outcome
    name = "inner_name" if isinstance(subject, InPlaceSubject) else "state_dict"
    return refusal(subject, lambda: subject.load(subject.foreign()), name)


def nonfinite_slow(kind: type[Subject], nonfinite: str | None) -> str:
    if nonfinite and not kind.rollback:
        return NA_ROLLBACK
    subject = kind(nonfinite=nonfinite)
    if isinstance(subject, CoreSubject):
        slow = subject.state.slow[0].copy()
        slow[0, 0] = np.nan
        subject.state = subject.state._replace(slow=(slow,) + subject.state.slow[1:])
        subject.to_sync()
        return USED_SPREADS if not finite(subject.params()) else "used; the sync kept θ finite"
    bad = subject.poison_slow(subject.state_dict())
    name = "lookahead_slow" if isinstance(subject, TorchSubject) else "slow.0"
    outcome = refusal(subject, lambda: subject.load(bad), name)
    if not outcome.startswith("accepted"):
        return outcome
    if finite(subject.slow()):
        return "loaded, but the slow weights are finite"
    subject.to_sync()
    return KEPT_SPREADS if not finite(subject.params()) else "loaded; the sync kept θ finite"


def nonfinite_moment_in_checkpoint(kind: type[Subject], nonfinite: str | None) -> str:
    if kind is CoreSubject:
        return NA_FORMAT
    if nonfinite and not kind.rollback:
        return NA_ROLLBACK
    subject = kind(nonfinite=nonfinite)
    try:
        subject.load(subject.poison_moment(subject.state_dict()))
    except (TypeError, ValueError) as exc:
        return f"refused: {exc}"
    if finite(subject.moments()):
        return "loaded, but the moment is finite"
    if nonfinite is None:
        return KEPT_AS_IS
    subject.to_sync()
    return ROLLED_BACK if rolled_back_or_spread(subject) == ROLLED_BACK else "loaded; not rolled back"


def nonfinite_gradient(kind: type[Subject], nonfinite: str | None) -> str:
    if nonfinite and not kind.rollback:
        return NA_ROLLBACK
    subject = kind(nonfinite=nonfinite)
    grads = gradients(99, np.float64)
    grads[0][0, 0] = np.nan
    subject.to_sync(grads)
    return rolled_back_or_spread(subject)


def nonfinite_inner_state(kind: type[Subject], nonfinite: str | None) -> str:
    """One float32 gradient of 1e30: Adam's second moment overflows to inf, the weights stay finite."""
    if nonfinite and not kind.rollback:
        return NA_ROLLBACK
    subject = kind(nonfinite=nonfinite, dtype=np.float32)
    slow_before = subject.slow()
    grads = gradients(99, np.float32)
    grads[0][0, 0] = np.float32(1e30)
    subject.step(grads)
    if finite(subject.moments()) or not finite(subject.params()):
        return "the case did not make the moment inf with finite weights"
    while subject.count() != 0:
        subject.step()
    if nonfinite:
        return rolled_back_or_spread(subject)
    synced = finite(subject.slow()) and not same(subject.slow(), slow_before)
    return NOT_LOOKED_AT if synced and not finite(subject.moments()) else "something else"


def checkpoint_0_1_0(kind: type[Subject]) -> str:
    if kind is CoreSubject:
        return NA_FORMAT
    return kind().resume_0_1_0()


# --- the rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    section: str
    what: str
    run: Callable[[type[Subject]], str]
    claims: dict[str, str]

    def outcome(self, adapter: str) -> str:
        # Overflow and NaN are what some rows are about: NumPy's warnings are not the outcome.
        with np.errstate(over="ignore", invalid="ignore"):
            return self.run(SUBJECTS[adapter])


def _claims(core: str, numpy: str, torch: str, cupy: str | None = None) -> dict[str, str]:
    # The CuPy adapter inherits every decision from the NumPy one (lookahead_inplace).
    return {"core": core, "numpy": numpy, "cupy": numpy if cupy is None else cupy, "torch": torch}


INPUTS = "Arguments and inputs"
CHECKPOINTS = "Checkpoints (the core: the state handed to `step`)"
TRAINING = "Non-finite values during training"

ROWS: tuple[Row, ...] = (
    Row(INPUTS, "a bad constructor argument: `k`, `alpha`, `alpha_mode`, `alpha_min`, "
        "`nonfinite`, `pullback` (wrong type, bool, NaN, out of range)", bad_argument,
        _claims(REFUSED, REFUSED, REFUSED)),
    Row(INPUTS, "`outer` with `alpha` or `alpha_mode=\"adaptive\"`, or an `outer` that is no "
        "optimizer (the core, NumPy, CuPy: a `lookahead_core` optimizer; PyTorch: a factory of "
        "a torch optimizer)", bad_outer, _claims(REFUSED, REFUSED, REFUSED)),
    Row(INPUTS, "a bad gradient to `step` (count, shape, dtype, not an array, `None`)",
        bad_gradient, _claims(REFUSED, REFUSED, NA_GRAD)),
    Row(INPUTS, "bad parameters (not floating arrays, empty, `None`, read-only)", bad_params,
        _claims(REFUSED, REFUSED, REFUSED)),
    Row(INPUTS, "overlapping parameters (views sharing elements)", overlapping_params,
        _claims(PURE, REFUSED, REFUSED)),
    Row(INPUTS, "a bad `lookahead_k` or `lookahead_alpha` set in a param group", bad_group_setting,
        _claims(NA_GROUPS, NA_GROUPS, REFUSED)),
    Row(CHECKPOINTS, "a missing key", missing_key, _claims(NA_NAMEDTUPLE, REFUSED, REFUSED)),
    Row(CHECKPOINTS, "an extra key", extra_key, _claims(NA_NAMEDTUPLE, REFUSED, TORCH_EXTRA)),
    Row(CHECKPOINTS, "a value of the wrong type", wrong_type, _claims(REFUSED, REFUSED, REFUSED)),
    Row(CHECKPOINTS, "an array of the wrong shape", wrong_shape, _claims(REFUSED, REFUSED, REFUSED)),
    Row(CHECKPOINTS, "an array of another dtype", wrong_dtype, _claims(REFUSED, REFUSED, CAST)),
    Row(CHECKPOINTS, "an out-of-range value: k < 1, α outside [0, 1], a count outside the cycle, "
        "a negative step count or second moment", out_of_range,
        _claims(REFUSED, REFUSED, REFUSED)),
    Row(CHECKPOINTS, "another optimizer's checkpoint (another inner optimizer)", another_optimizer,
        _claims(REFUSED, REFUSED, REFUSED)),
    Row(CHECKPOINTS, "a checkpoint with an outer optimizer's state into an optimizer without "
        "`outer`, or the reverse", outer_mismatch, _claims(REFUSED, REFUSED, REFUSED)),
    Row(CHECKPOINTS, "non-finite slow weights, without rollback",
        lambda kind: nonfinite_slow(kind, None), _claims(USED_SPREADS, KEPT_SPREADS, KEPT_SPREADS)),
    Row(CHECKPOINTS, "non-finite slow weights, `nonfinite=\"rollback\"`",
        lambda kind: nonfinite_slow(kind, "rollback"), _claims(NA_ROLLBACK, REFUSED, REFUSED)),
    Row(CHECKPOINTS, "non-finite moments (inner state), without rollback",
        lambda kind: nonfinite_moment_in_checkpoint(kind, None),
        _claims(NA_FORMAT, KEPT_AS_IS, KEPT_AS_IS)),
    Row(CHECKPOINTS, "non-finite moments (inner state), `nonfinite=\"rollback\"`",
        lambda kind: nonfinite_moment_in_checkpoint(kind, "rollback"),
        _claims(NA_FORMAT, ROLLED_BACK, ROLLED_BACK)),
    Row(CHECKPOINTS, "a checkpoint written by version 0.1.0 (CuPy: the NumPy adapter's, the "
        "same format)", checkpoint_0_1_0,
        _claims(NA_FORMAT, RESUMES_0_1_0, RESUMES_0_1_0)),
    Row(TRAINING, "a non-finite gradient, without rollback",
        lambda kind: nonfinite_gradient(kind, None), _claims(SPREADS, SPREADS, SPREADS)),
    Row(TRAINING, "a non-finite gradient, `nonfinite=\"rollback\"`",
        lambda kind: nonfinite_gradient(kind, "rollback"),
        _claims(NA_ROLLBACK, ROLLED_BACK, ROLLED_BACK)),
    Row(TRAINING, "a non-finite inner state with finite weights (one float32 gradient of 1e30 "
        "overflows Adam's second moment), without rollback",
        lambda kind: nonfinite_inner_state(kind, None),
        _claims(NOT_LOOKED_AT, NOT_LOOKED_AT, NOT_LOOKED_AT)),
    Row(TRAINING, "the same, `nonfinite=\"rollback\"`",
        lambda kind: nonfinite_inner_state(kind, "rollback"),
        _claims(NA_ROLLBACK, ROLLED_BACK, ROLLED_BACK)),
)


def render(cell: Callable[[Row, str], str]) -> str:
    """The page's tables, one per section, with ``cell(row, adapter)`` in each cell."""
    lines: list[str] = []
    for section in dict.fromkeys(row.section for row in ROWS):
        if lines:
            lines.append("")
        lines += [f"### {section}", "",
                  "| Input | " + " | ".join(TITLES[a] for a in ADAPTERS) + " |",
                  "|---|" + "---|" * len(ADAPTERS)]
        for row in ROWS:
            if row.section == section:
                cells = [cell(row, adapter).replace("|", "\\|") for adapter in ADAPTERS]
                lines.append(f"| {row.what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

