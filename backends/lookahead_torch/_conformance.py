"""Backends of the conformance kit for `lookahead_torch.Lookahead` (CPU and CUDA).

They follow the ``Backend`` / ``Runner`` protocol of
``lookahead_conformance`` by duck typing (this module imports neither the kit
nor, until a backend is used, PyTorch): ``InnerSpec("sgd" | "adam" | "adamw",
hyperparams)`` becomes ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` with the
same hyperparameter names (the core's follow ``torch.optim``); gradients
arrive as NumPy arrays and are set as ``.grad`` before ``opt.step()``, as in a
training loop.

Registered under the entry-point group ``lookahead.backends`` as ``torch`` and
``torch-cuda``:

```bash
python -m lookahead_conformance --backend torch
```

The runners have the optional capabilities ``step_skipped`` (the real
``torch.amp.GradScaler`` skips the step), ``extra_state_bytes`` (the slow
weights, plus the pullback momentum copies when that option is on; the
bounded upcast scratch of ``slow_dtype`` is workspace and left out, and these
backends never use ``slow_dtype``), ``aliases`` and ``device``.
"""

from __future__ import annotations

import functools

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["TorchBackend", "TorchRunner", "cpu_backend", "cuda_backend"]

_INNER_NAMES = ("sgd", "adam", "adamw")


def _inner_class(name: str) -> Any:
    import torch

    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]


def _hyperparams(spec: Any) -> dict[str, Any]:
    hyperparams = dict(spec.hyperparams)
    if "betas" in hyperparams:
        hyperparams["betas"] = tuple(hyperparams["betas"])
    return hyperparams


class TorchRunner:
    """One `Lookahead` over ``torch.nn.Parameter``s made from NumPy arrays, on one device."""

    def __init__(self, device: Any, params: Sequence[np.ndarray], inner: Any, k: int, alpha: float,
                 outer: Any = None):
        import torch

        from ._optimizer import Lookahead

        if inner.name not in _INNER_NAMES:
            raise ValueError(f"inner.name must be one of {list(_INNER_NAMES)}, got {inner.name!r}")
        self._device = device
        self._params = [
            torch.nn.Parameter(torch.from_numpy(np.array(p, copy=True)).to(device)) for p in params
        ]
        inner_optimizer = _inner_class(inner.name)(self._params, **_hyperparams(inner))
        if outer is None:
            self._opt = Lookahead(inner_optimizer, k=k, alpha=alpha)
        else:
            if outer.name not in _INNER_NAMES:
                raise ValueError(f"outer.name must be one of {list(_INNER_NAMES)}, got {outer.name!r}")
            self._opt = Lookahead(inner_optimizer, k=k, outer=functools.partial(
                _inner_class(outer.name), **_hyperparams(outer)))

    @property
    def optimizer(self) -> Any:
        """The `lookahead_torch.Lookahead` under test."""
        return self._opt

    def _set_grads(self, grads: Sequence[np.ndarray]) -> None:
        """Check every gradient first (nothing is set unless all fit), then set them."""
        import torch

        if len(grads) != len(self._params):
            raise ValueError(f"grads must hold {len(self._params)} arrays, got {len(grads)}")
        tensors = []
        for i, (g, p) in enumerate(zip(grads, self._params)):
            g = np.asarray(g)
            if tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"grads[{i}] must have shape {tuple(p.shape)}, got {g.shape}")
            t = torch.from_numpy(np.array(g, copy=True))
            if t.dtype != p.dtype:
                raise TypeError(f"grads[{i}] must have dtype {p.dtype}, got {t.dtype}")
            tensors.append(t.to(self._device))
        for p, t in zip(self._params, tensors):
            p.grad = t

    def step(self, grads: Sequence[np.ndarray]) -> None:
        self._set_grads(grads)
        self._opt.step()
        self._opt.zero_grad()

    def step_skipped(self, grads: Sequence[np.ndarray]) -> None:
        """A step that ``torch.amp.GradScaler`` skips because a gradient holds inf.

        The real ``GradScaler`` decides: it unscales, finds the inf and does
        not call ``opt.step()``. (One entry is set to inf so that finite
        gradients are skipped too.)
        """
        import torch

        self._set_grads(grads)
        first = next((p for p in self._params if p.numel() > 0), None)
        if first is None:
            raise ValueError("step_skipped needs a parameter with at least one element")
        first.grad.view(-1)[0] = float("inf")
        scaler = torch.amp.GradScaler(self._device.type, init_scale=1.0)
        scaler.scale(torch.zeros((), device=self._device))  # initializes the scale
        scaler.step(self._opt)
        scaler.update()
        self._opt.zero_grad()

    def fast(self) -> list[np.ndarray]:
        return [p.detach().cpu().numpy().copy() for p in self._params]

    def slow(self) -> list[np.ndarray]:
        return [s.detach().cpu().numpy().copy() for group in self._opt.slow for s in group]

    def save(self) -> bytes:
        """Parameters and ``state_dict`` as ``torch.save`` bytes (no live references)."""
        import torch

        buffer = io.BytesIO()
        torch.save({"params": [p.detach() for p in self._params],
                    "optimizer": self._opt.state_dict()}, buffer)
        return buffer.getvalue()

    def restore(self, saved: bytes) -> None:
        """``torch.load(weights_only=True, map_location=device)``, then load it all."""
        import torch

        checkpoint = torch.load(io.BytesIO(saved), weights_only=True, map_location=self._device)
        with torch.no_grad():
            for p, value in zip(self._params, checkpoint["params"]):
                p.copy_(value)
        self._opt.load_state_dict(checkpoint["optimizer"])

    def extra_state_bytes(self) -> int:
        """Bytes of the persistent tensors Lookahead owns beyond the inner optimizer's state."""
        return sum(t.numel() * t.element_size() for t in self._opt._persistent_tensors())

    def aliases(self) -> bool:
        """Whether any parameter shares storage with any slow tensor."""
        fast = {p.untyped_storage().data_ptr() for p in self._params if p.numel() > 0}
        return any(
            s.numel() > 0 and s.untyped_storage().data_ptr() in fast
            for group in self._opt.slow
            for s in group
        )

    def device(self) -> str:
        devices = sorted({str(t.device) for t in self._params}
                         | {str(s.device) for group in self._opt.slow for s in group})
        return devices[0] if len(devices) == 1 else "mixed: " + ", ".join(devices)


