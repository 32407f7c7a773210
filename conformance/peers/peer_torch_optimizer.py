"""torch-optimizer's Lookahead (``torch_optimizer.Lookahead``) as a conformance backend:
``peer_torch_optimizer:backend``.

Built as its docstring shows, ``Lookahead(optimizer, k=..., alpha=...)``. Its
slow weights are ``opt.state[p]["slow_param"]``, made at its first sync (see
`torch_peers` for what ``slow()`` returns before).
"""

from __future__ import annotations

from typing import Any

from torch_peers import TorchPeerBackend

__all__ = ["backend"]


def _load() -> Any:
    import torch_optimizer

    return torch_optimizer.Lookahead


def _wrap(inner: Any, k: Any, alpha: Any) -> Any:
    return _load()(inner, k=k, alpha=alpha)


def _slow_of(lookahead: Any, inner: Any, param: Any) -> Any:
    return lookahead.state[param].get("slow_param") if param in lookahead.state else None


backend = TorchPeerBackend("torch-optimizer", _load, _wrap, _slow_of)
