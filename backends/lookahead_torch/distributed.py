"""Checkpoints of `lookahead_torch.Lookahead` through ``torch.distributed.checkpoint`` (DCP).

Everything a `Lookahead` holds is in the ``state`` and ``param_groups`` of its
state dict, so torch's own ``get_optimizer_state_dict`` and
``set_optimizer_state_dict`` (``torch.distributed.checkpoint.state_dict``)
carry it: they key it by parameter name (FQN), keep DTensors sharded under
FSDP2, and ``torch.distributed.checkpoint.save`` / ``load`` write, read and
reshard it like any optimizer's state. Use them directly:

```python
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict)

state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
dcp.save(state, checkpoint_id=path)

# resume: build model, fully_shard, inner optimizer and Lookahead as before, then
state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
dcp.load(state, checkpoint_id=path)          # fills the template in place
set_model_state_dict(model, state["model"])
set_optimizer_state_dict(model, opt, state["optim"])
```

One option is not supported: ``flatten_optimizer_state_dict=True`` rebuilds
each parameter's entry from the keys of the live inner state, which do not
include the slow weights; `Lookahead.load_state_dict` then refuses the result
(it names the option) rather than restart the slow weights silently.

The two functions of this module are torch's with that option refused up
front. Version 0.1.0 needed them (its checkpoints kept part of Lookahead's
state in a third key); they stay for the code written then, and
`set_optimizer_state_dict` still loads what 0.1.0's version saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ._optimizer import Lookahead

__all__ = ["get_optimizer_state_dict", "set_optimizer_state_dict"]

_SECTION = "lookahead"


def _check_arguments(optimizer: Any, options: Any) -> None:
    if not isinstance(optimizer, Lookahead):
        raise TypeError(
            f"optimizer must be a lookahead_torch.Lookahead, got {type(optimizer).__name__}; "
            "for other optimizers use torch.distributed.checkpoint.state_dict directly"
        )
    if options is not None and getattr(options, "flatten_optimizer_state_dict", False):
        raise ValueError(
            "options.flatten_optimizer_state_dict must be False: torch rebuilds a flattened "
            "optimizer state from the inner optimizer's state keys, which do not include "
            "Lookahead's slow weights"
        )


def get_optimizer_state_dict(
    model: torch.nn.Module, optimizer: Lookahead, *, options: Any = None
) -> dict[str, Any]:
    """``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` for a `Lookahead`.

    The state dict torch returns, keyed by parameter name (DTensors stay
    sharded unless ``options.full_state_dict``): ``{"state", "param_groups"}``.
    Each parameter's entry holds ``"lookahead_slow"`` (and the other
    Lookahead buffers) next to the inner optimizer's state; each group holds
    ``lookahead_k``, ``lookahead_alpha``, ``lookahead_count`` and
    ``lookahead_rollbacks``.

    As torch does for any optimizer, an empty inner state is first
    initialized by a step with zero gradients and ``lr = 0``; Lookahead does
    not count that step.

    Args:
        model: the model whose parameters ``optimizer`` holds (DDP- or
            ``fully_shard``-wrapped, or plain).
        optimizer: the `Lookahead` around the inner optimizer.
        options: a ``torch.distributed.checkpoint.state_dict.StateDictOptions``,
            passed on (``flatten_optimizer_state_dict`` is not supported).

    Raises:
        TypeError: ``optimizer`` is not a `Lookahead`.
        ValueError: ``options.flatten_optimizer_state_dict`` is set.
    """
    _check_arguments(optimizer, options)
    from torch.distributed.checkpoint import state_dict as dcp_state_dict

    return dcp_state_dict.get_optimizer_state_dict(model, optimizer, options=options)


def set_optimizer_state_dict(
    model: torch.nn.Module,
    optimizer: Lookahead,
    optim_state_dict: Mapping[str, Any],
    *,
    options: Any = None,
) -> None:
    """``torch.distributed.checkpoint.state_dict.set_optimizer_state_dict`` for a `Lookahead`.

    Loads a state dict of `get_optimizer_state_dict` (or of torch's own;
    typically filled by ``torch.distributed.checkpoint.load``): torch maps the
    parameter names back and, for a full state dict, shards the tensors;
    `Lookahead.load_state_dict` then checks everything and loads it all or
    nothing, as always. A state dict saved by version 0.1.0 of this function
    (with a ``"lookahead"`` section) loads too.

    Args:
        model: the model whose parameters ``optimizer`` holds.
        optimizer: the `Lookahead` to load into.
        optim_state_dict: ``{"state", "param_groups"}`` as
            `get_optimizer_state_dict` returns it.
        options: a ``StateDictOptions``, passed on.

    Raises:
        TypeError: ``optimizer`` is not a `Lookahead`, or ``optim_state_dict``
            (or a 0.1.0 ``"lookahead"`` section) is not a dict.
        ValueError: anything `Lookahead.load_state_dict` refuses.
    """
    _check_arguments(optimizer, options)
    if not isinstance(optim_state_dict, Mapping):
        raise TypeError(f"optim_state_dict must be a dict, got {type(optim_state_dict).__name__}")
    from torch.distributed.checkpoint import state_dict as dcp_state_dict

    if _SECTION not in optim_state_dict:
        dcp_state_dict.set_optimizer_state_dict(model, optimizer, optim_state_dict, options=options)
        return
    section = optim_state_dict[_SECTION]
    if not isinstance(section, Mapping):
        raise TypeError(
            f"optim_state_dict['lookahead'] must be a dict, got {type(section).__name__}"
        )

    def restore_section(opt: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any] | None:
        # A 0.1.0 checkpoint: torch passes on only 'state' and 'param_groups'; put the section back.
        if _SECTION in state_dict:
            return None
        return {**state_dict, _SECTION: dict(section)}

    handle = optimizer.register_load_state_dict_pre_hook(restore_section, prepend=True)
    try:
        dcp_state_dict.set_optimizer_state_dict(
            model, optimizer, {key: value for key, value in optim_state_dict.items() if key != _SECTION},
            options=options,
        )
    finally:
        handle.remove()
