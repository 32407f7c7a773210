"""The conformance kit's `Backend` for a PyTorch Lookahead of another library.

One runner drives any wrapper that is used as timm's, torch-optimizer's and
pytorch_optimizer's are: built around a ``torch.optim`` optimizer, fed through
``p.grad``, stepped with ``opt.step()`` and cleared with ``opt.zero_grad()``,
checkpointed with ``torch.save(opt.state_dict())`` and ``torch.load(...,
weights_only=True)``. A peer module (``peer_timm`` and the others) says only how
to build its wrapper and where its slow weights are.

What the runner does in the peer's place, as a training loop would:

- It checks the gradients' count, shapes and dtypes before setting ``p.grad``
  (autograd never produces others, and assigning a wrong one is torch's
  ``RuntimeError``), so ``bad_input`` judges the peer's own checks of k and α.
- Before a lazy peer has made its slow weights, ``slow()`` returns the
  parameters: that is what such a peer copies in when it makes them, and what
  it would interpolate towards if it synced then. ``extra_state_bytes()``
  counts the slow tensors that exist.
- ``step_skipped`` is the real ``torch.amp.GradScaler`` around the wrapper,
  which skips the wrapper's whole ``step()`` on an inf gradient.

This module is not part of the installed package: `make verdicts` puts this
folder on ``PYTHONPATH``. Like every backend module it imports without torch.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["TorchPeerBackend", "TorchPeerRunner"]

Wrap = Callable[[Any, Any, Any], Any]
"""``wrap(inner_optimizer, k, alpha)``: the peer's Lookahead, built as its users build it."""

SlowOf = Callable[[Any, Any, Any], Any]
"""``slow_of(lookahead, inner_optimizer, param)``: the peer's slow tensor of ``param``, or
``None`` while it has none."""


def _inner_optimizer(params: list[Any], inner: Any) -> Any:
    """``torch.optim.SGD`` / ``Adam`` / ``AdamW`` with the spec's (torch-named) hyperparameters."""
    import torch

    classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if inner.name not in classes:
        raise ValueError(f"inner.name must be one of {sorted(classes)}, got {inner.name!r}")
    hyperparams = dict(inner.hyperparams)
    if "betas" in hyperparams:
        hyperparams["betas"] = tuple(hyperparams["betas"])
    return classes[inner.name](params, **hyperparams)


