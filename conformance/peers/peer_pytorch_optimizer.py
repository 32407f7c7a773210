"""pytorch_optimizer's Lookahead (``pytorch_optimizer.Lookahead``) as a conformance backend:
``peer_pytorch_optimizer:backend``.

Built as its users build it, ``Lookahead(optimizer, k=..., alpha=...)`` with the
default ``pullback_momentum="none"``. Its slow weights are
``opt.state[p]["slow_params"]``, made at construction.
"""

from __future__ import annotations

from typing import Any

from torch_peers import TorchPeerBackend

__all__ = ["backend"]


def _load() -> Any:
    import pytorch_optimizer

    return pytorch_optimizer.Lookahead


def _wrap(inner: Any, k: Any, alpha: Any) -> Any:
    return _load()(inner, k=k, alpha=alpha)


def _slow_of(lookahead: Any, inner: Any, param: Any) -> Any:
    return lookahead.state[param].get("slow_params") if param in lookahead.state else None


backend = TorchPeerBackend("pytorch_optimizer", _load, _wrap, _slow_of)
