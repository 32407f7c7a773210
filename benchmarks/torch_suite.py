"""PyTorch rows: ``lookahead_torch``, the core on torch tensors, and the torch peers.

Per parameter set, each group interleaved round by round:

- syncs: every implementation's sync over the same fast weights (each with its
  own slow copy), next to a plain copy of 2 × the parameter bytes (the same
  4 × bytes moved) by ``np.copyto`` and by ``torch.Tensor.copy_``, and next to
  the unblocked kernel ``_foreach_lerp_`` + ``_foreach_copy_``;
- steps, per inner optimizer (SGD with momentum 0.9, Adam; ``foreach=True``):
  cycles of k = 5 steps, each timed (`steps.measure_steps`), of the bare
  optimizer, ``lookahead_torch`` and the peers, each on its own copy of the
  parameters, all reading the same gradients; then the core on torch tensors
  against its own inner optimizer.

`python_overhead` measures the wrappers' own per-step cost around a no-op
inner optimizer.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lookahead_core as lc
from lookahead_torch import Lookahead, _kernels

from .memory import state_bytes, torch_call_bytes
from .results import PEER_NAMES, TORCH_OURS, UNBLOCKED, Row, SetResult, noise_key, sync_ratio_key
from .sets import ParamSet
from .steps import ALPHA, K, LR, NEVER, core_step_group, measure_steps, repeat
from .timing import Stats, interleaved, phase

__all__ = ["INNERS", "load_peers", "run_torch"]

INNERS: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "SGD-m": lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9, foreach=True),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=LR, foreach=True),
}

OURS = TORCH_OURS
CORE = "core on torch"


# --- peers ------------------------------------------------------------------------------


class Peer:
    """A peer's Lookahead: how to build it, set its k, and run its sync alone."""

    def __init__(self, name: str, make: Callable[[torch.optim.Optimizer], Any],
                 set_k: Callable[[Any, int], None], sync: Callable[[Any], None]) -> None:
        self.name, self.make, self.set_k, self.sync = name, make, set_k, sync


