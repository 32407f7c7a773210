"""What one backend measured on one parameter set, and what a set's run produced."""

from __future__ import annotations

from dataclasses import dataclass, field

from .sets import ParamSet
from .timing import Stats

__all__ = [
    "JAX_OURS", "NUMPY_OURS", "OPTAX", "PEER_NAMES", "TORCH_OURS", "UNBLOCKED",
    "Row", "SetResult", "noise_key", "optax_key", "sync_ratio_key",
]

# Row labels the suites write and the targets table reads: defined once, here.
TORCH_OURS = "lookahead_torch"
NUMPY_OURS = "lookahead_numpy"
JAX_OURS = "core traceable (jit)"
UNBLOCKED = "torch _foreach_lerp_ + _foreach_copy_"
OPTAX = "optax.lookahead"
PEER_NAMES = ("timm", "torch-optimizer", "pytorch_optimizer")
"""The PyTorch peers, in the order their rows appear."""


def sync_ratio_key(library: str, other: str, ours: str) -> str:
    """Key of the side-by-side ratio ``other``'s sync time ÷ ``ours``."""
    return f"{library}: {other} ÷ {ours} (sync time)"


def noise_key(inner: str) -> str:
    """Key of the second bare optimizer ÷ the first, non-sync steps (the noise floor)."""
    return f"PyTorch: bare (2nd copy) ÷ bare, non-sync {inner}"


def optax_key(inner: str) -> str:
    """Key of optax.lookahead's step time ÷ the traceable core's."""
    return f"JAX: {OPTAX} ÷ {JAX_OURS}, {inner}"


@dataclass
class Row:
    """One backend on one parameter set.

    Attributes:
        library: "PyTorch", "NumPy", "JAX" or "CuPy".
        backend: the implementation, e.g. ``lookahead_torch`` or ``timm``.
        nonsync: per inner optimizer, a step that does not end with the sync,
            ÷ the bare inner optimizer's step (round-by-round ratios).
        overhead_us: per inner optimizer, that step minus the bare step, µs.
        amortized: per inner optimizer, k = 5 steps (one of which syncs) ÷ 5 bare steps.
        sync_ms: one sync, milliseconds.
        efficiency: (4 × parameter bytes / sync time) ÷ plain-copy bandwidth, per round.
        extra_state: state bytes beyond the bare inner optimizer's ÷ parameter bytes.
        sync_alloc: bytes allocated during one sync.
        note: why something is missing, or how it was measured.
    """

    library: str
    backend: str
    nonsync: dict[str, Stats] = field(default_factory=dict)
    overhead_us: dict[str, Stats] = field(default_factory=dict)
    amortized: dict[str, Stats] = field(default_factory=dict)
    sync_ms: Stats | None = None
    efficiency: Stats | None = None
    extra_state: float | None = None
    sync_alloc: int | None = None
    note: str = ""


@dataclass
class SetResult:
    """Everything measured on one parameter set.

    Attributes:
        pset: the parameter set.
        rows: one per backend.
        copy_gbs: plain-copy bandwidth (read + write, GB/s) per copy method.
        comparisons: named round-by-round ratios (e.g. unblocked ÷ blocked sync).
        load: ``os.getloadavg()`` before and after the set.
        seconds: wall time the set took.
        skipped: backends that could not run, with the reason.
        bare_step_ms: per "library inner" (e.g. "PyTorch SGD-m"), the bare inner
            optimizer's step, ms (the mean step of each round's cycle).
        copy_ms: per library, the plain copy of 2 × P bytes (4 × P moved), ms.
    """

    pset: ParamSet
    rows: list[Row] = field(default_factory=list)
    copy_gbs: dict[str, Stats] = field(default_factory=dict)
    comparisons: dict[str, Stats] = field(default_factory=dict)
    load: list[tuple[float, float, float]] = field(default_factory=list)
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)
    bare_step_ms: dict[str, Stats] = field(default_factory=dict)
    copy_ms: dict[str, Stats] = field(default_factory=dict)

    def row(self, backend: str) -> Row | None:
        return next((r for r in self.rows if r.backend == backend), None)
