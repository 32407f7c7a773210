"""lookahead_core: the Lookahead optimizer written once against the Array API.

This package is the specification every backend is checked against. It is
pure (returns new arrays, mutates nothing) and imports no array framework:
it works on NumPy, array-api-strict, PyTorch, JAX and CuPy arrays through
``array-api-compat``.

>>> import numpy as np, lookahead_core as lc
>>> opt = lc.lookahead(lc.sgd(lr=0.1), k=5, alpha=0.5)
>>> params = [np.ones(3)]
>>> state = opt.init(params)
>>> params, state = opt.step(params, [np.ones(3)], state)

Two submodules load on first use, ``lc.theory`` (the paper's analysis, on
NumPy) and ``lc.traceable`` (Lookahead for ``jax.jit`` and other tracing
compilers), so that ``import lookahead_core`` keeps that promise.
"""

import importlib
from typing import Any

from ._cycle import (
    StepPlan,
    check_count,
    check_last_alpha,
    completes_cycle,
    count_limit,
    plan_step,
)
from ._inner import (
    AdamState,
    InnerOptimizer,
    SGDState,
    adam,
    adamw,
    check_inner,
    check_inner_state,
    lerp,
    sgd,
)
from ._cycle import ALPHA_MODES
from ._lookahead import (
    DEFAULT_ALPHA,
    AdaptiveLookaheadState,
    Lookahead,
    LookaheadState,
    OuterLookaheadState,
    check_alpha_mode,
    check_alpha_or_outer,
    check_outer,
    outer_sync,
    ema_closed_form,
    lookahead,
    secant_alpha,
    secant_alpha_terms,
    secant_products,
    sync_slow,
)
from ._validation import (
    NONFINITE_MODES,
    check_alpha,
    check_arrays,
    check_k,
    check_matching,
    check_nonfinite,
)

__all__ = [
    "ALPHA_MODES",
    "DEFAULT_ALPHA",
    "NONFINITE_MODES",
    "AdamState",
    "AdaptiveLookaheadState",
    "InnerOptimizer",
    "Lookahead",
    "LookaheadState",
    "OuterLookaheadState",
    "SGDState",
    "StepPlan",
    "adam",
    "adamw",
    "check_alpha",
    "check_alpha_mode",
    "check_alpha_or_outer",
    "check_arrays",
    "check_count",
    "check_inner",
    "check_inner_state",
    "check_k",
    "check_last_alpha",
    "check_matching",
    "check_nonfinite",
    "check_outer",
    "completes_cycle",
    "count_limit",
    "ema_closed_form",
    "lerp",
    "lookahead",
    "outer_sync",
    "plan_step",
    "secant_alpha",
    "secant_alpha_terms",
    "secant_products",
    "sgd",
    "sync_slow",
    "theory",
    "traceable",
]

_LAZY_SUBMODULES = ("theory", "traceable")


def __getattr__(name: str) -> Any:
    """``lc.theory`` and ``lc.traceable``, imported on first access (PEP 562).

    ``theory`` imports NumPy; importing it eagerly would load NumPy with the
    core. After the first access the submodule is an ordinary attribute.
    """
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

__version__ = "0.1.0"
