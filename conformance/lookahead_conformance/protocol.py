"""The `Backend` protocol: what a Lookahead implementation shows the checks.

A backend is a factory of `Runner`s plus a few facts about its arrays (the
namespace, the device, the dtypes) and the conversion of its arrays from and
to NumPy. Everything crosses the boundary as NumPy arrays, so the checks and
their float64 oracle are backend-neutral; the conversions themselves are
certified by the `dtype_shape_device` check.

A runner is one optimizer instance over one list of parameters. Five methods
are required. Four more are optional *capabilities*: a check that needs one
the runner lacks reports "not applicable" rather than pass or fail.

| capability | needed by | contract |
|---|---|---|
| `step_skipped(grads)` | `skipped_steps` | a step the inner optimizer skips (a GradScaler inf/NaN skip): changes nothing, does not advance the schedule |
| `extra_state_bytes()` | `memory` | bytes of Lookahead-owned state beyond the inner optimizer's; must equal the parameters' bytes (one copy) |
| `aliases()` | `schedule` | whether any fast and slow buffers share memory (without it, a black-box test decides) |
| `device()` | `dtype_shape_device` | the device holding every fast and slow weight |

A backend may offer one optional method of its own, `SupportsOuter.create_outer`:
Lookahead with an outer optimizer (SNOO, DiLoCo), needed by the ``outer`` check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "REQUIRED_BACKEND_MEMBERS",
    "Backend",
    "InnerSpec",
    "ReportsAliasing",
    "ReportsDevice",
    "ReportsMemory",
    "Runner",
    "SkipsSteps",
    "SupportsOuter",
    "is_usable_name",
    "protocol_violations",
]


class InnerSpec(NamedTuple):
    """An inner optimizer by name and hyperparameters, as the checks ask for it.

    Attributes:
        name: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        hyperparams: keyword arguments of ``lookahead_core``'s constructor of
            that name (``lr``, ``momentum``, ``nesterov``, ``weight_decay``,
            ``betas``, ``eps``, ...), which are ``torch.optim``'s names and
            defaults. A backend maps them onto its own optimizer, e.g.
            ``torch.optim.SGD(params, **hyperparams)``.

    Only the hyperparameters a check sets are in ``hyperparams`` (``lr``
    always); every other one has ``torch.optim``'s default, and a backend
    whose optimizer defaults differently must pass that default itself:

    | name | defaults of the keys left out |
    |---|---|
    | ``"sgd"`` | ``momentum=0``, ``dampening=0``, ``weight_decay=0``, ``nesterov=False`` |
    | ``"adam"`` | ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=0``, ``amsgrad=False`` |
    | ``"adamw"`` | ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=1e-2``, ``amsgrad=False`` |

    AdamW's ``weight_decay=1e-2`` is the one that catches backends out:
    ``optax.adamw`` defaults to ``1e-4`` (optax 0.2.8).
    """

    name: str
    hyperparams: dict[str, Any]

    def build_core(self) -> Any:
        """The ``lookahead_core`` inner optimizer for this spec."""
        import lookahead_core as lc

        constructors = {"sgd": lc.sgd, "adam": lc.adam, "adamw": lc.adamw}
        if self.name not in constructors:
            raise ValueError(
                f"InnerSpec.name must be one of {sorted(constructors)}, got {self.name!r}"
            )
        return constructors[self.name](**self.hyperparams)


@runtime_checkable
class Runner(Protocol):
    """One optimizer instance of a backend, over one list of parameters.

    Gradients come in, and weights go out, as NumPy arrays of the parameters'
    shapes and dtypes; the runner converts them (normally with its backend's
    `Backend.from_numpy` and `Backend.to_numpy`).
    """

    def step(self, grads: Sequence[np.ndarray]) -> None:
        """One executed inner step with these gradients (eq. 0.2), then the sync
        if it was the k-th of the cycle. Bad gradients (count, shape, dtype)
        raise TypeError/ValueError and change nothing."""

    def fast(self) -> list[np.ndarray]:
        """Copies of the fast weights θ, as NumPy arrays of the parameters' dtypes."""

    def slow(self) -> list[np.ndarray]:
        """Copies of the slow weights φ, as NumPy arrays of the parameters' dtypes."""

    def save(self) -> Any:
        """A checkpoint of everything needed to resume, fast weights included.

        It must not change when the runner takes further steps (no live
        references to the optimizer's buffers)."""

    def restore(self, saved: Any) -> None:
        """Resume from `save`'s result; called on a runner freshly created
        with the same parameters, inner spec, k and α."""


@runtime_checkable
class SkipsSteps(Protocol):
    """Optional: the backend can skip a step, as AMP's GradScaler does on inf/NaN."""

    def step_skipped(self, grads: Sequence[np.ndarray]) -> None:
        """Offer these gradients in a step the inner optimizer skips: nothing
        changes and the step does not count towards the k of the schedule."""


@runtime_checkable
class ReportsMemory(Protocol):
    """Optional: the backend can account for the memory Lookahead adds."""

    def extra_state_bytes(self) -> int:
        """Bytes of the persistent state Lookahead owns beyond the inner
        optimizer's (the slow weights and whatever else it keeps between
        steps). A one-copy implementation returns exactly the parameters'
        bytes, from construction on. Scratch space whose size does not grow
        with the model may be left out; say so in the backend's docs."""