def _timm_class() -> Any:
    # timm's package __init__ imports torchvision (installed --no-deps here, it is
    # absent); its lookahead module imports torch only, so load that file alone.
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("timm is not installed (pip install timm --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]) / "optim" / "lookahead.py"
    module_spec = importlib.util.spec_from_file_location("_bench_timm_lookahead", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.Lookahead


def _set_group_k(key: str) -> Callable[[Any, int], None]:
    def set_k(opt: Any, k: int) -> None:
        for group in opt.param_groups:
            group[key] = k
    return set_k


def _set_attr_k(opt: Any, k: int) -> None:
    opt.k = k


def load_peers() -> tuple[list[Peer], dict[str, str]]:
    """The installed peers, and the reason each missing one is missing."""
    peers, missing = [], {}
    try:
        timm_lookahead = _timm_class()
        peers.append(Peer(PEER_NAMES[0], lambda inner: timm_lookahead(inner, alpha=ALPHA, k=K),
                          _set_group_k("lookahead_k"), lambda opt: opt.sync_lookahead()))
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        missing["timm"] = f"{type(exc).__name__}: {exc}"
    try:
        import torch_optimizer

        def torch_optimizer_sync(opt: Any) -> None:
            for group in opt.param_groups:
                opt._update(group)

        peers.append(Peer(PEER_NAMES[1],
                          lambda inner: torch_optimizer.Lookahead(inner, k=K, alpha=ALPHA),
                          _set_attr_k, torch_optimizer_sync))
    except Exception as exc:  # noqa: BLE001
        missing["torch-optimizer"] = f"{type(exc).__name__}: {exc} (pip install torch-optimizer)"
    try:
        import pytorch_optimizer

        def pytorch_optimizer_sync(opt: Any) -> None:
            for group in opt.param_groups:
                opt.update(group)

        peers.append(Peer(PEER_NAMES[2],
                          lambda inner: pytorch_optimizer.Lookahead(inner, k=K, alpha=ALPHA),
                          _set_attr_k, pytorch_optimizer_sync))
    except Exception as exc:  # noqa: BLE001
        missing["pytorch_optimizer"] = f"{type(exc).__name__}: {exc} (pip install pytorch-optimizer)"
    return peers, missing


# --- helpers ----------------------------------------------------------------------------


def _parameters(host: list[np.ndarray]) -> list[torch.nn.Parameter]:
    # Copies into memory torch allocates (64-byte aligned), as a model's parameters are:
    # NumPy's large arrays start 16 bytes past a cache line, which slows every
    # AVX-512 kernel on them (the torch sync of the large set by ~18 %).
    return [torch.nn.Parameter(torch.tensor(a)) for a in host]


def _unblocked_sync(fast: list[torch.Tensor], slow: list[torch.Tensor]) -> Callable[[], None]:
    """The kernel before the cache-blocked one (and pytorch_optimizer's): whole tensors."""

    @torch.no_grad()
    def run() -> None:
        torch._foreach_lerp_(slow, fast, ALPHA)
        torch._foreach_copy_(fast, slow)

    return run


# --- the groups -------------------------------------------------------------------------


def _sync_group(pset: ParamSet, host: list[np.ndarray], peers: list[Peer],
                rounds: dict[str, Any], result: SetResult, rows: dict[str, Row]) -> None:
    params = _parameters(host)
    zero = torch.zeros(())
    for p in params:
        p.grad = zero.expand_as(p)  # timm and pytorch_optimizer skip params without grad
    ours = Lookahead(torch.optim.SGD(params, lr=LR), k=K, alpha=ALPHA)
    fast = [p.detach() for p in params]
    variants: dict[str, Callable[[], object]] = {OURS: ours.sync}
    variants[UNBLOCKED] = _unblocked_sync(fast, list(ours.slow[0]))
    wrappers: dict[str, Any] = {OURS: ours}
    for peer in peers:
        opt = peer.make(torch.optim.SGD(params, lr=LR))
        peer.sync(opt)  # timm and torch-optimizer create their slow copies at the first sync
        wrappers[peer.name] = opt
        variants[peer.name] = (lambda peer, opt: lambda: peer.sync(opt))(peer, opt)
    core = lc.lookahead(lc.sgd(lr=LR), k=K, alpha=ALPHA)
    core_params = tuple(fast)
    core_state = core.init(core_params)
    variants[CORE] = lambda: core.sync(core_params, core_state)

    # A plain copy moving the same bytes as a sync: read 2 × P bytes, write 2 × P bytes.
    src = np.ones(2 * pset.numel, np.float32)
    dst = np.zeros_like(src)
    src_t, dst_t = torch.ones(2 * pset.numel), torch.zeros(2 * pset.numel)  # torch's own memory
    variants["np.copyto"] = lambda: np.copyto(dst, src)
    variants["torch copy_"] = lambda: dst_t.copy_(src_t)

    # The adapter's first syncs time its CPU piece sizes (lookahead_torch._kernels.BlockTuner)
    # and keep the fastest, as the first syncs of a training run do: done before timing.
    for _ in range(_kernels.tuning_syncs()):
        ours.sync()
    times = interleaved(variants, rounds["sync"], best_of=rounds["best_of"],
                        budget=rounds.get("sync_budget"))
    moved = 4 * pset.nbytes
    copy_times = times["np.copyto"]
    result.copy_ms["PyTorch"] = Stats.of(copy_times).scaled(1e3)
    result.copy_gbs["np.copyto"] = Stats.of([moved / t / 1e9 for t in times["np.copyto"]])
    result.copy_gbs["torch copy_"] = Stats.of([moved / t / 1e9 for t in times["torch copy_"]])
    result.comparisons[sync_ratio_key("PyTorch", UNBLOCKED, OURS)] = Stats.ratio(
        times[UNBLOCKED], times[OURS])
    for peer in peers:
        result.comparisons[sync_ratio_key("PyTorch", peer.name, OURS)] = Stats.ratio(
            times[peer.name], times[OURS])

    skip = [*params, *(p.grad for p in params)]
    for name in [OURS, UNBLOCKED, *(peer.name for peer in peers), CORE]:
        row = rows.setdefault(name, Row("PyTorch", name))
        row.sync_ms = Stats.of(times[name]).scaled(1e3)
        row.efficiency = Stats.ratio(copy_times, times[name])
        row.sync_alloc = torch_call_bytes(variants[name])
        if name in wrappers:
            row.extra_state = state_bytes(wrappers[name], skip) / pset.nbytes
    rows[CORE].extra_state = (
        state_bytes(core_state, skip) - state_bytes(core_state.inner, skip)) / pset.nbytes
    rows[UNBLOCKED].note = "the kernel alone, on lookahead_torch's tensors (reference)"


def _step_group(host: list[np.ndarray], grads_host: list[np.ndarray], peers: list[Peer],
                inner_name: str, rounds: dict[str, Any], result: SetResult,
                rows: dict[str, Row]) -> None:
    """``lookahead_torch`` and the peers against the bare ``torch.optim`` optimizer."""
    make_inner = INNERS[inner_name]
    grads = [torch.tensor(g) for g in grads_host]

    def with_grads(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        for p, g in zip(params, grads):
            p.grad = g  # shared, read-only
        return params

    steppers: dict[str, Callable[[], object]] = {"bare": make_inner(with_grads(_parameters(host))).step}
    if rounds.get("noise_floor", True):  # a second bare optimizer: bare ÷ bare
        steppers["bare (2nd copy)"] = make_inner(with_grads(_parameters(host))).step
    ours = Lookahead(make_inner(with_grads(_parameters(host))), k=K, alpha=ALPHA)
    steppers[OURS] = ours.step
    if rounds.get("step_peers", True):
        for peer in peers:
            steppers[peer.name] = peer.make(make_inner(with_grads(_parameters(host)))).step
    nonsync, cycles = measure_steps("PyTorch", steppers,
                               {name: "bare" for name in steppers if not name.startswith("bare")},
                               inner_name, rounds, rows)
    result.bare_step_ms[f"PyTorch {inner_name}"] = Stats.of(cycles["bare"]).scaled(1e3 / K)
    if "bare (2nd copy)" in nonsync:
        result.comparisons[noise_key(inner_name)] = (
            Stats.ratio(nonsync["bare (2nd copy)"], nonsync["bare"]))


def run_torch(pset: ParamSet, host: list[np.ndarray], grads_host: list[np.ndarray],
              rounds: dict[str, Any], result: SetResult) -> None:
    """All PyTorch rows of one parameter set, appended to ``result``."""
    torch.set_num_threads(1)
    peers, missing = load_peers()
    result.skipped.update(missing)
    rows: dict[str, Row] = {}
    with phase("torch syncs"):
        _sync_group(pset, host, peers, rounds, result, rows)
    for inner_name in INNERS:
        with phase(f"torch steps, {inner_name}"):
            _step_group(host, grads_host, peers, inner_name, rounds, result, rows)
        if rounds.get("core_steps", True):
            with phase(f"core on torch steps, {inner_name}"):
                core_step_group("PyTorch", CORE, lambda: tuple(torch.tensor(a) for a in host),
                                tuple(torch.tensor(g) for g in grads_host), inner_name, rounds, rows)
    for name, row in rows.items():
        if not row.amortized and name != UNBLOCKED:
            row.note = "steps not measured on this set (memory and time): sync only"
    result.rows.extend(rows.values())


class _NoOpOptimizer(torch.optim.Optimizer):
    """A real ``torch.optim.Optimizer`` whose step does nothing: isolates a wrapper's own cost."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__(params, {"lr": LR})

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        return None


def python_overhead(tensors: int, size: int, rounds: int, batch: int = 50) -> dict[str, Stats]:
    """Per wrapper, the Python cost of a non-sync step around a no-op inner optimizer, µs.

    ``tensors`` parameters of ``size`` values; the inner optimizer is a real
    ``torch.optim.Optimizer`` whose ``step`` returns at once, so a wrapper's
    step minus the bare no-op step is the wrapper's own per-step work (its
    bookkeeping, and the step hooks every ``torch.optim.Optimizer`` runs).
    Each sample times ``batch`` steps. ``bare (2nd copy)`` is a second bare
    optimizer: the noise floor of the difference.
    """
    torch.set_num_threads(1)
    peers, _ = load_peers()
    params = _parameters([np.zeros(size, np.float32) for _ in range(tensors)])
    for p in params:
        p.grad = torch.zeros_like(p)
    steppers: dict[str, Callable[[], object]] = {
        "bare": _NoOpOptimizer(params).step, "bare (2nd copy)": _NoOpOptimizer(params).step}
    ours = Lookahead(_NoOpOptimizer(params), k=NEVER, alpha=ALPHA)
    steppers[OURS] = ours.step
    for peer in peers:
        opt = peer.make(_NoOpOptimizer(params))
        for _ in range(K):  # one sync (timm creates its slow copies), then never again
            opt.step()
        peer.set_k(opt, NEVER)
        steppers[peer.name] = opt.step
    times = interleaved({name: repeat(step, batch) for name, step in steppers.items()},
                        rounds, warmup=2, best_of=3)
    return {name: Stats.difference(times[name], times["bare"]).scaled(1e6 / batch)
            for name in steppers if name != "bare"}