class TorchBackend:
    """`lookahead_torch.Lookahead` on one torch device type.

    Args:
        name: registry name (``"torch"``, ``"torch-cuda"``).
        device_type: ``"cpu"`` or ``"cuda"``.
        dtypes: the floating dtypes certified.
    """

    def __init__(self, name: str, device_type: str, dtypes: tuple[str, ...] = ("float32", "float64")):
        self.name = name
        self.device_type = device_type
        self.dtypes = dtypes

    def __repr__(self) -> str:
        return f"TorchBackend({self.name!r}, {self.device_type!r}, {self.dtypes!r})"

    def skip_reason(self) -> str | None:
        try:
            import torch
        except ImportError as exc:
            return f"torch not installed ({exc})"
        if self.device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        return None

    def _torch_device(self) -> Any:
        import torch

        return torch.device(self.device_type, 0) if self.device_type == "cuda" else torch.device("cpu")

    def namespace(self) -> Any:
        import array_api_compat
        import torch

        return array_api_compat.array_namespace(torch.empty(0))

    def device(self) -> str:
        return str(self._torch_device())

    def from_numpy(self, array: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(np.array(array, copy=True)).to(self._torch_device())

    def to_numpy(self, array: Any) -> np.ndarray:
        return array.detach().cpu().numpy().copy()

    def create(self, params: Sequence[np.ndarray], inner: Any, k: int, alpha: float) -> TorchRunner:
        return TorchRunner(self._torch_device(), params, inner, k, alpha)

    def create_outer(self, params: Sequence[np.ndarray], inner: Any, k: int, outer: Any) -> TorchRunner:
        """`Lookahead` with ``outer=functools.partial(<torch.optim class>, **outer.hyperparams)``."""
        return TorchRunner(self._torch_device(), params, inner, k, 0.5, outer=outer)


cpu_backend = TorchBackend("torch", "cpu")
cuda_backend = TorchBackend("torch-cuda", "cuda")