@runtime_checkable
class ReportsAliasing(Protocol):
    """Optional: the backend can tell whether fast and slow weights share memory."""

    def aliases(self) -> bool:
        """Whether any fast weight shares memory with any slow weight."""


@runtime_checkable
class ReportsDevice(Protocol):
    """Optional: the backend can tell where its weights live."""

    def device(self) -> str:
        """The device holding every fast and slow weight, in the form of
        `Backend.device` (e.g. ``"cpu"``, ``"cuda:0"``). Weights spread over
        several devices give a string that names the mismatch instead."""


@runtime_checkable
class Backend(Protocol):
    """A Lookahead implementation, as the conformance checks see it.

    Attributes:
        name: the name it is registered under, e.g. ``"numpy"``: its key in
            the report, the JSON, pytest's test ids and the skip and xfail
            lists, also when it is loaded as ``module:attr``. A non-empty
            str without ``#``, line breaks or surrounding spaces.
        dtypes: the NumPy names of the floating dtypes to certify, e.g.
            ``("float32", "float64")``. Every check runs on each.

    One backend targets one device: a library that runs on several registers
    one backend per device (``torch`` and ``torch-cuda``). Only
    `skip_reason` and the attributes may be used before `skip_reason`
    returned ``None``, so the module that defines a backend must import
    without its array library.
    """

    name: str
    dtypes: tuple[str, ...]

    def skip_reason(self) -> str | None:
        """``None`` when the backend can run here, else why not
        (``"no CUDA device"``, ``"cupy not installed"``)."""

    def namespace(self) -> Any:
        """The Array API namespace of the backend's arrays, as
        ``array_api_compat.array_namespace`` returns it for them."""

    def device(self) -> str:
        """The device the backend's arrays live on, as
        ``str(array_api_compat.device(array))`` prints it (``"cpu"``, ``"cuda:0"``)."""

    def from_numpy(self, array: np.ndarray) -> Any:
        """A backend array on `device` with the same shape, dtype and values."""

    def to_numpy(self, array: Any) -> np.ndarray:
        """A NumPy copy of a backend array: same shape, dtype and bits."""

    def create(
        self, params: Sequence[np.ndarray], inner: InnerSpec, k: int, alpha: float
    ) -> Runner:
        """Build the optimizer over copies of ``params``.

        ``k`` and ``alpha`` are passed through unvalidated: an invalid value
        must raise TypeError or ValueError here.
        """


@runtime_checkable
class SupportsOuter(Protocol):
    """Optional: the backend runs Lookahead with an outer optimizer (SNOO, DiLoCo).

    At each sync the outer optimizer takes one step on the slow weights φ with
    the pseudo-gradient Δ = φ − θ_{t,k} as their gradient, then θ ← φ.
    """

    def create_outer(
        self, params: Sequence[np.ndarray], inner: InnerSpec, k: int, outer: InnerSpec
    ) -> Runner:
        """Build the optimizer over copies of ``params`` with ``outer`` as its outer
        optimizer, an `InnerSpec` like ``inner`` (``torch.optim``'s names and defaults):
        e.g. ``torch.optim.SGD(slow_weights, **outer.hyperparams)``. The runner's
        ``save``/``restore`` must carry the outer optimizer's state."""


REQUIRED_BACKEND_MEMBERS = (
    "name", "dtypes", "skip_reason", "namespace", "device", "from_numpy", "to_numpy", "create",
)


def protocol_violations(obj: Any, members: Sequence[str] = REQUIRED_BACKEND_MEMBERS) -> list[str]:
    """The required members ``obj`` lacks (empty when it implements the protocol).

    Unlike ``isinstance(obj, Backend)`` this names what is missing, for the report.
    """
    available = set(dir(obj))  # dir() does not evaluate properties, hasattr() would
    missing = [m for m in members if m not in available]
    if "name" in members and "name" in available and not is_usable_name(getattr(obj, "name", None)):
        missing.append(
            "name (a non-empty str without '#', line breaks or surrounding spaces, "
            f"got {getattr(obj, 'name', None)!r})"
        )
    if "dtypes" in members and "dtypes" in available:
        dtypes = getattr(obj, "dtypes", None)
        if not (isinstance(dtypes, tuple) and dtypes and all(_is_float_dtype(d) for d in dtypes)):
            missing.append(
                f"dtypes (a non-empty tuple of NumPy floating dtype names, got {dtypes!r})"
            )
    return missing


def is_usable_name(name: Any) -> bool:
    """Whether ``name`` can be a backend's key: in the report, the JSON, pytest's test ids
    and a line ``name::check`` of a skip or xfail list (where ``#`` starts a comment)."""
    return (isinstance(name, str) and bool(name) and name == name.strip()
            and "#" not in name and not any(c in name for c in "\r\n"))


def _is_float_dtype(name: Any) -> bool:
    if not isinstance(name, str):
        return False
    try:
        return bool(np.issubdtype(np.dtype(name), np.floating))
    except TypeError:
        return False
