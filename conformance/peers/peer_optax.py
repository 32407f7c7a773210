"""optax's Lookahead (``optax.lookahead``) as a conformance backend: ``peer_optax:backend``.

Driven as its docstring shows: the parameters are an ``optax.LookaheadParams``
pair made by ``LookaheadParams.init_synced``, and a step is

    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)

eagerly (no ``jax.jit``), on JAX's default device, the CPU here. The fast and
slow weights are ``params.fast`` and ``params.slow``. Everything is an
immutable JAX array, so a checkpoint is the pair ``(params, state)`` itself.

The inner optimizer is the ``torch.optim`` one the kit names, written in optax:
``optax.sgd`` (momentum, Nesterov), ``optax.adam`` and ``optax.adamw``, with
``optax.add_decayed_weights`` first for torch's L2 ``weight_decay`` of SGD and
Adam, and torch's defaults (AdamW's ``weight_decay=1e-2``, not optax's 1e-4).

Choices a JAX library forces, stated so the verdicts can be read:

- float64 needs ``jax_enable_x64``, set when the backend is first used.
- Skipping a step: ``optax.apply_if_finite`` cannot wrap ``optax.lookahead``
  (its rejected update has the gradients' structure, lookahead's updates are a
  ``LookaheadParams`` pair, and ``lax.cond`` raises TypeError), so the one
  composition optax allows wraps the inner optimizer,
  ``lookahead(apply_if_finite(inner))``. That is a second backend,
  ``skipping_backend``, whose ``step_skipped`` offers inf/NaN gradients to it;
  the verdicts run only ``skipped_steps`` on it. ``backend`` runs plain
  ``optax.lookahead`` and has no ``step_skipped``: ``apply_if_finite``'s
  ``lax.cond`` refuses updates whose shape or dtype differ from the
  gradients', which would judge its checks instead of lookahead's in
  ``bad_input``.
- ``init_synced`` makes ``slow`` and ``fast`` the same immutable arrays until
  the first update: one copy in meaning, as nothing can write to either, so
  ``extra_state_bytes()`` counts ``params.slow``'s bytes. No ``aliases()``:
  sharing an immutable buffer is not aliasing; the kit's black-box test decides.
- Gradients go to optax as they are: it is optax's update that accepts or
  rejects a wrong count, shape or dtype.

Not part of the installed package: `make verdicts` puts this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MAX_CONSECUTIVE_SKIPS", "OptaxBackend", "OptaxRunner", "SkippingOptaxRunner",
           "backend", "skipping_backend"]

MAX_CONSECUTIVE_SKIPS = 1000
"""``apply_if_finite``'s ``max_consecutive_errors``: more skips in a row than the kit offers."""

