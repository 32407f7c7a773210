"""timm's Lookahead (``timm.optim.Lookahead``) as a conformance backend: ``peer_timm:backend``.

Built as timm's users build it, ``Lookahead(base_optimizer, alpha=..., k=...)``.
Its slow weights live in the inner optimizer's state, under
``"lookahead_slow_buff"``, from its first sync on (see `torch_peers` for what
``slow()`` returns before).

timm's package ``__init__`` imports torchvision, which the benchmark environment
lacks (timm is installed there with ``--no-deps``, as torchvision would pull
another torch). Then the module that defines the class, ``timm/optim/lookahead.py``,
which imports only torch, is loaded from its file, as the performance suite
does: the class is the same code ``timm.optim.Lookahead`` names.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from torch_peers import TorchPeerBackend

__all__ = ["backend", "lookahead_class"]


@functools.cache
def lookahead_class() -> Any:
    """``timm.optim.Lookahead``; from its module file when timm's package needs torchvision."""
    try:
        from timm.optim import Lookahead
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise
    else:
        return Lookahead
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'timm'", name="timm")
    path = Path(list(spec.submodule_search_locations)[0]) / "optim" / "lookahead.py"
    module_spec = importlib.util.spec_from_file_location("timm.optim.lookahead", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.Lookahead


def _wrap(inner: Any, k: Any, alpha: Any) -> Any:
    return lookahead_class()(inner, alpha=alpha, k=k)


def _slow_of(lookahead: Any, inner: Any, param: Any) -> Any:
    return inner.state[param].get("lookahead_slow_buff") if param in inner.state else None


backend = TorchPeerBackend("timm", lookahead_class, _wrap, _slow_of)