class TorchPeerRunner:
    """One peer Lookahead over ``torch.nn.Parameter``s made from NumPy arrays, on the CPU."""

    def __init__(self, wrap: Wrap, slow_of: SlowOf, params: Sequence[np.ndarray], inner: Any,
                 k: Any, alpha: Any) -> None:
        import torch

        self._params = [torch.nn.Parameter(torch.from_numpy(np.array(p, copy=True))) for p in params]
        self._inner = _inner_optimizer(self._params, inner)
        self._slow_of = slow_of
        self.optimizer = wrap(self._inner, k, alpha)

    def _set_grads(self, grads: Sequence[np.ndarray]) -> None:
        """Check every gradient first (nothing is set unless all fit), then set ``p.grad``."""
        import torch

        if len(grads) != len(self._params):
            raise ValueError(f"grads must hold {len(self._params)} arrays, got {len(grads)}")
        tensors = []
        for i, (g, p) in enumerate(zip(grads, self._params)):
            g = np.asarray(g)
            if tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"grads[{i}] must have shape {tuple(p.shape)}, got {g.shape}")
            tensor = torch.from_numpy(np.array(g, copy=True))
            if tensor.dtype != p.dtype:
                raise TypeError(f"grads[{i}] must have dtype {p.dtype}, got {tensor.dtype}")
            tensors.append(tensor)
        for p, tensor in zip(self._params, tensors):
            p.grad = tensor

    def step(self, grads: Sequence[np.ndarray]) -> None:
        self._set_grads(grads)
        self.optimizer.step()
        self.optimizer.zero_grad()

    def step_skipped(self, grads: Sequence[np.ndarray]) -> None:
        """``GradScaler.step(opt)`` finds an inf gradient and does not call ``opt.step()``."""
        import torch

        self._set_grads(grads)
        first = next((p for p in self._params if p.numel() > 0), None)
        if first is None:
            raise ValueError("step_skipped needs a parameter with at least one element")
        first.grad.view(-1)[0] = float("inf")  # so that finite gradients are skipped too
        scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
        scaler.scale(torch.zeros(()))  # initializes the scale
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad()

    def _slow_tensors(self) -> list[Any]:
        """The peer's slow tensor of each parameter, ``None`` where it has none yet."""
        return [self._slow_of(self.optimizer, self._inner, p) for p in self._params]

    def fast(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self._params]

    def slow(self) -> list[np.ndarray]:
        return [(p if s is None else s).detach().numpy().copy()
                for p, s in zip(self._params, self._slow_tensors())]

    def save(self) -> bytes:
        """Parameters and ``opt.state_dict()`` as ``torch.save`` bytes, as a training script saves."""
        import torch

        buffer = io.BytesIO()
        torch.save({"params": [p.detach() for p in self._params],
                    "optimizer": self.optimizer.state_dict()}, buffer)
        return buffer.getvalue()

    def restore(self, saved: bytes) -> None:
        """``torch.load(weights_only=True)``, the parameters copied in, ``opt.load_state_dict``."""
        import torch

        checkpoint = torch.load(io.BytesIO(saved), weights_only=True)
        with torch.no_grad():
            for p, value in zip(self._params, checkpoint["params"]):
                p.copy_(value)
        self.optimizer.load_state_dict(checkpoint["optimizer"])

    def extra_state_bytes(self) -> int:
        """Bytes of the slow tensors the peer holds now."""
        return sum(s.numel() * s.element_size() for s in self._slow_tensors() if s is not None)

    def aliases(self) -> bool:
        """Whether a slow tensor shares storage with a parameter."""
        fast = {p.untyped_storage().data_ptr() for p in self._params if p.numel() > 0}
        return any(s is not None and s.numel() > 0 and s.untyped_storage().data_ptr() in fast
                   for s in self._slow_tensors())

    def device(self) -> str:
        tensors = self._params + [s for s in self._slow_tensors() if s is not None]
        devices = sorted({str(t.device) for t in tensors})
        return devices[0] if len(devices) == 1 else "mixed: " + ", ".join(devices)


class TorchPeerBackend:
    """A peer's PyTorch Lookahead on the CPU, in float32 and float64.

    Args:
        name: the backend's name, e.g. ``"timm"``.
        load: imports the peer; its ImportError is the skip reason.
        wrap: builds the peer's Lookahead around an inner optimizer (see `Wrap`).
        slow_of: finds a parameter's slow tensor (see `SlowOf`).
    """

    dtypes = ("float32", "float64")

    def __init__(self, name: str, load: Callable[[], Any], wrap: Wrap, slow_of: SlowOf) -> None:
        self.name = name
        self._load, self._wrap, self._slow_of = load, wrap, slow_of

    def __repr__(self) -> str:
        return f"TorchPeerBackend({self.name!r})"

    def skip_reason(self) -> str | None:
        try:
            import torch  # noqa: F401

            self._load()
        except ImportError as exc:
            return f"{self.name} not installed ({exc})"
        return None

    def namespace(self) -> Any:
        import array_api_compat
        import torch

        return array_api_compat.array_namespace(torch.empty(0))

    def device(self) -> str:
        return "cpu"

    def from_numpy(self, array: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(np.array(array, copy=True))

    def to_numpy(self, array: Any) -> np.ndarray:
        return array.detach().cpu().numpy().copy()

    def create(self, params: Sequence[np.ndarray], inner: Any, k: Any, alpha: Any) -> TorchPeerRunner:
        return TorchPeerRunner(self._wrap, self._slow_of, params, inner, k, alpha)