_TORCH_DEFAULTS = {
    "sgd": {"lr": 1e-3, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
}
"""torch.optim's defaults for the hyperparameters this translation knows."""


def _jax() -> Any:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 is off by default in JAX
    return jax


def inner_transformation(inner: Any) -> Any:
    """The optax transformation of an ``InnerSpec``, with torch.optim's semantics and defaults."""
    import optax

    if inner.name not in _TORCH_DEFAULTS:
        raise ValueError(f"inner.name must be one of {sorted(_TORCH_DEFAULTS)}, got {inner.name!r}")
    unknown = set(inner.hyperparams) - set(_TORCH_DEFAULTS[inner.name])
    if unknown:
        raise ValueError(f"inner.hyperparams of {inner.name!r} must be among "
                         f"{sorted(_TORCH_DEFAULTS[inner.name])}, got {sorted(unknown)}")
    h = {**_TORCH_DEFAULTS[inner.name], **inner.hyperparams}
    if inner.name == "sgd":
        # torch's SGD: buf = μ·buf + g (g with L2 decay), step -lr·buf; optax.trace is that.
        steps = [optax.sgd(h["lr"], momentum=h["momentum"] or None, nesterov=h["nesterov"])]
    elif inner.name == "adam":
        b1, b2 = h["betas"]
        steps = [optax.adam(h["lr"], b1=b1, b2=b2, eps=h["eps"])]
    else:
        b1, b2 = h["betas"]
        return optax.adamw(h["lr"], b1=b1, b2=b2, eps=h["eps"], weight_decay=h["weight_decay"])
    if h["weight_decay"]:
        steps.insert(0, optax.add_decayed_weights(h["weight_decay"]))
    return steps[0] if len(steps) == 1 else optax.chain(*steps)


class OptaxRunner:
    """``optax.lookahead`` over ``LookaheadParams.init_synced`` of the given parameters."""

    def __init__(self, backend: OptaxBackend, params: Sequence[np.ndarray], inner: Any,
                 k: Any, alpha: Any) -> None:
        import optax

        self._backend = backend
        self._tx = optax.lookahead(self._inner(inner), sync_period=k, slow_step_size=alpha)
        self._params = optax.LookaheadParams.init_synced([backend.from_numpy(p) for p in params])
        self._state = self._tx.init(self._params)

    def step(self, grads: Sequence[np.ndarray]) -> None:
        import optax

        native = [self._backend.from_numpy(np.asarray(g)) for g in grads]
        updates, state = self._tx.update(native, self._state, self._params)
        self._params, self._state = optax.apply_updates(self._params, updates), state

    def fast(self) -> list[np.ndarray]:
        return [self._backend.to_numpy(p) for p in self._params.fast]

    def slow(self) -> list[np.ndarray]:
        return [self._backend.to_numpy(s) for s in self._params.slow]

    def save(self) -> Any:
        return self._params, self._state  # immutable arrays: a faithful checkpoint

    def restore(self, saved: Any) -> None:
        self._params, self._state = saved

    def extra_state_bytes(self) -> int:
        """Bytes of ``params.slow``: the slow copy optax's users carry."""
        return sum(int(s.nbytes) for s in self._params.slow)

    def device(self) -> str:
        import array_api_compat

        devices = sorted({str(array_api_compat.device(a))
                          for a in (*self._params.fast, *self._params.slow)})
        return devices[0] if len(devices) == 1 else "mixed: " + ", ".join(devices)

    def _inner(self, inner: Any) -> Any:
        return inner_transformation(inner)


class SkippingOptaxRunner(OptaxRunner):
    """``optax.lookahead(optax.apply_if_finite(inner))``: the inner optimizer can skip a step."""

    def _inner(self, inner: Any) -> Any:
        import optax

        return optax.apply_if_finite(inner_transformation(inner), MAX_CONSECUTIVE_SKIPS)

    def step_skipped(self, grads: Sequence[np.ndarray]) -> None:
        """The inner ``apply_if_finite`` finds inf/NaN gradients and rejects the inner update."""
        self.step(grads)


class OptaxBackend:
    """``optax.lookahead`` on JAX's default device, in float32 and float64.

    Args:
        name: the backend's name.
        skipping: wrap the inner optimizer in ``optax.apply_if_finite`` (`SkippingOptaxRunner`).
    """

    dtypes = ("float32", "float64")

    def __init__(self, name: str = "optax", skipping: bool = False) -> None:
        self.name = name
        self._runner = SkippingOptaxRunner if skipping else OptaxRunner

    def __repr__(self) -> str:
        return f"OptaxBackend({self.name!r})"

    def skip_reason(self) -> str | None:
        try:
            _jax()
            import optax  # noqa: F401
        except ImportError as exc:
            return f"optax not installed ({exc})"
        return None

    def namespace(self) -> Any:
        import array_api_compat

        return array_api_compat.array_namespace(self.from_numpy(np.zeros(1)))

    def device(self) -> str:
        import array_api_compat

        return str(array_api_compat.device(self.from_numpy(np.zeros(1))))

    def from_numpy(self, array: np.ndarray) -> Any:
        return _jax().numpy.asarray(np.array(array, copy=True))

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.array(array, copy=True)

    def create(self, params: Sequence[np.ndarray], inner: Any, k: Any, alpha: Any) -> OptaxRunner:
        return self._runner(self, params, inner, k, alpha)


backend = OptaxBackend()
skipping_backend = OptaxBackend("optax-apply-if-finite", skipping=True)
